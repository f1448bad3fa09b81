"""The restrained target of units (beads) in their environments, shared by the ``vae_mc`` refiner
(exact Monte Carlo moves) and data-free training by reverse KL (:mod:`backmap_vae.data_free`):

    π(x | R) ∝ exp(−β U(x) − β [½ k Σ_I |M_I(x) − R_I|² + ½ k_c Σ_rigid (|r_ij| − b_ij)²])

with U the force field (local energies, float64), the CG restraint on every bead a unit's atoms
map to, and stiff springs on the rigid bonds that touch the unit (bonds inside a unit are held by
the decoder). Units of one colour group neither see nor interact with each other, so their local
energies are independent.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from backmap.api import BackmapError
from backmap.api.forcefield import BOLTZMANN, ForceField
from backmap.api.io import host_random
from backmap.api.sampling import LocalMetropolis, cross_energies, sequential_metropolis
from backmap.api.recipes import default_registry
from backmap.api.refinement import RestrainedSystem
from backmap.api.sampling import ChiralCentres, EnvironmentBatch, Sampler, SamplerOptions, UnitGroup, make_plans


@dataclass
class BoundUnits:
    """One colour group of units at the current positions: their environments, the local frames
    (rotation, centre) and the terms of their target for local placements (B, n, U, 3)."""

    targets: "UnitTargets"
    group: UnitGroup
    tables: dict
    env: object
    rotation: torch.Tensor
    centre: torch.Tensor
    positions: torch.Tensor
    cg: torch.Tensor
    vectors: np.ndarray
    anchor: torch.Tensor | None = None  # (B, U, 3) local: each atom's wall centre when not the unit's own
    _near: np.ndarray | None = None

    @property
    def index(self) -> torch.Tensor:
        return self.tables["index"]

    @property
    def label(self) -> str:
        return self.tables["label"]

    def local(self) -> torch.Tensor:
        """The units' current atoms in their local frames (B, U, 3)."""
        return (self.positions[self.index] - self.centre[:, None]) @ self.rotation.transpose(1, 2)

    def to_lab(self, local: torch.Tensor) -> torch.Tensor:
        """Local placements (B, U, 3) or (B, n, U, 3) → lab positions (float64)."""
        extra = local.ndim - 3
        rot = self.rotation.reshape(self.rotation.shape[0], *[1] * extra, 3, 3)
        centre = self.centre.reshape(self.centre.shape[0], *[1] * extra, 1, 3)
        return local.double() @ rot + centre

    def energies(self, local: torch.Tensor, moved: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(force field, restraint + springs) in kJ/mol, each (B, n), of placements (B, n, U, 3),
        differentiable in them; every other atom — the other units of the group included — where
        it is now (configuration 0 is the current state: the force field takes the atoms outside
        a unit from it, so that a unit's trials never see another unit's trials). ``moved``
        (B, U): the only atoms in which a unit's placements differ (local moves); the force-field
        terms that involve none of them, the same for every placement, are left out."""
        lab = self.to_lab(local)
        configs = self.positions.expand(local.shape[1] + 1, -1, -1).clone()
        real = self.index >= 0  # padding slots hold no atom
        configs[1:, self.index[real]] = lab.transpose(0, 1)[:, real]
        ff, bias = self.targets.energies(configs, self.tables, self.cg, self.vectors, moved)
        return ff[1:].T, bias[1:].T

    def coupling(self, k: int, moved: dict[int, tuple[torch.Tensor, torch.Tensor]], states: torch.Tensor
                 ) -> torch.Tensor:
        """Change of ln π of unit k's ``states`` (n, U, 3, local) when the units ``moved`` ({j: (old,
        new) local placements}) stand at their new placements instead of the old: −β times the
        change of their non-bonded energy with k (the only terms that join units of a group)."""
        delta = torch.zeros(len(states), dtype=torch.float64)
        near = [j for j in moved if self.near()[k, j]]
        if not near:
            return delta
        mine = self.index[k].numpy() >= 0  # padding slots hold no atom
        lab = self.to_lab_unit(k, states)[:, torch.as_tensor(mine)]
        atoms = self.index[k].numpy()[mine]
        slots = [self.index[j].numpy() >= 0 for j in near]
        new = torch.cat([self.to_lab_unit(j, moved[j][1][None])[0][torch.as_tensor(m)] for j, m in zip(near, slots)])
        old = torch.cat([self.to_lab_unit(j, moved[j][0][None])[0][torch.as_tensor(m)] for j, m in zip(near, slots)])
        other = np.concatenate([self.index[j].numpy()[m] for j, m in zip(near, slots)])
        return self.targets.interaction_change(lab, atoms, old, new, other, self.vectors)

    def decide_in_turn(self, old: torch.Tensor, new: torch.Tensor, moved: torch.Tensor, log_ratio: torch.Tensor,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Metropolis decisions of local moves of the units from placements ``old`` to ``new``
        (B, U, 3, local) that move the atoms ``moved`` (B, U), with ln π′/π ``log_ratio`` (B,)
        against the state before any of them: one after the other, each corrected by the
        non-bonded energy changes with the moves accepted before it (the only terms that join
        units of a group; :func:`backmap.api.sampling.sequential_metropolis`). Returns (accepted (B,),
        invalid (B,): NaN ratios, rejected)."""
        log_u = torch.log(host_random(torch.rand, len(old), generator=generator, dtype=torch.float64))
        index = self.index.numpy()
        accepted = sequential_metropolis(
            self.targets.ff, self.to_lab(torch.stack([old, new], 1)), index.clip(min=0), moved.numpy() & (index >= 0), log_ratio,
            log_u, self.targets.beta, self.vectors)
        return accepted, torch.isnan(log_ratio)

    def scan_in_turn(self, new: torch.Tensor, moved: torch.Tensor, generator: torch.Generator,
                     rigid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:meth:`decide_in_turn` compiled end to end (:class:`LocalMetropolis`): the units' moves to
        placements ``new`` (B, U, 3, local) of the atoms ``moved`` (B, U), each scored against the
        state the moves accepted before it left — no couplings, and no energies of the state before
        the group in torch. The same random numbers as :meth:`decide_in_turn`, the same decisions
        up to rounding. ``rigid`` (B, U) int: atoms with one label k > 0 move as one rigid body
        (:meth:`LocalMetropolis.scan`). None where it does not apply (a stereo reference's penalty
        is not compiled)."""
        local_mc = self.targets.local_metropolis()
        if local_mc is None:
            return None
        log_u = torch.log(host_random(torch.rand, len(new), generator=generator, dtype=torch.float64))
        index = self.index.numpy()
        walls = self.to_lab(torch.zeros_like(new) if self.anchor is None else self.anchor)
        accepted, invalid, _delta, _x = local_mc.scan(self.positions, index, moved.numpy() & (index >= 0),
                                              self.to_lab(new).numpy(), log_u.numpy(), self.targets.beta,
                                              self.vectors, walls.numpy(), self.targets.extent, self.cg.numpy(),
                                              None if rigid is None else rigid.numpy())
        return torch.as_tensor(accepted), torch.as_tensor(invalid)

    def near(self) -> np.ndarray:
        """(B, B) bool: units whose centres lie within :meth:`UnitTargets.interaction_range` (nearest
        image), the only pairs whose moves can change each other's energy."""
        if self._near is None:
            d = (self.centre[:, None] - self.centre[None]).numpy()
            if self.vectors is not None:
                v = np.asarray(self.vectors, np.float64).reshape(3, 3)
                d = d - np.rint(d @ np.linalg.inv(v)) @ v
            self._near = np.linalg.norm(d, axis=-1) < self.targets.interaction_range()
        return self._near

    def to_lab_unit(self, k: int, local: torch.Tensor) -> torch.Tensor:
        """Unit k's local placements (n, U, 3) → lab positions (float64)."""
        return local.double() @ self.rotation[k] + self.centre[k]

    def outside(self, local: torch.Tensor) -> torch.Tensor:
        """How far (nm, ≥ 0) the farthest atom of each placement lies beyond the wall ``extent``."""
        r = local.double()
        if self.anchor is not None:  # (B, U, 3) against placements (B, …, U, 3)
            r = r - self.anchor.reshape(len(self.anchor), *[1] * (local.ndim - 3), *self.anchor.shape[1:])
        beyond = (r.norm(dim=-1) - self.targets.extent).clamp(min=0)
        real = (self.index >= 0).reshape(len(self.index), *[1] * (local.ndim - 3), self.index.shape[1])
        return torch.where(real, beyond, torch.zeros_like(beyond)).amax(-1)  # padding slots hold no atom

    def log_target(self, local: torch.Tensor, moved: torch.Tensor | None = None) -> torch.Tensor:
        """ln π (B, n) up to a constant (per unit, with ``moved``: :meth:`energies`), with the hard
        wall (−inf beyond ``extent``)."""
        ff, bias = self.energies(local, moved)
        logp = -self.targets.beta * (ff + bias)
        return torch.where(self.outside(local) > 0, torch.full_like(logp, -torch.inf), logp)


class StackedUnits:
    """The colour groups of one plan step in several frames, as one batch: one network call moves
    the units of every frame (the per-call cost of the networks, most of a sweep's at 8 trials,
    is shared). Each frame's units keep their own positions, energies and couplings; units of
    different frames never interact. ``parts``: (frame slot, :class:`BoundUnits`); one part (one
    frame) is used as it is."""

    def __init__(self, parts: list[tuple[int, BoundUnits]]):
        self.parts = parts
        sizes = [len(u.index) for _f, u in parts]
        self.offsets = np.cumsum([0, *sizes])
        envs = [u.env for _f, u in parts]
        self.env = envs[0] if len(envs) == 1 else EnvironmentBatch.concatenate(envs)
        self.label = parts[0][1].label

    def slices(self) -> list[tuple[int, BoundUnits, slice]]:
        """(frame slot, units, their rows of the batch)."""
        return [(f, u, slice(int(self.offsets[k]), int(self.offsets[k + 1]))) for k, (f, u) in enumerate(self.parts)]

    def local(self) -> torch.Tensor:
        return torch.cat([u.local() for _f, u in self.parts])

    def log_target(self, local: torch.Tensor) -> torch.Tensor:
        return torch.cat([u.log_target(local[rows]) for _f, u, rows in self.slices()])

    def near(self) -> np.ndarray:
        """:meth:`BoundUnits.near` of every frame's units, block-diagonal: frames never interact."""
        out = np.zeros((self.offsets[-1],) * 2, bool)
        for _f, u, rows in self.slices():
            out[rows, rows] = u.near()
        return out

    def coupling(self, k: int, moved: dict[int, tuple[torch.Tensor, torch.Tensor]], states: torch.Tensor
                 ) -> torch.Tensor:
        """:meth:`BoundUnits.coupling` of row k with the moved rows of its own frame."""
        part = int(np.searchsorted(self.offsets, k, side="right")) - 1
        lo, hi = int(self.offsets[part]), int(self.offsets[part + 1])
        mine = {j - lo: m for j, m in moved.items() if lo <= j < hi}
        if not mine:
            return torch.zeros(len(states), dtype=torch.float64)
        return self.parts[part][1].coupling(k - lo, mine, states)


class UnitTargets:
    """The system's units, their colour groups and local energies for a generator with unit =
    'bead' (a ``vae`` model), at ``temperature`` with restraint constant ``restraint``
    (kJ/mol/nm²), springs ``closure_stiffness`` on the rigid bonds ``constraints`` selects, and a
    wall at ``extent`` nm from each unit's bead; with ``chirality``, ``chirality.weight`` kJ/mol
    per stereocentre triple signed against the reference (the target keeps its hands)."""

    def __init__(self, system: RestrainedSystem, generator, channels, temperature: float, restraint: float,
                 closure_stiffness: float, extent: float, constraints: str, who: str = "vae_mc",
                 chirality: ChiralCentres | None = None):
        self.system, self.generator, self.chirality = system, generator, chirality
        self.restraint, self.closure_stiffness, self.extent = restraint, closure_stiffness, extent
        self.beta = 1.0 / (BOLTZMANN * temperature)
        self.ff = ForceField(system.topology, system.nonbonded, torch.float64)
        if self.ff.settings.coulomb == "pme":
            raise BackmapError(f"{who}: local Monte Carlo energies need a short-ranged potential; the .mdp uses PME "
                               "(coulombtype = reaction-field or cut-off in a copy of the .mdp, or no --mdp)")
        registry = default_registry()
        spec = generator.environment
        plans = make_plans(system.cg_topology, registry.get("traversal", spec.traversal).cls(), spec,
                           np.random.default_rng(0))
        options = SamplerOptions(candidates=1, gibbs_sweeps=0, cutoff=spec.cutoff, colouring=True,
                                 strip_hydrogens=spec.strip_hydrogens, energy=False)
        self.sampler = Sampler(system.cg_topology, plans, generator, registry.get("selector", "random").cls(), options,
                               channels=channels)
        pairs, lengths = system.constrained_bonds(constraints)
        self.rigid_pairs, self.rigid_lengths = np.asarray(pairs).reshape(-1, 2), np.asarray(lengths, float)
        self.beads = system.bead_groups()
        self.bead_of_atom: dict[int, list[int]] = defaultdict(list)
        for b, (atoms, _w) in enumerate(self.beads):
            for a in atoms:
                self.bead_of_atom[int(a)].append(b)
        self.labels = {cb.block.moltype.name: [bead.name for bead in cb.mapping.beads]
                       for cb in system.cg_topology.blocks}
        self._cache: dict = {}
        self._local_mc: LocalMetropolis | None = None

    def local_metropolis(self) -> LocalMetropolis | None:
        """The compiled local moves' target (:class:`LocalMetropolis`: force field, restraints,
        springs), built once; None with a stereo reference (its penalty is not compiled)."""
        if self.chirality is not None:
            return None
        if self._local_mc is None:
            self._local_mc = LocalMetropolis(self.ff, self.beads, self.restraint, self.rigid_pairs,
                                             self.rigid_lengths, self.closure_stiffness)
        return self._local_mc

    def held_bonds(self) -> np.ndarray:
        """(H, 2) global atom pairs the decoder builds at their topology length when every other
        atom is placed (vae_mc's moves): per unit atom, the bond to the parent of its first
        reference triple when that parent is a unit atom and the bond rigid. The rest of the rigid
        bonds (between units, ring closures) are the target's stiff springs."""
        tables = self.generator.tables
        local: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for key, t in enumerate(tables.tables):
            keys = torch.full((1,), key, dtype=torch.long)
            found = (tables.external[keys] >= 0)  # Gibbs mode: every external reference is placed
            codes, _slot, _bond, rigid = tables.choose(keys, found)
            order = tables.order[key]
            for position in range(len(t.atoms)):
                parent = int(codes[0, position, 0])
                if parent < len(t.atoms) and bool(rigid[0, position]):
                    local[t.moltype].append((t.atoms[int(order[position])], t.atoms[parent]))
        pairs = []
        for mt, first in self.system.topology.molecules():
            if local.get(mt.name):
                pairs.append(first + np.asarray(local[mt.name], np.int64))
        return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)

    def interaction_change(self, states: torch.Tensor, atoms: np.ndarray, old: torch.Tensor, new: torch.Tensor,
                           others: np.ndarray, vectors: np.ndarray | None) -> torch.Tensor:
        """Change of ln π (C,) of placements ``states`` (C, A, 3, lab) of ``atoms`` when the atoms
        ``others`` move from ``old`` to ``new`` (P, 3): −β times the change of their non-bonded
        energy (what joins units, or blocks, moved in one group: sequential decisions)."""
        e = cross_energies(self.ff, states, atoms, new, others, vectors) - cross_energies(self.ff, states, atoms, old,
                                                                                                 others, vectors)
        return -self.beta * e

    def separation(self, interacting: bool = False) -> float:
        """Bead distance beyond which two units, each within ``extent`` of its bead, neither see
        each other (environment cut-off) nor, unless ``interacting``, interact (force-field
        cut-off). Units that may interact are decided one after the other (sequential moves)."""
        e = self.extent
        seen = self.generator.environment.cutoff + e
        return (seen if interacting else max(seen, self.ff.settings.cutoff + 2 * e)) + 1e-6

    def interaction_range(self) -> float:
        """Bead distance within which two units' atoms may come within the force-field cut-off."""
        return self.ff.settings.cutoff + 2 * self.extent

    def frame_groups(self, cg: np.ndarray, box, interacting: bool = False) -> list[UnitGroup]:
        """The colour groups of a frame's units (every unit once)."""
        self.sampler.options.separation = self.separation(interacting)
        return self.sampler.frame_groups(cg, box)

    def bind(self, group: UnitGroup, positions: torch.Tensor, cg: torch.Tensor, vectors: np.ndarray) -> BoundUnits:
        """A group's units at ``positions`` (N, 3, float64) with the frame's CG beads ``cg``."""
        env = self.sampler.environment(group, positions.detach().to(torch.float32))
        return BoundUnits(self, group, self.tables(group), env, env.rotation.double(), env.centre.double(),
                          positions, cg, vectors)

    def bind_unrotated(self, group: UnitGroup, positions: torch.Tensor, cg: torch.Tensor, vectors: np.ndarray
                       ) -> BoundUnits:
        """A group's units with local frames that are only shifted (centre: each unit's bead, as the
        environments take it, in float32; no rotation): for moves that need no network, whose
        target — wall included — is then the one :meth:`bind` gives, without building environments.
        A group whose rows join several units (cranks) names each atom's bead in
        ``meta['wall_beads']`` (B, U): its wall stays around that bead."""
        centre = cg[torch.as_tensor(group.bead)].to(torch.float32).double()
        rotation = torch.eye(3, dtype=torch.float64).expand(len(centre), 3, 3)
        anchor = None
        if "wall_beads" in group.meta:
            anchor = cg[torch.as_tensor(group.meta["wall_beads"])].to(torch.float32).double() - centre[:, None]
        return BoundUnits(self, group, self.tables(group), None, rotation, centre, positions, cg, vectors, anchor)

    def label(self, group: UnitGroup) -> str:
        """A group's log label: its unit type ('moltype:bead'), or the one its ``meta`` names."""
        return group.meta.get("label", f"{group.moltype}:{self.labels[group.moltype][group.meta['bead']]}")

    def tables(self, group: UnitGroup) -> dict:
        """Touched beads (B, T) with their atoms and weights (B, T, A), rigid bonds (B, P, 2)
        touching each unit: the restraint and spring terms of the units' local energies."""
        key = (group.moltype, group.step, group.atoms.tobytes())
        st = self._cache.get(key)
        if st is not None:
            return st
        touched = [sorted({b for a in unit if a >= 0 for b in self.bead_of_atom[int(a)]}) for unit in group.atoms]
        self._check_apart(group, touched)
        T = max(len(t) for t in touched)
        A = max(len(self.beads[b][0]) for t in touched for b in t)
        bead_idx = np.full((len(touched), T), -1)
        atoms = np.zeros((len(touched), T, A), int)
        weights = np.zeros((len(touched), T, A))
        for u, beads in enumerate(touched):
            for t, b in enumerate(beads):
                at, w = self.beads[b]
                bead_idx[u, t] = b
                atoms[u, t, :len(at)] = at
                weights[u, t, :len(at)] = w
        bonds = []
        for unit in group.atoms:
            hit = np.isin(self.rigid_pairs, unit[unit >= 0]).any(1)
            bonds.append(np.flatnonzero(hit))
        P = max((len(b) for b in bonds), default=0)
        bond_idx = np.full((len(bonds), P), -1)
        for u, b in enumerate(bonds):
            bond_idx[u, :len(b)] = b
        if self.chirality is not None:
            rows, signs = self.chirality.touching(self.system.topology, group.atoms)
        else:
            rows, signs = np.zeros((len(group.atoms), 0, 4), np.int64), np.zeros((len(group.atoms), 0), np.int8)
        label = self.label(group)
        st = self._cache[key] = {"chiral": torch.as_tensor(rows), "chiral_sign": torch.as_tensor(signs),
            "bead": torch.as_tensor(bead_idx), "bead_atoms": torch.as_tensor(atoms),
            "bead_weights": torch.as_tensor(weights), "bond": torch.as_tensor(bond_idx),
            "index": torch.as_tensor(group.atoms), "label": label}
        return st

    def _check_apart(self, group: UnitGroup, touched: list[list[int]]) -> None:
        """Units moved in one group must share no restrained bead and no excluded pair (bonds,
        angles, dihedrals, springs): then only non-bonded pairs can couple them."""
        owner: dict[int, int] = {}
        for u, unit in enumerate(group.atoms):
            for a in unit[unit >= 0]:
                owner[int(a)] = u
        beads: dict[int, int] = {}
        for u, bs in enumerate(touched):
            for b in bs:
                if beads.setdefault(b, u) != u:
                    raise BackmapError(f"{group.moltype}: two units moved together map to bead {b} (extent too small?)")
        (ptr, partners) = self.ff.kernel_tables()[2]
        for a, u in owner.items():
            for j in partners[ptr[a]:ptr[a + 1]]:
                if owner.get(int(j), u) != u:
                    raise BackmapError(f"{group.moltype}: units moved together are bonded to each other (atoms {a} "
                                       f"and {int(j)}): extent or the environment cut-off is too small")

    def energies(self, configs: torch.Tensor, st: dict, cg: torch.Tensor, vectors: np.ndarray,
                 moved: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, B) local force-field energies of the group's units in configurations (C, N, 3), and
        (C, B) their CG restraint (the beads their atoms map to) plus the springs on their rigid bonds
        and, with a stereo reference, the penalty on the centres they touch that are inverted.
        ``moved`` (B, U): the force field's terms only of these atoms (:meth:`BoundUnits.energies`)."""
        if moved is None:
            ff = self.ff.group_energies(configs, vectors, st["index"], environment_fixed=True)
        else:  # only the terms that involve a moved atom: the same up to a constant per unit
            ff = self.ff.group_energies(configs, vectors, torch.where(moved, st["index"], -1), environment_fixed=True,
                                        keep_index=False)
        bead = st["bead"]
        mapped = (configs[:, st["bead_atoms"]] * st["bead_weights"][None, ..., None]).sum(-2)  # (C, B, T, 3)
        d = (mapped - cg[bead.clamp(min=0)][None]) * (bead >= 0)[None, ..., None]
        bias = 0.5 * self.restraint * (d * d).sum((-1, -2))
        if st["bond"].shape[1]:
            pairs = torch.as_tensor(self.rigid_pairs)[st["bond"].clamp(min=0)]  # (B, P, 2)
            b0 = torch.as_tensor(self.rigid_lengths)[st["bond"].clamp(min=0)]
            r = (configs[:, pairs[..., 0]] - configs[:, pairs[..., 1]]).norm(dim=-1)
            bias = bias + 0.5 * self.closure_stiffness * (((r - b0) ** 2) * (st["bond"] >= 0)).sum(-1)
        if st["chiral"].shape[1]:
            flipped = self.chirality.inversions(configs, st["chiral"], st["chiral_sign"], vectors)
            bias = bias + self.chirality.weight * flipped
        return ff, bias
