"""Energy regularizers: schedules, C_pot^(1), C_pot^(2) and the flat-bottom potential."""
import textwrap

import numpy as np
import pytest
import torch

from backmap.forcefield import ForceField, NonbondedSettings
from backmap.engine.pipeline import RunContext
from backmap.engine.recipe import load_recipe
from backmap.engine.registry import default_registry
from backmap.engine.loaders import load_topology
from backmap.training.regularization import RegularizerSample, Schedule

from conftest import HEXANE


def test_schedule():
    s = Schedule(start=0.0, end=0.01, ramp_epochs=10, delay=5)
    assert [s(e) for e in (0, 5, 10, 15, 40)] == pytest.approx([0, 0, 0.005, 0.01, 0.01])
    assert Schedule.model_validate(0.3)(7) == 0.3


@pytest.fixture(scope="module")
def local_sample():
    """Molecule 3 of hexane 'generated', its neighbours within 0.6 nm as reference environment."""
    topo = load_topology(HEXANE / "topol.top")
    ff = ForceField(topo, NonbondedSettings(rvdw=0.9, rcoulomb=0.9))
    from backmap.system.io import read_frames
    from backmap.system.pbc import Unwrapper, minimum_image

    frame = next(read_frames(HEXANE / "traj.xtc"))
    x = Unwrapper(topo)(frame.positions, frame.dimensions)
    unit = np.arange(60, 80)
    centre = x[unit].mean(0)
    # neighbours: whole molecules with an atom within 0.6 nm, moved next to the unit
    d = np.linalg.norm(minimum_image(x - centre, frame.dimensions), axis=1)
    mols = np.unique(topo.molecule_index[d < 0.6])
    atoms = np.concatenate([np.arange(20 * m, 20 * m + 20) for m in mols])
    local = x[atoms].copy()
    for m in range(len(mols)):
        sl = slice(20 * m, 20 * m + 20)
        local[sl] += minimum_image(local[sl][:1] - centre, frame.dimensions) - (local[sl][:1] - centre)
    generated = np.isin(atoms, unit)
    types = np.tile(topo.blocks[0].moltype.atom_types, topo.blocks[0].count)[atoms]
    ref = torch.as_tensor(local[None])
    noisy = ref + 0.01 * torch.as_tensor(np.random.default_rng(0).normal(size=ref.shape)) * torch.as_tensor(
        generated[None, :, None])
    return ff.subsystem(atoms), ref, noisy, generated, types


def _plugin(name, params):
    info = default_registry().get("regularizer", name)
    return info.cls(params)


def test_energy_min_is_the_weighted_energy(local_sample):
    ff, ref, noisy, gen, types = local_sample
    reg = _plugin("energy_min", {"weight": {"start": 0, "end": 0.5, "ramp_epochs": 2}, "terms": {"bond": 1, "lj": 0.1}})
    sample = RegularizerSample(ff, noisy, gen, types, ref)
    e = ff.energy(noisy, None, subset=gen)
    expected = 0.25 * (e.terms["bond"] + 0.1 * e.terms["lj"])
    torch.testing.assert_close(reg.loss(sample, epoch=1), expected)
    assert float(reg.loss(sample, epoch=0)) == 0.0  # the ramp starts at 0


def test_energy_match_vanishes_on_the_reference(local_sample):
    ff, ref, noisy, gen, types = local_sample
    reg = _plugin("energy_match", {"weight": 1.0})
    assert float(reg.loss(RegularizerSample(ff, ref, gen, types, ref), 3)) == pytest.approx(0, abs=1e-9)
    x = noisy.clone().requires_grad_(True)
    loss = reg.loss(RegularizerSample(ff, x, gen, types, ref), 3)
    assert float(loss.detach()) > 10
    grad, = torch.autograd.grad(loss.sum(), x)
    assert grad[0, ~torch.as_tensor(gen)].abs().max() > 0  # neighbours feel it through shared terms
    assert torch.isfinite(grad).all()


def test_unknown_term_is_rejected(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: r
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        regularizers: [{{plugin: energy_min, params: {{terms: {{bonds: 1}}}}}}]
        steps: [{{prepare: {{}}}}]
        """))
    from backmap.errors import BackmapError

    with pytest.raises(BackmapError, match=r"regularizers\[0\].params.terms: unknown energy term 'bonds'"):
        load_recipe(recipe)


def test_flat_bottom_zero_on_data_and_restoring_outside(tmp_path, local_sample):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: r
        workdir: w
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:4', split: {{test_fraction: 0}}}}
        steps: [{{prepare: {{}}}}]
        """))
    from backmap.engine.pipeline import run_recipe

    r, steps = load_recipe(recipe)
    run_recipe(r, steps)
    reg = _plugin("flat_bottom", {"weight": 1.0, "frames": 2})
    reg.prepare(RunContext(r, tmp_path / "w"))
    assert set(reg.bond_range) == {"opls_135-opls_136", "opls_135-opls_140", "opls_136-opls_136", "opls_136-opls_140"}
    lo, hi = reg.bond_range["opls_135-opls_140"]
    assert 0.09 < lo < 0.109 < hi < 0.13
    ff, ref, noisy, gen, types = local_sample
    # frame 0 is one of the frames the thresholds came from: no penalty at all
    assert float(reg.loss(RegularizerSample(ff, ref, gen, types, ref), 1)) == pytest.approx(0, abs=1e-12)
    stretched = ref.clone()
    first = int(np.flatnonzero(gen)[0])  # a CH3 carbon; move it 0.05 nm away along x
    stretched[0, first, 0] += 0.05
    stretched.requires_grad_(True)
    loss = reg.loss(RegularizerSample(ff, stretched, gen, types, ref), 1)
    grad, = torch.autograd.grad(loss.sum(), stretched)
    assert float(loss.detach()) > 1 and grad[0, first, 0] > 0  # the force −grad pulls it back
