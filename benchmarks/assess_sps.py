"""The sPS CG-model assessment end to end: three CG models × 70 frames plus the 71
in-distribution frames, backmapped with the shipped equivariant model, refined, evaluated — in
≤ 30 min on 2 cores, one command; the ranking A < B < C by the bead-force JSD with a separation
larger than the spread over random halves; in-distribution ≥ 5× better than any model; CG RMSD
≤ 0.007 nm for every model.

Baseline in the same command: `backmap apply` (+ the same refinement) of a few frames in one
process, so that the assessment's time can be read as frames × per-frame cost on other machines.

    bash scripts/make_sps_cg_models.sh          # once: data/sps-cg-models/{A,B,C}.xtc
    .venv/bin/python benchmarks/assess_sps.py [--frames 70] [--steps 100] [--workers 2] [--out DIR]
    .venv/bin/python benchmarks/assess_sps.py --quick   # the same path on 1 chain: 3 reference frames,
                                                        # 2 frames of two stand-in CG sets (the mapped reference)

Prints one JSON line for the baseline and one for the assessment (wall time, ratio to the target,
ranking, separations, CG RMSD per set).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPS = REPO.parent / "shared" / "data" / "sps"
MODELS = REPO / "data" / "sps-cg-models"
BACKMAP = str(Path(sys.executable).parent / "backmap")
SKIP = "9,19,41,55,62,70,76"  # reference frames identical to training snapshots


def refine_args(steps: int) -> list[str]:
    """The refinement options; none with ``steps`` = 0 (the generator alone, as the thesis' DBM)."""
    if steps == 0:
        return []
    return ["--refine", "openmm", "--temperature", "568", "--constraints", "all-bonds", "--timestep", "0.002",
            "--steps", str(steps), "--restraint", "1e6", "--mdp", str(SPS / "top" / "md.mdp")]


def small_system(folder: Path, chains: int = 1, frames: int = 4) -> tuple[Path, Path, Path]:
    """--quick: (topology, AA reference, CG frames) of the first ``chains`` chains of the first ``frames``
    reference frames; the CG frames are the reference's, mapped."""
    import re

    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.system.io import Frame, read_frames, write_frames

    top = folder / "topol.top"
    text = (SPS / "top" / "topol.top").read_text()
    text = text.replace('#include "PS1.itp"', f'#include "{SPS / "top" / "PS1.itp"}"')
    top.write_text(re.sub(r"PS1\s+36\s*$", f"PS1       {chains}\n", text.rstrip() + "\n", flags=re.M))
    aa = load_topology(top)
    cg_top = load_mapping(REPO / "recipes" / "sps" / "sps.xml", aa).cg_topology(aa)
    ref = [Frame(f.positions[:aa.n_atoms], f.dimensions, f.time, f.index)
           for f in read_frames(SPS / "eval_t568" / "aa.xtc", frames=slice(0, frames))]
    write_frames(folder / "aa.xtc", ref, aa.atom_names, aa.resnames, aa.residue_numbers())
    cg = [Frame(f.positions[:cg_top.n_beads], f.dimensions, f.time, f.index)
          for f in read_frames(SPS / "eval_t568" / "cg.xtc", frames=slice(0, frames))]
    write_frames(folder / "cg.xtc", cg, cg_top.bead_names, cg_top.resnames, cg_top.resids)
    return top, folder / "aa.xtc", folder / "cg.xtc"


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ, BACKMAP_NO_PROGRESS="1"), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=70, help="frames of every CG model")
    ap.add_argument("--steps", type=int, default=100, help="OpenMM refinement steps per frame (0: no refinement)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-frames", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run of the same path on the first chain: 3 reference frames, 2 frames of two "
                         "CG set (stand-ins: the mapped reference), 1 baseline frame, no refinement, 1 worker")
    args = ap.parse_args()
    topology, reference, skip = SPS / "top" / "topol.top", SPS / "eval_t568" / "aa.xtc", SKIP
    base_cg, cg_sets, base_extra = SPS / "eval_t568" / "cg.xtc", [MODELS / f"{m}.xtc" for m in "ABC"], []
    if args.quick:
        if not SPS.is_dir():
            print(json.dumps({"skipped": f"needs the sPS data in {SPS}"}))
            return
        folder = Path(tempfile.mkdtemp(prefix="backmap-assess-"))
        topology, reference, base_cg = small_system(folder)
        cg_sets, skip, base_extra = [folder / f"{m}.xtc" for m in "AB"], "3", ["--topology", str(topology)]
        for m in cg_sets:
            m.symlink_to(base_cg)
        args.frames, args.steps, args.workers, args.baseline_frames = 2, 0, 1, 1
    missing = [m for m in cg_sets if not m.is_file()]
    if missing:
        sys.exit(f"{missing[0]} missing: run scripts/make_sps_cg_models.sh first")
    if not args.quick:
        folder = Path(tempfile.mkdtemp(prefix="backmap-assess-"))
    base = run([BACKMAP, "apply", "--model", str(REPO / "models" / "sps-equivariant"),
                "--cg", str(base_cg), "--frames", f"0:{args.baseline_frames}",
                "--out", str(folder / "baseline" / "aa.xtc"), *base_extra, *refine_args(args.steps)])
    per_frame = base / args.baseline_frames
    print(json.dumps({"benchmark": "assess_sps", "baseline": "apply" + (" + refine" if args.steps else "") + ", one process",
                      "frames": args.baseline_frames, "seconds_per_frame": round(per_frame, 2)}), flush=True)
    out = args.out or folder / "assess"
    seconds = run([BACKMAP, "assess", "--model", str(REPO / "models" / "sps-equivariant"),
                   "--topology", str(topology), "--mapping", str(REPO / "recipes" / "sps" / "sps-rings-first.xml"),
                   "--reference", str(reference), "--skip-frames", skip,
                   "--cg", *(str(m) for m in cg_sets), "--cg-frames", f"0:{args.frames}",
                   "--out", str(out), "--workers", str(args.workers), "--seed", "7", "--no-lj-shift",
                   *refine_args(args.steps)])
    doc = json.loads((out / "metrics.json").read_text())
    n_frames = sum(v for k, v in doc["frames"].items() if k != "reference" and not k.endswith("+refine"))
    s = doc["summary"]
    print(json.dumps({
        "benchmark": "assess_sps", "seconds": round(seconds, 1), "target_seconds": 1800,
        "over_target": round(seconds / 1800, 3), "frames_backmapped": n_frames,
        "over_baseline_frames": round(seconds / (per_frame * n_frames), 3),
        "ranking": s["ranking"], "smallest_gap": round(s["smallest_gap"], 4),
        "largest_halves_sd": round(s["largest_halves_sd"], 4),
        "in_distribution_force_jsd": round(s["in_distribution_force_jsd"], 4),
        "best_model_over_in_distribution": round(s["best_model_over_in_distribution"], 2),
        "force_jsd": {k: round(v["force_jsd"], 4) for k, v in doc["sets"].items()},
        "cg_rmsd": {k: round(v["cg_rmsd"], 5) for k, v in doc["sets"].items() if v.get("cg_rmsd") is not None},
        "workers": args.workers, "cpus": os.cpu_count(), "out": str(out)}), flush=True)


if __name__ == "__main__":
    main()
