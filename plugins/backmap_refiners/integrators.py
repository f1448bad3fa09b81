"""Constrained Langevin (BAOAB) and generalized hybrid Monte Carlo steps for batches of frames.

Both sample exp(−β[U + restraint]) on the constraint surface {|x_i − x_j| = d} with its
mass-weighted surface measure (the measure of constrained MD in GROMACS/OpenMM; no Fixman term).

* :meth:`Dynamics.baoab` — Leimkuhler–Matthews BAOAB with RATTLE-type constraints (kick, constrained
  half drift, Ornstein–Uhlenbeck velocity refresh projected on the tangent space, constrained half
  drift, kick + projection). Biased at O(h²) in configurational averages.
* :meth:`Dynamics.ghmc` — partial (or full) momentum refresh, L RATTLE velocity-Verlet steps,
  Metropolis test on H = U + restraint + ½vᵀMv independently per frame, momentum flip on rejection.
  Exact: RATTLE is symplectic and, where the Newton solve finds the nearby root, reversible; the
  optional per-step reversibility check rejects moves where it is not (Lelièvre, Rousset & Stoltz,
  Numer. Math. 2019, arXiv:1807.02356), so the chain is exact up to the constraint tolerance.

Projections are merged where they commute (a projection followed by a linear update and a
projection at the same point equals one projection; SHAKE absorbs normal components before a
drift), so a step costs one force evaluation, at most two factorizations of the constraint matrix
and a few triangular solves.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from backmap.api.forcefield import BOLTZMANN
from backmap.api.io import host_random
from backmap.api.refinement import BondConstraints, Factorization
from backmap_refiners.torch_potential import Evaluation


@dataclass
class State:
    """Positions and velocities (F, N, 3), their energies/forces and the constraint factorization."""

    x: torch.Tensor
    v: torch.Tensor
    ev: Evaluation
    fac: Factorization

    def where(self, mask: torch.Tensor, other: "State") -> "State":
        m = mask.view(-1, 1, 1)
        return State(torch.where(m, self.x, other.x), torch.where(m, self.v, other.v),
                     self.ev.where(mask, other.ev), self.fac.where(mask, other.fac))


class Dynamics:
    """Integrators for ``potential`` (positions → :class:`Evaluation`) at temperature ``temperature``
    (K) with ``constraints``; random numbers from ``generator``."""

    def __init__(self, potential: Callable[[torch.Tensor], Evaluation], constraints: BondConstraints,
                 masses: np.ndarray, temperature: float, generator: torch.Generator,
                 dtype: torch.dtype = torch.float64):
        self.potential = potential
        self.constraints = constraints
        self.kT = BOLTZMANN * temperature
        self.generator = generator
        self.dtype = dtype
        m = torch.as_tensor(np.asarray(masses, float), dtype=dtype)[None, :, None]
        self.mass = m
        self.inv_mass = 1 / m
        self.thermal = torch.sqrt(self.kT / m)  # velocity standard deviation per atom
        self.n_dof = 3 * len(masses) - constraints.n_constraints

    # ------------------------------------------------------------------ helpers
    def noise(self, like: torch.Tensor) -> torch.Tensor:
        return host_random(torch.randn, like.shape, generator=self.generator, dtype=self.dtype)

    def kinetic(self, v: torch.Tensor) -> torch.Tensor:
        """½ Σ m v² per frame (kJ/mol)."""
        return 0.5 * (self.mass * v * v).sum(dim=(1, 2))

    def temperature(self, v: torch.Tensor) -> torch.Tensor:
        """Kinetic temperature per frame (K) over 3N − C degrees of freedom."""
        return 2 * self.kinetic(v) / (self.n_dof * BOLTZMANN)

    def start(self, x: torch.Tensor) -> State:
        """A state at constrained positions ``x`` with Maxwell–Boltzmann tangent velocities."""
        fac = self.constraints.factorize(x)
        v = self.constraints.velocities(self.thermal * self.noise(x), fac)
        return State(x, v, self.potential(x), fac)

    def _drift(self, x: torch.Tensor, v: torch.Tensor, h: float, fac: Factorization):
        """x + h v pulled back onto the constraints; the velocity that moves there; converged flags."""
        if not self.constraints.n_constraints:
            return x + h * v, v, torch.ones(x.shape[0], dtype=torch.bool)
        x1, ok = self.constraints.positions(x + h * v, fac)
        return x1, (x1 - x) / h, ok

    # ------------------------------------------------------------------ integrators
    def baoab(self, s: State, h: float, friction: float) -> tuple[State, torch.Tensor]:
        """One BAOAB step of length ``h`` (ps) with ``friction`` (1/ps); returns the new state and
        per-frame flags "constraints converged". The incoming velocity must be tangent at s.x."""
        v = s.v + 0.5 * h * s.ev.force * self.inv_mass
        x, v, ok1 = self._drift(s.x, v, 0.5 * h, s.fac)
        fac = self.constraints.factorize(x)
        c = np.exp(-friction * h)
        v = self.constraints.velocities(c * v + np.sqrt(1 - c * c) * self.thermal * self.noise(v), fac)
        x, v, ok2 = self._drift(x, v, 0.5 * h, fac)
        fac = self.constraints.factorize(x)
        ev = self.potential(x)
        v = self.constraints.velocities(v + 0.5 * h * ev.force * self.inv_mass, fac)
        return State(x, v, ev, fac), ok1 & ok2 & fac.ok

    def _verlet(self, s: State, h: float) -> tuple[State, torch.Tensor]:
        """One RATTLE velocity-Verlet step; flags "converged"."""
        v = s.v + 0.5 * h * s.ev.force * self.inv_mass
        x, v, ok = self._drift(s.x, v, h, s.fac)
        fac = self.constraints.factorize(x)
        ev = self.potential(x)
        v = self.constraints.velocities(v + 0.5 * h * ev.force * self.inv_mass, fac)
        return State(x, v, ev, fac), ok & fac.ok

    def _reversible(self, s0: State, s1: State, h: float, tolerance: float) -> torch.Tensor:
        """Whether the RATTLE step from (x1, −v1) lands back on x0 (the Newton solve found the root
        that makes the step an involution); no force evaluation needed."""
        v = -s1.v + 0.5 * h * s1.ev.force * self.inv_mass
        x, _, ok = self._drift(s1.x, v, h, s1.fac)
        return ok & ((x - s0.x).abs().amax(dim=(1, 2)) <= tolerance)

    def ghmc(self, s: State, h: float, n_steps: int, refresh: float, check_reversibility: bool = True,
             reversibility_tolerance: float = 1e-8) -> tuple[State, torch.Tensor]:
        """One generalized HMC move: keep a fraction ``refresh`` = c of the velocity
        (v ← c v + √(1−c²) ξ, c = 0: full refresh), ``n_steps`` RATTLE steps of ``h``, Metropolis
        per frame. Returns the new state and the per-frame accepted flags."""
        c = refresh
        v = self.constraints.velocities(c * s.v + np.sqrt(1 - c * c) * self.thermal * self.noise(s.v), s.fac)
        start = State(s.x, v, s.ev, s.fac)
        h0 = start.ev.total + self.kinetic(v)
        cur, ok = start, torch.ones(s.x.shape[0], dtype=torch.bool)
        for _ in range(n_steps):
            nxt, converged = self._verlet(cur, h)
            ok = ok & converged
            if check_reversibility and self.constraints.n_constraints:
                ok = ok & self._reversible(cur, nxt, h, reversibility_tolerance)
            cur = nxt
        h1 = cur.ev.total + self.kinetic(cur.v)
        log_u = torch.log(host_random(torch.rand, h1.shape, generator=self.generator, dtype=self.dtype))
        accept = ok & torch.isfinite(h1) & (log_u < -(h1 - h0) / self.kT)
        flipped = State(start.x, -start.v, start.ev, start.fac)
        return cur.where(accept, flipped), accept
