"""CPU against GPU on sPS (docs/devices.md): training, ``apply`` and OpenMM refinement of the
shipped equivariant model, on every device torch sees, in the same run, as ratios.

For each device (``cpu``, then ``cuda`` when torch sees a GPU) it runs, as a user would:

- **train**: ``recipes/sps-equivariant.yaml``'s train step for ``--iterations`` iterations (from one
  prepared work folder; ``device=D``), the training loop's own seconds per iteration;
- **apply**: ``backmap apply --model models/sps-equivariant --device D`` on ``--frames`` frames of
  ``eval_t568/cg.xtc`` (two Gibbs sweeps, K = 8), the generator's seconds per frame;
- **refine**: ``backmap refine --device D --batch N`` of that output, 1 ps (500 × 2 fs, all bonds
  constrained, 568 K); the ``openmm`` refiner's ``platform: auto`` takes CUDA in mixed precision on
  a GPU, the CPU platform (``--threads`` threads) otherwise.

The CPU runs use ``--threads`` threads (default: every core). Prints one JSON line per device and
one with the CPU/GPU ratios, or, on a machine without a GPU, the CPU numbers and ``"gpu": null``.

    .venv/bin/python benchmarks/gpu_sps.py [--frames 8] [--iterations 50] [--threads N]
    .venv/bin/python benchmarks/gpu_sps.py --quick     # 2 frames, 3 iterations, 20 refine steps
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPS = REPO.parent / "shared" / "data" / "sps"
BACKMAP = str(Path(sys.executable).parent / "backmap")
ENV = dict(os.environ, BACKMAP_NO_PROGRESS="1")


def run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        subprocess.run(cmd, check=True, env=ENV, stdout=out, stderr=subprocess.STDOUT)


def measure(device: str, args, prepared: Path, folder: Path, log: Path) -> dict:
    """Seconds per training iteration, per generated frame and per refined frame on ``device``."""
    threads = args.threads if device == "cpu" else 1
    work = folder / f"train-{device}"
    shutil.copytree(prepared, work)
    run([BACKMAP, "run", str(REPO / "recipes" / "sps-equivariant.yaml"), "--workdir", str(work), "--steps", "train",
         f"device={device}", f"generator.params.threads={threads}", f"steps.train.max_iterations={args.iterations}",
         "steps.train.checkpoint_every=0", "steps.train.log_every=1"], log)
    with next(work.glob("training/*/train_log.csv")).open() as fh:
        rows = list(csv.DictReader(fh))
    loop_seconds = float(rows[-1]["seconds"])
    aa, refined = folder / f"aa-{device}.xtc", folder / f"refined-{device}.xtc"
    run([BACKMAP, "apply", "--model", str(REPO / "models" / "sps-equivariant"), "--cg",
         str(SPS / "eval_t568" / "cg.xtc"), "--frames", f"0:{args.frames}", "--out", str(aa), "--seed", "1",
         "--device", device, "--threads-per-worker", str(threads)], log)
    generator = json.loads(aa.with_suffix(".json").read_text())["summary"]["seconds per frame"]
    run([BACKMAP, "refine", "--topology", str(SPS / "top" / "topol.top"), "--mapping",
         str(REPO / "recipes" / "sps" / "sps.xml"), "--cg", str(folder / f"aa-{device}_cg.trr"), "--traj", str(aa),
         "--out", str(refined), "--mdp", str(SPS / "top" / "md.mdp"), "--seed", "1", "--device", device,
         "--temperature", "568", "--constraints", "all-bonds", "--restraint", "2e5", "--timestep", "0.002",
         "--steps", str(args.steps), "--batch", str(args.frames), "--param", f"threads={threads}"], log)
    with open(refined.with_name(refined.stem + ".log.csv")) as fh:
        refine = sum(float(r["seconds"]) for r in csv.DictReader(fh)) / args.frames
    return {"device": device, "threads": threads, "train_s_per_iteration": round(loop_seconds / args.iterations, 4),
            "apply_s_per_frame": round(generator, 3), "refine_s_per_frame": round(refine, 3),
            "frames": args.frames, "iterations": args.iterations, "refine_steps": args.steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--steps", type=int, default=500, help="refinement steps of 2 fs")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the CPU runs")
    ap.add_argument("--quick", action="store_true", help="2 frames, 3 iterations, 20 refine steps")
    args = ap.parse_args()
    if not SPS.is_dir():
        print(json.dumps({"skipped": f"needs the sPS data in {SPS}"}))
        return
    if args.quick:
        args.frames, args.iterations, args.steps = 2, 3, 20
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    folder = Path(tempfile.mkdtemp(prefix="backmap-gpu-sps-"))
    log = folder / "commands.log"
    prepared = folder / "prepared"
    run([BACKMAP, "run", str(REPO / "recipes" / "sps-equivariant.yaml"), "--workdir", str(prepared),
         "--steps", "prepare"], log)
    rows = {}
    for device in devices:
        rows[device] = measure(device, args, prepared, folder, log)
        print(json.dumps(rows[device]), flush=True)
    cpu, gpu = rows["cpu"], rows.get("cuda")
    keys = ("train_s_per_iteration", "apply_s_per_frame", "refine_s_per_frame")
    print(json.dumps({"gpu": torch.cuda.get_device_name(0) if gpu else None,
                      "cpu_threads": args.threads,
                      **({f"speedup_{k.split('_s_')[0]}": round(cpu[k] / gpu[k], 2) for k in keys} if gpu else
                         {"note": "no GPU visible to torch: CPU numbers only"}),
                      "log": str(log)}))


if __name__ == "__main__":
    main()
