"""Backmapping hexane without atomistic training data (docs/reverse-kl.md, "Status"), end to end.

Trains the same ``vae`` generator twice on the same frames and split, then backmaps the held-out CG
frames with each and evaluates them against the AA reference:

- ``data``: recipes/hexane-vae.yaml, maximum likelihood on the AA frames (``--epochs``);
- ``data-free``: recipes/hexane-data-free.yaml, reverse KL against the force field under the CG
  restraint (every AA coordinate handed to it is NaN).

Each model is evaluated with the core's CG projection on (the generator's default) and off
(``project_cg: false``: on hexane the projection bends the C–C–C angles to meet the beads), with
``--refine`` also after the openmm refiner of recipes/hexane.yaml (1 ps restrained Langevin; ``vae_mc``
takes ≈ 25 min per model for 3 frames of 4000 atoms), and with
``--test-data`` on the CG frames of another trajectory, e.g. hexane at 350 K
(``TEMP=350 DATA_DIR=data/hexane350 scripts/make_hexane_data.sh``): a model trained over a range of
temperatures (``--temperatures 280 360``) then samples at ``--test-temperature``.

    .venv/bin/python benchmarks/data_free_hexane.py [--out runs/data-free-hexane] [--reuse]
        [--generator '{latent: 2, width: 8, hidden: 32}'] [--epochs 20] [--final-steps N]
        [--temperatures 280 360] [--test-data data/hexane350/hexane --test-temperature 350] [--refine]
        [--set steps.train.reverse_kl.KEY=VALUE ...]

Prints one JSON line: the mean JSD over evaluate's headline observables (the noise floor beside it)
of every (model, projection, data) evaluated, the ratios data-free / data, the training seconds of
each model, and the five observables where the data-free generator is worst.

``--quick``: the same code path on frames 0:4 (2 held out), one epoch of each model (a starting pool
of 10 minimization steps and 10 + 10 + 10 openmm steps), 2 candidates, without the no-projection
variants, in a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _recipe_runs import (
    HEXANE_OPENMM,
    HEXANE_VAE_GENERATOR,
    REPO,
    backmap_run,
    data_overrides,
    headline,
    step_seconds,
)

RECIPES = {"data": REPO / "recipes" / "hexane-vae.yaml", "data-free": REPO / "recipes" / "hexane-data-free.yaml"}
#: the refinement both models' output gets with --refine
OPENMM = f"refiners=[{HEXANE_OPENMM}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "hexane")
    ap.add_argument("--frames", default="0:21:2", help="frames of the trajectory (the last quarter is held out)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "data-free-hexane")
    ap.add_argument("--generator", default=HEXANE_VAE_GENERATOR, help="the vae generator's params (YAML mapping), both models")
    ap.add_argument("--epochs", type=int, default=20, help="maximum-likelihood epochs of the data-trained model")
    ap.add_argument("--final-steps", type=int, default=None, help="reverse-KL steps at the target β (recipe's if unset)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="stop reverse KL after this many steps in all (a killed run resumes and stops there)")
    ap.add_argument("--temperatures", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="train the data-free model over this temperature range (temperature as an input)")
    ap.add_argument("--test-data", type=Path, default=None, help="another hexane data set (e.g. another temperature)")
    ap.add_argument("--test-temperature", type=float, default=None, help="temperature (K) of --test-data")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe override for the data-free model only (repeatable), e.g. "
                         "steps.train.reverse_kl.lr=1e-4")
    ap.add_argument("--refine", action="store_true", help="also refine both models' output (openmm, 1 ps)")
    ap.add_argument("--reuse", action="store_true", help="keep runs whose evaluation exists")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: frames 0:4, one epoch each, a tiny starting pool, in a temporary folder")
    args = ap.parse_args()
    small = []
    if args.quick:
        args.out, args.frames, args.epochs = Path(tempfile.mkdtemp(prefix="backmap-data-free-hexane-quick-")), "0:4", 1
        pool = "steps.train.reverse_kl"
        args.set = args.set + [f"{pool}.pretrain_epochs=1", f"{pool}.minimize_steps=10",
                               *(f"{pool}.thermalize.params.{k}=10" for k in ("steps", "minimize_steps", "warmup_steps"))]
        small = ["data.split.test_fraction=0.5", "steps.backmap.candidates=2", "steps.backmap.gibbs_sweeps=1"]

    data = args.data.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    common = data_overrides(data, args.frames) + [f"generator.params={args.generator}", *small]
    label = "vae"
    only_generator = f"steps.evaluate.candidates={{{label}: 'output:backmap.aa'}}"
    extra = {"data": [f"steps.train.epochs={args.epochs}"], "data-free": []}
    if args.final_steps is not None:
        extra["data-free"].append(f"steps.train.reverse_kl.final_steps={args.final_steps}")
    if args.max_steps is not None:
        extra["data-free"].append(f"steps.train.reverse_kl.max_steps={args.max_steps}")
    extra["data-free"] += args.set
    if args.temperatures:
        lo, hi = args.temperatures
        extra["data-free"].append(f"generator.params.temperatures=[{lo}, {hi}]")

    line: dict = {"benchmark": "data_free_hexane", "data": str(data), "frames": args.frames,
                  "generator": args.generator, "data_free_overrides": args.set}
    results: dict[str, dict] = {}
    for model in ("data", "data-free"):
        workdir = (args.out / model).resolve()
        log = args.out / f"{model}.log"
        if not (args.reuse and (workdir / "evaluate" / "metrics.json").exists()):
            backmap_run(RECIPES[model], workdir, common + extra[model] + [only_generator],
                        "prepare,train,backmap,evaluate", log)
        results[f"{model}"] = headline(workdir, label)
        line[f"train_s_{model}"] = step_seconds(workdir, "train")
        if model == "data-free":
            line["reverse_kl_s"] = step_seconds(workdir, "train", "train seconds")
        variants = [] if args.quick else [("noproj", data, ["steps.backmap.project_cg=false"])]
        if args.test_data is not None:
            test = args.test_data.resolve()
            temp = [f"steps.backmap.generator_params={{temperature: {args.test_temperature}}}"] \
                if model == "data-free" and args.temperatures and args.test_temperature else []
            name = f"on-{test.parent.name}"  # data/hexane350/hexane → on-hexane350
            variants += [(name, test, temp), (f"{name}-noproj", test, temp + ["steps.backmap.project_cg=false"])]
        for name, where, more in variants:
            vdir = (args.out / f"{model}-{name}").resolve()
            if not (args.reuse and (vdir / "evaluate" / "metrics.json").exists()):
                backmap_run(RECIPES["data"], vdir, data_overrides(where, args.frames) + small + [
                    f"generator.params={args.generator}", f"steps.backmap.model={workdir / 'model'}",
                    only_generator, *more], "prepare,backmap,evaluate", log)
            results[f"{model}-{name}"] = headline(vdir, label)
        if args.refine:
            rdir = (args.out / f"{model}-refined").resolve()
            if not (args.reuse and (rdir / "evaluate" / "metrics.json").exists()):
                backmap_run(RECIPES["data"], rdir, common + [
                    f"steps.backmap.model={workdir / 'model'}", OPENMM,
                    f"steps.evaluate.candidates={{{label}: 'output:backmap.aa', refined: 'output:refine.aa'}}"],
                    "prepare,backmap,refine,evaluate", log)
            results[f"{model}-refined"] = headline(rdir, "refined")
            line[f"refine_s_{model}"] = step_seconds(rdir, "refine")

    line["mean_jsd_headline"] = {k: v["mean"] for k, v in results.items()}
    line["noise_floor"] = {k: v["floor"] for k, v in results.items()}
    line["ratio_data_free_over_data"] = {
        k[len("data-free"):] or "default": round(v["mean"] / results["data" + k[len("data-free"):]]["mean"], 2)
        for k, v in results.items() if k.startswith("data-free") and "data" + k[len("data-free"):] in results}
    free, base = results["data-free"]["per"], results["data"]["per"]
    worst = sorted(free, key=lambda n: -free[n])[:5]
    line["worst_data_free"] = {n: [round(free[n], 3), round(base[n], 3)] for n in worst}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
