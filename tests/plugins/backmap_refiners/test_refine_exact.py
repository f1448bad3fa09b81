"""Exactness of the torch refiners on systems whose restrained conditional is known.

Harmonic dimer (tests/data/dimer/dimer.top, masses 12 and 16, bond kb = 5000 kJ/mol/nm², b0 = 0.15 nm)
with its centre of mass (the mapping's weights) restrained by ½k|M(x) − R|²: the centre is Gaussian
with variance k_BT/k per axis, independent of the bond length, whose density is
∝ r² exp(−kb(r − b0)²/2k_BT). With the bond constrained the orientation is uniform. For the 3-atom chain
(trimer.top, masses 16-1-16, both bonds constrained, harmonic angle) constrained dynamics samples the
angle with density ∝ sin θ √det G(θ) exp(−U(θ)/k_BT), G = J M⁻¹ Jᵀ (no Fixman correction).

Many independent copies run as frames of one batch. Samples are snapshots of all copies, taken
every ``stride`` steps after a burn-in; the effective sample size divides by the integrated
autocorrelation time estimated from the lag-one correlation between snapshots.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.transform import Rotation

from backmap.refinement.bond_model import BondModel
from backmap.refinement.constraints import BondConstraints
from backmap.errors import BackmapError
from backmap.forcefield import NonbondedSettings
from backmap.system.io import read_frames
from backmap.engine.loaders import load_mapping
from backmap.system.pbc import Unwrapper
from backmap.refinement.restrained import BOLTZMANN, RestrainedSystem
from backmap.engine.loaders import load_topology
from backmap_refiners.torch_potential import RestrainedPotential
from backmap_refiners.torch_refiners import LangevinRefiner, MALARefiner

from conftest import DATA, HEXANE, TRICLINIC

DIMER = DATA / "dimer"
T = 300.0
KT = BOLTZMANN * T
K = 2000.0  # restraint (kJ/mol/nm²)
KB, B0 = 5000.0, 0.15  # dimer bond
Z = 4.0  # tolerance in standard errors


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _system(name: str) -> RestrainedSystem:
    top = load_topology(DIMER / f"{name}.top")
    return RestrainedSystem(load_mapping(DIMER / f"{name}.xml", top).cg_topology(top))


def _copies(shape: np.ndarray, system: RestrainedSystem, n: int, seed: int = 0) -> np.ndarray:
    """``n`` randomly rotated copies of ``shape`` (atoms, 3) with their centre at the origin."""
    w = system.cg_topology.blocks[0].mapping.weight_matrix[0]
    rot = Rotation.random(n, random_state=seed).as_matrix()
    return np.einsum("fij,aj->fai", rot, shape - w @ shape)


def _sample(cls, system: RestrainedSystem, x: np.ndarray, stride: int, snapshots: int, burn: int,
            bonds: BondModel | None = None, **params) -> tuple[np.ndarray, list[dict]]:
    """Snapshots (S, F, N, 3) of F independent chains restrained to the origin: the refiner
    continues from its own output, ``stride`` steps per call (with ``bonds``: that bond model)."""
    # a chain continued over calls: no minimization at the start of each call (it would bias the
    # sampled distribution; the refiners' default minimizes 100 steps before sampling a new structure)
    refiner = cls({"temperature": T, "restraint": K, "steps": stride, "seed": 7, "minimize_steps": 0, **params})
    if bonds is not None:
        assert refiner.use_bond_model(bonds)
    refiner.prepare(system)
    F = len(x)
    targets, boxes = np.zeros((F, system.n_beads, 3)), np.repeat(5 * np.eye(3)[None], F, 0)
    rng = np.random.default_rng(0)
    out, logs = [], []
    for s in range(burn + snapshots):
        result = refiner.refine(x, targets, boxes, rng)
        x = result.positions
        if s >= burn:
            out.append(x)
            logs += result.log
    return np.array(out), logs


def _ess(series: np.ndarray) -> float:
    """Effective number of samples of (S, F) snapshots of F independent chains (AR(1) estimate)."""
    a = series - series.mean()
    rho = float((a[1:] * a[:-1]).mean() / a.var()) if len(a) > 1 else 0.0
    rho = min(max(rho, 0.0), 0.95)
    return series.size * (1 - rho) / (1 + rho)


def _ks_ok(samples: np.ndarray, cdf, ess: float, alpha: float = 1e-3) -> tuple[bool, float, float]:
    """KS statistic against ``cdf`` and its critical value at the effective sample size."""
    d = stats.kstest(samples.ravel(), cdf).statistic
    critical = stats.kstwobign.isf(alpha) / np.sqrt(ess)
    return d <= critical, d, critical


def _centre(system: RestrainedSystem, snaps: np.ndarray) -> np.ndarray:
    return system.mapped(snaps)[..., 0, :]  # (S, F, 3)


def _check_centre(system: RestrainedSystem, snaps: np.ndarray) -> None:
    """Centre Gaussian around the target with variance k_BT/K per axis."""
    c = _centre(system, snaps)
    var0 = KT / K
    for axis in range(3):
        ess = _ess(c[..., axis])
        assert abs(c[..., axis].mean()) < Z * np.sqrt(var0 / ess), axis
        assert abs(c[..., axis].var() / var0 - 1) < Z * np.sqrt(2 / ess), (axis, c[..., axis].var() / var0)
    ok, d, crit = _ks_ok(c / np.sqrt(var0), stats.norm.cdf, _ess(c[..., 0]))
    assert ok, (d, crit)


def _bond_cdf():
    r = np.linspace(1e-4, 0.4, 40001)
    p = r**2 * np.exp(-KB * (r - B0) ** 2 / (2 * KT))
    cdf = np.cumsum(p) / p.sum()
    moments = ((r * p).sum() / p.sum(), ((r - B0) ** 2 * p).sum() / p.sum())
    return (lambda s: np.interp(s, r, cdf)), moments


def _bond(snaps: np.ndarray) -> np.ndarray:
    return np.linalg.norm(snaps[..., 1, :] - snaps[..., 0, :], axis=-1)


DIMER_SHAPE = np.array([[0.0, 0.0, 0.0], [B0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------------- solver
def test_constraints_converge_on_a_ring():
    """A benzene-like ring (six coupled C-C constraints and six C-H): SHAKE from a badly distorted
    structure and after a dynamics-like step, RATTLE velocities tangent."""
    angle = np.arange(6) * np.pi / 3
    ring = np.stack([np.cos(angle), np.sin(angle), 0 * angle], 1)
    x0 = np.concatenate([0.139 * ring, 0.247 * ring])
    pairs = np.array([[k, (k + 1) % 6] for k in range(6)] + [[k, k + 6] for k in range(6)])
    lengths = np.r_[np.full(6, 0.139), np.full(6, 0.108)]
    masses = np.r_[np.full(6, 12.011), np.full(6, 1.008)]
    bc = BondConstraints(pairs, lengths, masses)
    assert len(bc.groups) == 1 and bc.groups[0].ids.shape == (1, 12)  # one coupled block
    g = torch.Generator().manual_seed(1)
    x = torch.as_tensor(x0)[None] + 0.01 * torch.randn((8, 12, 3), generator=g, dtype=torch.float64)
    y, ok = bc.positions(x, x)
    assert bool(ok.all())
    assert float(bc.residual(y).max()) <= 1e-10
    r = bc.bond_vectors(y).norm(dim=-1)
    assert float((r - torch.as_tensor(lengths)).abs().max()) < 1e-8
    v = bc.velocities(torch.randn(y.shape, generator=g, dtype=torch.float64), y)
    assert float((bc.bond_vectors(v) * bc.bond_vectors(y)).sum(-1).abs().max()) < 1e-12
    z, ok = bc.positions(y + 0.002 * v, y)  # a SHAKE step: constraint forces along J(y)
    assert bool(ok.all()) and float(bc.residual(z).max()) <= 1e-10
    # a step with no solution is reported, not returned as if converged
    _, ok = bc.positions(y + 5.0 * v, y)
    assert not bool(ok.all())
    # so are redundant constraints (a singular G)
    twice = BondConstraints(np.r_[pairs, pairs[:1]], np.r_[lengths, lengths[:1]], masses)
    _, ok = twice.positions(x, x)
    assert not bool(ok.any())


def test_projecting_many_frames_is_shake_from_where_they_stand():
    """``project`` (a generator's candidates: many frames, a few constraints) lands where
    ``positions(x, x)`` does, on two rings (two coupled blocks of 12) in 300 distorted frames, and
    reports what it cannot do: a frame far off the surface, a NaN frame, redundant constraints."""
    angle = np.arange(6) * np.pi / 3
    ring = np.stack([np.cos(angle), np.sin(angle), 0 * angle], 1)
    one = np.concatenate([0.139 * ring, 0.247 * ring])
    x0 = np.concatenate([one, one + [0.5, 0.0, 0.0]])
    pairs = np.array([[k, (k + 1) % 6] for k in range(6)] + [[k, k + 6] for k in range(6)])
    pairs = np.concatenate([pairs, pairs + 12])
    lengths = np.tile(np.r_[np.full(6, 0.139), np.full(6, 0.108)], 2)
    masses = np.tile(np.r_[np.full(6, 12.011), np.full(6, 1.008)], 2)
    bc = BondConstraints(pairs, lengths, masses, tolerance=1e-7, max_iterations=30)
    assert [tuple(g.ids.shape) for g in bc.groups] == [(2, 12)]
    g = torch.Generator().manual_seed(3)
    x = torch.as_tensor(x0)[None] + 0.01 * torch.randn((300, 24, 3), generator=g, dtype=torch.float64)
    x[0] += 5.0 * torch.randn((24, 3), generator=g, dtype=torch.float64)  # no root near it
    x[1, 3] = float("nan")
    y, ok = bc.project(x)
    want, want_ok = bc.positions(x, x)
    assert not bool(ok[0]) and not bool(ok[1]) and bool(ok[2:].all()) and bool(want_ok[2:].all())
    # both stop within the tolerance of one root: here ≤ 8.6e-9 nm over 20 seeds; another root is ~1e-3 away
    assert float((y[2:] - want[2:]).abs().max()) < 1e-7
    assert float(bc.residual(y[2:]).max()) <= 1e-7
    assert bool(torch.isfinite(y[2:]).all())  # a NaN frame stays in its own row
    twice = BondConstraints(np.r_[pairs, pairs[:1]], np.r_[lengths, lengths[:1]], masses)
    assert not bool(twice.project(x[2:10])[1].any())


def test_constraints_on_hexane_all_bonds():
    """The real path: all bonds of the hexane test system (19 coupled constraints each) from the
    topology, one perturbed frame put back on the constraints."""
    top = load_topology(HEXANE / "topol.top")
    system = RestrainedSystem(load_mapping(HEXANE / "hexane.xml", top).cg_topology(top))
    pairs, lengths = system.constrained_bonds("all-bonds")
    bc = BondConstraints(pairs, lengths, top.masses)
    assert [tuple(g.ids.shape) for g in bc.groups] == [(top.n_molecules, 19)]
    frame = next(read_frames(HEXANE / "conf.gro"))
    whole = Unwrapper(top)(frame.positions, frame.dimensions)
    x = torch.as_tensor(whole)[None] + 0.003 * torch.randn((1, top.n_atoms, 3), dtype=torch.float64,
                                                          generator=torch.Generator().manual_seed(2))
    y, ok = bc.positions(x, x)
    assert bool(ok.all()) and float(bc.residual(y).max()) <= 1e-10
    assert float((y - x).norm(dim=-1).max()) < 0.02


def test_pruned_pair_lists_give_the_energy_of_a_fresh_search():
    """Two-level neighbour lists (searched with a wide skin, pruned with a narrow one) follow atoms
    that move, in a triclinic box, without missing a pair."""
    top = load_topology(TRICLINIC / "topol.top")
    system = RestrainedSystem(load_mapping(TRICLINIC / "hexane.xml", top).cg_topology(top),
                              nonbonded=NonbondedSettings(rvdw=0.9, rcoulomb=0.9))  # small box: 2.26 nm high
    potential = RestrainedPotential(system, restraint=0.0, skin=0.05, outer_skin=0.15)
    frame = next(read_frames(TRICLINIC / "conf.gro"))
    x = Unwrapper(top)(frame.positions, frame.dimensions)
    potential.bind(np.zeros((1, system.n_beads, 3)), frame.box[None])
    rng = np.random.default_rng(3)
    for _ in range(10):
        x = x + rng.normal(scale=0.006, size=x.shape)
        mine = float(potential(torch.as_tensor(x)[None]).potential[0])
        with torch.no_grad():
            fresh = float(potential.ff.energy(x[None], frame.box[None], whole=True).total[0])
        assert mine == pytest.approx(fresh, rel=1e-12, abs=1e-9)
    lists = potential._lists[0]
    assert (lists.builds, lists.prunes) == (2, 7)  # both levels refreshed when needed, not every step


# ---------------------------------------------------------------------------------------------- dimer
def test_mala_samples_the_restrained_dimer_exactly():
    system = _system("dimer")
    x = _copies(DIMER_SHAPE, system, 2000)
    snaps, log = _sample(MALARefiner, system, x, stride=20, snapshots=10, burn=2, timestep=0.02,
                         friction=10.0, constraints="none")
    acceptance = np.mean([row["acceptance"] for row in log])
    assert 0.9 < acceptance < 1.0
    _check_centre(system, snaps)
    cdf, _ = _bond_cdf()
    r = _bond(snaps)
    ok, d, crit = _ks_ok(r, cdf, _ess(r))
    assert ok, (d, crit)
    # velocities are exactly Maxwellian: mean kinetic temperature (6 degrees of freedom) is T
    temps = np.array([row["temperature"] for row in log])
    assert abs(temps.mean() / T - 1) < 0.02
    assert {"potential", "restraint", "constraint_residual"} <= set(log[0])


def test_langevin_dimer_error_shrinks_with_timestep_and_mala_stays_exact():
    """BAOAB is biased at large steps (bond-length variance, ωh ≈ 1.6 for the bond) and the bias
    shrinks with the step; MALA at the same large step is exact."""
    system = _system("dimer")
    x = _copies(DIMER_SHAPE, system, 2000)
    _, (_, var_r) = _bond_cdf()
    errors = {}
    for dt in (0.06, 0.04, 0.02):
        snaps, _ = _sample(LangevinRefiner, system, x, stride=10, snapshots=12, burn=2, timestep=dt,
                           friction=10.0, constraints="none")
        dev = (_bond(snaps) - B0) ** 2
        errors[dt] = (dev.mean() / var_r - 1, dev.std() / var_r / np.sqrt(_ess(dev)))
    (e6, s6), (e4, _), (e2, s2) = errors[0.06], errors[0.04], errors[0.02]
    assert e6 > Z * s6  # clearly visible bias at the largest step ...
    assert e4 < e6 and abs(e2) < e6 / 3  # ... shrinking with the step
    assert abs(e2) < Z * s2 + 0.01  # and within 1 % (+ noise) at ωh ≈ 0.5
    snaps, log = _sample(MALARefiner, system, x, stride=10, snapshots=12, burn=2, timestep=0.06,
                         friction=10.0, constraints="none")
    dev = (_bond(snaps) - B0) ** 2
    assert abs(dev.mean() / var_r - 1) < Z * dev.std() / var_r / np.sqrt(_ess(dev))
    assert np.mean([row["acceptance"] for row in log]) < 0.95  # the large step does get rejected


@pytest.mark.parametrize("cls", [MALARefiner, LangevinRefiner])
def test_rigid_dimer_orientation_uniform_and_centre_gaussian(cls):
    system = _system("dimer")
    x = _copies(DIMER_SHAPE * 1.05, system, 1000)  # starts off the constraint: projected first
    snaps, log = _sample(cls, system, x, stride=15, snapshots=8, burn=2, timestep=0.02, friction=10.0,
                         constraints="all-bonds")
    r = _bond(snaps)
    assert np.abs(r - B0).max() < 1e-8
    _check_centre(system, snaps)
    u = (snaps[..., 1, :] - snaps[..., 0, :]) / r[..., None]
    for axis in range(3):  # each component of a uniform unit vector is uniform on [−1, 1]
        ok, d, crit = _ks_ok(u[..., axis], stats.uniform(-1, 2).cdf, _ess(u[..., axis]))
        assert ok, (axis, d, crit)
    if cls is MALARefiner:
        assert np.mean([row["acceptance"] for row in log]) > 0.9
        temps = np.array([row["temperature"] for row in log])  # 5 degrees of freedom
        assert abs(temps.mean() / T - 1) < 0.03


# ---------------------------------------------------------------------------------------------- trimer
def _angle_cdfs(system: RestrainedSystem):
    """CDFs of the bond angle: constrained dynamics (with √det G) and the stiff-spring limit (without)."""
    return _chain_angle_cdfs(system.topology.masses, np.deg2rad(120.0), 30.0)  # trimer.top


def _chain_angle_cdfs(m, theta0: float, k_theta: float):
    """The same for masses ``m`` and a harmonic angle (θ₀ rad, k kJ/mol/rad²)."""
    th = np.linspace(0, np.pi, 20001)
    det_g = (1 / m[0] + 1 / m[1]) * (1 / m[2] + 1 / m[1]) - np.cos(th) ** 2 / m[1] ** 2
    boltz = np.sin(th) * np.exp(-k_theta * (th - theta0) ** 2 / (2 * KT))
    cdf = lambda p: (lambda s: np.interp(s, th, np.cumsum(p) / p.sum()))  # noqa: E731
    return cdf(boltz * np.sqrt(det_g)), cdf(boltz)


@pytest.mark.parametrize("cls", [MALARefiner, LangevinRefiner])
def test_constrained_trimer_samples_the_mass_weighted_surface_measure(cls):
    system = _system("trimer")
    theta0 = np.deg2rad(120.0)
    shape = np.array([[0.1, 0, 0], [0, 0, 0], [0.1 * np.cos(theta0), 0.1 * np.sin(theta0), 0]])
    x = _copies(shape, system, 1000)
    snaps, _ = _sample(cls, system, x, stride=15, snapshots=8, burn=10, timestep=0.005, friction=10.0,
                         constraints="all-bonds")
    a, b = snaps[..., 0, :] - snaps[..., 1, :], snaps[..., 2, :] - snaps[..., 1, :]
    assert np.abs(np.linalg.norm(a, axis=-1) - 0.1).max() < 1e-8
    theta = np.arccos((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1))
    constrained, stiff = _angle_cdfs(system)
    ess = _ess(theta)
    ok, d, crit = _ks_ok(theta, constrained, ess)
    assert ok, (d, crit)
    ok_stiff, d_stiff, _ = _ks_ok(theta, stiff, ess)
    assert not ok_stiff, d_stiff  # the test tells the two measures apart
    _check_centre(system, snaps)


def _trimer_angles(snaps: np.ndarray) -> np.ndarray:
    a, b = snaps[..., 0, :] - snaps[..., 1, :], snaps[..., 2, :] - snaps[..., 1, :]
    return np.arccos((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1))


def test_fixman_potential_gives_the_stiff_spring_measure():
    """A bond model holding both bonds (vae_mc's δ measure): mala with the Fixman potential samples
    the stiff-spring angle density sin θ e^{−βU(θ)}, and the test tells it from the constrained one."""
    system = _system("trimer")
    theta0 = np.deg2rad(120.0)
    shape = np.array([[0.1, 0, 0], [0, 0, 0], [0.1 * np.cos(theta0), 0.1 * np.sin(theta0), 0]])
    bonds = BondModel(held=[[0, 1], [1, 2]], held_lengths=[0.1, 0.1], sprung=np.zeros((0, 2)),
                      sprung_lengths=[], stiffness=0.0, source="test")
    snaps, log = _sample(MALARefiner, system, _copies(shape, system, 1000), stride=15, snapshots=8, burn=10,
                         bonds=bonds, timestep=0.005, friction=10.0, constraints="all-bonds")
    theta = _trimer_angles(snaps)
    constrained, stiff = _angle_cdfs(system)
    ess = _ess(theta)
    ok, d, crit = _ks_ok(theta, stiff, ess)
    assert ok, (d, crit)
    ok_constrained, d_constrained, _ = _ks_ok(theta, constrained, ess)
    assert not ok_constrained, d_constrained
    assert np.mean([row["acceptance"] for row in log]) > 0.5
    _check_centre(system, snaps)


def test_sprung_bond_has_the_spring_density():
    """One bond held, the other a spring k_s on top of its force-field bond: the spring's length is
    ∝ r² exp(−β(kb + k_s)(r − b0)²/2), the angle sin θ e^{−βU(θ)} (one held bond: det G is constant)."""
    system = _system("trimer")
    k_s, kb, b0 = 2.0e4, 5000.0, 0.1
    theta0 = np.deg2rad(120.0)
    shape = np.array([[0.1, 0, 0], [0, 0, 0], [0.1 * np.cos(theta0), 0.1 * np.sin(theta0), 0]])
    bonds = BondModel(held=[[0, 1]], held_lengths=[0.1], sprung=[[1, 2]], sprung_lengths=[b0], stiffness=k_s,
                      source="test")
    snaps, _ = _sample(MALARefiner, system, _copies(shape, system, 1000), stride=15, snapshots=8, burn=10,
                       bonds=bonds, timestep=0.002, friction=10.0, constraints="all-bonds")
    held = np.linalg.norm(snaps[..., 0, :] - snaps[..., 1, :], axis=-1)
    assert np.abs(held - 0.1).max() < 1e-8
    r = np.linalg.norm(snaps[..., 2, :] - snaps[..., 1, :], axis=-1)
    grid = np.linspace(0.05, 0.15, 20001)
    p = grid**2 * np.exp(-(kb + k_s) * (grid - b0) ** 2 / (2 * KT))
    ok, d, crit = _ks_ok(r, lambda s: np.interp(s, grid, np.cumsum(p) / p.sum()), _ess(r))
    assert ok, (d, crit)
    _, stiff = _angle_cdfs(system)
    theta = _trimer_angles(snaps)
    ok, d, crit = _ks_ok(theta, stiff, _ess(theta))
    assert ok, (d, crit)


def test_log_det_gram_of_a_chain_matches_the_formula():
    """ln det G of the trimer's two bonds against (1/m₀+1/m₁)(1/m₂+1/m₁) − cos²θ/m₁², for a batch of
    angles; bonds in two separate molecules make two blocks."""
    m = np.array([16.0, 1.0, 16.0, 12.0, 16.0])
    bonds = BondModel(held=[[0, 1], [2, 1], [3, 4]], held_lengths=[0.1, 0.1, 0.15], sprung=np.zeros((0, 2)),
                      sprung_lengths=[], stiffness=0.0)
    th = torch.linspace(0.3, 3.0, 7, dtype=torch.float64)
    x = torch.zeros(7, 5, 3, dtype=torch.float64)
    x[:, 0, 0] = 0.1
    x[:, 2, 0], x[:, 2, 1] = 0.1 * torch.cos(th), 0.1 * torch.sin(th)
    x[:, 3] = torch.tensor([1.0, 1.0, 1.0])
    x[:, 4] = torch.tensor([1.0, 1.15, 1.0])
    expected = np.log(((1 / m[0] + 1 / m[1]) * (1 / m[2] + 1 / m[1]) - np.cos(th.numpy()) ** 2 / m[1] ** 2)
                      * (1 / m[3] + 1 / m[4]))
    np.testing.assert_allclose(bonds.log_det_gram(x, m).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("cls", [MALARefiner, LangevinRefiner])
def test_a_frame_that_cannot_be_constrained_fails_alone(cls):
    """Two atoms on top of each other have no constraint direction: an error naming the frame, or
    (on_failure: keep) that frame back unrefined and marked while the others are refined."""
    system = _system("dimer")
    x = _copies(DIMER_SHAPE, system, 3)
    x[1] = 0.0
    targets, boxes = np.zeros((3, 1, 3)), np.repeat(5 * np.eye(3)[None], 3, 0)
    params = {"temperature": T, "restraint": K, "steps": 5, "timestep": 0.01, "constraints": "all-bonds"}
    refiner = cls(params)
    refiner.prepare(system)
    with pytest.raises(BackmapError, match=r"frame\(s\) \[1\]"):
        refiner.refine(x, targets, boxes, np.random.default_rng(0))
    refiner = cls({**params, "on_failure": "keep"})
    refiner.prepare(system)
    result = refiner.refine(x, targets, boxes, np.random.default_rng(0))
    assert "failed" in result.log[1] and "failed" not in result.log[0] and "potential" in result.log[2]
    np.testing.assert_array_equal(result.positions[1], x[1])
    assert np.abs(_bond(result.positions[[0, 2]]) - B0).max() < 1e-8


def test_seeded_runs_repeat():
    system = _system("dimer")
    x = _copies(DIMER_SHAPE, system, 50)
    a, _ = _sample(MALARefiner, system, x, stride=5, snapshots=1, burn=0, timestep=0.02, constraints="all-bonds")
    b, _ = _sample(MALARefiner, system, x, stride=5, snapshots=1, burn=0, timestep=0.02, constraints="all-bonds")
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------- schedule
def test_schedule_of_exact_kernels_samples_the_restrained_dimer_exactly():
    """``schedule``: two different MALA kernels (partial refresh at 0.02 ps, full refresh at 0.04 ps)
    in turn. Each leaves the restrained dimer invariant, so their composition must too — and only if
    each stage continues from the previous stage's output at the schedule's temperature and
    restraint: the centre's and bond's known distributions check both. The log keeps each stage's
    mean acceptance over the cycles (the larger full-refresh step is rejected more)."""
    from backmap_refiners.schedule import ScheduleRefiner

    system = _system("dimer")
    x = _copies(DIMER_SHAPE, system, 2000)
    refiner = ScheduleRefiner({"temperature": T, "restraint": K, "constraints": "none", "cycles": 2, "stages": [
        {"plugin": "mala", "params": {"steps": 5, "timestep": 0.02, "friction": 10.0}},
        {"plugin": "mala", "params": {"steps": 5, "timestep": 0.04, "refresh": "full"}}]})
    refiner.prepare(system)
    F = len(x)
    targets, boxes = np.zeros((F, system.n_beads, 3)), np.repeat(5 * np.eye(3)[None], F, 0)
    rng = np.random.default_rng(0)
    snaps, log = [], []
    for s in range(12):
        result = refiner.refine(x, targets, boxes, rng)
        x = result.positions
        if s >= 2:
            snaps.append(x)
            log += result.log
    snaps = np.array(snaps)
    _check_centre(system, snaps)
    cdf, _ = _bond_cdf()
    r = _bond(snaps)
    ok, d, crit = _ks_ok(r, cdf, _ess(r))
    assert ok, (d, crit)
    a0, a1 = (np.mean([row[f"{k}:mala:acceptance"] for row in log]) for k in (0, 1))
    assert 0.9 < a0 <= 1.0 and a1 < a0
    assert {"potential", "restraint", "0:mala:cpu_seconds", "1:mala:temperature"} <= set(log[0])


@pytest.mark.parametrize("stage, message", [
    ({"plugin": "mala", "params": {"temperature": 400.0}}, "params.temperature = 400.0 differs"),
    ({"plugin": "mala", "params": {"minimize_steps": 10}}, "params.minimize_steps: set it on the schedule"),
    ({"plugin": "vae_mc", "params": {"minimize_after": [1]}}, "params.minimize_after: a minimization inside"),
    ({"plugin": "schedule", "params": {}}, "cannot contain a schedule"),
    ({"plugin": "nonesuch", "params": {}}, "nonesuch"),
    ({"plugin": "mala", "params": {"stepz": 3}}, "stepz"),
])
def test_schedule_refuses_stages_that_would_sample_another_target(stage, message):
    from backmap_refiners.schedule import ScheduleRefiner

    with pytest.raises(BackmapError, match="schedule stages.0") as err:
        ScheduleRefiner({"stages": [stage]})
    assert message in str(err.value)


# ---------------------------------------------------------------------------------------------- GHMC
def _ghmc_run(system, positions: np.ndarray, timestep: float, steps: int, every: int, burn: int,
              temperature: float = T, seed: int = 5) -> tuple[np.ndarray, float]:
    """Snapshots (S, N, 3) every ``every`` steps after ``burn`` steps of the openmm refiner's GHMC
    integrator on an OpenMM ``system`` (Reference platform), and its acceptance."""
    import openmm as mm
    from backmap_refiners.openmm_refiner import ghmc_integrator

    integrator = ghmc_integrator(temperature, 10.0, timestep)
    integrator.setRandomNumberSeed(seed)
    ctx = mm.Context(system, integrator, mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions)
    ctx.setVelocitiesToTemperature(temperature, seed)
    integrator.step(burn)
    integrator.setGlobalVariableByName("n_trials", 0.0)
    integrator.setGlobalVariableByName("n_accepted", 0.0)
    snaps = []
    for _ in range(steps // every):
        integrator.step(every)
        snaps.append(ctx.getState(getPositions=True).getPositions(asNumpy=True)._value)
    acceptance = integrator.getGlobalVariableByName("n_accepted") / integrator.getGlobalVariableByName("n_trials")
    return np.array(snaps), acceptance


def test_ghmc_samples_harmonic_wells_exactly_where_plain_verlet_is_biased():
    """Ten particles in a harmonic well at ω·dt = 0.8. Velocity Verlet with a partial momentum
    refresh but no Metropolis test samples ⟨|r|²⟩ = 3k_BT/k / (1 − (ω dt)²/4), 1.19× too wide
    here. GHMC's Metropolis test on the total energy makes it exact."""
    mm = pytest.importorskip("openmm")
    k, mass, n = 1000.0, 12.0, 10
    timestep = 0.8 / np.sqrt(k / mass)
    system = mm.System()
    well = mm.CustomExternalForce("0.5*k_well*(x^2 + y^2 + z^2)")
    well.addGlobalParameter("k_well", k)
    for i in range(n):
        system.addParticle(mass)
        well.addParticle(i, [])
    system.addForce(well)
    start = np.random.default_rng(1).normal(0.0, np.sqrt(KT / k), (n, 3))
    snaps, acceptance = _ghmc_run(system, start, timestep, steps=6000, every=10, burn=200)
    r2 = (snaps ** 2).sum(-1).mean(-1) / (3 * KT / k)  # (S,) the ensemble's mean, one per snapshot
    blocks = r2.reshape(20, -1).mean(1)  # batch means over time: the particles share each decision
    se = blocks.std(ddof=1) / np.sqrt(len(blocks))
    assert abs(r2.mean() - 1) < Z * se, (r2.mean(), se)
    assert abs(r2.mean() - 1) < 0.08  # plain Verlet: +0.19
    assert 0.2 < acceptance < 0.95  # the step is large enough to be rejected, small enough to move


def test_ghmc_samples_the_constrained_chain_angle_measure():
    """Constrained 3-atom chains (masses 16-1-16, bonds 0.1 nm held by RATTLE, harmonic angle):
    GHMC samples the angle with the constrained-dynamics density ∝ sin θ √det G(θ) e^(−U/k_BT),
    told apart from the stiff-spring one (without √det G)."""
    mm = pytest.importorskip("openmm")
    masses, theta0, k_theta, n = (16.0, 1.0, 16.0), np.deg2rad(120.0), 200.0, 300
    system = mm.System()
    angles = mm.HarmonicAngleForce()  # stiffer than trimer.top's: OpenMM's constraint solver fails near 180°
    for c in range(n):
        for m in masses:
            system.addParticle(m)
        system.addConstraint(3 * c, 3 * c + 1, 0.1)
        system.addConstraint(3 * c + 1, 3 * c + 2, 0.1)
        angles.addAngle(3 * c, 3 * c + 1, 3 * c + 2, theta0, k_theta)
    system.addForce(angles)
    shape = np.array([[0.1, 0, 0], [0, 0, 0], [0.1 * np.cos(theta0), 0.1 * np.sin(theta0), 0]])
    rot = Rotation.random(n, random_state=0).as_matrix()
    start = (np.einsum("fij,aj->fai", rot, shape) + np.arange(n)[:, None, None] * np.array([1.0, 0, 0]))
    snaps, acceptance = _ghmc_run(system, start.reshape(-1, 3), 0.002, steps=2000, every=25, burn=500)
    snaps = snaps.reshape(len(snaps), n, 3, 3)
    theta = _trimer_angles(snaps)
    assert np.abs(np.linalg.norm(snaps[..., 0, :] - snaps[..., 1, :], axis=-1) - 0.1).max() < 1e-5
    constrained, stiff = _chain_angle_cdfs(masses, theta0, k_theta)
    ess = _ess(theta)
    ok, d, crit = _ks_ok(theta, constrained, ess)
    assert ok, (d, crit)
    ok_stiff, d_stiff, _ = _ks_ok(theta, stiff, ess)
    assert not ok_stiff, d_stiff
    assert acceptance > 0.5
