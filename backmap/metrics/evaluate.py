"""The evaluation run: check the inputs, let every metric sample every trajectory batch by batch
(in worker processes when there are several cores), compare, write ``metrics.json`` and the report.

Used by the ``backmap evaluate`` command and the ``evaluate`` recipe step alike.
"""
from __future__ import annotations

import functools
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from pydantic import ValidationError

from backmap._version import __version__
from backmap.errors import BackmapError
from backmap.forcefield import NonbondedSettings
from backmap.system.io import atomic_path, read_frames, trajectory_info
from backmap.metrics.compare import Compared, compare, mean_jsd
from backmap.metrics.context import EvalContext, FrameBatch
from backmap.metrics.spec import Analysis, Histogram, Observable
from backmap.metrics.timing import TimeStep, time_step
from backmap.progress import progress

REFERENCE = "reference"


@dataclass
class EvaluationSpec:
    """Everything an evaluation needs; paths are files, ``metrics`` names installed metric plugins
    (with parameters: ``(name, params)``; None = all installed)."""

    topology: Path
    reference: Path
    candidates: list[Path]
    out: Path
    labels: list[str] | None = None
    frames: str | None = None
    skip_frames: list[int] = field(default_factory=list)
    mapping: list[Path] = field(default_factory=list)
    cg: Path | None = None
    #: ``frames`` and ``skip_frames`` select the reference's frames only; candidates are used whole
    #: (e.g. candidates backmapped from other CG sets, or from the selected reference frames)
    select_reference_only: bool = False
    #: per candidate, the CG input it was made from (instead of one ``cg`` for all; None = none)
    candidate_cg: list[Path | None] | None = None
    settings: NonbondedSettings = field(default_factory=NonbondedSettings)
    metrics: list[str | tuple[str, dict]] | None = None
    headline: list[str] | None = None
    workers: int | None = None
    batch_size: int = 6
    title: str = ""
    #: a Dask scheduler (address, scheduler file, or slurm/pbs/…) for the batches instead of local processes
    scheduler: str | None = None
    #: also write every sample to ``samples.npz`` (for analyses beyond the report)
    save_samples: bool = False
    #: time between consecutive frames of the files (ps), overriding their frame times (dynamics
    #: metrics): one value for all, or per label (``reference``, candidate labels; ``*`` = the others)
    dt: float | dict[str, float] | None = None


@dataclass
class Trajectory:
    label: str
    path: Path
    frames: np.ndarray  # selected frame indices
    n_frames: int  # in the file
    cg: Path | None = None  # its CG input, frame by frame (CG consistency), when it has the same frames


# --------------------------------------------------------------------------- inputs

def _labels(spec: EvaluationSpec) -> list[str]:
    if spec.labels is not None:
        if len(spec.labels) != len(spec.candidates):
            raise BackmapError(f"{len(spec.labels)} labels for {len(spec.candidates)} candidates")
        labels = [str(x) for x in spec.labels]
    else:
        labels = [p.stem for p in spec.candidates]
        for k, lab in enumerate(labels):  # same file names in different folders
            if labels.count(lab) > 1:
                labels[k] = f"{lab}{k + 1}"
    bad = [lab for lab in labels if lab == REFERENCE or labels.count(lab) > 1 or not lab]
    if bad:
        raise BackmapError(f"candidate label {bad[0]!r} is used twice or reserved; give distinct labels")
    return labels


def step_settings(mdp: Path | None, nonbonded: dict[str, Any], where: str, source: str | None = None
                  ) -> NonbondedSettings:
    """A recipe step's non-bonded settings: its ``mdp``, then its ``nonbonded`` fields on top; a bad
    field is a one-line error naming the recipe key ``where``."""
    settings = NonbondedSettings.from_mdp(mdp) if mdp is not None else NonbondedSettings()
    if not nonbonded:
        return settings
    try:
        return NonbondedSettings.model_validate({**settings.model_dump(), **nonbonded})
    except Exception as exc:
        raise BackmapError(f"{where}: {str(exc).splitlines()[0]}", source=source) from exc


