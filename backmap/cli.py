"""The ``backmap`` command line."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

import backmap
from backmap.errors import BackmapError

console = Console(stderr=True)


class _Group(click.Group):
    """Turns user errors into one line and exit code 2 (a traceback only with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BackmapError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            for line in str(exc).splitlines():
                click.echo(f"error: {line}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group)
@click.version_option(backmap.__version__, prog_name="backmap")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """backmap: atomistic structures from coarse-grained simulations."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")
    if not debug:  # MDAnalysis reports optional extras it does not need here
        logging.getLogger("MDAnalysis").setLevel(logging.ERROR)


@cli.command()
@click.option("--kind", default=None, help="Only plugins of this kind.")
def plugins(kind: str | None) -> None:
    """List every installed plugin: name, kind, providing package, version."""
    from backmap.registry import default_registry

    table = Table("kind", "name", "package", "version", "module", "summary", box=None)
    for info in default_registry():
        if kind is None or info.kind == kind:
            table.add_row(info.kind, info.name, info.package, info.version, info.module, info.cls.summary)
    Console(width=200).print(table)


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
def check(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Validate RECIPE (and key.path=value OVERRIDES) without running it."""
    from backmap.recipe import load_recipe

    r, steps = load_recipe(recipe, list(overrides))
    click.echo(f"{recipe}: ok — {r.name}, steps: {', '.join(s.name for s in steps)}; "
               f"work directory {r.default_workdir()}")


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--steps", "only", default=None, help="Comma-separated steps to run (default: all).")
@click.option("--workdir", type=click.Path(path_type=Path), default=None, help="Override the recipe's workdir.")
def run(recipe: Path, overrides: tuple[str, ...], only: str | None, workdir: Path | None) -> None:
    """Run the steps of RECIPE in order (OVERRIDES: key.path=value, e.g. steps.train.epochs=2)."""
    from backmap.pipeline import run_recipe
    from backmap.recipe import load_recipe

    r, steps = load_recipe(recipe, list(overrides))
    out = run_recipe(r, steps, workdir, only.split(",") if only else None, console=console)
    click.echo(f"done: {out} (report: {out / 'report.md'})")


@cli.command(name="map")
@click.option("--topology", "topology", required=True, type=click.Path(path_type=Path),
              help="AA topology (.tpr, .top, .gro).")
@click.option("--traj", required=True, type=click.Path(path_type=Path), help="AA trajectory (.xtc, .trr, .gro, .pdb).")
@click.option("--mapping", required=True, multiple=True, type=click.Path(path_type=Path),
              help="VOTCA mapping XML or DeepBackmap .map (repeat for several molecule types).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="CG output (.xtc, .gro, .pdb).")
@click.option("--frames", default=None, help="'start:stop:step' or '0,5,9'.")
def map_cmd(topology: Path, traj: Path, mapping: tuple[Path, ...], out: Path, frames: str | None) -> None:
    """Map an AA trajectory to CG (like VOTCA's csg_map); molecules are made whole first."""
    from backmap.data import count_frames, select_frames
    from backmap.mapper import map_trajectory
    from backmap.mapping import load_mapping
    from backmap.topology import load_topology

    t0 = time.perf_counter()
    topo = load_topology(topology)
    cg_top = load_mapping(list(mapping), topo).cg_topology(topo)
    idx = select_frames(frames, [], count_frames(traj), str(traj))
    n = map_trajectory(cg_top, traj, out, idx)
    click.echo(f"wrote {out}: {n} frames, {cg_top.n_beads} beads ({time.perf_counter() - t0:.1f} s)")


def main() -> None:
    cli(prog_name="backmap")


if __name__ == "__main__":
    sys.exit(main())
