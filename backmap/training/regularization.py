"""Shared training utilities: weight schedules and what a regularizer is given."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import torch

    from backmap.forcefield import ForceField


class Schedule(BaseModel):
    """A weight that is ``start`` until ``delay`` epochs, then ramps linearly to ``end`` over
    ``ramp_epochs`` (DBM ramps its energy weight from 0). A plain number means a constant."""

    model_config = ConfigDict(extra="forbid")
    start: float = 0.0
    end: float = Field(0.01, description="weight after the ramp")
    ramp_epochs: float = Field(10.0, ge=0)
    delay: float = Field(0.0, ge=0, description="epochs at the start weight before the ramp")

    @model_validator(mode="before")
    @classmethod
    def _constant(cls, value):
        if isinstance(value, (int, float)):
            return {"start": value, "end": value, "ramp_epochs": 0}
        return value

    def __call__(self, epoch: float) -> float:
        t = epoch - self.delay
        if t <= 0:
            return self.start
        if self.ramp_epochs == 0 or t >= self.ramp_epochs:
            return self.end
        return self.start + (self.end - self.start) * t / self.ramp_epochs


@dataclass
class RegularizerSample:
    """What a regularizer scores: a batch of configurations of a set of atoms — the generated
    ones plus their reference neighbours — given whole (no periodic box), with the force field
    of exactly these atoms (``ForceField.subsystem``)."""

    forcefield: "ForceField"
    positions: "torch.Tensor"  # (B, n, 3) nm, generated atoms in place
    generated: np.ndarray  # (n,) bool: the atoms that were generated
    atom_types: np.ndarray  # (n,) force-field atom types
    reference: "torch.Tensor | None" = None  # (B, n, 3) the same atoms as in the data
