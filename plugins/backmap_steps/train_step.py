"""The ``train`` step: fit the recipe's generator on the training pairs and save it."""
from __future__ import annotations

import json
import pickle
import time

from pydantic import BaseModel, ConfigDict, Field

from backmap import Step
from backmap.system.io import atomic_path
from backmap.engine.pipeline import write_text


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(1, ge=1, description="passes over the training pairs")
    batch_size: int = Field(64, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="iterations between checkpoints (0: only at the end)")
    out: str = Field("model/generator.pkl", description="checkpoint in the work directory")


class TrainStep(Step):
    name = "train"
    summary = "fit the recipe's generator on the prepared pairs"
    Params = TrainParams

    def run(self, ctx) -> dict:
        ref = ctx.recipe.generator
        generator = ctx.plugin("generator", ref, "generator")
        pairs = ctx.pairs()
        ctx.train_options = self.params  # epochs, batch size, checkpoints: read by the generator's fit()
        t0 = time.perf_counter()
        fit_summary = generator.fit(pairs, ctx) or {}
        seconds = time.perf_counter() - t0
        out = ctx.path(self.params.out)
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                pickle.dump({"plugin": ref.plugin, "params": ref.params, "state": generator.state_dict()}, fh)
        info = {"plugin": ref.plugin, "params": ref.params, "checkpoint": out.name,
                "topology": str(ctx.recipe.system.topology), "mapping": [str(m) for m in ctx.recipe.system.mappings],
                "seed": ctx.seed}
        write_text(out.with_suffix(".json"), json.dumps(info, indent=2))
        return {"generator": ref.plugin, "train frames": len(pairs.train()), "fit seconds": round(seconds, 2),
                "checkpoint": str(out), **fit_summary}
