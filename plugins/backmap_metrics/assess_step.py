"""The ``assess`` recipe step: rank CG models at atomistic resolution, as ``backmap assess``."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backmap.api import Step
from backmap.api.recipes import InputPath, StepInput, resolve_step_input
from backmap.api.sampling import BackmapSettings
from backmap.api.usecases import AssessmentSpec, labels_from_paths, run_assessment, step_settings


class AssessParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: StepInput | None = Field(None, description="model folder; default: the one the 'train' step wrote")
    reference: InputPath = Field(description="AA reference trajectory (mapped to CG: the in-distribution set)")
    cg: list[InputPath] | dict[str, InputPath] = Field(
        description="CG trajectories of the CG models (a mapping label → file to name them; default labels: "
                    "the file names)")
    frames: str | None = Field(None, description="reference frames, 'start:stop:step' or '0,5,9'")
    skip_frames: list[int] = Field(default_factory=list, description="reference frames left out (training frames)")
    cg_frames: str | None = Field(None, description="frames of every CG set")
    candidates: int = Field(8, ge=1, description="candidates proposed per unit (K)")
    gibbs_sweeps: int = Field(2, ge=0, description="Gibbs sweeps after the forward pass")
    refiner: int | str | None = Field(None, description="also refine with this of the recipe's 'refiners' "
                                                        "(index or plugin name)")
    mdp: InputPath | None = Field(None, description="GROMACS .mdp for the non-bonded settings (forces, refiner)")
    nonbonded: dict[str, Any] = Field(default_factory=dict,
                                      description="NonbondedSettings fields on top of mdp (rvdw, vdw_modifier, …)")
    bootstrap: int = Field(20, ge=0, description="random halves of the frames for the spread of the force JSD")
    batch_size: int = Field(6, ge=1, description="frames per evaluation batch")
    out: str = Field("assess", description="output folder in the work directory")


class AssessStep(Step):
    name = "assess"
    summary = "rank CG models: backmap their trajectories, AA forces per bead (JSD), RDFs, CG RMSD, report"
    Params = AssessParams

    def run(self, ctx) -> dict:
        p = self.params
        model = resolve_step_input(p.model, ctx.workdir, "steps.assess.model") if p.model else \
            ctx.outputs.get("train.model", "steps.assess.model")
        sets = dict(p.cg) if isinstance(p.cg, dict) else labels_from_paths(list(p.cg))
        settings = step_settings(p.mdp, p.nonbonded, "steps.assess.nonbonded",
                                 ctx.recipe.path.name if ctx.recipe.path else None)
        refiner = None if p.refiner is None else ctx.refiner(p.refiner, "steps.assess.refiner")
        spec = AssessmentSpec(
            model=model, reference=p.reference, cg=sets, out=ctx.path(p.out, "metrics.json").parent,
            topology=ctx.recipe.system.topology, mapping=ctx.mapping_files, reference_frames=p.frames,
            skip_frames=p.skip_frames, cg_frames=p.cg_frames,
            backmap=BackmapSettings(candidates=p.candidates, gibbs_sweeps=p.gibbs_sweeps), refiner=refiner,
            settings=settings, seed=ctx.seed, cluster=ctx.recipe.cluster, bootstrap=p.bootstrap,
            workers=ctx.recipe.cluster.workers, batch_size=p.batch_size, title=ctx.recipe.name)
        result = run_assessment(spec, ctx.registry, ctx.console)
        s = result["summary"]
        summary: dict[str, Any] = {"report": f"{p.out}/report.md", "ranking": " < ".join(s["ranking"]),
                                   "force JSD in-distribution": round(s["in_distribution_force_jsd"], 4)}
        for r in result["ranking"]:
            summary[f"force JSD {r['set']}"] = f"{r['force_jsd']:.4f} ± {r['halves_sd']:.4f}"
        return summary
