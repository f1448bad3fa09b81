"""How much of its target's LJ variance a vae_mc chain visits: the per-molecule LJ energy of the
chains in a vae_mc trace (``vae_mc_decorrelation.py`` writes ``vae_mc_trace.npz``) against the
mean and variance of the same target sampled by openmm (vae_mc's bond model: its held bonds
constrained, the others springs; the Fixman term, < 3 kJ/mol of LJ, left out).

τ from a chain's own autocorrelation cannot see what the chain does not move during the run: a
part of the variance that stays frozen shifts the chain's own mean and shrinks its own variance,
and the estimate describes only the part that moves. Measured against the target's mean μ and
variance σ² (per molecule, from openmm) instead:
- ``explored``: the chains' variance over the run / σ² (1 for a chain that has forgotten its start);
- ``rho``: ⟨(x_s − μ)(x_{s+L} − μ)⟩ / σ² at lag L (sweeps; for openmm in samples of ``--every`` ps),
  whose slow decay is the memory the own-mean estimate leaves out;
- ``inner_geometry_kept``: per bead type, the fraction of units whose every inner distance ends the
  run within 0.002 nm of its start's (no accepted whole-bead redraw changed it; turns and cranks
  keep it by construction).

    python benchmarks/vae_mc_variance_explored.py --trace vae_mc_trace.npz --frames 8 --reference-ps 6 \
        --reference-cache openmm_reference.npz

Frame k of the trace is sPS test frame ``--first`` + k, as in ``vae_mc_decorrelation.py``.

``--quick``: the same code path on a trace it makes itself (frame 1, 4 sweeps of models/sps-vae),
against 0.04 ps of openmm after 0.01 ps, in a temporary folder; without ../shared/data/sps it prints
``{"skipped": ...}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from backmap.engine.loaders import make_plugin
from backmap.forcefield import ForceField
from backmap.system.io import atomic_path
from vae_mc_decorrelation import COMMON, SPS, restrained_run, sps_frame

LAGS = (1, 5, 10, 25, 50, 100, 150)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trace", required="--quick" not in sys.argv[1:], help="vae_mc_trace.npz of vae_mc_decorrelation.py")
    ap.add_argument("--model", default="models/sps-vae", help="the vae model of the trace (its bond model)")
    ap.add_argument("--first", type=int, default=1, help="the test frame of the trace's frame 0")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--burn", type=int, default=3, help="sweeps left out at the start")
    ap.add_argument("--equilibrate-ps", type=float, default=2.0)
    ap.add_argument("--reference-ps", type=float, default=6.0)
    ap.add_argument("--every", type=float, default=0.02, help="ps between openmm samples")
    ap.add_argument("--reference-cache", default=None,
                    help=".npz of openmm's per-molecule LJ series per frame (key f<frame>, (samples, molecules)): "
                         "read where it has the frame, else run and added; ~8 CPU-min per frame saved")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: a 4-sweep trace of frame 1 made here, 0.04 ps of openmm, in a temporary folder")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.quick:
        if not SPS.is_dir():
            print(json.dumps({"skipped": f"needs the sPS data in {SPS}"}))
            return
        repo_model = Path(__file__).resolve().parents[1] / a.model  # the default is relative to the repository
        a.model = str(repo_model if repo_model.exists() else Path(a.model).resolve())
        os.chdir(tempfile.mkdtemp(prefix="backmap-vae-mc-variance-quick-"))
        a.first, a.frames, a.burn, a.equilibrate_ps, a.reference_ps, a.every = 1, 1, 0, 0.01, 0.04, 0.01
        a.trace, a.reference_cache = quick_trace(a.model, a.first), None
    trace = np.load(a.trace)
    explored, rho, omm_rho = [], {L: [] for L in LAGS}, {L: [] for L in LAGS}
    kept: dict[str, list[bool]] = {}
    for k in range(a.frames):
        system, x, targets, box = sps_frame(a.first + k)
        vae = make_plugin("refiner", "vae_mc", {**COMMON, "model": a.model, "steps": 1})
        vae.prepare(system)
        ff = ForceField(system.topology, system.nonbonded, torch.float64)

        def lj(y: np.ndarray) -> np.ndarray:
            e = ff.energy(torch.as_tensor(y)[None], box[0], whole=True, per_molecule=True, terms=("lj",))
            return e.per_molecule["lj"][0].numpy().copy()

        ref = reference(a, a.first + k, lambda: _openmm_reference(a, system, x, targets, box, vae, lj, k))
        mu, sd = ref.mean(0), ref.std(0)
        rows = trace["frame"] == k
        order = np.argsort(trace["sweep"][rows])
        chain = trace["lj_per_molecule"][rows][order][a.burn:]
        first, last = (trace["positions"][rows][order][i].astype(np.float64) for i in (a.burn, -1))
        for group in vae.targets.frame_groups(targets, box[0], interacting=False):
            label = vae.targets.labels[group.moltype][group.meta["bead"]]
            for atoms in group.atoms:
                atoms = atoms[atoms >= 0]
                inner = [np.linalg.norm(p[atoms][:, None] - p[atoms][None], axis=-1) for p in (first, last)]
                kept.setdefault(label, []).append(bool(np.abs(inner[1] - inner[0]).max() < 0.002))
        explored.append(float((chain.var(0) / sd**2).mean()))
        d, r = (chain - mu) / sd, (ref - mu) / sd
        for L in LAGS:
            if L < len(d):
                rho[L].append(float((d[:-L] * d[L:]).mean()))
            if L < len(r):
                omm_rho[L].append(float((r[:-L] * r[L:]).mean()))
        print(json.dumps({"frame": a.first + k, "explored": round(explored[-1], 3),
                          "chain_minus_target_mean": round(float((chain.mean(0) - mu).mean()), 2),
                          "target_sd_per_molecule": round(float(sd.mean()), 2)}), flush=True)
    print(json.dumps({"method": "vae_mc", "frames": a.frames, "explored": round(float(np.mean(explored)), 3),
                      "rho_at_lag_sweeps": {L: round(float(np.mean(v)), 3) for L, v in rho.items() if v},
                      "inner_geometry_kept": {b: round(float(np.mean(v)), 3) for b, v in sorted(kept.items())}}))
    print(json.dumps({"method": "openmm_on_vae_target", "sample_ps": a.every,
                      "rho_at_lag_samples": {L: round(float(np.mean(v)), 3) for L, v in omm_rho.items() if v}}))


def quick_trace(model: str, frame: int) -> str:
    """--quick: a vae_mc trace of 4 sweeps of one test frame, as vae_mc_decorrelation.py writes it."""
    system, x, targets, box = sps_frame(frame)
    vae = make_plugin("refiner", "vae_mc", {**COMMON, "model": model, "steps": 4, "trace": "vae_mc_trace.npz"})
    vae.prepare(system)
    vae.refine(x[None], targets[None], box, np.random.default_rng(0))
    return "vae_mc_trace.npz"


def _openmm_reference(a, system, x, targets, box, vae, lj, k: int) -> np.ndarray:
    """(samples, molecules) per-molecule LJ energies of openmm on vae_mc's target (its bond model)."""
    omm = make_plugin("refiner", "openmm", {**COMMON, "steps": 10, "timestep": 0.002, "threads": 1,
                                            "warmup_steps": 0, "friction": 10.0})
    omm.prepare(system)
    y, _ = restrained_run(omm, x, targets, box[0], a.equilibrate_ps, 11 + a.first + k, vae.bond_model())
    _, seen = restrained_run(omm, y, targets, box[0], a.reference_ps, 100 + a.first + k, vae.bond_model(),
                             every=a.every, observe=lj)
    return np.array(seen)


def reference(a, frame: int, run) -> np.ndarray:
    """A frame's openmm reference series: from ``--reference-cache`` if it holds the frame with the
    same settings, else ``run()`` (and stored there, written whole or not at all)."""
    settings = np.array([a.equilibrate_ps, a.reference_ps, a.every])
    path = Path(a.reference_cache) if a.reference_cache else None
    cached = dict(np.load(path)) if path is not None and path.exists() else {}
    key = f"f{frame}"
    if key in cached and np.allclose(cached.get(f"{key}_settings", settings), settings):
        return cached[key]
    ref = run()
    if path is not None:
        cached.update({key: ref, f"{key}_settings": settings})
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **cached)
    return ref


if __name__ == "__main__":
    main()
