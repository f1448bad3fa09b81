"""Decorrelation per CPU-second: vae_mc against openmm's restrained Langevin on sPS at 568 K.

Two observables per chain or ring: the Lennard-Jones energy per chain (the issue's measure: fast,
local packing) and the cosine of each phenyl ring's torsion about its bond to the backbone (slow in
dynamics, redrawn by a whole-bead move).

Both sample the restrained conditional p(x | R) at the same temperature and restraint, started
from the same equilibrated structure (the reference AA frame of a CG frame). For each chain
(molecule) the Lennard-Jones energy is recorded along the run (vae_mc: after every sweep; openmm:
every ``--chunk`` steps of one continuous trajectory) with the process CPU time of the sampler
(the recording left out); the integrated autocorrelation time τ of the chains' series (one
autocorrelation function pooled over them, Sokal's automatic window) is converted to CPU seconds.
A series must be long against τ (``samples_per_tau`` ≳ 50): vae_mc needs ~200 sweeps.
τ from a chain's own mean and variance cannot see the variance the chain does not move during the
run: on sPS vae_mc's chains keep three quarters of it for ≥ 200 sweeps, so their τ here is a lower
bound by a wide margin (``vae_mc_variance_explored.py`` measures against the target's own variance;
docs/vae-sps.md, "τ against the target's own variance").
Prints one JSON line per method and the ratio (openmm τ / vae_mc τ, > 1: vae_mc decorrelates faster).

Ring flips (a phenyl ring turned by 180° about its bond to the backbone: the ortho carbons trade
places) are counted apart: the fraction of rings whose torsion ends > 120° from its start, turned
into a rate per ring and CPU-second, and the ratio vae_mc / openmm (a lower bound when openmm made
none: its rate is then the 95 % upper bound). A flip is invisible to every type-level observable,
but the labelled torsion's equilibrium mean ⟨cos φ⟩ is 0 and only flips reach it.

    python benchmarks/vae_mc_decorrelation.py --model models/sps-vae --sweeps 200 --trials 1 --chains 8 \
        --openmm-ps 4 --chunk 10 --burn 3 --equilibrate-ps 2

With ``--equilibrate-ps P`` each starts from a draw of its own target instead. openmm: each
reference frame after P ps of its restrained Langevin dynamics (every rigid bond a constraint).
vae_mc: the same frame after P ps of openmm on vae_mc's target — the bonds its decoder builds held
as constraints, the others (between beads, ring closures) springs of ``closure_stiffness`` (its
``bond_model``), at a quarter of the time step — and the chain keeps those springs
(``start_projection: held``). The two targets differ: with springs the LJ energy of a frame sits
~170 kJ/mol lower (docs/vae-sps.md, "The LJ gap"). The Fixman term that openmm leaves out moves it by
< 3 kJ/mol. τ is a property of a chain at stationarity; a chain that is still relaxing towards its
target carries a drift, which inflates τ.

With ``--chains F``, vae_mc runs F chains (reference frames --frame … --frame + F − 1) in lockstep,
as ``backmap refine --batch F`` does: one network call per plan step and colour for all F, and the
CPU time per chain is the batch's over F (openmm's cost per chain does not fall with F).

``--quick``: the same code path on frame 1 (models/sps-vae unless ``--model``): 4 sweeps of 1 trial
with one round each of turns, cranks and inner moves, and 0.04 ps of openmm, in a temporary folder
(~30 CPU-s); without ../shared/data/sps it prints ``{"skipped": ...}``.
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

from backmap.engine.loaders import load_mapping, load_topology, make_plugin
from backmap.forcefield import ForceField
from backmap.forcefield.settings import NonbondedSettings
from backmap.refinement.bond_model import BondModel
from backmap.refinement.restrained import RestrainedSystem
from backmap.system.io import read_frames

SPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sps"
MAPPING = Path(__file__).resolve().parents[1] / "recipes" / "sps" / "sps.xml"


def integrated_time(x: np.ndarray, c: float = 5.0) -> float:
    """τ_int (in samples) of series (T,) or of many series (T, S) of one stationary process (the
    molecules of the chains), with Sokal's window M ≥ c τ; τ = 1 for white noise. The series'
    autocovariances are summed before normalizing: one ACF, with the noise of S series averaged
    out, so that the window is found where it is. Each series' own mean is subtracted, which
    biases every ρ(k) by about −τ/T: a series needs T ≳ 50 τ (``summarise`` reports T/τ)."""
    x = np.asarray(x, float)
    x = (x if x.ndim == 2 else x[:, None]) - x.mean(0)
    n = len(x)
    if n < 4 or not np.any(x):
        return float("nan")
    f = np.fft.rfft(x, 2 * n, axis=0)
    acf = np.fft.irfft(f * np.conj(f), axis=0)[:n].sum(1)
    acf /= acf[0]
    tau = 2 * np.cumsum(acf) - 1
    window = np.arange(n) >= c * tau
    m = int(np.argmax(window)) if window.any() else n - 1
    return float(tau[m])


def ar1_corrected_time(tau: float, samples: int, series: int = 400, seed: int = 0) -> float:
    """The τ of an AR(1) process whose :func:`integrated_time` on series of this length comes out
    as ``tau``: the estimate with its short-series bias taken out, assuming one exponential decay
    (a process with slower components is slower still). AR(1) with ρ = 0.9 (τ = 19) measures 3.5
    on 37 samples, 10.8 on 200 and 17.5 on 2 000."""
    if not np.isfinite(tau) or tau <= 1.0:
        return tau
    noise = np.random.default_rng(seed).normal(size=(samples, series))

    def measured(true: float) -> float:
        rho = (true - 1) / (true + 1)
        x = np.empty_like(noise)
        x[0] = noise[0] / np.sqrt(1 - rho * rho)  # stationary start
        for t in range(1, samples):
            x[t] = rho * x[t - 1] + noise[t]
        return integrated_time(x)

    lo, hi = 1.0, 2.0
    while measured(hi) < tau:
        lo, hi = hi, 2 * hi
        if hi > 100 * samples:  # the series cannot tell τ from infinity
            return float("inf")
    for _ in range(30):  # same noise for every candidate: the measured τ is monotone in the true
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if measured(mid) < tau else (lo, mid)
    return 0.5 * (lo + hi)


def summarise(name: str, lj: np.ndarray, seconds: np.ndarray, burn: int, chains: int = 1) -> dict:
    """lj: (T, series) per recorded sample (``chains`` Markov chains side by side: their means and
    s.d. are per chain); seconds: CPU seconds per chain at each sample."""
    lj, seconds = lj[burn:], seconds[burn:]
    per_sample = float(np.diff(seconds).mean())
    tau = integrated_time(lj)
    each = np.array([integrated_time(lj[:, k]) for k in range(lj.shape[1])])
    return {"method": name, "samples": len(lj), "cpu_seconds_per_sample": round(per_sample, 3),
            "tau_samples": round(tau, 2), "tau_cpu_seconds": round(tau * per_sample, 2),
            "samples_per_tau": round(len(lj) / tau, 1) if tau > 0 else None,  # τ ≤ 0: a series too short
            "tau_samples_ar1_corrected": round(ar1_corrected_time(tau, len(lj)), 2),
            # the estimator before 2026-11-27 (third session): τ of each series, averaged; biased
            # low on short series (see integrated_time)
            "tau_samples_per_series_mean": round(float(np.nanmean(each)), 2),
            "lj_mean": round(float(lj.sum(1).mean()) / chains, 1),
            "lj_sd": round(float(lj.reshape(len(lj), chains, -1).sum(2).std(0).mean()), 1)}


#: a ring counts as flipped when its torsion is this far (rad) from where it started: libration
#: (±30°) never gets there, a 180° flip always does
FLIPPED = 2 * np.pi / 3


def ring_flips(name: str, start: np.ndarray, end: np.ndarray, cpu_seconds: float) -> dict:
    """Ring flips per ring and CPU-second: ``start`` and ``end`` (chains, rings) ring torsions (rad)
    before and after ``cpu_seconds`` per chain. The rate is that of a symmetric two-state flip,
    k = −ln(1 − 2f) / 2t with f the fraction flipped; with no flip, the 95 % upper bound 3 / (n t)."""
    f = float((np.abs(np.angle(np.exp(1j * (end - start)))) > FLIPPED).mean())
    n = start.size
    if f == 0:
        rate, bound = 3.0 / (n * cpu_seconds), True
    else:
        rate, bound = float(-np.log(max(1 - 2 * f, 1e-12)) / (2 * cpu_seconds)), False
    return {"observable": "ring_flips", "method": name, "rings": n, "flipped_fraction": round(f, 4),
            "cpu_seconds_per_chain": round(cpu_seconds, 1), "flips_per_ring_cpu_second": float(f"{rate:.3g}"),
            "upper_bound": bound}


COMMON = {"temperature": 568, "constraints": "all-bonds", "restraint": 2.0e5, "minimize_steps": 0, "seed": 1}
"""The refiners' shared settings: sPS at 568 K, all bonds rigid, k = 2·10⁵ kJ/mol/nm², no minimization."""


