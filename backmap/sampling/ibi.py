"""Target statistics in the selection energy by iterative Boltzmann inversion (IBI, Reith, Pütz &
Müller-Plathe 2003), for morphing.

The flat-bottom penalties of thesis eqs. 7.2–7.3 only keep candidates inside the target's ranges;
inside them the morphs' distributions are whatever the generator's conditional gives on the top-down
model's bottleneck — and on a compressed bottleneck a faithful conditional compresses too
(docs/morph.md). IBI tables U(v) per term family (bond length, angle, non-bonded distance) and type
key are added to the selection energy and corrected after each round of morphing a set of fit frames:

    U_{n+1}(v) = U_n(v) + α kT ln(P_n(v) / P_target(v))

(histograms smoothed; a step at most ``max_step`` kT), as IBI corrects a CG potential until the CG
model's distributions match the mapped reference. The candidates are drawn with the Boltzmann
selector at the tables' temperature, so the morphs' marginals converge to the target's while the
generator and the bottleneck keep everything the tables do not see (torsions, chain shape).
"""
from __future__ import annotations

import math
from typing import Iterable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from backmap.constants import BOLTZMANN
from backmap.errors import BackmapError
from backmap.metrics.divergence import jsd
from backmap.sampling.flat_bottom import TermValues
from backmap.system.pbc import box_vectors

Family = Literal["bond", "angle", "nonbonded"]
WIDTH = {"bond": 0.0025, "angle": math.radians(1.0), "nonbonded": 0.01}  # evaluate's bins
TOP = {"bond": 1.0, "angle": math.pi}  # table ends (nonbonded: the cut-off)


class IBITables(BaseModel):
    """Selection-energy tables (kJ/mol at bin centres) and how they are fitted; stored as JSON
    with a morph's outputs and read back by ``backmap morph --ibi``."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(gt=0, description="K: kT of the inversion; candidates are drawn with the Boltzmann "
                                                  "selector at this temperature")
    iterations: int = Field(8, ge=0, description="IBI rounds when fitted (morph step)")
    fit_frames: str | None = Field(None, description="frames of the top-down input morphed in each round "
                                                     "('start:stop:step'; default: every 4th of the first half)")
    alpha: float = Field(1.0, gt=0, le=2, description="fraction of the Boltzmann-inverted correction applied")
    max_step: float = Field(1.0, gt=0, description="largest change of a table value per round (kT)")
    smooth: float = Field(1.0, ge=0, description="Gaussian smoothing of both histograms (bins)")
    families: list[Family] = Field(default_factory=lambda: ["bond", "angle", "nonbonded"])
    cutoff: float = Field(0.7, gt=0, description="non-bonded table end (nm): at most the model's environment radius, "
                                                 "the farthest a candidate's scorer sees")
    exclude_bonds: int = Field(3, ge=1, description="non-bonded pairs at most this many bonds apart are left out")
    tables: dict[str, dict[str, list[float]]] = Field(default_factory=dict, description="family -> type key -> values")
    target: dict[str, dict[str, list[float]]] = Field(default_factory=dict, description="the target's densities")
    log: list[dict] = Field(default_factory=list, description="per round: JSD of each family to the target")

    @property
    def kt(self) -> float:
        return BOLTZMANN * self.temperature

    def edges(self, family: str) -> np.ndarray:
        top = self.cutoff if family == "nonbonded" else TOP[family]
        return np.arange(round(top / WIDTH[family]) + 1) * WIDTH[family]

    def densities(self, topology, frames: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
        """Histograms per family and key of whole-molecule ``frames``: bonded ones normalized to
        1, non-bonded ones per unit of Σ 1/V over the frames (∝ g(r) times the shell volume: the
        ratio of two is g's ratio)."""
        terms = TermValues(topology, self.exclude_bonds, self.cutoff)
        counts: dict[str, dict[str, np.ndarray]] = {}
        inv_volume, n = 0.0, 0
        for positions, dimensions in frames:
            n += 1
            inv_volume += 1.0 / abs(float(np.linalg.det(box_vectors(dimensions))))
            for (fam, key), v in terms(positions, dimensions).items():
                if fam in self.families:
                    h = np.histogram(v, self.edges(fam))[0].astype(float)
                    counts.setdefault(fam, {})[key] = counts.get(fam, {}).get(key, 0.0) + h
        if n == 0:
            raise BackmapError("IBI: no frames to take distributions from")
        return {fam: {key: h / inv_volume if fam == "nonbonded" else h / max(h.sum(), 1.0) for key, h in keys.items()}
                for fam, keys in counts.items()}

    def set_target(self, densities: dict[str, dict[str, np.ndarray]]) -> None:
        """The target's :meth:`densities`; the tables start at zero."""
        self.target = {f: {k: np.asarray(v, float).tolist() for k, v in d.items()} for f, d in densities.items()}
        self.tables = {f: {k: [0.0] * len(v) for k, v in d.items()} for f, d in self.target.items()}

    def update(self, current: dict[str, dict[str, np.ndarray]]) -> dict:
        """One IBI round from the morphs' :meth:`densities`; returns (and logs) each family's mean
        JSD to the target before the update."""
        if not self.target:
            raise BackmapError("IBI: set_target first")
        entry: dict = {"round": len(self.log)}
        for fam, keys in self.target.items():
            jsds = []
            for key, t in keys.items():
                t = _smooth(np.asarray(t), self.smooth)
                m = _smooth(np.asarray(current.get(fam, {}).get(key, np.zeros_like(t)), float), self.smooth)
                jsds.append(jsd(m, t))
                floor = 1e-3 * max(t.max(), m.max(), 1e-300)
                step = np.log((m + floor) / (t + floor))
                step[(m <= 0) & (t <= 0)] = 0.0
                step = np.clip(self.alpha * step, -self.max_step, self.max_step)
                table = np.asarray(self.tables[fam][key]) + self.kt * step
                if fam == "nonbonded":  # the energy must vanish where pairs leave the scorer's view
                    table -= table[-5:].mean()
                self.tables[fam][key] = table.tolist()
            entry[fam] = float(np.mean(jsds))
        self.log.append(entry)
        return entry

    def compiled(self, family: str, keys: list[str]) -> tuple[torch.Tensor, dict[str, int]]:
        """(n_keys, n_bins) table rows for ``family`` and each key's row (keys without a table
        are left out: no energy)."""
        have = [k for k in keys if k in self.tables.get(family, {})]
        rows = torch.as_tensor(np.array([self.tables[family][k] for k in have]).reshape(len(have), -1),
                               dtype=torch.float32)
        return rows, {k: i for i, k in enumerate(have)}

    def lookup(self, family: str, rows: torch.Tensor, row: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Table energies at ``value`` (linear between bin centres, the end values beyond) for
        ``row`` indices (−1: no table, energy 0); ``row`` broadcasts against ``value``."""
        if rows.numel() == 0:
            return torch.zeros_like(value)
        w = WIDTH[family]
        n = rows.shape[1]
        pos = (value / w - 0.5).clamp(0, n - 1)
        lo = pos.floor().long().clamp(max=n - 2) if n > 1 else pos.floor().long()
        frac = pos - lo
        r = row.clamp(min=0).expand_as(value)
        flat = rows.reshape(-1)
        e0 = flat[r * n + lo]
        e1 = flat[r * n + (lo + 1).clamp(max=n - 1)]
        e = e0 + frac * (e1 - e0)
        return torch.where(row.expand_as(value) >= 0, e, torch.zeros(()))


def _smooth(h: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return h
    half = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    return np.convolve(h, k / k.sum(), mode="same")
