"""Non-bonded energies of trial placements in a fixed environment, as one compiled loop.

The inner loop of whole-unit Monte Carlo (``vae_mc``): G groups of atoms, each with C alternative
placements (the current one and the trials), against every other atom, which stays where it is,
in the same functional forms as :meth:`ForceField._pair_energies` (potential-shifted LJ and
reaction field with the tangent-line cores), in float64.

A cell grid of the box is built once per call. Then per group:

1. Its atoms are cut into clusters along the group's longest axis (each at most ``CLUSTER_WIDTH``
   long and ``CLUSTER_ATOMS`` atoms): a unit stretched over a few nm would otherwise have each of
   its atoms look at every atom within reach of any of them.
2. Per cluster, the images of the atoms within reach (cut-off + the cluster's radius over all its
   placements) are gathered from the grid (only the cells and images within reach are visited)
   into contiguous arrays, sorted by LJ type and, within a type, by slab along the cluster's
   longest axis; a bit mask per neighbour marks the cluster atoms it is excluded with.
3. Per cluster atom, placement and LJ type, one loop (:func:`_block_energy`) over the neighbours of
   that type in the slabs within the atom's reach. The LJ parameters are constants there and the
   body is branch-free (each term is computed and selected; pairs beyond the cut-off or excluded
   add zero), so LLVM vectorises it: it evaluates two to four times as many pairs as lie within
   the cut-off, but several per instruction and without mispredicted branches, and takes a
   fraction of the time of a scalar loop over just those. With many placements the atom's own
   neighbours (within its reach of its placements' middle) are first copied out
   (:func:`_own_neighbours`), once for all its placements.
4. Pairs inside the group, once per placement (nearest image; few, scalar).

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


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def _nearest_d2(dx, dy, dz, periodic, vectors, inverse):
    """Squared length of the difference (dx, dy, dz) at its nearest image (rounded fractional
    coordinates: exact within half a box height, which bounds the cut-off)."""
    if periodic:
        f0 = np.rint(dx * inverse[0, 0] + dy * inverse[1, 0] + dz * inverse[2, 0])
        f1 = np.rint(dx * inverse[0, 1] + dy * inverse[1, 1] + dz * inverse[2, 1])
        f2 = np.rint(dx * inverse[0, 2] + dy * inverse[1, 2] + dz * inverse[2, 2])
        dx -= f0 * vectors[0, 0] + f1 * vectors[1, 0] + f2 * vectors[2, 0]
        dy -= f0 * vectors[0, 1] + f1 * vectors[1, 1] + f2 * vectors[2, 1]
        dz -= f0 * vectors[0, 2] + f1 * vectors[1, 2] + f2 * vectors[2, 2]
    return dx * dx + dy * dy + dz * dz


CELL_WIDTH = 0.5  # nm, about: the grid's cell edge (0.3 and 0.4 nm are slower for sPS, 0.6 and 0.7 as fast)
CLUSTER_WIDTH = 1.0  # nm: the longest a cluster of a group's atoms gets along the group's longest axis
CLUSTER_ATOMS = 64  # at most: one bit per cluster atom in the exclusion masks (int64)
SLAB_WIDTH = 0.1  # nm: a cluster's neighbours are binned in slabs this thick along its longest axis
OWN_NEIGHBOURS_FROM = 6  # placements: from this many on, each atom's own neighbours are copied out first


@njit(cache=True, nogil=True)
def _soft_tangents(c6t, c12t, softt, shiftt):
    """Per LJ type pair, the tangent line below the soft core r_s: (energy at r_s, slope)."""
    e_soft = np.zeros(c6t.shape[0])
    slope_soft = np.zeros(c6t.shape[0])
    for tt in range(c6t.shape[0]):
        rs = softt[tt]
        if rs > 0.0:
            rs6 = rs * rs * rs * rs * rs * rs
            slope_soft[tt] = (-12.0 * c12t[tt] / (rs6 * rs6 * rs)) + 6.0 * c6t[tt] / (rs6 * rs)
            e_soft[tt] = _lj(rs, c6t[tt], c12t[tt], shiftt[tt])
    return e_soft, slope_soft


@njit(cache=True, nogil=True)
def _coulomb_tangent(r_min, k_rf, c_rf):
    """The Coulomb tangent below r_min, qq · (q0 + q1 · (r − r_min)): (q0, q1)."""
    if r_min > 0.0:
        return 1.0 / r_min + k_rf * r_min * r_min - c_rf, -1.0 / (r_min * r_min) + 2.0 * k_rf * r_min
    return 0.0, 0.0


@njit(cache=True, nogil=True)
def _cell_radius(vectors, n):
    """A grid cell's circumradius (half its longest diagonal): a cell whose centre is further than
    reach + this from a point holds no atom within reach of it."""
    rcell = 0.0
    for s1 in (-1.0, 1.0):
        for s2 in (-1.0, 1.0):
            d2 = 0.0
            for k in range(3):
                d = vectors[0, k] / n[0] + s1 * vectors[1, k] / n[1] + s2 * vectors[2, k] / n[2]
                d2 += d * d
            rcell = max(rcell, 0.5 * np.sqrt(d2))
    return rcell


@njit(cache=True, nogil=True)  # (no fastmath: both passes must compute the same s, bit for bit)
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
    n0, n1, n2 = n[0], n[1], n[2]
    cell = np.empty(N, np.int64)
    for j in range(N):  # (no histogram in this loop: it vectorises)
        s0 = x[j, 0] * inverse[0, 0] + x[j, 1] * inverse[1, 0] + x[j, 2] * inverse[2, 0]
        s1 = x[j, 0] * inverse[0, 1] + x[j, 1] * inverse[1, 1] + x[j, 2] * inverse[2, 1]
        s2 = x[j, 0] * inverse[0, 2] + x[j, 1] * inverse[1, 2] + x[j, 2] * inverse[2, 2]
        # s rounded to 1.0 (s a hair below an integer) stays in the last cell
        i0 = min(max(int((s0 - np.floor(s0)) * n0), 0), n0 - 1)
        i1 = min(max(int((s1 - np.floor(s1)) * n1), 0), n1 - 1)
        i2 = min(max(int((s2 - np.floor(s2)) * n2), 0), n2 - 1)
        cell[j] = (i0 * n1 + i1) * n2 + i2
    start = np.zeros(n0 * n1 * n2 + 1, np.int64)
    for j in range(N):
        start[cell[j] + 1] += 1
    for q in range(n0 * n1 * n2):
        start[q + 1] += start[q]
    order = np.empty(N, np.int64)
    xs = np.empty((N, 3))
    for j in range(N):
        p = start[cell[j]]
        start[cell[j]] += 1  # (moves each cell's start to the next one's: moved back below)
        order[p] = j
        s0 = x[j, 0] * inverse[0, 0] + x[j, 1] * inverse[1, 0] + x[j, 2] * inverse[2, 0]
        s1 = x[j, 0] * inverse[0, 1] + x[j, 1] * inverse[1, 1] + x[j, 2] * inverse[2, 1]
        s2 = x[j, 0] * inverse[0, 2] + x[j, 1] * inverse[1, 2] + x[j, 2] * inverse[2, 2]
        s0 -= np.floor(s0)
        s1 -= np.floor(s1)
        s2 -= np.floor(s2)
        for k in range(3):
            xs[p, k] = s0 * vectors[0, k] + s1 * vectors[1, k] + s2 * vectors[2, k]
    for q in range(n0 * n1 * n2, 0, -1):
        start[q] = start[q - 1]
    start[0] = 0
    return n, start, order, xs


@njit(cache=True, nogil=True)
def _cell_spans(cx, cy, cz, reach, vectors, inverse, heights, n, start, rcell, spans, shifts):
    """The cells of the grid (:func:`_cell_grid`) that may hold an image within ``reach`` of the
    point (cx, cy, cz), as spans [lo, hi) of the grid's order, each with the lattice translation of
    its image (rows of ``spans``/``shifts``, regrown if too short): returns spans, shifts, count.

    An image within reach is less than reach / h_k away from the point in fractional coordinate k
    (h_k · |Δs_k| is its distance from the point's plane parallel to faces k). So the unwrapped
    cells i_k = lo_k..hi_k hold all of them: unwrapped cell i is cell i mod n of the unit cell moved
    by the lattice vector floor(i / n). Distinct unwrapped cells are distinct (cell, image) pairs:
    where reach > h_k / 2 a cell comes twice, as two images, and every image of an atom comes at
    most once. (Rounding at cell edges loses nothing: an atom within the cut-off of a placement is
    1e-4 nm inside the reach.)"""
    lo = np.empty(3, np.int64)
    hi = np.empty(3, np.int64)
    for k in range(3):
        f = cx * inverse[0, k] + cy * inverse[1, k] + cz * inverse[2, k]
        lo[k] = int(np.floor((f - reach / heights[k]) * n[k]))
        hi[k] = int(np.floor((f + reach / heights[k]) * n[k]))
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
                spans[n_spans, 0], spans[n_spans, 1] = start[q], start[q + 1]
                for k in range(3):
                    shifts[n_spans, k] = l0 * vectors[0, k] + l1 * vectors[1, k] + l2 * vectors[2, k]
                n_spans += 1
    return spans, shifts, n_spans


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _gather(cx, cy, cz, reach, axis, spans, shifts, n_spans, pos, ids, lj_type, charges, in_group, g, n_types,
            fbuf, ibuf):
    """The images in ``spans`` (of the grid's order: ``pos``, ``ids``) within ``reach`` of
    (cx, cy, cz), except atoms of group g, into columns 0..M-1 of the buffers (as many columns as
    the spans hold), sorted by LJ type, then by slab (``SLAB_WIDTH``) along Cartesian ``axis`` from
    the centre - reach: positions in rows ``fbuf[3:6]``, charges in ``fbuf[6]``, atom indices in
    ``ibuf[2]`` (rows ``fbuf[0:3]``, ``ibuf[0:2]`` are scratch). Returns M, the number of slabs S
    and the offsets off (n_types · S + 1,): the neighbours of type t in slabs s0..s1 are columns
    off[t · S + s0] to off[t · S + s1 + 1] - 1."""
    reach2 = reach * reach
    M = 0
    for v in range(n_spans):
        tx, ty, tz = shifts[v, 0], shifts[v, 1], shifts[v, 2]
        for p in range(spans[v, 0], spans[v, 1]):
            jx, jy, jz = pos[p, 0] + tx, pos[p, 1] + ty, pos[p, 2] + tz
            dx, dy, dz = jx - cx, jy - cy, jz - cz
            # (without a branch: every candidate is written, and kept by counting it)
            fbuf[0, M], fbuf[1, M], fbuf[2, M] = jx, jy, jz
            ibuf[0, M] = ids[p]
            M += (dx * dx + dy * dy + dz * dz < reach2) & (in_group[ids[p]] != g)
    # counting sort by (type, slab)
    n_slabs = int(2.0 * reach / SLAB_WIDTH) + 1
    base = (cx if axis == 0 else cy if axis == 1 else cz) - reach
    off = np.zeros(n_types * n_slabs + 1, np.int64)
    for m in range(M):
        s = min(max(int((fbuf[axis, m] - base) * (1.0 / SLAB_WIDTH)), 0), n_slabs - 1)
        key = lj_type[ibuf[0, m]] * n_slabs + s
        ibuf[1, m] = key
        off[key + 1] += 1
    for k in range(n_types * n_slabs):
        off[k + 1] += off[k]
    fill = off[:-1].copy()
    for m in range(M):
        q = fill[ibuf[1, m]]
        fill[ibuf[1, m]] += 1
        fbuf[3, q], fbuf[4, q], fbuf[5, q] = fbuf[0, m], fbuf[1, m], fbuf[2, m]
        fbuf[6, q] = charges[ibuf[0, m]]
        ibuf[2, q] = ibuf[0, m]
    return M, n_slabs, off


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _own_neighbours(mx, my, mz, reach, lo, hi, nx, ny, nz, nq, nex, ox, oy, oz, oq, oex, k):
    """Copy the neighbours lo..hi-1 within ``reach`` of (mx, my, mz) to columns k.. of the ``o*``
    arrays (without a branch: each is written, and kept by counting it); returns the next k."""
    reach2 = reach * reach
    for m in range(np.uint64(lo), np.uint64(hi)):
        dx = nx[m] - mx
        dy = ny[m] - my
        dz = nz[m] - mz
        ox[k], oy[k], oz[k], oq[k], oex[k] = nx[m], ny[m], nz[m], nq[m], nex[m]
        k += dx * dx + dy * dy + dz * dz < reach2
    return k


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _block_energy(px, py, pz, lo, hi, nx, ny, nz, nq, nex, bit, qi, c6, c12, sh, rs, e_rs, slope_rs, cut2, rvdw,
                  rcoulomb, k_rf, c_rf, r_min, q0, q1):
    """Energy of the atom at (px, py, pz) (charge · f ``qi``) with the neighbours lo..hi-1 (one LJ
    type: the parameters are scalars) within the cut-off and not excluded (bit ``bit`` of ``nex``).
    Branch-free so that it vectorises: every term is computed and the right one selected (no
    division can raise: ``error_model="numpy"``, and r ≥ 1e-6)."""
    e = 0.0
    for m in range(np.uint64(lo), np.uint64(hi)):  # (unsigned: no test for negative indices, which blocks SIMD)
        dx = px - nx[m]
        dy = py - ny[m]
        dz = pz - nz[m]
        d2 = dx * dx + dy * dy + dz * dz
        r2 = d2 + EPS2
        r = np.sqrt(r2)
        inv_r = 1.0 / r
        inv2 = inv_r * inv_r
        inv6 = inv2 * inv2 * inv2
        lj = e_rs + slope_rs * (r - rs) if r < rs else inv6 * (c12 * inv6 - c6) - sh
        qq = qi * nq[m]
        co = qq * (q0 + q1 * (r - r_min)) if r < r_min else qq * (inv_r + k_rf * r2 - c_rf)
        pair = (lj if r < rvdw else 0.0) + (co if r < rcoulomb else 0.0)
        e += pair if (d2 < cut2) & (((nex[m] >> bit) & 1) == 0) else 0.0
    return e


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
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
    if C == 0:
        return
    N = x.shape[0]
    cut2 = cutoff * cutoff
    e_soft, slope_soft = _soft_tangents(c6t, c12t, softt, shiftt)  # e_soft + slope_soft · (r - rs) below rs
    q0, q1 = _coulomb_tangent(r_min, k_rf, c_rf)
    spans = np.zeros((1, 2), np.int64)
    shifts = np.zeros((1, 3))
    if periodic:
        n, start, ids, pos = _cell_grid(x, vectors, inverse, heights, CELL_WIDTH)
        rcell = _cell_radius(vectors, n)
    else:  # all atoms as they are: one span
        ids = np.arange(N)
        pos = np.ascontiguousarray(x)
        spans[0, 1] = N
    # a cluster's neighbours (see _gather; rows fbuf[0:3], fbuf[7], ibuf[0] are then reused for an
    # atom's own neighbours), regrown as needed
    fbuf = np.empty((8, 0))
    ibuf = np.empty((4, 0), np.int64)
    exmask = np.zeros(N, np.int64)  # per atom, bit b: excluded with the cluster's atom b (zero between clusters)
    lo_t = np.empty(n_types, np.int64)
    hi_t = np.empty(n_types, np.int64)
    slot = np.empty(A, np.int64)
    mid = np.empty((A, 3))
    reach_a = np.empty(A)
    key = np.empty(A)
    for g in range(G):
        # the group's atoms (slots), each with the middle of its placements and its reach
        # (cut-off + their spread about it)
        n_a = 0
        for a in range(A):
            if not valid[g, a]:
                continue
            for k in range(3):
                s = 0.0
                for c in range(C):
                    s += placements[g, c, a, k]
                mid[n_a, k] = s / C
            spread2 = 0.0
            for c in range(C):
                d2 = 0.0
                for k in range(3):
                    d = placements[g, c, a, k] - mid[n_a, k]
                    d2 += d * d
                spread2 = max(spread2, d2)
            reach_a[n_a] = cutoff + np.sqrt(spread2) + 1e-4
            slot[n_a] = a
            n_a += 1
        if n_a == 0:
            continue
        # clusters: runs of the atoms in order along the group's longest axis
        lo3 = np.full(3, np.inf)
        hi3 = np.full(3, -np.inf)
        for b in range(n_a):
            for k in range(3):
                lo3[k] = min(lo3[k], mid[b, k])
                hi3[k] = max(hi3[k], mid[b, k])
        axis = np.argmax(hi3 - lo3)
        for b in range(n_a):
            key[b] = mid[b, axis]
        order = np.argsort(key[:n_a])
        b0 = 0
        while b0 < n_a:
            b1 = b0 + 1
            while b1 < n_a and b1 - b0 < CLUSTER_ATOMS and key[order[b1]] - key[order[b0]] <= CLUSTER_WIDTH:
                b1 += 1
            # the cluster (atoms order[b0:b1]): centre, radius and longest axis over all its placements
            cx = cy = cz = 0.0
            for bb in range(b0, b1):
                a = slot[order[bb]]
                for c in range(C):
                    cx += placements[g, c, a, 0]
                    cy += placements[g, c, a, 1]
                    cz += placements[g, c, a, 2]
            cx /= (b1 - b0) * C
            cy /= (b1 - b0) * C
            cz /= (b1 - b0) * C
            rad2 = 0.0
            ext = np.zeros(3)
            for bb in range(b0, b1):
                a = slot[order[bb]]
                for c in range(C):
                    dx = placements[g, c, a, 0] - cx
                    dy = placements[g, c, a, 1] - cy
                    dz = placements[g, c, a, 2] - cz
                    rad2 = max(rad2, dx * dx + dy * dy + dz * dz)
                    ext[0], ext[1], ext[2] = max(ext[0], abs(dx)), max(ext[1], abs(dy)), max(ext[2], abs(dz))
            reach = cutoff + np.sqrt(rad2) + 1e-4
            cl_axis = np.argmax(ext)
            # its neighbours: every image within reach, once
            n_spans = 1
            if periodic:
                spans, shifts, n_spans = _cell_spans(cx, cy, cz, reach, vectors, inverse, heights, n, start, rcell,
                                                     spans, shifts)
            bound = 1
            for v in range(n_spans):
                bound += spans[v, 1] - spans[v, 0]
            if bound > fbuf.shape[1]:
                fbuf = np.empty((8, max(bound, 2 * fbuf.shape[1])))
                ibuf = np.empty((4, fbuf.shape[1]), np.int64)
            M, n_slabs, off = _gather(cx, cy, cz, reach, cl_axis, spans, shifts, n_spans, pos, ids, lj_type, charges,
                                      in_group, g, n_types, fbuf, ibuf)
            nx, ny, nz, nq, nid, nex = fbuf[3], fbuf[4], fbuf[5], fbuf[6], ibuf[2], ibuf[3]
            ox, oy, oz, oq, oex = fbuf[0], fbuf[1], fbuf[2], fbuf[7], ibuf[0]
            # exclusions: bit b of nex[m] set = neighbour m excluded with the cluster's atom b
            for bb in range(b0, b1):
                i = atoms[g, slot[order[bb]]]
                for k in range(ex_ptr[i], ex_ptr[i + 1]):
                    exmask[ex_partners[k]] |= 1 << (bb - b0)
            for m in range(M):
                nex[m] = exmask[nid[m]]
            for bb in range(b0, b1):
                i = atoms[g, slot[order[bb]]]
                for k in range(ex_ptr[i], ex_ptr[i + 1]):
                    exmask[ex_partners[k]] = 0
            # each atom with its neighbours, type by type
            base = (cx if cl_axis == 0 else cy if cl_axis == 1 else cz) - reach
            for bb in range(b0, b1):
                b = order[bb]
                a = slot[b]
                i = atoms[g, a]
                row = lj_type[i] * n_types
                qi = f_coulomb * charges[i]
                # the slabs within the atom's reach (of the middle of its placements)
                h = mid[b, cl_axis] - base
                s0 = min(max(int(np.floor((h - reach_a[b]) / SLAB_WIDTH)), 0), n_slabs - 1)
                s1 = min(max(int(np.floor((h + reach_a[b]) / SLAB_WIDTH)), 0), n_slabs - 1)
                if C < OWN_NEIGHBOURS_FROM:  # the neighbours of type t in them
                    for t in range(n_types):
                        lo_t[t], hi_t[t] = off[t * n_slabs + s0], off[t * n_slabs + s1 + 1]
                    ex, ey, ez, eq, eex = nx, ny, nz, nq, nex
                else:  # only those within its reach, copied out once for all its placements
                    k = 0
                    for t in range(n_types):
                        lo_t[t] = k
                        k = _own_neighbours(mid[b, 0], mid[b, 1], mid[b, 2], reach_a[b], off[t * n_slabs + s0],
                                            off[t * n_slabs + s1 + 1], nx, ny, nz, nq, nex, ox, oy, oz, oq, oex, k)
                        hi_t[t] = k
                    ex, ey, ez, eq, eex = ox, oy, oz, oq, oex
                for c in range(C):
                    px, py, pz = placements[g, c, a, 0], placements[g, c, a, 1], placements[g, c, a, 2]
                    e = 0.0
                    for t in range(n_types):
                        if lo_t[t] < hi_t[t]:
                            tt = row + t
                            e += _block_energy(px, py, pz, lo_t[t], hi_t[t], ex, ey, ez, eq, eex, bb - b0, qi,
                                               c6t[tt], c12t[tt], shiftt[tt], softt[tt], e_soft[tt], slope_soft[tt],
                                               cut2, rvdw, rcoulomb, k_rf, c_rf, r_min, q0, q1)
                    out[c, g] += e
            b0 = b1
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
                    d2 = _nearest_d2(placements[g, c, a, 0] - placements[g, c, b, 0],
                                     placements[g, c, a, 1] - placements[g, c, b, 1],
                                     placements[g, c, a, 2] - placements[g, c, b, 2], periodic, vectors, inverse)
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
                d2 = _nearest_d2(placements[c, a, 0] - others[p, 0], placements[c, a, 1] - others[p, 1],
                                 placements[c, a, 2] - others[p, 2], periodic, vectors, inverse)
                if d2 < cut2:
                    out[c] += _pair(np.sqrt(d2 + EPS2), c6, c12, rs, sh, qq, rvdw, rcoulomb, k_rf, c_rf, r_min)


#: the compiled pair primitives other kernels build on (the Monte Carlo decisions of
#: :mod:`backmap.sampling.metropolis_kernel`): one pair's energy, an excluded-pair test, a nearest-image d²
pair_energy = _pair
is_excluded = _excluded
nearest_d2 = _nearest_d2
