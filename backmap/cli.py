"""The ``backmap`` command line."""
from __future__ import annotations

import logging
import os
import shutil
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
    from backmap.engine.registry import default_registry

    registry = default_registry()
    kinds = sorted({info.kind for info in registry})
    if kind is not None and kind not in kinds:  # an empty table with exit 0 hid the typo
        raise BackmapError(f"--kind: unknown plugin kind {kind!r} (kinds: {', '.join(kinds)})")
    table = Table("kind", "name", "package", "version", "module", "summary", box=None)
    for info in registry:
        if kind is None or info.kind == kind:
            table.add_row(info.kind, info.name, info.package, info.version, info.module, info.cls.summary)
    Console(width=200).print(table)


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
def check(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Validate RECIPE (and key.path=value OVERRIDES) without running it: every key, every
    plugin's parameters, and the input files (they parse, atom counts and frames agree)."""
    from backmap.engine.checks import check_recipe
    from backmap.engine.recipe import load_recipe

    r, steps = load_recipe(recipe, list(overrides))
    check_recipe(r, steps)
    click.echo(f"{recipe}: ok — {r.name}, steps: {', '.join(s.name for s in steps)}; "
               f"work directory {r.default_workdir()}")


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--steps", "only", default=None, help="Comma-separated steps to run (default: all).")
@click.option("--workdir", type=click.Path(path_type=Path), default=None, help="Override the recipe's workdir.")
def run(recipe: Path, overrides: tuple[str, ...], only: str | None, workdir: Path | None) -> None:
    """Run the steps of RECIPE in order (OVERRIDES: key.path=value, e.g. steps.train.epochs=2)."""
    from backmap.engine.checks import check_recipe
    from backmap.engine.pipeline import run_recipe
    from backmap.engine.recipe import load_recipe
    from backmap.training.distributed import launched_by_torchrun

    r, steps = load_recipe(recipe, list(overrides))
    check_recipe(r, steps, only.split(",") if only else None)  # before anything is written
    if launched_by_torchrun():  # data-parallel training (docs/scale-out.md)
        _run_distributed(r, steps, workdir, only)
        return
    out = run_recipe(r, steps, workdir, only.split(",") if only else None, console=console)
    click.echo(f"done: {out} (report: {out / 'report.md'})")


def _run_distributed(r, steps, workdir: Path | None, only: str | None) -> None:
    """One of the processes ``torchrun`` started: train steps only (the others would run once per
    process); the main process keeps the run's history and report, the others only train."""
    import torch.distributed

    from backmap.engine.pipeline import run_recipe, run_steps
    from backmap.training.distributed import join_process_group

    selected = only.split(",") if only else [s.name for s in steps]
    if set(selected) != {"train"}:
        raise BackmapError(f"--steps: under torchrun only the train step runs on several processes (selected: "
                           f"{', '.join(selected)}); run the others without torchrun, then add --steps train")
    group = join_process_group()
    try:
        if group.is_main:
            out = run_recipe(r, steps, workdir, selected, console=console)
            click.echo(f"done: {out} (report: {out / 'report.md'}; {group.size} training processes)")
        else:
            run_steps(r, steps, workdir, selected, console=Console(stderr=True, quiet=True))
    finally:
        torch.distributed.destroy_process_group()


def _settings(mdp: Path | None, cutoff: float | None, coulomb: str | None, epsilon_rf: float | None,
              lj_shift: bool | None):
    """Non-bonded settings from an .mdp file and/or options (options win)."""
    from backmap.forcefield import NonbondedSettings

    base = NonbondedSettings.from_mdp(mdp) if mdp else NonbondedSettings()
    changes = {}
    if cutoff is not None:
        changes |= {"rvdw": cutoff, "rcoulomb": cutoff}
    if coulomb is not None:
        changes["coulomb"] = coulomb
    if epsilon_rf is not None:
        changes["epsilon_rf"] = epsilon_rf
    if lj_shift is not None:
        changes["vdw_modifier"] = "potential-shift" if lj_shift else "none"
    return base.model_copy(update=changes)


def nonbonded_options(f):
    """The options that choose cut-offs and electrostatics, shared by commands that need energies."""
    options = [
        click.option("--mdp", type=click.Path(path_type=Path), default=None,
                     help="Take cut-offs and Coulomb settings from a GROMACS .mdp file."),
        click.option("--cutoff", type=float, default=None, help="LJ and Coulomb cut-off in nm (default 1.0)."),
        click.option("--coulomb", type=click.Choice(["reaction-field", "cutoff", "none"]), default=None,
                     help="Coulomb treatment (default reaction-field; cutoff = GROMACS Verlet plain cut-off)."),
        click.option("--epsilon-rf", type=float, default=None, help="Reaction-field dielectric (0 = infinity)."),
        click.option("--lj-shift/--no-lj-shift", default=None,
                     help="Shift LJ to zero at the cut-off (GROMACS Verlet default: on)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def refine_options(minimize: bool = True):
    """Options of the restrained refiners, shared by ``refine`` and ``apply --refine`` (where
    ``--minimize`` already means the EM baseline: there use ``--param minimize_steps=N``)."""
    options = [
        click.option("--temperature", type=float, default=None, help="Temperature in K (default 300)."),
        click.option("--steps", "n_steps", type=int, default=None, help="Steps per frame (default 1000)."),
        click.option("--restraint", type=float, default=None,
                     help="k of ½k|M(x) − R|² per bead, kJ/mol/nm² (default 2e5: RMS ≈ √(3kT/k))."),
        click.option("--constraints", type=click.Choice(["none", "h-bonds", "all-bonds"]), default=None,
                     help="Bond constraints (default: the .mdp's 'constraints', without --mdp h-bonds; "
                          "sPS: all-bonds)."),
        click.option("--timestep", type=float, default=None, help="Time step in ps (default 0.001)."),
        click.option("--friction", type=float, default=None, help="Langevin friction in 1/ps (default 10)."),
        *([click.option("--minimize", "minimize_steps", type=int, default=None,
                        help="Restrained minimization steps before sampling (default 100, every refiner).")]
          if minimize else []),
        click.option("--param", "extra", multiple=True,
                     help="Other refiner parameter as key=value (e.g. threads=2"
                          + ("" if minimize else "; minimize_steps=N, default 100") + ")."),
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def cluster_options(f):
    """Where the frames run (backmap.parallel): this process, a local Dask cluster, or a running one."""
    options = [
        click.option("--workers", type=int, default=None,
                     help="Run frames on a local Dask cluster of N worker processes (or N batch jobs with "
                          "--scheduler slurm/pbs/lsf)."),
        click.option("--scheduler", default=None,
                     help="A running Dask scheduler (tcp://host:8786 or a scheduler .json file), or slurm/pbs/lsf/"
                          "sge/htcondor for a dask-jobqueue cluster (docs/scale-out.md)."),
        click.option("--threads-per-worker", type=int, default=1, show_default=True,
                     help="torch/OpenMM threads of each worker process."),
        click.option("--frames-per-task", type=int, default=1, show_default=True,
                     help="Frames per Dask task (more: less scheduling overhead per frame)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _cluster(workers: int | None, scheduler: str | None, threads_per_worker: int, frames_per_task: int):
    from pydantic import ValidationError

    from backmap.parallel import ClusterOptions

    try:
        return ClusterOptions(workers=workers, scheduler=scheduler, threads_per_worker=threads_per_worker,
                              frames_per_task=frames_per_task)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "--workers/--scheduler"
        raise BackmapError(f"{key}: {err['msg'].removeprefix('Value error, ')}") from None


def _refiner(name: str, temperature, n_steps, restraint, constraints, timestep, friction, minimize_steps,
             extra: tuple[str, ...], seed: int):
    from backmap.engine.loaders import make_plugin

    params = {k: v for k, v in dict(temperature=temperature, steps=n_steps, restraint=restraint,
                                    constraints=constraints, timestep=timestep, friction=friction,
                                    minimize_steps=minimize_steps, seed=seed).items() if v is not None}
    params.update(_key_values(extra, "--param"))
    return make_plugin("refiner", name, params, where=f"--refiner {name}")


def _restrained_system(topology: Path, mapping: tuple[Path, ...] | list[Path], settings):
    from backmap.engine.loaders import load_mapping
    from backmap.refinement.restrained import RestrainedSystem
    from backmap.engine.loaders import load_topology

    topo = load_topology(topology)
    return RestrainedSystem(load_mapping(list(mapping), topo).cg_topology(topo), Path(topology), settings)


@cli.command()
@click.option("--topology", required=True, type=click.Path(path_type=Path), help="AA topology with parameters (.top).")
@click.option("--traj", required=True, type=click.Path(path_type=Path), help="AA trajectory in any format MDAnalysis reads (.xtc, .trr, .gro, .dcd, LAMMPS dump, …).")
@click.option("--mapping", multiple=True, type=click.Path(path_type=Path),
              help="Mapping: also report the AA forces summed per CG bead.")
@click.option("--frames", default=None, help="'start:stop:step' or '0,5,9'.")
@click.option("--forces-out", type=click.Path(path_type=Path), default=None,
              help="Write CG positions and summed bead forces to this .trr (needs --mapping).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@nonbonded_options
def energy(topology: Path, traj: Path, mapping: tuple[Path, ...], frames: str | None, forces_out: Path | None,
           as_json: bool, mdp, cutoff, coulomb, epsilon_rf, lj_shift) -> None:
    """Per-term potential energies of every frame (like a GROMACS rerun), in kJ/mol."""
    import json

    import numpy as np

    from backmap.system.pairs import count_frames, select_frames
    from backmap.forcefield import ForceField
    from backmap.forcefield.trajectory import rerun_trajectory
    from backmap.system.io import Frame, write_frames
    from backmap.engine.loaders import load_mapping
    from backmap.progress import progress
    from backmap.engine.loaders import load_topology

    if forces_out and not mapping:
        raise BackmapError("--forces-out needs --mapping")
    settings = _settings(mdp, cutoff, coulomb, epsilon_rf, lj_shift)
    topo = load_topology(topology)
    ff = ForceField(topo, settings)
    cg_top = load_mapping(list(mapping), topo).cg_topology(topo) if mapping else None
    idx = select_frames(frames, [], count_frames(traj), str(traj))
    rows = list(progress(rerun_trajectory(ff, traj, idx, cg_top), total=len(idx), description="energies"))
    terms = [t for t in rows[0].energies if any(abs(r.energies[t]) > 0 for r in rows) or t == "potential"]
    bead_stats = None
    if cg_top is not None:
        f = np.stack([r.bead_forces for r in rows])
        bead_stats = {t: {"mean_abs_force": float(np.linalg.norm(f[:, cg_top.bead_types == t], axis=-1).mean()),
                          "mean_force_x": float(f[:, cg_top.bead_types == t, 0].mean())}
                      for t in sorted(set(cg_top.bead_types))}
        if forces_out:
            stream = (Frame(r.bead_positions, r.frame.dimensions, r.frame.time, r.frame.index, r.bead_forces)
                      for r in rows)
            write_frames(forces_out, stream, cg_top.bead_names, cg_top.resnames, cg_top.resids)
    if as_json:
        doc = {"topology": str(topology), "trajectory": str(traj), "settings": settings.model_dump(),
               "units": "kJ/mol", "frames": [{"frame": r.frame.index, "time": r.frame.time,
                                              "energies": {t: r.energies[t] for t in terms}} for r in rows]}
        if bead_stats:
            doc["bead_forces"] = bead_stats
        click.echo(json.dumps(doc, indent=1))
        return
    table = Table("frame", "time (ps)", *terms, box=None, title=f"energies (kJ/mol), {settings.coulomb}, "
                  f"rc {settings.rvdw}/{settings.rcoulomb} nm")
    for r in rows:
        table.add_row(str(r.frame.index), f"{r.frame.time:g}", *(f"{r.energies[t]:.3f}" for t in terms))
    Console(width=220).print(table)
    if bead_stats:
        t2 = Table("bead type", "mean |F| (kJ/mol/nm)", "mean F_x", box=None, title="AA forces summed per bead")
        for t, v in bead_stats.items():
            t2.add_row(t, f"{v['mean_abs_force']:.2f}", f"{v['mean_force_x']:.3f}")
        Console(width=220).print(t2)
    if forces_out:
        click.echo(f"wrote {forces_out}: CG positions and bead forces")


@cli.command()
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="A model: a registered name (backmap models list), a model folder or archive (.bmz), or a run "
                   "directory whose train step wrote one.")
@click.option("--cg", "cg_path", required=True, type=click.Path(path_type=Path),
              help="CG structure or trajectory in the mapping's bead order (any format MDAnalysis reads: .gro, "
                   ".xtc, .trr, .pdb, .dcd, LAMMPS dump, …).")
@click.option("--traj", type=click.Path(path_type=Path), default=None,
              help="CG trajectory whose frames are backmapped instead of --cg's (--cg then only names the "
                   "structure the trajectory belongs to, as in GROMACS; its bead names are checked).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="AA output (.gro, .pdb, .xtc, .trr).")
@click.option("--topology", type=click.Path(path_type=Path), default=None, help="AA topology (default: the model's).")
@click.option("--mapping", multiple=True, type=click.Path(path_type=Path), help="Mapping (default: the model's).")
@click.option("--frames", default=None, help="'start:stop:step' or '0,5,9'.")
@click.option("--selector", default="lowest_energy", show_default=True,
              help="Selector plugin choosing one of the candidates (lowest_energy, boltzmann, random).")
@click.option("--selector-param", "selector_params", multiple=True, metavar="KEY=VALUE",
              help="A parameter of the selector (repeatable), e.g. temperature=568 for boltzmann (default 300 K).")
@click.option("--candidates", type=int, default=8, show_default=True, help="Candidates proposed per unit (K).")
@click.option("--gibbs", "gibbs_sweeps", type=int, default=2, show_default=True,
              help="Gibbs sweeps after the forward pass (each unit re-placed seeing all others).")
@click.option("--minimize", "minimize_steps", type=int, default=0, show_default=True,
              help="Restrained energy-minimization steps after sampling.")
@click.option("--project-cg/--no-project-cg", default=None,
              help="Move every sampled frame the least onto its CG input (mapped centres exact, bond lengths "
                   "kept; no energy). Default: the model's choice (on for equivariant and vae models).")
@click.option("--cg-restraint", type=float, default=0.0, show_default=True,
              help="CG restraint (kJ/mol/nm²) added to the candidates' selection energy: each unit is also chosen "
                   "to meet its CG beads, so chains do not drift from their CG trace (0 = off).")
@click.option("--colouring/--no-colouring", default=False, show_default=True,
              help="Never place two units whose environments overlap in the same step (molecules of a step "
                   "split into groups): no unit is placed blind to a neighbour moving with it.")
@click.option("--polish", "polish_steps", type=int, default=0, show_default=True,
              help="Energy guidance: steepest-descent steps on each chosen placement's selection energy, "
                   "turning it about its rotatable bonds (bond lengths and angles kept), e.g. 15; 0 = off.")
@click.option("--polish-sweeps", type=click.Choice(["all", "last"]), default="last", show_default=True,
              help="Polish only in the frame's last sweep (then a closing pass), or in every sweep including the "
                   "forward pass (where a chain's growing end swings freely).")
@click.option("--stereo-reference", type=click.Path(path_type=Path), default=None,
              help="AA structure of the system whose stereocentres' handedness the sampler keeps.")
@click.option("--regrow", default=None, metavar="BEADS",
              help="Block move after the sweeps: hide these beads' units (comma-separated bead names, e.g. "
                   "S1,S2,B1,B2 for a chain's start) and place them again with the rest of the molecule in place.")
@click.option("--regrow-candidates", type=int, default=0, show_default=True,
              help="Candidates per unit in the --regrow block move (0: --candidates).")
@click.option("--regrow-trials", type=int, default=1, show_default=True,
              help="Grow the --regrow block this many times; each molecule keeps its lowest-energy trial.")
@click.option("--repair-clashes", type=int, default=0, show_default=True,
              help="Rounds of clash repair after sampling: units with an atom closer than 0.1 nm to one more than "
                   "three bonds away are drawn again, one at a time (0 = off).")
@click.option("--orient-units/--no-orient-units", default=False, show_default=True,
              help="Forward pass: turn each unit with no bond to a placed atom (e.g. a ring placed before its "
                   "backbone) so that its atoms bonded to unplaced ones point where the CG input puts their "
                   "partners. For models applied to chemistry they were not trained on.")
@click.option("--dock", default=None, metavar="TYPES",
              help="Forward pass: draw the units of these bead types (comma-separated, e.g. S) seeing no placed "
                   "atom, as a unit built first is, and dock each rigidly onto the one placed atom it bonds to. "
                   "For models applied to chemistry they were not trained on.")
@click.option("--cutoff", type=float, default=None, help="Assert the model's environment radius (nm); it is the model's.")
@click.option("--traversal", default=None, help="Assert the model's traversal; it is the model's.")
@click.option("--frame-by-frame", is_flag=True, default=False,
              help="With a model trained in trajectory mode (environment.temporal): backmap every frame on its "
                   "own, as if it were a trajectory's first (the frame-wise baseline). Without it such a model "
                   "runs the frames in order, each conditioned on the AA frame written before it.")
@click.option("--generator-param", "generator_params", multiple=True, metavar="KEY=VALUE",
              help="A sampling parameter of the trained generator for this run (repeatable), e.g. "
                   "temperature=350 (a vae model trained over a range of temperatures), recentre=false.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--refine", "refiner_name", default=None,
              help="Refine every frame with this refiner (openmm, langevin, mala) under the CG restraint.")
@click.option("--mdp", type=click.Path(path_type=Path), default=None,
              help="Cut-offs/electrostatics for --refine (default: the .mdp the model carries, if any).")
@refine_options(minimize=False)
@cluster_options
def apply(model: Path, cg_path: Path, traj: Path | None, out: Path, topology: Path | None, mapping: tuple[Path, ...],
          frames: str | None, selector: str, selector_params: tuple[str, ...], candidates: int, gibbs_sweeps: int, minimize_steps: int,
          project_cg: bool | None, cg_restraint: float, colouring: bool, polish_steps: int, polish_sweeps: str,
          stereo_reference: Path | None, regrow: str | None, regrow_candidates: int, regrow_trials: int, repair_clashes: int,
          orient_units: bool, dock: str | None, cutoff: float | None, traversal: str | None, frame_by_frame: bool, generator_params: tuple[str, ...],
          seed: int, refiner_name: str | None, mdp: Path | None, temperature, n_steps, restraint, constraints,
          timestep, friction, extra, workers, scheduler, threads_per_worker, frames_per_task) -> None:
    """Backmap CG structures or a trajectory with a trained model. Writes OUT, the first frame as
    OUT.gro, a .top beside it (for gmx grompp), the CG frames used (OUT_cg.trr) and the provenance
    (OUT.json). With --refine, every frame is then sampled at --temperature under the CG restraint
    (see `backmap refine`); the generator's own output is kept as OUT_unrefined."""
    from backmap.engine.apply import backmap_to_files, check_output
    from backmap.engine.checks import check_bead_names
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.engine.models import load_model
    from backmap.sampling.backmapper import BackmapSettings, read_cg
    from backmap.system.pairs import count_frames, select_frames

    cluster = _cluster(workers, scheduler, threads_per_worker, frames_per_task)
    loaded = load_model(model)
    top_path = topology or loaded.topology
    maps = list(mapping) or loaded.mapping
    if top_path is None or not maps:
        raise BackmapError("the model does not record its topology and mapping: give --topology and --mapping",
                           source=model)
    source = traj or cg_path
    check_output(out, [source, cg_path, top_path, *maps, stereo_reference, mdp])
    loaded.refuse_output_inside(out)
    topo = load_topology(top_path)
    given = load_mapping(maps, topo)
    if mapping and loaded.mapping and all(Path(p).is_file() for p in loaded.mapping):
        from backmap.engine.checks import placement_order_changes

        try:
            changed = placement_order_changes(given, load_mapping(loaded.mapping, topo))
        except BackmapError:  # the model's mapping does not fit this system: refused below, with its reason
            changed = []
        if changed:
            click.echo(f"warning: apply: --mapping places the beads of {', '.join(changed)} in another order than "
                       "the model was trained with; it will see environments it never saw (give the model's "
                       "mapping, or retrain)", err=True)
    cg_top = given.cg_topology(topo)
    check_bead_names(cg_path, cg_top)
    idx = select_frames(frames, [], count_frames(source), str(source))
    try:
        settings = BackmapSettings(selector=selector,
                                   selector_params=_key_values(selector_params, "--selector-param"),
                                   candidates=candidates, gibbs_sweeps=gibbs_sweeps,
                                   minimize_steps=minimize_steps, project_cg=project_cg, cg_restraint=cg_restraint,
                                   colouring=colouring, polish_steps=polish_steps, polish_sweeps=polish_sweeps,
                                   energy=Path(top_path).suffix == ".top",
                                   stereo_reference=stereo_reference, cutoff=cutoff, traversal=traversal,
                                   frame_by_frame=frame_by_frame, regrow_candidates=regrow_candidates, regrow_trials=regrow_trials,
                                   repair_clashes=repair_clashes, orient_units=orient_units,
                                   dock=[b.strip() for b in dock.split(",") if b.strip()] if dock else [],
                                   regrow=[b.strip() for b in regrow.split(",") if b.strip()] if regrow else [],
                                   generator_params=_key_values(generator_params, "--generator-param"))
    except ValueError as exc:
        raise BackmapError(f"apply: {str(exc).splitlines()[-1].strip()}") from None
    ctx = click.get_current_context()
    given = {name for name in ctx.params if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    settings, taken = settings.recommended(loaded.sampling, given, loaded.directory / "model.json", cg_top)
    if taken:
        click.echo("apply: the model's sampling settings: " + ", ".join(f"{k}={v}" for k, v in taken.items())
                   + " (the options of the same names change them)", err=True)
    loaded.generator.for_inference(settings.generator_params, where="--generator-param")  # refused here, early
    refiner = system = None
    if refiner_name:
        from backmap.refinement.restrained import RestrainedSystem

        refiner = _refiner(refiner_name, temperature, n_steps, restraint, constraints, timestep, friction, None,
                           extra, seed)
        system = RestrainedSystem(cg_top, Path(top_path), _settings(mdp or loaded.mdp, None, None, None, None))
    summary = backmap_to_files(loaded, cg_top, Path(top_path), list(read_cg(cg_top, source, idx)), out, settings,
                               seed=seed, refiner=refiner, refine_system=system, cluster=cluster,
                               provenance={"cg": str(source), "frames": frames}, where="apply")
    files = summary["files"]
    kept = f"; stereocentres kept {summary['stereocentres kept']:.4f} (every neighbour triple signed as in the " \
        "reference)" if "stereocentres kept" in summary else ""
    if "broken bonds" in summary:
        kept += f"; broken bonds {summary['broken bonds']:.4f}"
    if "CG projection" in summary:
        p = summary["CG projection"]
        kept += f"; CG RMSD {p['CG RMSD before (nm)']:.4f} → {p['CG RMSD after (nm)']:.1e} nm by the CG projection"
    if "energy guidance" in summary:
        g = summary["energy guidance"]
        kept += (f"; energy guidance lowered {g['placements polished']} placements' energies by "
                 f"{g['mean energy drop per placement (kJ/mol)']:.1f} kJ/mol on average")
    beside = ", ".join(str(f) for f in (files.structure, files.topology, files.unrefined) if f is not None)
    click.echo(f"wrote {out} ({beside}): {summary['frames']} frames of {summary['atoms']} atoms "
               f"({summary['seconds per frame']:.1f} s/frame){kept}")


@cli.command(name="convert-model")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model folder to write.")
@click.option("--topology", type=click.Path(path_type=Path), default=None,
              help="Format-1 model: the topology, if it is no longer where the model says.")
@click.option("--mapping", multiple=True, type=click.Path(path_type=Path),
              help="Format-1 model: the mapping file(s), if no longer where the model says.")
@click.option("--mdp", type=click.Path(path_type=Path), default=None,
              help="Format-1 model: an .mdp to carry, whose non-bonded settings refinement uses.")
def convert_model(source: Path, out: Path, topology: Path | None, mapping: tuple[Path, ...], mdp: Path | None) -> None:
    """Make a model of an older backmap current. SOURCE is a model folder of format 1 (its topology
    and mapping were paths, often outside it): they are read this one time and copied into a
    self-contained package OUT (OUT may be SOURCE: repackaged in place). Or SOURCE is a pickled
    model of backmap 0.1 (generator.pkl + generator.json): unpickling can run code, convert only
    files you trust."""
    from backmap.engine.legacy import convert_pickled_model, repackage_model

    if source.suffix == ".pkl":
        directory = convert_pickled_model(source, out)
    else:
        directory = repackage_model(source, out, topology, list(mapping) or None, mdp)
    click.echo(f"wrote the model package {directory} (model.json, weights.safetensors, system/)")


@cli.command(name="export-model")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="NAME.bmz (one file) or a new folder.")
def export_model(source: Path, out: Path) -> None:
    """Export the model of SOURCE (a run directory, a model folder, an archive or a registered
    name) as one file (NAME.bmz) or a folder, checked first: every file it names is inside it with
    the recorded hash. `--model NAME.bmz` and `--model FOLDER` both load it."""
    from backmap.engine.model_archive import ARCHIVE_SUFFIX, copy_package, write_archive
    from backmap.engine.models import load_model, model_directory

    directory = model_directory(source)
    load_model(directory)  # a package that would not load is not exported
    if out.resolve() == directory.resolve() or directory.resolve() in out.resolve().parents:
        raise BackmapError("--out lies inside the model being exported", source=out)
    if out.suffix.lower() == ARCHIVE_SUFFIX:
        write_archive(directory, out)
    else:
        copy_package(directory, out)
    click.echo(f"wrote {out}")


@cli.group()
def models() -> None:
    """Models known by name: the shipped ones and those of installed model packs."""


@models.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_list(as_json: bool) -> None:
    """Every registered model: name, generator, pack, best evaluation on its card."""
    import json

    from backmap.engine.model_card import read_card
    from backmap.engine.model_registry import registered_models
    from backmap.engine.models import model_directory, read_description

    rows = []
    for m in registered_models():
        row = {"name": m.name, "pack": m.pack, "package": m.distribution, "path": str(m.path)}
        try:
            directory = model_directory(m.path)
            row["generator"] = read_description(directory)["plugin"]
            card = read_card(directory) or {}
            row["summary"] = card.get("summary", "")
            evals = card.get("evaluations") or []
            if evals:
                e = evals[0]
                row["mean JSD"] = e.get("mean JSD")
                row["noise floor"] = e.get("noise floor")
        except BackmapError as exc:
            row["error"] = str(exc)
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    cells = []
    for r in rows:
        jsd = ", ".join(f"{k.split(' (')[0]} {v:.3g}" for k, v in (r.get("mean JSD") or {}).items())
        cells.append([r["name"], r.get("generator", "unreadable"), f"{r['pack']} ({r['package']})",
                      f"{jsd} (floor {r['noise floor']:.2g})" if jsd else "—", r.get("summary") or r.get("error", "")])
    head = ["name", "generator", "pack (package)", "mean JSD (card)", "summary"]
    widths = [max(len(r[i]) for r in [head, *cells]) for i in range(4)]
    room = max(20, shutil.get_terminal_size((120, 24)).columns - sum(widths) - 8)
    for r in [head, *cells]:  # the columns that identify a model are never cut; the summary is
        summary = r[4] if len(r[4]) <= room else r[4][:room - 1] + "…"
        click.echo("  ".join(f"{v:<{w}}" for v, w in zip(r, widths)) + "  " + summary)


@models.command(name="show")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON.")
def models_show(model: Path, as_json: bool) -> None:
    """Print MODEL's card (a registered name, a model folder, an archive or a run directory):
    training data, generator and settings, training time and hardware, evaluations, licence."""
    import json

    from backmap.engine.model_card import read_card, render_card, system_fingerprint
    from backmap.engine.models import load_model

    loaded = load_model(model)  # checks the package, too
    card = read_card(loaded.directory) or {
        "name": loaded.directory.name, "generator": {"plugin": loaded.description["plugin"]},
        "system": {"fingerprint": system_fingerprint(loaded.description["system"].get("molecules", {}))},
        "notes": "This model has no card (it was packaged without one): nothing is recorded of its training."}
    click.echo(json.dumps(card, indent=1) if as_json else render_card(card))


@cli.command()
@click.option("--topology", required=True, type=click.Path(path_type=Path), help="AA topology with parameters (.top).")
@click.option("--mapping", required=True, multiple=True, type=click.Path(path_type=Path),
              help="VOTCA mapping XML or DeepBackmap .map (repeat for several molecule types).")
@click.option("--cg", "cg_path", required=True, type=click.Path(path_type=Path),
              help="CG structure or trajectory: the restraint targets, frame by frame.")
@click.option("--traj", required=True, type=click.Path(path_type=Path), help="AA structures to refine (.gro, .xtc, …).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Refined AA output (.xtc, .gro, .pdb, .trr).")
@click.option("--refiner", "refiner_name", default="openmm", show_default=True,
              help="Refiner plugin: openmm (the default: OpenMM on the CPU, fastest), langevin or mala (torch, "
                   "batched; mala exact), …")
@click.option("--frames", default=None, help="'start:stop:step' or '0,5,9'.")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Frames per call (the torch refiners batch them; vae_mc runs them as chains in lockstep: "
                   "one network call per plan step for all, docs/vae.md).")
@click.option("--seed", type=int, default=0, show_default=True)
@refine_options()
@nonbonded_options
@cluster_options
def refine(topology: Path, mapping: tuple[Path, ...], cg_path: Path, traj: Path, out: Path, refiner_name: str,
           frames: str | None, batch: int, seed: int, temperature, n_steps, restraint, constraints, timestep, friction,
           minimize_steps, extra, mdp, cutoff, coulomb, epsilon_rf, lj_shift, workers, scheduler, threads_per_worker,
           frames_per_task) -> None:
    """Sample the AA structure at temperature T while keeping every bead's mapped centre on the CG
    input (restrained Langevin / MALA); writes OUT, OUT's .log.csv (energy, CG deviation per frame)
    and a plot of it."""
    from backmap.refinement.restrained import refine_files
    from backmap.system.io import refuse_overwriting_inputs

    inputs = [topology, *mapping, cg_path, traj, mdp]
    for written in (out, out.with_name(out.stem + ".log.csv"), out.with_name(out.stem + ".log.png")):
        refuse_overwriting_inputs(written, inputs)
    refiner = _refiner(refiner_name, temperature, n_steps, restraint, constraints, timestep, friction,
                       minimize_steps, extra, seed)
    system = _restrained_system(topology, mapping, _settings(mdp, cutoff, coulomb, epsilon_rf, lj_shift))
    cluster = _cluster(workers, scheduler, threads_per_worker, frames_per_task)
    summary = refine_files(refiner, system, traj, cg_path, out, frames=frames, seed=seed, batch=batch,
                           cluster=cluster)
    click.echo(f"wrote {out}: {summary['frames']} frames, {summary['seconds per frame']} s/frame, CG RMSD "
               f"{summary['CG RMSD before (nm)']} → {summary['CG RMSD after (nm)']} nm; log {summary['log']}")


@cli.command(name="map")
@click.option("--topology", "topology", required=True, type=click.Path(path_type=Path),
              help="AA topology (.tpr, .top, .gro).")
@click.option("--traj", required=True, type=click.Path(path_type=Path), help="AA trajectory in any format MDAnalysis reads (.xtc, .trr, .gro, .dcd, LAMMPS dump, …).")
@click.option("--mapping", required=True, multiple=True, type=click.Path(path_type=Path),
              help="VOTCA mapping XML or DeepBackmap .map (repeat for several molecule types).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="CG output (.xtc, .gro, .pdb).")
@click.option("--frames", default=None, help="'start:stop:step' or '0,5,9'.")
def map_cmd(topology: Path, traj: Path, mapping: tuple[Path, ...], out: Path, frames: str | None) -> None:
    """Map an AA trajectory to CG (like VOTCA's csg_map); molecules are made whole first."""
    from backmap.system.pairs import count_frames, select_frames
    from backmap.system.projection import map_trajectory
    from backmap.engine.loaders import load_mapping
    from backmap.engine.loaders import load_topology
    from backmap.system.io import refuse_overwriting_inputs

    refuse_overwriting_inputs(out, [topology, traj, *mapping])
    t0 = time.perf_counter()
    topo = load_topology(topology)
    cg_top = load_mapping(list(mapping), topo).cg_topology(topo)
    idx = select_frames(frames, [], count_frames(traj), str(traj))
    n = map_trajectory(cg_top, traj, out, idx)
    click.echo(f"wrote {out}: {n} frames, {cg_top.n_beads} beads ({time.perf_counter() - t0:.1f} s)")


def _time_step_option(values: tuple[str, ...]) -> float | dict[str, float] | None:
    """``--dt 2`` (all trajectories) or ``--dt reference=1 --dt CG=10`` (``*`` = the unnamed ones)."""
    if not values:
        return None
    out: dict[str, float] = {}
    for v in values:
        label, _, number = v.rpartition("=")
        try:
            value = float(number)
        except ValueError:
            raise BackmapError(f"--dt: cannot parse {v!r}; give ps, or LABEL=ps") from None
        if not value > 0:
            raise BackmapError(f"--dt: {v!r}: the time step must be positive")
        out[label.strip() or "*"] = value
    return out["*"] if list(out) == ["*"] else out


@cli.command()
@click.option("--topology", required=True, type=click.Path(path_type=Path),
              help="AA topology (.top with parameters: energies need them).")
@click.option("--reference", required=True, type=click.Path(path_type=Path), help="Reference AA trajectory.")
@click.argument("candidates", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (metrics.json, report.md).")
@click.option("--label", "labels", multiple=True, help="Name of each candidate, in order (default: file names).")
@click.option("--frames", default=None, help="'start:stop:step' or '0,5,9' of every trajectory.")
@click.option("--skip-frames", default=None, help="Frames left out of every trajectory, e.g. 9,19,41.")
@click.option("--mapping", multiple=True, type=click.Path(path_type=Path), help="Mapping, for CG consistency.")
@click.option("--cg", type=click.Path(path_type=Path), default=None, help="The CG input the candidates came from.")
@click.option("--metrics", "metric_names", default=None, help="Comma-separated metric plugins (default: all).")
@click.option("--headline", default=None, help="Comma-separated observables of the headline mean JSD.")
@click.option("--workers", type=int, default=None, help="Processes (default: the available cores).")
@click.option("--scheduler", default=None,
              help="Run the batches on a running Dask scheduler (tcp://host:8786, a scheduler .json file) or a "
                   "dask-jobqueue cluster (slurm, pbs, …) instead of local processes.")
@click.option("--batch-size", type=int, default=6, show_default=True, help="Frames per batch.")
@click.option("--save-samples", is_flag=True, help="Also write every sample to samples.npz.")
@click.option("--model-card", type=click.Path(path_type=Path), default=None, metavar="MODEL",
              help="Record this evaluation on MODEL's card (a model folder or run directory that made the "
                   "candidates), replacing its earlier entry for the same reference file.")
@click.option("--dt", "dt_values", multiple=True, metavar="[LABEL=]PS",
              help="Time between consecutive frames of the files (ps) for the dynamics metrics, instead of the "
                   "frame times they store; LABEL=PS for one trajectory ('reference' or a candidate label). "
                   "With --frames a:b:s the frames used are s × dt apart.")
@nonbonded_options
def evaluate(topology: Path, reference: Path, candidates: tuple[Path, ...], out: Path, labels: tuple[str, ...],
             frames: str | None, skip_frames: str | None, mapping: tuple[Path, ...], cg: Path | None,
             metric_names: str | None, headline: str | None, workers: int | None, scheduler: str | None,
             batch_size: int, save_samples: bool, model_card: Path | None, dt_values: tuple[str, ...], mdp, cutoff,
             coulomb, epsilon_rf, lj_shift) -> None:
    """Compare CANDIDATES (backmapped AA trajectories) with a reference: per observable the
    Jensen–Shannon divergence and Wasserstein-1; writes metrics.json, report.md and figures/."""
    from backmap.metrics.evaluate import EvaluationSpec, run_evaluation
    from backmap.system.io import refuse_overwriting_inputs

    refuse_overwriting_inputs(out, [topology, reference, *candidates, *mapping, cg, mdp])
    if out.exists() and not out.is_dir():
        raise BackmapError("--out is an existing file; evaluate writes a folder (metrics.json, report.md)",
                           source=out)
    try:
        skip = [int(s) for s in skip_frames.split(",") if s.strip()] if skip_frames else []
    except ValueError:
        raise BackmapError(f"--skip-frames: cannot parse {skip_frames!r}; use e.g. 9,19,41") from None
    if workers is not None and workers < 1 or batch_size < 1:
        raise BackmapError("--workers and --batch-size must be at least 1")
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    spec = EvaluationSpec(
        topology=topology, reference=reference, candidates=list(candidates), out=out,
        labels=list(labels) or None, frames=frames, skip_frames=skip, mapping=list(mapping), cg=cg,
        settings=_settings(mdp, cutoff, coulomb, epsilon_rf, lj_shift), metrics=split(metric_names),
        headline=split(headline), workers=workers, batch_size=batch_size, save_samples=save_samples,
        scheduler=scheduler, dt=_time_step_option(dt_values))
    card_folder = _card_folder(model_card) if model_card is not None else None  # refused before the work
    result = run_evaluation(spec, console=console)
    head = result["summary"]["mean_jsd_headline"]
    table = Table("candidate", f"mean JSD ({len(head['observables'])} headline observables)", box=None)
    for label, value in head["candidates"].items():
        table.add_row(label, f"{value:.4f}")
    table.add_row("noise floor", f"{head['noise_floor']:.4f}")
    Console().print(table)
    click.echo(f"wrote {out / 'metrics.json'} and {out / 'report.md'} ({result['timing']['total_s']:.1f} s)")
    if card_folder is not None:
        from backmap.engine.model_card import evaluation_entry, record_evaluation

        command = (f"backmap evaluate --reference {reference.name} " + " ".join(Path(c).name for c in candidates)
                   + (f" --headline {headline}" if headline else ""))
        record_evaluation(card_folder, evaluation_entry(result, reference, command))
        click.echo(f"recorded on the model card {card_folder / 'card.json'}")


def _card_folder(model: Path) -> Path:
    """The folder of a model whose card may be written: a model folder or run directory, not an
    archive (read-only) nor a registered name (shipped with a package)."""
    from backmap.engine.models import model_directory

    if not Path(model).exists():
        raise BackmapError("--model-card takes a model folder or run directory (a registered model's card is "
                           "kept by its package: copy the model to record on its card)", source=model)
    if Path(model).suffix.lower() == ".bmz":
        raise BackmapError("--model-card takes a model folder, not an archive (unpack it with `backmap export-model "
                           "ARCHIVE --out FOLDER`)", source=model)
    directory = model_directory(model)
    if not os.access(directory, os.W_OK):
        raise BackmapError("--model-card: the model folder is not writable", source=model)
    return directory


@cli.command()
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="A trained model folder (or a run directory whose train step wrote one).")
@click.option("--reference", required=True, type=click.Path(path_type=Path),
              help="AA reference trajectory (the topology's atoms): mapped to CG it is the in-distribution set.")
@click.option("--cg", "cg_paths", multiple=True, type=click.Path(path_type=Path),
              help="CG trajectory of a CG model, in the mapping's bead order (any format MDAnalysis reads: "
                   ".xtc, .trr, LAMMPS dump, …); labels from the file names. Several: --cg A.xtc B.xtc C.xtc.")
@click.argument("more_cg", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output folder (metrics.json, report.md, figures/, backmapped/, atomistic/).")
@click.option("--label", "labels", multiple=True, help="Name of each CG set, in order (default: file names).")
@click.option("--topology", type=click.Path(path_type=Path), default=None, help="AA topology (default: the model's).")
@click.option("--mapping", multiple=True, type=click.Path(path_type=Path), help="Mapping (default: the model's).")
@click.option("--frames", default=None, help="Reference frames, 'start:stop:step' or '0,5,9'.")
@click.option("--skip-frames", default=None, help="Reference frames left out, e.g. 9,19,41 (training frames).")
@click.option("--cg-frames", default=None, help="Frames of every CG set, 'start:stop:step' or '0,5,9'.")
@click.option("--candidates", type=int, default=8, show_default=True, help="Candidates proposed per unit (K).")
@click.option("--gibbs", "gibbs_sweeps", type=int, default=2, show_default=True, help="Gibbs sweeps after the forward pass.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--refine", "refiner_name", default=None,
              help="Also refine every backmapped frame with this refiner (openmm, langevin, mala) under the CG "
                   "restraint; both the generator's and the refined structures are assessed.")
@click.option("--bootstrap", type=int, default=20, show_default=True,
              help="Random halves of the frames drawn for the spread of the force JSD.")
@click.option("--batch-size", type=int, default=6, show_default=True, help="Frames per evaluation batch.")
@refine_options(minimize=False)
@nonbonded_options
@cluster_options
def assess(model: Path, reference: Path, cg_paths: tuple[Path, ...], more_cg: tuple[Path, ...], out: Path,
           labels: tuple[str, ...], topology: Path | None, mapping: tuple[Path, ...], frames: str | None,
           skip_frames: str | None, cg_frames: str | None, candidates: int, gibbs_sweeps: int, seed: int,
           refiner_name: str | None, bootstrap: int, batch_size: int, temperature, n_steps, restraint, constraints,
           timestep, friction, extra, mdp, cutoff, coulomb, epsilon_rf, lj_shift, workers, scheduler,
           threads_per_worker, frames_per_task) -> None:
    """Rank CG models by backmapping their trajectories and measuring them with the AA force field
    (thesis ch. 6): AA forces summed per bead against the reference's (JSD, with its spread over
    random halves of the frames), RDFs and bonded distributions, CG RMSD, clashes, restraint energy
    per bead after refinement, and the CG-level distributions against the mapped reference."""
    from backmap.metrics.assess import AssessmentSpec, labels_from_paths, run_assessment
    from backmap.sampling.backmapper import BackmapSettings
    from backmap.system.io import refuse_overwriting_inputs

    paths = list(cg_paths) + list(more_cg)
    if not paths:
        raise BackmapError("assess: give the CG trajectories of the models to assess (--cg A.xtc B.xtc …)")
    for p in [reference, *paths]:
        if not Path(p).is_file():
            raise BackmapError("no such file", source=p)
    if labels:
        if len(labels) != len(paths):
            raise BackmapError(f"{len(labels)} labels for {len(paths)} CG trajectories")
        sets = dict(zip(labels, paths))
        if len(sets) != len(paths):
            raise BackmapError("--label: two CG sets have the same label")
    else:
        sets = labels_from_paths(paths)
    refuse_overwriting_inputs(out, [model, reference, *paths, topology, *mapping, mdp])
    try:
        skip = [int(s) for s in skip_frames.split(",") if s.strip()] if skip_frames else []
    except ValueError:
        raise BackmapError(f"--skip-frames: cannot parse {skip_frames!r}; use e.g. 9,19,41") from None
    if bootstrap < 0 or batch_size < 1:
        raise BackmapError("--bootstrap must be ≥ 0 and --batch-size ≥ 1")
    refiner = None
    if refiner_name:
        refiner = _refiner(refiner_name, temperature, n_steps, restraint, constraints, timestep, friction, None,
                           extra, seed)
    try:
        settings = BackmapSettings(candidates=candidates, gibbs_sweeps=gibbs_sweeps)
    except ValueError as exc:
        raise BackmapError(f"assess: {str(exc).splitlines()[-1].strip()}") from None
    cluster = _cluster(workers, scheduler, threads_per_worker, frames_per_task)
    spec = AssessmentSpec(model=model, reference=reference, cg=sets, out=out, topology=topology,
                          mapping=list(mapping), reference_frames=frames, skip_frames=skip, cg_frames=cg_frames,
                          backmap=settings, refiner=refiner, settings=_settings(mdp, cutoff, coulomb, epsilon_rf, lj_shift),
                          seed=seed, cluster=cluster, bootstrap=bootstrap, batch_size=batch_size,
                          workers=workers)
    result = run_assessment(spec, console=console)
    table = Table("rank", "CG set", "force JSD", "± (halves)", "CG RMSD (nm)", "CG-level JSD", box=None,
                  title="CG models by the JSD of AA forces summed per bead")
    for r in result["ranking"]:
        row = result["sets"][r["set"]]
        table.add_row(str(r["rank"]), r["set"], f"{r['force_jsd']:.4f}", f"{r['halves_sd']:.4f}",
                      f"{row.get('cg_rmsd') or float('nan'):.5f}", f"{row.get('cg_level_mean_jsd', float('nan')):.4f}")
    s = result["summary"]
    table.add_row("", "in-distribution", f"{s['in_distribution_force_jsd']:.4f}", "", "", "")
    Console().print(table)
    click.echo(f"wrote {out / 'metrics.json'} and {out / 'report.md'} ({result['timing']['total_s']:.0f} s)")


@cli.command()
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="A model trained on the target at the bottleneck (recipe key system.bottleneck: s), or a run "
                   "directory whose train step wrote one.")
@click.option("--input", "source", required=True, type=click.Path(path_type=Path),
              help="Structures of the top-down model (any format MDAnalysis reads) in the model topology's "
                   "particle order.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Morphed output (.xtc, .gro, .trr, .pdb).")
@click.option("--scheme", type=click.Choice(["A", "B"]), default="A", show_default=True,
              help="A: forward pass + Gibbs sweeps from the bottleneck; B: Gibbs sweeps only, from the original "
                   "structure.")
@click.option("--topology", type=click.Path(path_type=Path), default=None,
              help="The top-down model's .top, copied beside the output (default: the model's topology).")
@click.option("--frames", default=None, help="'start:stop:step' or '0,5,9' of --input.")
@click.option("--candidates", type=int, default=8, show_default=True, help="Candidates proposed per unit (K).")
@click.option("--gibbs", "gibbs_sweeps", type=int, default=2, show_default=True, help="Gibbs sweeps.")
@click.option("--flat-bottom", "target", type=click.Path(path_type=Path), default=None,
              help="Target trajectory (model topology) whose bond, angle and closest non-bonded distances give "
                   "flat-bottom limits that score the candidates (thesis eqs. 7.2-7.3).")
@click.option("--target-frames", default=None, help="'start:stop:step' of --flat-bottom's frames.")
@click.option("--quantile", type=float, default=0.0, show_default=True,
              help="Flat-bottom limits at this quantile of the target's values (0: its extremes, as eqs. 7.2-7.3).")
@click.option("--ibi", "ibi_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="IBI tables (JSON, as a recipe's morph step writes them) added to the selection energy.")
@click.option("--ibi-rounds", type=int, default=0, show_default=True,
              help="Fit IBI tables first: this many rounds of morphing --ibi-frames and correcting the tables "
                   "toward --flat-bottom's distributions (written to OUT_ibi.json/.png).")
@click.option("--ibi-frames", default=None, help="'start:stop:step' of --input morphed in each IBI round "
                                                 "(default: every 4th of the first half).")
@click.option("--temperature", type=float, default=None, help="K: the IBI tables' kT (with --ibi-rounds).")
@click.option("--cg-restraint", type=float, default=0.0, show_default=True,
              help="Restrain each candidate's bottleneck bead to the input's (kJ/mol/nm², 0 = off): how far the "
                   "morph may move the chains.")
@click.option("--generator-param", "generator_params", multiple=True, metavar="KEY=VALUE",
              help="A sampling parameter of the trained generator for this run (repeatable), e.g. "
                   "recentre_by=rotation+shift (equivariant: the bottleneck kept exactly).")
@click.option("--seed", type=int, default=0, show_default=True)
@cluster_options
def morph(model: Path, source: Path, out: Path, scheme: str, topology: Path | None, frames: str | None,
          candidates: int, gibbs_sweeps: int, target: Path | None, target_frames: str | None, quantile: float,
          ibi_file: Path | None, ibi_rounds: int, ibi_frames: str | None, temperature: float | None,
          cg_restraint: float, generator_params: tuple[str, ...], seed: int, workers, scheduler, threads_per_worker, frames_per_task) -> None:
    """Morph structures of a top-down CG model (thesis ch. 7): map them through the resolution
    bottleneck of a model trained only on the target and let its generator reinsert the target's
    local statistics. Writes OUT (the top-down model's particles, names and box), OUT.gro, a copy of
    its .top, the bottleneck frames (OUT_cg.trr) and the provenance (OUT.json). With --ibi-rounds,
    IBI tables are fitted first (docs/morph.md)."""
    from backmap.engine.apply import check_output
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.engine.models import load_model
    from backmap.engine.morph import fit_ibi, morph_to_files, write_tables
    from backmap.sampling.ibi import IBITables
    from backmap.sampling.backmapper import BackmapSettings
    from backmap.sampling.flat_bottom import FlatBottomLimits
    from backmap.system.io import read_frames
    from backmap.system.pairs import count_frames, select_frames

    loaded = load_model(model)
    if loaded.topology is None or not loaded.mapping:
        raise BackmapError("the model does not record its topology and bottleneck mapping", source=model)
    check_output(out, [source, topology, target, loaded.topology, *loaded.mapping])
    loaded.refuse_output_inside(out)
    topo = load_topology(loaded.topology)
    cg_top = load_mapping(loaded.mapping, topo).cg_topology(topo)
    if topology is not None and load_topology(topology).n_atoms != topo.n_atoms:
        raise BackmapError(f"--topology has {load_topology(topology).n_atoms} particles, the model's system "
                           f"{topo.n_atoms}", source=topology)
    idx = select_frames(frames, [], count_frames(source), str(source))
    if ibi_rounds and (target is None or temperature is None or ibi_file is not None):
        raise BackmapError("--ibi-rounds fits tables to --flat-bottom's target at --temperature (both needed; "
                           "not with --ibi)")
    limits, tables = None, None
    if target is not None:
        tidx = select_frames(target_frames, [], count_frames(target), str(target))

        def target_frames_():
            return ((f.positions, f.dimensions) for f in read_frames(target, topo.n_atoms, tidx, expect="model topology"))

        limits = FlatBottomLimits.from_frames(topo, target_frames_(), source=str(target), quantile=quantile)
    if ibi_file is not None:
        from pydantic import ValidationError

        try:
            tables = IBITables.model_validate_json(ibi_file.read_text())
        except ValidationError as exc:
            raise BackmapError(f"not IBI tables: {str(exc).splitlines()[0]}", source=ibi_file) from None
    try:
        settings = BackmapSettings(candidates=candidates, gibbs_sweeps=gibbs_sweeps, energy=False, flat_bottom=limits,
                                   ibi=tables, cg_restraint=cg_restraint,
                                   generator_params=_key_values(generator_params, "--generator-param"))
    except ValueError as exc:
        raise BackmapError(f"morph: {str(exc).splitlines()[-1].strip()}") from None
    loaded.generator.for_inference(settings.generator_params, where="--generator-param")  # refused here, early
    if ibi_rounds:
        tables = fit_ibi(loaded, cg_top, source, IBITables(temperature=temperature, iterations=ibi_rounds,
                                                           fit_frames=ibi_frames),
                         target_frames_(), scheme, settings, seed=seed, where="backmap morph")
        write_tables(tables, Path(f"{out.with_suffix('')}_ibi.json"))
        settings = settings.model_copy(update={"ibi": tables})
    summary = morph_to_files(loaded, cg_top, source, out, scheme, idx, settings, seed=seed, output_topology=topology,
                             cluster=_cluster(workers, scheduler, threads_per_worker, frames_per_task))
    click.echo(f"wrote {out}: {summary['frames']} frames of {summary['atoms']} particles morphed by scheme {scheme} "
               f"({summary['seconds per frame']:.2f} s/frame)")


def _key_values(items: tuple[str, ...], option: str) -> dict:
    """``KEY=VALUE`` options as a dict, values read as YAML scalars (numbers, booleans, strings)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BackmapError(f"{option} {item!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main() -> None:
    cli(prog_name="backmap")


if __name__ == "__main__":
    sys.exit(main())
