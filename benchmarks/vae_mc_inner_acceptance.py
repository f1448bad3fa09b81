"""Acceptance of vae_mc's inner moves (``inner``) against their step, at stationarity on sPS.

Each test frame is brought to a draw of vae_mc's own target (openmm with its bond model, as in
``vae_mc_decorrelation.py --equilibrate-ps``). Then every inner move of every unit — hydrogen
pivots, cranks of an atom with its hydrogens, pivots of a hanging group, wobbles of a unit hanging
on one bond, shifts (an atom with its hydrogens rotated, its larger branches carried along), and the
moves across a crank cluster's units (a CH with its ring about its two backbone partners, rotated
together or the ring carried) — is proposed once per step, everything else where it is, and the
acceptance (the share of proposals accepted) and the rms displacement of an accepted move's atoms are
printed per step, kind and bead type (one JSON line per step):

    python benchmarks/vae_mc_inner_acceptance.py --model models/sps-vae --frames 2 --steps 0.005,0.01,0.02,0.04
"""
from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import torch

from backmap_vae.inner import InnerGroup, inner_group, inner_move, neighbours
from backmap_vae.rotations import rotation_groups
from vae_mc_decorrelation import stationary_args, stationary_starts


def kind_name(moved: int, crank: bool, whole: bool, carries: bool = False) -> str:
    """What an inner move is, from how many atoms it moves and about what."""
    if carries:
        return "shift"
    if crank:
        return "crank"
    if whole:
        return "wobble"
    return "hydrogen pivot" if moved == 1 else "group pivot"


def main() -> None:
    ap = stationary_args(__doc__)
    ap.add_argument("--steps", default="0.005,0.01,0.02,0.04", help="inner_step values (nm)")
    a = ap.parse_args()
    steps = [float(s) for s in a.steps.split(",")]
    gen = torch.Generator().manual_seed(0)
    system, vae, starts = stationary_starts(a)
    bonds = np.asarray(system.bonds[0], np.int64).reshape(-1, 2)
    nbrs = neighbours(bonds, system.n_atoms)
    seen: dict = defaultdict(list)  # (step, kind, label) → (acceptance, rms of accepted) arrays
    with torch.no_grad():
        for y, target, box in starts:
            pos = torch.as_tensor(y, dtype=torch.float64)
            cg = torch.as_tensor(target, dtype=torch.float64)
            vectors = np.asarray(box, np.float64).reshape(3, 3)
            _, cranks = rotation_groups(vae.targets, target, vectors, bonds)
            apart = vae.targets.frame_groups(target, vectors, interacting=False)
            plain = [(g, inner_group(g, nbrs), "") for g in apart]
            across = [(c.group, inner_group(c.group, nbrs, spanning=True), "across units ") for c in cranks]
            for group, moves, prefix in plain + across:
                if moves is None:
                    continue
                units = vae.targets.bind_unrotated(group, pos, cg, vectors)
                real = units.index >= 0
                local = units.local().double()
                for k in range(int(moves.kinds.max())):
                    has = moves.kinds > k
                    mask = moves.masks[:, k] & has[:, None]
                    carried = (torch.zeros_like(mask) if moves.carried is None
                               else moves.carried[:, k] & has[:, None])
                    one = InnerGroup(group, mask[:, None], moves.axes[:, k][:, None], torch.ones_like(moves.kinds),
                                     carried[:, None], moves.anchors[:, k][:, None])
                    names = [prefix + kind_name(int(m.sum()), bool(ax[1] >= 0), bool((m == r).all()), bool(c.any()))
                             for m, ax, r, c in zip(mask, moves.axes[:, k], real, carried)]
                    for step in steps:
                        acc, new, _invalid, _angle, _kind = inner_move(units, one, step, gen)
                        shift = (new - local).norm(dim=-1)  # the accepted moves' displacement (0 if rejected)
                        rms = torch.sqrt((shift ** 2).sum(-1) / (mask | carried).sum(-1).clamp(min=1))
                        for u in torch.nonzero(has)[:, 0].tolist():
                            seen[(step, names[u], units.label)].append((bool(acc[u]), float(rms[u])))
    for step in steps:
        row: dict = {"inner_step_nm": step}
        kinds = ("hydrogen pivot", "crank", "group pivot", "wobble", "shift")
        for kind in kinds + tuple(f"across units {k}" for k in kinds):
            cells = [v for (s, k, _label), v in seen.items() if s == step and k == kind]
            if not cells:
                continue
            vals = np.array([c for cell in cells for c in cell])
            accepted = vals[:, 0] > 0
            row[kind] = {"acceptance": round(float(accepted.mean()), 3), "moves": len(vals),
                         "rms_accepted_nm": round(float(np.sqrt(np.mean(vals[accepted, 1] ** 2))), 4)
                         if accepted.any() else None}
        for (s, kind, label), cell in sorted(seen.items()):
            if s == step:
                row[f"{label} {kind}"] = round(float(np.mean([c[0] for c in cell])), 3)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
