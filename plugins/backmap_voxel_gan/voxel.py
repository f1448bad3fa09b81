"""Gaussian densities on a cubic voxel grid (thesis eq. 4.3) and back to coordinates (eqs. 4.11–4.12).

The grid has ``n`` voxels per side spanning ``[-length/2, length/2]`` around the bead; voxel centres
sit at ``-length/2 + (i + ½)·length/n``. A particle at r contributes exp(−|x − r|²/2σ²) to voxel x
(σ is the standard deviation; DeepBackmap's ``sigma = 0.02`` is 2σ² in its exp(−d²/σ) convention,
i.e. σ = 0.1 nm). The Gaussian factorizes over the axes, so a channel's density is a sum of outer
products, computed for all channels at once as one batched matrix product — never materializing
one grid per particle.
"""
from __future__ import annotations

import torch


class VoxelGrid:
    """A cubic grid of ``n``³ voxels over ``length`` nm with Gaussian width ``sigma`` nm."""

    def __init__(self, n: int, length: float, sigma: float):
        self.n, self.length, self.sigma = n, length, sigma
        step = length / n
        self.axis = -length / 2 + step * (torch.arange(n, dtype=torch.float32) + 0.5)  # (n,)
        x, y, z = torch.meshgrid(self.axis, self.axis, self.axis, indexing="ij")
        self.points = torch.stack([x, y, z], -1).reshape(-1, 3)  # (n³, 3), row-major like the grid

    def _axis_gaussians(self, positions: torch.Tensor) -> torch.Tensor:
        """(..., 3) → (..., 3, n): the 1-D Gaussian of each coordinate on the grid axis."""
        d = positions[..., None] - self.axis.to(positions)  # dtype and device
        return torch.exp(-0.5 * (d / self.sigma) ** 2)

    def density(self, positions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Channel densities (B, C, n, n, n) of particles at ``positions`` (B, P, 3) with channel
        ``weights`` (B, P, C) (one-hot channel membership times a validity mask)."""
        B, P, C = weights.shape
        n = self.n
        g = self._axis_gaussians(positions)  # (B, P, 3, n)
        wx = (weights[..., :, None] * g[:, :, None, 0, :]).reshape(B, P, C * n)  # (B, P, C·n)
        yz = (g[:, :, 1, :, None] * g[:, :, 2, None, :]).reshape(B, P, n * n)  # (B, P, n²)
        return torch.bmm(wx.transpose(1, 2), yz).reshape(B, C, n, n, n)

    def atom(self, positions: torch.Tensor) -> torch.Tensor:
        """One density (B, n, n, n) per position (B, 3) (eq. 4.12)."""
        g = self._axis_gaussians(positions)  # (B, 3, n)
        return g[:, 0, :, None, None] * g[:, 1, None, :, None] * g[:, 2, None, None, :]

    def coordinate(self, density: torch.Tensor) -> torch.Tensor:
        """Weighted average of the grid points (eq. 4.11): (B, n, n, n) → (B, 3)."""
        w = density.reshape(density.shape[0], -1)
        return (w @ self.points.to(w)) / w.sum(-1, keepdim=True).clamp(min=1e-12)
