"""Forward sampling and Gibbs refinement (thesis 4.2.2–4.2.3), batched over molecules.

Molecule types are placed one after another; within a type every molecule advances through the
same plan together, one unit per step: the environment builder gathers each unit's surroundings,
the generator proposes K candidates, their local energies are scored and a selector picks one.
The forward pass sees only atoms placed so far; each Gibbs sweep re-places every unit seeing all
other atoms. With ``colouring`` the molecules of a step are split into groups whose environments
do not overlap, so no unit is ever re-placed in the same step as one it sees.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection, Sequence

import networkx as nx
import numpy as np
import torch

from backmap.devices import to_host
from backmap.sampling.environment import Channels, EnvironmentBatch, EnvironmentBuilder
from backmap.forcefield.energy import bonded_energy
from backmap.forcefield.neighbors import neighbour_pairs
from backmap.forcefield.parameters import build_parameters, excluded_pairs, molecule_terms
from backmap.system.mapping import CGTopology
from backmap.system.pbc import box_dimensions, minimum_image
from backmap.engine.plugin import Generator, Selector
from backmap.progress import progress
from backmap.sampling.orientation import PartnerOrientation
from backmap.sampling.polish import PlacementPolish, Rotors, find_rotors
from backmap.threads import torch_threads
from backmap.sampling.traversal import Plan

if TYPE_CHECKING:  # the stereo restraint (and RDKit behind it) is loaded only when it is used
    from backmap.sampling.chirality import ChiralCentres

_BONDED = ("bond", "angle", "proper", "rb", "improper")


@dataclass
class SamplerOptions:
    candidates: int = 8
    #: candidates per unit of the first sweeps in order (forward pass first); later ones: ``candidates``
    sweep_candidates: tuple[int, ...] = ()
    gibbs_sweeps: int = 2
    cutoff: float = 0.7
    colouring: bool = False
    batch_molecules: bool = True
    strip_hydrogens: bool = True
    energy: bool = True  # score candidates with the force field (else all energies are 0)
    #: with ``colouring``: units of one group are this far apart (nm, bead to bead) instead of the
    #: default two environment reaches 2·(cutoff + margin) — set by a Monte Carlo refiner that knows
    #: how far its units reach (e.g. never within each other's environment, or not interacting)
    separation: float = 0.0
    #: CG restraint in the selection energy (kJ/mol/nm²): ½k|M(x)_J − R_J|² for every bead J the
    #: unit's atoms map onto, once all of J's atoms are placed (0 = off)
    cg_restraint: float = 0.0
    #: energy guidance: steepest-descent steps on each chosen placement's selection energy in its
    #: rotatable bonds, bond lengths and angles kept (:mod:`backmap.sampling.polish`; 0 = off)
    polish_steps: int = 0
    #: in which sweeps placements are polished: "last" (the frame's last sweep; then the closing
    #: pass) or "all" (the forward pass too, where a chain's growing end swings freely)
    polish_sweeps: str = "last"
    clash_distance: float = 0.1
    #: > 0: clash repair also redraws units holding an atom of a pair whose LJ energy exceeds this
    #: (kJ/mol; pairs the force field does not exclude, 1-4 pairs included)
    clash_energy: float = 0.0
    #: forward pass: turn each unit with no bond to a placed atom about its mapped centre so that
    #: its atoms bonded to unplaced atoms point where the CG puts their partners
    #: (:mod:`backmap.sampling.orientation`; for transfer, where drawn orientations are unreliable)
    orient_units: bool = False
    #: forward pass: units of these bead types are drawn seeing no placed atom (as a unit built
    #: first is) and docked rigidly onto the one placed atom they bond to (the selection energy
    #: still sees everything; :mod:`backmap.sampling.orientation`)
    dock: tuple[str, ...] = ()
    #: Coulomb in the selection energy: "auto" (when the topology has charged atoms without LJ,
    #: e.g. water's and alcohols' hydrogens), "on" or "off"; reaction field at ``cutoff`` with
    #: ``epsilon_rf`` (0 = ∞, conducting, as PME's tin-foil boundary)
    electrostatics: str = "auto"
    epsilon_rf: float = 0.0


def needs_electrostatics(params) -> bool:
    """Whether a topology's LJ leaves charged atoms bare (ε = 0 with charge, as the hydrogens of
    SPC/E, TIP3P or OPLS alcohols): selection on LJ alone lets them overlap anything and cannot
    orient them into hydrogen bonds, so ``electrostatics: auto`` turns Coulomb on."""
    bare = (np.diagonal(np.asarray(params.c6))[params.lj_type] == 0) & (np.diagonal(np.asarray(params.c12))[params.lj_type] == 0)
    return bool((bare & (np.abs(np.asarray(params.charges)) > 1e-6)).any())


@dataclass
class SelectionCoulomb:
    """Reaction-field Coulomb of a unit with its environment, cut at the environment's radius:
    q_i q_j f (1/r + k_rf r² − c_rf), zero at the cut-off; distances below ``r_min`` count as
    ``r_min`` (a finite energy for overlapping candidates — LJ and the geometry keep them out)."""

    cutoff: float
    epsilon_rf: float = 0.0  # 0 = ∞
    r_min: float = 0.05

    def constants(self) -> tuple[float, float]:
        rc, erf = self.cutoff, self.epsilon_rf
        k = 1.0 / (2 * rc**3) if erf == 0 else (erf - 1.0) / ((2 * erf + 1.0) * rc**3)
        return k, 1.0 / rc + k * rc**2


@dataclass
class UnitGroup:
    """Units of one plan step (one per molecule of a group) that are placed or moved together:
    global atom indices (B, U), their beads, predecessor beads and frame beads, and what the
    generator is told about them (``meta``: molecule type, bead, unit atoms, step)."""

    moltype: str
    step: int
    meta: dict
    molecules: np.ndarray
    atoms: np.ndarray
    bead: np.ndarray
    predecessor: np.ndarray
    frame: np.ndarray


class UnitEnergy:
    """Local energy of candidate placements: bonded terms that involve the unit's atoms (with the
    other atoms where they are now, terms with unplaced atoms skipped) and Lennard-Jones with the
    environment's atoms, excluded pairs left out. The force field's selection energy (DBM: bond,
    angle, dihedral, LJ); with ``chirality``, a penalty per neighbour triple of a stereocentre
    that a candidate flips (a term like the bonded ones, counted once its four atoms are placed)."""

    def __init__(self, cg_topology: CGTopology, plans: dict[str, Plan], chirality: ChiralCentres | None = None,
                 coulomb: SelectionCoulomb | None = None, params=None):
        """``coulomb``: add reaction-field Coulomb with the environment (the pair parameters then
        carry f·q_i·q_j as a third row); ``params``: the topology's force-field parameters, if
        already built."""
        topo = cg_topology.topology
        self.params = params if params is not None else build_parameters(topo)
        p = self.params
        self.coulomb = coulomb
        if coulomb is not None:
            from backmap.forcefield.settings import ONE_4PI_EPS0

            self.scaled_charge = torch.as_tensor(np.asarray(p.charges) * np.sqrt(ONE_4PI_EPS0), dtype=torch.float32)
            self.k_rf, self.c_rf = coulomb.constants()
        self.c6 = torch.as_tensor(p.c6, dtype=torch.float32)
        self.c12 = torch.as_tensor(p.c12, dtype=torch.float32)
        self.lj_type = torch.as_tensor(p.lj_type)
        self.chirality = chirality
        if chirality is not None:
            self.chiral_sign = torch.as_tensor(chirality.sign, dtype=torch.float32)
        self.molecule = torch.as_tensor(topo.molecule_index)
        self.local = {}
        self.excluded: dict[str, torch.Tensor] = {}
        for block in topo.blocks:
            mt = block.moltype
            if mt.name in self.local:
                continue
            terms = molecule_terms(mt)
            rows = chirality.rows.get(mt.name) if chirality is not None else None
            if rows is not None and len(rows):  # parameter: which triple of its centre a row is
                terms = {**terms, "chirality": (rows.tolist(), chirality.slot[mt.name][:, None])}
            plan = plans[mt.name]
            per_unit = []
            for unit in plan.units:
                entry = {}
                for name in (*_BONDED, "chirality"):
                    atoms, params = terms.get(name, ([], []))
                    if not atoms:
                        continue
                    a = np.asarray(atoms)
                    hit = np.isin(a, unit.atoms).any(1)
                    if hit.any():
                        entry[name] = (torch.as_tensor(a[hit]), torch.as_tensor(np.asarray(params)[hit], dtype=torch.float32),
                                       torch.as_tensor(np.isin(a[hit], unit.atoms)))
                per_unit.append(entry)
            self.local[mt.name] = per_unit
            ex = np.zeros((mt.n_atoms, mt.n_atoms), bool)
            e = excluded_pairs(mt)
            ex[e[:, 0], e[:, 1]] = ex[e[:, 1], e[:, 0]] = True
            np.fill_diagonal(ex, True)
            self.excluded[mt.name] = torch.as_tensor(ex)
        self._cache: dict = {}
        self.local_index = torch.as_tensor(np.concatenate([np.tile(np.arange(b.moltype.n_atoms), b.count)
                                                           for b in topo.blocks]))
    def reset(self) -> None:
        """New CG frame. The cached bonded index tables depend only on the topology and the unit
        group, so they survive frames; the cache is only bounded (colouring makes groups vary)."""
        if len(self._cache) > 10_000:
            self._cache = {}

    def _inversions(self, xs: torch.Tensor, centres: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """(B, K, T) penalty: the weight where the signed volume of a row (c, a, b, d) in ``xs``
        (B, K, T, 4, 3) is opposite to the reference's (centre atoms ``centres`` (B, T), triples
        ``slots`` (T,))."""
        c = xs[..., 0, :]
        vol = ((xs[..., 1, :] - c) * torch.linalg.cross(xs[..., 2, :] - c, xs[..., 3, :] - c)).sum(-1)
        ref = self.chiral_sign[centres, slots[None]][:, None]
        return self.chirality.weight * (vol * ref < 0).to(vol.dtype)

    def pair_params(self, moltype: str, units: torch.Tensor, neighbours: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2, U, K) LJ c6, c12 of every unit atom with every neighbour (global indices, -1
        padding), zero for padding, excluded pairs and neighbours outside ``mask`` (B, K); with
        Coulomb (B, 3, U, K), f·q_i·q_j third. Flat index_select lookups: cheaper than advanced
        indexing at these sizes."""
        u, nb = units.clamp(min=0), neighbours.clamp(min=0)
        flat = nb.reshape(-1)
        n_types = self.c6.shape[1]
        ti = self.lj_type[u] * n_types  # (B, U)
        tj = self.lj_type.index_select(0, flat).view(nb.shape)
        pair_index = (ti[:, :, None] + tj[:, None, :]).reshape(-1)
        ex = self.excluded[moltype]
        n_local = ex.shape[0]
        same = self.molecule[u][:, :, None] == self.molecule.index_select(0, flat).view(nb.shape)[:, None]
        cols = self.local_index.index_select(0, flat).view(nb.shape).clamp(max=n_local - 1)
        excl = ex.view(-1)[(self.local_index[u] * n_local)[:, :, None] + cols[:, None, :]] & same
        ok = (units >= 0)[:, :, None] & (neighbours >= 0)[:, None, :] & ~excl
        if mask is not None:
            ok &= mask[:, None, :]
        rows = [self.c6.view(-1).index_select(0, pair_index), self.c12.view(-1).index_select(0, pair_index)]
        if self.coulomb is not None:
            q = self.scaled_charge
            rows.append((q[u][:, :, None] * q.index_select(0, flat).view(nb.shape)[:, None, :]).reshape(-1))
        pair = torch.stack(rows)
        return pair.view(len(rows), *excl.shape).transpose(0, 1) * ok[:, None]

    #: bonded terms a turn about bonds (energy guidance's moves) leaves unchanged: functions of
    #: bond lengths and bond angles only
    TURN_INVARIANT = frozenset({"bond", "angle", "urey_bradley"})

    def prepare(self, moltype: str, step: int, first_atom: torch.Tensor, units: torch.Tensor,
                turning: bool = False) -> dict:
        """Index tables of one step's bonded terms, all kinds fused: one gather of every term
        atom (B, A), the candidate slot that replaces each and each kind's span. All but the
        gather depend only on the topology and the step, so they are cached across frames and
        molecule groups (any subset of a step's molecules costs one addition). ``turning``: only
        the terms a turn about bonds changes (for energy guidance, which compares energies of one
        placement turned: the others are the same constant in each)."""
        key = (moltype, step, turning)
        st = self._cache.get(key)
        if st is None:
            st = self._cache[key] = self._prepare_step(moltype, step, first_atom, units, turning)
        return st if st["local_all"] is None else {**st, "glob": first_atom[:, None] + st["local_all"][None]}

    def _prepare_step(self, moltype: str, step: int, first_atom: torch.Tensor, units: torch.Tensor,
                      turning: bool = False) -> dict:
        terms = self.local[moltype][step]
        if turning:
            terms = {name: term for name, term in terms.items() if name not in self.TURN_INVARIANT}
        unit_atoms = [int(a) for a in (units[0] - first_atom[0]).tolist()]
        local, spans, params, offset = [], [], [], 0
        for name, (atoms, par, _is_unit) in terms.items():
            T, k = atoms.shape
            local.append(atoms.reshape(-1))
            spans.append((name, offset, T, k))
            params.append(par)
            offset += T * k
        st = {"glob": None, "pair": None, "local_all": None}
        if local:
            local_all = torch.cat(local)
            slot = torch.full_like(local_all, -1)
            for u, a in enumerate(unit_atoms):
                slot[local_all == a] = u
            is_unit = slot >= 0
            # term membership (A, terms): unplaced atoms per term by one matmul
            member = torch.zeros(offset, sum(T for _n, _o, T, _k in spans))
            row, col = 0, 0
            for _name, _off, T, k in spans:
                member[row + torch.arange(T * k), col + torch.arange(T).repeat_interleave(k)] = 1.0
                row, col = row + T * k, col + T
            st.update(local_all=local_all, spans=spans, params=params, is_unit=is_unit,
                      unit_cols=torch.nonzero(is_unit)[:, 0], unit_slot=slot[is_unit], member=member)
        return st

    def __call__(self, moltype: str, step: int, first_atom: torch.Tensor, candidates: torch.Tensor,
                 env: EnvironmentBatch, positions: torch.Tensor, placed: torch.Tensor,
                 local: torch.Tensor | None = None, static: dict | None = None, all_placed: bool = False) -> torch.Tensor:
        """Energies (B, K) of candidates (B, K, U, 3) in the lab frame (``local``: the same in the
        units' frames, if at hand — saves transforming back; ``static``: from :meth:`prepare`;
        ``all_placed``: ``placed`` is all true, as in Gibbs sweeps — no term is skipped).
        Every molecule of the step places the same unit (its atoms are never padding)."""
        B, K, U = candidates.shape[:3]
        st = static if static is not None else self.prepare(moltype, step, first_atom, env.target_atoms)
        total = None
        if st["glob"] is not None:
            glob = st["glob"]
            x = positions[glob].unsqueeze(1).repeat(1, K, 1, 1)  # (B, K, A, 3)
            x.index_copy_(2, st["unit_cols"], candidates.index_select(2, st["unit_slot"]).to(x.dtype))  # the unit's atoms
            parts = []
            for (name, off, T, k), par in zip(st["spans"], st["params"]):
                xs = x[:, :, off:off + T * k].reshape(B, K, T, k, 3)
                if name == "chirality":
                    parts.append(self._inversions(xs, glob[:, off:off + T * k:k], par[:, 0].long()))
                else:
                    parts.append(bonded_energy(name, [xs[..., j, :] for j in range(k)], par))
            e = torch.cat(parts, -1) if len(parts) > 1 else parts[0]  # (B, K, terms)
            if all_placed:
                total = e.sum(-1)
            else:  # terms with an atom not placed yet (other than the unit's) are skipped
                missing = (~placed[glob] & ~st["is_unit"]).to(e.dtype) @ st["member"]  # (B, terms)
                total = (e * (missing == 0)[:, None]).sum(-1)
        # Lennard-Jones with the environment, in the local frame: r² by one batched matmul, the
        # pair parameters broadcast over the K candidates
        if local is None:
            local = (candidates - env.centre[:, None, None]) @ env.rotation.transpose(1, 2)[:, None]
        pp = env.pair_params  # (B, 2, U, N), zero where masked
        if pp is None:
            pp = self.pair_params(moltype, env.target_atoms, env.atom_index, env.atom_mask)
        N = pp.shape[-1]
        lc = local.reshape(B, K * U, 3)
        ex = env.atom_positions
        ex2 = torch.addcmul(torch.addcmul(ex[..., 0] * ex[..., 0], ex[..., 1], ex[..., 1]), ex[..., 2], ex[..., 2])
        r2 = torch.baddbmm((lc * lc).sum(-1)[:, :, None] + ex2[:, None, :], lc, ex.transpose(1, 2), alpha=-2.0)
        if pp.shape[1] == 3:  # reaction-field Coulomb, before r2 is overwritten
            total = self._coulomb(r2, pp[:, 2], B, K) if total is None else total + self._coulomb(r2, pp[:, 2], B, K)
        inv6 = r2.clamp_(min=1e-4).pow_(3).reciprocal_().view(B, K, U * N)  # nothing differentiates it: in place
        c6, c12 = pp[:, 0].reshape(B, 1, U * N), pp[:, 1].reshape(B, 1, U * N)
        lj = torch.addcmul(-c6, c12, inv6).mul_(inv6).sum(-1)  # (c12/r⁶ − c6)/r⁶: two passes fewer
        total = lj if total is None else total + lj
        return total

    def _coulomb(self, r2: torch.Tensor, qq: torch.Tensor, B: int, K: int) -> torch.Tensor:
        """(B, K) reaction-field Coulomb of squared distances ``r2`` (B, K·U, N) with the charge
        products ``qq`` (B, U, N), pairs beyond the cut-off left out."""
        c = self.coulomb
        r2 = r2.view(B, K, -1)
        r = r2.clamp(min=c.r_min**2).sqrt()
        e = torch.where(r2 < c.cutoff**2, r.reciprocal() + self.k_rf * r2 - self.c_rf, 0.0)
        return (e * qq.reshape(B, 1, -1)).sum(-1)


