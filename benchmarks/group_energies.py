"""Time per call of ``ForceField.group_energies`` (local Monte Carlo energies) on sPS, against G calls
of ``ForceField.energy(X, box, subset=group, whole=True)`` (one per group) measured in the same run.

sPS 568 K (``eval_t568/aa.gro``, 5 832 atoms, 36 chains, triclinic box), reaction field from
``top/md.mdp``; G = 36 groups, one per chain: the atoms of two consecutive CG beads (a backbone
and a phenyl bead, 14-19 atoms, padded to 20); C = 2 configurations (the frame and a proposal with
the groups' atoms displaced, Gaussian with σ = 0.05 nm per component). One torch thread.

    .venv/bin/python benchmarks/group_energies.py [--repeats 30]

Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
SPS = REPO.parent / "shared" / "data" / "sps"


def setup(width: int = 20):
    """(force field, positions (2, N, 3), box vectors, groups (G, width), one mask per group, frame)."""
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.forcefield import ForceField, NonbondedSettings
    from backmap.system.io import read_frames

    top = load_topology(SPS / "top" / "topol.top")
    ff = ForceField(top, NonbondedSettings.from_mdp(SPS / "top" / "md.mdp"))
    frame = next(read_frames(SPS / "eval_t568" / "aa.gro"))
    vectors = frame.box
    x = ff.make_whole(frame.positions.astype(np.float64), frame.dimensions)

    rng = np.random.default_rng(0)
    cg = load_mapping(REPO / "recipes" / "sps" / "sps.xml", top).cg_topology(top)
    groups = np.full((0, width), -1)
    for cb in cg.blocks:
        home, n_mt = cb.mapping.home, cb.block.moltype.n_atoms
        rows = []
        for mol in range(cb.block.count):
            b = 2 * rng.integers(cb.mapping.n_beads // 2)
            local = np.flatnonzero((home == b) | (home == b + 1))
            row = np.full(width, -1)
            row[:len(local)] = cb.block.first_atom + mol * n_mt + local
            rows.append(row)
        groups = np.concatenate([groups, rows])
    atoms = groups[groups >= 0]
    proposal = x.copy()
    proposal[atoms] += rng.normal(0.0, 0.05, (len(atoms), 3))
    X = torch.as_tensor(np.stack([x, proposal]))
    groups_t = torch.as_tensor(groups)
    masks = [np.isin(np.arange(ff.n_atoms), g[g >= 0]) for g in groups]

    return ff, X, vectors, groups_t, masks, frame


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30, help="calls of group_energies timed")
    ap.add_argument("--baseline-repeats", type=int, default=2, help="rounds of G energy(subset=...) calls timed")
    ap.add_argument("--width", type=int, default=20, help="A: group slots (padding -1)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    ff, X, vectors, groups_t, masks, frame = setup(args.width)
    G, atoms = len(groups_t), groups_t[groups_t >= 0]

    with torch.no_grad():
        t0 = time.perf_counter()
        ours = ff.group_energies(X, vectors, groups_t)  # first call builds the index tables
        first_call = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ours = ff.group_energies(X, vectors, groups_t)
            times.append(time.perf_counter() - t0)
        base_times = []
        for _ in range(args.baseline_repeats):
            t0 = time.perf_counter()
            ref = torch.stack([ff.energy(X, vectors[None], subset=m, whole=True).total for m in masks], 1)
            base_times.append(time.perf_counter() - t0)
    t, t_base = float(np.median(times)), float(np.median(base_times))
    print(json.dumps({
        "system": "sPS eval_t568/aa.gro", "atoms": ff.n_atoms,
        "box_angles": [round(float(a), 2) for a in frame.dimensions[3:]], "C": len(X), "G": G, "A": args.width,
        "group_atoms": len(atoms), "threads": torch.get_num_threads(),
        "seconds_per_call": round(t, 5), "min_seconds_per_call": round(min(times), 5),
        "first_call_seconds": round(first_call, 4),
        "baseline_seconds_per_call": round(t_base, 4), "speedup": round(t_base / t, 1),
        "max_abs_diff_kj_mol": float((ours - ref).abs().max()),
    }), flush=True)


if __name__ == "__main__":
    main()
