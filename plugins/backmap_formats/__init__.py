"""Built-in readers: GROMACS topologies (.top via parmed, .tpr/.gro/.pdb via MDAnalysis) and
mappings (VOTCA XML, DeepBackmap .map). Registered through the public ``backmap_readers`` hook."""
from backmap.api import hookimpl

from backmap_formats.dbm_map import DeepBackmapMapReader
from backmap_formats.gromacs import CoordinateTopologyReader, GromacsTopReader, TprReader
from backmap_formats.votca import VotcaMappingReader


@hookimpl
def backmap_readers():
    return [GromacsTopReader, TprReader, CoordinateTopologyReader, VotcaMappingReader, DeepBackmapMapReader]
