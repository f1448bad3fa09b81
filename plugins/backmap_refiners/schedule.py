"""The ``schedule`` refiner: other refiners taken in turn, ``cycles`` times — e.g. one sweep of
whole-bead ``vae_mc`` moves and a few steps of local ``mala`` moves per cycle.

Each stage is a Markov kernel; when every stage leaves the same distribution invariant, so does
their composition, and the schedule is exact for it. The schedule therefore sets what defines the
target — ``temperature``, ``restraint`` and ``constraints`` — once, for all stages (a stage that
names another value is refused). With rigid bonds ``vae_mc`` holds only the bonds its decoder
builds inside a bead and samples the others as stiff springs; its bond model
(:class:`backmap.refinement.bond_model.BondModel`) is handed to ``mala``, which then holds the same
bonds, adds the same springs and the Fixman potential, and samples the same target
(docs/refine-schedule.md).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from backmap.api import BackmapError, Refiner
from backmap.api.recipes import make_plugin
from backmap.api.refinement import (
    BondConstraints,
    BondModel,
    Constraints,
    DefinesBondModel,
    RefineInputs,
    RefineResult,
    RestrainedSystem,
    TakesBondModel,
    offer_refine_inputs,
    resolve_constraints,
)

log = logging.getLogger("backmap")

SHARED = ("temperature", "restraint", "constraints")


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plugin: str = Field(description="a refiner plugin (vae_mc, mala, langevin, openmm, …)")
    params: dict[str, Any] = Field(default_factory=dict, description="its parameters (per cycle: steps, sweeps …)")

    @field_validator("params")
    @classmethod
    def _recipe_paths(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """In a recipe, the stage's path parameters resolve against the recipe's directory, as the
        top-level refiners' do (the stage itself is validated later, without the recipe)."""
        if not (info.context or {}).get("base_dir") or "plugin" not in info.data:
            return params
        from backmap.api.recipes import default_registry

        try:
            stage_cls = default_registry().get("refiner", info.data["plugin"]).cls
        except BackmapError:
            return params  # an unknown plugin is reported where the stage is made
        try:
            checked = stage_cls.Params.model_validate(params, context=info.context)
        except ValidationError:
            return params  # reported, naming the key, where the stage is made
        return {k: str(getattr(checked, k)) if isinstance(getattr(checked, k, None), Path) else v
                for k, v in params.items()}


class ScheduleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stages: list[Stage] = Field(min_length=1, description="refiners run in this order in every cycle")
    cycles: int = Field(1, ge=1, description="how often the stages are run in turn")
    temperature: float = Field(300.0, gt=0, description="sampling temperature (K), for every stage")
    restraint: float = Field(2.0e5, ge=0, description="k of ½k|M(x) − R|² per bead (kJ/mol/nm²), for every stage")
    constraints: Constraints | None = Field(None, description="bond constraints for every stage (default: the .mdp's)")
    minimize_steps: int = Field(0, ge=0, description="restrained minimization steps before the first cycle (by the "
                                                     "first stage); stages never minimize after that")
    recentre: bool = Field(True, description="first translate every molecule so that its beads' mean deviation "
                                             "from the CG input is zero")
    seed: int | None = Field(None, description="random seed (default: the run's seed)")
    on_failure: Literal["error", "keep"] = Field("error", description="passed to every stage")
    project_output: bool = Field(True, description="when a stage samples rigid bonds as stiff springs (vae_mc): put "
                                                   "every rigid bond at its length (SHAKE) after the last cycle, not "
                                                   "between stages (that would leave the target)")


