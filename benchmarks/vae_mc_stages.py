"""Where a vae_mc sweep's CPU time goes, by stage, on sPS at 568 K (F chains in lockstep, M trials).

The refiner runs as ``backmap refine --batch F`` runs it; the stages are timed by wrapping the
public pieces a sweep calls (no copy of the sweep's loop):

- ``bind``: the units' environments in their frames (``UnitTargets.bind``);
- ``environment_encoder``: the encoder over each unit's environment (``VAEGenerator.latent_model``);
- ``posterior_draw``: z₁ ~ q(z | x₁) (``BoundLatentModel.encode``);
- ``decoder_draw``: M pairs from the prior and the autoregressive decoder (``generate``);
- ``target``: ln π of the current state and the trials, the force field's local energies and the
  restraint (``StackedUnits.log_target``);
- ``densities``: ln q, ln P(z), ln P(x | z) of the current pair and the trials (``log_joint``);
- ``decisions``: the sequential decisions and their couplings (``decide_sequentially``).

The first sweep (compilation, tables) is left out. Prints one JSON line: CPU ms per chain and
sweep of each stage, the rest of the sweep (moving the accepted atoms, counts), the total and
the mean acceptance over all sweeps (the first included).

    python benchmarks/vae_mc_stages.py --model models/sps-vae --chains 32 --trials 1 --sweeps 4
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from collections import defaultdict

import numpy as np
import torch

from backmap.engine.loaders import make_plugin
from backmap.refinement import latent_moves
from backmap_vae import generator as vae_generator
from backmap_vae import refiner as vae_refiner
from backmap_vae import targets as vae_targets

from vae_mc_decorrelation import COMMON, sps_frames

SPENT: dict[str, float] = defaultdict(float)


def timed(stage: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[stage] += time.process_time() - start
    return wrapper


def instrument() -> None:
    """Wrap the stages where the refiner finds them (class attributes, module globals), and the
    sweep itself: the first sweep's times (compilation, tables) are dropped."""
    for owner, name, stage in ((vae_targets.UnitTargets, "bind", "bind"),
                               (vae_generator.VAEGenerator, "latent_model", "environment_encoder"),
                               (vae_generator.BoundLatentModel, "encode", "posterior_draw"),
                               (vae_generator.BoundLatentModel, "generate", "decoder_draw"),
                               (vae_targets.StackedUnits, "log_target", "target"),
                               (vae_generator.BoundLatentModel, "log_joint", "densities"),
                               (latent_moves, "decide_sequentially", "decisions")):
        setattr(owner, name, timed(stage, getattr(owner, name)))
    sweep = timed("total", vae_refiner.VAEMCRefiner._sweep)

    def first_dropped(self, chains, index, generator):
        sweep(self, chains, index, generator)
        if index == 0:
            SPENT.clear()

    vae_refiner.VAEMCRefiner._sweep = first_dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="a trained vae model folder")
    ap.add_argument("--chains", type=int, default=8, help="reference frames 1 … F, in lockstep")
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--sweeps", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(1)
    system, x, targets, boxes = sps_frames(1, a.chains)
    instrument()

    refiner = make_plugin("refiner", "vae_mc", {**COMMON, "model": a.model, "steps": a.sweeps, "trials": a.trials})
    refiner.prepare(system)
    result = refiner.refine(x, targets, boxes, np.random.default_rng(0))
    per = 1e3 / ((a.sweeps - 1) * a.chains)  # ms per chain and sweep
    total = SPENT.pop("total") * per
    stages = {k: round(v * per, 1) for k, v in SPENT.items()}
    print(json.dumps({"benchmark": "vae_mc_stages", "chains": a.chains, "trials": a.trials,
                      "ms_per_chain_sweep": stages, "rest": round(total - sum(stages.values()), 1),
                      "total": round(total, 1),
                      "acceptance": round(float(np.mean([r["acceptance"] for r in result.log])), 3)}))


if __name__ == "__main__":
    main()
