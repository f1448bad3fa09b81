"""The whole-molecule BAT VAE (plugins/backmap_vae/molecule.py) on alanine dipeptide (committed
2 ns of tests/data/dipeptide): Z-matrix round trips, the BAT Jacobian against an autograd
determinant, the decoder's densities (autoregressive structure, normalization, sampling =
density), and a short training followed by exact VAE Monte Carlo moves."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from backmap.refinement.latent_moves import vae_move
from backmap.threads import torch_threads
from backmap_vae.molecule import MoleculeTarget, MoleculeVAE, ZMatrix, dihedral, von_mises_sample, wrap

from conftest import DATA

DIPEPTIDE = DATA / "dipeptide"
from backmap.constants import BOLTZMANN as K_B


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def system():
    from backmap.engine.loaders import load_topology
    from backmap.forcefield import ForceField
    from backmap.forcefield.settings import NonbondedSettings
    from backmap.system.io import read_frames

    top = load_topology(DIPEPTIDE / "topol.top")
    (mt,) = top.moltypes.values()
    ff = ForceField(top, NonbondedSettings(rvdw=2.0, rcoulomb=2.0, coulomb="reaction-field", epsilon_rf=1,
                                           vdw_modifier="none"), dtype=torch.float64)
    x = torch.as_tensor(np.stack([f.positions for f in read_frames(DIPEPTIDE / "traj.xtc")]))
    energies = np.loadtxt(DIPEPTIDE / "energies.csv", delimiter=",", skiprows=1)[:, 1]
    return {"moltype": mt, "ff": ff, "x": x, "zm": ZMatrix.from_topology(mt), "energies": energies}


def _phi_index(zm: ZMatrix, mt) -> int:
    """Position in q of the torsion that places ACE:C (φ = C(ACE)-N-CA-C)."""
    k = int(np.flatnonzero(zm.order == mt.find_atom(1, "ACE", "C"))[0])
    return k - 3


# ------------------------------------------------------------------------------ Z-matrix
def test_zmatrix_structure(system):
    zm, mt = system["zm"], system["moltype"]
    g = mt.graph
    assert sorted(zm.order.tolist()) == list(range(22))
    for k in range(1, 22):  # every bond and bond angle of the Z-matrix is one of the topology
        chain = [int(j) for j in (k, *zm.refs[k]) if j >= 0]
        for a, b in zip(chain[:2], chain[1:3]):
            assert g.has_edge(zm.order[a], zm.order[b])
    # 12 C-H/N-H bonds are constrained, 9 free: 19 torsions + 20 angles + 9 bonds = 48 = 3N - 6 - 12
    assert zm.rigid.sum() == 12 and zm.n_dof == 48 and zm.circular.sum() == 19
    for k in range(1, 22):
        pair = (str(mt.elements[zm.order[k]]), str(mt.elements[zm.order[zm.refs[k, 0]]]))
        assert zm.rigid[k] == ("H" in pair)
    assert set(np.round(zm.b0[zm.rigid], 4)) == {0.109, 0.101}  # amber99sb-ildn HC/H1 and H(N)


def test_round_trip(system):
    zm, x = system["zm"], system["x"]
    r, th, ph = zm.to_internal(x)
    y = zm.to_cartesian(r, th, ph)
    # equal up to a rigid motion: all interatomic distances agree
    assert float((torch.cdist(x, x) - torch.cdist(y, y)).abs().max()) < 1e-9
    # the Z-matrix frame: atom 0 at the origin, atom 1 on +z, atom 2 in the xz plane (x > 0)
    yp = y[:, zm.order]
    assert float(yp[:, 0].abs().max()) < 1e-12 and float(yp[:, 1, :2].abs().max()) < 1e-12
    assert float(yp[:, 2, 1].abs().max()) < 1e-12 and bool((yp[:, 2, 0] > 0).all())
    # q round trip (phases, rigid bonds): q -> x -> q
    q = zm.q_from_x(x)
    q2 = zm.q_from_x(zm.x_from_q(q))
    assert float(wrap(q2 - q).abs().max()) < 1e-9
    # x(q) has the rigid bonds at b0 and every other bond as measured
    r2, _, _ = zm.to_internal(zm.x_from_q(q))
    assert float((r2[:, zm.rigid] - torch.as_tensor(zm.b0[zm.rigid])).abs().max()) < 1e-12
    free = zm.free_bonds
    assert float((r2[:, free] - r[:, free]).abs().max()) < 1e-12
    # φ sits in q with the usual sign convention (an independent numpy dihedral)
    mt = system["moltype"]
    a = [mt.find_atom(1, "ACE", "C"), mt.find_atom(2, "ALA", "N"), mt.find_atom(2, "ALA", "CA"),
         mt.find_atom(2, "ALA", "C")]
    p = x[:, a].numpy()
    b1, b2, b3 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 1], p[:, 3] - p[:, 2]  # Blondel & Karplus (1996)
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    phi = np.arctan2(np.linalg.norm(b2, axis=-1) * (b1 * n2).sum(-1), (n1 * n2).sum(-1))
    assert np.abs(np.angle(np.exp(1j * (q[:, _phi_index(zm, mt)].numpy() - phi)))).max() < 1e-9
    assert (phi < 0).all()  # the 2 ns never leave φ < 0 (tests/data/dipeptide/README.md)


def _euler(a: torch.Tensor) -> torch.Tensor:
    """Rotation matrix R_z(α) R_y(β) R_z(γ); the Haar measure is sin β dα dβ dγ."""
    def rz(t):
        c, s = torch.cos(t), torch.sin(t)
        o, z = torch.ones_like(t), torch.zeros_like(t)
        return torch.stack([torch.stack([c, -s, z]), torch.stack([s, c, z]), torch.stack([z, z, o])])

    def ry(t):
        c, s = torch.cos(t), torch.sin(t)
        o, z = torch.ones_like(t), torch.zeros_like(t)
        return torch.stack([torch.stack([c, z, s]), torch.stack([z, o, z]), torch.stack([-s, z, c])])

    return rz(a[0]) @ ry(a[1]) @ rz(a[2])


def test_jacobian_against_autograd_determinant(system):
    """dx = J(q) dq dΩ dt: the 66 × 66 Jacobian of (translation, Euler angles, all 60 internal
    coordinates with phases) → x has |det| = J(q) sin β; with rigid bonds, ln J is the same
    expression at the bonds' b0."""
    zm, x = system["zm"], system["x"]
    flexible = dataclasses.replace(zm, rigid=np.zeros_like(zm.rigid))
    assert flexible.n_dof == 60
    for frame, euler in ((0, (0.3, 1.1, -2.0)), (1234, (2.5, 0.4, 0.7))):
        q = flexible.q_from_x(x[frame])
        params = torch.cat([torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64),
                            torch.tensor(euler, dtype=torch.float64), q])

        def cartesian(p):
            y = flexible.x_from_q(p[6:])
            return (y @ _euler(p[3:6]).T + p[:3]).reshape(-1)

        jac = torch.autograd.functional.jacobian(cartesian, params)
        sign, logdet = torch.linalg.slogdet(jac)
        expected = flexible.log_jacobian_q(q) + math.log(math.sin(euler[1]))
        assert float(sign) != 0
        assert abs(float(logdet - expected)) < 1e-8, (float(logdet), float(expected))
        # a wrong power of r or a missing sin θ would be far off: the check is sharp
        r, th, _ = flexible.unpack(q)
        assert abs(float(torch.log(r[1:]).sum())) > 10 and abs(float(torch.log(torch.sin(th[2:])).sum())) > 0.5
        # rigid bonds: the same formula at b0
        r_rigid = r.clone()
        r_rigid[torch.as_tensor(zm.rigid)] = torch.as_tensor(zm.b0[zm.rigid])
        assert abs(float(zm.log_jacobian_q(zm.q_from_x(x[frame])) - flexible.log_jacobian(r_rigid, th))) < 1e-12
    # outside the domain the target is zero
    q = zm.q_from_x(x[:1]).clone()
    q[0, zm.n_torsions] = -0.1  # a negative bond angle
    assert torch.isneginf(zm.log_jacobian_q(q)).all()


