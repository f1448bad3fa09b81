"""Dynamics metrics of `backmap evaluate` (docs/dynamics.md): velocities between consecutive frames,
MSM implied timescales, the (φ, ψ) free-energy surface; τ handling and order safety.

Data: alanine dipeptide in vacuum (tests/data/dipeptide: 2000 frames 1 ps apart) and synthetic
Markov chains with known transition matrices. Tolerances come from the statistical spread (block
means, bootstrap σ, the spread over independent chains), never from one run's numbers."""
import json

import numpy as np
import pytest

from backmap.errors import BackmapError
from backmap.forcefield import NonbondedSettings
from backmap.metrics import EvalContext, TimeStep
from backmap.metrics.evaluate import EvaluationSpec, run_evaluation
from backmap.metrics.msm import implied_timescales
from backmap.metrics.timing import time_step
from backmap.system.io import Frame, read_frames, write_frames
from backmap.system.pbc import minimum_image

from conftest import DATA

DIPEPTIDE = DATA / "dipeptide"
TRAJ = DIPEPTIDE / "traj.xtc"
TOP = DIPEPTIDE / "topol.top"
#: a quick MSM: fewer states and resamplings than the defaults
QUICK_MSM = ("msm", {"n_states": 30, "n_bootstrap": 20})


@pytest.fixture(scope="module")
def dipeptide():
    from backmap.engine.loaders import load_topology

    top = load_topology(TOP)
    frames = list(read_frames(TRAJ))
    return top, frames, np.stack([f.positions for f in frames])


def _element(top, element):
    from backmap.metrics import terms

    return np.flatnonzero(terms.per_atom(top, "elements") == element)


def _write(path, top, frames):
    write_frames(path, frames, top.atom_names, top.resnames, top.residue_numbers())
    return path


@pytest.fixture(scope="module")
def shuffled(dipeptide, tmp_path_factory):
    """The reference's frames in random order, stored 1 ps apart: same ensemble, no coherence."""
    top, frames, _ = dipeptide
    order = np.random.default_rng(7).permutation(len(frames))
    out = [Frame(frames[k].positions, frames[k].dimensions, float(i), i) for i, k in enumerate(order)]
    return _write(tmp_path_factory.mktemp("dyn") / "shuffled.xtc", top, out)


def _evaluate(tmp_path, candidates, labels, metrics, **kw):
    spec = EvaluationSpec(topology=TOP, reference=TRAJ, candidates=list(candidates), labels=labels,
                          out=tmp_path, metrics=metrics, **{"workers": 1, "batch_size": 250, **kw})
    return run_evaluation(spec)


def _speeds(x, lag, atoms):
    """|x(t + lag) − x(t)| / lag of ``atoms`` over every start t (minimum image), frames (T, N, 3)."""
    d = minimum_image(x[lag:, atoms] - x[:-lag, atoms], next(read_frames(TRAJ, frames=[0])).dimensions)
    return np.linalg.norm(d, axis=-1) / lag


# --------------------------------------------------------------------------- τ

def test_time_step_from_frame_times_selections_and_override(dipeptide, tmp_path):
    top, frames, _ = dipeptide
    every = np.arange(2000)
    assert time_step(TRAJ, every) == TimeStep(1.0, "frame times", frames=2000)
    assert time_step(TRAJ, every[5:500:3]).tau == pytest.approx(3.0)
    assert time_step(TRAJ, every[::4], dt=0.5) == TimeStep(2.0, "override", frames=500)
    assert "not equally spaced" in time_step(TRAJ, np.array([0, 1, 3])).reason
    assert "not equally spaced" in time_step(TRAJ, np.array([0, 1, 3]), dt=1.0).reason
    assert time_step(TRAJ, np.array([4])).tau is None
    # frame times with a gap (two runs joined) → no τ; a .pdb stores no times → ask for --dt
    gap = [Frame(f.positions, f.dimensions, t, i) for i, (f, t) in enumerate(zip(frames[:6], [0, 1, 2, 5, 6, 7]))]
    assert "not equally spaced in time" in time_step(_write(tmp_path / "gap.xtc", top, gap), np.arange(6)).reason
    pdb = _write(tmp_path / "three.pdb", top, frames[:3])
    assert "--dt" in time_step(pdb, np.arange(3)).reason
    assert time_step(pdb, np.arange(3), dt=2.0).tau == 2.0


