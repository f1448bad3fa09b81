"""Results unchanged by a refactoring: the SHA-256 of what the generators write for a fixed seed,
recorded before a change and checked after it (a maintainer's tool, not a benchmark).

    .venv/bin/python scripts/results_unchanged.py --record scripts/results_unchanged.json
    .venv/bin/python scripts/results_unchanged.py --check scripts/results_unchanged.json

Cases: the template recipe's generator output (``recipes/hexane-template.yaml``)
(``backmap/aa_unrefined.xtc``: byte-identical; the
refined frames are compared by their mean JSD within 0.002, as OpenMM on 2 threads is not
bit-reproducible), and each shipped sPS model on frames 0-3 of ``../shared/data/sps/eval_t568``
with and without energy guidance (``--polish 15 --polish-sweeps all``), seed 1. Hashes are those
of this machine's CPU and library versions (recorded with them): check on the machine that
recorded. One JSON line: every case, and ``"unchanged": true|false``. ~10 min on 2 cores (the
voxel GAN takes most of it).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BACKMAP_SHARED_SPS", REPO.parent / "shared" / "data" / "sps"))  # overridable
BACKMAP = str(Path(sys.executable).parent / "backmap")
MODELS = {"sps-equivariant": [], "sps-vae": [],
          # the selection's stereo penalty as recorded; the inversion after sampling (invert_stereo) came later
          "sps-voxel-gan": ["--stereo-reference", str(SHARED / "train" / "aa" / "100.gro"), "--no-invert-stereo"]}
POLISH = ["--polish", "15", "--polish-sweeps", "all"]
JSD_TOLERANCE = 0.002


def cpu_model() -> str:
    """The CPU's model name (float results can differ between CPUs of one architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def backmap(*args: str) -> None:
    done = subprocess.run([BACKMAP, *args], capture_output=True, text=True,
                          env=dict(os.environ, BACKMAP_NO_PROGRESS="1"))
    if done.returncode:
        sys.exit(f"error: backmap {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def measure(work: Path, models: list[str], device: list[str] = ()) -> dict:
    cases: dict = {}
    run = work / "quickstart"  # the template baseline's recipe
    backmap("run", str(REPO / "recipes" / "hexane-template.yaml"), "--workdir", str(run),
            *(f"device={d}" for d in device[1:]))
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())["summary"]["mean_jsd_headline"]
    cases["quickstart aa_unrefined.xtc"] = sha(run / "backmap" / "aa_unrefined.xtc")
    cases["quickstart refined mean JSD"] = round(metrics["candidates"]["generator + refine"], 5)
    for model in models:
        extra = MODELS[model]
        for label, options in (("alone", []), ("polish", POLISH)):
            out = work / f"{model}-{label}.xtc"
            backmap("apply", "--model", model, "--cg", str(SHARED / "eval_t568" / "cg.xtc"), "--frames", "0:4",
                    "--seed", "1", "--out", str(out), *extra, *options, *device)
            cases[f"{model} {label}"] = sha(out)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", type=Path, help="write the baseline here")
    mode.add_argument("--check", type=Path, help="compare with this baseline")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated shipped models to apply")
    parser.add_argument("--device", help="run with this --device (a baseline recorded before devices existed "
                                         "ran on the CPU)")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    if set(models) - set(MODELS):
        parser.error(f"--models: unknown {sorted(set(models) - set(MODELS))}")
    if not (SHARED / "eval_t568" / "cg.xtc").is_file():
        sys.exit(f"error: {SHARED} missing (the shared sPS data)")
    with tempfile.TemporaryDirectory(prefix="unchanged-") as tmp:
        cases = measure(Path(tmp), models, ["--device", args.device] if args.device else [])
    machine = {"cpu": cpu_model(), "python": platform.python_version(), "torch": _version("torch"),
               "numpy": _version("numpy")}
    if args.record:
        args.record.write_text(json.dumps({"machine": machine, "cases": cases}, indent=1) + "\n")
        print(json.dumps({"recorded": str(args.record), **cases}))
        return
    recorded = json.loads(args.check.read_text())
    base = recorded["cases"]
    if recorded.get("machine") != machine:
        print(f"warning: recorded on {recorded.get('machine')}, checked on {machine}: hashes may differ for that "
              "reason alone; record a baseline here (git worktree of the base commit) before trusting a change",
              file=sys.stderr)
    changed = {}
    for key, value in cases.items():
        old = base.get(key)
        if old is None:
            continue  # not in the baseline (recorded with fewer --models)
        same = abs(value - old) <= JSD_TOLERANCE if isinstance(value, float) and old is not None else value == old
        if not same:
            changed[key] = {"before": old, "after": value}
    print(json.dumps({"unchanged": not changed, "changed": changed, "cases": len(cases)}))
    sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