# ------------------------------------------------------------------------------ densities
def test_von_mises_sampler_matches_density():
    gen = torch.Generator().manual_seed(5)
    n = 20000
    for kappa in (0.3, 4.0, 80.0):
        t = von_mises_sample(torch.full((n,), 1.0, dtype=torch.float64), torch.full((n,), kappa,
                                                                                     dtype=torch.float64), gen)
        assert bool(((t >= -math.pi) & (t < math.pi)).all())
        c = torch.cos(t - 1.0)
        expected = float(torch.special.i1e(torch.tensor(kappa)) / torch.special.i0e(torch.tensor(kappa)))
        se = float(c.std()) / math.sqrt(n)
        assert abs(float(c.mean()) - expected) < 5 * se, (kappa, float(c.mean()), expected)
        assert abs(float(torch.sin(t - 1.0).mean())) < 5 * float(torch.sin(t - 1.0).std()) / math.sqrt(n)


@pytest.fixture(scope="module")
def random_model(system):
    """An untrained model with its weights scaled up, so that every output matters."""
    torch.manual_seed(1)
    zm = system["zm"]
    model = MoleculeVAE(zm, latent=3, hidden=48, components=3)
    model.set_scale(zm.q_from_x(system["x"]))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model


def test_decoder_is_autoregressive(random_model, system):
    """∂ ln P(q_i | z, q_<i) / ∂q_j = 0 for j > i (lower triangular), and ≠ 0 below the diagonal."""
    model = random_model
    q = system["zm"].q_from_x(system["x"][7])
    z = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    jac = torch.autograd.functional.jacobian(lambda v: model.decoder_log_prob(v, z, per_dof=True), q)
    D = len(q)
    upper = torch.triu(torch.ones(D, D, dtype=torch.bool), 1)
    assert float(jac[upper].abs().max()) == 0.0
    lower = torch.tril(torch.ones(D, D, dtype=torch.bool), -1)
    assert float((jac[lower] != 0).double().mean()) > 0.9
    assert bool((jac.diagonal() != 0).all())
    # the distribution of q_i (its parameters) depends on q_<i only, not on q_i itself
    params = torch.autograd.functional.jacobian(lambda v: model._params(model.features(v), z), q)  # (P, D)
    own_or_later = torch.arange(D)[None, :] >= model.out_dof[:, None]
    assert float(params[own_or_later].abs().max()) == 0.0
    assert float((params[~own_or_later] != 0).double().mean()) > 0.9


