"""Forward sampling and Gibbs refinement (thesis 4.2.2–4.2.3), batched over molecules.

Molecule types are placed one after another; within a type every molecule advances through the
same plan together, one unit per step: the environment builder gathers each unit's surroundings,
the generator proposes K candidates, their local energies are scored and a selector picks one.
The forward pass sees only atoms placed so far; each Gibbs sweep re-places every unit seeing all
other atoms. With ``colouring`` the molecules of a step are split into groups whose environments
do not overlap, so no unit is ever re-placed in the same step as one it sees.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch

from backmap.environment import Channels, EnvironmentBatch, EnvironmentBuilder
from backmap.forcefield.energy import bonded_energy
from backmap.forcefield.parameters import build_parameters, excluded_pairs, molecule_terms
from backmap.mapping import CGTopology
from backmap.pbc import box_dimensions, minimum_image
from backmap.plugin import Generator, Selector
from backmap.progress import progress
from backmap.traversal import Plan

_BONDED = ("bond", "angle", "proper", "rb", "improper")


@dataclass
class SamplerOptions:
    candidates: int = 8
    gibbs_sweeps: int = 2
    cutoff: float = 0.7
    colouring: bool = False
    batch_molecules: bool = True
    strip_hydrogens: bool = True
    energy: bool = True  # score candidates with the force field (else all energies are 0)


class UnitEnergy:
    """Local energy of candidate placements: bonded terms that involve the unit's atoms (with the
    other atoms where they are now, terms with unplaced atoms skipped) and Lennard-Jones with the
    environment's atoms, excluded pairs left out. The force field's selection energy (DBM: bond,
    angle, dihedral, LJ)."""

    def __init__(self, cg_topology: CGTopology, plans: dict[str, Plan]):
        topo = cg_topology.topology
        self.params = build_parameters(topo)
        p = self.params
        self.c6 = torch.as_tensor(p.c6, dtype=torch.float32)
        self.c12 = torch.as_tensor(p.c12, dtype=torch.float32)
        self.lj_type = torch.as_tensor(p.lj_type)
        self.molecule = torch.as_tensor(topo.molecule_index)
        self.local = {}
        self.excluded: dict[str, torch.Tensor] = {}
        for block in topo.blocks:
            mt = block.moltype
            if mt.name in self.local:
                continue
            terms = molecule_terms(mt)
            plan = plans[mt.name]
            per_unit = []
            for unit in plan.units:
                entry = {}
                for name in _BONDED:
                    atoms, params = terms[name]
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
        """Forget the per-frame cache (new CG frame)."""
        self._cache = {}

    def _static(self, moltype: str, step: int, first_atom: torch.Tensor, env: EnvironmentBatch) -> dict:
        units = env.target_atoms
        local_units = (units - first_atom[:, None]).clamp(min=0)
        bonded = []
        for name, (atoms, params, is_unit) in self.local[moltype][step].items():
            glob = first_atom[:, None, None] + atoms[None]  # (B, T, k)
            # which candidate atom (if any) replaces each term atom
            slot = torch.full(glob.shape, -1, dtype=torch.long)
            for u in range(units.shape[1]):
                hit = (atoms[None] == local_units[:, u, None, None]) & (units[:, u] >= 0)[:, None, None]
                slot = torch.where(hit, torch.full_like(slot, u), slot)
            bonded.append((name, glob, params, is_unit, slot))
        ti = self.lj_type[units.clamp(min=0)]
        tj = self.lj_type[env.atom_index.clamp(min=0)]
        same = self.molecule[units.clamp(min=0)][:, :, None] == self.molecule[env.atom_index.clamp(min=0)][:, None, :]
        ex = self.excluded[moltype]
        excl = ex[self.local_index[units.clamp(min=0)][:, :, None],
                  self.local_index[env.atom_index.clamp(min=0)][:, None, :].clamp(max=ex.shape[0] - 1)]
        return {"bonded": bonded, "c6": self.c6[ti[:, :, None], tj[:, None, :]],
                "c12": self.c12[ti[:, :, None], tj[:, None, :]],
                "allowed": env.target_mask[:, :, None] & ~(same & excl)}

    def __call__(self, moltype: str, step: int, first_atom: torch.Tensor, candidates: torch.Tensor,
                 env: EnvironmentBatch, positions: torch.Tensor, placed: torch.Tensor) -> torch.Tensor:
        """Energies (B, K) of candidates (B, K, U, 3) in the lab frame."""
        B, K, U = candidates.shape[:3]
        key = (moltype, step, env.target_atoms.numpy().tobytes())
        st = self._cache.get(key)
        if st is None:
            st = self._cache[key] = self._static(moltype, step, first_atom, env)
        total = torch.zeros(B, K)
        for name, glob, params, is_unit, slot in st["bonded"]:
            x = positions[glob].unsqueeze(1).expand(B, K, *glob.shape[1:], 3)
            # substitute the candidates for the unit's atoms
            cand = candidates.reshape(B, K, U, 3)
            picked = cand[torch.arange(B)[:, None, None, None], torch.arange(K)[None, :, None, None],
                          slot.clamp(min=0)[:, None]]  # (B, K, T, k, 3)
            x = torch.where((slot >= 0)[:, None, :, :, None], picked, x)
            ok = (placed[glob] | is_unit[None]).all(-1)  # (B, T)
            e = bonded_energy(name, [x[..., k, :] for k in range(glob.shape[-1])], params)
            total = total + (e * ok[:, None]).sum(-1)
        # Lennard-Jones with the environment (local frame); r² by expansion: one batched matmul
        local_cand = (candidates - env.centre[:, None, None]) @ env.rotation.transpose(1, 2)[:, None]
        env_x = env.atom_positions
        r2 = ((local_cand * local_cand).sum(-1)[..., None] + (env_x * env_x).sum(-1)[:, None, None, :]
              - 2 * torch.einsum("bkui,bni->bkun", local_cand, env_x))
        inv6 = 1.0 / r2.clamp(min=1e-4) ** 3
        use = (st["allowed"] & env.atom_mask[:, None, :]).to(inv6.dtype)[:, None]
        lj = (st["c12"][:, None] * inv6 - st["c6"][:, None]) * inv6 * use
        return total + lj.sum((-1, -2))


class Sampler:
    """Backmaps CG frames with a generator, a traversal plan per molecule type and a selector."""

    def __init__(self, cg_topology: CGTopology, plans: dict[str, Plan], generator: Generator, selector: Selector,
                 options: SamplerOptions | None = None, channels: Channels | None = None,
                 rng: np.random.Generator | None = None):
        self.cg = cg_topology
        self.plans = plans
        self.generator = generator
        self.selector = selector
        self.options = options or SamplerOptions()
        self.channels = channels or Channels.from_system(cg_topology)
        self.rng = rng or np.random.default_rng(0)
        self.builder = EnvironmentBuilder(cg_topology, plans, self.channels, cutoff=self.options.cutoff,
                                          strip_hydrogens=self.options.strip_hydrogens)
        self.energy = UnitEnergy(cg_topology, plans) if self.options.energy else None
        self.placements = 0

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
        """Molecules of one step split so that no two units closer than two cut-offs move together."""
        if not self.options.batch_molecules:
            return [np.array([k]) for k in range(len(beads))]
        if not self.options.colouring:
            return [np.arange(len(beads))]
        pos = self.builder.beads[beads]
        d = np.linalg.norm(minimum_image(pos[:, None] - pos[None], box_dimensions(self.builder.box)), axis=-1)
        reach = 2 * (self.options.cutoff + self.builder.margin)
        g = nx.Graph()
        g.add_nodes_from(range(len(beads)))
        g.add_edges_from(zip(*np.nonzero(np.triu(d < reach, 1))))
        colour = nx.greedy_color(g, strategy="largest_first")
        return [np.array([k for k, c in colour.items() if c == col]) for col in sorted(set(colour.values()))]

    def backmap(self, cg_positions: np.ndarray, box: np.ndarray, start: np.ndarray | None = None,
                progress_label: str | None = None) -> np.ndarray:
        """AA positions (N, 3) nm for one CG frame (M, 3) with molecules whole. ``start``: an
        initial AA structure — then the forward pass is skipped and only Gibbs sweeps run
        (morphing scheme B)."""
        self.builder.set_frame(cg_positions, box)
        if self.energy is not None:
            self.energy.reset()
        n = self.cg.topology.n_atoms
        positions = torch.zeros(n, 3) if start is None else torch.as_tensor(start, dtype=torch.float32).clone()
        placed = torch.zeros(n, dtype=torch.bool) if start is None else torch.ones(n, dtype=torch.bool)
        sweeps = (["forward"] if start is None else []) + ["gibbs"] * self.options.gibbs_sweeps
        total = sum(len(self.plans[cb.block.moltype.name].units) for cb in self.cg.blocks) * len(sweeps)
        steps = ((sweep, cb, s) for sweep in sweeps for cb in self.cg.blocks
                 for s in range(len(self.plans[cb.block.moltype.name].units)))
        if progress_label:
            steps = progress(steps, total=total, description=progress_label)
        # the tensors of one step are small: one thread avoids torch's fork-join overhead, which
        # becomes severe when the other core is busy
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._sweeps(steps, positions, placed)
        finally:
            torch.set_num_threads(threads)
        return positions.numpy().astype(np.float64)

    def _sweeps(self, steps, positions: torch.Tensor, placed: torch.Tensor) -> None:
        with torch.no_grad():
            for sweep, cb, s in steps:
                if sweep == "gibbs":
                    placed[:] = True
                self._step(cb, s, positions, placed)

    def _step(self, cb, s: int, positions: torch.Tensor, placed: torch.Tensor) -> None:
        name = cb.block.moltype.name
        plan = self.plans[name]
        first_atom, atoms, bead, pred, frame = self._unit_arrays(cb, plan, s)
        for group in self._groups(bead):
            env = self.builder.build(name, atoms[group], bead[group], pred[group], positions, placed,
                                     frame_beads=frame[group])
            unit = plan.units[s]
            env.meta = {"moltype": name, "bead": unit.bead, "unit_atoms": unit.atoms, "step": s}
            local = torch.as_tensor(self.generator.propose(env, self.options.candidates, self.rng),
                                    dtype=torch.float32)
            lab = env.to_lab(local)  # (B, K, U, 3)
            if self.energy is not None and local.shape[1] > 1:
                energies = self.energy(name, s, torch.as_tensor(first_atom[group]), lab, env, positions, placed)
            else:
                energies = torch.zeros(lab.shape[:2])
            pick = torch.as_tensor(self.selector.select(energies.numpy(), self.rng))
            chosen = lab[torch.arange(len(group)), pick]  # (B, U, 3)
            idx = torch.as_tensor(atoms[group])
            positions[idx] = chosen
            placed[idx] = True
            self.placements += idx.numel()
