"""The generator contract: the conformance kit on every built-in generator (and on broken ones it
must catch), the environment spec owned by the model, safe model files, one backmapping path."""
import json
from functools import partial
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from backmap import Generator
from backmap.engine.models import load_model
from backmap.system.io import read_frames
from backmap.testing import ConformanceSystem, check_generator

from conftest import HEXANE, run_cli

REPO = Path(__file__).resolve().parent.parent


def _run(cli, tmp_path: Path, name: str, generator: str, train: str = "{}", extra: str = "") -> Path:
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: {name}
        seed: 2
        workdir: {name}
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:4', split: {{test_fraction: 0.25, mode: tail}}}}
        generator: {generator}
        steps:
          - prepare: {{}}
          - train: {train}
          - backmap: {{candidates: 2, gibbs_sweeps: 1}}
        {extra}"""))
    code, _, err = cli("run", recipe)
    assert code == 0, err
    return tmp_path / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A template and a tiny voxel-GAN model trained on hexane, each backmapped once."""
    cli = partial(run_cli, catch_exceptions=False)
    tmp = tmp_path_factory.mktemp("contract")
    return {"template": _run(cli, tmp, "tpl", "{plugin: template}"),
            "voxel_gan": _run(cli, tmp, "gan", "{plugin: voxel_gan, params: {preset: tiny, regularizer_samples: 2}}",
                              "{max_iterations: 3, batch_size: 8}")}


def _system(run: Path) -> ConformanceSystem:
    model = load_model(run)
    return ConformanceSystem.from_files(HEXANE / "topol.top", HEXANE / "hexane.xml", run / "backmap" / "aa_cg.trr",
                                        channels=model.channels)


@pytest.mark.parametrize("name", ["template", "voxel_gan"])
def test_conformance_kit_passes_on_built_in_generators(runs, name):
    report = check_generator(load_model(runs[name]).generator, _system(runs[name]))
    assert report["propose_calls"] > 0 and report["invariance_error_nm"] < 1e-4


def test_conformance_kit_passes_on_the_untrained_scatter_generator(runs):
    from backmap_baseline.template import TrivialGenerator

    check_generator(TrivialGenerator({"spread": 0.05}), _system(runs["template"]))


class _Wrapped(Generator):
    """A trained generator with one promise broken (for the kit's own tests)."""

    name = "broken"
    unit = "bead"

    def __init__(self, inner, how):
        super().__init__(None, inner.environment)
        self.inner, self.how = inner, how

    def propose(self, batch, n_candidates, rng):
        out = self.inner.propose(batch, n_candidates, rng)
        if self.how == "lab":  # lab-frame coordinates
            return batch.to_lab(out)
        if self.how == "orientation":  # local offsets applied along lab axes
            return out @ batch.rotation.transpose(1, 2)[:, None]
        if self.how == "unseeded":
            return out + 0.01 * torch.randn(out.shape)
        if self.how == "shape":
            return out[:, :1]
        return out


@pytest.mark.parametrize("how, message", [("lab", "lab-frame"), ("orientation", "depends on the lab frame"),
                                          ("unseeded", "same seed gave different"), ("shape", "expected")])
def test_conformance_kit_catches_broken_generators(runs, how, message):
    inner = load_model(runs["template"]).generator
    with pytest.raises(AssertionError, match=message):
        check_generator(_Wrapped(inner, how), _system(runs["template"]))


def test_conformance_kit_catches_a_lossy_state(runs, monkeypatch):
    gen = load_model(runs["template"]).generator
    monkeypatch.setattr(type(gen), "state_dict", lambda self: {m: {b: (f, i, a + 0.01) for b, (f, i, a) in t.items()}
                                                              for m, t in self.templates.items()})
    with pytest.raises(AssertionError, match="loaded from its model files proposes differently"):
        check_generator(gen, _system(runs["template"]))


def test_model_files_hold_the_environment_and_no_pickle(runs):
    folder = runs["voxel_gan"] / "model"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "card.json", "model.json", "system",
                                                        "weights.safetensors"]
    assert sorted(p.name for p in (folder / "system").iterdir()) == ["hexane.xml", "topol.top"]
    description = json.loads((folder / "model.json").read_text())
    assert description["environment"] == {"unit": "atom", "cutoff": 0.7, "traversal": "dfs", "heavy_first": True,
                                          "strip_hydrogens": True, "channels": "types", "temporal": False,
                                              "temporal_alignment": "beads", "temporal_twist": None}
    assert description["system"]["mapping"] == ["system/hexane.xml"]  # inside the package, whatever the run's paths
    assert (folder / "system" / "hexane.xml").read_bytes() == (HEXANE / "hexane.xml").read_bytes()
    # the run directory, the model folder and its model.json all name the model
    for path in (runs["voxel_gan"], folder, folder / "model.json"):
        assert load_model(path).generator.name == "voxel_gan"


