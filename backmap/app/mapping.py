"""The map use case: an AA trajectory mapped to CG, like VOTCA's csg_map (``backmap map``)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from backmap.app.energy import TRAJECTORY_HELP
from backmap.app.options import FrameSelection, Request
from backmap.engine.loaders import load_mapping, load_topology
from backmap.fields import option
from backmap.system.claim import claim_outputs
from backmap.system.pairs import count_frames, select_frames
from backmap.system.projection import map_trajectory


class MapRequest(FrameSelection, Request):
    topology: Path = option(description="AA topology (.tpr, .top, .gro).")
    traj: Path = option(description=TRAJECTORY_HELP)
    mapping: list[Path] = option(description="VOTCA mapping XML or DeepBackmap .map (repeat for several molecule "
                                             "types).", min_length=1)
    out: Path = option(description="CG output (.xtc, .gro, .pdb).")


@dataclass(frozen=True)
class Mapped:
    out: Path
    frames: int
    beads: int
    seconds: float


def map_to_cg(request: MapRequest) -> Mapped:
    """Molecules are made whole first; every bead is its mapping's weighted centre."""
    r = request
    with claim_outputs(r.written_paths(), r.read_paths(), "map"):
        t0 = time.perf_counter()
        topo = load_topology(r.topology)
        cg_top = load_mapping(list(r.mapping), topo).cg_topology(topo)
        idx = select_frames(r.frames, [], count_frames(r.traj), str(r.traj))
        n = map_trajectory(cg_top, r.traj, r.out, idx)
    return Mapped(r.out, n, cg_top.n_beads, time.perf_counter() - t0)
