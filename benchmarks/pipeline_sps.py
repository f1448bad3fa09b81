"""The CPU pipeline from CG to the noise floor on sPS 568 K: seconds per frame on one core, against
today's settings measured in the same run.

Two pipelines backmap the same clean frames of ``eval_t568/cg.xtc`` with the shipped equivariant
model and refine them with OpenMM, each command pinned to one core (``taskset``) with one thread:

- **baseline** (the settings the docs used so far): guided generator (``--polish 15
  --polish-sweeps all``, the model's regrow and clash repair), then ``backmap refine`` frame by frame,
  1 ps (500 × 2 fs), 100 minimization and 100 warm-up steps;
- **fast**: the generator (two Gibbs sweeps) without the regrow move and guidance, one round of
  clash repair (the few units with an atom within 0.1 nm of a non-bonded one: without it, such a
  frame blows up at 4 fs and costs a 1 000-step relaxation), then ``backmap refine --batch N`` (OpenMM's contexts built once for all frames), hydrogens of
  3 amu and 0.2 ps (50 × 4 fs), 20 minimization and 20 warm-up steps.

Both are evaluated against the 71 clean reference frames (EVALUATION.md's 11 headline observables,
plain cut-off LJ). Prints one JSON line per pipeline and a last one with the ratios; seconds per
frame are the commands' own (the model and system loaded once, not counted) and the wall time of
the commands with start-up.

    .venv/bin/python benchmarks/pipeline_sps.py [--every 3] [--core 1] [--out runs/pipeline-sps]
    .venv/bin/python benchmarks/pipeline_sps.py --quick     # 2 frames, both pipelines (≈ 3 min)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SPS = REPO.parent / "shared" / "data" / "sps"
BACKMAP = str(Path(sys.executable).parent / "backmap")
ENV = dict(os.environ, BACKMAP_NO_PROGRESS="1", OMP_NUM_THREADS="1")
SKIP = [9, 19, 41, 55, 62, 70, 76]  # frames of aa.xtc that are also training snapshots
HEADLINE = ["bond:C-C", "bond:C_AR-C_AR", "angle:C-C-C", "angle:C-C-H", "angle:H-C-H", "angle:C_AR-C_AR-C_AR",
            "angle:C_AR-C_AR-H_AR", "dihedral:C-C-C-C", "improper:C_AR-C_AR-C_AR-C_AR", "lj_per_molecule", "rdf:C-C"]
REFINE = ["--temperature", "568", "--constraints", "all-bonds", "--restraint", "2e5", "--param", "threads=1",
          "--param", "platform=CPU"]
PIPELINES = {
    "baseline": {"apply": ["--polish", "15", "--polish-sweeps", "all"],
                 "refine": ["--timestep", "0.002", "--steps", "500", "--minimize", "100",
                            "--param", "warmup_steps=100", "--batch", "1"]},
    "fast": {"apply": ["--polish", "0", "--gibbs", "2", "--regrow", "", "--repair-clashes", "1"],
             "refine": ["--timestep", "0.004", "--steps", "50", "--minimize", "20", "--param", "warmup_steps=20",
                        "--param", "hydrogen_mass=3", "--batch", "{frames}"]},
}


def pinned(core: int | None) -> list[str]:
    """``taskset -c core`` where taskset exists (one idle core, as the target is stated)."""
    return ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        subprocess.run(cmd, check=True, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=3, help="every n-th clean frame (3: 24 frames)")
    ap.add_argument("--core", type=int, default=None, help="the core the commands run on (default: the last)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "pipeline-sps")
    ap.add_argument("--quick", action="store_true", help="2 frames into a temporary folder: the same path")
    args = ap.parse_args()
    if not SPS.is_dir():
        print(json.dumps({"skipped": f"needs the sPS data in {SPS}"}))
        return
    reference_every = 1
    if args.quick:  # 2 frames against 12 reference frames
        args.every, reference_every = 36, 6
        args.out = Path(tempfile.mkdtemp(prefix="backmap-pipeline-sps-quick-"))
    core = args.core if args.core is not None else (os.cpu_count() or 1) - 1
    ev, top, mapping = SPS / "eval_t568", SPS / "top" / "topol.top", REPO / "recipes" / "sps" / "sps.xml"
    idx = np.setdiff1d(np.arange(78), SKIP)[::args.every]
    frames = ",".join(str(int(i)) for i in idx)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    reference = out / "reference.xtc"
    if not reference.exists():  # the clean reference frames (the training snapshots left out)
        from backmap.engine.loaders import load_topology
        from backmap.system.io import read_frames, write_frames

        topo = load_topology(top)
        clean = np.setdiff1d(np.arange(78), SKIP)[::reference_every]
        write_frames(reference, read_frames(ev / "aa.xtc", topo.n_atoms, clean),
                     topo.atom_names, topo.resnames, topo.residue_numbers())
    rows = {}
    for name, p in PIPELINES.items():
        aa, refined = out / f"{name}.xtc", out / f"{name}-refined.xtc"
        for f in (aa, refined):
            f.unlink(missing_ok=True)
        wall = run([*pinned(core), BACKMAP, "apply", "--model", str(REPO / "models" / "sps-equivariant"),
                    "--cg", str(ev / "cg.xtc"), "--frames", frames, "--out", str(aa), "--seed", str(args.seed),
                    "--device", "cpu", *p["apply"]], log)
        generator = json.loads(aa.with_suffix(".json").read_text())["summary"]["seconds per frame"]
        refine_args = [a.replace("{frames}", str(len(idx))) for a in p["refine"]]
        wall += run([*pinned(core), BACKMAP, "refine", "--topology", str(top), "--mapping", str(mapping),
                     "--cg", str(out / f"{name}_cg.trr"), "--traj", str(aa), "--out", str(refined),
                     "--mdp", str(SPS / "top" / "md.mdp"), "--seed", str(args.seed), "--device", "cpu",
                     *REFINE, *refine_args], log)
        import csv

        with open(refined.with_name(refined.stem + ".log.csv")) as fh:
            refine_rows = list(csv.DictReader(fh))
        refine = float(np.mean([float(r["seconds"]) for r in refine_rows]))
        rows[name] = {"pipeline": name, "frames": len(idx), "generator_s_per_frame": round(generator, 2),
                      "refine_s_per_frame": round(refine, 2), "s_per_frame": round(generator + refine, 2),
                      "wall_s_per_frame": round(wall / len(idx), 2),
                      "retried_frames": sum(1 for r in refine_rows if r.get("retried")),
                      "failed_frames": sum(1 for r in refine_rows if r.get("failed"))}
    evaluation = out / "evaluate"
    run([BACKMAP, "evaluate", "--topology", str(top), "--reference", str(reference), "--out", str(evaluation),
         "--mdp", str(SPS / "top" / "md.mdp"), "--no-lj-shift", "--headline", ",".join(HEADLINE),
         *(str(out / f"{n}-refined.xtc") for n in PIPELINES), *(a for n in PIPELINES for a in ("--label", n))], log)
    summary = json.loads((evaluation / "metrics.json").read_text())["summary"]["mean_jsd_headline"]
    floor = summary["noise_floor"]
    for name, row in rows.items():
        jsd = summary["candidates"][name]
        row |= {"mean_jsd": round(jsd, 5), "noise_floor": round(floor, 5), "x_floor": round(jsd / floor, 2)}
        print(json.dumps(row), flush=True)
    fast, base = rows["fast"], rows["baseline"]
    print(json.dumps({"frames": len(idx), "fast_s_per_frame": fast["s_per_frame"],
                      "baseline_s_per_frame": base["s_per_frame"],
                      "speedup": round(base["s_per_frame"] / fast["s_per_frame"], 2),
                      "fast_x_floor": fast["x_floor"], "baseline_x_floor": base["x_floor"],
                      "target_met": fast["s_per_frame"] <= 8.0 and fast["x_floor"] <= 2.0, "out": str(out)}))


if __name__ == "__main__":
    main()
