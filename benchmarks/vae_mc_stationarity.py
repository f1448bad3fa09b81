"""Stationarity: does vae_mc keep an equilibrium sample of the restrained target in equilibrium?

A known answer for an exact sampler, whatever its mixing speed: started from a draw of its target,
its chain stays distributed as the target at every step. openmm's restrained Langevin (dt-converged:
1 fs and 2 fs give the same means) samples the same restrained Boltzmann distribution up to the
Fixman term of rigid bonds. So:

1. openmm runs ``--openmm-ps`` from the reference AA frame; its samples after ``--burn-ps`` give the
   mean and standard deviation of each energy term (force-field terms, CG restraint);
2. vae_mc runs ``--sweeps`` sweeps from openmm's *last* frame (a draw of the target);
3. vae_mc runs the same sweeps from the reference frame itself (which is not a draw of the
   restrained target of its own CG frame: frame 1 is the lowest-LJ frame of the 78).

Prints one JSON line per run and term: mean, s.d., and z = (mean − openmm mean) / openmm s.d.
Stationary vae_mc has |z| ≲ 1 from openmm's frame. (Its s.d. over a short run is smaller than
openmm's: single-bead moves do not reach the collective packing modes in tens of sweeps.)

    python benchmarks/vae_mc_stationarity.py --model models/sps-vae --sweeps 20 --openmm-ps 3
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from backmap.engine.loaders import make_plugin
from backmap.forcefield import ForceField

from vae_mc_decorrelation import COMMON, sps_frame

TERMS = ("angle", "proper", "improper", "lj", "coulomb")


def energy_terms(ff: ForceField, system, positions: np.ndarray, targets: np.ndarray, box: np.ndarray,
                 restraint: float) -> dict[str, np.ndarray]:
    """Each term (kJ/mol) of every structure (T, N, 3), with the CG restraint."""
    out: dict[str, list[float]] = {k: [] for k in (*TERMS, "restraint")}
    tt = torch.as_tensor(targets[None], dtype=torch.float64)
    for y in positions:
        yy = torch.as_tensor(np.asarray(y, np.float64)[None])
        e = ff.energy(yy, box, whole=True)
        for k in TERMS:
            out[k].append(float(e.terms[k][0]))
        out["restraint"].append(float(system.restraint_energy(yy, tt, restraint)[0]))
    return {k: np.array(v) for k, v in out.items()}


def summary(run: str, terms: dict[str, np.ndarray], reference: dict[str, np.ndarray] | None) -> list[dict]:
    """Per term: the start's value, the mean and s.d. of the samples after it, the drift (second
    half's mean − first half's) and, for vae_mc, z against openmm."""
    rows = []
    for k, series in terms.items():
        v = series[1:]
        half = len(v) // 2
        row = {"run": run, "term": k, "samples": len(v), "start": round(float(series[0]), 1),
               "mean": round(float(v.mean()), 1), "sd": round(float(v.std()), 1),
               "drift": round(float(v[half:].mean() - v[:half].mean()), 1)}
        if reference is not None:
            ref = reference[k]
            row["z_vs_openmm"] = round(float((v.mean() - ref.mean()) / ref.std()), 2)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a trained vae model folder")
    ap.add_argument("--frame", type=int, default=1)
    ap.add_argument("--sweeps", type=int, default=20)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--openmm-ps", type=float, default=3.0)
    ap.add_argument("--burn-ps", type=float, default=0.2, help="openmm time left out of its statistics")
    ap.add_argument("--every-fs", type=float, default=20.0, help="openmm sampling interval")
    a = ap.parse_args()
    torch.set_num_threads(1)
    system, x, targets, box = sps_frame(a.frame)
    ff = ForceField(system.topology, system.nonbonded, torch.float64)
    rng = np.random.default_rng(0)
    dt = 0.002
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "openmm.npz"
        omm = make_plugin("refiner", "openmm", {**COMMON, "steps": int(round(a.openmm_ps / dt)), "timestep": dt,
                                                "threads": 1, "warmup_steps": 0, "friction": 10.0, "trace": str(trace),
                                                "trace_every": int(round(a.every_fs / 1000 / dt))})
        omm.prepare(system)
        omm.refine(x[None], targets[None], box, rng)
        positions = np.load(trace)["positions"].astype(np.float64)
        burn = max(int(round(a.burn_ps * 1000 / a.every_fs)), 1)
        reference = energy_terms(ff, system, positions[burn - 1:], targets, box, COMMON["restraint"])
        rows = summary("openmm", reference, None)
        starts = {"vae_mc from openmm's last frame": positions[-1], f"vae_mc from reference frame {a.frame}": x}
        for run, start in starts.items():
            vtrace = Path(tmp) / "vae.npz"
            vae = make_plugin("refiner", "vae_mc", {**COMMON, "model": a.model, "steps": a.sweeps, "trials": a.trials,
                                                    "trace": str(vtrace)})
            vae.prepare(system)
            vae.refine(start[None], targets[None], box, rng)
            sweeps = np.concatenate([start[None], np.load(vtrace)["positions"].astype(np.float64)])
            rows += summary(run, energy_terms(ff, system, sweeps, targets, box, COMMON["restraint"]), reference)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
