"""Recipes: YAML validated into typed models, with errors that name the file and key path.

Relative paths resolve against the recipe's directory. Plugin parameters are validated by the
plugin's own ``Params`` model; step parameters by the step plugin's.
"""
from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Sequence

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from backmap.parallel.cluster import ClusterOptions
from backmap.devices import check_device_name
from backmap.errors import BackmapError


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    try:
        value = Path(value).expanduser()
    except RuntimeError as exc:  # '~nobody/x': no such user, or no home directory
        raise ValueError(f"{value}: {exc}") from None
    return (Path(base) / value).resolve() if base is not None and not value.is_absolute() else value


def _must_exist(value: Path, info: ValidationInfo) -> Path:
    value = _resolve(value, info)
    if (info.context or {}).get("check_files", True) and not value.exists():
        raise ValueError(f"file not found: {value}")
    return value


#: a path resolved against the recipe's directory
RecipePath = Annotated[Path, AfterValidator(_resolve)]
#: an input path resolved against the recipe's directory that must exist
InputPath = Annotated[Path, AfterValidator(_must_exist)]

#: prefix of a path made by an earlier step of the same run: ``workdir:refine/aa.xtc``
WORKDIR_PREFIX = "workdir:"
#: prefix of a file an earlier step declared by name: ``output:backmap.aa``
OUTPUT_PREFIX = "output:"


def _input_or_run_output(value: Path, info: ValidationInfo) -> Path:
    if str(value).startswith((WORKDIR_PREFIX, OUTPUT_PREFIX)):
        return Path(str(value))  # resolved by the step against the run's work directory
    return _must_exist(value, info)


#: an :data:`InputPath`, ``workdir:PATH`` — a file an earlier step of the run writes — or
#: ``output:NAME`` — a file an earlier step declared under NAME
StepInput = Annotated[Path, AfterValidator(_input_or_run_output)]


def resolve_step_input(path: Path | None, workdir: Path, where: str = "") -> Path | None:
    """The real file of a :data:`StepInput`: ``workdir:`` paths must exist by now, ``output:NAME``
    is the file an earlier step declared under NAME (``output:backmap.aa``)."""
    if path is not None and str(path).startswith(OUTPUT_PREFIX):
        from backmap.engine.outputs import Outputs

        return Outputs(workdir).get(str(path)[len(OUTPUT_PREFIX):], where)
    if path is None or not str(path).startswith(WORKDIR_PREFIX):
        return path
    real = Path(workdir) / str(path)[len(WORKDIR_PREFIX):]
    if not real.exists():
        raise BackmapError(f"{where}: {real} does not exist (an earlier step should have written it)")
    return real


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SystemSpec(Strict):
    """The AA system and its mapping."""

    topology: InputPath = Field(description="AA topology: .top (with parameters), .tpr, or .gro/.pdb")
    mapping: InputPath | list[InputPath] | None = Field(None, description="VOTCA mapping XML or DeepBackmap .map "
                                                                     "file(s)")
    bottleneck: int | None = Field(None, ge=1, description="instead of a mapping file: the resolution bottleneck "
                                                           "e_s of morphing, groups of s consecutive particles "
                                                           "along each chain (backmap.system.bottleneck)")
    channels: InputPath | None = Field(None, description="feature-channel map (DeepBackmap ff.txt); default: "
                                                         "channels derived from the topology")

    @model_validator(mode="after")
    def _one_mapping(self) -> "SystemSpec":
        if (self.mapping is None) == (self.bottleneck is None):
            raise ValueError("give exactly one of 'mapping' or 'bottleneck'")
        return self

    @property
    def mappings(self) -> list[Path]:
        """The mapping files (empty for a bottleneck: :meth:`RunContext.mapping_files` writes one)."""
        if self.mapping is None:
            return []
        return self.mapping if isinstance(self.mapping, list) else [self.mapping]


class SplitSpec(Strict):
    """How frames are divided into training and test sets."""

    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of the frames held out for testing")
    mode: Literal["tail", "random"] = Field("tail", description="tail: the last frames (time-correlated data)")
    test_frames: list[int] | None = Field(None, description="explicit test frames (overrides test_fraction)")


