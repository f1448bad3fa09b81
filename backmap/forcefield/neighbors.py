"""Neighbour pairs within a cut-off under periodic boundaries, for any triclinic box.

A cell grid in fractional coordinates, with cells at least one cut-off high along every box
normal, so that all neighbours of an atom lie in its own or the 26 adjacent cells (taken with
their periodic image when the grid wraps). Work and memory grow linearly with the number of atoms;
dense cells are screened in torch as padded blocks, sparse ones (a short cut-off) as a list of their
atom pairs, both in chunks and in the same order. Works for strongly skewed boxes (the sPS
reference has γ ≈ 119°), where MDAnalysis' grid search refuses cut-offs above ~0.4 × box height.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from backmap.devices import to_host
from backmap.errors import BackmapError

# half shell: the own cell and 13 of the 26 neighbours; each cell pair (with its image) is visited once
_OFFSETS = np.array([o for o in itertools.product((-1, 0, 1), repeat=3) if o >= (0, 0, 0)])
_CHUNK = 4_000_000  # candidate pairs screened at once
#: the smallest cell edge (nm): a short cut-off (the 0.1 nm clash search) would otherwise make a grid
#: of mostly empty cells, each visited 14 times (sPS: 64 000 cells for 5 832 atoms)
MIN_CELL = 0.3
#: a padded cell table this many times larger than the pairs it holds is screened as a list instead
SPARSE_PADDING = 4


def box_heights(vectors: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of the box (the widths that limit the cut-off)."""
    a, b, c = vectors
    volume = abs(np.dot(a, np.cross(b, c)))
    return volume / np.array([np.linalg.norm(np.cross(b, c)), np.linalg.norm(np.cross(c, a)),
                              np.linalg.norm(np.cross(a, b))])


def neighbour_pairs(positions: np.ndarray, vectors: np.ndarray, cutoff: float,
                    excluded_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) closer than ``cutoff`` (minimum image), minus excluded ones, and for each the
    lattice vector that turns ``x[j] - x[i]`` into that image. ``excluded_keys``: sorted ``i*n+j``."""
    x = np.asarray(positions, np.float64)
    V = np.asarray(vectors, np.float64)
    n_atoms = len(x)
    heights = box_heights(V)
    if cutoff > 0.5 * heights.min():
        raise BackmapError(f"cut-off {cutoff} nm is more than half the box height ({heights.min():.3f} nm)")
    frac = x @ np.linalg.inv(V)
    image = np.floor(frac)  # x = wrapped + image @ V
    frac -= image
    n = np.maximum(1, np.floor(heights / max(cutoff, MIN_CELL)).astype(int))
    cell3 = np.minimum((frac * n).astype(int), n - 1)
    flat = (cell3[:, 0] * n[1] + cell3[:, 1]) * n[2] + cell3[:, 2]
    n_cells = int(np.prod(n))
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=n_cells)
    grid = np.stack(np.unravel_index(np.arange(n_cells), tuple(n)), 1)
    cut2 = (cutoff + 1e-4) ** 2  # a hair of skin: float32 screening; callers apply the exact cut-off
    neighbours = [_neighbour_cells(grid, off, n) for off in _OFFSETS]
    # sparse cells (a short cut-off: the clash search) waste most of a padded table; dense ones
    # (the force field's 1 nm) are screened fastest as padded blocks
    candidates = sum(int((counts * counts[cells]).sum()) for cells, _lattice in neighbours)
    padded = len(_OFFSETS) * n_cells * int(counts.max()) ** 2
    screen = _screen_listed if padded > SPARSE_PADDING * candidates else _screen_padded
    found_i, found_j, found_l = screen(frac @ V, V, (grid / n) @ V, neighbours, order, counts, cut2)
    i = np.concatenate(found_i)
    j = np.concatenate(found_j)
    lat = np.concatenate(found_l).astype(np.float64)
    swap = i > j  # canonical order i < j: the image of (j, i) is the mirror one
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    lat[swap] *= -1
    if len(excluded_keys):
        keys = i * n_atoms + j
        pos = np.minimum(np.searchsorted(excluded_keys, keys), len(excluded_keys) - 1)
        keep = excluded_keys[pos] != keys
        i, j, lat = i[keep], j[keep], lat[keep]
    # x_j + shift - x_i is the found image: shift = (image_i - image_j + lattice) @ V, exactly a lattice vector
    shift = (image[i] - image[j] + lat) @ V
    return i, j, shift


def _neighbour_cells(grid: np.ndarray, off: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's neighbour at offset ``off`` (flat index) and the lattice image it lies in."""
    nb = grid + off
    lattice = np.floor_divide(nb, n)  # periodic image of the neighbour cell
    return np.ravel_multi_index(tuple((nb - lattice * n).T), tuple(n)), lattice