# --------------------------------------------------------------------------- velocities

def test_velocities_self_zero_shuffled_far_and_faster(dipeptide, shuffled, tmp_path):
    top, _, x = dipeptide
    result = _evaluate(tmp_path, [TRAJ, shuffled], ["self", "shuffled"], ["velocities"], save_samples=True)
    assert result["time_steps"]["reference"] == {"tau": 1.0, "source": "frame times", "reason": "", "frames": 2000}
    obs = {n: o for n, o in result["observables"].items() if n.startswith("velocity:")}
    assert set(obs) == {"velocity:C", "velocity:H", "velocity:N", "velocity:O"}  # per element by default
    samples = np.load(tmp_path / "samples.npz")
    # every consecutive pair, across the 8 batch boundaries too, equals the direct computation
    np.testing.assert_allclose(samples["reference/velocity:C"], _speeds(x, 1, _element(top, "C")), atol=1e-6)
    for name, o in obs.items():
        assert o["candidates"]["self"]["jsd"] == 0.0
        # shuffling breaks coherence: far beyond the spread between the reference's two halves
        shuf = o["candidates"]["shuffled"]
        assert shuf["jsd"] > 0.1 and shuf["jsd"] > 10 * o["noise_floor"]["jsd"], name
        ref = samples[f"reference/{name}"].mean(1)
        spread = abs(ref[:1000].mean() - ref[1000:].mean()) + _block_error(ref)
        assert shuf["mean"] - o["reference"]["mean"] > 10 * spread, name
    report = (tmp_path / "report.md").read_text()
    assert "τ = 1 ps (frame times)" in report and "figures/velocity.png" in report


def _block_error(values, blocks=10):
    """Standard error of the mean from block means (the frames are correlated)."""
    means = np.array([b.mean() for b in np.array_split(np.asarray(values), blocks)])
    return means.std(ddof=1) / np.sqrt(blocks)


def test_frame_step_gives_the_spacing_of_the_selected_frames(dipeptide, cli, tmp_path):
    top, _, x = dipeptide
    carbons = _element(top, "C")
    result = _evaluate(tmp_path / "a", [TRAJ], ["same"], ["velocities"], frames="0::2", save_samples=True)
    assert result["time_steps"]["same"]["tau"] == pytest.approx(2.0)
    v = np.load(tmp_path / "a" / "samples.npz")["reference/velocity:C"]
    # |Δs|/2 over 2 ps: the mean over every 2-ps displacement of the file, within the block errors
    every = _speeds(x, 2, carbons)
    tol = 4 * np.hypot(_block_error(v.mean(1)), _block_error(every.mean(1)))
    assert v.mean() == pytest.approx(every.mean(), abs=tol)
    assert 2 * v.mean() - every.mean() > 5 * tol  # what dividing by the file's 1 ps would give: excluded
    # --dt overrides the frame times: 0.5 ps per frame, frames 2 apart → τ = 1 ps, speeds exactly doubled
    code, out, err = cli("evaluate", "--topology", TOP, "--reference", TRAJ, TRAJ, "--out", tmp_path / "b",
                         "--frames", "0::2", "--dt", "0.5", "--metrics", "velocities", "--workers", "1",
                         "--batch-size", "400")
    assert code == 0, err
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert b["time_steps"]["reference"] == {"tau": 1.0, "source": "override", "reason": "", "frames": 1000}
    assert b["observables"]["velocity:C"]["reference"]["mean"] == pytest.approx(2 * v.mean(), rel=1e-9)


def test_not_a_trajectory_skips_with_a_reason(dipeptide, tmp_path):
    top, frames, _ = dipeptide
    irregular = [Frame(f.positions, f.dimensions, float(t), i)
                 for i, (f, t) in enumerate(zip(frames[:300], [*range(150), *range(151, 301)]))]
    path = _write(tmp_path / "irregular.xtc", top, irregular)
    result = _evaluate(tmp_path / "a", [path], ["joined"], ["velocities", QUICK_MSM], frames="0:300")
    notes = "\n".join(result["notes"])
    assert "velocities: joined not compared — frames not equally spaced in time" in notes
    assert "msm: joined not modelled — frames not equally spaced in time" in notes
    assert "joined" not in result["observables"]["velocity:C"]["candidates"]
    assert "joined" not in result["analyses"]["msm"]["candidates"]
    # a frame list is not a trajectory: both metrics skip, with the reason
    result = _evaluate(tmp_path / "b", [TRAJ], ["same"], ["velocities", QUICK_MSM], frames="0,1,3,7")
    skipped = [n for n in result["notes"] if "skipped" in n]
    assert len(skipped) == 2 and all("not equally spaced" in n for n in skipped), skipped


