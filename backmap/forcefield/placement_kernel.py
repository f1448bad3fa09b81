"""Non-bonded energies of trial placements in a fixed environment, as one compiled loop.

The inner loop of whole-unit Monte Carlo (``vae_mc``): G groups of atoms, each with C alternative
placements (the current one and the trials), against every other atom, which stays where it is.
Per group the atoms whose periodic image lies within reach of the group (cut-off + the group's
radius over all its placements) are found once; then every (placement, group atom, neighbour)
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


@njit(cache=True, nogil=True, fastmath=True)
def placement_pair_energies(x, vectors, inverse, heights, periodic, n_max, placements, atoms, valid, in_group,
                            lj_type, charges, n_types, c6t, c12t, softt, shiftt, cutoff, rvdw, rcoulomb,
                            f_coulomb, k_rf, c_rf, r_min, ex_ptr, ex_partners, out):
    """Add to ``out`` (C, G) the non-bonded energies of ``placements`` (G, C, A, 3) of the groups'
    atoms ``atoms`` (G, A; ``valid`` marks real slots) with the other atoms ``x`` (N, 3) and with
    each other (per placement), skipping excluded pairs (CSR ``ex_ptr``/``ex_partners``, both
    directions) and atoms of the group itself (``in_group`` (N,) = its group, or -1).
    ``vectors`` rows are the box vectors, ``inverse`` their inverse, ``heights`` (3,) the distances
    between opposite faces, ``n_max`` (3,) images per axis to try (``periodic`` False: none)."""
    G, C, A = placements.shape[0], placements.shape[1], placements.shape[2]
    N = x.shape[0]
    cut2 = cutoff * cutoff
    soa = np.empty((A, 3, C))
    mid = np.empty((A, 3))
    reach_a2 = np.empty(A)
    for g in range(G):
        # the group's centre and radius over all its placements
        cx = cy = cz = 0.0
        n = 0
        for c in range(C):
            for a in range(A):
                if valid[g, a]:
                    cx += placements[g, c, a, 0]
                    cy += placements[g, c, a, 1]
                    cz += placements[g, c, a, 2]
                    n += 1
        if n == 0:
            continue
        cx /= n
        cy /= n
        cz /= n
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
        for j in range(N):
            if in_group[j] == g:
                continue
            # nearest image of j to the centre, then the images around it
            dx0 = x[j, 0] - cx
            dy0 = x[j, 1] - cy
            dz0 = x[j, 2] - cz
            if periodic:
                f0 = dx0 * inverse[0, 0] + dy0 * inverse[1, 0] + dz0 * inverse[2, 0]
                f1 = dx0 * inverse[0, 1] + dy0 * inverse[1, 1] + dz0 * inverse[2, 1]
                f2 = dx0 * inverse[0, 2] + dy0 * inverse[1, 2] + dz0 * inverse[2, 2]
                f0 -= np.rint(f0)
                f1 -= np.rint(f1)
                f2 -= np.rint(f2)
            for o0 in range(-n_max[0], n_max[0] + 1):
                # an image is at least |fraction| × height from the centre along each axis: most
                # atoms are out of reach by one axis alone, before any Cartesian arithmetic
                if periodic and abs(f0 + o0) * heights[0] >= reach:
                    continue
                for o1 in range(-n_max[1], n_max[1] + 1):
                    if periodic and abs(f1 + o1) * heights[1] >= reach:
                        continue
                    for o2 in range(-n_max[2], n_max[2] + 1):
                        if periodic and abs(f2 + o2) * heights[2] >= reach:
                            continue
                        if periodic:
                            g0, g1, g2 = f0 + o0, f1 + o1, f2 + o2
                            ex = g0 * vectors[0, 0] + g1 * vectors[1, 0] + g2 * vectors[2, 0]
                            ey = g0 * vectors[0, 1] + g1 * vectors[1, 1] + g2 * vectors[2, 1]
                            ez = g0 * vectors[0, 2] + g1 * vectors[1, 2] + g2 * vectors[2, 2]
                        else:
                            ex, ey, ez = dx0, dy0, dz0
                        if ex * ex + ey * ey + ez * ez >= reach2:
                            continue
                        # the image of j, in lab coordinates
                        jx, jy, jz = cx + ex, cy + ey, cz + ez
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
