"""The CG projection: every frame moved the least onto its CG input."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

from backmap.api import BackmapError, Move, MoveFrame, MoveSetup
from backmap.api.sampling import CGProjection


class ProjectParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class ProjectionReport:
    cg_rmsd_before: float  # nm, RMS of |M(x) − R|
    cg_rmsd_after: float  # nm, after the last projection of the frame
    largest_move_nm: float
    converged: bool
    closest: bool
    molecules_unprojected: int


class ProjectCG(Move):
    """Move the frame the least onto its CG input: mapped centres exact, bond lengths kept (the
    generator's rigid bonds at the force field's b0). A constraint: made again after every later
    move that changes the frame, so no later move costs CG consistency."""

    name = "project_cg"
    summary = "move every frame the least onto its CG input (mapped centres exact, bond lengths kept)"
    Params = ProjectParams
    Report = ProjectionReport
    constraint = True

    def prepare(self, setup: MoveSetup) -> None:
        try:
            self._projection = CGProjection(setup.cg_topology, setup.generator.rigid_bonds)
        except (KeyError, ValueError, BackmapError) as exc:
            raise BackmapError(f"project_cg: the topology's bond parameters are needed ({exc}); give a .top or set "
                               "project_cg: false") from None

    def _project(self, frame: MoveFrame):
        done = self._projection(frame.positions, frame.beads, frame.dimensions)
        return done.positions.astype(frame.positions.dtype), done

    def apply(self, frame: MoveFrame) -> tuple[np.ndarray, ProjectionReport]:
        x, done = self._project(frame)
        return x, ProjectionReport(done.cg_rmsd_before, done.cg_rmsd_after, done.largest_move, done.converged,
                                   done.closest, done.molecules_unprojected)

    def restore(self, frame: MoveFrame) -> tuple[np.ndarray, dict]:
        x, done = self._project(frame)
        return x, {"cg_rmsd_after": done.cg_rmsd_after}