def _screen_padded(wrapped: np.ndarray, V: np.ndarray, corners: np.ndarray, neighbours: list, order: np.ndarray,
                   counts: np.ndarray, cut2: float) -> tuple[list, list, list]:
    """Pairs within sqrt(cut2) as (i, j, lattice) pieces: every cell's atoms (``order`` sorted by
    cell, ``counts`` per cell, ``corners`` its origin) against those of each half-shell neighbour
    (``neighbours``: per offset each cell's neighbour and its lattice image) in padded (cells,
    width, width) blocks, one batched matmul per chunk."""
    n_cells = len(counts)
    width = int(counts.max())
    start = np.r_[0, np.cumsum(counts)[:-1]]
    slot = np.arange(len(order)) - np.repeat(start, counts)
    table = np.full((n_cells, width), -1, np.int64)
    table[np.repeat(np.arange(n_cells), counts), slot] = order
    table_t = torch.as_tensor(table)
    wrapped = torch.as_tensor(wrapped, dtype=torch.float32)
    origin = torch.as_tensor(corners, dtype=torch.float32)  # small local coordinates
    cells_per_chunk = max(1, _CHUNK // (width * width))
    found_i, found_j, found_l = [], [], []
    for off, (nb_flat, lattice) in zip(_OFFSETS, neighbours):
        shift = torch.as_tensor(lattice @ V, dtype=torch.float32)
        same_cell = not off.any()
        for c0 in range(0, n_cells, cells_per_chunk):
            c1 = min(n_cells, c0 + cells_per_chunk)
            a, b = table_t[c0:c1], table_t[torch.as_tensor(nb_flat[c0:c1])]
            xa = wrapped[a.clamp(min=0)] - origin[c0:c1, None]
            xb = wrapped[b.clamp(min=0)] + (shift[c0:c1] - origin[c0:c1])[:, None]
            d2 = torch.baddbmm((xa * xa).sum(-1)[:, :, None] + (xb * xb).sum(-1)[:, None, :], xa,
                               xb.transpose(1, 2), alpha=-2.0)
            ok = (d2 < cut2) & (a[:, :, None] >= 0) & (b[:, None, :] >= 0)
            if same_cell:
                ok &= a[:, :, None] < b[:, None, :]
            ci, ai, bi = torch.nonzero(ok, as_tuple=True)
            found_i.append(to_host(a[ci, ai]))
            found_j.append(to_host(b[ci, bi]))
            found_l.append(lattice[c0:c1][to_host(ci)])
    return found_i, found_j, found_l


def _screen_listed(wrapped: np.ndarray, V: np.ndarray, corners: np.ndarray, neighbours: list, order: np.ndarray,
                   counts: np.ndarray, cut2: float) -> tuple[list, list, list]:
    """:func:`_screen_padded` without the padding: every atom pair of every (cell, half-shell
    neighbour) listed, in the same order (offset, cell, atom, atom), distances in float64."""
    n_cells = len(counts)
    start = np.r_[0, np.cumsum(counts)[:-1]]
    cells, lattices = zip(*neighbours)
    cell_a = np.tile(np.arange(n_cells), len(_OFFSETS))
    cell_b, lattice = np.concatenate(cells), np.concatenate(lattices)
    same = np.repeat(~_OFFSETS.any(1), n_cells)
    size = counts[cell_a] * counts[cell_b]
    keep = size > 0
    cell_a, cell_b, lattice, same, size = cell_a[keep], cell_b[keep], lattice[keep], same[keep], size[keep]
    shift = [np.ascontiguousarray(c) for c in (lattice @ V).T]
    coords = [np.ascontiguousarray(c) for c in np.asarray(wrapped, np.float64).T]
    ends = np.cumsum(size)
    found_i, found_j, found_l = [], [], []
    lo = 0
    while lo < len(size):  # chunks of about _CHUNK candidate pairs
        hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + _CHUNK, side="right")))
        pair = np.repeat(np.arange(lo, hi), size[lo:hi])
        k = np.arange(len(pair)) - np.repeat(ends[lo:hi] - size[lo:hi] - (ends[lo - 1] if lo else 0), size[lo:hi])
        width = counts[cell_b[pair]]
        slot_a, slot_b = k // width, k % width
        a, b = order[start[cell_a[pair]] + slot_a], order[start[cell_b[pair]] + slot_b]
        d2 = np.zeros(len(pair))
        for c in range(3):
            d = coords[c].take(b) - coords[c].take(a) + shift[c].take(pair)
            d2 += d * d
        ok = (d2 < cut2) & (~same[pair] | (slot_a < slot_b))
        found_i.append(a[ok])
        found_j.append(b[ok])
        found_l.append(lattice[pair[ok]])
        lo = hi
    return found_i, found_j, found_l
