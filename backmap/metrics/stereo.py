"""Stereochemistry: which atoms are stereocentres and which bonds are cis/trans-isomeric (RDKit),
and their configuration in each frame (signed volumes and dihedrals, numpy).

RDKit perceives the stereo elements once per molecule type, from elements and bonds: bond orders
are determined from connectivity (``rdDetermineBonds.DetermineBondOrders``, all-atom molecules)
and ``Chem.FindPotentialStereo`` lists tetrahedral centres and stereo double bonds. The
configuration of a centre in a frame is then the sign of the signed volume of three of its
neighbours in a fixed order, and of a double bond the sign of cos of the dihedral between one
substituent on each side (+1 cis, −1 trans). For one molecule the neighbour order is fixed, so
"same sign as in the reference" is exactly "same CIP label (R/S, E/Z) as in the reference" —
without RDKit's per-frame cost (checked against ``AssignStereochemistryFrom3D`` in the tests).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from backmap.metrics.geometry import dihedrals, signed_volumes
from backmap.system.topology import MoleculeType, Topology

log = logging.getLogger(__name__)


@dataclass
class StereoElements:
    """Global atom indices: ``centres`` rows (centre, a, b, d), ``double_bonds`` rows (a, b, c, d)
    with b=c the double bond; ``notes``: what could not be perceived and why."""

    centres: np.ndarray
    double_bonds: np.ndarray
    notes: list[str] = field(default_factory=list)


def perceive(topology: Topology, whole_positions: np.ndarray) -> StereoElements:
    """Stereo elements of every molecule, perceived once per molecule type (coordinates of its first
    molecule, nm, help RDKit determine bond orders)."""
    centres, bonds, notes = [], [], []
    for block in topology.blocks:
        mt = block.moltype
        x0 = whole_positions[block.first_atom:block.first_atom + mt.n_atoms]
        c, b, note = molecule_stereo(mt, x0)
        if note:
            notes.append(f"{mt.name}: {note}")
        centres.append(block.global_rows(c))
        bonds.append(block.global_rows(b))
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros((0, 4), int)  # noqa: E731
    return StereoElements(cat(centres), cat(bonds), notes)


def molecule_stereo(mt: MoleculeType, x_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Stereocentre rows (centre, a, b, d) and stereo double bonds (a, b, c, d) of one molecule type,
    local indices, with a note on what could not be perceived."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    RDLogger.DisableLog("rdApp.*")
    all_atom = "H" in set(mt.elements.tolist())
    rw = Chem.RWMol()
    table = Chem.GetPeriodicTable()
    for e in mt.elements.tolist():
        try:
            z = table.GetAtomicNumber(str(e).capitalize()) if e not in ("X", "") else 0
        except RuntimeError:
            z = 0
        atom = Chem.Atom(z)
        atom.SetNoImplicit(all_atom)  # united atoms carry their hydrogens implicitly
        rw.AddAtom(atom)
    for i, j in mt.bonds.tolist():
        rw.AddBond(int(i), int(j), Chem.BondType.SINGLE)
    mol = rw.GetMol()
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, p in enumerate(np.asarray(x_nm, float) * 10.0):
        conf.SetAtomPosition(i, Point3D(*map(float, p)))
    mol.AddConformer(conf, assignId=True)
    note = ""
    if all_atom:
        try:
            rdDetermineBonds.DetermineBondOrders(mol, charge=int(round(float(mt.charges.sum()))))
        except Exception as exc:  # RDKit raises several types for unusual chemistry
            note = f"bond orders not determined ({exc}); single bonds assumed, cis/trans not checked"
            log.info("stereo %s: %s", mt.name, note)
            mol = rw.GetMol()
    else:
        note = "united-atom model: hydrogens implicit, ring atoms not checked"
    try:
        Chem.SanitizeMol(mol)
    except Exception:  # keep going with what RDKit could perceive
        Chem.SanitizeMol(mol, Chem.SanitizeFlags.SANITIZE_ALL ^ Chem.SanitizeFlags.SANITIZE_PROPERTIES,
                         catchErrors=True)
    ring_info = mol.GetRingInfo()
    n = mol.GetNumAtoms()  # RDKit marks "no atom" with 2**32 − 1
    centres, bonds = [], []
    for info in Chem.FindPotentialStereo(mol):
        ctrl = [a for a in info.controllingAtoms if a < n]
        if info.type == Chem.StereoType.Atom_Tetrahedral and len(ctrl) >= 3:
            if not all_atom and ring_info.NumAtomRings(info.centeredOn):
                continue  # implicit-H ring atoms: planar aromatic ones would look chiral
            centres.append([info.centeredOn, *ctrl[:3]])
        elif info.type == Chem.StereoType.Bond_Double:
            bond = mol.GetBondWithIdx(info.centeredOn)
            b, c = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            raw = list(info.controllingAtoms)
            a = next((k for k in raw[:2] if k < n), None)
            d = next((k for k in raw[2:] if k < n), None)
            if a is not None and d is not None:
                bonds.append([a, b, c, d])
    return np.array(centres, int).reshape(-1, 4), np.array(bonds, int).reshape(-1, 4), note


def chirality(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Handedness (+1/−1, 0 if planar) of every centre in frames ``x`` (B, N, 3), as int8 (B, n)."""
    return np.sign(signed_volumes(x, centres)).astype(np.int8)


