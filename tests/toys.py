"""Toy targets with known answers and a small Gaussian VAE, for exactness checks of samplers and
training objectives (VAE Monte Carlo, reverse-KL training): the 2D double well of Schöberl et al.
(seed ``003``) whose moments come from quadrature, and a harmonic well with an analytically
perfect VAE (acceptance 1); and a two-atom placement toy with a tiny voxel GAN for it (training
loop, checkpoints)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from backmap.api.refinement import JointLogDensity
from backmap.training.mixture_prior import MixturePrior  # (core: the api does not export it)
from backmap.training.sequences import BeadSequences

LOG_2PI = math.log(2 * math.pi)


def double_well_energy(x: torch.Tensor) -> torch.Tensor:
    """U = x₁⁴/4 − 3x₁² + x₁ + x₂²/2 for states (..., 2)."""
    x1, x2 = x[..., 0], x[..., 1]
    return x1 ** 4 / 4 - 3 * x1 ** 2 + x1 + x2 ** 2 / 2


@dataclass(frozen=True)
class DoubleWellMoments:
    """Exact answers at inverse temperature β: mean and s.d. of x₁ and x₂, mass with x₁ > 0."""

    mean_x1: float
    std_x1: float
    minor_mass: float
    mean_x2: float
    std_x2: float


def double_well_quadrature(beta: float = 1.0, n: int = 200_001, span: float = 8.0
                           ) -> tuple[DoubleWellMoments, np.ndarray, np.ndarray]:
    """Moments by quadrature on a fine grid of x₁ (x₂ is Gaussian with variance 1/β), with the
    grid and its normalized cumulative distribution for exact sampling."""
    x = np.linspace(-span, span, n)
    u = x ** 4 / 4 - 3 * x ** 2 + x
    p = np.exp(-beta * (u - u.min()))
    p /= np.trapezoid(p, x)
    mean = np.trapezoid(x * p, x)
    std = math.sqrt(np.trapezoid((x - mean) ** 2 * p, x))
    minor = np.trapezoid(np.where(x > 0, p, 0.0), x)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(x))])
    cdf /= cdf[-1]
    return DoubleWellMoments(float(mean), std, float(minor), 0.0, 1 / math.sqrt(beta)), x, cdf


def double_well_samples(n: int, rng: np.random.Generator, beta: float = 1.0) -> np.ndarray:
    """n exact samples (n, 2) by inverse-CDF sampling of the quadrature."""
    _m, grid, cdf = double_well_quadrature(beta)
    x1 = np.interp(rng.random(n), cdf, grid)
    return np.stack([x1, rng.normal(0, 1 / math.sqrt(beta), n)], 1)


def _normal_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * LOG_2PI).sum(-1)


class GaussianVAE(torch.nn.Module):
    """A VAE on R^d with diagonal Gaussian encoder and decoder (MLPs) and a standard normal prior
    (or a learned mixture, ``prior_components`` > 1),
    implementing :class:`backmap.refinement.latent_moves.LatentModel` for one system (B = 1) or a
    batch of independent copies of it (B states)."""

    def __init__(self, dim: int = 2, latent: int = 1, hidden: int = 64, prior_components: int = 1):
        super().__init__()
        self.dim, self.latent = dim, latent
        #: with several components, a learned mixture prior (:mod:`backmap.training.mixture_prior`)
        self.mixture = MixturePrior(latent, prior_components) if prior_components > 1 else None

        def net(n_in: int, n_out: int) -> torch.nn.Sequential:
            return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden),
                                       torch.nn.SiLU(), torch.nn.Linear(hidden, 2 * n_out))

        self.encoder = net(dim, latent)
        self.decoder = net(latent, dim)
        self.double()

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = out.chunk(2, -1)
        return mean, log_std.clamp(-7.0, 3.0)

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mean, log_std = self._split(self.encoder(x))
        return mean + torch.exp(log_std) * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)

    def generate(self, n: int, generator: torch.Generator, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(batch, n, self.latent, generator=generator, dtype=torch.float64) if self.mixture is None \
            else self.mixture.sample((batch, n), generator)
        mean, log_std = self._split(self.decoder(z))
        return mean + torch.exp(log_std) * torch.randn(mean.shape, generator=generator, dtype=mean.dtype), z

    @torch.no_grad()
    def calibrate_mixture(self, log_target, n: int, generator: torch.Generator, entropy_samples: int = 16,
                          rounds: int = 2) -> list[float]:
        """Set the mixture prior's weights to the target's mass per component (the target's
        unnormalized log density ``log_target``(x), no samples of it): balanced draws, importance
        weights p̃(x)/q(x) with ln q(x) by the importance-weighted bound, then
        :meth:`MixturePrior.reweight`; ``rounds`` times (q changes with the weights). Returns the
        weights of the last component of the first latent dimension after each round."""
        from backmap.training.reverse_kl import log_marginal_bound

        out = []
        for _ in range(rounds):
            z, log_s, k = self.mixture.sample_balanced((1, n), generator)
            mean, log_std = self._split(self.decoder(z))
            x = mean + torch.exp(log_std) * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
            log_q = log_marginal_bound(self, x, z, entropy_samples, generator)
            out.append(float(self.mixture.reweight(k, log_target(x) - log_q + log_s)[0, -1]))
        return out

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> JointLogDensity:
        q = _normal_log_prob(z, *self._split(self.encoder(x)))
        prior = _normal_log_prob(z, torch.zeros_like(z), torch.zeros_like(z)) if self.mixture is None \
            else self.mixture.log_prob(z)
        dec = _normal_log_prob(x, *self._split(self.decoder(z)))
        return JointLogDensity(q, prior, dec)

    def elbo(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Mean ELBO of states (n, d) with one reparameterized latent draw each."""
        z = self.encode(x, generator)
        j = self.log_joint(x, z)
        return (j.decoder + j.prior - j.encoder).mean()

    def fit(self, data: np.ndarray, steps: int = 400, batch: int = 512, lr: float = 1e-2, seed: int = 0) -> list[float]:
        """Maximize the ELBO on samples ``data`` (n, d); the loss (−ELBO) per step."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.as_tensor(data, dtype=torch.float64)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        losses = []
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
            idx = torch.randint(len(x), (batch,), generator=gen)
            loss = -self.elbo(x[idx], gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses


class PerfectHarmonicVAE:
    """For π(x) ∝ exp(−|x|²/2) on R^d: z ~ N(0, I), x | z ~ N(a z, (1 − a²) I), q(z | x) =
    N(a x, (1 − a²) I) — the joint P(z) P(x|z) equals π(x) q(z|x) exactly, so every VAE Monte
    Carlo move is accepted."""

    def __init__(self, dim: int, chains: int, a: float = 0.8):
        self.dim, self.chains, self.a = dim, chains, a
        self.log_s = 0.5 * math.log(1 - a * a)

    def encode(self, x, generator):
        return self.a * x + math.exp(self.log_s) * torch.randn(x.shape, generator=generator, dtype=torch.float64)

    def generate(self, n, generator):
        z = torch.randn(self.chains, n, self.dim, generator=generator, dtype=torch.float64)
        return self.a * z + math.exp(self.log_s) * torch.randn(z.shape, generator=generator, dtype=torch.float64), z

    def log_joint(self, x, z):
        s = torch.full_like(x, self.log_s)
        zero = torch.zeros_like(x)
        return JointLogDensity(_normal_log_prob(z, self.a * x, s), _normal_log_prob(z, zero, zero),
                               _normal_log_prob(x, self.a * z, s))


def double_well_box_wall(x: torch.Tensor, half_width: float = 5.0, slope: float = 1000.0) -> torch.Tensor:
    """The paper's U_aux (eq. 47) as an untempered wall in kT: slope·(|xᵢ| − b) outside the box
    [−b, b]², so that the target stays normalizable as β → 0 (at β = 1 it removes < 1e-6 of the mass)."""
    return (slope * (x.abs() - half_width).clamp(min=0)).sum(-1)


# --------------------------------------------------------------------------- voxel GAN toy

def toy_sequences(n: int, seed: int = 0, steps: int = 2) -> BeadSequences:
    """A bead at the origin, an anchor atom anywhere within 0.2 nm of it, and two atoms to place:
    A bonded to the anchor, 0.15 nm above it (z); B 0.12 nm from A along x. Step 1 sees the atom of
    step 0 (slot 0). ``steps=1``: only A."""
    if steps == 1:
        return _first_step(toy_sequences(n, seed))
    g = np.random.default_rng(seed)
    u = g.normal(size=(n, 3))
    anchor = 0.2 * u / np.linalg.norm(u, axis=1, keepdims=True) * g.uniform(0, 1, (n, 1)) ** (1 / 3)
    a = anchor + np.array([0.0, 0.0, 0.15]) + 0.01 * g.normal(size=(n, 3))
    b = a + np.array([0.12, 0.0, 0.0]) + 0.01 * g.normal(size=(n, 3))
    f = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    return BeadSequences(
        atom_positions=f(np.stack([anchor, a], 1)), atom_types=torch.tensor([[0, 1]]).repeat(n, 1),
        atom_index=torch.tensor([[0, 1]]).repeat(n, 1), slot=torch.tensor([[-1, 0]]).repeat(n, 1),
        visible=torch.tensor([[[True, False], [True, True]]]).repeat(n, 1, 1),
        interaction=torch.tensor([[[0, 3], [1, 0]]], dtype=torch.uint8).repeat(n, 1, 1),
        bead_positions=torch.zeros(n, 1, 3), bead_types=torch.zeros(n, 1, dtype=torch.long),
        bead_mask=torch.ones(n, 1, dtype=torch.bool), target_positions=f(np.stack([a, b], 1)),
        target_types=torch.ones(n, 2, dtype=torch.long), target_atoms=torch.tensor([[1, 2]]).repeat(n, 1),
        target_mask=torch.ones(n, 2, dtype=torch.bool), frame=torch.zeros(n, dtype=torch.long),
        bead=torch.arange(n), context=torch.zeros(n, dtype=torch.long))


def _first_step(s: BeadSequences) -> BeadSequences:
    return BeadSequences(s.atom_positions[:, :1], s.atom_types[:, :1], s.atom_index[:, :1], s.slot[:, :1],
                         s.visible[:, :1, :1], s.interaction[:, :1, :1], s.bead_positions, s.bead_types, s.bead_mask,
                         s.target_positions[:, :1], s.target_types[:, :1], s.target_atoms[:, :1],
                         s.target_mask[:, :1], s.frame, s.bead, s.context)


def toy_layout():
    """The voxel GAN's channel layout of :func:`toy_sequences`: 2 atom types, 4 interactions, 1 bead type."""
    from backmap_voxel_gan.features import ChannelLayout

    return ChannelLayout(n_atom_types=2, n_interactions=4, n_bead_types=1)


def toy_gan(seed: int = 0, **params):
    """A tiny voxel GAN with fresh networks for the toy layout."""
    from backmap_voxel_gan.generator import VoxelGAN

    gen = VoxelGAN({"preset": "tiny", **params})
    gen.setup_layout(toy_layout(), seed)
    return gen
