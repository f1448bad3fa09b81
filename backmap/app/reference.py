"""The recipe-key and plugin-parameter reference, generated from the pydantic models that validate
them, so that the documentation cannot drift from what ``backmap check`` accepts (the docs site
builds its Reference pages from here, docs/conf.py)."""
from __future__ import annotations

import enum
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from backmap.engine.hooks import KIND_HOOKS
from backmap.engine.recipe import Recipe
from backmap.engine.registry import Registry
from backmap.references import THESIS_NOTE


def type_name(annotation: Any) -> str:
    """A short, readable name of a field's type: ``int | None``, ``list[str]``, ``'a' | 'b'``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if inner else getattr(origin, "__name__", "")
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(info: Any) -> str:
    if info.default_factory is not None:
        try:
            value = info.default_factory()
        except TypeError:
            return "(computed)"
        return "" if isinstance(value, BaseModel) else repr(value)
    if info.default is PydanticUndefined:
        return "**required**"
    value = info.default
    return repr(value.value if isinstance(value, enum.Enum) else value)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _models_in(annotation: Any, key: str) -> list[tuple[type[BaseModel], str]]:
    """The models a field's type holds, with the key prefix of their fields (``a.``, ``a[].``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, key + ".")]
    if typing.get_origin(annotation) is list:
        return _models_in(typing.get_args(annotation)[0], key + "[]")
    return [m for a in typing.get_args(annotation) for m in _models_in(a, key)]


def field_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of every field of ``model``; a nested model's fields follow
    it as ``key.sub`` rows."""
    rows = []
    for name, info in model.model_fields.items():
        key = prefix + name
        rows.append((key, type_name(info.annotation), _default(info), info.description or ""))
        for nested, sub in _models_in(info.annotation, key):
            rows += field_rows(nested, sub)
    return rows


def table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    """A Markdown table of :func:`field_rows`."""
    if not rows:
        return ["No parameters.", ""]
    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    out += [f"| `{k}` | `{_cell(t)}` | {_cell(d) if d.startswith('**') else f'`{_cell(d)}`' if d else ''} "
            f"| {_cell(m)} |" for k, t, d, m in rows]
    return out + [""]


def recipe_keys_markdown() -> str:
    """The keys of a recipe file, from :class:`backmap.engine.recipe.Recipe`."""
    lines = ["# Recipe keys", "",
             "Generated from the models `backmap check` validates a recipe with. A step's keys are its "
             "plugin's parameters: see [recipe steps](reference-steps.md); the plugins' parameters are in "
             "[generator and sampling plugins](reference-plugins.md) and "
             "[refiner, metric and reader plugins](reference-refiners.md).", ""]
    doc = " ".join((Recipe.__doc__ or "").split())
    lines += [doc, ""] + table(field_rows(Recipe))
    return "\n".join(lines)


#: the generated plugin-parameter pages: file → (title, plugin kinds), each page well under 40 KB
PLUGIN_PAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "reference-steps.md": ("Recipe steps", ("step",)),
    "reference-plugins.md": ("Generator and sampling plugins", ("generator", "traversal", "selector", "move",
                                                               "regularizer")),
    "reference-refiners.md": ("Refiner, metric and reader plugins", ("refiner", "metric", "reader")),
}


def plugin_params_markdown(registry: Registry, title: str = "Plugin parameters",
                           kinds: tuple[str, ...] | None = None) -> str:
    """The parameters (``Params`` model) of every installed plugin of ``kinds`` (default: all)."""
    lines = [f"# {title}", "",
             "Generated from each installed plugin's `Params` model: what a recipe gives under `params:` "
             "(generators, refiners, regularizers, moves) or under the step's name (steps). "
             f"{THESIS_NOTE}", ""]
    for kind in KIND_HOOKS:
        if kinds is not None and kind not in kinds:
            continue
        infos = sorted((i for i in registry if i.kind == kind), key=lambda i: i.name)
        if not infos:
            continue
        lines += [f"## {kind.replace('_', ' ').capitalize()} plugins", ""]
        for info in infos:
            summary = " ".join((getattr(info.cls, "summary", "") or "").split())
            lines += [f"### `{info.name}` ({kind})", "", f"{summary} — from `{info.module}`, {info.package} "
                      f"{info.version}.", ""]
            params = getattr(info.cls, "Params", None)
            lines += table(field_rows(params)) if params is not None else ["No parameters.", ""]
    return "\n".join(lines)


def reference_pages(registry: Registry) -> dict[str, str]:
    """Every generated Reference page: file name → Markdown."""
    pages = {"reference-recipe.md": recipe_keys_markdown()}
    pages.update({name: plugin_params_markdown(registry, title, kinds)
                  for name, (title, kinds) in PLUGIN_PAGES.items()})
    return pages
