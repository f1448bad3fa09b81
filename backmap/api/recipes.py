"""Recipes, plugins and models as steps see them: input paths, the registry, model files and cards.

Part of :mod:`backmap.api`, the one surface plugins import."""
from __future__ import annotations

from backmap.engine.recipe import InputPath, StepInput, format_errors, resolve_step_input  # noqa: F401
from backmap.engine.registry import default_registry  # noqa: F401
from backmap.engine.loaders import make_plugin  # noqa: F401
from backmap.engine.models import load_model, save_model  # noqa: F401
from backmap.engine.model_card import evaluation_entry, record_evaluation  # noqa: F401

__all__ = ['InputPath', 'StepInput', 'default_registry', 'evaluation_entry', 'format_errors', 'load_model', 'make_plugin', 'record_evaluation', 'resolve_step_input', 'save_model']
