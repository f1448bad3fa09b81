"""Energies per molecule with its environment: Lennard-Jones (the most sensitive probe of packing,
thesis Fig. 5.3) and the total potential energy, from backmap's force field.

The force field continues LJ linearly below 0.6 σ (finite forces for training on overlapping
atoms). For judging structures the plain 12-6 potential is the right one — a close contact must cost
what GROMACS says it costs — so by default the LJ energy is recomputed exactly on the force field's
own pair list (``lj: exact``; identical to the force field's wherever no pair is that close).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import Metric
from backmap.api.metrics import Binning, EvalContext, FrameBatch, Observable


class EnergyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_bins: int = Field(80, ge=2, description="bins over the reference range")
    widen: float = Field(0.2, ge=0, description="the range is the reference's, widened by this × its span per side")
    lj: Literal["exact", "forcefield"] = Field("exact", description="plain 12-6 LJ, or the force field's "
                                                                      "(linear below 0.6 σ)")


class Energy(Metric):
    name = "energy"
    summary = "LJ and total potential energy per molecule (80 bins over the widened reference range)"
    Params = EnergyParams

    def prepare(self, context: EvalContext) -> list[Observable]:
        if context.parameters is None:
            self.skipped = "no force-field parameters (energies need the GROMACS .top topology)"
            return []
        context.need_pairs(context.settings.cutoff)
        blocks = context.topology.blocks
        types = list(dict.fromkeys(b.moltype.name for b in blocks))
        first = np.cumsum([0] + [b.count for b in blocks])
        self.molecules: dict[str, np.ndarray] = {}
        for t in types:
            self.molecules[t] = np.concatenate([np.arange(first[k], first[k + 1])
                                                for k, b in enumerate(blocks) if b.moltype.name == t])
        suffix = (lambda t: "") if len(types) == 1 else (lambda t: f":{t}")  # noqa: E731
        binning = Binning(n_bins=self.params.n_bins, widen=self.params.widen)
        charged = bool(np.any(np.abs(context.parameters.charges) > 1e-6))  # then the potential is headline
        out = []
        for t in types:
            out.append(Observable(f"lj_per_molecule{suffix(t)}", "distribution", "energy", "kJ/mol", binning,
                                  label=f"LJ per molecule {t} (kJ/mol)",
                                  description="non-bonded Lennard-Jones energy of each molecule with its "
                                              "environment (pairs split half/half)"))
            out.append(Observable(f"potential_per_molecule{suffix(t)}", "distribution", "energy", "kJ/mol",
                                  binning, label=f"potential per molecule {t} (kJ/mol)",
                                  description="all force-field terms, per molecule", headline=charged))
        self.suffix = {t: suffix(t) for t in types}
        return out

    def samples(self, batch: FrameBatch, context: EvalContext) -> dict[str, np.ndarray]:
        e = batch.energies()
        lj = e["lj"]
        potential = e["potential"]
        if self.params.lj == "exact":
            exact = self._exact_lj(batch, context)
            potential = potential - lj + exact
            lj = exact
        out = {}
        for t, mols in self.molecules.items():
            out[f"lj_per_molecule{self.suffix[t]}"] = lj[:, mols]
            out[f"potential_per_molecule{self.suffix[t]}"] = potential[:, mols]
        return out

    @staticmethod
    def _exact_lj(batch: FrameBatch, context: EvalContext) -> np.ndarray:
        """Plain 12-6 LJ per molecule (B, n_molecules) on the force field's pairs, split half/half."""
        p, s = context.parameters, context.settings
        shift = (s.vdw_modifier == "potential-shift")
        out = np.zeros((len(batch), p.n_molecules))
        n_types = len(p.c6)
        for b, (i, j, r) in enumerate(batch.pairs(s.rvdw)):
            t = p.lj_type[i] * n_types + p.lj_type[j]
            c6, c12 = p.c6.ravel()[t], p.c12.ravel()[t]
            inv6 = 1.0 / r.astype(np.float64) ** 6
            e = c12 * inv6**2 - c6 * inv6
            if shift:
                e -= c12 / s.rvdw**12 - c6 / s.rvdw**6
            out[b] = 0.5 * (np.bincount(p.molecule[i], e, p.n_molecules) + np.bincount(p.molecule[j], e, p.n_molecules))
        return out
