"""Frames as Dask tasks (issue 19): the output does not depend on the number of workers, a worker
killed mid-frame loses and duplicates nothing, an interrupted run resumes from the blocks already
written, and bad cluster options are one-line errors."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from backmap.parallel import ClusterOptions, PartStore, ProcessLocal, frame_rng, run_blocks
from backmap.parallel.cluster import usable_cores
from backmap.system.io import read_frames

from conftest import HEXANE, one_line_error, run_cli

REPO = Path(__file__).resolve().parent.parent
#: a local cluster runs at most one single-threaded worker per core (ClusterOptions refuses more)
TWO_CORES = pytest.mark.skipif(usable_cores() < 2, reason="two local workers need two cores")
BACKMAP = [str(Path(sys.executable).parent / "backmap")]


@pytest.fixture(scope="module")
def model(template_model) -> Path:
    """The template baseline trained on the shipped hexane frames, and 4 held-out CG frames."""
    return template_model


def _apply(model: Path, out: Path, *extra, refine: bool = True) -> list[str]:
    args = ["apply", "--model", model, "--cg", model / "backmap" / "aa_cg.trr", "--candidates", "2",
            "--gibbs", "1", "--seed", "7", "--out", out, *extra]
    if refine:  # the torch Langevin refiner: deterministic on one thread
        args += ["--refine", "langevin", "--steps", "5", "--temperature", "300", "--param", "minimize_steps=5"]
    return [str(a) for a in args]


def _positions(path: Path) -> np.ndarray:
    return np.stack([f.positions for f in read_frames(path)])


@TWO_CORES
def test_output_is_byte_identical_with_one_and_two_workers(model, tmp_path):
    """Per-frame random streams: which worker ran a frame, and how many there are, changes nothing."""
    for name, extra in (("one", ["--workers", "1"]), ("two", ["--workers", "2"])):
        code, _, err = run_cli(*_apply(model, tmp_path / name / "aa.xtc", *extra))
        assert code == 0, err
        assert "dask: " in err and "dashboard http" in err
    for f in ("aa.xtc", "aa_unrefined.xtc", "aa.gro", "aa_refine.csv"):
        one, two = (tmp_path / n / f for n in ("one", "two"))
        if f.endswith(".csv"):  # the log's wall times differ; everything else is the same
            drop = lambda text: [ln.split(",")[2:] for ln in text.splitlines()]  # noqa: E731
            assert drop(one.read_text()) == drop(two.read_text())
        else:
            assert one.read_bytes() == two.read_bytes(), f
    assert not any(p.name.endswith(".parts") for p in (tmp_path / "two").iterdir())  # the store is gone


@TWO_CORES
def test_the_serial_path_gives_the_workers_result(model, tmp_path):
    """This process (torch on all threads) against two single-threaded workers: the same frames,
    but for the odd coordinate on the other side of an .xtc rounding boundary."""
    code, _, err = run_cli(*_apply(model, tmp_path / "serial.xtc", refine=False))
    assert code == 0, err
    code, _, err = run_cli(*_apply(model, tmp_path / "two.xtc", "--workers", "2", refine=False))
    assert code == 0, err
    x, y = _positions(tmp_path / "serial.xtc"), _positions(tmp_path / "two.xtc")
    assert x.shape == y.shape == (4, 4000, 3)
    # a float sum in another order may flip a near-tie between candidates on another CPU: allow a
    # few placements (not just .xtc rounding) to differ, but the frames must be the same frames
    assert (np.abs(x - y) > 0.0011).mean() < 0.01 and (x != y).mean() < 0.05


def test_a_frame_does_not_depend_on_the_frames_before_it(model, tmp_path):
    """A frame's stream is drawn from (seed, frame index): frames 2-3 alone equal frames 2-3 of 0-3."""
    code, _, err = run_cli(*_apply(model, tmp_path / "all.xtc", refine=False))
    assert code == 0, err
    code, _, err = run_cli(*_apply(model, tmp_path / "tail.xtc", "--frames", "2:4", refine=False))
    assert code == 0, err
    assert np.array_equal(_positions(tmp_path / "all.xtc")[2:], _positions(tmp_path / "tail.xtc"))
    # and the seed matters
    a, b = frame_rng(7, 2).random(3), frame_rng(8, 2).random(3)
    assert not np.array_equal(a, b) and np.array_equal(a, frame_rng(7, 2).random(3))


