"""A toy generator plugin for backmap, written as a third-party package would be.

It places one bead's atoms at a time (``unit = "bead"``). From the training data it learns, for
every kind of unit, the mean position of each atom in the unit's local frame, and proposes that
mean (plus optional Gaussian noise) for every candidate. It ignores the environment beyond the
frame the core builds from the CG beads, so it demonstrates the plugin interface, not a method.

A unit's kind is its bead type *and* the types of its atoms in placement order: beads of one type
need not list their atoms in the same order. Hexane's end beads A1 and A2 share type ``A``, but
A1, placed first, starts at its CH3 carbon while A2 starts at the CH2 carbon bonded to the
already placed middle bead — averaging them atom by atom would average a CH3 with a CH2.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import BackmapError, Generator, hookimpl

if TYPE_CHECKING:  # types only: the plugin module stays light to import
    from backmap.api import EnvironmentBatch, EnvironmentSpec, FitContext, TrainingData


class ToyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in the recipe is an error, not ignored
    noise: float = Field(0.0, ge=0.0, description="s.d. of the Gaussian noise added to every proposal (nm)")


def unit_kinds(bead_types: torch.Tensor, target_types: torch.Tensor,
               target_mask: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """The distinct kinds of B units — own bead type (``bead_types[:, 0]``) and atom types —
    as keys such as ``"0:1,2,3,3,3,3,3"``, and the index of each unit's kind (B,)."""
    rows = torch.cat([bead_types[:, :1], torch.where(target_mask, target_types, -1)], 1)
    kinds, which = torch.unique(rows, dim=0, return_inverse=True)
    keys = [f"{int(k[0])}:" + ",".join(str(int(t)) for t in k[1:] if t >= 0) for k in kinds]
    return keys, which


class MeanOffsetGenerator(Generator):
    name = "toy_mean_offset"
    summary = "toy: mean atom offsets from the bead in its local frame, per bead type (example plugin)"
    Params = ToyParams
    unit = "bead"  # one proposal places all atoms of a bead

    def __init__(self, params: ToyParams | dict[str, Any] | None = None,
                 environment: EnvironmentSpec | dict[str, Any] | None = None):
        super().__init__(params, environment)
        self.means: dict[str, torch.Tensor] = {}  # unit kind -> (n_atoms, 3) nm, local frame

    def fit(self, data: TrainingData, context: FitContext) -> dict[str, Any]:
        seq = data.sequences()  # one teacher-forced sequence per bead and training frame
        keys, which = unit_kinds(seq.bead_types, seq.target_types, seq.target_mask)
        for k, key in enumerate(keys):
            rows = which == k
            n_atoms = int(seq.target_mask[rows][0].sum())  # shorter beads are padded at the end
            self.means[key] = seq.target_positions[rows, :n_atoms].mean(0)
        context.say(f"{self.name}: mean positions of {len(keys)} kinds of bead from {len(seq)} beads")
        return {"bead kinds": len(keys), "training beads": len(seq)}

    def propose(self, batch: EnvironmentBatch, n_candidates: int, rng: np.random.Generator) -> torch.Tensor:
        keys, which = unit_kinds(batch.bead_types, batch.target_types, batch.target_mask)
        mean = torch.zeros(batch.size, batch.target_types.shape[1], 3)
        for k, key in enumerate(keys):
            if key not in self.means:
                bead, atoms = key.split(":")
                raise BackmapError(f"{self.name}: no mean for a bead of type channel {bead} with atom type "
                                   f"channels ({atoms}): the training data had no such bead (trained: "
                                   f"{'; '.join(sorted(self.means))})")
            mean[which == k, :len(self.means[key])] = self.means[key]
        noise = rng.normal(0.0, self.params.noise, (batch.size, n_candidates) + tuple(mean.shape[1:]))
        return mean[:, None] + torch.as_tensor(noise, dtype=torch.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"means": dict(self.means)}  # tensors: stored as safetensors, never pickled

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.means = {key: torch.as_tensor(m, dtype=torch.float32) for key, m in state["means"].items()}


@hookimpl
def backmap_generators() -> list[type[Generator]]:
    return [MeanOffsetGenerator]
