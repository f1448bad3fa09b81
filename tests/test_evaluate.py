"""`backmap evaluate` and the `evaluate` step: end to end on hexane, input errors, the sPS reference."""
import json

import numpy as np
import pytest

from backmap.forcefield import NonbondedSettings
from backmap.system.io import Frame, read_frames, write_frames
from backmap.metrics.evaluate import EvaluationSpec, run_evaluation

from conftest import HEXANE, REPO

#: hexane tests: a cut-off the 3.5 nm box handles quickly, the RDF within it
SETTINGS = NonbondedSettings(rvdw=0.8, rcoulomb=0.8, vdw_modifier="none")
METRICS = ["bonds", "angles", "dihedrals", "energy", ("rdf", {"r_max": 0.8}), "clashes", "cg_rmsd", "stereo"]


@pytest.fixture(scope="module")
def hexane_inputs(tmp_path_factory, hexane_topology):
    """The CG trajectory of the hexane reference and a perturbed copy (Gaussian noise, 0.01 nm)."""
    from backmap.system.projection import map_trajectory
    from backmap.engine.loaders import load_mapping

    tmp = tmp_path_factory.mktemp("evaluate")
    cg_top = load_mapping(HEXANE / "hexane.xml", hexane_topology).cg_topology(hexane_topology)
    map_trajectory(cg_top, HEXANE / "traj.xtc", tmp / "cg.xtc", np.arange(21))
    rng = np.random.default_rng(11)
    frames = [Frame(f.positions + rng.normal(0, 0.01, f.positions.shape), f.dimensions, f.time, f.index)
              for f in read_frames(HEXANE / "traj.xtc")]
    t = hexane_topology
    write_frames(tmp / "noisy.xtc", frames, t.atom_names, t.resnames, t.residue_numbers())
    return tmp


def test_perturbed_candidate_scores_worse_than_the_reference(hexane_inputs, tmp_path):
    spec = EvaluationSpec(
        topology=HEXANE / "topol.top", reference=HEXANE / "traj.xtc",
        candidates=[HEXANE / "traj.xtc", hexane_inputs / "noisy.xtc"], labels=["self", "noisy"],
        out=tmp_path / "ev", frames="0:8", skip_frames=[3], mapping=[HEXANE / "hexane.xml"],
        cg=hexane_inputs / "cg.xtc", settings=SETTINGS, metrics=METRICS, workers=2, batch_size=4)
    result = run_evaluation(spec)
    obs = result["observables"]
    assert result["frames"] == {"reference": 7, "self": 7, "noisy": 7}
    divergences = [n for n, o in obs.items() if o["kind"] in ("distribution", "histogram")]
    assert {"bond:opls_135-opls_136", "lj_per_molecule", "rdf:C-H", "dihedral:opls_135-opls_136-opls_136-opls_136"} \
        <= set(divergences)
    for name in divergences:
        assert obs[name]["candidates"]["self"]["jsd"] == 0.0, name
    for name in ("bond:opls_135-opls_136", "angle:opls_135-opls_136-opls_136", "lj_per_molecule", "rdf:C-H"):
        noisy = obs[name]["candidates"]["noisy"]
        assert noisy["jsd"] > 3 * obs[name]["noise_floor"]["jsd"], name
        assert noisy["w1"] > 0
    bond = obs["bond:opls_135-opls_136"]
    assert bond["candidates"]["noisy"]["std"] > 3 * bond["reference"]["std"]
    head = result["summary"]["mean_jsd_headline"]
    assert head["candidates"]["self"] == 0 < head["noise_floor"] < head["candidates"]["noisy"]
    # OPLS-AA hexane carries charges: its potential energy per molecule is in the headline
    assert "potential_per_molecule" in head["observables"] and "lj_per_molecule" in head["observables"]
    # CG consistency: the reference maps onto its own CG trajectory to .xtc precision
    rmsd = obs["cg_rmsd"]
    assert rmsd["reference"]["mean"] < 1e-3 and rmsd["candidates"]["self"]["mean"] < 1e-3
    assert rmsd["candidates"]["noisy"]["mean"] > 2e-3
    assert obs["clash_fraction"]["reference"]["mean"] == 0
    assert any("stereo: skipped" in n for n in result["notes"])  # hexane has no stereocentres
    out = tmp_path / "ev"
    assert json.loads((out / "metrics.json").read_text())["timing"]["workers"] == 2
    report = (out / "report.md").read_text()
    assert "| `lj_per_molecule` |" in report and "noise floor" in report
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == ["angle.png", "bond.png", "dihedral.png", "energy.png", "rdf.png", "scores.png"]
    for name in figures:
        assert f"figures/{name}" in report


