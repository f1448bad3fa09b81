"""The ``vae_mc`` refiner: Metropolis–Hastings moves of whole units (beads) proposed by a trained
``vae`` model through its latent space (Monroe & Shen eq. 9), exact for the restrained target

    π(x | R) ∝ exp(−β [U(x) + ½ k Σ_I |M_I(x) − R_I|² + ½ k_c Σ_rigid (|r_ij| − b_ij)²])

on the manifold where the bonds inside each unit are at their topology length (the decoder builds
them so; see docs/vae.md for why the bonds between units and ring closures are stiff springs).

One sweep moves every unit once: units of one plan step, split by the core's colouring so that no
two units moved together see each other or share an interaction, move simultaneously and are
accepted independently. Energies are local (:meth:`ForceField.group_energies`, float64).
"""
from __future__ import annotations

import csv
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from backmap import BackmapError
from backmap.engine.registry import default_registry
from backmap.engine.models import load_model
from backmap.engine.plugin import Refiner
from backmap.forcefield import ForceField
from backmap.forcefield.minimize import minimize_restrained
from backmap.refinement.constraints import BondConstraints
from backmap.refinement.latent_moves import vae_move
from backmap.refinement.restrained import (BOLTZMANN, RefineParams, RefineResult, RestrainedSystem,
                                           resolve_constraints)
from backmap.sampling.sampler import Sampler, SamplerOptions, UnitGroup
from backmap.sampling.traversal import make_plans
from backmap.system.io import atomic_path
from backmap.threads import torch_threads


class VAEMCParams(RefineParams):
    model: Path | None = Field(None, description="a trained vae model folder (e.g. models/sps-vae); default: the "
                                                 "model at hand (the run's trained model, backmap apply --model)")
    steps: int = Field(20, ge=0, description="Monte Carlo sweeps per frame (every unit is moved once per sweep)")
    trials: int = Field(1, ge=1, description="proposals per move (M): one is selected ∝ its importance weight and "
                                              "accepted with W_F/W_B (appendix A); 1 = plain eq. 9")
    closure_stiffness: float = Field(1.0e6, gt=0, description="k_c (kJ/mol/nm²) of the stiff spring on rigid bonds "
                                                               "the decoder does not hold exactly (between units, "
                                                               "ring closures)")
    extent: float = Field(0.5, gt=0, description="hard wall of the target: a unit atom farther than this (nm) from "
                                                 "its bead's CG position has zero probability (physically never: "
                                                 "the restraint holds the centre, the bonds the shape); it bounds how "
                                                 "far a move reaches, so that units moved together never interact")
    minimize_steps: int = Field(300, ge=0, description="restrained minimization steps before sampling: whole-bead "
                                                       "moves relax clashes and strained angles slowly (docs/vae.md)")
    project_output: bool = Field(True, description="put the final structure's rigid bonds back at their lengths "
                                                   "(SHAKE; atoms move ~0.004 nm): the chain samples them as stiff "
                                                   "springs, the reference MD held them rigid")
    sweep_log: Path | None = Field(None, description="CSV of acceptance per frame, sweep and unit type")
    trace: Path | None = Field(None, description=".npz of the Lennard-Jones energy (total and per molecule) and the "
                                                 "positions (float32) after every sweep, with the CPU seconds "
                                                 "(decorrelation analysis)")
    threads: int = Field(1, ge=1, description="torch threads")