def cis_trans(x: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """+1 (cis, |dihedral| < 90°) or −1 (trans) for every stereo double bond, as int8 (B, n)."""
    return np.where(np.abs(dihedrals(x, bonds)) < 90.0, 1, -1).astype(np.int8)


def backbone_centres(mt: MoleculeType, x_nm: np.ndarray) -> np.ndarray:
    """Local rows (centre, previous, next, side, hydrogen) of a molecule type's tetrahedral
    stereocentres on its backbone, in chain order: the backbone is the longest path through its
    heavy atoms outside rings; ``side`` is the centre's heavy neighbour off it, ``hydrogen`` its
    fourth neighbour. Empty if the molecule has no such centre."""
    graph = mt.graph
    heavy = [i for i in graph.nodes if mt.elements[i] != "H"]
    in_ring = {i for cycle in nx.cycle_basis(graph.subgraph(heavy)) for i in cycle}
    chain = graph.subgraph([i for i in heavy if i not in in_ring])
    path: list[int] = []
    for part in nx.connected_components(chain):  # a forest: the longest path by two sweeps
        tree = chain.subgraph(part)
        end = max(nx.single_source_shortest_path_length(tree, min(part)).items(), key=lambda kv: (kv[1], -kv[0]))[0]
        longest = nx.single_source_shortest_path(tree, end)
        far = max(longest, key=lambda k: (len(longest[k]), -k))
        if len(longest[far]) > len(path):
            path = longest[far]
    stereo = {int(c) for c in molecule_stereo(mt, x_nm)[0][:, 0]}
    rows = []
    for k in range(1, len(path) - 1):
        c = path[k]
        if c not in stereo:
            continue
        others = [n for n in graph.neighbors(c) if n not in (path[k - 1], path[k + 1])]
        side = [n for n in others if mt.elements[n] != "H"]
        hyd = [n for n in others if mt.elements[n] == "H"]
        if len(side) == 1 and len(hyd) == 1:
            rows.append([c, path[k - 1], path[k + 1], side[0], hyd[0]])
    return np.array(rows, int).reshape(-1, 5)


def backbone_dyads(topology: Topology, whole_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global rows (centre, previous, next, side) of every molecule's backbone stereocentres
    (:func:`backbone_centres`) and the pairs (m, 2) of row indices of neighbouring centres on one
    chain: a polymer's dyads, whose relative configuration (meso or racemo) is its tacticity."""
    rows, pairs, n = [], [], 0
    for block in topology.blocks:
        mt = block.moltype
        local = backbone_centres(mt, whole_positions[block.first_atom:block.first_atom + mt.n_atoms])[:, :4]
        for m in range(block.count if len(local) else 0):
            rows.append(local + block.first_atom + m * mt.n_atoms)
            pairs += [(n + k, n + k + 1) for k in range(len(local) - 1)]
            n += len(local)
    return (np.concatenate(rows) if rows else np.zeros((0, 4), int)), np.array(pairs, int).reshape(-1, 2)


def dyads(x: np.ndarray, rows: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """+1 (meso: the two centres with the same hand seen along the chain) or −1 (racemo) for every
    dyad of :func:`backbone_dyads` in frames ``x`` (B, N, 3), as int8 (B, m); isotactic chains are
    all meso, syndiotactic all racemo, whichever their phase."""
    hand = np.sign(signed_volumes(x, rows))
    return (hand[:, pairs[:, 0]] * hand[:, pairs[:, 1]]).astype(np.int8)
