"""Seconds per frame of ``backmap apply`` with the shipped sPS equivariant model on one core, its
shipped sampling settings against a baseline of other settings, in the same command: the speed
target of docs/temperatures.md (dense phases).

    .venv/bin/python benchmarks/apply_speed_sps.py [--cg ../shared/data/sps/eval_t568/cg.xtc] \
        [--temperature 568] [--frames 1,3,5] [--baseline "--gibbs 2 --polish 15 --clash-energy 10"] \
        [--baseline-checkout DIR] [--repeats 1]

Each run is a fresh ``backmap apply`` process pinned to one core (the last one this process may
use); shipped and baseline runs alternate, so both see the machine alike. The seconds per frame are
apply's own (its OUT.json: sampling and moves, without start-up and file writing). One JSON line
per run, then one with the medians and their ratio. The default baseline is the settings shipped
before the current ones (two Gibbs sweeps, 15 guidance steps, clash threshold 10 kJ/mol at any
temperature).

``--quick``: one frame of the repository's tests/data/sps/cg.gro (the same 36-chain system), one
repeat: a smoke test, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPS = REPO.parent / "shared" / "data" / "sps"


def run(options: list[str], cg: Path, frames: str, temperature: float, out: Path, core: int,
        checkout: Path = REPO) -> dict:
    """One ``backmap apply`` on one core, with the code and model of ``checkout``; its OUT.json summary."""
    cmd = [sys.executable, "-m", "backmap.cli", "apply", "--model", str(checkout / "models" / "sps-equivariant"),
           "--cg", str(cg.resolve()), "--frames", frames, "--temperature", f"{temperature:g}", "--seed", "1",
           "--out", str(out), *options]
    env = dict(os.environ, BACKMAP_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    if checkout != REPO:  # its packages ahead of this installation's
        env["PYTHONPATH"] = os.pathsep.join([str(checkout), str(checkout / "plugins"), env.get("PYTHONPATH", "")])
    # run in the checkout: ``python -m`` puts the working directory ahead of PYTHONPATH, so from this
    # repository a baseline checkout would run this repository's code
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {core}),
                          env=env, cwd=checkout)
    if done.returncode != 0:
        raise SystemExit(f"apply failed:\n{done.stderr[-2000:]}")
    return json.loads(out.with_suffix(".json").read_text())["summary"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cg", type=Path, default=SPS / "eval_t568" / "cg.xtc", help="sPS CG frames (36 chains)")
    ap.add_argument("--temperature", type=float, default=568.0, help="the frames' temperature (apply --temperature)")
    ap.add_argument("--frames", default="1,3,5", help="frames backmapped per run")
    ap.add_argument("--baseline", default="--gibbs 2 --polish 15 --clash-energy 10",
                    help="apply options of the baseline run (the shipped run takes the model's own settings)")
    ap.add_argument("--baseline-checkout", type=Path, default=REPO,
                    help="a checkout of another revision (git worktree add DIR REV): the baseline runs its code and "
                         "its models/sps-equivariant (then e.g. --baseline '' for that revision's shipped settings)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each, alternating")
    ap.add_argument("--quick", action="store_true", help="smoke test on tests/data/sps/cg.gro (no ../shared needed)")
    args = ap.parse_args()
    if args.quick:
        args.cg, args.frames, args.repeats = REPO / "tests" / "data" / "sps" / "cg.gro", "0", 1
    if not args.cg.is_file():
        print(json.dumps({"benchmark": "apply_speed_sps", "skipped": f"{args.cg} not found"}))
        return
    core = max(os.sched_getaffinity(0))
    seconds: dict[str, list[float]] = {"shipped": [], "baseline": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for name, options in (("shipped", []), ("baseline", shlex.split(args.baseline))):
                checkout = args.baseline_checkout.resolve() if name == "baseline" else REPO
                summary = run(options, args.cg, args.frames, args.temperature, Path(tmp) / f"{name}{k}.gro", core,
                              checkout)
                seconds[name].append(summary["seconds per frame"])
                print(json.dumps({"benchmark": "apply_speed_sps", "run": name, "checkout": str(checkout),
                                  "options": " ".join(options),
                                  "core": core, "frames": summary["frames"],
                                  "seconds_per_frame": summary["seconds per frame"]}), flush=True)
    shipped, baseline = (statistics.median(seconds[k]) for k in ("shipped", "baseline"))
    print(json.dumps({"benchmark": "apply_speed_sps", "summary": True, "cg": str(args.cg), "frames": args.frames,
                      "shipped_seconds_per_frame": round(shipped, 2), "baseline_seconds_per_frame": round(baseline, 2),
                      "baseline": args.baseline, "baseline_checkout": str(args.baseline_checkout),
                      "speedup": round(baseline / shipped, 2),
                      **({"quick": True} if args.quick else {})}))


if __name__ == "__main__":
    main()
