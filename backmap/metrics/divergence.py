"""Divergences between a reference and a candidate ensemble of one observable.

Jensen–Shannon divergence in bits (0 = identical, 1 = disjoint) between histograms on fixed bins,
and Wasserstein-1 (earth mover's distance) in the observable's unit. The bins are part of the
definition — a JSD is only comparable between runs that use the same bins — so they are fixed by a
:class:`Binning` per observable (docs/evaluation.md lists them), never chosen from the data alone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy.stats import wasserstein_distance

#: more bins than this (e.g. one absurd bond length in a candidate) and the range is clipped
MAX_BINS = 20_000


@dataclass(frozen=True)
class Binning:
    """How an observable is histogrammed.

    Either a fixed ``width`` — edges at integer multiples of it, so that the bins do not depend on
    the data, spanning ``[lo, hi]`` when given (e.g. dihedrals −180…180°) or else the range of all
    samples — or ``n_bins`` equal bins over the *reference* range widened by ``widen`` × its span
    on each side (LJ energy per molecule). Samples outside the range count in the end bins, so no
    probability is lost and a candidate far outside the reference range scores JSD = 1.
    ``periodic``: the range is a circle (dihedrals); Wasserstein-1 is then the circular one.
    """

    width: float | None = None
    n_bins: int | None = None
    widen: float = 0.2
    lo: float | None = None
    hi: float | None = None
    periodic: bool = False

    def __post_init__(self) -> None:
        if (self.width is None) == (self.n_bins is None):
            raise ValueError("give exactly one of width or n_bins")

    def describe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and not (k == "widen" and self.width)}

    def edges(self, reference: np.ndarray, others: Sequence[np.ndarray] = ()) -> np.ndarray:
        """Bin edges for samples ``reference`` (and ``others`` for a fixed-width range)."""
        ref = _finite(reference)
        if self.n_bins is not None:
            lo, hi = (float(ref.min()), float(ref.max())) if ref.size else (0.0, 1.0)
            span = hi - lo if hi > lo else max(abs(hi), 1.0) * 1e-3
            return np.linspace(lo - self.widen * span, hi + self.widen * span, self.n_bins + 1)
        w = float(self.width)
        if self.lo is not None and self.hi is not None:
            lo, hi = self.lo, self.hi
        else:
            every = np.concatenate([ref] + [_finite(o) for o in others]) if others else ref
            lo, hi = (float(every.min()), float(every.max())) if every.size else (0.0, w)
            if (hi - lo) / w > MAX_BINS:  # clip to the reference range widened generously
                r_lo, r_hi = (float(ref.min()), float(ref.max())) if ref.size else (lo, hi)
                pad = max(50 * w, 5 * (r_hi - r_lo))
                lo, hi = max(lo, r_lo - pad), min(hi, r_hi + pad)
            lo, hi = np.floor(lo / w) * w, (np.floor(hi / w) + 1) * w
        n = max(1, int(round((hi - lo) / w)))
        return lo + w * np.arange(n + 1)


def _finite(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64).ravel()
    return a[np.isfinite(a)]


def histogram(samples: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin; samples outside the edges count in the first or last bin."""
    s = _finite(samples)
    idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(idx, minlength=len(edges) - 1).astype(np.float64)


def histogram2d(samples: np.ndarray, edges: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Counts on a 2-D grid for samples (..., 2), out-of-range values in the end bins."""
    s = np.asarray(samples, np.float64).reshape(-1, 2)
    s = s[np.isfinite(s).all(1)]
    ix = np.clip(np.searchsorted(edges[0], s[:, 0], side="right") - 1, 0, len(edges[0]) - 2)
    iy = np.clip(np.searchsorted(edges[1], s[:, 1], side="right") - 1, 0, len(edges[1]) - 2)
    nx, ny = len(edges[0]) - 1, len(edges[1]) - 1
    return np.bincount(ix * ny + iy, minlength=nx * ny).reshape(nx, ny).astype(np.float64)


def jsd(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence in bits between two histograms (counts or probabilities on the
    same bins, any shape): 0 for identical, 1 for disjoint distributions; symmetric."""
    p = np.asarray(p, np.float64).ravel()
    q = np.asarray(q, np.float64).ravel()
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(min(1.0, max(0.0, 0.5 * kl(p) + 0.5 * kl(q))))


def wasserstein(u: np.ndarray, v: np.ndarray, period: float | None = None) -> float:
    """Wasserstein-1 distance between two sets of samples, in their unit. With ``period`` (e.g.
    360 for angles in degrees) the samples live on a circle and the circular distance is used."""
    u, v = _finite(u), _finite(v)
    if not u.size or not v.size:
        return float("nan")
    if period is None:
        return float(wasserstein_distance(u, v))
    # on a circle: W1 = min over c of ∫|F − G − c|, attained at the median of F − G (exact on the
    # merged sample points; Rabin et al. 2011)
    u, v = np.mod(u, period), np.mod(v, period)
    x = np.sort(np.concatenate([u, v, [0.0, period]]))
    F = np.searchsorted(np.sort(u), x[:-1], side="right") / u.size
    G = np.searchsorted(np.sort(v), x[:-1], side="right") / v.size
    d, dx = F - G, np.diff(x)
    return float(np.sum(np.abs(d - _weighted_median(d, dx)) * dx))


def wasserstein_histogram(p: np.ndarray, q: np.ndarray, edges: np.ndarray, periodic: bool = False) -> float:
    """Wasserstein-1 between two histograms on the same ``edges`` (mass at the bin centres)."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    centres = 0.5 * (edges[1:] + edges[:-1])
    if not periodic:
        return float(wasserstein_distance(centres, centres, p, q))
    d = np.cumsum(p / p.sum() - q / q.sum())
    dx = np.diff(edges)
    return float(np.sum(np.abs(d - _weighted_median(d, dx)) * dx))


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    c = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(c, 0.5 * c[-1])])
