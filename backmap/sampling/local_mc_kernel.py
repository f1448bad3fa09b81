"""Local Monte Carlo moves decided one after the other, each against the current state, as one
compiled loop: the whole energy change of a move (bonded terms, non-bonded pairs, the reaction
field of excluded pairs, centroid restraints, springs, a hard wall) without leaving the loop.

The inner loop of ``vae_mc``'s turns, cranks and inner moves. Before it, a group's moves were
scored against the state before the group in torch (a dozen passes over index tables per call)
and then decided in turn with their pair couplings (:func:`backmap.sampling.metropolis_kernel.sequential_metropolis`);
the fixed cost of those passes was most of a round. Here move g is scored against the state the
moves before it left, so no couplings are needed, and the same random numbers give the same
decisions (up to rounding).

Per call, a cell grid of the box is built once (:func:`placement_kernel._cell_grid`). Per move:
the images within reach of its moved atoms are gathered from the grid (reach widened by the
largest displacement of the group, since the grid's positions are updated in place but its cells
are not), each moved atom's non-bonded energy is summed over them, type by type, branch-free
(:func:`placement_kernel._block_energy`), in the old and the new state; pairs among the moved
atoms, their excluded pairs, the bonded terms, restraints and springs that touch them are summed
directly. Energies are GROMACS's functional forms as in :mod:`backmap.forcefield.energy`.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from backmap.forcefield.placement_kernel import (
    CELL_WIDTH,
    EPS2,
    _block_energy,
    _cell_grid,
    _cell_radius,
    _cell_spans,
    _coulomb_tangent,
    _nearest_d2,
    _pair,
    _soft_tangents,
)

#: bonded term kinds of the compiled table (built by local_mc.LocalMetropolis)
BOND, ANGLE, PROPER, RB, IMPROPER, LJ14, COULOMB14 = range(7)
MAX_MOVED = 63  # moved atoms per move: one bit each in the exclusion masks (int64)


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _dist(x, i, j):
    dx, dy, dz = x[j, 0] - x[i, 0], x[j, 1] - x[i, 1], x[j, 2] - x[i, 2]
    return np.sqrt(dx * dx + dy * dy + dz * dz + EPS2)


@njit(cache=True, nogil=True)
def _angle(x, i, j, k):
    ax, ay, az = x[i, 0] - x[j, 0], x[i, 1] - x[j, 1], x[i, 2] - x[j, 2]
    bx, by, bz = x[k, 0] - x[j, 0], x[k, 1] - x[j, 1], x[k, 2] - x[j, 2]
    cx, cy, cz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
    return np.arctan2(np.sqrt(cx * cx + cy * cy + cz * cz + EPS2), ax * bx + ay * by + az * bz)


@njit(cache=True, nogil=True)
def _dihedral(x, i, j, k, m):
    b1x, b1y, b1z = x[j, 0] - x[i, 0], x[j, 1] - x[i, 1], x[j, 2] - x[i, 2]
    b2x, b2y, b2z = x[k, 0] - x[j, 0], x[k, 1] - x[j, 1], x[k, 2] - x[j, 2]
    b3x, b3y, b3z = x[m, 0] - x[k, 0], x[m, 1] - x[k, 1], x[m, 2] - x[k, 2]
    n1x, n1y, n1z = b1y * b2z - b1z * b2y, b1z * b2x - b1x * b2z, b1x * b2y - b1y * b2x
    n2x, n2y, n2z = b2y * b3z - b2z * b3y, b2z * b3x - b2x * b3z, b2x * b3y - b2y * b3x
    y = np.sqrt(b2x * b2x + b2y * b2y + b2z * b2z + EPS2) * (b1x * n2x + b1y * n2y + b1z * n2z)
    return np.arctan2(y, n1x * n2x + n1y * n2y + n1z * n2z + 1e-30)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _gather_by_type(cx, cy, cz, reach, spans, shifts, n_spans, pos, ids, types, charges, in_move, g, kept, bx, by,
                    bz, bq, bid, counts):
    """The images in ``spans`` of the grid (its order: positions ``pos``, atoms ``ids``, LJ types
    ``types``, charges ``charges``, move ``in_move``) within ``reach`` of (cx, cy, cz), except the
    atoms of move g, into the rows of their LJ type t: positions ``bx[t, :counts[t]]`` …, charges
    ``bq``, atom indices ``bid``. First the rows within reach are listed (``kept``: grid row and
    span; branch-free, with the count in a register), then copied out by type."""
    reach2 = reach * reach
    n_kept = 0
    for v in range(n_spans):
        tx, ty, tz = shifts[v, 0], shifts[v, 1], shifts[v, 2]
        for p in range(spans[v, 0], spans[v, 1]):
            dx, dy, dz = pos[p, 0] + tx - cx, pos[p, 1] + ty - cy, pos[p, 2] + tz - cz
            kept[0, n_kept] = p
            kept[1, n_kept] = v
            n_kept += (dx * dx + dy * dy + dz * dz < reach2) & (in_move[p] != g)
    counts[:] = 0
    for m in range(n_kept):
        p, v = kept[0, m], kept[1, m]
        t = types[p]
        k = counts[t]
        bx[t, k], by[t, k], bz[t, k] = pos[p, 0] + shifts[v, 0], pos[p, 1] + shifts[v, 1], pos[p, 2] + shifts[v, 2]
        bq[t, k], bid[t, k] = charges[p], ids[p]
        counts[t] = k + 1


@njit(cache=True, nogil=True, inline="always")
def _add_once(items, n, seen, t, g):
    """Append t to ``items[:n]`` (regrown as needed) unless ``seen[t]`` is g already: (items, n)."""
    if seen[t] == g:
        return items, n
    seen[t] = g
    if n == items.shape[0]:
        items = np.concatenate((items, np.empty(n, np.int64)))
    items[n] = t
    return items, n + 1


@njit(cache=True, nogil=True)
def _merge_spans(spans, shifts, n_spans):
    """Join spans that continue each other in the grid's order with the same image (neighbouring
    cells along the last axis): fewer, longer runs for the gather's loop. Returns the new count."""
    m = 0
    for v in range(n_spans):
        if (m > 0 and spans[v, 0] == spans[m - 1, 1] and shifts[v, 0] == shifts[m - 1, 0]
                and shifts[v, 1] == shifts[m - 1, 1] and shifts[v, 2] == shifts[m - 1, 2]):
            spans[m - 1, 1] = spans[v, 1]
            continue
        spans[m, 0], spans[m, 1] = spans[v, 0], spans[v, 1]
        shifts[m, 0], shifts[m, 1], shifts[m, 2] = shifts[v, 0], shifts[v, 1], shifts[v, 2]
        m += 1
    return m


