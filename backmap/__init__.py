"""backmap — plugin-based multiscale backmapping of coarse-grained molecular structures.

The public API a plugin needs is re-exported here; everything else is an implementation detail.
The names that pull in torch (the generator contract's data types and base classes) are loaded on
first use, so that ``import backmap`` and the command line stay fast.
"""
from typing import Any

from backmap._version import __version__
from backmap.allocator import keep_freed_memory
from backmap.engine.hooks import hookimpl
from backmap.engine.plugin import (
    FrameSampler,
    Generator,
    Metric,
    Move,
    MoveFrame,
    MoveSetup,
    Plugin,
    Reader,
    Refiner,
    Regularizer,
    Selector,
    Step,
    StepContext,
    Traversal,
)
from backmap.errors import BackmapError

keep_freed_memory()  # glibc: reuse freed blocks instead of zeroing fresh pages (backmap/allocator.py)

#: public names loaded on first use: name -> module
_LAZY = {
    "NetworkGenerator": "backmap.training.loop",
    "TrainingLoop": "backmap.training.loop",
    "TrainingData": "backmap.training.data",
    "FitContext": "backmap.training.data",
    "TrainOptions": "backmap.training.data",
    "BeadSequences": "backmap.training.sequences",
    "SequenceStore": "backmap.training.sequence_store",
    "EnvironmentBatch": "backmap.sampling.environment",
    "EnvironmentSpec": "backmap.sampling.spec",
    "Channels": "backmap.sampling.environment",
    "RunContext": "backmap.engine.pipeline",
    "PairSet": "backmap.system.pairs",
    "RefineParams": "backmap.refinement.restrained",
    "RefineResult": "backmap.refinement.restrained",
    "RestrainedSystem": "backmap.refinement.restrained",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'backmap' has no attribute {name!r}")


__all__ = [
    "BackmapError",
    "FrameSampler",
    "Generator",
    "Metric",
    "Move",
    "MoveFrame",
    "MoveSetup",
    "Plugin",
    "Reader",
    "Refiner",
    "Regularizer",
    "Selector",
    "Step",
    "StepContext",
    "Traversal",
    "hookimpl",
    "__version__",
    *_LAZY,
]