def test_a_contradicting_cutoff_is_refused(runs, cli, tmp_path):
    run = runs["template"]
    code, _, err = cli("apply", "--model", run, "--cg", run / "backmap" / "aa_cg.trr", "--frames", "0",
                       "--cutoff", "0.9", "--out", tmp_path / "x.gro")
    assert code == 2
    assert err.strip().splitlines()[-1] == ("error: apply.cutoff: 0.9 contradicts the model, which was trained "
                                            "with cutoff = 0.7 (leave it out to use the model's)")
    assert not list(tmp_path.iterdir())
    # in a recipe: the backmap step names the key
    recipe = tmp_path / "r.yaml"
    recipe.write_text((run.parent / "tpl.yaml").read_text().replace("workdir: tpl", f"workdir: {run}")
                      .replace("backmap: {candidates: 2, gibbs_sweeps: 1}", "backmap: {traversal: bfs}"))
    code, _, err = cli("run", recipe, "--steps", "backmap")
    assert code == 2 and "steps.backmap.traversal: 'bfs' contradicts the model" in err and "traversal = 'dfs'" in err


def test_recipe_environment_is_validated(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: r
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        generator: {{plugin: voxel_gan, environment: {{unit: bead, cutoff: 0.8}}}}
        steps: [{{prepare: {{}}}}]
        """))
    code, _, err = cli("check", recipe)
    assert code == 2 and "generator.environment: generator 'voxel_gan' places one atom at a time" in err
    recipe.write_text(recipe.read_text().replace("unit: bead, cutoff: 0.8", "cutof: 0.8"))
    code, _, err = cli("check", recipe)
    assert code == 2 and "generator.environment.cutof" in err


def test_pickled_models_are_refused_and_converted(runs, cli, tmp_path):
    import pickle

    model = load_model(runs["template"])
    legacy = tmp_path / "old"
    legacy.mkdir()
    state = model.generator.state_dict()
    with open(legacy / "generator.pkl", "wb") as fh:
        pickle.dump({"plugin": "template", "params": {"kick": 0.0, "iterations": 3}, "state": state}, fh)
    (legacy / "generator.json").write_text(json.dumps({"topology": str(HEXANE / "topol.top"),
                                                       "mapping": [str(HEXANE / "hexane.xml")], "seed": 2}))
    cg = runs["template"] / "backmap" / "aa_cg.trr"
    for given in (legacy, legacy / "generator.pkl"):
        code, _, err = cli("apply", "--model", given, "--cg", cg, "--out", tmp_path / "x.gro")
        assert code == 2 and "pickled model" in err and "backmap convert-model" in err
    code, out, err = cli("convert-model", legacy / "generator.pkl", "--out", tmp_path / "new")
    assert code == 0, err
    code, out, err = cli("apply", "--model", tmp_path / "new", "--cg", cg, "--frames", "0", "--out", tmp_path / "a.gro")
    assert code == 0, err
    code, out, err = cli("apply", "--model", runs["template"], "--cg", cg, "--frames", "0", "--out", tmp_path / "b.gro")
    assert code == 0, err
    a = next(read_frames(tmp_path / "a.gro")).positions
    b = next(read_frames(tmp_path / "b.gro")).positions
    np.testing.assert_array_equal(a, b)


def test_corrupt_model_files_give_one_line_errors(runs, cli, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(runs["template"] / "model", bad)
    (bad / "weights.safetensors").write_bytes(b"\x00" * 10)
    cg = runs["template"] / "backmap" / "aa_cg.trr"
    code, _, err = cli("apply", "--model", bad, "--cg", cg, "--out", tmp_path / "x.gro")
    assert code == 2 and "weights.safetensors was changed after the model was made" in err and "Traceback" not in err
    (bad / "model.json").write_text("{not json")
    code, _, err = cli("apply", "--model", bad, "--cg", cg, "--out", tmp_path / "x.gro")
    assert code == 2 and "cannot read the model description" in err


def test_a_model_of_another_system_is_refused(runs, cli, tmp_path):
    """The shipped sPS model with the hexane system: the difference is named, nothing is written."""
    code, _, err = cli("apply", "--model", REPO / "models" / "sps-voxel-gan", "--topology", HEXANE / "topol.top",
                       "--mapping", HEXANE / "hexane.xml", "--cg", runs["template"] / "backmap" / "aa_cg.trr",
                       "--out", tmp_path / "x.gro")
    assert code == 2 and "trained on molecule types ['PS1'], not 'Protein'" in err
    assert not list(tmp_path.iterdir())


def test_backmap_step_and_apply_write_the_same_files(runs, cli, tmp_path):
    """One path: apply on the step's CG frames with the step's seed gives the step's output."""
    run = runs["template"]
    code, out, err = cli("apply", "--model", run, "--cg", run / "backmap" / "aa_cg.trr", "--candidates", "2",
                         "--gibbs", "1", "--seed", "2", "--out", tmp_path / "aa.xtc")
    assert code == 0, err
    def files(folder):  # MDAnalysis leaves hidden offset caches beside trajectories it read
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name != "aa_reference.xtc")

    step = files(run / "backmap")
    assert files(tmp_path) == step == ["aa.gro", "aa.json", "aa.top", "aa.xtc", "aa_cg.trr"]
    x = np.stack([f.positions for f in read_frames(tmp_path / "aa.xtc")])
    y = np.stack([f.positions for f in read_frames(run / "backmap" / "aa.xtc")])
    # identical but for a handful of coordinates that land on the other side of an .xtc rounding
    # boundary (the step's frames and the .trr read back differ in the last float bits of the box)
    assert x.shape == y.shape and np.abs(x - y).max() < 0.0011 and (x != y).mean() < 0.005
    provenance = json.loads((tmp_path / "aa.json").read_text())
    assert provenance["environment"]["cutoff"] == 0.7 and provenance["seed"] == 2
    # output over input is refused before anything is written
    cg_copy = tmp_path / "cg.trr"
    shutil.copy(run / "backmap" / "aa_cg.trr", cg_copy)
    before = cg_copy.read_bytes()
    code, _, err = cli("apply", "--model", run, "--cg", cg_copy, "--out", cg_copy)
    assert code == 2 and "same file as an input" in err and cg_copy.read_bytes() == before