# --------------------------------------------------------------------------- order safety

def test_two_workers_give_the_same_results_as_one(shuffled, tmp_path):
    metrics = ["velocities", QUICK_MSM, "ramachandran"]
    one = _evaluate(tmp_path / "one", [shuffled], ["shuffled"], metrics, frames="0:1200", batch_size=97)
    two = _evaluate(tmp_path / "two", [shuffled], ["shuffled"], metrics, frames="0:1200", batch_size=97, workers=2)
    assert two["timing"]["workers"] == 2
    assert one["observables"] == two["observables"] and one["analyses"] == two["analyses"]
    assert one["observables"]["velocity:H"]["reference"]["n"] == 1199 * 12  # every pair, 12 H atoms


# --------------------------------------------------------------------------- MSM

def _chain(matrix, n, rng):
    """A discrete trajectory of the Markov chain ``matrix`` (n steps from state 0)."""
    cum = np.cumsum(matrix, 1)
    u = rng.random(n)
    out = np.zeros(n, np.int32)
    for t in range(1, n):
        out[t] = min(np.searchsorted(cum[out[t - 1]], u[t]), len(matrix) - 1)
    return out


def _true_timescales(matrix, tau):
    ev = np.sort(np.abs(np.linalg.eigvals(matrix)))[::-1]
    return -tau / np.log(ev[1:])


def test_implied_timescales_of_a_known_markov_chain():
    """t_i = −τ / ln λ_i of the transition matrix: unbiased within the spread over independent
    chains, and the bootstrap error bars match that spread."""
    matrix = np.array([[0.98, 0.015, 0.005], [0.01, 0.97, 0.02], [0.004, 0.016, 0.98]])
    tau = 0.5  # ps per step: timescales in ps, lag 2.5 ps = 5 steps
    true = _true_timescales(matrix, tau)  # 20.3, 10.7 ps
    rng = np.random.default_rng(3)
    fits = [implied_timescales(_chain(matrix, 20_000, rng), tau, 2.5, k=2, n_bootstrap=40, seed=s) for s in range(8)]
    assert fits[0].lag_frames == 5 and fits[0].lag == 2.5 and fits[0].n_states == 3
    values = np.array([f.values for f in fits])
    spread = values.std(0, ddof=1)
    assert np.all(np.abs(values.mean(0) - true) < 4 * spread / np.sqrt(len(fits)))
    assert np.all(spread < 0.15 * true)  # not vacuous: each chain pins them to ~10 %
    sigma = np.array([f.std for f in fits]).mean(0)
    assert np.all((sigma > spread / 2.5) & (sigma < 2.5 * spread))
    inside = np.array([(f.lower <= true) & (true <= f.upper) for f in fits])
    assert inside.mean() >= 0.5  # nominal 95 %; measured 0.63–1.0 over 12 seeds (the bootstrap is a bit optimistic)


def _dihedral_series(matrix, n, rng):
    """(φ, ψ) (n, 1, 2) in degrees: a 2-state chain between C7eq-like (−80°, 70°) and C5-like
    (−150°, 170°) basins, 12° noise — the C5 basin straddles ψ = ±180°."""
    states = _chain(matrix, n, rng)
    centres = np.array([[-80.0, 70.0], [-150.0, 170.0]])
    angles = centres[states] + rng.normal(0, 12.0, (n, 2))
    return (angles + 180.0) % 360.0 - 180.0, states


def _msm_context(labels):
    from backmap.engine.loaders import load_topology

    return EvalContext(load_topology(TOP), NonbondedSettings(),
                       time_steps={lab: TimeStep(1.0, frames=4000) for lab in labels})