class DataSpec(Strict):
    """Where (CG, AA) training pairs come from: an AA trajectory mapped on the fly, or
    DeepBackmap-style folders of paired ``aa/N.gro`` and ``cg/N.gro``."""

    trajectory: InputPath | None = Field(None, description="AA trajectory (.xtc/.trr/…) of the system, mapped to "
                                                            "CG on the fly by the prepare step")
    pairs: InputPath | None = Field(None, description="DeepBackmap-style folder of paired aa/N.gro and cg/N.gro")
    frames: str | None = Field(None, description="'start:stop:step' or '0,5,9' (trajectory only)")
    skip_frames: list[int] = Field(default_factory=list, description="frames left out entirely")
    split: SplitSpec = Field(default_factory=SplitSpec, description="training and test frames")

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        if (self.trajectory is None) == (self.pairs is None):
            raise ValueError("give exactly one of 'trajectory' or 'pairs'")
        return self


class TrainingSystem(Strict):
    """A system a generator trains on instead of the recipe's own (chemical transfer: train on
    octane and cumene, backmap sPS): its own topology, mapping and training pairs."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="folder of its pairs in the work directory "
                                                                "(systems/NAME)")
    system: SystemSpec = Field(description="its AA topology and mapping")
    data: DataSpec = Field(description="its training pairs")


class PluginRef(Strict):
    """A plugin chosen by name with its parameters."""

    plugin: str = Field(description="the plugin's name (backmap plugins lists them)")
    params: dict[str, Any] = Field(default_factory=dict, description="the plugin's parameters (Reference: plugin "
                                                                     "parameters)")


class GeneratorRef(PluginRef):
    """The generator with its parameters and its environment spec (cutoff, traversal, …): the
    environment is fixed at training and saved in the model."""

    environment: dict[str, Any] = Field(default_factory=dict, description="EnvironmentSpec keys (backmap.sampling.spec)")


class Recipe(Strict):
    """A whole run: the system, the data, the plugins, and the steps in order."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the run's name (default work folder runs/NAME)")
    description: str = Field("", description="one line for the run's report")
    seed: int = Field(0, ge=0, lt=2**63, description="numpy and torch take seeds in [0, 2**63)")
    device: str = Field("auto", description="where every step's torch work (and OpenMM's, platform auto) runs: auto "
                                            "(the first GPU torch sees, else the CPU), cpu, cuda or cuda:N")
    workdir: RecipePath | None = Field(None, description="relative to the recipe; default: runs/<name> in the "
                                                          "current directory")
    system: SystemSpec = Field(description="the AA system and its mapping")
    data: DataSpec | None = Field(None, description="where training pairs come from (steps prepare and train)")
    training_systems: list[TrainingSystem] = Field(
        default_factory=list, description="train on these systems instead of system/data (chemical transfer; "
                                          "a generator that keys its parameters by chemistry, e.g. equivariant)")
    generator: GeneratorRef | None = Field(None, description="the generator plugin: trained by the train step, "
                                                             "used by backmap")
    refiners: list[PluginRef] = Field(default_factory=list, description="refiners a backmap or refine step picks "
                                                                       "by index (refiner: 0)")
    regularizers: list[PluginRef] = Field(default_factory=list, description="energy regularizers added to the "
                                                                           "generator's training loss")
    cluster: ClusterOptions = Field(default_factory=ClusterOptions,
                                    description="where the frames of backmap, refine and evaluate steps run "
                                                "(workers: N, scheduler: tcp://… or slurm); default: this process")
    steps: list[dict[str, dict[str, Any] | None]] = Field(min_length=1, description="the steps in order, each "
                                                         "'- NAME: {its parameters}' (Reference: plugin parameters)")

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        return check_device_name(value)

    # the recipe file, set by load_recipe (not a recipe key)
    _path: Path | None = PrivateAttr(None)

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def default_workdir(self) -> Path:
        return self.workdir or (Path.cwd() / "runs" / self.name)


class ValidatedStep(BaseModel):
    name: str
    params: Any


def recipe_input_files(recipe: Recipe, steps: Sequence[ValidatedStep] = ()) -> list[tuple[str, Path]]:
    """Every file the recipe reads, labelled with its key (``data.trajectory``,
    ``steps.backmap.cg``): the system, the data, the training systems and the steps' input keys —
    never files of the run itself (``workdir:``, ``output:``). No step may write onto one."""
    out = [row for name in type(recipe).model_fields if name not in ("workdir", "steps")
           for row in _labelled_paths(getattr(recipe, name), f"{name}.")]
    for step in steps:
        out += _labelled_paths(step.params, f"steps.{step.name}.")
    return out


