"""The ``backmap`` command line: thin adapters over the use cases of :mod:`backmap.app`. Each
command's options are derived from its request model (:mod:`backmap.cli_options`); what it prints
is in :mod:`backmap.cli_render`."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from rich.console import Console

import backmap
from backmap import cli_render as show
from backmap.cli_options import RequestCommand, request_from
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
        except OSError as exc:  # read-only folder, disk full, a file where a folder should be: not a bug
            import errno
            import os

            if (ctx.obj and ctx.obj.get("debug")) or exc.errno == errno.EPIPE:
                raise  # click itself quietens a closed pipe (`backmap plugins | head`)
            # the file: a rename's target, not the temporary; a temporary of atomic_path by its target
            name = exc.filename2 if exc.filename2 is not None else exc.filename
            reason = exc.strerror or str(exc)
            if name is not None:
                name = Path(os.fsdecode(name) if isinstance(name, bytes) else str(name))
                if name.name.startswith(".") and ".backmap-tmp-" in name.name:
                    name = name.with_name(name.name[1:name.name.index(".backmap-tmp-")])
                if isinstance(exc, FileExistsError) and not name.is_dir():
                    reason += " and is not a folder"  # e.g. `run --workdir somefile`
            click.echo(f"error: {name}: {reason}" if name is not None else f"error: {reason}", err=True)
            ctx.exit(2)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``backmap --version``: the version, every package that provides plugins with its own, and
    the torch devices and OpenMM platforms this machine offers."""
    if not value or ctx.resilient_parsing:
        return
    from backmap.engine.registry import default_registry

    from backmap.devices import openmm_platforms, torch_devices

    click.echo(f"backmap {backmap.__version__}")
    for package, version in sorted({(info.package, info.version) for info in default_registry()}):
        click.echo(f"  plugins: {package} {version}")
    click.echo(f"  devices: {', '.join(torch_devices())}")
    click.echo(f"  OpenMM platforms: {', '.join(openmm_platforms()) or 'none (openmm not importable)'}")
    ctx.exit()


@click.group(cls=_Group)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version, the installed plugin packages' versions, the devices and OpenMM "
                   "platforms, and exit.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """backmap: atomistic structures from coarse-grained simulations.

    'thesis' in help texts is M. Stieffenhofer, Multiscale Modeling and Deep Learning: Reverse-mapping
    of Condensed-phase Molecular Structures, PhD thesis, Johannes Gutenberg-Universität Mainz (2022)."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")
    if not debug:  # MDAnalysis reports optional extras it does not need here
        logging.getLogger("MDAnalysis").setLevel(logging.ERROR)



def command(name: str, request: str, group: click.Group | None = None):
    """A command of ``group`` (default: the top level) whose options are the fields of ``request``
    (``"module:Class"`` under :mod:`backmap.app`)."""
    return (group or cli).command(name, cls=RequestCommand, request=f"backmap.app.{request}")


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@cli.command()
@click.option("--kind", default=None, help="Only plugins of this kind.")
def plugins(kind: str | None) -> None:
    """List every installed plugin: name, kind, providing package, version."""
    from backmap.engine.hooks import KIND_HOOKS
    from backmap.engine.registry import default_registry

    registry = default_registry()
    kinds = sorted(KIND_HOOKS)
    if kind is not None and kind not in kinds:  # an empty table with exit 0 hid the typo
        raise BackmapError(f"--kind: unknown plugin kind {kind!r} (kinds: {', '.join(kinds)})")
    show.show_plugins(registry, kind)


@command("check", "recipes:CheckRequest")
def check(**_) -> None:
    """Validate RECIPE (and key.path=value OVERRIDES) without running it: every key, every
    plugin's parameters, and the input files (they parse, atom counts and frames agree)."""
    from backmap.app.recipes import check_recipe_file

    request = request_from()
    r, steps = check_recipe_file(request)
    click.echo(f"{request.recipe}: ok — {r.name}, steps: {', '.join(s.name for s in steps)}; "
               f"work directory {r.default_workdir()}")


@command("run", "recipes:RunRequest")
def run(**_) -> None:
    """Run the steps of RECIPE in order (OVERRIDES: key.path=value, e.g. steps.train.epochs=2)."""
    from backmap.app.recipes import run_recipe_file

    done = run_recipe_file(request_from(), console=console)
    if done.workdir is not None:
        processes = f"; {done.processes} training processes" if done.processes > 1 else ""
        click.echo(f"done: {done.workdir} (report: {done.report}{processes})")


@command("energy", "energy:EnergyRequest")
@json_option
def energy(as_json: bool, **_) -> None:
    """Per-term potential energies of every frame (like a GROMACS rerun), in kJ/mol."""
    from backmap.app.energy import compute_energies

    show.show_energies(compute_energies(request_from()), as_json)


