"""Natural extension reference frame (NeRF): an atom from its bond length r, bond angle θ and
dihedral φ relative to three known points, and back. Vectorised over any batch shape; the forward
map is exactly equivariant under rotations and translations, and a mirror negates φ."""
from __future__ import annotations

import torch

from backmap.forcefield.geometry import angle, dihedral, norm


def place(d: torch.Tensor, g: torch.Tensor, p: torch.Tensor, r: torch.Tensor, theta: torch.Tensor,
          phi: torch.Tensor) -> torch.Tensor:
    """The atom x with ‖x − p‖ = r, angle(x, p, g) = θ and dihedral(d, g, p, x) = φ (GROMACS sign)."""
    return place_in_frame(frame(d, g, p), p, r, theta, phi)


def place_in_frame(axes: torch.Tensor, p: torch.Tensor, r: torch.Tensor, theta: torch.Tensor,
                   phi: torch.Tensor) -> torch.Tensor:
    """:func:`place` given the frame ``axes`` = :func:`frame` (d, g, p) (computed once for both
    what the head sees and where the atom goes)."""
    bc, m, n = axes.unbind(-2)
    st = torch.sin(theta)
    local = torch.stack([-torch.cos(theta), st * torch.cos(phi), st * torch.sin(phi)], -1)
    return p + r[..., None] * (local[..., :1] * bc + local[..., 1:2] * m + local[..., 2:] * n)


def frame(d: torch.Tensor, g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) orthonormal rows (bc, m, n) that :func:`place` builds on: what the head sees the
    environment in."""
    bc = p - g
    bc = bc / norm(bc)[..., None]
    n = torch.linalg.cross(g - d, bc)
    n = n / norm(n)[..., None]
    return torch.stack([bc, torch.linalg.cross(n, bc), n], -2)


def internal(x: torch.Tensor, d: torch.Tensor, g: torch.Tensor, p: torch.Tensor):
    """(r, θ, φ) of atom x: the inverse of :func:`place`."""
    return norm(x - p), angle(x, p, g), dihedral(d, g, p, x)
