"""Feature channels of a local environment on the voxel grid (thesis eqs. 4.9–4.10).

Every neighbour atom is written into two channels: its atom type and its interaction with the atom
being placed (bond, angle, dihedral, Lennard-Jones — the core's :class:`backmap.sampling.environment.Channels`);
every neighbour bead into its bead-type channel. The same code serves training sequences and the
sampler's :class:`backmap.sampling.environment.EnvironmentBatch`, so both see identical inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backmap_voxel_gan.voxel import VoxelGrid


@dataclass(frozen=True)
class ChannelLayout:
    """Sizes of the channel groups: atom types, interactions, bead types."""

    n_atom_types: int
    n_interactions: int
    n_bead_types: int

    @property
    def env_channels(self) -> int:
        return self.n_atom_types + self.n_interactions + self.n_bead_types


def rotation_z(angles: torch.Tensor) -> torch.Tensor:
    """(B,) angles → (B, 3, 3) rotations about z; local positions rotate as x @ R.transpose."""
    c, s = torch.cos(angles), torch.sin(angles)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1),
                        torch.stack([zero, zero, one], -1)], 1)


def compact(mask: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Keep only the columns that ``mask`` (B, K) marks, padded to the largest count per row:
    returns the compacted mask and ``tensors`` (B, K, ...) — the sampler's neighbour lists are
    padded candidate lists, mostly masked, and voxelizing only real atoms is much cheaper."""
    width = max(int(mask.sum(1).max()), 1) if mask.numel() else 1
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    out = [mask.gather(1, order)]
    for x in tensors:
        idx = order.reshape(order.shape + (1,) * (x.ndim - 2)).expand(-1, -1, *x.shape[2:])
        out.append(x.gather(1, idx))
    return tuple(out)


class Featurizer:
    """Voxelizes environments: atoms (positions, types, interaction channel, visibility) and beads."""

    def __init__(self, grid: VoxelGrid, layout: ChannelLayout):
        self.grid = grid
        self.layout = layout

    def atoms(self, positions: torch.Tensor, types: torch.Tensor, interaction: torch.Tensor,
              visible: torch.Tensor) -> torch.Tensor:
        """(B, K, 3), (B, K), (B, K), (B, K) → (B, n_atom_types + n_interactions, n, n, n)."""
        lay = self.layout
        w = torch.cat([F.one_hot(types.long(), lay.n_atom_types), F.one_hot(interaction.long(), lay.n_interactions)],
                      -1).to(positions.dtype) * visible[..., None].to(positions.dtype)
        return self.grid.density(positions, w)

    def beads(self, positions: torch.Tensor, types: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, 3), (B, L), (B, L) → (B, n_bead_types, n, n, n)."""
        w = F.one_hot(types.long(), self.layout.n_bead_types).to(positions.dtype) * mask[..., None].to(positions.dtype)
        return self.grid.density(positions, w)

    def target_type(self, types: torch.Tensor) -> torch.Tensor:
        """(B,) → (B, n_atom_types) one-hot."""
        return F.one_hot(types.long(), self.layout.n_atom_types).float()
