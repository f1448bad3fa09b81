"""The E(3)-equivariant generator (``equivariant``): an SO(3)-equivariant e3nn encoder of the local
environment and an autoregressive internal-coordinate head placing a whole bead per call, with
exact rigid bonds, signed dihedrals (stereocentres from the environment) and an exact log-density.
See docs/equivariant.md."""
from backmap.api import hookimpl
from backmap_equivariant.generator import EquivariantGenerator


@hookimpl
def backmap_generators():
    return [EquivariantGenerator]
