"""Speed and size of the equivariant generator against the voxel GAN on sPS: seconds per
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
first frame is a warm-up and is not timed. One JSON line per run, then one with the ratios. Reads
../shared/data/sps (DBM's topology and 568 K CG frames 0, 8, 16, ...).

``--quick``: the same code path on the repository's own data (the first 3 chains of the first two
tests/data/sps frames, their topology written by scripts/make_sps_topology.py), K = 2, forward pass
only, one thread, 1 timed frame; the model with guidance + regrow together, and the baseline: a
smoke test (~30 s), not a measurement.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
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
candidates, gibbs = int(sys.argv[9]), int(sys.argv[10])
top, cg_path = sps / "top" / "topol.top", sps / "eval_t568" / "cg.xtc"
frame_ids = list(range(0, 8 * (frames + 1), 8))
if (sps / "quick").is_dir():  # --quick: a small system written by the parent
    top, cg_path, frame_ids = sps / "quick" / "topol.top", sps / "quick" / "cg.xtc", list(range(frames + 1))
model = load_model(model_dir)
gen = model.generator
if "threads" in type(gen.params).model_fields:
    gen.params = gen.params.model_copy(update={"threads": threads})
torch.set_num_threads(threads)
topo = load_topology(top)
cg = load_mapping(model.mapping or [repo / "recipes" / "sps" / "sps.xml"], topo).cg_topology(topo)  # the model's own (placement order)
cg_frames = list(read_cg(cg, cg_path, frame_ids))
bm = make_backmapper(cg, gen, BackmapSettings(candidates=candidates, gibbs_sweeps=gibbs, polish_steps=polish,
                                                    polish_sweeps=polish_sweeps,
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


def run(model: str, threads: int, frames: int, polish: int = 0, regrow: str = "", polish_sweeps: str = "all",
        data: Path = SPS, candidates: int = 8, gibbs: int = 2) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(data), str(REPO), model, str(threads), str(frames),
                          str(polish), regrow, polish_sweeps, str(candidates), str(gibbs)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def quick_system(folder: Path, chains: int, frames: int) -> None:
    """``folder``/quick: the first ``chains`` sPS chains of tests/data/sps (first ``frames`` frames) and
    their topology (scripts/make_sps_topology.py)."""
    import MDAnalysis as mda

    out = folder / "quick"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_sps_topology.py"), "--out", str(out),
                    "--chains", str(chains)], check=True, capture_output=True)
    data = REPO / "tests" / "data" / "sps"
    u = mda.Universe(str(data / "cg.gro"), str(data / "cg.xtc"))
    beads = u.atoms[:20 * chains]  # 20 beads per chain
    with mda.Writer(str(out / "cg.xtc"), beads.n_atoms) as w:
        for _ in u.trajectory[:frames]:
            w.write(beads)


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
    ap.add_argument("--quick", action="store_true",
                    help="smoke test on tests/data/sps (3 chains, K = 2, forward pass only, one thread; "
                         "no ../shared needed)")
    args = ap.parse_args()
    results = {}
    new, base = args.models
    runs = [(new, 0, ""), *([(new, args.polish, "")] if args.polish else []),
            *([(new, 0, args.regrow)] if args.regrow else []),
            *([(new, args.polish, args.regrow)] if args.polish and args.regrow else []), (base, 0, "")]
    data, candidates, gibbs, thread_counts, tmp = SPS, 8, 2, (1, 2), None
    if args.quick:
        tmp = tempfile.TemporaryDirectory()
        data, candidates, gibbs, thread_counts, args.frames = Path(tmp.name), 2, 0, (1,), 1
        quick_system(data, chains=3, frames=2)
        args.polish, args.regrow = 2, "S1,B1:2"
        runs = [(new, args.polish, args.regrow), (base, 0, "")]
    for model, polish, regrow in runs:
        for threads in thread_counts:
            r = run(str(REPO / model), threads, args.frames, polish, regrow, args.polish_sweeps, data,
                    candidates, gibbs)
            results[(model, threads, polish, regrow)] = r
            print(json.dumps({"benchmark": "equivariant_sps", "model": model, "threads": threads,
                              "candidates": candidates, "sweeps": f"1 forward + {gibbs} gibbs", "polish_steps": polish,
                              "polish_sweeps": args.polish_sweeps if polish else None, "regrow": regrow,
                              "frames": args.frames,
                              "seconds_per_frame": round(r["seconds_per_frame"], 2),
                              "placements_per_second": round(r["placements_per_second"]),
                              "peak_mb": round(r["peak_mb"]), "parameters": r["parameters"],
                              "training_seconds": r["training_seconds"]}), flush=True)
    seconds = lambda m, t, p=0, r="": results[(m, t, p, r)]["seconds_per_frame"]  # noqa: E731
    if args.quick:
        guided_regrow = seconds(new, 1, args.polish, args.regrow)
        print(json.dumps({"benchmark": "equivariant_sps", "summary": True, "quick": True,
                          "guided_regrow_seconds_per_frame_1_thread": round(guided_regrow, 2),
                          "baseline_seconds_per_frame_1_thread": round(seconds(base, 1), 2)}))
        return
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
