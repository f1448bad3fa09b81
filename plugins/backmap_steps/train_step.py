"""The ``train`` step: fit the recipe's generator on the prepared pairs and save the model."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from backmap.api import BackmapError, Step
from backmap.api.forcefield import NonbondedSettings
from backmap.api.io import resolve_device
from backmap.api.recipes import InputPath, save_model
from backmap.api.refinement import RestrainedSystem
from backmap.api.sampling import BackmapSettings, Channels, make_plans
from backmap.api.system import PairSet
from backmap.api.training import (
    FitContext,
    LocalEnergies,
    ReverseKLOptions,
    TrainingData,
    TrainOptions,
    TrainsWithoutData,
    choose_twist,
    current_group,
)


class ModelCardInfo(BaseModel):
    """The model card's free-text fields (docs/models.md)."""

    model_config = ConfigDict(extra="forbid")
    summary: str = Field("", description="one line: what the model backmaps, at which state point")
    temperature: float | None = Field(None, gt=0, description="temperature (K) of the training data")
    licence: str | None = Field(None, description="licence of the model (default: MIT, as backmap)")
    citation: str | None = Field(None, description="how to cite the model")
    notes: str = Field("", description="anything else a user should know (limits, intended use)")


class TrainParams(TrainOptions):
    out: str = Field("model", description="model folder in the work directory (model.json + weights.safetensors)")
    log_dir: str = Field("training", description="folder in the work directory for checkpoints and the training log")
    objective: Literal["likelihood", "reverse_kl"] = Field(
        "likelihood", description="likelihood: fit the AA training frames (the generator's own loss); reverse_kl: "
                                  "no AA data — fit exp(−U/kT) under the CG restraint from the force field and the "
                                  "CG frames alone (docs/reverse-kl.md; the vae generator)")
    reverse_kl: ReverseKLOptions = Field(default_factory=ReverseKLOptions,
                                         description="tempering and target of objective: reverse_kl")
    mdp: InputPath | None = Field(None, description="GROMACS .mdp the model carries in its package: the cut-offs "
                                                    "and electrostatics of its refinement (apply --refine) and of "
                                                    "objective reverse_kl (short-ranged: reaction-field or cut-off); "
                                                    "default: the first mdp another step of the recipe names")
    card: ModelCardInfo = Field(default_factory=lambda: ModelCardInfo(),
                                description="what the model card says beyond what training records")
    sequences: Literal["disk", "memory"] = Field(
        "disk", description="where the teacher-forced training sequences are kept: disk (shards in the training "
                            "folder, read a batch at a time: memory bounded by the batch; removed after training) "
                            "or memory (all of them: faster for small data)")
    sampling: dict = Field(default_factory=dict, description="backmap settings the model is best used with (e.g. "
                                                             "regrow, regrow_trials), recorded in model.json: apply "
                                                             "and the backmap step take them unless given")


