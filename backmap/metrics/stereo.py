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
