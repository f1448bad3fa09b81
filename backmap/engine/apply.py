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

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from backmap.engine.models import Model
from backmap.engine.plugin import Generator
from backmap.engine.pipeline import plugin_versions
from backmap.engine.registry import Registry, default_registry
from backmap.errors import BackmapError
from backmap.refinement.restrained import RestrainedSystem, plot_log, refine_frames, write_log
from backmap.sampling.backmapper import Backmapper, BackmapSettings, write_aa, write_topology
from backmap.system.io import Frame, atomic_path, read_frames, write_frames
from backmap.sampling.environment import Channels
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


def check_output(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output that would overwrite one of the inputs; the one check every command shares
    lives in the data model (:func:`backmap.system.io.refuse_overwriting_inputs`)."""
    from backmap.system.io import refuse_overwriting_inputs

    refuse_overwriting_inputs(out, inputs)


def make_backmapper(cg_topology: CGTopology, generator: Generator, settings: BackmapSettings | None = None,
                    seed: int = 0, channels: Channels | None = None, registry: Registry | None = None,
                    where: str = "backmap") -> Backmapper:
    """A :class:`Backmapper` with the traversal plugin of the generator's spec and the selector
    plugin of ``settings`` (channels: the model's; default derived from the topology)."""
    registry = registry or default_registry()
    settings = settings or BackmapSettings()
    spec = generator.environment
    traversal = registry.get("traversal", spec.traversal, where="environment.traversal").cls()
    selector = registry.get("selector", settings.selector, where=f"{where}.selector").cls()
    channels = channels or Channels.for_spec(cg_topology, spec.channels)
    return Backmapper(cg_topology, generator, channels, traversal, selector, settings, seed=seed)


def backmap_to_files(model: Model, cg_topology: CGTopology, topology_path: Path, frames: Sequence[Frame], out: Path,
                     settings: BackmapSettings | None = None, seed: int = 0, registry: Registry | None = None,
                     refiner: Any = None, refine_system: RestrainedSystem | None = None, structure: bool = True,
                     provenance: dict[str, Any] | None = None, where: str = "backmap") -> dict[str, Any]:
    """Backmap ``frames`` (CG, the mapping's bead order) with ``model`` into ``out`` and the files
    beside it; with ``refiner`` (prepared against ``refine_system``), every frame is refined under
    the CG restraint after the generator. Returns a summary (also for run reports)."""
    registry = registry or default_registry()
    settings = settings or BackmapSettings()
    generator = model.generator
    model.check_system(cg_topology)
    generator.environment.check_against(settings.environment_keys(), where)
    if not frames:
        raise BackmapError(f"{where}: no CG frames to backmap")
    spec = generator.environment
    bm = make_backmapper(cg_topology, generator, settings, seed, model.channels, registry, where)
    topo = cg_topology.topology
    files = BackmapOutputs.beside(out, structure, Path(topology_path).suffix == ".top", refiner is not None, len(frames))
    first: list[Frame] = []
    rows: list[dict] = []

    def keep_first(stream):
        for fr in stream:
            if not first:
                first.append(fr)
            yield fr

    t0 = time.perf_counter()
    produced = keep_first(bm.run(frames, total=len(frames)))
    if refiner is None:
        n = write_aa(files.aa, produced, topo)
    else:  # the generator's output streamed to its own file, then refined from there
        write_aa(files.unrefined, produced, topo)
        rng = np.random.default_rng(seed if getattr(refiner.params, "seed", None) is None else refiner.params.seed)
        raw = read_frames(files.unrefined, topo.n_atoms)
        n = write_aa(files.aa, _frames_logging(refine_frames(refiner, refine_system, raw, frames, rng,
                                                             total=len(frames)), rows), topo)
    seconds = time.perf_counter() - t0
    write_frames(files.cg, frames, cg_topology.bead_names, cg_topology.resnames, cg_topology.resids)
    if files.structure is not None:
        write_aa(files.structure, first, topo)
    if files.topology is not None:
        write_topology(topology_path, files.topology)
    summary: dict[str, Any] = {"frames": n, "atoms": topo.n_atoms, "generator": generator.name,
                               "seconds per frame": round(seconds / max(n, 1), 3),
                               "placements per second": round(bm.sampler.placements / max(seconds, 1e-9))}
    if bm.chirality_kept:
        summary["stereocentres kept"] = round(float(np.mean(bm.chirality_kept)), 4)
    if refiner is not None:
        write_log(files.refine_log, rows)
        plot_log(files.refine_log.with_suffix(".png"), rows, f"{refiner.name}: {files.aa.name}")
        summary.update({"refiner": refiner.name,
                        "CG RMSD before refinement (nm)": round(float(np.mean([r["cg_rmsd_before"] for r in rows])), 5),
                        "CG RMSD after refinement (nm)": round(float(np.mean([r["cg_rmsd"] for r in rows])), 5),
                        "failed refinements": sum(1 for r in rows if r.get("failed"))})
    record = {"model": str(model.directory), "plugin": generator.name,
              "environment": spec.model_dump(mode="json"), "settings": settings.model_dump(mode="json"),
              "seed": seed, "refiner": {"plugin": refiner.name, "params": refiner.params.model_dump(mode="json")}
              if refiner is not None else None, "summary": summary, "files": files.as_dict(),
              "plugins": plugin_versions(registry), **(provenance or {})}
    with atomic_path(files.provenance) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=str))
    summary["files"] = files
    return summary


def _frames_logging(pairs, rows: list[dict]):
    """The frames of (frame, log row) pairs; the rows are appended to ``rows``."""
    for frame, row in pairs:
        rows.append(row)
        yield frame