class TrainStep(Step):
    name = "train"
    summary = "fit the recipe's generator on the prepared pairs and save the model"
    Params = TrainParams

    def run(self, ctx) -> dict:
        ref = ctx.recipe.generator
        if ref is None:
            raise BackmapError("steps.train: the recipe has no 'generator' section", source=ctx.where("generator"))
        info = ctx.registry.get("generator", ref.plugin, where="generator.plugin")
        generator = info.cls(ref.params, environment=ref.environment)
        BackmapSettings().recommended(self.params.sampling, set(), ctx.where("steps.train.sampling"))  # early
        spec = generator.environment
        chosen: dict = {}
        if spec.temporal and spec.temporal_alignment == "beads" and spec.temporal_twist is None:
            twist, residuals = choose_twist(ctx.pairs().train(), ctx.cg_topology)
            chosen = {"temporal twist (chosen)": twist,
                      "previous → present RMS (nm)": round(residuals[twist] ** 0.5, 4)}
            ctx.console.print("train: trajectory mode, twist strength " + f"{twist:g} (RMS previous → present: "
                              + ", ".join(f"{k:g}: {v ** 0.5:.4f} nm" for k, v in residuals.items()) + ")")
            spec = generator.environment = spec.model_copy(update={"temporal_twist": twist})
        traversal = ctx.registry.get("traversal", spec.traversal, where="generator.environment.traversal").cls()
        cg = ctx.cg_topology
        transfer = bool(ctx.recipe.training_systems)
        if transfer and (spec.temporal or ctx.recipe.regularizers or self.params.objective != "likelihood"):
            raise BackmapError("training_systems: training on several systems is frame-wise, by likelihood and "
                               "without regularizers", source=ctx.where("training_systems"))
        data = TrainingData.several(
            [(c.pairs(), c.cg_topology) for c in ctx.training_contexts()], spec,
            lambda system: make_plans(system, traversal, spec, np.random.default_rng(ctx.seed)),
            lambda system: Channels.for_spec(system, spec.channels, ctx.recipe.system.channels), seed=ctx.seed)
        channels = data.channels
        # training sequences are streamed from shards on disk (memory bounded by the batch); a killed
        # run reuses the shards it wrote; removed when training has finished
        data.cache = ctx.path(self.params.log_dir, generator.name, "sequences") \
            if self.params.sequences == "disk" else None
        if data.n_train_frames == 0:
            raise BackmapError("steps.train: the prepared pairs have no training frames", source=ctx.where("data.split"))
        regularizers = []
        for i, r in enumerate(ctx.recipe.regularizers):
            reg = ctx.plugin("regularizer", r, f"regularizers[{i}]")
            reg.prepare(ctx)
            regularizers.append(reg)
        try:  # energies of generated atoms: for regularizers and the training log
            energies = LocalEnergies(data.cg_topology.topology)
        except BackmapError as exc:
            if regularizers:
                raise
            energies = None
            ctx.console.print(f"train: no energies in the training log ({exc})")
        options = TrainOptions(**{k: getattr(self.params, k) for k in TrainOptions.model_fields})
        log_dir = ctx.path(self.params.log_dir, generator.name, "checkpoint.pt").parent
        group = current_group()  # several processes under torchrun (backmap.training.distributed)
        fit = FitContext(options, regularizers, energies, log_dir, ctx.seed, ctx.console.print, group=group,
                         device=resolve_device(ctx.device, "device"))
        t0 = time.perf_counter()
        if self.params.objective == "reverse_kl":
            if group.active:
                raise BackmapError("steps.train: objective reverse_kl runs on one process; run it without torchrun",
                                   source=ctx.where("steps"))
            summary = self._fit_reverse_kl(ctx, generator, data, fit)
        else:
            summary = generator.fit(data, fit) or {}
        seconds = time.perf_counter() - t0
        if group.is_main and data.cache is not None:
            shutil.rmtree(data.cache, ignore_errors=True)
        if not group.is_main:  # the main process writes the model
            return {}
        out = ctx.path(self.params.out, "model.json").parent
        # what the model records of its training: no wall times (those are in run.json), so that
        # identical runs write identical model files
        training = {k: v for k, v in summary.items() if k not in ("markdown", "training log") and not _is_timing(k)}
        mapping_files = ctx.mapping_files  # copied into the package, generated (bottleneck) or not
        # a run that resumed a finished training spent seconds; the loop counts its runs' total
        total = summary.get("train seconds (total)")
        card = {"name": ctx.recipe.name, **self.params.card.model_dump(), "data": _training_files(ctx),
                "frames": data.n_train_frames, "seconds": seconds if total is None else max(seconds, float(total))}
        save_model(out, generator, channels, ctx.recipe.system.topology, mapping_files, cg, mdp=self._mdp(ctx),
                   card=card, **({"sampling": self.params.sampling} if self.params.sampling else {}), seed=ctx.seed,
                   training={"recipe": ctx.recipe.name, "options": options.model_dump(),
                             "train frames": data.n_train_frames, "summary": training,
                             **_trained_on(ctx), **_time_step(data)})
        ctx.outputs.declare("train", model=out, log=log_dir if any(log_dir.iterdir()) else None)
        report = {"generator": ref.plugin, "train frames": data.n_train_frames, "fit seconds": round(seconds, 2),
                  "model": str(out), **chosen, **summary}
        rel = log_dir.relative_to(ctx.workdir)
        if (log_dir / "training.png").is_file():
            report["markdown"] = (summary.get("markdown", "") + f"\n\nTraining log: `{rel}/train_log.csv`; "
                                  f"checkpoint `{rel}/checkpoint.pt`.\n\n![training]({rel}/training.png)").strip()
        if (log_dir / "reverse_kl.png").is_file():  # β, ⟨U⟩, entropy bound, KL, relative KL increase
            report["markdown"] = (report.get("markdown", "") + f"\n\nReverse-KL log: `{rel}/reverse_kl_log.csv`."
                                  f"\n\n![reverse KL]({rel}/reverse_kl.png)").strip()
        return report


    def _mdp(self, ctx) -> Path | None:
        """The .mdp the model carries: the step's own, else the first another step names."""
        if self.params.mdp is not None:
            return Path(self.params.mdp)
        for entry in ctx.recipe.steps:
            for params in entry.values():
                mdp = (params or {}).get("mdp") if isinstance(params, dict) else None
                if isinstance(mdp, str) and not mdp.startswith("workdir:"):
                    path = Path(mdp) if Path(mdp).is_absolute() else ctx.recipe.base_dir / mdp
                    if path.is_file():
                        return path
        return None

    def _fit_reverse_kl(self, ctx, generator, data: TrainingData, fit: FitContext) -> dict:
        """Data-free training: the generator sees the CG frames and the force field only — the
        prepared pairs' AA coordinates are replaced by NaN before it gets them."""
        if ctx.recipe.regularizers:
            ctx.console.print("train: objective reverse_kl ignores the recipe's regularizers (the force field is "
                              "the objective)")
        p = self.params
        settings = NonbondedSettings.from_mdp(p.mdp) if p.mdp else NonbondedSettings()
        system = RestrainedSystem(ctx.cg_topology, Path(ctx.recipe.system.topology), settings)
        pairs = data.pairs
        blind = PairSet(np.full_like(pairs.aa, np.nan), pairs.cg, pairs.dimensions, pairs.frames, pairs.is_test,
                        dict(pairs.info), pairs.times)
        cg_only = TrainingData(blind, data.cg_topology, data.spec, data.channels, data.plans, seed=data.seed)
        if not isinstance(generator, TrainsWithoutData):
            raise BackmapError(f"steps.train.objective: reverse_kl needs a generator with exact densities and "
                               f"reparameterized samples (plugin: vae); {generator.name!r} has none")
        summary = generator.fit_reverse_kl(cg_only, system, p.reverse_kl, fit) or {}
        summary["objective"] = "reverse_kl (no AA coordinates read)"
        return summary


def _training_files(ctx) -> list[Path]:
    """The files the training pairs came from (the card records their hashes)."""
    out = []
    for c in ctx.training_contexts():
        spec = c.recipe.data
        if spec is not None:
            out.append(Path(spec.trajectory if spec.trajectory is not None else spec.pairs))
    return out


def _trained_on(ctx) -> dict:
    """A model trained on other systems than the one it backmaps records which (chemical transfer)."""
    if not ctx.recipe.training_systems:
        return {}
    return {"trained on": [{"name": ts.name, "topology": str(ts.system.topology),
                            "molecule types": [b.moltype.name for b in c.topology.blocks]}
                           for ts, c in zip(ctx.recipe.training_systems, ctx.training_contexts())]}


def _time_step(data) -> dict:
    """A trajectory-mode model records the time between the frames it learned to step by."""
    if not data.spec.temporal:
        return {}
    return {"time step (ps)": data.train().time_step()}


def _is_timing(key: str) -> bool:
    """A summary entry that measures time (differs between identical runs)."""
    return "second" in key or key.endswith("/s")
