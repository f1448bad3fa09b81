"""Non-bonded energies of trial placements in a fixed environment, as one compiled loop.

The inner loop of whole-unit Monte Carlo (``vae_mc``): G groups of atoms, each with C alternative
placements (the current one and the trials), against every other atom, which stays where it is.
Per group the atoms whose periodic image lies within reach of the group (cut-off + the group's
radius over all its placements) are found once, from a cell grid of the box built once per call:
only the cells (and their images) within reach are visited, not all N atoms per group, which was
most of the call's time in a melt of ~10⁴ atoms. Then every (placement, group atom, neighbour)
pair within the cut-off adds its LJ + Coulomb energy, in the same functional forms as
:meth:`ForceField._pair_energies` (potential-shifted LJ and reaction field with the tangent-line
cores). One pass over the pairs in float64 with no temporaries: torch's version of the same sum
makes some twenty passes over arrays of ~10⁶ pairs per call.

Used by ``ForceField.group_energies(..., environment_fixed=True)`` when no gradient is needed.
"""
from __future__ import annotations

import numpy as np
from numba import njit

EPS2 = 1e-12  # as backmap.forcefield.geometry.EPS2 (under the square root of every distance)


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _lj(r, c6, c12, shift):
    inv2 = 1.0 / (r * r)
    inv6 = inv2 * inv2 * inv2
    return inv6 * (c12 * inv6 - c6) - shift


@njit(cache=True, nogil=True, fastmath=True)
def _pair(r, c6, c12, rs, sh, qq, rvdw, rcoulomb, k_rf, c_rf, r_min):
    """LJ + Coulomb energy of one pair at distance r (scalars only: no arrays cross the call)."""
    e = 0.0
    if r < rvdw:
        if r < rs:  # tangent line below the soft core
            rs6 = rs * rs * rs * rs * rs * rs
            slope = (-12.0 * c12 / (rs6 * rs6 * rs)) + 6.0 * c6 / (rs6 * rs)
            e += _lj(rs, c6, c12, sh) + slope * (r - rs)
        else:
            e += _lj(r, c6, c12, sh)
    if r < rcoulomb and qq != 0.0:
        if r < r_min:
            e += qq * (1.0 / r_min + k_rf * r_min * r_min - c_rf) + qq * (-1.0 / (r_min * r_min) + 2.0 * k_rf * r_min) \
                * (r - r_min)
        else:
            e += qq * (1.0 / r + k_rf * r * r - c_rf)
    return e


@njit(cache=True, nogil=True, inline="always")
def _excluded(i, j, ptr, partners):
    lo, hi = ptr[i], ptr[i + 1]
    for k in range(lo, hi):
        if partners[k] == j:
            return True
    return False


CELL_WIDTH = 0.5  # nm, about: the grid's cell edge (0.4–0.6 nm are equally fast for sPS; 0.25 nm is slower)


@njit(cache=True, nogil=True)
def _cell_grid(x, vectors, inverse, heights, width):
    """The atoms binned into n[0] × n[1] × n[2] cells of the unit cell (fractional coordinates in
    [0, 1), n[k] = heights[k] / ``width`` rounded down), as CSR: cell q = (i0 · n[1] + i1) · n[2] + i2
    holds the atoms ``order[start[q]:start[q + 1]]``, at their wrapped positions
    ``xs[start[q]:start[q + 1]]`` (contiguous, in cell order: the scan reads them in a row). No
    more cells than about twice the atoms: a large box of few atoms gets wider cells instead."""
    N = x.shape[0]
    n = np.empty(3, np.int64)
    while True:
        for k in range(3):
            n[k] = max(1, int(heights[k] / width))
        if float(n[0]) * n[1] * n[2] <= 2.0 * N + 8.0:  # (float: no overflow for absurd boxes)
            break
        width *= 1.25
    frac = np.empty((N, 3))
    cell = np.empty(N, np.int64)
    count = np.zeros(n[0] * n[1] * n[2] + 1, np.int64)
    for j in range(N):
        q = 0
        for k in range(3):
            s = x[j, 0] * inverse[0, k] + x[j, 1] * inverse[1, k] + x[j, 2] * inverse[2, k]
            s -= np.floor(s)
            i = int(s * n[k])
            i = min(max(i, 0), n[k] - 1)  # s rounded to 1.0 (s a hair below an integer) stays in the last cell
            frac[j, k] = s
            q = q * n[k] + i
        cell[j] = q
        count[q + 1] += 1
    start = np.cumsum(count)
    fill = start[:-1].copy()
    order = np.empty(N, np.int64)
    xs = np.empty((N, 3))
    for j in range(N):
        p = fill[cell[j]]
        fill[cell[j]] += 1
        order[p] = j
        for k in range(3):
            xs[p, k] = frac[j, 0] * vectors[0, k] + frac[j, 1] * vectors[1, k] + frac[j, 2] * vectors[2, k]
    return n, start, order, xs


