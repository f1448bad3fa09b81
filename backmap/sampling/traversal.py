"""Placement plans: the order in which a molecule's atoms are generated.

An outer traversal of the CG graph (a :class:`backmap.Traversal` plugin: dfs, bfs, random …)
gives the bead order; inside each bead its home atoms follow the same traversal on the bond graph,
starting next to what is already placed, optionally heavy atoms before hydrogens. Every bead gets
a *predecessor* bead whose direction fixes the local frame (DeepBackmap's ``[align]`` overrides it).
One plan serves all molecules of a type, which is what lets them advance together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import networkx as nx
import numpy as np

from backmap.system.mapping import MoleculeMapping

if TYPE_CHECKING:
    from backmap.sampling.spec import EnvironmentSpec
    from backmap.system.mapping import CGTopology


class Traversal(Protocol):
    """What a plan needs of a traversal plugin (:class:`backmap.Traversal`): an order of a graph's nodes."""

    def order(self, graph: nx.Graph, root: Any, rng: np.random.Generator) -> list[Any]: ...


@dataclass(frozen=True)
class Unit:
    """Atoms generated together (molecule-local indices), the bead they are built around and the
    bead that fixes the frame's z axis (-1: none)."""

    atoms: tuple[int, ...]
    bead: int
    predecessor: int


@dataclass
class Plan:
    """The placement order of one molecule type."""

    mapping: MoleculeMapping
    bead_order: list[int]
    predecessor: np.ndarray  # (n_beads,) bead fixing each bead's frame, -1 if none
    atom_order: np.ndarray  # every atom once, in placement order
    units: list[Unit]

    @property
    def rank(self) -> np.ndarray:
        """Position of every atom in the placement order."""
        r = np.empty(len(self.atom_order), int)
        r[self.atom_order] = np.arange(len(self.atom_order))
        return r


def chain_root(graph: nx.Graph) -> int:
    """A chain end (lowest-numbered node of degree ≤ 1), else the lowest-numbered node."""
    ends = sorted(n for n in graph if graph.degree(n) <= 1)
    return ends[0] if ends else min(graph)


def _ordered(traversal: Traversal, graph: nx.Graph, root, rng: np.random.Generator) -> list:
    """Traversal of every connected component, the root's first."""
    order: list = []
    components = sorted(nx.connected_components(graph), key=lambda c: (root not in c, min(c)))
    for comp in components:
        sub = graph.subgraph(comp)
        start = root if root in comp else chain_root(sub)
        order += traversal.order(sub, start, rng)
    return order


def make_plan(mapping: MoleculeMapping, traversal: Traversal, rng: np.random.Generator,
              unit: str = "atom", heavy_first: bool = True) -> Plan:
    """The placement plan of one molecule type. ``unit``: ``atom`` (one atom per step, as
    DeepBackmap) or ``bead`` (all of a bead's atoms at once). An order given by the mapping file
    (``mapping.order``) overrides the traversal and ``heavy_first``."""
    cg = mapping.graph
    explicit = mapping.order is not None
    beads = list(mapping.order) if explicit else _ordered(traversal, cg, chain_root(cg), rng)
    position = {b: k for k, b in enumerate(beads)}
    predecessor = np.full(mapping.n_beads, -1)
    for b in beads:
        if b in mapping.align and mapping.align[b] != b:
            predecessor[b] = mapping.align[b]
            continue
        placed = [n for n in cg.neighbors(b) if position[n] < position[b]]
        others = sorted(cg.neighbors(b), key=lambda n: position[n])
        if placed:
            predecessor[b] = min(placed, key=lambda n: position[n])
        elif others:  # the first bead: its frame points at the next bonded bead
            predecessor[b] = others[0]
    g = mapping.moltype.graph
    elements = mapping.moltype.elements
    home = mapping.home
    done: set[int] = set()
    atom_order: list[int] = []
    units: list[Unit] = []
    for b in beads:
        atoms = [int(a) for a in np.flatnonzero(home == b)]
        if not atoms:
            continue
        if explicit:  # the file's listing order of the bead's (home) atoms
            inner = [int(a) for a in mapping.beads[b].atoms if home[a] == b]
            atom_order += inner
            done.update(inner)
            units += [Unit(tuple(inner), b, int(predecessor[b]))] if unit == "bead" else \
                [Unit((a,), b, int(predecessor[b])) for a in inner]
            continue
        sub = g.subgraph(atoms)
        # start at the atom bonded to what is placed already, else the heaviest, lowest-numbered one
        touching = [a for a in atoms if any(n in done for n in g.neighbors(a))]
        start = min(touching) if touching else min(atoms, key=lambda a: (-g.nodes[a]["mass"], a))
        inner = _ordered(traversal, sub, start, rng)
        if heavy_first:
            inner = [a for a in inner if elements[a] != "H"] + [a for a in inner if elements[a] == "H"]
        atom_order += inner
        done.update(inner)
        if unit == "bead":
            units.append(Unit(tuple(inner), b, int(predecessor[b])))
        else:
            units += [Unit((a,), b, int(predecessor[b])) for a in inner]
    return Plan(mapping, beads, predecessor, np.array(atom_order), units)


def make_plans(cg_topology: "CGTopology", traversal: Traversal, spec: "EnvironmentSpec",
               rng: np.random.Generator) -> dict[str, Plan]:
    """The plan of every molecule type for a generator's environment spec (unit, heavy-first):
    the same for training sequences and for backmapping."""
    return {cb.block.moltype.name: make_plan(cb.mapping, traversal, rng, unit=spec.unit, heavy_first=spec.heavy_first)
            for cb in cg_topology.blocks}
