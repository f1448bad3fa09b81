"""What a metric plugin builds on: observables, binnings, the evaluation context, MSM helpers, plot colours.

Part of :mod:`backmap.api`, the one surface plugins import."""
from __future__ import annotations

from backmap.metrics import Analysis, Binning, EvalContext, FrameBatch, Histogram, Observable, geometry, stereo, terms  # noqa: F401
from backmap.metrics.divergence import histogram2d  # noqa: F401
from backmap.metrics.msm import assign_states, dihedral_features, fit_states, have_deeptime, implied_timescales, lag_steps  # noqa: F401
from backmap.metrics.report import COLORS, REFERENCE_COLOR, _plt  # noqa: F401
from backmap.metrics.verdict import GOOD_FACTOR, verdict  # noqa: F401

__all__ = ['Analysis', 'Binning', 'COLORS', 'EvalContext', 'GOOD_FACTOR', 'FrameBatch', 'Histogram', 'Observable', 'REFERENCE_COLOR', '_plt', 'assign_states', 'dihedral_features', 'fit_states', 'geometry', 'have_deeptime', 'histogram2d', 'implied_timescales', 'lag_steps', 'stereo', 'terms', 'verdict']
