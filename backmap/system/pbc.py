"""Periodic boundaries: minimum images and making molecules whole (orthorhombic and triclinic)."""
from __future__ import annotations

from functools import cached_property

import networkx as nx
import numpy as np
from MDAnalysis.lib.distances import minimize_vectors
from MDAnalysis.lib.mdamath import triclinic_box, triclinic_vectors

from backmap.system.topology import Topology


def box_vectors(dimensions: np.ndarray) -> np.ndarray:
    """(3, 3) box vectors (rows) from (a, b, c, alpha, beta, gamma)."""
    return triclinic_vectors(np.asarray(dimensions, np.float64))


def box_dimensions(vectors: np.ndarray) -> np.ndarray:
    """(a, b, c, alpha, beta, gamma) from (3, 3) box vectors."""
    v = np.asarray(vectors, np.float64)
    return triclinic_box(v[0], v[1], v[2])


def minimum_image(vectors: np.ndarray, dimensions: np.ndarray) -> np.ndarray:
    """Shortest periodic image of each difference vector (..., 3); lengths in any unit
    as long as ``dimensions`` uses the same one."""
    v = np.ascontiguousarray(vectors, dtype=np.float64)
    flat = minimize_vectors(v.reshape(-1, 3), np.asarray(dimensions, np.float32))
    return flat.reshape(v.shape)


class _Levels:
    """Breadth-first spanning forest of a molecule's bond graph, grouped by depth, so that a
    whole molecule is rebuilt depth by depth, vectorized over atoms and molecules."""

    def __init__(self, g: nx.Graph):
        n = g.number_of_nodes()
        parent = np.full(n, -1)
        depth = np.zeros(n, int)
        for comp in nx.connected_components(g):
            root = min(comp)
            for p, c in nx.bfs_edges(g, root):
                parent[c] = p
                depth[c] = depth[p] + 1
        self.levels = [
            (np.flatnonzero(depth == d), parent[depth == d]) for d in range(1, depth.max(initial=0) + 1)
        ]
        # roots of further connected components (e.g. ions in a molecule type) go next to node 0
        self.other_roots = np.array(sorted(min(c) for c in nx.connected_components(g) if 0 not in c), int)


class Unwrapper:
    """Makes every molecule whole: each bonded particle is moved to the periodic image nearest
    its parent in a spanning tree rooted at the molecule's first particle. Works on atoms (from a
    topology) or on CG beads (``Unwrapper.for_cg``)."""

    def __init__(self, topology: Topology | None = None, blocks: list[tuple[nx.Graph, int, int]] | None = None):
        """``blocks``: (graph, number of molecules, first index) per block of identical molecules."""
        if blocks is None:
            blocks = [(b.moltype.graph, b.count, b.first_atom) for b in topology.blocks]
        self.blocks = blocks

    @classmethod
    def for_cg(cls, cg_topology) -> "Unwrapper":
        """Whole CG molecules along the mapping's CG bonds."""
        return cls(blocks=[(cb.mapping.graph, cb.block.count, cb.first_bead) for cb in cg_topology.blocks])

    @cached_property
    def _levels(self) -> list[_Levels]:
        return [_Levels(g) for g, _, _ in self.blocks]

    def __call__(self, positions: np.ndarray, dimensions: np.ndarray) -> np.ndarray:
        """Whole-molecule copy of ``positions`` (n, 3)."""
        x = np.array(positions, dtype=np.float64)
        for (g, count, first), lv in zip(self.blocks, self._levels):
            n = g.number_of_nodes()
            sl = slice(first, first + count * n)
            xb = x[sl].reshape(count, n, 3)
            if len(lv.other_roots):
                d = xb[:, lv.other_roots] - xb[:, :1]
                xb[:, lv.other_roots] = xb[:, :1] + minimum_image(d, dimensions)
            for children, parents in lv.levels:
                d = xb[:, children] - xb[:, parents]
                xb[:, children] = xb[:, parents] + minimum_image(d, dimensions)
            x[sl] = xb.reshape(-1, 3)
        return x
