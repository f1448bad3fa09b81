"""Restrained refiners in torch on backmap's own force field: ``langevin`` (BAOAB) and ``mala``
(generalized hybrid Monte Carlo, exact for the restrained conditional).

Both take a batch of frames at once, put them on the bond constraints, optionally minimize first
(clashes), then sample exp(−β[U(x) + ½k Σ_I |M_I(x) − R_I|²]) at the requested temperature;
see docs/refine-torch.md.
"""
from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field

from backmap.api import BackmapError, Refiner
from backmap.api.forcefield import BOLTZMANN, minimize_restrained
from backmap.api.refinement import (
    BondConstraints,
    BondModel,
    RefineParams,
    RefineResult,
    RestrainedSystem,
    resolve_constraints,
)
from backmap_refiners.integrators import Dynamics, State
from backmap_refiners.torch_potential import RestrainedPotential
from backmap.api.io import to_host


class TorchRefineParams(RefineParams):
    force_precision: Literal["float64", "float32"] = Field(
        "float64", description="precision of the force-field evaluation; float32 about halves its cost "
                               "(integration, constraints and the Metropolis test stay float64)")
    skin: float = Field(0.05, ge=0, description="skin of the pruned neighbour list (nm): re-pruned per frame "
                                                 "after an atom moved half of it")
    outer_skin: float = Field(0.25, ge=0, description="skin of the cell-searched list the pruned one comes from "
                                                       "(nm): searched again after an atom moved (outer − skin)/2")
    constraint_tolerance: float = Field(1e-10, gt=0, description="relative tolerance |r² − d²|/d² of SHAKE")


class LangevinParams(TorchRefineParams):
    pass


class MALAParams(TorchRefineParams):
    leapfrog_steps: int = Field(1, ge=1, description="integration steps per Monte Carlo move (1 = MALA-like)")
    refresh: Literal["partial", "full"] = Field(
        "partial", description="momentum refresh per move: partial keeps exp(−friction·timestep·leapfrog_steps) "
                               "of the velocity (generalized HMC), full draws it anew (HMC / MALA)")
    check_reversibility: bool = Field(True, description="reject RATTLE steps whose reverse does not return "
                                                        "(exactness with constraints)")


