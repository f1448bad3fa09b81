"""The one backmapping path: a trained model, CG frames → AA files. ``backmap apply`` and the
recipe's ``backmap`` step both call :func:`backmap_to_files`, so they write the same files:

- ``OUT`` — the AA trajectory or structure (refined, if a refiner is given);
- ``OUT_unrefined.SUFFIX`` — the generator's own output, when refined (``.xtc`` when ``OUT`` is a
  ``.gro``/``.pdb`` of several frames: those formats hold one frame when read back);
- ``OUT.gro`` — the first frame as a structure (``structure=True``, for a trajectory ``OUT``);
- ``OUT.top`` — the system's GROMACS topology, usable from there (for ``gmx grompp``);
- ``OUT_cg.trr`` — the CG frames as used, frame for frame, at full precision (what refine and
  evaluate pair with);
- ``OUT_refine.csv`` / ``.png`` — the refinement log, when refined;
- ``OUT.json`` — provenance: model, settings, seed, refiner, plugin versions, timings.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from backmap.forcefield.bond_check import TOLERANCE, BondCheck
from backmap.forcefield.settings import model_epsilon_rf
from backmap.engine.models import Model
from backmap.engine.assembly import make_backmapper
from backmap.engine.plugin import RefineInputs, offer_refine_inputs
from backmap.engine.pipeline import plugin_versions
from backmap.engine.registry import Registry, default_registry
from backmap.devices import on_device, resolve_device
from backmap.errors import BackmapError
from backmap.parallel import ClusterOptions, PartStore, ProcessLocal, blocks_of, frame_rng, run_blocks
from backmap.progress import say
from backmap.refinement.restrained import (BondSpread, RestrainedSystem, limit_refiner_threads, plot_log, refine_batch,
                                          report_after_refinement, write_log)
from backmap.sampling.backmapper import BackmapSettings, trajectory_mode, write_aa, write_topology
from backmap.system.claim import claim_outputs
from backmap.system.io import Frame, atomic_path, write_frames
from backmap.system.mapping import CGTopology


@dataclass(frozen=True)
class BackmapOutputs:
    """The files one backmapping run writes (see the module docstring)."""

    aa: Path
    cg: Path
    provenance: Path
    structure: Path | None = None
    topology: Path | None = None
    unrefined: Path | None = None
    refine_log: Path | None = None

    @classmethod
    def beside(cls, out: Path, structure: bool, topology: bool, refined: bool, n_frames: int = 1) -> "BackmapOutputs":
        out = Path(out)
        stem = out.with_suffix("")
        single = out.suffix.lower() in (".gro", ".pdb")  # read back, these formats keep only one frame
        unrefined = out.suffix if not single or n_frames == 1 else ".xtc"
        return cls(aa=out, cg=Path(f"{stem}_cg.trr"), provenance=Path(f"{stem}.json"),
                   structure=Path(f"{stem}.gro") if structure and not single else None,
                   topology=Path(f"{stem}.top") if topology else None,
                   unrefined=Path(f"{stem}_unrefined{unrefined}") if refined else None,
                   refine_log=Path(f"{stem}_refine.csv") if refined else None)

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items() if v is not None}

    def written(self) -> list[tuple[str, Path]]:
        """Every file (and the one folder) the run writes, labelled for errors; the output given
        comes first (it is the one locked, :func:`backmap.system.claim.claim_outputs`)."""
        rows = [(_WRITTEN[k], v) for k, v in self.__dict__.items() if v is not None]
        if self.refine_log is not None:
            rows.append(("the refinement log's plot", self.refine_log.with_suffix(".png")))
        return rows + [(PARTS, PartStore.folder_of(self.aa))]


#: how errors name the files a backmapping run writes beside its output
_WRITTEN = {"aa": "--out", "cg": "the CG frames as used, beside --out",
            "provenance": "the provenance file beside --out", "structure": "the first frame's structure beside --out",
            "topology": "the topology copied beside --out", "unrefined": "the generator's output beside --out",
            "refine_log": "the refinement log beside --out"}
#: the hidden folder of finished blocks (a killed run resumes from it)
PARTS = "the parts folder of a resumable run"


@dataclass(frozen=True)
class ClashRepairReport:
    rounds: int
    units_redrawn: int
    frames_with_clashes: int

    def as_dict(self) -> dict[str, int]:
        return {"rounds": self.rounds, "units redrawn": self.units_redrawn,
                "frames with clashes": self.frames_with_clashes}


@dataclass(frozen=True)
class GuidanceReport:
    steps: int
    placements_polished: int
    mean_energy_drop: float  # kJ/mol per placement

    def as_dict(self) -> dict[str, float]:
        return {"steps": self.steps, "placements polished": self.placements_polished,
                "mean energy drop per placement (kJ/mol)": self.mean_energy_drop}


@dataclass(frozen=True)
class ProjectionReport:
    cg_rmsd_before: float  # nm
    cg_rmsd_after: float  # nm
    largest_move: float  # nm
    frames_left_unprojected: int
    molecules_left_unprojected: int

    def as_dict(self) -> dict[str, float]:
        return {"CG RMSD before (nm)": self.cg_rmsd_before, "CG RMSD after (nm)": self.cg_rmsd_after,
                "largest move (nm)": self.largest_move, "frames left unprojected": self.frames_left_unprojected,
                "molecules left unprojected": self.molecules_left_unprojected}


@dataclass
class Backmapped:
    """What one backmapping run wrote and measured; :meth:`report` is its run-report form."""

    files: BackmapOutputs
    frames: int
    atoms: int
    generator: str
    seconds_per_frame: float
    generator_seconds_per_frame: float
    placements_per_second: float
    transfer: Any = None
    chained: bool = False
    cluster: dict[str, Any] | None = None
    stereocentres_kept: float | None = None  # share of neighbour triples signed as in the reference
    broken_bonds: float | None = None  # share of the generator's bonds off the force field's length
    clash_repair: ClashRepairReport | None = None
    guidance: GuidanceReport | None = None
    cg_projection: ProjectionReport | None = None
    moves: dict[str, dict[str, Any]] | None = None  # per move plugin: its summary over the frames
    refinement: dict[str, Any] | None = None

    def report(self) -> dict[str, Any]:
        """Human-readable rows for run reports and the provenance file ``OUT.json``."""
        out: dict[str, Any] = {"frames": self.frames, "atoms": self.atoms, "generator": self.generator,
                               "seconds per frame": self.seconds_per_frame,
                               "generator seconds per frame": self.generator_seconds_per_frame,
                               "placements per second": self.placements_per_second}
        if self.transfer:
            out["transfer"] = self.transfer
        if self.chained:
            out["trajectory mode"] = "frames in order, each conditioned on the AA frame written before it"
        if self.cluster is not None:
            out["cluster"] = self.cluster
        if self.stereocentres_kept is not None:
            out["stereocentres kept"] = self.stereocentres_kept
        if self.broken_bonds is not None:
            out["broken bonds"] = self.broken_bonds
        for key, part in (("clash repair", self.clash_repair), ("energy guidance", self.guidance),
                          ("CG projection", self.cg_projection)):
            if part is not None:
                out[key] = part.as_dict()
        for name, summary in (self.moves or {}).items():
            out[f"move {name}"] = summary
        return out | (self.refinement or {})


#: the built-in moves whose run summary is a section of its own (:class:`Backmapped`), not a "move" row
SECTIONS = ("repair_clashes", "polish", "project_cg")

#: share of broken bonds in the generator's output above which apply warns (DBM's own sPS output: 0.1 %)
BROKEN_BONDS_WARNING = 0.01


def offer_inputs(refiner, model: Path, settings: BackmapSettings) -> None:
    """What the backmapping used that a refiner may take (before its ``prepare``): the model and
    the stereo reference whose hands the sampler kept."""
    offer_refine_inputs(refiner, RefineInputs(Path(model), settings.stereo_reference))


@dataclass
class BackmapJob(ProcessLocal):
    """Backmapping (and refining) blocks of CG frames, as one process or a Dask worker does it: the
    model, system and settings travel once; the backmapper and the prepared refiner are built in
    each process (:meth:`setup`). Every frame draws from its own streams (:func:`frame_rng` of the
    seed and the frame's index), so the output does not depend on the number of workers."""

    model: Model
    cg_topology: CGTopology
    settings: BackmapSettings
    seed: int = 0
    refiner: Any = None
    refine_system: RestrainedSystem | None = None
    refine_seed: int = 0
    where: str = "backmap"
    device: str = "auto"

    def setup(self, threads: int | None = None) -> None:
        """Build the backmapper and prepare a copy of the refiner (``refiner`` stays the unprepared
        template: a job moved between workers carries no live state)."""
        if getattr(self, "_local_device", None) is None:
            self._local_device = resolve_device(self.device)
        if getattr(self, "_local_backmapper", None) is None:
            self.model.generator.to(self._local_device)
            with on_device(self._local_device):
                settings = self.settings
                if settings.epsilon_rf is None and self.model.mdp is not None:  # the model's reaction field
                    settings = settings.model_copy(update={"epsilon_rf": model_epsilon_rf(self.model.mdp)})
                self._local_backmapper = make_backmapper(self.cg_topology, self.model.generator, settings,
                                                         self.seed, self.model.channels, default_registry(),
                                                         self.where)
        if not hasattr(self, "_local_bonds"):
            self._local_bonds = BondCheck.of(self.cg_topology.topology)
        if self.refiner is not None and getattr(self, "_local_refiner", None) is None:
            refiner = copy.deepcopy(self.refiner).to(self._local_device)
            limit_refiner_threads(refiner, threads)
            offer_inputs(refiner, self.model.directory, self.settings)
            with on_device(self._local_device):
                refiner.prepare(self.refine_system)
            self._local_refiner = refiner

    @property
    def chained(self) -> bool:
        """Trajectory mode: every frame is generated from the one written before it."""
        return trajectory_mode(self.model.generator, self.settings)

    def carry_over(self, before: dict[str, Any] | None) -> None:
        """Go on from the last frame written by the block ``before`` (None: start the trajectory)."""
        self._local_previous = None if before is None else np.asarray(before["aa"][-1], np.float64)

    def run_block(self, frames: Sequence[Frame]) -> dict[str, Any]:
        with on_device(self._local_device):
            return self._run_block(frames)

    def _run_block(self, frames: Sequence[Frame]) -> dict[str, Any]:
        bm = self._local_backmapper
        raw, refined, rows = [], [], []
        for k, cg in enumerate(frames):
            t0 = time.perf_counter()
            placed = bm.sampler.placements
            polished = dict(bm.sampler.polish_log)
            repaired = bm.sampler.repaired_units
            previous = getattr(self, "_local_previous", None) if self.chained else None
            aa, kept = bm.backmap_frame(cg, frame_rng(self.seed, _frame_key(cg, k)), previous,
                                        start=getattr(cg, "start", None))  # morphing scheme B
            row: dict[str, Any] = {"frame": cg.index, "generator_seconds": time.perf_counter() - t0,
                                   "placements": bm.sampler.placements - placed}
            if kept is not None:
                row["stereocentres_kept"] = kept
            if self._local_bonds is not None:
                row["broken_bonds"] = self._local_bonds.broken_fraction(aa.positions, cg.dimensions)
            reports = bm.move_reports[-1] if bm.moves else {}
            if "repair_clashes" in reports:
                row["clash_units_redrawn"] = bm.sampler.repaired_units - repaired
            if bm.sampler.polish is not None or "polish" in reports:
                row.update({f"polish_{k}": v - polished[k] for k, v in bm.sampler.polish_log.items()})
            if "project_cg" in reports:
                row.update({f"projection_{k}": v for k, v in reports["project_cg"].items()})
            moves = {name: r for name, r in reports.items() if name not in SECTIONS}
            if moves:
                row["moves"] = moves
            raw.append(aa.positions.astype(np.float32))
            if self.refiner is not None:
                (done, log), = refine_batch(self._local_refiner, self.refine_system, [aa], [cg],
                                            frame_rng(self.refine_seed, _frame_key(cg, k), stream=1))
                refined.append(done.positions.astype(np.float32))
                row.update(log)
            if self.chained:  # what is written is what the next frame goes on from
                self._local_previous = np.asarray((refined if self.refiner is not None else raw)[-1], np.float64)
            rows.append(row)
        out: dict[str, Any] = {"aa": np.stack(refined if self.refiner is not None else raw), "rows": rows}
        if self.refiner is not None:
            out["unrefined"] = np.stack(raw)
        return out


def _frame_key(frame: Frame, position: int) -> int:
    return frame.index if frame.index is not None else position


def backmap_to_files(model: Model, cg_topology: CGTopology, topology_path: Path, frames: Sequence[Frame], out: Path,
                     settings: BackmapSettings | None = None, seed: int = 0, registry: Registry | None = None,
                     refiner: Any = None, refine_system: RestrainedSystem | None = None, structure: bool = True,
                     provenance: dict[str, Any] | None = None, where: str = "backmap",
                     cluster: ClusterOptions | None = None, identity: dict[str, Any] | None = None,
                     reads: Sequence[tuple[str, Path | None]] = (), device: str = "auto") -> "Backmapped":
    """Backmap ``frames`` (CG, the mapping's bead order) with ``model`` into ``out`` and the files
    beside it; with ``refiner`` (not yet prepared: it is prepared here, against ``refine_system``),
    every frame is refined under the CG restraint after the generator. Frames run in blocks, here
    or on the Dask cluster of ``cluster``; finished blocks wait in a hidden store beside ``out``, so
    a killed run resumes (``identity``: what else, beside model, frames and settings, must match
    for that, e.g. the CG file). Every file written is first checked against the model, the
    topology and ``reads`` (labelled input files), and ``out`` is locked for the run
    (:func:`backmap.system.claim.claim_outputs`). The generator, the sampler and the refiner run on
    ``device`` (:func:`backmap.devices.resolve_device`). Returns what was written and measured
    (:class:`Backmapped`)."""
    files = BackmapOutputs.beside(out, structure, Path(topology_path).suffix == ".top", refiner is not None, len(frames))
    inputs = [("the model package", model.directory), ("the topology", Path(topology_path)), *reads]
    with claim_outputs(files.written(), inputs, where, folders=(PARTS,)):
        return _backmap_to_files(model, cg_topology, topology_path, frames, files, settings, seed, registry, refiner,
                                 refine_system, provenance, where, cluster, identity, device)


def _backmap_to_files(model: Model, cg_topology: CGTopology, topology_path: Path, frames: Sequence[Frame],
                      files: BackmapOutputs, settings: BackmapSettings | None, seed: int, registry: Registry | None,
                      refiner: Any, refine_system: RestrainedSystem | None, provenance: dict[str, Any] | None,
                      where: str, cluster: ClusterOptions | None, identity: dict[str, Any] | None,
                      device: str) -> "Backmapped":
    registry = registry or default_registry()
    settings = settings or BackmapSettings()
    cluster = cluster or ClusterOptions()
    generator = model.generator
    model.check_system(cg_topology)
    generator.environment.check_against(settings.environment_keys(), where)
    if not frames:
        raise BackmapError(f"{where}: no CG frames to backmap")
    spec = generator.environment
    topo = cg_topology.topology
    refine_seed = seed if refiner is None or getattr(refiner.params, "seed", None) is None else refiner.params.seed
    job = BackmapJob(model, cg_topology, settings, seed, copy.deepcopy(refiner), refine_system, refine_seed, where=where,
                     device=device)
    # the frames run here on the device; a Dask worker resolves it for itself (this process checks on the CPU)
    here = resolve_device("cpu" if cluster.distributed else device)
    if not cluster.distributed:
        job._local_device = here
    if device != "cpu" and str(here) != "cpu":  # a GPU run's blocks are not resumed on the CPU, nor the other way
        identity = {**(identity or {}), "device": str(here)}
    if refiner is not None:  # here once: checks the settings, resolves defaults, says what it chose
        refiner.to(here)
        offer_inputs(refiner, model.directory, settings)
        with on_device(here):
            refiner.prepare(refine_system)
        if not cluster.distributed:  # this process runs the frames: with the refiner just prepared
            job._local_refiner = refiner
    generator.to(here)
    with on_device(here):
        bm = make_backmapper(cg_topology, generator, settings, seed, model.channels, registry, where)  # checks plugins
    if not cluster.distributed:  # built once: this process runs the frames
        job._local_backmapper = bm
    if job.chained:
        check_time_step(model, frames, where)
    blocks = blocks_of(frames, cluster.frames_per_task)
    store = PartStore.beside(files.aa, {
        "model": _model_identity(model), "frames": [f.index for f in frames],
        "cg": _frames_digest(frames),
        "settings": settings.model_dump(mode="json"), "seed": seed, "frames_per_task": cluster.frames_per_task,
        "refiner": None if refiner is None else [refiner.name, refiner.params.model_dump(mode="json"), refine_seed],
        **(identity or {})}, len(blocks))
    t0 = time.perf_counter()
    rows = [row for r in run_blocks(job, blocks, cluster, store, "backmapping", where=where) for row in r["rows"]]

    def frames_of(key: str):  # streamed from the store: a long trajectory is never held in memory
        k = 0
        for r in store.blocks():
            for x in r[key]:
                cg = frames[k]
                k += 1
                yield Frame(x.astype(float), cg.dimensions, cg.time, cg.index)

    n = write_aa(files.aa, frames_of("aa"), topo)
    if refiner is not None:
        write_aa(files.unrefined, frames_of("unrefined"), topo)
    seconds = time.perf_counter() - t0
    write_frames(files.cg, frames, cg_topology.bead_names, cg_topology.resnames, cg_topology.resids)
    if files.structure is not None:
        write_aa(files.structure, [next(frames_of("aa"))], topo)
    if files.topology is not None:
        write_topology(topology_path, files.topology)
    generator_seconds = sum(r["generator_seconds"] for r in rows)
    result = Backmapped(files=files, frames=n, atoms=topo.n_atoms, generator=generator.name,
                        seconds_per_frame=round(seconds / max(n, 1), 3),
                        generator_seconds_per_frame=round(generator_seconds / max(n, 1), 3),
                        placements_per_second=round(sum(r["placements"] for r in rows) / max(generator_seconds, 1e-9)),
                        transfer=bm.adaptation or None, chained=job.chained,
                        cluster=cluster.model_dump(mode="json", exclude_none=True) if cluster.distributed else None)
    kept = [r["stereocentres_kept"] for r in rows if "stereocentres_kept" in r]
    if kept:
        result.stereocentres_kept = round(float(np.mean(kept)), 4)
    broken = [r["broken_bonds"] for r in rows if "broken_bonds" in r]
    if broken:  # of the generator's output, before any refinement
        result.broken_bonds = round(float(np.mean(broken)), 5)
    redrawn = [r["clash_units_redrawn"] for r in rows if "clash_units_redrawn" in r]
    if redrawn:
        rounds = bm.settings.repair_clashes or sum(1 for m in bm.moves if m.name == "repair_clashes")
        result.clash_repair = ClashRepairReport(rounds, int(sum(redrawn)),
                                                int(sum(1 for r in redrawn if r)))
    polished = [r for r in rows if "polish_placements" in r]
    if polished:
        n_polished = sum(r["polish_placements"] for r in polished)
        steps = bm.settings.polish_steps or max(m.params.steps for m in bm.moves if m.name == "polish")
        result.guidance = GuidanceReport(steps, n_polished,
                                         round(sum(r["polish_energy_drop"] for r in polished) / max(n_polished, 1), 2))
    projected = [r for r in rows if "projection_converged" in r]
    if projected:
        p = result.cg_projection = ProjectionReport(
            round(float(np.mean([r["projection_cg_rmsd_before"] for r in projected])), 5),
            float(f"{np.mean([r['projection_cg_rmsd_after'] for r in projected]):.2e}"),
            round(float(max(r["projection_largest_move_nm"] for r in projected)), 4),
            sum(1 for r in projected if not r["projection_converged"]),
            sum(int(r.get("projection_molecules_unprojected", 0)) for r in projected))
        if p.frames_left_unprojected:
            say(f"warning: {where}: in {p.frames_left_unprojected} of {len(projected)} frames, "
                f"{p.molecules_left_unprojected} molecules could not be projected onto their CG input "
                "(no convergence, or an atom would move > 0.3 nm); they are written as sampled")
    summarized = {m.name: m for m in bm.moves if m.name not in SECTIONS}
    if summarized:
        result.moves = {name: m.summarize([r["moves"][name] for r in rows]) for name, m in summarized.items()}
    if (result.broken_bonds or 0.0) > BROKEN_BONDS_WARNING:
        say(f"warning: {where}: {result.broken_bonds:.1%} of the bonds the generator wrote are more than "
            f"{TOLERANCE:.0%} off the force field's length (torn molecules; see docs/transfer.md)")
    if refiner is not None:
        log = [{k: v for k, v in r.items() if k not in ("generator_seconds", "placements", "stereocentres_kept",
                                                          "clash_units_redrawn", "broken_bonds", "moves")
                and not k.startswith(("projection_", "polish_"))} for r in rows]
        write_log(files.refine_log, log)
        plot_log(files.refine_log.with_suffix(".png"), log, f"{refiner.name}: {files.aa.name}")
        refined = {"refiner": refiner.name,
                   "CG RMSD before refinement (nm)": round(float(np.mean([r["cg_rmsd_before"] for r in rows])), 5),
                   "CG RMSD after refinement (nm)": round(float(np.mean([r["cg_rmsd"] for r in rows])), 5),
                   "failed refinements": sum(1 for r in rows if r.get("failed"))}
        spread = BondSpread.of(refiner, refine_system)
        if spread is not None:
            for r, x in zip(rows, frames_of("aa")):
                if not r.get("failed"):
                    spread.add(x.positions)
        result.refinement = refined | report_after_refinement(refiner, spread, rows)
    summary = result.report()
    record = {"model": str(model.directory), "plugin": generator.name,
              "environment": spec.model_dump(mode="json"), "settings": settings.model_dump(mode="json"),
              "seed": seed, "refiner": {"plugin": refiner.name, "params": refiner.params.model_dump(mode="json")}
              if refiner is not None else None, "summary": summary, "files": files.as_dict(),
              "plugins": plugin_versions(registry), **(provenance or {})}
    with atomic_path(files.provenance) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=str))
    store.remove()
    return result


