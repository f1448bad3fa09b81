"""Cost against system size (docs/scale-out.md; target: a 2×2×2 sPS box, 46 656 atoms, backmapped in one
frame in ≤ 9× the time and ≤ 8× the peak memory of the single box).

Builds the replicated box once (cached in ``data/sps-replicated/``): ``gmx genconf -nbox 2 2 2`` of
the 568 K structure (``eval_t568/aa.gro``, triclinic), a topology with 8 × 36 chains, and both boxes
mapped to CG by ``backmap map``. Then backmaps one frame of each with the shipped equivariant model
(K = 8, 1 forward pass + 2 Gibbs sweeps) by ``backmap apply``, each in a fresh process, and reads the
process's peak memory (``ru_maxrss`` from ``wait4``), its wall time and the per-frame time ``apply``
records (``aa.json``: the frame's work without start-up). Repeats are interleaved; medians.

    .venv/bin/python benchmarks/scale_box_sps.py [--nbox 2] [--repeats 1] [--threads 1]
    .venv/bin/python benchmarks/scale_box_sps.py --quick   # the same path on 1 chain against its 2×2×2 copy

One JSON line per (box, repeat), then one with the ratios against the single box.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPS = REPO.parent / "shared" / "data" / "sps"
BACKMAP = str(Path(sys.executable).parent / "backmap")
MAPPING = REPO / "recipes" / "sps" / "sps.xml"
MODEL = REPO / "models" / "sps-equivariant"


def build(nbox: int, cache: Path, chains: int = 36) -> dict[int, tuple[Path, Path]]:
    """(topology, CG structure) of the single and the replicated box (of its first ``chains`` chains)."""
    cache.mkdir(parents=True, exist_ok=True)
    source = SPS / "eval_t568" / "aa.gro"
    if chains != 36:  # --quick: the first chains of the box, in the same box
        lines = source.read_text().splitlines()
        n_atoms = chains * (int(lines[1]) // 36)
        source = cache / "aa_source.gro"
        source.write_text("\n".join([lines[0], f"{n_atoms:5d}", *lines[2:2 + n_atoms], lines[-1]]) + "\n")
    out = {}
    for n in (1, nbox):
        top, aa, cg = cache / f"topol_{n}.top", cache / f"aa_{n}.gro", cache / f"cg_{n}.gro"
        if not cg.is_file():
            text = (SPS / "top" / "topol.top").read_text()
            text = text.replace('#include "PS1.itp"', f'#include "{SPS / "top" / "PS1.itp"}"')
            text = re.sub(r"PS1\s+36\s*$", f"PS1       {chains * n ** 3}\n", text.rstrip() + "\n", flags=re.M)
            top.write_text(text)
            if n == 1:
                aa.write_bytes(source.read_bytes())
            else:
                subprocess.run(["gmx", "-quiet", "genconf", "-f", str(source), "-o", str(aa),
                                "-nbox", str(n), str(n), str(n)], check=True, capture_output=True)
            subprocess.run([BACKMAP, "map", "--topology", str(top), "--traj", str(aa), "--mapping", str(MAPPING),
                            "--out", str(cg)], check=True, capture_output=True)
        out[n] = (top, cg)
    return out


def apply(top: Path, cg: Path, folder: Path, threads: int) -> dict:
    out = folder / f"aa_{time.time_ns()}.gro"
    env = dict(os.environ, BACKMAP_NO_PROGRESS="1", OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    proc = subprocess.Popen([BACKMAP, "apply", "--model", str(MODEL), "--topology", str(top),  # the model's mapping
                             "--cg", str(cg), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"backmap apply failed: {proc.stderr.read().decode()}")
    record = json.loads(out.with_suffix(".json").read_text())
    return {"wall_seconds": wall, "frame_seconds": record["summary"]["seconds per frame"],
            "peak_mb": usage.ru_maxrss / 1024, "atoms": record["summary"]["atoms"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nbox", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS) of each run")
    ap.add_argument("--cache", type=Path, default=REPO / "data" / "sps-replicated")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run of the same path: the first chain of the box and its 2×2×2 copy")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="backmap-box-"))
    chains = 36
    if args.quick:
        if not SPS.is_dir():
            print(json.dumps({"skipped": f"needs the sPS data in {SPS}"}))
            return
        args.nbox, args.repeats, args.cache, chains = 2, 1, folder / "systems", 1
    systems = build(args.nbox, args.cache, chains)
    runs: dict[int, list[dict]] = {n: [] for n in systems}
    for r in range(args.repeats):
        for n, (top, cg) in systems.items():
            res = apply(top, cg, folder, args.threads)
            runs[n].append(res)
            print(json.dumps({"benchmark": "scale_box_sps", "nbox": n, "repeat": r, **{k: round(v, 2) if
                              isinstance(v, float) else v for k, v in res.items()}}), flush=True)
    med = {n: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for n, rs in runs.items()}
    big = args.nbox
    factor = med[big]["atoms"] / med[1]["atoms"]
    print(json.dumps({"benchmark": "scale_box_sps", "atoms": [med[1]["atoms"], med[big]["atoms"]],
                      "size_factor": factor,
                      "frame_time_ratio": round(med[big]["frame_seconds"] / med[1]["frame_seconds"], 2),
                      "wall_time_ratio": round(med[big]["wall_seconds"] / med[1]["wall_seconds"], 2),
                      "peak_memory_ratio": round(med[big]["peak_mb"] / med[1]["peak_mb"], 2),
                      "peak_mb": [round(med[1]["peak_mb"]), round(med[big]["peak_mb"])],
                      "targets": {"time": 9, "memory": 8}, "threads": args.threads}), flush=True)


if __name__ == "__main__":
    main()