def test_decoder_normalized(random_model, system):
    """Each conditional integrates to 1: the first torsion (depends on z only) over the circle,
    and the last coordinate (a bond length, Gaussian) over the line."""
    model = random_model
    q0 = system["zm"].q_from_x(system["x"][3])
    z = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    n = 8000
    grid = torch.linspace(-math.pi, math.pi, n + 1, dtype=torch.float64)[:-1]
    q = q0.repeat(n, 1)
    q[:, 0] = grid
    with torch.no_grad():
        p = torch.exp(model.decoder_log_prob(q, z.expand(n, 3), per_dof=True)[:, 0])
    assert abs(float(p.sum()) * 2 * math.pi / n - 1) < 1e-6
    last = model.n_dof - 1
    with torch.no_grad():  # the conditional's own mean and width (standardized units) set the grid
        *_, mean, log_std = model._split(model._params(model.features(q0), z))
    m = float(model.loc[-1] + model.scale[-1] * mean[-1])
    s = float(model.scale[-1] * torch.exp(log_std[-1]))
    line = torch.linspace(m - 12 * s, m + 12 * s, 4001, dtype=torch.float64)
    q = q0.repeat(len(line), 1)
    q[:, last] = line
    with torch.no_grad():
        p = torch.exp(model.decoder_log_prob(q, z.expand(len(line), 3), per_dof=True)[:, last])
    assert abs(float(torch.trapezoid(p, line)) - 1) < 1e-6


def test_sampling_density_equals_log_joint(random_model):
    """The log density accumulated while drawing (incremental network evaluation) equals the
    teacher-forced decoder density of the draws, and log_joint's decoder term."""
    model = random_model
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(300, 3, generator=gen, dtype=torch.float64)
    q, logp = model.sample(z, gen)
    assert bool(torch.isfinite(logp).all())
    with torch.no_grad():
        assert float((model.decoder_log_prob(q, z) - logp).abs().max()) < 1e-9
    j = model.log_joint(q[None], z[None])
    assert j.decoder.shape == (1, 300)
    assert float((j.decoder[0] - logp).abs().max()) < 1e-9
    # torsions are wrapped, angles and bonds continuous; the prior is N(0, I)
    assert bool((q[:, :model.n_circ].abs() <= math.pi).all())
    assert float((j.prior[0] - (-0.5 * (z * z).sum(-1) - 1.5 * math.log(2 * math.pi))).abs().max()) < 1e-12


