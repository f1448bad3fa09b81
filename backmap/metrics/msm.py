"""Markov state models (MSMs) of a time series of dihedrals: implied timescales (thesis ch. 8).

States are k-means centres (deeptime) in the (cos, sin) embedding of the dihedrals — the circle made
Euclidean, so −179° and 179° are neighbours. They are fitted on the reference and reused for the
candidates, so that state i is the same region of (φ, ψ) for every trajectory. The timescales
t_i = −τ_lag / ln |λ_i| come from the eigenvalues λ_i (i ≥ 2) of a reversible maximum-likelihood
transition matrix at lag τ_lag, restricted to the largest connected set of states. Error bars: the
estimate ± z σ, σ from a bootstrap over contiguous blocks of the trajectory (blocks drawn with
replacement, each block a separate piece, so no transition is counted across a seam), which keeps
the time correlation that a resampling of single transitions would destroy; seeded, hence
reproducible. (deeptime's Bayesian MSM would do too, but its sampler cannot be seeded.)

deeptime is an optional dependency (``pip install backmap[dynamics]``).
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy.stats import norm

from backmap.errors import BackmapError


def have_deeptime() -> bool:
    """Whether deeptime is installed (the MSM metric is skipped without it); not imported here
    (that takes seconds, and only the analysis needs it)."""
    return importlib.util.find_spec("deeptime") is not None


def dihedral_features(angles: np.ndarray) -> np.ndarray:
    """(T, 2k) features (cos, sin) of T frames of k dihedrals in degrees, given as (T, …)."""
    a = np.radians(np.asarray(angles, np.float64).reshape(len(angles), -1))
    return np.concatenate([np.cos(a), np.sin(a)], axis=1)


def fit_states(features: np.ndarray, n_states: int, seed: int = 0) -> Any:
    """deeptime KMeansModel with ``n_states`` centres (at most one per frame), k-means++ seeded,
    one thread (deeptime is deterministic only so)."""
    from deeptime.clustering import KMeans

    n = max(1, min(int(n_states), len(features)))
    return KMeans(n_clusters=n, fixed_seed=int(seed), n_jobs=1, max_iter=1000).fit(
        np.ascontiguousarray(features, np.float64)).fetch_model()


def assign_states(model: Any, features: np.ndarray) -> np.ndarray:
    """The nearest centre of each frame: a discrete trajectory (T,) of state indices."""
    return model.transform(np.ascontiguousarray(features, np.float64), n_jobs=1).astype(np.int32)


def lag_steps(lag: float, tau: float) -> int:
    """The lag in frames nearest to ``lag`` ps for frames ``tau`` ps apart (halves up; at least 1)."""
    return max(1, int(np.floor(lag / tau + 0.5)))


def msm_timescales(dtrajs: Sequence[np.ndarray], lag: int, k: int) -> tuple[np.ndarray, int]:
    """The first ``k`` implied timescales in frames of a reversible maximum-likelihood MSM at lag
    ``lag`` frames on the largest connected set (NaN where it has too few states), and that set's size."""
    from deeptime.markov import TransitionCountEstimator
    from deeptime.markov.msm import MaximumLikelihoodMSM

    counts = TransitionCountEstimator(lag, "sliding").fit_fetch([np.asarray(d, np.int32) for d in dtrajs])
    counts = counts.submodel_largest()
    out = np.full(k, np.nan)
    if counts.n_states >= 2:
        model = MaximumLikelihoodMSM(reversible=True).fit_fetch(counts)
        ts = np.asarray(model.timescales(min(k, counts.n_states - 1)), np.float64)
        out[:len(ts)] = ts
    return out, int(counts.n_states)


@dataclass
class ImpliedTimescales:
    """The first k implied timescales (ps) of one trajectory, with a block-bootstrap interval."""

    tau: float  # ps between frames
    lag_frames: int
    lag: float  # ps, = lag_frames × tau
    values: np.ndarray  # (k,) maximum-likelihood estimates, ps
    lower: np.ndarray  # (k,) values − z σ (≥ 0), ps
    upper: np.ndarray  # (k,) values + z σ, ps
    std: np.ndarray  # (k,) σ, the block-bootstrap standard deviation, ps
    n_states: int  # states in the largest connected set
    n_blocks: int

    @property
    def resolved(self) -> np.ndarray:
        """(k,) whether each timescale exceeds the lag: shorter ones (λ < 1/e) are not resolved."""
        return np.nan_to_num(self.values) > self.lag

    def as_dict(self) -> dict[str, Any]:
        out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}
        return out | {"resolved": self.resolved.tolist()}


def implied_timescales(dtraj: np.ndarray, tau: float, lag: float, k: int = 3, n_bootstrap: int = 100,
                       n_blocks: int = 10, confidence: float = 0.95, seed: int = 0) -> ImpliedTimescales:
    """Implied timescales (ps) of the discrete trajectory ``dtraj`` (frames ``tau`` ps apart) at the
    lag nearest ``lag`` ps. Error bars: the estimate ± z σ, σ the standard deviation over
    ``n_bootstrap`` resamplings of ``n_blocks`` contiguous blocks (fewer when a block would be shorter
    than 4 lags), z the normal quantile of ``confidence`` (1.96 for 0.95). Centred on the estimate:
    with 100 states and a few thousand frames the resampled timescales are biased upwards (sparse
    counts look metastable), so their percentiles can miss the estimate itself."""
    dtraj = np.asarray(dtraj, np.int32)
    steps = lag_steps(lag, tau)
    if len(dtraj) <= 2 * steps:
        raise BackmapError(f"{len(dtraj)} frames are too few for a lag of {steps} frames")
    values, n_active = msm_timescales([dtraj], steps, k)
    blocks = max(1, min(n_blocks, len(dtraj) // (4 * steps)))
    pieces = np.array_split(dtraj, blocks)
    rng = np.random.default_rng(seed)
    boot = np.array([msm_timescales([pieces[i] for i in rng.integers(0, blocks, blocks)], steps, k)[0]
                     for _ in range(n_bootstrap if blocks > 1 else 0)]).reshape(-1, k)
    std = np.full(k, np.nan)
    if len(boot) > 1:
        with warnings.catch_warnings():  # a process no resampling resolved: NaN, quietly
            warnings.simplefilter("ignore", RuntimeWarning)
            std = np.nanstd(boot, axis=0, ddof=1)
    half = norm.ppf(0.5 + confidence / 2) * std
    return ImpliedTimescales(tau, steps, steps * tau, values * tau, np.maximum(values - half, 0) * tau,
                             (values + half) * tau, std * tau, n_active, blocks)
