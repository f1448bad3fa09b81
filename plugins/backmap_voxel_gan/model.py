"""The conditional WGAN-GP on voxelized environments: autoregressive generation of a bead's atom
sequence and the critic/generator losses of thesis eqs. 4.13–4.14.

Generation of a sequence starts from the reference environment; after each step the generated
coordinate replaces the reference position of that atom wherever it is a neighbour (``slot``), so
the next environment contains it (as a Gaussian at the coordinate, exactly as the sampler will
show it). With ``unroll`` the replacement keeps the autograd graph: the loss of a later step
back-propagates into the generator's earlier steps. The critic judges each step as a pair
(environment, atom) — the reference pair for real, the generated prefix and atom for fake — and
losses are averaged over each sequence's steps, then over sequences.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from backmap.api.io import host_random
from backmap.api.training import BeadSequences
from backmap_voxel_gan.features import ChannelLayout, Featurizer, rotation_z
from backmap_voxel_gan.networks import VoxelCritic, VoxelGenerator
from backmap_voxel_gan.params import VoxelGANParams
from backmap_voxel_gan.voxel import VoxelGrid


@dataclass
class Generated:
    """A generated batch of sequences: coordinates (S, T, 3), the critic's fake atom input
    (S, T, n, n, n), the environments each step saw (S, T, C, n, n, n)."""

    coords: torch.Tensor
    atoms: torch.Tensor
    envs: torch.Tensor
    steps: list[torch.Tensor]  # the per-step coordinates (graph leaves of later steps' inputs)


def rotate_batch(seqs: BeadSequences, angles: torch.Tensor) -> BeadSequences:
    """The same sequences rotated about the local z axis by ``angles`` (S,) (augmentation)."""
    rt = rotation_z(angles).transpose(1, 2)
    return replace(seqs, atom_positions=seqs.atom_positions @ rt, bead_positions=seqs.bead_positions @ rt,
                   target_positions=seqs.target_positions @ rt)


def step_weights(mask: torch.Tensor) -> torch.Tensor:
    """(S, T) weights: 1/|ω| over each sequence's steps, 1/S over sequences (eq. 4.13)."""
    m = mask.float()
    return m / m.sum(1, keepdim=True).clamp(min=1) / m.shape[0]


