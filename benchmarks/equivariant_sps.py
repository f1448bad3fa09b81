"""Speed and size of the equivariant generator against the voxel GAN on sPS (issue 13): seconds per
568 K frame (5 832 atoms) at K = 8 candidates, 1 forward pass + 2 Gibbs sweeps, on one and on two
threads; placements (atoms) per second; peak memory; parameters; training time of the shipped model.
The equivariant model is also timed with energy guidance (``--polish`` steps per placement,
backmap.sampling.polish) and with the chain-start block move (``--regrow BEADS:TRIALS``, the
sampler's ``regrow``, with 2 rounds of clash repair: the shipped model's sampling settings), which
are part of its shipped quality (docs/equivariant.md).

    .venv/bin/python benchmarks/equivariant_sps.py [--frames 2] [--polish 15] [--polish-sweeps all] \
        [--regrow S1,S2,S3,B1,B2,B3:4] \
        [--models models/sps-equivariant models/sps-voxel-gan]

Each (model, threads) runs in a fresh process, so peak memory (ru_maxrss) is that run's own; the
first frame is a warm-up and is not timed. One JSON line per run, then one with the ratios.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPS = REPO.parent / "shared" / "data" / "sps"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
from backmap.engine.assembly import make_backmapper
from backmap.engine.loaders import load_mapping, load_topology
from backmap.engine.models import load_model
from backmap.sampling.backmapper import BackmapSettings, read_cg
sps, repo, model_dir, threads, frames = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
polish, polish_sweeps = int(sys.argv[6]), sys.argv[8]
regrow, _, trials = sys.argv[7].partition(":")
model = load_model(model_dir)
gen = model.generator
if "threads" in type(gen.params).model_fields:
    gen.params = gen.params.model_copy(update={"threads": threads})
torch.set_num_threads(threads)
topo = load_topology(sps / "top" / "topol.top")
cg = load_mapping(model.mapping or [repo / "recipes" / "sps" / "sps.xml"], topo).cg_topology(topo)  # the model's own (placement order)
cg_frames = list(read_cg(cg, sps / "eval_t568" / "cg.xtc", list(range(0, 8 * (frames + 1), 8))))
bm = make_backmapper(cg, gen, BackmapSettings(candidates=8, gibbs_sweeps=2, polish_steps=polish, polish_sweeps=polish_sweeps,
                                                    regrow=[b for b in regrow.split(",") if b],
                                                    regrow_trials=int(trials or 1),
                                                    repair_clashes=2 if regrow else 0), seed=1)
next(bm.run(cg_frames[:1]))  # warm-up: caches, lazy imports
placed = bm.sampler.placements
t0 = time.perf_counter()
for _ in bm.run(cg_frames[1:]):
    pass
dt = (time.perf_counter() - t0) / frames
training = model.description.get("training", {}).get("summary", {})
log = Path(model_dir) / "train_log.csv"  # the shipped models keep their training log (wall seconds per row)
seconds = None
if log.is_file():
    rows = log.read_text().splitlines()
    seconds = float(rows[-1].split(",")[rows[0].split(",").index("seconds")])
print(json.dumps({"seconds_per_frame": dt, "placements_per_second": (bm.sampler.placements - placed) / frames / dt,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "parameters": training.get("parameters"), "training_seconds": seconds,
                  "training_iterations": training.get("iterations")}))
"""


def run(model: str, threads: int, frames: int, polish: int = 0, regrow: str = "", polish_sweeps: str = "all") -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(SPS), str(REPO), model, str(threads), str(frames),
                          str(polish), regrow, polish_sweeps],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2, help="timed frames per run (after one warm-up frame)")
    ap.add_argument("--models", nargs=2, default=["models/sps-equivariant", "models/sps-voxel-gan"],
                    help="the model measured and the baseline")
    ap.add_argument("--polish", type=int, default=15, help="energy-guidance steps of the model's guided runs (0: none)")
    ap.add_argument("--polish-sweeps", default="all", choices=["all", "last"],
                    help="sweeps the guided runs polish in (the quality tables use all)")
    ap.add_argument("--regrow", default="S1,S2,S3,B1,B2,B3:4",
                    help="BEADS:TRIALS of the model's run with the chain-start block move ('': none)")
    args = ap.parse_args()
    results = {}
    new, base = args.models
    runs = [(new, 0, ""), *([(new, args.polish, "")] if args.polish else []),
            *([(new, 0, args.regrow)] if args.regrow else []),
            *([(new, args.polish, args.regrow)] if args.polish and args.regrow else []), (base, 0, "")]
    for model, polish, regrow in runs:
        for threads in (1, 2):
            r = run(str(REPO / model), threads, args.frames, polish, regrow, args.polish_sweeps)
            results[(model, threads, polish, regrow)] = r
            print(json.dumps({"benchmark": "equivariant_sps", "model": model, "threads": threads, "candidates": 8,
                              "sweeps": "1 forward + 2 gibbs", "polish_steps": polish,
                              "polish_sweeps": args.polish_sweeps if polish else None, "regrow": regrow,
                              "frames": args.frames,
                              "seconds_per_frame": round(r["seconds_per_frame"], 2),
                              "placements_per_second": round(r["placements_per_second"]),
                              "peak_mb": round(r["peak_mb"]), "parameters": r["parameters"],
                              "training_seconds": r["training_seconds"]}), flush=True)
    seconds = lambda m, t, p=0, r="": results[(m, t, p, r)]["seconds_per_frame"]  # noqa: E731
    guided = {}
    if args.polish:
        guided = {"guided_seconds_per_frame_1_thread": round(seconds(new, 1, args.polish), 2),
                  "guided_speedup_1_thread": round(seconds(base, 1) / seconds(new, 1, args.polish), 1)}
    if args.regrow:
        guided.update({"regrow_seconds_per_frame_1_thread": round(seconds(new, 1, 0, args.regrow), 2),
                       "regrow_speedup_1_thread": round(seconds(base, 1) / seconds(new, 1, 0, args.regrow), 1)})
    if args.regrow and args.polish:
        guided.update({"guided_regrow_seconds_per_frame_1_thread": round(seconds(new, 1, args.polish, args.regrow), 2),
                       "guided_regrow_speedup_1_thread":
                           round(seconds(base, 1) / seconds(new, 1, args.polish, args.regrow), 1)})
    print(json.dumps({"benchmark": "equivariant_sps", "summary": True,
                      **{f"speedup_{t}_thread{'s' if t > 1 else ''}": round(seconds(base, t) / seconds(new, t), 1)
                         for t in (1, 2)},
                      "seconds_per_frame_1_thread": round(seconds(new, 1), 2), **guided,
                      "target_seconds_per_frame": 6.0}))


if __name__ == "__main__":
    main()
