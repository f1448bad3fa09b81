"""Chain conformations (thesis table 7.1): end-to-end distance squared R_e², radius of gyration
squared R_g² and contour length per molecule, for linear chains. The chain is the molecule's heavy
atoms (all particles at a CG resolution without hydrogens) when they form one unbranched path; other
molecule types are skipped. R_g is geometric (unweighted) over the chain particles; molecules are made
whole first. Means (⟨R_e²⟩, ⟨R_g²⟩, ⟨L⟩) are in the report's table; the distributions get a JSD."""
from __future__ import annotations

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import Metric
from backmap.api.metrics import Binning, EvalContext, FrameBatch, Observable


class ChainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_length: int = Field(3, ge=2, description="chains with fewer particles are skipped")
    re2_width: float = Field(0.05, gt=0, description="bin width of R_e² (nm²)")
    rg2_width: float = Field(0.005, gt=0, description="bin width of R_g² (nm²)")
    contour_width: float = Field(0.01, gt=0, description="bin width of the contour length (nm)")


def backbone(moltype) -> np.ndarray | None:
    """Heavy-atom chain of a molecule type in bond order, or None if it is not one unbranched path."""
    heavy = [i for i in range(moltype.n_atoms) if moltype.elements[i] != "H"]
    g = moltype.graph.subgraph(heavy)
    if len(heavy) < 2 or not nx.is_connected(g) or g.number_of_edges() != len(heavy) - 1 \
            or max(d for _, d in g.degree()) > 2:
        return None
    end = min(i for i, d in g.degree() if d == 1)
    return np.array(list(nx.dfs_preorder_nodes(g, end)), int)


class Chains(Metric):
    name = "chains"
    summary = "linear chains: R_e², R_g² and contour length per molecule (thesis table 7.1)"
    Params = ChainParams

    def prepare(self, context: EvalContext) -> list[Observable]:
        p = self.params
        self.chains: dict[str, np.ndarray] = {}  # moltype -> (n_molecules, chain length) global indices
        skipped = []
        for block in context.topology.blocks:
            mt = block.moltype
            order = backbone(mt)
            if order is None or len(order) < p.min_length:
                skipped.append(mt.name)
                continue
            first = block.first_atom + mt.n_atoms * np.arange(block.count)
            rows = first[:, None] + order[None]
            self.chains[mt.name] = np.concatenate([self.chains[mt.name], rows]) if mt.name in self.chains else rows
        if not self.chains:
            self.skipped = f"no linear chain of ≥ {p.min_length} heavy particles ({', '.join(skipped)})"
            return []
        out = []
        for name, rows in self.chains.items():
            what = f"{len(rows)} molecules, chain of {rows.shape[1]} particles"
            out += [Observable(f"chain:Re2:{name}", "distribution", "chain", "nm²", Binning(width=p.re2_width),
                               label=f"R_e² {name} (nm²)", description=what),
                    Observable(f"chain:Rg2:{name}", "distribution", "chain", "nm²", Binning(width=p.rg2_width),
                               label=f"R_g² {name} (nm²)", description=what),
                    Observable(f"chain:contour:{name}", "distribution", "chain", "nm",
                               Binning(width=p.contour_width), label=f"contour length {name} (nm)", description=what)]
        return out

    def samples(self, batch: FrameBatch, context: EvalContext) -> dict[str, np.ndarray]:
        x = batch.whole
        out = {}
        for name, rows in self.chains.items():
            c = x[:, rows]  # (B, molecules, length, 3)
            out[f"chain:Re2:{name}"] = ((c[:, :, -1] - c[:, :, 0]) ** 2).sum(-1)
            out[f"chain:Rg2:{name}"] = ((c - c.mean(2, keepdims=True)) ** 2).sum(-1).mean(-1)
            out[f"chain:contour:{name}"] = np.linalg.norm(np.diff(c, axis=2), axis=-1).sum(-1)
        return out
