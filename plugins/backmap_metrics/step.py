"""The ``evaluate`` recipe step: candidates against a reference trajectory, as ``backmap evaluate``."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, field_validator

from backmap.api import BackmapError, Step
from backmap.api.recipes import InputPath, StepInput, resolve_step_input
from backmap.api.metrics import verdict
from backmap.api.usecases import EvaluationSpec, run_evaluation, step_settings


class MetricChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plugin: str
    params: dict[str, Any] = Field(default_factory=dict)


class EvaluateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reference: StepInput | None = Field(None, description="reference AA trajectory; default: the held-out "
                                                          "frames the 'backmap' step wrote beside its output")
    candidates: list[StepInput] | dict[str, StepInput] | None = Field(
        None, description="candidate AA trajectories (a mapping label → file to name them); default: the "
                          "'backmap' step's output (its generator-alone output and the 'refine' step's, if any; "
                          "and its CG frames)")
    frames: str | None = Field(None, description="'start:stop:step' or '0,5,9' (of every trajectory)")
    skip_frames: list[int] = Field(default_factory=list, description="frames left out of every trajectory")
    cg: StepInput | None = Field(None, description="CG input the candidates were made from (CG consistency)")
    mapping: InputPath | list[InputPath] | None = Field(None, description="default: system.mapping")
    mdp: InputPath | None = Field(None, description="GROMACS .mdp for the non-bonded settings")
    nonbonded: dict[str, Any] = Field(default_factory=dict,
                                      description="NonbondedSettings fields on top of mdp (rvdw, vdw_modifier, …)")
    metrics: list[str | MetricChoice] | None = Field(None, description="default: all installed metrics")
    headline: list[str] | None = Field(None, description="observables of the headline mean JSD")
    out: str = Field("evaluate", description="output folder in the work directory")
    workers: int | None = Field(None, ge=1, description="processes (default: the available cores)")
    batch_size: int = Field(6, ge=1, description="frames per batch")
    dt: PositiveFloat | dict[str, PositiveFloat] | None = Field(
        None, description="ps between consecutive frames of the files, for the dynamics metrics (default: the frame "
                          "times they store); one value, or per label ('reference', candidate labels, '*' = others)")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value):
        """Metric names and parameters are checked when the recipe is loaded (``backmap check``)."""
        from backmap.api.recipes import format_errors
        from backmap.api.recipes import default_registry

        for item in value or []:
            name, params = (item, {}) if isinstance(item, str) else (item.plugin, item.params)
            try:
                info = default_registry().get("metric", name)
            except BackmapError as exc:  # unknown name, with a suggestion
                raise ValueError(str(exc)) from None
            try:
                params = info.cls.Params.model_validate(params)
            except ValidationError as exc:
                raise ValueError(format_errors(exc, "metric", (name, "params"), info.cls.Params)) from None
            if not isinstance(item, str):
                item.params = params.model_dump()
        return value


class EvaluateStep(Step):
    name = "evaluate"
    summary = "compare candidate trajectories with a reference: JSD/W1 per observable, report"
    Params = EvaluateParams

    def run(self, ctx) -> dict:
        p = self.params
        if p.reference is None or p.candidates is None:  # what the backmap (and refine) steps of this run wrote
            key = "steps.evaluate"
            if ctx.outputs.find("backmap.unrefined") is not None:  # the backmap step refined
                made = {"generator": ctx.outputs.get("backmap.unrefined", key),
                        "generator + refine": ctx.outputs.get("backmap.aa", key)}
            else:
                made = {"backmap": ctx.outputs.get("backmap.aa", key)}
            if ctx.outputs.find("refine.aa") is not None:
                made["refine step"] = ctx.outputs.get("refine.aa", key)
            p = p.model_copy(update={"reference": p.reference or ctx.outputs.get("backmap.reference", f"{key}.reference"),
                                     "candidates": p.candidates or made,
                                     "cg": p.cg or ctx.outputs.get("backmap.cg", key)})
        if isinstance(p.candidates, dict):
            labels, candidates = list(p.candidates), list(p.candidates.values())
        else:
            labels, candidates = None, list(p.candidates)
        where = f"{ctx.recipe.path.name if ctx.recipe.path else 'recipe'}: steps.evaluate"
        candidates = [resolve_step_input(c, ctx.workdir, where) for c in candidates]
        p = p.model_copy(update={"reference": resolve_step_input(p.reference, ctx.workdir, where),
                                 "cg": resolve_step_input(p.cg, ctx.workdir, where)})
        mapping = p.mapping if p.mapping is not None else (ctx.mapping_files if p.cg else [])
        mapping = mapping if isinstance(mapping, list) else [mapping]
        settings = step_settings(p.mdp, p.nonbonded, "steps.evaluate.nonbonded",
                                 ctx.recipe.path.name if ctx.recipe.path else None)
        metrics = None if p.metrics is None else [
            m if isinstance(m, str) else (m.plugin, m.params) for m in p.metrics]
        spec = EvaluationSpec(
            topology=ctx.recipe.system.topology, reference=p.reference, candidates=candidates,
            out=ctx.path(p.out, "metrics.json").parent, labels=labels, frames=p.frames,
            skip_frames=p.skip_frames, mapping=mapping, cg=p.cg, settings=settings, metrics=metrics,
            headline=p.headline, workers=p.workers or ctx.recipe.cluster.workers, batch_size=p.batch_size,
            title=ctx.recipe.name, scheduler=ctx.recipe.cluster.scheduler, dt=p.dt)
        result = run_evaluation(spec, ctx.registry, ctx.console)
        model = ctx.outputs.find("train.model") if self.params.candidates is None else None
        if model is not None:  # this run's model made the candidates: its card says how well
            from backmap.api.recipes import evaluation_entry, record_evaluation

            command = f"backmap run {ctx.recipe.path.name if ctx.recipe.path else 'recipe'}"
            record_evaluation(model, evaluation_entry(result, p.reference, command))
        head = result["summary"]["mean_jsd_headline"]
        summary: dict[str, Any] = {"report": f"{p.out}/report.md", "frames": result["frames"]["reference"],
                                   "seconds (sampling)": result["timing"]["sampling_s"]}
        for label, v in head["candidates"].items():
            summary[f"mean JSD {label}"] = round(v, 4)
        summary["mean JSD noise floor"] = round(head["noise_floor"], 4)
        summary["verdict"] = verdict(head)
        if ctx.console is not None:  # a recipe run says it last
            ctx.console.print(summary["verdict"])
        return summary
