"""CPU time of vae_mc with backmap's allocator setting against glibc's defaults, on sPS at 568 K.

The same refinement (reference frames 1 … F in lockstep, ``--minimize`` restrained minimization
steps, then ``--sweeps`` sweeps of ``--trials`` trials) runs in fresh processes: as backmap sets it
up (freed memory kept in the heap, ``backmap/allocator.py``) and with ``BACKMAP_MALLOC=system``
(glibc's defaults), each also in a Dask worker's environment (``MALLOC_TRIM_THRESHOLD_=65536``,
which distributed's nanny sets). Prints one JSON line with the user and system CPU seconds, page
faults and wall time of each, and the ratios of total CPU time (> 1: backmap's setting saves
time). The structures must be identical.

    python benchmarks/allocator_vae_mc.py --model models/sps-vae --frames 2 --sweeps 2 --trials 32 --minimize 300 \
        --parallel 2

``--quick``: the same code path with models/sps-vae on one frame, one sweep of 2 trials after 5
minimization steps, in the two Dask-worker environments only; without ../shared/data/sps it prints
``{"skipped": ...}``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys
import numpy as np, torch
sys.path.insert(0, {bench!r})
from vae_mc_decorrelation import COMMON, sps_frames
from backmap.engine.loaders import make_plugin
torch.set_num_threads(1)
system, x, targets, boxes = sps_frames(1, {frames})
refiner = make_plugin("refiner", "vae_mc", {{**COMMON, "model": {model!r}, "steps": {sweeps}, "trials": {trials},
                                             "minimize_steps": {minimize}}})
refiner.prepare(system)
out = refiner.refine(x, targets, boxes, np.random.default_rng(0))
np.save({out!r}, out.positions)
"""


def run(env: dict, out: Path, a) -> dict:
    """Run the refinement in ``--parallel`` child processes at once (as Dask workers do); their
    CPU seconds, page faults and the wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    code = CHILD.format(bench=str(Path(__file__).resolve().parent), frames=a.frames, model=a.model,
                        sweeps=a.sweeps, trials=a.trials, minimize=a.minimize, out=str(out))
    children = [subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env}) for _ in range(a.parallel)]
    if any(child.wait() for child in children):
        raise SystemExit("a refinement failed")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"user_s": round(after.ru_utime - before.ru_utime, 1), "system_s": round(after.ru_stime - before.ru_stime, 1),
            "page_faults": after.ru_minflt - before.ru_minflt, "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required="--quick" not in sys.argv[1:], help="a trained vae model folder")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--sweeps", type=int, default=2)
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--parallel", type=int, default=1, help="identical refinements run at once (2: like 2 workers)")
    ap.add_argument("--minimize", type=int, default=300, help="restrained minimization steps first (vae_mc's default)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: one frame, one sweep of 2 trials after 5 minimization steps, the Dask-worker "
                         "environments only")
    a = ap.parse_args()
    if a.quick:
        sps = Path(__file__).resolve().parents[2] / "shared" / "data" / "sps"
        if not sps.is_dir():
            print(json.dumps({"skipped": f"needs the sPS data in {sps}"}))
            return
        a.model = str(Path(a.model or Path(__file__).resolve().parents[1] / "models" / "sps-vae").resolve())
        a.frames, a.sweeps, a.trials, a.minimize, a.parallel = 1, 1, 2, 5, 1
    import numpy as np

    variants = {"backmap": {}, "glibc_default": {"BACKMAP_MALLOC": "system"},
                # a Dask worker's environment (distributed's nanny sets it): backmap overrides it ...
                "backmap_in_dask_worker": {"MALLOC_TRIM_THRESHOLD_": "65536"},
                # ... which without backmap's setting fixes the mmap threshold at 128 kB
                "dask_worker_default": {"MALLOC_TRIM_THRESHOLD_": "65536", "BACKMAP_MALLOC": "system"}}
    if a.quick:  # the two Dask-worker environments only (the case the setting is for): two process start-ups
        variants = {name: variants[name] for name in ("backmap_in_dask_worker", "dask_worker_default")}
    with tempfile.TemporaryDirectory() as tmp:
        rows = {name: run(env, Path(tmp) / f"{name}.npy", a) for name, env in variants.items()}
        first = np.load(Path(tmp) / f"{next(iter(variants))}.npy")
        same = all(np.array_equal(first, np.load(Path(tmp) / f"{name}.npy")) for name in variants)
    total = lambda r: r["user_s"] + r["system_s"]  # noqa: E731
    ratio = lambda a_, b_: round(total(rows[a_]) / total(rows[b_]), 2) if a_ in rows and b_ in rows else None  # noqa: E731
    print(json.dumps({"benchmark": "allocator_vae_mc", "frames": a.frames, "minimize": a.minimize, "sweeps": a.sweeps,
                      "trials": a.trials, "parallel": a.parallel, **rows, "identical_structures": same,
                      "cpu_ratio_glibc_default_over_backmap": ratio("glibc_default", "backmap"),
                      "cpu_ratio_dask_worker_default_over_backmap": ratio("dask_worker_default", "backmap_in_dask_worker")}))


if __name__ == "__main__":
    main()