def test_msm_states_of_the_reference_recover_two_state_kinetics_and_rescale():
    from backmap_metrics.dynamics import MarkovTimescales

    slow = np.array([[0.98, 0.02], [0.03, 0.97]])  # λ = 0.95: t = 19.5 ps at τ = 1 ps
    fast = np.array([[0.96, 0.04], [0.06, 0.94]])  # λ = 0.90: t = 9.5 ps
    rng = np.random.default_rng(11)
    samples = {"reference": {"msm:phi_psi": _dihedral_series(slow, 4000, rng)[0][:, None]},
               "fast": {"msm:phi_psi": _dihedral_series(fast, 4000, rng)[0][:, None]}}
    ctx = _msm_context(samples)
    metric = MarkovTimescales({"n_states": 20, "n_bootstrap": 40, "rescale": True})
    assert [o.name for o in metric.prepare(ctx)] == ["msm:phi_psi"]
    analysis = metric.analyse(samples, ctx)
    ref, cand = analysis.result["reference"], analysis.result["candidates"]["fast"]
    t_slow, t_fast = _true_timescales(slow, 1.0)[0], _true_timescales(fast, 1.0)[0]
    assert ref["values"][0] == pytest.approx(t_slow, abs=4 * ref["std"][0])
    assert cand["values"][0] == pytest.approx(t_fast, abs=4 * cand["std"][0])
    rel = np.hypot(ref["std"][0] / ref["values"][0], cand["std"][0] / cand["values"][0])
    assert cand["ratio"][0] == pytest.approx(t_fast / t_slow, rel=4 * rel)
    assert cand["within_reference_error"][0] is True  # after rescaling t1 onto the reference's …
    assert cand["rescaled"][0] == pytest.approx(ref["values"][0])
    assert cand["slowest_speedup"] == pytest.approx(t_slow / t_fast, rel=4 * rel)  # … by ~2
    assert analysis.result["reference"]["resolved"][0] is True
    # without rescaling the faster candidate lies outside the reference's error bars
    plain = MarkovTimescales({"n_states": 20, "n_bootstrap": 40})
    plain.prepare(ctx)
    assert plain.analyse(samples, ctx).result["candidates"]["fast"]["within_reference_error"][0] is False
    assert "msm_timescales" in analysis.figures and any("t1" in line for line in analysis.lines)


def test_msm_skips_without_deeptime_or_enough_frames(monkeypatch):
    import backmap_metrics.dynamics as dynamics

    ctx = _msm_context(["reference"])
    metric = dynamics.MarkovTimescales({"n_states": 5000})
    assert metric.prepare(ctx) == [] and "at least 5000" in metric.skipped
    monkeypatch.setattr(dynamics, "have_deeptime", lambda: False)
    metric = dynamics.MarkovTimescales()
    assert metric.prepare(ctx) == [] and "deeptime is not installed" in metric.skipped


# --------------------------------------------------------------------------- (φ, ψ) free energy

def test_free_energy_surface_is_minus_kt_ln_p():
    from backmap.constants import BOLTZMANN
    from backmap_metrics.ramachandran import Ramachandran

    ctx = _msm_context(["reference"])
    metric = Ramachandran({"temperature": 350.0})
    assert "rama:phi_psi" in [o.name for o in metric.prepare(ctx)]
    a, b, c = [-85.0, 65.0], [-145.0, 155.0], [55.0, 45.0]  # bin centres of three 10° bins
    ref = np.array([a, a, b] * 20)[:, None]
    swapped = np.array([a, b, b] * 20)[:, None]
    outside = np.array([a] * 6 + [b] * 3 + [c])[:, None]
    samples = {lab: {"rama:phi_psi": s} for lab, s in
               {"reference": ref, "same": ref, "swapped": swapped, "outside": outside}.items()}
    result = metric.analyse(samples, ctx).result
    kt = BOLTZMANN * 350.0
    assert result["kT_kJ_mol"] == pytest.approx(kt)
    same, swap, out = (result["candidates"][k] for k in ("same", "swapped", "outside"))
    assert same == {"rmsd_kJ_mol": 0.0, "mass_outside_reference": 0.0}
    assert swap["rmsd_kJ_mol"] == pytest.approx(kt * np.log(2))  # F = 0, kT ln 2 swapped in both bins
    assert out["mass_outside_reference"] == pytest.approx(0.1) and out["rmsd_kJ_mol"] == pytest.approx(0, abs=1e-12)


