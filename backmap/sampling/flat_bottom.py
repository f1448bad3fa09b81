"""Flat-bottom selection energy (thesis eqs. 7.2–7.3): zero inside the ranges a *target* data set
spans, harmonic outside — bonds and angles outside [φ_min, φ_max] of their particle-type tuple cost
``a (φ − φ_lim)²``, non-bonded pairs closer than d_min of their type pair cost ``a (1 − d/d_min)²``.

Morphing scores the candidates with it instead of a force field: the system's force field (if it
has one) is the top-down model's, whose local statistics morphing replaces, while these limits come
from the target. Terms come from the bond graph (no force-field parameters needed); non-bonded pairs
at most ``exclude_bonds`` bonds apart are left out.
"""
from __future__ import annotations

from collections import defaultdict

import networkx as nx
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from backmap.errors import BackmapError
from backmap.system.mapping import CGTopology
from backmap.system.topology import MoleculeType, Topology


def type_key(types) -> str:
    """A type tuple and its reverse are one key (``A-B-C`` == ``C-B-A``)."""
    t = [str(x) for x in types]
    return "-".join(min(t, t[::-1]))


def local_terms(mt: MoleculeType) -> dict[str, np.ndarray]:
    """Bonds (n, 2) and angles (n, 3) of one molecule type from its bond graph."""
    g = mt.graph
    bonds = np.array(sorted(tuple(sorted(e)) for e in g.edges()), int).reshape(-1, 2)
    angles = [(i, j, k) for j in g.nodes for a, i in enumerate(sorted(g[j])) for k in sorted(g[j])[a + 1:]]
    return {"bond": bonds, "angle": np.array(angles, int).reshape(-1, 3)}


def excluded_matrix(mt: MoleculeType, n_bonds: int) -> np.ndarray:
    """(n, n) bool: pairs of a molecule at most ``n_bonds`` bonds apart (and the diagonal)."""
    ex = np.zeros((mt.n_atoms, mt.n_atoms), bool)
    for i, lengths in nx.all_pairs_shortest_path_length(mt.graph, cutoff=n_bonds):
        ex[i, list(lengths)] = True
    return ex


class FlatBottomLimits(BaseModel):
    """The limits of eqs. 7.2–7.3 and their force constants; ``from_frames`` takes the limits from
    target frames. Stored with a run's settings (JSON)."""

    model_config = ConfigDict(extra="forbid")
    a_bond: float = Field(1e5, ge=0, description="a of eq. 7.2 for bonds (kJ/mol/nm²)")
    a_angle: float = Field(100.0, ge=0, description="a of eq. 7.2 for angles (kJ/mol/rad²)")
    a_nonbonded: float = Field(100.0, ge=0, description="a of eq. 7.3 (kJ/mol)")
    exclude_bonds: int = Field(3, ge=1, description="non-bonded pairs at most this many bonds apart are left out")
    quantile: float = Field(0.0, ge=0, lt=0.5, description="limits at this quantile of the target's values (and "
                                                           "1 − it for maxima); 0: the extremes (eqs. 7.2-7.3)")
    bond: dict[str, tuple[float, float]] = Field(default_factory=dict, description="type pair -> (min, max) nm")
    angle: dict[str, tuple[float, float]] = Field(default_factory=dict, description="type triple -> (min, max) rad")
    nonbonded: dict[str, float] = Field(default_factory=dict, description="type pair -> d_min nm")
    source: str = ""

    @classmethod
    def from_frames(cls, topology: Topology, frames, source: str = "", cutoff: float = 0.6, **params) -> "FlatBottomLimits":
        """Limits from whole-molecule ``frames`` (positions (N, 3), dimensions) of the target."""
        limits = cls(source=source, **params)
        terms = TermValues(topology, limits.exclude_bonds, cutoff)
        values: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
        n = 0
        for positions, dimensions in frames:
            n += 1
            for fk, v in terms(positions, dimensions).items():
                values[fk].append(v)
        if n == 0:
            raise BackmapError("flat-bottom limits: no target frames to take them from")
        q = limits.quantile
        for (fam, k), parts in sorted(values.items()):
            k = str(k)
            v = np.concatenate(parts)
            lo, hi = (float(v.min()), float(v.max())) if q == 0 else (float(np.quantile(v, q)), float(np.quantile(v, 1 - q)))
            if fam == "nonbonded":
                limits.nonbonded[k] = lo
            else:
                getattr(limits, fam)[k] = (lo, hi)
        return limits