def _cg_inputs(spec: EvaluationSpec) -> list[Path | None]:
    """The CG input of each candidate: ``candidate_cg``, else ``cg`` for all."""
    if spec.candidate_cg is None:
        return [spec.cg] * len(spec.candidates)
    if spec.cg is not None:
        raise BackmapError("give either one CG input for all candidates or one per candidate, not both")
    if len(spec.candidate_cg) != len(spec.candidates):
        raise BackmapError(f"{len(spec.candidate_cg)} CG inputs for {len(spec.candidates)} candidates")
    return list(spec.candidate_cg)


def _select(path: Path, n_frames: int, spec: EvaluationSpec) -> np.ndarray:
    from backmap.system.io import parse_frames

    frames = parse_frames(spec.frames, n_frames, str(path))
    skip = np.asarray(spec.skip_frames, int)
    bad = skip[(skip < 0) | (skip >= n_frames)]
    if len(bad):
        raise BackmapError(f"skip frame {bad[0]} out of range (the trajectory has {n_frames} frames)", source=path)
    frames = frames[~np.isin(frames, skip)]
    if len(frames) < 2:
        raise BackmapError(f"{len(frames)} frame(s) left after the frame selection; need at least 2", source=path)
    return frames


def _dt_for(spec: EvaluationSpec, labels: list[str]) -> dict[str, float | None]:
    """The time-step override of each trajectory label (None: its frame times)."""
    if spec.dt is None or isinstance(spec.dt, (int, float)):
        return {lab: spec.dt for lab in labels}
    unknown = sorted(set(spec.dt) - set(labels) - {"*"})
    if unknown:
        raise BackmapError(f"dt: no trajectory labelled {unknown[0]!r} (labels: {', '.join(labels)})")
    bad = [k for k, v in spec.dt.items() if not v > 0]
    if bad:
        raise BackmapError(f"dt: the time step of {bad[0]!r} must be positive")
    return {lab: spec.dt.get(lab, spec.dt.get("*")) for lab in labels}


def _time_steps(trajectories: list[Trajectory], dt: dict[str, float | None]) -> dict[str, TimeStep]:
    """τ of every trajectory (reads the frame times; called only when a metric asks)."""
    return {t.label: time_step(t.path, t.frames, dt[t.label]) for t in trajectories}


def _trajectories(spec: EvaluationSpec, n_atoms: int) -> list[Trajectory]:
    out = []
    for label, path in [(REFERENCE, spec.reference), *zip(_labels(spec), spec.candidates)]:
        path = Path(path)
        atoms, n_frames = trajectory_info(path)
        if atoms != n_atoms:
            raise BackmapError(f"{atoms} atoms in the trajectory but {n_atoms} in the topology", source=path)
        whole = spec.select_reference_only and label != REFERENCE
        frames = np.arange(n_frames) if whole else _select(path, n_frames, spec)
        if len(frames) < 2:
            raise BackmapError(f"{len(frames)} frame(s); need at least 2", source=path)
        out.append(Trajectory(label, path, frames, n_frames))
    return out


# --------------------------------------------------------------------------- sampling

# state of the sampling processes, set before forking (fork shares it without pickling)
_STATE: dict[str, Any] = {}


def _init_worker() -> None:
    """One core per worker process: torch, OpenBLAS (numpy's matrix products) and MDAnalysis'
    OpenMP would each start a thread per core and the processes would fight over the cores."""
    import torch

    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # optional: without it the BLAS/OpenMP pools keep their size
        pass


def _sample(task: tuple[int, int, np.ndarray, int]) -> tuple[int, int, dict[str, Any], float]:
    """Samples of every metric for one batch of frames of one trajectory (with the selected frame
    before it, ``previous`` ≥ 0, when a metric needs consecutive frames)."""
    t0 = time.perf_counter()
    t_index, chunk, frames, previous = task
    ctx: EvalContext = _STATE["context"]
    traj: Trajectory = _STATE["trajectories"][t_index]
    paired = ctx.frame_pairs and previous >= 0
    read = list(read_frames(traj.path, frames=([previous] if paired else []) + frames.tolist()))
    first = read.pop(0) if paired else None
    before = (first.positions, first.dimensions) if first is not None else None
    x = np.stack([f.positions for f in read])
    dims = np.stack([f.dimensions for f in read])
    cg = None
    if traj.cg is not None:
        cg = np.stack([f.positions for f in read_frames(traj.cg, frames=frames.tolist())])
    tau = ctx.time_steps[traj.label].tau if ctx.frame_pairs else None
    batch = FrameBatch(ctx, x, dims, frames, cg, traj.label, previous=before, time_step=tau)
    out: dict[str, Any] = {}
    for metric in _STATE["metrics"]:
        out.update(metric.samples(batch, ctx))
    return t_index, chunk, out, time.perf_counter() - t0