class CGRestraint:
    """½k Σ_J |M(x)_J − R_J|² of a candidate over the beads J its unit maps onto (:meth:`set_frame`
    gives R), so that a unit is chosen to meet its CG input and a chain cannot drift away from its
    CG trace bead by bead; added to any scorer by :class:`RestrainedScorer`."""

    def __init__(self, cg_topology: CGTopology, plans: dict[str, Plan], k: float):
        self.k = float(k)
        self.molecule = torch.as_tensor(cg_topology.topology.molecule_index)
        self.cg_terms: dict[str, list] = {}
        self.cg_positions: torch.Tensor | None = None
        self._build_cg_terms(cg_topology, plans)

    def _build_cg_terms(self, cg_topology: CGTopology, plans: dict[str, Plan]) -> None:
        """Per molecule type and plan step: the beads the unit's atoms map onto, their weights on
        the unit's atoms (J, U), the molecule's other atoms in those beads, their weights (J, A) and
        which beads each of them feeds (A, J)."""
        topo = cg_topology.topology
        first_bead = np.full(sum(b.count for b in topo.blocks), -1, np.int64)  # per molecule; -1: not mapped
        starts = np.cumsum([0] + [b.count for b in topo.blocks])
        for cb in cg_topology.blocks:
            k = next(i for i, b in enumerate(topo.blocks) if b is cb.block)
            first_bead[starts[k]:starts[k + 1]] = cb.first_bead + cb.mapping.n_beads * np.arange(cb.block.count)
        self.first_bead = torch.as_tensor(first_bead)
        for cb in cg_topology.blocks:
            w = cb.mapping.weight_matrix
            per_unit = []
            for unit in plans[cb.block.moltype.name].units:
                atoms = np.asarray(unit.atoms)
                beads = np.nonzero(np.abs(w[:, atoms]).sum(1) > 0)[0]
                rest = np.setdiff1d(np.nonzero(np.abs(w[beads]).sum(0) > 0)[0], atoms)
                w_rest = torch.as_tensor(w[beads][:, rest], dtype=torch.float32)
                per_unit.append((torch.as_tensor(beads), torch.as_tensor(w[beads][:, atoms], dtype=torch.float32),
                                 torch.as_tensor(rest), w_rest, (w_rest != 0).float().T))
            self.cg_terms[cb.block.moltype.name] = per_unit

    def set_frame(self, cg_positions: np.ndarray) -> None:
        """The CG frame (M, 3), molecules whole as the sampler's positions: the restraint's R."""
        self.cg_positions = torch.as_tensor(np.asarray(cg_positions), dtype=torch.float32)

    def __call__(self, moltype: str, step: int, first_atom: torch.Tensor, candidates: torch.Tensor,
                 positions: torch.Tensor, placed: torch.Tensor, all_placed: bool) -> torch.Tensor:
        """(B, K) ½k Σ_J |M(x)_J − R_J|² over the beads the unit maps onto whose other atoms are placed."""
        beads, w_unit, rest, w_rest, feeds = self.cg_terms[moltype][step]
        first_bead = self.first_bead[self.molecule[first_atom]]  # (B,)
        R = self.cg_positions[first_bead[:, None] + beads[None]]  # (B, J, 3)
        glob = first_atom[:, None] + rest[None]  # (B, A)
        fixed = torch.einsum("ja,bai->bji", w_rest, positions[glob]) - R  # (B, J, 3)
        miss = fixed[:, None] + torch.einsum("ju,bkui->bkji", w_unit, candidates)  # (B, K, J, 3)
        e = 0.5 * self.k * (miss * miss).sum(-1)  # (B, K, J)
        if not all_placed:  # a bead whose other atoms are not all placed yet is not scored
            ready = ((~placed[glob]).float() @ feeds) == 0  # (B, J)
            e = e * ready[:, None]
        return e.sum(-1)