def check_time_step(model: Model, frames: Sequence[Frame], where: str) -> None:
    """Trajectory mode steps from frame to frame by the time the model was trained with: say so
    when the CG frames are spaced otherwise (their times, where the file has them)."""
    trained = (model.description.get("training") or {}).get("time step (ps)")
    times = np.array([f.time for f in frames], float)
    if trained is None or len(times) < 2 or not np.all(np.diff(times) > 0):
        return
    given = float(np.median(np.diff(times)))
    if abs(given - trained) > 0.01 * trained:
        say(f"warning: {where}: the CG frames are {given:g} ps apart, but the model learned steps of {trained:g} ps "
            "(trajectory mode): select frames with that spacing (--frames a:b:s), or expect wrong dynamics")


def _frames_digest(frames: Sequence[Frame]) -> str:
    h = hashlib.sha256()
    for f in frames:
        h.update(np.ascontiguousarray(f.positions, np.float32).tobytes())
        h.update(np.ascontiguousarray(f.dimensions, np.float32).tobytes())
        start = getattr(f, "start", None)  # a structure the sampling starts from (morphing scheme B)
        if start is not None:
            h.update(np.ascontiguousarray(start, np.float32).tobytes())
    return h.hexdigest()


def _model_identity(model: Model) -> dict[str, Any]:
    """The model's files by content digest (a retrained model in the same folder is another model)."""
    out = {}
    for name in sorted(p.name for p in Path(model.directory).iterdir() if p.is_file()):
        out[name] = hashlib.sha256((Path(model.directory) / name).read_bytes()).hexdigest()[:16]
    return out
