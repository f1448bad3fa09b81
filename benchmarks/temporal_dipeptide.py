"""Trajectory mode against frame-by-frame backmapping on alanine dipeptide (docs/temporal.md).

One command, on the same CG frames (the held-out 10–12 ns of data/dipeptide, mapped to 6 beads):

- ``temporal``: the trajectory-mode model (recipes/dipeptide-temporal.yaml), frames in order, each
  conditioned on the AA frame written before it;
- ``temporal, frame by frame``: the same model with no previous frame (every frame a first frame);
- ``frame-wise``: the equivariant model of the same size trained without the previous frame
  (recipes/dipeptide-equivariant.yaml) — our frame generator;
- optionally ``generalization``: the trajectory-mode model on a CG MD trajectory of a CG force field
  (scripts/make_dipeptide_cg_data.sh), with its MSM timescales rescaled to the reference's slowest.

Evaluated against the reference AA frames with the dynamics metrics (docs/dynamics.md): velocity
distributions in the lab and inside each molecule's CG frame, MSM implied timescales on (φ, ψ),
the (φ, ψ) map, potential energies. Prints one JSON line per backmapping (frames, seconds per
frame — the speed ratio of a trajectory frame to a frame-wise frame is measured here, in the same
process) and one with the comparison.

    backmap run recipes/dipeptide-temporal.yaml; backmap run recipes/dipeptide-equivariant.yaml   # the models
    .venv/bin/python benchmarks/temporal_dipeptide.py [--frames 2000] [--generalization data/dipeptide-cg/cg.xtc] [--speed-only]
    # in OBC implicit water (recipes/alanine-*.yaml), the generator alone:
    .venv/bin/python benchmarks/temporal_dipeptide.py --trajectory data/dipeptide-obc/traj.xtc --candidates 1 \
        --temporal runs/alanine-temporal --framewise runs/alanine-framewise --out runs/temporal-alanine-benchmark
    # the same path in a minute: two small models trained on 60 frames of tests/data/dipeptide, 10 frames backmapped
    .venv/bin/python benchmarks/temporal_dipeptide.py --quick
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
TOP = REPO / "tests" / "data" / "dipeptide" / "topol.top"
MAPPING = REPO / "recipes" / "dipeptide" / "dipeptide.xml"
NONBONDED = {"rvdw": 1.4, "rcoulomb": 1.4, "coulomb": "reaction-field", "epsilon_rf": 1, "vdw_modifier": "none"}


# K candidates and the selector among them. Default: the Boltzmann selector among 4 (lowest-energy
# selection biases the potential energies low, docs/temporal.md); data whose potential backmap's force
# field lacks (implicit solvent) use one candidate: the generator alone.
SELECTION = {"candidates": 4, "selector": "boltzmann"}
#: the alternating speed measurement's rounds × frames (--quick: fewer)
SPEED_ROUNDS: dict = {}
#: --quick: a small equivariant model, trained for one epoch on the first 60 frames of the committed data,
#: with the previous frame (temporal: true) or without
QUICK_RECIPE = """name: {name}
seed: 3
system: {{topology: {top}, mapping: {mapping}}}
data: {{trajectory: {traj}, frames: '0:60', split: {{test_fraction: 0.2, mode: tail}}}}
generator:
  plugin: equivariant
  environment: {{temporal: {temporal}}}
  params: {{constraints: h-bonds, width: 8, vectors: 4, tensors: 2, hidden: 32, lr: 4.0e-3, threads: 1}}
steps:
  - prepare: {{}}
  - train: {{epochs: 1, batch_size: 64}}
