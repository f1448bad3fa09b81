"""The sampler's data and settings: environments, feature channels, traversal plans, stereocentres, blocks,
and the compiled Monte Carlo decisions over the force field's tables.

Part of :mod:`backmap.api`, the one surface plugins import."""
from __future__ import annotations

from backmap.sampling.environment import Channels, EnvironmentBatch  # noqa: F401
from backmap.sampling.spec import EnvironmentSpec  # noqa: F401
from backmap.sampling.sampler import Sampler, SamplerOptions, UnitGroup  # noqa: F401
from backmap.sampling.backmapper import BackmapSettings, read_cg  # noqa: F401
from backmap.sampling.cg_projection import CGProjection, ProjectionResult  # noqa: F401
from backmap.sampling.chirality import (TACTICITIES, ChiralCentres, invert_flipped, load_chiral_centres,  # noqa: F401
                                        tacticity_centres)
from backmap.sampling.flat_bottom import FlatBottomLimits, type_key  # noqa: F401
from backmap.sampling.traversal import make_plans  # noqa: F401
from backmap.sampling.blocks import Block, parse_blocks  # noqa: F401
from backmap.sampling.local_mc import LocalMetropolis  # noqa: F401
from backmap.sampling.metropolis import cross_energies, sequential_metropolis  # noqa: F401

__all__ = ['TACTICITIES', 'BackmapSettings', 'Block', 'CGProjection', 'Channels', 'ChiralCentres', 'EnvironmentBatch', 'EnvironmentSpec', 'FlatBottomLimits',
           'LocalMetropolis', 'ProjectionResult', 'Sampler', 'SamplerOptions', 'UnitGroup', 'cross_energies', 'invert_flipped',
           'load_chiral_centres', 'make_plans', 'parse_blocks', 'read_cg', 'sequential_metropolis', 'tacticity_centres', 'type_key']
