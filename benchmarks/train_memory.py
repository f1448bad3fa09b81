"""Training memory against the number of training frames (docs/scale-out.md; target: ``prepare`` +
``train`` of the equivariant generator on 100 frames of a ≈ 40 000-atom system under 4 GB peak, and
10 frames under the same bound).

The system is our SPC/E water box (39 192 atoms, 13 064 one-bead molecules; ``data/spce`` made by
``scripts/make_spce_data.sh``, about 20 minutes). Each run is ``backmap run … --steps prepare,train``
in a fresh process; its peak memory is ``ru_maxrss`` from ``wait4`` (the whole process: Python,
torch, the pairs, the batch). The training sequences are streamed from disk (the train step's
``sequences: disk``, the default); the same-run baseline keeps them all in memory
(``sequences: memory``, what training did before) on the smallest frame count only, as it grows by
≈ 0.3 GB per frame. Training runs ``--iterations`` iterations of 64 sequences: memory does not depend
on how long it trains, only on what it holds.

    .venv/bin/python benchmarks/train_memory.py [--frames 10 100] [--iterations 20]
    .venv/bin/python benchmarks/train_memory.py --quick   # 2 and 4 frames of the committed hexane set

One JSON line per run, then one with the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BACKMAP = str(Path(sys.executable).parent / "backmap")
SPCE = REPO / "data" / "spce"
HEXANE = REPO / "tests" / "data" / "hexane"

RECIPE = """name: train-memory
seed: 1
system: {{topology: {topology}, mapping: {mapping}}}
data: {{trajectory: {trajectory}, frames: "0:{frames}", split: {{test_fraction: 0}}}}
generator: {{plugin: equivariant, params: {{constraints: all-bonds, context: mixed, threads: 1}}}}
steps:
  - prepare: {{}}
  - train: {{epochs: 1, batch_size: 64, max_iterations: {iterations}, sequences: {sequences}}}
"""


def run(system: dict[str, Path], frames: int, iterations: int, sequences: str, scratch: Path) -> dict:
    """One ``prepare`` + ``train`` in a fresh process: peak memory, wall time, the train summary."""
    work = scratch / f"{sequences}-{frames}"
    recipe = scratch / f"{sequences}-{frames}.yaml"
    recipe.write_text(RECIPE.format(**system, frames=frames, iterations=iterations, sequences=sequences))
    env = dict(os.environ, BACKMAP_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    with open(scratch / f"{sequences}-{frames}.log", "w") as log:
        proc = subprocess.Popen([BACKMAP, "run", str(recipe), "--workdir", str(work)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"backmap run failed ({sequences}, {frames} frames): see {scratch / f'{sequences}-{frames}.log'}")
    steps = {s["name"]: s for s in json.loads((work / "run.json").read_text())["steps"]} \
        if (work / "run.json").is_file() else {}
    train = steps.get("train", {}).get("summary", {})
    return {"sequences": sequences, "frames": frames, "peak_gb": round(usage.ru_maxrss / 2**20, 3),
            "wall_s": round(wall, 1), "train_step_s": round(steps.get("train", {}).get("seconds", float("nan")), 1),
            "sequences_mb": train.get("training sequences (MB)"),
            "sequences_per_s": train.get("sequences/s")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="2 and 4 frames of the committed hexane set")
    ap.add_argument("--keep", action="store_true", help="keep the work folders (printed)")
    args = ap.parse_args()
    if args.quick:
        system = {"topology": HEXANE / "topol.top", "mapping": HEXANE / "hexane.xml", "trajectory": HEXANE / "traj.xtc"}
        args.frames, args.iterations = [2, 4], 3
    else:
        if not (SPCE / "aa.xtc").is_file():
            print(json.dumps({"skipped": f"{SPCE} missing: run scripts/make_spce_data.sh"}))
            return
        system = {"topology": SPCE / "topol.top", "mapping": SPCE / "water.xml", "trajectory": SPCE / "aa.xtc"}
    scratch = Path(tempfile.mkdtemp(prefix="train_memory_"))
    rows = [run(system, min(args.frames), args.iterations, "memory", scratch)]
    print(json.dumps(rows[-1]), flush=True)
    for frames in args.frames:
        rows.append(run(system, frames, args.iterations, "disk", scratch))
        print(json.dumps(rows[-1]), flush=True)
    disk = {r["frames"]: r for r in rows if r["sequences"] == "disk"}
    small, large = disk[min(args.frames)], disk[max(args.frames)]
    print(json.dumps({"frames": sorted(disk), "peak_gb": {f: r["peak_gb"] for f, r in sorted(disk.items())},
                      "peak_ratio_largest_to_smallest": round(large["peak_gb"] / small["peak_gb"], 3),
                      "memory_baseline_peak_gb": rows[0]["peak_gb"],
                      "baseline_to_disk_peak_ratio": round(rows[0]["peak_gb"] / small["peak_gb"], 3),
                      "disk_to_memory_sequences_per_s": (round(small["sequences_per_s"] / rows[0]["sequences_per_s"], 3)
                                                         if small["sequences_per_s"] and rows[0]["sequences_per_s"]
                                                         else None),
                      "under_4gb": all(r["peak_gb"] < 4 for r in disk.values()), "work": str(scratch)}))
    if not args.keep:
        import shutil
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