def test_default_headline_takes_what_a_metric_puts_there():
    """Bonded families, LJ and RDFs by default; the potential energy only where its metric says so
    (the energy metric: when the topology has charges), never scores."""
    from backmap.api.metrics import Binning, Observable
    from backmap.metrics.evaluate import default_headline

    b = Binning(n_bins=10)
    obs = [Observable("bond:C-C", "distribution", "bond", "nm", b), Observable("lj_per_molecule", "distribution", "energy",
           "kJ/mol", b), Observable("potential_per_molecule", "distribution", "energy", "kJ/mol", b),
           Observable("clashes", "score", "clashes")]
    assert default_headline(obs) == ["bond:C-C", "lj_per_molecule"]
    obs[2] = Observable("potential_per_molecule", "distribution", "energy", "kJ/mol", b, headline=True)
    assert default_headline(obs) == ["bond:C-C", "lj_per_molecule", "potential_per_molecule"]


def test_cli_end_to_end(cli, tmp_path):
    code, out, err = cli("evaluate", "--topology", HEXANE / "topol.top", "--reference", HEXANE / "traj.xtc",
                         HEXANE / "traj.xtc", "--out", tmp_path / "ev", "--frames", "0:4", "--skip-frames", "1",
                         "--metrics", "bonds,angles,clashes", "--workers", "1", "--label", "same")
    assert code == 0, err
    assert "same" in out and "metrics.json" in out
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert result["frames"]["same"] == 3 and result["inputs"]["skip_frames"] == [1]
    assert set(result["metrics"]) == {"bonds", "angles", "clashes"}


@pytest.mark.parametrize("args, message", [
    (["--reference", "missing.xtc", "{traj}"], "missing.xtc: trajectory file not found"),
    (["--reference", "{traj}", "{cg}"], "cg.xtc: 600 atoms in the trajectory but 4000 in the topology"),
    (["--reference", "{traj}", "{traj}", "--skip-frames", "5,40"], "traj.xtc: skip frame 40 out of range "
                                                                     "(the trajectory has 21 frames)"),
    (["--reference", "{traj}", "{traj}", "--skip-frames", "a,b"], "--skip-frames: cannot parse"),
    (["--reference", "{traj}", "{traj}", "--cg", "{cg}"], "needs the mapping (--mapping)"),
    (["--reference", "{traj}", "{traj}", "--metrics", "bond"], "unknown metric plugin 'bond' (did you mean 'bonds'?)"),
    (["--reference", "{traj}", "{traj}", "--label", "a", "--label", "b"], "2 labels for 1 candidates"),
    (["--reference", "{traj}", "{traj}", "--mdp", "{top}"], "coulombtype"),
])
def test_cli_bad_input_is_one_line_and_exit_2(cli, tmp_path, hexane_inputs, args, message):
    ewald = tmp_path / "ewald.mdp"  # plain Ewald: a Coulomb treatment the force field does not do (PME it does)
    ewald.write_text("coulombtype = Ewald\nrcoulomb = 1.0\nrvdw = 1.0\n")
    subst = {"{traj}": str(HEXANE / "traj.xtc"), "{cg}": str(hexane_inputs / "cg.xtc"), "{top}": str(ewald)}
    args = [subst.get(a, a) for a in args]
    code, out, err = cli("evaluate", "--topology", HEXANE / "topol.top", "--out", tmp_path / "ev", *args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_evaluate_recipe_step(tmp_path):
    import yaml

    from backmap.engine.pipeline import run_recipe
    from backmap.engine.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "ev", "workdir": str(tmp_path / "run"),
        "system": {"topology": str(HEXANE / "topol.top"), "mapping": str(HEXANE / "hexane.xml")},
        "steps": [{"evaluate": {"reference": str(HEXANE / "traj.xtc"), "candidates": {"copy": str(HEXANE / "traj.xtc")},
                                "frames": "0:3", "metrics": ["bonds", {"plugin": "angles", "params": {"width": 2.0}}],
                                "workers": 1}}]}))
    r, steps = load_recipe(recipe)
    workdir = run_recipe(r, steps)
    result = json.loads((workdir / "evaluate" / "metrics.json").read_text())
    assert result["metrics"]["angles"]["width"] == 2.0
    assert "mean JSD copy" in (workdir / "report.md").read_text()


