"""How many bonds of a generated frame are far from the force field's length.

A generator can meet every bead and every headline distribution while tearing a molecule apart
(2026-11-26: a chemical-transfer order left every sPS ring 0.37 nm from its backbone, and only
one bond type of the full table showed it). ``backmap apply`` counts such bonds in every frame it
writes and warns, so the user sees it without a reference to evaluate against.
"""
from __future__ import annotations

import numpy as np

from backmap.errors import BackmapError
from backmap.forcefield.parameters import build_parameters
from backmap.system.pbc import minimum_image
from backmap.system.topology import Topology

#: relative deviation from b0 beyond which a bond counts as broken (evaluate's default too)
TOLERANCE = 0.2


class BondCheck:
    """The bonds of a topology with force-field parameters and their b0 (nm)."""

    def __init__(self, topology: Topology, tolerance: float = TOLERANCE):
        terms = build_parameters(topology).bonded["bond"]
        self.pairs = np.asarray(terms.atoms, np.int64).reshape(-1, 2)
        self.b0 = np.asarray(terms.params, float).reshape(len(self.pairs), -1)[:, 0]
        self.tolerance = tolerance

    @classmethod
    def of(cls, topology: Topology) -> "BondCheck | None":
        """The check, or None for a topology without bond parameters (a .gro or .pdb)."""
        try:
            return cls(topology)
        except BackmapError:
            return None

    def broken_fraction(self, positions: np.ndarray, dimensions: np.ndarray | None = None) -> float:
        """Fraction of bonds more than ``tolerance`` off b0 in one frame (N, 3), minimum image."""
        if not len(self.pairs):
            return 0.0
        d = positions[self.pairs[:, 1]] - positions[self.pairs[:, 0]]
        if dimensions is not None:
            d = minimum_image(d, dimensions)
        length = np.linalg.norm(d, axis=-1)
        return float(np.mean(np.abs(length - self.b0) > self.tolerance * self.b0))
