"""Keeping stereocentres: the handedness of every tetrahedral centre, taken from an AA reference
structure of the system, and a selection penalty for candidates that invert one.

A GROMACS topology does not say which enantiomer a centre is (syndiotactic and isotactic
polystyrene share one ``.top``), and a generator that places a centre's neighbours on the wrong
side inverts it — restrained relaxation cannot undo that. So the handedness comes from a
structure with the right chemistry (any frame of the system: an AA training snapshot, the
structure the CG model was made from). Each centre is described by three heavy neighbours where
it has three (hydrogens are placed after heavy atoms, so the heavy skeleton is what decides the
handedness), else by the neighbours RDKit names (``backmap.metrics.stereo``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backmap.errors import BackmapError
from backmap.metrics.geometry import signed_volumes
from backmap.metrics.stereo import molecule_stereo
from backmap.pbc import Unwrapper
from backmap.topology import MoleculeType, Topology


@dataclass
class ChiralCentres:
    """``rows``: per molecule type, its centres as local rows (centre, a, b, d); ``sign``: the
    reference handedness (+1/−1) of every centre atom of the system by global index, 0 elsewhere;
    ``weight``: kJ/mol added to a candidate's selection energy per centre it inverts."""

    rows: dict[str, np.ndarray]
    sign: np.ndarray
    weight: float = 1e5

    def global_rows(self, topology: Topology) -> np.ndarray:
        """(n, 4) global rows of every centre of the system."""
        out = [np.zeros((0, 4), int)]
        for block in topology.blocks:
            rows = self.rows.get(block.moltype.name)
            if rows is not None and len(rows):
                offsets = block.first_atom + block.moltype.n_atoms * np.arange(block.count)
                out.append((rows[None] + offsets[:, None, None]).reshape(-1, 4))
        return np.concatenate(out)

    def kept(self, topology: Topology, positions: np.ndarray) -> float:
        """Fraction of centres with the reference handedness in ``positions`` (N, 3), molecules whole."""
        rows = self.global_rows(topology)
        if not len(rows):
            return 1.0
        vol = signed_volumes(np.asarray(positions, float)[None], rows)[0]
        ref = self.sign[rows[:, 0]]
        return float(np.mean((np.sign(vol) == ref)[ref != 0]))


def centre_rows(mt: MoleculeType, x_nm: np.ndarray) -> np.ndarray:
    """Local (centre, a, b, d) rows of a molecule type's tetrahedral stereocentres."""
    centres, _bonds, _note = molecule_stereo(mt, x_nm)
    heavy = mt.elements != "H"
    rows = []
    for c, *named in centres.tolist():
        nb = sorted(n for n in mt.graph.neighbors(c) if heavy[n])
        rows.append([c, *nb[:3]] if len(nb) >= 3 else [c, *named])
    return np.array(rows, int).reshape(-1, 4)


def chiral_centres(topology: Topology, positions: np.ndarray, weight: float = 1e5,
                   source: str | Path | None = None) -> ChiralCentres:
    """Centres and their handedness in ``positions`` (N, 3) nm of the whole system, molecules
    whole. A centre that is planar in the reference (sign 0) is not restrained."""
    x = np.asarray(positions, float)
    if x.shape != (topology.n_atoms, 3):
        raise BackmapError(f"the stereo reference has {len(x)} atoms, the system {topology.n_atoms}", source=source)
    rows, sign = {}, np.zeros(topology.n_atoms, np.int8)
    for block in topology.blocks:
        mt = block.moltype
        if mt.name not in rows:
            rows[mt.name] = centre_rows(mt, x[block.first_atom:block.first_atom + mt.n_atoms])
    cc = ChiralCentres(rows, sign, weight)
    g = cc.global_rows(topology)
    if len(g):
        sign[g[:, 0]] = np.sign(signed_volumes(x[None], g)[0])
    return cc


def load_chiral_centres(topology: Topology, path: str | Path, weight: float = 1e5) -> ChiralCentres:
    """:func:`chiral_centres` from the first frame of an AA structure or trajectory file."""
    from backmap.io import read_frames

    path = Path(path)
    if not path.is_file():
        raise BackmapError("stereo reference not found", source=path)
    frame = next(iter(read_frames(path, topology.n_atoms, [0], expect="AA system of the topology")))
    whole = Unwrapper(topology)(frame.positions, frame.dimensions)
    return chiral_centres(topology, whole, weight, source=path)
