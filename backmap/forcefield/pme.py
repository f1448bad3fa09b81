"""Smooth particle-mesh Ewald (Essmann et al. 1995) in torch, with GROMACS's conventions.

GROMACS (``coulombtype = PME``, Verlet scheme) splits the Coulomb energy into

* "Coulomb (SR)": f qᵢqⱼ (erfc(βr)/r − erfc(βr_c)/r_c) for non-excluded pairs with r < r_c,
  − f qᵢqⱼ erf(βr)/r for excluded pairs (1-2, 1-3 and 1-4 pairs alike, unscaled charges) with
  r < r_c — the mesh contains their interaction and it is taken out again —, and the self term
  − f β/√π Σ qᵢ²;
* "Coul. recip.": the mesh energy f/(2πV) Σ_{m≠0} exp(−π²m²/β²)/m² |B(m)|² |S(m)|² (cardinal
  B-splines of order ``pme-order`` on a K₁×K₂×K₃ grid), plus the net-charge correction
  − π f Q²/(2Vβ²).

f = 138.935458/ε_r. β solves erfc(β r_c) = ``ewald-rtol``. This module does the grid part; the
real-space, exclusion and self terms are in :mod:`backmap.forcefield.energy`. Forces come from
autograd, which differentiates the B-spline weights exactly as GROMACS's analytic PME forces do.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# GROMACS's calcgrid.cpp: FFT-friendly grid sizes
_GRID_INIT = (6, 8, 10, 12, 14, 16, 20, 24, 25, 28, 32, 36, 40, 42, 44)
_GRID_BASE = (45, 48, 50, 52, 54, 56, 60, 64, 70, 72, 75, 80, 81, 84)


def ewald_coefficient(rc: float, rtol: float) -> float:
    """β (nm⁻¹) with erfc(β r_c) = rtol, by GROMACS's bisection (calc_ewaldcoeff_q)."""
    beta, i = 5.0, 0
    while True:
        i += 1
        beta *= 2
        if math.erfc(beta * rc) <= rtol:
            break
    low, high = 0.0, beta
    for _ in range(i + 60):
        beta = (low + high) / 2
        if math.erfc(beta * rc) > rtol:
            low = beta
        else:
            high = beta
    return beta


def grid_size(vectors: np.ndarray, spacing: float, fixed: tuple[int, int, int] = (0, 0, 0)) -> tuple[int, ...]:
    """PME grid dimensions as ``gmx grompp`` chooses them (calc_grid): per box vector, the smallest
    FFT-friendly size with spacing ≤ ``fourierspacing``; positive entries of ``fixed`` (fourier-nx,
    -ny, -nz) are taken as they are."""
    out = []
    for d in range(3):
        if fixed[d] > 0:
            out.append(int(fixed[d]))
            continue
        nmin = int(float(np.linalg.norm(vectors[d])) / spacing + 0.999)
        if _GRID_INIT[-1] >= nmin:
            out.append(next(n for n in _GRID_INIT if n >= nmin))
            continue
        fac2 = 1
        while fac2 * _GRID_BASE[-1] < nmin:
            fac2 *= 2
        n = None
        for base in reversed(_GRID_BASE[1:]):  # GROMACS's loop stops before the first entry
            t = fac2 * base
            if ((t % 4 == 0 and t != 140) or t == 90) and t >= nmin:
                n = t
        out.append(n)
    return tuple(out)


def _spline_data(w: torch.Tensor, order: int) -> list[torch.Tensor]:
    """Cardinal B-spline weights M_n(w + n − 1 − j), j = 0…n−1, for fractions w ∈ [0, 1)
    (GROMACS's make_bsplines recursion; weight j belongs to grid point ⌊u⌋ − (n − 1) + j)."""
    data = [w] * order
    data[0], data[1] = 1 - w, w
    for k in range(3, order + 1):
        div = 1.0 / (k - 1)
        data[k - 1] = div * w * data[k - 2]
        for j in range(1, k - 1):
            data[k - j - 1] = div * ((w + j) * data[k - j - 2] + (k - j - w) * data[k - j - 1])
        data[0] = div * (1 - w) * data[0]
    return data


