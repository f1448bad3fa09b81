"""Time `backmap map` on the 78-frame sPS trajectory against VOTCA's csg_map on the same input.

    .venv/bin/python benchmarks/map_sps.py [--repeats 5]

Prints one JSON line: medians over repeats of the wall time of the whole command (process start,
topology reading, mapping, writing) for both tools, and their ratio. Needs ../shared/data/sps.

``--quick``: one repeat of each command (a smoke test, ~10 s); without ../shared it prints
``{"skipped": ...}``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPS = REPO.parent / "shared" / "data" / "sps"


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=cwd)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smoke test: one repeat")
    args = ap.parse_args()
    ev = SPS / "eval_t568"
    if args.quick:
        if not (ev / "aa.xtc").is_file():
            print(json.dumps({"skipped": f"{SPS} not present"}))
            return
        args.repeats = 1
    backmap = [str(Path(sys.executable).parent / "backmap"), "map", "--topology", str(SPS / "top" / "topol.top"),
               "--traj", str(ev / "aa.xtc"), "--mapping", str(REPO / "recipes" / "sps" / "sps.xml")]
    result = {"benchmark": "map_sps", "frames": 78, "atoms": 5832, "beads": 720, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours = [timed(backmap + ["--out", str(tmp / "cg.xtc")], tmp) for _ in range(args.repeats)]
        result["backmap_s"] = round(statistics.median(ours), 3)
        # the same mapping through MDAnalysis' .tpr reader, for the topology-reading share
        tpr = backmap.copy()
        tpr[tpr.index("--topology") + 1] = str(ev / "ps_excl.tpr")
        result["backmap_tpr_s"] = round(statistics.median(
            timed(tpr + ["--out", str(tmp / "cg2.xtc")], tmp) for _ in range(args.repeats)), 3)
        if shutil.which("csg_map"):
            votca = ["csg_map", "--top", str(ev / "ps_excl.tpr"), "--trj", str(ev / "aa.xtc"),
                     "--cg", str(REPO / "recipes" / "sps" / "sps.xml"), "--out", str(tmp / "votca.xtc")]
            theirs = [timed(votca, tmp) for _ in range(args.repeats)]
            result["csg_map_s"] = round(statistics.median(theirs), 3)
            result["ratio_backmap_over_csg_map"] = round(result["backmap_s"] / result["csg_map_s"], 2)
    if args.quick:
        result["quick"] = True
    print(json.dumps(result))


if __name__ == "__main__":
    main()