@pytest.mark.parametrize("metric, message", [
    ({"plugin": "angles", "params": {"widht": 2.0}}, "angles.params.widht: unknown key (did you mean 'width'?)"),
    ("angle", "unknown metric plugin 'angle' (did you mean 'angles'?)"),
])
def test_evaluate_recipe_checks_metrics_at_load(cli, tmp_path, metric, message):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "ev", "system": {"topology": str(HEXANE / "topol.top"), "mapping": str(HEXANE / "hexane.xml")},
        "steps": [{"evaluate": {"reference": str(HEXANE / "traj.xtc"), "candidates": [str(HEXANE / "traj.xtc")],
                                "metrics": [metric]}}]}))
    code, _, err = cli("check", recipe)
    assert code == 2 and err.startswith("error: r.yaml: steps[0].evaluate.metrics: ") and message in err, err


def test_sps_reference_numbers(shared, tmp_path):
    """A few frames of DBM's sPS evaluation set: the sanity relations of EVALUATION.md."""
    sps = shared / "sps"
    ev = sps / "eval_t568"
    spec = EvaluationSpec(
        topology=sps / "top" / "topol.top", reference=ev / "aa.xtc",
        candidates=[ev / "deepbackmap.xtc", ev / "baseline.xtc"], labels=["DBM", "baseline"], out=tmp_path / "sps",
        frames="0:3", settings=NonbondedSettings.from_mdp(sps / "top" / "md.mdp").model_copy(
            update={"vdw_modifier": "none"}), mapping=[REPO / "recipes" / "sps" / "sps.xml"], cg=ev / "cg.xtc",
        metrics=["angles", "energy", "clashes", "cg_rmsd", "stereo"], workers=2, batch_size=3)
    obs = run_evaluation(spec)["observables"]
    for name in ("angle:C-C-H", "angle:C_AR-C_AR-H_AR", "lj_per_molecule"):
        dbm, base = (obs[name]["candidates"][k]["jsd"] for k in ("DBM", "baseline"))
        assert dbm < base, name
    assert obs["angle:C_AR-C_AR-H_AR"]["bins"]["width"] == 0.5  # vertex in the ring
    assert obs["angle:C-C-H"]["bins"]["width"] == 1.0
    lj = obs["lj_per_molecule"]
    assert -240 < lj["reference"]["mean"] < -190  # EVALUATION.md: −211 over the 71 clean frames
    assert lj["candidates"]["baseline"]["mean"] < -400  # the baseline over-stabilizes
    chir = obs["stereo:chirality"]
    assert "324 stereocentres" in chir["description"]  # 9 backbone CH per chain × 36
    assert chir["candidates"]["DBM"]["preserved"] > 0.95 > 0.8 > chir["candidates"]["baseline"]["preserved"]
    dyads = obs["stereo:dyads"]  # 8 per chain; DBM keeps the syndiotactic pattern
    assert "288 meso/racemo dyads" in dyads["description"] and dyads["candidates"]["DBM"]["preserved"] > 0.95
    rmsd = obs["cg_rmsd"]
    assert rmsd["reference"]["mean"] < 0.002 and rmsd["candidates"]["DBM"]["mean"] < 0.01
    assert rmsd["candidates"]["baseline"]["mean"] > 0.02
