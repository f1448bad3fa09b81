"""Regrow: a block of units drawn again with the rest of each molecule in place."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from backmap.api import BackmapError, Move, MoveFrame, MoveSetup


def _names(value: object) -> object:
    """``S1+S2+B1`` (the command line's ``--move regrow:beads=S1+S2``) -> a list of names."""
    return [v for v in value.split("+") if v.strip()] if isinstance(value, str) else value


class RegrowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beads: Annotated[list[str], BeforeValidator(_names)] = Field(
        min_length=1, description="names of the beads whose units are drawn again, e.g. [S1, S2, B1, B2] for a "
                                  "chain's start (on the command line S1+S2+B1+B2)")
    candidates: int = Field(0, ge=0, description="candidates per unit (0: the run's --candidates)")
    trials: int = Field(1, ge=1, description="the block is grown this many times; each molecule keeps its "
                                             "lowest-energy trial")


@dataclass
class RegrowReport:
    beads_regrown: int  # beads whose units were drawn again in this frame


class Regrow(Move):
    """Hide the named beads' units, place them again in plan order with the rest of each molecule
    where it is, then once more in Gibbs mode: for units that chose badly when they were placed
    with little around them (a chain's start, the hands of its first stereocentres)."""

    name = "regrow"
    summary = "draw the named beads' units again with the rest of each molecule in place"
    Params = RegrowParams
    Report = RegrowReport

    def prepare(self, setup: MoveSetup) -> None:
        known = set(setup.cg_topology.bead_names)
        unknown = [b for b in self.params.beads if b not in known]
        if unknown:
            raise BackmapError(f"regrow: no bead named {', '.join(unknown)} in the mapping "
                               f"(its beads: {', '.join(sorted(known)[:30])})")
        names = np.asarray(setup.cg_topology.bead_names)
        self._beads = int(np.isin(names, self.params.beads).sum())

    def redraws(self) -> list[str]:
        """The named beads: their units are hidden, then placed and drawn again from scratch."""
        return list(self.params.beads)

    def apply(self, frame: MoveFrame) -> tuple[np.ndarray, RegrowReport]:
        sampler = frame.sampler_for(self.name)
        x = sampler.regrow_frame(frame.positions, self.params.beads, self.params.candidates, self.params.trials)
        return x, RegrowReport(self._beads)
