"""Differentiable AA force field built from GROMACS topologies (torch)."""
from backmap.forcefield.energy import BONDED, NONBONDED, TERMS, Energies, ForceField
from backmap.forcefield.parameters import Parameters, build_parameters
from backmap.forcefield.settings import ONE_4PI_EPS0, NonbondedSettings

__all__ = ["BONDED", "NONBONDED", "TERMS", "Energies", "ForceField", "NonbondedSettings", "ONE_4PI_EPS0",
           "Parameters", "build_parameters"]
