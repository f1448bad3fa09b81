"""Scheduling overhead per frame of frame-parallel runs (docs/scale-out.md; target: ≤ 10 ms per frame at
10⁵ frames).

A dry run: 10⁵ "frames" through :func:`backmap.parallel.run_blocks` with a job that does nothing but
hand back its frame (the trivial generator: a copy of a 3-bead frame), so every second is overhead —
Dask's scheduling and transport, the progress bar, and the block store on disk that makes a killed run
resumable. Baseline in the same command: the same frames in this process (no Dask, the same store).

    .venv/bin/python benchmarks/scheduler_overhead.py [--frames 100000] [--workers 2] [--per-task 1 100]
    .venv/bin/python benchmarks/scheduler_overhead.py --quick    # the same path on 200 frames

Prints one JSON line per configuration: seconds, overhead per frame (ms) and the ratio to the serial
baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


from backmap.parallel import ClusterOptions, PartStore, blocks_of, run_blocks  # noqa: E402


class EchoJob:
    """The trivial generator: every frame back as it came."""

    def setup(self, threads=None) -> None:
        pass

    def run_block(self, frames):
        return {"x": np.stack(frames), "rows": [{} for _ in frames]}


def measure(frames: list[np.ndarray], cluster: ClusterOptions, folder: Path) -> float:
    blocks = blocks_of(frames, cluster.frames_per_task)
    store = PartStore(folder / f"store-{time.time_ns()}", {"bench": cluster.model_dump()}, len(blocks))
    t0 = time.perf_counter()
    n = sum(len(r["x"]) for r in run_blocks(EchoJob(), blocks, cluster, store, "dry run"))
    seconds = time.perf_counter() - t0
    assert n == len(frames)
    store.remove()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-task", type=int, nargs="+", default=[1, 100])
    ap.add_argument("--quick", action="store_true", help="smoke run of the same path: 200 frames, 1 and 10 per task")
    args = ap.parse_args()
    if args.quick:
        args.frames, args.per_task = 200, [1, 10]
    os.environ.setdefault("BACKMAP_NO_PROGRESS", "1")
    rng = np.random.default_rng(0)
    frames = [rng.random((3, 3)).astype(np.float32) for _ in range(args.frames)]
    folder = Path(tempfile.mkdtemp(prefix="backmap-overhead-"))
    try:
        base = measure(frames, ClusterOptions(), folder)
        print(json.dumps({"benchmark": "scheduler_overhead", "mode": "serial (this process)", "frames": args.frames,
                          "seconds": round(base, 2), "ms_per_frame": round(1e3 * base / args.frames, 3)}), flush=True)
        for per_task in args.per_task:
            cluster = ClusterOptions(workers=args.workers, frames_per_task=per_task)
            seconds = measure(frames, cluster, folder)
            print(json.dumps({"benchmark": "scheduler_overhead", "mode": f"dask, {args.workers} workers",
                              "frames_per_task": per_task, "frames": args.frames, "seconds": round(seconds, 2),
                              "ms_per_frame": round(1e3 * seconds / args.frames, 3),
                              "ratio_to_serial": round(seconds / base, 2), "target_ms_per_frame": 10}), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
