"""The AA system model: molecule types (atoms, bonds, one bond graph each) and their counts.

Readers (``backmap_formats``) build it from GROMACS ``.top``/``.itp`` (parmed), ``.tpr`` and
``.gro``/``.pdb`` (MDAnalysis). Force-field parameters, where the format has them, are kept
untouched in :attr:`MoleculeType.parameters` (a parmed structure) and :attr:`Topology.defaults`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import networkx as nx
import numpy as np

from backmap.errors import BackmapError



@dataclass(eq=False)
class MoleculeType:
    """One molecule type: per-atom arrays (0-based, in topology order) and its bonds."""

    name: str
    atom_names: np.ndarray
    atom_types: np.ndarray
    elements: np.ndarray
    masses: np.ndarray
    charges: np.ndarray
    resids: np.ndarray  # residue number within the molecule, as written in the topology
    resnames: np.ndarray
    bonds: np.ndarray  # (n_bonds, 2) atom indices
    nrexcl: int | None = None
    parameters: Any = None  # parmed.Structure of this molecule type, when the format has parameters
    #: explicit [ exclusions ] pairs (atom indices), beyond those implied by nrexcl
    exclusions: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), int))

    @property
    def n_atoms(self) -> int:
        return len(self.atom_names)

    @cached_property
    def graph(self) -> nx.Graph:
        """Bond graph; nodes are atom indices carrying name, type, element and mass."""
        g = nx.Graph(name=self.name)
        for i in range(self.n_atoms):
            g.add_node(
                i,
                name=str(self.atom_names[i]),
                type=str(self.atom_types[i]),
                element=str(self.elements[i]),
                mass=float(self.masses[i]),
            )
        g.add_edges_from(map(tuple, self.bonds.tolist()))
        return g

    @cached_property
    def _lookup(self) -> dict[tuple[int, str, str], int]:
        return {
            (int(r), str(rn), str(n)): i
            for i, (r, rn, n) in enumerate(zip(self.resids, self.resnames, self.atom_names))
        }

    def find_atom(self, resid: int, resname: str, name: str) -> int | None:
        """Index of the atom ``resid:resname:name`` (VOTCA's notation), or None."""
        return self._lookup.get((resid, resname, name))

    def label(self, i: int) -> str:
        return f"{self.resids[i]}:{self.resnames[i]}:{self.atom_names[i]}"


@dataclass
class MoleculeBlock:
    """``count`` consecutive copies of one molecule type, starting at atom ``first_atom``."""

    moltype: MoleculeType
    count: int
    first_atom: int

    @property
    def n_atoms(self) -> int:
        return self.count * self.moltype.n_atoms

    @property
    def atom_slice(self) -> slice:
        return slice(self.first_atom, self.first_atom + self.n_atoms)

    def global_rows(self, local: np.ndarray) -> np.ndarray:
        """System atom indices (count·T, k) of rows of local atom indices (T, k) — bonds, angles,
        stereocentres — for every copy, molecule after molecule."""
        local = np.asarray(local, int)
        offsets = self.first_atom + self.moltype.n_atoms * np.arange(self.count)
        return (local[None] + offsets[:, None, None]).reshape(-1, local.shape[-1])


@dataclass
class Topology:
    """A whole system: molecule blocks in file order."""

    source: Path
    blocks: list[MoleculeBlock]
    defaults: dict[str, Any] | None = None  # nbfunc, comb_rule, gen_pairs, fudge_lj, fudge_qq
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return sum(b.n_atoms for b in self.blocks)

    @property
    def n_molecules(self) -> int:
        return sum(b.count for b in self.blocks)

    @property
    def moltypes(self) -> dict[str, MoleculeType]:
        return {b.moltype.name: b.moltype for b in self.blocks}

    def molecules(self) -> Iterator[tuple[MoleculeType, int]]:
        """(molecule type, first atom index) for every molecule in order."""
        for b in self.blocks:
            for k in range(b.count):
                yield b.moltype, b.first_atom + k * b.moltype.n_atoms

    def _concat(self, attr: str) -> np.ndarray:
        return np.concatenate([np.tile(getattr(b.moltype, attr), b.count) for b in self.blocks])

    @cached_property
    def atom_names(self) -> np.ndarray:
        return self._concat("atom_names")

    @cached_property
    def masses(self) -> np.ndarray:
        return self._concat("masses")

    @cached_property
    def atom_types(self) -> np.ndarray:
        return self._concat("atom_types")

    @cached_property
    def resnames(self) -> np.ndarray:
        return self._concat("resnames")

    @cached_property
    def molecule_index(self) -> np.ndarray:
        """Molecule number (0-based, system-wide) of every atom."""
        sizes = np.concatenate([np.full(b.count, b.moltype.n_atoms) for b in self.blocks])
        return np.repeat(np.arange(len(sizes)), sizes)

    def residue_numbers(self) -> np.ndarray:
        """Residue numbers for output files: consecutive over the whole system, as GROMACS writes."""
        out, offset = [], 0
        for b in self.blocks:
            r = b.moltype.resids
            _, local = np.unique(r, return_inverse=True)
            n_res = local.max() + 1
            for k in range(b.count):
                out.append(local + offset + k * n_res + 1)
            offset += b.count * n_res
        return np.concatenate(out) if out else np.zeros(0, int)

    @classmethod
    def concatenate(cls, topologies: list["Topology"]) -> "Topology":
        """Several systems as if side by side in one: their blocks in order, atoms numbered on
        (training on several systems; no frame of this topology ever exists). A molecule type
        may appear in one system only: equal names would be taken for equal molecules."""
        blocks, seen, first = [], {}, 0
        for topo in topologies:
            for b in topo.blocks:
                if seen.setdefault(b.moltype.name, topo.source) != topo.source:
                    raise BackmapError(f"molecule type {b.moltype.name!r} is in two systems ({seen[b.moltype.name]} "
                                       f"and {topo.source}): rename it in one of them", source=topo.source)
                blocks.append(MoleculeBlock(b.moltype, b.count, first + b.first_atom))
            first += topo.n_atoms
        return cls(topologies[0].source, blocks, topologies[0].defaults, {"systems": [str(t.source) for t in topologies]})

    def summary(self) -> str:
        parts = ", ".join(f"{b.count} × {b.moltype.name} ({b.moltype.n_atoms} atoms)" for b in self.blocks)
        return f"{self.n_atoms} atoms: {parts}"


ELEMENT_BY_MASS = [(1.008, "H"), (4.003, "He"), (12.011, "C"), (14.007, "N"), (15.999, "O"),
                   (18.998, "F"), (22.99, "Na"), (24.305, "Mg"), (30.974, "P"), (32.06, "S"),
                   (35.45, "Cl"), (39.098, "K"), (40.078, "Ca"), (79.904, "Br"), (126.9, "I")]


def element_from_mass(mass: float) -> str:
    """Element whose standard mass is nearest (united atoms round to their heavy atom)."""
    best = min(ELEMENT_BY_MASS, key=lambda em: abs(em[0] - mass))
    return best[1] if abs(best[0] - mass) < 3.5 else "X"
