"""Which atoms form which observables: term lists derived from the topology, once per evaluation.

Bonded terms come from the force field (``build_parameters(topology).bonded``, so that the
distributions compared are exactly the ones the force field defines) and are grouped by the tuple
of atom *types* in canonical order (a tuple and its reverse are one group). Without parameters
(a ``.tpr`` or ``.gro`` topology) bonds, angles and dihedrals are taken from the bond graph and
impropers are left out.
"""
from __future__ import annotations

from functools import lru_cache

import networkx as nx
import numpy as np

from backmap.system.topology import Topology

FAMILIES = ("bond", "angle", "dihedral", "improper")
#: residue names whose N, CA, C atoms make a peptide backbone ((φ, ψ) maps)
AMINO_ACIDS = frozenset(
    "ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL "
    "HID HIE HIP HSD HSE HSP CYX CYM ASH GLH LYN NALA CALA".split())


def per_atom(topology: Topology, attr: str) -> np.ndarray:
    """A per-atom array of every molecule type (``atom_types``, ``elements``, …) over the system."""
    return np.concatenate([np.tile(getattr(b.moltype, attr), b.count) for b in topology.blocks])


def canonical(keys: tuple[str, ...]) -> tuple[str, ...]:
    """A tuple and its reverse are the same bonded group: keep the smaller of the two."""
    return min(tuple(keys), tuple(reversed(keys)))


def group_by_types(idx: np.ndarray, types: np.ndarray) -> dict[str, np.ndarray]:
    """Rows of ``idx`` (n, k) grouped by the canonical tuple of their atom types, e.g. ``C-C-H``."""
    if len(idx) == 0:
        return {}
    names = np.array(["-".join(canonical(tuple(row))) for row in types[idx].tolist()])
    return {name: idx[names == name] for name in sorted(set(names.tolist()))}


def _unique_rows(idx: np.ndarray) -> np.ndarray:
    """Drop repeated terms (a dihedral listed once per Fourier term), a row and its reverse alike."""
    if len(idx) == 0:
        return idx
    canon = np.where((idx[:, :1] <= idx[:, -1:]), idx, idx[:, ::-1])
    _, first = np.unique(canon, axis=0, return_index=True)
    return idx[np.sort(first)]


def bonded_terms(topology: Topology) -> tuple[dict[str, np.ndarray], str]:
    """Global atom-index arrays per family (bond, angle, dihedral, improper) and where they came
    from ("force field" or "bond graph")."""
    from backmap.errors import BackmapError
    from backmap.forcefield.parameters import build_parameters

    try:
        b = build_parameters(topology).bonded
    except BackmapError:
        return _graph_terms(topology), "bond graph"
    dihedrals = np.concatenate([b["proper"].atoms, b["rb"].atoms]).reshape(-1, 4)
    return {"bond": _unique_rows(b["bond"].atoms), "angle": _unique_rows(b["angle"].atoms),
            "dihedral": _unique_rows(dihedrals), "improper": _unique_rows(b["improper"].atoms)}, "force field"


def _graph_terms(topology: Topology) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {f: [] for f in FAMILIES}
    for block in topology.blocks:
        g = block.moltype.graph
        local = {"bond": [tuple(e) for e in g.edges()], "angle": [], "dihedral": [], "improper": []}
        for j in g.nodes:
            nb = sorted(g[j])
            local["angle"] += [(i, j, k) for a, i in enumerate(nb) for k in nb[a + 1:]]
        for j, k in g.edges():
            local["dihedral"] += [(i, j, k, m) for i in g[j] if i != k for m in g[k] if m not in (j, i)]
        for fam, width in zip(FAMILIES, (2, 3, 4, 4)):
            out[fam].append(block.global_rows(np.asarray(local[fam], int).reshape(-1, width)))
    return {fam: _unique_rows(np.concatenate(v)) for fam, v in out.items()}


def ring_angles(topology: Topology, idx: np.ndarray) -> np.ndarray:
    """For angles ``idx`` (n, 3): is the vertex atom in a ring (cycle basis of the bond graph)?
    Ring angles are stiffer and get finer bins; this is the rule that reproduces EVALUATION.md's
    numbers (its phenyl C–C–H angles use 0.5° bins although H is not in the ring)."""
    in_ring = np.zeros(topology.n_atoms, bool)
    for mt, first in topology.molecules():
        in_ring[first:first + mt.n_atoms] = _in_ring(mt)
    return in_ring[idx[:, 1]] if len(idx) else np.zeros(0, bool)


@lru_cache(maxsize=32)
def _in_ring(mt) -> np.ndarray:
    flags = np.zeros(mt.n_atoms, bool)
    for cycle in nx.cycle_basis(mt.graph):
        flags[cycle] = True
    return flags


def pairs_within(topology: Topology, n_bonds: int) -> np.ndarray:
    """Sorted keys ``i * n_atoms + j`` (i < j) of all atom pairs at most ``n_bonds`` bonds apart."""
    keys = []
    n = topology.n_atoms
    for block in topology.blocks:
        local = _local_pairs_within(block.moltype, n_bonds)
        glob = block.global_rows(local.reshape(-1, 2))
        keys.append(glob[:, 0].astype(np.int64) * n + glob[:, 1])
    return np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)


@lru_cache(maxsize=32)
def _local_pairs_within(mt, n_bonds: int) -> np.ndarray:
    """Pairs (i < j) of one molecule type at most ``n_bonds`` apart (molecule types hash by identity)."""
    pairs = [(i, j) for i, lengths in nx.all_pairs_shortest_path_length(mt.graph, cutoff=n_bonds)
             for j in lengths if j > i]
    return np.array(sorted(pairs), int).reshape(-1, 2)


def peptide_backbone(topology: Topology) -> np.ndarray:
    """Backbone atoms of every amino-acid residue that has N, CA and C, as global indices
    (n_residues, 5): C of the previous residue, N, CA, C, N of the next residue — the first and last
    are −1 where there is no peptide bond. The neighbours may be capping groups (ACE's C, NME's N:
    alanine dipeptide has one φ and one ψ). φ = columns 0–3, ψ = columns 1–4. Empty without peptides."""
    out = []
    for block in topology.blocks:
        local = _local_backbone(block.moltype)
        if len(local):
            out.append(np.where(np.tile(local >= 0, (block.count, 1)), block.global_rows(local), -1))
    return np.concatenate(out) if out else np.zeros((0, 5), int)


def _local_backbone(mt) -> np.ndarray:
    residues: list[dict] = []
    last = None
    for a in range(mt.n_atoms):
        key = (int(mt.resids[a]), str(mt.resnames[a]))
        if key != last:
            residues.append({"_aa": str(mt.resnames[a]).upper() in AMINO_ACIDS})
            last = key
        name = str(mt.atom_names[a])
        if name in ("N", "CA", "C"):
            residues[-1][name] = a
    g = mt.graph
    ok = [r["_aa"] and all(k in r for k in ("N", "CA", "C")) for r in residues]
    rows = []
    for k, r in enumerate(residues):
        if not ok[k]:
            continue
        # the neighbour across a peptide bond may be a cap (ACE's C, NME's N), not an amino acid
        before = residues[k - 1].get("C", -1) if k > 0 else -1
        after = residues[k + 1].get("N", -1) if k + 1 < len(residues) else -1
        prev = before if before >= 0 and g.has_edge(before, r["N"]) else -1
        nxt = after if after >= 0 and g.has_edge(r["C"], after) else -1
        if prev >= 0 or nxt >= 0:
            rows.append((prev, r["N"], r["CA"], r["C"], nxt))
    return np.array(rows, int).reshape(-1, 5)
