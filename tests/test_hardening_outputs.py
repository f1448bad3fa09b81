"""Outputs that would destroy an input, and two runs on one output or work folder: every file a
command writes (sidecars included) is checked against every input before anything is written, and
the output (or the run folder) is locked for the run (backmap.system.claim, docs/errors.md)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backmap.system.claim import OutputLock, check_outputs
from backmap.errors import BackmapError

from conftest import HEXANE, one_line_error, run_cli

BACKMAP = str(Path(sys.executable).parent / "backmap")


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes, but MDAnalysis' offset caches
    (``.NAME_offsets.npz``, written by reading an .xtc/.trr)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "_offsets." not in p.name}


def _cg_gro(tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    code, _, err = run_cli("map", "--topology", HEXANE / "topol.top", "--traj", HEXANE / "conf.gro",
                           "--mapping", HEXANE / "hexane.xml", "--out", out)
    assert code == 0, err
    return out


def _apply(model: Path, cg: Path, out: Path, *extra) -> list:
    return ["apply", "--model", model / "model", "--cg", cg, "--candidates", "2", "--gibbs", "0", "--out", out, *extra]


@pytest.mark.parametrize("case", ["structure beside --out", "CG frames beside --out", "inside the model"])
def test_apply_refuses_a_sidecar_that_is_an_input(template_model, tmp_path, case):
    """``apply --cg mycg.gro --out mycg.xtc`` would write the first frame onto mycg.gro,
    ``--cg run_cg.trr --out run.xtc`` the CG frames onto run_cg.trr, ``--out MODEL/model.xtc`` the
    provenance onto the model's model.json: refused, naming both files, nothing written."""
    model = template_model
    if case == "structure beside --out":
        cg, out, victim = (c := _cg_gro(tmp_path, "mycg.gro")), tmp_path / "mycg.xtc", c
    elif case == "CG frames beside --out":
        cg = tmp_path / "run_cg.trr"
        cg.write_bytes((model / "backmap" / "aa_cg.trr").read_bytes())
        out, victim = tmp_path / "run.xtc", cg
    else:
        cg, out, victim = model / "backmap" / "aa_cg.trr", model / "model" / "model.xtc", model / "model"
    before, model_before = _snapshot(tmp_path), _snapshot(model)
    code, _, err = run_cli(*_apply(model, cg, out))
    line = one_line_error(code, err)
    assert victim.name in line and ("same file as an input" in line or "lies inside the model package" in line), line
    assert _snapshot(tmp_path) == before and _snapshot(model) == model_before


def test_energy_forces_out_onto_its_trajectory_is_refused(tmp_path):
    traj = tmp_path / "traj.trr"
    traj.write_bytes((HEXANE / "traj.trr").read_bytes())
    code, _, err = run_cli("energy", "--topology", HEXANE / "topol.top", "--traj", traj, "--mapping",
                           HEXANE / "hexane.xml", "--frames", "0:2", "--forces-out", traj)
    line = one_line_error(code, err)
    assert "--forces-out" in line and "same file as an input (--traj" in line
    assert traj.read_bytes() == (HEXANE / "traj.trr").read_bytes()


@pytest.mark.parametrize("target", ["/dev/null", "folder"])
def test_a_device_file_or_folder_as_out_is_refused(tmp_path, target):
    """Writing by rename would replace the device file (or fail inside a folder's place)."""
    out = Path(target) if target.startswith("/") else tmp_path / "aa.xtc"
    if target == "folder":
        out.mkdir()
    code, _, err = run_cli("map", "--topology", HEXANE / "topol.top", "--traj", HEXANE / "conf.gro",
                           "--mapping", HEXANE / "hexane.xml", "--out", out)
    line = one_line_error(code, err)
    assert ("a device file" if target.startswith("/") else "a folder") in line and str(out) in line
    assert Path("/dev/null").is_char_device()


