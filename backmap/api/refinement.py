"""Restrained refinement: the refiner's inputs and results, constraints, latent (VAE) moves.

Part of :mod:`backmap.api`, the one surface plugins import."""
from __future__ import annotations

from backmap.refinement.restrained import Constraints, RefineParams, RefineResult, RestrainedSystem, resolve_constraints  # noqa: F401
from backmap.refinement.constraints import BondConstraints, Factorization  # noqa: F401
from backmap.refinement.latent_moves import IndependentChains, JointLogDensity, MoveResult, decide_sequentially, vae_move, vae_move_sequential  # noqa: F401
from backmap.refinement.bond_model import BondModel  # noqa: F401
from backmap.engine.plugin import DefinesBondModel, RefineInputs, TakesBondModel, TakesRefineInputs, offer_refine_inputs  # noqa: F401

__all__ = ['BondConstraints', 'BondModel', 'Constraints', 'DefinesBondModel', 'Factorization', 'RefineInputs',
           'TakesBondModel', 'TakesRefineInputs', 'offer_refine_inputs', 'IndependentChains', 'JointLogDensity', 'MoveResult', 'RefineParams', 'RefineResult', 'RestrainedSystem', 'decide_sequentially', 'resolve_constraints', 'vae_move', 'vae_move_sequential']
