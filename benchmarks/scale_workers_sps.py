"""Strong scaling of frame-parallel backmapping (docs/scale-out.md; target: ≥ 1.8× from 1 to 2 workers on 2 cores).

20 sPS 568 K frames (5 832 atoms each) backmapped with the shipped equivariant model (K = 8, 2 Gibbs
sweeps) and refined with OpenMM (568 K, all bonds constrained, 2 fs, 500 steps), by `backmap apply`
exactly as a user runs it, on a local Dask cluster of 1 and then of 2 single-threaded workers (each
run from a fresh process; cluster start-up included). Checks that both outputs are the same file.

    .venv/bin/python benchmarks/scale_workers_sps.py [--frames 20] [--steps 500] [--workers 1 2]
    .venv/bin/python benchmarks/scale_workers_sps.py --quick   # the same path: 2 frames of 4 chains, 10 steps

Prints one JSON line per worker count (wall seconds, seconds per frame) and one with the speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPS = REPO.parent / "shared" / "data" / "sps"
BACKMAP = str(Path(sys.executable).parent / "backmap")


def small_system(folder: Path, chains: int) -> tuple[Path, Path]:
    """(topology, CG trajectory) of the first ``chains`` chains of the sPS box (--quick)."""
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.system.io import Frame, read_frames, write_frames

    top = folder / "topol.top"
    text = (SPS / "top" / "topol.top").read_text()
    text = text.replace('#include "PS1.itp"', f'#include "{SPS / "top" / "PS1.itp"}"')
    top.write_text(re.sub(r"PS1\s+36\s*$", f"PS1       {chains}\n", text.rstrip() + "\n", flags=re.M))
    aa = load_topology(top)
    cg_top = load_mapping(REPO / "recipes" / "sps" / "sps.xml", aa).cg_topology(aa)
    n = cg_top.n_beads
    frames = [Frame(f.positions[:n], f.dimensions, f.time, f.index) for f in read_frames(SPS / "eval_t568" / "cg.xtc")]
    cg = folder / "cg.xtc"
    write_frames(cg, frames, cg_top.bead_names, cg_top.resnames, cg_top.resids)
    return top, cg


def apply(out: Path, frames: int, steps: int, extra: list[str], cg: Path = SPS / "eval_t568" / "cg.xtc") -> float:
    cmd = [BACKMAP, "apply", "--model", str(REPO / "models" / "sps-equivariant"),
           "--cg", str(cg), "--frames", f"0:{frames}", "--out", str(out),
           "--refine", "openmm", "--temperature", "568", "--constraints", "all-bonds", "--timestep", "0.002",
           "--steps", str(steps), "--mdp", str(SPS / "top" / "md.mdp"), *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ, BACKMAP_NO_PROGRESS="1"), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run of the same path: 2 frames of the first 4 chains, 10 refinement steps")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="backmap-scale-"))
    extra: list[str] = []
    cg = SPS / "eval_t568" / "cg.xtc"
    if args.quick:
        if not SPS.is_dir():
            print(json.dumps({"skipped": f"needs the sPS data in {SPS}"}))
            return
        args.frames, args.steps = 2, 10
        top, cg = small_system(folder, chains=4)
        extra = ["--topology", str(top)]
    times, outputs = {}, {}
    for n in args.workers:
        out = folder / f"w{n}" / "aa.xtc"
        seconds = apply(out, args.frames, args.steps, ["--workers", str(n), *extra], cg)
        times[n], outputs[n] = seconds, out
        print(json.dumps({"benchmark": "scale_workers_sps", "workers": n, "frames": args.frames,
                          "seconds": round(seconds, 1), "seconds_per_frame": round(seconds / args.frames, 2)}),
              flush=True)
    lo, hi = min(times), max(times)
    same = all(outputs[n].read_bytes() == outputs[lo].read_bytes() for n in outputs)
    print(json.dumps({"benchmark": "scale_workers_sps", "speedup": round(times[lo] / times[hi], 3),
                      "from_workers": lo, "to_workers": hi, "target": 1.8, "identical_output": same,
                      "cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    main()