class VoxelGANModel(nn.Module):
    """Grid, featurizer, generator and critic for one channel layout."""

    def __init__(self, layout: ChannelLayout, params: VoxelGANParams):
        super().__init__()
        p = params
        self.layout = layout
        self.output = p.output
        self.grid = VoxelGrid(p.grid, p.length, p.sigma)
        self.features = Featurizer(self.grid, layout)
        self.generator = VoxelGenerator(layout.env_channels, layout.n_atom_types, p.grid, p.width, p.depth,
                                        p.noise_dim, p.full_depth)
        self.critic = VoxelCritic(layout.env_channels, layout.n_atom_types, p.grid, p.width, p.depth, p.full_depth)
        self.noise_dim = p.noise_dim

    # ------------------------------------------------------------------ single placements
    def place(self, env: torch.Tensor, noise: torch.Tensor, target_type: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinate (B, 3) and the critic's atom density (B, n³) for environments (B, C, n³)."""
        density = self.generator(env, noise, self.features.target_type(target_type))
        coord = self.grid.coordinate(density)
        return coord, (density if self.output == "density" else self.grid.atom(coord))

    # ------------------------------------------------------------------ sequences
    def environments(self, seqs: BeadSequences, positions: torch.Tensor, t: int, beads: torch.Tensor) -> torch.Tensor:
        atoms = self.features.atoms(positions, seqs.atom_types, seqs.interaction[:, t], seqs.visible[:, t])
        return torch.cat([atoms, beads], 1)

    def real(self, seqs: BeadSequences) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced environments (S, T, C, n³) and reference atom densities (S, T, n³)."""
        beads = self.features.beads(seqs.bead_positions, seqs.bead_types, seqs.bead_mask)
        T = seqs.target_mask.shape[1]
        envs = torch.stack([self.environments(seqs, seqs.atom_positions, t, beads) for t in range(T)], 1)
        atoms = self.grid.atom(seqs.target_positions.reshape(-1, 3)).reshape(*seqs.target_positions.shape[:2],
                                                                              *envs.shape[-3:])
        return envs, atoms

    def generate(self, seqs: BeadSequences, noise: torch.Tensor, unroll: bool = True) -> Generated:
        """Generate every sequence's atoms in order; ``noise`` (S, T, noise_dim). Steps beyond a
        sequence's length are not computed (their outputs are zero)."""
        beads = self.features.beads(seqs.bead_positions, seqs.bead_types, seqs.bead_mask)
        current = seqs.atom_positions
        S, T = seqs.target_mask.shape
        n = self.grid.n
        coords, atoms, envs = [], [], []
        for t in range(T):
            live = seqs.target_mask[:, t]
            env = self.environments(seqs, current, t, beads)
            coord = torch.zeros(S, 3, dtype=env.dtype)
            atom = torch.zeros(S, n, n, n, dtype=env.dtype)
            if bool(live.all()):
                coord, atom = self.place(env, noise[:, t], seqs.target_types[:, t])
            elif bool(live.any()):
                c, a = self.place(env[live], noise[live, t], seqs.target_types[live, t])
                coord, atom = coord.index_put((live,), c), atom.index_put((live,), a)
            coords.append(coord)
            atoms.append(atom)
            envs.append(env)
            feed = coord if unroll else coord.detach()
            current = torch.where((seqs.slot == t)[..., None], feed[:, None, :], current)
        return Generated(torch.stack(coords, 1), torch.stack(atoms, 1), torch.stack(envs, 1), coords)

    # ------------------------------------------------------------------ losses
    def score(self, envs: torch.Tensor, atoms: torch.Tensor, types: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Critic scores (S, T) of the valid steps (0 elsewhere)."""
        out = torch.zeros(mask.shape, dtype=envs.dtype)
        out[mask] = self.critic(envs[mask], atoms[mask], self.features.target_type(types[mask]))
        return out

    def critic_loss(self, seqs: BeadSequences, fake: Generated, gp_weight: float, rng: torch.Generator,
                    fraction: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 4.14 with the gradient penalty on interpolates of the whole critic input. With
        ``fraction`` < 1 the critic sees a random subset of the valid steps (at least one per
        sequence is not guaranteed; the step weights are renormalized over the subset)."""
        mask, types = seqs.target_mask, seqs.target_types
        if fraction < 1.0:
            mask = mask & (host_random(torch.rand, mask.shape, generator=rng) < fraction)
            if not bool(mask.any()):
                mask = seqs.target_mask
        w = step_weights(seqs.target_mask)[mask]
        w = w / w.sum()
        real_env, real_atom = self.real(seqs)
        re, ra, fe, fa = real_env[mask], real_atom[mask], fake.envs[mask].detach(), fake.atoms[mask].detach()
        onehot = self.features.target_type(types[mask])
        s_real = self.critic(re, ra, onehot)
        s_fake = self.critic(fe, fa, onehot)
        alpha = host_random(torch.rand, len(w), generator=rng)
        a5 = alpha[:, None, None, None, None]
        ie = (a5 * re + (1 - a5) * fe).requires_grad_(True)
        ia = (a5[:, 0] * ra + (1 - a5[:, 0]) * fa).requires_grad_(True)
        s_int = self.critic(ie, ia, onehot)
        ge, ga = torch.autograd.grad(s_int.sum(), (ie, ia), create_graph=True)
        norm = torch.sqrt(ge.pow(2).flatten(1).sum(1) + ga.pow(2).flatten(1).sum(1) + 1e-12)
        gp = (norm - 1) ** 2
        wasserstein = (w * (s_real - s_fake)).sum()
        loss = -wasserstein + gp_weight * (w * gp).sum()
        return loss, {"critic_loss": float(loss.detach()), "wasserstein": float(wasserstein.detach()),
                      "gp": float((w * gp).sum().detach())}

    def generator_loss(self, seqs: BeadSequences, fake: Generated) -> torch.Tensor:
        """Eq. 4.13: minus the critic's mean score of the generated steps."""
        mask = seqs.target_mask
        w = step_weights(mask)
        return -(w * self.score(fake.envs, fake.atoms, seqs.target_types, mask)).sum()
