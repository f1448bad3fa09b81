"""Stereocentres kept along the chain: for each AA trajectory, the fraction of stereocentres with
the reference's handedness, overall and per position of the centre in its molecule (the n-th centre
of every molecule of the first type), against one reference frame. This is how the chain-start
flips of the sPS equivariant model were found (docs/equivariant.md, "Stereocentres").

    .venv/bin/python benchmarks/stereo_by_position.py --topology ../shared/data/sps/top/topol.top \\
        --reference ../shared/data/sps/eval_t568/aa.xtc [--skip-frames 9,19,41,55,62,70,76] OUT.xtc [...]

One JSON line per trajectory.

``--quick``: the same count on the first two frames of DBM's ``deepbackmap.xtc`` against
``../shared/data/sps`` (a smoke test, ~10 s); without ../shared it prints ``{"skipped": ...}``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from backmap.engine.loaders import load_topology
from backmap.metrics.geometry import signed_volumes
from backmap.sampling.chirality import load_chiral_centres
from backmap.system.io import read_frames
from backmap.system.pbc import Unwrapper

SPS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sps"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", required=False, help="required unless --quick")
    ap.add_argument("--reference", required=False, help="AA structure or trajectory (first frame used)")
    ap.add_argument("--skip-frames", default="", help="frames left out, e.g. 9,19,41")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: DBM's deepbackmap.xtc (first two frames) against ../shared/data/sps")
    ap.add_argument("trajectories", nargs="*")
    args = ap.parse_args()
    max_frames = None
    if args.quick:
        if not (SPS / "eval_t568" / "deepbackmap.xtc").is_file():
            print(json.dumps({"skipped": f"{SPS} not present (an sPS topology, reference and trajectory)"}))
            return
        args.topology, args.reference = str(SPS / "top" / "topol.top"), str(SPS / "eval_t568" / "aa.xtc")
        args.trajectories, max_frames = [str(SPS / "eval_t568" / "deepbackmap.xtc")], 2
    elif not (args.topology and args.reference and args.trajectories):
        ap.error("--topology, --reference and at least one trajectory are required (or --quick)")
    top = load_topology(args.topology)
    centres = load_chiral_centres(top, args.reference)
    rows, slots = centres.global_rows(top)
    ref = centres.sign[rows[:, 0], slots]
    atoms = np.unique(rows[:, 0])
    first = top.blocks[0]
    per_molecule = int(np.sum((atoms >= first.first_atom) & (atoms < first.first_atom + first.moltype.n_atoms)))
    skip = {int(k) for k in args.skip_frames.split(",") if k.strip()}
    whole = Unwrapper(top)
    for path in args.trajectories:
        kept, by_position = [], []
        for k, frame in enumerate(read_frames(path, top.n_atoms)):
            if max_frames is not None and k >= max_frames:
                break
            if k in skip:
                continue
            vol = signed_volumes(whole(frame.positions, frame.dimensions)[None], rows)[0]
            flipped = np.bincount(rows[:, 0], weights=(np.sign(vol) != ref) & (ref != 0), minlength=len(centres.sign))
            bad = flipped[atoms] > 0
            kept.append(1 - bad.mean())
            if per_molecule and len(atoms) % per_molecule == 0:
                by_position.append(bad.reshape(-1, per_molecule).mean(0))
        print(json.dumps({"benchmark": "stereo_by_position", "trajectory": path, "frames": len(kept),
                          "kept": round(float(np.mean(kept)), 4),
                          "flip_rate_by_position": [round(float(v), 3) for v in np.mean(by_position, 0)]
                          if by_position else None}))


if __name__ == "__main__":
    main()
