"""Voxel GAN on sPS (5 832 atoms): training throughput and inference time for one frame.

    .venv/bin/python benchmarks/voxel_gan_sps.py [--model runs/sps-gan] [--train-iterations 10]
        [--candidates 8 64] [--skip-unbatched] [--preset cpu]

Training: unit sequences (one bead's atoms in order) per second of the generator, each with its
share of critic steps, measured over ``--train-iterations`` iterations (batch 64) after one warm-up
iteration, on the 14 DBM training snapshots. Inference: one 568 K CG frame, 1 forward pass + 2 Gibbs
sweeps, lowest-energy selection, K candidates per atom, with batching across molecules on (36 chains
per generator call) and off (one chain at a time); the network's cost does not depend on how well it
is trained, so an untrained model of the same preset is used when ``--model`` is not given. Each
measurement is a fresh process with one torch thread; one JSON line per measurement, then ratios.
Reads ../shared/data/sps (the training snapshots, topology and 568 K CG frame 0).

``--quick``: the same code paths, small: the ``tiny`` preset, one training iteration on one
snapshot (skipped without ../shared), and inference of an untrained model on the first 2 chains of
tests/data/sps frame 0 (topology by scripts/make_sps_topology.py) at K = 2, forward pass only,
batched and one chain at a time: a smoke test (~40 s), not a measurement.
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

COMMON = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from pathlib import Path
from backmap.engine.loaders import load_mapping
from backmap.engine.loaders import load_topology
sps, repo, preset, model = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
top, cg_path = sps / "top" / "topol.top", sps / "eval_t568" / "cg.xtc"
if (sps / "quick").is_dir():  # --quick: a small system written by the parent
    top, cg_path = sps / "quick" / "topol.top", sps / "quick" / "cg.gro"
topo = load_topology(top)
cg = load_mapping(repo / "recipes" / "sps" / "sps.xml", topo).cg_topology(topo)
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

TRAIN = COMMON + r"""
from backmap.system.pairs import pair_folder_frames, pairs_from_folders
from backmap.sampling.environment import Channels
from backmap.engine.registry import default_registry
from backmap.training.data import TrainOptions
from backmap.training.energies import LocalEnergies
from backmap.training.loop import TrainingLoop
from backmap.training.sequences import build_sequences
from backmap.sampling.traversal import make_plan
from backmap_voxel_gan.features import ChannelLayout
from backmap_voxel_gan.generator import VoxelGAN
iterations, snapshots = int(sys.argv[5]), int(sys.argv[6])
gen = VoxelGAN({"preset": preset})
pairs = pairs_from_folders(cg, sps / "train", pair_folder_frames(sps / "train")[:snapshots or None])
dfs = default_registry().get("traversal", "dfs").cls()
plans = {cb.block.moltype.name: make_plan(cb.mapping, dfs, np.random.default_rng(0)) for cb in cg.blocks}
channels = Channels.from_system(cg)
t0 = time.perf_counter()
seqs = build_sequences(cg, plans, pairs, channels, ("forward", "gibbs"), cutoff=gen.environment.cutoff)
t_build = time.perf_counter() - t0
gen.setup_layout(ChannelLayout(channels.n_atom_types, channels.n_interactions, len(channels.bead_types)), 0)
reg = default_registry().get("regularizer", "energy_match").cls({"weight": 0.01})
def loop(n):
    return TrainingLoop(gen, seqs, 2, TrainOptions(epochs=1, max_iterations=n, batch_size=64), seed=0,
                        regularizers=[reg], energies=LocalEnergies(topo))
warm = loop(1)
warm.run()  # warm-up
t0 = time.perf_counter()
loop(iterations).run()
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "iterations": iterations, "sequences": iterations * 64, "build_s": t_build,
                  "peak_mb": peak_mb()}))
"""

INFER = COMMON + r"""
from backmap.engine.assembly import make_backmapper
from backmap.engine.models import load_model
from backmap.sampling.backmapper import BackmapSettings, read_cg
from backmap.engine.registry import default_registry
candidates, batch, gibbs = int(sys.argv[5]), sys.argv[6] == "1", int(sys.argv[7])
if model:
    gen = load_model(Path(model)).generator