@dataclass
class SamplingJob:
    """The batches of an evaluation as a job for :func:`backmap.parallel.run_blocks` (Dask workers
    get the prepared metrics once and read their frames from the shared file system)."""

    context: EvalContext
    trajectories: list[Trajectory]
    metrics: list

    def setup(self, threads: int | None = None) -> None:
        pass

    def run_block(self, tasks) -> dict[str, Any]:
        _STATE.update(context=self.context, trajectories=self.trajectories, metrics=self.metrics)
        return {"result": [_sample(t) for t in tasks]}


def _tasks(trajectories: list[Trajectory], batch_size: int) -> list[tuple[int, int, np.ndarray, int]]:
    """(trajectory, chunk, frames, the selected frame before them or −1) per batch."""
    tasks = []
    for t, traj in enumerate(trajectories):
        for c, start in enumerate(range(0, len(traj.frames), batch_size)):
            previous = int(traj.frames[start - 1]) if start else -1
            tasks.append((t, c, traj.frames[start:start + batch_size], previous))
    return tasks


def _workers(requested: int | None, n_tasks: int) -> int:
    if requested is not None:
        return max(1, min(requested, n_tasks))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, n_tasks))


def _run_tasks(tasks, workers: int) -> Iterator[tuple[int, int, dict[str, Any], float]]:
    if workers == 1 or "fork" not in mp.get_all_start_methods():
        import torch

        # one torch thread here too: its OpenMP threads spin-wait, and on a busy machine a
        # second thread makes the many small tensor operations of a frame ~10× slower
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield from map(_sample, tasks)
        finally:
            torch.set_num_threads(threads)
        return
    with mp.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap_unordered(_sample, tasks)


def _collect(parts: dict[tuple[int, int], dict[str, Any]], trajectories: list[Trajectory]) -> dict[str, dict]:
    """Samples per trajectory label and observable, batches joined in frame order."""
    out: dict[str, dict[str, Any]] = {}
    for t, traj in enumerate(trajectories):
        chunks = [parts[k] for k in sorted(k for k in parts if k[0] == t)]
        names = list(dict.fromkeys(n for c in chunks for n in c))
        joined = {}
        for n in names:
            pieces = [c[n] for c in chunks if n in c]
            joined[n] = (Histogram.concatenate(pieces) if isinstance(pieces[0], Histogram)
                         else np.concatenate(pieces))
        out[traj.label] = joined
    return out


# --------------------------------------------------------------------------- the run

def _metrics(spec: EvaluationSpec, registry) -> list:
    # default: every installed metric, in the order their packages list them
    chosen = spec.metrics if spec.metrics is not None else [i.name for i in registry if i.kind == "metric"]
    out = []
    for item in chosen:
        name, params = (item, {}) if isinstance(item, str) else item
        cls = registry.get("metric", name, where="metrics").cls
        try:
            out.append(cls(params))
        except ValidationError as exc:
            from backmap.engine.recipe import format_errors

            raise BackmapError(format_errors(exc, "metrics", (name, "params"), cls.Params)) from None
    return out


