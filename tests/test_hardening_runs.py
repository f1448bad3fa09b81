"""Hardening issue, runs and their provenance: a work directory keeps the history of its runs
(item 7), a resumed training says when its schedule moved (item 14), the quickstart recipe stays
valid and uses real candidates (item 16), and `plugins --kind` refuses an unknown kind (item 20)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import yaml

from backmap.engine.recipe import load_recipe
from backmap.training.data import TrainOptions
from backmap.training.loop import TrainingLoop

from conftest import HEXANE, REPO
from toys import toy_gan, toy_sequences


def _recipe(tmp_path: Path) -> Path:
    path = tmp_path / "runs.yaml"
    path.write_text(textwrap.dedent(f"""
        name: runs
        seed: 3
        workdir: work
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:2', split: {{test_fraction: 0.5, mode: tail}}}}
        generator: {{plugin: template}}
        steps:
          - prepare: {{}}
          - map: {{out: cg/cg.xtc}}
          - train: {{}}
        """))
    return path


def test_a_work_directory_keeps_the_history_of_its_runs(tmp_path, cli, monkeypatch):
    """Item 7: "Runs lose their provenance: a failed run rewrites `recipe.yaml` in an existing work
    directory; `--steps evaluate` replaces `run.json`, `report.md` and `recipe.yaml` and drops the
    record of earlier steps. Keep a run's history (append per step, never overwrite a good record
    with a failed one)." """
    path = _recipe(tmp_path)
    work = tmp_path / "work"
    assert cli("run", path)[0] == 0
    assert cli("run", path, "--steps", "map", "steps.map.frames=0:1")[0] == 0
    # a step that fails while running (not one `backmap check` refuses up front): a full disk
    from backmap.errors import BackmapError
    from backmap_steps.map_step import MapStep

    def disk_full(self, ctx):
        raise BackmapError("No space left on device", source=work / "cg" / "cg.xtc")

    monkeypatch.setattr(MapStep, "run", disk_full)
    code, _, err = cli("run", path, "--steps", "map", "steps.map.frames=1:2")
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error:")] == \
        [f"error: {work / 'cg' / 'cg.xtc'}: No space left on device"]

    run = json.loads((work / "run.json").read_text())
    invocations = run["invocations"]
    assert [(i["number"], i["status"], [(s["name"], s["status"]) for s in i["steps"]]) for i in invocations] == [
        (1, "ok", [("prepare", "ok"), ("map", "ok"), ("train", "ok")]),
        (2, "ok", [("map", "ok")]),
        (3, "failed", [("map", "failed")])]
    assert invocations[2]["steps"][0]["error"] == f"{work / 'cg' / 'cg.xtc'}: No space left on device"
    assert invocations[1]["requested_steps"] == ["map"] and invocations[0]["requested_steps"] is None
    assert all(i["seed"] == 3 and i["plugins"] and i["started"] for i in invocations)
    # the top level still reads like one run record: seed, plugins, the latest of every step
    assert run["seed"] == 3 and [s["name"] for s in run["steps"]] == ["prepare", "map", "train"]
    latest_map = run["steps"][1]
    assert latest_map["status"] == "ok" and latest_map["invocation"] == 2 and latest_map["summary"]["frames"] == 1
    assert latest_map["failed_after"]["invocation"] == 3

    report = (work / "report.md").read_text()
    for heading in ("## prepare (", "## map (", "## train ("):
        assert heading in report
    assert "invocation 2)" in report and "A later attempt failed" in report

    # recipe.yaml: the last invocation whose steps all succeeded (2), complete; every one in history/
    def map_frames(p: Path):
        steps = yaml.safe_load(p.read_text())["steps"]
        assert [next(iter(s)) for s in steps] == ["prepare", "map", "train"]
        return steps[1]["map"]["frames"]

    assert map_frames(work / "recipe.yaml") == "0:1"
    assert [map_frames(work / "history" / f"recipe-{n}.yaml") for n in (1, 2, 3)] == [None, "0:1", "1:2"]
    assert invocations[2]["recipe_file"] == "history/recipe-3.yaml"


def test_old_single_record_run_json_becomes_the_first_invocation(tmp_path):
    """Item 7: a `run.json` of backmap 0.1 (one record, overwritten by every run) is kept as
    invocation 1, not dropped."""
    from backmap.engine.pipeline import latest_steps, load_history

    old = {"backmap": "0.1.0", "recipe": "r.yaml", "seed": 1, "started": "2025-01-01T00:00:00", "python": "3",
           "plugins": [], "steps": [{"name": "prepare", "seconds": 1.0, "summary": {"frames": 2}}]}
    (tmp_path / "run.json").write_text(json.dumps(old))
    history = load_history(tmp_path)
    assert history["invocations"][0]["number"] == 1 and history["invocations"][0]["status"] == "ok"
    assert latest_steps(history)[0]["summary"] == {"frames": 2}


def test_resuming_with_another_total_says_the_schedule_moves(tmp_path):
    """Item 14: "Resuming training with a different `epochs` silently recomputes the learning-rate
    decay (a warm restart from 0.1× to 0.47×): say so at resume time, or keep the schedule and
    extend it." The checkpoint stores the run's total; a resume with another one says so."""
    seqs = toy_sequences(64)

    def run(epochs: int) -> list[str]:
        said: list[str] = []
        loop = TrainingLoop(toy_gan(0, n_critic=1), seqs, 1, TrainOptions(epochs=epochs, batch_size=16, log_every=2),
                            seed=3, directory=tmp_path, say=said.append)
        loop.run()
        return said

    run(1)  # 4 iterations, checkpoint at the end
    said = run(2)  # the same checkpoint, now for 8 iterations
    assert ("resuming at iteration 4 of 8 (the checkpoint was made for 4): schedules that depend on the share "
            "of training done, like the voxel GAN's learning-rate decay, jump from 100% to 50% done") in said
    said = run(2)  # the checkpoint now records 8: an ordinary resume
    assert not any("was made for" in line for line in said) and any(line.startswith("resumed from") for line in said)


def test_quickstart_recipe_is_valid_and_has_real_candidates(cli):
    """Item 16: "The quickstart's result is poor and unexplained: … the template's `kick` defaults
    to 0, so `candidates: 4` gives four identical candidates and selection does nothing." The recipe
    validates, and its candidates differ (kick > 0), and the backmap step refines. (That recipe is
    now recipes/hexane-template.yaml; the quickstart trains the equivariant generator and refines.)"""
    quickstart = load_recipe(REPO / "recipes" / "quickstart.yaml")[0]
    assert quickstart.generator.plugin == "equivariant" and quickstart.refiners
    path = REPO / "recipes" / "hexane-template.yaml"
    code, out, err = cli("check", path)
    assert code == 0, err
    recipe, steps = load_recipe(path)
    kick = recipe.generator.params.get("kick") if recipe.generator.params else None
    if kick is None:
        from backmap_baseline.template import TemplateParams
        kick = TemplateParams().kick
    backmap = next(s for s in steps if s.name == "backmap")
    assert kick > 0 and backmap.params.candidates > 1
    assert backmap.params.refiner is not None and recipe.refiners


def test_plugins_with_an_unknown_kind_is_one_line(cli):
    """Item 20 (part): "`plugins --kind foo` prints an empty table and exits 0" → one-line error
    listing the kinds."""
    code, out, err = cli("plugins", "--kind", "foo")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0
    assert err.startswith("error: --kind: unknown plugin kind 'foo' (kinds: ") and "generator" in err and "step" in err
    code, out, _ = cli("plugins", "--kind", "step")
    assert code == 0 and "prepare" in out