@njit(cache=True, nogil=True, fastmath=True)
def placement_pair_energies(x, vectors, inverse, heights, periodic, placements, atoms, valid, in_group,
                            lj_type, charges, n_types, c6t, c12t, softt, shiftt, cutoff, rvdw, rcoulomb,
                            f_coulomb, k_rf, c_rf, r_min, ex_ptr, ex_partners, out):
    """Add to ``out`` (C, G) the non-bonded energies of ``placements`` (G, C, A, 3) of the groups'
    atoms ``atoms`` (G, A; ``valid`` marks real slots) with the other atoms ``x`` (N, 3) and with
    each other (per placement), skipping excluded pairs (CSR ``ex_ptr``/``ex_partners``, both
    directions) and atoms of the group itself (``in_group`` (N,) = its group, or -1).
    ``vectors`` rows are the box vectors, ``inverse`` their inverse, ``heights`` (3,) the distances
    between opposite faces (``periodic`` False: no images); the cell grid finds every image within
    reach, however many."""
    G, C, A = placements.shape[0], placements.shape[1], placements.shape[2]
    N = x.shape[0]
    cut2 = cutoff * cutoff
    soa = np.empty((A, 3, C))
    mid = np.empty((A, 3))
    reach_a2 = np.empty(A)
    # where the current group's neighbours may be: spans [lo, hi) of the atoms ``ids`` at ``pos``,
    # each moved by a translation (periodic: the cells within reach and their images)
    spans = np.empty((1, 2), np.int64)
    shifts = np.zeros((1, 3))
    if periodic:
        n, start, ids, pos = _cell_grid(x, vectors, inverse, heights, CELL_WIDTH)
        # a cell's circumradius (half its longest diagonal): a cell whose centre is further than
        # reach + this from the group's centre holds no atom within reach
        rcell = 0.0
        for s1 in (-1.0, 1.0):
            for s2 in (-1.0, 1.0):
                d2 = 0.0
                for k in range(3):
                    d = vectors[0, k] / n[0] + s1 * vectors[1, k] / n[1] + s2 * vectors[2, k] / n[2]
                    d2 += d * d
                rcell = max(rcell, 0.5 * np.sqrt(d2))
    else:  # all atoms as they are: one span
        ids = np.arange(N)
        pos = np.ascontiguousarray(x)
        spans[0, 0], spans[0, 1] = 0, N
    for g in range(G):
        # the group's centre and radius over all its placements
        cx = cy = cz = 0.0
        n_in = 0
        for c in range(C):
            for a in range(A):
                if valid[g, a]:
                    cx += placements[g, c, a, 0]
                    cy += placements[g, c, a, 1]
                    cz += placements[g, c, a, 2]
                    n_in += 1
        if n_in == 0:
            continue
        cx /= n_in
        cy /= n_in
        cz /= n_in
        rad2 = 0.0
        for c in range(C):
            for a in range(A):
                if valid[g, a]:
                    dx = placements[g, c, a, 0] - cx
                    dy = placements[g, c, a, 1] - cy
                    dz = placements[g, c, a, 2] - cz
                    d2 = dx * dx + dy * dy + dz * dz
                    if d2 > rad2:
                        rad2 = d2
        reach = cutoff + np.sqrt(rad2) + 1e-4
        reach2 = reach * reach
        # each atom's placements: coordinates by placement (contiguous), their middle and spread
        for a in range(A):
            mx = my = mz = 0.0
            for c in range(C):
                for k in range(3):
                    soa[a, k, c] = placements[g, c, a, k]
                mx += placements[g, c, a, 0]
                my += placements[g, c, a, 1]
                mz += placements[g, c, a, 2]
            mid[a, 0], mid[a, 1], mid[a, 2] = mx / C, my / C, mz / C
            spread2 = 0.0
            for c in range(C):
                dx = soa[a, 0, c] - mid[a, 0]
                dy = soa[a, 1, c] - mid[a, 1]
                dz = soa[a, 2, c] - mid[a, 2]
                spread2 = max(spread2, dx * dx + dy * dy + dz * dz)
            ra = cutoff + np.sqrt(spread2) + 1e-4
            reach_a2[a] = ra * ra
        n_spans = 1
        if periodic:
            # An image within reach is less than reach / h_k away from the centre in fractional
            # coordinate k (h_k · |Δs_k| is its distance from the centre's plane parallel to faces
            # k). So the unwrapped cells i_k = lo_k..hi_k hold all of them: unwrapped cell i is
            # cell i mod n of the unit cell moved by the lattice vector floor(i / n). Distinct
            # unwrapped cells are distinct (cell, image) pairs: where reach > h_k / 2 a cell comes
            # twice, as two images, and every image of an atom comes at most once. (Rounding at
            # cell edges loses nothing: an atom within the cut-off of a placement is 1e-4 nm inside
            # the reach.)
            f = np.empty(3)
            lo = np.empty(3, np.int64)
            hi = np.empty(3, np.int64)
            for k in range(3):
                f[k] = cx * inverse[0, k] + cy * inverse[1, k] + cz * inverse[2, k]
                lo[k] = int(np.floor((f[k] - reach / heights[k]) * n[k]))
                hi[k] = int(np.floor((f[k] + reach / heights[k]) * n[k]))
            size = (hi[0] - lo[0] + 1) * (hi[1] - lo[1] + 1) * (hi[2] - lo[2] + 1)
            if size > spans.shape[0]:
                spans = np.empty((size, 2), np.int64)
                shifts = np.empty((size, 3))
            rr2 = (reach + rcell) * (reach + rcell)
            n_spans = 0
            for i0 in range(lo[0], hi[0] + 1):
                l0 = i0 // n[0]
                w0 = i0 - l0 * n[0]
                u0 = (i0 + 0.5) / n[0]
                for i1 in range(lo[1], hi[1] + 1):
                    l1 = i1 // n[1]
                    w1 = i1 - l1 * n[1]
                    u1 = (i1 + 0.5) / n[1]
                    for i2 in range(lo[2], hi[2] + 1):
                        l2 = i2 // n[2]
                        w2 = i2 - l2 * n[2]
                        u2 = (i2 + 0.5) / n[2]
                        q = (w0 * n[1] + w1) * n[2] + w2
                        if start[q] == start[q + 1]:
                            continue
                        # the (unwrapped) cell's centre: skip the corners of the range, out of reach
                        dx = u0 * vectors[0, 0] + u1 * vectors[1, 0] + u2 * vectors[2, 0] - cx
                        dy = u0 * vectors[0, 1] + u1 * vectors[1, 1] + u2 * vectors[2, 1] - cy
                        dz = u0 * vectors[0, 2] + u1 * vectors[1, 2] + u2 * vectors[2, 2] - cz
                        if dx * dx + dy * dy + dz * dz >= rr2:
                            continue
                        # its atoms: their wrapped positions moved by the lattice vector
                        spans[n_spans, 0], spans[n_spans, 1] = start[q], start[q + 1]
                        for k in range(3):
                            shifts[n_spans, k] = l0 * vectors[0, k] + l1 * vectors[1, k] + l2 * vectors[2, k]
                        n_spans += 1
        for v in range(n_spans):
            tx, ty, tz = shifts[v, 0], shifts[v, 1], shifts[v, 2]
            for p in range(spans[v, 0], spans[v, 1]):
                # the image of j, in lab coordinates
                jx, jy, jz = pos[p, 0] + tx, pos[p, 1] + ty, pos[p, 2] + tz
                dx, dy, dz = jx - cx, jy - cy, jz - cz
                if dx * dx + dy * dy + dz * dz >= reach2:
                    continue
                j = ids[p]
                if in_group[j] == g:
                    continue
                tj, qj = lj_type[j], charges[j]
                for a in range(A):
                    if not valid[g, a]:
                        continue
                    dx = mid[a, 0] - jx
                    dy = mid[a, 1] - jy
                    dz = mid[a, 2] - jz
                    if dx * dx + dy * dy + dz * dz >= reach_a2[a]:
                        continue  # no placement of this atom comes within the cut-off
                    i = atoms[g, a]
                    if _excluded(i, j, ex_ptr, ex_partners):
                        continue
                    tt = lj_type[i] * n_types + tj
                    c6, c12, rs, sh = c6t[tt], c12t[tt], softt[tt], shiftt[tt]
                    qq = f_coulomb * charges[i] * qj
                    for c in range(C):
                        dx = soa[a, 0, c] - jx
                        dy = soa[a, 1, c] - jy
                        dz = soa[a, 2, c] - jz
                        d2 = dx * dx + dy * dy + dz * dz
                        if d2 < cut2:
                            r = np.sqrt(d2 + EPS2)
                            out[c, g] += _pair(r, c6, c12, rs, sh, qq, rvdw, rcoulomb, k_rf, c_rf, r_min)
        # pairs inside the group, once
        for a in range(A):
            if not valid[g, a]:
                continue
            i = atoms[g, a]
            for b in range(a + 1, A):
                if not valid[g, b]:
                    continue
                j = atoms[g, b]
                if _excluded(i, j, ex_ptr, ex_partners):
                    continue
                tt = lj_type[i] * n_types + lj_type[j]
                c6, c12, rs, sh = c6t[tt], c12t[tt], softt[tt], shiftt[tt]
                qq = f_coulomb * charges[i] * charges[j]
                for c in range(C):
                    dx = placements[g, c, a, 0] - placements[g, c, b, 0]
                    dy = placements[g, c, a, 1] - placements[g, c, b, 1]
                    dz = placements[g, c, a, 2] - placements[g, c, b, 2]
                    if periodic:  # the nearest image: unique within the cut-off (at most half a box height)
                        f0 = np.rint(dx * inverse[0, 0] + dy * inverse[1, 0] + dz * inverse[2, 0])
                        f1 = np.rint(dx * inverse[0, 1] + dy * inverse[1, 1] + dz * inverse[2, 1])
                        f2 = np.rint(dx * inverse[0, 2] + dy * inverse[1, 2] + dz * inverse[2, 2])
                        dx -= f0 * vectors[0, 0] + f1 * vectors[1, 0] + f2 * vectors[2, 0]
                        dy -= f0 * vectors[0, 1] + f1 * vectors[1, 1] + f2 * vectors[2, 1]
                        dz -= f0 * vectors[0, 2] + f1 * vectors[1, 2] + f2 * vectors[2, 2]
                    d2 = dx * dx + dy * dy + dz * dz
                    if d2 < cut2:
                        r = np.sqrt(d2 + EPS2)
                        out[c, g] += _pair(r, c6, c12, rs, sh, qq, rvdw, rcoulomb, k_rf, c_rf, r_min)


