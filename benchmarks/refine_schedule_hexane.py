"""Refiner schedules on hexane (docs/refine-schedule.md): whole-bead ``vae_mc`` moves,
local ``mala`` moves, both in turn (``schedule``), and ``openmm``'s restrained Langevin, each from
the same generator output and for the same target (300 K, restraint k, no rigid bonds).

The generator is the data-trained ``vae`` of benchmarks/data_free_hexane.py (committed hexane, frames
0:21:2, the last 3 held out; trained here unless ``--model`` names one). Every variant backmaps the
held-out CG frames with the same seed (so the same starts), refines them and is evaluated against
the AA reference:

- ``vae_mc``: ``cycles × sweeps`` sweeps of whole-bead VAE moves (32 trials each);
- ``mala``: ``cycles × mala_steps`` MALA steps (Δt ``--timestep``, partial momentum refresh);
- ``schedule``: ``cycles`` × (``sweeps`` vae_mc sweeps, then ``mala_steps`` MALA steps);
- ``openmm``: 1 ps of restrained Langevin at 1 fs (biased at O(Δt²), the project's default refiner).

    .venv/bin/python benchmarks/refine_schedule_hexane.py [--out runs/refine-schedule] [--model DIR]
        [--cycles 5] [--sweeps 2] [--mala-steps 200] [--timestep 0.0005] [--restraint 2e4] [--reuse]
        [--only vae_mc,mala,schedule,openmm]

Prints one JSON line: per variant the mean JSD over evaluate's 22 headline observables (the generator's
own beside it, and the noise floor), the LJ energy per molecule's and the three worst observables'
JSDs (generator → refined), the refine step's wall seconds per frame and each stage's acceptance and
CPU seconds.

``--quick``: the same code path on frames 0:4 (2 held out), a model trained for one epoch, and the
``schedule`` variant only, one cycle of one sweep and 5 MALA steps, in a temporary folder.
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

from _recipe_runs import (
    HEXANE_VAE_GENERATOR,
    REPO,
    backmap_run,
    data_overrides,
    headline,
    step_seconds,
)

RECIPE = REPO / "recipes" / "hexane-vae.yaml"


def refiners(variant: str, a: argparse.Namespace) -> str:
    """The ``refiners=`` override of one variant."""
    target = f"temperature: 300, constraints: none, restraint: {a.restraint}"
    vae_mc = f"{{plugin: vae_mc, params: {{steps: {a.sweeps}, trials: 32, threads: 1}}}}"
    mala = f"{{plugin: mala, params: {{steps: {a.mala_steps}, timestep: {a.timestep}, friction: 10.0}}}}"
    if variant == "vae_mc":
        spec = (f"{{plugin: vae_mc, params: {{{target}, steps: {a.cycles * a.sweeps}, trials: 32, "
                "minimize_steps: 0, threads: 1, on_failure: keep}}")
    elif variant == "mala":
        spec = (f"{{plugin: mala, params: {{{target}, steps: {a.cycles * a.mala_steps}, timestep: {a.timestep}, "
                "friction: 10.0, minimize_steps: 0, on_failure: keep}}")
    elif variant == "schedule":
        spec = (f"{{plugin: schedule, params: {{{target}, cycles: {a.cycles}, minimize_steps: 0, "
                f"on_failure: keep, stages: [{vae_mc}, {mala}]}}}}")
    else:
        spec = (f"{{plugin: openmm, params: {{{target}, timestep: 0.001, steps: 1000, minimize_steps: 0, "
                "threads: 1, on_failure: keep}}")
    return f"refiners=[{spec}]"


def shown(refined: dict) -> list[str]:
    """The LJ energy per molecule and the refined output's three worst other observables."""
    worst = sorted((n for n in refined["per"] if n != "lj_per_molecule"), key=lambda n: -refined["per"][n])
    return ["lj_per_molecule", *worst[:3]]


def log_means(workdir: Path) -> dict[str, float]:
    """Mean over frames of the refine log's acceptance and CPU-second columns."""
    path = workdir / "refine" / "aa.log.csv"
    if not path.exists():
        return {}
    rows = list(csv.DictReader(path.open()))
    keys = [k for k in rows[0] if k.endswith(("acceptance", "cpu_seconds"))]
    return {k: round(sum(float(r[k]) for r in rows if r[k]) / len(rows), 3) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "hexane")
    ap.add_argument("--frames", default="0:21:2")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "refine-schedule")
    ap.add_argument("--model", type=Path, default=None, help="a trained vae model (default: train one, 20 epochs)")
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--sweeps", type=int, default=2, help="vae_mc sweeps per cycle")
    ap.add_argument("--mala-steps", type=int, default=200, help="MALA steps per cycle")
    ap.add_argument("--timestep", type=float, default=0.0005, help="MALA time step (ps)")
    ap.add_argument("--restraint", type=float, default=2.0e4, help="CG restraint k (kJ/mol/nm²), every variant")
    ap.add_argument("--only", default="vae_mc,mala,schedule,openmm", help="variants to run (comma-separated)")
    ap.add_argument("--reuse", action="store_true", help="keep runs whose evaluation exists")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: frames 0:4, one epoch, the schedule of one cycle only, in a temporary folder")
    a = ap.parse_args()
    small, epochs = [], 20
    if a.quick:
        a.out, a.frames, a.only = Path(tempfile.mkdtemp(prefix="backmap-refine-schedule-quick-")), "0:4", "schedule"
        a.cycles, a.sweeps, a.mala_steps, epochs = 1, 1, 5, 1
        small = ["data.split.test_fraction=0.5", "steps.backmap.candidates=2", "steps.backmap.gibbs_sweeps=1"]

    data = a.data.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    log = a.out / "runs.log"
    common = data_overrides(data, a.frames) + [f"generator.params={HEXANE_VAE_GENERATOR}", *small]
    model = a.model.resolve() if a.model else (a.out / "train").resolve() / "model"
    if a.model is None and step_seconds(model.parent, "train") is None:
        backmap_run(RECIPE, model.parent, common + [f"steps.train.epochs={epochs}"], "prepare,train", log)

    line: dict = {"benchmark": "refine_schedule_hexane", "data": str(data), "model": str(model),
                  "cycles": a.cycles, "sweeps_per_cycle": a.sweeps, "mala_steps_per_cycle": a.mala_steps,
                  "mala_timestep_ps": a.timestep, "restraint": a.restraint, "variants": {}}
    for variant in a.only.split(","):
        workdir = (a.out / variant).resolve()
        if not (a.reuse and (workdir / "evaluate" / "metrics.json").exists()):
            backmap_run(RECIPE, workdir, common + [
                f"steps.backmap.model={model}", refiners(variant, a),
                "steps.evaluate.candidates={generator: 'output:backmap.aa', refined: 'output:refine.aa'}"],
                "prepare,backmap,refine,evaluate", log)
        refined, start = headline(workdir, "refined"), headline(workdir, "generator")
        frames = len(list(csv.DictReader((workdir / "refine" / "aa.log.csv").open())))
        seconds = step_seconds(workdir, "refine")
        line["variants"][variant] = {
            "mean_jsd": refined["mean"], "generator_mean_jsd": start["mean"], "noise_floor": refined["floor"],
            "observables": {n: [round(start["per"][n], 4), round(refined["per"][n], 4)] for n in shown(refined)},
            "refine_s_per_frame": None if seconds is None else round(seconds / frames, 1),
            "log": log_means(workdir)}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
