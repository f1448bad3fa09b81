"""Morphing Martini 2 tetracosane toward OPLS-AA (docs/morph.md), end to end: the recipe
recipes/tcs-morph.yaml at the bottleneck s = 2 and s = 3 (schemes A and B each), then the target
numbers — the mean JSD (bond, angle, RDF) to the target before and after morphing and its ratio,
√⟨R_e²⟩ and √⟨R_g²⟩ of every morph against the unmorphed Martini structures, the bond distribution's
peaks — and the time of a 1000-frame morph on 2 workers (the Martini frames five times over), against
a baseline in the same command: `backmap map` of the same 1000 frames through the bottleneck (reading,
unwrapping, mapping and writing, without the generator).

    bash scripts/make_tcs_data.sh                      # once: data/tcs
    .venv/bin/python benchmarks/morph_tcs.py [--s 2 3] [--reuse] [--workers 2] [--timing-frames 1000]
    .venv/bin/python benchmarks/morph_tcs.py --quick [--timing-frames 4]   # the same path on the committed
                                       # tests/data/tcs: a small model, 3 Martini frames morphed (timing: 1 worker)

Prints one JSON line per bottleneck, one for the IBI morph (`morph B+IBI`) on the Martini frames
its tables were not fitted on (`--held-out-from`), and one for the timing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TCS = REPO / "data" / "tcs"
RECIPE = REPO / "recipes" / "tcs-morph.yaml"
TARGET = TCS / "analysis" / "mapped.xtc"   # Y mapped onto the Martini beads
MARTINI = TCS / "analysis" / "cg.xtc"      # X: the Martini production
TPR = TCS / "martini" / "topol.tpr"
#: --quick: the recipe's steps, small, on the committed subset of the data (tests/data/tcs)
QUICK_RECIPE = """name: tcs-morph-quick
seed: 5
system: {{topology: {tpr}, bottleneck: 2}}
data: {{trajectory: {target}, split: {{test_fraction: 0.2}}}}
generator:
  plugin: equivariant
  params: {{constraints: none, width: 8, vectors: 4, tensors: 2, hidden: 16, recentre_by: rotation, threads: 1}}
  environment: {{cutoff: 0.7}}
steps:
  - prepare: {{}}
  - train: {{epochs: 1, batch_size: 64}}
  - morph: {{input: {martini}, frames: '0:3', topology: {top}, scheme: A, candidates: 4, flat_bottom: {{quantile: 0.01}}}}
  - morph: {{input: {martini}, frames: '0:3', topology: {top}, scheme: B, candidates: 4, flat_bottom: {{quantile: 0.01}}}}
  - morph: {{input: {martini}, frames: '0:3', topology: {top}, scheme: B, candidates: 4, flat_bottom: {{quantile: 0.01}},
            ibi: {{temperature: 400, iterations: 2, fit_frames: '0:2'}}, generator_params: {{recentre_by: rotation+shift}},
            label: B_ibi}}
  - evaluate:
      reference: {target}
      metrics: [bonds, angles, rdf, chains]
      candidates: {{martini: {martini}, morph A: "output:morph_A.aa", morph B: "output:morph_B.aa",
                   morph B+IBI: "output:morph_B_ibi.aa"}}
