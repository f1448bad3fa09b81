"""AA forces projected on the CG beads (thesis eq. 6.3): F_I = Σ_{i∈Ψ_I} f_i with the atomistic
force field. The most sensitive probe of steric consistency: a CG conformation that admits no
clash-free atomistic structure shows up as a tail of large bead forces (thesis ch. 6, Fig. 6.5)."""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import Metric
from backmap.api.metrics import Binning, EvalContext, FrameBatch, Observable


class BeadForceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_bins: int = Field(100, ge=2, description="bins over the widened reference range")
    widen: float = Field(0.5, ge=0, description="the range is the reference's, widened by this × its span per "
                                                "side; larger forces count in the last bin (the clash tail)")
    components: bool = Field(True, description="also compare the Cartesian components (x, y, z pooled)")


class BeadForces(Metric):
    """|F_I| and the components of F_I per bead type, F_I the AA forces (all force-field terms)
    summed over the atoms whose home bead is I — every atom counted once."""

    name = "bead_forces"
    summary = "AA forces summed per CG bead (thesis eq. 6.3): magnitude and components per bead type"
    Params = BeadForceParams

    def prepare(self, context: EvalContext) -> list[Observable]:
        if context.parameters is None:
            self.skipped = "no force-field parameters (forces need the GROMACS .top topology)"
            return []
        if context.cg_topology is None:
            self.skipped = "no mapping (bead forces need --mapping)"
            return []
        context.need_pairs(context.settings.cutoff)
        types = context.cg_topology.bead_types.astype(str)
        self.beads = {t: np.flatnonzero(types == t) for t in sorted(set(types.tolist()))}
        binning = Binning(n_bins=self.params.n_bins, widen=self.params.widen)
        out = []
        for t in self.beads:
            out.append(Observable(f"bead_force:{t}", "distribution", "force", "kJ/mol/nm", binning,
                                  label=f"|F| on bead {t} (kJ/mol/nm)",
                                  description=f"magnitude of the AA force summed over the atoms of each {t} bead"))
            if self.params.components:
                out.append(Observable(f"bead_force_xyz:{t}", "distribution", "force", "kJ/mol/nm", binning,
                                      label=f"F_x, F_y, F_z on bead {t} (kJ/mol/nm)",
                                      description=f"Cartesian components of the summed AA force on {t} beads"))
        return out

    def samples(self, batch: FrameBatch, context: EvalContext) -> dict[str, np.ndarray]:
        bead = context.cg_topology.sum_forces(batch.forces())  # (B, n_beads, 3)
        out = {}
        for t, idx in self.beads.items():
            f = bead[:, idx]
            out[f"bead_force:{t}"] = np.linalg.norm(f, axis=-1)
            if self.params.components:
                out[f"bead_force_xyz:{t}"] = f.reshape(len(batch), -1)
        return out
