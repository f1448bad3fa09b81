"""Helpers the recipe-driven benchmarks share: run ``backmap run`` steps in a work directory, point a
recipe at another hexane data set, and read back a step's seconds and evaluate's headline numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BACKMAP = str(Path(sys.executable).parent / "backmap")
ENV = dict(os.environ, BACKMAP_NO_PROGRESS="1")
#: the small ``vae`` generator the hexane benchmarks train on the committed 4 000-atom set
HEXANE_VAE_GENERATOR = "{constraints: none, latent: 2, width: 8, hidden: 32, context: mixed, threads: 1}"
#: the refinement they compare with: recipes/hexane.yaml's restrained Langevin (1 ps, 300 K)
HEXANE_OPENMM = ("{plugin: openmm, params: {temperature: 300, constraints: none, timestep: 0.001, steps: 1000, "
                 "restraint: 2.0e+5, threads: 1, on_failure: keep}}")


def backmap_run(recipe: Path, workdir: Path, overrides: list[str], steps: str, log: Path) -> None:
    """``backmap run recipe --workdir workdir --steps steps overrides…``, its output appended to ``log``."""
    cmd = [BACKMAP, "run", str(recipe), "--workdir", str(workdir), "--steps", steps, *overrides]
    print(f"[{workdir.name}] backmap run {recipe.name} --steps {steps}", file=sys.stderr, flush=True)
    with open(log, "a") as out:
        subprocess.run(cmd, check=True, env=ENV, stdout=out, stderr=subprocess.STDOUT)


def data_overrides(data: Path, frames: str) -> list[str]:
    """Recipe overrides that take a hexane data set made by scripts/make_hexane_data.sh."""
    return [f"system.topology={data / 'topol.top'}", f"system.mapping={data / 'hexane.xml'}",
            f"data.trajectory={data / 'traj.xtc'}", f"data.frames={frames}"]


def step_seconds(workdir: Path, name: str, key: str | None = None) -> float | None:
    """Wall seconds of the last successful run of step ``name`` (run.json), or the number ``key``
    of its summary (e.g. a reverse-KL train step's 'train seconds': the trainer's own total over
    resumed runs, without the starting pool and the warm start)."""
    path = workdir / "run.json"
    if not path.exists():
        return None
    done = [s for s in json.loads(path.read_text())["steps"] if s["name"] == name and s["status"] == "ok"]
    if not done:
        return None
    value = done[-1]["seconds"] if key is None else done[-1].get("summary", {}).get(key)
    return None if value is None else round(value, 1)


def headline(workdir: Path, label: str) -> dict:
    """Mean JSD over the headline observables of candidate ``label``, the noise floor and the
    per-observable JSDs."""
    m = json.loads((workdir / "evaluate" / "metrics.json").read_text())
    s = m["summary"]["mean_jsd_headline"]
    per = {n: m["observables"][n]["candidates"][label]["jsd"] for n in s["observables"]}
    return {"mean": round(s["candidates"][label], 4), "floor": round(s["noise_floor"], 4), "per": per}


if __name__ == "__main__":  # a helper module, not a benchmark: `--quick` (tests/test_benchmarks.py) says so
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted; there is nothing to run")
    parser.parse_args()
    print(json.dumps({"skipped": "recipe_runs.py is the helper module of data_free_hexane.py, "
                                 "refine_schedule_hexane.py and vae_mc_hexane_local.py, not a benchmark"}))