"""


def quick_models(folder: Path) -> tuple[Path, Path]:
    """--quick: train the two small models (trajectory mode, frame-wise) into ``folder``."""
    import os
    import subprocess

    runs = []
    for name, temporal in (("temporal", "true"), ("framewise", "false")):
        recipe = folder / f"{name}.yaml"
        recipe.write_text(QUICK_RECIPE.format(name=name, top=TOP, mapping=MAPPING, temporal=temporal,
                                              traj=REPO / "tests" / "data" / "dipeptide" / "traj.xtc"))
        subprocess.run([str(Path(sys.executable).parent / "backmap"), "run", str(recipe), "--workdir", str(folder / name)],
                       check=True, env=dict(os.environ, BACKMAP_NO_PROGRESS="1"), stdout=subprocess.DEVNULL)
        runs.append(folder / name)
    return runs[0], runs[1]


def backmap(model, cg_top, frames, out: Path, **settings) -> dict:
    from backmap.app.backmapping import backmap_to_files
    from backmap.sampling.backmapper import BackmapSettings

    t0 = time.perf_counter()
    chosen = BackmapSettings(gibbs_sweeps=1, **SELECTION, **settings)
    summary = backmap_to_files(model, cg_top, TOP, frames, out, chosen, seed=11)
    seconds = time.perf_counter() - t0
    return {"frames": summary.frames, "seconds": round(seconds, 1),
            "generator seconds per frame": summary.generator_seconds_per_frame}


def speed(temporal, framewise, cg_top, frames, rounds: int = 4, n: int = 50) -> dict:
    """Seconds per frame of trajectory mode and of the frame-wise model, timed in alternating rounds
    of ``n`` frames (ABAB…) so that other load on the machine hits both alike."""
    from backmap.engine.assembly import make_backmapper
    from backmap.sampling.backmapper import BackmapSettings

    settings = BackmapSettings(gibbs_sweeps=1, **SELECTION)
    runners = {"trajectory mode": make_backmapper(cg_top, temporal.generator, settings, seed=3, channels=temporal.channels),
               "frame-wise model": make_backmapper(cg_top, framewise.generator, settings, seed=3,
                                                   channels=framewise.channels)}
    seconds = {k: 0.0 for k in runners}
    for r in range(rounds):
        part = frames[r * n:(r + 1) * n]
        for label, bm in runners.items():
            t0 = time.perf_counter()
            for _ in bm.run(part, total=len(part)):
                pass
            seconds[label] += time.perf_counter() - t0
    per = {k: v / (rounds * n) for k, v in seconds.items()}
    return {"speed": "seconds per frame, alternating rounds", **{k: round(v, 4) for k, v in per.items()},
            "trajectory frame / frame-wise frame": round(per["trajectory mode"] / per["frame-wise model"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trajectory", type=Path, default=REPO / "data" / "dipeptide" / "traj.xtc")
    ap.add_argument("--start", type=int, default=10000, help="first reference frame (the recipes train on 0–9999)")
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--temporal", type=Path, default=REPO / "runs" / "dipeptide-temporal")
    ap.add_argument("--framewise", type=Path, default=REPO / "runs" / "dipeptide-equivariant")
    ap.add_argument("--generalization", type=Path, default=None, help="a CG trajectory of a CG model (1 ps frames)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "temporal-dipeptide-benchmark")
    ap.add_argument("--speed-only", action="store_true", help="only the alternating speed measurement")
    ap.add_argument("--candidates", type=int, default=SELECTION["candidates"], help="K candidates per bead")
    ap.add_argument("--selector", default=SELECTION["selector"], help="selector among the K candidates")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run of the same path: two small models trained on 60 frames of tests/data/dipeptide, "
                         "frames 60-69 backmapped three ways and evaluated, speed in 2 rounds of 5 frames")
    args = ap.parse_args()
    if args.quick:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="backmap-temporal-quick-"))
        args.temporal, args.framewise = quick_models(folder)
        args.trajectory, args.start, args.frames, args.out = REPO / "tests" / "data" / "dipeptide" / "traj.xtc", 60, 10, folder
        SPEED_ROUNDS.update(rounds=2, n=5)
    SELECTION.update(candidates=args.candidates, selector=args.selector)
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.engine.models import load_model
    from backmap.metrics.evaluate import EvaluationSpec, run_evaluation
    from backmap.progress import say
    from backmap.sampling.backmapper import read_cg
    from backmap.system.io import Frame, read_frames, write_frames

    for run in (args.temporal, args.framewise):
        if not (run / "model" / "model.json").is_file():
            sys.exit(f"no model in {run}: run the recipe first (see this file's docstring)")
    args.out.mkdir(parents=True, exist_ok=True)
    top = load_topology(TOP)
    cg_top = load_mapping(MAPPING, top).cg_topology(top)
    idx = slice(args.start, args.start + args.frames)
    ref = list(read_frames(args.trajectory, frames=idx))
    reference = args.out / "reference.xtc"
    write_frames(reference, ref, top.atom_names, top.resnames, top.residue_numbers())
    cg = [Frame(cg_top.apply(f.positions), f.dimensions, f.time, f.index) for f in ref]
    temporal, framewise = load_model(args.temporal), load_model(args.framewise)
    if args.speed_only:
        print(json.dumps(speed(temporal, framewise, cg_top, cg, **SPEED_ROUNDS)), flush=True)
        return
    runs = {"temporal": (temporal, {}), "temporal, frame by frame": (temporal, {"frame_by_frame": True}),
            "frame-wise": (framewise, {})}
    files, timing = {}, {}
    for label, (model, settings) in runs.items():
        out = args.out / (label.replace(", ", "-").replace(" ", "-") + ".xtc")
        say(f"{label}: backmapping {len(cg)} frames → {out}")
        timing[label] = backmap(model, cg_top, cg, out, **settings)
        files[label] = out
        print(json.dumps({"backmap": label, **timing[label]}), flush=True)
    candidates, labels = list(files.values()), list(files)
    if args.generalization is not None:
        gen = list(read_cg(cg_top, args.generalization, list(range(args.frames))))
        out = args.out / "generalization.xtc"
        timing["generalization"] = backmap(temporal, cg_top, gen, out)
        candidates.append(out)
        labels.append("generalization")
    from backmap.forcefield import NonbondedSettings

    spec = EvaluationSpec(topology=TOP, reference=reference, candidates=candidates, labels=labels, out=args.out / "evaluate",
                          mapping=[MAPPING], dt=1.0, workers=1, batch_size=250,
                          metrics=["velocities", "ramachandran", "energy",
                                   ("msm", {"rescale": args.generalization is not None})],
                          settings=NonbondedSettings(**NONBONDED))
    result = run_evaluation(spec)
    print(json.dumps(summarise(result, labels, timing)), flush=True)
    print(json.dumps(speed(temporal, framewise, cg_top, cg, **SPEED_ROUNDS)), flush=True)


def summarise(result: dict, labels: list[str], timing: dict) -> dict:
    """The numbers the targets are stated in (docs/temporal.md)."""
    obs = result["observables"]
    out: dict = {"benchmark": "temporal_dipeptide"}
    for name in sorted(o for o in obs if o.startswith(("velocity:", "internal_velocity:"))):
        out[name] = {"noise floor": _r(obs[name]["noise_floor"]["jsd"]),
                     **{lab: _r(obs[name]["candidates"][lab]["jsd"]) for lab in labels}}
    for kind in ("velocity", "internal_velocity"):
        for lab in ("frame-wise", "temporal, frame by frame"):
            ratio = [obs[n]["candidates"][lab]["jsd"] / max(obs[n]["candidates"]["temporal"]["jsd"], 1e-12)
                     for n in obs if n.startswith(kind + ":H")]
            out[f"{kind}:H JSD ratio {lab} / temporal"] = _r(ratio[0]) if ratio else None
    if "rama:phi_psi" in obs:
        out["rama:phi_psi"] = {"noise floor": _r(obs["rama:phi_psi"]["noise_floor"]["jsd"]),
                               **{lab: _r(obs["rama:phi_psi"]["candidates"][lab]["jsd"]) for lab in labels}}
    out["msm"] = result.get("analyses", {}).get("msm")
    out["seconds per frame (one after the other; see the speed line)"] = {
        lab: timing[lab]["generator seconds per frame"] for lab in timing}
    return out


def _r(x):
    return None if x is None else round(float(x), 5)


if __name__ == "__main__":
    main()
