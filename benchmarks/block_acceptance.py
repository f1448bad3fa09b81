"""Acceptance of vae_mc block moves on one frame: for each block, one move of every molecule's
block (in the refiner's colour groups), with the share accepted and quantiles of ln r. How the
block table of docs/vae.md ("Block moves") was measured.

    .venv/bin/python benchmarks/block_acceptance.py --model runs/sps-vae-blocks/model \\
        --topology ../shared/data/sps/top/topol.top --mapping recipes/sps/sps.xml \\
        --mdp ../shared/data/sps/top/md.mdp --traj ../shared/data/sps/eval_t568/aa.xtc \\
        --cg ../shared/data/sps/eval_t568/cg.xtc "B9,S9" "B1,S1,S2" "B9,S9,B10,S10"

One JSON line per block. The start's rigid bonds are put at their lengths first (as vae_mc does).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from backmap.engine.loaders import load_mapping, load_topology
from backmap.forcefield import NonbondedSettings
from backmap.refinement.restrained import RestrainedSystem
from backmap.system.io import read_frames
from backmap.threads import torch_threads
from backmap_vae.blocks import block_moves
from backmap_vae.refiner import VAEMCRefiner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("blocks", nargs="+", help="block specs, e.g. 'B9,S9'")
    ap.add_argument("--model", required=True)
    ap.add_argument("--topology", required=True)
    ap.add_argument("--mapping", required=True)
    ap.add_argument("--mdp", required=True)
    ap.add_argument("--traj", required=True, help="the AA state (its first frame is used)")
    ap.add_argument("--cg", required=True, help="the CG frame it is restrained to (first frame)")
    ap.add_argument("--temperature", type=float, default=568.0)
    ap.add_argument("--restraint", type=float, default=2.0e5)
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    top = load_topology(Path(args.topology))
    system = RestrainedSystem(load_mapping([Path(args.mapping)], top).cg_topology(top), Path(args.topology),
                              NonbondedSettings.from_mdp(Path(args.mdp)))
    aa = next(iter(read_frames(args.traj)))
    cg = next(iter(read_frames(args.cg)))
    x, targets = system.prepare(aa, cg)
    vectors = np.asarray(aa.box, float).reshape(3, 3)
    for spec in args.blocks:
        refiner = VAEMCRefiner({"model": args.model, "temperature": args.temperature, "constraints": "all-bonds",
                                "steps": 0, "restraint": args.restraint, "minimize_steps": 0, "blocks": [spec]})
        refiner.prepare(system)
        groups = refiner.targets.frame_groups(targets, aa.box, interacting=True)
        pos = torch.as_tensor(x, dtype=torch.float64)
        pos = refiner.constraints.positions(pos[None], pos[None])[0][0]
        gen = torch.Generator().manual_seed(args.seed)
        start, accepted, ratios = time.process_time(), [], []
        with torch.no_grad(), torch_threads(1):
            for move in block_moves(refiner.targets, refiner.blocks[0], groups, args.temperature):
                result = move.move(pos, torch.as_tensor(targets, dtype=torch.float64), vectors, gen, args.trials)
                accepted.append(result.accepted.numpy())
                ratios.append(result.log_ratio.numpy())
        acc, ratio = np.concatenate(accepted), np.concatenate(ratios)
        print(json.dumps({"block": refiner.blocks[0].label, "traj": args.traj, "model": args.model,
                          "trials": args.trials, "molecules": len(acc), "acceptance": round(float(acc.mean()), 3),
                          "ln_r_quantiles_0_10_50_90_100": np.round(np.quantile(ratio, [0, .1, .5, .9, 1]), 1).tolist(),
                          "cpu_seconds": round(time.process_time() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
