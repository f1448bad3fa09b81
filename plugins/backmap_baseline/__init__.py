"""The baseline generators: rigid fragment templates from the training pairs (``template``), and a
trivial one for tests and overhead benchmarks (``bead_centre``)."""
from backmap.api import hookimpl

from backmap_baseline.template import FragmentTemplate, TrivialGenerator


@hookimpl
def backmap_generators():
    return [FragmentTemplate, TrivialGenerator]
