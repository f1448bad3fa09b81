"""CG consistency: the backmapped structure mapped back to CG against the CG input it came from."""
from __future__ import annotations

import numpy as np

from backmap.api import Metric
from backmap.api.metrics import EvalContext, FrameBatch, Observable
from backmap.api.system import minimum_image


class CGRmsd(Metric):
    """RMSD (nm) per frame between the mapped structure and the CG input (minimum image per bead)."""

    name = "cg_rmsd"
    summary = "CG consistency: RMSD between the result mapped to CG and the CG input (needs --mapping, --cg)"

    def prepare(self, context: EvalContext) -> list[Observable]:
        if context.cg_topology is None or not context.has_cg_input:
            self.skipped = "no CG input (give a mapping and the CG trajectory: --mapping, --cg)"
            return []
        return [Observable("cg_rmsd", "score", "cg", "nm", label="CG RMSD",
                           description="RMSD between the mapped result and the CG input", better="lower")]

    def samples(self, batch: FrameBatch, context: EvalContext) -> dict[str, np.ndarray]:
        if batch.cg is None:
            return {}
        mapped = context.cg_topology.apply(batch.whole)
        d = np.stack([minimum_image(mapped[b] - batch.cg[b], batch.dimensions[b]) for b in range(len(batch))])
        return {"cg_rmsd": np.sqrt((d**2).sum(-1).mean(-1))[:, None]}
