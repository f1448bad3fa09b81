"""The twist strength of trajectory mode, chosen from the training frames.

A trajectory-mode unit sees its atoms of the previous frame turned into the present one by the
rotation of its beads (:func:`backmap.sampling.environment.bead_turns`). How far to trust
the beads' twist about their principal axis depends on the system: a vacuum dipeptide's beads sit
on atoms and it tumbles 1 rad/ps, so the fitted twist is signal; the two-carbon beads of a
liquid alkane fluctuate against each other more than the nearly straight chain twists in a frame,
so the fitted twist is mostly noise. The strength that best predicts where the atoms are now from
where they were — a one-parameter Wiener filter — is measured on the training pairs, not guessed.
"""
from __future__ import annotations

import numpy as np

from backmap.sampling.environment import bead_turns
from backmap.system.mapping import CGTopology
from backmap.system.pairs import PairSet
from backmap.system.pbc import minimum_image

#: strengths tried (0: the beads' least-squares rotation as it is)
TWIST_GRID = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def twist_residuals(pairs: PairSet, cg_topology: CGTopology, grid=TWIST_GRID,
                    max_bead_frames: int = 6000) -> dict[float, float]:
    """Mean squared distance (nm²) between every atom's present position and its previous one
    carried over by its bead's rotation, for each strength of ``grid``, over consecutive training
    pairs (at most ``max_bead_frames`` bead-frames, the earliest)."""
    prev = pairs.previous_index()
    use = np.flatnonzero(prev >= 0)
    beads_per_frame = sum(cb.mapping.n_beads * cb.block.count for cb in cg_topology.blocks)
    use = use[:max(1, max_bead_frames // max(beads_per_frame, 1))]
    units = []  # per bead of every block: (bead, frame beads, atoms), global indices
    for cb in cg_topology.blocks:
        mm, count = cb.mapping, cb.block.count
        first_bead = cb.first_bead + mm.n_beads * np.arange(count)
        first_atom = cb.block.first_atom + cb.block.moltype.n_atoms * np.arange(count)
        for b in range(mm.n_beads):
            fb = np.asarray(mm.frame_beads(b))
            units.append((first_bead + b, first_bead[:, None] + fb[None, 1:],
                          first_atom[:, None] + np.flatnonzero(mm.home == b)[None]))
    sums = {s: 0.0 for s in grid}
    n = 0
    for f in use:
        dims = pairs.dimensions[f]
        now_aa, then_aa = pairs.aa[f].astype(np.float64), pairs.aa[prev[f]].astype(np.float64)
        now_cg, then_cg = cg_topology.apply(now_aa), cg_topology.apply(then_aa)
        for bead, others, atoms in units:
            rel_then = minimum_image(then_aa[atoms] - then_cg[bead][:, None], dims)
            rel_now = minimum_image(now_aa[atoms] - now_cg[bead][:, None], dims)
            for s in grid:
                carried = rel_then @ np.swapaxes(bead_turns(then_cg, now_cg, bead, others, dims, s), 1, 2)
                sums[s] += float(((carried - rel_now) ** 2).sum())
            n += atoms.size
    return {s: v / max(n, 1) for s, v in sums.items()}


def choose_twist(pairs: PairSet, cg_topology: CGTopology, grid=TWIST_GRID) -> tuple[float, dict[float, float]]:
    """The strength of ``grid`` with the smallest :func:`twist_residuals`, and all of them
    (0 when the pairs have no consecutive frames)."""
    residuals = twist_residuals(pairs, cg_topology, grid)
    return min(residuals, key=residuals.get), residuals
