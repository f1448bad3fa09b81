"""Mirror in, mirror out: backmap sPS 568 K CG frames and their mirror images (x → −x,
the triclinic box re-expressed) with a model, no stereo reference, and compare the stereocentres
with the reference and with the mirrored reference. A generator that reads the hand from the
environment keeps the same fraction in both; one that had learned a fixed hand would invert
(nearly) every centre of the mirror image.

    .venv/bin/python benchmarks/equivariant_mirror_sps.py [--model models/sps-equivariant] [--frames 0:73:24]

One JSON line: stereocentres kept, original and mirrored. Needs ../shared/data/sps (the AA
reference frames and topology).

``--quick``: one frame, K = 2, forward pass only (a smoke test, ~20 s); without ../shared it prints
``{"skipped": ...}``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SPS = REPO.parent / "shared" / "data" / "sps"


def mirror(frame):
    """x → −x; the box lattice {a, b, c} becomes {a, (−bx, by, 0), (−cx, cy, cz)}: β, γ → 180° − β, γ."""
    from backmap.system.io import Frame

    d = np.array(frame.dimensions, float)
    x = frame.positions.copy()
    x[:, 0] *= -1
    d[4], d[5] = 180.0 - d[4], 180.0 - d[5]
    return Frame(x, d)


def main() -> None:
    from backmap.engine.assembly import make_backmapper
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.engine.models import load_model
    from backmap.sampling.backmapper import BackmapSettings
    from backmap.sampling.chirality import chiral_centres
    from backmap.system.io import Frame, read_frames
    from backmap.system.pairs import select_frames
    from backmap.system.pbc import Unwrapper

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "models" / "sps-equivariant"))
    ap.add_argument("--frames", default="0:73:24")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke test: frame 0, K = 2, forward pass only")
    args = ap.parse_args()
    candidates, gibbs = 8, 2
    if args.quick:
        if not (SPS / "eval_t568" / "aa.xtc").is_file():
            print(json.dumps({"skipped": f"{SPS} not present (the AA reference frames)"}))
            return
        args.frames, candidates, gibbs = "0", 2, 0
    top = load_topology(SPS / "top" / "topol.top")
    model = load_model(args.model)
    cg = load_mapping(model.mapping or [REPO / "recipes" / "sps" / "sps.xml"], top).cg_topology(top)  # its placement order
    idx = select_frames(args.frames, [], 78, "frames")
    whole = Unwrapper(top)
    refs = [Frame(whole(f.positions, f.dimensions), f.dimensions)
            for i, f in enumerate(read_frames(SPS / "eval_t568" / "aa.xtc")) if i in set(idx)]
    kept = {"original": [], "mirrored": []}
    bm = make_backmapper(cg, model.generator, BackmapSettings(candidates=candidates, gibbs_sweeps=gibbs),
                         seed=args.seed)

    for ref in refs:
        for name, aa in (("original", ref), ("mirrored", mirror(ref))):
            beads = Frame(cg.apply(aa.positions), aa.dimensions)
            out = whole(next(bm.run([beads])).positions, aa.dimensions)
            kept[name].append(chiral_centres(top, aa.positions).kept(top, out))
    print(json.dumps({"benchmark": "equivariant_mirror_sps", "model": args.model, "frames": [int(i) for i in idx],
                      **({"quick": True, "candidates": candidates, "gibbs_sweeps": gibbs} if args.quick else {}),
                      "stereo_kept_original": round(float(np.mean(kept["original"])), 4),
                      "stereo_kept_mirrored": round(float(np.mean(kept["mirrored"])), 4),
                      "per_frame": {k: [round(float(v), 4) for v in vs] for k, vs in kept.items()}}))


if __name__ == "__main__":
    main()
