"""Reference against candidates, observable by observable: divergences, noise floor, scores.

The *noise floor* of an observable is the divergence between the first and the second half of the
reference frames (in trajectory order): what a perfect backmapper would score with this many
frames. Results are plain dicts (they go to ``metrics.json``); the binned densities the report
plots are kept in :class:`Compared`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backmap.metrics.divergence import (
    Binning,
    histogram,
    histogram2d,
    jsd,
    wasserstein,
    wasserstein_histogram,
)
from backmap.metrics.spec import Histogram, Observable


@dataclass
class Compared:
    """One observable compared: numbers for metrics.json and what the report plots."""

    observable: Observable
    result: dict[str, Any]
    #: bin edges (one array, or two for a 2-D map) and per-trajectory densities on them, for plots
    #: (the divergence bins, except for bins over the reference range, where candidates far outside
    #: would all sit in the end bins: those are plotted over the range of all trajectories)
    edges: Any = None
    densities: dict[str, np.ndarray] = field(default_factory=dict)


def _stats(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if not v.size:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def _halves(n: int) -> tuple[slice, slice]:
    return slice(0, n // 2), slice(n // 2, n)


def compare(obs: Observable, samples: dict[str, Any], reference: str, candidates: list[str]) -> Compared:
    """Compare ``samples[candidate]`` with ``samples[reference]`` for one observable; candidates
    without samples (e.g. no CG input paired with them) are left out."""
    present = [c for c in candidates if c in samples]
    if obs.kind == "score" and reference not in samples and present:  # e.g. CG RMSD: no CG input for the reference
        return Compared(obs, {"candidates": {c: _stats(samples[c]) for c in present}})
    if reference not in samples:
        return Compared(obs, {"missing": "no reference samples"})
    if obs.kind == "distribution":
        return _distribution(obs, samples, reference, present)
    if obs.kind == "histogram":
        return _histogram(obs, samples, reference, present)
    if obs.kind == "score":
        res = {"reference": _stats(samples[reference]),
               "candidates": {c: _stats(samples[c]) for c in present}}
        return Compared(obs, res)
    if obs.kind == "state":
        return _state(obs, samples, reference, present)
    if obs.kind == "series":  # the producing metric's analyse() compares these
        return Compared(obs, {"frames": {t: len(samples[t]) for t in [reference, *present]}})
    raise ValueError(f"observable {obs.name}: unknown kind {obs.kind!r}")


def _distribution(obs: Observable, samples, reference: str, present: list[str]) -> Compared:
    ref = np.asarray(samples[reference], np.float64)
    two_d = isinstance(obs.binning, tuple)
    if two_d:
        edges = tuple(b.edges(ref[..., k]) for k, b in enumerate(obs.binning))
        hist = lambda s: histogram2d(s, edges)  # noqa: E731
        periods = [_period(b) for b in obs.binning]
        w1 = lambda a, b: float(np.mean([wasserstein(a[..., k], b[..., k], periods[k])  # noqa: E731
                                         for k in range(2)]))
    else:
        edges = obs.binning.edges(ref, [np.asarray(samples[c], np.float64) for c in present])
        hist = lambda s: histogram(s, edges)  # noqa: E731
        period = _period(obs.binning)
        w1 = lambda a, b: wasserstein(a, b, period)  # noqa: E731
    h_ref = hist(ref)
    first, second = _halves(len(ref))
    res: dict[str, Any] = {"reference": _stats(ref), "bins": _bins(obs.binning, edges),
                           "noise_floor": {"jsd": jsd(hist(ref[first]), hist(ref[second])),
                                           "w1": w1(ref[first], ref[second])},
                           "candidates": {}}
    for c in present:
        s = np.asarray(samples[c], np.float64)
        res["candidates"][c] = {"jsd": jsd(h_ref, hist(s)), "w1": w1(ref, s), **_stats(s)}
    plot_edges = edges
    if not two_d and obs.binning.n_bins is not None:
        every = np.concatenate([np.asarray(samples[t], np.float64).ravel() for t in [reference, *present]])
        lo, hi = np.nanpercentile(every, [0.2, 99.8])
        plot_edges = np.linspace(lo, hi, obs.binning.n_bins + 1) if hi > lo else edges
    densities = {}
    for t in [reference, *present]:
        h = histogram2d(samples[t], plot_edges) if two_d else histogram(samples[t], plot_edges)
        densities[t] = h / max(h.sum(), 1)
    return Compared(obs, res, plot_edges, densities)


def _histogram(obs: Observable, samples, reference: str, present: list[str]) -> Compared:
    """Divergences of summed per-frame histograms — of counts / ideal counts (g(r)) when the
    metric gives the ideal counts, else of the counts themselves."""
    ref: Histogram = samples[reference]
    edges = obs.binning.edges(np.array([obs.binning.lo, obs.binning.hi]))
    first, second = _halves(len(ref))
    periodic = obs.binning.periodic
    h_ref = _curve(ref)
    a, b = _curve(ref.take(first)), _curve(ref.take(second))
    res: dict[str, Any] = {"reference": {"pairs": int(ref.counts.sum()), "frames": len(ref)},
                           "bins": _bins(obs.binning, edges),
                           "noise_floor": {"jsd": jsd(a, b), "w1": wasserstein_histogram(a, b, edges, periodic)},
                           "candidates": {}}
    densities = {reference: h_ref}
    for c in present:
        h: Histogram = samples[c]
        curve = densities[c] = _curve(h)
        res["candidates"][c] = {"jsd": jsd(h_ref, curve), "w1": wasserstein_histogram(h_ref, curve, edges, periodic),
                                "pairs": int(h.counts.sum()), "frames": len(h)}
    return Compared(obs, res, edges, densities)


def _curve(h: Histogram) -> np.ndarray:
    """counts / ideal counts (g(r)) when the metric gave them, else the normalized histogram."""
    counts = h.counts.sum(0)
    if h.expected is None:
        return counts / max(counts.sum(), 1)
    expected = h.expected.sum(0)
    return np.divide(counts, expected, out=np.zeros_like(counts), where=expected > 0)


def _state(obs: Observable, samples, reference: str, present: list[str]) -> Compared:
    ref = np.asarray(samples[reference])
    res: dict[str, Any] = {"reference": {"preserved": 1.0, "elements": int(ref.shape[1]) if ref.ndim > 1 else 1,
                                         "frames": len(ref)},
                           "candidates": {}}
    for c in present:
        s = np.asarray(samples[c])
        paired = len(s) == len(ref)
        against = ref if paired else ref[:1]  # unequal frame counts: the first reference frame
        same = s == against
        res["candidates"][c] = {"preserved": float(same.mean()), "frames": len(s),
                                "frames_all_preserved": float(same.reshape(len(s), -1).all(1).mean()),
                                "compared_with": "same frame" if paired else "first reference frame"}
    return Compared(obs, res)


def _period(b: Binning) -> float | None:
    return (b.hi - b.lo) if b.periodic and b.lo is not None and b.hi is not None else None


def _bins(binning, edges) -> dict[str, Any]:
    if isinstance(binning, tuple):
        return {"axes": [dict(b.describe(), n=len(e) - 1) for b, e in zip(binning, edges)]}
    return dict(binning.describe(), n=len(edges) - 1, lo=float(edges[0]), hi=float(edges[-1]))


def mean_jsd(compared: list[Compared], names: list[str] | None, trajectories: list[str]) -> dict[str, Any]:
    """Mean JSD per candidate (and of the noise floor) over the divergence observables whose
    names are in ``names`` (all when None); observables a candidate lacks are skipped for it."""
    rows = [c for c in compared if c.observable.kind in ("distribution", "histogram")
            and "candidates" in c.result and (names is None or c.observable.name in names)]
    out: dict[str, Any] = {"observables": [c.observable.name for c in rows], "candidates": {}}
    for t in trajectories:
        vals = [c.result["candidates"][t]["jsd"] for c in rows if t in c.result["candidates"]]
        out["candidates"][t] = float(np.nanmean(vals)) if vals else float("nan")
    floor = [c.result["noise_floor"]["jsd"] for c in rows]
    out["noise_floor"] = float(np.nanmean(floor)) if floor else float("nan")
    return out
