"""The command line's options derived from the use cases' request models, so that each option's
name, type, default and help text is declared once (on the request's pydantic field).

- a field is an option ``--field-name`` (``option(name=...)`` renames it), or a positional argument
  (``option(argument=True)``); ``option(cli=False)`` keeps it off the command line;
- ``bool`` -> ``--x/--no-x``; ``Literal`` -> a choice; ``list[...]`` -> a repeatable option (an
  argument: any number); ``CommaList`` -> one comma-separated word; ``KeyValues`` -> repeatable
  ``KEY=VALUE``; a required field -> a required option;
- a nested settings model marked ``option(flatten=(...))`` contributes those of its fields.

:func:`request_from` builds the request from what was given on the command line only (click's
parameter source), so a request's ``model_fields_set`` is what the user chose; a validation error
names the option.
"""
from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import click
from click.core import ParameterSource
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from backmap.errors import BackmapError
from backmap.fields import COMMA_LIST, KEY_VALUES, TEXT, error_reason, given_value

R = TypeVar("R", bound=BaseModel)


def _extra(info: FieldInfo) -> dict[str, Any]:
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def cli_fields(model: type[BaseModel]) -> list[tuple[str, FieldInfo, str | None]]:
    """(name, field, the nested field it lies in) of every field ``model`` puts on the command line."""
    out = []
    own = [n for n in model.model_fields if n in vars(model).get("__annotations__", {})]
    for name in own + [n for n in model.model_fields if n not in own]:  # the request's own fields first
        info = model.model_fields[name]
        extra = _extra(info)
        if extra.get("cli") is False:
            continue
        if "flatten" in extra:
            nested = _strip_optional(info.annotation)[0]
            out += [(sub, nested.model_fields[sub], name) for sub in extra["flatten"]]
        else:
            out.append((name, info, None))
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names):
        raise TypeError(f"{model.__name__}: two command-line fields share a name ({sorted(names)})")
    return out


def option_name(name: str, info: FieldInfo) -> str:
    return _extra(info).get("cli_name") or "--" + name.replace("_", "-")


def click_parameter(name: str, info: FieldInfo) -> click.Parameter:
    """The click option (or argument) of one field."""
    extra = _extra(info)
    annotation, _ = _strip_optional(info.annotation)
    metadata = list(info.metadata)
    if typing.get_origin(annotation) is typing.Annotated:  # e.g. ``CommaList | None``
        annotation, *more = typing.get_args(annotation)
        metadata += more
    kind: Any = None
    multiple = False
    if KEY_VALUES in metadata or (TEXT in metadata and typing.get_origin(annotation) is list):
        multiple = True
    elif TEXT in metadata:
        pass
    elif COMMA_LIST in metadata:
        pass
    elif typing.get_origin(annotation) in (list, tuple):
        multiple, kind = True, typing.get_args(annotation)[0]
    elif typing.get_origin(annotation) is Literal:
        kind = click.Choice([str(a) for a in typing.get_args(annotation)])
    else:
        kind = annotation
    if kind is Path:
        kind = click.Path(path_type=Path)
    elif kind not in (int, float, str, bool, None) and not isinstance(kind, click.ParamType):
        raise TypeError(f"field {name}: no command-line type for {info.annotation}")
    if extra.get("argument"):
        return click.Argument([name], type=kind, nargs=-1 if multiple else 1, required=info.is_required())
    flag = option_name(name, info)
    if kind is bool:
        flag = f"{flag}/--no-{flag[2:]}"
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    show = not (default is None or isinstance(default, bool) or multiple or default in ((), [], {}))
    if multiple:
        default = ()
    elif isinstance(default, (dict, list)):  # an empty comma list: nothing given
        default = None
    return click.Option([flag, name], type=None if kind is bool else kind, multiple=multiple,
                        required=info.is_required(), default=default, show_default=show, help=info.description,
                        metavar=extra.get("metavar"))


class RequestCommand(click.Command):
    """A command whose options are those of a request model, derived on first use (the model's
    module may import torch: ``backmap --help`` does not pay for it)."""

    def __init__(self, *args: Any, request: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_path = request  # "package.module:ClassName"
        self._derived = False

    @property
    def request_model(self) -> type[BaseModel]:
        import importlib

        module, _, name = self.request_path.partition(":")
        return getattr(importlib.import_module(module), name)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._derived:
            self.params[:0] = [click_parameter(n, i) for n, i, _ in cli_fields(self.request_model)]
            self._derived = True
        return super().get_params(ctx)


def request_from(model: type[R] | None = None, ctx: click.Context | None = None) -> R:
    """The request built from the options the user gave (defaults stay the model's); ``model``:
    the command's own request model by default."""
    ctx = ctx or click.get_current_context()
    if model is None:
        model = ctx.command.request_model  # type: ignore[attr-defined]
    data: dict[str, Any] = {}
    where: dict[tuple[str, ...], str] = {}
    for name, info, nested in cli_fields(model):
        where[(nested, name) if nested else (name,)] = option_name(name, info)
        if name in ctx.params and ctx.get_parameter_source(name) is not ParameterSource.DEFAULT:
            value = ctx.params[name]
            (data.setdefault(nested, {}) if nested else data)[name] = list(value) if isinstance(value, tuple) else value
    try:
        return model(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(part) for part in err["loc"] if not isinstance(part, int))
        key = where.get(loc[:2]) or where.get(loc[:1]) or (loc[0] if loc else type(model).__name__)
        raise BackmapError(f"{key}{given_value(err)}: {error_reason(err)}") from None

