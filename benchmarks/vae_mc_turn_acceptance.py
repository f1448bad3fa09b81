"""Acceptance of vae_mc's local turns and cranks against their width, at stationarity on sPS.

Each test frame is brought to a draw of vae_mc's own target (openmm with its bond model, as in
``vae_mc_decorrelation.py --equilibrate-ps``); then every unit hanging on one bond (phenyl rings,
the chain-start bead) is turned, and every crank cluster (a backbone bead with its ring) rotated,
once per width, everything else where it is, and the mean Metropolis acceptance
min(1, π(x')/π(x)) is printed per width and unit type (one JSON line each):

    python benchmarks/vae_mc_turn_acceptance.py --model models/sps-vae --frames 2 --widths 2,5,10,20,45,180
"""
from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import torch

from backmap_vae.rotations import rotation_groups, turn_geometry, turned
from vae_mc_decorrelation import stationary_args, stationary_starts


def main() -> None:
    ap = stationary_args(__doc__)
    ap.add_argument("--widths", default="5,10,20,45,180", help="turn widths w (degrees): angles uniform in ±w")
    a = ap.parse_args()
    widths = [float(w) for w in a.widths.split(",")]
    gen = torch.Generator().manual_seed(0)
    system, vae, starts = stationary_starts(a)
    bonds = np.asarray(system.bonds[0], np.int64).reshape(-1, 2)
    seen: dict = defaultdict(list)
    for y, target, box in starts:
        pos = torch.as_tensor(y, dtype=torch.float64)
        cg = torch.as_tensor(target, dtype=torch.float64)
        vectors = np.asarray(box, np.float64).reshape(3, 3)
        turns, cranks = rotation_groups(vae.targets, target, vectors, bonds)
        moved = turns + [(c.group, c.axes) for c in cranks]
        for group, axes in moved:
            units = vae.targets.bind_unrotated(group, pos, cg, vectors)
            local, pivot, axis = turn_geometry(units, axes)
            real = torch.as_tensor(units.index.numpy() >= 0)[..., None]
            now = units.log_target(local[:, None])[:, 0]
            for w in widths:
                angle = (2 * torch.rand(len(axes), generator=gen, dtype=torch.float64) - 1) * np.radians(w)
                proposal = torch.where(real, turned(local, pivot, axis, angle), local)
                ratio = units.log_target(proposal[:, None])[:, 0] - now
                seen[(w, units.label)].append(torch.exp(ratio.clamp(max=0)).numpy())
    for w in widths:
        per_type = {label: round(float(np.concatenate(v).mean()), 3) for (ww, label), v in sorted(seen.items())
                    if ww == w}
        kinds = {}
        for kind, is_crank in (("turns", False), ("cranks", True)):
            every = np.concatenate([np.concatenate(v) for (ww, label), v in seen.items()
                                    if ww == w and label.endswith("crank") == is_crank])
            kinds[kind] = {"acceptance": round(float(every.mean()), 3), "units": len(every)}
        print(json.dumps({"width_degrees": w, **kinds, **per_type}))


if __name__ == "__main__":
    main()