def run_evaluation(spec: EvaluationSpec, registry=None, console=None) -> dict[str, Any]:
    """Evaluate the candidates against the reference; write ``metrics.json``, ``report.md`` and
    ``figures/`` into ``spec.out`` and return the contents of ``metrics.json``. Notes (skipped
    metrics and why) also go to ``console`` (a rich console) when given."""
    from backmap.engine.loaders import load_mapping
    from backmap.metrics.report import write_report
    from backmap.engine.registry import default_registry
    from backmap.engine.loaders import load_topology

    t_start = time.perf_counter()
    registry = registry or default_registry()
    topology = load_topology(spec.topology, registry)
    trajectories = _trajectories(spec, topology.n_atoms)
    notes: list[str] = []
    cg_top = None
    inputs = _cg_inputs(spec)
    given = [p for p in inputs if p is not None]
    if given and not spec.mapping:
        raise BackmapError("a CG input (--cg) needs the mapping (--mapping) to compare with", source=given[0])
    if spec.mapping:
        # the CG topology also serves metrics that need only the mapping (bead forces)
        cg_top = load_mapping(spec.mapping, topology, registry).cg_topology(topology)
        if not given:
            notes.append("a mapping was given but no CG input (--cg): CG consistency not measured")
        # one CG input for all: the reference is paired with it too (the mapped reference's own RMSD)
        paired = [(trajectories[0], spec.cg)] if spec.cg is not None else []
        for traj, cg_path in paired + list(zip(trajectories[1:], inputs)):
            if cg_path is None:
                continue
            beads, n_cg = trajectory_info(cg_path)
            if beads != cg_top.n_beads:
                raise BackmapError(f"{beads} beads in the CG trajectory but {cg_top.n_beads} in the mapping",
                                   source=cg_path)
            if traj.n_frames == n_cg:
                traj.cg = Path(cg_path)
            else:
                notes.append(f"cg_rmsd: {traj.label} has {traj.n_frames} frames but the CG input {n_cg}; "
                             "not compared")
    ref = trajectories[0]
    first = next(read_frames(ref.path, frames=[int(ref.frames[0])]))
    dt = _dt_for(spec, [t.label for t in trajectories])
    context = EvalContext(topology, spec.settings, cg_top, has_cg_input=bool(given),
                          time_steps=functools.partial(_time_steps, trajectories, dt))
    context.reference_frame = context.unwrapper(first.positions, first.dimensions)

    metrics = _metrics(spec, registry)
    observables: list[Observable] = []
    active = []
    produced: dict[str, list[str]] = {}  # metric → its observables (for its analyse)
    for m in metrics:
        obs = m.prepare(context)
        notes += [f"{m.name}: {n}" for n in getattr(m, "notes", None) or []]
        if not obs:
            notes.append(f"{m.name}: skipped — {m.skipped or 'nothing to measure'}")
            continue
        active.append(m)
        observables += obs
        produced[m.name] = [o.name for o in obs]
    if context.frame_pairs:  # τ read once here, not by every worker
        _ = context.time_steps
    names = [o.name for o in observables]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise BackmapError(f"metrics: observable {sorted(dup)[0]!r} is produced by two metrics")
    t_prepared = time.perf_counter()

    tasks = _tasks(trajectories, spec.batch_size)
    workers = _workers(spec.workers, len(tasks))
    parts: dict[tuple[int, int], dict[str, Any]] = {}
    busy = 0.0
    n_frames = sum(len(t.frames) for t in trajectories)
    if spec.scheduler is not None:  # batches as Dask tasks on a running (or batch-system) cluster
        from backmap.parallel import ClusterOptions, run_blocks

        job = SamplingJob(context, trajectories, active)
        cluster = ClusterOptions(scheduler=spec.scheduler)
        for (t, c, out, seconds), in (r["result"] for r in run_blocks(job, [[task] for task in tasks], cluster,
                                                                         description=f"evaluate ({n_frames} frames)",
                                                                         unit="batches", where="evaluate")):
            parts[(t, c)] = out
            busy += seconds
        workers = 0
    else:
        _STATE.update(context=context, trajectories=trajectories, metrics=active)
        try:
            for t, c, out, seconds in progress(_run_tasks(tasks, workers), total=len(tasks),
                                               description=f"evaluate ({n_frames} frames, {workers} processes)"):
                parts[(t, c)] = out
                busy += seconds
        finally:
            _STATE.clear()
    samples = _collect(parts, trajectories)
    t_sampled = time.perf_counter()

    labels = [t.label for t in trajectories[1:]]
    compared: list[Compared] = [compare(o, {lab: s[o.name] for lab, s in samples.items() if o.name in s},
                                        REFERENCE, labels) for o in observables]
    by_name = {c.observable.name: c for c in compared}
    analyses = _analyse(active, produced, samples, context, notes)
    t_analysed = time.perf_counter()
    headline = spec.headline if spec.headline is not None else default_headline(observables)
    missing = [n for n in headline if n not in by_name]
    if missing:
        notes.append(f"headline observables not produced: {', '.join(missing)}")
    result: dict[str, Any] = {
        "backmap": __version__,
        "title": spec.title,
        "inputs": {"topology": str(spec.topology), "reference": str(spec.reference),
                   "candidates": {lab: str(t.path) for lab, t in zip(labels, trajectories[1:])},
                   "mapping": [str(m) for m in spec.mapping], "cg": str(spec.cg) if spec.cg else None,
                   **({"candidate_cg": {lab: None if c is None else str(c) for lab, c in zip(labels, inputs)}}
                      if spec.candidate_cg is not None else {}),
                   "skip_frames": list(map(int, spec.skip_frames)), "frames": spec.frames,
                   **({"dt": spec.dt} if spec.dt is not None else {})},
        "frames": {t.label: len(t.frames) for t in trajectories},
        "frame_indices": {t.label: t.frames.tolist() for t in trajectories},
        "settings": spec.settings.model_dump(),
        "metrics": {m.name: m.params.model_dump() for m in active},
        "observables": {c.observable.name: {"kind": c.observable.kind, "family": c.observable.family,
                                            "unit": c.observable.unit, "description": c.observable.description,
                                            **c.result} for c in compared},
        "summary": {"mean_jsd_headline": mean_jsd(compared, headline, labels),
                    "mean_jsd_all": mean_jsd(compared, None, labels)},
        "notes": notes,
    }
    if context.has_time_steps:  # a dynamics metric asked: say which τ each trajectory has
        result["time_steps"] = {lab: ts.as_dict() for lab, ts in context.time_steps.items()}
    if analyses:
        result["analyses"] = {name: a.result for name, a in analyses.items()}
    if console is not None:
        for note in notes:
            console.print(f"note: {note}", highlight=False)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    if spec.save_samples:
        _save_samples(out / "samples.npz", samples)
    write_report(out, result, compared, labels, analyses)
    t_done = time.perf_counter()
    result["timing"] = {"prepare_s": round(t_prepared - t_start, 2), "sampling_s": round(t_sampled - t_prepared, 2),
                        "batches_s": round(busy, 2), "workers": workers,
                        "analyse_s": round(t_analysed - t_sampled, 2), "report_s": round(t_done - t_analysed, 2), "total_s": round(t_done - t_start, 2)}
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1, default=json_default, allow_nan=True))
    return result


