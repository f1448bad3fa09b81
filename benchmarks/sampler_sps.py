"""Sampler overhead on one sPS frame (5 832 atoms): a trivial generator (atoms scattered around
their bead), 1 forward pass + 2 Gibbs sweeps, 8 candidates per atom, lowest-energy selection —
with batching across molecules on (all 36 chains advance together) and off (one chain at a time).

    .venv/bin/python benchmarks/sampler_sps.py [--repeats 3]

Prints one JSON line per setting and a last one with the ratio; each run is a fresh process, so
peak memory (ru_maxrss) is the run's own.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPS = REPO.parent / "shared" / "data" / "sps"

CHILD = r"""
import json, resource, sys, time
import numpy as np
from pathlib import Path
from backmap.engine.assembly import make_backmapper
from backmap.sampling.backmapper import BackmapSettings, read_cg
from backmap.engine.loaders import load_mapping
from backmap.engine.registry import default_registry
from backmap.engine.loaders import load_topology
sps, repo, batch = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
topo = load_topology(sps / "top" / "topol.top")
cg = load_mapping(repo / "recipes" / "sps" / "sps.xml", topo).cg_topology(topo)
frame = next(read_cg(cg, sps / "eval_t568" / "cg.xtc", [0]))
gen = default_registry().get("generator", "bead_centre").cls({"spread": 0.1})
bm = make_backmapper(cg, gen, BackmapSettings(candidates=8, gibbs_sweeps=2, batch_molecules=batch), seed=1)
t0 = time.perf_counter()
next(bm.run([frame]))
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "placements": bm.sampler.placements,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rates = {}
    for batch in (True, False):
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, "-c", CHILD, str(SPS), str(REPO), "1" if batch else "0"],
                                 check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        sec = statistics.median(r["seconds"] for r in runs)
        rate = runs[0]["placements"] / sec
        rates[batch] = rate
        print(json.dumps({"benchmark": "sampler_sps", "batch_molecules": batch, "atoms": 5832, "sweeps": "1 forward + 2 gibbs",
                          "candidates": 8, "placements": runs[0]["placements"], "median_seconds": round(sec, 3),
                          "placements_per_second": round(rate), "peak_mb": round(max(r["peak_mb"] for r in runs)),
                          "repeats": args.repeats}))
    print(json.dumps({"benchmark": "sampler_sps", "speedup_batching": round(rates[True] / rates[False], 2)}))


if __name__ == "__main__":
    main()