class VAEMCRefiner(Refiner):
    name = "vae_mc"
    summary = "exact VAE Monte Carlo moves of whole beads with a trained vae model (restrained Boltzmann target)"
    Params = VAEMCParams

    def use_model(self, model: Path) -> None:
        if self.params.model is None:
            self.params = self.params.model_copy(update={"model": Path(model)})

    def prepare(self, system: RestrainedSystem) -> None:
        if self.params.model is None:
            raise BackmapError("vae_mc: no model: give the refiner's 'model' parameter (a vae model folder, e.g. "
                               "--param model=models/sps-vae), or refine where a model is at hand (a recipe with a "
                               "train step, backmap apply --model)")
        p = self.params = resolve_constraints(self.params, system, self.name)
        self.system = system
        model = load_model(p.model)
        model.check_system(system.cg_topology)
        self.generator = gen = model.generator
        if not hasattr(gen, "latent_model"):
            raise BackmapError(f"vae_mc: the model in {p.model} is a {gen.name!r} generator; it needs a latent-variable "
                               "model with exact densities (plugin: vae)")
        self.ff = ForceField(system.topology, system.nonbonded, torch.float64)
        if self.ff.settings.coulomb == "pme":
            raise BackmapError("vae_mc: local Monte Carlo energies need a short-ranged potential; the .mdp uses PME "
                               "(coulombtype = reaction-field or cut-off in a copy of the .mdp, or no --mdp)")
        registry = default_registry()
        spec = gen.environment
        rng = np.random.default_rng(0)
        plans = make_plans(system.cg_topology, registry.get("traversal", spec.traversal).cls(), spec, rng)
        options = SamplerOptions(candidates=1, gibbs_sweeps=0, cutoff=spec.cutoff, colouring=True,
                                 strip_hydrogens=spec.strip_hydrogens, energy=False)
        self.sampler = Sampler(system.cg_topology, plans, gen, registry.get("selector", "random").cls(), options,
                               channels=model.channels)
        pairs, lengths = system.constrained_bonds(p.constraints)
        self.rigid_pairs, self.rigid_lengths = np.asarray(pairs).reshape(-1, 2), np.asarray(lengths, float)
        self.constraints = BondConstraints(pairs, lengths, system.topology.masses, tolerance=1e-10,
                                           dtype=torch.float64)
        self.beads = system.bead_groups()
        self.bead_of_atom: dict[int, list[int]] = defaultdict(list)
        for b, (atoms, _w) in enumerate(self.beads):
            for a in atoms:
                self.bead_of_atom[int(a)].append(b)
        self.labels = {}
        for cb in system.cg_topology.blocks:
            self.labels[cb.block.moltype.name] = [bead.name for bead in cb.mapping.beads]
        self._cache: dict = {}
        self.sweep_rows: list[dict] = []
        self._frames = 0  # frames refined so far (the sweep log's frame number)
        self.trace_rows: list[tuple] = []
        self.beta = 1.0 / (BOLTZMANN * p.temperature)

    # ------------------------------------------------------------------ per group tables
    def _tables(self, group: UnitGroup) -> dict:
        """Touched beads (B, T) with their atoms and weights (B, T, A), rigid bonds (B, P, 2)
        touching each unit: the restraint and spring terms of the units' local energies."""
        key = (group.moltype, group.step, group.atoms.tobytes())
        st = self._cache.get(key)
        if st is not None:
            return st
        touched = [sorted({b for a in unit if a >= 0 for b in self.bead_of_atom[int(a)]}) for unit in group.atoms]
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
        st = self._cache[key] = {
            "bead": torch.as_tensor(bead_idx), "bead_atoms": torch.as_tensor(atoms),
            "bead_weights": torch.as_tensor(weights), "bond": torch.as_tensor(bond_idx),
            "index": torch.as_tensor(group.atoms), "label": f"{group.moltype}:{self.labels[group.moltype][group.meta['bead']]}"}
        return st

    def _energies(self, configs: torch.Tensor, st: dict, targets: torch.Tensor, vectors: np.ndarray) -> torch.Tensor:
        """(C, B) local energies of the group's units in configurations (C, N, 3): force field,
        CG restraint of the beads their atoms map to, springs on their rigid bonds."""
        p = self.params
        e = self.ff.group_energies(configs, vectors, st["index"])
        bead = st["bead"]
        mapped = (configs[:, st["bead_atoms"]] * st["bead_weights"][None, ..., None]).sum(-2)  # (C, B, T, 3)
        d = (mapped - targets[bead.clamp(min=0)][None]) * (bead >= 0)[None, ..., None]
        e = e + 0.5 * p.restraint * (d * d).sum((-1, -2))
        if st["bond"].shape[1]:
            pairs = torch.as_tensor(self.rigid_pairs)[st["bond"].clamp(min=0)]  # (B, P, 2)
            b0 = torch.as_tensor(self.rigid_lengths)[st["bond"].clamp(min=0)]
            r = (configs[:, pairs[..., 0]] - configs[:, pairs[..., 1]]).norm(dim=-1)
            e = e + 0.5 * p.closure_stiffness * (((r - b0) ** 2) * (st["bond"] >= 0)).sum(-1)
        return e

    # ------------------------------------------------------------------ sampling
    def _separation(self) -> float:
        """Bead distance beyond which two units, each within ``extent`` of its bead, neither see
        each other (environment cut-off) nor interact (force-field cut-off)."""
        e = self.params.extent
        return max(self.generator.environment.cutoff + e, self.ff.settings.cutoff + 2 * e) + 1e-6

    def refine(self, positions: np.ndarray, targets: np.ndarray, boxes: np.ndarray,
               rng: np.random.Generator) -> RefineResult:
        rng = np.random.default_rng(self.params.seed) if self.params.seed is not None else rng
        out, rows = np.array(positions, np.float64), []
        with torch.no_grad(), torch_threads(self.params.threads):
            for f in range(len(positions)):
                out[f], row = self._refine_frame(out[f], targets[f], boxes[f], rng, self._frames)
                self._frames += 1
                rows.append(row)
        if self.params.sweep_log is not None:
            self._write_sweep_log()
        if self.params.trace is not None:
            self._write_trace()
        return RefineResult(out, rows)

    def _refine_frame(self, x: np.ndarray, targets: np.ndarray, box: np.ndarray, rng: np.random.Generator,
                      frame: int) -> tuple[np.ndarray, dict]:
        p = self.params
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        if p.minimize_steps:
            with torch.enable_grad():
                x = minimize_restrained(self.ff, x, box, self.system.cg_topology, targets,
                                        restraint=0.5 * p.restraint, steps=p.minimize_steps).positions
        xt = torch.as_tensor(x, dtype=torch.float64)
        xt, ok = self.constraints.positions(xt[None], xt[None])
        if not bool(ok.all()):  # a few badly stretched bonds: minimize first, then constrain
            with torch.enable_grad():
                x = minimize_restrained(self.ff, x, box, self.system.cg_topology, targets,
                                        restraint=0.5 * p.restraint, steps=200).positions
            xt = torch.as_tensor(x, dtype=torch.float64)
            xt, ok = self.constraints.positions(xt[None], xt[None])
        if not bool(ok.all()):
            raise BackmapError("vae_mc: the start structure's rigid bonds could not be satisfied even after 200 "
                               "minimization steps (try minimize_steps)")
        pos = xt[0].clone()
        vectors = np.asarray(box, np.float64).reshape(3, 3)
        target_t = torch.as_tensor(targets, dtype=torch.float64)
        self.sampler.options.separation = self._separation()
        groups = self.sampler.frame_groups(targets, box)
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # accepted, proposed, invalid
        for sweep in range(p.steps):
            sweep_counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
            for group in groups:
                st = self._tables(group)
                env = self.sampler.environment(group, pos.to(torch.float32))
                model = self.generator.latent_model(env)
                rot, centre = env.rotation.double(), env.centre.double()
                idx = st["index"]

                def log_target(local: torch.Tensor) -> torch.Tensor:  # (B, n, U, 3) → (B, n)
                    lab = local.double() @ rot[:, None] + centre[:, None, None]
                    configs = pos.expand(local.shape[1], -1, -1).clone()
                    configs[:, idx] = lab.transpose(0, 1)
                    logp = -self.beta * self._energies(configs, st, target_t, vectors).T
                    far = (local.double().norm(dim=-1) > p.extent).any(-1)  # the hard wall (the centre is the bead)
                    return torch.where(far, torch.full_like(logp, -torch.inf), logp)

                local = (pos[idx] - centre[:, None]) @ rot.transpose(1, 2)
                move = vae_move(model, local, log_target, gen, p.trials)
                if bool(move.accepted.any()):
                    new = move.x.double() @ rot + centre[:, None]
                    acc = move.accepted
                    pos[idx[acc]] = new[acc]
                c = sweep_counts[st["label"]]
                c[0] += int(move.accepted.sum())
                c[1] += len(move.accepted)
                c[2] += int(move.invalid.sum())
            if p.trace is not None:
                self._record(frame, sweep, pos, vectors)
            for label, c in sweep_counts.items():
                self.sweep_rows.append({"frame": frame, "sweep": sweep, "unit": label, "accepted": c[0],
                                        "proposed": c[1], "invalid": c[2]})
                for k in range(3):
                    counts[label][k] += c[k]
        if p.project_output:
            projected, ok = self.constraints.positions(pos[None], pos[None])
            if bool(ok.all()):
                pos = projected[0]
        x = pos.numpy()
        e = self.ff.energy(pos[None], vectors[None], whole=True)
        row = {"potential": float(e.total[0]),
               "restraint": float(self.system.restraint_energy(pos[None], target_t[None], p.restraint)[0]),
               "constraint_residual": float(self.constraints.residual(pos[None])[0])}
        total = [sum(c[k] for c in counts.values()) for k in range(3)]
        row["acceptance"] = total[0] / max(total[1], 1)
        row["invalid"] = total[2]
        for label, c in sorted(counts.items()):
            row[f"acceptance[{label}]"] = c[0] / max(c[1], 1)
        return x, row

    def _record(self, frame: int, sweep: int, pos: torch.Tensor, vectors: np.ndarray) -> None:
        e = self.ff.energy(pos[None], vectors[None], whole=True, per_molecule=True, terms=("lj",))
        self.trace_rows.append((frame, sweep, time.process_time(), float(e.total[0]),
                                e.per_molecule["lj"][0].numpy().copy(), pos.numpy().astype(np.float32)))

    def _write_trace(self) -> None:
        rows = self.trace_rows
        with atomic_path(Path(self.params.trace)) as tmp:
            np.savez(tmp, frame=np.array([r[0] for r in rows]), sweep=np.array([r[1] for r in rows]),
                     cpu_seconds=np.array([r[2] for r in rows]), lj=np.array([r[3] for r in rows]),
                     lj_per_molecule=np.stack([r[4] for r in rows]) if rows else np.zeros((0, 0)),
                     positions=np.stack([r[5] for r in rows]) if rows else np.zeros((0, 0, 3), np.float32))

    def _write_sweep_log(self) -> None:
        path = Path(self.params.sweep_log)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["frame", "sweep", "unit", "accepted", "proposed", "invalid"])
            writer.writeheader()
            writer.writerows(self.sweep_rows)
