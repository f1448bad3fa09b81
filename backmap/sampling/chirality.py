"""Keeping stereocentres: the handedness of every tetrahedral centre, taken from an AA reference
structure of the system, and a selection penalty for candidates that invert one.

A GROMACS topology does not say which enantiomer a centre is (syndiotactic and isotactic
polystyrene share one ``.top``), and a generator that places a centre's neighbours on the wrong
side inverts it — restrained relaxation cannot undo that. So the handedness comes from a
structure with the right chemistry (any frame of the system: an AA training snapshot, the
structure the CG model was made from). RDKit names the centres (``backmap.metrics.stereo``).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from backmap.errors import BackmapError
from backmap.metrics.geometry import signed_volumes
from backmap.metrics.stereo import backbone_centres, molecule_stereo
from backmap.system.pbc import Unwrapper, minimum_image
from backmap.system.topology import MoleculeType, Topology


@dataclass
class ChiralCentres:
    """Every centre as the signed volumes of each triple of its neighbours: ``rows`` per molecule
    type, local (centre, a, b, d); ``slot`` which triple of its centre a row is (0–3); ``sign``
    (n_atoms, 4) the reference's sign of triple ``slot`` of centre atom i (global index), 0 where
    there is none; ``weight``: kJ/mol added to a candidate's selection energy per triple it flips.

    One triple fixes the handedness of a regular tetrahedron; all of them also catch a hydrogen
    placed on the wrong side of a correct heavy skeleton, which inverts the centre just as well."""

    rows: dict[str, np.ndarray]
    slot: dict[str, np.ndarray]
    sign: np.ndarray
    weight: float = 1e5

    def global_rows(self, topology: Topology) -> tuple[np.ndarray, np.ndarray]:
        """(n, 4) global rows of every centre of the system and their slots (n,)."""
        out, slots = [np.zeros((0, 4), int)], [np.zeros(0, int)]
        for block in topology.blocks:
            rows = self.rows.get(block.moltype.name)
            if rows is not None and len(rows):
                out.append(block.global_rows(rows))
                slots.append(np.tile(self.slot[block.moltype.name], block.count))
        return np.concatenate(out), np.concatenate(slots)

    def touching(self, topology: Topology, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows (U, Q, 4) of the centres whose centre or neighbours include an atom of each unit
        of ``units`` (U, A) global atom indices (-1 padding), and their reference signs (U, Q)
        (-1 rows and 0 signs pad): the centres a move of that unit can invert."""
        rows, slots = self.global_rows(topology)
        sign = self.sign[rows[:, 0], slots] if len(rows) else np.zeros(0, np.int8)
        picked = [np.flatnonzero(np.isin(rows, u[u >= 0]).any(1) & (sign != 0)) for u in np.atleast_2d(units)]
        Q = max((len(p) for p in picked), default=0)
        out = np.full((len(picked), Q, 4), -1, np.int64)
        signs = np.zeros((len(picked), Q), np.int8)
        for k, p in enumerate(picked):
            out[k, :len(p)], signs[k, :len(p)] = rows[p], sign[p]
        return out, signs

    def inversions(self, configs: torch.Tensor, rows: torch.Tensor, signs: torch.Tensor,
                   vectors: np.ndarray | None = None) -> torch.Tensor:
        """Number of triples signed against the reference (C, U) in configurations (C, N, 3) for
        the rows (U, Q, 4) and signs (U, Q) of :meth:`touching`; bond vectors by the minimum image
        of the box ``vectors`` (3, 3), so molecules need not be whole. Times ``weight``, a term of
        a target energy that keeps the reference's hands (a step: it has no gradient)."""
        x = configs[:, rows.clamp(min=0)]  # (C, U, Q, 4, 3)
        d = x[..., 1:, :] - x[..., :1, :]
        if vectors is not None:
            v = torch.as_tensor(np.asarray(vectors, np.float64).reshape(3, 3), dtype=d.dtype)
            d = d - torch.round(d @ torch.linalg.inv(v)) @ v
        vol = (d[..., 0, :] * torch.linalg.cross(d[..., 1, :], d[..., 2, :])).sum(-1)
        return ((vol * signs.to(vol.dtype)) < 0).sum(-1).to(vol.dtype)

    def kept(self, topology: Topology, positions: np.ndarray) -> float:
        """Fraction of centres with the reference handedness in ``positions`` (N, 3), molecules
        whole: every triple of neighbours signed as in the reference."""
        rows, slots = self.global_rows(topology)
        if not len(rows):
            return 1.0
        vol = signed_volumes(np.asarray(positions, float)[None], rows)[0]
        ref = self.sign[rows[:, 0], slots]
        flipped = np.bincount(rows[:, 0], weights=(np.sign(vol) != ref) & (ref != 0), minlength=len(self.sign))
        centres = np.unique(rows[:, 0])
        return float(np.mean(flipped[centres] == 0))


