"""Hardening issue #20, items 12, 18 and 13 (part): the refiners' constraints come from the .mdp,
their defaults are shared and shown, bonds left far from thermal are reported, and the openmm
refiner runs PME. Hexane test data, one frame, a few steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backmap.errors import BackmapError
from backmap.engine.loaders import load_mapping, load_topology, make_plugin
from backmap.forcefield import ForceField, NonbondedSettings
from backmap.refinement.restrained import BondSpread, RestrainedSystem
from backmap.system.io import Frame, read_frames
from conftest import HEXANE

pytest.importorskip("openmm")


def _system(settings: NonbondedSettings | None = None) -> RestrainedSystem:
    top = load_topology(HEXANE / "topol.top")
    return RestrainedSystem(load_mapping([HEXANE / "hexane.xml"], top).cg_topology(top), HEXANE / "topol.top",
                            settings or NonbondedSettings(rvdw=0.6, rcoulomb=0.6))


def _mdp(tmp_path, text: str):
    path = tmp_path / "run.mdp"
    path.write_text("rvdw = 0.6\nrcoulomb = 0.6\ncoulombtype = reaction-field\n" + text)
    return path


@pytest.fixture(scope="module")
def frame():
    """Frame 3 of the hexane reference (whole molecules) and its own CG image as targets."""
    system = _system()
    aa = next(read_frames(HEXANE / "traj.xtc", frames=[3]))
    cg = Frame(system.mapped(system.whole(aa.positions, aa.dimensions)), aa.dimensions, index=3)
    x, targets = system.prepare(aa, cg)
    return x, targets, aa.box


def test_constraints_come_from_the_mdp_unless_set(tmp_path, capsys):
    """Item 12: "Where the reference bonds are rigid the defaults must not silently sample flexible
    bonds: take constraints from the `.mdp` (`constraints =`) or the model/recipe" — an explicit
    value wins; without either the default (h-bonds) is used and said in one line; GROMACS's angle
    constraints are refused clearly."""
    for text, expected in (("constraints = all-bonds", "all-bonds"), ("constraints = H_Bonds", "h-bonds"),
                           ("constraints = none", "none")):
        settings = NonbondedSettings.from_mdp(_mdp(tmp_path, text))
        refiner = make_plugin("refiner", "openmm", {})
        refiner.prepare(_system(settings))
        assert refiner.params.constraints == expected
        assert f"constraints = {expected} (from the .mdp)" in capsys.readouterr().err
    refiner = make_plugin("refiner", "langevin", {"constraints": "none"})  # explicit wins over the .mdp
    refiner.prepare(_system(NonbondedSettings.from_mdp(_mdp(tmp_path, "constraints = all-bonds"))))
    assert refiner.params.constraints == "none" and "constraints =" not in capsys.readouterr().err
    refiner = make_plugin("refiner", "mala", {})  # no .mdp: today's default, printed
    refiner.prepare(_system())
    assert refiner.params.constraints == "h-bonds"
    err = capsys.readouterr().err
    assert "constraints = h-bonds (default, no .mdp given)" in err and "--constraints" in err
    refiner = make_plugin("refiner", "openmm", {})
    with pytest.raises(BackmapError, match="constraints = h-angles.*explicitly"):
        refiner.prepare(_system(NonbondedSettings.from_mdp(_mdp(tmp_path, "constraints = h-angles"))))
    with pytest.raises(BackmapError, match="not a GROMACS choice") as exc:
        NonbondedSettings.from_mdp(_mdp(tmp_path, "constraints = some-bonds"))
    assert "run.mdp:4" in str(exc.value)


def test_soft_unconstrained_bonds_get_a_note(capsys):
    """Item 12 (sPS: k_b = 10⁴ kJ/mol/nm² where the reference constrained all bonds): refining such
    bonds flexible widens them to ~0.02 nm, so an unconstrained bond type that soft is named."""
    system = _system()
    soft = system.bonds[2].copy()
    soft[:] = 1.0e4
    system.__dict__["bonds"] = (*system.bonds[:2], soft, system.bonds[3])
    make_plugin("refiner", "openmm", {"constraints": "h-bonds", "temperature": 568}).prepare(system)
    err = capsys.readouterr().err
    assert "k_b = 1e+04" in err and "0.022 nm at 568 K" in err and "all-bonds" in err
    make_plugin("refiner", "openmm", {"constraints": "h-bonds"}).prepare(_system())  # OPLS bonds: nothing
    assert "note" not in capsys.readouterr().err


def test_bond_spread_flags_hot_bonds_and_names_the_type(frame):
    """Item 12: "bonds whose length deviates from the topology's equilibrium value b0 by more than,
    say, 4× the thermal s.d. sqrt(kT/kb) in more than 1 % of bonds → warn ..., naming the worst bond
    type". The reference MD frame passes; the same frame with 0.01 nm noise on every atom does not."""
    x, _targets, _box = frame
    system = _system()
    spread = BondSpread(system, 300.0, "none")
    spread.add(x)
    assert spread.warning() is None
    hot = BondSpread(system, 300.0, "none")
    hot.add(x + np.random.default_rng(0).normal(0, 0.01, x.shape))
    warning = hot.warning()
    assert warning is not None and " of the opls_" in warning, warning
    assert "more than 4 thermal s.d." in warning
    constrained = BondSpread(system, 300.0, "all-bonds")  # constrained bonds are not counted
    constrained.add(x + 0.01)
    assert constrained.total.sum() == 0 and constrained.warning() is None


