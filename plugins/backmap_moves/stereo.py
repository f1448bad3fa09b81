"""Stereocentres put right after sampling: every centre still inverted is reflected."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import BackmapError, Move, MoveFrame
from backmap.api.sampling import invert_flipped, tacticity_centres


class InvertParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tacticity: Literal["isotactic", "syndiotactic"] | None = Field(
        None, description="the hands of the backbone stereocentres by this pattern (each chain in the phase most of "
                          "its centres came out in) instead of the run's stereo reference")


@dataclass
class InvertReport:
    centres_inverted: int  # reflected through their three heavy neighbours' plane
    centres_left: int  # inverted but without a terminal neighbour to reflect about (a quaternary centre)


class InvertStereocentres(Move):
    """Every stereocentre whose hand is not the stereo reference's (or the ``tacticity`` pattern's)
    is reflected through the plane of its three heavy neighbours — their bond lengths and the angles
    between them stay — and its hydrogen put back opposite them. The selection penalty keeps a hand
    only where one of the K candidates has it; this makes every centre right."""

    name = "invert_stereocentres"
    summary = "reflect each stereocentre whose hand is not the stereo reference's or the tacticity's"
    Params = InvertParams
    Report = InvertReport

    def apply(self, frame: MoveFrame) -> tuple[np.ndarray, InvertReport]:
        topology = frame.cg_topology.topology
        if self.params.tacticity is not None:
            centres, _ = tacticity_centres(topology, frame.positions, self.params.tacticity,
                                           backbone=self.__dict__.setdefault("backbone", {}))  # perceived once
        else:
            centres = getattr(frame.sampler, "chirality", None)
            if centres is None:
                raise BackmapError(f"{self.name}: the hands come from a stereo_reference or a tacticity; the run "
                                   "has neither")
        x, inverted, left = invert_flipped(centres, topology, frame.positions, frame.dimensions)
        return x.astype(frame.positions.dtype), InvertReport(inverted, left)
