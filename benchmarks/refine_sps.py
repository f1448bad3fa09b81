"""Restrained refinement on sPS 568 K: the trade-off of steps × restraint → fidelity, CG consistency, time.

Refines backmapped sPS trajectories (DeepBackmap's ``deepbackmap.xtc``, the EM ``baseline.xtc``, or any
other AA trajectory of ``eval_t568/cg.xtc``) with each configuration, then evaluates every result
together with the unrefined inputs against the reference ``aa.xtc`` (EVALUATION.md's 11 headline
observables, plain cut-off LJ), on the clean frames (training snapshots left out).

    .venv/bin/python benchmarks/refine_sps.py --every 3 \\
        --input DBM=deepbackmap.xtc --input EM=baseline.xtc \\
        --config openmm:500:2e5:0.002 --config openmm:250:2e5:0.002 [--threads 2] [--out DIR]
    .venv/bin/python benchmarks/refine_sps.py --quick    # the same path: 2 DBM frames, 10 steps (≈ 30 s)

A configuration is ``refiner:steps:restraint[:timestep[:friction]]`` (all bonds constrained, 568 K).
Prints one JSON line per (input, configuration) and writes ``DIR/table.md``: mean and per-observable
JSD, CG-consistency RMSD, wall and CPU seconds per frame (the CPU time of this process, all threads:
on a busy machine the wall time grows, the CPU time hardly).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
SPS = REPO.parent / "shared" / "data" / "sps"
SKIP = [9, 19, 41, 55, 62, 70, 76]  # frames of aa.xtc that are also training snapshots
HEADLINE = ["bond:C-C", "bond:C_AR-C_AR", "angle:C-C-C", "angle:C-C-H", "angle:H-C-H", "angle:C_AR-C_AR-C_AR",
            "angle:C_AR-C_AR-H_AR", "dihedral:C-C-C-C", "improper:C_AR-C_AR-C_AR-C_AR", "lj_per_molecule", "rdf:C-C"]


def parse_config(text: str) -> dict:
    parts = text.split(":")
    if not 3 <= len(parts) <= 5:
        raise SystemExit(f"--config {text!r}: expected refiner:steps:restraint[:timestep[:friction]]")
    cfg = {"refiner": parts[0], "steps": int(parts[1]), "restraint": float(parts[2])}
    if len(parts) > 3:
        cfg["timestep"] = float(parts[3])
    if len(parts) > 4:
        cfg["friction"] = float(parts[4])
    return cfg


def config_label(cfg: dict) -> str:
    dt = cfg.get("timestep", 0.001)
    return f"{cfg['refiner']} {cfg['steps']}×{dt * 1000:g}fs k={cfg['restraint']:g}"


def subset(src: Path, dst: Path, idx: np.ndarray, n_atoms: int, names, resnames, resids) -> None:
    from backmap.system.io import read_frames, write_frames

    write_frames(dst, read_frames(src, n_atoms, idx), names, resnames, resids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", action="append", default=[], help="LABEL=PATH (relative to eval_t568/ or cwd)")
    ap.add_argument("--config", action="append", default=[], help="refiner:steps:restraint[:timestep[:friction]]")
    ap.add_argument("--every", type=int, default=1, help="use every n-th clean frame")
    ap.add_argument("--threads", type=int, default=0, help="OpenMM threads (0: all cores)")
    ap.add_argument("--batch", type=int, default=1, help="frames per call for the torch refiners")
    ap.add_argument("--temperature", type=float, default=568.0)
    ap.add_argument("--constraints", default="all-bonds")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--param", action="append", default=[], help="extra refiner parameter key=value (all configs)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "refine-sps")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run of the same path: 2 DBM frames, openmm 10 steps, into a temporary folder")
    args = ap.parse_args()
    if args.quick:
        if not SPS.is_dir():
            print(json.dumps({"skipped": f"needs the sPS data in {SPS}"}))
            return
        import tempfile

        args.every, args.threads, args.input = 36, 1, ["DBM=deepbackmap.xtc"]
        args.config = ["openmm:10:2e5:0.002"]
        args.param = [*args.param, "minimize_steps=5", "warmup_steps=5", "on_failure=keep"]
        args.out = Path(tempfile.mkdtemp(prefix="backmap-refine-sps-quick-"))
    if not SPS.is_dir():
        sys.exit(f"needs the sPS data in {SPS}")
    import torch

    torch.set_num_threads(max(args.threads, 1))
    from backmap.forcefield import NonbondedSettings
    from backmap.engine.loaders import load_mapping
    from backmap.metrics.evaluate import EvaluationSpec, run_evaluation
    from backmap.engine.loaders import make_plugin
    from backmap.app.refine import refine_files
    from backmap.refinement.restrained import RestrainedSystem
    from backmap.engine.loaders import load_topology

    ev = SPS / "eval_t568"
    inputs = {}
    for item in args.input or ["DBM=deepbackmap.xtc", "EM=baseline.xtc"]:
        label, path = item.split("=", 1)
        path = Path(path) if Path(path).is_file() else ev / path
        inputs[label] = path
    configs = [parse_config(c) for c in args.config or ["openmm:500:2e5:0.002"]]
    topo = load_topology(SPS / "top" / "topol.top")
    cg_top = load_mapping([REPO / "recipes" / "sps" / "sps.xml"], topo).cg_topology(topo)
    settings = NonbondedSettings.from_mdp(ev / "md.mdp")
    system = RestrainedSystem(cg_top, SPS / "top" / "topol.top", settings)
    idx = np.setdiff1d(np.arange(78), SKIP)[::args.every]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    names, resn, resi = topo.atom_names, topo.resnames, topo.residue_numbers()
    subset(ev / "aa.xtc", out / "reference.xtc", idx, topo.n_atoms, names, resn, resi)
    subset(ev / "cg.xtc", out / "cg.xtc", idx, cg_top.n_beads, cg_top.bead_names, cg_top.resnames, cg_top.resids)
    candidates: dict[str, Path] = {}
    timing: dict[str, dict] = {}
    for label, path in inputs.items():
        candidates[label] = out / f"{label}.xtc"
        subset(path, candidates[label], idx, topo.n_atoms, names, resn, resi)
        for cfg in configs:
            params = {k: v for k, v in cfg.items() if k != "refiner"}
            params |= {"temperature": args.temperature, "constraints": args.constraints, "seed": args.seed}
            params |= {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.param)}
            if cfg["refiner"] == "openmm" and args.threads:
                params["threads"] = args.threads
            refiner = make_plugin("refiner", cfg["refiner"], params)
            name = f"{label} + {config_label(cfg)}"
            dst = out / f"{label}-{cfg['refiner']}-{cfg['steps']}-{cfg['restraint']:g}-{cfg.get('timestep', 0.001):g}.xtc"
            t0, c0 = time.perf_counter(), time.process_time()
            summary = refine_files(refiner, system, candidates[label], out / "cg.xtc", dst, seed=args.seed,
                                   batch=args.batch)
            timing[name] = {"seconds_per_frame": (time.perf_counter() - t0) / len(idx),
                            "cpu_seconds_per_frame": (time.process_time() - c0) / len(idx), "input": label, **cfg,
                            "cg_rmsd_log": summary.cg_rmsd_after, "failed_frames": summary.failed_frames}
            candidates[name] = dst
    spec = EvaluationSpec(topology=SPS / "top" / "topol.top", reference=out / "reference.xtc",
                          candidates=list(candidates.values()), labels=list(candidates), out=out / "evaluate",
                          mapping=[REPO / "recipes" / "sps" / "sps.xml"], cg=out / "cg.xtc",
                          settings=settings.model_copy(update={"vdw_modifier": "none"}), headline=HEADLINE,
                          metrics=["bonds", "angles", "dihedrals", "impropers", "energy", "rdf", "cg_rmsd", "clashes"])
    result = run_evaluation(spec)
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    head = metrics["summary"]["mean_jsd_headline"]
    rows = []
    for label in candidates:
        per = {o: metrics["observables"][o]["candidates"][label]["jsd"] for o in HEADLINE
               if label in metrics["observables"].get(o, {}).get("candidates", {})}
        cg = metrics["observables"].get("cg_rmsd", {}).get("candidates", {}).get(label, {})
        row = {"candidate": label, "frames": len(idx), "mean_jsd": head["candidates"][label],
               "cg_rmsd": cg.get("mean"), "noise_floor": head["noise_floor"], **timing.get(label, {}), "jsd": per}
        rows.append(row)
        print(json.dumps(row))
    lines = ["| candidate | mean JSD | CG RMSD (nm) | s/frame (wall) | CPU s/frame | " + " | ".join(HEADLINE) + " |",
             "|---" * (5 + len(HEADLINE)) + "|"]
    for r in rows:
        sec = f"{r['seconds_per_frame']:.1f}" if "seconds_per_frame" in r else "–"
        cpu = f"{r['cpu_seconds_per_frame']:.1f}" if "cpu_seconds_per_frame" in r else "–"
        lines.append(f"| {r['candidate']} | {r['mean_jsd']:.4f} | {r['cg_rmsd']:.4f} | {sec} | {cpu} | "
                     + " | ".join(f"{r['jsd'].get(o, float('nan')):.3f}" for o in HEADLINE) + " |")
    lines.append(f"\nnoise floor (mean JSD of two halves of the reference): {head['noise_floor']:.4f}; "
                 f"{len(idx)} frames; evaluation {result['timing']['total_s']:.0f} s")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