def sps_frame(frame: int) -> tuple[RestrainedSystem, np.ndarray, np.ndarray, np.ndarray]:
    """sPS test frame ``frame`` (../shared/data/sps/eval_t568): the restrained system, the AA
    positions (N, 3), the CG targets and the box (1, 3, 3)."""
    top = load_topology(SPS / "top" / "topol.top")
    cg = load_mapping(MAPPING, top).cg_topology(top)
    system = RestrainedSystem(cg, SPS / "top" / "topol.top", NonbondedSettings.from_mdp(SPS / "top" / "md.mdp"))
    aa = list(read_frames(SPS / "eval_t568" / "aa.xtc", frames=[frame]))[0]
    cgf = list(read_frames(SPS / "eval_t568" / "cg.xtc", frames=[frame]))[0]
    x, targets = system.prepare(aa, cgf)
    return system, x, targets, np.asarray(aa.box).reshape(1, 3, 3)


def sps_frames(first: int, count: int) -> tuple[RestrainedSystem, np.ndarray, np.ndarray, np.ndarray]:
    """Test frames ``first`` … ``first + count − 1`` stacked as ``refine`` takes them: the restrained
    system, positions (F, N, 3), CG targets (F, n, 3) and boxes (F, 3, 3)."""
    frames = [sps_frame(f) for f in range(first, first + count)]
    return (frames[0][0], np.stack([f[1] for f in frames]), np.stack([f[2] for f in frames]),
            np.concatenate([f[3] for f in frames]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required="--quick" not in sys.argv[1:], help="a trained vae model folder")
    ap.add_argument("--frame", type=int, default=1)
    ap.add_argument("--sweeps", type=int, default=200, help="vae_mc sweeps (τ is ~50: a short run underestimates it)")
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--chains", type=int, default=1,
                    help="vae_mc chains run in lockstep (one per reference frame: --frame, --frame + 1, …); "
                         "their CPU time is shared: per chain it is the sweep's over the number of chains")
    ap.add_argument("--decide", default="sequential", choices=["sequential", "independent"])
    ap.add_argument("--turns", type=int, default=0, help="vae_mc's local turns per sweep of units hanging on one bond")
    ap.add_argument("--turn-width", type=float, default=0.5, help="largest turn (rad)")
    ap.add_argument("--cranks", type=int, default=0, help="vae_mc's crankshaft moves per sweep of backbone clusters")
    ap.add_argument("--crank-width", type=float, default=0.1, help="largest crank (rad)")
    ap.add_argument("--inner", type=int, default=0, help="vae_mc's inner moves per sweep of every unit")
    ap.add_argument("--inner-step", type=float, default=0.04, help="largest inner displacement (nm)")
    ap.add_argument("--rotation-candidates", type=int, default=1,
                    help="angles per turn, crank or inner move (heat-bath)")
    ap.add_argument("--vae-every", type=int, default=1, help="vae_mc's VAE moves in every n-th sweep only")
    ap.add_argument("--local-decide", default="sequential", choices=["sequential", "independent"],
                    help="vae_mc's local moves: molecule-wide groups decided in turn, or groups beyond the cut-off")
    ap.add_argument("--local-scoring", default="compiled", choices=["compiled", "torch"],
                    help="vae_mc's local moves decided in turn: scored in one compiled loop, or in torch (reference)")
    ap.add_argument("--openmm-ps", type=float, default=20.0)
    ap.add_argument("--chunk", type=int, default=50, help="openmm steps (2 fs) between samples")
    ap.add_argument("--burn", type=int, default=5, help="samples left out at the start")
    ap.add_argument("--equilibrate-ps", type=float, default=0.0,
                    help="start both methods from each reference frame after this many ps of openmm (0: from the "
                         "reference frames themselves)")
    ap.add_argument("--out", default="vae_mc_decorrelation.npz")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: frame 1, 4 sweeps with local moves, 0.04 ps of openmm, in a temporary folder")
    a = ap.parse_args()
    if a.quick:
        if not SPS.is_dir():
            print(json.dumps({"skipped": f"needs the sPS data in {SPS}"}))
            return
        a.model = str(Path(a.model or Path(__file__).resolve().parents[1] / "models" / "sps-vae").resolve())
        a.frame, a.sweeps, a.trials, a.chains, a.burn = 1, 4, 1, 1, 0
        a.turns, a.cranks, a.inner, a.openmm_ps, a.chunk, a.equilibrate_ps = 1, 1, 1, 0.04, 5, 0.0
        os.chdir(tempfile.mkdtemp(prefix="backmap-vae-mc-decorrelation-quick-"))
        a.out = "vae_mc_decorrelation.npz"
    torch.set_num_threads(1)
    system, x, targets, box = sps_frame(a.frame)
    common = dict(COMMON)
    rng = np.random.default_rng(0)

    ff = ForceField(system.topology, system.nonbonded, torch.float64)
    rings = ring_torsions(system.topology)

    def observe(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = ff.energy(torch.as_tensor(y), box, whole=True, per_molecule=True, terms=("lj",))
        return e.per_molecule["lj"][0].numpy(), np.cos(dihedrals(y[0], rings))

    # one call of a.sweeps sweeps (a call per sweep would project the springs' bonds back onto
    # their lengths each time: a step outside the Markov chain); the trace records every sweep
    vae = make_plugin("refiner", "vae_mc", {**common, "model": a.model, "steps": a.sweeps, "trials": a.trials,
                                            "decide": a.decide, "trace": "vae_mc_trace.npz", "turns": a.turns,
                                            "turn_width": a.turn_width, "cranks": a.cranks,
                                            "crank_width": a.crank_width, "vae_every": a.vae_every,
                                            "rotation_candidates": a.rotation_candidates, "inner": a.inner,
                                            "inner_step": a.inner_step, "local_decide": a.local_decide,
                                            "local_scoring": a.local_scoring})
    vae.prepare(system)
    starts = [(x, targets, box)] + [sps_frame(a.frame + k)[1:] for k in range(1, a.chains)]
    if a.equilibrate_ps > 0:
        vae_starts = equilibrated(system, starts, a.equilibrate_ps, rng, bonds=vae.bond_model())
        starts = equilibrated(system, starts, a.equilibrate_ps, rng)
        x = starts[0][0]
        vae.params = vae.params.model_copy(update={"start_projection": "held"})
    else:
        vae_starts = starts
    result = vae.refine(np.stack([c[0] for c in vae_starts]), np.stack([c[1] for c in vae_starts]),
                        np.concatenate([c[2] for c in vae_starts]), rng)
    t = np.load("vae_mc_trace.npz")
    order = np.lexsort((t["frame"], t["sweep"]))  # sweep-major: (sweeps, chains)
    sweeps = len(order) // a.chains
    # chains side by side: each chain's molecules are columns of their own (τ per chain and molecule)
    v_lj = t["lj_per_molecule"][order].reshape(sweeps, a.chains, -1).reshape(sweeps, -1)
    v_phi = np.stack([dihedrals(y.astype(np.float64), rings) for y in t["positions"][order]]).reshape(sweeps, -1)
    v_ring = np.cos(v_phi)
    cpu = t["cpu_seconds"][order].reshape(sweeps, a.chains)[:, -1] / a.chains  # per chain: shared by all
    v_sec = cpu - cpu[0] + (cpu[1] - cpu[0])
    # openmm: one continuous trajectory, positions recorded every chunk steps with the CPU seconds
    # (no per-call set-up in the cost: a new seed makes new contexts, ~1.3 s per call on sPS)
    omm = make_plugin("refiner", "openmm", {**common, "steps": int(round(a.openmm_ps / 0.002)), "timestep": 0.002,
                                            "threads": 1, "warmup_steps": 0, "friction": 10.0,
                                            "trace": "openmm_trace.npz", "trace_every": a.chunk})
    omm.prepare(system)
    omm.refine(x[None], targets[None], box, rng)
    t = np.load("openmm_trace.npz")
    observed = [observe(y[None].astype(np.float64)) for y in t["positions"]]
    o_lj, o_ring = np.array([o[0] for o in observed]), np.array([o[1] for o in observed])
    o_sec = t["cpu_seconds"] - t["cpu_seconds"][0] + (t["cpu_seconds"][1] - t["cpu_seconds"][0])
    rows = []
    for what, v, o in (("lj_per_chain", v_lj, o_lj), ("ring_torsion_cos", v_ring, o_ring)):
        rv, ro = summarise("vae_mc", v, v_sec, a.burn, a.chains), summarise("openmm", o, o_sec, a.burn)
        for r in (rv, ro):
            rows.append({"observable": what, **r})
        corrected = [r["tau_samples_ar1_corrected"] * r["cpu_seconds_per_sample"] for r in (ro, rv)]
        rows.append({"observable": what, "ratio_openmm_over_vae_mc_tau_cpu":
                     round(ro["tau_cpu_seconds"] / rv["tau_cpu_seconds"], 3) if rv["tau_cpu_seconds"] > 0 else None,
                     "ratio_ar1_corrected": round(corrected[0] / corrected[1], 3) if corrected[1] > 0 else None})
    phi_start = np.stack([dihedrals(np.asarray(c[0], np.float64), rings) for c in vae_starts])
    flips_v = ring_flips("vae_mc", phi_start, v_phi[-1].reshape(a.chains, -1), float(v_sec[-1]))
    flips_o = ring_flips("openmm", phi_start[:1], dihedrals(t["positions"][-1].astype(np.float64), rings)[None],
                         float(o_sec[-1]))
    ratio = flips_v["flips_per_ring_cpu_second"] / flips_o["flips_per_ring_cpu_second"]
    rows += [flips_v, flips_o, {"observable": "ring_flips",  # a bound when either side saw no flip
                                "ratio_vae_mc_over_openmm_flip_rate": float(f"{ratio:.3g}"),
                                "is": {(False, False): "estimate", (False, True): "lower bound",
                                       (True, False): "upper bound"}.get((flips_v["upper_bound"], flips_o["upper_bound"]),
                                                                         "undetermined")}]
    rows.append({"observable": "acceptance_per_unit_type", "method": "vae_mc", **acceptance_by_type(result.log)})
    np.savez(a.out, vae_lj=v_lj, vae_ring=v_ring, vae_seconds=v_sec, openmm_lj=o_lj, openmm_ring=o_ring,
             openmm_seconds=o_sec)
    for r in rows:
        print(json.dumps(r))


def equilibrated(system: RestrainedSystem, starts: list, ps: float, rng: np.random.Generator,
                 bonds: BondModel | None = None) -> list:
    """Each (positions, CG targets, box) start after ``ps`` of openmm's restrained Langevin dynamics
    at the shared settings: a draw of openmm's restrained target, or with ``bonds`` (a refiner's
    :class:`BondModel`) of that refiner's: its held bonds constrained, its sprung ones springs, at
    a quarter of the time step (the Fixman term left out)."""
    omm = make_plugin("refiner", "openmm", {**COMMON, "steps": int(round(ps / 0.002)), "timestep": 0.002,
                                            "threads": 1, "warmup_steps": 0, "friction": 10.0})
    omm.prepare(system)
    if bonds is None:
        out = omm.refine(np.stack([s[0] for s in starts]), np.stack([s[1] for s in starts]),
                         np.concatenate([s[2] for s in starts]), rng)
        return [(y, t, b) for y, (_x, t, b) in zip(out.positions, starts)]
    return [(restrained_run(omm, x, t, b.reshape(3, 3), ps, int(rng.integers(2**31)), bonds)[0], t, b)
            for x, t, b in starts]


def stationary_args(description: str) -> argparse.ArgumentParser:
    """The arguments of the benchmarks that move units of frames drawn from vae_mc's own target:
    the model, the test frames and the openmm time that brings them there."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", required=True)
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--equilibrate-ps", type=float, default=2.0)
    return ap


def stationary_starts(a: argparse.Namespace) -> tuple[RestrainedSystem, object, list]:
    """The system, a prepared vae_mc refiner of ``a.model`` and test frames ``a.first`` …
    brought to draws of its own target (``a.equilibrate_ps`` of openmm on its bond model), as
    (positions, CG targets, box) each."""
    torch.set_num_threads(1)
    system, x, targets, boxes = sps_frames(a.first, a.frames)
    vae = make_plugin("refiner", "vae_mc", {**COMMON, "model": a.model, "steps": 1, "start_projection": "held"})
    vae.prepare(system)
    starts = equilibrated(system, [(x[f], targets[f], boxes[f:f + 1]) for f in range(a.frames)], a.equilibrate_ps,
                          np.random.default_rng(0), bonds=vae.bond_model())
    return system, vae, starts


def restrained_run(omm, x: np.ndarray, target: np.ndarray, box: np.ndarray, ps: float, seed: int,
                   bonds: BondModel | None = None, every: float | None = None, observe=None
                   ) -> tuple[np.ndarray, list]:
    """``ps`` of restrained Langevin dynamics at the shared settings on the openmm refiner's system
    (``omm``, prepared): every rigid bond a constraint (2 fs), or with ``bonds`` (a refiner's
    :class:`BondModel`) its held bonds constrained and its sprung ones harmonic (0.5 fs; the
    Fixman term left out). Returns the last positions and ``observe(positions)`` every ``every``
    ps. Uses the refiner's internals: a benchmark's set-up."""
    import openmm as mm
    import openmm.app as app
    import openmm.unit as u

    omm._build(box)
    system, restraint = omm._openmm_system(omm._top, None if bonds is not None else app.AllBonds,
                                           omm.params.restraint, box)
    dt = 0.002
    if bonds is not None:
        dt = 0.0005
        held = {(int(min(i, j)), int(max(i, j))) for i, j in bonds.held}
        for force in system.getForces():
            if isinstance(force, mm.HarmonicBondForce):
                for b in range(force.getNumBonds()):
                    i, j, length, _k = force.getBondParameters(b)
                    if (min(i, j), max(i, j)) in held:
                        system.addConstraint(i, j, length)
                        force.setBondParameters(b, i, j, length, 0.0)
                    else:
                        force.setBondParameters(b, i, j, length, bonds.stiffness)
    T = COMMON["temperature"]
    integrator = mm.LangevinMiddleIntegrator(T * u.kelvin, 10.0 / u.picosecond, dt * u.picosecond)
    integrator.setConstraintTolerance(1e-7)
    integrator.setRandomNumberSeed(seed)
    ctx = mm.Context(system, integrator, mm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    ctx.setPeriodicBoxVectors(*(mm.Vec3(*row) * u.nanometer for row in box))
    for k, r in enumerate(target):
        restraint.setBondParameters(k, [k], [float(v) for v in r])
    restraint.updateParametersInContext(ctx)
    ctx.setPositions(x * u.nanometer)
    ctx.applyConstraints(1e-7)
    ctx.setVelocitiesToTemperature(T * u.kelvin, seed)
    positions = lambda: ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)  # noqa: E731
    seen = []
    chunk = int(round((every or ps) / dt))
    for _ in range(int(round(ps / dt)) // chunk):
        integrator.step(chunk)
        if observe is not None:
            seen.append(observe(positions()))
    return positions(), seen


def acceptance_by_type(log: list[dict]) -> dict[str, float]:
    """The refiner's own acceptance per unit type (its ``acceptance[label]`` columns), averaged
    over the frames of the run: the rates that set τ, bead by bead."""
    keys = sorted({k for row in log for k in row if k.startswith("acceptance[")})
    return {k[len("acceptance["):-1]: round(float(np.mean([row[k] for row in log if k in row])), 4) for k in keys}


def ring_torsions(topology) -> np.ndarray:
    """(n, 4) atoms of each phenyl ring's torsion about its bond to the backbone: (backbone C,
    backbone CH, ipso, first ortho carbon) — the slow ring rotation a whole-bead move can redraw."""
    import networkx as nx

    g = nx.Graph()
    for mt, first in topology.molecules():
        g.add_edges_from((first + mt.bonds).tolist())
    types = np.concatenate([np.tile(np.asarray(b.moltype.atom_types).astype(str), b.count) for b in topology.blocks])
    out = []
    for ipso in np.flatnonzero(types == "C_AR"):
        ch = [n for n in g.neighbors(ipso) if types[n] == "C"]
        if not ch:
            continue
        c = ch[0]
        back = sorted(n for n in g.neighbors(c) if types[n] == "C")
        ortho = sorted(n for n in g.neighbors(ipso) if types[n] == "C_AR")
        if back and ortho:
            out.append((back[0], c, ipso, ortho[0]))
    return np.array(out)


def dihedrals(x: np.ndarray, quads: np.ndarray) -> np.ndarray:
    b0 = x[quads[:, 0]] - x[quads[:, 1]]
    b1 = x[quads[:, 2]] - x[quads[:, 1]]
    b2 = x[quads[:, 3]] - x[quads[:, 2]]
    b1 /= np.linalg.norm(b1, axis=1, keepdims=True)
    v = b0 - (b0 * b1).sum(1, keepdims=True) * b1
    w = b2 - (b2 * b1).sum(1, keepdims=True) * b1
    return np.arctan2((np.cross(b1, v) * w).sum(1), (v * w).sum(1))


if __name__ == "__main__":
    main()
