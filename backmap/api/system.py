"""The data model: topologies, mappings, periodic boxes, superposition, training pairs, CG projection.

Part of :mod:`backmap.api`, the one surface plugins import."""
from __future__ import annotations

from backmap.system.topology import MoleculeBlock, MoleculeType, Topology, element_from_mass  # noqa: F401
from backmap.system.mapping import Bead, Mapping, MoleculeMapping  # noqa: F401
from backmap.system.pbc import Unwrapper, box_dimensions, box_vectors, minimum_image  # noqa: F401
from backmap.system.superpose import internal_displacements, kabsch  # noqa: F401
from backmap.system.dbm_sections import read_sections  # noqa: F401
from backmap.system.gmx import gromacs_topdir  # noqa: F401
from backmap.system.projection import map_frames, map_trajectory  # noqa: F401
from backmap.system.pairs import PairSet, count_frames, file_digest, pair_folder_frames, pairs_from_folders, pairs_from_trajectory, select_frames, split_frames  # noqa: F401

__all__ = ['Bead', 'Mapping', 'MoleculeBlock', 'MoleculeMapping', 'MoleculeType', 'PairSet', 'Topology', 'Unwrapper', 'box_dimensions', 'box_vectors', 'count_frames', 'element_from_mass', 'file_digest', 'gromacs_topdir', 'internal_displacements', 'kabsch', 'map_frames', 'map_trajectory', 'minimum_image', 'pair_folder_frames', 'pairs_from_folders', 'pairs_from_trajectory', 'read_sections', 'select_frames', 'split_frames']
