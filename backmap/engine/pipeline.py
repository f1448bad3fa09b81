"""Runs a recipe's steps in order in a work directory that records the resolved recipe,
the seed, the plugin versions and a report of what each step did."""
from __future__ import annotations

import datetime as _dt
import json
import platform
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
from backmap.engine.recipe import PluginRef, Recipe, ValidatedStep
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
                 console: Console | None = None):
        self.recipe = recipe
        self.workdir = workdir
        self.registry = registry or default_registry()
        self.console = console or Console(stderr=True)
        self.seed = recipe.seed
        self.rng = np.random.default_rng(recipe.seed)
        #: files the steps declared by name (``outputs.json``): how steps find each other's outputs
        self.outputs = Outputs(workdir)

    @cached_property
    def topology(self) -> Topology:
        return load_topology(self.recipe.system.topology, self.registry)

    @cached_property
    def mapping(self) -> Mapping:
        return load_mapping(self.recipe.system.mappings, self.topology, self.registry)

    @cached_property
    def cg_topology(self) -> CGTopology:
        return self.mapping.cg_topology(self.topology)

    def channels_for(self, spec: "EnvironmentSpec") -> "Channels":
        """Feature channels for a generator's spec: the recipe's channel map (``system.channels``,
        DeepBackmap ff.txt) if given, else derived from the topology as the spec says."""
        from backmap.sampling.environment import Channels

        return Channels.for_spec(self.cg_topology, spec.channels, self.recipe.system.channels)

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
    """Run ``steps`` (or those named in ``only``) and return the work directory."""
    registry = registry or default_registry()
    console = console or Console(stderr=True)
    workdir = Path(workdir or recipe.default_workdir()).resolve()
    if only:
        unknown = sorted(set(only) - {s.name for s in steps})
        if unknown:
            raise BackmapError(f"--steps: {', '.join(unknown)} not in the recipe "
                               f"(it has: {', '.join(s.name for s in steps)})")
        steps = [s for s in steps if s.name in only]
    workdir.mkdir(parents=True, exist_ok=True)
    resolved = recipe.model_dump(mode="json")
    resolved["steps"] = [{s.name: s.params.model_dump(mode="json")} for s in steps]
    resolved["workdir"] = str(workdir)
    write_text(workdir / "recipe.yaml", yaml.safe_dump(resolved, sort_keys=False))
    record: dict[str, Any] = {
        "backmap": __version__,
        "recipe": str(recipe.path),
        "seed": recipe.seed,
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "plugins": plugin_versions(registry),
        "steps": [],
    }
    ctx = RunContext(recipe, workdir, registry, console)
    for step in steps:
        console.rule(f"[bold]{step.name}")
        plugin = registry.get("step", step.name).cls(step.params)
        t0 = time.perf_counter()
        summary = plugin.run(ctx) or {}
        seconds = time.perf_counter() - t0
        record["steps"].append({"name": step.name, "seconds": round(seconds, 3), "summary": summary})
        write_text(workdir / "run.json", json.dumps(record, indent=2, default=str))
        write_text(workdir / "report.md", render_report(recipe, record))
        console.print(f"[green]✓[/] {step.name} ({seconds:.1f} s)")
    write_text(workdir / "run.json", json.dumps(record, indent=2, default=str))
    write_text(workdir / "report.md", render_report(recipe, record))
    return workdir


def render_report(recipe: Recipe, record: dict[str, Any]) -> str:
    """A Markdown report: one section per step with its summary."""
    lines = [f"# backmap run: {recipe.name}", "", recipe.description, "",
             f"- recipe: `{record['recipe']}`", f"- seed: {record['seed']}",
             f"- backmap {record['backmap']}, started {record['started']}", ""]
    for step in record["steps"]:
        lines += [f"## {step['name']} ({step['seconds']:.1f} s)", ""]
        summary = step["summary"]
        body = summary.pop("markdown", None) if isinstance(summary, dict) else None
        rows = [(k, v) for k, v in summary.items()] if isinstance(summary, dict) else []
        if rows:
            lines += ["| | |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows] + [""]
        if body:
            lines += [body, ""]
            summary["markdown"] = body
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
