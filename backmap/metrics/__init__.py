"""Evaluation: observables derived from the topology, compared between a reference trajectory and
candidate backmappings (Jensen–Shannon divergence, Wasserstein-1), reported in Markdown.

The observables themselves are :class:`backmap.Metric` plugins (built-ins in
``plugins/backmap_metrics``); this package holds what they share and the orchestration.
"""
from backmap.metrics.context import EvalContext, FrameBatch
from backmap.metrics.divergence import Binning, histogram, jsd, wasserstein
from backmap.metrics.spec import Analysis, Histogram, Observable
from backmap.metrics.timing import TimeStep

__all__ = ["Analysis", "Binning", "EvalContext", "FrameBatch", "Histogram", "Observable", "TimeStep", "histogram",
           "jsd", "wasserstein"]