@njit(cache=True, nogil=True)
def _term_energy(x, kind, at, par, charges, f14, r_min):
    """Energy of one bonded term (kind, atoms ``at`` (4,), parameters ``par``) at positions x."""
    if kind == BOND:
        d = _dist(x, at[0], at[1]) - par[0]
        return 0.5 * par[1] * d * d
    if kind == ANGLE:
        d = _angle(x, at[0], at[1], at[2]) - par[0]
        return 0.5 * par[1] * d * d
    if kind == PROPER:
        return par[1] * (1.0 + np.cos(par[2] * _dihedral(x, at[0], at[1], at[2], at[3]) - par[0]))
    if kind == RB:
        c = np.cos(_dihedral(x, at[0], at[1], at[2], at[3]) - np.pi)
        e, cn = 0.0, 1.0
        for n in range(6):
            e += par[n] * cn
            cn *= c
        return e
    if kind == IMPROPER:
        d = _dihedral(x, at[0], at[1], at[2], at[3]) - par[0] + np.pi
        d = d - 2.0 * np.pi * np.floor(d / (2.0 * np.pi)) - np.pi
        return 0.5 * par[1] * d * d
    r = _dist(x, at[0], at[1])
    if kind == LJ14:
        sig, eps = par[0], par[1]
        rs = 0.6 * sig  # energy.SOFT_FRACTION
        if r < rs:
            s6 = (sig / rs) ** 6
            return 4.0 * eps * (s6 * s6 - s6) + 4.0 * eps * (-12.0 * s6 * s6 + 6.0 * s6) / rs * (r - rs)
        s6 = (sig / r) ** 6
        return 4.0 * eps * (s6 * s6 - s6)
    qq = charges[at[0]] * charges[at[1]] * par[2] * f14  # COULOMB14
    if r < r_min:
        return qq / r_min - qq / (r_min * r_min) * (r - r_min)
    return qq / r