def _analyse(metrics: list, produced: dict[str, list[str]], samples: dict[str, dict[str, Any]],
             context: EvalContext, notes: list[str]) -> dict[str, Analysis]:
    """Each metric's ``analyse`` (optional) over its own observables' samples of every trajectory."""
    out = {}
    for m in metrics:
        if not hasattr(m, "analyse"):
            continue
        own = {lab: {n: v for n, v in s.items() if n in produced[m.name]} for lab, s in samples.items()}
        analysis = m.analyse(own, context)
        if analysis is not None:
            notes += [f"{m.name}: {n}" for n in analysis.notes]
            out[m.name] = analysis
    return out


def _save_samples(path: Path, samples: dict[str, dict[str, Any]]) -> None:
    """Arrays keyed ``label/observable`` (histograms as ``…/counts`` and ``…/expected``)."""
    arrays = {}
    for label, obs in samples.items():
        for name, v in obs.items():
            if isinstance(v, Histogram):
                arrays[f"{label}/{name}/counts"] = v.counts
                if v.expected is not None:
                    arrays[f"{label}/{name}/expected"] = v.expected
            else:
                arrays[f"{label}/{name}"] = v
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def default_headline(observables: Sequence[Observable]) -> list[str]:
    """The observables EVALUATION.md's mean JSD is over, by family: bonded distributions, LJ energy
    per molecule and RDFs, and those a metric puts there (``Observable.headline``: the potential
    energy per molecule when the topology has charges — else it would double-count the bonded
    terms, but with charges it is the only observable that sees the electrostatics)."""
    fams = {"bond", "angle", "dihedral", "improper", "rdf", "rama"}
    return [o.name for o in observables if o.kind in ("distribution", "histogram")
            and (o.family in fams or o.name.startswith("lj_per_molecule") or o.headline)]


def json_default(o: Any) -> Any:
    """JSON for numpy scalars and arrays and paths (metrics.json of evaluate and assess)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))
