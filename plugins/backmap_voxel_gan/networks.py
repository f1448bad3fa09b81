"""The residual 3-D CNNs of the conditional WGAN (thesis appendix A.1), sized by width and depth.

Generator: the environment is encoded at full resolution and pooled once; noise and the target
atom type are mapped to a feature map of the pooled size and concatenated; residual blocks mix
them; one upsampling (a transposed 2×2×2 convolution: cheap on a CPU) returns to full resolution,
where the encoder's features join again (skip connection) and a 1×1 convolution with a sigmoid
gives the atom's density. Critic: residual blocks on [environment, atom density, target type],
one pooling, residual blocks, a dense layer to a scalar. Normalization is a layer norm over
(channels, voxels) with per-channel affine parameters (GroupNorm with one group); it never mixes
samples, as a WGAN-GP critic requires. Nonlinearities are LeakyReLU(0.2).
"""
from __future__ import annotations

import torch
from torch import nn

SLOPE = 0.2


def _norm(channels: int) -> nn.Module:
    return nn.GroupNorm(1, channels)


def _conv_block(c_in: int, c_out: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, kernel, padding=kernel // 2), _norm(c_out), nn.LeakyReLU(SLOPE))


class ResBlock(nn.Module):
    """conv–norm–act–conv–norm plus the input (1×1-projected when the width changes), then act."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(c_in, c_out, 3, padding=1), _norm(c_out), nn.LeakyReLU(SLOPE),
                                  nn.Conv3d(c_out, c_out, 3, padding=1), _norm(c_out))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv3d(c_in, c_out, 1)
        self.act = nn.LeakyReLU(SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


def _blocks(c_in: int, c_out: int, depth: int) -> nn.Sequential:
    layers = [ResBlock(c_in if k == 0 else c_out, c_out) for k in range(depth)]
    if not layers and c_in != c_out:
        layers = [_conv_block(c_in, c_out, 1)]
    return nn.Sequential(*layers)


class VoxelGenerator(nn.Module):
    """(environment (B, C, n³), noise (B, z), target type one-hot (B, T)) → density (B, n, n, n).
    ``depth`` residual blocks at the pooled resolution, ``full_depth`` in the encoder and in the
    decoder at full resolution (8× the cost of a pooled block per channel²)."""

    def __init__(self, env_channels: int, n_types: int, grid: int, width: int, depth: int, noise_dim: int,
                 full_depth: int = 1):
        super().__init__()
        w, half = width, grid // 2
        self.half = half
        self.stem = _conv_block(env_channels, w)
        self.encoder = _blocks(w, w, full_depth)
        self.pool = nn.AvgPool3d(2)
        self.latent = nn.Sequential(nn.Linear(noise_dim + n_types, w * half**3), nn.LeakyReLU(SLOPE))
        self.fuse = _conv_block(2 * w, 2 * w)
        self.middle = _blocks(2 * w, 2 * w, max(depth, 1))
        self.up = nn.Sequential(nn.ConvTranspose3d(2 * w, w, 2, stride=2), _norm(w), nn.LeakyReLU(SLOPE))
        self.decoder = _blocks(2 * w, w, full_depth) if full_depth else _conv_block(2 * w, w, 1)
        self.head = nn.Conv3d(w, 1, 1)
        # start from a faint background (sigmoid(-4) ≈ 0.02): the density's mass is then about that of
        # one atom's Gaussian, and the coordinate (its weighted average) follows the first peaks formed
        nn.init.constant_(self.head.bias, -4.0)

    def forward(self, env: torch.Tensor, noise: torch.Tensor, target_type: torch.Tensor) -> torch.Tensor:
        skip = self.encoder(self.stem(env))
        h = self.pool(skip)
        lat = self.latent(torch.cat([noise, target_type], -1)).reshape(h.shape[0], -1, self.half, self.half,
                                                                        self.half)
        h = self.middle(self.fuse(torch.cat([h, lat], 1)))
        h = self.decoder(torch.cat([self.up(h), skip], 1))
        return torch.sigmoid(self.head(h))[:, 0]


class VoxelCritic(nn.Module):
    """(environment (B, C, n³), atom density (B, n³), target type one-hot (B, T)) → score (B,)."""

    def __init__(self, env_channels: int, n_types: int, grid: int, width: int, depth: int, full_depth: int = 1):
        super().__init__()
        w, half = width, grid // 2
        self.stem = nn.Sequential(nn.Conv3d(env_channels + 1 + n_types, w, 3, padding=1), nn.LeakyReLU(SLOPE))
        self.full = _blocks(w, w, full_depth)
        self.pool = nn.AvgPool3d(2)
        self.low = _blocks(w, 2 * w, max(depth, 1))
        self.dense = nn.Linear(2 * w * half**3, 1)

    def forward(self, env: torch.Tensor, atom: torch.Tensor, target_type: torch.Tensor) -> torch.Tensor:
        n = env.shape[-1]
        types = target_type[:, :, None, None, None].expand(-1, -1, n, n, n)
        h = self.stem(torch.cat([env, atom[:, None], types], 1))
        h = self.low(self.pool(self.full(h)))
        return self.dense(h.flatten(1))[:, 0]


def flops_per_call(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-adds ×2 of the convolutions and dense layers for one sample (hooks count them)."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv3d):
            total += 2 * out[0].numel() * mod.in_channels * int(torch.tensor(mod.kernel_size).prod()) // mod.groups
        elif isinstance(mod, nn.ConvTranspose3d):
            total += 2 * inp[0][0].numel() * mod.out_channels * int(torch.tensor(mod.kernel_size).prod())
        elif isinstance(mod, nn.Linear):
            total += 2 * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d, nn.Linear))]
    try:
        with torch.no_grad():
            module(*[x[:1] for x in inputs])
    finally:
        for h in handles:
            h.remove()
    return total