else:  # an untrained model of the preset: the same cost per call
    from backmap.sampling.environment import Channels
    from backmap_voxel_gan.features import ChannelLayout
    channels = Channels.from_system(cg)
    gen = default_registry().get("generator", "voxel_gan").cls({"preset": preset})
    gen.setup_layout(ChannelLayout(channels.n_atom_types, channels.n_interactions, len(channels.bead_types)))
frame = next(read_cg(cg, cg_path, [0]))
bm = make_backmapper(cg, gen, BackmapSettings(candidates=candidates, gibbs_sweeps=gibbs, batch_molecules=batch), seed=1)
t0 = time.perf_counter()
next(bm.run([frame]))
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "placements": bm.sampler.placements, "atoms": topo.n_atoms, "peak_mb": peak_mb(),
                  "mflop_per_placement": gen.flops() / 1e6}))
"""


def child(code: str, *args, data: Path = SPS) -> dict:
    out = subprocess.run([sys.executable, "-c", code, str(data), str(REPO), *map(str, args)], check=True,
                         capture_output=True, text=True, env={"BACKMAP_NO_PROGRESS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def quick_system(folder: Path, chains: int) -> Path:
    """``folder``/quick: the first ``chains`` sPS chains of tests/data/sps (frame 0) and their topology
    (scripts/make_sps_topology.py); returns ``folder``."""
    import MDAnalysis as mda

    out = folder / "quick"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_sps_topology.py"), "--out", str(out),
                    "--chains", str(chains)], check=True, capture_output=True)
    data = REPO / "tests" / "data" / "sps"
    mda.Universe(str(data / "cg.gro"), str(data / "cg.xtc")).atoms[:20 * chains].write(str(out / "cg.gro"))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="trained run directory or model folder (default: untrained)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--train-iterations", type=int, default=10, help="0: skip the training measurement")
    ap.add_argument("--candidates", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--skip-unbatched", action="store_true", help="only the batched inference runs")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: tiny preset, 1 iteration on 1 snapshot, inference on 2 chains of tests/data/sps")
    args = ap.parse_args()
    snapshots, gibbs, data, tmp = 0, 2, SPS, None
    if args.quick:
        args.preset, args.candidates, args.model, snapshots, gibbs = "tiny", [2], "", 1, 0
        args.train_iterations = 1 if (SPS / "train").is_dir() else 0
        tmp = tempfile.TemporaryDirectory()
        data = quick_system(Path(tmp.name), chains=2)
    base = {"benchmark": "voxel_gan_sps", "preset": args.preset, "threads": 1,
            **({"quick": True} if args.quick else {})}
    if args.train_iterations:
        r = child(TRAIN, args.preset, "", args.train_iterations, snapshots)
        print(json.dumps({**base, "measure": "training", "batch_sequences": 64,
                          "sequences_per_second": round(r["sequences"] / r["seconds"], 2),
                          "seconds_per_iteration": round(r["seconds"] / r["iterations"], 2),
                          "sequence_build_seconds": round(r["build_s"], 1), "peak_mb": round(r["peak_mb"])}), flush=True)
    model = str(Path(args.model).resolve()) if args.model else ""
    for k in args.candidates:
        times = {}
        for batch in ((True,) if args.skip_unbatched else (True, False)):
            r = child(INFER, args.preset, model, k, "1" if batch else "0", gibbs, data=data)
            times[batch] = r["seconds"]
            print(json.dumps({**base, "measure": "inference", "atoms": r["atoms"],
                              "sweeps": f"1 forward + {gibbs} gibbs",
                              "candidates": k, "batch_molecules": batch, "seconds": round(r["seconds"], 1),
                              "placements_per_second": round(r["placements"] / r["seconds"]),
                              "mflop_per_placement": round(r["mflop_per_placement"], 1),
                              "trained_model": bool(model), "peak_mb": round(r["peak_mb"])}), flush=True)
        if len(times) == 2:
            print(json.dumps({**base, "measure": "inference", "candidates": k,
                              "speedup_batching": round(times[False] / times[True], 2)}), flush=True)


if __name__ == "__main__":
    main()