@njit(cache=True, nogil=True, fastmath=True)
def cross_pair_energies(placements, atoms, others, other_atoms, vectors, inverse, periodic, lj_type, charges,
                        n_types, c6t, c12t, softt, shiftt, cutoff, rvdw, rcoulomb, f_coulomb, k_rf, c_rf, r_min,
                        ex_ptr, ex_partners, out):
    """Add to ``out`` (C,) the non-bonded energy between each placement (C, A, 3) of ``atoms`` (A,)
    and the atoms ``other_atoms`` (P,) at ``others`` (P, 3), nearest images (the cut-off is at most
    half a box height), excluded pairs skipped."""
    C, A, P = placements.shape[0], placements.shape[1], others.shape[0]
    cut2 = cutoff * cutoff
    for a in range(A):
        i = atoms[a]
        for p in range(P):
            j = other_atoms[p]
            if _excluded(i, j, ex_ptr, ex_partners):
                continue
            tt = lj_type[i] * n_types + lj_type[j]
            c6, c12, rs, sh = c6t[tt], c12t[tt], softt[tt], shiftt[tt]
            qq = f_coulomb * charges[i] * charges[j]
            for c in range(C):
                dx = placements[c, a, 0] - others[p, 0]
                dy = placements[c, a, 1] - others[p, 1]
                dz = placements[c, a, 2] - others[p, 2]
                if periodic:
                    f0 = np.rint(dx * inverse[0, 0] + dy * inverse[1, 0] + dz * inverse[2, 0])
                    f1 = np.rint(dx * inverse[0, 1] + dy * inverse[1, 1] + dz * inverse[2, 1])
                    f2 = np.rint(dx * inverse[0, 2] + dy * inverse[1, 2] + dz * inverse[2, 2])
                    dx -= f0 * vectors[0, 0] + f1 * vectors[1, 0] + f2 * vectors[2, 0]
                    dy -= f0 * vectors[0, 1] + f1 * vectors[1, 1] + f2 * vectors[2, 1]
                    dz -= f0 * vectors[0, 2] + f1 * vectors[1, 2] + f2 * vectors[2, 2]
                d2 = dx * dx + dy * dy + dz * dz
                if d2 < cut2:
                    out[c] += _pair(np.sqrt(d2 + EPS2), c6, c12, rs, sh, qq, rvdw, rcoulomb, k_rf, c_rf, r_min)
