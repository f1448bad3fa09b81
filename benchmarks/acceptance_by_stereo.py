"""Whole-bead vae_mc acceptance at a fixed state, split by whether the stereocentre the bead holds
has the reference's hand: for each bead type asked for, 8 moves of every bead of that type (32
trials, sequential decisions, the state not updated), per frame. How the stickiness of inverted
centres on sPS was measured (docs/vae-sps.md, "From the voxel GAN's output").

    .venv/bin/python benchmarks/acceptance_by_stereo.py --model models/sps-vae \\
        --topology ../shared/data/sps/top/topol.top --mapping recipes/sps/sps.xml \\
        --mdp ../shared/data/sps/top/md.mdp --reference ../shared/data/sps/eval_t568/aa.xtc \\
        --traj vae60.xtc --cg voxel_cg.trr --frames 4 B10 B2 B5

One JSON line per bead type: beads (bead-frames) and mean acceptance with the centre inverted and
kept; a bead holding no centre counts as kept.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from backmap.engine.loaders import load_mapping, load_topology
from backmap.forcefield import NonbondedSettings
from backmap.metrics.geometry import signed_volumes
from backmap.refinement.latent_moves import vae_move_sequential
from backmap.refinement.restrained import RestrainedSystem
from backmap.sampling.chirality import load_chiral_centres
from backmap.system.io import read_frames
from backmap.system.pbc import Unwrapper
from backmap.threads import torch_threads
from backmap_vae.refiner import VAEMCRefiner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("beads", nargs="+", help="bead names, e.g. B10")
    for name in ("--model", "--topology", "--mapping", "--mdp", "--reference", "--traj", "--cg"):
        ap.add_argument(name, required=True)
    ap.add_argument("--frames", type=int, default=4, help="the first N frames")
    ap.add_argument("--temperature", type=float, default=568.0)
    ap.add_argument("--restraint", type=float, default=2.0e5)
    ap.add_argument("--moves", type=int, default=8)
    args = ap.parse_args()

    top = load_topology(Path(args.topology))
    centres = load_chiral_centres(top, args.reference)
    rows, slots = centres.global_rows(top)
    hand = centres.sign[rows[:, 0], slots]
    centre_atoms = np.unique(rows[:, 0])
    whole = Unwrapper(top)
    system = RestrainedSystem(load_mapping([Path(args.mapping)], top).cg_topology(top), Path(args.topology),
                              NonbondedSettings.from_mdp(Path(args.mdp)))
    refiner = VAEMCRefiner({"model": args.model, "temperature": args.temperature, "constraints": "all-bonds",
                            "steps": 0, "restraint": args.restraint, "minimize_steps": 0, "blocks": []})
    refiner.prepare(system)
    found = {b: ([], []) for b in args.beads}  # inverted, kept
    for f, (aa, cg) in enumerate(zip(read_frames(args.traj), read_frames(args.cg))):
        if f >= args.frames:
            break
        vol = signed_volumes(whole(aa.positions, aa.dimensions)[None], rows)[0]
        inverted = set(np.unique(rows[:, 0][(np.sign(vol) != hand) & (hand != 0)]).tolist())
        x, targets = system.prepare(aa, cg)
        vectors = np.asarray(aa.box, float).reshape(3, 3)
        pos = torch.as_tensor(x, dtype=torch.float64)
        pos = refiner.constraints.positions(pos[None], pos[None])[0][0]
        t = torch.as_tensor(targets, dtype=torch.float64)
        gen = torch.Generator().manual_seed(f)
        with torch.no_grad(), torch_threads(1):
            for group in refiner.targets.frame_groups(targets, aa.box, interacting=True):
                units = refiner.targets.bind(group, pos, t, vectors)
                name = units.label.split(":")[1]
                if name not in found:
                    continue
                model = refiner.generator.latent_model(units.env, args.temperature)
                accepted = np.zeros(len(group.atoms))
                for _ in range(args.moves):
                    accepted += vae_move_sequential(model, units.local(), units.log_target, units.coupling, gen,
                                                    32).accepted.numpy()
                for u, unit in enumerate(group.atoms):
                    held = set(unit[unit >= 0].tolist()) & set(centre_atoms.tolist())
                    found[name][0 if held & inverted else 1].append(accepted[u] / args.moves)
    for name, (inv, kept) in found.items():
        print(json.dumps({"bead": name, "traj": args.traj, "inverted_beads": len(inv),
                          "acceptance_inverted": round(float(np.mean(inv)), 4) if inv else None,
                          "kept_beads": len(kept), "acceptance_kept": round(float(np.mean(kept)), 4) if kept else None}))


if __name__ == "__main__":
    main()
