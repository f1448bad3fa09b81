"""Cost of vae_mc's local moves per round, on sPS at 568 K: molecule-wide groups decided one after
the other (``local_decide: sequential``), each move scored and decided in one compiled loop
(``local_scoring: compiled``, the default) or scored in torch and decided with pair couplings
(``torch``), against groups of units beyond each other's cut-off (``independent``), in the same
command.

For each kind (``inner``, ``turns``, ``cranks``: one round per sweep) and each way, the same F test
frames (lockstep chains) are refined for 1 + ``--rounds`` sweeps with the VAE moves in the first
sweep only (``vae_every`` > sweeps); the sampler's CPU time from the end of the first sweep to the
end of the last (its trace), over ``--rounds`` and F, is the CPU time of one round per chain. A
first run compiles and warms up. Prints one JSON line per kind: CPU seconds per round and chain of
each, the ratios of the others to the compiled one (> 1: compiled is cheaper) and the acceptance of
each over its rounds (compiled and torch make the same decisions: the same acceptance).

    python benchmarks/vae_mc_local_cost.py --model models/sps-vae --frames 1 --rounds 16
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from vae_mc_decorrelation import COMMON, sps_frames

from backmap.engine.loaders import make_plugin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="a trained vae model folder")
    ap.add_argument("--frames", type=int, default=1, help="reference frames 1 … F, as lockstep chains")
    ap.add_argument("--rounds", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(1)
    system, x, targets, boxes = sps_frames(1, a.frames)

    ways = {"compiled": ("sequential", "compiled"), "torch": ("sequential", "torch"),
            "independent": ("independent", "torch")}

    def run(kind: str, way: str, sweeps: int) -> tuple[float, float]:
        """CPU seconds per sweep after the first of a refine call of ``sweeps`` sweeps, and the
        acceptance over them."""
        decide, scoring = ways[way]
        with tempfile.TemporaryDirectory() as tmp:
            trace = Path(tmp) / "trace.npz"
            refiner = make_plugin("refiner", "vae_mc", {**COMMON, "model": a.model, "steps": sweeps, "trials": 1,
                                                        "vae_every": sweeps + 1, "minimize_steps": 0, kind: 1,
                                                        "local_decide": decide, "local_scoring": scoring,
                                                        "trace": str(trace)})
            refiner.prepare(system)
            refiner.refine(x, targets, boxes, np.random.default_rng(0))
            t = np.load(trace)
            cpu = t["cpu_seconds"][t["frame"] == t["frame"].max()]  # the lockstep batch's clock, per sweep
        rows = [r for r in refiner.sweep_rows if r["sweep"] >= 1]
        accepted = sum(r["accepted"] for r in rows) / max(sum(r["proposed"] for r in rows), 1)
        return (cpu[-1] - cpu[0]) / (sweeps - 1), accepted

    for way in ways:  # compile and warm up
        run("inner", way, 2)
    for kind in ("inner", "turns", "cranks"):
        line = {"kind": kind}
        for way in ways:
            per_sweep, accepted = run(kind, way, 1 + a.rounds)
            line[way] = {"cpu_s_per_round_and_chain": round(per_sweep / a.frames, 4), "acceptance": round(accepted, 3)}
        for way in ("torch", "independent"):
            line[f"ratio_{way}_over_compiled"] = round(line[way]["cpu_s_per_round_and_chain"]
                                                       / line["compiled"]["cpu_s_per_round_and_chain"], 2)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
