"""Hardening of files: non-finite coordinates, outputs that would overwrite inputs, corrupt pair
caches, temporaries of killed runs, reproducible model files (docs/errors.md, "Files: …")."""
from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from backmap.errors import BackmapError
from backmap.system.io import _HOST, atomic_path, read_frames, write_frames

from conftest import HEXANE, one_line_error

NAN_FRAME, NAN_ATOM = 3, 16  # 0-based: reported as "frame 3: atom 17"


def _nan_copy(src: Path, dst: Path) -> Path:
    """``src`` with one NaN coordinate, written by MDAnalysis itself (which stores NaN in .trr
    without complaint; backmap's own writer refuses it)."""
    import MDAnalysis as mda

    reader = mda.coordinates.core.reader(str(src))
    u = mda.Universe.empty(reader.n_atoms, trajectory=True)
    with mda.Writer(str(dst), n_atoms=reader.n_atoms) as w:
        for ts in reader:
            x = ts.positions.copy()
            if ts.frame == NAN_FRAME:
                x[NAN_ATOM, 1] = np.nan
            u.atoms.positions, u.dimensions = x, ts.dimensions
            w.write(u.atoms)
    reader.close()
    return dst


def _recipe(tmp_path: Path, name: str, trajectory: Path, steps: str, extra: str = "") -> Path:
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: {name}
        seed: 2
        workdir: {name}
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {trajectory}, frames: '0:5', split: {{test_fraction: 0.2, mode: tail}}}}
        steps: {steps}
        {extra}"""))
    return recipe


@pytest.fixture(scope="module")
def template_run(tmp_path_factory) -> Path:
    """A template model trained on hexane and backmapped once (its ``backmap/aa_cg.trr`` is CG input)."""
    from click.testing import CliRunner

    from backmap.cli import cli as app

    tmp = tmp_path_factory.mktemp("hardening")
    recipe = _recipe(tmp, "tpl", HEXANE / "traj.xtc",
                     "[{prepare: {}}, {train: {}}, {backmap: {candidates: 2, gibbs_sweeps: 1}}]",
                     "generator: {plugin: template}")
    r = CliRunner().invoke(app, ["run", str(recipe)])
    assert r.exit_code == 0, r.output
    return tmp / "tpl"


# --------------------------------------------------------------------------- 1. NaN / inf
NAN_COMMANDS = ["map", "apply --cg", "energy --traj", "evaluate --reference", "prepare", "prepare (pairs folder)"]


@pytest.mark.parametrize("command", NAN_COMMANDS)
def test_non_finite_coordinates_are_one_line_errors_everywhere(cli, tmp_path, request, command):
    """Issue item 1: "NaN/inf coordinates are never checked. `backmap map` on a `.trr` with one NaN
    atom exits 0 and writes an `.xtc` that makes MDAnalysis and `backmap apply` die with SIGFPE;
    `prepare`/`train` fail with `numpy.linalg.LinAlgError: SVD did not converge` and cache NaN
    training pairs; `apply`, `energy`, `evaluate` give a `ValueError` traceback." """
    out, frame = tmp_path / "out" / "result.xtc", NAN_FRAME
    if command == "apply --cg":
        run = request.getfixturevalue("template_run")
        code, _, err = cli("map", "--topology", HEXANE / "topol.top", "--traj", HEXANE / "traj.trr",
                           "--mapping", HEXANE / "hexane.xml", "--out", tmp_path / "cg.trr", "--frames", "0:5")
        assert code == 0, err
        bad = _nan_copy(tmp_path / "cg.trr", tmp_path / "cg_nan.trr")
        args = ["apply", "--model", run, "--cg", bad, "--out", out]
    elif command == "prepare (pairs folder)":  # a .gro snapshot with `nan` as text
        lines = (HEXANE / "conf.gro").read_text().splitlines(keepends=True)
        lines[2 + NAN_ATOM] = lines[2 + NAN_ATOM][:28] + "     nan" + lines[2 + NAN_ATOM][36:]
        for sub in ("aa", "cg"):
            (tmp_path / "snapshots" / sub).mkdir(parents=True)
        bad, frame = tmp_path / "snapshots" / "aa" / "0.gro", 0
        bad.write_text("".join(lines))
        (tmp_path / "snapshots" / "cg" / "0.gro").write_text("read after aa/0.gro\n")
        recipe = _recipe(tmp_path, "nan", HEXANE / "traj.trr", "[{prepare: {}}]")
        recipe.write_text(recipe.read_text().replace(f"trajectory: {HEXANE / 'traj.trr'}, frames: '0:5', split: "
                                                     "{test_fraction: 0.2, mode: tail}", f"pairs: {bad.parent.parent}"))
        args = ["run", recipe]
    else:
        bad = _nan_copy(HEXANE / "traj.trr", tmp_path / "nan.trr")
        top, mapping = HEXANE / "topol.top", HEXANE / "hexane.xml"
        args = {
            "map": ["map", "--topology", top, "--traj", bad, "--mapping", mapping, "--out", out],
            "energy --traj": ["energy", "--topology", top, "--traj", bad, "--frames", "0:5"],
            "evaluate --reference": ["evaluate", "--topology", top, "--reference", bad, HEXANE / "traj.trr",
                                     "--out", tmp_path / "out", "--frames", "0:5", "--workers", "1",
                                     "--metrics", "bonds"],
            "prepare": ["run", _recipe(tmp_path, "nan", bad, "[{prepare: {}}]")],
        }[command]
    code, _, err = cli(*args)
    line = one_line_error(code, err)
    assert line.startswith(f"error: {bad}: frame {frame}: atom {NAN_ATOM + 1}"), line
    assert "has a non-finite coordinate (nan)" in line
    assert not out.exists() and not list(tmp_path.glob("nan/pairs/*.npz"))  # no output, no NaN pairs cached


