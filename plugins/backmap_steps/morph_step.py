"""The ``morph`` step (thesis ch. 7): structures of a top-down model, mapped through the bottleneck
of the trained model (``system.bottleneck``), get the target's local detail back — scheme A (forward
pass + Gibbs) or B (Gibbs only from the original structure); :mod:`backmap.app.morph`."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from backmap.api import Step
from backmap.api.recipes import InputPath, StepInput, load_model, resolve_step_input
from backmap.api.sampling import BackmapSettings, FlatBottomLimits
from backmap.api.system import count_frames, select_frames
from backmap.api.usecases import fit_ibi, morph_to_files, write_tables


class MorphParams(BackmapSettings):
    input: InputPath = Field(description="structures of the top-down model (trajectory) in the system topology's "
                                         "particle order")
    frames: str | None = Field(None, description="'start:stop:step' or '0,5,9' of the input")
    scheme: Literal["A", "B"] = Field("A", description="A: forward pass + Gibbs from the bottleneck; "
                                                       "B: Gibbs sweeps only, from the original structure")
    energy: bool = Field(False, description="score candidates with the system's force field — off by default: "
                                            "that is the top-down model's, whose statistics morphing replaces")
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$",
                              description="names the outputs (output:morph_<label>.aa) and the default file "
                                          "morph/<label>.xtc; default: the scheme")
    model: StepInput | None = Field(None, description="model folder; default: the one the 'train' step wrote")
    out: str | None = Field(None, description="output in the work directory (.xtc, .gro, .trr); "
                                              "default morph/<label>.xtc")
    flat_bottom: FlatBottomLimits | None = Field(None, description="flat-bottom selection energy (thesis eqs. "
                                                                   "7.2-7.3): force constants; limits left empty "
                                                                   "are taken from the training frames of the target")
    topology: InputPath | None = Field(None, description="the top-down model's .top, copied beside the output "
                                                         "(default: system.topology if it is a .top)")


class MorphStep(Step):
    name = "morph"
    summary = "morph top-down structures through the resolution bottleneck with the trained model (schemes A/B)"
    Params = MorphParams

    def run(self, ctx) -> dict:
        p = self.params
        label = p.label or p.scheme
        where = ctx.where(f"steps.morph[{label}]")
        model_dir = resolve_step_input(p.model, ctx.workdir, "steps.morph.model") if p.model else \
            ctx.outputs.get("train.model", "steps.morph.model")
        idx = select_frames(p.frames, [], count_frames(p.input), ctx.where("steps.morph.frames"))
        given = p.model_fields_set | {"energy"}  # (the morph's own default); unset keys stay unset: morph_settings
        settings = BackmapSettings(**{k: getattr(p, k) for k in BackmapSettings.model_fields if k in given})
        if p.flat_bottom is not None and not p.flat_bottom.nonbonded:  # limits from the target's training frames
            train = ctx.pairs().train()
            params = p.flat_bottom.model_dump(exclude={"bond", "angle", "nonbonded", "source"})
            settings.flat_bottom = FlatBottomLimits.from_frames(
                ctx.topology, zip(train.aa.astype(float), train.dimensions),
                source=f"{len(train)} training frames of the target", **params)
        model = load_model(model_dir, ctx.registry)
        ibi_log = None
        if p.ibi is not None and not p.ibi.tables:  # fitted here, to the target's training frames
            train = ctx.pairs().train()
            tables = fit_ibi(model, ctx.cg_topology, p.input, p.ibi, zip(train.aa.astype(float), train.dimensions),
                             p.scheme, settings, seed=ctx.seed, where=where)
            settings.ibi = tables
            ibi_log = write_tables(tables, ctx.path(f"morph/{label}_ibi.json"))
        result = morph_to_files(model, ctx.cg_topology, p.input,
                                ctx.path(p.out or f"morph/{label}.xtc"), p.scheme, idx, settings, seed=ctx.seed,
                                output_topology=p.topology, cluster=ctx.recipe.cluster, where=where,
                                reads=ctx.read_files)
        summary, files = result.report() | {"scheme": p.scheme}, result.files
        if ibi_log is not None:
            summary["IBI tables"] = str(ibi_log)
            summary["IBI rounds (JSD bond/angle/non-bonded)"] = [
                "/".join(f"{e.get(f, float('nan')):.4f}" for f in ("bond", "angle", "nonbonded"))
                for e in settings.ibi.log]
        ctx.outputs.declare(f"morph_{label}", **{k: v for k, v in files.as_dict().items()})
        summary.update({f"output {k}": str(v) for k, v in files.as_dict().items()})
        return summary
