"""Data-free training by reverse KL (backmap.training.reverse_kl; Schöberl et al., seed 003):
estimators with known answers, the implicit reparameterization of the von Mises mixtures the
molecular decoders draw dihedrals from, the guard rails (rollback, resume), and the paper's
double well (test_double_well_*)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backmap.refinement.latent_moves import IndependentChains, vae_move
from backmap.threads import torch_threads
from toys import GaussianVAE, PerfectHarmonicVAE, double_well_energy, double_well_quadrature
from backmap.training.reverse_kl import (FixedProblem, ReverseKLTrainer, Target, TemperingParams, kl_estimate,
                                         log_marginal_bound, log_z_ratio, reverse_kl_batch)


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):  # tiny tensors: a second thread only adds overhead
        yield


class _Batch1:
    """A one-system model (B = 1) as the trainer takes it."""

    def __init__(self, vae):
        self.vae = vae

    def generate(self, n, generator):
        return self.vae.generate(n, generator, batch=1)

    def log_joint(self, x, z):
        return self.vae.log_joint(x, z)


def _harmonic(x):
    return 0.5 * (x * x).sum(-1)


# ---------------------------------------------------------------------- estimators with known answers
def test_perfect_model_has_zero_kl_and_the_exact_log_z_ratio():
    """q = p exactly (the perfect harmonic VAE at β = 1): every weight is equal, the KL estimate is
    0, and ln Z(β + Δβ) − ln Z(β) = −(d/2) ln((β + Δβ)/β) for U = |x|²/2, to importance-sampling
    error (the weights exp(−Δβ U) have a known variance: U ~ Γ(d/2, 1))."""
    d, n = 3, 200_000
    model = PerfectHarmonicVAE(dim=d, chains=1)
    _loss, est, _x = reverse_kl_batch(model, Target(_harmonic), 1.0, n, torch.Generator().manual_seed(0))
    assert kl_estimate(est) == pytest.approx(0.0, abs=1e-9)
    # ln Z(1) = (d/2) ln 2π, and the loss is −ln Z for a perfect model
    assert est.loss == pytest.approx(-0.5 * d * math.log(2 * math.pi), abs=1e-9)
    for dbeta in (0.05, 0.3):
        exact = -0.5 * d * math.log1p(dbeta)
        w = torch.exp(-dbeta * est.u)
        se = float(w.std() / w.mean()) / math.sqrt(n)  # delta method: s.e. of ln(mean w)
        assert abs(log_z_ratio(est, dbeta) - exact) < 5 * se


def test_loss_is_the_kl_bound_minus_log_z():
    """For a Gaussian model of the harmonic target at β: L + ln Z(β) ≥ 0 with the encoder's
    slack, and equals 0 for the exact model; a wider model gives the analytic KL of two Gaussians."""
    d, n, s = 2, 200_000, 1.3  # q = N(0, s²) per coordinate, p = N(0, 1): KL = d (s²/2 − 1/2 − ln s)

    class Wide:
        def generate(self, k, generator):
            x = s * torch.randn(1, k, d, generator=generator, dtype=torch.float64)
            return x, x.clone()

        def log_joint(self, x, z):  # z = x: ln r(z | x) = ln q(x | z) = 0 (a point mass both ways)
            from backmap.refinement.latent_moves import JointLogDensity
            zero = torch.zeros(x.shape[:-1], dtype=torch.float64)
            prior = (-0.5 * (z / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1)
            return JointLogDensity(zero, prior, zero)

    _loss, est, _x = reverse_kl_batch(Wide(), Target(_harmonic), 1.0, n, torch.Generator().manual_seed(1))
    kl = d * (s * s / 2 - 0.5 - math.log(s))
    log_z = 0.5 * d * math.log(2 * math.pi)
    assert est.loss + log_z == pytest.approx(kl, abs=5 * d * s * s / math.sqrt(n) * 2)


class _LinearGaussian:
    """z ~ N(0, 1), x | z ~ N(a z, s²): q(x) = N(0, a² + s²) exactly; the encoder r(z | x) is
    deliberately wrong (mean shrunk, width inflated against the true posterior), so the one-draw
    bound has a gap of KL(q(z | x) ‖ r(z | x)) > 0 that the importance-weighted bound must close."""

    a, s = 2.0, 0.5

    def _post(self, x):
        v = 1 / (1 + self.a ** 2 / self.s ** 2)
        return 0.6 * v * self.a / self.s ** 2 * x[..., 0], 1.5 * math.sqrt(v)

    def generate(self, n, generator):
        z = torch.randn(1, n, 1, generator=generator, dtype=torch.float64)
        return self.a * z + self.s * torch.randn(z.shape, generator=generator, dtype=torch.float64), z

    def encode(self, x, generator):
        m, sd = self._post(x)
        return (m + sd * torch.randn(m.shape, generator=generator, dtype=torch.float64))[..., None]

    def log_joint(self, x, z):
        from backmap.refinement.latent_moves import JointLogDensity

        def normal(v, mean, sd):
            return -0.5 * ((v - mean) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)

        m, sd = self._post(x)
        return JointLogDensity(normal(z[..., 0], m, sd), normal(z[..., 0], 0.0, 1.0),
                               normal(x[..., 0], self.a * z[..., 0], self.s))


def test_importance_weighted_bound_closes_the_encoder_gap():
    """ln q(x) of a linear-Gaussian model is known. The paper's bound (k = 0) is too high by the
    encoder's KL gap; with k extra encoder draws the bound stays above ln q(x) (up to its Monte
    Carlo error) and its gap shrinks monotonically, below a tenth of the one-draw gap at k = 64."""
    model, n = _LinearGaussian(), 20_000
    gen = torch.Generator().manual_seed(3)
    x, z = model.generate(n, gen)
    var = model.a ** 2 + model.s ** 2
    exact = -0.5 * x[..., 0] ** 2 / var - 0.5 * math.log(2 * math.pi * var)
    gaps, errors = [], []
    for k in (0, 4, 64):
        d = (log_marginal_bound(model, x, z, k, gen) - exact).reshape(-1)
        gaps.append(float(d.mean()))
        errors.append(float(d.std()) / math.sqrt(n))
    assert gaps[0] > 0.1  # the wrong encoder opens a real gap
    for gap, err in zip(gaps, errors):
        assert gap > -4 * err  # an upper bound, in expectation
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.1 * gaps[0]


# ---------------------------------------------------------------------- implicit reparameterization
def test_von_mises_mixture_gradients_match_quadrature():
    """d/dθ E[f(φ)] by implicit reparameterization of draws from a von Mises mixture (weights,
    means and concentrations all differentiable) against the exact gradient of the quadrature
    ∫ f p_θ; tolerance: 5 standard errors of the per-sample gradients."""
    from backmap.api.icgen import N_OUT, ICDistribution

    torch.manual_seed(0)
    out = (torch.randn(N_OUT) * torch.tensor([0.] * 3 + [1.] * 12 + [1.5] * 4 + [0., 0.])).requires_grad_()

    def dist(n):
        return ICDistribution(out.expand(n, N_OUT), torch.full((n,), 1.9), torch.full((n,), 0.1),
                              torch.full((n,), 0.15))

    def f(phi):
        return torch.cos(phi - 0.3) + 0.5 * torch.sin(2 * phi)

    grid = torch.linspace(-math.pi, math.pi, 20001)[:-1]
    _a, lp, _r = dist(len(grid)).log_prob(torch.ones(len(grid)), torch.ones(len(grid)), grid)
    exact, = torch.autograd.grad((f(grid) * lp.exp()).sum() * (2 * math.pi / len(grid)), out)
    chunks = []
    for k in range(20):
        phi = dist(10_000).sample_dihedral(torch.Generator().manual_seed(k), reparameterized=True)
        chunks.append(torch.autograd.grad(f(phi).mean(), out)[0])
    g = torch.stack(chunks)
    mean, se = g.mean(0), g.std(0) / math.sqrt(len(g))
    part = slice(3, 19)  # the dihedral's parameters (the others do not enter)
    assert torch.all((mean[part] - exact[part]).abs() < 5 * se[part] + 1e-6), (mean[part], exact[part], se[part])
    assert float(exact[part].abs().max()) > 0.1  # a non-trivial gradient was checked


def test_reparameterized_draws_have_the_same_values():
    from backmap.api.icgen import N_OUT, ICDistribution

    out = torch.randn(64, N_OUT)
    d = ICDistribution(out, torch.full((64,), 1.9), torch.full((64,), 0.1), torch.full((64,), 0.15))
    plain = d.sample_dihedral(torch.Generator().manual_seed(3))
    rep = d.sample_dihedral(torch.Generator().manual_seed(3), reparameterized=True)
    assert torch.allclose(plain, rep, atol=1e-6)


# ---------------------------------------------------------------------- guard rails
def _small_trainer(tmp_path=None, energy=None, **kw):
    torch.manual_seed(0)
    vae = GaussianVAE(dim=2, latent=1, hidden=16)
    params = TemperingParams(**{"samples": 64, "dbeta_max": 0.05, "steps_per_beta": 2, "final_steps": 10,
                                "log_every": 5, "checkpoint_every": 10, **kw})
    target = Target(energy or double_well_energy, None, 1.0)
    return ReverseKLTrainer(FixedProblem(_Batch1(vae), target), vae, params, seed=3, directory=tmp_path), vae


def test_a_nan_energy_rolls_back_and_halves_the_step():
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += torch.is_grad_enabled()  # count training steps only
        u = double_well_energy(x)
        return u * float("nan") if calls["n"] == 12 else u

    trainer, _vae = _small_trainer(energy=flaky, max_steps=30)
    summary = trainer.run()
    assert summary["rollbacks"] == 1 and summary["steps"] == 30
    assert trainer.state.lr == pytest.approx(0.5 * trainer.p.lr)
    assert trainer.state.dbeta_max == pytest.approx(0.5 * trainer.p.dbeta_max)


def test_one_outlier_batch_is_skipped_not_rolled_back():
    """A batch whose loss jumps (a rare overlap) while a fresh batch's does not: its step is skipped
    and counted; the schedule is not halved."""
    calls = {"n": 0}

    def spike(x):
        calls["n"] += torch.is_grad_enabled()
        u = double_well_energy(x)
        return u + 1e6 * (torch.is_grad_enabled() and calls["n"] == 25)  # that batch only

    trainer, _vae = _small_trainer(energy=spike, max_steps=30)
    summary = trainer.run()
    assert summary["rollbacks"] == 0 and summary["outlier batches skipped"] == 1 and summary["steps"] == 30
    assert trainer.state.lr == trainer.p.lr


def test_a_late_divergence_rolls_back_to_the_last_checkpoint():
    """At the target β there are no more increments: the rollback goes to the last checkpoint (every
    10 steps here), not to the end of tempering."""
    calls = {"n": 0}
    said: list[str] = []

    def late_nan(x):
        calls["n"] += torch.is_grad_enabled()
        u = double_well_energy(x)
        return u * float("nan") if calls["n"] == 75 else u

    trainer, _vae = _small_trainer(energy=late_nan, final_steps=60)
    trainer.say = said.append
    summary = trainer.run()
    rolled = [m for m in said if "rolled back to step" in m]
    assert summary["rollbacks"] == 1 and len(rolled) == 1
    at = int(rolled[0].split(" at step ")[1].split(":")[0])
    to = int(rolled[0].split("rolled back to step ")[1].split()[0])
    ends_tempering = math.ceil((1 - trainer.p.beta0) / trainer.p.dbeta_max) * trainer.p.steps_per_beta
    assert at > ends_tempering + 10 and to % 10 == 0 and at - to < 10


def test_repeated_divergence_stops_with_a_clear_error():
    from backmap.errors import BackmapError

    trainer, _vae = _small_trainer(energy=lambda x: double_well_energy(x) * float("nan"), max_steps=30,
                                   max_rollbacks=2)
    with pytest.raises(BackmapError, match="diverged"):
        trainer.run()


def test_a_killed_run_resumes_bit_identically(tmp_path):
    whole, vae_whole = _small_trainer(tmp_path / "whole", max_steps=40)
    whole.run()
    first, _ = _small_trainer(tmp_path / "split", max_steps=20)
    first.run()
    assert (tmp_path / "split" / "reverse_kl.pt").is_file() and (tmp_path / "split" / "reverse_kl.png").is_file()
    second, vae_split = _small_trainer(tmp_path / "split", max_steps=40)
    second.run()
    assert second.state.step == 40
    for a, b in zip(vae_whole.parameters(), vae_split.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- the paper's double well
#: the major mode alone (x₁ < 0) by quadrature: what a model that misses the minor mode must match
MAJOR_MEAN, MAJOR_STD = -2.4809, 0.2899


@pytest.fixture(scope="module")
def data_free_vae():
    """A Gaussian VAE (1-D latent) trained on the double well by reverse KL with tempering, no
    samples of it (a fast schedule: 100 increments of β, 1300 steps, ~10 s)."""
    from toys import double_well_box_wall

    torch.manual_seed(0)
    vae = GaussianVAE(dim=2, latent=1, hidden=64)
    params = TemperingParams(samples=500, dbeta_max=0.01, steps_per_beta=10, final_steps=300)
    with torch_threads(1):
        summary = ReverseKLTrainer(FixedProblem(_Batch1(vae), Target(double_well_energy, double_well_box_wall, 1.0)),
                                   vae, params, seed=0).run()
    return vae, summary


def test_double_well_reverse_kl_learns_the_major_mode_without_data(data_free_vae):
    """The paper's case (seed 003, §2.1; docs/reverse-kl.md). What our trained model reaches,
    stably over seeds and schedules: the major mode's mean and width, and x₂ exactly; the minor
    mode (mass 0.0083) is lost on the way to β = 1 (mode-seeking; recorded in the docs as a missed
    target, so it is not asserted here)."""
    vae, summary = data_free_vae
    assert summary["beta"] == 1.0 and summary["rollbacks"] == 0
    exact = double_well_quadrature()[0]
    assert exact.minor_mass == pytest.approx(0.00835, abs=1e-4)
    with torch.no_grad():
        x = vae.generate(100_000, torch.Generator().manual_seed(1), batch=1)[0][0].numpy()
    major = x[x[:, 0] < 0, 0]
    assert abs(major.mean() - MAJOR_MEAN) < 0.04 and abs(major.std() - MAJOR_STD) < 0.03
    assert abs(x[:, 0].mean() - exact.mean_x1) < 0.06  # within 2.5 % of the quadrature's −2.441
    assert abs(x[:, 1].mean()) < 0.03 and abs(x[:, 1].std() - exact.std_x2) < 0.05
    assert summary["final KL estimate"] < 0.05


def test_double_well_vae_mc_with_the_data_free_model_is_exact(data_free_vae):
    """VAE Monte Carlo moves with the data-free model keep the exact distribution (chains started
    from exact samples; 4 standard errors, as tests/test_latent_moves.py)."""
    from toys import double_well_samples

    vae, _summary = data_free_vae
    exact = double_well_quadrature()[0]
    n = 4000
    gen = torch.Generator().manual_seed(5)
    x = torch.as_tensor(double_well_samples(n, np.random.default_rng(4)))
    moved = torch.zeros(n, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(30):
            r = vae_move(IndependentChains(vae, n), x, lambda y: -double_well_energy(y), gen)
            x, moved = r.x, moved | r.accepted
    x = x.numpy()
    assert float(moved.double().mean()) > 0.9
    assert abs(x[:, 0].mean() - exact.mean_x1) < 4 * exact.std_x1 / math.sqrt(n)
    se_minor = math.sqrt(exact.minor_mass * (1 - exact.minor_mass) / n)
    assert abs((x[:, 0] > 0).mean() - exact.minor_mass) < 4 * se_minor
    assert abs(x[:, 1].var() - 1.0) < 4 * math.sqrt(2 / n)


@pytest.fixture(scope="module")
def mixture_prior_vae():
    """As ``data_free_vae`` with a learned two-component mixture prior (docs/reverse-kl.md)."""
    from toys import double_well_box_wall

    torch.manual_seed(0)
    vae = GaussianVAE(dim=2, latent=1, hidden=64, prior_components=2)
    params = TemperingParams(samples=500, dbeta_max=0.01, steps_per_beta=10, final_steps=300)
    with torch_threads(1):
        summary = ReverseKLTrainer(FixedProblem(_Batch1(vae), Target(double_well_energy, double_well_box_wall, 1.0)),
                                   vae, params, seed=0).run()
    return vae, summary


def test_double_well_mixture_prior_keeps_the_minor_mode(data_free_vae, mixture_prior_vae):
    """With a mixture prior the minor mode survives tempering (the Gaussian prior's model drops it to
    < 0.001), in the right well; VAE Monte Carlo from the model's *own* samples then reaches the exact
    minor mass — which chains with the Gaussian prior's model cannot (their proposals never go there).
    The fast schedule leaves the model's own minor mass behind the target (≈ 0.04 at this schedule,
    0.016 with the benchmark's; docs/reverse-kl.md), so the test asserts its range, not its value."""
    exact = double_well_quadrature()[0]
    gen = torch.Generator().manual_seed(2)
    masses = {}
    for name, (vae, summary) in {"gaussian": data_free_vae, "mixture": mixture_prior_vae}.items():
        assert summary["beta"] == 1.0
        with torch.no_grad():
            x = vae.generate(50_000, gen, batch=1)[0][0].numpy()
        masses[name] = (x[:, 0] > 0).mean()
        if name == "mixture":
            assert 1.5 < x[x[:, 0] > 0, 0].mean() < 3.0  # the right well (minimum at x₁ = 2.36)
    assert masses["gaussian"] < 0.002 and 0.004 < masses["mixture"] < 0.1, masses
    vae, _ = mixture_prior_vae
    n = 8000
    with torch.no_grad():
        x = vae.generate(n, gen, batch=1)[0][0]
        for _ in range(60):
            x = vae_move(IndependentChains(vae, n), x, lambda y: -double_well_energy(y), gen).x
    se_minor = math.sqrt(exact.minor_mass * (1 - exact.minor_mass) / n)
    assert abs(float((x[:, 0] > 0).double().mean()) - exact.minor_mass) < 4 * se_minor
    assert abs(float(x[:, 0].mean()) - exact.mean_x1) < 4 * exact.std_x1 / math.sqrt(n)