def test_prepare_names_the_bad_atom(tmp_path, hexane_topology):
    """Issue item 1: "raise `BackmapError` naming the file, the frame and the first bad atom
    (1-based, with its name if known)"."""
    bad = _nan_copy(HEXANE / "traj.trr", tmp_path / "nan.trr")
    with pytest.raises(BackmapError) as exc:
        list(read_frames(bad, frames=[NAN_FRAME], names=hexane_topology.atom_names))
    assert str(exc.value) == (f"{bad}: frame {NAN_FRAME}: atom {NAN_ATOM + 1} "
                              f"({hexane_topology.atom_names[NAN_ATOM]}) has a non-finite coordinate (nan)")


@pytest.mark.parametrize("what", ["position", "box"])
def test_write_frames_refuses_non_finite_values_and_writes_nothing(tmp_path, what):
    """Issue item 1: "Writing: `write_frames` refuses non-finite positions too (naming the output
    and frame) — nothing half-written (atomic)." """
    frames = list(read_frames(HEXANE / "traj.trr", frames=[0, 1, 2]))
    if what == "position":
        frames[1].positions[NAN_ATOM, 2] = np.inf
    else:
        frames[1].dimensions[0] = np.nan
    n = len(frames[0].positions)
    out = tmp_path / "out.xtc"
    with pytest.raises(BackmapError) as exc:
        write_frames(out, frames, ["C"] * n, ["HEX"] * n, np.arange(n) // 20 + 1)
    expected = f"atom {NAN_ATOM + 1} (C) has a non-finite coordinate (inf)" if what == "position" else "the box"
    assert str(exc.value).startswith(f"{out}: frame 1: {expected}")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 2. output = input
def _overwrite_args(command: str, victim: Path, tmp_path: Path) -> list:
    top, mapping = HEXANE / "topol.top", HEXANE / "hexane.xml"
    return {
        "map": ["map", "--topology", top, "--traj", victim, "--mapping", mapping, "--out", victim],
        "map (hard link)": ["map", "--topology", top, "--traj", victim, "--mapping", mapping,
                            "--out", tmp_path / "link.trr"],
        "refine": ["refine", "--topology", top, "--mapping", mapping, "--cg", HEXANE / "conf.gro",
                   "--traj", victim, "--out", victim],
        "evaluate": ["evaluate", "--topology", top, "--reference", victim, HEXANE / "traj.xtc", "--out", victim],
    }[command]


@pytest.mark.parametrize("command", ["map", "map (hard link)", "refine", "evaluate"])
def test_output_equal_to_input_is_refused_and_nothing_touched(cli, tmp_path, command):
    """Issue item 2: "Output equal to input destroys the input: `backmap map --traj X --out X`
    silently replaces the trajectory." Also `refine --traj X --out X` and `evaluate --out` equal to
    a trajectory."""
    victim = tmp_path / "traj.trr"
    victim.write_bytes((HEXANE / "traj.trr").read_bytes())
    os.link(victim, tmp_path / "link.trr")
    before = sorted(tmp_path.iterdir())
    code, _, err = cli(*_overwrite_args(command, victim, tmp_path))
    line = one_line_error(code, err)
    assert "is the same file as an input" in line
    assert victim.read_bytes() == (HEXANE / "traj.trr").read_bytes() and sorted(tmp_path.iterdir()) == before


# --------------------------------------------------------------------------- 3. corrupt pair cache
def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"not a zip file")
    else:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        if how == "altered":
            arrays["aa"] = arrays["aa"] + np.float32(0.01)  # the stored hash no longer matches
        else:  # "no hash": as written before the hash was stored
            del arrays["digest"]
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)


