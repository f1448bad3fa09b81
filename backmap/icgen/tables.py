"""Internal-coordinate tables: for every atom of every bead unit, which already known points define
its bond length, bond angle and dihedral.

Each unit atom gets an ordered list of reference *triples* (parent, grandparent, dihedral atom);
at run time the first triple whose points are all known is used. Points are coded in one pool per
unit: the unit's own atoms (slots ``0..U-1``, known once generated, so only earlier ones are
listed), the heavy atoms of other beads within three bonds (slots ``U..U+E-1``, known when the
environment shows them: placed and visible) and three virtual points of the local frame — the
bead centre (origin), a point on the z axis (towards the predecessor bead) and one on the x axis —
which are always known. So a chain's first bead in a forward pass is built in spherical
coordinates around its CG bead, and every other atom from real bonded neighbours (HEroBM's anchor
hierarchy, made explicit and exact).
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch

from backmap.errors import BackmapError
from backmap.refinement.constraints import BondConstraints

VIRTUAL = ("origin", "z", "x")
#: local-frame positions of the virtual points (nm)
VIRTUAL_POSITIONS = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
MAX_TRIPLES = 12


@dataclass
class UnitTable:
    """The reference triples of one bead unit (one molecule type and bead)."""

    moltype: str
    bead: int
    atoms: list[int]  # unit atoms, plan order (molecule-local)
    order: list[int]  # build order: plan slots, each atom after its parent
    external: list[int]  # heavy atoms of other beads that may serve as references (molecule-local)
    triples: np.ndarray  # (U, R, 3) pool codes per build position, -1 = padding row
    bond: np.ndarray  # (U, R) per build position: topology bond length of (atom, parent) (nm), 0 if the parent is virtual
    constrained: np.ndarray  # (U, R) the (atom, parent) bond is held at ``bond`` exactly
    closures: np.ndarray  # (C, 2) pool codes of constrained bonds the tree may leave open
    closure_length: np.ndarray  # (C,)
    masses: np.ndarray  # (U,)
    #: (U, R) chemical signature of each row — bead type, the atom's type and the kind and type of
    #: its three references — what the head is told: equal chemistry shares one embedding
    signature: np.ndarray = None
    #: (U,) the unit atoms' weights in their own bead's mapping; all zero when the bead also
    #: depends on atoms outside the unit (then its centre cannot be matched by moving the unit)
    centre_weights: np.ndarray = None

    @property
    def pool_size(self) -> int:
        return len(self.atoms) + len(self.external) + len(VIRTUAL)

    def to_json(self) -> dict:
        return {"moltype": self.moltype, "bead": self.bead, "atoms": self.atoms, "order": self.order,
                "external": self.external,
                "triples": self.triples.tolist(), "bond": self.bond.tolist(), "constrained": self.constrained.tolist(),
                "closures": self.closures.tolist(), "closure_length": self.closure_length.tolist(),
                "masses": self.masses.tolist(), "signature": self.signature.tolist(),
                "centre_weights": self.centre_weights.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> UnitTable:
        return cls(d["moltype"], int(d["bead"]), list(d["atoms"]), list(d["order"]), list(d["external"]),
                   np.asarray(d["triples"], int).reshape(len(d["atoms"]), -1, 3),
                   np.asarray(d["bond"], float).reshape(len(d["atoms"]), -1),
                   np.asarray(d["constrained"], bool).reshape(len(d["atoms"]), -1),
                   np.asarray(d["closures"], int).reshape(-1, 2), np.asarray(d["closure_length"], float),
                   np.asarray(d["masses"], float), np.asarray(d["signature"], object).reshape(len(d["atoms"]), -1),
                   np.asarray(d["centre_weights"], float))


def bond_lengths(moltype) -> dict[tuple[int, int], float]:
    """Equilibrium length of every bond of a molecule type (nm), from its force field; none for a
    topology without parameters (.tpr/.gro), whose bonds are then all sampled (constraints: none)."""
    from backmap.forcefield.parameters import molecule_terms

    if moltype.parameters is None:
        return {}
    atoms, params = molecule_terms(moltype)["bond"]
    out = {}
    for (i, j), (b0, _k) in zip(atoms, params):
        out[(i, j)] = out[(j, i)] = float(b0)
    return out


def is_constrained(elements, i: int, j: int, constraints: str) -> bool:
    """Whether the MD held bond i–j fixed (GROMACS' ``constraints`` option)."""
    if constraints == "all-bonds":
        return True
    if constraints == "h-bonds":
        return elements[i] == "H" or elements[j] == "H"
    return False


def unit_table(moltype, mapping, unit_atoms: tuple[int, ...], bead: int, constraints: str) -> UnitTable:
    """The reference triples of one bead unit (``unit_atoms`` in plan order)."""
    g: nx.Graph = moltype.graph
    elements = moltype.elements
    lengths = bond_lengths(moltype)
    if not lengths and constraints != "none" and len(moltype.bonds):
        raise BackmapError(f"molecule type {moltype.name}: constraints '{constraints}' need the bond lengths of a "
                           "force field; give the GROMACS .top as system.topology, or constraints: none")
    atoms = [int(a) for a in unit_atoms]
    U = len(atoms)
    slot = {a: t for t, a in enumerate(atoms)}
    near = set()
    for a in atoms:
        near.update(nx.single_source_shortest_path_length(g, a, cutoff=3))
    external = sorted(a for a in near if a not in slot and elements[a] != "H")
    ext_slot = {a: U + k for k, a in enumerate(external)}
    code = {**slot, **ext_slot}
    origin, zpt, xpt = (U + len(external) + k for k in range(3))

    order = build_order(g, elements, atoms, set(external))
    rank = {atoms[k]: t for t, k in enumerate(order)}

    def known_before(t: int, a: int) -> bool:  # unit atoms must be built before build position t
        return a in ext_slot or (a in rank and rank[a] < t)

    def ranked(candidates, t: int) -> list[int]:  # earlier unit atoms first (in build order), then external
        c = [a for a in candidates if known_before(t, a)]
        return sorted(c, key=lambda a: (a not in rank, rank.get(a, 0), a))

    types = [str(x) for x in moltype.atom_types]
    bead_type = str(mapping.beads[bead].type)

    def describe(c: int) -> str:
        if c >= U + len(external):
            return VIRTUAL[c - U - len(external)]
        return ("unit:" if c < U else "ext:") + types[atoms[c] if c < U else external[c - U]]

    signature = np.full((U, MAX_TRIPLES), "", dtype=object)
    triples = np.full((U, MAX_TRIPLES, 3), -1)
    bond = np.zeros((U, MAX_TRIPLES))
    constrained = np.zeros((U, MAX_TRIPLES), bool)
    for t, a in enumerate(atoms[k] for k in order):
        rows: list[tuple[int, int, int]] = []
        for p in ranked(g.neighbors(a), t):
            for gp in ranked((n for n in g.neighbors(p) if n != a), t):
                # a sibling (another neighbour of the parent) first: its improper-like dihedral is
                # set by the parent's geometry (±120° at sp3, 180° at sp2) and nearly sharp; a
                # proper torsion (a neighbour of the grandparent) is a conformational choice
                for d in ranked((n for n in g.neighbors(p) if n not in (a, gp)), t) + \
                        ranked((n for n in g.neighbors(gp) if n not in (a, p)), t):
                    rows.append((code[p], code[gp], code[d]))
                rows.append((code[p], code[gp], xpt))
            rows.append((code[p], zpt, xpt))
        rows.append((origin, zpt, xpt))
        seen, unique = set(), []
        for r in rows:
            if r not in seen:
                seen.add(r)
                unique.append(r)
        unique = unique[:MAX_TRIPLES - 1] + ([(origin, zpt, xpt)] if (origin, zpt, xpt) not in unique[:MAX_TRIPLES - 1] else [])
        for r, (p, gp, d) in enumerate(unique):
            triples[t, r] = (p, gp, d)
            signature[t, r] = f"{bead_type}|{types[a]}|" + "|".join(describe(c) for c in (p, gp, d))
            if p < U + len(external):
                other = atoms[p] if p < U else external[p - U]
                bond[t, r] = lengths.get((a, other), 0.0)
                constrained[t, r] = bond[t, r] > 0 and is_constrained(elements, a, other, constraints)
    # constrained bonds a tree may leave open: every bond of a unit atom to an earlier unit atom or an
    # external reference (the projection enforces those whose ends are known)
    closures, closure_length = [], []
    for t, a in enumerate(atoms[k] for k in order):
        for n in g.neighbors(a):
            if (n in rank and rank[n] < t or n in ext_slot) and is_constrained(elements, a, n, constraints):
                closures.append((slot[a], code[n]))
                closure_length.append(lengths[(a, n)])
    return UnitTable(moltype.name, int(bead), atoms, order, external, triples, bond, constrained,
                     np.asarray(closures, int).reshape(-1, 2), np.asarray(closure_length, float),
                     np.asarray(moltype.masses[atoms], float), signature, _centre_weights(mapping, bead, atoms))


def _centre_weights(mapping, bead: int, atoms: list[int]) -> np.ndarray:
    """The weights of ``atoms`` in ``bead``'s mapping if they are all of it, else zeros."""
    w = mapping.weight_matrix[bead]
    inside = w[atoms]
    return inside if np.isclose(inside.sum(), w.sum()) and w.sum() > 0 else np.zeros(len(atoms))


def build_order(g: nx.Graph, elements, atoms: list[int], external: set[int]) -> list[int]:
    """Plan slots of ``atoms`` in an order that builds every atom from one built before it: from
    the first plan atom bonded to another bead (the plan's first atom when it is: it touches what
    the forward pass placed before), breadth-first, heavy atoms before hydrogens. So a bead's
    atoms hang from its bond to the rest of the chain whenever that is known — in Gibbs sweeps
    also for the traversal's first bead — and a tree bond, not a projection, holds it there."""
    inside = set(atoms)
    touching = [k for k, a in enumerate(atoms) if any(n in external for n in g.neighbors(a))]
    start = atoms[touching[0]] if touching else atoms[0]
    sub = g.subgraph(atoms)
    seen = [start] + [b for _a, b in nx.bfs_edges(sub, start)]
    seen += [a for a in atoms if a not in seen]  # a bead in pieces (not bonded within): the rest, in plan order
    seen = [a for a in seen if elements[a] != "H"] + [a for a in seen if elements[a] == "H"]
    assert set(seen) == inside
    return [atoms.index(a) for a in seen]


def system_tables(cg_topology, plans, constraints: str) -> list[UnitTable]:
    """One table per (molecule type, bead unit) of the system's plans."""
    tables = []
    for cb in cg_topology.blocks:
        mt = cb.block.moltype
        if any(t.moltype == mt.name for t in tables):
            continue
        for unit in plans[mt.name].units:
            tables.append(unit_table(mt, cb.mapping, unit.atoms, unit.bead, constraints))
    return tables


def bead_keys(cg_topology, tables: list[UnitTable]) -> np.ndarray:
    """(n_beads,) index of the table of every global bead (for training sequences)."""
    index = {(t.moltype, t.bead): k for k, t in enumerate(tables)}
    out = np.full(cg_topology.n_beads, -1)
    for cb in cg_topology.blocks:
        n = cb.mapping.n_beads
        for m in range(cb.block.count):
            for b in range(n):
                out[cb.first_bead + m * n + b] = index.get((cb.block.moltype.name, b), -1)
    return out


class Tables:
    """The unit tables packed into padded tensors (pool layout: U_max unit slots, E_max external
    atoms, 3 virtual points), shared by training and inference."""

    def __init__(self, tables: list[UnitTable], U: int | None = None, E: int | None = None,
                 signatures: list[str] | None = None):
        """``U``, ``E``: the pool's unit and external slots (the networks' widths depend on them;
        default: what ``tables`` need); ``signatures``: the slot vocabulary in order (default:
        the tables' signatures, sorted), which must hold every signature of ``tables``."""
        self.tables = tables
        self.index = {(t.moltype, t.bead): k for k, t in enumerate(tables)}
        N = len(tables)
        need_u, need_e = max(len(t.atoms) for t in tables), max(max(len(t.external) for t in tables), 1)
        if (U is not None and need_u > U) or (E is not None and need_e > E):
            worst = max(tables, key=lambda t: (len(t.atoms) > (U or need_u), len(t.external)))
            raise BackmapError(f"equivariant: bead {worst.bead} of {worst.moltype} has {len(worst.atoms)} atoms and "
                               f"{len(worst.external)} bonded atoms of other beads; the model has room for {U} and {E} "
                               "(train it with larger max_unit_atoms / max_external_atoms)")
        self.U = U = U or need_u
        self.E = E = E or need_e
        self.R = R = tables[0].triples.shape[1]
        self.P = U + E + 3
        self.triples = torch.full((N, U, R, 3), -1, dtype=torch.long)
        self.bond = torch.zeros(N, U, R)
        self.constrained = torch.zeros(N, U, R, dtype=torch.bool)
        self.external = torch.full((N, E), -1, dtype=torch.long)
        self.first = torch.zeros(N, dtype=torch.long)
        self.order = torch.arange(U).repeat(N, 1)  # build position -> plan slot (padding: itself)
        self.rank = torch.full((N, U), U, dtype=torch.long)  # plan slot -> build position (padding: never built)
        for k, t in enumerate(tables):
            self.order[k, :len(t.atoms)] = torch.as_tensor(t.order)
            self.rank[k, torch.as_tensor(t.order)] = torch.arange(len(t.atoms))
            u, e = len(t.atoms), len(t.external)
            codes = torch.as_tensor(t.triples)
            remap = torch.cat([torch.arange(u), U + torch.arange(e), U + E + torch.arange(3)])
            self.triples[k, :u] = torch.where(codes >= 0, remap[codes.clamp(min=0)], codes)
            self.bond[k, :u] = torch.as_tensor(t.bond, dtype=torch.float32)
            self.constrained[k, :u] = torch.as_tensor(t.constrained)
            self.external[k, :e] = torch.as_tensor(t.external)
            self.first[k] = t.atoms[0]
        # rows of equal chemistry share one slot (embedding, reference angle): the ten phenyl
        # beads of a chain, both ends of hexane, every ring hydrogen's row of the same kind
        self.signatures = list(signatures) if signatures is not None else \
            sorted({str(x) for t in tables for x in t.signature.ravel() if x})
        vocab = {sig: i for i, sig in enumerate(self.signatures)}
        self.slot = torch.zeros(N, U, R, dtype=torch.long)
        for k, t in enumerate(tables):
            for (a, r), sig in np.ndenumerate(t.signature):
                if sig:
                    self.slot[k, a, r] = vocab[str(sig)]
        self.n_slots = len(self.signatures)
        self.virtual = torch.as_tensor(VIRTUAL_POSITIONS, dtype=torch.float32)
        self._projections: dict = {}
        self._structures: dict[int, int] = {}  # table key -> structure id
        self._structure_ids: dict[tuple, int] = {}  # signature -> structure id

    def structure(self, key: int) -> int:
        """An id shared by the tables built alike — the same build order, closures, masses and
        mapping weights (a chain's middle beads): units of those can be drawn in one batch."""
        if key not in self._structures:
            t = self.tables[key]
            signature = (self.order[key].numpy().tobytes(), self.rank[key].numpy().tobytes(), len(t.atoms),
                         *(np.asarray(a, float).tobytes() for a in (t.closures, t.closure_length, t.masses,
                                                                     t.centre_weights)))
            self._structures[key] = self._structure_ids.setdefault(signature, len(self._structure_ids))
        return self._structures[key]

    def key(self, moltype: str, bead: int) -> int:
        k = self.index.get((moltype, int(bead)))
        if k is None:
            raise BackmapError(f"equivariant: the model has no table for bead {bead} of molecule type {moltype!r} "
                               "(trained on another system or plan?)")
        return k

    def external_positions(self, keys, target_atoms, atom_index, atom_mask, atom_positions, atom_types=None):
        """(B, E, 3) positions and (B, E) found-flags of each unit's external reference atoms in
        its environment (placed and visible); with ``atom_types`` also their (B, E) type channels."""
        first = target_atoms[:, 0] - self.first[keys]
        ext = self.external[keys]
        glob = torch.where(ext >= 0, first[:, None] + ext, torch.full_like(ext, -2))
        match = (atom_index[:, None, :] == glob[:, :, None]) & atom_mask[:, None, :]
        out = match.to(atom_positions.dtype) @ atom_positions, match.any(-1)
        if atom_types is None:
            return out
        return (*out, (match.long() * atom_types[:, None, :]).sum(-1))

    def choose(self, keys, found):
        """Per unit atom the first reference triple whose points are known: codes (B, U, 3),
        slot ids, bond lengths and rigid flags (B, U)."""
        B = keys.shape[0]
        avail = torch.cat([torch.ones(B, self.U, dtype=torch.bool), found, torch.ones(B, 3, dtype=torch.bool)], 1)
        codes = self.triples[keys]
        ok = (codes >= 0).all(-1) & avail.gather(1, codes.clamp(min=0).view(B, -1)).view(codes.shape).all(-1)
        row = ok.to(torch.int8).argmax(-1)  # (B, U): first usable row (the last, all-virtual one always is)

        def pick(x):
            xk = x[keys]
            if xk.ndim == 3:
                return xk.gather(2, row[..., None])[..., 0]
            return xk.gather(2, row[..., None, None].expand(-1, -1, 1, xk.shape[-1]))[:, :, 0]

        return pick(self.triples).clamp(min=0), pick(self.slot), pick(self.bond), pick(self.constrained)  # padding atoms: any point

    def projection(self, key: int, active: np.ndarray) -> tuple[BondConstraints, torch.Tensor] | None:
        """The SHAKE solver of table ``key``'s rigid closures whose ends are known (``active``), on
        just the pool points they involve, and those points' pool indices."""
        cache_key = (key, active.tobytes())
        if cache_key not in self._projections:
            with torch.inference_mode(False):  # kept for training too: no inference tensors in it
                self._projections[cache_key] = self._make_projection(key, active)
        return self._projections[cache_key]

    def _make_projection(self, key: int, active: np.ndarray) -> tuple[BondConstraints, torch.Tensor] | None:
        t = self.tables[key]
        u = len(t.atoms)
        codes = np.where(t.closures < u, t.closures, t.closures - u + self.U)[active]
        if not len(codes):
            return None
        points = np.unique(codes)
        masses = np.where(points < u, np.asarray(t.masses)[np.minimum(points, u - 1)], np.inf)
        # relative tolerance 1e-7 on r²: below what float32 positions resolve
        solver = BondConstraints(np.searchsorted(points, codes), t.closure_length[active], masses,
                                 tolerance=1e-7, max_iterations=30)
        return solver, torch.as_tensor(points)