"""
BACKMAP = str(Path(sys.executable).parent / "backmap")
ENV = dict(os.environ, BACKMAP_NO_PROGRESS="1")


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True, env=ENV, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def peaks(values: np.ndarray, width: float = 0.005, lo: float = 0.35, hi: float = 0.6) -> list[float]:
    """Local maxima of a lightly smoothed histogram holding ≥ 10 % of the highest bin."""
    counts, edges = np.histogram(values, np.arange(lo, hi + width, width))
    smooth = np.convolve(counts, np.ones(3) / 3, mode="same")
    centres = 0.5 * (edges[1:] + edges[:-1])
    return [round(float(centres[k]), 4) for k in range(1, len(smooth) - 1)
            if smooth[k] > smooth[k - 1] and smooth[k] >= smooth[k + 1] and smooth[k] > 0.1 * smooth.max()]


def bonds(path: Path) -> np.ndarray:
    from backmap.engine.loaders import load_topology
    from backmap.system.io import read_frames
    from backmap.system.pbc import Unwrapper

    top = load_topology(TPR)
    whole = Unwrapper(top)
    x = np.stack([whole(f.positions, f.dimensions) for f in read_frames(path)])
    x = x.reshape(len(x), -1, 6, 3)
    return np.linalg.norm(np.diff(x, axis=2), axis=-1).ravel()


def summarise(workdir: Path, s: int, metrics: Path | None = None) -> dict:
    m = json.loads((metrics or workdir / "evaluate" / "metrics.json").read_text())
    head = m["summary"]["mean_jsd_headline"]["candidates"]
    obs = m["observables"]
    base = head["martini"]
    out = {"benchmark": "morph_tcs", "s": s, "frames": m["frames"],
           "noise floor": round(m["summary"]["mean_jsd_headline"]["noise_floor"], 4),
           "mean JSD (bond, angle, rdf)": {k: round(v, 4) for k, v in head.items()},
           "JSD per observable": {name: {k: round(v["jsd"], 4) for k, v in o["candidates"].items()}
                                  for name, o in obs.items()}}
    for label in head:
        if label == "martini":
            continue
        ratio = base / head[label]
        sizes = {}
        for q in ("Re2", "Rg2"):
            key = next(k for k in obs if k.startswith(f"chain:{q}:"))
            c = obs[key]["candidates"]
            sizes[f"sqrt <{q}> / martini"] = round(float(np.sqrt(c[label]["mean"] / c["martini"]["mean"])), 4)
            sizes[f"sqrt <{q}> target / martini"] = round(float(np.sqrt(obs[key]["reference"]["mean"]
                                                                        / c["martini"]["mean"])), 4)
        within = all(abs(v - 1) <= 0.02 for k, v in sizes.items() if "target" not in k)
        out[label] = {"JSD ratio martini / this": round(ratio, 2), **sizes,
                      "target met (≥ 3x, sizes within 2 %)": bool(ratio >= 3 and within)}
    files = {"target": TARGET, "martini": MARTINI,
             "morph A": workdir / "morph" / "A.xtc", "morph B": workdir / "morph" / "B.xtc",
             "morph B+IBI": workdir / "morph" / "B_ibi.xtc"}
    out["bond peaks (nm)"] = {k: peaks(bonds(p)) for k, p in files.items() if p.is_file()}
    return out


def held_out(workdir: Path, start: int) -> dict:
    """The IBI morph judged on the Martini frames its tables were not fitted on (``start:`` of the
    201; the recipe fits on every 4th of the first half): the same numbers as :func:`summarise`."""
    from backmap.engine.loaders import load_topology
    from backmap.system.io import read_frames, write_frames

    top = load_topology(TPR)
    tmp = Path(tempfile.mkdtemp(prefix="backmap-morph-held-out-"))
    labels, paths = [], []
    for label, path in (("martini", MARTINI), ("morph B", workdir / "morph" / "B.xtc"),
                        ("morph B+IBI", workdir / "morph" / "B_ibi.xtc")):
        if path.is_file():
            part = tmp / f"{label.replace(' ', '_').replace('+', '_')}.xtc"
            write_frames(part, list(read_frames(path))[start:], top.atom_names, top.resnames, top.residue_numbers())
            labels.append(label)
            paths.append(part)
    out = tmp / "evaluate"
    run([BACKMAP, "evaluate", "--topology", TPR, "--reference", TARGET,
         "--out", out, "--metrics", "bonds,angles,rdf,chains", *[a for lb in labels for a in ("--label", lb)], *paths])
    summary = summarise(out.parent, 2, metrics=out / "metrics.json")
    summary["benchmark"] = "morph_tcs held-out"
    summary["martini frames"] = f"{start}:"
    return summary


def timing(workdir: Path, n: int, workers: int) -> dict:
    from backmap.system.io import read_frames, write_frames
    from backmap.engine.loaders import load_topology

    top = load_topology(TPR)
    frames = list(read_frames(MARTINI))
    tmp = Path(tempfile.mkdtemp(prefix="backmap-morph-"))
    many = tmp / "many.xtc"
    reps = [frames[k % len(frames)] for k in range(n)]
    for k, f in enumerate(reps):
        f.index, f.time = k, float(k)
    write_frames(many, reps, top.atom_names, top.resnames, top.residue_numbers())
    target = TARGET
    base = run([BACKMAP, "map", "--topology", TPR, "--traj", many,
                "--mapping", next(p for p in (workdir / "model" / "system" / "e2.xml", workdir / "model" / "e2.xml")
                                   if p.is_file()), "--out", tmp / "mapped.xtc"])
    t = run([BACKMAP, "morph", "--model", workdir / "model", "--input", many, "--out", tmp / "morphed.xtc",
             "--scheme", "A", "--candidates", "16", "--flat-bottom", target, "--quantile", "0.01",
             "--workers", str(workers)])
    out = {"benchmark": "morph_tcs timing", "frames": n, "workers": workers, "morph A seconds": round(t, 1),
           "baseline (backmap map) seconds": round(base, 1), "ratio morph / map": round(t / base, 2)}
    tables = workdir / "morph" / "B_ibi_ibi.json"
    if tables.is_file():  # the recipe's IBI setting: scheme B with its fitted tables and bottleneck restraint
        st = json.loads((workdir / "morph" / "B_ibi.json").read_text())["settings"]
        t_ibi = run([BACKMAP, "morph", "--model", workdir / "model", "--input", many, "--out", tmp / "ibi.xtc",
                     "--scheme", "B", "--candidates", str(st["candidates"]), "--flat-bottom", target,
                     "--quantile", "0.01", "--ibi", tables, "--cg-restraint", str(st["cg_restraint"]),
                     *[a for k, v in st["generator_params"].items() for a in ("--generator-param", f"{k}={v}")],
                     "--workers", str(workers)])
        out.update({"morph B+IBI seconds": round(t_ibi, 1), "ratio morph B+IBI / map": round(t_ibi / base, 2)})
    out["target ≤ 600 s met"] = max(v for k, v in out.items() if k.endswith(" seconds") and k.startswith("morph")) <= 600
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--s", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--reuse", action="store_true", help="keep finished runs (runs/tcs-morph[-s3])")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timing-frames", type=int, default=1000, help="0: no timing")
    ap.add_argument("--held-out-from", type=int, default=100,
                    help="the IBI morph is also judged on the Martini frames from this one on (not fitted on)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run of the same path on tests/data/tcs: a small model (1 epoch), 3 Martini frames "
                         "morphed by A, B and B with 2 IBI rounds; no timing unless --timing-frames is given (1 worker)")
    args = ap.parse_args()
    global RECIPE, TARGET, MARTINI, TPR
    quick = None
    if args.quick:
        small = REPO / "tests" / "data" / "tcs"
        TARGET, MARTINI, TPR = small / "mapped.xtc", small / "martini" / "traj.xtc", small / "martini" / "topol.tpr"
        quick = Path(tempfile.mkdtemp(prefix="backmap-morph-quick-"))
        RECIPE = quick / "quick.yaml"
        RECIPE.write_text(QUICK_RECIPE.format(tpr=TPR, target=TARGET, martini=MARTINI, top=small / "martini" / "topol.top"))
        args.s, args.reuse, args.workers, args.held_out_from = [2], False, 1, 1
        if "--timing-frames" not in sys.argv:  # the timing (3 more processes) only when asked: --timing-frames 4
            args.timing_frames = 0
    if not TARGET.is_file():
        sys.exit(f"{TCS}/analysis/mapped.xtc missing: run scripts/make_tcs_data.sh first")
    first = None
    for s in args.s:
        workdir = quick / "w" if quick else REPO / "runs" / ("tcs-morph" if s == 2 else f"tcs-morph-s{s}")
        if not (args.reuse and (workdir / "evaluate" / "metrics.json").is_file()):
            run([BACKMAP, "run", RECIPE, f"system.bottleneck={s}", "--workdir", workdir])
        print(json.dumps(summarise(workdir, s)), flush=True)
        if (workdir / "morph" / "B_ibi.xtc").is_file():
            print(json.dumps(held_out(workdir, args.held_out_from)), flush=True)
        first = first or workdir
    if args.timing_frames and first is not None and 2 in args.s:
        print(json.dumps(timing(first, args.timing_frames, args.workers)), flush=True)


if __name__ == "__main__":
    main()
