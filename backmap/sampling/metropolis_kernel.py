"""The compiled Monte Carlo decision of the ``vae_mc`` refiner: a systematic scan of Metropolis tests
over G local moves, each corrected by its non-bonded energy change with the moves accepted before it.
The pair energies are the force field's (:mod:`backmap.forcefield.placement_kernel`), fed with its
tables (:meth:`ForceField.kernel_tables`); the decisions are sampling's."""
from __future__ import annotations

import numpy as np
from numba import njit

from backmap.forcefield.placement_kernel import EPS2, is_excluded, nearest_d2, pair_energy


@njit(cache=True, nogil=True, fastmath=True)
def sequential_metropolis(states, atoms, moved, log_ratio, log_u, beta, vectors, inverse, periodic, lj_type, charges,
                          n_types, c6t, c12t, softt, shiftt, cutoff, rvdw, rcoulomb, f_coulomb, k_rf, c_rf, r_min,
                          ex_ptr, ex_partners, accepted):
    """Decide G local moves one after the other (Metropolis): move g, from state 0 to state 1 of
    ``states`` (G, 2, A, 3) of the atoms ``atoms`` (G, A) of which ``moved`` (G, A) move, with
    ln π′/π = ``log_ratio`` (G,) against the state before any move, is accepted (``accepted``
    (G,) bool, written) if ``log_u`` (G,) < its ratio plus −``beta`` times the change, for each
    move h < g already accepted, of the non-bonded energy between their moved atoms:
    U(g′, h′) − U(g′, h) − U(g, h′) + U(g, h) (the only terms joining the units: they share no
    bead or bonded term). NaN ratios are rejected. Pairs of units, and of atoms, that stay beyond
    the cut-off in every state are skipped by bounding spheres (an atom's: around its state 0, as
    wide as its move); nearest images, excluded pairs skipped."""
    G, A = states.shape[0], states.shape[2]
    cut2 = cutoff * cutoff
    centre = np.zeros((G, 3))
    radius = np.zeros(G)
    spread = np.zeros((G, A))
    for g in range(G):
        count = 0
        for a in range(A):
            if moved[g, a]:
                count += 1
                d2 = 0.0
                for k in range(3):
                    centre[g, k] += states[g, 0, a, k]
                    d = states[g, 1, a, k] - states[g, 0, a, k]
                    d2 += d * d
                spread[g, a] = np.sqrt(d2)
        if count:
            for k in range(3):
                centre[g, k] /= count
            for a in range(A):
                if moved[g, a]:
                    d2 = 0.0
                    for k in range(3):
                        d = states[g, 0, a, k] - centre[g, k]
                        d2 += d * d
                    radius[g] = max(radius[g], np.sqrt(d2) + spread[g, a])
    done = np.zeros(G, np.int64)  # the accepted moves so far
    n_done = 0
    for g in range(G):
        accepted[g] = False
        ratio = log_ratio[g]
        if np.isnan(ratio):
            continue
        change = 0.0
        for q in range(n_done):
            h = done[q]
            reach = cutoff + radius[g] + radius[h]
            if nearest_d2(centre[g, 0] - centre[h, 0], centre[g, 1] - centre[h, 1], centre[g, 2] - centre[h, 2],
                           periodic, vectors, inverse) >= reach * reach:
                continue
            for a in range(A):
                if not moved[g, a]:
                    continue
                i = atoms[g, a]
                for b in range(A):
                    if not moved[h, b]:
                        continue
                    near = cutoff + spread[g, a] + spread[h, b]
                    if nearest_d2(states[g, 0, a, 0] - states[h, 0, b, 0], states[g, 0, a, 1] - states[h, 0, b, 1],
                                   states[g, 0, a, 2] - states[h, 0, b, 2], periodic, vectors,
                                   inverse) >= near * near:
                        continue
                    j = atoms[h, b]
                    if is_excluded(i, j, ex_ptr, ex_partners):
                        continue
                    tt = lj_type[i] * n_types + lj_type[j]
                    c6, c12, rs, sh = c6t[tt], c12t[tt], softt[tt], shiftt[tt]
                    qq = f_coulomb * charges[i] * charges[j]
                    for s in range(2):
                        for t in range(2):
                            d2 = nearest_d2(states[g, s, a, 0] - states[h, t, b, 0],
                                             states[g, s, a, 1] - states[h, t, b, 1],
                                             states[g, s, a, 2] - states[h, t, b, 2], periodic, vectors, inverse)
                            if d2 < cut2:
                                e = pair_energy(np.sqrt(d2 + EPS2), c6, c12, rs, sh, qq, rvdw, rcoulomb, k_rf, c_rf, r_min)
                                change += e if s == t else -e
        if log_u[g] < ratio - beta * change:
            accepted[g] = True
            done[n_done] = g
            n_done += 1
