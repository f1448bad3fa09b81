"""Differentiable internal coordinates (torch), with finite gradients at degenerate geometries."""
from __future__ import annotations

import torch

EPS2 = 1e-12  # nm², added under square roots: finite gradients for coincident atoms


def norm(v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((v * v).sum(-1) + EPS2)


def distance(xi: torch.Tensor, xj: torch.Tensor) -> torch.Tensor:
    return norm(xj - xi)


def angle(xi: torch.Tensor, xj: torch.Tensor, xk: torch.Tensor) -> torch.Tensor:
    """Angle i-j-k in radians, from atan2 (accurate near 0 and π)."""
    a, b = xi - xj, xk - xj
    return torch.atan2(norm(torch.linalg.cross(a, b)), (a * b).sum(-1))


def dihedral(xi: torch.Tensor, xj: torch.Tensor, xk: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
    """Dihedral i-j-k-l in radians, IUPAC/GROMACS convention (0 = cis), in (-π, π]."""
    b1, b2, b3 = xj - xi, xk - xj, xl - xk
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    y = norm(b2) * (b1 * n2).sum(-1)
    x = (n1 * n2).sum(-1)
    return torch.atan2(y, x + 1e-30)
