"""Runs a recipe's steps in order in a work directory that records the resolved recipe,
the seed, the plugin versions and a report of what each step did."""
from __future__ import annotations

import datetime as _dt
import json
import platform
import shlex
import sys
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import yaml
from rich.console import Console

from backmap._version import __version__
from backmap.errors import BackmapError
from backmap.system.io import atomic_path
from backmap.system.mapping import CGTopology, Mapping
from backmap.engine.loaders import load_mapping
from backmap.engine.outputs import Outputs
from backmap.engine.recipe import PluginRef, Recipe, ValidatedStep, recipe_input_files
from backmap.system.claim import OutputLock
from backmap.engine.registry import Registry, default_registry
from backmap.system.topology import Topology
from backmap.engine.loaders import load_topology

if TYPE_CHECKING:
    from backmap.sampling.environment import Channels
    from backmap.sampling.spec import EnvironmentSpec
    from backmap.system.pairs import PairSet


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class RunContext:
    """What a step sees: the recipe, the work directory, the system and the plugins."""

    def __init__(self, recipe: Recipe, workdir: Path, registry: Registry | None = None,
                 console: Console | None = None, steps: Sequence[ValidatedStep] = ()):
        self.recipe = recipe
        #: the recipe's validated steps (all of them, also those not run)
        self.steps = list(steps)
        self.workdir = workdir
        self.registry = registry or default_registry()
        self.console = console or Console(stderr=True)
        self.seed = recipe.seed
        #: the recipe's ``device`` (auto, cpu, cuda, cuda:N): :func:`backmap.api.io.resolve_device` makes it a torch device
        self.device = recipe.device
        self.rng = np.random.default_rng(recipe.seed)
        #: files the steps declared by name (``outputs.json``): how steps find each other's outputs
        self.outputs = Outputs(workdir)

    @cached_property
    def topology(self) -> Topology:
        return load_topology(self.recipe.system.topology, self.registry)

    @cached_property
    def mapping_files(self) -> list[Path]:
        """The system's mapping files; for ``system.bottleneck: s`` the bottleneck e_s written as
        VOTCA XML into the work directory (``bottleneck/e<s>.xml``), so that models store it like
        any mapping."""
        s = self.recipe.system.bottleneck
        if s is None:
            return self.recipe.system.mappings
        from backmap.system.bottleneck import bottleneck_mapping, write_votca_mapping

        out = self.path("bottleneck", f"e{s}.xml")
        write_votca_mapping(bottleneck_mapping(self.topology, s), out,
                            f"resolution bottleneck e_{s} of {self.recipe.system.topology.name}, written by backmap")
        return [out]

    @cached_property
    def mapping(self) -> Mapping:
        return load_mapping(self.mapping_files, self.topology, self.registry)

    @cached_property
    def cg_topology(self) -> CGTopology:
        return self.mapping.cg_topology(self.topology)

    def channels_for(self, spec: "EnvironmentSpec") -> "Channels":
        """Feature channels for a generator's spec: the recipe's channel map (``system.channels``,
        DeepBackmap ff.txt) if given, else derived from the topology as the spec says."""
        from backmap.sampling.environment import Channels

        return Channels.for_spec(self.cg_topology, spec.channels, self.recipe.system.channels)

    def training_contexts(self) -> list["RunContext"]:
        """The contexts the prepare and train steps work in: this one, or with ``training_systems``
        one per system, each with that system and data and its own work folder ``systems/NAME``."""
        if not self.recipe.training_systems:
            return [self]
        out = []
        for ts in self.recipe.training_systems:
            recipe = self.recipe.model_copy(update={"system": ts.system, "data": ts.data, "training_systems": []})
            recipe._path = self.recipe.path
            out.append(RunContext(recipe, self.workdir / "systems" / ts.name, self.registry, self.console, self.steps))
        return out

    @cached_property
    def read_files(self) -> list[tuple[str, Path]]:
        """Every file the recipe reads, labelled with its key: what no step may write onto."""
        return recipe_input_files(self.recipe, self.steps)

    def where(self, key: str) -> str:
        """``recipe.yaml: key`` for error messages."""
        return f"{self.recipe.path.name if self.recipe.path else 'recipe'}: {key}"

    def path(self, *parts: str) -> Path:
        p = self.workdir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def plugin(self, kind: str, ref: PluginRef | None, key: str) -> Any:
        """Instantiate the plugin a recipe key names (params already validated)."""
        if ref is None:
            raise BackmapError(f"{key}: this step needs a '{key}' section in the recipe",
                               source=self.recipe.path.name if self.recipe.path else None)
        return self.registry.get(kind, ref.plugin, where=key).cls(ref.params)

    def refiner(self, choice: int | str, key: str) -> Any:
        """The recipe's refiner at index ``choice`` or named ``choice`` (of its ``refiners``),
        instantiated; errors name ``key`` (e.g. ``steps.backmap.refiner``)."""
        refs = self.recipe.refiners
        if not refs:
            raise BackmapError(f"{key}: the recipe has no 'refiners' section", source=self.where(key))
        if isinstance(choice, int):
            if not 0 <= choice < len(refs):
                raise BackmapError(f"{key}: index {choice} but {len(refs)} refiners", source=self.where(key))
            return self.plugin("refiner", refs[choice], "refiners")
        named = [r for r in refs if r.plugin == choice]
        if not named:
            raise BackmapError(f"{key}: no refiner {choice!r} in 'refiners' ({', '.join(r.plugin for r in refs)})",
                               source=self.where(key))
        return self.plugin("refiner", named[0], "refiners")

    def pairs(self) -> "PairSet":
        """The training pairs made by the ``prepare`` step (with its train/test split)."""
        from backmap.system.pairs import PairSet

        pointer = self.outputs.find("prepare.pairs") or self.workdir / "pairs" / "current.json"
        if not pointer.is_file():
            raise BackmapError("no training pairs: run the 'prepare' step first", source=self.workdir)
        current = json.loads(pointer.read_text())
        pairs = PairSet.load(pointer.parent / current["file"])
        pairs.is_test = np.isin(pairs.frames, current["test_frames"])
        return pairs