def test_refiners_share_their_defaults_and_help_names_them(cli):
    """Item 18: "`--minimize` shows no default (openmm 100, langevin and mala 0) ... make defaults the
    same across refiners where they can be (one `RefineParams` default for minimize_steps), show
    defaults in `--help`"; "`refine --help` names the default refiner"."""
    params = [make_plugin("refiner", name, {}).params for name in ("openmm", "langevin", "mala")]
    for key in ("minimize_steps", "temperature", "steps", "timestep", "friction", "restraint", "constraints"):
        assert len({getattr(p, key) for p in params}) == 1, key
    assert params[0].minimize_steps == 100 and params[0].constraints is None
    code, stdout, _ = cli("refine", "--help")
    flat = " ".join(stdout.split())
    assert code == 0 and "openmm (the default" in flat and "(default 100, every refiner)" in flat
    assert "the .mdp's 'constraints', without --mdp h-bonds" in flat


def test_openmm_refiner_runs_pme_from_the_mdp(tmp_path, frame, capsys):
    """Item 13 (part): "when the settings (from the .mdp) say PME, use OpenMM's PME
    (`nonbondedMethod=app.PME`, `ewaldErrorTolerance` from the mdp's `ewald-rtol` if given) instead
    of refusing" — one hexane frame, a few steps; the Ewald splitting is GROMACS's β, and the forces
    agree with backmap's own PME force field."""
    import openmm as mm

    path = tmp_path / "pme.mdp"
    path.write_text("coulombtype = PME\nrcoulomb = 0.6\nrvdw = 0.6\newald-rtol = 1e-4\nfourierspacing = 0.12\n"
                    "constraints = h-bonds\n")
    settings = NonbondedSettings.from_mdp(path)
    assert settings.coulomb == "pme" and settings.constraints == "h-bonds"
    system = _system(settings)
    x, targets, box = frame
    refiner = make_plugin("refiner", "openmm", {"threads": 1, "steps": 5, "minimize_steps": 5, "warmup_steps": 5,
                                                "temperature": 300})
    refiner.prepare(system)
    assert refiner.params.constraints == "h-bonds"
    result = refiner.refine(x[None], targets[None], box[None], np.random.default_rng(0))
    assert np.isfinite(result.positions).all() and "failed" not in result.log[0]
    assert 0 < result.log[0]["temperature"] < 1000
    ctx, _ = refiner._contexts["dynamics"]
    (nb,) = [f for f in ctx.getSystem().getForces() if isinstance(f, mm.NonbondedForce)]
    assert nb.getNonbondedMethod() == mm.NonbondedForce.PME
    assert nb.getEwaldErrorTolerance() == pytest.approx(1e-4)
    assert nb.getPMEParameters()[0].value_in_unit(nb.getPMEParameters()[0].unit) == pytest.approx(
        settings.ewald_coefficient())
    # forces against backmap's force field with the same PME settings, the restraint included (no
    # constraints: OpenMM leaves constrained bonds out of its bond force)
    flexible = make_plugin("refiner", "openmm", {"threads": 1, "constraints": "none"})
    flexible.prepare(system)
    _u, _r, f_omm = flexible.energy_forces(x, targets, box)
    ff = ForceField(system.topology, settings, dtype=torch.float64)
    xt = torch.as_tensor(x[None]).requires_grad_(True)
    dims = np.array([[*np.linalg.norm(box, axis=1), 90.0, 90.0, 90.0]])
    total = ff.energy(xt, dims).total + system.restraint_energy(xt, torch.as_tensor(targets[None]), 2e5)
    f_ours = -torch.autograd.grad(total.sum(), xt)[0][0].numpy()
    assert np.linalg.norm(f_omm - f_ours) / np.linalg.norm(f_ours) < 1e-3
