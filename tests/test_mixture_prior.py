"""The mixture prior: a normalized density whose draws follow it, and implicit-reparameterization
gradients equal to the quadrature gradient of an expectation."""
from __future__ import annotations

import numpy as np
import torch

from backmap.training.mixture_prior import MixturePrior


def _prior() -> MixturePrior:
    m = MixturePrior(latent=1, components=2)
    with torch.no_grad():
        m.logits[:] = torch.tensor([[0.3, -0.4]])
        m.means[:] = torch.tensor([[-1.0, 2.0]])
        m.log_stds[:] = torch.tensor([[-0.5, 0.2]])
    return m


GRID = torch.linspace(-12, 12, 100_001, dtype=torch.float64)[:, None]


def _f(z: torch.Tensor) -> torch.Tensor:
    return torch.cos(z - 0.3) + 0.5 * torch.sin(2 * z)


def test_density_is_normalized_and_draws_follow_it():
    m = _prior()
    with torch.no_grad():
        p = torch.exp(m.log_prob(GRID))
        dz = float(GRID[1, 0] - GRID[0, 0])
        assert abs(float(p.sum()) * dz - 1) < 1e-6
        mean = float((p * GRID[:, 0]).sum()) * dz
        var = float((p * (GRID[:, 0] - mean) ** 2).sum()) * dz
        z = m.sample((100_000,), torch.Generator().manual_seed(0))[:, 0]
    n = len(z)
    assert abs(float(z.mean()) - mean) < 5 * np.sqrt(var / n)
    assert abs(float(z.var()) - var) < 5 * var * np.sqrt(2 / n) * 2  # heavier than Gaussian tails: × 2


def test_implicit_gradient_matches_quadrature():
    m = _prior()
    exact = (torch.exp(m.log_prob(GRID)) * _f(GRID[:, 0])).sum() * (GRID[1, 0] - GRID[0, 0])
    exact_grads = torch.autograd.grad(exact, [m.logits, m.means, m.log_stds])
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(10):
        estimate = _f(m.sample((20_000,), gen)[:, 0]).mean()
        batches.append(torch.cat([g.flatten() for g in torch.autograd.grad(estimate, [m.logits, m.means, m.log_stds])]))
    draws = torch.stack(batches)
    mean, se = draws.mean(0), draws.std(0) / np.sqrt(len(draws))
    target = torch.cat([g.flatten() for g in exact_grads])
    assert torch.all((mean - target).abs() < 5 * se + 1e-4), (mean, target, se)
    # a gradient that ignored the implicit term (the discrete draw) would have no weight gradient
    assert target[:2].abs().min() > 4 * se[:2].max()  # 7 standard errors here


def test_balanced_draws_give_the_quadrature_expectation_and_gradient():
    """Every component drawn equally often, each draw weighted by K w_k: the weighted mean of f is
    E_P[f] and its gradient (weights, means, widths) the quadrature gradient, within 5 standard
    errors over batches; and the minor component (weight 0.33 here) gets half the draws."""
    m = _prior()
    exact = (torch.exp(m.log_prob(GRID)) * _f(GRID[:, 0])).sum() * (GRID[1, 0] - GRID[0, 0])
    target = torch.cat([g.flatten() for g in torch.autograd.grad(exact, [m.logits, m.means, m.log_stds])])
    gen = torch.Generator().manual_seed(2)
    values, grads = [], []
    for _ in range(10):
        z, log_s, _k = m.sample_balanced((20_000,), gen)
        estimate = (torch.exp(log_s) * _f(z[:, 0])).mean()
        values.append(float(estimate.detach()))
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(estimate, [m.logits, m.means, m.log_stds])]))
        with torch.no_grad():
            near_second = (z[:, 0] - m.means[0, 1]).abs() < (z[:, 0] - m.means[0, 0]).abs()
        assert 0.4 < float(near_second.double().mean()) < 0.6  # an unbalanced draw: 0.3
    v = torch.tensor(values)
    assert abs(float(v.mean() - exact)) < 5 * float(v.std()) / np.sqrt(len(v)) + 1e-6
    draws = torch.stack(grads)
    mean, se = draws.mean(0), draws.std(0) / np.sqrt(len(draws))
    assert torch.all((mean - target).abs() < 5 * se + 1e-4), (mean, target, se)