def plugin_versions(registry: Registry) -> list[dict[str, str]]:
    return [{"kind": i.kind, "name": i.name, "package": i.package, "version": i.version} for i in registry]


def run_recipe(recipe: Recipe, steps: Sequence[ValidatedStep], workdir: Path | None = None,
               only: Sequence[str] | None = None, registry: Registry | None = None,
               console: Console | None = None) -> Path:
    """Run ``steps`` (or those named in ``only``) and return the work directory.

    The work directory keeps its history: ``run.json`` gets one record per invocation (appended,
    with each step's status and, for a failed step, its one-line error), ``history/recipe-N.yaml``
    the resolved recipe of invocation N, and ``recipe.yaml`` that of the latest invocation whose
    every step succeeded. A failing step is recorded, then its exception goes on to the caller."""
    registry = registry or default_registry()
    console = console or Console(stderr=True)
    workdir = Path(workdir or recipe.default_workdir()).resolve()
    all_steps = list(steps)
    if only:
        unknown = sorted(set(only) - {s.name for s in steps})
        if unknown:
            raise BackmapError(f"--steps: {', '.join(unknown)} not in the recipe "
                               f"(it has: {', '.join(s.name for s in steps)})")
        steps = [s for s in steps if s.name in only]
    workdir.mkdir(parents=True, exist_ok=True)
    with OutputLock(workdir, option="--workdir", where="run", folder=True):  # one run per work folder
        return _run_locked(recipe, all_steps, steps, workdir, only, registry, console)


def _run_locked(recipe: Recipe, all_steps: list[ValidatedStep], steps: Sequence[ValidatedStep], workdir: Path,
                only: Sequence[str] | None, registry: Registry, console: Console) -> Path:
    history = load_history(workdir)
    for earlier in history["invocations"]:  # its process is gone (it would hold the lock): killed outright
        if earlier.get("status") == "running":
            earlier["status"] = "killed"
            earlier["error"] = KILLED
            for step in earlier.get("steps", []):
                if step.get("status") == "running":
                    step["status"] = "killed"
            console.print(f"[yellow]warning:[/] run {earlier.get('number')} of this work folder "
                          f"({earlier.get('command') or 'command unknown'}) {KILLED}")
    number = len(history["invocations"]) + 1
    # the whole resolved recipe (every step, not only those run), so that recipe.yaml stays a
    # complete description of the work directory after a `--steps` invocation
    resolved = recipe.model_dump(mode="json")
    resolved["steps"] = [{s.name: s.params.model_dump(mode="json")} for s in all_steps]
    resolved["workdir"] = str(workdir)
    recipe_text = yaml.safe_dump(resolved, sort_keys=False)
    recipe_file = f"history/recipe-{number}.yaml"
    write_text(workdir / recipe_file, recipe_text)
    invocation: dict[str, Any] = {
        "number": number,
        "started": _now(),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "requested_steps": list(only) if only else None,
        "recipe": str(recipe.path),
        "recipe_file": recipe_file,
        "seed": recipe.seed,
        "backmap": __version__,
        "python": platform.python_version(),
        "plugins": plugin_versions(registry),
        "status": "running",
        "steps": [],
    }
    history["invocations"].append(invocation)
    ctx = RunContext(recipe, workdir, registry, console, all_steps)
    for step in steps:
        console.rule(f"[bold]{step.name}")
        entry: dict[str, Any] = {"name": step.name, "started": _now(), "status": "running"}
        invocation["steps"].append(entry)
        t0 = time.perf_counter()
        try:
            plugin = registry.get("step", step.name).cls(step.params)
            summary = plugin.run(ctx) or {}
        except BaseException as exc:  # also Ctrl-C: the record says how far the run got, then the error goes on
            entry.update(status="failed", seconds=round(time.perf_counter() - t0, 3), error=_one_line(exc))
            invocation["status"] = "failed"
            save_history(workdir, recipe, history)
            raise
        seconds = time.perf_counter() - t0
        entry.update(status="ok", seconds=round(seconds, 3), summary=summary)
        save_history(workdir, recipe, history)
        console.print(f"[green]✓[/] {step.name} ({seconds:.1f} s)")
    invocation["status"] = "ok"
    write_text(workdir / "recipe.yaml", recipe_text)  # only a run whose every step succeeded replaces it
    save_history(workdir, recipe, history)
    return workdir


