"""vae_mc on hexane with and without its exact local moves, against openmm, from one generator output.

The data-trained ``vae`` of ``data_free_hexane.py`` (recipes/hexane-vae.yaml on the committed
``tests/data/hexane``, frames 0:21:2, the last quarter held out) backmaps the 3 held-out CG frames
once per variant with the same seed, so every refiner starts from the same structures. Each variant
then refines them and ``evaluate`` scores the result against the reference (docs/vae-sps.md,
"hexane: local moves take vae_mc to the noise floor").

    .venv/bin/python benchmarks/vae_mc_hexane_local.py [--out runs/vae-mc-hexane] [--only base,local20t8]

Prints one JSON line per variant: mean JSD over the headline observables, the noise floor, the
refine step's seconds, and the observables the local moves change most. ~35 min on one core.

``--quick``: the same code path on frames 0:4 (2 held out), one training epoch, 2 candidates and one
variant of one sweep (2 trials, one round of inner moves and turns), in a temporary folder.
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

RECIPE = REPO / "recipes" / "hexane-vae.yaml"
VAE_MC = "temperature: 300, constraints: none, restraint: 2.0e+4, minimize_steps: 0"
VARIANTS = {
    "base": f"{{plugin: vae_mc, params: {{{VAE_MC}, steps: 10, trials: 32}}}}",
    "local10": f"{{plugin: vae_mc, params: {{{VAE_MC}, steps: 10, trials: 32, inner: 8, turns: 1}}}}",
    "local20": f"{{plugin: vae_mc, params: {{{VAE_MC}, steps: 20, trials: 32, inner: 8, turns: 1}}}}",
    "local20t8": f"{{plugin: vae_mc, params: {{{VAE_MC}, steps: 20, trials: 8, inner: 8, turns: 1}}}}",
    "openmm": HEXANE_OPENMM,
    # --quick only
    "quick": f"{{plugin: vae_mc, params: {{{VAE_MC}, steps: 1, trials: 2, inner: 1, turns: 1}}}}",
}
SHOWN = ["angle:opls_135-opls_136-opls_136", "angle:opls_136-opls_136-opls_136",
         "dihedral:opls_136-opls_136-opls_136-opls_136", "lj_per_molecule"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "hexane")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "vae-mc-hexane")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--only", default=",".join(v for v in VARIANTS if v != "quick"), help="comma-separated variants")
    ap.add_argument("--seed", type=int, default=None, help="the runs' seed (the recipe's, 11, if unset): other "
                    "generator output and other chains; the model is the same")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: frames 0:4, 1 epoch, one variant of one sweep, in a temporary folder")
    args = ap.parse_args()
    frames, small = "0:21:2", []
    if args.quick:
        args.out = Path(tempfile.mkdtemp(prefix="backmap-vae-mc-hexane-quick-"))
        args.epochs, args.only, frames = 1, "quick", "0:4"
        small = ["data.split.test_fraction=0.5", "steps.backmap.candidates=2", "steps.backmap.gibbs_sweeps=1"]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = data_overrides(args.data.resolve(), frames) + [f"generator.params={HEXANE_VAE_GENERATOR}", *small]
    model = out / "model-run"
    if not (model / "model").exists():
        backmap_run(RECIPE, model, common + [f"steps.train.epochs={args.epochs}"], "prepare,train", out / "model.log")
    for name in args.only.split(","):
        workdir = out / (name if args.seed is None else f"{name}-seed{args.seed}")
        if not (workdir / "evaluate" / "metrics.json").exists():
            backmap_run(RECIPE, workdir, common + [
                f"steps.backmap.model={model / 'model'}", f"refiners=[{VARIANTS[name]}]",
                "steps.evaluate.candidates={vae: 'output:backmap.aa', refined: 'output:refine.aa'}",
                *([f"seed={args.seed}"] if args.seed is not None else [])],
                "prepare,backmap,refine,evaluate", out / f"{name}.log")
        refined, generated = headline(workdir, "refined"), headline(workdir, "vae")
        print(json.dumps({"benchmark": "vae_mc_hexane_local", "variant": name, "seed": args.seed or 11,
                          "mean_jsd": refined["mean"], "generator_mean_jsd": generated["mean"],
                          "noise_floor": refined["floor"],
                          "refine_s": step_seconds(workdir, "refine"),
                          "jsd": {k: round(refined["per"][k], 4) for k in SHOWN}}), flush=True)


if __name__ == "__main__":
    main()
