"""An example move plugin (docs/moves.md): after the sweeps, every molecule is shifted by whole box
vectors so that its centre of geometry lies in the unit cell. The molecules stay whole and the
physics is unchanged (a periodic image); viewers and tools that expect wrapped centres are served."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import Move, MoveFrame, hookimpl
from backmap.api.system import box_vectors


@dataclass
class WrapReport:
    molecules_shifted: int


class WrapParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    origin: float = Field(0.0, description="fractional coordinate where the cell starts (0: [0, 1), -0.5: centred)")


class WrapMolecules(Move):
    name = "wrap_molecules"
    summary = "shift each molecule by box vectors so its centre lies in the unit cell"
    Params = WrapParams
    Report = WrapReport

    def apply(self, frame: MoveFrame) -> tuple[np.ndarray, WrapReport]:
        x = np.array(frame.positions, dtype=np.float64)
        vectors = np.asarray(box_vectors(frame.dimensions), np.float64).reshape(3, 3)
        molecule = frame.cg_topology.topology.molecule_index
        counts = np.bincount(molecule)
        centres = np.stack([np.bincount(molecule, x[:, k]) for k in range(3)], 1) / counts[:, None]
        fractional = centres @ np.linalg.inv(vectors)
        shift = -np.floor(fractional - self.params.origin)
        x += (shift @ vectors)[molecule]
        return x, WrapReport(int(np.count_nonzero(shift.any(1))))


@hookimpl
def backmap_moves():
    return [WrapMolecules]
