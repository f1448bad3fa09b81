"""Rigid bonds held exactly or sampled as stiff springs: the part of a restrained target that
refiners must agree on before a schedule may mix them.

A ``vae_mc`` move redraws a bead's atoms in internal coordinates: the bonds of the decoder's tree
inside the bead come out at their lengths exactly, every other rigid bond (between beads, ring
closures) is a stiff spring. Its target is therefore

    π(dx) ∝ exp(−β[U + restraint + ½k_c Σ_sprung (r − b)²]) Π_held δ(r − b) dx,

the stiff-spring limit (δ measure) on the held bonds. A sampler built on RATTLE (``mala``) samples
exp(−βV) σ_M(dx), the surface measure of the mass-weighted metric on {held bonds at length}; by
the co-area formula in mass-weighted coordinates δ(ξ) dx = σ_M(dx) / √det G, G = J M⁻¹ Jᵀ the
Gram matrix of the held bonds' gradients. So with

    V = U + restraint + ½k_c Σ_sprung (r − b)² + (k_BT/2) ln det G      (the Fixman potential)

it samples π exactly (docs/refine-torch.md: "Which measure is sampled"). G is block diagonal, one
block per connected set of held bonds (a bead's tree), so ln det G is a sum of small log
determinants, differentiable for the forces.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass
class BondModel:
    """Which rigid bonds a target holds exactly (``held``, as constraints with the δ measure) and
    which it samples as springs ½·``stiffness``·(r − b)² (``sprung``); atom pairs (n, 2) global.
    ``source`` names who defines it (for messages and logs)."""

    held: np.ndarray
    held_lengths: np.ndarray
    sprung: np.ndarray
    sprung_lengths: np.ndarray
    stiffness: float
    source: str = "a refiner"
    _fixman: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.held = np.asarray(self.held, np.int64).reshape(-1, 2)
        self.sprung = np.asarray(self.sprung, np.int64).reshape(-1, 2)
        self.held_lengths = np.asarray(self.held_lengths, np.float64).reshape(-1)
        self.sprung_lengths = np.asarray(self.sprung_lengths, np.float64).reshape(-1)

    def spring_energy(self, x: torch.Tensor) -> torch.Tensor:
        """½k Σ (r − b)² over the sprung bonds, per frame of ``x`` (F, N, 3) → (F,)."""
        if not len(self.sprung):
            return torch.zeros(x.shape[0], dtype=x.dtype)
        i, j = torch.as_tensor(self.sprung[:, 0]), torch.as_tensor(self.sprung[:, 1])
        r = (x[:, i] - x[:, j]).norm(dim=-1)
        b = torch.as_tensor(self.sprung_lengths, dtype=x.dtype)
        return 0.5 * self.stiffness * ((r - b) ** 2).sum(-1)

    def log_det_gram(self, x: torch.Tensor, masses: np.ndarray) -> torch.Tensor:
        """ln det G, G = J M⁻¹ Jᵀ of the held bonds ξ = ‖x_i − x_j‖ − b, per frame (F,)."""
        if not len(self.held):
            return torch.zeros(x.shape[0], dtype=x.dtype)
        t = self._fixman_tables(masses)
        i, j = torch.as_tensor(self.held[:, 0]), torch.as_tensor(self.held[:, 1])
        d = x[:, i] - x[:, j]
        u = d / d.norm(dim=-1, keepdim=True)  # (F, H, 3): ∂ξ/∂x_i = u, ∂ξ/∂x_j = −u
        F, (K, m) = x.shape[0], t["slots"].shape
        g = torch.zeros(F, K * m * m, dtype=x.dtype)
        g[:, t["diag_at"]] = t["diag"].to(x.dtype)
        if len(t["off_at"]):
            dots = (u[:, t["off_a"]] * u[:, t["off_b"]]).sum(-1) * t["off"].to(x.dtype)
            g = g.index_add(1, t["off_at"], dots)
        g = g.view(F, K, m, m)
        chol = torch.linalg.cholesky(g)
        return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum((-1, -2))

    def fixman_energy(self, x: torch.Tensor, masses: np.ndarray, kT: float) -> torch.Tensor:
        """(k_BT/2) ln det G (kJ/mol) per frame: turns RATTLE's surface measure into the δ measure."""
        return 0.5 * kT * self.log_det_gram(x, masses)

    def _fixman_tables(self, masses: np.ndarray) -> dict:
        """Index tables of G's blocks: one block per connected set of held bonds, padded to the
        largest with the identity. Entries: G_aa = 1/m_i + 1/m_j; bonds a, b sharing atom s:
        G_ab = σ_a σ_b u_a·u_b / m_s (σ = +1 where s is the bond's first atom, −1 its second)."""
        key = id(masses)
        if key in self._fixman:
            return self._fixman[key]
        held, H = self.held, len(self.held)
        atoms, inverse = np.unique(held, return_inverse=True)
        inverse = inverse.reshape(-1, 2)
        # bonds are connected when they share an atom: components of the bond-atom incidence graph
        n = len(atoms)
        rows = np.r_[np.arange(H), np.arange(H)]
        cols = H + np.r_[inverse[:, 0], inverse[:, 1]]
        graph = coo_matrix((np.ones(2 * H), (rows, cols)), shape=(H + n, H + n))
        _, comp = connected_components(graph, directed=False)
        comp = np.unique(comp[:H], return_inverse=True)[1]
        K, sizes = comp.max() + 1, np.bincount(comp)
        m = int(sizes.max())
        order = np.argsort(comp, kind="stable")
        slot = np.empty(H, np.int64)
        slot[order] = np.arange(H) - (np.cumsum(sizes) - sizes)[comp[order]]
        inv_m = 1.0 / np.asarray(masses, np.float64)
        diag = np.ones(K * m)  # padding rows: the identity
        diag_at = np.arange(K)[:, None] * m * m + np.arange(m)[None] * (m + 1)
        diag_at = diag_at.ravel()
        diag_idx = comp * m + slot
        diag[diag_idx] = inv_m[held[:, 0]] + inv_m[held[:, 1]]
        # pairs of bonds sharing an atom
        ends = np.concatenate([np.c_[np.arange(H), held[:, 0], np.ones(H)],
                               np.c_[np.arange(H), held[:, 1], -np.ones(H)]])
        ends = ends[np.lexsort((ends[:, 0], ends[:, 1]))]
        off_a, off_b, off, off_at = [], [], [], []
        atom_col = ends[:, 1].astype(np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(atom_col)) + 1, len(ends)]
        for s0, s1 in zip(starts[:-1], starts[1:]):
            if s1 - s0 < 2:
                continue
            s = atom_col[s0]
            bonds, signs = ends[s0:s1, 0].astype(np.int64), ends[s0:s1, 2]
            for p in range(len(bonds)):
                for q in range(len(bonds)):
                    if p != q:
                        a, b = bonds[p], bonds[q]
                        off_a.append(a)
                        off_b.append(b)
                        off.append(signs[p] * signs[q] * inv_m[s])
                        off_at.append(comp[a] * m * m + slot[a] * m + slot[b])
        tables = {"slots": np.zeros((K, m)), "diag": torch.as_tensor(diag), "diag_at": torch.as_tensor(diag_at),
                  "off_a": torch.as_tensor(np.asarray(off_a, np.int64)),
                  "off_b": torch.as_tensor(np.asarray(off_b, np.int64)),
                  "off": torch.as_tensor(np.asarray(off, np.float64)),
                  "off_at": torch.as_tensor(np.asarray(off_at, np.int64))}
        self._fixman[key] = tables
        return tables
