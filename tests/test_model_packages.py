"""Model packages travel: a trained model carries its system (topology with includes inlined,
mapping, .mdp) with content hashes, applies byte-identically from any folder, depth, working
directory or archive, refuses files changed or outside it, and has a card that training writes and
evaluation keeps current. Older models are refused with the command that repackages them, which
works."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from conftest import HEXANE, REPO, run_cli

SPS_CG = REPO / "tests" / "data" / "sps"
CG = Path("backmap") / "aa_cg.trr"  # the held-out CG frames the run wrote

RECIPE = f"""\
name: hexane-template
seed: 3
workdir: work
system: {{topology: {HEXANE}/topol.top, mapping: {HEXANE}/hexane.xml}}
data: {{trajectory: {HEXANE}/traj.trr, frames: "0:8", split: {{test_fraction: 0.25, mode: tail}}}}
generator: {{plugin: template, params: {{kick: 0.004}}}}
steps:
  - prepare: {{}}
  - train: {{mdp: {HEXANE}/grompp.mdp, card: {{summary: "n-hexane, 300 K", temperature: 300}}}}
  - backmap: {{candidates: 2, gibbs_sweeps: 0}}
  - evaluate: {{workers: 1, metrics: [bonds, angles, cg_rmsd]}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A trained, applied and evaluated template model of hexane (the run's work directory)."""
    root = tmp_path_factory.mktemp("packaged")
    (root / "recipe.yaml").write_text(RECIPE)
    code, out, err = run_cli("run", root / "recipe.yaml", "--workdir", root / "work", catch_exceptions=False)
    assert code == 0, out + err
    return root / "work"


def _apply(model, out: Path, cg: Path) -> bytes:
    code, stdout, stderr = run_cli("apply", "--model", model, "--cg", cg, "--candidates", "2",
                                   "--gibbs", "0", "--seed", "5", "--out", out)
    assert code == 0, stdout + stderr
    return out.read_bytes()


def test_a_package_holds_its_system_with_hashes(run):
    model = run / "model"
    description = json.loads((model / "model.json").read_text())
    system = description["system"]
    assert system["topology"] == "system/topol.top" and system["mapping"] == ["system/hexane.xml"]
    assert system["mdp"] == "system/grompp.mdp"
    assert sorted(system["files"]) == ["system/grompp.mdp", "system/hexane.xml", "system/topol.top"]
    top = (model / "system" / "topol.top").read_text()
    # OPLS-AA from GROMACS's library is inlined: no include is left to resolve on another machine
    assert "#include" not in top.replace("; >>> backmap: #include", "")
    assert "[ atomtypes ]" in top and "opls_135" in top
    assert str(Path.home()) not in top and "/usr/share" not in top  # no folder of this machine in the bytes


def test_a_copied_model_applies_byte_identically_from_any_depth_folder_and_archive(run, tmp_path, monkeypatch):
    monkeypatch.setenv("BACKMAP_CACHE", str(tmp_path / "cache"))
    reference = _apply(run / "model", tmp_path / "ref.xtc", run / CG)
    deep = tmp_path / "a" / "b" / "c" / "d" / "moved"
    shutil.copytree(run / "model", deep)
    shallow = tmp_path / "m"
    shutil.copytree(run / "model", shallow)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # another working directory, and a relative --model
    assert _apply(Path("..") / "a" / "b" / "c" / "d" / "moved", tmp_path / "deep.xtc", run / CG) == reference
    assert _apply(shallow, tmp_path / "shallow.xtc", run / CG) == reference
    code, out, err = run_cli("export-model", run, "--out", tmp_path / "hexane.bmz")
    assert code == 0, out + err
    assert _apply(tmp_path / "hexane.bmz", tmp_path / "archived.xtc", run / CG) == reference
    # the archive's bytes depend on the content only (same model, same archive)
    code, out, err = run_cli("export-model", deep, "--out", tmp_path / "again.bmz")
    assert code == 0, out + err
    assert (tmp_path / "again.bmz").read_bytes() == (tmp_path / "hexane.bmz").read_bytes()
    code, out, err = run_cli("export-model", tmp_path / "hexane.bmz", "--out", tmp_path / "unpacked")
    assert code == 0, out + err
    assert _apply(tmp_path / "unpacked", tmp_path / "unpacked.xtc", run / CG) == reference


def test_changed_missing_or_outside_files_are_refused(run, tmp_path):
    def refused(folder: Path) -> str:
        code, out, err = run_cli("apply", "--model", folder, "--cg", run / CG, "--frames", "0",
                                 "--out", tmp_path / f"{folder.name}.gro")
        assert code == 2, out + err
        assert not (tmp_path / f"{folder.name}.gro").exists()
        return err

    changed = tmp_path / "changed"
    shutil.copytree(run / "model", changed)
    with open(changed / "system" / "topol.top", "a") as fh:
        fh.write("; edited\n")
    assert "system/topol.top was changed after the model was made" in refused(changed)

    lacking = tmp_path / "lacking"
    shutil.copytree(run / "model", lacking)
    shutil.rmtree(lacking / "system")
    assert "lacks system/" in refused(lacking)

    outside = tmp_path / "outside"
    shutil.copytree(run / "model", outside)
    d = json.loads((outside / "model.json").read_text())
    d["system"]["files"]["../hexane.xml"] = d["system"]["files"].pop("system/hexane.xml")
    d["system"]["mapping"] = ["../hexane.xml"]
    shutil.copy(HEXANE / "hexane.xml", tmp_path / "hexane.xml")
    (outside / "model.json").write_text(json.dumps(d))
    assert "outside its package" in refused(outside)

    weights = tmp_path / "weights"
    shutil.copytree(run / "model", weights)
    data = bytearray((weights / "weights.safetensors").read_bytes())
    data[-1] ^= 1
    (weights / "weights.safetensors").write_bytes(bytes(data))
    assert "weights.safetensors was changed" in refused(weights)


def test_an_archive_that_would_write_outside_its_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKMAP_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "evil.bmz"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("model.json", "{}")
        zf.writestr("../../escaped.txt", "x")
    code, out, err = run_cli("models", "show", bad)
    assert code == 2 and "would be written outside the package" in err, out + err
    assert not (tmp_path / "escaped.txt").exists() and not list((tmp_path / "cache").rglob("escaped.txt"))


def test_an_older_model_is_refused_with_the_command_that_repackages_it(run, tmp_path):
    """A format-1 model (system as paths relative to its folder, here leading outside it) is not
    loaded; the message names convert-model, which reads the files once and makes a package that
    applies exactly as the original."""
    old = tmp_path / "deep" / "old"
    shutil.copytree(run / "model", old)
    shutil.rmtree(old / "system")
    for f in ("card.json", "README.md"):
        (old / f).unlink()
    d = json.loads((old / "model.json").read_text())
    d["format"] = 1
    d.pop("weights")
    import os

    d["system"] = {"topology": os.path.relpath(HEXANE / "topol.top", old),
                   "mapping": [os.path.relpath(HEXANE / "hexane.xml", old)], "molecules": d["system"]["molecules"]}
    (old / "model.json").write_text(json.dumps(d))
    code, out, err = run_cli("apply", "--model", old, "--cg", run / CG, "--frames", "0",
                             "--out", tmp_path / "x.gro")
    assert code == 2 and f"backmap convert-model {old} --out" in err, out + err
    code, out, err = run_cli("convert-model", old, "--out", tmp_path / "new")
    assert code == 0, out + err
    assert _apply(tmp_path / "new", tmp_path / "new.xtc", run / CG) == _apply(run / "model", tmp_path / "ref.xtc", run / CG)
    # moved away from its files, it names the option that supplies them
    moved = tmp_path / "moved_old"
    shutil.copytree(old, moved / "x" / "y")
    code, out, err = run_cli("convert-model", moved / "x" / "y", "--out", tmp_path / "new2")
    assert code == 2 and "--topology" in err, out + err
    code, out, err = run_cli("convert-model", moved / "x" / "y", "--out", tmp_path / "new2",
                             "--topology", HEXANE / "topol.top", "--mapping", HEXANE / "hexane.xml")
    assert code == 0, out + err


def test_the_card_is_written_at_training_and_kept_by_evaluate(run, tmp_path):
    card = json.loads((run / "model" / "card.json").read_text())
    assert card["summary"] == "n-hexane, 300 K" and card["training"]["temperature (K)"] == 300
    assert card["training"]["frames"] == 6 and card["training"]["data"][0]["file"] == "traj.trr"
    assert len(card["training"]["data"][0]["sha256"]) == 64 and card["training"]["hardware"]["cores"] >= 1
    assert card["generator"]["plugin"] == "template" and len(card["system"]["fingerprint"]) == 64
    # the run's evaluate step recorded its result
    (entry,) = card["evaluations"]
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert entry["mean JSD"]["backmap"] == pytest.approx(metrics["summary"]["mean_jsd_headline"]["candidates"]["backmap"],
                                                         abs=1e-5)
    assert entry["noise floor"] >= 0 and entry["per observable (JSD)"]
    assert entry["command"] == "backmap run recipe.yaml"

    # evaluate --model-card on a copy records a second reference set and replaces it when re-run
    model = tmp_path / "model"
    shutil.copytree(run / "model", model)
    reference = HEXANE / "traj.xtc"  # other reference data than the run's held-out frames
    args = ["evaluate", "--topology", HEXANE / "topol.top", "--reference", reference, run / "backmap" / "aa.xtc",
            "--out", tmp_path / "ev", "--metrics", "bonds,angles", "--workers", "1", "--label", "alone", "--model-card", model]
    for _ in range(2):
        code, out, err = run_cli(*args)
        assert code == 0, out + err
    card = json.loads((model / "card.json").read_text())
    assert [list(e["mean JSD"]) for e in card["evaluations"]] == [["backmap"], ["alone"]]
    code, shown, err = run_cli("models", "show", model)
    assert code == 0, err
    assert shown.startswith("# hexane-template") and "| **mean (headline)** |" in shown and "traj.xtc" in shown
    assert (model / "README.md").read_text().strip() == shown.strip()


def test_flattening_a_topology_resolves_includes_as_grompp(tmp_path):
    from backmap import BackmapError
    from backmap.engine.model_system import flatten_topology

    (tmp_path / "ff").mkdir()
    (tmp_path / "ff" / "forcefield.itp").write_text('[ defaults ]\n1 2 no 1.0 1.0\n#include "nb.itp"\n')
    (tmp_path / "ff" / "nb.itp").write_text("[ atomtypes ]\nC 12.011 0 A 0.3 0.4\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "water.itp").write_text("; water from the library\n")
    top = tmp_path / "topol.top"
    top.write_text('#include "ff/forcefield.itp"\n#include "water.itp"\n#ifdef POSRES\n#include "posre.itp"\n'
                   '#endif\n[ system ]\nx\n')
    flat = flatten_topology(top, [tmp_path / "lib"])
    assert "C 12.011 0 A 0.3 0.4" in flat and "; water from the library" in flat
    assert '; backmap: not found when the model was packaged (conditional): #include "posre.itp"' in flat
    assert flat.index("[ defaults ]") < flat.index("[ atomtypes ]") < flat.index("[ system ]")
    assert str(tmp_path) not in flat
    top.write_text('#include "missing.itp"\n')
    with pytest.raises(BackmapError, match=r"topol.top: line 1: #include \"missing.itp\" not found"):
        flatten_topology(top, [])
    top.write_text('#include "topol.top"\n')
    with pytest.raises(BackmapError, match="includes itself"):
        flatten_topology(top, [])


def test_shipped_sps_models_are_listed_shown_and_apply_from_anywhere(tmp_path, monkeypatch):
    """The done-when of the portable-models issue, in a checkout with nothing beside it: the three
    sPS models are registered; the equivariant one applies by name to the shipped sPS CG frames,
    and a copy of it at another depth, run from another working directory, writes the same bytes."""
    code, out, err = run_cli("models", "list", "--json")
    assert code == 0, err
    listed = {r["name"]: r for r in json.loads(out)}
    assert {"sps-equivariant", "sps-vae", "sps-voxel-gan"} <= set(listed)
    assert all("error" not in listed[n] for n in ("sps-equivariant", "sps-vae", "sps-voxel-gan")), listed
    code, shown, err = run_cli("models", "show", "sps-equivariant")
    assert code == 0, err
    assert "equivariant" in shown and "## Evaluations" in shown and "licence" in shown

    def apply(model, out: Path) -> bytes:
        code, stdout, stderr = run_cli("apply", "--model", model, "--cg", SPS_CG / "cg.gro", "--traj",
                                       SPS_CG / "cg.xtc", "--frames", "0", "--candidates", "2", "--out", out)
        assert code == 0, stdout + stderr
        return out.read_bytes()

    reference = apply("sps-equivariant", tmp_path / "by_name.gro")
    copy = tmp_path / "x" / "y" / "z" / "sps-equivariant"
    shutil.copytree(REPO / "models" / "sps-equivariant", copy)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert apply(copy, tmp_path / "copied.gro") == reference


def test_unknown_names_and_bad_exports_are_one_line_errors(run, tmp_path):
    code, out, err = run_cli("models", "show", "no-such-model")
    assert code == 2 and "no registered model of this name (see `backmap models list`)" in err, out + err
    code, out, err = run_cli("export-model", run, "--out", run / "model" / "inside.bmz")
    assert code == 2 and "inside the model being exported" in err and not (run / "model" / "inside.bmz").exists()
    (tmp_path / "taken").mkdir()
    code, out, err = run_cli("export-model", run, "--out", tmp_path / "taken")
    assert code == 2 and "exists already" in err
    (tmp_path / "junk.bmz").write_bytes(b"not a zip")
    code, out, err = run_cli("models", "show", tmp_path / "junk.bmz")
    assert code == 2 and "not a model archive" in err and "Traceback" not in err


def test_apply_never_writes_into_the_model_package(run, tmp_path):
    """(issue 60) apply's output and its sidecars (OUT.json, OUT.gro, OUT_cg.trr) would replace or
    join the package's files: refused, nothing written."""
    model = tmp_path / "model"
    shutil.copytree(run / "model", model)
    before = {p.name: p.read_bytes() for p in model.rglob("*") if p.is_file()}
    code, out, err = run_cli("apply", "--model", model, "--cg", run / CG, "--frames", "0", "--out", model / "model.xtc")
    assert code == 2 and "lies inside the model package" in err, out + err
    assert {p.name: p.read_bytes() for p in model.rglob("*") if p.is_file()} == before


def test_a_model_card_that_cannot_be_written_is_refused_before_evaluating(run, tmp_path):
    """--model-card naming an archive (its folder is the cache's) is refused before any work."""
    code, out, err = run_cli("export-model", run, "--out", tmp_path / "m.bmz")
    assert code == 0, err
    code, out, err = run_cli("evaluate", "--topology", HEXANE / "topol.top", "--reference", HEXANE / "traj.xtc",
                             run / "backmap" / "aa.xtc", "--out", tmp_path / "ev", "--metrics", "bonds",
                             "--model-card", tmp_path / "m.bmz")
    assert code == 2 and "not an archive" in err, out + err
    assert not (tmp_path / "ev").exists()
