"""The CG projection: every frame moved the least onto its CG input."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

from backmap.api import BackmapError, Move, MoveFrame, MoveSetup
from backmap.api.sampling import CGProjection
from backmap.api.system import minimum_image


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
        x = done.positions.astype(frame.positions.dtype)
        self._last = ((id(frame), frame.index), frame.positions.shape, x.copy())
        return x, done

    def apply(self, frame: MoveFrame) -> tuple[np.ndarray, ProjectionReport]:
        x, done = self._project(frame)
        return x, ProjectionReport(done.cg_rmsd_before, done.cg_rmsd_after, done.largest_move, done.converged,
                                   done.closest, done.molecules_unprojected)

    def restore(self, frame: MoveFrame) -> tuple[np.ndarray, dict]:
        """The projection made again after a later move: of the molecules that move changed only
        (the others are where this move left them), else of the whole frame."""
        index, shape, last = getattr(self, "_last", (None, None, None))
        proj = self._projection
        if index != (id(frame), frame.index) or shape != frame.positions.shape:
            x, done = self._project(frame)
            return x, {"cg_rmsd_after": done.cg_rmsd_after}
        # moved: by more than the projection's tolerance (a move that hands the frame back through
        # float32 shifts every atom by ~1e-8 nm, which the constraints do not see)
        changed = np.unique(proj.molecule[(np.abs(frame.positions - last) > proj.tolerance).any(1)])
        if len(changed) > proj.n_molecules // 2:  # the whole frame: no subset to build
            x, done = self._project(frame)
            return x, {"cg_rmsd_after": done.cg_rmsd_after}
        x = frame.positions.copy()
        if len(changed):
            part, atoms, beads = proj.molecules(changed)
            done = part(frame.positions[atoms], frame.beads[beads], frame.dimensions)
            x[atoms] = done.positions
        self._last = ((id(frame), frame.index), x.shape, x.copy())
        mapped = proj.mapped(x.astype(np.float64))
        miss = minimum_image(np.asarray(frame.beads, np.float64) - mapped, frame.dimensions)
        return x, {"cg_rmsd_after": float(np.sqrt((miss ** 2).sum(-1).mean()))}
