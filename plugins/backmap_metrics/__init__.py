"""Built-in metrics (one plugin per observable family) and the ``evaluate`` and ``assess`` recipe steps.
Registered through the public ``backmap_metrics`` and ``backmap_steps`` hooks."""
from backmap.api import hookimpl
from backmap_metrics.assess_step import AssessStep
from backmap_metrics.bonded import Angles, Bonds, BrokenBonds, Dihedrals, Impropers
from backmap_metrics.chains import Chains
from backmap_metrics.consistency import CGRmsd
from backmap_metrics.dynamics import MarkovTimescales, Velocities
from backmap_metrics.energy import Energy
from backmap_metrics.forces import BeadForces
from backmap_metrics.ramachandran import Ramachandran
from backmap_metrics.step import EvaluateStep
from backmap_metrics.stereo import Stereo
from backmap_metrics.structure import Clashes, Rdf


@hookimpl
def backmap_metrics():
    return [Bonds, Angles, Dihedrals, Impropers, BrokenBonds, Ramachandran, Energy, Rdf, Clashes, CGRmsd, Stereo, BeadForces,
            Velocities, MarkovTimescales, Chains]


@hookimpl
def backmap_steps():
    return [EvaluateStep, AssessStep]
