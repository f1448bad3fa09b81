"""How good are a ``vae`` model's raw draws in given environments? (docs/reverse-kl.md, "Warm start")

For the training frames of a run (its prepared pairs, test frames left out), the units of the
first colour groups of each frame are placed in environments taken either from the AA reference
(``--pool aa``) or from a data-free run's pool (``starting_pool.npz``), and the model draws raw
placements (no recentring, no projection: what its density describes and what reverse KL trains).
Prints one JSON line: the median and 90th percentile of the local force-field energy per unit
(kJ/mol) of the draws, of the units in place, the median CG restraint energy, and the RMS distance
of the unit's mapped centre from its bead (nm).

    .venv/bin/python benchmarks/vae_raw_draws.py --run runs/dfh/bench/data-free --model MODEL \\
        [--checkpoint training/vae/pretrain/checkpoint.pt] [--pool aa|POOL.npz] [--mdp MDP]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from backmap.engine.loaders import load_mapping, load_topology
from backmap.engine.models import load_model
from backmap.forcefield.settings import NonbondedSettings
from backmap.refinement.restrained import RestrainedSystem
from backmap.system.pairs import PairSet
from backmap.system.pbc import box_vectors
from backmap_vae.targets import UnitTargets

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a run's work directory (its prepared pairs)")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, default=None, help="networks from a training checkpoint instead")
    ap.add_argument("--pool", default="aa", help="'aa' (the reference frames) or a starting_pool.npz")
    ap.add_argument("--mdp", type=Path, default=REPO / "recipes" / "hexane" / "reaction-field.mdp")
    ap.add_argument("--frames", type=int, default=3, help="training frames used")
    ap.add_argument("--groups", type=int, default=6, help="colour groups per frame")
    ap.add_argument("--draws", type=int, default=8, help="draws per unit")
    args = ap.parse_args()

    torch.set_num_threads(1)
    current = json.loads((args.run / "pairs" / "current.json").read_text())
    pairs = PairSet.load(args.run / "pairs" / current["file"])
    train = np.flatnonzero(~np.isin(pairs.frames, current["test_frames"]))
    model = load_model(args.model)
    gen = model.generator
    if args.checkpoint is not None:
        state = torch.load(args.checkpoint, weights_only=False)["generator"]
        for part in ("encoder", "head", "latent_nets"):
            getattr(gen, part).load_state_dict(state[part])
    top_path = model.topology
    top = load_topology(top_path)
    cg_top = load_mapping(model.mapping[0], top).cg_topology(top)
    system = RestrainedSystem(cg_top, top_path, NonbondedSettings.from_mdp(args.mdp))
    targets = UnitTargets(system, gen, model.channels, 300, 2e3, 1e6, 0.5, "none")
    pool = None if args.pool == "aa" else np.load(args.pool)["pool"]
    out: dict[str, list] = {"draws": [], "in_place": [], "restraint": [], "miss": []}
    rng = torch.Generator().manual_seed(1)
    for k, f in enumerate(train[:args.frames]):
        x = pairs.aa[f] if pool is None else pool[k]
        box = np.asarray(box_vectors(pairs.dimensions[f]), np.float64).reshape(3, 3)
        cg = torch.as_tensor(pairs.cg[f], dtype=torch.float64)
        for group in targets.frame_groups(pairs.cg[f], box)[:args.groups]:
            units = targets.bind(group, torch.as_tensor(x, dtype=torch.float64), cg, box)
            with torch.no_grad():
                draws, _z = gen.latent_model(units.env).generate(args.draws, rng, raw=True)
                ff, bias = units.energies(draws)
                here, _ = units.energies(units.local()[:, None])
            out["draws"].append(ff.flatten())
            out["in_place"].append(here.flatten())
            out["restraint"].append(bias.flatten())
            out["miss"].append(draws.double().mean(2).norm(dim=-1).flatten())
    r = {k: torch.cat(v) for k, v in out.items()}
    print(json.dumps({"benchmark": "vae_raw_draws", "model": str(args.model), "checkpoint": str(args.checkpoint),
                      "pool": args.pool, "energy_per_unit_median": round(float(r["draws"].median()), 1),
                      "energy_per_unit_q90": round(float(r["draws"].quantile(0.9)), 1),
                      "in_place_median": round(float(r["in_place"].median()), 1),
                      "restraint_median": round(float(r["restraint"].median()), 2),
                      "bead_miss_rms_nm": round(float(r["miss"].pow(2).mean().sqrt()), 4)}))


if __name__ == "__main__":
    main()