def test_dipeptide_backbone_with_caps_and_recipe_dt_validation():
    from pydantic import ValidationError

    from backmap.engine.loaders import load_topology
    from backmap.metrics import terms
    from backmap_metrics.step import EvaluateParams

    # ACE-ALA-NME: φ = C(ACE) N CA C, ψ = N CA C N(NME) (atoms 5, 7, 9, 15, 17 in the .top, 1-based)
    assert terms.peptide_backbone(load_topology(TOP)).tolist() == [[4, 6, 8, 14, 16]]
    assert EvaluateParams(dt={"reference": 1, "*": 2}).dt == {"reference": 1.0, "*": 2.0}
    with pytest.raises(ValidationError):
        EvaluateParams(dt=-1)
    spec = EvaluationSpec(topology=TOP, reference=TRAJ, candidates=[TRAJ], labels=["x"], out="unused",
                          dt={"y": 1.0})
    with pytest.raises(BackmapError, match="no trajectory labelled 'y'"):
        run_evaluation(spec)


def test_recipe_step_passes_the_time_step(monkeypatch, tmp_path):
    """The `evaluate` step hands its `dt` (and metric parameters) to the evaluation unchanged."""
    from types import SimpleNamespace

    import backmap_metrics.step as step

    seen = {}

    def fake_run(spec, registry=None, console=None):
        seen["spec"] = spec
        return {"summary": {"mean_jsd_headline": {"candidates": {}, "noise_floor": 0.0}},
                "frames": {"reference": 1}, "timing": {"sampling_s": 0.0}}

    monkeypatch.setattr(step, "run_evaluation", fake_run)
    params = {"reference": str(TRAJ), "candidates": {"CG": str(TRAJ)}, "dt": {"reference": 1.0, "CG": 10.0},
              "metrics": ["velocities", {"plugin": "msm", "params": {"rescale": True}}]}
    recipe = SimpleNamespace(path=None, name="dyn", system=SimpleNamespace(topology=TOP, mappings=[]),
                             cluster=SimpleNamespace(workers=None, scheduler=None))
    ctx = SimpleNamespace(recipe=recipe, workdir=tmp_path, registry=None, console=None,
                          path=lambda *parts: tmp_path.joinpath(*parts))
    step.EvaluateStep(params).run(ctx)
    spec = seen["spec"]
    assert spec.dt == {"reference": 1.0, "CG": 10.0} and spec.labels == ["CG"]
    assert spec.metrics[0] == "velocities" and spec.metrics[1][0] == "msm" and spec.metrics[1][1]["rescale"] is True


def test_internal_velocities_are_those_inside_the_cg_frame(dipeptide, tmp_path):
    """With a mapping, ``internal_velocity:E`` takes each molecule's rigid motion out: a trajectory
    that only turns frame 0 around (different every ps) has lab speeds but no internal ones, and
    the reference against itself is exact."""
    from scipy.spatial.transform import Rotation

    top, frames, x = dipeptide
    mapping = DATA.parents[1] / "recipes" / "dipeptide" / "dipeptide.xml"
    turns = Rotation.random(200, random_state=3).as_matrix()
    centre = x[0].mean(0)
    rigid = [Frame((x[0] - centre) @ r.T + centre, frames[0].dimensions, float(i), i) for i, r in enumerate(turns)]
    path = _write(tmp_path / "rigid.xtc", top, rigid)
    result = _evaluate(tmp_path / "out", [TRAJ, path], ["self", "rigid"], ["velocities"], mapping=[mapping],
                       save_samples=True)
    obs = result["observables"]
    assert {f"internal_velocity:{e}" for e in "CHNO"} <= set(obs)
    samples = np.load(tmp_path / "out" / "samples.npz")
    assert samples["rigid/internal_velocity:H"].max() < 6e-3  # xtc rounding (±5e-4 nm per coordinate, two frames) only
    assert samples["rigid/velocity:H"].mean() > 0.3
    for e in "CHNO":
        assert obs[f"internal_velocity:{e}"]["candidates"]["self"]["jsd"] == 0.0
        # the molecule's own motion inside its CG frame is much slower than its tumbling in vacuum
        assert obs[f"internal_velocity:{e}"]["reference"]["mean"] < 0.7 * obs[f"velocity:{e}"]["reference"]["mean"]
