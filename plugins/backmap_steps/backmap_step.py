"""The ``backmap`` step: CG frames + the trained generator → AA trajectory, structure and topology."""
from __future__ import annotations

import json
import time

from pydantic import Field

from backmap import BackmapError, Step
from backmap.sampling.backmapper import Backmapper, BackmapSettings, load_checkpoint, read_cg, write_aa, write_topology
from backmap.system.pairs import count_frames, select_frames
from backmap.system.io import Frame, write_frames
from backmap.engine.pipeline import plugin_versions, write_text
from backmap.engine.recipe import InputPath


class BackmapParams(BackmapSettings):
    cg: InputPath | None = Field(None, description="CG structure/trajectory; default: the test frames of 'prepare'")
    frames: str | None = Field(None, description="'start:stop:step' or '0,5,9' of the CG input")
    model: str = Field("model/generator.pkl", description="checkpoint in the work directory")
    out: str = Field("backmap/aa.xtc", description="AA trajectory (.xtc, .gro, .pdb, .trr)")
    structure: str | None = Field("backmap/aa.gro", description="first AA frame as a structure")
    stereo_reference: InputPath | None = Field(None, description="AA structure of the system (e.g. a training "
                                                                 "snapshot) whose stereocentres the sampler keeps")


class BackmapStep(Step):
    name = "backmap"
    summary = "backmap CG frames with the trained generator (forward pass + Gibbs sweeps)"
    Params = BackmapParams

    def run(self, ctx) -> dict:
        p = self.params
        generator, _ = load_checkpoint(ctx.path(p.model), ctx.registry)
        cg_top = ctx.cg_topology
        reference = None
        if p.cg is not None:
            idx = select_frames(p.frames, [], count_frames(p.cg), f"{ctx.recipe.path.name}: steps.backmap")
            frames = list(read_cg(cg_top, p.cg, idx))
        else:
            test = ctx.pairs().test()
            if len(test) == 0:
                raise BackmapError("steps.backmap: no 'cg' given and the prepared pairs have no test frames",
                                   source=ctx.recipe.path.name)
            frames = [Frame(test.cg[k].astype(float), test.dimensions[k], index=int(test.frames[k]))
                      for k in range(len(test))]
            reference = [Frame(test.aa[k].astype(float), test.dimensions[k], index=int(test.frames[k]))
                         for k in range(len(test))]
        settings = BackmapSettings(**{k: getattr(p, k) for k in BackmapSettings.model_fields})
        bm = Backmapper(cg_top, generator, settings, seed=ctx.seed, registry=ctx.registry)
        t0 = time.perf_counter()
        out = ctx.path(p.out)
        results = []

        def stream():
            for fr in bm.run(frames, total=len(frames)):
                results.append(fr)
                yield fr

        n = write_aa(out, stream(), ctx.topology)
        seconds = time.perf_counter() - t0
        summary = {"frames": n, "atoms": ctx.topology.n_atoms, "generator": generator.name,
                   "seconds per frame": round(seconds / max(n, 1), 3),
                   "placements per second": round(bm.sampler.placements / seconds), "output": str(out)}
        if bm.chirality_kept:
            summary["stereocentres kept"] = round(float(sum(bm.chirality_kept) / len(bm.chirality_kept)), 4)
        if p.structure:
            summary["structure"] = str(write_aa(ctx.path(p.structure), results[:1], ctx.topology) and
                                       ctx.path(p.structure))
        if ctx.recipe.system.topology.suffix == ".top":
            summary["topology"] = str(write_topology(ctx.recipe.system.topology, out.parent / "topol.top"))
        # the CG input beside the output: the refine and evaluate steps pair it with the AA frames
        write_frames(out.parent / "cg.xtc", frames, cg_top.bead_names, cg_top.resnames, cg_top.resids)
        if reference is not None:
            ref = out.parent / "reference.xtc"
            write_aa(ref, reference, ctx.topology)
            summary["reference"] = str(ref)
        write_text(out.parent / "provenance.json", json.dumps(
            {"recipe": str(ctx.recipe.path), "seed": ctx.seed, "settings": settings.model_dump(mode="json"),
             "generator": generator.name, "plugins": plugin_versions(ctx.registry)}, indent=1))
        return summary
