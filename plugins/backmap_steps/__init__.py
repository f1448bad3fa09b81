"""Built-in recipe steps: ``prepare`` (training pairs), ``map`` (AA → CG trajectory), ``train``
(fit the recipe's generator), ``backmap`` (CG → AA) and ``refine`` (restrained sampling) and ``morph`` (top-down structures through a resolution
bottleneck). Registered through ``backmap_steps``."""
from backmap.api import hookimpl

from backmap_steps.backmap_step import BackmapStep
from backmap_steps.map_step import MapStep
from backmap_steps.morph_step import MorphStep
from backmap_steps.prepare_step import PrepareStep
from backmap_steps.refine_step import RefineStep
from backmap_steps.train_step import TrainStep


@hookimpl
def backmap_steps():
    return [PrepareStep, MapStep, TrainStep, BackmapStep, RefineStep, MorphStep]
