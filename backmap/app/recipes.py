"""The recipe use cases: check a recipe without running it, run its steps (``backmap check``,
``backmap run``); the steps themselves are plugins over the other use cases."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backmap.app.options import Request
from backmap.engine.checks import check_recipe
from backmap.engine.pipeline import run_recipe
from backmap.engine.recipe import Recipe, load_recipe
from backmap.errors import BackmapError
from backmap.fields import option


class CheckRequest(Request):
    recipe: Path = option(description="The recipe (YAML).", argument=True)
    overrides: list[str] = option(default_factory=list, argument=True,
                                  description="key.path=value changes, e.g. steps.train.epochs=2.")


class RunRequest(CheckRequest):
    steps: str | None = option(None, "Comma-separated steps to run (default: all).")
    workdir: Path | None = option(None, "Override the recipe's workdir.")

    def selected(self) -> list[str] | None:
        return self.steps.split(",") if self.steps else None


def check_recipe_file(request: CheckRequest, only: list[str] | None = None) -> tuple[Recipe, list[Any]]:
    """The recipe and its steps, every key, plugin parameter and input file checked."""
    recipe, steps = load_recipe(request.recipe, list(request.overrides))
    check_recipe(recipe, steps, only, getattr(request, "workdir", None))
    return recipe, steps


@dataclass(frozen=True)
class RecipeRun:
    workdir: Path | None  # None: a helper process of data-parallel training (the main one reports)
    processes: int = 1  # training processes (torchrun)

    @property
    def report(self) -> Path | None:
        return None if self.workdir is None else self.workdir / "report.md"


def run_recipe_file(request: RunRequest, console: Any = None) -> RecipeRun:
    """Run the recipe's (selected) steps after checking them. Under ``torchrun`` (data-parallel
    training, docs/scale-out.md) only the train step runs, on every process; the main process keeps
    the run's history and report."""
    from backmap.training.distributed import launched_by_torchrun

    recipe, steps = check_recipe_file(request, request.selected())  # before anything is written
    if not launched_by_torchrun():
        return RecipeRun(run_recipe(recipe, steps, request.workdir, request.selected(), console=console))
    return _run_distributed(recipe, steps, request, console)


def _run_distributed(recipe: Recipe, steps: list[Any], request: RunRequest, console: Any) -> RecipeRun:
    import torch.distributed
    from rich.console import Console

    from backmap.engine.pipeline import run_steps
    from backmap.training.distributed import join_process_group

    selected = request.selected() or [s.name for s in steps]
    if set(selected) != {"train"}:
        raise BackmapError(f"--steps: under torchrun only the train step runs on several processes (selected: "
                           f"{', '.join(selected)}); run the others without torchrun, then add --steps train")
    group = join_process_group()
    try:
        if group.is_main:
            return RecipeRun(run_recipe(recipe, steps, request.workdir, selected, console=console), group.size)
        run_steps(recipe, steps, request.workdir, selected, console=Console(stderr=True, quiet=True))
        return RecipeRun(None, group.size)
    finally:
        torch.distributed.destroy_process_group()
