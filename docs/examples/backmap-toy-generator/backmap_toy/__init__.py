"""A toy generator plugin for backmap, written as a third-party package would be.

It learns, for every atom of a molecule type, the mean offset from its home bead in the
training pairs, and proposes bead position + offset (+ Gaussian noise). It ignores
orientation and environment, so it is a demonstration of the plugin interface, not a method.
"""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap import Generator, hookimpl


class ToyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    noise: float = Field(0.0, ge=0.0, description="s.d. of the Gaussian kick added to proposals (nm)")


class MeanOffsetGenerator(Generator):
    name = "toy_mean_offset"
    summary = "toy: mean atom offset from the home bead (example plugin)"
    Params = ToyParams

    def __init__(self, params=None):
        super().__init__(params)
        self.offsets: dict[str, np.ndarray] = {}

    def fit(self, pairs, context) -> dict:
        train = pairs.train()
        cg_top = context.cg_topology
        for cb in cg_top.blocks:
            mt, mm = cb.block.moltype, cb.mapping
            aa = train.aa[:, cb.block.atom_slice].reshape(len(train), cb.block.count, mt.n_atoms, 3)
            cg = train.cg[:, cb.first_bead:cb.first_bead + cb.n_beads].reshape(len(train), cb.block.count,
                                                                               mm.n_beads, 3)
            self.offsets[mt.name] = (aa - cg[:, :, mm.home]).mean(axis=(0, 1))
        spread = max(float(np.linalg.norm(o, axis=1).max()) for o in self.offsets.values())
        return {"molecule types": len(self.offsets), "largest mean offset (nm)": round(spread, 4)}

    def propose(self, batch, n_candidates, rng):
        """``batch``: {"moltype": name, "beads": (B, n_beads, 3), "home": (n_atoms,)} →
        (B, n_candidates, n_atoms, 3)."""
        beads = np.asarray(batch["beads"])
        base = beads[:, batch["home"]] + self.offsets[batch["moltype"]]
        kick = rng.normal(0.0, self.params.noise, (len(beads), n_candidates) + base.shape[1:])
        return base[:, None] + kick

    def state_dict(self) -> dict:
        return {k: v.tolist() for k, v in self.offsets.items()}

    def load_state_dict(self, state: dict) -> None:
        self.offsets = {k: np.asarray(v) for k, v in state.items()}


@hookimpl
def backmap_generators():
    return [MeanOffsetGenerator]
