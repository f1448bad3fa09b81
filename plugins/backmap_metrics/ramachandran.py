"""(φ, ψ) backbone dihedrals of peptides: 1-D distributions and the 2-D Ramachandran map."""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap import Metric
from backmap.metrics import Binning, EvalContext, FrameBatch, Observable, geometry, terms


class RamaParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: float = Field(5.0, gt=0, description="bin width of the φ and ψ distributions (degrees)")
    map_width: float = Field(10.0, gt=0, description="bin width of the 2-D (φ, ψ) map (degrees)")


class Ramachandran(Metric):
    """Only for topologies with a peptide backbone: N, CA, C atoms of amino-acid residues joined
    by peptide bonds (C–N)."""

    name = "ramachandran"
    summary = "(φ, ψ) distributions and map for peptides (5° / 10° bins)"
    Params = RamaParams

    def prepare(self, context: EvalContext) -> list[Observable]:
        bb = terms.peptide_backbone(context.topology)
        self.phi = bb[bb[:, 0] >= 0][:, :4]
        self.psi = bb[bb[:, 4] >= 0][:, 1:]
        both = bb[(bb[:, 0] >= 0) & (bb[:, 4] >= 0)]
        self.map_phi, self.map_psi = both[:, :4], both[:, 1:]
        if not len(bb):
            self.skipped = "no peptide backbone (N, CA, C of amino-acid residues)"
            return []
        circle = Binning(width=self.params.width, lo=-180.0, hi=180.0, periodic=True)
        square = Binning(width=self.params.map_width, lo=-180.0, hi=180.0, periodic=True)
        out = []
        if len(self.phi):
            out.append(Observable("rama:phi", "distribution", "rama", "deg", circle, label="φ (deg)"))
        if len(self.psi):
            out.append(Observable("rama:psi", "distribution", "rama", "deg", circle, label="ψ (deg)"))
        if len(both):
            out.append(Observable("rama:phi_psi", "distribution", "rama", "deg", (square, square),
                                  label="(φ, ψ) map", description=f"{len(both)} residues with both"))
        return out

    def samples(self, batch: FrameBatch, context: EvalContext) -> dict[str, np.ndarray]:
        x = batch.whole
        out = {}
        if len(self.phi):
            out["rama:phi"] = geometry.dihedrals(x, self.phi)
        if len(self.psi):
            out["rama:psi"] = geometry.dihedrals(x, self.psi)
        if len(self.map_phi):
            out["rama:phi_psi"] = np.stack([geometry.dihedrals(x, self.map_phi),
                                            geometry.dihedrals(x, self.map_psi)], -1)
        return out