def test_bounded_spreads_keep_draws_off_the_clamps():
    """With ``bounded`` (models trained by reverse KL) even the widest head outputs reach the angle
    and bond-length clamps with probability < 1e-4 per draw (4 σ: 3e-5), so the draws' densities
    are the densities they were drawn with; unbounded, such outputs pile draws up on the clamps
    (what reverse KL exploited)."""
    from backmap.api.icgen import N_OUT, ICDistribution

    n = 20_000
    out = torch.zeros(n, N_OUT)
    out[:, 1] = 3.0  # angle mean pushed towards π
    out[:, 2] = 5.0  # angle spread at its maximum
    out[:, -1] = 10.0  # bond-length spread at its maximum
    refs = (torch.full((n,), 2.6), torch.full((n,), 0.3), torch.full((n,), 0.1))
    for bounded, most in ((True, 10), (False, None)):
        d = ICDistribution(out, *refs, bounded=bounded)
        r, theta = d.sample_angle(torch.Generator().manual_seed(0))
        clamped = int(((theta <= 0.05) | (theta >= math.pi - 0.05)).sum() + (r <= 0.01).sum())
        if most is None:
            assert clamped > n // 10
        else:
            assert clamped <= most  # expected ≈ 2 × 20 000 × 3e-5 ≈ 1


