"""CG-model quality at atomistic resolution (thesis ch. 6): backmap the trajectories of CG models
with one trained model, measure them with the atomistic force field, rank the models.

The run (``backmap assess`` and the ``assess`` recipe step):

1. the AA reference is mapped to CG: the *in-distribution* set, the backmapping model's baseline;
2. every CG set is backmapped (and refined, if asked) with the same model and seed — frames run in
   blocks on :mod:`backmap.parallel`, so a killed assessment resumes;
3. the backmapped trajectories are evaluated against the AA reference with the metric plugins
   (bead forces, eq. 6.3; bonded distributions; RDFs; clashes; CG RMSD; energies);
4. the CG sets themselves are compared with the mapped reference at the CG resolution;
5. ranking by the bead-force JSD (mean over bead types of the |F_I| distributions), with its spread
   over random halves of the frames, and the restraint energy per bead after refinement (a direct
   measure of CG conformations that admit no consistent atomistic structure).

Writes ``metrics.json``, ``report.md`` and ``figures/`` into the output folder; the atomistic
evaluation's own report is in ``atomistic/``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backmap._version import __version__
from backmap.constants import BOLTZMANN
from backmap.errors import BackmapError
from backmap.forcefield import NonbondedSettings
from backmap.metrics.divergence import histogram, jsd
from backmap.parallel import ClusterOptions
from backmap.progress import say
from backmap.app.options import Seeded, ClusterFields, NonbondedOptions, RefinerOptions, Request, skip_list
from backmap.fields import option
from backmap.system.claim import OutputLock, check_outputs
from backmap.system.io import atomic_path, read_frames, trajectory_info
from backmap.app.backmapping import BackmapOutputs, backmap_to_files
from backmap.engine.loaders import load_mapping, load_topology
from backmap.engine.models import load_model
from backmap.engine.registry import default_registry
from backmap.metrics.cg_level import cg_terms, compare_cg, plot_cg, sample_cg
from backmap.metrics.evaluate import EvaluationSpec, json_default, run_evaluation
from backmap.refinement.restrained import RestrainedSystem
from backmap.sampling.backmapper import BackmapSettings, read_cg
from backmap.system.pairs import select_frames
from backmap.system.projection import map_trajectory
from backmap.references import THESIS_NOTE

IN_DISTRIBUTION = "in-distribution"
#: the metric plugins an assessment runs (all atomistic observables of the thesis' chapter 6)
DEFAULT_METRICS = ["bead_forces", "bonds", "angles", "dihedrals", "impropers", "broken_bonds", "rdf", "clashes", "energy",
                   "cg_rmsd"]


@dataclass
class AssessmentSpec:
    """Everything an assessment needs. ``cg``: label → CG trajectory of a CG model (bead order of
    the mapping). ``refiner``: an unprepared refiner plugin instance, or None (generator only)."""

    model: Path
    reference: Path
    cg: dict[str, Path]
    out: Path
    topology: Path | None = None
    mapping: list[Path] = field(default_factory=list)
    reference_frames: str | None = None
    skip_frames: list[int] = field(default_factory=list)
    cg_frames: str | None = None
    backmap: Any = None  # BackmapSettings (default: the apply command's defaults)
    refiner: Any = None
    settings: NonbondedSettings = field(default_factory=NonbondedSettings)
    seed: int = 0
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    bootstrap: int = 20
    metrics: list | None = None
    workers: int | None = None
    batch_size: int = 6
    title: str = ""


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "set"


def labels_from_paths(paths: list[Path]) -> dict[str, Path]:
    """Labels from file names (``A.xtc`` → ``A``); the same name in two folders gets its folder too."""
    stems = [Path(p).stem for p in paths]
    out = {}
    for p, s in zip(paths, stems):
        label = s if stems.count(s) == 1 else f"{Path(p).parent.name}/{s}"
        if label in out or label == IN_DISTRIBUTION:
            raise BackmapError(f"two CG inputs would both be labelled {label!r}; give --label", source=p)
        out[label] = Path(p)
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_assessment(spec: AssessmentSpec, registry=None, console=None) -> dict[str, Any]:
    """Assess the CG sets of ``spec``; returns the contents of ``metrics.json``."""
    t0 = time.perf_counter()
    registry = registry or default_registry()
    out = Path(spec.out)
    if out.exists() and not out.is_dir():
        raise BackmapError("--out is an existing file; assess writes a folder", source=out)
    if not spec.cg:
        raise BackmapError("assess: no CG trajectories to assess (give --cg)")
    loaded = load_model(spec.model, registry)
    top_path = Path(spec.topology or loaded.topology or "")
    maps = [Path(m) for m in (spec.mapping or loaded.mapping)]
    if not spec.topology and loaded.topology is None or not maps:
        raise BackmapError("the model does not record its topology and mapping: give --topology and --mapping",
                           source=spec.model)
    topo = load_topology(top_path, registry)
    cg_top = load_mapping(maps, topo, registry).cg_topology(topo)
    n_atoms, n_ref = trajectory_info(spec.reference)
    if n_atoms != topo.n_atoms:
        raise BackmapError(f"{n_atoms} atoms in the reference but {topo.n_atoms} in the topology", source=spec.reference)
    for label, path in spec.cg.items():
        beads, _ = trajectory_info(path)
        if beads != cg_top.n_beads:
            raise BackmapError(f"{beads} beads in CG set {label!r} but {cg_top.n_beads} in the mapping "
                               f"({', '.join(map(str, maps))})", source=path)
    settings = spec.backmap or BackmapSettings()
    settings = settings.model_copy(update={"energy": settings.energy and top_path.suffix == ".top"})
    out.mkdir(parents=True, exist_ok=True)
    (out / "cg").mkdir(exist_ok=True)
    (out / "backmapped").mkdir(exist_ok=True)

    # 1. the in-distribution set: the reference (its selected frames) mapped to CG
    ref_idx = select_frames(spec.reference_frames, list(spec.skip_frames), n_ref, str(spec.reference))
    if len(ref_idx) < 2:
        raise BackmapError(f"{len(ref_idx)} reference frame(s) left after the frame selection; need at least 2",
                           source=spec.reference)
    mapped = out / "cg" / f"{IN_DISTRIBUTION}.xtc"
    marker = {"reference": str(Path(spec.reference).resolve()), "frames": ref_idx.tolist(),
              "mapping": [str(m.resolve()) for m in maps]}
    if not _done(mapped, marker):
        say(f"assess: mapping the reference to CG ({len(ref_idx)} frames) → {mapped}")
        map_trajectory(cg_top, Path(spec.reference), mapped, ref_idx)
        _mark(mapped, marker)
    sets = {IN_DISTRIBUTION: mapped, **{k: Path(v) for k, v in spec.cg.items()}}

    # 2. backmap (and refine) every set with the same model and seed
    outputs, seconds = _backmap_sets(spec, loaded, cg_top, top_path, sets, settings, registry)

    # 3. atomistic evaluation of every backmapped set against the reference
    candidates, candidate_cg, cand_labels = [], [], []
    for label, files in outputs.items():
        if spec.refiner is not None:
            candidates += [files.unrefined, files.aa]
            candidate_cg += [files.cg, files.cg]
            cand_labels += [label, f"{label} +refine"]
        else:
            candidates.append(files.aa)
            candidate_cg.append(files.cg)
            cand_labels.append(label)
    metrics = spec.metrics if spec.metrics is not None else DEFAULT_METRICS
    ev = run_evaluation(EvaluationSpec(
        topology=top_path, reference=Path(spec.reference), candidates=candidates, out=out / "atomistic",
        labels=cand_labels, frames=spec.reference_frames, skip_frames=list(spec.skip_frames), mapping=maps,
        select_reference_only=True,
        candidate_cg=candidate_cg, settings=spec.settings, metrics=metrics, workers=spec.workers,
        batch_size=spec.batch_size, title=spec.title or "assess", save_samples=True,
        scheduler=spec.cluster.scheduler), registry, console)
    samples = np.load(out / "atomistic" / "samples.npz")

    # 4. the CG sets at the CG resolution against the mapped reference
    terms = cg_terms(cg_top)
    cg_samples = {label: sample_cg(terms, path, None if label == IN_DISTRIBUTION else
                                   select_frames(spec.cg_frames, [], trajectory_info(path)[1], str(path)).tolist())
                  for label, path in sets.items()}
    reference_cg = cg_samples.pop(IN_DISTRIBUTION)
    cg_compared = compare_cg(reference_cg, cg_samples)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    plot_cg(reference_cg, cg_samples, figures / "cg_distributions.png")

    # 5. ranking by the bead-force JSD, its spread over random halves, restraint energies
    force_obs = [k for k in ev["observables"] if k.startswith("bead_force:")]
    ranking = _rank_sets(spec, ev, samples, force_obs, cand_labels, cg_compared, outputs, cg_top)
    _plot_forces(samples, force_obs, cand_labels, figures / "bead_forces.png")
    order = _rank([lab for lab in cand_labels if lab.removesuffix(" +refine") != IN_DISTRIBUTION
                   and lab.endswith(" +refine") == (spec.refiner is not None)], ranking)
    result = {
        "backmap": __version__, "title": spec.title,
        "inputs": {"model": str(spec.model), "topology": str(top_path), "mapping": [str(m) for m in maps],
                   "reference": str(spec.reference), "skip_frames": list(map(int, spec.skip_frames)),
                   "cg": {k: str(v) for k, v in spec.cg.items()}},
        "frames": ev["frames"],
        "refiner": None if spec.refiner is None else {"plugin": spec.refiner.name,
                                                      "params": spec.refiner.params.model_dump(mode="json")},
        "ranking": order, "sets": ranking, "cg_level": cg_compared,
        "summary": _summary(order, ranking, spec.refiner is not None),
        "timing": {"backmap_s": seconds, "evaluate_s": ev["timing"]["total_s"],
                   "total_s": round(time.perf_counter() - t0, 1)},
    }
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1, default=json_default, allow_nan=True))
    _write_report(out, result)
    return result


def _backmap_sets(spec: AssessmentSpec, loaded, cg_top, top_path: Path, sets: dict[str, Path],
                  settings: BackmapSettings, registry) -> tuple[dict[str, BackmapOutputs], dict[str, float]]:
    """Backmap (and refine) every CG set with the same model and seed; a set done before is reused."""
    refine_system = None
    if spec.refiner is not None:
        refine_system = RestrainedSystem(cg_top, top_path, spec.settings)
    outputs: dict[str, BackmapOutputs] = {}
    seconds: dict[str, float] = {}
    for label, path in sets.items():
        n = trajectory_info(path)[1]
        idx = np.arange(n) if label == IN_DISTRIBUTION else select_frames(spec.cg_frames, [], n, str(path))
        target = Path(spec.out) / "backmapped" / f"{_slug(label)}.xtc"
        files = BackmapOutputs.beside(target, False, False, spec.refiner is not None, len(idx))
        outputs[label] = files
        marker = {"cg": str(path.resolve()), "size": path.stat().st_size, "frames": idx.tolist(),
                  "model": str(loaded.directory.resolve()), "settings": settings.model_dump(mode="json"),
                  "seed": spec.seed, "refiner": None if spec.refiner is None else
                  [spec.refiner.name, spec.refiner.params.model_dump(mode="json")]}
        if _done(target, marker):
            say(f"assess: {label}: backmapped already ({target}); reusing it")
            continue
        say(f"assess: backmapping {label} ({len(idx)} frames of {path})")
        t = time.perf_counter()
        backmap_to_files(loaded, cg_top, top_path, list(read_cg(cg_top, path, idx)), target, settings,
                         seed=spec.seed, registry=registry, refiner=copy.deepcopy(spec.refiner),
                         refine_system=refine_system, structure=False, cluster=spec.cluster,
                         provenance={"cg": str(path), "assess": label}, where=f"assess ({label})",
                         identity={"cg_file": str(path.resolve())})
        seconds[label] = round(time.perf_counter() - t, 1)
        _mark(target, marker)

    return outputs, seconds


def _rank_sets(spec: AssessmentSpec, ev: dict[str, Any], samples, force_obs: list[str], cand_labels: list[str],
               cg_compared: dict, outputs: dict[str, BackmapOutputs], cg_top) -> dict[str, dict[str, Any]]:
    """Per candidate: the bead-force JSD, its spread over random halves of the frames, the CG-level
    JSD and, when refined, the restraint energy per bead."""
    rng = np.random.default_rng(spec.seed)
    # the bins of the full comparison (the metric's own), so that halves and whole are measured alike
    edges = {o: np.linspace(b["lo"], b["hi"], b["n"] + 1)
             for o in force_obs for b in [ev["observables"][o]["bins"]]}
    ranking: dict[str, dict[str, Any]] = {}
    for lab in cand_labels:
        per_type = {o: ev["observables"][o]["candidates"][lab]["jsd"] for o in force_obs}
        halves = _bootstrap_halves(samples, edges, lab, spec.bootstrap, rng)
        row = {"force_jsd": float(np.mean(list(per_type.values()))) if per_type else float("nan"),
               "force_jsd_per_type": per_type,
               "force_jsd_halves_mean": float(np.mean(halves)) if len(halves) else float("nan"),
               "force_jsd_halves_sd": float(np.std(halves, ddof=1)) if len(halves) > 1 else float("nan"),
               "mean_jsd_atomistic": ev["summary"]["mean_jsd_headline"]["candidates"].get(lab)}
        for name, key in (("cg_rmsd", "cg_rmsd"), ("clash_fraction", "clash_fraction")):
            obs = ev["observables"].get(key)
            if obs is not None and lab in obs.get("candidates", {}):
                row[name] = obs["candidates"][lab].get("mean")
        base = lab.removesuffix(" +refine")
        if base != IN_DISTRIBUTION:
            cg_j = [v["jsd"][base] for v in cg_compared.values() if base in v["jsd"]]
            row["cg_level_mean_jsd"] = float(np.mean(cg_j))
        ranking[lab] = row
    if spec.refiner is not None:
        k = float(getattr(spec.refiner.params, "restraint", float("nan")))
        for label, files in outputs.items():
            e = _restraint_energy_per_bead(cg_top, files.aa, files.cg, k)
            kT = _kT(spec.refiner)
            # a bead in thermal equilibrium with its restraint holds 3/2 kT on average (equipartition):
            # the excess is what the CG conformation costs the atomistic structure
            ranking[f"{label} +refine"]["restraint_energy_per_bead"] = {
                "mean": float(e.mean()), "p99": float(np.percentile(e, 99)), "max": float(e.max()),
                "mean_over_kT": float(e.mean() / kT), "fraction_above_5kT": float(np.mean(e > 5 * kT))}
    return ranking


def _done(path: Path, marker: dict) -> bool:
    stamp = path.with_name(path.name + ".assess.json")
    try:
        return path.is_file() and json.loads(stamp.read_text()).get("digest") == _digest(marker)
    except (OSError, ValueError):
        return False


def _mark(path: Path, marker: dict) -> None:
    with atomic_path(path.with_name(path.name + ".assess.json")) as tmp:
        tmp.write_text(json.dumps({"digest": _digest(marker), **marker}, default=str))


def _kT(refiner) -> float:
    return BOLTZMANN * float(getattr(refiner.params, "temperature", 300.0))


def _bootstrap_halves(samples, edges: dict[str, np.ndarray], label: str, n: int, rng) -> np.ndarray:
    """Mean bead-force JSD over ``n`` draws of a random half of the candidate's frames against a
    random half of the reference's, on the bins of the whole comparison (``edges`` per observable)."""
    if not edges or n < 2:
        return np.zeros(0)
    out = []
    for _ in range(n):
        vals = []
        for o, e in edges.items():
            ref, cand = samples[f"reference/{o}"], samples[f"{label}/{o}"]
            r = ref[rng.permutation(len(ref))[: len(ref) // 2]]
            c = cand[rng.permutation(len(cand))[: len(cand) // 2]]
            vals.append(jsd(histogram(r, e), histogram(c, e)))
        out.append(np.mean(vals))
    return np.asarray(out)


def _restraint_energy_per_bead(cg_top, aa: Path, cg: Path, k: float) -> np.ndarray:
    """½ k |M(x)_I − R_I|² per bead and frame (kJ/mol) of the refined structures."""
    from backmap.system.pbc import Unwrapper, minimum_image

    unwrap = Unwrapper(cg_top.topology)
    out = []
    for fa, fc in zip(read_frames(aa), read_frames(cg)):
        d = minimum_image(cg_top.apply(unwrap(fa.positions, fa.dimensions)) - fc.positions, fc.dimensions)
        out.append(0.5 * k * (d ** 2).sum(-1))
    return np.concatenate(out)


def _rank(labels: list[str], rows: dict[str, dict]) -> list[dict[str, Any]]:
    ordered = sorted(labels, key=lambda lab: rows[lab]["force_jsd"])
    return [{"rank": r + 1, "set": lab, "force_jsd": rows[lab]["force_jsd"],
             "halves_sd": rows[lab]["force_jsd_halves_sd"]} for r, lab in enumerate(ordered)]


def _summary(order: list[dict], rows: dict[str, dict], refined: bool) -> dict[str, Any]:
    """The headline: the ranking, how far apart neighbours are against the spread over halves, and
    how much worse the best CG model is than the in-distribution set."""
    suffix = " +refine" if refined else ""
    ind = rows.get(IN_DISTRIBUTION + suffix, {}).get("force_jsd", float("nan"))
    gaps = [b["force_jsd"] - a["force_jsd"] for a, b in zip(order, order[1:])]
    spread = max((r["halves_sd"] for r in order), default=float("nan"))
    return {"ranking": [r["set"].removesuffix(" +refine") for r in order],
            "in_distribution_force_jsd": ind,
            "smallest_gap": min(gaps) if gaps else float("nan"),
            "largest_halves_sd": spread,
            "best_model_over_in_distribution": (order[0]["force_jsd"] / ind) if order and ind > 0 else float("nan")}


def _plot_forces(samples, observables: list[str], labels: list[str], path: Path) -> None:
    """|F_I| per bead type, log scale so that the clash tail shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not observables:
        return
    fig, axes = plt.subplots(1, len(observables), figsize=(5 * len(observables), 3.6), squeeze=False)
    for ax, o in zip(axes[0], observables):
        ref = samples[f"reference/{o}"].ravel()
        every = [ref] + [samples[f"{lab}/{o}"].ravel() for lab in labels]
        hi = float(np.percentile(np.concatenate(every), 99.9))
        edges = np.linspace(0.0, hi, 80)
        mid = 0.5 * (edges[1:] + edges[:-1])
        ax.semilogy(mid, np.histogram(ref, edges, density=True)[0], "k-", lw=2, label="reference")
        for lab in labels:
            ax.semilogy(mid, np.histogram(samples[f"{lab}/{o}"].ravel(), edges, density=True)[0], lw=1, label=lab)
        ax.set_xlabel(f"|F| on {o.split(':', 1)[1]} beads (kJ/mol/nm)")
        ax.set_ylabel("density")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _write_report(out: Path, result: dict[str, Any]) -> None:
    sets = result["sets"]
    lines = [f"# CG-model assessment{': ' + result['title'] if result.get('title') else ''}", "",
             f"- model: `{result['inputs']['model']}`; reference: `{result['inputs']['reference']}` "
             f"({result['frames']['reference']} frames)",
             *[f"- CG set **{k}**: `{v}`" for k, v in result["inputs"]["cg"].items()]]
    if result["refiner"]:
        lines.append(f"- refiner: {result['refiner']['plugin']}")
    s = result["summary"]
    lines += ["", "## Ranking by the bead-force JSD (thesis table 6.2)", "",
              f"Ranking: **{' < '.join(s['ranking'])}**. Smallest gap between neighbours "
              f"{s['smallest_gap']:.4f} against a spread (s.d. over random halves of the frames) of at most "
              f"{s['largest_halves_sd']:.4f}; in-distribution force JSD {s['in_distribution_force_jsd']:.4f}, "
              f"the best CG model {s['best_model_over_in_distribution']:.1f}× that.", "",
              "| set | force JSD | halves mean ± s.d. | CG RMSD (nm) | clash fraction | CG-level mean JSD | "
              "atomistic mean JSD | restraint energy per bead: mean/kT (thermal 1.5), fraction > 5 kT |",
              "|---|---|---|---|---|---|---|---|"]

    def f(v, fmt=".4f"):
        return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)

    for lab, r in sets.items():
        re_ = r.get("restraint_energy_per_bead")
        lines.append(f"| {lab} | {f(r['force_jsd'])} | {f(r['force_jsd_halves_mean'])} ± "
                     f"{f(r['force_jsd_halves_sd'])} | {f(r.get('cg_rmsd'), '.5f')} | "
                     f"{f(r.get('clash_fraction'), '.5f')} | {f(r.get('cg_level_mean_jsd'))} | "
                     f"{f(r.get('mean_jsd_atomistic'))} | "
                     f"{'—' if re_ is None else format(re_['mean_over_kT'], '.2f') + ', ' + format(re_['fraction_above_5kT'], '.4f')} |")
    lines += ["", "![bead forces](figures/bead_forces.png)", "",
              "## CG-level distributions against the mapped reference (JSD)", "",
              "| observable | " + " | ".join(result["inputs"]["cg"]) + " |",
              "|---|" + "---|" * len(result["inputs"]["cg"])]
    for name, v in result["cg_level"].items():
        lines.append(f"| {name} | " + " | ".join(f(v["jsd"].get(k)) for k in result["inputs"]["cg"]) + " |")
    lines += ["", "![CG distributions](figures/cg_distributions.png)", "",
              "The atomistic evaluation of every backmapped set (bonded distributions, RDFs, energies, "
              "per-observable JSDs): [atomistic/report.md](atomistic/report.md).", "",
              f"Timing: {result['timing']}", "", THESIS_NOTE, ""]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines))



#: the sampling settings ``backmap assess`` takes as options
ASSESS_SAMPLING = ("candidates", "gibbs_sweeps")


class AssessRequest(Seeded, RefinerOptions, NonbondedOptions, ClusterFields, Request):
    """Rank the CG models whose trajectories are ``cg`` by backmapping them with ``model``."""

    model: Path = option(description="A trained model folder (or a run directory whose train step wrote one).")
    reference: Path = option(description="AA reference trajectory (the topology's atoms): mapped to CG it is the "
                                         "in-distribution set.")
    cg: list[Path] = option(default_factory=list,
                            description="CG trajectory of a CG model, in the mapping's bead order (any format "
                                        "MDAnalysis reads: .xtc, .trr, LAMMPS dump, …); labels from the file names. "
                                        "Several: --cg A.xtc B.xtc C.xtc.")
    more_cg: list[Path] = option(default_factory=list, argument=True, description="More CG trajectories.")
    out: Path = option(description="Output folder (metrics.json, report.md, figures/, backmapped/, atomistic/).")
    label: list[str] = option(default_factory=list, description="Name of each CG set, in order (default: file "
                                                                "names).")
    topology: Path | None = option(None, "AA topology (default: the model's).")
    mapping: list[Path] = option(default_factory=list, description="Mapping (default: the model's).")
    frames: str | None = option(None, "Reference frames, 'start:stop:step' or '0,5,9'.")
    skip_frames: str | None = option(None, "Reference frames left out, e.g. 9,19,41 (training frames).")
    cg_frames: str | None = option(None, "Frames of every CG set, 'start:stop:step' or '0,5,9'.")
    sampling: BackmapSettings = option(default_factory=BackmapSettings, flatten=ASSESS_SAMPLING,
                                       description="How the frames are sampled.")
    refiner: str | None = option(None, "Also refine every backmapped frame with this refiner (openmm, langevin, "
                                       "mala) under the CG restraint; both the generator's and the refined "
                                       "structures are assessed.", name="--refine")
    bootstrap: int = option(20, "Random halves of the frames drawn for the spread of the force JSD.", ge=0)
    batch_size: int = option(6, "Frames per evaluation batch.", ge=1)


def assess_models(request: AssessRequest) -> dict[str, Any]:
    """``backmap assess``: the CG sets named and checked, then :func:`run_assessment`; returns the
    contents of ``metrics.json``."""
    r = request.model_copy(update={"cg": [*request.cg, *request.more_cg], "more_cg": []})
    if not r.cg:
        raise BackmapError("assess: give the CG trajectories of the models to assess (--cg A.xtc B.xtc …)")
    for p in [r.reference, *r.cg]:
        if not Path(p).is_file():
            raise BackmapError("no such file", source=p)
    if r.label:
        if len(r.label) != len(r.cg):
            raise BackmapError(f"{len(r.label)} labels for {len(r.cg)} CG trajectories")
        sets = dict(zip(r.label, r.cg))
        if len(sets) != len(r.cg):
            raise BackmapError("--label: two CG sets have the same label")
    else:
        sets = labels_from_paths(list(r.cg))
    check_outputs(r.written_paths(), r.read_paths(), "assess", folders=("--out",))
    spec = AssessmentSpec(model=r.model, reference=r.reference, cg=sets, out=r.out, topology=r.topology,
                          mapping=list(r.mapping), reference_frames=r.frames, skip_frames=skip_list(r.skip_frames),
                          cg_frames=r.cg_frames, backmap=r.sampling,
                          refiner=r.make_refiner(r.refiner, r.seed) if r.refiner else None,
                          settings=r.nonbonded(), seed=r.seed, cluster=r.cluster(), bootstrap=r.bootstrap,
                          batch_size=r.batch_size, workers=r.workers)
    with OutputLock(r.out, where="assess"):
        return run_assessment(spec)
