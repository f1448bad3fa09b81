"""Energies of groups of atoms in many configurations: what a Monte Carlo move of a group changes
(:meth:`ForceField.group_energies`). Neighbour search from each group to all atoms, per-topology
lookups built once and per-groups index tables kept; a compiled loop when the environment is
fixed and no gradient is needed."""
from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import backmap.forcefield.geometry as geo
from backmap.errors import BackmapError
from backmap.forcefield.neighbors import box_heights
from backmap.forcefield.parameters import BONDED

GROUP_INDEX_CACHE = 4096  # distinct groups whose index group_energies keeps (a few kB each)
_SCREEN_MARGIN = 1e-4  # nm: neighbour screening is in float32; the exact cut-offs come after, in float64
_FAR_AWAY = 1e4  # nm: padding coordinates in the screening blocks


@dataclass
class _GroupIndex:
    """:meth:`ForceField._group_index` of one (G, A) array of groups: padding mask and fill, the
    real atoms and their group, the bonded terms and excluded pairs touching each group (term,
    atoms, group) and the groups' self energies (G,)."""

    valid: np.ndarray
    gfill: np.ndarray
    atoms: np.ndarray
    gid: np.ndarray
    touching: dict = field(default_factory=dict)
    excluded: tuple = ()
    self_energies: torch.Tensor | None = None

    def membership(self, n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
        """(G, N) atom in group, (N,) atom in some group (built on each call: not kept)."""
        member = np.zeros((len(self.valid), n_atoms), bool)
        member[self.gid, self.atoms] = True
        return member, member.any(0)


def _touching(table: dict, atoms: np.ndarray, gid: np.ndarray, member: np.ndarray, anywhere: np.ndarray,
              check: bool, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The terms of ``table`` (see ``ForceField._group_index_tables``) with an atom in a group:
    (term index, its atoms, group), once per term and group. ``atoms``/``gid``: the groups' atoms
    and their group; ``member`` (G, N): atom in group; ``anywhere``: atom in some group."""
    ptr = table["ptr"]
    start = ptr[atoms]
    counts = ptr[atoms + 1] - start
    owner = np.repeat(np.arange(len(atoms)), counts)
    entry = np.arange(len(owner)) + np.repeat(start - (np.cumsum(counts) - counts), counts)
    term, pos, g = table["term"][entry], table["pos"][entry], gid[owner]
    at = table["atoms"][term]
    in_g = member[g[:, None], at]
    if check and (anywhere[at] & ~in_g).any():
        raise BackmapError(f"groups interact: a bonded term ({what}) spans two groups")
    keep = in_g.argmax(1) == pos  # counted once, through its first atom in the group
    return term[keep], at[keep], g[keep]


def _group_pairs(x: np.ndarray, xa: np.ndarray, valid: np.ndarray, gfill: np.ndarray, member: np.ndarray,
                 molecule: np.ndarray, is_excluded, cutoff: float, vectors: np.ndarray | None,
                 heights: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Non-excluded pairs (group atom, any atom) closer than ``cutoff`` (+ a float32 margin).

    ``x`` (C, N, 3) configurations; ``xa`` (C, G, A, 3) the groups' atoms ``gfill`` (G, A), each as
    an image near its group; ``valid`` (G, A) slot holds an atom; ``member`` (G, N) atom in group;
    ``vectors`` (3, 3) box or None. Brute force in two stages: the atoms with an image within
    cut-off + radius of a group's centre, then the group's atoms against those, one padded block
    per (configuration, group) (a batched matrix product). Pairs inside a group come once, by
    the lower atom index. Returns the candidates (c, j, shift): atom j's image ``x[c, j] + shift``
    near group c·G + g, and the pairs (block, slot, candidate) in increasing block = c·G + g:
    atom ``gfill[g, slot]`` with that candidate.

    Images: rounding fractional coordinates gives the nearest image of any vector shorter than
    half the smallest box height (whose fractional coordinates are all below 1/2 in size), so it
    is exact at the atom stage (the cut-off is at most that); the group stage reaches further,
    and atoms near the far side (|fractional coordinate| > 1 − reach / height) are also tried in
    the neighbouring images."""
    C, G, A, _ = xa.shape
    N, CG = x.shape[1], C * G
    f32 = np.float32
    centre = (xa * valid[..., None]).sum(2) / np.maximum(valid.sum(1), 1)[:, None]  # (C, G, 3)
    local = xa - centre[:, :, None]
    reach = cutoff + np.where(valid, np.linalg.norm(local, axis=-1), 0.0).max(2) + _SCREEN_MARGIN  # (C, G)
    reach2 = (reach**2).astype(f32)
    if vectors is None:
        d = [(x[:, None, :, i] - centre[:, :, None, i]).astype(f32) for i in range(3)]  # (C, G, N) each
        n = [np.zeros_like(d[0])] * 3
    else:
        inv = np.linalg.inv(vectors)
        s, sc = (x @ inv).astype(f32), (centre @ inv).astype(f32)
        f = [s[:, None, :, i] - sc[:, :, None, i] for i in range(3)]
        n = [np.rint(fi) for fi in f]
        f = [fi - ni for fi, ni in zip(f, n)]
        V = vectors.astype(f32)
        d = [sum((f[i] * V[i, k] for i in range(3) if V[i, k] != 0), np.zeros_like(f[0])) for k in range(3)]
    flat = np.flatnonzero(d[0] * d[0] + d[1] * d[1] + d[2] * d[2] < reach2[..., None])
    block, j = np.divmod(flat, N)
    dj = np.stack([dk.ravel()[flat] for dk in d], 1)
    m = -np.stack([ni.ravel()[flat] for ni in n], 1)
    counts = np.bincount(block, minlength=CG)
    pos = np.arange(len(block)) - (np.cumsum(counts) - counts)[block]
    far_frac = None if vectors is None else reach.max() / heights
    axes = [] if far_frac is None else [int(i) for i in np.flatnonzero(far_frac > 0.5 - 1e-6)]
    if axes:
        # further images, where the reach exceeds half a box height: |f_i + o_i| < reach / h_i with
        # |f_i| <= 1/2 needs o_i = -sign(f_i) and |f_i| > 1 - reach / h_i (the far side of the box)
        n_max = np.ceil(far_frac + 0.5).astype(int) - 1
        far = {i: np.abs(f[i]) > (1 - 1e-5 - reach / heights[i]).astype(f32)[..., None] for i in axes}
        src, off = [], []
        if far_frac.max() <= 1:  # only the adjacent image on the near side: |f + o| >= 1 beyond it
            for k in range(1, len(axes) + 1):
                for subset in itertools.combinations(axes, k):
                    s_k = np.flatnonzero(np.logical_and.reduce([far[i] for i in subset]))
                    o = np.zeros((len(s_k), 3), f32)
                    for i in subset:
                        o[:, i] = -np.sign(f[i].ravel()[s_k])
                    src.append(s_k)
                    off.append(o)
        else:  # a group reaching beyond a box height: all neighbouring images up to n_max
            s_k = np.flatnonzero(np.logical_or.reduce(list(far.values())))
            offsets = np.array([o for o in itertools.product(*(range(-k, k + 1) for k in n_max)) if any(o)], f32)
            src.append(np.repeat(s_k, len(offsets)))
            off.append(np.tile(offsets, (len(s_k), 1)))
        src, off = np.concatenate(src), np.concatenate(off)
        do = (np.stack([fi.ravel()[src] for fi in f], 1) + off) @ V
        hit = np.flatnonzero(do[:, 0] ** 2 + do[:, 1] ** 2 + do[:, 2] ** 2 < reach2.ravel()[src // N])
        hit = hit[np.argsort(src[hit], kind="stable")]  # blocks in increasing order
        src = src[hit]
        block_f, j_f = np.divmod(src, N)
        counts_f = np.bincount(block_f, minlength=CG)
        pos_f = counts[block_f] + np.arange(len(block_f)) - (np.cumsum(counts_f) - counts_f)[block_f]
        block, j, pos = np.r_[block, block_f], np.r_[j, j_f], np.r_[pos, pos_f]
        dj = np.concatenate([dj, do[hit]])
        m = np.concatenate([m, off[hit] - np.stack([ni.ravel()[src] for ni in n], 1)])
        counts = counts + counts_f
    width = int(counts.max()) if len(block) else 0
    if width == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros((0, 3)), empty, empty, empty
    # padded blocks: candidate rows × group slots
    row = block * width + pos
    Dj = np.full((CG * width, 3), _FAR_AWAY, f32)
    Dj[row] = dj
    candidate = np.full(CG * width, -1)
    candidate[row] = np.arange(len(row))
    Dk = torch.from_numpy(np.where(valid[None, :, :, None], local, -_FAR_AWAY).astype(f32).reshape(CG, A, 3))
    Dj_t = torch.from_numpy(Dj.reshape(CG, width, 3))
    r2 = torch.baddbmm((Dj_t * Dj_t).sum(-1)[:, :, None] + (Dk * Dk).sum(-1)[:, None, :], Dj_t, Dk.transpose(1, 2),
                       alpha=-2.0).numpy()
    ok = r2 < (cutoff + _SCREEN_MARGIN) ** 2  # (CG, width, A)
    okr = ok.reshape(-1, A)
    g = block % G
    inside = member[g, j]  # the candidate is in the group itself: once, by the lower index; not with itself
    okr[row[inside]] &= gfill[g[inside]] < j[inside][:, None]
    # excluded pairs (all within one molecule): candidates in a molecule of their group's atoms
    mol_slot = np.where(valid, molecule[gfill], -1)
    group_mols = np.zeros((G, int(molecule.max()) + 1), bool)
    group_mols[np.nonzero(valid)[0], mol_slot[valid]] = True
    mol_j = molecule[j]
    rs = np.flatnonzero(group_mols[g, mol_j])
    if len(rs):
        ri, ai = np.nonzero(okr[row[rs]] & (mol_slot[g[rs]] == mol_j[rs][:, None]))
        excluded = is_excluded(gfill[g[rs[ri]], ai], j[rs[ri]])
        okr[row[rs[ri[excluded]]], ai[excluded]] = False
    p_row, slot = np.divmod(np.flatnonzero(ok), A)
    shift = np.zeros((len(j), 3)) if vectors is None else m.astype(np.float64) @ vectors
    return block // G, j, shift, p_row // width, slot, candidate[p_row]


def _exclusion_lookup(exclusions: np.ndarray, molecule: np.ndarray, keys: np.ndarray, max_table: int = 1 << 24):
    """``is_excluded(i, j)`` for arrays of atom pairs of one molecule each: a dense table per
    molecule (sizes²), or a binary search in the sorted keys i·N + j when the tables would be large
    or an exclusion joined two molecules."""
    N = len(molecule)
    sizes = np.bincount(molecule)
    offset = np.cumsum(sizes**2) - sizes**2
    if int((sizes**2).sum()) > max_table or (molecule[exclusions[:, 0]] != molecule[exclusions[:, 1]]).any():
        def is_excluded(i: np.ndarray, j: np.ndarray) -> np.ndarray:
            key = np.minimum(i, j) * N + np.maximum(i, j)
            return keys[np.searchsorted(keys, key).clip(max=max(len(keys) - 1, 0))] == key if len(keys) else \
                np.zeros(len(key), bool)
        return is_excluded
    order = np.argsort(molecule, kind="stable")
    local = np.empty(N, np.int64)
    local[order] = np.arange(N) - (np.cumsum(sizes) - sizes)[molecule[order]]
    row = offset[molecule] + local * sizes[molecule]  # atom i's row of its molecule's table
    table = np.zeros(int((sizes**2).sum()), bool)
    i, j = exclusions[:, 0], exclusions[:, 1]
    table[row[i] + local[j]] = True
    table[row[j] + local[i]] = True

    def is_excluded(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return table[row[i] + local[j]]
    return is_excluded


class GroupEnergies:
    """Group energies of one force field, with its lookups and the index tables of recent groups."""

    def __init__(self, ff: Any):  # the ForceField (whose module imports this one)
        self.ff = ff
        self._group_tables: dict | None = None  # built on first use
        self._group_indices: OrderedDict[tuple, _GroupIndex] = OrderedDict()  # _group_index, least recent first

    def energies(self, positions: torch.Tensor, vectors: np.ndarray | None, groups: torch.Tensor,
                       *, check: bool = False, environment_fixed: bool = False, keep_index: bool = True
                       ) -> torch.Tensor:
        """(C, G) energies of every interaction that involves at least one atom of group g, in each
        of C configurations: for one group, ``energy(positions, box, subset=group).total``.

        The local energies of a Monte Carlo move: ``positions`` (C, N, 3) nm are C configurations
        of the whole system (e.g. the current one and a proposal, or M trial candidates) with every
        molecule whole; ``vectors`` (3, 3) the box vectors (rows) they share, or None (no periodic
        boundaries); ``groups`` (G, A) global atom indices, -1 = padding, distinct atoms.

        Entry (c, g) sums the bonded terms with an atom in g, the LJ and Coulomb energies of the
        non-excluded pairs within the cut-off with an atom in g (pairs inside g once), and the
        reaction-field parts of g's excluded pairs and self terms. Each entry is exact on its own;
        the caller guarantees that the groups do not interact (no bonded term, excluded pair or
        pair within the cut-off spans two groups, no atom is in two groups), which is what makes
        the entries add up to the energy of the union and each group's change in energy the
        change of the total when only its atoms move. ``check=True`` verifies that (cheaply)
        and raises :class:`BackmapError` otherwise.

        ``environment_fixed=True`` is the Monte Carlo case: the caller promises that the C
        configurations differ only in the groups' atoms (the current state and trial placements).
        The neighbour search then runs once, for the union of each group's placements against the
        other atoms of configuration 0, instead of once per configuration: the same energies at a
        fraction of the cost when C is large. Gradients reach the other atoms through
        configuration 0 only.

        ``keep_index=False``: ``groups`` is a one-off (e.g. the atoms a local move happens to
        move); its index tables are not kept for the next call.

        Neighbours: brute force from each group to all atoms (a sphere around the group's centre,
        then its atoms), vectorized (index bookkeeping in numpy, energies in torch), with per-
        topology lookups built once; periodic images are exact in any triclinic box whose smallest
        height is at least twice the cut-off. PME is refused: its reciprocal part is not local.
        Differentiable with respect to ``positions``."""
        s = self.ff.settings
        if self.ff._pme is not None:
            raise BackmapError("group energies are local, but PME's reciprocal-space part is not: use "
                               "coulomb = reaction-field or cut-off for local (Monte Carlo) energies")
        N, dt = self.ff.n_atoms, self.ff.dtype
        x = torch.as_tensor(positions, dtype=dt)
        x = x[None] if x.ndim == 2 else x
        if x.ndim != 3 or x.shape[1:] != (N, 3):
            raise ValueError(f"positions must be (C, {N}, 3), not {tuple(x.shape)}")
        gr = np.asarray(torch.as_tensor(groups).cpu(), np.int64)
        gr = gr[None] if gr.ndim == 1 else gr
        if gr.size and gr.max() >= N:
            raise BackmapError(f"group atom index {gr.max()} out of range (the system has {N} atoms)")
        C, (G, A) = x.shape[0], gr.shape
        if G == 0 or A == 0:
            return torch.zeros(C, G, dtype=dt)
        tables = self._group_index_tables()
        index = self._group_index(gr, check, keep_index)
        valid, gfill = index.valid, index.gfill
        t = torch.from_numpy
        out = torch.zeros(C, G, dtype=dt)

        # bonded terms (lj14 and coulomb14 share the pair list)
        for name in BONDED:
            key = "pair" if name in ("lj14", "coulomb14") else name
            if key not in index.touching:
                continue
            term, idx, g = index.touching[key]
            if len(term):
                e = self.ff._bonded_terms(name, x, t(idx), tables["bonded"][key]["params"][t(term)])
                out = out.index_add(1, t(g), e)
        # excluded pairs and self terms (their reaction-field parts)
        idx, g = index.excluded
        cut = s.cutoff
        if len(idx):
            i_t, j_t = t(idx[:, 0]), t(idx[:, 1])
            r = geo.distance(x[:, i_t], x[:, j_t])
            if check:
                member, anywhere = index.membership(N)
                if ((r.detach() < cut).any(0).numpy() & (anywhere[idx] & ~member[g[:, None], idx]).any(1)).any():
                    raise BackmapError("groups interact: an excluded pair within the cut-off spans two groups")
            out = out.index_add(1, t(g), self.ff._excluded_energies(r, i_t, j_t))
        out = out + index.self_energies[None]

        # non-excluded pairs within the cut-off
        gfill_t = t(gfill)
        xa = x[:, gfill_t]  # (C, G, A, 3)
        vec = heights = None
        if vectors is not None:
            vec = np.asarray(vectors, np.float64).reshape(3, 3)
            heights = box_heights(vec)
            if cut > 0.5 * heights.min():
                raise BackmapError(f"cut-off {cut} nm is more than half the box height ({heights.min():.3f} nm)")
            V = torch.as_tensor(vec, dtype=dt)
            # each group atom as an image near the group's first atom (the nearest one when closer than
            # half a box height; any image suits the screening bound)
            xa = xa - torch.round((xa - xa[:, :, :1]) @ torch.linalg.inv(V)) @ V
        if environment_fixed:
            if check and C > 1:
                outside = ~index.membership(N)[1]
                if bool((x[1:, outside] != x[:1, outside]).any()):
                    raise BackmapError("environment_fixed: the configurations differ in atoms outside the groups")
            if x.requires_grad and torch.is_grad_enabled():
                return out + self._fixed_environment_pairs(x, xa, valid, gfill, index.membership(N)[0], tables, vec,
                                                           heights)
            return out + self._compiled_fixed_environment_pairs(x, xa, gr, valid, gfill, vec, heights)
        member, anywhere = index.membership(N)
        c_h, j_h, shift, block, slot, h = _group_pairs(
            x.detach().cpu().numpy(), xa.detach().cpu().numpy(), valid, gfill, member, self.ff.params.molecule,
            tables["is_excluded"], cut, vec, heights)
        # distances from components (1-D gathers are the fast ones)
        xj = (x.reshape(C * N, 3).index_select(0, t(c_h * N + j_h)) + torch.as_tensor(shift, dtype=dt)).T.contiguous()
        xk = xa.permute(3, 0, 1, 2).reshape(3, C * G * A)
        ks = block * A + slot
        h_t, ks_t = t(h), t(ks)
        d = [xj[i].index_select(0, h_t) - xk[i].index_select(0, ks_t) for i in range(3)]
        r = torch.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2] + geo.EPS2)
        j = j_h[h]
        if check and (anywhere[j] & ~member[block % G, j] & (r.detach() < cut).numpy()).any():
            raise BackmapError("groups interact: a pair within the cut-off spans two groups")
        k, j_t = t(np.tile(gfill.ravel(), C)[ks]), t(j)
        e_lj, e_c = self.ff._pair_energies(r, k, j_t)
        sums = torch.segment_reduce(e_lj + e_c, "sum", lengths=t(np.bincount(block, minlength=C * G)))
        return out + sums.reshape(C, G)

    def _group_index(self, groups: np.ndarray, check: bool, keep: bool = True) -> "_GroupIndex":
        """What :meth:`group_energies` needs of the groups' atoms alone (padding, bonded terms and
        excluded pairs that touch each group, self terms): computed once per distinct ``groups``
        and kept (a Monte Carlo sweep moves the same colour groups again and again). ``check``
        verifies that no bonded term spans two groups (then nothing is kept: a check each time), and
        nothing is kept unless ``keep``."""
        key = (groups.shape, groups.tobytes())
        index = None if check or not keep else self._group_indices.get(key)
        if index is not None:
            self._group_indices.move_to_end(key)
            return index
        G, N = groups.shape[0], self.ff.n_atoms
        valid = groups >= 0
        gfill = np.where(valid, groups, groups[np.arange(G), valid.argmax(1)][:, None]).clip(min=0)  # padding: 1st
        atoms, gid = groups[valid], np.nonzero(valid)[0]
        index = _GroupIndex(valid, gfill, atoms, gid)
        member, anywhere = index.membership(N)
        if check and len(atoms) and np.bincount(atoms).max() > 1:
            raise BackmapError("groups overlap: an atom is in two groups, or twice in one")
        tables = self._group_index_tables()
        for kind, table in tables["bonded"].items():
            index.touching[kind] = _touching(table, atoms, gid, member, anywhere, check, kind)
        _, idx, g = _touching(tables["excluded"], atoms, gid, member, anywhere, False, "excluded pair")
        index.excluded = idx, g
        index.self_energies = torch.zeros(G, dtype=self.ff.dtype).index_add(0, torch.from_numpy(gid),
                                                                         self.ff._self_energies(torch.from_numpy(atoms)))
        if keep and not check:
            self._group_indices[key] = index
            while len(self._group_indices) > GROUP_INDEX_CACHE:
                self._group_indices.popitem(last=False)
        return index

    def _fixed_environment_pairs(self, x: torch.Tensor, xa: torch.Tensor, valid: np.ndarray, gfill: np.ndarray,
                                 member: np.ndarray, tables: dict, vec: np.ndarray | None,
                                 heights: np.ndarray | None) -> torch.Tensor:
        """(C, G) non-bonded energies of the groups' atoms ``xa`` (C, G, A, 3, imaged near each
        group) with the other atoms at ``x[0]`` and with each other, for configurations that differ
        only in the groups' atoms (``group_energies(..., environment_fixed=True)``)."""
        C, G, A, _ = xa.shape
        t, dt = torch.from_numpy, self.ff.dtype
        if vec is not None:  # all placements of a group as images near its first atom in configuration 0
            V = torch.as_tensor(vec, dtype=dt)
            xa = xa - torch.round((xa - xa[:1, :, :1]) @ torch.linalg.inv(V)) @ V
        # every placement of group g is a slot of one wide group: a single screening for all C
        xu = xa.permute(1, 0, 2, 3).reshape(G, C * A, 3)
        valid_u, gfill_u = np.tile(valid, (1, C)), np.tile(gfill, (1, C))
        _, j_h, shift, block, slot, h = _group_pairs(
            x[:1].detach().cpu().numpy(), xu[None].detach().cpu().numpy(), valid_u, gfill_u, member,
            self.ff.params.molecule, tables["is_excluded"], self.ff.settings.cutoff, vec, heights)
        j = j_h[h]
        keep = ~member[block, j]  # the groups' own atoms are the placements, not their configuration-0 positions
        block, slot, j, h = block[keep], slot[keep], j[keep], h[keep]
        out = torch.zeros(C * G, dtype=dt)
        if len(j):
            xj = x[0].index_select(0, t(j)) + torch.as_tensor(shift[h], dtype=dt)
            xk = xu.reshape(G * C * A, 3).index_select(0, t(block * (C * A) + slot))
            r = geo.distance(xk, xj)
            e_lj, e_c = self.ff._pair_energies(r, t(gfill_u[block, slot]), t(j))
            out = out.index_add(0, t((slot // A) * G + block), e_lj + e_c)
        # pairs inside a group, from each configuration's placement
        g, a, b = self._inside_pairs(valid, gfill, tables["is_excluded"])
        if len(g):
            d = xa[:, t(g), t(b)] - xa[:, t(g), t(a)]
            if vec is not None:  # the nearest image: unique within the cut-off (at most half a box height)
                d = d - torch.round(d @ torch.linalg.inv(V)) @ V
            r = geo.norm(d).reshape(-1)
            i_t, j_t = t(np.tile(gfill[g, a], C)), t(np.tile(gfill[g, b], C))
            e_lj, e_c = self.ff._pair_energies(r, i_t, j_t)
            out = out.index_add(0, t((np.arange(C)[:, None] * G + g[None]).ravel()), e_lj + e_c)
        return out.reshape(C, G)

    def _compiled_fixed_environment_pairs(self, x: torch.Tensor, xa: torch.Tensor, groups: np.ndarray,
                                          valid: np.ndarray, gfill: np.ndarray, vec: np.ndarray | None,
                                          heights: np.ndarray | None) -> torch.Tensor:
        """:meth:`_fixed_environment_pairs` without gradients, as one compiled loop
        (:mod:`backmap.forcefield.placement_kernel`): the cost of Monte Carlo trials."""
        from backmap.forcefield.placement_kernel import placement_pair_energies

        C, G, A, _ = xa.shape
        xa = xa.detach()
        if vec is not None:  # all placements of a group as images near its first atom in configuration 0
            V = torch.as_tensor(vec, dtype=xa.dtype)
            xa = xa - torch.round((xa - xa[:1, :, :1]) @ torch.linalg.inv(V)) @ V
        placements = np.ascontiguousarray(xa.permute(1, 0, 2, 3).to(torch.float64).numpy())
        periodic = vec is not None
        in_group = np.full(self.ff.n_atoms, -1, np.int64)
        gid, slot = np.nonzero(valid)
        in_group[groups[gid, slot]] = gid
        vectors = np.asarray(vec if periodic else np.eye(3), np.float64)
        out = np.zeros((C, G))
        tables, pair_params, exclusions = self.ff.kernel_tables()
        placement_pair_energies(
            np.ascontiguousarray(x[0].detach().to(torch.float64).numpy()), vectors, np.linalg.inv(vectors),
            np.asarray(heights if periodic else np.ones(3), np.float64), periodic, placements,
            np.ascontiguousarray(gfill, np.int64), np.ascontiguousarray(valid), in_group,
            *tables, *pair_params, *exclusions, out)
        return torch.as_tensor(out, dtype=self.ff.dtype)

    def _inside_pairs(self, valid: np.ndarray, gfill: np.ndarray, is_excluded) -> tuple[np.ndarray, ...]:
        """(group, slot a, slot b), a < b, of the non-excluded atom pairs inside each group."""
        G, A = valid.shape
        a, b = np.triu_indices(A, 1)
        g = np.repeat(np.arange(G), len(a))
        a, b = np.tile(a, G), np.tile(b, G)
        ok = valid[g, a] & valid[g, b]
        g, a, b = g[ok], a[ok], b[ok]
        i, j = gfill[g, a], gfill[g, b]
        mol = self.ff.params.molecule
        same = mol[i] == mol[j]
        excluded = np.zeros(len(g), bool)
        if same.any():
            excluded[same] = is_excluded(i[same], j[same])
        return g[~excluded], a[~excluded], b[~excluded]

    def _group_index_tables(self) -> dict:
        """Per-topology lookups for :meth:`group_energies`, built once: for each bonded term kind
        and for the excluded pairs, the terms' atoms and which terms each atom is in (CSR), and
        ``is_excluded(i, j)`` for pairs within one molecule."""
        if self._group_tables is None:
            p, N = self.ff.params, self.ff.n_atoms

            def table(atoms: np.ndarray, params: np.ndarray | None) -> dict:
                atoms = np.asarray(atoms, np.int64).reshape(len(atoms), -1)
                order = np.argsort(atoms.ravel(), kind="stable")
                return {"atoms": atoms, "ptr": np.r_[0, np.cumsum(np.bincount(atoms.ravel(), minlength=N))],
                        "term": order // atoms.shape[1], "pos": order % atoms.shape[1],
                        "params": None if params is None else torch.as_tensor(params, dtype=self.ff.dtype)}

            bonded = {name: table(t.atoms, t.params) for name, t in p.bonded.items() if len(t.atoms)}
            self._group_tables = {"bonded": bonded, "excluded": table(p.exclusions, None),
                                  "is_excluded": _exclusion_lookup(p.exclusions, p.molecule, self.ff._excluded_keys)}
        return self._group_tables