def test_double_well_calibrated_mixture_weights_give_the_minor_mass(mixture_prior_vae):
    """Reverse KL pins a minor mode's weight only weakly (the fast schedule leaves it ≈ 5× too
    heavy). Calibrating the mixture weights by importance sampling from the target's density (no
    samples of it) takes the model's own minor mass and σ_x1 at least 3× closer to the quadrature's
    (measured here: 0.041 → 0.013; with the benchmark's longer training, whose components fit their
    modes better, to within 2.7 % and 0.3 %: docs/reverse-kl.md)."""
    import copy

    from toys import double_well_box_wall

    exact = double_well_quadrature()[0]
    vae = copy.deepcopy(mixture_prior_vae[0])
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        x0 = vae.generate(50_000, gen, batch=1)[0][0][:, 0]
    vae.calibrate_mixture(lambda x: -double_well_energy(x) - double_well_box_wall(x), 20_000, gen, rounds=2)
    with torch.no_grad():
        x = vae.generate(50_000, gen, batch=1)[0][0][:, 0]
    before, after = (float((v > 0).double().mean()) for v in (x0, x))
    assert before > 2 * exact.minor_mass  # calibration has something to correct
    assert abs(after - exact.minor_mass) < abs(before - exact.minor_mass) / 3, (before, after)
    assert abs(float(x.std()) - exact.std_x1) < abs(float(x0.std()) - exact.std_x1) / 3, (x0.std(), x.std())
