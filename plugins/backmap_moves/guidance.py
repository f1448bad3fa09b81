"""The closing pass of energy guidance: every unit turned about its rotatable bonds downhill."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import BackmapError, Move, MoveFrame


class PolishParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(15, ge=1, description="steepest-descent steps per unit")


@dataclass
class PolishReport:
    units_polished: int
    energy_drop: float  # kJ/mol, summed over the units


class Polish(Move):
    """Energy guidance over the whole frame: every unit, where it stands, descends its selection
    energy in its rotatable bonds (bond lengths and angles kept), in plan order. ``--polish N``
    also guides each placement in the sweeps; this pass closes, as units placed later may have
    moved into earlier ones, and the CG projection moves atoms without looking at energies."""

    name = "polish"
    summary = "energy guidance: every unit turned about its rotatable bonds down its selection energy"
    Params = PolishParams
    Report = PolishReport

    def apply(self, frame: MoveFrame) -> tuple[np.ndarray, PolishReport]:
        sampler = frame.sampler_for(self.name)
        log = sampler.polish_log
        before = log["placements"], log["energy_drop"]
        try:
            x = sampler.polish_frame(frame.positions, self.params.steps)
        except ValueError as exc:
            raise BackmapError(f"polish: {exc}") from None
        return x, PolishReport(log["placements"] - before[0], log["energy_drop"] - before[1])
