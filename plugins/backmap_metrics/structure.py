"""Non-bonded structure: radial distribution functions per element pair and clashes."""
from __future__ import annotations

import itertools

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import Metric
from backmap.api.metrics import Binning, EvalContext, FrameBatch, Histogram, Observable, terms


class RdfParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r_min: float = Field(0.1, ge=0, description="nm")
    r_max: float = Field(1.0, gt=0, description="nm (at most half the box height)")
    width: float = Field(0.01, gt=0, description="bin width (nm)")
    exclude_bonds: int | None = Field(3, ge=0, description="leave out pairs at most this many bonds apart; "
                                                            "null: the force field's exclusions instead")


class Rdf(Metric):
    """g(r) per element pair (both elements' atoms of all types), pairs at most ``exclude_bonds``
    bonds apart left out (as DeepBackmap's sPS RDFs, ``ps_excl.tpr`` with nrexcl = 3). g(r) is
    normalized by the ideal-gas count of the same (non-excluded) pairs; the divergences compare
    g(r) over r_min…r_max normalized to unit area (each bin weighted alike, not by r²)."""

    name = "rdf"
    summary = "radial distribution per element pair, bonded neighbours excluded (0.01 nm bins)"
    Params = RdfParams

    def prepare(self, context: EvalContext) -> list[Observable]:
        p = self.params
        if p.r_max <= p.r_min:
            self.skipped = "r_max must exceed r_min"
            return []
        el = context.elements
        self.names = sorted(set(el.tolist()))
        code = {e: k for k, e in enumerate(self.names)}
        self.atom_el = np.array([code[e] for e in el], np.int64)
        n_el = len(self.names)
        self.pair_id = np.full((n_el, n_el), -1, np.int64)
        self.pair_names, n_pairs = [], []
        counts = np.bincount(self.atom_el, minlength=n_el)
        # pairs left out, per element pair: subtracted from the ideal-gas count
        n = p.exclude_bonds
        keys = (context.exclusion_keys if n is None else
                context.shared(f"pairs_within_{n}", lambda: terms.pairs_within(context.topology, n)))
        ei, ej = self.atom_el[keys // context.n_atoms], self.atom_el[keys % context.n_atoms]
        for a, b in itertools.combinations_with_replacement(range(n_el), 2):
            self.pair_id[a, b] = self.pair_id[b, a] = len(self.pair_names)
            self.pair_names.append(f"{self.names[a]}-{self.names[b]}")
            total = counts[a] * (counts[a] - 1) / 2 if a == b else counts[a] * counts[b]
            excluded = np.sum(((ei == a) & (ej == b)) | ((ei == b) & (ej == a)))
            n_pairs.append(total - excluded)
        self.n_pairs = np.array(n_pairs, float)
        self.edges = np.arange(round((p.r_max - p.r_min) / p.width) + 1) * p.width + p.r_min
        context.need_pairs(float(self.edges[-1]))
        binning = Binning(width=p.width, lo=p.r_min, hi=float(self.edges[-1]))
        left_out = "force-field exclusions" if n is None else f"pairs within {n} bonds"
        return [Observable(f"rdf:{name}", "histogram", "rdf", "nm", binning, label=f"r {name} (nm)",
                           description=f"{name} pairs, {left_out} left out") for name in self.pair_names]

    def samples(self, batch: FrameBatch, context: EvalContext) -> dict[str, Histogram]:
        nb, n_pairs = len(self.edges) - 1, len(self.pair_names)
        lo, w = self.edges[0], self.params.width
        counts = np.zeros((len(batch), n_pairs, nb))
        r_max, n = float(self.edges[-1]), self.params.exclude_bonds
        pairs = batch.pairs(r_max) if n is None else batch.pairs_apart(r_max, n)
        n_el = len(self.names)
        for b, (i, j, r) in enumerate(pairs):
            k = ((r - lo) / w).astype(np.int64)  # truncation: r < lo gives k ≤ 0, dropped below
            ok = (r >= lo) & (k < nb)
            pid = self.pair_id.ravel()[self.atom_el[i[ok]] * n_el + self.atom_el[j[ok]]]
            counts[b] = np.bincount(pid * nb + k[ok], minlength=n_pairs * nb).reshape(n_pairs, nb)
        volume = np.abs(np.linalg.det(batch.vectors))
        shell = 4.0 / 3.0 * np.pi * (self.edges[1:] ** 3 - self.edges[:-1] ** 3)
        expected = self.n_pairs[None, :, None] * shell[None, None, :] / volume[:, None, None]
        return {f"rdf:{n}": Histogram(counts[:, k], expected[:, k]) for k, n in enumerate(self.pair_names)}


class ClashParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(0.1, gt=0, description="nm: closer pairs clash")
    bonds_apart: int = Field(3, ge=0, description="only pairs more than this many bonds apart "
                                                   "(or in different molecules)")


class Clashes(Metric):
    """Pairs more than ``bonds_apart`` bonds apart (or in different molecules) closer than
    ``threshold``, per atom and frame — including pairs the force field excludes (a collapsed
    phenyl ring in sPS, whose atoms are all mutually excluded, is a clash)."""

    name = "clashes"
    summary = "clash fraction: pairs > 3 bonds apart closer than 0.1 nm, per atom and frame"
    Params = ClashParams

    def prepare(self, context: EvalContext) -> list[Observable]:
        return [Observable("clash_fraction", "score", "clash", "pairs per atom",
                           label=f"clashes (< {self.params.threshold} nm, > {self.params.bonds_apart} bonds apart)",
                           description=f"pairs > {self.params.bonds_apart} bonds apart closer than "
                                       f"{self.params.threshold} nm, per atom", better="lower")]

    def samples(self, batch: FrameBatch, context: EvalContext) -> dict[str, np.ndarray]:
        pairs = batch.pairs_apart(self.params.threshold, self.params.bonds_apart)
        return {"clash_fraction": np.array([[len(i) / context.n_atoms] for i, _, _ in pairs])}