class TermValues:
    """Bond lengths (nm), angles (rad) and non-bonded distances (nm, pairs more than
    ``exclude_bonds`` bonds apart, up to ``cutoff``) of one frame, per family and type key — what
    the flat-bottom limits and the IBI tables (:mod:`backmap.sampling.ibi`) are taken from."""

    def __init__(self, topology: Topology, exclude_bonds: int, cutoff: float):
        from backmap.system.pbc import Unwrapper

        self.cutoff = cutoff
        self.types = np.asarray(topology.atom_types).astype(str)
        glob = {"bond": [], "angle": []}
        keys = []
        for block in topology.blocks:
            terms = local_terms(block.moltype)
            for fam in glob:
                glob[fam].append(block.global_rows(terms[fam]))
            ex = excluded_matrix(block.moltype, exclude_bonds)
            i, j = np.nonzero(np.triu(ex, 1))
            pairs = block.global_rows(np.stack([i, j], 1))
            keys.append(pairs[:, 0].astype(np.int64) * topology.n_atoms + pairs[:, 1])
        self.bonds, self.angles = (np.concatenate(glob[f]) for f in ("bond", "angle"))
        self.excluded = np.unique(np.concatenate(keys))
        self.whole = Unwrapper(topology)
        self.bkeys = np.array([type_key(self.types[b]) for b in self.bonds], dtype=object)
        self.akeys = np.array([type_key(self.types[a]) for a in self.angles], dtype=object)
        names, self.type_code = np.unique(self.types, return_inverse=True)
        self.pair_key = np.array([[type_key((a, b)) for b in names] for a in names], dtype=object)

    def __call__(self, positions: np.ndarray, dimensions: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
        from backmap.forcefield.neighbors import neighbour_pairs
        from backmap.system.pbc import box_vectors

        out = {}
        x = self.whole(positions, dimensions)
        r = np.linalg.norm(x[self.bonds[:, 1]] - x[self.bonds[:, 0]], axis=1)
        u, v = x[self.angles[:, 0]] - x[self.angles[:, 1]], x[self.angles[:, 2]] - x[self.angles[:, 1]]
        cos = (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
        theta = np.arccos(np.clip(cos, -1, 1))
        for k in np.unique(self.bkeys):
            out["bond", str(k)] = r[self.bkeys == k]
        for k in np.unique(self.akeys):
            out["angle", str(k)] = theta[self.akeys == k]
        i, j, shift = neighbour_pairs(positions, box_vectors(dimensions), self.cutoff, self.excluded)
        d = np.linalg.norm(positions[j] + shift - positions[i], axis=1)
        pk = self.pair_key[self.type_code[i], self.type_code[j]]
        for k in np.unique(pk):
            out["nonbonded", str(k)] = d[pk == k]
        return out


class FlatBottomEnergy:
    """Candidate scorer with :class:`backmap.sampling.sampler.UnitEnergy`'s interface: per unit
    the flat-bottom terms of the bonds and angles that involve its atoms (terms with atoms not yet
    placed skipped) plus the non-bonded term with the environment's particles; with ``tables``
    (:class:`backmap.sampling.ibi.IBITables`) also their tabulated energies of the same terms."""

    def __init__(self, cg_topology: CGTopology, limits: FlatBottomLimits, tables=None):
        topo = cg_topology.topology
        self.limits = limits
        self.tables = tables
        types = np.asarray(topo.atom_types).astype(str)
        names = sorted(set(types.tolist()))
        code = {t: k for k, t in enumerate(names)}
        self.type_code = torch.as_tensor([code[t] for t in types])
        dmin = np.zeros((len(names), len(names)))
        for a in names:
            for b in names:
                dmin[code[a], code[b]] = limits.nonbonded.get(type_key((a, b)), 0.0)
        self.dmin = torch.as_tensor(dmin, dtype=torch.float32)
        self.table_rows: dict[str, torch.Tensor] = {}
        self.pair_row = None
        index: dict[str, dict[str, int]] = {"bond": {}, "angle": {}, "nonbonded": {}}  # key -> table row
        if tables is not None:
            for fam in index:
                self.table_rows[fam], index[fam] = tables.compiled(fam, sorted(tables.tables.get(fam, {})))
            self.pair_row = torch.as_tensor([[index["nonbonded"].get(type_key((a, b)), -1) for b in names]
                                             for a in names])
        self.molecule = torch.as_tensor(topo.molecule_index)
        self.local_index = torch.as_tensor(np.concatenate([np.tile(np.arange(b.moltype.n_atoms), b.count)
                                                           for b in topo.blocks]))
        self.excluded, self.terms = {}, {}
        for block in topo.blocks:
            mt = block.moltype
            if mt.name in self.excluded:
                continue
            self.excluded[mt.name] = torch.as_tensor(excluded_matrix(mt, limits.exclude_bonds))
            t = types[block.first_atom:block.first_atom + mt.n_atoms]
            fams = {}
            for fam, rows in local_terms(mt).items():
                table = limits.bond if fam == "bond" else limits.angle
                bounds = np.array([table.get(type_key(t[r]), (-np.inf, np.inf)) for r in rows]).reshape(-1, 2)
                row = np.array([index[fam].get(type_key(t[r]), -1) for r in rows], int).reshape(-1)
                fams[fam] = (rows, bounds, row)
            self.terms[mt.name] = fams
        self._cache: dict = {}

    def reset(self) -> None:
        if len(self._cache) > 10_000:
            self._cache = {}

    def pair_params(self, moltype: str, units: torch.Tensor, neighbours: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, U, K): d_min of every unit atom with every neighbour (0: no term) for padding,
        excluded pairs and neighbours outside ``mask``; with tables (C = 2) also 1 + the pair's
        table row (0: none)."""
        u, nb = units.clamp(min=0), neighbours.clamp(min=0)
        d = self.dmin[self.type_code[u][:, :, None], self.type_code[nb][:, None, :]]
        ex = self.excluded[moltype]
        n_local = ex.shape[0]
        same = self.molecule[u][:, :, None] == self.molecule[nb][:, None, :]
        cols = self.local_index[nb].clamp(max=n_local - 1)
        excl = ex[self.local_index[u][:, :, None], cols[:, None, :]] & same
        ok = (units >= 0)[:, :, None] & (neighbours >= 0)[:, None, :] & ~excl
        if mask is not None:
            ok &= mask[:, None, :]
        if self.pair_row is None:
            return (d * ok)[:, None]
        row = self.pair_row[self.type_code[u][:, :, None], self.type_code[nb][:, None, :]] + 1
        return torch.stack([d * ok, (row * ok).to(d.dtype)], 1)

    def prepare(self, moltype: str, step: int, first_atom: torch.Tensor, units: torch.Tensor) -> dict:
        """The bonded terms touching the step's unit atoms, as local rows, bounds and unit slots."""
        unit_atoms = (units[0] - first_atom[0]).tolist()
        key = (moltype, tuple(unit_atoms))
        st = self._cache.get(key)
        if st is None:
            st = {}
            for fam, (rows, bounds, row) in self.terms[moltype].items():
                hit = np.isin(rows, unit_atoms).any(1) if len(rows) else np.zeros(0, bool)
                if hit.any():
                    r = rows[hit]
                    slot = np.full(r.shape, -1)
                    for s, a in enumerate(unit_atoms):
                        slot[r == a] = s
                    st[fam] = (torch.as_tensor(r), torch.as_tensor(bounds[hit], dtype=torch.float32),
                               torch.as_tensor(slot), torch.as_tensor(row[hit]))
            self._cache[key] = st
        return st

    def __call__(self, moltype: str, step: int, first_atom: torch.Tensor, candidates: torch.Tensor, env,
                 positions: torch.Tensor, placed: torch.Tensor, local: torch.Tensor | None = None,
                 static: dict | None = None, all_placed: bool = False) -> torch.Tensor:
        B, K, U = candidates.shape[:3]
        lim = self.limits
        st = static if static is not None else self.prepare(moltype, step, first_atom, env.target_atoms)
        total = torch.zeros(B, K)
        for fam, (rows, bounds, slot, row) in st.items():
            glob = first_atom[:, None, None] + rows[None]  # (B, T, k)
            x = positions[glob].unsqueeze(1).repeat(1, K, 1, 1, 1)  # (B, K, T, k, 3)
            is_unit = slot >= 0
            x[:, :, is_unit] = candidates[:, :, slot[is_unit]]
            if fam == "bond":
                value, a = torch.linalg.norm(x[..., 1, :] - x[..., 0, :], dim=-1), lim.a_bond
            else:
                u, v = x[..., 0, :] - x[..., 1, :], x[..., 2, :] - x[..., 1, :]
                cos = (u * v).sum(-1) / (torch.linalg.norm(u, dim=-1) * torch.linalg.norm(v, dim=-1)).clamp(min=1e-9)
                value, a = torch.arccos(cos.clamp(-1.0, 1.0)), lim.a_angle
            e = a * (torch.relu(bounds[:, 0] - value) ** 2 + torch.relu(value - bounds[:, 1]) ** 2)  # (B, K, T)
            if self.tables is not None:
                e = e + self.tables.lookup(fam, self.table_rows[fam], row, value)
            if not all_placed:
                known = (placed[glob] | is_unit).all(-1)  # (B, T)
                e = e * known[:, None]
            total = total + e.sum(-1)
        if local is None:
            local = (candidates - env.centre[:, None, None]) @ env.rotation.transpose(1, 2)[:, None]
        pp = env.pair_params
        if pp is None:
            pp = self.pair_params(moltype, env.target_atoms, env.atom_index, env.atom_mask)
        d = torch.linalg.norm(local[:, :, :, None, :] - env.atom_positions[:, None, None], dim=-1)  # (B, K, U, N)
        dm = pp[:, 0][:, None]  # (B, 1, U, N)
        nb = torch.where(dm > 0, torch.relu(1 - d / dm.clamp(min=1e-9)) ** 2, torch.zeros(()))
        total = total + lim.a_nonbonded * nb.sum((-1, -2))
        if self.pair_row is not None:
            row = pp[:, 1][:, None].long() - 1  # (B, 1, U, N)
            e = self.tables.lookup("nonbonded", self.table_rows["nonbonded"], row, d)
            total = total + torch.where(d < self.tables.cutoff, e, torch.zeros(())).sum((-1, -2))
        return total
