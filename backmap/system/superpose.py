"""Rigid superposition (Kabsch): the optimal rotation between point sets, and the motion of whole
molecules between two frames taken out of their atoms' displacements."""
from __future__ import annotations

import numpy as np

from backmap.system.mapping import CGTopology


def kabsch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Rotations R (…, 3, 3) with src @ R ≈ dst for centred point sets (…, n, 3) (no reflection)."""
    h = np.swapaxes(src, -1, -2) @ dst
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.ones(u.shape[:-1])
    fix[..., -1] = d
    return (u * fix[..., None, :]) @ vt


def internal_displacements(before: np.ndarray, after: np.ndarray, cg_topology: CGTopology) -> np.ndarray:
    """Displacements (N, 3) of the atoms from ``before`` to ``after`` (whole molecules, the same
    image) with each molecule's rigid motion removed: ``before`` turned and moved so that its CG
    beads (the mapping of its atoms) lie best on ``after``'s. What is left is motion *inside* the
    CG frame — what a backmapping adds — free of the translation and tumbling that the CG input
    already fixes (the dipeptide in vacuum turns by ~1 rad per ps)."""
    out = np.empty_like(after)
    beads_before, beads_after = cg_topology.apply(before), cg_topology.apply(after)
    for cb in cg_topology.blocks:
        n_atoms, n_beads, count = cb.block.moltype.n_atoms, cb.mapping.n_beads, cb.block.count
        atoms = cb.block.atom_slice
        beads = slice(cb.first_bead, cb.first_bead + n_beads * count)
        pb = beads_before[beads].reshape(count, n_beads, 3)
        qb = beads_after[beads].reshape(count, n_beads, 3)
        p0, q0 = pb.mean(1, keepdims=True), qb.mean(1, keepdims=True)
        rot = kabsch(pb - p0, qb - q0)  # (count, 3, 3)
        x = before[atoms].reshape(count, n_atoms, 3)
        fitted = (x - p0) @ rot + q0
        out[atoms] = (after[atoms].reshape(count, n_atoms, 3) - fitted).reshape(-1, 3)
    return out