@pytest.mark.parametrize("how", ["truncated", "garbage", "altered", "no hash"])
def test_corrupt_pairs_cache_is_rebuilt_with_a_note(cli, tmp_path, how):
    """Issue item 3: "Corrupt pairs cache: a corrupt `pairs/pairs-<hash>.npz` gives `BadZipFile`;
    the cache is trusted until `steps.prepare.cache=false`." """
    from backmap.system.pairs import PairSet

    recipe = _recipe(tmp_path, "p", HEXANE / "traj.xtc", "[{prepare: {}}]")
    code, _, err = cli("run", recipe)
    assert code == 0, err
    (cache,) = (tmp_path / "p" / "pairs").glob("pairs-*.npz")
    good = PairSet.load(cache)
    _corrupt(cache, how)
    code, _, err = cli("run", recipe)
    assert code == 0, err
    notes = [line for line in err.splitlines() if "rebuilding cached pairs" in line]
    assert len(notes) == 1 and cache.name in notes[0], err
    rebuilt = PairSet.load(cache)
    assert np.array_equal(rebuilt.aa, good.aa) and rebuilt.digest() == good.digest()
    code, _, err = cli("run", recipe)  # and the rebuilt file is trusted again
    assert code == 0 and "reusing cached pairs" in err and "rebuilding" not in err


# --------------------------------------------------------------------------- 4. killed runs
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    """Issue item 4: "kill -9 during `apply` leaves hidden partial `.aa.XXXX.xtc` files (mode 0600)
    in the output folder forever." """
    target = tmp_path / "aa.xtc"
    stale = tmp_path / f".aa.xtc.backmap-tmp-{_dead_pid()}@{_HOST}-x1y2.xtc"
    live = tmp_path / f".aa.xtc.backmap-tmp-{os.getpid()}@{_HOST}-x3y4.xtc"
    other_host = tmp_path / f".aa.xtc.backmap-tmp-{_dead_pid()}@00000000-x5y6.xtc"
    other_target = tmp_path / f".aa.gro.backmap-tmp-{_dead_pid()}@{_HOST}-x7y8.gro"
    for f in (stale, live, other_host, other_target):
        f.write_bytes(b"partial")
    with atomic_path(target) as tmp:
        assert tmp.name.startswith(f".aa.xtc.backmap-tmp-{os.getpid()}@{_HOST}-") and tmp.suffix == ".xtc"
        tmp.write_bytes(b"complete")
    assert target.read_bytes() == b"complete"
    assert not stale.exists() and live.exists() and other_host.exists() and other_target.exists()


# --------------------------------------------------------------------------- 5. reproducible models
def test_saving_the_same_generator_twice_gives_identical_files(template_run, tmp_path):
    """Issue item 5: "Identical training runs write model files that differ byte for byte
    (weights identical)." """
    from backmap.engine.models import load_model, save_model

    model = load_model(template_run)
    generator = model.generator
    inner = generator.state_dict()
    generator.state_dict = lambda: {"templates": inner, "w": torch.arange(6.0).reshape(2, 3),
                                    "b": np.ones(3, np.int64)}
    cg_top = None
    for i, folder in enumerate((tmp_path / "a", tmp_path / "b")):
        if i:
            time.sleep(1.05)  # a timestamp with seconds would now differ
        save_model(folder, generator, model.channels, HEXANE / "topol.top", [HEXANE / "hexane.xml"], cg_top,
                   seed=2, elements={"C", "H", "N", "O"})
    for name in ("model.json", "weights.safetensors"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name


def test_a_truncated_gro_trajectory_is_one_line(tmp_path, cli):
    """Item 8: a truncated `.gro` gives `cannot access local variable 'unitcell'` — also where it is
    read as a trajectory (map, apply, refine, evaluate all read through backmap.system.io)."""
    cut = tmp_path / "cut.gro"
    cut.write_text("\n".join((HEXANE / "conf.gro").read_text().splitlines()[:50]) + "\n")
    code, _, err = cli("map", "--topology", HEXANE / "topol.top", "--traj", cut, "--mapping", HEXANE / "hexane.xml",
                       "--out", tmp_path / "cg.xtc")
    assert code == 2 and "cut.gro" in err and "truncated" in err and "unitcell" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "cg.xtc").exists()
