"""What a metric plugin declares and returns: observables and their per-frame samples.

A metric produces *observables*, each of one kind that fixes how it is compared centrally:

- ``distribution``: values, an array (B, k) per batch of B frames (or (B, k, 2) for a 2-D map such
  as (φ, ψ)), compared by Jensen–Shannon divergence on the observable's :class:`Binning` and by
  Wasserstein-1;
- ``histogram``: counts per frame on fixed bins, a :class:`Histogram` (e.g. pair distances for an
  RDF, where keeping every distance would cost gigabytes), compared like a distribution;
- ``score``: a per-frame figure of merit (B, k) such as the clash fraction or the CG RMSD, reported
  as mean ± s.d. per trajectory, no divergence;
- ``state``: discrete per-frame labels (B, k) such as chirality signs, compared element by element
  with the reference frame at the same position: the fraction preserved.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from backmap.metrics.divergence import Binning

Kind = Literal["distribution", "histogram", "score", "state"]


@dataclass(frozen=True)
class Observable:
    """One compared quantity, e.g. ``bond:C-C`` (nm) or ``lj_per_molecule`` (kJ/mol)."""

    name: str
    kind: Kind
    family: str  # figure and table group: bond, angle, dihedral, improper, energy, rdf, …
    unit: str = ""
    binning: Binning | tuple[Binning, Binning] | None = None
    label: str = ""  # axis label for plots
    description: str = ""
    #: for scores: which direction is better ("lower": clashes, RMSD; "higher": fractions preserved)
    better: Literal["lower", "higher"] = "lower"

    def __post_init__(self) -> None:
        if self.kind in ("distribution", "histogram") and self.binning is None:
            raise ValueError(f"observable {self.name}: a {self.kind} needs a binning")


@dataclass
class Histogram:
    """Per-frame counts on the fixed bins of an observable's binning (``lo``…``hi`` by ``width``).

    ``expected``: the counts an ideal (uniform) system of the same density would give in each bin of
    each frame. With it, divergences and plots use ``Σ counts / Σ expected`` (e.g. g(r)); without,
    the summed counts."""

    counts: np.ndarray  # (B, n_bins)
    expected: np.ndarray | None = None  # (B, n_bins)

    @staticmethod
    def concatenate(parts: list["Histogram"]) -> "Histogram":
        counts = np.concatenate([p.counts for p in parts])
        if any(p.expected is None for p in parts):
            return Histogram(counts)
        return Histogram(counts, np.concatenate([p.expected for p in parts]))

    def __len__(self) -> int:
        return len(self.counts)

    def take(self, rows: slice | np.ndarray) -> "Histogram":
        return Histogram(self.counts[rows], None if self.expected is None else self.expected[rows])
