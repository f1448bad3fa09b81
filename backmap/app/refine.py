"""The refine use case: AA structures sampled at temperature T with every bead's mapped centre
restrained to its CG input (``backmap refine``, the recipe's ``refine`` step)."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from backmap.app.options import ClusterFields, DeviceField, FrameSelection, NonbondedOptions, RefinerOptions, Request
from backmap.devices import on_device, resolve_device
from backmap.errors import BackmapError
from backmap.fields import option
from backmap.forcefield.settings import NonbondedSettings
from backmap.parallel import ClusterOptions, PartStore, ProcessLocal, blocks_of, file_identity, frame_rng, run_blocks
from backmap.refinement.restrained import (BondSpread, RestrainedSystem, limit_refiner_threads, plot_log,
                                           refine_batch, report_after_refinement, write_log)
from backmap.system.claim import check_outputs, claim_outputs
from backmap.system.io import Frame, read_frames, write_frames
from backmap.system.pairs import count_frames, select_frames


@dataclass
class Refined:
    """What a refinement wrote and measured; :meth:`report` is its run-report form."""

    refiner: str
    frames: int
    seconds_per_frame: float
    cg_rmsd_before: float  # nm, mean over frames
    cg_rmsd_after: float
    failed_frames: int
    output: Path
    log: Path
    kinetic_temperature: float | None = None  # K
    constraints: str | None = None
    checks: dict[str, str] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"refiner": self.refiner, "frames": self.frames,
                               "seconds per frame": self.seconds_per_frame,
                               "CG RMSD before (nm)": self.cg_rmsd_before, "CG RMSD after (nm)": self.cg_rmsd_after,
                               "failed frames": self.failed_frames, "output": str(self.output), "log": str(self.log)}
        if self.kinetic_temperature is not None:
            out["kinetic temperature (K)"] = self.kinetic_temperature
        if self.constraints is not None:
            out["constraints"] = self.constraints
        return out | self.checks


@dataclass
class RefineJob(ProcessLocal):
    """Refining blocks of (AA, CG) frame pairs, in this process or on a Dask worker (the refiner is
    prepared once per process); each call of the refiner draws from the stream of its first frame."""

    refiner: Any
    system: RestrainedSystem
    seed: int
    batch: int = 1
    device: str = "auto"

    def setup(self, threads: int | None = None) -> None:
        """Prepare a copy of the refiner (``refiner`` stays the unprepared template)."""
        if getattr(self, "_local_refiner", None) is None:
            refiner = copy.deepcopy(self.refiner).to(resolve_device(self.device))
            limit_refiner_threads(refiner, threads)
            with on_device(refiner.device):
                refiner.prepare(self.system)
            self._local_refiner = refiner

    def run_block(self, pairs: Sequence[tuple[Frame, Frame]]) -> dict[str, Any]:
        with on_device(self._local_refiner.device):
            return self._run_block(pairs)

    def _run_block(self, pairs: Sequence[tuple[Frame, Frame]]) -> dict[str, Any]:
        out: list[tuple[Frame, dict]] = []
        for i in range(0, len(pairs), self.batch):
            chunk = pairs[i:i + self.batch]
            first = chunk[0][0].index if chunk[0][0].index is not None else i
            out += refine_batch(self._local_refiner, self.system, [p[0] for p in chunk], [p[1] for p in chunk],
                                frame_rng(self.seed, first, stream=1))
        return {"aa": np.stack([f.positions.astype(np.float32) for f, _ in out]), "rows": [r for _, r in out]}


def refine_files(refiner, system: RestrainedSystem, aa_path: Path, cg_path: Path, out: Path,
                 frames: str | None = None, seed: int = 0, batch: int = 1, cluster: Any = None,
                 reads: Sequence[tuple[str, Path | None]] = (), device: str = "auto") -> "Refined":
    """Refine the AA trajectory ``aa_path`` against ``cg_path`` (same frames) into ``out``, with
    ``out``'s ``.log.csv`` and ``.log.png`` beside it; blocks of ``batch`` frames run here or on
    the Dask cluster of ``cluster`` (:class:`backmap.parallel.ClusterOptions`), finished blocks kept
    beside ``out`` until it is written (a killed run resumes); the refiner runs on ``device``. Every
    file written is first checked against the inputs and ``reads``, and ``out`` is locked
    (:func:`backmap.system.claim.claim_outputs`)."""
    written = [("--out", out), ("the refinement log beside --out", _log_of(out)),
               ("the refinement log's plot beside --out", _log_of(out).with_suffix(".png")),
               ("the parts folder of a resumable run", PartStore.folder_of(out))]
    with claim_outputs(written, [("--traj", aa_path), ("--cg", cg_path), *reads], "refine",
                       folders=(written[-1][0],)):
        return _refine_files(refiner, system, aa_path, cg_path, out, frames, seed, batch, cluster, device)


def _log_of(out: Path) -> Path:
    return out.with_name(out.stem + ".log.csv")


def _refine_files(refiner, system: RestrainedSystem, aa_path: Path, cg_path: Path, out: Path, frames: str | None,
                  seed: int, batch: int, cluster: Any, device: str) -> "Refined":
    cluster = cluster or ClusterOptions()
    n_aa, n_cg = count_frames(aa_path), count_frames(cg_path)
    if n_aa != n_cg:
        raise BackmapError(f"{n_aa} AA frames but {n_cg} CG frames in {cg_path}; refinement pairs them "
                           "frame by frame", source=aa_path)
    idx = select_frames(frames, [], n_aa, str(aa_path))
    job = RefineJob(copy.deepcopy(refiner), system,
                    seed if getattr(refiner.params, "seed", None) is None else refiner.params.seed, batch, device)
    with on_device(resolve_device("cpu" if cluster.distributed else device)) as here:  # a worker resolves its own
        refiner.to(here).prepare(system)  # here once: checks the settings, resolves defaults, says what it chose
    if not cluster.distributed:  # this process runs the frames: with the refiner just prepared
        job._local_refiner = refiner
    aa = read_frames(aa_path, system.n_atoms, idx)
    cg = read_frames(cg_path, system.n_beads, idx, expect="CG system of the mapping")
    pairs = list(zip(aa, cg))
    blocks = blocks_of(pairs, batch * cluster.frames_per_task)
    store = PartStore.beside(out, {"aa": file_identity(aa_path), "cg": file_identity(cg_path), "frames": list(idx),
                                   "refiner": [refiner.name, refiner.params.model_dump(mode="json")],
                                   "seed": job.seed, "batch": batch, "per_task": cluster.frames_per_task,
                                   **({} if str(refiner.device) == "cpu" else {"device": str(refiner.device)})},
                             len(blocks))
    t0 = time.perf_counter()
    rows = [r for block in run_blocks(job, blocks, cluster, store, f"refining ({refiner.name})") for r in block["rows"]]
    spread = BondSpread.of(refiner, system)

    def stream():
        k = 0
        for block in store.blocks():
            for x in block["aa"]:
                fr = pairs[k][0]
                if spread is not None and not rows[k].get("failed"):
                    spread.add(x)
                k += 1
                yield Frame(x.astype(float), fr.dimensions, fr.time, fr.index)

    top = system.topology
    n = write_frames(out, stream(), top.atom_names, top.resnames, top.residue_numbers())
    seconds = time.perf_counter() - t0
    log_path = _log_of(out)
    write_log(log_path, rows)
    plot_log(log_path.with_suffix(".png"), rows, f"{refiner.name}: {aa_path.name}")
    store.remove()
    result = Refined(refiner.name, n, round(seconds / max(n, 1), 2),
                     round(float(np.mean([r["cg_rmsd_before"] for r in rows])), 5),
                     round(float(np.mean([r["cg_rmsd"] for r in rows])), 5),
                     sum(1 for r in rows if r.get("failed")), out, log_path)
    if temperatures := [r["temperature"] for r in rows if "temperature" in r]:
        result.kinetic_temperature = round(float(np.mean(temperatures)), 1)
    if spread is not None:
        result.constraints = refiner.params.constraints
    result.checks = report_after_refinement(refiner, spread, rows)
    return result


class RefineRequest(FrameSelection, RefinerOptions, NonbondedOptions, ClusterFields, DeviceField, Request):
    """Refine the AA frames of ``traj`` against the CG frames of ``cg`` into ``out``."""

    topology: Path = option(description="AA topology with parameters (.top).")
    mapping: list[Path] = option(description="VOTCA mapping XML or DeepBackmap .map (repeat for several molecule "
                                             "types).", min_length=1)
    cg: Path = option(description="CG structure or trajectory: the restraint targets, frame by frame.")
    traj: Path = option(description="AA structures to refine (.gro, .xtc, …).")
    out: Path = option(description="Refined AA output (.xtc, .gro, .pdb, .trr).")
    refiner: str = option("openmm", "Refiner plugin: openmm (the default: OpenMM on the CPU, fastest), langevin or "
                                    "mala (torch, batched; mala exact), …")
    batch: int = option(1, "Frames per call (the torch refiners batch them; openmm builds its contexts once per "
                           "call, its noise going on from the call's first frame; vae_mc runs them as chains in "
                           "lockstep: one network call per plan step for all, docs/vae.md).", ge=1)
    seed: int = option(0, "Seed of the refiner's random streams (each frame draws from its own).")
    minimize_steps: int | None = option(None, "Restrained minimization steps before sampling (default 100, every "
                                              "refiner).", name="--minimize")


def refine_structures(request: RefineRequest) -> Refined:
    """``backmap refine``: checked inputs, the refiner and its restrained system, then :func:`refine_files`."""
    r = request
    check_outputs(r.written_paths(), r.read_paths(), "refine")  # early; every file at the writing
    refiner = r.make_refiner(r.refiner, r.seed, r.minimize_steps)
    system = restrained_system(r.topology, r.mapping, r.nonbonded())
    return refine_files(refiner, system, r.traj, r.cg, r.out, frames=r.frames, seed=r.seed, batch=r.batch,
                        cluster=r.cluster(), reads=r.read_paths(), device=r.device)


def restrained_system(topology: Path, mapping: Sequence[Path], settings: NonbondedSettings) -> RestrainedSystem:
    """The restrained system of a topology file and its mapping files."""
    from backmap.engine.loaders import load_mapping, load_topology

    topo = load_topology(topology)
    return RestrainedSystem(load_mapping(list(mapping), topo).cg_topology(topo), Path(topology), settings)