def test_check_refuses_a_recipe_step_writing_onto_its_own_data(tmp_path):
    """``steps.map.out`` pointing at the recipe's ``data.trajectory``: ``backmap check`` says so."""
    data = tmp_path / "work" / "cg" / "traj.xtc"
    data.parent.mkdir(parents=True)
    data.write_bytes((HEXANE / "traj.xtc").read_bytes())
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: clobber
        workdir: work
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {data}}}
        steps: [{{map: {{out: cg/traj.xtc}}}}]
        """))
    code, _, err = run_cli("check", recipe)
    assert code != 0 and "steps.map.out: writes" in err and "data.trajectory" in err, err
    assert data.read_bytes() == (HEXANE / "traj.xtc").read_bytes()


def test_check_outputs_names_links_and_outputs_that_collide(tmp_path):
    src = tmp_path / "in.gro"
    src.write_text("x")
    (tmp_path / "link.gro").symlink_to(src)
    os.link(src, tmp_path / "hard.gro")
    for out in ("link.gro", "hard.gro"):
        with pytest.raises(BackmapError, match=r"same file as an input \(--cg .*in.gro\)"):
            check_outputs([("--out", tmp_path / out)], [("--cg", src)])
    with pytest.raises(BackmapError, match="would both be"):
        check_outputs([("--out", tmp_path / "a.gro"), ("the structure", tmp_path / "a.gro")], [])
    check_outputs([("--out", tmp_path / "new.gro")], [("--cg", src), ("--mdp", None)])  # nothing to say


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), "the first run never took its lock"


def test_a_second_apply_on_one_out_is_refused_and_a_killed_first_does_not_block(template_model, tmp_path):
    """The first `backmap apply` is frozen (SIGSTOP) while it holds its output: a second one on the
    same --out is refused in one line naming the first's PID and command, and writes nothing; after
    kill -9 of the first, the rerun runs (its lock file left behind is taken over)."""
    model = template_model
    env = dict(os.environ, BACKMAP_NO_PROGRESS="1")
    out = tmp_path / "aa.xtc"
    first = subprocess.Popen([BACKMAP, *map(str, _apply(model, model / "backmap" / "aa_cg.trr", out, "--seed", "1"))],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = tmp_path / ".aa.xtc.lock"
    try:
        _wait_for(lock, first)
        os.kill(first.pid, signal.SIGSTOP)
        before = _snapshot(tmp_path)
        second = subprocess.run([BACKMAP, *map(str, _apply(model, model / "backmap" / "aa_cg.trr", out, "--seed", "2"))],
                                env=env, capture_output=True, text=True)
        line = one_line_error(second.returncode, second.stderr)
        assert f"PID {first.pid}" in line and "backmap apply" in line and "--seed 1" in line, line
        assert _snapshot(tmp_path) == before
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert lock.exists()  # kill -9 leaves it; the kernel dropped the lock itself
    again = subprocess.run([BACKMAP, *map(str, _apply(model, model / "backmap" / "aa_cg.trr", out, "--seed", "2"))],
                           env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert out.exists() and not lock.exists()


def test_a_second_run_on_one_work_folder_is_refused_and_a_killed_run_is_recorded(tmp_path):
    """A lock held on the work folder (as a running `backmap run` holds it) refuses a second run in
    one line; once its process is killed, the next run goes on, and an invocation the killed one
    left `running` in the history is marked killed, with a warning."""
    import json

    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: twice
        workdir: work
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:2'}}
        steps: [{{map: {{}}}}]
        """))
    work = tmp_path / "work"
    work.mkdir()
    (work / "run.json").write_text(json.dumps({"invocations": [
        {"number": 1, "command": "backmap run r.yaml", "status": "running",
         "steps": [{"name": "map", "status": "running"}]}]}))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.argv = ["backmap", "run", "r.yaml"]
        from backmap.system.claim import OutputLock
        OutputLock({str(work)!r}, folder=True).acquire()
        print("held", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_cli("run", recipe)
        line = one_line_error(code, err)
        assert f"PID {holder.pid}" in line and "backmap run r.yaml" in line and "--workdir" in line, line
        assert json.loads((work / "run.json").read_text())["invocations"][0]["status"] == "running"
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run_cli("run", recipe)
    assert code == 0, err
    assert "run 1 of this work folder (backmap run r.yaml) ended without a word" in " ".join(err.split())
    first, second = json.loads((work / "run.json").read_text())["invocations"]
    assert first["status"] == "killed" and first["steps"][0]["status"] == "killed" and second["status"] == "ok"


def test_a_lock_is_released_and_taken_again_in_one_process(tmp_path):
    target = tmp_path / "aa.xtc"
    with OutputLock(target):
        assert (tmp_path / ".aa.xtc.lock").exists()
        with pytest.raises(BackmapError, match=f"PID {os.getpid()}"):
            OutputLock(target).acquire()  # another open file description: refused like another process
    assert not (tmp_path / ".aa.xtc.lock").exists()
    with OutputLock(target):
        pass
