"""Clash repair: units with an atom in another's core drawn again."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

from backmap.api import Move, MoveFrame


class RepairParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class RepairReport:
    rounds: int
    units_redrawn: int


class RepairClashes(Move):
    """One round of clash repair: every unit holding an atom closer than 0.1 nm to an atom more
    than three bonds away is drawn again in Gibbs mode, in plan order, a step's units together
    (``--repair-clashes N`` makes N rounds, and N more after the CG projection)."""

    name = "repair_clashes"
    summary = "draw again the units holding an atom closer than 0.1 nm to a non-bonded one"
    Params = RepairParams
    Report = RepairReport

    def apply(self, frame: MoveFrame) -> tuple[np.ndarray, RepairReport]:
        x, n = frame.sampler_for(self.name).repair_frame(frame.positions)
        return x, RepairReport(1, n)
