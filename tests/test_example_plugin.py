"""The documented example plugin (docs/examples/backmap-toy-generator) really backmaps: installed
with pip into a fresh virtual environment, it is listed by ``backmap plugins``, trained, used to
backmap held-out hexane frames and evaluated, and the structures it makes are checked."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from conftest import HEXANE, REPO

EXAMPLE = REPO / "docs" / "examples" / "backmap-toy-generator"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # OMP_NUM_THREADS=1: building the training sequences (backmap/training/sequences.py) runs torch
    # with its default thread pool, which on a busy 2-core machine made the train step ~10x slower
    # (28 s instead of 2.7 s for 16 hexane frames); the sampler already pins one thread itself.
    env.update(BACKMAP_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    return env


def _run(python: Path, *args, cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd`` — never the repository, whose folder ``-m`` would put on sys.path."""
    return subprocess.run([str(python), *map(str, args)], cwd=cwd, env={**_env(), **(extra_env or {})},
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def toy_python(tmp_path_factory) -> Path:
    """The python of a new virtual environment with the example installed by pip. The project's
    installed dependencies (torch, …) and its editable install are made visible to it instead of
    being installed again."""
    root = tmp_path_factory.mktemp("toy_venv")
    venv = root / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a virtual environment on this machine: {made.stderr.strip()[-300:]}")
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root).stdout.strip())
    assert site.is_dir() and site.is_relative_to(venv), site
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))  # this interpreter's
    # site.addsitedir, not a bare path: backmap's editable install is itself a .pth (an import hook
    # for backmap/ and plugins/) that only a site directory's processing runs
    (site / "backmap_dev.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
    found = _run(python, "-c", "import backmap, backmap_steps; print(backmap.__file__, backmap_steps.__file__)", cwd=root)
    assert found.returncode == 0, found.stderr
    assert all(Path(f).is_relative_to(REPO) for f in found.stdout.split()), found.stdout
    assert _run(python, "-c", "import backmap_toy", cwd=root).returncode != 0, "the example is installed already"
    # a copy, so that the build's egg-info and build/ stay out of the repository; the new
    # environment has no pip of its own: the project's pip runs in it and installs into it
    source = root / "backmap-toy-generator"
    shutil.copytree(EXAMPLE, source)
    installed = _run(python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                     "--no-cache-dir", "--disable-pip-version-check", "--quiet", source, cwd=root)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (site / "backmap_toy" / "__init__.py").is_file(), "pip installed the example elsewhere"
    return python


RECIPE = """\
name: toy
seed: 1
workdir: work
system: {{topology: {hexane}/topol.top, mapping: {hexane}/hexane.xml}}
data: {{trajectory: {hexane}/traj.trr, frames: "0:10", split: {{test_fraction: 0.2, mode: tail}}}}
generator: {{plugin: toy_mean_offset, params: {{noise: 0.0}}}}
steps:
  - prepare: {{}}
  - train: {{}}
  - backmap: {{candidates: 2, gibbs_sweeps: 0}}
  - evaluate: {{workers: 1}}
"""


def test_example_plugin_installs_trains_backmaps_and_evaluates(toy_python, tmp_path):
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.system.io import read_frames, trajectory_info
    from backmap.system.pbc import Unwrapper, minimum_image

    listed = _run(toy_python, "-m", "backmap.cli", "plugins", "--kind", "generator", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split()[:5] for line in listed.stdout.splitlines()]
    assert ["generator", "toy_mean_offset", "backmap-toy-generator", "0.3.0", "backmap_toy"] in rows, listed.stdout

    # its parameters are validated by its own pydantic model, with the recipe key in the message
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.format(hexane=HEXANE).replace("noise: 0.0", "noise: -1"))
    checked = _run(toy_python, "-m", "backmap.cli", "check", bad, cwd=tmp_path)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert checked.stderr.strip().startswith("error: bad.yaml: generator.params.noise: input should be greater than")

    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE.format(hexane=HEXANE))
    ran = _run(toy_python, "-m", "backmap.cli", "run", recipe, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    work = tmp_path / "work"
    assert "backmap-toy-generator" in (work / "run.json").read_text()
    model = json.loads((work / "model" / "model.json").read_text())
    assert model["plugin"] == "toy_mean_offset" and model["environment"]["unit"] == "bead"
    # three kinds of bead: A1, B and A2 — the end beads share type A but list their atoms in
    # opposite orders (A1 from its CH3, A2 from the CH2 next to B), so they are learnt apart
    assert len(model["state"]["means"]) == 3
    out = {k.split(".", 1)[1]: work / v["path"] for k, v in json.loads((work / "outputs.json").read_text()).items()
           if k.startswith("backmap.")}

    topology = load_topology(HEXANE / "topol.top")
    cg_top = load_mapping(HEXANE / "hexane.xml", topology).cg_topology(topology)
    assert trajectory_info(out["aa"]) == (topology.n_atoms, 2)  # the two held-out frames of 0:10
    assert trajectory_info(out["structure"])[0] == topology.n_atoms
    metrics = json.loads((work / "evaluate" / "metrics.json").read_text())
    jsd = metrics["summary"]["mean_jsd_headline"]["candidates"]["backmap"]
    assert math.isfinite(jsd) and jsd >= 0

    block = topology.blocks[0]
    bonds = block.moltype.bonds
    cc = block.global_rows(bonds[(block.moltype.elements[bonds] == "C").all(1)])

    def cc_lengths(path: Path) -> np.ndarray:
        return np.concatenate([np.linalg.norm(minimum_image(f.positions[cc[:, 1]] - f.positions[cc[:, 0]],
                                                            f.dimensions), axis=1)
                               for f in read_frames(path, topology.n_atoms)])

    made, reference = cc_lengths(out["aa"]), cc_lengths(out["reference"])
    assert reference.mean() == pytest.approx(0.153, abs=0.002)
    # A Cartesian mean of positions shortens bonds whose direction fluctuates in the bead's frame:
    # measured 0.119 nm within beads, 0.135 nm between beads, 0.126 nm on average (8 and 16
    # training frames alike) against the reference's 0.1537. 0.035 nm leaves 0.008 nm of margin
    # yet fails a generator that averages hexane's two end beads atom by atom (0.102 nm, with
    # C–C pairs 0.001 nm apart) or puts the atoms on their bead (≈ 0.10 nm).
    assert made.mean() == pytest.approx(reference.mean(), abs=0.035)
    assert made.min() > 0.07  # measured ≥ 0.097 nm: no bonded carbons on top of each other

    # The mean of local positions measured from the bead centre keeps the mapped centre on the
    # bead: measured at most 0.0014 nm off, the rounding of two .xtc files (0.001 nm); the
    # reference maps onto the CG frames to 0.0012 nm.
    unwrap = Unwrapper(topology)
    for aa, cg in zip(read_frames(out["aa"], topology.n_atoms), read_frames(out["cg"], cg_top.n_beads), strict=True):
        mapped = cg_top.apply(unwrap(aa.positions, aa.dimensions))
        assert np.linalg.norm(minimum_image(mapped - cg.positions, cg.dimensions), axis=1).max() < 0.003

    # a model without the mean of a bead kind refuses that bead clearly (exit code 2, one line)
    broken = tmp_path / "broken_model"
    shutil.copytree(work / "model", broken)
    model["state"]["means"].pop(sorted(model["state"]["means"])[0])
    (broken / "model.json").write_text(json.dumps(model))
    applied = _run(toy_python, "-m", "backmap.cli", "apply", "--model", broken, "--cg", out["cg"], "--out",
                   tmp_path / "refused.gro", "--frames", "0", "--candidates", "1", "--gibbs", "0", cwd=tmp_path)
    assert applied.returncode == 2, applied.stdout + applied.stderr
    assert "toy_mean_offset: no mean for a bead of type channel 0" in applied.stderr


def test_a_model_pack_installed_with_pip_is_listed_and_applies_by_name(toy_python, tmp_path):
    """A model pack (docs/examples/backmap-example-models) with a freshly trained model exported
    into it, installed from a local folder with pip: ``backmap models list`` shows it and
    ``--model NAME`` applies it, writing what the model folder itself writes."""
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE.format(hexane=HEXANE))
    ran = _run(toy_python, "-m", "backmap.cli", "run", recipe, "--steps", "prepare,train,backmap", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    work = tmp_path / "work"
    pack = tmp_path / "pack"
    shutil.copytree(REPO / "docs" / "examples" / "backmap-example-models", pack)
    exported = _run(toy_python, "-m", "backmap.cli", "export-model", work, "--out",
                    pack / "backmap_example_models" / "hexane-toy.bmz", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    installed = _run(toy_python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                     "--no-cache-dir", "--disable-pip-version-check", "--quiet", pack, cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    listed = _run(toy_python, "-m", "backmap.cli", "models", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["hexane-toy"]["pack"] == "example" and rows["hexane-toy"]["package"] == "backmap-example-models"
    assert rows["hexane-toy"]["generator"] == "toy_mean_offset" and "sps-equivariant" in rows
    outputs = {}
    for model in ("hexane-toy", work / "model"):
        out = tmp_path / f"{Path(model).name}.xtc"
        applied = _run(toy_python, "-m", "backmap.cli", "apply", "--model", model, "--cg",
                       work / "backmap" / "aa_cg.trr", "--out", out, "--candidates", "2", "--gibbs", "0",
                       cwd=tmp_path, extra_env={"BACKMAP_CACHE": str(tmp_path / "cache")})
        assert applied.returncode == 0, applied.stdout + applied.stderr
        outputs[str(model)] = out.read_bytes()
    assert len(set(outputs.values())) == 1
    shown = _run(toy_python, "-m", "backmap.cli", "models", "show", "hexane-toy", cwd=tmp_path,
                 extra_env={"BACKMAP_CACHE": str(tmp_path / "cache")})
    assert shown.returncode == 0 and shown.stdout.startswith("# toy"), shown.stdout + shown.stderr


def test_a_move_plugin_installed_with_pip_moves_every_frame(toy_python, tmp_path):
    """The documented move plugin (docs/examples/backmap-example-move, docs/moves.md), installed
    with pip: listed as a move, chosen with ``--move NAME:KEY=VALUE``, made on every frame (each
    molecule's centre wrapped into the cell: the frames differ from the unmoved ones by whole box
    vectors per molecule), and reported."""
    from backmap.engine.loaders import load_topology
    from backmap.system.io import read_frames
    from backmap.system.pbc import box_vectors

    source = tmp_path / "backmap-example-move"
    shutil.copytree(REPO / "docs" / "examples" / "backmap-example-move", source)
    installed = _run(toy_python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                     "--no-cache-dir", "--disable-pip-version-check", "--quiet", source, cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    listed = _run(toy_python, "-m", "backmap.cli", "plugins", "--kind", "move", cwd=tmp_path)
    assert ["move", "wrap_molecules", "backmap-example-move"] in [r.split()[:3] for r in listed.stdout.splitlines()]
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE.format(hexane=HEXANE))
    ran = _run(toy_python, "-m", "backmap.cli", "run", recipe, "--steps", "prepare,train,backmap", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    cg = tmp_path / "work" / "backmap" / "aa_cg.trr"
    common = ["--model", tmp_path / "work" / "model", "--cg", cg, "--candidates", "2", "--gibbs", "0"]
    plain = _run(toy_python, "-m", "backmap.cli", "apply", *common, "--out", tmp_path / "plain.trr", cwd=tmp_path)
    moved = _run(toy_python, "-m", "backmap.cli", "apply", *common, "--out", tmp_path / "moved.trr",
                 "--move", "wrap_molecules:origin=-0.5", cwd=tmp_path)
    assert plain.returncode == 0 and moved.returncode == 0, plain.stderr + moved.stderr
    assert "move wrap_molecules: molecules_shifted" in moved.stdout
    topology = load_topology(HEXANE / "topol.top")
    molecule = topology.molecule_index
    for a, b in zip(read_frames(tmp_path / "plain.trr", topology.n_atoms),
                    read_frames(tmp_path / "moved.trr", topology.n_atoms), strict=True):
        vectors = box_vectors(b.dimensions).reshape(3, 3)
        n = (b.positions - a.positions) @ np.linalg.inv(vectors)  # whole cells, the same for a molecule's atoms
        assert np.allclose(n, np.round(n), atol=1e-4)
        assert all(np.ptp(n[molecule == m], axis=0).max() < 1e-4 for m in np.unique(molecule))
        centres = np.stack([np.bincount(molecule, b.positions[:, k]) for k in range(3)], 1) / np.bincount(molecule)[:, None]
        fractional = centres @ np.linalg.inv(vectors)
        assert (fractional >= -0.5 - 1e-5).all() and (fractional < 0.5 + 1e-5).all()
    bad = _run(toy_python, "-m", "backmap.cli", "apply", *common, "--out", tmp_path / "bad.trr",
               "--move", "wrap_molecules:oirgin=1", cwd=tmp_path)
    assert bad.returncode == 2 and "moves (wrap_molecules)" in bad.stderr and "oirgin" in bad.stderr, bad.stderr
