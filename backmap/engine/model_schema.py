"""The schema of ``model.json``, checked when a model is loaded: every key a model must have, with
its type, and the state's numbers finite — so that a damaged or hand-edited model is one line naming
the file and the key, never a ``KeyError`` deep in a plugin or a NaN blamed on the output."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from backmap.errors import BackmapError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # newer keys are kept: a model may be read by an older backmap


class WeightsEntry(_Open):
    sha256: StrictStr | None = None


class SystemEntry(_Open):
    topology: StrictStr | None = None
    mapping: list[StrictStr] = Field(default_factory=list)
    mdp: StrictStr | None = None
    files: dict[str, StrictStr] | None = None
    molecules: dict[str, Any] = Field(default_factory=dict)


class ModelDescription(_Open):
    """``model.json`` of model format 2 (what :func:`backmap.engine.models.save_model` writes)."""

    format: int
    plugin: StrictStr = Field(min_length=1)
    params: dict[str, Any]
    environment: dict[str, Any]
    channels: dict[str, Any]
    state: dict[str, Any] = Field(default_factory=dict)
    system: SystemEntry = Field(default_factory=SystemEntry)
    weights: WeightsEntry = Field(default_factory=WeightsEntry)
    sampling: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    backmap: StrictStr | None = None


def validate_description(description: dict[str, Any], source: Path | str) -> None:
    """Refuse a description that lacks a key or has one of the wrong type, naming the key; and
    one whose state holds a number that is not finite."""
    try:
        ModelDescription.model_validate(description)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "the description"
        what = "missing" if err["type"] == "missing" else err["msg"].removeprefix("Value error, ")
        raise BackmapError(f"key {key}: {what} (a damaged or hand-edited model?)", source=source) from None
    bad = _non_finite(description.get("state"), "state")
    if bad:
        raise BackmapError(f"key {bad}: not a finite number (a model trained into NaN, or damaged)", source=source)


def check_tensors_finite(tensors: dict[str, torch.Tensor], source: Path | str) -> None:
    """Refuse weights holding NaN or infinity, naming the tensor: a model trained into NaN would
    otherwise write NaN coordinates, refused far away at the output."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BackmapError(f"tensor {name!r} holds NaN or infinite values (a model trained into NaN, or "
                               "damaged): retrain, or resume from an earlier checkpoint", source=source)


def _non_finite(value: Any, key: str) -> str | None:
    """The key of the first NaN or infinite number under ``value`` (lists and dicts), else None."""
    stack = [(value, key)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where
        if isinstance(item, dict):
            stack.extend((v, f"{where}.{k}") for k, v in item.items())
        elif isinstance(item, list) and item and not isinstance(item[0], str):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


__all__ = ["ModelDescription", "check_tensors_finite", "validate_description"]
