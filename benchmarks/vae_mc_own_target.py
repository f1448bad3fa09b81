"""Is vae_mc exact on sPS? Its target against openmm's, and vae_mc started from its own target.

vae_mc holds exactly only the bonds its decoder builds inside a bead; the other rigid bonds
(between beads, ring closures) are springs of ``closure_stiffness`` (its ``bond_model``). openmm
holds every rigid bond by a constraint. So the two sample different targets, and "vae_mc's LJ
energy leaves openmm's equilibrium" is no evidence of a bias. This benchmark separates the two:

1. From each test frame after ``--equilibrate-ps`` of constrained openmm (the decorrelation
   benchmark's starts), openmm runs ``--ps`` on each target: all bonds constrained (2 fs), and
   vae_mc's bond model (held bonds constrained, springs; 0.5 fs; the Fixman term, < 3 kJ/mol of
   LJ on sPS, left out). The LJ energy per frame over the second half of each run is the target's
   level; their difference is what the springs do.
2. vae_mc (``--trials``, ``--sweeps``) starts from the last frame of the run on its own target,
   keeping the springs (``start_projection: held``). An exact chain started from a draw of its
   target stays distributed as the target at every sweep: the LJ energy's change from the start
   to the last quarter of the sweeps, and the springs' stretch, must not drift.

Prints one JSON line per frame and a summary (mean ± standard error over frames):

    python benchmarks/vae_mc_own_target.py --model models/sps-vae --frames 8 --sweeps 200

(~20 min of openmm and ~20 min of vae_mc on one core for 8 frames; docs/vae-sps.md, "The LJ gap".)

``--quick``: the same code path on 2 frames, 0.01 ps to equilibrate, 0.02 ps on each target and 2
sweeps of models/sps-vae, in a temporary folder; without ../shared/data/sps it prints ``{"skipped": ...}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backmap.engine.loaders import make_plugin
from backmap.forcefield import ForceField
from vae_mc_decorrelation import COMMON, SPS, equilibrated, restrained_run, sps_frames


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, float)
    return round(float(v.mean()), 1), round(float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan"), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required="--quick" not in sys.argv[1:], help="a trained vae model folder")
    ap.add_argument("--first", type=int, default=1, help="first test frame")
    ap.add_argument("--frames", type=int, default=8, help="frames (one vae_mc chain each, in lockstep)")
    ap.add_argument("--equilibrate-ps", type=float, default=2.0)
    ap.add_argument("--ps", type=float, default=2.5, help="openmm on each target, per frame")
    ap.add_argument("--every", type=float, default=0.05, help="ps between LJ samples of the openmm runs")
    ap.add_argument("--sweeps", type=int, default=200)
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--closure-stiffness", type=float, default=1.0e6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 2 frames, 0.02 ps of openmm per target, 2 sweeps, in a temporary folder")
    a = ap.parse_args()
    if a.quick:
        if not SPS.is_dir():
            print(json.dumps({"skipped": f"needs the sPS data in {SPS}"}))
            return
        a.model = str(Path(a.model or Path(__file__).resolve().parents[1] / "models" / "sps-vae").resolve())
        a.frames, a.equilibrate_ps, a.ps, a.every, a.sweeps = 2, 0.01, 0.02, 0.01, 2
        os.chdir(tempfile.mkdtemp(prefix="backmap-vae-mc-own-target-quick-"))
    torch.set_num_threads(1)
    rng = np.random.default_rng(a.seed)
    system, x, targets, boxes = sps_frames(a.first, a.frames)
    ff = ForceField(system.topology, system.nonbonded, torch.float64)

    def lj(y: np.ndarray, box: np.ndarray) -> float:
        return float(ff.energy(torch.as_tensor(y[None]), box[None], whole=True, terms=("lj",)).terms["lj"][0])

    vae = make_plugin("refiner", "vae_mc", {**COMMON, "model": a.model, "steps": a.sweeps, "trials": a.trials,
                                            "closure_stiffness": a.closure_stiffness, "start_projection": "held",
                                            "trace": "vae_mc_own_target_trace.npz"})
    vae.prepare(system)
    bonds = vae.bond_model()
    omm = make_plugin("refiner", "openmm", {**COMMON, "threads": 1})
    omm.prepare(system)
    starts = equilibrated(system, [(x[f], targets[f], boxes[f:f + 1]) for f in range(a.frames)], a.equilibrate_ps, rng)

    def stretch(y: np.ndarray) -> np.ndarray:
        return np.linalg.norm(y[bonds.sprung[:, 0]] - y[bonds.sprung[:, 1]], axis=-1) - bonds.sprung_lengths

    rows, vae_starts = [], []
    t0 = time.process_time()
    for f, (y0, target, box) in enumerate(starts):
        box = box.reshape(3, 3)
        levels = {}
        for name, model in (("constrained", None), ("vae_mc_target", bonds)):
            y, series = restrained_run(omm, y0, target, box, a.ps, int(rng.integers(2**31)), model, a.every,
                                       lambda p: lj(p, box))
            levels[name] = float(np.mean(series[len(series) // 2:]))
        vae_starts.append(y)
        rows.append({"frame": a.first + f, "lj_constrained": round(levels["constrained"], 1),
                     "lj_vae_mc_target": round(levels["vae_mc_target"], 1),
                     "target_difference": round(levels["vae_mc_target"] - levels["constrained"], 1),
                     "vae_mc_start_lj": round(lj(y, box), 1)})
    openmm_cpu = time.process_time() - t0
    t0 = time.process_time()
    vae.refine(np.stack(vae_starts), targets, boxes, rng)
    vae_cpu = time.process_time() - t0
    t = np.load("vae_mc_own_target_trace.npz")
    order = np.lexsort((t["frame"], t["sweep"]))
    lj_sweeps = np.asarray(t["lj"])[order].reshape(-1, a.frames)
    pos = t["positions"][order].reshape(-1, a.frames, t["positions"].shape[1], 3)
    last = lj_sweeps[-max(len(lj_sweeps) // 4, 1):].mean(0)
    for f, row in enumerate(rows):
        row["vae_mc_change"] = round(float(last[f] - row["vae_mc_start_lj"]), 1)
        print(json.dumps(row))
    s0 = np.concatenate([stretch(y.astype(np.float64)) for y in vae_starts])
    s1 = np.concatenate([stretch(y.astype(np.float64)) for y in pos[-1]])
    print(json.dumps({
        "summary": "vae_mc_own_target", "frames": a.frames, "sweeps": a.sweeps, "trials": a.trials,
        "closure_stiffness": a.closure_stiffness,
        "target_difference_lj_per_frame": mean_se([r["target_difference"] for r in rows]),
        "vae_mc_lj_change_per_frame": mean_se([r["vae_mc_change"] for r in rows]),
        "spring_stretch_start_mean_sd_nm": [round(float(s0.mean()), 5), round(float(s0.std()), 5)],
        "spring_stretch_end_mean_sd_nm": [round(float(s1.mean()), 5), round(float(s1.std()), 5)],
        "thermal_sd_nm": round(float(np.sqrt(8.314462618e-3 * COMMON["temperature"] / a.closure_stiffness)), 5),
        "openmm_cpu_seconds": round(openmm_cpu, 1), "vae_mc_cpu_seconds": round(vae_cpu, 1)}))


if __name__ == "__main__":
    main()