def centre_rows(mt: MoleculeType, x_nm: np.ndarray, centres: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Local (centre, a, b, d) rows of a molecule type's tetrahedral stereocentres (RDKit's, or the
    local atoms ``centres``: e.g. prochiral CH₂ carbons whose hydrogens' labels should stay put),
    one per triple of each centre's bonded neighbours (sorted), and each row's triple index."""
    if centres is None:
        centres = [int(c) for c in molecule_stereo(mt, x_nm)[0][:, 0]]
    rows, slots = [], []
    for c in centres:
        for k, triple in enumerate(combinations(sorted(mt.graph.neighbors(c)), 3)):
            rows.append([c, *triple])
            slots.append(k)
    return np.array(rows, int).reshape(-1, 4), np.array(slots, int)


def chiral_centres(topology: Topology, positions: np.ndarray, weight: float = 1e5,
                   source: str | Path | None = None, centres: dict[str, list[int]] | None = None) -> ChiralCentres:
    """Centres and their handedness in ``positions`` (N, 3) nm of the whole system, molecules
    whole, per molecule (chains of one type may differ). ``centres``: local centre atoms per
    molecule type name instead of RDKit's. A triple that is planar in the reference (sign 0) is
    not restrained."""
    x = np.asarray(positions, float)
    if x.shape != (topology.n_atoms, 3):
        raise BackmapError(f"the stereo reference has {len(x)} atoms, the system {topology.n_atoms}", source=source)
    rows, slots = {}, {}
    for block in topology.blocks:
        mt = block.moltype
        if mt.name not in rows:
            rows[mt.name], slots[mt.name] = centre_rows(mt, x[block.first_atom:block.first_atom + mt.n_atoms],
                                                        None if centres is None else centres.get(mt.name, []))
    cc = ChiralCentres(rows, slots, np.zeros((topology.n_atoms, 4), np.int8), weight)
    g, k = cc.global_rows(topology)
    if len(g):
        cc.sign[g[:, 0], k] = np.sign(signed_volumes(x[None], g)[0])
    return cc


def load_chiral_centres(topology: Topology, path: str | Path, weight: float = 1e5) -> ChiralCentres:
    """:func:`chiral_centres` from the first frame of an AA structure or trajectory file."""
    from backmap.system.io import read_frames

    path = Path(path)
    if not path.is_file():
        raise BackmapError("stereo reference not found", source=path)
    frame = next(iter(read_frames(path, topology.n_atoms, [0], expect="AA system of the topology")))
    whole = Unwrapper(topology)(frame.positions, frame.dimensions)
    return chiral_centres(topology, whole, weight, source=path)


def invert_flipped(centres: ChiralCentres, topology: Topology, positions: np.ndarray,
                   dimensions: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
    """``positions`` (N, 3) nm with the reference's handedness at every centre that has one
    terminal neighbour (a hydrogen; the lightest if several): where the centre's other three
    neighbours are signed against the reference, the centre is reflected through their plane
    (its bond lengths to them stay exact); where any triple is wrong, the hydrogen is put back
    opposite the three, at its bond length — a consistent tetrahedron. Nothing else moves; a
    centre without a terminal neighbour (a quaternary carbon) is left. Distances by the minimum
    image of ``dimensions`` (else molecules must be whole). Returns (positions, centres whose
    skeleton was reflected, centres left)."""
    x = np.array(positions, float, copy=True)
    rows, slots = centres.global_rows(topology)
    if not len(rows):
        return x, 0, 0
    vol = signed_volumes(x[None], rows)[0]
    ref = centres.sign[rows[:, 0], slots]
    n = len(centres.sign)
    wrong = np.flatnonzero(np.bincount(rows[:, 0], weights=(np.sign(vol) != ref) & (ref != 0), minlength=n))
    move = _inversion_atoms(topology)

    def near(c: np.ndarray, y: np.ndarray) -> np.ndarray:
        d = y - c
        return c + (minimum_image(d[None], dimensions)[0] if dimensions is not None else d)

    inverted = left = 0
    for centre in wrong.tolist():
        plan = move.get(centre)
        if plan is None:
            left += 1
            continue
        (a, b, d), h, slot = plan
        c = x[centre]
        pa, pb, pd = (near(c, x[k]) for k in (a, b, d))
        r = np.linalg.norm(near(c, x[h]) - c)
        sign = centres.sign[centre, slot]
        if sign != 0 and np.sign(np.dot(pa - c, np.cross(pb - c, pd - c))) != sign:
            normal = np.cross(pb - pa, pd - pa)
            normal /= np.linalg.norm(normal)
            c = c - 2 * np.dot(c - pa, normal) * normal
            x[centre] = c
            inverted += 1
        away = -sum((p - c) / np.linalg.norm(p - c) for p in (pa, pb, pd))
        x[h] = c + r * away / np.linalg.norm(away)
    return x, inverted, left


def _inversion_atoms(topology: Topology) -> dict[int, tuple[tuple[int, int, int], int, int]]:
    """Per atom of the system with four neighbours one of which is terminal: the other three (the
    plane it is reflected through), the terminal one (the lightest) and the slot of the three's
    triple in :func:`centre_rows` (combinations of the sorted neighbours)."""
    out: dict[int, tuple[tuple[int, int, int], int, int]] = {}
    for block in topology.blocks:
        mt = block.moltype
        graph = mt.graph
        local = {}
        for c in graph.nodes:
            nb = sorted(graph.neighbors(c))
            terminal = [k for k in nb if graph.degree(k) == 1]
            if len(nb) != 4 or not terminal:
                continue
            h = min(terminal, key=lambda k: (float(mt.masses[k]), k))
            local[c] = (tuple(k for k in nb if k != h), h, 3 - nb.index(h))
        for m in range(block.count):
            first = block.first_atom + m * mt.n_atoms
            for c, (plane, h, slot) in local.items():
                out[first + c] = (tuple(first + k for k in plane), first + h, slot)
    return out


#: the stereoregular patterns a ``tacticity`` setting names (one stereocentre per repeat unit, as in
#: vinyl polymers): isotactic, every backbone centre with the same hand seen along the chain;
#: syndiotactic, alternating hands
TACTICITIES = ("isotactic", "syndiotactic")


def tacticity_centres(topology: Topology, positions: np.ndarray, tacticity: str, weight: float = 1e5,
                      backbone: dict[str, np.ndarray] | None = None) -> tuple[ChiralCentres, int]:
    """The backbone stereocentres of every molecule (:func:`backbone_centres`) with the hands of
    ``tacticity``. A pattern has two phases, mirror images of each other (which hand the first
    centre has); each molecule takes the phase most of its centres have in ``positions`` (N, 3)
    nm, molecules whole. ``backbone``: :func:`backbone_centres` per molecule type name, filled in
    where missing (pass the same dict for every frame: RDKit perceives each type once). Returns
    the centres and how many molecules have any."""
    if tacticity not in TACTICITIES:
        raise BackmapError(f"tacticity: {tacticity!r} is not one of {', '.join(TACTICITIES)}")
    x = np.asarray(positions, float)
    rows: dict[str, np.ndarray] = {}
    slots: dict[str, np.ndarray] = {}
    backbone = {} if backbone is None else backbone
    for block in topology.blocks:
        mt = block.moltype
        if mt.name not in backbone:
            backbone[mt.name] = backbone_centres(mt, x[block.first_atom:block.first_atom + mt.n_atoms])
        if mt.name not in rows:
            rows[mt.name], slots[mt.name] = centre_rows(mt, x[:0], backbone[mt.name][:, 0].tolist())
    cc = ChiralCentres(rows, slots, np.zeros((topology.n_atoms, 4), np.int8), weight)
    pattern = {"isotactic": 1, "syndiotactic": -1}[tacticity]
    molecules = 0
    for block in topology.blocks:
        local = backbone[block.moltype.name]
        if not len(local):
            continue
        step = pattern ** np.arange(len(local))  # +1 for every centre, or alternating
        for m in range(block.count):
            g = local + block.first_atom + m * block.moltype.n_atoms
            d = x[g[:, 1:4]] - x[g[:, :1]]
            hand = np.sign(np.einsum("ij,ij->i", d[:, 0], np.cross(d[:, 1], d[:, 2])))
            want = step * (1 if (hand * step).sum() >= 0 else -1)  # the phase most centres have
            for (c, prev, nxt, side, h), w in zip(g.tolist(), want.tolist()):
                cc.sign[c] = _triple_signs(c, prev, nxt, side, h, w)
            molecules += 1
    return cc, molecules


def _triple_signs(c: int, prev: int, nxt: int, side: int, h: int, hand: int) -> np.ndarray:
    """The signs of :func:`centre_rows`' four triples (sorted neighbours) of a regular tetrahedron
    whose (previous, next, side) triple has the sign ``hand``."""
    corners = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float)
    if np.sign(np.linalg.det(corners[:3])) != hand:
        corners[[0, 1]] = corners[[1, 0]]
    at = dict(zip((prev, nxt, side, h), corners))
    return np.array([np.sign(np.linalg.det(np.array([at[a], at[b], at[d]])))
                     for a, b, d in combinations(sorted(at), 3)], np.int8)
