"""Built-in recipe steps of the foundation: ``prepare`` (training pairs), ``map`` (AA → CG
trajectory) and ``train`` (fit the recipe's generator). Registered through ``backmap_steps``."""
from backmap import hookimpl

from backmap_steps.map_step import MapStep
from backmap_steps.prepare import PrepareStep
from backmap_steps.train import TrainStep


@hookimpl
def backmap_steps():
    return [PrepareStep, MapStep, TrainStep]
