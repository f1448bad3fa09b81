"""The ``map`` step: the recipe's AA trajectory (or another) mapped to CG, like ``csg_map``."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from backmap.api import BackmapError, Step
from backmap.api.io import write_frames
from backmap.api.recipes import InputPath
from backmap.api.system import count_frames, map_trajectory, select_frames


class MapParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trajectory: InputPath | None = Field(None, description="AA trajectory; default: data.trajectory")
    frames: str | None = Field(None, description="'start:stop:step' or '0,5,9'")
    out: str = Field("cg/cg.xtc", description="output in the work directory (.xtc, .gro or .pdb)")
    structure: str | None = Field("cg/cg.gro", description="first CG frame as a structure file")


class MapStep(Step):
    name = "map"
    summary = "map an AA trajectory to CG (like VOTCA's csg_map)"
    Params = MapParams

    def run(self, ctx) -> dict:
        traj = self.params.trajectory or (ctx.recipe.data.trajectory if ctx.recipe.data else None)
        if traj is None:
            raise BackmapError("steps.map.trajectory: no trajectory given and data.trajectory is not set",
                               source=ctx.recipe.path.name)
        frames = select_frames(self.params.frames, [], count_frames(traj), f"{ctx.recipe.path.name}: steps.map")
        cg_top = ctx.cg_topology
        out = ctx.path(self.params.out)
        n = map_trajectory(cg_top, Path(traj), out, frames)
        summary = {"trajectory": str(traj), "frames": n, "beads": cg_top.n_beads, "output": str(out)}
        if self.params.structure:
            from backmap.api.system import map_frames

            first = next(map_frames(cg_top, Path(traj), frames[:1]))
            structure = ctx.path(self.params.structure)
            write_frames(structure, [first], cg_top.bead_names, cg_top.resnames, cg_top.resids)
            summary["structure"] = str(structure)
        return summary
