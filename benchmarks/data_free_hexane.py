"""Backmapping hexane without atomistic training data (issue 15, docs/reverse-kl.md), end to end.

Runs two recipes on the same frames, split, generator and refiner, and compares their evaluations:

- ``data``: recipes/hexane-vae.yaml, the ``vae`` generator trained by maximum likelihood on AA frames;
- ``data-free``: recipes/hexane-data-free.yaml, the same generator trained by reverse KL against the
  force field under the CG restraint (every AA coordinate handed to it is NaN).

Both backmap the held-out CG frames and refine them with ``vae_mc``. With ``--test-data`` a third run
backmaps the CG frames of another trajectory (e.g. hexane at another temperature, made by
``TEMP=350 DATA_DIR=data/hexane350 scripts/make_hexane_data.sh``) with the data-free model, whose
target temperature is set for that run (``--test-temperature``; β is an input of the generator's
target, the model is not retrained).

    .venv/bin/python benchmarks/data_free_hexane.py [--data tests/data/hexane] [--frames 0:21:2]
        [--out runs/data-free-hexane] [--final-steps 1500] [--reuse] [--skip-refine]

Prints one JSON line: mean JSD over the evaluation's observables (all, and the headline set) of the
generator alone and after refinement for both models, the ratio data-free / data, the noise floor,
the training seconds of each, and the five observables where the data-free model is worst.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BACKMAP = str(Path(sys.executable).parent / "backmap")
ENV = dict(os.environ, BACKMAP_NO_PROGRESS="1")
RECIPES = {"data": REPO / "recipes" / "hexane-vae.yaml", "data-free": REPO / "recipes" / "hexane-data-free.yaml"}


def run_recipe(recipe: Path, workdir: Path, overrides: list[str], steps: str | None, log: Path) -> None:
    cmd = [BACKMAP, "run", str(recipe), "--workdir", str(workdir), *overrides]
    if steps:
        cmd += ["--steps", steps]
    with open(log, "a") as out:
        subprocess.run(cmd, check=True, env=ENV, stdout=out, stderr=subprocess.STDOUT)


def step_seconds(workdir: Path, name: str) -> float | None:
    """Seconds of the last successful run of step ``name`` (run.json)."""
    path = workdir / "run.json"
    if not path.exists():
        return None
    done = [s for s in json.loads(path.read_text())["steps"] if s["name"] == name and s["status"] == "ok"]
    return round(done[-1]["seconds"], 1) if done else None


def jsd_table(metrics: dict) -> dict[str, dict[str, float]]:
    """observable → candidate → JSD, for the distribution observables."""
    return {name: {c: v["jsd"] for c, v in obs["candidates"].items() if "jsd" in v}
            for name, obs in metrics["observables"].items() if obs.get("kind") == "distribution"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "hexane",
                    help="hexane data set (topol.top, hexane.xml, traj.xtc)")
    ap.add_argument("--frames", default="0:21:2", help="frames of the trajectory (the last quarter is held out)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "data-free-hexane")
    ap.add_argument("--final-steps", type=int, default=None, help="reverse-KL steps at the target β (recipe's if unset)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override for the data-free recipe (repeatable)")
    ap.add_argument("--test-data", type=Path, default=None, help="another hexane data set to backmap with the "
                                                                  "data-free model (e.g. another temperature)")
    ap.add_argument("--test-temperature", type=float, default=None, help="temperature (K) of --test-data")
    ap.add_argument("--test-frames", default="0:21:2")
    ap.add_argument("--reuse", action="store_true", help="keep runs whose evaluation exists")
    ap.add_argument("--skip-refine", action="store_true", help="evaluate the generators alone (no vae_mc)")
    args = ap.parse_args()

    data = args.data.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    common = [f"system.topology={data / 'topol.top'}", f"system.mapping={data / 'hexane.xml'}",
              f"data.trajectory={data / 'traj.xtc'}", f"data.frames={args.frames}"]
    steps = "prepare,train,backmap,evaluate" if args.skip_refine else None
    free_overrides = list(args.set)
    if args.final_steps is not None:
        free_overrides.append(f"steps.train.reverse_kl.final_steps={args.final_steps}")
    runs = {"data": [], "data-free": free_overrides}
    results = {}
    for label, extra in runs.items():
        workdir = (args.out / label).resolve()
        metrics = workdir / "evaluate" / "metrics.json"
        if not (args.reuse and metrics.exists()):
            print(f"[{label}] backmap run {RECIPES[label].name} → {workdir}", file=sys.stderr, flush=True)
            run_recipe(RECIPES[label], workdir, common + extra, steps, args.out / f"{label}.log")
        results[label] = (workdir, json.loads(metrics.read_text()))

    (wd_data, m_data), (wd_free, m_free) = results["data"], results["data-free"]
    table_data, table_free = jsd_table(m_data), jsd_table(m_free)

    def mean(table: dict, candidate: str, names: list[str] | None = None) -> float | None:
        values = [table[n][candidate] for n in (names or table) if candidate in table.get(n, {})]
        return round(sum(values) / len(values), 4) if values else None

    headline = m_data["summary"].get("mean_jsd_headline", {}).get("observables")
    cands_data = {"generator": "vae", "refined": "vae + vae_mc"}
    cands_free = {"generator": "vae (no AA data)", "refined": "vae (no AA data) + vae_mc"}
    line = {"benchmark": "data_free_hexane", "data": str(data), "frames": args.frames,
            "observables": len(table_data),
            "noise_floor": round(m_data["summary"]["mean_jsd_all"].get("noise_floor", float("nan")), 4)}
    for stage in ("generator", "refined"):
        a, b = mean(table_data, cands_data[stage]), mean(table_free, cands_free[stage])
        line[f"{stage}_data"], line[f"{stage}_data_free"] = a, b
        line[f"{stage}_ratio"] = round(b / a, 2) if a and b else None
        if headline:
            line[f"{stage}_headline_data"] = mean(table_data, cands_data[stage], headline)
            line[f"{stage}_headline_data_free"] = mean(table_free, cands_free[stage], headline)
    line["train_s_data"], line["train_s_data_free"] = step_seconds(wd_data, "train"), step_seconds(wd_free, "train")
    worst = sorted(table_free, key=lambda n: -table_free[n].get(cands_free["generator"], 0))[:5]
    line["worst_data_free"] = {n: [round(table_free[n][cands_free["generator"]], 3),
                                   round(table_data[n].get(cands_data["generator"], float("nan")), 3)] for n in worst}

    if args.test_data is not None:
        test = args.test_data.resolve()
        workdir = (args.out / f"data-free-on-{test.name}").resolve()
        metrics = workdir / "evaluate" / "metrics.json"
        if not (args.reuse and metrics.exists()):
            # the data-free model as trained, the target temperature of the new data for vae_mc
            model = wd_free / "model"
            over = [f"system.topology={test / 'topol.top'}", f"system.mapping={test / 'hexane.xml'}",
                    f"data.trajectory={test / 'traj.xtc'}", f"data.frames={args.test_frames}",
                    f"steps.backmap.model={model}"]
            if args.test_temperature:
                over.append(f"refiners.0.params.temperature={args.test_temperature}")
            run_recipe(RECIPES["data-free"], workdir, over,
                       "prepare,backmap,evaluate" if args.skip_refine else "prepare,backmap,refine,evaluate",
                       args.out / "transfer.log")
        table = jsd_table(json.loads(metrics.read_text()))
        line["transfer"] = {"data": str(test), "temperature": args.test_temperature,
                            "generator": mean(table, cands_free["generator"]),
                            "refined": mean(table, cands_free["refined"])}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
