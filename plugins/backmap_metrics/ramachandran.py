"""(φ, ψ) backbone dihedrals of peptides: 1-D distributions, the 2-D Ramachandran map, and its
free-energy surface F = −kT ln p (thesis ch. 8) for the reference and candidates side by side."""
from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import Metric
from backmap.api.forcefield import BOLTZMANN
from backmap.api.metrics import Analysis, Binning, EvalContext, FrameBatch, Observable, geometry, histogram2d, terms

#: Boltzmann's constant times Avogadro's, kJ/mol/K


class RamaParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: float = Field(5.0, gt=0, description="bin width of the φ and ψ distributions (degrees)")
    map_width: float = Field(10.0, gt=0, description="bin width of the 2-D (φ, ψ) map (degrees)")
    temperature: float = Field(300.0, gt=0, description="K, for the free-energy surface −kT ln p")


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

    def analyse(self, samples: dict[str, dict[str, Any]], context: EvalContext) -> Analysis | None:
        """The (φ, ψ) free-energy surface of each trajectory on the map's bins (all residues pooled),
        zero at its minimum; and per candidate the RMS difference to the reference's over the bins both
        visit, and the probability it puts in bins the reference never visits."""
        maps = {lab: s["rama:phi_psi"] for lab, s in samples.items() if "rama:phi_psi" in s}
        if "reference" not in maps:
            return None
        edges = np.arange(-180.0, 180.0 + 0.5 * self.params.map_width, self.params.map_width)
        kt = BOLTZMANN * self.params.temperature
        fes = {}
        for lab, angles in maps.items():
            h = histogram2d(angles, (edges, edges))
            with np.errstate(divide="ignore"):
                f = -kt * np.log(h / max(h.sum(), 1))
            fes[lab] = f - f[np.isfinite(f)].min() if np.isfinite(f).any() else f
        ref = fes["reference"]
        result: dict[str, Any] = {"temperature_K": self.params.temperature, "kT_kJ_mol": kt, "unit": "kJ/mol",
                                  "bin_deg": self.params.map_width, "candidates": {}}
        for lab, f in fes.items():
            if lab == "reference":
                continue
            both = np.isfinite(f) & np.isfinite(ref)
            p = np.exp(-f / kt)
            result["candidates"][lab] = {
                "rmsd_kJ_mol": float(np.sqrt(np.mean((f[both] - ref[both]) ** 2))) if both.any() else float("nan"),
                "mass_outside_reference": float(p[~np.isfinite(ref)].sum() / p.sum())}
        lines = [f"F(φ, ψ) = −kT ln p(φ, ψ) at {self.params.temperature:g} K (kT = {kt:.3f} kJ/mol), "
                 f"{self.params.map_width:g}° bins, zero at each surface's minimum; white: never visited."]
        if result["candidates"]:
            lines += ["", "| candidate | RMS ΔF over bins both visit (kJ/mol) | probability where the reference "
                          "never goes |", "|---|---|---|"]
            lines += [f"| {lab} | {r['rmsd_kJ_mol']:.3g} | {r['mass_outside_reference']:.3g} |"
                      for lab, r in result["candidates"].items()]
        return Analysis("(φ, ψ) free-energy surface", result, lines, {"rama_fes": _fes_figure(fes, edges)})


def _fes_figure(fes: dict[str, np.ndarray], edges: np.ndarray):
    from backmap.api.metrics import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, len(fes), figsize=(3.3 * len(fes) + 0.6, 3.2), squeeze=False)
    finite = fes["reference"][np.isfinite(fes["reference"])]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    for ax, (lab, f) in zip(axes[0], fes.items()):
        image = ax.imshow(np.where(np.isfinite(f), f, np.nan).T, origin="lower", cmap="viridis", vmin=0, vmax=vmax,
                          extent=(edges[0], edges[-1], edges[0], edges[-1]), aspect="auto")
        ax.set_title(lab, fontsize=9)
        ax.set_xlabel("φ (deg)", fontsize=8)
        ax.set_ylabel("ψ (deg)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(image, ax=list(axes[0]), label="F (kJ/mol)", shrink=0.9)
    return fig