@command("apply", "apply:ApplyRequest")
def apply(**_) -> None:
    """Backmap CG structures or a trajectory with a trained model. Writes OUT, the first frame as
    OUT.gro, a .top beside it (for gmx grompp), the CG frames used (OUT_cg.trr) and the provenance
    (OUT.json). With --refine, every frame is then sampled at --temperature under the CG restraint
    (see `backmap refine`); the generator's own output is kept as OUT_unrefined."""
    from backmap.app.apply import apply_model

    show.show_backmapped(apply_model(request_from()))


@command("convert-model", "models:ConvertModelRequest")
def convert_model(**_) -> None:
    """Make a model of an older backmap current. SOURCE is a model folder of format 1 (its topology
    and mapping were paths, often outside it): they are read this one time and copied into a
    self-contained package OUT (OUT may be SOURCE: repackaged in place). Or SOURCE is a pickled
    model of backmap 0.1 (generator.pkl + generator.json): unpickling can run code, convert only
    files you trust."""
    from backmap.app.models import convert_model

    directory = convert_model(request_from())
    click.echo(f"wrote the model package {directory} (model.json, weights.safetensors, system/)")


@command("export-model", "models:ExportModelRequest")
def export_model(**_) -> None:
    """Export the model of SOURCE (a run directory, a model folder, an archive or a registered
    name) as one file (NAME.bmz) or a folder, checked first: every file it names is inside it with
    the recorded hash. `--model NAME.bmz` and `--model FOLDER` both load it."""
    from backmap.app.models import export_model

    click.echo(f"wrote {export_model(request_from())}")


@cli.group()
def models() -> None:
    """Models known by name: the shipped ones and those of installed model packs."""


@models.command(name="list")
@json_option
def models_list(as_json: bool) -> None:
    """Every registered model: name, generator, pack, best evaluation on its card."""
    from backmap.app.models import list_models

    show.show_models(list_models(), as_json)


@models.command(name="show")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON.")
def models_show(model: Path, as_json: bool) -> None:
    """Print MODEL's card (a registered name, a model folder, an archive or a run directory):
    training data, generator and settings, training time and hardware, evaluations, licence."""
    import json

    from backmap.app.models import model_card
    from backmap.engine.model_card import render_card

    card = model_card(model)
    click.echo(json.dumps(card, indent=1) if as_json else render_card(card))


@command("refine", "refine:RefineRequest")
def refine(**_) -> None:
    """Sample the AA structure at temperature T while keeping every bead's mapped centre on the CG
    input (restrained Langevin / MALA); writes OUT, OUT's .log.csv (energy, CG deviation per frame)
    and a plot of it."""
    from backmap.app.refine import refine_structures

    r = refine_structures(request_from())
    click.echo(f"wrote {r.output}: {r.frames} frames, {r.seconds_per_frame} s/frame, CG RMSD "
               f"{r.cg_rmsd_before} → {r.cg_rmsd_after} nm; log {r.log}")


@command("map", "mapping:MapRequest")
def map_cmd(**_) -> None:
    """Map an AA trajectory to CG (like VOTCA's csg_map); molecules are made whole first."""
    from backmap.app.mapping import map_to_cg

    m = map_to_cg(request_from())
    click.echo(f"wrote {m.out}: {m.frames} frames, {m.beads} beads ({m.seconds:.1f} s)")


@command("evaluate", "evaluate:EvaluateRequest")
def evaluate(**_) -> None:
    """Compare CANDIDATES (backmapped AA trajectories) with a reference: per observable the
    Jensen–Shannon divergence and Wasserstein-1; writes metrics.json, report.md and figures/."""
    from backmap.app.evaluate import evaluate_candidates

    show.show_evaluation(evaluate_candidates(request_from()))


@command("assess", "assess:AssessRequest")
def assess(**_) -> None:
    """Rank CG models by backmapping their trajectories and measuring them with the AA force field
    (Stieffenhofer, PhD thesis, JGU Mainz 2022, ch. 6): AA forces summed per bead against the reference's (JSD, with its spread over
    random halves of the frames), RDFs and bonded distributions, CG RMSD, clashes, restraint energy
    per bead after refinement, and the CG-level distributions against the mapped reference."""
    from backmap.app.assess import assess_models

    request = request_from()
    show.show_assessment(assess_models(request), request.out)


@command("morph", "morph:MorphRequest")
def morph(**_) -> None:
    """Morph structures of a top-down CG model through a resolution bottleneck (Stieffenhofer, PhD
    thesis, JGU Mainz 2022, ch. 7): map them through the resolution
    bottleneck of a model trained only on the target and let its generator reinsert the target's
    local statistics. Writes OUT (the top-down model's particles, names and box), OUT.gro, a copy of
    its .top, the bottleneck frames (OUT_cg.trr) and the provenance (OUT.json). With --ibi-rounds,
    IBI tables are fitted first (docs/morph.md)."""
    from backmap.app.morph import morph_structures

    request = request_from()
    r = morph_structures(request)
    click.echo(f"wrote {r.files.aa}: {r.frames} frames of {r.atoms} particles morphed by scheme {request.scheme} "
               f"({r.seconds_per_frame:.2f} s/frame)")


def main() -> None:
    cli(prog_name="backmap")


if __name__ == "__main__":
    sys.exit(main())
