"""The ``equivariant`` generator: the core's internal-coordinate generator (an SO(3)-equivariant
e3nn encoder and an autoregressive internal-coordinate head, :mod:`backmap.api.icgen`) as a plugin.
See docs/equivariant.md."""
from __future__ import annotations

from backmap.api.icgen import InternalCoordinateGenerator


class EquivariantGenerator(InternalCoordinateGenerator):
    name = "equivariant"
    summary = ("SO(3)-equivariant e3nn encoder + autoregressive internal-coordinate head, one bead per call (exact "
               "rigid bonds, signed dihedrals, log_prob)")
