"""The ``refine`` step: restrained Boltzmann refinement of the backmapped structures."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from backmap.api import BackmapError, Step
from backmap.api.forcefield import NonbondedSettings
from backmap.api.recipes import InputPath, StepInput, resolve_step_input
from backmap.api.refinement import RefineInputs, RestrainedSystem, offer_refine_inputs
from backmap.api.usecases import refine_files


class RefineStepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refiner: int | str = Field(0, description="which of the recipe's 'refiners' (index or plugin name)")
    aa: StepInput | None = Field(None, description="AA trajectory to refine (``workdir:PATH``: written by an "
                                                   "earlier step); default: the backmap step's output")
    cg: StepInput | None = Field(None, description="its CG input, frame by frame; default: the backmap step's CG frames")
    frames: str | None = Field(None, description="'start:stop:step' or '0,5,9'")
    mdp: InputPath | None = Field(None, description="GROMACS .mdp for cut-offs, electrostatics and (unless the "
                                                    "refiner sets them) bond constraints")
    batch: int = Field(1, ge=1, description="frames per refiner call (the torch refiners batch them; vae_mc runs "
                                             "them as chains in lockstep: one network call per plan step for all, "
                                             "docs/vae.md)")
    out: str = Field("refine/aa.xtc", description="refined trajectory in the work directory")


class RefineStep(Step):
    name = "refine"
    summary = "restrained Langevin/MC refinement of backmapped structures at temperature T"
    Params = RefineStepParams

    def run(self, ctx) -> dict:
        p = self.params
        refiner = ctx.refiner(p.refiner, "steps.refine.refiner")
        # the model whose output is refined (steps.backmap.model), else the one trained here
        offer_refine_inputs(refiner, RefineInputs(ctx.outputs.find("backmap.model") or ctx.outputs.find("train.model"),
                                                  ctx.outputs.find("backmap.stereo_reference")))
        aa = resolve_step_input(p.aa, ctx.workdir, "steps.refine.aa") or ctx.outputs.get("backmap.aa", "steps.refine.aa")
        cg = resolve_step_input(p.cg, ctx.workdir, "steps.refine.cg") or ctx.outputs.get("backmap.cg", "steps.refine.cg")
        for path, key in ((aa, "aa"), (cg, "cg")):
            if not path.is_file():
                raise BackmapError(f"steps.refine.{key}: {path} does not exist (run the 'backmap' step first "
                                   "or give the file)", source=ctx.where(f"steps.refine.{key}"))
        settings = NonbondedSettings.from_mdp(p.mdp) if p.mdp else NonbondedSettings()
        system = RestrainedSystem(ctx.cg_topology, Path(ctx.recipe.system.topology), settings)
        out = ctx.path(p.out)
        refined = refine_files(refiner, system, aa, cg, out, frames=p.frames, seed=ctx.seed, batch=p.batch,
                               cluster=ctx.recipe.cluster, reads=ctx.read_files, device=ctx.device)
        ctx.outputs.declare("refine", aa=out)
        return refined.report()
