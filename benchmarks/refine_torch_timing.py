"""Seconds per step of the torch refiners on one sPS 568 K frame, and MALA acceptance vs time step.

Frame 0 of ``--input`` (default DeepBackmap's ``eval_t568/deepbackmap.xtc``) restrained to ``cg.xtc``
frame 0, all bonds constrained, k = 2e5 kJ/mol/nm², 1 torch thread. The structure is first relaxed by
``--relax`` Langevin steps at 1 fs with friction 20/ps (DBM's output sits far below the equilibrium
potential energy: right after the start, energy pours from kinetic into potential and the Metropolis
test sees that transient); every measurement starts from the relaxed structure.

    .venv/bin/python benchmarks/refine_torch_timing.py [--input aa.xtc] [--steps 20] [--relax 200] [--profile]
    .venv/bin/python benchmarks/refine_torch_timing.py --quick   # the same path: 2 steps, one MALA time step

Prints one JSON line per measurement.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
SPS = REPO.parent / "shared" / "data" / "sps"
sys.path.insert(0, str(REPO / "plugins"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--input", default="deepbackmap.xtc", help="AA trajectory in eval_t568/")
    ap.add_argument("--relax", type=int, default=200)
    ap.add_argument("--timesteps", default="0.0005,0.001,0.002", help="MALA time steps (ps)")
    ap.add_argument("--profile", action="store_true", help="cProfile one Langevin run")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run of the same path: 2 relaxation steps, 2 steps per measurement, one MALA "
                         "time step, 2 minimization steps")
    args = ap.parse_args()
    if args.quick:
        if not SPS.is_dir():
            print(json.dumps({"skipped": f"needs the sPS data in {SPS}"}))
            return
        args.steps, args.relax, args.timesteps, args.profile = 2, 2, "0.001", False
    torch.set_num_threads(1)

    from backmap.forcefield import NonbondedSettings
    from backmap.system.io import read_frames
    from backmap.engine.loaders import load_mapping
    from backmap.refinement.restrained import RestrainedSystem
    from backmap.engine.loaders import load_topology
    from backmap_refiners.torch_refiners import LangevinRefiner, MALARefiner

    top = load_topology(SPS / "top" / "topol.top")
    system = RestrainedSystem(load_mapping(REPO / "recipes" / "sps" / "sps.xml", top).cg_topology(top),
                              nonbonded=NonbondedSettings.from_mdp(SPS / "eval_t568" / "md.mdp"))
    aa = next(read_frames(SPS / "eval_t568" / args.input, frames=[0]))
    cg = next(read_frames(SPS / "eval_t568" / "cg.xtc", frames=[0]))
    x, targets = system.prepare(aa, cg)
    x, targets, boxes = x[None], targets[None], aa.box[None]
    common = {"temperature": 568.0, "restraint": 2e5, "constraints": "all-bonds", "seed": 1}
    if args.quick:
        common["minimize_steps"] = 2

    def run(cls, steps: int, **params):
        refiner = cls({**common, "steps": steps, **params})
        t0 = time.perf_counter()
        refiner.prepare(system)
        result = refiner.refine(x, targets, boxes, np.random.default_rng(0))
        return result, time.perf_counter() - t0, refiner

    def per_step(cls, **params) -> dict:
        _, t_setup, _ = run(cls, 0, **params)
        result, t, refiner = run(cls, args.steps, **params)
        row = {"refiner": cls.name, **params, "seconds_per_step": round((t - t_setup) / args.steps, 3),
               "setup_seconds": round(t_setup, 2), "list_builds": refiner.potential.list_builds,
               **{k: round(v, 4) for k, v in result.log[0].items()}}
        print(json.dumps(row), flush=True)
        return row

    t0 = time.perf_counter()
    relaxed, _, _ = run(LangevinRefiner, args.relax, timestep=0.001, friction=20.0)
    print(json.dumps({"input": args.input, "relax_steps": args.relax, "seconds": round(time.perf_counter() - t0, 1),
                      **relaxed.log[0]}), flush=True)
    x = relaxed.positions
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(LangevinRefiner, args.steps, timestep=0.001)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    per_step(LangevinRefiner, timestep=0.001)
    per_step(LangevinRefiner, timestep=0.001, force_precision="float32")
    for dt in (float(s) for s in args.timesteps.split(",")):
        per_step(MALARefiner, timestep=dt)
    per_step(MALARefiner, timestep=0.001, force_precision="float32")


if __name__ == "__main__":
    main()