#: what the history says of a run whose process ended without recording it
KILLED = ("ended without a word: its process was killed (kill -9, out of memory, or the machine stopped); "
          "finished steps are kept")


def run_steps(recipe: Recipe, steps: Sequence[ValidatedStep], workdir: Path | None, only: Sequence[str],
              registry: Registry | None = None, console: Console | None = None) -> None:
    """Run the steps named in ``only`` without touching the work directory's history: for the
    helper processes of data-parallel training, whose main process runs :func:`run_recipe`."""
    registry = registry or default_registry()
    workdir = Path(workdir or recipe.default_workdir()).resolve()
    ctx = RunContext(recipe, workdir, registry, console, steps)
    for step in steps:
        if step.name in only:
            registry.get("step", step.name).cls(step.params).run(ctx)


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _one_line(exc: BaseException) -> str:
    """The error as the CLI prints it (first line), with the exception type for unexpected ones."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, BackmapError) else f"{exc.__class__.__name__}: {text}".rstrip(": ")


def load_history(workdir: Path) -> dict[str, Any]:
    """The work directory's ``run.json`` as ``{"invocations": [...]}``. A ``run.json`` of
    backmap ≤ 0.1 (one record, overwritten by every run) becomes invocation 1; an unreadable one
    is kept as ``history/run-unreadable.json`` rather than silently dropped."""
    path = workdir / "run.json"
    if not path.is_file():
        return {"invocations": []}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict):
        (workdir / "history").mkdir(exist_ok=True)
        path.replace(workdir / "history" / "run-unreadable.json")
        return {"invocations": []}
    if isinstance(data.get("invocations"), list):
        return {"invocations": data["invocations"]}
    old = dict(data, number=1, status="ok", recipe_file=None,
               steps=[dict(s, status="ok", started=data.get("started")) for s in data.get("steps", [])])
    return {"invocations": [old]}


def latest_steps(history: dict[str, Any]) -> list[dict[str, Any]]:
    """Per step ever run here (in order of first appearance): its latest successful record, with
    the latest failure after it (``failed_after``), or the failure alone if it never succeeded."""
    latest: dict[str, dict[str, Any]] = {}
    for inv in history["invocations"]:
        for step in inv.get("steps", []):
            entry = dict(step, invocation=inv.get("number"))
            if step.get("status") == "ok" or step["name"] not in latest or latest[step["name"]].get("status") != "ok":
                latest[step["name"]] = entry
            elif step.get("status") == "failed":  # keep the good record, note the failure
                latest[step["name"]] = dict(latest[step["name"]], failed_after=entry)
    return list(latest.values())


def save_history(workdir: Path, recipe: Recipe, history: dict[str, Any]) -> None:
    """Write ``run.json`` (every invocation; at the top level, for readers of the single-record
    format, the latest invocation's seed, versions and plugins, and the latest record of every
    step) and ``report.md``."""
    last = history["invocations"][-1]
    record: dict[str, Any] = {k: last[k] for k in ("backmap", "recipe", "seed", "started", "python", "plugins")}
    record["steps"] = latest_steps(history)
    record["invocations"] = history["invocations"]
    record = json.loads(json.dumps(record, default=str))  # what a later invocation reads back
    write_text(workdir / "run.json", json.dumps(record, indent=2))
    write_text(workdir / "report.md", render_report(recipe, record))


def render_report(recipe: Recipe, record: dict[str, Any]) -> str:
    """A Markdown report: the invocations of this work directory, then one section per step ever
    run here with its latest successful summary (and a later failure, if any)."""
    lines = [f"# backmap run: {recipe.name}", "", recipe.description, "",
             f"- recipe: `{record['recipe']}`", f"- seed: {record['seed']}",
             f"- backmap {record['backmap']}, latest invocation started {record['started']}", "",
             "| invocation | started | steps | status |",
             "|---|---|---|---|"]
    for inv in record.get("invocations", []):
        names = ", ".join(s["name"] for s in inv.get("steps", []))
        lines.append(f"| {inv.get('number')} | {inv.get('started')} | {names} | {inv.get('status')} |")
    lines.append("")
    for step in record["steps"]:
        when = f"{step.get('started')}, invocation {step.get('invocation')}"
        if step.get("status") == "failed":
            lines += [f"## {step['name']} (failed: {when})", "", f"**failed:** {step.get('error')}", ""]
            continue
        lines += [f"## {step['name']} ({step['seconds']:.1f} s, {when})", ""]
        failed = step.get("failed_after")
        if failed:
            lines += [f"**A later attempt failed** ({failed.get('started')}, invocation {failed.get('invocation')}): "
                      f"{failed.get('error')}; below is the last successful one.", ""]
        summary = step.get("summary")
        summary = dict(summary) if isinstance(summary, dict) else {}
        body = summary.pop("markdown", None)
        if summary:
            lines += ["| | |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in summary.items()] + [""]
        if body:
            lines += [body, ""]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
