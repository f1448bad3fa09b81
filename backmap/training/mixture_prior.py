"""A learnable latent prior with several modes whose samples stay differentiable: per latent
dimension a mixture of K Gaussians, sampled with *implicit* reparameterization (Figurnov et al.
2018) — the component is drawn discretely, and the gradient of the draw with respect to the weights,
means and widths is dz/dθ = −(∂F(z; θ)/∂θ) / p(z; θ), F the mixture's CDF.

Why: reverse-KL training (seed 003) with a unimodal latent must put samples on the barrier between
two modes of the target, and a minor mode then costs more to keep than to drop (docs/reverse-kl.md).
With one component per mode the barrier carries no samples and the weights can follow the modes'
masses through tempering.
"""
from __future__ import annotations

import math

import torch

from backmap.devices import host_random

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class MixturePrior(torch.nn.Module):
    """P(z) = Π_d Σ_k w_dk N(z_d; μ_dk, σ_dk²) for ``latent`` dimensions and ``components`` K.

    The means start spread over [−``spread``, ``spread``], the widths at ``spread`` / K, the weights
    equal (float64)."""

    def __init__(self, latent: int, components: int, spread: float = 1.5):
        super().__init__()
        k = torch.linspace(-spread, spread, components, dtype=torch.float64) if components > 1 \
            else torch.zeros(1, dtype=torch.float64)
        self.logits = torch.nn.Parameter(torch.zeros(latent, components, dtype=torch.float64))
        self.means = torch.nn.Parameter(k.repeat(latent, 1))
        width = spread / components if components > 1 else 1.0
        self.log_stds = torch.nn.Parameter(torch.full((latent, components), math.log(width), dtype=torch.float64))

    def _component_log_pdf(self, z: torch.Tensor) -> torch.Tensor:
        """ln w_k + ln N(z_d; μ_dk, σ_dk) for z (..., latent) → (..., latent, K)."""
        u = (z[..., None] - self.means) * torch.exp(-self.log_stds)
        return torch.log_softmax(self.logits, -1) - 0.5 * u * u - self.log_stds - LOG_SQRT_2PI

    def log_prob_per_dim(self, z: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self._component_log_pdf(z), -1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """ln P(z) for z (..., latent) → (...)."""
        return self.log_prob_per_dim(z).sum(-1)

    def cdf(self, z: torch.Tensor) -> torch.Tensor:
        """Per dimension F_d(z_d) (..., latent)."""
        u = (z[..., None] - self.means) * torch.exp(-self.log_stds)
        return (torch.softmax(self.logits, -1) * torch.special.ndtr(u)).sum(-1)

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Draws of shape (*shape, latent), differentiable in the prior's parameters."""
        latent, K = self.means.shape
        n = math.prod(shape)
        with torch.no_grad():
            w = torch.softmax(self.logits, -1)  # (latent, K)
            k = host_random(torch.multinomial, w, n, replacement=True, generator=generator).T  # (n, latent)
            d = torch.arange(latent)
            eps = host_random(torch.randn, n, latent, generator=generator, dtype=torch.float64)
            z0 = self.means[d, k] + torch.exp(self.log_stds[d, k]) * eps
        if not torch.is_grad_enabled() or not self.means.requires_grad:
            return z0.view(*shape, latent)
        # implicit reparameterization: value z0, gradient −∂F/∂θ / p at z0
        F = self.cdf(z0)
        p = torch.exp(self.log_prob_per_dim(z0)).detach().clamp(min=1e-300)
        z = z0 - (F - F.detach()) / p
        return z.view(*shape, latent)

    def sample_balanced(self, shape: tuple[int, ...], generator: torch.Generator
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draws (*shape, latent) with every component equally often (per dimension, component i mod
        K in a random order), their log importance weights ln Π_d K w_{d,k_d} (*shape), which turn
        averages over the draws into averages over P(z) and carry the weights' gradient (ordinary
        reparameterization inside a component). A minor component then gets as many draws as a major
        one: its shape is learned from n/K samples, and its weight's gradient, π_k (E_k f − E f), from
        all of them — the implicit gradient of :meth:`sample` learns a weight only from the rare
        draws near the gap between components (docs/reverse-kl.md) — and the components (*shape,
        latent)."""
        latent, K = self.means.shape
        n = math.prod(shape)
        k = torch.stack([host_random(torch.randperm, n, generator=generator) % K for _ in range(latent)],
                        1)  # (n, latent)
        d = torch.arange(latent)
        eps = host_random(torch.randn, n, latent, generator=generator, dtype=torch.float64)
        z = self.means[d, k] + torch.exp(self.log_stds[d, k]) * eps
        log_s = (torch.log_softmax(self.logits, -1)[d, k] + math.log(K)).sum(-1)
        return z.view(*shape, latent), log_s.view(shape), k.view(*shape, latent)

    @torch.no_grad()
    def reweight(self, components: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
        """Set the weights to importance-sampling estimates of each component's mass under a target:
        w_dk ∝ Σ_i ω_i [k_id = k] for draws with components (n, latent) and log importance weights
        ln ω (n) = ln p̃(x) − ln q(x) (+ ln s of balanced draws). Reverse KL pins a minor mode's weight
        only weakly (a mode of mass π weighted π' costs ≈ (π' − π)²/2π nats), this sets it from the
        target's density directly. Returns the new weights (latent, K)."""
        latent, K = self.means.shape
        w = torch.softmax(log_w.reshape(-1).double(), 0)
        k = components.reshape(-1, latent)
        mass = torch.stack([torch.zeros(K, dtype=torch.float64).index_add_(0, k[:, d], w) for d in range(latent)])
        self.logits.copy_(torch.log(mass.clamp(min=1e-12)))
        return mass
