"""How far vae_mc's turns and cranks move, per CPU-second, against their width and the number of
angles scored per move (``rotation_candidates``), at stationarity on sPS.

A test frame is brought to a draw of vae_mc's own target (openmm on its bond model, as in
``vae_mc_decorrelation.py --equilibrate-ps``). For every turn unit and crank cluster one move's
candidate set is scored, everything else where it is, and the move's exact transition
probabilities give its mean squared angle (Metropolis: min(1, π'/π)·φ²; heat bath: Σ_j p_j φ_j²)
and the probability that it moves. One JSON line per kind, width and n, with the CPU seconds of a
round over the frame:

    python benchmarks/vae_mc_rotation_jumps.py --model models/sps-vae --widths 0.1,0.2,0.5,1.0 --candidates 1,4,8,16
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from backmap.engine.loaders import make_plugin
from backmap_vae.rotations import candidate_angles, rotation_groups, turn_geometry, turned
from vae_mc_decorrelation import COMMON, equilibrated, sps_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--frame", type=int, default=1)
    ap.add_argument("--equilibrate-ps", type=float, default=2.0)
    ap.add_argument("--widths", default="0.1,0.2,0.5,1.0", help="w (rad)")
    ap.add_argument("--candidates", default="1,4,8,16", help="angles per move (1: Metropolis)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    system, x, targets, boxes = sps_frames(a.frame, 1)
    vae = make_plugin("refiner", "vae_mc", {**COMMON, "model": a.model, "steps": 1, "start_projection": "held"})
    vae.prepare(system)
    y, target, box = equilibrated(system, [(x[0], targets[0], boxes[0:1])], a.equilibrate_ps,
                                  np.random.default_rng(0), bonds=vae.bond_model())[0]
    T = vae.targets
    pos, cg = torch.as_tensor(y, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)
    vectors = np.asarray(box, np.float64).reshape(3, 3)
    bonds = np.asarray(system.bonds[0], np.int64).reshape(-1, 2)
    turns, crank_list = rotation_groups(T, target, vectors, bonds)
    cranks = [(c.group, c.axes) for c in crank_list]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for kind, moves in (("turns", turns), ("cranks", cranks)):
            for w in (float(v) for v in a.widths.split(",")):
                for n in (int(v) for v in a.candidates.split(",")):
                    start = time.process_time()
                    squares, moved = [], []
                    for group, axes in moves:
                        units = T.bind_unrotated(group, pos, cg, vectors)
                        local, pivot, axis = turn_geometry(units, axes)
                        angles = candidate_angles(len(axes), w, n, gen)
                        logp = units.log_target(torch.stack([turned(local, pivot, axis, t) for t in angles.T], 1))
                        if n == 1:
                            go = torch.exp((logp[:, 1] - logp[:, 0]).clamp(max=0))
                            p = torch.stack([1 - go, go], 1)
                        else:
                            p = torch.softmax(logp, 1)
                        squares.append((p * angles ** 2).sum(1).numpy())
                        moved.append((p * (angles != 0)).sum(1).numpy())
                    seconds = time.process_time() - start
                    msd = float(np.concatenate(squares).mean())
                    print(json.dumps({"kind": kind, "width": w, "candidates": n, "units": len(np.concatenate(moved)),
                                      "moved": round(float(np.concatenate(moved).mean()), 3),
                                      "rms_jump_degrees": round(float(np.degrees(np.sqrt(msd))), 2),
                                      "cpu_seconds_per_round": round(seconds, 3),
                                      "squared_jump_per_cpu_second": round(msd / seconds, 4)}), flush=True)


if __name__ == "__main__":
    main()
