"""Sampler overhead on one sPS frame (5 832 atoms): a trivial generator (atoms scattered around
their bead), 1 forward pass + 2 Gibbs sweeps, 8 candidates per atom, lowest-energy selection —
with batching across molecules on (all 36 chains advance together) and off (one chain at a time).

    .venv/bin/python benchmarks/sampler_sps.py [--repeats 3] [--quick]

Prints one JSON line per setting and a last one with the ratio; each run is a fresh process, so
peak memory (ru_maxrss) is the run's own. Reads ../shared/data/sps (DBM's 568 K frame 0 and topology).

``--quick``: the same code path on the repository's own data (the first 6 chains of
tests/data/sps/cg.xtc frame 0, their topology written by scripts/make_sps_topology.py), forward pass
only, one repeat: a smoke test (~10 s), not a measurement.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
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
top, cg_path, repo = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
batch, gibbs = sys.argv[4] == "1", int(sys.argv[5])
topo = load_topology(top)
cg = load_mapping(repo / "recipes" / "sps" / "sps.xml", topo).cg_topology(topo)
frame = next(read_cg(cg, cg_path, [0]))
gen = default_registry().get("generator", "bead_centre").cls({"spread": 0.1})
bm = make_backmapper(cg, gen, BackmapSettings(candidates=8, gibbs_sweeps=gibbs, batch_molecules=batch), seed=1)
t0 = time.perf_counter()
next(bm.run([frame]))
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "placements": bm.sampler.placements, "atoms": topo.n_atoms,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def quick_system(folder: Path, chains: int) -> tuple[Path, Path]:
    """The first ``chains`` sPS chains of tests/data/sps (frame 0) and their topology, in ``folder``."""
    import MDAnalysis as mda

    subprocess.run([sys.executable, str(REPO / "scripts" / "make_sps_topology.py"), "--out", str(folder),
                    "--chains", str(chains)], check=True, capture_output=True)
    data = REPO / "tests" / "data" / "sps"
    u = mda.Universe(str(data / "cg.gro"), str(data / "cg.xtc"))
    u.atoms[:20 * chains].write(str(folder / "cg.gro"))  # 20 beads per chain; frame 0
    return folder / "topol.top", folder / "cg.gro"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test on tests/data/sps: forward pass only, one repeat (no ../shared needed)")
    args = ap.parse_args()
    top, cg_path, gibbs = SPS / "top" / "topol.top", SPS / "eval_t568" / "cg.xtc", 2
    tmp = None
    if args.quick:
        tmp = tempfile.TemporaryDirectory()
        top, cg_path = quick_system(Path(tmp.name), chains=6)
        gibbs, args.repeats = 0, 1
    rates = {}
    for batch in (True, False):
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, "-c", CHILD, str(top), str(cg_path), str(REPO), "1" if batch else "0",
                                  str(gibbs)], check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        sec = statistics.median(r["seconds"] for r in runs)
        rate = runs[0]["placements"] / sec
        rates[batch] = rate
        print(json.dumps({"benchmark": "sampler_sps", "batch_molecules": batch, "atoms": runs[0]["atoms"],
                          "sweeps": f"1 forward + {gibbs} gibbs",
                          "candidates": 8, "placements": runs[0]["placements"], "median_seconds": round(sec, 3),
                          "placements_per_second": round(rate), "peak_mb": round(max(r["peak_mb"] for r in runs)),
                          "repeats": args.repeats}))
    print(json.dumps({"benchmark": "sampler_sps", "speedup_batching": round(rates[True] / rates[False], 2),
                      **({"quick": True} if args.quick else {})}))


if __name__ == "__main__":
    main()
