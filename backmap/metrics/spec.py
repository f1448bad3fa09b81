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
  with the reference frame at the same position: the fraction preserved;
- ``series``: per-frame values (B, …) that are not compared one by one but kept in trajectory order
  (the batches joined in frame order) for the metric's own ``analyse`` (e.g. the (φ, ψ) time series
  of a Markov state model).

A metric may define ``analyse(samples, context) -> Analysis | None``: called once in the main
process after sampling with ``samples[label][observable]`` of its own observables (every kind, in
trajectory order) for the reference and each candidate; ``context.time_steps`` gives each
trajectory's τ. Its :class:`Analysis` goes to ``metrics.json`` (``analyses``) and the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from backmap.metrics.divergence import Binning

Kind = Literal["distribution", "histogram", "score", "state", "series"]


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
    #: in the default headline mean whatever its family (e.g. the potential energy per molecule of
    #: a system with charges, which the LJ energy does not see)
    headline: bool = False

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


@dataclass
class Analysis:
    """A metric's result over whole trajectories (what per-frame samples cannot give: an MSM's
    timescales, a free-energy surface), computed by its ``analyse`` once all samples are in."""

    title: str  # the report's section heading
    result: dict[str, Any]  # → metrics.json ``analyses[metric name]`` (JSON-able; numpy is converted)
    lines: list[str] = field(default_factory=list)  # Markdown for the report section
    figures: dict[str, Any] = field(default_factory=dict)  # file stem → matplotlib Figure, saved as figures/<stem>.png
    notes: list[str] = field(default_factory=list)  # e.g. trajectories left out and why (the report's notes)