class _TorchRefiner(Refiner):
    """Shared set-up: force field, constraints, initial projection, minimization, logging."""

    Params = TorchRefineParams

    bonds: BondModel | None = None

    def use_bond_model(self, bonds: BondModel) -> bool:
        """Hold ``bonds.held`` by constraints and add the springs and the Fixman potential (the δ
        measure on the held bonds): the target of the refiner that defined ``bonds``."""
        self.bonds = bonds
        return True

    def prepare(self, system: RestrainedSystem) -> None:
        self.params = p = resolve_constraints(self.params, system, self.name)
        self.system = system
        self.dtype = torch.float64
        force_dtype = torch.float64 if p.force_precision == "float64" else torch.float32
        self.masses = system.topology.masses
        bias = None
        if self.bonds is not None:
            bonds, masses, kT = self.bonds, self.masses, BOLTZMANN * p.temperature

            def bias(x: torch.Tensor) -> torch.Tensor:
                x = x.to(torch.float64)
                return bonds.spring_energy(x) + bonds.fixman_energy(x, masses, kT)
        self.potential = RestrainedPotential(system, p.restraint, force_dtype, p.skin, p.outer_skin, bias)
        if self.bonds is not None:
            pairs, lengths = self.bonds.held, self.bonds.held_lengths
        else:
            pairs, lengths = system.constrained_bonds(p.constraints)
        self.constraints = BondConstraints(pairs, lengths, self.masses, tolerance=p.constraint_tolerance,
                                           dtype=self.dtype)

    def _initial(self, positions: np.ndarray, targets: np.ndarray, boxes: np.ndarray
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Minimized (if asked) and constrained start positions; per-frame flags "constrained"."""
        p = self.params
        x = np.array(positions, np.float64)
        if p.minimize_steps:
            for f in range(len(x)):
                # minimize_restrained's restraint is k|d|² (no ½): k/2 minimizes the same energy
                x[f] = minimize_restrained(self.potential.ff, x[f], boxes[f], self.system.cg_topology,
                                           targets[f], restraint=0.5 * p.restraint,
                                           steps=p.minimize_steps).positions
        xt = torch.as_tensor(x, dtype=self.dtype)
        return self.constraints.positions(xt, xt)

    def refine(self, positions: np.ndarray, targets: np.ndarray, boxes: np.ndarray,
               rng: np.random.Generator) -> RefineResult:
        # params.seed is the caller's business (refine_files, apply: a stream per frame drawn from it)
        generator = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        failures: dict[int, str] = {}
        x, ok = self._initial(positions, targets, boxes)
        self._fail(failures, np.arange(len(x)), ~to_host(ok),
                   "bond constraints could not be satisfied (bond lengths too far off or redundant constraints; "
                   "try minimize_steps)")
        live = np.flatnonzero(to_host(ok))  # frames that are sampled
        out = np.array(positions, np.float64)
        rows: list[dict] = [{"failed": failures[f]} if f in failures else {} for f in range(len(out))]
        if len(live):
            self.potential.bind(targets[live], boxes[live])
            dyn = Dynamics(self.potential, self.constraints, self.masses, self.params.temperature, generator,
                           self.dtype)
            state, extra = self._sample(dyn, dyn.start(x[live]),
                                        lambda bad, why: self._fail(failures, live, bad, why))
            for k, f in enumerate(live):
                if f in failures:
                    rows[f] = {"failed": failures[f]}
                else:
                    out[f] = to_host(state.x[k])
                    rows[f] = self._row(state, extra, k)
        return RefineResult(out, rows)

    def _fail(self, failures: dict[int, str], frames: np.ndarray, bad: np.ndarray, why: str) -> None:
        """Frames ``frames[bad]`` failed: stop (``on_failure: error``) or record them (``keep``)."""
        new = [int(f) for f in frames[np.asarray(bad, bool)] if int(f) not in failures]
        if not new:
            return
        if self.params.on_failure == "error":
            raise BackmapError(f"{self.name}: frame(s) {new} of the batch: {why} (or on_failure: keep)")
        failures.update({f: why for f in new})

    def _row(self, state: State, extra: dict[str, np.ndarray], k: int) -> dict:
        return {"potential": float(state.ev.potential[k]), "restraint": float(state.ev.restraint[k]),
                "constraint_residual": float(self.constraints.residual(state.x[k:k + 1])[0]),
                **{name: float(v[k]) for name, v in extra.items()}}

    def _sample(self, dyn: Dynamics, state: State, fail: Callable[[np.ndarray, str], None]
                ) -> tuple[State, dict[str, np.ndarray]]:
        """Sample from ``state``; report frames that cannot go on through ``fail(mask, reason)``."""
        raise NotImplementedError


class LangevinRefiner(_TorchRefiner):
    """BAOAB Langevin dynamics with RATTLE constraints (biased at O(timestep²))."""

    name = "langevin"
    summary = "restrained BAOAB Langevin dynamics on backmap's force field (torch, batched, constraints)"
    Params = LangevinParams

    def _sample(self, dyn: Dynamics, state: State, fail: Callable[[np.ndarray, str], None]
                ) -> tuple[State, dict[str, np.ndarray]]:
        p = self.params
        t_sum = torch.zeros(state.x.shape[0], dtype=self.dtype)
        for step in range(p.steps):
            new, ok = dyn.baoab(state, p.timestep, p.friction)
            if not bool(ok.all()):
                fail(~to_host(ok), f"bond constraints did not converge at step {step + 1}: reduce the timestep")
                new = new.where(ok, state)  # failed frames stay where they were; they are not returned
            state = new
            if step >= p.steps // 2:
                t_sum += dyn.temperature(state.v)
        return state, {"temperature": to_host(t_sum / max(p.steps - p.steps // 2, 1))}


class MALARefiner(_TorchRefiner):
    """Generalized hybrid Monte Carlo with RATTLE: exact for the restrained conditional."""

    name = "mala"
    summary = "restrained Metropolis-adjusted (GHMC/MALA) sampling on backmap's force field — exact"
    Params = MALAParams

    def _sample(self, dyn: Dynamics, state: State, fail: Callable[[np.ndarray, str], None]
                ) -> tuple[State, dict[str, np.ndarray]]:
        p = self.params
        c = 0.0 if p.refresh == "full" else float(np.exp(-p.friction * p.timestep * p.leapfrog_steps))
        F = state.x.shape[0]
        accepted = torch.zeros(F, dtype=self.dtype)
        t_sum = torch.zeros(F, dtype=self.dtype)
        for step in range(p.steps):
            state, acc = dyn.ghmc(state, p.timestep, p.leapfrog_steps, c, p.check_reversibility)
            accepted += acc
            if step >= p.steps // 2:
                t_sum += dyn.temperature(state.v)
        n = max(p.steps, 1)
        return state, {"acceptance": to_host(accepted / n),
                       "temperature": to_host(t_sum / max(p.steps - p.steps // 2, 1))}