@njit(cache=True, nogil=True)  # (no fastmath: NaN must stay NaN)
def metropolis_scan(x, atoms, moved, rigid, new, walls, extent, log_u, beta, vectors, inverse, heights, periodic,
                    lj_type, charges, n_types, c6t, c12t, softt, shiftt, cutoff, rvdw, rcoulomb, f_coulomb, k_rf,
                    c_rf, r_min, ex_ptr, ex_partners, term_kind, term_atoms, term_params, term_ptr, term_ids, f14,
                    bead_ptr, bead_atoms, bead_weights, bead_targets, k_bead, atom_bead_ptr, atom_beads,
                    spring_pairs, spring_lengths, k_spring, atom_spring_ptr, atom_springs, accepted, invalid, delta):
    """Metropolis decisions of G local moves made one after the other; ``x`` (N, 3) is updated in
    place with each accepted one. Move g takes the atoms of ``atoms[g]`` (A,; −1 padding) marked
    ``moved[g]`` to ``new[g]`` (A, 3, lab); it is accepted (``accepted[g]``) if
    ``log_u[g]`` < −``beta`` ΔE, ΔE the change of every term with a moved atom: bonded terms
    (``term_*``, CSR atom → terms ``term_ptr``/``term_ids``), non-bonded pairs within the cut-off
    (nearest images) and the reaction field of excluded pairs, the restraints ½ k |Σ w x − R|² of
    the beads the moved atoms map to (``bead_*``) and the springs ½ k (|r| − b)² on pairs
    (``spring_*``). ``rigid`` (G, A): the moved atoms with one label k > 0 move as a rigid body
    (turned, or translated, together): the terms and pairs among them do not change and are skipped
    (0: no such promise). A state with an atom of the unit's row farther than ``extent`` from its wall
    centre (``walls[g]``, lab) has zero probability: if the current one has (or ΔE is NaN) the
    move is rejected and counted ``invalid``. ``delta[g]``: ΔE (kJ/mol; +inf beyond the wall, NaN
    if invalid), written."""
    G, A = atoms.shape
    N = x.shape[0]
    cut2 = cutoff * cutoff
    e_soft, slope_soft = _soft_tangents(c6t, c12t, softt, shiftt)
    q0, q1 = _coulomb_tangent(r_min, k_rf, c_rf)
    # the largest displacement of any move: the grid's cells may be this stale
    half_h2 = 0.25 * min(heights[0], heights[1], heights[2]) ** 2 if periodic else np.inf
    skin = 0.0
    for g in range(G):
        for a in range(A):
            if moved[g, a]:
                d2 = 0.0
                for k in range(3):
                    d = new[g, a, k] - x[atoms[g, a], k]
                    d2 += d * d
                skin = max(skin, np.sqrt(d2))
    spans = np.zeros((1, 2), np.int64)
    shifts = np.zeros((1, 3))
    rcell = 0.0
    if periodic:
        n, start, ids, pos = _cell_grid(x, vectors, inverse, heights, CELL_WIDTH)
        rcell = _cell_radius(vectors, n)
    else:
        n = np.ones(3, np.int64)
        start = np.zeros(2, np.int64)
        ids = np.arange(N)
        pos = x.copy()
        spans[0, 1] = N
    slot_of = np.empty(N, np.int64)  # each atom's row in the grid's copy (updated when it moves)
    types_s = np.empty(N, np.int64)  # the grid's copy of the LJ types and charges
    charges_s = np.empty(N)
    for p in range(N):
        slot_of[ids[p]] = p
        types_s[p] = lj_type[ids[p]]
        charges_s[p] = charges[ids[p]]
    in_move = np.full(N, -1, np.int64)  # per grid row: the move its atom is in
    mslot = np.full(N, -1, np.int64)  # per atom: its place in the move's moved atoms
    body = np.zeros(N, np.int64)  # per atom: its rigid body in the move (0: none)
    exbits = np.zeros(A, np.int64)  # per moved atom b, bit c: excluded with moved atom c
    exmask = np.zeros(N, np.int64)
    term_seen = np.full(term_kind.shape[0], -1, np.int64)
    bead_seen = np.full(max(bead_ptr.shape[0] - 1, 1), -1, np.int64)
    spring_seen = np.full(max(spring_pairs.shape[0], 1), -1, np.int64)
    cap = 0  # the neighbour buffers, per LJ type (regrown as needed)
    bx = np.empty((n_types, 0))
    by, bz, bq = bx.copy(), bx.copy(), bx.copy()
    bid = np.empty((n_types, 0), np.int64)
    bex = bid.copy()
    kept = np.empty((2, 0), np.int64)
    counts = np.zeros(n_types, np.int64)
    mv = np.empty(A, np.int64)  # the move's moved atoms
    mv_slot = np.empty(A, np.int64)  # their slots in the row
    old = np.empty((A, 3))
    terms = np.empty(64, np.int64)
    beads = np.empty(16, np.int64)
    springs = np.empty(16, np.int64)
    e = np.zeros(2)
    for g in range(G):
        accepted[g] = False
        invalid[g] = False
        delta[g] = 0.0
        n_mv = 0
        for a in range(A):
            if moved[g, a] and atoms[g, a] >= 0:
                mv[n_mv] = atoms[g, a]
                mv_slot[n_mv] = a
                for k in range(3):
                    old[n_mv, k] = x[atoms[g, a], k]
                n_mv += 1
        if n_mv == 0:
            continue
        # the wall, in the current state and the proposed one
        outside_old = outside_new = False
        for a in range(A):
            i = atoms[g, a]
            if i < 0:
                continue
            d_old = d_new = 0.0
            for k in range(3):
                d = x[i, k] - walls[g, a, k]
                d_old += d * d
                if moved[g, a]:
                    d = new[g, a, k] - walls[g, a, k]
                d_new += d * d
            outside_old |= np.sqrt(d_old) > extent
            outside_new |= np.sqrt(d_new) > extent
        if outside_old:
            invalid[g] = True
            delta[g] = np.nan
            continue
        if outside_new:
            delta[g] = np.inf
            continue
        # the terms that touch a moved atom, each once
        n_terms = n_beads = n_springs = 0
        for b in range(n_mv):
            body[mv[b]] = rigid[g, mv_slot[b]]
            mslot[mv[b]] = b
        for b in range(n_mv):
            i = mv[b]
            in_move[slot_of[i]] = g
            exbits[b] = 0
            for q in range(ex_ptr[i], ex_ptr[i + 1]):
                c = mslot[ex_partners[q]]
                if c >= 0:
                    exbits[b] |= 1 << c
            for q in range(term_ptr[i], term_ptr[i + 1]):
                t = term_ids[q]
                k = body[term_atoms[t, 0]]
                same = k > 0
                for c in range(1, 4):
                    j = term_atoms[t, c]
                    same &= (j < 0) or (body[j] == k)
                if not same:  # (a term inside one rigid body is unchanged)
                    terms, n_terms = _add_once(terms, n_terms, term_seen, t, g)
            for q in range(atom_bead_ptr[i], atom_bead_ptr[i + 1]):
                beads, n_beads = _add_once(beads, n_beads, bead_seen, atom_beads[q], g)
            for q in range(atom_spring_ptr[i], atom_spring_ptr[i + 1]):
                t = atom_springs[q]
                if not (body[spring_pairs[t, 0]] > 0 and body[spring_pairs[t, 0]] == body[spring_pairs[t, 1]]):
                    springs, n_springs = _add_once(springs, n_springs, spring_seen, t, g)
        # the images within reach of the moved atoms, old and new, but themselves
        cx = cy = cz = 0.0
        for a in range(A):
            if moved[g, a] and atoms[g, a] >= 0:
                cx += x[atoms[g, a], 0] + new[g, a, 0]
                cy += x[atoms[g, a], 1] + new[g, a, 1]
                cz += x[atoms[g, a], 2] + new[g, a, 2]
        cx /= 2 * n_mv
        cy /= 2 * n_mv
        cz /= 2 * n_mv
        rad = 0.0
        for a in range(A):
            if not moved[g, a] or atoms[g, a] < 0:
                continue
            for s in range(2):
                dx = (x[atoms[g, a], 0] if s == 0 else new[g, a, 0]) - cx
                dy = (x[atoms[g, a], 1] if s == 0 else new[g, a, 1]) - cy
                dz = (x[atoms[g, a], 2] if s == 0 else new[g, a, 2]) - cz
                rad = max(rad, np.sqrt(dx * dx + dy * dy + dz * dz))
        reach = cutoff + rad + 1e-4  # (the gathered positions are current; their cells may be stale by skin)
        n_spans = 1
        if periodic:
            spans, shifts, n_spans = _cell_spans(cx, cy, cz, reach + skin, vectors, inverse, heights, n, start,
                                                 rcell, spans, shifts)
            n_spans = _merge_spans(spans, shifts, n_spans)
        bound = 1
        for v in range(n_spans):
            bound += spans[v, 1] - spans[v, 0]
        if bound > cap:
            cap = max(bound, 2 * cap)
            bx, by, bz, bq = (np.empty((n_types, cap)), np.empty((n_types, cap)), np.empty((n_types, cap)),
                              np.empty((n_types, cap)))
            bid, bex = np.empty((n_types, cap), np.int64), np.empty((n_types, cap), np.int64)
            kept = np.empty((2, cap), np.int64)
        _gather_by_type(cx, cy, cz, reach, spans, shifts, n_spans, pos, ids, types_s, charges_s, in_move, g, kept, bx,
                        by, bz, bq, bid, counts)
        for b in range(n_mv):  # bit b of bex: excluded with moved atom b
            for q in range(ex_ptr[mv[b]], ex_ptr[mv[b] + 1]):
                exmask[ex_partners[q]] |= 1 << b
        for t in range(n_types):
            for m in range(counts[t]):
                bex[t, m] = exmask[bid[t, m]]
        for b in range(n_mv):
            for q in range(ex_ptr[mv[b]], ex_ptr[mv[b] + 1]):
                exmask[ex_partners[q]] = 0
        for s in range(2):  # 0: the current state; 1: the proposal (written into x, taken back if rejected)
            if s == 1:
                for a in range(A):
                    if moved[g, a] and atoms[g, a] >= 0:
                        for k in range(3):
                            x[atoms[g, a], k] = new[g, a, k]
            total = 0.0
            for b in range(n_mv):
                i = mv[b]
                px, py, pz = x[i, 0], x[i, 1], x[i, 2]
                row = lj_type[i] * n_types
                qi = f_coulomb * charges[i]
                for t in range(n_types):
                    if counts[t]:
                        tt = row + t
                        total += _block_energy(px, py, pz, 0, counts[t], bx[t], by[t], bz[t], bq[t], bex[t], b, qi,
                                               c6t[tt], c12t[tt], shiftt[tt], softt[tt], e_soft[tt], slope_soft[tt],
                                               cut2, rvdw, rcoulomb, k_rf, c_rf, r_min, q0, q1)
                # pairs among the moved atoms (once), and the reaction field of excluded pairs
                for c in range(b + 1, n_mv):
                    j = mv[c]
                    if (exbits[b] >> c) & 1:
                        continue
                    if body[i] > 0 and body[i] == body[j]:  # unchanged if its plain distance is the nearest image's
                        dx, dy, dz = x[i, 0] - x[j, 0], x[i, 1] - x[j, 1], x[i, 2] - x[j, 2]
                        if dx * dx + dy * dy + dz * dz < half_h2:
                            continue
                    d2 = _nearest_d2(x[i, 0] - x[j, 0], x[i, 1] - x[j, 1], x[i, 2] - x[j, 2], periodic, vectors,
                                     inverse)
                    if d2 < cut2:
                        tt = row + lj_type[j]
                        total += _pair(np.sqrt(d2 + EPS2), c6t[tt], c12t[tt], softt[tt], shiftt[tt],
                                       qi * charges[j], rvdw, rcoulomb, k_rf, c_rf, r_min)
                for q in range(ex_ptr[i], ex_ptr[i + 1]):
                    j = ex_partners[q]
                    if mslot[j] >= 0 and (j < i or (body[i] > 0 and body[i] == body[j])):
                        continue  # a pair of moved atoms: counted from its lower one, unless in one body
                    r = _dist(x, i, j)
                    if r < rcoulomb:
                        total += qi * charges[j] * (k_rf * r * r - c_rf)
            for q in range(n_terms):
                t = terms[q]
                total += _term_energy(x, term_kind[t], term_atoms[t], term_params[t], charges, f14, r_min)
            for q in range(n_beads):
                t = beads[q]
                mx = my = mz = 0.0
                for p in range(bead_ptr[t], bead_ptr[t + 1]):
                    w, j = bead_weights[p], bead_atoms[p]
                    mx += w * x[j, 0]
                    my += w * x[j, 1]
                    mz += w * x[j, 2]
                dx, dy, dz = mx - bead_targets[t, 0], my - bead_targets[t, 1], mz - bead_targets[t, 2]
                total += 0.5 * k_bead * (dx * dx + dy * dy + dz * dz)
            for q in range(n_springs):
                t = springs[q]
                i, j = spring_pairs[t, 0], spring_pairs[t, 1]
                dx, dy, dz = x[i, 0] - x[j, 0], x[i, 1] - x[j, 1], x[i, 2] - x[j, 2]
                d = np.sqrt(dx * dx + dy * dy + dz * dz) - spring_lengths[t]
                total += 0.5 * k_spring * d * d
            e[s] = total
        delta[g] = e[1] - e[0]
        ratio = -beta * delta[g]
        if np.isnan(ratio):
            invalid[g] = True
        elif log_u[g] < ratio:
            accepted[g] = True
        if accepted[g]:
            for b in range(n_mv):
                p = slot_of[mv[b]]
                for k in range(3):
                    pos[p, k] += x[mv[b], k] - old[b, k]
        else:
            for b in range(n_mv):
                for k in range(3):
                    x[mv[b], k] = old[b, k]
        for b in range(n_mv):
            in_move[slot_of[mv[b]]] = -1
            mslot[mv[b]] = -1
            body[mv[b]] = 0
