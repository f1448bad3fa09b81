"""The use cases recipe steps run (until the use-case layer of issue 58 replaces them): apply, morph, refine, evaluate, assess.

Part of :mod:`backmap.api`, the one surface plugins import."""
from __future__ import annotations

from backmap.engine.apply import backmap_to_files  # noqa: F401
from backmap.engine.morph import fit_ibi, morph_to_files, write_tables  # noqa: F401
from backmap.refinement.restrained import refine_files  # noqa: F401
from backmap.metrics.evaluate import EvaluationSpec, run_evaluation, step_settings  # noqa: F401
from backmap.metrics.assess import AssessmentSpec, labels_from_paths, run_assessment  # noqa: F401

__all__ = ['AssessmentSpec', 'EvaluationSpec', 'backmap_to_files', 'fit_ibi', 'labels_from_paths', 'morph_to_files', 'refine_files', 'run_assessment', 'run_evaluation', 'step_settings', 'write_tables']
