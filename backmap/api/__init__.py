"""backmap.api — the one surface a plugin imports (built-in plugins import nothing else of backmap;
``scripts/check_imports.py`` holds them to it).

Here: the plugin base classes, ``hookimpl``, ``BackmapError`` and, loaded on first use, the typed
data plugins exchange (``EnvironmentBatch``, ``EnvironmentSpec``, ``TrainingData``, ``FitContext``,
``RestrainedSystem``, ``RefineResult``, …). The building blocks plugins share, by theme:

- :mod:`backmap.api.system` — topologies, mappings, periodic boxes, training pairs
- :mod:`backmap.api.io` — atomic writes, trajectory frames, progress bars, threads
- :mod:`backmap.api.forcefield` — the force field, its settings and geometry
- :mod:`backmap.api.sampling` — environments, channels, traversal plans, stereocentres
- :mod:`backmap.api.training` — training data and context, regularizer samples, reverse KL
- :mod:`backmap.api.refinement` — refiner inputs and results, constraints, latent moves
- :mod:`backmap.api.metrics` — observables, binnings, the evaluation context
- :mod:`backmap.api.recipes` — recipe inputs, the registry, model files and cards
- :mod:`backmap.api.icgen` — the internal-coordinate generator and its e3nn encoder and head
  (what the ``equivariant`` and ``vae`` generators are built on)
- :mod:`backmap.api.usecases` — apply, morph, refine, evaluate, assess (what recipe steps run)

Everything else in ``backmap`` is an implementation detail that may change between versions.
"""
from __future__ import annotations

from typing import Any

import backmap as _root
from backmap import (  # noqa: F401
    BackmapError,
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
    __version__,
    hookimpl,
)


def __getattr__(name: str) -> Any:
    """The torch-dependent names (``NetworkGenerator``, ``TrainingData``, …), loaded on first use."""
    return getattr(_root, name)


__all__ = list(_root.__all__)