def test_steps_find_outputs_by_declared_name(runs):
    outputs = json.loads((runs["template"] / "outputs.json").read_text())
    assert {"prepare.pairs", "train.model", "backmap.aa", "backmap.cg", "backmap.reference"} <= set(outputs)
    assert outputs["backmap.aa"]["path"] == "backmap/aa.xtc"


def test_identical_training_runs_write_identical_model_files(cli, tmp_path):
    """Hardening item 11: identical training runs write model files that differ byte for byte
    (weights identical) — model files carry no wall times or run paths, so a checksum compares them."""
    import filecmp

    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: r
        seed: 5
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:2', split: {{test_fraction: 0.5}}}}
        generator: {{plugin: voxel_gan, params: {{preset: tiny, regularizer_samples: 2}}}}
        steps: [{{prepare: {{}}}}, {{train: {{max_iterations: 2, batch_size: 8}}}}]
        """))
    for run in ("a", "b"):
        code, _, err = cli("run", recipe, "--workdir", tmp_path / run)
        assert code == 0, err
    for name in ("model.json", "weights.safetensors"):
        assert filecmp.cmp(tmp_path / "a" / "model" / name, tmp_path / "b" / "model" / name, shallow=False), name


def test_refined_multi_frame_structure_output_refines_every_frame(runs, cli, tmp_path):
    """A .gro holds one frame when read back: with several frames the generator's own output goes to
    an .xtc beside it, so every frame is refined (not just the first)."""
    cg = tmp_path / "cg.xtc"
    code, _, err = cli("map", "--topology", HEXANE / "topol.top", "--traj", HEXANE / "traj.xtc",
                       "--mapping", HEXANE / "hexane.xml", "--frames", "0:2", "--out", cg)
    assert code == 0, err
    mdp = tmp_path / "short.mdp"
    mdp.write_text("coulombtype = reaction-field\nrcoulomb = 0.6\nrvdw = 0.6\n")
    code, _, err = cli("apply", "--model", runs["template"], "--cg", cg, "--candidates", 1, "--gibbs", 0,
                       "--out", tmp_path / "aa.gro", "--refine", "openmm", "--steps", 5, "--mdp", mdp,
                       "--param", "threads=1", "--param", "minimize_steps=5")
    assert code == 0, err
    assert len(list(read_frames(tmp_path / "aa_unrefined.xtc"))) == 2
    rows = (tmp_path / "aa_refine.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + both frames refined
