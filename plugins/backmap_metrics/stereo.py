"""Stereochemistry: chirality of stereocentres, a polymer's dyads (tacticity) and cis/trans of double
bonds, as in the reference."""
from __future__ import annotations

import numpy as np

from backmap.api import Metric
from backmap.api.metrics import EvalContext, FrameBatch, Observable, stereo


class Stereo(Metric):
    """Stereo elements are perceived with RDKit once per molecule type; per frame, the sign of
    each centre's signed volume (≡ its R/S label) and each double bond's cis/trans are compared
    with the reference frame at the same position: the fraction preserved. For polymers, also each
    dyad of neighbouring backbone centres (meso or racemo): the tacticity, blind to which of a
    pattern's two mirror phases a chain has."""

    name = "stereo"
    summary = "stereochemistry preserved: chirality and cis/trans vs the reference (RDKit perception)"

    def prepare(self, context: EvalContext) -> list[Observable]:
        self.elements = stereo.perceive(context.topology, context.reference_frame)
        self.notes = self.elements.notes
        self.backbone, self.dyads = stereo.backbone_dyads(context.topology, context.reference_frame)
        out = []
        if len(self.elements.centres):
            out.append(Observable("stereo:chirality", "state", "stereo", "fraction", label="chirality preserved",
                                  description=f"{len(self.elements.centres)} stereocentres", better="higher"))
        if len(self.dyads):
            out.append(Observable("stereo:dyads", "state", "stereo", "fraction", label="tacticity (dyads) preserved",
                                  description=f"{len(self.dyads)} meso/racemo dyads of backbone stereocentres",
                                  better="higher"))
        if len(self.elements.double_bonds):
            out.append(Observable("stereo:cis_trans", "state", "stereo", "fraction", label="cis/trans preserved",
                                  description=f"{len(self.elements.double_bonds)} stereo double bonds",
                                  better="higher"))
        if not out:
            self.skipped = "no stereocentres or stereo double bonds" + (
                f" ({'; '.join(self.notes)})" if self.notes else "")
        return out

    def samples(self, batch: FrameBatch, context: EvalContext) -> dict[str, np.ndarray]:
        out = {}
        if len(self.elements.centres):
            out["stereo:chirality"] = stereo.chirality(batch.whole, self.elements.centres)
        if len(self.dyads):
            out["stereo:dyads"] = stereo.dyads(batch.whole, self.backbone, self.dyads)
        if len(self.elements.double_bonds):
            out["stereo:cis_trans"] = stereo.cis_trans(batch.whole, self.elements.double_bonds)
        return out
