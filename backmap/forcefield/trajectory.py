"""Energies (and forces) of every frame of a trajectory, streamed in batches — a GROMACS rerun
with backmap's own force field."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from backmap.forcefield.energy import ForceField
from backmap.system.io import Frame, read_frames
from backmap.system.mapping import CGTopology
from backmap.system.pbc import Unwrapper


@dataclass
class FrameEnergies:
    frame: Frame
    energies: dict[str, float]
    forces: np.ndarray | None = None  # (n_atoms, 3) kJ/mol/nm
    bead_forces: np.ndarray | None = None  # (n_beads, 3)
    bead_positions: np.ndarray | None = None


def rerun_trajectory(ff: ForceField, trajectory: Path, frames: Sequence[int] | None = None,
                     cg_topology: CGTopology | None = None, with_forces: bool = False,
                     batch: int = 4) -> Iterator[FrameEnergies]:
    """Per-term energies of each frame; AA forces when asked, and bead forces and positions
    (AA forces summed per home bead, whole molecules mapped) when a CG topology is given."""
    need_forces = with_forces or cg_topology is not None
    source = read_frames(trajectory, ff.n_atoms, frames, expect=f"topology {ff.topology.source.name}")
    pending: list[Frame] = []
    unwrap = Unwrapper(ff.topology)

    def flush():
        x = np.stack([f.positions for f in pending])
        boxes = np.stack([f.box for f in pending])
        if need_forces:
            e, forces = ff.forces(x, boxes)
            forces = forces.detach().numpy()
        else:
            with torch.no_grad():
                e = ff.energy(x, boxes)
            forces = None
        values = e.numpy()
        for k, fr in enumerate(pending):
            out = FrameEnergies(fr, {t: float(v[k]) for t, v in values.items()})
            if forces is not None:
                out.forces = forces[k] if with_forces else None
                if cg_topology is not None:
                    whole = unwrap(fr.positions, fr.dimensions)
                    out.bead_forces = cg_topology.sum_forces(forces[k])
                    out.bead_positions = cg_topology.apply(whole)
            yield out

    for fr in source:
        pending.append(fr)
        if len(pending) == batch:
            yield from flush()
            pending = []
    if pending:
        yield from flush()