def test_an_interrupted_apply_resumes_from_the_frames_already_written(model, tmp_path):
    """kill -9 of `backmap apply` after its first finished frame; the rerun says it resumes, computes
    only the rest, and writes what an uninterrupted run writes."""
    env = dict(os.environ, BACKMAP_NO_PROGRESS="1")
    full = tmp_path / "full" / "aa.xtc"
    assert subprocess.run([*BACKMAP, *_apply(model, full, "--frames", "0:3")], env=env,
                          capture_output=True).returncode == 0
    out = tmp_path / "cut" / "aa.xtc"
    store = out.parent / ".aa.xtc.parts"
    proc = subprocess.Popen([*BACKMAP, *_apply(model, out, "--frames", "0:3")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(store.glob("block_*.npz")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # a frame takes ~2 s: the kill lands while the next one runs
    proc.wait()
    done = sorted(p.name for p in store.glob("block_*.npz"))
    assert 1 <= len(done) < 3 and not out.exists()
    res = subprocess.run([*BACKMAP, *_apply(model, out, "--frames", "0:3")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"resuming: {len(done)} of 3 frames already done" in res.stderr
    assert not store.exists() and out.read_bytes() == full.read_bytes()
    assert (out.parent / "aa_unrefined.xtc").read_bytes() == (full.parent / "aa_unrefined.xtc").read_bytes()
    # a store of other inputs or settings is foreign: started over, and said so
    store.mkdir()
    (store / "manifest.json").write_text('{"identity": "someone else", "blocks": 4}')
    res = subprocess.run([*BACKMAP, *_apply(model, out, refine=False)], env=env, capture_output=True, text=True)
    assert res.returncode == 0 and "starting over" in res.stderr and not store.exists()


class _SlowJob(ProcessLocal):
    """Blocks that take a while and say which process ran them (for the kill test)."""

    def __init__(self, folder: str):
        self.folder = folder

    def setup(self, threads=None):
        (Path(self.folder) / f"setup-{os.getpid()}").write_text(str(threads))

    def run_block(self, items):
        marker = Path(self.folder) / f"started-{items[0]}-{os.getpid()}"
        marker.write_text("")
        time.sleep(1.5)
        return {"value": np.array(items) * 10, "rows": [{"pid": os.getpid()}]}


@TWO_CORES
def test_a_worker_killed_mid_frame_loses_and_duplicates_nothing(tmp_path):
    """kill -9 of a worker process while it runs a block: Dask runs the block again elsewhere; every
    block is stored once, in order."""
    killed: list[int] = []

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            started = sorted(tmp_path.glob("started-2-*"))
            if started:
                pid = int(started[0].name.rsplit("-", 1)[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=killer)
    thread.start()
    store = PartStore(tmp_path / "store", {"test": 1}, 6)
    results = list(run_blocks(_SlowJob(str(tmp_path)), [[k] for k in range(6)], ClusterOptions(workers=2), store))
    thread.join()
    assert killed, "no worker was killed"
    assert [int(r["value"][0]) for r in results] == [0, 10, 20, 30, 40, 50]
    assert results[2]["rows"][0]["pid"] != killed[0]  # block 2 finished by another process
    assert len(list(tmp_path.glob("started-2-*"))) >= 2  # it was started twice, stored once
    assert store.done() == list(range(6))
    # the job was set up once per worker process (single-threaded), not once per block
    ran = {p.name.rsplit("-", 1)[1] for p in tmp_path.glob("started-*")}
    setups = {p.name.split("-", 1)[1]: p.read_text() for p in tmp_path.glob("setup-*")}
    assert set(setups) == ran and len(setups) <= 3 and set(setups.values()) == {"1"}


class _FailingJob(_SlowJob):
    def run_block(self, items):
        if items[0] == 2:
            raise KeyboardInterrupt  # stands for a kill between blocks
        return {"value": np.array(items), "rows": [{}]}


def test_store_keeps_finished_blocks_and_a_rerun_computes_the_rest(tmp_path, capfd):
    store = PartStore(tmp_path / "s", {"a": 1}, 4)
    with pytest.raises(KeyboardInterrupt):
        list(run_blocks(_FailingJob(str(tmp_path)), [[0], [1], [2], [3]], store=store))
    assert store.done() == [0, 1]
    calls = []

    class Counting(_FailingJob):
        def run_block(self, items):
            calls.append(items[0])
            return {"value": np.array(items), "rows": [{}]}

    again = PartStore(tmp_path / "s", {"a": 1}, 4)
    values = [int(r["value"][0]) for r in run_blocks(Counting(str(tmp_path)), [[0], [1], [2], [3]], store=again)]
    assert values == [0, 1, 2, 3] and calls == [2, 3]
    assert "resuming: 2 of 4 frames already done" in capfd.readouterr().err
    # another identity: nothing of the old store is used
    other = PartStore(tmp_path / "s", {"a": 2}, 4)
    assert other.restarted and other.done() == []


def test_a_failure_before_any_block_leaves_nothing_behind(tmp_path):
    class Broken(_SlowJob):
        def run_block(self, items):
            raise RuntimeError("broken")

    store = PartStore(tmp_path / "new" / "deeper" / ".x.parts", {"a": 1}, 2)
    with pytest.raises(RuntimeError):
        list(run_blocks(Broken(str(tmp_path)), [[0], [1]], store=store))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("extra, message", [
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "--workers/--scheduler: give either"),
    (["--workers", "0"], "--workers 0: must be a number ≥ 1"),
    (["--scheduler", "nowhere.json"], "no Dask scheduler file nowhere.json"),
    (["--frames-per-task", "0"], "--frames-per-task 0: must be a number ≥ 1"),
])
def test_bad_cluster_options_are_one_line(model, tmp_path, extra, message):
    code, _, err = run_cli(*_apply(model, tmp_path / "o" / "aa.xtc", *extra, refine=False))
    assert message in one_line_error(code, err)
    assert not (tmp_path / "o").exists()


def test_recipe_cluster_key_is_validated(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: r
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        cluster: {{workers: two}}
        steps: [{{prepare: {{}}}}]
        """))
    code, _, err = cli("check", recipe)
    assert "cluster.workers" in one_line_error(code, err)


@pytest.fixture(scope="module")
def scheduler():
    """A running Dask scheduler with two worker processes (as a user's cluster would be)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def test_apply_and_evaluate_on_a_running_scheduler(model, scheduler, tmp_path):
    code, _, err = run_cli(*_apply(model, tmp_path / "a" / "aa.xtc", "--scheduler", scheduler, refine=False))
    assert code == 0, err
    code, _, err = run_cli(*_apply(model, tmp_path / "b" / "aa.xtc", "--workers", "1", refine=False))
    assert code == 0, err
    assert (tmp_path / "a" / "aa.xtc").read_bytes() == (tmp_path / "b" / "aa.xtc").read_bytes()
    # evaluate: the batches on the cluster give the metrics of local processes
    base = ["evaluate", "--topology", HEXANE / "topol.top", "--reference", model / "backmap" / "aa_reference.xtc",
            tmp_path / "a" / "aa.xtc", "--metrics", "bonds,angles,energy"]
    code, _, err = run_cli(*base, "--out", tmp_path / "ev_local")
    assert code == 0, err
    code, _, err = run_cli(*base, "--out", tmp_path / "ev_dask", "--scheduler", scheduler)
    assert code == 0, err
    import json

    local, dask = (json.loads((tmp_path / d / "metrics.json").read_text())["summary"] for d in ("ev_local", "ev_dask"))
    assert local == dask


@TWO_CORES
def test_refine_on_workers_equals_one_worker(model, tmp_path):
    """`backmap refine` splits frames the same way: 1 and 2 workers, byte-identical."""
    aa = model / "backmap" / "aa.xtc"
    cg = model / "backmap" / "aa_cg.trr"
    base = ["refine", "--topology", HEXANE / "topol.top", "--mapping", HEXANE / "hexane.xml", "--cg", cg,
            "--traj", aa, "--refiner", "langevin", "--steps", "5", "--minimize", "5", "--temperature", "300",
            "--frames", "0:2"]
    for n in ("1", "2"):
        code, _, err = run_cli(*base, "--out", tmp_path / f"r{n}.xtc", "--workers", n)
        assert code == 0, err
    assert (tmp_path / "r1.xtc").read_bytes() == (tmp_path / "r2.xtc").read_bytes()


def test_a_batch_system_cluster_without_configuration_or_submit_command_is_one_line(model, tmp_path, monkeypatch):
    """--scheduler slurm goes through dask-jobqueue: its missing configuration and a machine without
    sbatch are each one line (no SLURM here to run jobs on)."""
    pytest.importorskip("dask_jobqueue")
    for key in ("CORES", "MEMORY"):
        monkeypatch.delenv(f"DASK_JOBQUEUE__SLURM__{key}", raising=False)
    code, _, err = run_cli(*_apply(model, tmp_path / "o" / "aa.xtc", "--scheduler", "slurm", refine=False))
    assert "--scheduler slurm: You must specify how much cores and memory" in one_line_error(code, err)
    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__CORES", "1")
    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__MEMORY", "1GB")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    import dask

    dask.config.refresh()
    try:
        code, _, err = run_cli(*_apply(model, tmp_path / "o" / "aa.xtc", "--scheduler", "slurm", refine=False))
    finally:
        monkeypatch.undo()
        dask.config.refresh()
    assert "sbatch not found" in one_line_error(code, err)
    assert not (tmp_path / "o").exists()


def test_a_new_store_has_its_manifest_and_drops_torn_block_files(tmp_path):
    store = PartStore(tmp_path / "s", {"a": 1}, 2)
    assert (tmp_path / "s" / "manifest.json").is_file()
    store.put(0, {"x": np.arange(3), "rows": [{"frame": 0}]})
    (tmp_path / "s" / ".block_000001.npz.123.part").write_bytes(b"torn")  # a writer killed mid-block
    again = PartStore(tmp_path / "s", {"a": 1}, 2)
    assert again.done() == [0] and not again.restarted
    assert not list((tmp_path / "s").glob("*.part"))
    assert again.get(0)["rows"] == [{"frame": 0}] and list(again.get(0)["x"]) == [0, 1, 2]


@TWO_CORES
def test_recipe_cluster_key_runs_the_backmap_step_on_workers(model, cli, tmp_path):
    """`cluster: {workers: 2}` in a recipe: the backmap step's frames on a local cluster, the output
    that of `backmap apply --workers 1` with the recipe's seed."""
    recipe = tmp_path / "r.yaml"
    cg = model / "backmap" / "aa_cg.trr"
    recipe.write_text(textwrap.dedent(f"""
        name: r
        seed: 7
        workdir: w
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        cluster: {{workers: 2}}
        steps: [{{backmap: {{model: {model / 'model'}, cg: {cg}, candidates: 2, gibbs_sweeps: 1}}}}]
        """))
    code, _, err = cli("run", recipe)
    assert code == 0, err
    assert "dask: 2 workers" in err
    code, _, err = cli(*_apply(model, tmp_path / "a" / "aa.xtc", "--workers", "1", refine=False))
    assert code == 0, err
    assert (tmp_path / "w" / "backmap" / "aa.xtc").read_bytes() == (tmp_path / "a" / "aa.xtc").read_bytes()
