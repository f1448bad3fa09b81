"""The resolution bottleneck e_s of morphing (thesis ch. 7): every group of ``s`` consecutive
particles along a chain becomes one bead at the group's centre of mass.

The bottleneck is an ordinary AA → CG mapping of the fine (top-down / target) resolution, so the
whole engine — pairs, training, sampling, evaluation — runs on it unchanged. It is written as VOTCA
mapping XML (:func:`write_votca_mapping`) so that a model stores it like any other mapping and
``csg_map`` can read it too. Chains are followed along their bonds (not the topology order) and
periodic images are handled where positions are mapped (molecules are made whole first).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import networkx as nx
import numpy as np

from backmap.errors import BackmapError
from backmap.system.io import atomic_path
from backmap.system.mapping import Bead, Mapping, MoleculeMapping
from backmap.system.topology import MoleculeType, Topology


def chain_order(moltype: MoleculeType) -> np.ndarray:
    """The particles of a linear molecule in bond order, from the end with the lower index.
    Branched or disconnected molecules have no unique order of 'consecutive' particles: an error."""
    g = moltype.graph
    n = moltype.n_atoms
    if n == 1:
        return np.zeros(1, int)
    if not nx.is_connected(g):
        parts = sorted(len(c) for c in nx.connected_components(g))
        raise BackmapError(f"bottleneck mapping: molecule type {moltype.name} is not one bonded chain "
                           f"({len(parts)} fragments of sizes {parts})")
    branch = [i for i, d in g.degree() if d > 2]
    if branch or g.number_of_edges() != n - 1:
        where = (f"particle {branch[0] + 1} ({moltype.atom_names[branch[0]]}) has {g.degree(branch[0])} bonds"
                 if branch else "it contains a ring")
        raise BackmapError(f"bottleneck mapping: molecule type {moltype.name} is not a linear chain: {where}; "
                           "consecutive groups are only defined along an unbranched chain")
    ends = sorted(i for i, d in g.degree() if d == 1)
    return np.array(list(nx.dfs_preorder_nodes(g, ends[0])), int)


def bottleneck_molecule(moltype: MoleculeType, s: int) -> MoleculeMapping:
    """Beads ``E1, E2, …`` of ``s`` consecutive particles (mass-weighted; equal weights if the
    topology has no masses); a shorter last group when ``s`` does not divide the chain length gets
    its own bead type (``E<s>`` for full groups, ``E<k>`` for a remainder of k)."""
    if s < 1:
        raise BackmapError(f"bottleneck: s must be ≥ 1 (got {s})")
    order = chain_order(moltype)
    masses = np.asarray(moltype.masses, float)
    beads = []
    for k, start in enumerate(range(0, len(order), s)):
        atoms = order[start:start + s]
        w = masses[atoms] if (masses[atoms] > 0).all() else np.ones(len(atoms))
        beads.append(Bead(f"E{k + 1}", f"E{len(atoms)}", atoms, w / w.sum()))
    n = len(beads)
    return MoleculeMapping(moltype, moltype.name, beads,
                           bonds=[(k, k + 1) for k in range(n - 1)],
                           angles=[(k, k + 1, k + 2) for k in range(n - 2)])


def bottleneck_mapping(topology: Topology, s: int) -> Mapping:
    """The bottleneck e_s for every molecule type of ``topology``."""
    return Mapping({name: bottleneck_molecule(mt, s) for name, mt in topology.moltypes.items()}, [])


def write_votca_mapping(mapping: Mapping, path: Path, comment: str = "") -> Path:
    """VOTCA mapping XML (``<cg_molecules>`` of ``<cg_molecule>``) for ``mapping``, readable by
    backmap's reader and by ``csg_map``. Written atomically."""
    root = ET.Element("cg_molecules")
    if comment:
        root.append(ET.Comment(f" {comment} "))
    for mm in mapping.molecules.values():
        mt = mm.moltype
        mol = ET.SubElement(root, "cg_molecule")
        ET.SubElement(mol, "name").text = mm.name
        ET.SubElement(mol, "ident").text = mt.name
        topo = ET.SubElement(mol, "topology")
        cg_beads = ET.SubElement(topo, "cg_beads")
        maps = ET.Element("maps")
        for bead in mm.beads:
            node = ET.SubElement(cg_beads, "cg_bead")
            ET.SubElement(node, "name").text = bead.name
            ET.SubElement(node, "type").text = bead.type
            ET.SubElement(node, "mapping").text = f"map_{bead.name}"
            ET.SubElement(node, "beads").text = " ".join(
                f"{mt.resids[i]}:{mt.resnames[i]}:{mt.atom_names[i]}" for i in bead.atoms)
            m = ET.SubElement(maps, "map")
            ET.SubElement(m, "name").text = f"map_{bead.name}"
            ET.SubElement(m, "weights").text = " ".join(f"{w:.10g}" for w in bead.weights)
        bonded = ET.SubElement(topo, "cg_bonded")
        names = [b.name for b in mm.beads]
        for kind, tuples in (("bond", mm.bonds), ("angle", mm.angles), ("dihedral", mm.dihedrals)):
            if len(tuples):
                node = ET.SubElement(bonded, kind)
                ET.SubElement(node, "name").text = kind
                ET.SubElement(node, "beads").text = "\n".join(" ".join(names[i] for i in t) for t in tuples)
        mol.append(maps)
    ET.indent(root)
    with atomic_path(Path(path)) as tmp:
        ET.ElementTree(root).write(tmp, encoding="unicode", xml_declaration=False)
    return Path(path)
