"""AA → CG mappings: beads as weighted atom centres, each atom with one *home* bead.

Readers (``backmap_formats``) turn VOTCA mapping XML or DeepBackmap ``.map`` files into
:class:`MoleculeMapping` objects; :func:`backmap.engine.loaders.load_mapping` combines them (a molecule
type mapped twice is an error) and
:class:`CGTopology` applies them to whole systems.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import networkx as nx
import numpy as np

from backmap.errors import BackmapError
from backmap.system.topology import MoleculeBlock, MoleculeType, Topology

log = logging.getLogger(__name__)


@dataclass
class Bead:
    """A CG bead: its atoms (indices in the molecule type) and normalized weights."""

    name: str
    type: str
    atoms: np.ndarray
    weights: np.ndarray


@dataclass
class MoleculeMapping:
    """The mapping of one molecule type onto its beads, with the CG bonded topology."""

    moltype: MoleculeType
    name: str
    beads: list[Bead]
    bonds: list[tuple[int, int]] = field(default_factory=list)
    angles: list[tuple[int, int, int]] = field(default_factory=list)
    dihedrals: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: DeepBackmap's [align]: bead -> bead that fixes its local frame (the predecessor)
    align: dict[int, int] = field(default_factory=dict)
    source: Path | None = None
    #: an explicit placement order given by the mapping file (bead indices, every bead once): beads
    #: are placed in this order and each bead's atoms in the order the file lists them
    order: list[int] | None = None
    #: format-specific information (e.g. DeepBackmap's [mult])
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()
        if not self.bonds:
            self.bonds = self._bonds_from_atoms()

    def _where(self, bead: Bead | None = None) -> str:
        where = f"molecule {self.name} ({self.moltype.name})"
        return where + (f", bead {bead.name}" if bead is not None else "")

    def validate(self) -> None:
        n = self.moltype.n_atoms
        for bead in self.beads:
            if len(bead.atoms) == 0:
                raise BackmapError(f"{self._where(bead)}: empty bead", source=self.source)
            if len(bead.weights) != len(bead.atoms):
                raise BackmapError(
                    f"{self._where(bead)}: {len(bead.weights)} weights for {len(bead.atoms)} atoms",
                    source=self.source,
                )
            if not np.isclose(bead.weights.sum(), 1.0) or (bead.weights < 0).any():
                raise BackmapError(f"{self._where(bead)}: weights must be ≥ 0 with a positive sum",
                                   source=self.source)
        if self.order is not None and sorted(self.order) != list(range(len(self.beads))):
            raise BackmapError(f"{self._where()}: the placement order must name every bead exactly once",
                               source=self.source)
        covered = np.zeros(n, bool)
        for bead in self.beads:
            covered[bead.atoms] = True
        if not covered.all():
            missing = np.flatnonzero(~covered)
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise BackmapError(
                f"{self._where()}: atom {self.moltype.label(missing[0])} is in no bead{more}",
                source=self.source,
            )

    @property
    def n_beads(self) -> int:
        return len(self.beads)

    @cached_property
    def weight_matrix(self) -> np.ndarray:
        """(n_beads, n_atoms): bead position = W @ atom positions."""
        w = np.zeros((self.n_beads, self.moltype.n_atoms))
        for b, bead in enumerate(self.beads):
            np.add.at(w[b], bead.atoms, bead.weights)
        return w

    @cached_property
    def home(self) -> np.ndarray:
        """Home bead of every atom: the bead it is listed in with the largest share
        (first listed on ties; an atom listed with weight 0 only still has a home)."""
        member = np.zeros((self.n_beads, self.moltype.n_atoms), bool)
        for b, bead in enumerate(self.beads):
            member[b, bead.atoms] = True
        score = np.where(member, self.weight_matrix, -1.0)
        return score.argmax(axis=0)

    def _bonds_from_atoms(self) -> list[tuple[int, int]]:
        """CG bonds where an AA bond joins atoms of two different home beads."""
        h = self.home
        pairs = {tuple(sorted((int(h[i]), int(h[j])))) for i, j in self.moltype.bonds if h[i] != h[j]}
        return sorted(pairs)

    def frame_beads(self, bead: int) -> list[int]:
        """The bead and its CG-bonded beads — and the beads two bonds away when that makes fewer
        than three points — in a fixed order: the beads that fix a fragment's orientation."""
        near = nx.single_source_shortest_path_length(self.graph, bead, cutoff=2)
        first = sorted(n for n, d in near.items() if d == 1)
        second = sorted(n for n, d in near.items() if d == 2)
        return [bead] + first + (second if len(first) < 2 else [])

    @cached_property
    def graph(self) -> nx.Graph:
        """CG bond graph; nodes are bead indices carrying name and type."""
        g = nx.Graph(name=self.name)
        for b, bead in enumerate(self.beads):
            g.add_node(b, name=bead.name, type=bead.type)
        g.add_edges_from(self.bonds)
        return g


