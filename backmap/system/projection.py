"""AA trajectory → CG trajectory (like VOTCA's ``csg_map``), streamed frame by frame."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from backmap.system.io import Frame, read_frames, trajectory_info, write_frames
from backmap.system.mapping import CGTopology
from backmap.system.pbc import Unwrapper
from backmap.progress import progress


def map_frames(cg_top: CGTopology, trajectory: Path, frames=None) -> Iterator[Frame]:
    """CG frames of an AA trajectory; molecules are made whole before mapping."""
    topo = cg_top.topology
    unwrap = Unwrapper(topo)
    for fr in read_frames(trajectory, topo.n_atoms, frames, expect=f"topology {topo.source.name}"):
        x = unwrap(fr.positions, fr.dimensions)
        yield Frame(cg_top.apply(x), fr.dimensions, fr.time, fr.index)


def map_trajectory(cg_top: CGTopology, trajectory: Path, out: Path, frames=None) -> int:
    """Map ``trajectory`` and write it to ``out`` (.xtc/.gro/.pdb). Returns the frame count."""
    n_total = trajectory_info(trajectory)[1]
    total = len(np.arange(n_total)[frames]) if frames is not None else n_total
    stream = progress(map_frames(cg_top, trajectory, frames), total=total, description=f"mapping {trajectory.name}")
    return write_frames(out, stream, cg_top.bead_names, cg_top.resnames, cg_top.resids)
