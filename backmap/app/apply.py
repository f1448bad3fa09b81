"""The apply use case: CG structures or a trajectory backmapped with a trained model into AA files
(``backmap apply``); the files are those of :func:`backmap.app.backmapping.backmap_to_files`."""
from __future__ import annotations

from pathlib import Path

from backmap.app.backmapping import Backmapped, backmap_to_files
from backmap.app.options import ClusterFields, DeviceField, FrameSelection, RefinerOptions, Request, Seeded
from backmap.engine.checks import check_bead_names, placement_order_changes
from backmap.engine.loaders import load_mapping, load_topology
from backmap.engine.models import load_model
from backmap.errors import BackmapError
from backmap.fields import option
from backmap.forcefield.settings import NonbondedSettings
from backmap.progress import say
from backmap.sampling.backmapper import BackmapSettings, read_cg
from backmap.system.claim import check_outputs
from backmap.system.pairs import count_frames, select_frames

#: the sampling settings ``backmap apply`` takes as options (the rest are the recipe's)
APPLY_SAMPLING = ("selector", "selector_params", "candidates", "sweep_candidates", "gibbs_sweeps", "minimize_steps", "project_cg",
                  "cg_restraint", "colouring", "separation", "electrostatics", "epsilon_rf", "polish_steps", "polish_sweeps", "stereo_reference", "tacticity",
                  "invert_stereo", "regrow",
                  "regrow_candidates", "regrow_trials", "repair_clashes", "clash_distance",
                  "clash_energy", "clash_kt", "orient_units", "dock", "cutoff",
                  "traversal", "frame_by_frame", "generator_params", "moves")


class ApplyRequest(FrameSelection, Seeded, RefinerOptions, ClusterFields, DeviceField, Request):
    """Backmap ``cg`` (or the frames of ``traj``) with ``model`` into ``out``."""

    model: Path = option(description="A model: a registered name (backmap models list), a model folder or archive "
                                     "(.bmz), or a run directory whose train step wrote one.")
    cg: Path = option(description="CG structure or trajectory in the mapping's bead order (any format MDAnalysis "
                                  "reads: .gro, .xtc, .trr, .pdb, .dcd, LAMMPS dump, …).")
    traj: Path | None = option(None, "CG trajectory whose frames are backmapped instead of --cg's (--cg then only "
                                     "names the structure the trajectory belongs to, as in GROMACS; its bead names "
                                     "are checked).")
    out: Path = option(description="AA output (.gro, .pdb, .xtc, .trr).")
    topology: Path | None = option(None, "AA topology (default: the model's).")
    mapping: list[Path] = option(default_factory=list, description="Mapping (default: the model's).")
    sampling: BackmapSettings = option(default_factory=BackmapSettings, flatten=APPLY_SAMPLING,
                                       description="How the frames are sampled.")
    refiner: str | None = option(None, "Refine every frame with this refiner (openmm, langevin, mala) under the CG "
                                       "restraint.", name="--refine")
    mdp: Path | None = option(None, "Cut-offs/electrostatics for --refine (default: the .mdp the model carries, "
                                    "if any).")


def apply_model(request: ApplyRequest) -> Backmapped:
    """Backmap; the model's recommended sampling settings fill every setting the request left unset."""
    r = request
    cluster = r.cluster()
    loaded = load_model(r.model)
    top_path = r.topology or loaded.topology
    maps = list(r.mapping) or loaded.mapping
    if top_path is None or not maps:
        raise BackmapError("the model does not record its topology and mapping: give --topology and --mapping",
                           source=r.model)
    source = r.traj or r.cg
    reads = [*r.read_paths(), ("the model's topology", top_path), *(("the model's mapping", m) for m in maps)]
    # --out alone, early (before the model's system is loaded); every file written, when writing
    check_outputs([("--out", r.out)], [("the model package", loaded.directory), *reads], "apply")
    topo = load_topology(top_path)
    given = load_mapping(maps, topo)
    if r.mapping and loaded.mapping and all(Path(p).is_file() for p in loaded.mapping):
        _warn_placement_order(given, loaded.mapping, topo)
    cg_top = given.cg_topology(topo)
    check_bead_names(r.cg, cg_top)
    idx = select_frames(r.frames, [], count_frames(source), str(source))
    chosen = r.sampling.model_copy(update={"energy": Path(top_path).suffix == ".top"})
    settings, taken = chosen.recommended(loaded.sampling, r.sampling.model_fields_set,
                                         loaded.directory / "model.json", cg_top)
    if taken:
        say("apply: the model's sampling settings: " + ", ".join(f"{k}={v}" for k, v in taken.items())
            + " (the options of the same names change them)")
    if r.temperature is not None:
        settings = _at_temperature(loaded, settings, r.temperature)
    settings, resolved = settings.at_temperature(r.temperature or loaded.trained_at, r.sampling.model_fields_set)
    if resolved:
        say(f"apply: clash_kt at {r.temperature or loaded.trained_at:g} K: clash_energy={resolved['clash_energy']:g} kJ/mol")
    loaded.generator.for_inference(settings.generator_params, where="--generator-param")  # refused here, early
    refiner = system = None
    if r.refiner:
        from backmap.refinement.restrained import RestrainedSystem

        refiner = r.make_refiner(r.refiner, r.seed)
        mdp = r.mdp or loaded.mdp
        system = RestrainedSystem(cg_top, Path(top_path), NonbondedSettings.from_mdp(mdp) if mdp else NonbondedSettings())
    return backmap_to_files(loaded, cg_top, Path(top_path), list(read_cg(cg_top, source, idx)), r.out, settings,
                            seed=r.seed, refiner=refiner, refine_system=system, cluster=cluster,
                            provenance={"cg": str(source), "frames": r.frames}, where="apply", reads=reads,
                            device=r.device)


def _at_temperature(loaded, settings: BackmapSettings, temperature: float) -> BackmapSettings:
    """``settings`` with the generator parameters for a system at ``temperature`` that the user did
    not give (``Generator.at_temperature``)."""
    trained_at = loaded.trained_at
    extra = {k: v for k, v in loaded.generator.at_temperature(temperature, trained_at).items()
             if k not in settings.generator_params}
    if not extra:
        return settings
    trained = f" (the model was trained at {trained_at:g} K)" if trained_at else ""
    say(f"apply: at {temperature:g} K{trained}: " + ", ".join(f"{k}={v}" for k, v in extra.items()))
    return settings.model_copy(update={"generator_params": {**settings.generator_params, **extra}})


def _warn_placement_order(given, model_mapping: list[Path], topo) -> None:
    try:
        changed = placement_order_changes(given, load_mapping(model_mapping, topo))
    except BackmapError:  # the model's mapping does not fit this system: refused later, with its reason
        changed = []
    if changed:
        say(f"warning: apply: --mapping places the beads of {', '.join(changed)} in another order than the model "
            "was trained with; it will see environments it never saw (give the model's mapping, or retrain)")
