"""Throughput of vae_mc with frames in lockstep against one frame per call, on sPS at 568 K.

The same F reference frames (test set, 568 K) are refined twice with the same settings: once as F
calls of one frame (``backmap refine --batch 1``), once as one call of F frames
(``--batch F``: one network call per plan step and colour for all F chains). The start-up (the
restrained minimization, colour groups) is the same in both and left out: each variant runs
``--sweeps`` and 1 sweep, and the difference is the cost of ``--sweeps − 1`` sweeps. Prints one
JSON line: CPU seconds per frame and sweep of each, and their ratio (> 1: lockstep is faster).

    python benchmarks/vae_mc_lockstep.py --model models/sps-vae --frames 8 --sweeps 4 --trials 8
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from backmap.engine.loaders import make_plugin

from vae_mc_decorrelation import COMMON, sps_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="a trained vae model folder")
    ap.add_argument("--frames", type=int, default=8, help="reference frames 1 … F")
    ap.add_argument("--sweeps", type=int, default=4)
    ap.add_argument("--trials", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(1)
    system, x, targets, boxes = sps_frames(1, a.frames)

    def cpu(sweeps: int, lockstep: bool) -> float:
        refiner = make_plugin("refiner", "vae_mc", {**COMMON, "model": a.model, "steps": sweeps, "trials": a.trials,
                                                    "minimize_steps": 0})
        refiner.prepare(system)
        rng = np.random.default_rng(0)
        start = time.process_time()
        if lockstep:
            refiner.refine(x, targets, boxes, rng)
        else:
            for f in range(a.frames):
                refiner.refine(x[f:f + 1], targets[f:f + 1], boxes[f:f + 1], rng)
        return time.process_time() - start

    cpu(1, True)  # compile and warm up
    per = {}
    for name, lockstep in (("one_frame_per_call", False), ("lockstep", True)):
        per[name] = (cpu(a.sweeps, lockstep) - cpu(1, lockstep)) / (a.sweeps - 1) / a.frames
    print(json.dumps({"benchmark": "vae_mc_lockstep", "frames": a.frames, "trials": a.trials, "sweeps": a.sweeps,
                      **{f"cpu_s_per_frame_sweep_{k}": round(v, 3) for k, v in per.items()},
                      "speedup": round(per["one_frame_per_call"] / per["lockstep"], 2)}))


if __name__ == "__main__":
    main()
