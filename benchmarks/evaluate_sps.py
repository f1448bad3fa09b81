"""Time `backmap evaluate` on the sPS 568 K evaluation set: 71 clean frames, reference `aa.xtc`,
three candidates (DeepBackmap's `deepbackmap.xtc`, the EM `baseline.xtc`, and `aa.xtc` itself as
a sanity candidate — it is evaluated like any other file, not recognized), CG consistency against
`cg.xtc` with `recipes/sps/sps.xml`, every metric.

    .venv/bin/python benchmarks/evaluate_sps.py [--repeats 3] [--workers N] [--keep DIR]

Prints one JSON line: the median wall time of the whole command (process start, topology, every
metric over 4 × 71 frames, report with figures) over repeats, each run's time, the CPU time the
command used (user + system, all its processes: on a busy machine the wall time grows, the CPU time
hardly), the sampling time from metrics.json, the number of CPUs and the load average before the
first run. Target: ≤ 120 s wall on 2 idle cores. Needs ../shared/data/sps.

``--quick``: the same command on the first two frames of every trajectory, one repeat (a smoke test,
~30 s); without ../shared it prints ``{"skipped": ...}``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPS = REPO.parent / "shared" / "data" / "sps"
SKIP = "9,19,41,55,62,70,76"  # frames of aa.xtc that are also training snapshots
TARGET_S = 120.0


def command(out: Path, workers: int | None, frames: str | None = None) -> list[str]:
    ev = SPS / "eval_t568"
    cmd = [str(Path(sys.executable).parent / "backmap"), "evaluate",
           "--topology", str(SPS / "top" / "topol.top"), "--reference", str(ev / "aa.xtc"),
           str(ev / "deepbackmap.xtc"), str(ev / "baseline.xtc"), str(ev / "aa.xtc"),
           "--label", "DBM", "--label", "baseline", "--label", "reference-copy",
           "--skip-frames", SKIP, "--mapping", str(REPO / "recipes" / "sps" / "sps.xml"), "--cg", str(ev / "cg.xtc"),
           "--mdp", str(SPS / "top" / "md.mdp"), "--no-lj-shift", "--out", str(out)]
    return cmd + (["--workers", str(workers)] if workers else []) + (["--frames", frames] if frames else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="default: backmap's (the available cores)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the last run's output here")
    ap.add_argument("--quick", action="store_true", help="smoke test: the first two frames, one repeat")
    args = ap.parse_args()
    if not SPS.is_dir():
        if args.quick:
            print(json.dumps({"skipped": f"reference data {SPS} not present"}))
            return
        sys.exit(f"reference data {SPS} not present")
    frames = None
    if args.quick:
        frames, args.repeats = "0:2", 1
    result = {"benchmark": "evaluate_sps", "frames": 2 if args.quick else 71, "candidates": 3, "atoms": 5832,
              "cpus": len(os.sched_getaffinity(0)), "load_avg_before": round(os.getloadavg()[0], 2),
              "repeats": args.repeats, "target_s": TARGET_S}
    times, cpu, inner = [], [], []
    env = dict(os.environ, BACKMAP_NO_PROGRESS="1")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "evaluate"
        for _ in range(args.repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(command(out, args.workers, frames), check=True, capture_output=True, env=env)
            times.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            inner.append(json.loads((out / "metrics.json").read_text())["timing"])
    result["wall_s"] = round(statistics.median(times), 1)
    result["runs_s"] = [round(t, 1) for t in times]
    result["cpu_s"] = round(statistics.median(cpu), 1)
    result["load_avg_after"] = round(os.getloadavg()[0], 2)
    result["sampling_s"] = round(statistics.median(t["sampling_s"] for t in inner), 1)
    result["workers"] = inner[-1]["workers"]
    result["within_target"] = result["wall_s"] <= TARGET_S
    if args.quick:
        result["quick"] = True
    print(json.dumps(result))


if __name__ == "__main__":
    main()
