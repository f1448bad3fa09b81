"""Morphing (thesis ch. 7): structures of a top-down model X are mapped through the resolution
bottleneck of a model trained only on the target Y, and its generator reinserts Y's local detail.

- scheme ``A``: forward pass + Gibbs sweeps from the bottleneck beads alone (the X detail below the
  bottleneck is discarded);
- scheme ``B``: Gibbs sweeps only, starting from the original X structure (every unit is re-placed
  seeing its X neighbours first): a gentler morph that keeps more of X.

The model is an ordinary backmapping model whose "AA" system is the fine (X = Y) resolution and whose
mapping is the bottleneck (``system.bottleneck: s`` in a recipe, :mod:`backmap.system.bottleneck`), so
morphing runs through the same frame jobs as ``backmap apply`` (blocks, Dask, resume, provenance) and
writes the same files — in X's own topology and format.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from backmap.engine.apply import backmap_to_files
from backmap.engine.models import Model
from backmap.errors import BackmapError
from backmap.parallel import ClusterOptions
from backmap.sampling.backmapper import BackmapSettings
from backmap.system.io import Frame, read_frames
from backmap.system.mapping import CGTopology
from backmap.system.pbc import Unwrapper

Scheme = Literal["A", "B"]
SCHEMES = {"A": "forward pass + Gibbs sweeps from the bottleneck", "B": "Gibbs sweeps only, from the original structure"}


@dataclass
class StartedFrame(Frame):
    """A CG frame with the fine structure its sampling starts from (scheme B): Gibbs sweeps only."""

    start: np.ndarray | None = None


def bottleneck_frames(cg_topology: CGTopology, frames: Iterator[Frame], scheme: Scheme) -> Iterator[StartedFrame]:
    """The fine frames mapped through the bottleneck (molecules made whole first: the bottleneck
    beads are centres of whole groups, and scheme B starts from that same whole structure)."""
    if scheme not in SCHEMES:
        raise BackmapError(f"morph: scheme must be one of {', '.join(SCHEMES)} (got {scheme!r})")
    whole = Unwrapper(cg_topology.topology)
    for f in frames:
        x = whole(f.positions, f.dimensions)
        yield StartedFrame(cg_topology.apply(x), f.dimensions, f.time, f.index,
                           start=x if scheme == "B" else None)


def morph_to_files(model: Model, cg_topology: CGTopology, source: Path, out: Path, scheme: Scheme = "A",
                   frames: Sequence[int] | None = None, settings: BackmapSettings | None = None, seed: int = 0,
                   output_topology: Path | None = None, cluster: ClusterOptions | None = None,
                   where: str = "morph") -> dict[str, Any]:
    """Morph the frames of ``source`` (the fine resolution, in ``cg_topology.topology``'s particle
    order) with ``model`` into ``out`` and the files beside it (:func:`backmap_to_files`; the
    topology copied beside ``out`` is ``output_topology``, X's own ``.top``, when given)."""
    settings = settings or BackmapSettings(energy=False)
    if settings.project_cg is None:  # the bottleneck is no CG input to be exact to (docs/morph.md)
        settings = settings.model_copy(update={"project_cg": False})
    if scheme == "B" and settings.gibbs_sweeps < 1:
        raise BackmapError(f"{where}: scheme B is Gibbs sweeps only — gibbs_sweeps must be ≥ 1")
    topo = cg_topology.topology
    fine = read_frames(source, topo.n_atoms, frames, expect=f"topology {Path(topo.source).name}")
    started = list(bottleneck_frames(cg_topology, fine, scheme))
    topology_path = Path(output_topology or topo.source)
    summary = backmap_to_files(model, cg_topology, topology_path, started, out, settings, seed=seed, cluster=cluster,
                               provenance={"input": str(source), "scheme": scheme, "scheme means": SCHEMES[scheme]},
                               where=where, identity={"scheme": scheme})
    summary["scheme"] = scheme
    return summary

