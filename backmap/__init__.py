"""backmap — plugin-based multiscale backmapping of coarse-grained molecular structures.

The public API a plugin needs is re-exported here; everything else is an implementation detail.
"""
from backmap.errors import BackmapError
from backmap.engine.hooks import hookimpl
from backmap.engine.plugin import (
    Generator,
    Metric,
    Plugin,
    Reader,
    Refiner,
    Regularizer,
    Selector,
    Step,
    Traversal,
)

from backmap._version import __version__

__all__ = [
    "BackmapError",
    "Generator",
    "Metric",
    "Plugin",
    "Reader",
    "Refiner",
    "Regularizer",
    "Selector",
    "Step",
    "Traversal",
    "hookimpl",
    "__version__",
]
