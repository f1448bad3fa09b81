"""Data-parallel training on 2 processes (docs/scale-out.md): the same loss curve as one process at
the same global batch, and the speed of 2 processes against 1 process with 1 and with 2 threads.

The recipe's prepare step runs once; then its train step runs for ``--iterations`` iterations
(a log row per iteration), from copies of the prepared work directory, as a user runs it:

    backmap run RECIPE --steps train                          (threads 1, then threads 2)
    torchrun --standalone --nproc-per-node 2 backmap run RECIPE --steps train     (threads 1 each)

    .venv/bin/python benchmarks/ddp_train.py [--recipe recipes/sps-equivariant.yaml] [--iterations 40]
    .venv/bin/python benchmarks/ddp_train.py --quick    # the same path: a small equivariant model on the
                                                        # committed hexane data (tests/data/hexane), 5 iterations

Prints one JSON line per run (seconds of the training loop and of the train step, iterations/s) and
one with the speed-ups and the "curve gap": the largest difference between a run's loss curve and
the 1-process, 1-thread one as a share of that curve's range — for 2 processes, and for 1 process on
2 threads (which differs by float rounding alone: summation order), as the yardstick.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = dict(os.environ, BACKMAP_NO_PROGRESS="1")
HEXANE = REPO / "tests" / "data" / "hexane"
#: --quick: a small equivariant generator on 3 frames of the committed hexane data
QUICK_RECIPE = f"""name: ddp-quick
seed: 3
system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:3', split: {{test_fraction: 0.34, mode: tail}}}}
generator: {{plugin: equivariant, params: {{constraints: all-bonds, width: 8, vectors: 4, tensors: 2, hidden: 32,
                                        lr: 4.0e-3, threads: 1}}}}
steps:
  - prepare: {{}}
  - train: {{epochs: 2, batch_size: 64}}
"""


def backmap(recipe: Path, workdir: Path, steps: str, overrides: list[str], processes: int = 1) -> float:
    launcher = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else []
    cmd = [*launcher, str(BIN / "backmap"), "run", str(recipe), "--steps", steps, "--workdir", str(workdir), *overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def train_seconds(workdir: Path) -> tuple[float, float]:
    """The train step's time (run.json: with building the training sequences) and the training
    loop's own (the log's last ``seconds``)."""
    record = json.loads((workdir / "run.json").read_text())
    step = next(s["seconds"] for s in record["steps"] if s["name"] == "train")
    return step, loss_curve(workdir, "seconds")[-1]


def loss_curve(workdir: Path, column: str) -> list[float]:
    log = next(workdir.glob("training/*/train_log.csv"))
    with log.open() as fh:
        return [float(row[column]) for row in csv.DictReader(fh)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "sps-equivariant.yaml")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--column", default="nll", help="training-log column compared")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run of the same path: a small model on the committed hexane data, 5 iterations")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="backmap-ddp-"))
    if args.quick:
        args.recipe = folder / "quick.yaml"
        args.recipe.write_text(QUICK_RECIPE)
        args.iterations, args.batch_size = 5, 16
    prepared = folder / "prepared"
    backmap(args.recipe, prepared, "prepare", [])
    common = [f"steps.train.max_iterations={args.iterations}", "steps.train.log_every=1",
              "steps.train.checkpoint_every=0", f"steps.train.batch_size={args.batch_size}"]
    runs = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}
    seconds, curves = {}, {}
    for name, (processes, threads) in runs.items():
        work = folder / name.replace(" ", "_")
        shutil.copytree(prepared, work)
        wall = backmap(args.recipe, work, "train", [*common, f"generator.params.threads={threads}"], processes)
        step, seconds[name] = train_seconds(work)
        curves[name] = loss_curve(work, args.column)
        print(json.dumps({"benchmark": "ddp_train", "run": name, "iterations": args.iterations,
                          "batch size": args.batch_size, "loop seconds": round(seconds[name], 2),
                          "train step seconds": round(step, 2), "wall seconds": round(wall, 2),
                          "iterations/s": round(args.iterations / seconds[name], 3)}), flush=True)
    serial = curves["1 process x 1 thread"]
    scale = max(serial) - min(serial)

    def gap(other: str, rows: int | None = None) -> float:
        """Largest |difference| to the 1-process, 1-thread curve, as a share of its range."""
        pairs = list(zip(serial, curves[other]))[:rows]
        return float(f"{max(abs(a - b) for a, b in pairs) / scale:.3g}")

    print(json.dumps({
        "benchmark": "ddp_train", "recipe": args.recipe.name, "column": args.column,
        "batch size": args.batch_size, "iterations": args.iterations,
        "speed-up 2 processes / 1 process 1 thread": round(seconds["1 process x 1 thread"] / seconds["2 processes x 1 thread"], 3),
        "speed-up 2 processes / 1 process 2 threads": round(seconds["1 process x 2 threads"] / seconds["2 processes x 1 thread"], 3),
        "curve gap 2 processes, first 40 rows": gap("2 processes x 1 thread", 40),
        "curve gap 2 processes, all rows": gap("2 processes x 1 thread"),
        "curve gap 2 threads (float rounding only), first 40 rows": gap("1 process x 2 threads", 40),
        "curve gap 2 threads (float rounding only), all rows": gap("1 process x 2 threads"),
        "rows": len(serial), "folder": str(folder)}), flush=True)


if __name__ == "__main__":
    main()
