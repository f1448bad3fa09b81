"""Field types and metadata shared by settings and requests, so that an option is declared once.

A pydantic field is the single declaration of an option: its default, its constraints and its help
text (``description``). The command line is derived from the fields (:mod:`backmap.cli.derive`);
recipes validate against the same fields. Two value shapes the command line writes as text get a
type of their own here: ``CommaList`` (``S1,S2``) and ``KeyValues`` (``KEY=VALUE``, repeatable).
``option(...)`` adds what only the command line needs: another option name, a metavar, or
"positional argument".
"""
from __future__ import annotations

from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator, Field


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _key_values(value: Any) -> Any:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values read as YAML scalars); dicts pass."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)):
        out = {}
        for item in value:
            key, sep, text = str(item).partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{item!r}: expected key=value")
            out[key.strip()] = yaml.safe_load(text)
        return out
    return value


#: marks a field the command line takes as one comma-separated word (``--dock S,B``)
COMMA_LIST = BeforeValidator(_comma_list)
#: marks a field the command line takes as repeated ``KEY=VALUE`` words
KEY_VALUES = BeforeValidator(_key_values)

class _Text:
    """Marks a field the command line gives as text (repeatable for a list), parsed by its model."""

    def __repr__(self) -> str:
        return "TEXT"


#: marks a structured field the command line takes as words its validator parses (``--move name:k=v``)
TEXT = _Text()

CommaList = Annotated[list[str], COMMA_LIST]
CommaInts = Annotated[list[Annotated[int, Field(ge=1)]], COMMA_LIST]  # positive integers: ``8,8``
KeyValues = Annotated[dict[str, Any], KEY_VALUES]


def option(default: Any = ..., description: str | None = None, *, name: str | None = None,
           metavar: str | None = None, argument: bool = False, cli: bool = True,
           flatten: tuple[str, ...] | None = None, **constraints: Any) -> Any:
    """A pydantic ``Field`` with its command-line face: ``name`` (``--gibbs`` for ``gibbs_sweeps``),
    ``metavar``, ``argument`` (positional; a list field takes any number), ``cli=False`` (recipe only),
    ``flatten`` (a nested settings model: these of its fields are options of their own)."""
    extra: dict[str, Any] = {k: v for k, v in (("cli_name", name), ("metavar", metavar)) if v is not None}
    if flatten:
        extra["flatten"] = list(flatten)
    if argument:
        extra["argument"] = True
    if not cli:
        extra["cli"] = False
    if "default_factory" in constraints:
        return Field(description=description, json_schema_extra=extra or None, **constraints)
    return Field(default, description=description, json_schema_extra=extra or None, **constraints)


def given_value(err: dict[str, Any]) -> str:
    """`` VALUE`` of a pydantic error on a scalar the user gave (empty for anything else)."""
    value = err.get("input")
    if isinstance(value, (int, float, str)) and not isinstance(value, bool) and len(str(value)) <= 60:
        return f" {value}"
    return ""


def error_reason(err: dict[str, Any]) -> str:
    """A pydantic error's message as a sentence about the value: "must be a number ≥ 1"."""
    msg = err["msg"].removeprefix("Value error, ")
    limit = err.get("ctx") or {}
    for kind, sign in (("greater_than_equal", "≥"), ("greater_than", ">"), ("less_than_equal", "≤"),
                       ("less_than", "<")):
        if err.get("type") == kind:
            bound = next(iter(limit.values()), None)
            return f"must be a number {sign} {bound}" if bound is not None else msg
    return msg.replace("Input should be", "should be")


__all__ = ["COMMA_LIST", "CommaList", "KEY_VALUES", "KeyValues", "TEXT", "error_reason", "given_value", "option"]
