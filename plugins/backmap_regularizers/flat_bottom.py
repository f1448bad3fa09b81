"""Flat-bottom potentials (thesis eqs. 7.2–7.3): zero inside the range a target data set spans,
harmonic outside — bonds and angles outside [φ_min, φ_max] of their type, non-bonded distances
below d_min of their type pair. Thresholds are taken from the training pairs."""
from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import BackmapError, Regularizer
from backmap.api.forcefield import geometry as geo
from backmap.api.sampling import FlatBottomLimits, type_key
from backmap.api.training import RegularizerSample, Schedule


class FlatBottomParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: Schedule = Field(default_factory=lambda: Schedule(start=0.0, end=0.01, ramp_epochs=10))
    a_bond: float = Field(1e5, ge=0, description="a of eq. 7.2 for bonds (kJ/mol/nm²)")
    a_angle: float = Field(100.0, ge=0, description="a of eq. 7.2 for angles (kJ/mol/rad²)")
    a_nonbonded: float = Field(100.0, ge=0, description="a of eq. 7.3 (kJ/mol)")
    frames: int = Field(5, ge=1, description="training frames used to take the thresholds")
    cutoff: float = Field(0.6, gt=0, description="largest non-bonded distance looked at (nm)")



class FlatBottom(Regularizer):
    name = "flat_bottom"
    summary = "flat-bottom bonds/angles/non-bonded distances, thresholds from the data (thesis eqs. 7.2-7.3)"
    Params = FlatBottomParams

    def __init__(self, params=None):
        super().__init__(params)
        self.bond_range: dict[str, tuple[float, float]] = {}
        self.angle_range: dict[str, tuple[float, float]] = {}
        self.min_distance: dict[str, float] = {}

    def prepare(self, context) -> None:
        """Take φ_min/φ_max and d_min per type from the first training frames (the limits the
        morphing sampler uses too: :class:`backmap.sampling.flat_bottom.FlatBottomLimits`), non-bonded
        pairs as the force field excludes them (nrexcl)."""
        pairs = context.pairs().train()
        if len(pairs) == 0:
            raise BackmapError("flat_bottom: no training frames to take thresholds from")
        n = min(self.params.frames, len(pairs))
        nrexcl = {b.moltype.nrexcl for b in context.topology.blocks} - {None}
        limits = FlatBottomLimits.from_frames(context.topology, zip(pairs.aa[:n].astype(float), pairs.dimensions[:n]),
                                              cutoff=self.params.cutoff, exclude_bonds=max(nrexcl or {3}))
        self.bond_range, self.angle_range, self.min_distance = limits.bond, limits.angle, limits.nonbonded

    def _bounds(self, table, keys):
        lo = torch.tensor([table.get(k, (-np.inf, np.inf))[0] for k in keys], dtype=torch.float64)
        hi = torch.tensor([table.get(k, (-np.inf, np.inf))[1] for k in keys], dtype=torch.float64)
        return lo, hi

    def loss(self, sample: RegularizerSample, epoch: float) -> torch.Tensor:
        p, x, gen, types = self.params, sample.positions, sample.generated, sample.atom_types
        ff = sample.forcefield
        total = torch.zeros(x.shape[0], dtype=x.dtype)
        for name, table, a in (("bond", self.bond_range, p.a_bond), ("angle", self.angle_range, p.a_angle)):
            idx = ff.params.bonded[name].atoms
            idx = idx[gen[idx].any(1)] if len(idx) else idx
            if not len(idx):
                continue
            value = (geo.distance(x[:, idx[:, 0]], x[:, idx[:, 1]]) if name == "bond"
                     else geo.angle(*(x[:, idx[:, k]] for k in range(3))))
            lo, hi = self._bounds(table, [type_key(types[t]) for t in idx])
            total = total + a * (torch.relu(lo - value) ** 2 + torch.relu(value - hi) ** 2).sum(-1)
        for b in range(x.shape[0]):
            i, j, _ = ff.pairs(x[b].detach().numpy(), None)
            keep = gen[i] | gen[j]
            i, j = i[keep], j[keep]
            if not len(i):
                continue
            dmin = torch.tensor([self.min_distance.get(type_key((s, t)), 0.0) for s, t in zip(types[i], types[j])],
                                dtype=x.dtype)
            d = geo.distance(x[b, i], x[b, j])
            total[b] = total[b] + p.a_nonbonded * (torch.relu(1 - d / dmin.clamp(min=1e-9)) ** 2).sum()
        return p.weight(epoch) * total

    def state_dict(self) -> dict:
        return {"bond_range": self.bond_range, "angle_range": self.angle_range, "min_distance": self.min_distance}
