"""The shipped sPS generators at temperatures they were not trained on (EVALUATION.md: the generator
alone "on the 568 K frames *and* on data the generator was not trained on (other temperatures and
phases)"); docs/temperatures.md.

    .venv/bin/python benchmarks/sps_temperatures.py --data data/sps-T450 [data/sps-T650 …] \
        [--generators equivariant,equivariant_k8,equivariant_polish,vae,voxel_gan] [--refine equivariant] [--frames 20] \
        [--refine-steps 500] [--out runs/temperatures]

``--data`` takes folders made by ``scripts/make_sps_temperature_data.sh T`` or
``scripts/make_sps_crystal_data.sh`` (aa.xtc, cg.xtc, md.mdp, topol.top) or DBM's
``../shared/data/sps/eval_t568`` (the training temperature, as the same command's baseline; its
frames identical to training snapshots are left out). The temperature is read from the folder's name
(``sps-T450``, ``eval_t568``, ``sps-crystal-T300``). Per data set: the reference is up to 2 × ``--frames``
clean frames evenly spread, so that the noise floor (its two halves) compares as many frames as each
candidate has; every generator backmaps every second of them (``backmap apply`` with the model's own
sampling settings, plus the options GENERATORS gives: ``equivariant_k8`` is the equivariant model with
the settings it shipped with before its dense-phase ones, docs/temperatures.md); each output is refined
by ``backmap refine`` (openmm, 1 ps of restrained Langevin
at the folder's temperature, all bonds constrained: refine.md's sPS command; one OpenMM thread, as
OpenMM's threads wait on each other when other jobs share the cores); then one ``backmap
evaluate`` scores every candidate on EVALUATION.md's 11 headline observables.

Every step is skipped when its output exists (a killed run resumes). One JSON line per (temperature,
candidate): mean JSD, the floor, CG RMSD, stereocentres kept, clashes, broken bonds, seconds per frame.

``--quick``: the same pipeline on DBM's 568 K set, small: the equivariant model (K = 2, forward pass
only) on two frames (four reference frames), not refined (``backmap refine`` costs ~10 s per frame
even for a few steps), into a temporary folder (a smoke test, ~40 s); without ../shared it prints
``{"skipped": ...}``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import MDAnalysis as mda
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "sps"
BACKMAP = str(Path(sys.executable).parent / "backmap")
MAPPING = REPO / "recipes" / "sps" / "sps.xml"
#: DBM's 568 K frames that are copies of training snapshots (shared/data/README.md)
EVAL_T568_SKIP = {9, 19, 41, 55, 62, 70, 76}
HEADLINE = ["bond:C-C", "bond:C_AR-C_AR", "angle:C-C-C", "angle:C-C-H", "angle:H-C-H", "angle:C_AR-C_AR-C_AR",
            "angle:C_AR-C_AR-H_AR", "dihedral:C-C-C-C", "improper:C_AR-C_AR-C_AR-C_AR", "lj_per_molecule",
            "rdf:C-C"]
#: the equivariant model's sampling as shipped before its dense-phase settings (options equal to the
#: defaults override the model's recorded ones)
K8 = ["--candidates", "8", "--sweep-candidates", "", "--gibbs", "2", "--regrow-candidates", "0", "--polish", "0",
      "--clash-distance", "0.1", "--clash-energy", "0"]
#: each generator: its model and the options of its shipped setting ("{T}": the data set's temperature;
#: docs/equivariant.md, vae.md, voxel-gan.md)
GENERATORS = {
    "equivariant": ["--model", str(REPO / "models" / "sps-equivariant"), "--temperature", "{T}"],
    # the settings shipped before the dense-phase ones: K = 8 in every sweep, no guidance, clashes by distance
    "equivariant_k8": ["--model", str(REPO / "models" / "sps-equivariant"), *K8],
    "equivariant_polish": ["--model", str(REPO / "models" / "sps-equivariant"), *K8, "--polish", "15", "--polish-sweeps", "all"],
    "vae": ["--model", str(REPO / "models" / "sps-vae")],
    "voxel_gan": ["--model", str(REPO / "models" / "sps-voxel-gan"),
                  "--stereo-reference", str(SHARED / "train" / "aa" / "100.gro")],
}


def temperature_of(folder: Path) -> float:
    """The temperature a data folder is at, from its name (sps-T450, eval_t568, sps-crystal-T300)."""
    match = re.search(r"[tT](\d+)$", folder.name)
    if not match:
        sys.exit(f"error: {folder}: cannot read a temperature from the folder's name (expected e.g. sps-T450)")
    return float(match.group(1))


def is_melt(folder: Path) -> bool:
    """A melt of scripts/make_sps_temperature_data.sh or DBM's 568 K set (else e.g. the ordered state
    of scripts/make_sps_crystal_data.sh, sps-crystal-T300)."""
    return re.fullmatch(r"sps-T\d+|eval_t568", folder.name) is not None


def description_of(folder: Path) -> str:
    """What a data folder holds, for the model cards."""
    if folder.name == "eval_t568":
        return "DeepBackmap's sPS evaluation set (DBM_SPS/eval_t568: its published sPS data, not shipped; " \
            "training copies left out)"
    if is_melt(folder):
        return f"the sPS melt of {folder.name} (scripts/make_sps_temperature_data.sh)"
    return f"the sPS state of {folder.name} (its README.md)"


def clean_frames(folder: Path, n: int) -> list[int]:
    """Up to ``n`` frame indices of the folder's aa.xtc, evenly spread, none a training copy."""
    total = len(mda.coordinates.XTC.XTCReader(str(folder / "aa.xtc")))
    skip = EVAL_T568_SKIP if folder.name == "eval_t568" else set()
    clean = [i for i in range(total) if i not in skip]
    picks = np.linspace(0, len(clean) - 1, min(n, len(clean))).round().astype(int)
    return [clean[i] for i in sorted(set(picks))]