class RestrainedScorer:
    """A candidate scorer (the force field's :class:`UnitEnergy`, morphing's flat-bottom energy, or
    none) plus the :class:`CGRestraint`, with the scorer interface the sampler uses."""

    def __init__(self, scorer, restraint: CGRestraint):
        self.scorer = scorer
        self.restraint = restraint
        self.pair_params = scorer.pair_params if scorer is not None else None

    def set_frame(self, cg_positions: np.ndarray) -> None:
        self.restraint.set_frame(cg_positions)

    def reset(self) -> None:
        if self.scorer is not None:
            self.scorer.reset()

    def prepare(self, *args, **kw):
        return self.scorer.prepare(*args, **kw) if self.scorer is not None else None

    def __call__(self, moltype: str, step: int, first_atom: torch.Tensor, candidates: torch.Tensor, env,
                 positions: torch.Tensor, placed: torch.Tensor, all_placed: bool = False, **kw) -> torch.Tensor:
        e = self.restraint(moltype, step, first_atom, candidates, positions, placed, all_placed)
        if self.scorer is not None:
            e = e + self.scorer(moltype, step, first_atom, candidates, env, positions, placed, all_placed=all_placed,
                                **kw)
        return e


class Sampler:
    """Backmaps CG frames with a generator, a traversal plan per molecule type and a selector."""

    def __init__(self, cg_topology: CGTopology, plans: dict[str, Plan], generator: Generator, selector: Selector,
                 options: SamplerOptions | None = None, channels: Channels | None = None,
                 rng: np.random.Generator | None = None, chirality: ChiralCentres | None = None,
                 energy=None):
        """``energy``: the candidate scorer instead of the force field's :class:`UnitEnergy` (same
        interface; e.g. :class:`backmap.sampling.flat_bottom.FlatBottomEnergy` for morphing)."""
        self.cg = cg_topology
        self.plans = plans
        self.generator = generator
        self.selector = selector
        self.options = options or SamplerOptions()
        self.channels = channels or Channels.from_system(cg_topology)
        self.rng = rng or np.random.default_rng(0)
        self.chirality = chirality  #: the stereocentres whose hands the selection keeps (moves read it)
        if chirality is not None and not self.options.energy:
            raise ValueError("keeping stereocentres needs the candidates' energies (options.energy)")
        if energy is not None and chirality is not None:
            raise ValueError("keeping stereocentres needs the force field's energies, not another scorer")
        self.energy = energy
        if energy is None and self.options.energy:
            params = build_parameters(cg_topology.topology)
            self.energy = UnitEnergy(cg_topology, plans, chirality, self._coulomb(params), params)
        if self.options.cg_restraint > 0:
            self.energy = RestrainedScorer(self.energy, CGRestraint(cg_topology, plans, self.options.cg_restraint))
        self.builder = EnvironmentBuilder(cg_topology, plans, self.channels, cutoff=self.options.cutoff,
                                          strip_hydrogens=self.options.strip_hydrogens,
                                          pair_params=self.energy.pair_params if self.energy else None)
        self.orientation = PartnerOrientation(cg_topology, plans, self.options.orient_units, self.options.dock) \
            if self.options.orient_units or self.options.dock else None
        self.placements = 0
        self.repaired_units = 0  # units drawn again by the clash repair
        self._near_keys: np.ndarray | None = None  # atom pairs ≤ 3 bonds apart, for the clash search
        self.polish = None
        self.polish_log = {"placements": 0, "energy_drop": 0.0, "accepted": 0}
        self._rotors: dict = {}
        self._lj_excluded_keys: np.ndarray | None = None
        self._clash_excluded: np.ndarray | None = None
        if self.options.polish_steps:
            if self.options.polish_sweeps not in ("all", "last"):
                raise ValueError(f"polish_sweeps {self.options.polish_sweeps!r}: expected all or last")
            self.polish = self.guidance(self.options.polish_steps)

    def _coulomb(self, params) -> SelectionCoulomb | None:
        """The selection energy's Coulomb term as ``options.electrostatics`` asks for the force-field
        ``params`` (None: off)."""
        choice = self.options.electrostatics
        if choice not in ("auto", "on", "off"):
            raise ValueError(f"electrostatics {choice!r}: expected auto, on or off")
        if choice == "off" or (choice == "auto" and not needs_electrostatics(params)):
            return None
        return SelectionCoulomb(self.options.cutoff, self.options.epsilon_rf)

    def guidance(self, steps: int) -> PlacementPolish:
        """The energy guidance of ``steps`` descent steps on this sampler's selection energy (which
        must be the force field's: a flat-bottom or IBI scorer has no rotor energies to descend)."""
        scorer = self.energy.scorer if isinstance(self.energy, RestrainedScorer) else self.energy
        if not isinstance(scorer, UnitEnergy):
            raise ValueError("polishing placements needs the force field's energies (a .top topology, "
                             "energy scoring on, no flat-bottom or IBI scorer)")
        self._polish_graphs = {mt.name: mt.graph for mt in self.cg.topology.moltypes.values()}
        return PlacementPolish(steps)

    def _unit_arrays(self, cb, plan: Plan, step: int):
        unit = plan.units[step]
        mm, count = cb.mapping, cb.block.count
        first_atom = cb.block.first_atom + cb.block.moltype.n_atoms * np.arange(count)
        first_bead = cb.first_bead + mm.n_beads * np.arange(count)
        atoms = first_atom[:, None] + np.asarray(unit.atoms)[None]
        bead = first_bead + unit.bead
        pred = np.where(unit.predecessor >= 0, first_bead + unit.predecessor, -1)
        frame = first_bead[:, None] + np.asarray(mm.frame_beads(unit.bead))[None]
        return first_atom, atoms, bead, pred, frame

    def _groups(self, beads: np.ndarray) -> list[np.ndarray]:
        """Molecules of one step split so that no two units closer than two environment reaches (or
        ``separation``) move together."""
        if not self.options.batch_molecules:
            return [np.array([k]) for k in range(len(beads))]
        if not self.options.colouring:
            return [np.arange(len(beads))]
        pos = self.builder.beads[beads]
        d = np.linalg.norm(minimum_image(pos[:, None] - pos[None], box_dimensions(self.builder.box)), axis=-1)
        reach = self.options.separation or 2 * (self.options.cutoff + self.builder.margin)
        g = nx.Graph()
        g.add_nodes_from(range(len(beads)))
        g.add_edges_from(zip(*np.nonzero(np.triu(d < reach, 1))))
        colour = nx.greedy_color(g, strategy="largest_first")
        return [np.array([k for k, c in colour.items() if c == col]) for col in sorted(set(colour.values()))]

    def _schedule(self) -> list[tuple]:
        """Everything about the steps of one frame that does not change during it: per molecule
        type and plan step, the unit arrays and molecule groups — computed once, and the static
        parts of their environments prepared in a few vectorised passes."""
        schedule = []
        for cb in self.cg.blocks:
            name = cb.block.moltype.name
            plan = self.plans[name]
            steps = []
            for s in range(len(plan.units)):
                first_atom, atoms, bead, pred, frame = self._unit_arrays(cb, plan, s)
                unit = plan.units[s]
                meta = {"moltype": name, "bead": unit.bead, "unit_atoms": unit.atoms, "step": s}
                groups = []
                for g in self._groups(bead):
                    fa, idx = torch.as_tensor(first_atom[g]), torch.as_tensor(atoms[g])
                    est = self.energy.prepare(name, s, fa, idx) if self.energy is not None else None
                    groups.append((g, atoms[g], bead[g], pred[g], frame[g], fa, idx, est))
                steps.append((name, s, meta, groups))
            self.builder.prepare(name, [(g[1], g[2], g[3], g[4]) for st in steps for g in st[3]])
            schedule.append(steps)
        return schedule

    def frame_groups(self, cg_positions: np.ndarray, box: np.ndarray) -> list[UnitGroup]:
        """Set the CG frame (M, 3) (molecules whole) and return its unit groups in plan order —
        for refiners that move units in their environments (:meth:`environment`)."""
        self._set_frame(cg_positions, box)
        return [UnitGroup(name, s, meta, g[0], g[1], g[2], g[3], g[4])
                for steps in self._schedule() for name, s, meta, groups in steps for g in groups]

    def keep_frame(self) -> EnvironmentBuilder:
        """The frame set last (by :meth:`frame_groups`), kept for :meth:`use_frame`: a refiner that
        runs several frames' chains in lockstep (``vae_mc``) switches between them without setting
        each again. The sampler goes on with a copy, which the next frame set replaces."""
        kept = self.builder
        self.builder = copy.copy(kept)
        return kept

    def use_frame(self, kept: EnvironmentBuilder) -> None:
        """Build environments (:meth:`environment`) in a frame kept by :meth:`keep_frame`."""
        self.builder = kept

    def environment(self, group: UnitGroup, positions: torch.Tensor, placed: torch.Tensor | None = None
                    ) -> EnvironmentBatch:
        """The environments of a group's units at ``positions`` (N, 3) (the atoms ``placed`` may
        be seen, (N,) or per unit (B, N); default all): what the generator sees in a Gibbs sweep."""
        if placed is None:
            placed = torch.ones(len(positions), dtype=torch.bool)
        env = self.builder.build(group.moltype, group.atoms, group.bead, group.predecessor, positions, placed,
                                 frame_beads=group.frame, compact=True)
        env.meta = group.meta
        return env

    def backmap(self, cg_positions: np.ndarray, box: np.ndarray, start: np.ndarray | None = None,
                progress_label: str | None = None, previous: np.ndarray | None = None,
                redrawn: Collection[str] = ()) -> np.ndarray:
        """AA positions (N, 3) nm for one CG frame (M, 3) with molecules whole. ``start``: an
        initial AA structure — then the forward pass is skipped and only Gibbs sweeps run
        (morphing scheme B). ``previous``: the AA frame before this one in a trajectory, which the
        environments carry for a generator trained in trajectory mode (``EnvironmentSpec.temporal``).
        ``redrawn``: names of beads whose units are drawn anew right after (a regrow,
        :meth:`~backmap.engine.plugin.Move.redraws`): the last Gibbs sweep leaves them as they
        stand (on sPS with a chain's first three monomers regrown, 6 of its 20 steps)."""
        with torch_threads(1):  # small tensors per step (also the per-frame neighbour search)
            return self._backmap(cg_positions, box, start, progress_label, previous, set(redrawn))

    def _set_frame(self, cg_positions: np.ndarray, box: np.ndarray) -> None:
        """A new CG frame for the environment builder and the candidate scorer."""
        self.builder.set_frame(cg_positions, box)
        if self.energy is not None:
            self.energy.reset()
        if isinstance(self.energy, RestrainedScorer):
            self.energy.set_frame(cg_positions)

    def _backmap(self, cg_positions, box, start, progress_label, previous=None, redrawn: set[str] = frozenset()
                 ) -> np.ndarray:
        self._set_frame(cg_positions, box)
        if self.generator.environment.temporal:
            spec = self.generator.environment
            self.builder.set_previous(previous, spec.temporal_alignment, spec.temporal_twist or 0.0)
        n = self.cg.topology.n_atoms
        positions = torch.zeros(n, 3) if start is None else torch.as_tensor(start, dtype=torch.float32).clone()
        placed = torch.zeros(n, dtype=torch.bool) if start is None else torch.ones(n, dtype=torch.bool)
        schedule = self._schedule()
        sweeps = (["forward"] if start is None else []) + ["gibbs"] * self.options.gibbs_sweeps
        last = len(sweeps) - 1
        skip = redrawn if sweeps[last:] == ["gibbs"] else set()  # in the last sweep, if a Gibbs one
        plan = [(k, sweep, step) for k, sweep in enumerate(sweeps) for block in schedule for step in block
                if k < last or self._bead_name(step) not in skip]
        steps = progress(plan, total=len(plan), description=progress_label) if progress_label else plan
        with torch.no_grad():
            for k, sweep, step in steps:
                if sweep == "gibbs":
                    placed[:] = True
                polish = self.polish is not None and (self.options.polish_sweeps == "all" or k == len(sweeps) - 1)
                self._step(step, positions, placed, all_placed=sweep == "gibbs", polish=polish,
                           candidates=self._sweep_candidates(k, start is None))
        self._last_schedule = schedule
        return to_host(positions).astype(np.float64)

    def _bead_name(self, step: tuple) -> str:
        """The name of the bead a plan step places."""
        return self.plans[step[0]].mapping.beads[step[2]["bead"]].name

    def _sweep_candidates(self, k: int, forward: bool) -> int:
        """Candidates per unit in sweep ``k`` of a frame (``forward``: its sweep 0 is the forward
        pass; a frame started from a structure counts its first Gibbs sweep as sweep 1)."""
        k += 0 if forward else 1
        listed = self.options.sweep_candidates
        return listed[k] if k < len(listed) else self.options.candidates

    def polish_frame(self, positions: np.ndarray, steps: int | None = None) -> np.ndarray:
        """A pass of energy guidance over the frame last backmapped (N, 3): every unit polished
        where it stands, in plan order, with ``steps`` descent steps (default: ``polish_steps``;
        the ``polish`` move's closing pass — units placed after a polished one may have moved into
        it, and the CG projection moves atoms without looking at energies). Without steps the
        positions are returned as given."""
        steps = self.options.polish_steps if steps is None else steps
        if not steps:
            return positions
        guide, self.polish = self.polish, self.polish if self.polish is not None and self.polish.steps == steps \
            else self.guidance(steps)
        x = torch.as_tensor(positions, dtype=torch.float32).clone()
        placed = torch.ones(len(x), dtype=torch.bool)
        try:
            with torch.no_grad(), torch_threads(1):
                for block in self._last_schedule:
                    for step in block:
                        self._polish_step(step, x, placed)
        finally:
            self.polish = guide
        return to_host(x).astype(np.float64)

    def repair_frame(self, positions: np.ndarray) -> tuple[np.ndarray, int]:
        """One round of clash repair on the frame last backmapped as it stands now (N, 3): every
        unit with an atom closer than ``clash_distance`` to an atom more than three bonds away is
        drawn again in Gibbs mode, one unit at a time, in plan order (units of one step do not see
        each other's new places). Returns the positions (``positions`` itself when nothing clashed)
        and the number of units redrawn."""
        x = torch.as_tensor(positions, dtype=torch.float32).clone()
        placed = torch.ones(len(x), dtype=torch.bool)
        with torch.no_grad(), torch_threads(1):
            n = self._repair_clashes(self._last_schedule, x, placed)
        return (x.numpy().astype(np.float64) if n else positions), n

    def regrow_frame(self, positions: np.ndarray, beads: Sequence[str], candidates: int = 0, trials: int = 1
                     ) -> np.ndarray:
        """The block move on the frame last backmapped (N, 3): the units of the ``beads`` named
        (in every molecule type that has them) hidden, placed again in plan order with the rest of
        the molecule where it is, then drawn once more in Gibbs mode — for units that chose badly
        when they were placed with little around them (a chain's start: the hands of its first
        stereocentres). ``candidates`` per unit (0: the sampler's); with ``trials`` > 1 each
        molecule keeps its lowest-energy trial. Positions returned as given if no unit is named."""
        x = torch.as_tensor(positions, dtype=torch.float32).clone()
        placed = torch.ones(len(x), dtype=torch.bool)
        with torch.no_grad(), torch_threads(1):
            if not self._regrow(self._last_schedule, x, placed, set(beads), candidates or self.options.candidates,
                                max(1, trials)):
                return positions
        return to_host(x).astype(np.float64)

    def _regrow(self, schedule: list, positions: torch.Tensor, placed: torch.Tensor, names: set[str], k: int,
                n_trials: int) -> bool:
        """Hide the named beads' units, place them again in plan order (forward mode), then once
        more with everything placed (Gibbs mode); with ``n_trials`` > 1 the block is grown that
        many times (the trials' environments drawn in one batch per step) and each block — the
        hidden beads of a molecule joined by CG bonds: a chain's start and its end are two — keeps
        the trial whose units' Gibbs-mode selection energies sum lowest. False: no unit named."""
        steps = [step for block in schedule for step in block if self._bead_name(step) in names]
        if not steps:
            return False
        units = [g for step in steps for g in step[3]]
        block_of = self._bead_blocks(np.concatenate([g[2] for g in units]))
        hidden = torch.cat([g[6].reshape(-1) for g in units])
        owner = torch.cat([torch.as_tensor(block_of[g[2]])[:, None].expand_as(g[6]).reshape(-1) for g in units])
        trials = [positions.clone() for _ in range(n_trials)]
        placed[:] = True
        placed[hidden] = False
        for step in steps:
            self._step(step, positions, placed, candidates=k, trials=trials)
        # the score: after a Gibbs pass, the sum of the block's units' energies with everything
        # in place (a forward-mode sum, the block's energy before it has settled, kept 0.993
        # instead of 0.997 of sPS's stereocentres on 10 frames)
        energy = torch.zeros(len(trials), int(block_of.max()) + 1)  # per trial and block
        for step in steps:
            blocks = [torch.as_tensor(block_of[g[2]]) for g in step[3]]  # each group's units' blocks
            for t, chosen_groups in enumerate(self._step(step, positions, placed, all_placed=True, candidates=k,
                                                         trials=trials)):
                for block, (_molecules, chosen) in zip(blocks, chosen_groups):
                    energy[t].index_add_(0, block, chosen)
        best = energy.argmin(0)[owner]  # the trial each hidden atom's block keeps
        positions[hidden] = torch.stack([x[hidden] for x in trials])[best, torch.arange(len(hidden))]
        placed[:] = True
        return True

    def _bead_blocks(self, beads: np.ndarray) -> np.ndarray:
        """Per bead of the system, the connected component (numbered from 0) its CG bonds make
        among ``beads`` (global indices), or −1 for a bead not among them. Every block's trial is
        chosen on its own energy: summed with another block's, the choice would trade the one's
        fit for the other's."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        beads = np.unique(beads)
        at = np.full(self.cg.n_beads, -1)
        at[beads] = np.arange(len(beads))
        bonds = self.cg.bonds.reshape(-1, 2)
        inside = bonds[(at[bonds] >= 0).all(1)]
        graph = coo_matrix((np.ones(len(inside)), (at[inside[:, 0]], at[inside[:, 1]])), shape=(len(beads),) * 2)
        block = np.full(self.cg.n_beads, -1)
        block[beads] = connected_components(graph, directed=False)[1]
        return block

    def clashing_atoms(self, positions: torch.Tensor) -> np.ndarray:
        """Atoms closer than ``clash_distance`` to an atom more than three bonds away, and (with
        ``clash_energy``) both atoms of every pair the force field does not exclude whose LJ energy
        exceeds it — from one neighbour search out to the farther of the two reaches."""
        i, j = self.clashing_pairs(positions)
        return np.unique(np.concatenate([i, j]))

    def clashing_pairs(self, positions: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The pairs (i, j) :meth:`clashing_atoms` finds its atoms in."""
        if self._near_keys is None:
            from backmap.metrics.terms import pairs_within

            self._near_keys = pairs_within(self.cg.topology, 3)
        x = to_host(positions).astype(np.float64)
        d = self.options.clash_distance
        lj = self.options.clash_energy > 0
        if lj and self._clash_excluded is None:  # pairs neither criterion counts: left out of the search
            self._clash_excluded = np.intersect1d(self._near_keys, self._lj_exclusions())
        excluded = self._clash_excluded if lj else self._near_keys
        i, j, shift = neighbour_pairs(x, self.builder.box, max(d, self.LJ_CLASH_REACH) if lj else d, excluded)
        r2 = ((x[j] + shift - x[i]) ** 2).sum(-1)
        keys = i * len(x) + j
        close = (r2 < d * d) & ~_sorted_member(keys, self._near_keys)  # the search has a skin
        if lj:
            close |= (self._lj_energies(i, j, r2) > self.options.clash_energy) & ~_sorted_member(keys, self._lj_exclusions())
        return i[close], j[close]

    #: how far an LJ clash is searched for (nm): beyond it no pair of the supported force fields
    #: comes near the energies a clash threshold is set to
    LJ_CLASH_REACH = 0.3

    def _lj_exclusions(self) -> np.ndarray:
        """The force field's excluded pairs as sorted keys i·N + j (i < j), as the clash search keys them."""
        if self._lj_excluded_keys is None:
            ex = np.sort(np.asarray(self._clash_scorer().params.exclusions, np.int64).reshape(-1, 2), axis=1)
            self._lj_excluded_keys = np.unique(ex[:, 0] * self.cg.topology.n_atoms + ex[:, 1])
        return self._lj_excluded_keys

    def _clash_scorer(self) -> "UnitEnergy":
        scorer = self.energy.scorer if isinstance(self.energy, RestrainedScorer) else self.energy
        if not isinstance(scorer, UnitEnergy):
            raise ValueError("clash_energy needs the force field's energies (a .top topology, energy scoring on)")
        return scorer

    def _lj_energies(self, i: np.ndarray, j: np.ndarray, r2: np.ndarray) -> np.ndarray:
        """LJ energies (kJ/mol) of atom pairs at squared distances ``r2``."""
        scorer = self._clash_scorer()
        ti, tj = scorer.lj_type[torch.as_tensor(i)], scorer.lj_type[torch.as_tensor(j)]
        inv6 = torch.as_tensor(r2).clamp(min=1e-6) ** -3
        return (inv6 * (scorer.c12[ti, tj].double() * inv6 - scorer.c6[ti, tj].double())).numpy()

    def _repair_clashes(self, schedule: list, positions: torch.Tensor, placed: torch.Tensor) -> int:
        """One round of clash repair: the units holding a clashing atom drawn again in Gibbs mode,
        in plan order, those of one step together (as a sweep places them: a step's units in two
        molecules do not see each other's new places; what they leave, the next round finds) —
        and those of all steps the generator draws in one call (equal
        :meth:`~backmap.engine.plugin.Generator.batch_key`: a chain's middle beads) together, at
        the first such step: the units are few and scattered, and a call's fixed cost is most of
        a small one's (≈ 14 ms of 16 for 32 rows on sPS). But two units that clash with each other
        are never drawn together: the units are split into layers (a greedy colouring of their
        clashes, in plan order), drawn one layer after the other, so that the later of the two
        sees where the earlier went — drawn together, both move away from where the other was,
        and adjacent units of a chain could meet anew (on sPS: backbone hydrogens of neighbouring
        beads left 0.07 nm apart by the last round). Returns how many units there were."""
        i, j = self.clashing_pairs(positions)
        bad = np.zeros(len(positions), bool)
        bad[i] = bad[j] = True
        placed[:] = True
        unit_of = np.full(len(positions), -1)  # the atoms of the units to redraw: their number, in plan order
        n_units = 0
        for block in schedule:
            for _name, _s, _meta, groups in block:
                for _g, atoms, *_rest in groups:
                    held = atoms[np.flatnonzero(bad[np.clip(atoms, 0, None)].any(1))]
                    number = np.broadcast_to(n_units + np.arange(len(held))[:, None], held.shape)
                    unit_of[held[held >= 0]] = number[held >= 0]
                    n_units += len(held)
        if not n_units:
            return 0
        layer = _clash_layers(n_units, unit_of[i], unit_of[j])
        atom_layer = np.where(unit_of >= 0, layer[np.maximum(unit_of, 0)], -1)
        n = sum(self._redraw_units(schedule, positions, placed, atom_layer == k) for k in range(int(layer.max()) + 1))
        self.repaired_units += n
        return n

    def _redraw_units(self, schedule: list, positions: torch.Tensor, placed: torch.Tensor, bad: np.ndarray) -> int:
        """The units holding an atom marked ``bad`` drawn again in Gibbs mode: a step's together,
        and those of steps the generator draws in one call at the first of them."""
        merged: dict = {}  # the steps the generator draws in one call, in the order of their first
        for block in schedule:
            for name, s, meta, groups in block:
                for g, atoms, bead, pred, frame, first_atom, idx, _est in groups:
                    rows = np.flatnonzero(bad[np.clip(atoms, 0, None)].any(1))
                    if not len(rows):
                        continue
                    held = torch.as_tensor(rows)
                    units = (g[rows], atoms[rows], bead[rows], pred[rows], frame[rows], first_atom[held], idx[held], None)
                    key = self.generator.batch_key(meta)
                    merged.setdefault(len(merged) if key is None else key, []).append((name, s, meta, units))
        n = 0
        for parts in merged.values():
            if len(parts) == 1:
                name, s, meta, units = parts[0]
                self._step((name, s, meta, [units]), positions, placed, all_placed=True)
            else:
                self._step_merged(parts, positions, placed)
            n += sum(len(part[3][0]) for part in parts)
        return n

    def _step(self, step: tuple, positions: torch.Tensor, placed: torch.Tensor, all_placed: bool = False,
              polish: bool = False, candidates: int | None = None, trials: list[torch.Tensor] | None = None
              ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Place one plan step's units, group after group; returns each group's molecules (their
        first atoms) and the selection energies of the candidates chosen. ``trials``: several
        copies of the positions instead of ``positions`` (a regrow's trials), whose environments go
        to the generator in one batch, each copy choosing for itself; then one such list per copy."""
        xs = [positions] if trials is None else trials
        name, s, meta, groups = step
        chosen_energies: list[list] = [[] for _ in xs]
        blind = self.orientation is not None and not all_placed and self.orientation.blind(name, s)
        for group, atoms, bead, pred, frame, first_atom, idx, est in groups:
            envs = [self.builder.build(name, atoms, bead, pred, x, placed, frame_beads=frame, compact=True) for x in xs]
            for env in envs:
                env.meta = meta
            if blind:  # the generator sees the CG beads only; the selection energy, everything
                seen = [self.builder.build(name, atoms, bead, pred, x, torch.zeros_like(placed), frame_beads=frame,
                                           compact=True) for x in xs]
                for env in seen:
                    env.meta = meta
            else:
                seen = envs
            batch = seen[0] if len(seen) == 1 else EnvironmentBatch.concatenate(seen)
            drawn = torch.as_tensor(self.generator.propose(batch, candidates or self.options.candidates, self.rng),
                                    dtype=torch.float32)
            n = len(first_atom)
            for t, (x, env) in enumerate(zip(xs, envs)):
                chosen_energies[t].append(self._choose(name, s, drawn[t * n:(t + 1) * n], env, x, placed, first_atom,
                                                       bead, idx, est, all_placed, polish))
            placed.index_fill_(0, idx.reshape(-1), True)
            self.placements += idx.numel() * len(xs)
        return chosen_energies[0] if trials is None else chosen_energies

    def _choose(self, name: str, s: int, local: torch.Tensor, env, x: torch.Tensor, placed: torch.Tensor,
                first_atom: torch.Tensor, bead, idx: torch.Tensor, est, all_placed: bool, polish: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One candidate per unit of ``local`` (B, K, U, 3, the units' frames of ``env``) chosen
        by the selector on the selection energy, polished if asked, and written into ``x``; returns
        the molecules (first atoms) and the chosen candidates' energies."""
        lab = env.to_lab(local)  # (B, K, U, 3)
        if self.orientation is not None and not all_placed:
            lab = self.orientation(name, s, lab, first_atom, bead, self.builder.beads, placed, x)
        if self.energy is not None and local.shape[1] > 1:
            energies = self.energy(name, s, first_atom, lab, env, x, placed, local=local, static=est,
                                   all_placed=all_placed)
        else:
            energies = torch.zeros(lab.shape[:2])
        pick = torch.as_tensor(self.selector.select(to_host(energies), self.rng))
        chosen = lab.gather(1, pick.view(-1, 1, 1, 1).expand(-1, 1, *lab.shape[2:]))[:, 0]  # (B, U, 3)
        if polish:
            chosen = self._polish(name, s, first_atom, idx, chosen, env, x, placed, all_placed)
        x.index_copy_(0, idx.reshape(-1), chosen.reshape(-1, 3))
        return first_atom, energies.gather(1, pick.view(-1, 1))[:, 0].float()

    def _step_merged(self, parts: list[tuple], positions: torch.Tensor, placed: torch.Tensor) -> None:
        """Units of several plan steps (``(name, s, meta, units)`` each, one generator
        :meth:`~backmap.engine.plugin.Generator.batch_key`) drawn in Gibbs mode in one proposal
        call, each step then choosing for itself: none sees the others' new places."""
        envs = []
        for name, s, meta, (group, atoms, bead, pred, frame, first_atom, idx, est) in parts:
            env = self.builder.build(name, atoms, bead, pred, positions, placed, frame_beads=frame, compact=True)
            env.meta = meta
            envs.append(env)
        batch = EnvironmentBatch.concatenate(envs)
        batch.meta = {**parts[0][2], "beads": [part[2]["bead"] for part, env in zip(parts, envs) for _ in range(env.size)]}
        drawn = torch.as_tensor(self.generator.propose(batch, self.options.candidates, self.rng), dtype=torch.float32)
        start = 0
        for (name, s, meta, (group, atoms, bead, pred, frame, first_atom, idx, est)), env in zip(parts, envs):
            self._choose(name, s, drawn[start:start + env.size], env, positions, placed, first_atom, bead, idx, est,
                         True, False)
            start += env.size
            self.placements += idx.numel()

    def _polish_step(self, step: tuple, positions: torch.Tensor, placed: torch.Tensor) -> None:
        """Polish every unit of a plan step where it stands (the closing pass: nothing drawn)."""
        name, s, meta, groups = step
        for group, atoms, bead, pred, frame, first_atom, idx, _est in groups:
            rotors = self._unit_rotors(name, s, idx, first_atom, placed)
            if not any(len(r) for r in rotors[0]):
                continue
            env = self.builder.build(name, atoms, bead, pred, positions, placed, frame_beads=frame, compact=True)
            env.meta = meta
            moved = self._polish(name, s, first_atom, idx, positions[idx], env, positions, placed, True, rotors)
            positions.index_copy_(0, idx.reshape(-1), moved.reshape(-1, 3))

    def _unit_rotors(self, name: str, s: int, idx: torch.Tensor, first_atom: torch.Tensor, placed: torch.Tensor
                     ) -> tuple[list[Rotors], torch.Tensor]:
        """The rotors of a group's units per pattern of placed atoms in their molecules, and which
        pattern each molecule has."""
        graph = self._polish_graphs[name]
        n = graph.number_of_nodes()
        unit_atoms = to_host(idx[0] - first_atom[0])
        mol_placed = placed[first_atom[:, None] + torch.arange(n)[None]]  # (B, n)
        patterns, inverse = torch.unique(mol_placed, dim=0, return_inverse=True)
        found = []
        for pattern in patterns:
            pattern = to_host(pattern)
            key = (name, s, pattern.tobytes())
            if key not in self._rotors:
                self._rotors[key] = find_rotors(graph, unit_atoms, pattern, self._centre_weights(name, s))
            found.append(self._rotors[key])
        return found, inverse

    def _centre_weights(self, moltype: str, step: int) -> np.ndarray:
        """The mapping weights of a unit's atoms in its bead (the centre a rigid turn keeps)."""
        cb = next(cb for cb in self.cg.blocks if cb.block.moltype.name == moltype)
        unit = self.plans[moltype].units[step]
        w = np.abs(np.asarray(cb.mapping.weight_matrix)[unit.bead, np.asarray(unit.atoms)])
        return w if w.sum() > 0 else np.ones(len(unit.atoms))

    def _polish(self, name: str, s: int, first_atom: torch.Tensor, idx: torch.Tensor, chosen: torch.Tensor, env,
                positions: torch.Tensor, placed: torch.Tensor, all_placed: bool, known=None) -> torch.Tensor:
        """The chosen placements (B, U, 3) after the energy-guided descent of :attr:`polish` in
        their rotatable bonds (bond lengths and angles kept as drawn); ``known``: from
        :meth:`_unit_rotors`, if already at hand."""
        turning = self.energy.prepare(name, s, first_atom, idx, turning=True)  # the terms a turn changes

        def energy(x: torch.Tensor) -> torch.Tensor:  # (B, K, U, 3) configurations -> (B, K)
            return self.energy(name, s, first_atom, x, env, positions, placed, static=turning, all_placed=all_placed)

        out = chosen.clone()
        found, inverse = known or self._unit_rotors(name, s, idx, first_atom, placed)
        for k, rotors in enumerate(found):
            ext = positions[first_atom[:, None] + torch.as_tensor(rotors.external)[None]] \
                if len(rotors.external) else None
            rows = torch.nonzero(inverse == k)[:, 0]
            # rare (molecules placed differently): every molecule descends, only these rows are kept
            y, log = self.polish(chosen, energy, rotors, ext)
            out[rows] = y[rows]
            if log:
                self.polish_log["placements"] += len(rows)
                self.polish_log["energy_drop"] += float((log["e_before"] - log["e_after"])[rows].sum())
                self.polish_log["accepted"] += log["accepted"]
        return out


def _clash_layers(n_units: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per unit (0 … n_units − 1, plan order) its layer: the smallest not taken by an earlier unit
    it clashes with (pairs of units ``a``, ``b``; −1: an atom of no flagged unit). One layer when
    no two flagged units clash with each other."""
    keep = (a >= 0) & (b >= 0) & (a != b)
    a, b = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    earlier: list[set[int]] = [set() for _ in range(n_units)]
    for u, v in zip(a.tolist(), b.tolist()):
        earlier[v].add(u)
    layer = np.zeros(n_units, int)
    for v in range(n_units):
        taken = {int(layer[u]) for u in earlier[v]}
        layer[v] = next(k for k in range(len(taken) + 1) if k not in taken)
    return layer


def _sorted_member(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Which ``keys`` occur in the sorted array ``table``."""
    if not len(table):
        return np.zeros(len(keys), bool)
    at = np.minimum(np.searchsorted(table, keys), len(table) - 1)
    return table[at] == keys
