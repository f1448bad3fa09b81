"""Decorrelation per CPU-second: vae_mc against openmm's restrained Langevin on sPS at 568 K.

Both sample the restrained conditional p(x | R) at the same temperature and restraint, started
from the same equilibrated structure (the reference AA frame of a CG frame). For each chain
(molecule) the Lennard-Jones energy is recorded along the run (vae_mc: after every sweep; openmm:
every ``--chunk`` steps) with the process CPU time; the integrated autocorrelation time τ of each
chain's series (Sokal's automatic window) is averaged over chains and converted to CPU seconds.
Prints one JSON line per method and the ratio (openmm τ / vae_mc τ, > 1: vae_mc decorrelates faster).

    python benchmarks/vae_mc_decorrelation.py --model runs/sps-vae/model --sweeps 60 --openmm-ps 20
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from backmap.engine.loaders import load_mapping, load_topology, make_plugin
from backmap.forcefield import ForceField
from backmap.forcefield.settings import NonbondedSettings
from backmap.refinement.restrained import RestrainedSystem
from backmap.system.io import read_frames

SPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sps"
MAPPING = Path(__file__).resolve().parents[1] / "recipes" / "sps" / "sps.xml"


def integrated_time(x: np.ndarray, c: float = 5.0) -> float:
    """τ_int of a series (in samples) with Sokal's window M ≥ c τ (τ = 1 for white noise)."""
    x = np.asarray(x, float) - np.mean(x)
    n = len(x)
    if n < 4 or not np.any(x):
        return float("nan")
    f = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n]
    acf /= acf[0]
    tau = 2 * np.cumsum(acf) - 1
    window = np.arange(n) >= c * tau
    m = int(np.argmax(window)) if window.any() else n - 1
    return float(tau[m])


def summarise(name: str, lj: np.ndarray, seconds: np.ndarray, burn: int) -> dict:
    """lj: (T, chains) per recorded sample; seconds: CPU seconds at each sample."""
    lj, seconds = lj[burn:], seconds[burn:]
    per_sample = float(np.diff(seconds).mean())
    taus = np.array([integrated_time(lj[:, k]) for k in range(lj.shape[1])])
    tau = float(np.nanmean(taus))
    return {"method": name, "samples": len(lj), "cpu_seconds_per_sample": round(per_sample, 3),
            "tau_samples": round(tau, 2), "tau_cpu_seconds": round(tau * per_sample, 2),
            "tau_samples_median": round(float(np.nanmedian(taus)), 2),
            "lj_mean": round(float(lj.sum(1).mean()), 1), "lj_sd": round(float(lj.sum(1).std()), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="a trained vae model folder")
    ap.add_argument("--frame", type=int, default=1)
    ap.add_argument("--sweeps", type=int, default=60)
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--openmm-ps", type=float, default=20.0)
    ap.add_argument("--chunk", type=int, default=50, help="openmm steps (2 fs) between samples")
    ap.add_argument("--burn", type=int, default=5, help="samples left out at the start")
    ap.add_argument("--out", default="vae_mc_decorrelation.npz")
    a = ap.parse_args()
    torch.set_num_threads(1)
    top = load_topology(SPS / "top" / "topol.top")
    cg = load_mapping(MAPPING, top).cg_topology(top)
    settings = NonbondedSettings.from_mdp(SPS / "top" / "md.mdp")
    system = RestrainedSystem(cg, SPS / "top" / "topol.top", settings)
    aa = list(read_frames(SPS / "eval_t568" / "aa.xtc", frames=[a.frame]))[0]
    cgf = list(read_frames(SPS / "eval_t568" / "cg.xtc", frames=[a.frame]))[0]
    x, targets = system.prepare(aa, cgf)
    box = np.asarray(aa.box).reshape(1, 3, 3)
    common = {"temperature": 568, "constraints": "all-bonds", "restraint": 2.0e5, "minimize_steps": 0, "seed": 1}
    rng = np.random.default_rng(0)

    vae = make_plugin("refiner", "vae_mc", {**common, "model": a.model, "steps": a.sweeps, "trials": a.trials,
                                            "trace": "vae_mc_trace.npz"})
    vae.prepare(system)
    vae.refine(x[None], targets[None], box, rng)
    t = np.load("vae_mc_trace.npz")
    rows = [summarise("vae_mc", t["lj_per_molecule"], t["cpu_seconds"], a.burn)]

    omm = make_plugin("refiner", "openmm", {**common, "steps": a.chunk, "timestep": 0.002, "threads": 1,
                                            "warmup_steps": 0, "friction": 10.0})
    omm.prepare(system)
    ff = ForceField(system.topology, settings, torch.float64)
    y, lj, sec = x[None].copy(), [], []
    for _ in range(int(round(a.openmm_ps / (a.chunk * 0.002)))):
        y = omm.refine(y, targets[None], box, rng).positions
        sec.append(time.process_time())
        e = ff.energy(torch.as_tensor(y), box, whole=True, per_molecule=True, terms=("lj",))
        lj.append(e.per_molecule["lj"][0].numpy())
    rows.append(summarise("openmm", np.array(lj), np.array(sec), a.burn))
    np.savez(a.out, vae_lj=t["lj_per_molecule"], vae_seconds=t["cpu_seconds"], openmm_lj=np.array(lj),
             openmm_seconds=np.array(sec))
    for r in rows:
        print(json.dumps(r))
    print(json.dumps({"ratio_openmm_over_vae_mc_tau_cpu": round(rows[1]["tau_cpu_seconds"] / rows[0]["tau_cpu_seconds"], 3)}))


if __name__ == "__main__":
    main()
