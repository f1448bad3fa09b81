"""Flat-bottom potentials (thesis eqs. 7.2–7.3): zero inside the range a target data set spans,
harmonic outside — bonds and angles outside [φ_min, φ_max] of their type, non-bonded distances
below d_min of their type pair. Thresholds are taken from the training pairs."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from backmap import BackmapError, Regularizer
from backmap.forcefield import ForceField, NonbondedSettings
from backmap.forcefield import geometry as geo
from backmap.training.regularization import RegularizerSample, Schedule


class FlatBottomParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: Schedule = Field(default_factory=lambda: Schedule(start=0.0, end=0.01, ramp_epochs=10))
    a_bond: float = Field(1e5, ge=0, description="a of eq. 7.2 for bonds (kJ/mol/nm²)")
    a_angle: float = Field(100.0, ge=0, description="a of eq. 7.2 for angles (kJ/mol/rad²)")
    a_nonbonded: float = Field(100.0, ge=0, description="a of eq. 7.3 (kJ/mol)")
    frames: int = Field(5, ge=1, description="training frames used to take the thresholds")
    cutoff: float = Field(0.6, gt=0, description="largest non-bonded distance looked at (nm)")


def _key(types) -> str:
    t = [str(x) for x in types]
    return "-".join(min(t, t[::-1]))


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
        """Take φ_min/φ_max and d_min per type from the first training frames."""
        pairs = context.pairs().train()
        if len(pairs) == 0:
            raise BackmapError("flat_bottom: no training frames to take thresholds from")
        ff = ForceField(context.topology, NonbondedSettings(rvdw=self.params.cutoff, rcoulomb=self.params.cutoff))
        types = np.concatenate([np.tile(b.moltype.atom_types, b.count) for b in context.topology.blocks])
        n = min(self.params.frames, len(pairs))
        x = torch.as_tensor(pairs.aa[:n], dtype=torch.float64)
        bonds, angles = ff.params.bonded["bond"].atoms, ff.params.bonded["angle"].atoms
        r = geo.distance(x[:, bonds[:, 0]], x[:, bonds[:, 1]]).numpy()
        theta = geo.angle(*(x[:, angles[:, k]] for k in range(3))).numpy()
        self.bond_range = self._ranges(r, [_key(types[b]) for b in bonds])
        self.angle_range = self._ranges(theta, [_key(types[a]) for a in angles])
        dmin: dict[str, float] = defaultdict(lambda: np.inf)
        from backmap.system.pbc import box_vectors

        for k in range(n):
            i, j, shift = ff.pairs(pairs.aa[k].astype(float), box_vectors(pairs.dimensions[k]))
            d = np.linalg.norm(pairs.aa[k, j] + shift - pairs.aa[k, i], axis=1)
            keys = np.array([_key((a, b)) for a, b in zip(types[i], types[j])])
            for key in np.unique(keys):
                dmin[key] = min(dmin[key], float(d[keys == key].min()))
        self.min_distance = dict(dmin)

    @staticmethod
    def _ranges(values: np.ndarray, keys: list[str]) -> dict[str, tuple[float, float]]:
        keys_arr = np.array(keys)
        return {k: (float(values[:, keys_arr == k].min()), float(values[:, keys_arr == k].max()))
                for k in sorted(set(keys))}

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
            lo, hi = self._bounds(table, [_key(types[t]) for t in idx])
            total = total + a * (torch.relu(lo - value) ** 2 + torch.relu(value - hi) ** 2).sum(-1)
        for b in range(x.shape[0]):
            i, j, _ = ff.pairs(x[b].detach().numpy(), None)
            keep = gen[i] | gen[j]
            i, j = i[keep], j[keep]
            if not len(i):
                continue
            dmin = torch.tensor([self.min_distance.get(_key((s, t)), 0.0) for s, t in zip(types[i], types[j])],
                                dtype=x.dtype)
            d = geo.distance(x[b, i], x[b, j])
            total[b] = total[b] + p.a_nonbonded * (torch.relu(1 - d / dmin.clamp(min=1e-9)) ** 2).sum()
        return p.weight(epoch) * total

    def state_dict(self) -> dict:
        return {"bond_range": self.bond_range, "angle_range": self.angle_range, "min_distance": self.min_distance}