def _labelled_paths(value: Any, key: str) -> Iterator[tuple[str, Path]]:
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _labelled_paths(getattr(value, name), f"{key}{name}.")
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _labelled_paths(item, f"{key}{name}.")
    elif isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            yield from _labelled_paths(item, f"{key.rstrip('.')}[{k}].")
    elif isinstance(value, Path) and not str(value).startswith((WORKDIR_PREFIX, OUTPUT_PREFIX)):
        yield key.rstrip("."), value


# --------------------------------------------------------------------------- error messages

_TYPE_WORDS = {"int": "int", "float": "float", "bool": "bool", "string": "string", "str": "string",
               "list": "list", "dict": "mapping", "model": "mapping", "literal": "one of", "path": "path"}
#: pydantic's names of union members that are plain types (``int | str`` → loc parts 'int', 'str')
_SCALAR_TAGS = {"int", "float", "str", "bool", "none", "list", "dict", "Path", "bytes"}


def _is_union_tag(part: Any) -> bool:
    """Whether a loc part names a union member rather than a key: pydantic's schema text
    (``function-after[_must_exist(), …]``, ``list[…]``), a plain type, or a model class name."""
    if not isinstance(part, str):
        return False
    camel = part.isidentifier() and part[:1].isupper() and any(c.isupper() for c in part[1:]) \
        and any(c.islower() for c in part)
    return "[" in part or part in _SCALAR_TAGS or camel


def _expected(kind: str) -> str | None:
    """The type word of a type error (``int_parsing``, ``int_from_float`` → 'int'), else None."""
    for suffix in ("_parsing", "_type", "_from_float"):
        if kind.endswith(suffix) and kind[: -len(suffix)] in _TYPE_WORDS:
            return _TYPE_WORDS[kind[: -len(suffix)]]
    return None