def files_of(folder: Path) -> tuple[Path, Path]:
    """The topology and .mdp to use: the folder's own, or the shared ones for DBM's eval_t568 (whose
    own md.mdp GROMACS 2022 rejects)."""
    if folder.name == "eval_t568":
        return SHARED / "top" / "topol.top", SHARED / "top" / "md.mdp"
    return folder / "topol.top", folder / "md.mdp"


def backmap(args: list[str], log: Path) -> None:
    """One ``backmap`` command, its output appended to ``log``."""
    print("backmap " + " ".join(args), file=sys.stderr, flush=True)
    with open(log, "a") as out:
        done = subprocess.run([BACKMAP, *args], check=False, stdout=out, stderr=subprocess.STDOUT,
                              env=dict(os.environ, BACKMAP_NO_PROGRESS="1"))
    if done.returncode:
        sys.exit(f"error: backmap {args[0]} failed (exit {done.returncode}); see {log}")


def write_reference(folder: Path, frames: list[int], out: Path) -> None:
    """The reference frames as their own trajectory (evaluate's --frames would select the candidates'
    frames too)."""
    if out.exists():
        return
    u = mda.Universe(str(folder / "aa.gro" if (folder / "aa.gro").exists() else folder / "aa.xtc"),
                     str(folder / "aa.xtc"))
    part = out.with_suffix(".part.xtc")
    with mda.Writer(str(part), u.atoms.n_atoms) as w:
        for ts in u.trajectory[frames]:
            w.write(u.atoms)
    part.rename(out)


def seconds_per_frame(work: Path, label: str) -> float:
    """The generator's seconds per frame (apply's summary) or the refiner's (mean of its log)."""
    if label.endswith(" + refine"):
        with open(work / f"{label.split(' ')[0]}+refine.log.csv") as f:
            return round(float(np.mean([float(row["seconds"]) for row in csv.DictReader(f)])), 2)
    return json.loads((work / f"{label}.json").read_text())["summary"]["seconds per frame"]


