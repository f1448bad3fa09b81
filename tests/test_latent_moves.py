"""Exactness of VAE Monte Carlo moves (backmap.refinement.latent_moves) on targets with known
answers: the 2D double well (moments by quadrature) and a harmonic well with a perfect VAE.

Chains start from exact samples of the target, so an exact kernel leaves every chain's state
exactly distributed after any number of moves; the chains are independent, so the standard
error of each moment is known without autocorrelation analysis. Bounds are 4 standard errors
(a false alarm ~1e-4 per check); the moved-at-least-once fractions make sure the chains moved."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backmap.threads import torch_threads
from backmap.refinement.latent_moves import (IndependentChains, JointLogDensity, metropolis, multiple_try_log_ratio,
                                             vae_move, vae_move_sequential)
from toys import (GaussianVAE, PerfectHarmonicVAE, double_well_energy,
                          double_well_quadrature, double_well_samples)

CHAINS = 4000
SIGMAS = 4.0


@pytest.fixture(scope="module")
def exact():
    return double_well_quadrature()[0]


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):  # tiny tensors: a second thread only adds overhead
        yield


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    vae = GaussianVAE(dim=2, latent=1)
    with torch_threads(1):
        vae.fit(double_well_samples(20000, np.random.default_rng(0)), steps=400)
    return vae


def _chain(model, x0: np.ndarray, steps: int, seed: int, trials: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(x0, dtype=torch.float64)
    moved = torch.zeros(len(x), dtype=torch.bool)
    accepted = 0.0
    with torch.no_grad():
        for _ in range(steps):
            r = vae_move(IndependentChains(model, len(x)), x, lambda y: -double_well_energy(y), gen, trials)
            x, moved = r.x, moved | r.accepted
            accepted += float(r.accepted.double().mean())
    return x.numpy(), float(moved.double().mean()), accepted / steps


def _assert_moments(x: np.ndarray, exact) -> None:
    n = len(x)
    se_mean1 = exact.std_x1 / math.sqrt(n)
    assert abs(x[:, 0].mean() - exact.mean_x1) < SIGMAS * se_mean1, (x[:, 0].mean(), exact.mean_x1)
    se_minor = math.sqrt(exact.minor_mass * (1 - exact.minor_mass) / n)
    assert abs((x[:, 0] > 0).mean() - exact.minor_mass) < SIGMAS * se_minor
    assert abs(x[:, 1].mean()) < SIGMAS / math.sqrt(n)
    assert abs(x[:, 1].var() - 1.0) < SIGMAS * math.sqrt(2 / n)  # Gaussian: var(s²) = 2σ⁴/n
    # σ_x1 from the major mode alone (the minor mode's count is tested above): −2.441 ± 0.29
    major = x[x[:, 0] < 0, 0]
    assert abs(major.std() - 0.290) < 0.02


def test_quadrature_reproduces_the_papers_numbers(exact):
    # Schöberl et al. (seed 003): μ_x1 ≈ −2.441, σ_x1 ≈ 0.522, mass with x1 > 0 ≈ 0.0083
    assert exact.mean_x1 == pytest.approx(-2.441, abs=1e-3)
    assert exact.std_x1 == pytest.approx(0.522, abs=1e-3)
    assert exact.minor_mass == pytest.approx(0.0083, abs=1e-4)


def test_trained_model_chain_keeps_the_exact_distribution(trained, exact):
    x, moved, acceptance = _chain(trained, double_well_samples(CHAINS, np.random.default_rng(1)), 40, seed=2)
    assert moved > 0.95 and acceptance > 0.5
    _assert_moments(x, exact)


def test_biased_model_is_wrong_alone_but_exact_in_the_chain(trained, exact):
    """An untrained VAE (decoder ~ N(0, 1)) proposes far from the target, yet the chain is exact."""
    torch.manual_seed(5)
    bad = GaussianVAE(dim=2, latent=1)
    with torch.no_grad():
        raw, _ = bad.generate(CHAINS, torch.Generator().manual_seed(3))
    assert abs(raw[0, :, 0].mean().item() - exact.mean_x1) > 20 * exact.std_x1 / math.sqrt(CHAINS)
    x, moved, acceptance = _chain(bad, double_well_samples(CHAINS, np.random.default_rng(4)), 120, seed=6)
    assert 0.002 < acceptance < 0.1 and moved > 0.5  # measured: 0.012, 0.66
    _assert_moments(x, exact)


def test_multiple_try_moves_are_exact_and_accept_more(exact):
    torch.manual_seed(5)
    bad = GaussianVAE(dim=2, latent=1)
    start = double_well_samples(CHAINS, np.random.default_rng(7))
    x, moved, acceptance = _chain(bad, start, 30, seed=8, trials=8)
    _x1, _m1, acceptance_1 = _chain(bad, start, 30, seed=8, trials=1)
    assert acceptance > 3 * acceptance_1 and moved > 0.7  # measured: 0.087 vs 0.012, 0.86
    _assert_moments(x, exact)


def test_chain_from_the_wrong_well_reaches_the_target(trained, exact):
    """Convergence, not just stationarity: every chain starts in the minor well at x1 = 2."""
    x, moved, _acc = _chain(trained, np.tile([2.0, 0.0], (CHAINS, 1)), 150, seed=9, trials=4)
    assert moved == 1.0
    assert abs(x[:, 0].mean() - exact.mean_x1) < 10 * exact.std_x1 / math.sqrt(CHAINS)


def test_a_perfect_model_is_always_accepted():
    chains = 500
    model = PerfectHarmonicVAE(dim=3, chains=chains)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(chains, 3, generator=gen, dtype=torch.float64) * 3  # even from far off
    r = vae_move(model, x, lambda y: -0.5 * (y * y).sum(-1), gen)
    assert bool(r.accepted.all())
    assert float(r.log_ratio.abs().max()) < 1e-10


def test_nan_and_infinite_ratios_are_rejected_and_counted():
    gen = torch.Generator().manual_seed(0)
    ratio = torch.tensor([0.0, float("nan"), float("inf"), -float("inf"), 50.0], dtype=torch.float64)
    accepted, invalid = metropolis(ratio, gen)
    assert accepted.tolist() == [True, False, True, False, True]  # +inf: leaving an impossible state
    assert invalid.tolist() == [False, True, False, False, False]
    # a zero-probability current state (−inf weight) is left for any valid proposal; a zero-density
    # draw (+inf weight) is invalid
    w_cur = torch.tensor([-float("inf"), 0.0], dtype=torch.float64)
    w_new = torch.tensor([[-3.0], [float("inf")]], dtype=torch.float64)
    r = multiple_try_log_ratio(w_new, w_cur, torch.zeros(2, dtype=torch.long))
    assert r[0] == float("inf") and torch.isnan(r[1])
    # one NaN trial weight invalidates a multiple-try move (logsumexp would hide it)
    w = torch.tensor([[0.0, float("nan"), -1.0]], dtype=torch.float64)
    assert torch.isnan(multiple_try_log_ratio(w, torch.zeros(1, dtype=torch.float64), torch.tensor([0]))).all()


def test_single_try_ratio_is_eq9():
    """ln r = −βΔU + ln q(z2|x2) − ln q(z1|x1) + ln P(z1) − ln P(z2) + ln P(x1|z1) − ln P(x2|z2)."""
    g = torch.Generator().manual_seed(1)
    old = JointLogDensity(*torch.randn(3, 4, generator=g, dtype=torch.float64))
    new = JointLogDensity(*torch.randn(3, 4, generator=g, dtype=torch.float64))
    u1, u2 = torch.randn(2, 4, generator=g, dtype=torch.float64)
    beta = 0.7
    eq9 = (-beta * (u2 - u1) + new.encoder - old.encoder + old.prior - new.prior + old.decoder - new.decoder)
    w_old, w_new = -beta * u1 - old.model, -beta * u2 - new.model
    ours = multiple_try_log_ratio(w_new[:, None], w_old, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(ours, eq9, atol=1e-12)


class _Renamed(dict):
    """A view of ``moved`` (keyed by sorted position) keyed by original index."""

    def __init__(self, moved, order):
        super().__init__()
        self.moved, self.position = moved, np.argsort(order)

    def __contains__(self, j):
        return int(self.position[j]) in self.moved

    def __getitem__(self, j):
        return self.moved[int(self.position[j])]


def _coupled_gaussian_chain(coupled: bool, replicas: int = 1500, units: int = 4, J: float = 0.45,
                            moves: int = 8, seed: int = 5, near: str | None = None):
    """R replicas of ``units`` 2-D systems with π ∝ exp(−½Σ|x_k|² − J Σ x_k·x_{k+1}) (a Gaussian
    with precision A = tridiag(J, 1, J)), moved by vae_move_sequential with the perfect model of
    the uncoupled part; ``coupled=False`` decides every move against the stale state. ``near``:
    None, or the mask of systems that may interact handed to the moves ("chain": the true
    neighbours; "none": none, a false promise)."""
    A = np.eye(units) + J * (np.eye(units, k=1) + np.eye(units, k=-1))
    cov = np.linalg.inv(A)
    rng = np.random.default_rng(seed)
    start = rng.multivariate_normal(np.zeros(units), cov, size=(replicas, 2)).transpose(0, 2, 1)  # (R, U, 2)
    x = torch.as_tensor(start.reshape(replicas * units, 2))
    model = PerfectHarmonicVAE(dim=2, chains=replicas * units)
    replica, unit = np.divmod(np.arange(replicas * units), units)
    order = np.argsort(unit, kind="stable")  # decide unit 0 of every replica, then unit 1, …

    def log_target(y):  # the uncoupled part, as the refiner's batched energies
        return -0.5 * (y * y).sum(-1)

    def coupling(k, moved, states):  # moved: {original index: (old, new)}
        delta = torch.zeros(len(states), dtype=torch.float64)
        if not coupled:
            return delta
        for j in (k - 1, k + 1):
            if 0 <= j < len(replica) and replica[j] == replica[k] and j in moved:
                old, new = moved[j]
                delta = delta - J * (states * (new - old)).sum(-1)
        return delta

    mask = None
    if near is not None:  # in the decision order
        r_s, u_s = replica[order], unit[order]
        mask = (r_s[:, None] == r_s[None]) & (np.abs(u_s[:, None] - u_s[None]) == 1) & (near == "chain")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.as_tensor(order)
    inverse = torch.as_tensor(np.argsort(order))
    accepted = 0.0
    with torch.no_grad():
        for _ in range(moves):
            y = x[perm]
            # the current state's coupling with the units not yet moved in this move is part of the
            # batched target: with J·x_k·x_{k±1} at the state before the move
            full = x.reshape(replicas, units, 2)
            nb = torch.zeros_like(full)
            nb[:, 1:] += full[:, :-1]
            nb[:, :-1] += full[:, 1:]
            nb = nb.reshape(-1, 2)[perm]

            def batched(s, nb=nb):  # ln π of unit k's states with its neighbours at the old state
                return log_target(s) - J * (s * nb[:, None]).sum(-1)

            def coupling_sorted(k, moved, states):
                return coupling(int(perm[k]), _Renamed(moved, order), states)

            r = vae_move_sequential(model, y, batched, coupling_sorted, gen, trials=2, near=mask)
            x = r.x[inverse]
            accepted += float(r.accepted.double().mean())
    return x.numpy().reshape(replicas, units, 2), cov, accepted / moves


def test_sequential_moves_of_interacting_systems_are_exact():
    """Known answer: the coupled Gaussian's covariance (variances and nearest-neighbour covariances)
    within 4 standard errors after 8 moves from exact samples (5 seeds: ≤ 1.8); deciding each move against the
    stale state (no coupling update) breaks it, which the same check sees (5 seeds: 9–12)."""
    def errors(x, cov):
        n = x.shape[0] * 2
        out = []
        for a, b in [(0, 0), (1, 1), (0, 1), (1, 2)]:
            est = (x[:, a] * x[:, b]).sum(-1).sum() / n
            se = math.sqrt((cov[a, a] * cov[b, b] + cov[a, b] ** 2) / n)
            out.append(abs(est - cov[a, b]) / se)
        return np.array(out)

    x, cov, acceptance = _coupled_gaussian_chain(coupled=True)
    assert 0.3 < acceptance < 1.0
    assert errors(x, cov).max() < SIGMAS, errors(x, cov)
    stale, cov, _ = _coupled_gaussian_chain(coupled=False)
    assert errors(stale, cov).max() > SIGMAS, errors(stale, cov)


def test_a_mask_of_interacting_systems_changes_no_decision():
    """``near`` (which systems may interact) only saves coupling calls: with the true neighbours
    every decision is the same as without a mask, bit for bit; a mask that promises no interaction
    is the stale update (the coupling is never asked)."""
    plain, _, _ = _coupled_gaussian_chain(coupled=True, replicas=200, moves=3)
    masked, _, _ = _coupled_gaussian_chain(coupled=True, replicas=200, moves=3, near="chain")
    np.testing.assert_array_equal(masked, plain)
    empty, _, _ = _coupled_gaussian_chain(coupled=True, replicas=200, moves=3, near="none")
    stale, _, _ = _coupled_gaussian_chain(coupled=False, replicas=200, moves=3)
    np.testing.assert_array_equal(empty, stale)
    assert np.abs(empty - plain).max() > 0.1