def _union_errors(errors: list[dict]) -> list[dict]:
    """pydantic's errors with union members taken out of the locations, one report per union.

    A value that fits no member of a union (``mapping: PATH | list[PATH]``) gets an error from
    every member, each under a location naming the member in pydantic's schema notation. Of these
    the member that got furthest into the value speaks (a missing file rather than "expected
    list"); if all stopped at the value's type, one line says which types were possible."""
    out: list[dict] = []
    groups: dict[tuple, list[tuple[int, dict]]] = {}
    for err in errors:
        loc, site, previous = [], None, None
        for k, part in enumerate(err["loc"]):
            is_key = isinstance(previous, str) and previous.startswith("dict[")  # a label, e.g. 'GenA'
            is_key = is_key or (k == len(err["loc"]) - 1 and err["type"] == "extra_forbidden")  # 'a[1]: 3'
            if _is_union_tag(part) and not is_key:
                site = tuple(loc) if site is None else site
            else:
                loc.append(part)
            previous = part
        err = {**err, "loc": tuple(loc)}
        if site is None:
            out.append(err)
            continue
        if site not in groups:
            groups[site] = []
            out.append({"site": site})  # placeholder keeps the order of the first report
        groups[site].append((len(loc) - len(site), err))
    result: list[dict] = []
    for item in out:
        if "site" not in item:
            result.append(item)
            continue
        group = groups[item["site"]]
        deepest = max(d for d, _ in group)
        chosen = [e for d, e in group if d == deepest]
        types = [_expected(e["type"]) for e in chosen]
        if all(types) and len(chosen) > 1:
            words = " or ".join(dict.fromkeys(t for t in types if t))
            result.append({**chosen[0], "type": "union_type", "msg": f"expected {words}"})
        else:
            result.extend(e for e in chosen if _expected(e["type"]) is None or len(chosen) == 1)
    return result


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """Field names of the (nested) model that ``loc`` points into, for typo suggestions."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        ann = current.model_fields[part].annotation
        current = next((a for a in _flatten(ann) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else None


def _flatten(ann: Any) -> list[Any]:
    args = typing.get_args(ann)
    return [x for a in args for x in _flatten(a)] if args else [ann]


def _message(err: dict, model: type[BaseModel] | None) -> str:
    kind, msg = err["type"], err["msg"]
    given = err.get("input")
    if kind == "union_type":
        return f"{msg}, got {given!r}"
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        allowed = _fields_at(model, err["loc"][:-1]) if model else None
        hint = difflib.get_close_matches(str(err["loc"][-1]) if err["loc"] else "", allowed or [], n=1)
        text = "unknown key"
        if hint:
            text += f" (did you mean {hint[0]!r}?)"
        elif allowed:
            text += f" (allowed: {', '.join(a for a in allowed if a != 'path')})"
        return text
    if _expected(kind) and kind != "int_from_float":
        return f"expected {_expected(kind)}, got {given!r}"
    if kind == "literal_error":
        return f"{msg[0].lower()}{msg[1:]}, got {given!r}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    return f"{msg[0].lower()}{msg[1:]}"


def format_errors(exc: ValidationError, source: str, prefix: tuple = (), model=None) -> str:
    """One line per error: ``file: key.path: message``."""
    lines = []
    for err in _union_errors(exc.errors()):
        loc = prefix + tuple(err["loc"])
        lines.append(f"{source}: {_loc(loc) or '<top>'}: {_message(err, model)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- loading

def _no_base_60(loader: type[yaml.SafeLoader]) -> dict:
    """The loader's implicit resolvers with numbers refused when they contain ':' — YAML 1.1's
    base-60 integers and floats, which would turn the frame range ``1:30`` into 90."""
    number = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
    return {first: [(tag, re.compile("(?!.*:)" + rx.pattern, rx.flags) if tag in number else rx)
                    for tag, rx in resolvers]
            for first, resolvers in loader.yaml_implicit_resolvers.items()}


class RecipeLoader(yaml.SafeLoader):
    """Safe YAML without base-60 numbers: ``frames: 1:30`` stays the string '1:30'."""

    yaml_implicit_resolvers = _no_base_60(yaml.SafeLoader)


#: a recipe expands to at most this many values (YAML aliases can make a few lines expand to 10⁹)
MAX_VALUES = 100_000
#: and nests at most this deep (deeper is a mistake, and Python's recursion would end in a traceback)
MAX_DEPTH = 50


def load_yaml(text: str) -> Any:
    """Parse recipe text or an override value with :class:`RecipeLoader`; refuse a document that
    expands to more than :data:`MAX_VALUES` values or nests deeper than :data:`MAX_DEPTH`."""
    try:
        value = yaml.load(text, Loader=RecipeLoader)  # a SafeLoader subclass: safe
    except RecursionError:  # PyYAML composes nested collections recursively
        raise yaml.YAMLError(f"the document nests deeper than {MAX_DEPTH} levels") from None
    _check_size(value)
    return value


def _check_size(value: Any) -> None:
    """Count the values of ``value`` as they would be expanded (shared ones each time), iteratively."""
    count, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise yaml.YAMLError(f"the document expands to more than {MAX_VALUES:,} values (YAML aliases "
                                 "referring to aliases?); write the values out")
        if depth > MAX_DEPTH:
            raise yaml.YAMLError(f"the document nests deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _list_index(target: list, part: str, key: str, source: str) -> int:
    """``part`` as an index into ``target`` (a list in the recipe, e.g. ``refiners.0``)."""
    if not part.lstrip("-").isdigit() or not -len(target) <= int(part) < len(target):
        raise BackmapError(f"override {key}: {part!r} is not an index of a list of {len(target)}", source=source)
    return int(part)


def _child(target: Any, part: str, key: str, source: str) -> Any:
    """The mapping or list under ``part`` (a mapping is created where the key is missing)."""
    if isinstance(target, list):
        child = target[_list_index(target, part, key, source)]
    else:
        child = target.setdefault(part, {})
    if not isinstance(child, (dict, list)):
        raise BackmapError(f"override {key}: {part} is not a mapping", source=source)
    return child


def apply_overrides(raw: dict, overrides: list[str], source: str) -> dict:
    """Apply ``key.path=value`` overrides; ``steps.NAME.key`` addresses the step called NAME, an
    integer the item of a list (``refiners.0.params.temperature=350``)."""
    for item in overrides:
        if "=" not in item:
            raise BackmapError(f"override {item!r} is not key.path=value", source=source)
        key, value = item.split("=", 1)
        parts = key.split(".")
        target: Any = raw
        if parts[0] == "steps" and len(parts) > 2:
            listed = raw.get("steps")
            step = next((s for s in listed if isinstance(s, dict) and parts[1] in s), None) \
                if isinstance(listed, list) else None
            if step is None:
                raise BackmapError(f"override {key}: no step {parts[1]!r} in the recipe", source=source)
            if step[parts[1]] is None:
                step[parts[1]] = {}
            if not isinstance(step[parts[1]], dict):
                raise BackmapError(f"override {key}: steps.{parts[1]} is not a mapping", source=source)
            target, parts = step[parts[1]], parts[2:]
        for p in parts[:-1]:
            target = _child(target, p, key, source)
        last: str | int = parts[-1]
        if isinstance(target, list):
            last = _list_index(target, parts[-1], key, source)
        try:
            target[last] = load_yaml(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise BackmapError(f"override {item}: not a valid YAML value: {problem}", source=source) from None
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None, registry=None,
                check_files: bool = True) -> tuple[Recipe, list[ValidatedStep]]:
    """Read, validate and resolve a recipe. Raises :class:`BackmapError` with every problem."""
    from backmap.engine.registry import default_registry

    path = Path(path)
    source = path.name
    if not path.is_file():
        raise BackmapError("recipe file not found", source=path)
    try:
        raw = load_yaml(path.read_text())
    except (UnicodeDecodeError, OSError) as exc:  # a binary file, a file that cannot be read
        raise BackmapError(f"cannot read the recipe as UTF-8 text: {exc}", source=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise BackmapError(f"not valid YAML: {getattr(exc, 'problem', exc)}", source=where) from None
    if not isinstance(raw, dict):
        raise BackmapError("a recipe is a YAML mapping of keys (name, system, steps, …)", source=source)
    raw = apply_overrides(raw, overrides or [], source)
    ctx = {"base_dir": path.parent.resolve(), "check_files": check_files}
    try:
        recipe = Recipe.model_validate(raw, context=ctx)
    except ValidationError as exc:
        raise BackmapError(format_errors(exc, source, model=Recipe)) from None
    recipe._path = path.resolve()
    registry = registry or default_registry()
    errors: list[str] = []

    def plugin_params(kind: str, ref: PluginRef, loc: tuple) -> None:
        try:
            info = registry.get(kind, ref.plugin)
        except BackmapError as exc:
            errors.append(f"{source}: {_loc(loc + ('plugin',))}: {exc}")
            return
        try:
            ref.params = info.cls.Params.model_validate(ref.params, context=ctx).model_dump()
        except ValidationError as exc:
            errors.append(format_errors(exc, source, loc + ("params",), info.cls.Params))

    if recipe.generator is not None and recipe.generator.plugin in registry.names("generator"):
        cls = registry.get("generator", recipe.generator.plugin).cls
        try:
            recipe.generator.environment = cls.environment_spec(recipe.generator.environment).model_dump()
            registry.get("traversal", recipe.generator.environment["traversal"])
        except ValidationError as exc:
            errors.append(format_errors(exc, source, ("generator", "environment")))
        except ValueError as exc:
            errors.append(f"{source}: generator.environment: {exc}")
        except BackmapError as exc:
            errors.append(f"{source}: generator.environment.traversal: {exc}")
    if recipe.generator is not None:
        plugin_params("generator", recipe.generator, ("generator",))
    for key, kind in (("refiners", "refiner"), ("regularizers", "regularizer")):
        for i, ref in enumerate(getattr(recipe, key)):
            plugin_params(kind, ref, (key, i))

    steps: list[ValidatedStep] = []
    for i, entry in enumerate(recipe.steps):
        if len(entry) != 1:
            errors.append(f"{source}: steps[{i}]: a step is one 'name: {{params}}' entry, got {list(entry)}")
            continue
        (name, params), = entry.items()
        try:
            info = registry.get("step", name)
        except BackmapError as exc:
            errors.append(f"{source}: steps[{i}]: {exc}")
            continue
        try:
            steps.append(ValidatedStep(name=name, params=info.cls.Params.model_validate(params or {}, context=ctx)))
        except ValidationError as exc:
            errors.append(format_errors(exc, source, ("steps", i, name), info.cls.Params))
    if errors:
        raise BackmapError("\n".join(errors))
    return recipe, steps
