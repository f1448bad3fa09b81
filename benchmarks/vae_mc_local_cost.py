"""Cost of vae_mc's local moves per round, on sPS at 568 K: molecule-wide groups decided one after
the other (``local_decide: sequential``) against groups of units beyond each other's cut-off
(``independent``), in the same command.

For each kind (``inner``, ``turns``, ``cranks``: one round per sweep) and each way of grouping, the
same F test frames (lockstep chains) are refined twice with the VAE moves in the first sweep only
(``vae_every`` > sweeps): 1 sweep and 1 + ``--rounds`` sweeps; the difference over ``--rounds``
and F is the CPU time of one round per chain. A first run compiles and warms up. Prints one
JSON line per kind: CPU seconds per round and chain of each, their ratio (> 1: sequential is
cheaper) and the acceptance of each in its last round.

    python benchmarks/vae_mc_local_cost.py --model models/sps-vae --frames 1 --rounds 8
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
    ap.add_argument("--frames", type=int, default=1, help="reference frames 1 … F, as lockstep chains")
    ap.add_argument("--rounds", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(1)
    system, x, targets, boxes = sps_frames(1, a.frames)

    def run(kind: str, mode: str, sweeps: int) -> tuple[float, float]:
        """CPU seconds of a refine call of ``sweeps`` sweeps, and the acceptance of its last sweep."""
        refiner = make_plugin("refiner", "vae_mc", {**COMMON, "model": a.model, "steps": sweeps, "trials": 1,
                                                    "vae_every": sweeps + 1, "minimize_steps": 0, kind: 1,
                                                    "local_decide": mode})
        refiner.prepare(system)
        start = time.process_time()
        refiner.refine(x, targets, boxes, np.random.default_rng(0))
        cpu = time.process_time() - start
        rows = [r for r in refiner.sweep_rows if r["sweep"] == sweeps - 1]
        return cpu, sum(r["accepted"] for r in rows) / max(sum(r["proposed"] for r in rows), 1)

    run("inner", "sequential", 2)  # compile and warm up
    for kind in ("inner", "turns", "cranks"):
        line = {"kind": kind}
        for mode in ("sequential", "independent"):
            one, _ = run(kind, mode, 1)
            more, accepted = run(kind, mode, 1 + a.rounds)
            line[mode] = {"cpu_s_per_round_and_chain": round((more - one) / a.rounds / a.frames, 4),
                          "acceptance": round(accepted, 3)}
        line["ratio"] = round(line["independent"]["cpu_s_per_round_and_chain"]
                              / line["sequential"]["cpu_s_per_round_and_chain"], 2)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
