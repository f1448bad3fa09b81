"""The differentiable force field's public face: energies, settings, geometry, minimization, local Metropolis.

Part of :mod:`backmap.api`, the one surface plugins import."""
from __future__ import annotations

from backmap.constants import BOLTZMANN  # noqa: F401
from backmap.forcefield import BONDED, ForceField, NonbondedSettings, TERMS, geometry  # noqa: F401
from backmap.forcefield.parameters import excluded_pair_list, molecule_terms, pair_list  # noqa: F401
from backmap.forcefield.minimize import minimize_restrained  # noqa: F401
from backmap.forcefield.bond_check import TOLERANCE  # noqa: F401
from backmap.forcefield.neighbors import box_heights  # noqa: F401

from backmap.forcefield.geometry import angle, dihedral, norm  # noqa: F401

__all__ = ['BOLTZMANN', 'BONDED', 'ForceField', 'NonbondedSettings', 'TERMS', 'TOLERANCE', 'angle', 'box_heights', 'dihedral', 'excluded_pair_list', 'geometry', 'minimize_restrained', 'molecule_terms', 'norm', 'pair_list']
