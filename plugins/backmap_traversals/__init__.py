"""Built-in traversals of molecular graphs: depth-first (DeepBackmap's best), breadth-first and
random. Neighbours are visited in index order, so dfs and bfs are deterministic."""
from __future__ import annotations

import networkx as nx
import numpy as np

from backmap.api import Traversal, hookimpl


class DepthFirst(Traversal):
    name = "dfs"
    summary = "depth-first from a chain end (DeepBackmap's default and best)"

    def order(self, graph: nx.Graph, root, rng: np.random.Generator) -> list:
        return list(nx.dfs_preorder_nodes(graph, root, sort_neighbors=sorted))


class BreadthFirst(Traversal):
    name = "bfs"
    summary = "breadth-first from a chain end"

    def order(self, graph: nx.Graph, root, rng: np.random.Generator) -> list:
        return [root] + [v for _, v in nx.bfs_edges(graph, root, sort_neighbors=sorted)]


class RandomOrder(Traversal):
    name = "random"
    summary = "a random order (seeded), not necessarily connected"

    def order(self, graph: nx.Graph, root, rng: np.random.Generator) -> list:
        nodes = sorted(graph)
        return [nodes[i] for i in rng.permutation(len(nodes))]


@hookimpl
def backmap_traversals():
    return [DepthFirst, BreadthFirst, RandomOrder]
