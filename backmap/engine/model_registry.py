"""Models known by name: the ones backmap ships and those of installed model packs.

A model pack is a pip-installable package that names, in the entry-point group
``backmap.models``, where its models are: a package (its folder is searched), or a function that
returns a folder, a list of folders/archives, or a ``{name: path}`` mapping. Every model folder
(one with ``model.json``) and archive (``.bmz``) found there is registered under its name (the
folder's name, the archive's stem); ``--model NAME`` resolves it.
"""
from __future__ import annotations

import importlib.metadata
import types
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from backmap.errors import BackmapError

ENTRY_POINT_GROUP = "backmap.models"


@dataclass(frozen=True)
class RegisteredModel:
    """A model found through a model pack's entry point."""

    name: str
    path: Path
    pack: str  #: the entry point's name
    distribution: str  #: the installed package that provides it


def _models_in(value: Any) -> dict[str, Path]:
    """Name → path of the models that an entry point's object designates."""
    if isinstance(value, types.ModuleType):
        files = [Path(p) for p in getattr(value, "__path__", [])] or [Path(value.__file__).parent]
        value = files
    elif callable(value):
        value = value()
    if isinstance(value, dict):
        return {str(k): Path(v) for k, v in value.items()}
    paths = [value] if isinstance(value, (str, Path)) else list(value or [])
    out: dict[str, Path] = {}
    for p in map(Path, paths):
        if (p / "model.json").is_file() or p.suffix == ".bmz":
            out[p.stem if p.suffix == ".bmz" else p.name] = p
        elif p.is_dir():
            for child in sorted(p.iterdir()):
                if (child / "model.json").is_file():
                    out[child.name] = child
                elif child.suffix == ".bmz" and child.is_file():
                    out[child.stem] = child
    return out


@lru_cache(maxsize=1)
def registered_models() -> tuple[RegisteredModel, ...]:
    """Every registered model, in the order of their packs' names then model names. A pack that
    fails to load is reported as an error naming it."""
    found: list[RegisteredModel] = []
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else "?"
        try:
            models = _models_in(ep.load())
        except Exception as exc:  # a broken third-party pack must say which one it is
            raise BackmapError(f"model pack {ep.name!r} (package {dist}, entry point {ep.value}) failed to load: "
                               f"{type(exc).__name__}: {exc}") from None
        found += [RegisteredModel(name, path, ep.name, dist) for name, path in sorted(models.items())]
    return tuple(found)


def find_registered(name: str) -> RegisteredModel | None:
    """The model registered as ``name``; an error if two packs register it."""
    hits = [m for m in registered_models() if m.name == name]
    if len(hits) > 1:
        raise BackmapError(f"model name {name!r} is registered by several packs ("
                           + ", ".join(f"{m.pack} from {m.distribution}" for m in hits)
                           + "): give the model's folder or archive instead", source=name)
    return hits[0] if hits else None
