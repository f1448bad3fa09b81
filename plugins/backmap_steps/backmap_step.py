"""The ``backmap`` step: CG frames + the trained model → AA trajectory, structure and topology
(optionally refined), through the same path as ``backmap apply`` (:mod:`backmap.app.backmapping`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from backmap.api import BackmapError, Step
from backmap.api.forcefield import NonbondedSettings
from backmap.api.io import Frame, write_frames
from backmap.api.recipes import InputPath, StepInput, load_model, resolve_step_input
from backmap.api.refinement import RestrainedSystem
from backmap.api.sampling import BackmapSettings, read_cg
from backmap.api.system import count_frames, select_frames
from backmap.api.usecases import backmap_to_files


class BackmapParams(BackmapSettings):
    cg: InputPath | None = Field(None, description="CG structure/trajectory; default: the test frames of 'prepare'")
    frames: str | None = Field(None, description="'start:stop:step' or '0,5,9' of the CG input")
    model: StepInput | None = Field(None, description="model folder; default: the one the 'train' step wrote")
    out: str = Field("backmap/aa.xtc", description="AA trajectory in the work directory (.xtc, .gro, .pdb, .trr)")
    structure: bool = Field(True, description="also write the first frame as a .gro beside the trajectory")
    refiner: int | str | None = Field(None, description="refine every frame with this of the recipe's 'refiners' "
                                                        "(index or plugin name); the generator's output is kept")
    mdp: InputPath | None = Field(None, description="GROMACS .mdp for the refiner's cut-offs, electrostatics and "
                                                    "(unless the refiner sets them) bond constraints")
    stereo_reference: InputPath | None = Field(None, description="AA structure of the system (e.g. a training "
                                                                 "snapshot) whose stereocentres the sampler keeps")


class BackmapStep(Step):
    name = "backmap"
    summary = "backmap CG frames with the trained model (forward pass + Gibbs sweeps, optional refinement)"
    Params = BackmapParams

    def run(self, ctx) -> dict:
        p = self.params
        model_dir = resolve_step_input(p.model, ctx.workdir, "steps.backmap.model") if p.model else \
            ctx.outputs.get("train.model", "steps.backmap.model")
        model = load_model(model_dir, ctx.registry)
        cg_top = ctx.cg_topology
        reference = None
        if p.cg is not None:
            idx = select_frames(p.frames, [], count_frames(p.cg), ctx.where("steps.backmap.frames"))
            frames = list(read_cg(cg_top, p.cg, idx))
        else:
            test = ctx.pairs().test()
            if len(test) == 0:
                raise BackmapError("steps.backmap: no 'cg' given and the prepared pairs have no test frames",
                                   source=ctx.where("steps.backmap.cg"))
            times = test.times if test.times is not None else np.zeros(len(test))  # kept: dynamics need them
            frames = [Frame(test.cg[k].astype(float), test.dimensions[k], float(times[k]), int(test.frames[k]))
                      for k in range(len(test))]
            reference = [Frame(test.aa[k].astype(float), test.dimensions[k], float(times[k]), int(test.frames[k]))
                         for k in range(len(test))]
        refiner = system = None
        if p.refiner is not None:
            refiner = ctx.refiner(p.refiner, "steps.backmap.refiner")
            settings = NonbondedSettings.from_mdp(p.mdp) if p.mdp else NonbondedSettings()
            system = RestrainedSystem(cg_top, Path(ctx.recipe.system.topology), settings)
        settings, taken = BackmapSettings(**{k: getattr(p, k) for k in BackmapSettings.model_fields}).recommended(
            model.sampling, p.model_fields_set, Path(model_dir) / "model.json", cg_top)
        if taken:
            ctx.console.print("backmap: the model's sampling settings: "
                              + ", ".join(f"{k}={v}" for k, v in taken.items()))
        settings, resolved = settings.at_temperature(model.trained_at, p.model_fields_set)
        if resolved:
            ctx.console.print(f"backmap: clash_kt at the model's {model.trained_at:g} K: "
                              f"clash_energy={resolved['clash_energy']:g} kJ/mol")
        result = backmap_to_files(model, cg_top, ctx.recipe.system.topology, frames, ctx.path(p.out), settings,
                                   seed=ctx.seed, registry=ctx.registry, refiner=refiner, refine_system=system,
                                   structure=p.structure, provenance={"recipe": str(ctx.recipe.path)},
                                   cluster=ctx.recipe.cluster, reads=ctx.read_files,
                                   where=ctx.where("steps.backmap"), device=ctx.device)
        summary, files = result.report(), result.files
        declared = {k: Path(v) for k, v in files.as_dict().items()}
        declared["model"] = Path(model_dir)  # the refine step offers it to refiners that move with a model (vae_mc)
        if reference is not None:
            declared["reference"] = files.aa.with_name(files.aa.stem + "_reference.xtc")
            write_frames(declared["reference"], reference, ctx.topology.atom_names, ctx.topology.resnames,
                         ctx.topology.residue_numbers())
        ctx.outputs.declare("backmap", **declared)
        # and the hands the backmapping kept (vae_mc's target keeps them); None forgets an earlier run's
        ctx.outputs.declare("backmap", stereo_reference=p.stereo_reference)
        summary.update({f"output {k}": str(v) for k, v in declared.items()})
        return summary