def test_decoder_without_skip_connection(system):
    """``skip=False`` (the ablation against the paper's architecture): the skip weights have no
    effect on the outputs, the decoder stays autoregressive and normalized in its drawing path
    (the incremental density equals the teacher-forced one)."""
    torch.manual_seed(5)
    zm = system["zm"]
    model = MoleculeVAE(zm, latent=2, hidden=48, components=1, skip=False)
    model.set_scale(zm.q_from_x(system["x"]))
    q = zm.q_from_x(system["x"][5])
    z = torch.randn(2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        before = model._params(model.features(q), z)
        model.skip.weight.add_(1.0)
        assert float((model._params(model.features(q), z) - before).abs().max()) == 0.0
        zz = torch.randn(200, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        draws, logp = model.sample(zz, torch.Generator().manual_seed(8))
        assert float((model.decoder_log_prob(draws, zz) - logp).abs().max()) < 1e-9


# ------------------------------------------------------------------------------ training + MC
@pytest.fixture(scope="module")
def trained(system):
    torch.manual_seed(0)
    zm = system["zm"]
    model = MoleculeVAE(zm, latent=1, hidden=64, components=3)
    q = zm.q_from_x(system["x"])
    with torch_threads(1):
        model.set_scale(q)
        before = model.evaluate(q[::10])
        hist = model.fit(q, epochs=40, batch=256, lr=2e-3, seed=0)  # 7 steps per epoch: 280 steps
    return model, before, hist


def test_training_improves_elbo(trained):
    model, before, hist = trained
    after = hist["final_val"]
    assert all(math.isfinite(v) for v in after.values())
    assert after["loss"] < before["loss"] - 40  # from about -18 to -75 nats
    assert after["loss"] < -60
    assert 0 < after["kl"] < 5
    assert next(model.parameters()).dtype == torch.float64


def test_vae_monte_carlo(trained, system):
    model, _, _ = trained
    zm, ff = system["zm"], system["ff"]
    beta = 1.0 / (K_B * 300.0)
    target = MoleculeTarget(zm, lambda x: ff.energy(x, None).total, beta, memory=True)
    q_md = zm.q_from_x(system["x"])
    # the target is −βU + ln J with U the force field's energy (rigid bonds at b0)
    u = ff.energy(zm.x_from_q(q_md[:5]), None).total
    assert float((target(q_md[:5]) - (-beta * u + zm.log_jacobian_q(q_md[:5]))).abs().max()) < 1e-9
    gen = torch.Generator().manual_seed(11)
    chains = 200
    start = torch.randperm(len(q_md), generator=gen)[:chains]
    state = q_md[start].clone()
    accepted = invalid = 0
    moved = torch.zeros(chains, dtype=torch.bool)
    for _ in range(50):
        res = vae_move(model.for_chains(chains), state, target, gen)
        state = res.x
        accepted += int(res.accepted.sum())
        invalid += int(res.invalid.sum())
        moved |= res.accepted
    f_acc = accepted / (50 * chains)
    assert target.evaluations <= 5 + chains * 51  # the current states' values were remembered
    assert 0.02 < f_acc <= 1.0, f_acc  # ~0.1 after this short training
    assert invalid == 0 and bool(torch.isfinite(state).all())
    assert float(moved.double().mean()) > 0.5
    # φ stays in its basins (none of the data has 0 ≤ φ < 120°), ψ visits both C7eq and C5
    phi = state[:, _phi_index(zm, system["moltype"])]
    assert not bool(((phi >= 0) & (phi < 2.0)).any())  # C5 reaches across φ = ±180°, C7ax/αL not at all
    mt = system["moltype"]
    x = zm.x_from_q(state)
    psi = dihedral(*(x[:, mt.find_atom(*a)] for a in ((2, "ALA", "N"), (2, "ALA", "CA"), (2, "ALA", "C"),
                                                        (3, "NME", "N"))))
    c5 = float((psi.abs() > 2.0).double().mean())
    assert 0.15 < c5 < 0.6  # MD: 38 % C5
    # the chains stay at the MD's energy (an exact kernel started from equilibrium samples):
    # <U> within 4 standard errors (σ_U ≈ 12 kJ/mol over 200 chains) of the MD mean
    u = ff.energy(x, None).total.numpy()
    se = u.std() / math.sqrt(chains)
    assert abs(u.mean() - system["energies"].mean()) < 4 * se + 0.8, (u.mean(), system["energies"].mean())