@dataclass
class CGBlock:
    block: MoleculeBlock
    mapping: MoleculeMapping
    first_bead: int

    @property
    def n_beads(self) -> int:
        return self.block.count * self.mapping.n_beads


class CGTopology:
    """The CG system a mapping makes of a topology; applies the mapping to AA coordinates."""

    def __init__(self, topology: Topology, molecules: dict[str, MoleculeMapping]):
        self.topology = topology
        self.blocks: list[CGBlock] = []
        n = 0
        for block in topology.blocks:
            mm = molecules.get(block.moltype.name)
            if mm is None:
                log.warning("molecule type %s has no mapping; its %d molecules are left out of the CG system",
                            block.moltype.name, block.count)
                continue
            self.blocks.append(CGBlock(block, mm, n))
            n += block.count * mm.n_beads
        if not self.blocks:
            raise BackmapError(
                f"the mapping covers none of the molecule types in the topology "
                f"({', '.join(topology.moltypes)}); check <ident> / the .map file name"
            )
        self.n_beads = n

    @classmethod
    def concatenate(cls, systems: list["CGTopology"]) -> "CGTopology":
        """Several CG systems as one (:meth:`Topology.concatenate`): system k's beads and atoms
        follow those of systems 0..k-1, so its indices shift by the sizes of those before it."""
        topology = Topology.concatenate([cg.topology for cg in systems])
        return cls(topology, {cb.block.moltype.name: cb.mapping for cg in systems for cb in cg.blocks})

    def _concat(self, per_bead) -> np.ndarray:
        return np.concatenate([np.tile([per_bead(b) for b in cb.mapping.beads], cb.block.count)
                               for cb in self.blocks])

    @cached_property
    def bead_names(self) -> np.ndarray:
        return self._concat(lambda b: b.name)

    @cached_property
    def bead_types(self) -> np.ndarray:
        return self._concat(lambda b: b.type)

    @cached_property
    def resnames(self) -> np.ndarray:
        return np.concatenate([np.full(cb.n_beads, cb.mapping.name) for cb in self.blocks])

    @cached_property
    def resids(self) -> np.ndarray:
        """One residue per CG molecule, numbered from 1."""
        sizes = np.concatenate([np.full(cb.block.count, cb.mapping.n_beads) for cb in self.blocks])
        return np.repeat(np.arange(1, len(sizes) + 1), sizes)

    def _global(self, attr: str, width: int) -> np.ndarray:
        """CG bonded tuples of every molecule as global bead indices, (n, width)."""
        out = [np.zeros((0, width), int)]
        for cb in self.blocks:
            local = np.asarray(getattr(cb.mapping, attr), int).reshape(-1, width)
            offs = cb.first_bead + cb.mapping.n_beads * np.arange(cb.block.count)
            out.append((local[None] + offs[:, None, None]).reshape(-1, width))
        return np.concatenate(out)

    @cached_property
    def bonds(self) -> np.ndarray:
        """(n_bonds, 2) global bead indices of all CG bonds."""
        return self._global("bonds", 2)

    @cached_property
    def angles(self) -> np.ndarray:
        """(n_angles, 3) global bead indices of all CG angles."""
        return self._global("angles", 3)

    def sum_forces(self, forces: np.ndarray) -> np.ndarray:
        """Bead forces (..., n_beads, 3): the AA forces summed over the atoms whose home bead it
        is (thesis eq. 6.3). Every atom counts once, so the total force is conserved."""
        lead = forces.shape[:-2]
        out = []
        for cb in self.blocks:
            mt, mm = cb.block.moltype, cb.mapping
            f = forces[..., cb.block.atom_slice, :].reshape(*lead, cb.block.count, mt.n_atoms, 3)
            home = np.zeros((mm.n_beads, mt.n_atoms))
            home[mm.home, np.arange(mt.n_atoms)] = 1.0
            out.append(np.einsum("...cai,ba->...cbi", f, home).reshape(*lead, cb.n_beads, 3))
        return np.concatenate(out, axis=-2)

    def apply(self, positions: np.ndarray) -> np.ndarray:
        """Bead positions (..., n_beads, 3) from whole-molecule AA positions (..., n_atoms, 3)."""
        lead = positions.shape[:-2]
        out = []
        for cb in self.blocks:
            mt = cb.block.moltype
            x = positions[..., cb.block.atom_slice, :].reshape(*lead, cb.block.count, mt.n_atoms, 3)
            out.append(np.einsum("...cai,ba->...cbi", x, cb.mapping.weight_matrix)
                       .reshape(*lead, cb.n_beads, 3))
        return np.concatenate(out, axis=-2)


@dataclass
class Mapping:
    """Mappings of one or more molecule types, read from one or more files."""

    molecules: dict[str, MoleculeMapping]
    sources: list[Path]

    def cg_topology(self, topology: Topology) -> CGTopology:
        return CGTopology(topology, self.molecules)