def bspline_moduli(n: int, order: int) -> np.ndarray:
    """|b(m)|⁻² of the Euler exponential spline (GROMACS's make_bspline_moduli), m = 0…n−1."""
    data = np.array([float(v) for v in _spline_data(torch.tensor(0.0, dtype=torch.float64), order)][::-1])
    # data[j] = M_n(j + 1)
    m = np.arange(n)[:, None]
    arg = 2 * np.pi * m * np.arange(1, order + 1)[None] / n
    mod = (data * np.cos(arg)).sum(1) ** 2 + (data * np.sin(arg)).sum(1) ** 2
    if order % 2 == 0 and n % 2 == 0:
        mod[n // 2] = 0.5 * (mod[n // 2 - 1] + mod[(n // 2 + 1) % n])
    return mod


class PME:
    """The reciprocal-space (mesh) part of smooth PME for one grid and order."""

    def __init__(self, beta: float, order: int, prefactor: float, spacing: float,
                 fixed_grid: tuple[int, int, int] = (0, 0, 0), dtype: torch.dtype = torch.float64):
        self.beta, self.order, self.prefactor = beta, order, prefactor
        self.spacing, self.fixed_grid, self.dtype = spacing, fixed_grid, dtype
        self._cache: dict = {}

    def _influence(self, vectors: np.ndarray, grid: tuple[int, ...]) -> torch.Tensor:
        key = (grid, vectors.tobytes())
        if key not in self._cache:
            recip = np.linalg.inv(vectors)  # columns: reciprocal box vectors
            m = np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n) for n in grid], indexing="ij")
            mvec = np.einsum("ij,j...->i...", recip, np.stack(m))
            m2 = (mvec**2).sum(0)
            mod = [bspline_moduli(n, self.order) for n in grid]
            denom = m2 * mod[0][:, None, None] * mod[1][None, :, None] * mod[2][None, None, :]
            denom[0, 0, 0] = 1.0
            g = np.exp(-(np.pi**2) * m2 / self.beta**2) / denom
            g[0, 0, 0] = 0.0
            self._cache = {key: torch.as_tensor(g, dtype=self.dtype)}  # one box at a time (NVT: the same)
        return self._cache[key]

    def energy(self, x: torch.Tensor, q: torch.Tensor, vectors: np.ndarray) -> torch.Tensor:
        """Per-atom reciprocal energies (N,) (kJ/mol; their sum is GROMACS's "Coul. recip.", each
        atom holding half of its pair terms) of positions ``x`` (N, 3) nm, charges ``q`` (N,) in a
        box with vectors ``vectors`` (3, 3) (rows). Differentiable with respect to ``x``."""
        vectors = np.asarray(vectors, np.float64)
        grid = grid_size(vectors, self.spacing, self.fixed_grid)
        n = self.order
        K = torch.tensor(grid, dtype=self.dtype)
        recip = torch.as_tensor(np.linalg.inv(vectors), dtype=self.dtype)
        u = (x @ recip) * K
        u = u - torch.floor(u.detach() / K) * K  # into [0, K)
        base = torch.floor(u.detach())
        w = u - base
        wts = torch.stack(_spline_data(w, n), -1)  # (N, 3, n)
        idx = (base.long()[..., None] - (n - 1) + torch.arange(n)) % torch.tensor(grid)[:, None]
        flat = (idx[:, 0, :, None, None] * (grid[1] * grid[2]) + idx[:, 1, None, :, None] * grid[2]
                + idx[:, 2, None, None, :]).reshape(len(x), -1)
        W = (wts[:, 0, :, None, None] * wts[:, 1, None, :, None] * wts[:, 2, None, None, :]).reshape(len(x), -1)
        size = grid[0] * grid[1] * grid[2]
        Q = torch.zeros(size, dtype=self.dtype).index_add(0, flat.reshape(-1), (q[:, None] * W).reshape(-1))
        G = self._influence(vectors, grid)
        psi = torch.fft.ifftn(G * torch.fft.fftn(Q.reshape(grid))).real.reshape(-1) * size
        volume = abs(float(np.linalg.det(vectors)))
        e = self.prefactor / (2 * np.pi * volume) * q * (psi[flat] * W).sum(1)
        # net-charge correction (uniform neutralizing background), split in proportion to q_i Q
        total_q = q.sum()
        return e - np.pi * self.prefactor * q * total_q / (2 * volume * self.beta**2)