class ScheduleRefiner(Refiner):
    name = "schedule"
    summary = "other refiners in turn, cycle after cycle (e.g. vae_mc whole-bead moves mixed with mala local moves)"
    Params = ScheduleParams

    def __init__(self, params: ScheduleParams | None = None):
        super().__init__(params)
        self.stages: list[Refiner] = [self._stage(k, s) for k, s in enumerate(self.params.stages)]

    def _stage(self, k: int, stage: Stage) -> Refiner:
        where = f"schedule stages.{k} ({stage.plugin})"
        if stage.plugin == self.name:
            raise BackmapError(f"{where}: a schedule cannot contain a schedule")
        p = self.params
        for key in SHARED:
            if key in stage.params and stage.params[key] != getattr(p, key):
                raise BackmapError(f"{where}: params.{key} = {stage.params[key]!r} differs from the schedule's "
                                   f"{key} = {getattr(p, key)!r}: the stages must sample one target (set {key} on "
                                   "the schedule only)")
        for key in ("minimize_steps", "recentre"):
            if key in stage.params:
                raise BackmapError(f"{where}: params.{key}: set it on the schedule (it applies once, before the "
                                   "first cycle)")
        if stage.params.get("minimize_after"):
            raise BackmapError(f"{where}: params.minimize_after: a minimization inside a schedule would not leave its "
                               "target invariant; the schedule minimizes once, before the first cycle (minimize_steps)")
        params = {**stage.params, "temperature": p.temperature, "restraint": p.restraint, "recentre": False,
                  "minimize_steps": 0, "on_failure": p.on_failure}
        if p.constraints is not None:
            params["constraints"] = p.constraints
        refiner = make_plugin("refiner", stage.plugin, params, where=where)
        missing = [key for key in SHARED + ("minimize_steps",) if not hasattr(refiner.params, key)]
        if missing:
            raise BackmapError(f"{where}: refiner {stage.plugin!r} has no parameter(s) {', '.join(missing)}: it "
                               "cannot take part in a schedule")
        return refiner

    def take_inputs(self, inputs: RefineInputs) -> None:
        for stage in self.stages:
            offer_refine_inputs(stage, inputs)

    def prepare(self, system: RestrainedSystem) -> None:
        self.params = resolve_constraints(self.params, system, self.name)
        for stage in self.stages:
            stage.params = stage.params.model_copy(update={"constraints": self.params.constraints})
            stage.prepare(system)
        self.bonds = self._share_bond_model(system)
        self.projection = None
        if self.bonds is not None and self.params.project_output:
            pairs, lengths = system.constrained_bonds(self.params.constraints)
            self.projection = BondConstraints(pairs, lengths, system.topology.masses, tolerance=1e-10,
                                              dtype=torch.float64)

    def _share_bond_model(self, system: RestrainedSystem) -> BondModel | None:
        """One target for all stages: a stage that samples rigid bonds otherwise than as
        constraints (vae_mc: springs between beads) hands its bond model to the others, which are
        prepared again with it; a stage that cannot take it is named in a warning (the schedule
        is then not exact)."""
        defined = [(k, bonds) for k, stage in enumerate(self.stages)
                   if isinstance(stage, DefinesBondModel) and (bonds := stage.bond_model()) is not None]
        if not defined:
            return None
        if len(defined) > 1:
            names = ", ".join(f"stages.{k} ({self.stages[k].name})" for k, _ in defined)
            raise BackmapError(f"schedule: {names} each define how rigid bonds are sampled; one schedule samples one "
                               "target (keep one of them)")
        owner, bonds = defined[0]
        for k, stage in enumerate(self.stages):
            if k == owner:
                continue
            if isinstance(stage, TakesBondModel) and stage.use_bond_model(bonds):
                stage.prepare(system)
            else:
                log.warning("schedule stages.%d (%s) holds every rigid bond by a constraint, %s samples %d of them "
                            "as springs: the schedule is not exact for either target", k, stage.name, bonds.source,
                            len(bonds.sprung))
            if "project_output" in type(stage.params).model_fields:
                stage.params = stage.params.model_copy(update={"project_output": False})
        owner_stage = self.stages[owner]
        if "project_output" in type(owner_stage.params).model_fields:
            owner_stage.params = owner_stage.params.model_copy(update={"project_output": False})
        return bonds

    def refine(self, positions: np.ndarray, targets: np.ndarray, boxes: np.ndarray,
               rng: np.random.Generator) -> RefineResult:
        x = np.array(positions, np.float64)
        F = len(x)
        sums: list[dict[str, float]] = [{} for _ in range(F)]
        seconds = np.zeros(len(self.stages))
        failed: dict[int, str] = {}
        last: list[dict] = [{} for _ in range(F)]
        for cycle in range(self.params.cycles):
            for k, stage in enumerate(self.stages):
                first = cycle == 0 and k == 0 and self.params.minimize_steps
                if first:
                    stage.params = stage.params.model_copy(update={"minimize_steps": self.params.minimize_steps})
                if (cycle or k) and self.bonds is not None and "start_projection" in type(stage.params).model_fields:
                    # its input is a draw of the shared target: projecting the springs would leave it
                    stage.params = stage.params.model_copy(update={"start_projection": "held"})
                t0 = time.process_time()
                try:
                    result = stage.refine(x, targets, boxes, rng)
                finally:
                    if first:
                        stage.params = stage.params.model_copy(update={"minimize_steps": 0})
                seconds[k] += time.process_time() - t0
                for f, row in enumerate(result.log):
                    if row.get("failed"):
                        failed.setdefault(f, f"cycle {cycle}, {stage.name}: {row['failed']}")
                        continue
                    x[f] = result.positions[f]
                    last[f] = row
                    for key, value in row.items():
                        if isinstance(value, (int, float)) and not isinstance(value, bool):
                            name = f"{k}:{stage.name}:{key}"
                            sums[f][name] = sums[f].get(name, 0.0) + float(value)
        if self.projection is not None:  # the sprung bonds back at their lengths, once, at the end
            projected, ok = self.projection.positions(torch.as_tensor(x), torch.as_tensor(x))
            x = np.where(ok.numpy()[:, None, None], projected.numpy(), x)
        rows = []
        for f in range(F):
            row = {key: v / self.params.cycles for key, v in sums[f].items()}  # each stage's mean over cycles
            row.update({key: last[f][key] for key in ("potential", "restraint") if key in last[f]})
            row.update({f"{k}:{s.name}:cpu_seconds": seconds[k] / F for k, s in enumerate(self.stages)})
            if f in failed:
                row["failed"] = failed[f]
            rows.append(row)
        return RefineResult(x, rows)
