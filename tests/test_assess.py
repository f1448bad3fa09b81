"""`backmap assess` and the ``assess`` step (issue 18): AA forces summed per bead agree with
GROMACS' own forces, CG models are ranked by the JSD of those forces with a separation larger than
the spread over random halves of the frames, and bad input is a one-line error.

Data: tests/data/hexane_cg_models (scripts/make_hexane_cg_models.sh): two CG models of the shipped
hexane liquid made with VOTCA + LAMMPS — ``good`` (Boltzmann-inverted bonds and angle, IBI pair
potentials) and ``poor`` (no angle potential, pair potentials = the first IBI guess)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from backmap.engine.loaders import load_mapping, load_topology
from backmap.forcefield import NonbondedSettings
from backmap.metrics.context import EvalContext, FrameBatch
from backmap.system.io import read_frames

from conftest import DATA, HEXANE, one_line_error, run_cli

MODELS = DATA / "hexane_cg_models"


def test_bead_forces_are_gromacs_forces_summed_per_bead():
    """Thesis eq. 6.3 with a known answer: with the MD's own settings (PME, 1.2 nm) the metric's
    bead forces equal GROMACS' forces (stored in traj.trr) summed over each bead's atoms. Measured
    here: max deviation 0.07 kJ/mol/nm on forces of ~1000 kJ/mol/nm."""
    from backmap_metrics.forces import BeadForces

    topo = load_topology(HEXANE / "topol.top")
    cg_top = load_mapping([HEXANE / "hexane.xml"], topo).cg_topology(topo)
    ctx = EvalContext(topo, NonbondedSettings.from_mdp(HEXANE / "grompp.mdp"), cg_top)
    metric = BeadForces({})
    names = [o.name for o in metric.prepare(ctx)]
    assert names == ["bead_force:A", "bead_force_xyz:A", "bead_force:B", "bead_force_xyz:B"]
    frames = list(read_frames(HEXANE / "traj.trr", frames=[0, 7]))
    batch = FrameBatch(ctx, np.stack([f.positions for f in frames]), np.stack([f.dimensions for f in frames]),
                       np.array([0, 7]))
    got = metric.samples(batch, ctx)
    gromacs = cg_top.sum_forces(np.stack([f.forces for f in frames]))
    for t, idx in metric.beads.items():
        np.testing.assert_allclose(got[f"bead_force_xyz:{t}"].reshape(2, -1, 3), gromacs[:, idx], atol=1.0)
        np.testing.assert_allclose(got[f"bead_force:{t}"], np.linalg.norm(gromacs[:, idx], axis=-1), atol=1.0)


@pytest.fixture(scope="module")
def assessed(tmp_path_factory) -> Path:
    """The template baseline trained on hexane frames 0–14, then the assess step: reference frames
    15–20, each CG model's first 10 frames."""
    tmp = tmp_path_factory.mktemp("assess")
    recipe = tmp / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: assess-test
        seed: 3
        workdir: run
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:15'}}
        generator: {{plugin: template, params: {{kick: 0.004}}}}
        steps:
          - prepare: {{}}
          - train: {{}}
          - assess:
              reference: {HEXANE / 'traj.xtc'}
              frames: '15:21'
              cg: {{good: {MODELS / 'good.xtc'}, poor: {MODELS / 'poor.xtc'}}}
              cg_frames: '0:10'
              candidates: 2
              gibbs_sweeps: 0
        """))
    code, _, err = run_cli("run", recipe, catch_exceptions=False)
    assert code == 0, err
    return tmp / "run"


def test_assess_ranks_the_good_model_first_beyond_the_spread_over_halves(assessed):
    doc = json.loads((assessed / "assess" / "metrics.json").read_text())
    s = doc["summary"]
    assert s["ranking"] == ["good", "poor"]
    good, poor = (doc["sets"][k] for k in ("good", "poor"))
    # the separation is larger than the spread of the JSD over random halves of the frames
    assert poor["force_jsd"] - good["force_jsd"] > 3 * max(good["force_jsd_halves_sd"], poor["force_jsd_halves_sd"])
    # the poor model's CG distributions are further from the mapped reference, too
    assert poor["cg_level_mean_jsd"] > good["cg_level_mean_jsd"]
    assert doc["cg_level"]["angle:A-B-A"]["jsd"]["poor"] > doc["cg_level"]["angle:A-B-A"]["jsd"]["good"]
    # every set was backmapped, evaluated, and reported with its plots
    assert set(doc["sets"]) == {"in-distribution", "good", "poor"}
    assert doc["frames"] == {"reference": 6, "in-distribution": 6, "good": 10, "poor": 10}
    for f in ("report.md", "figures/bead_forces.png", "figures/cg_distributions.png", "atomistic/report.md"):
        assert (assessed / "assess" / f).is_file(), f
    assert "good < poor" in (assessed / "assess" / "report.md").read_text()


def test_the_command_reuses_finished_sets_and_gives_the_same_numbers(assessed, tmp_path):
    """A second assessment into the same folder backmaps nothing again (a killed one resumes the
    frames already done: backmap.parallel's store) and reproduces the ranking exactly."""
    before = json.loads((assessed / "assess" / "metrics.json").read_text())
    code, out, err = run_cli("assess", "--model", assessed, "--reference", HEXANE / "traj.xtc", "--frames", "15:21",
                             "--out", assessed / "assess", "--cg", MODELS / "good.xtc", MODELS / "poor.xtc",
                             "--cg-frames", "0:10", "--candidates", "2", "--gibbs", "0", "--seed", "3")
    assert code == 0, err
    assert err.count("backmapped already") == 3
    after = json.loads((assessed / "assess" / "metrics.json").read_text())
    for k in ("good", "poor", "in-distribution"):
        assert after["sets"][k]["force_jsd"] == before["sets"][k]["force_jsd"]
    assert "good" in out and "poor" in out


def test_a_lammps_dump_is_read_as_the_same_frames():
    """VOTCA's IBI workflow writes LAMMPS dumps (Å, real units): read as nm, they are the frames of
    the .xtc made from the same run (the dump every 20 ps, the xtc every 10 ps; precision 0.001 nm)."""
    a = list(read_frames(MODELS / "good.lammpstrj"))
    b = list(read_frames(MODELS / "good.xtc"))
    assert len(a) == (len(b) + 1) // 2
    for fa, fb in zip(a[:3], b[::2][:3]):
        d = fa.positions - fb.positions
        d -= np.round(d / fb.dimensions[:3]) * fb.dimensions[:3]  # cubic box: the wrapping may differ
        assert np.abs(d).max() < 0.002
        np.testing.assert_allclose(fa.dimensions, fb.dimensions, atol=0.002)


@pytest.mark.parametrize("args, message", [
    (["--cg", str(HEXANE / "traj.xtc")], "beads in CG set 'traj' but 600 in the mapping"),
    ([], "give the CG trajectories"),
    (["--cg", str(MODELS / "good.xtc"), "--label", "a", "--label", "b"], "2 labels for 1 CG trajectories"),
    (["--cg", "nonexistent.xtc"], "nonexistent.xtc: no such file"),
])
def test_bad_input_is_one_line(assessed, tmp_path, args, message):
    code, _, err = run_cli("assess", "--model", assessed, "--reference", HEXANE / "traj.xtc", "--out",
                           tmp_path / "o", *args)
    assert code != 0
    assert message in one_line_error(code, err)
