"""The use cases (:mod:`backmap.app`) as recipe steps run them: apply, morph, refine, evaluate,
assess — each a typed request -> result function, and the file-level functions under them.

Part of :mod:`backmap.api`, the one surface plugins import."""
from __future__ import annotations

from backmap.app.apply import ApplyRequest, apply_model  # noqa: F401
from backmap.app.assess import AssessmentSpec, AssessRequest, assess_models, labels_from_paths, run_assessment  # noqa: F401
from backmap.app.backmapping import Backmapped, backmap_to_files  # noqa: F401
from backmap.app.evaluate import EvaluateRequest, evaluate_candidates  # noqa: F401
from backmap.app.morph import MorphRequest, fit_ibi, morph_structures, morph_to_files, write_tables  # noqa: F401
from backmap.app.refine import Refined, RefineRequest, refine_files, refine_structures  # noqa: F401
from backmap.metrics.evaluate import EvaluationSpec, run_evaluation, step_settings  # noqa: F401

__all__ = ["ApplyRequest", "AssessRequest", "AssessmentSpec", "Backmapped", "EvaluateRequest", "EvaluationSpec",
           "MorphRequest", "RefineRequest", "Refined", "apply_model", "assess_models", "backmap_to_files",
           "evaluate_candidates", "fit_ibi", "labels_from_paths", "morph_structures", "morph_to_files",
           "refine_files", "refine_structures", "run_assessment", "run_evaluation", "step_settings", "write_tables"]
