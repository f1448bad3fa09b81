"""Built-in training regularizers (thesis 4.5 and 7.1): energy minimizing, energy matching and
flat-bottom potentials. Registered through the public ``backmap_regularizers`` hook."""
from backmap.api import hookimpl

from backmap_regularizers.energy import EnergyMatch, EnergyMin
from backmap_regularizers.flat_bottom import FlatBottom


@hookimpl
def backmap_regularizers():
    return [EnergyMin, EnergyMatch, FlatBottom]
