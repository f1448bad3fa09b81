"""The ``refine`` step: restrained Boltzmann refinement of the backmapped structures."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from backmap import BackmapError, Step
from backmap.forcefield import NonbondedSettings
from backmap.engine.recipe import InputPath, StepInput, resolve_step_input
from backmap.refinement.restrained import RestrainedSystem, refine_files


class RefineStepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refiner: int | str = Field(0, description="which of the recipe's 'refiners' (index or plugin name)")
    aa: StepInput | None = Field(None, description="AA trajectory to refine (``workdir:PATH``: written by an "
                                                   "earlier step); default: the backmap step's backmap/aa.xtc")
    cg: StepInput | None = Field(None, description="its CG input, frame by frame; default: backmap/cg.xtc")
    frames: str | None = Field(None, description="'start:stop:step' or '0,5,9'")
    mdp: InputPath | None = Field(None, description="GROMACS .mdp for cut-offs and electrostatics")
    batch: int = Field(1, ge=1, description="frames per refiner call (the torch refiners batch them)")
    out: str = Field("refine/aa.xtc", description="refined trajectory in the work directory")


class RefineStep(Step):
    name = "refine"
    summary = "restrained Langevin/MC refinement of backmapped structures at temperature T"
    Params = RefineStepParams

    def run(self, ctx) -> dict:
        p = self.params
        refs = ctx.recipe.refiners
        where = ctx.recipe.path.name if ctx.recipe.path else None
        if not refs:
            raise BackmapError("steps.refine: the recipe has no 'refiners' section", source=where)
        if isinstance(p.refiner, int):
            if not 0 <= p.refiner < len(refs):
                raise BackmapError(f"steps.refine.refiner: index {p.refiner} but {len(refs)} refiners", source=where)
            ref = refs[p.refiner]
        else:
            named = [r for r in refs if r.plugin == p.refiner]
            if not named:
                raise BackmapError(f"steps.refine.refiner: no refiner {p.refiner!r} in 'refiners' "
                                   f"({', '.join(r.plugin for r in refs)})", source=where)
            ref = named[0]
        refiner = ctx.plugin("refiner", ref, "refiners")
        aa = resolve_step_input(p.aa, ctx.workdir, "steps.refine.aa") or ctx.workdir / "backmap" / "aa.xtc"
        cg = resolve_step_input(p.cg, ctx.workdir, "steps.refine.cg") or ctx.workdir / "backmap" / "cg.xtc"
        for path, key in ((aa, "aa"), (cg, "cg")):
            if not path.is_file():
                raise BackmapError(f"steps.refine.{key}: {path} does not exist (run the 'backmap' step first "
                                   "or give the file)", source=where)
        settings = NonbondedSettings.from_mdp(p.mdp) if p.mdp else NonbondedSettings()
        system = RestrainedSystem(ctx.cg_topology, Path(ctx.recipe.system.topology), settings)
        return refine_files(refiner, system, aa, cg, ctx.path(p.out), frames=p.frames, seed=ctx.seed, batch=p.batch)
