"""Neighbour pairs within a cut-off under periodic boundaries, for any triclinic box.

A cell grid in fractional coordinates, with cells at least one cut-off high along every box
normal, so that all neighbours of an atom lie in its own or the 26 adjacent cells (taken with
their periodic image when the grid wraps). Work and memory grow linearly with the number of atoms;
distances are screened in torch, in chunks of cells. Works for strongly skewed boxes (the sPS
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
    wrapped = torch.as_tensor(frac @ V, dtype=torch.float32)
    n = np.maximum(1, np.floor(heights / max(cutoff, MIN_CELL)).astype(int))
    cell3 = np.minimum((frac * n).astype(int), n - 1)
    flat = (cell3[:, 0] * n[1] + cell3[:, 1]) * n[2] + cell3[:, 2]
    n_cells = int(np.prod(n))
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=n_cells)
    width = int(counts.max())
    start = np.r_[0, np.cumsum(counts)[:-1]]
    slot = np.arange(n_atoms) - np.repeat(start, counts)
    table = np.full((n_cells, width), -1, np.int64)
    table[flat[order], slot] = order
    table_t = torch.as_tensor(table)
    grid = np.stack(np.unravel_index(np.arange(n_cells), tuple(n)), 1)
    origin = torch.as_tensor((grid / n) @ V, dtype=torch.float32)  # cell corners: small local coordinates
    cells_per_chunk = max(1, _CHUNK // (width * width))
    cut2 = (cutoff + 1e-4) ** 2  # a hair of skin: float32 screening, the energy applies the exact cut-off
    found_i, found_j, found_l = [], [], []
    for off in _OFFSETS:
        nb = grid + off
        lattice = np.floor_divide(nb, n)  # periodic image of the neighbour cell
        nb_flat = np.ravel_multi_index(tuple((nb - lattice * n).T), tuple(n))
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
