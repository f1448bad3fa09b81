"""Hook specifications: the extension points of backmap.

A plugin is any module or object with functions marked ``@backmap.hookimpl`` whose names are
among the specs below; it is registered through the ``backmap.plugins`` entry-point group::

    # pyproject.toml of a third-party package
    [project.entry-points."backmap.plugins"]
    my_generators = "my_package.plugin"

Every hook returns a list of plugin *classes* (subclasses of the base classes in
:mod:`backmap.api`, as each hook's return type says), each with a unique ``name`` within its kind. Built-in plugins in
``plugins/`` use exactly these hooks. Two classes of one kind with one name are an error that
names both providing packages.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from backmap.engine.plugin import (Generator, Metric, Move, Reader, Refiner, Regularizer, Selector, Step,
                                       Traversal)

PROJECT = "backmap"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def backmap_generators() -> list[type[Generator]]:
    """Generators: learn and propose positions for a unit (atom, bead's atoms or molecule)
    from its local environment. Return :class:`backmap.engine.plugin.Generator` subclasses."""


@hookspec
def backmap_traversals() -> list[type[Traversal]]:
    """Traversals: the order in which units are placed (dfs, bfs, random, …).
    Return :class:`backmap.engine.plugin.Traversal` subclasses."""


@hookspec
def backmap_refiners() -> list[type[Refiner]]:
    """Refiners: what happens after the forward pass (Gibbs sweeps, MH moves, restrained
    Langevin/MC). Return :class:`backmap.engine.plugin.Refiner` subclasses."""


@hookspec
def backmap_regularizers() -> list[type[Regularizer]]:
    """Regularizers: extra loss terms for training (energy minimizing, energy matching, …).
    Return :class:`backmap.engine.plugin.Regularizer` subclasses."""


@hookspec
def backmap_selectors() -> list[type[Selector]]:
    """Selectors: choose one of K candidate placements (lowest energy, Boltzmann, random).
    Return :class:`backmap.engine.plugin.Selector` subclasses."""


@hookspec
def backmap_metrics() -> list[type[Metric]]:
    """Metrics: observables and divergences for evaluation and CG-model assessment.
    Return :class:`backmap.engine.plugin.Metric` subclasses."""


@hookspec
def backmap_steps() -> list[type[Step]]:
    """Recipe steps (prepare, map, train, backmap, evaluate, …).
    Return :class:`backmap.engine.plugin.Step` subclasses."""


@hookspec
def backmap_readers() -> list[type[Reader]]:
    """Readers of topology and mapping formats, chosen by file suffix.
    Return :class:`backmap.engine.plugin.Reader` subclasses."""


@hookspec
def backmap_moves() -> list[type[Move]]:
    """Moves made on each backmapped frame after the forward pass and the Gibbs sweeps.
    Return :class:`backmap.engine.plugin.Move` subclasses."""


#: hook name for each plugin kind, in the order `backmap plugins` lists them
KIND_HOOKS: dict[str, str] = {
    "generator": "backmap_generators",
    "traversal": "backmap_traversals",
    "refiner": "backmap_refiners",
    "regularizer": "backmap_regularizers",
    "selector": "backmap_selectors",
    "move": "backmap_moves",
    "metric": "backmap_metrics",
    "step": "backmap_steps",
    "reader": "backmap_readers",
}