def record_on_cards(metrics: dict, labels: list[str], reference: Path, description: str) -> None:
    """Each shipped model's candidates of this evaluation, on its model card (one entry per model:
    alone, with its other settings, refined)."""
    from backmap.engine.model_card import evaluation_entry, record_evaluation

    names = {"equivariant_k8": "settings shipped before (K = 8, no guidance)",
             "equivariant_polish": "settings shipped before + energy guidance (--polish 15 --polish-sweeps all)"}
    by_model: dict[str, dict[str, str]] = {}
    for label in labels:
        name = label.split(" ")[0]
        model = GENERATORS[name][GENERATORS[name].index("--model") + 1]
        by_model.setdefault(model, {})[label] = ("refined (openmm 1 ps)" if label.endswith("refine")
                                                 else names.get(name, "alone"))
    # the card travels without ../shared: the data folder is named, not pointed at
    command = "python benchmarks/sps_temperatures.py " + " ".join(
        "DBM_SPS/" + Path(a).name if Path(a).resolve().parent == SHARED.resolve() else a for a in sys.argv[1:])
    for model, kept in by_model.items():
        record_evaluation(Path(model), evaluation_entry(metrics, reference, command, kept, description))
        print(f"recorded on {model}/card.json", file=sys.stderr)


def run_temperature(folder: Path, generators: list[str], n_frames: int, out: Path, refine_steps: int,
                    refined_generators: list[str], model_cards: bool = False) -> list[dict]:
    temperature = temperature_of(folder)
    topology, mdp = files_of(folder)
    work = out / (f"T{temperature:g}" if is_melt(folder) else folder.name)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    reference_frames = clean_frames(folder, 2 * n_frames)
    frames = reference_frames[1::2]  # the candidates': every second reference frame
    write_reference(folder, reference_frames, work / "reference.xtc")
    labels = []
    for name in generators:
        aa = work / f"{name}.xtc"
        if not aa.exists():
            options = [a.replace("{T}", f"{temperature:g}") for a in GENERATORS[name]]  # the set's temperature
            backmap(["apply", *options, "--cg", str(folder / "cg.xtc"), "--frames", ",".join(map(str, frames)),
                     "--out", str(aa), "--seed", "1"], log)
        refined = work / f"{name}+refine.xtc"
        refine = bool(refine_steps) and name in refined_generators
        if refine and not refined.exists():
            backmap(["refine", "--topology", str(topology), "--mapping", str(MAPPING), "--cg", str(work / f"{name}_cg.trr"),
                     "--traj", str(aa), "--out", str(refined), "--mdp", str(mdp), "--temperature", f"{temperature:g}",
                     "--constraints", "all-bonds", "--timestep", "0.002", "--steps", str(refine_steps),
                     "--restraint", "2e5", "--param", "threads=1"], log)
        labels += [name] + ([f"{name} + refine"] if refine else [])
    evaluated = work / "evaluate" / "metrics.json"
    if not evaluated.exists() or set(json.loads(evaluated.read_text())["summary"]["mean_jsd_headline"]["candidates"]) != set(labels):
        trajectories = [str(work / (f"{lab.split(' ')[0]}+refine.xtc" if lab.endswith("refine") else f"{lab}.xtc"))
                        for lab in labels]
        label_args = [a for lab in labels for a in ("--label", lab)]
        backmap(["evaluate", "--topology", str(topology), "--reference", str(work / "reference.xtc"),
                 "--mapping", str(MAPPING), "--cg", str(work / f"{generators[0]}_cg.trr"), "--mdp", str(mdp),
                 "--no-lj-shift", "--headline", ",".join(HEADLINE), "--workers", "1", "--out", str(work / "evaluate"),
                 *label_args, *trajectories], log)
    metrics = json.loads(evaluated.read_text())
    if model_cards:
        record_on_cards(metrics, labels, work / "reference.xtc",
                        f"{description_of(folder)} at {temperature:g} K: {len(reference_frames)} reference frames, every second "
                        f"backmapped (seed 1), 11 headline observables")
    summary = metrics["summary"]["mean_jsd_headline"]
    obs = metrics["observables"]
    rows = []
    for label in labels:
        def score(key: str, field: str = "mean", label: str = label):
            value = obs.get(key, {}).get("candidates", {}).get(label, {}).get(field)
            return None if value is None else round(float(value), 5)
        rows.append({"set": folder.name, "temperature": temperature, "candidate": label, "frames": len(frames),
                     "reference_frames": len(reference_frames),
                     "mean_jsd": round(summary["candidates"][label], 4), "noise_floor": round(summary["noise_floor"], 4),
                     "cg_rmsd_nm": score("cg_rmsd"), "stereo_kept": score("stereo:chirality", "preserved"),
                     "clashes_per_atom": score("clash_fraction"), "broken_bonds": score("broken_bond_fraction"),
                     "seconds_per_frame": seconds_per_frame(work, label),
                     "per_observable": {o: round(obs[o]["candidates"][label]["jsd"], 4) for o in HEADLINE}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", type=Path, required="--quick" not in sys.argv,
                        help="folders from scripts/make_sps_temperature_data.sh or make_sps_crystal_data.sh, "
                             "or ../shared/data/sps/eval_t568")
    parser.add_argument("--generators", default="equivariant,equivariant_polish,vae,voxel_gan",
                        help=f"comma-separated, of {', '.join(GENERATORS)}")
    parser.add_argument("--frames", type=int, default=20, help="frames each generator backmaps per temperature")
    parser.add_argument("--refine-steps", type=int, default=500, help="openmm steps of 2 fs per frame (0: no refinement)")
    parser.add_argument("--refine", default=None, help="comma-separated: the generators whose output is refined "
                                                       "(default: every one of --generators)")
    parser.add_argument("--out", type=Path, default=Path("runs/temperatures"))
    parser.add_argument("--model-cards", action="store_true",
                        help="record each model's result on its card (models/*/card.json; docs/models.md)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: the equivariant model on two 568 K frames, not refined, "
                             "a temporary --out")
    args = parser.parse_args()
    if args.quick:
        if not (SHARED / "eval_t568" / "aa.xtc").is_file():
            print(json.dumps({"skipped": f"{SHARED} not present (DBM's 568 K set)"}))
            return
        tmp = tempfile.TemporaryDirectory()
        args.data, args.generators, args.refine, args.frames = [SHARED / "eval_t568"], "equivariant", None, 2
        args.refine_steps, args.out, args.model_cards = 0, Path(tmp.name), False
        # K = 2, forward pass only, no block move or repair: the same commands, cheap
        GENERATORS["equivariant"] = GENERATORS["equivariant"] + ["--candidates", "2", "--sweep-candidates", "",
                                                                 "--gibbs", "0", "--regrow", "", "--repair-clashes", "0"]
    generators = [g for g in args.generators.split(",") if g]
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        parser.error(f"--generators: unknown {unknown}; known: {list(GENERATORS)}")
    for folder in args.data:
        for f in ("aa.xtc", "cg.xtc"):
            if not (folder / f).is_file():
                parser.error(f"--data {folder}: {f} missing (make it with scripts/make_sps_temperature_data.sh)")
    refined = generators if args.refine is None else [g for g in args.refine.split(",") if g]
    if set(refined) - set(generators):
        parser.error(f"--refine: {sorted(set(refined) - set(generators))} not among --generators")
    for folder in args.data:
        for row in run_temperature(folder.resolve(), generators, args.frames, args.out.resolve(), args.refine_steps,
                                   refined, args.model_cards):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
