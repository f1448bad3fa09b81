"""Internal coordinates of many terms over many frames at once (numpy, whole molecules).

Positions are (B, N, 3) with molecules made whole, index arrays (n, k) of atom indices; results
are (B, n). Angles are in degrees: the unit the evaluation bins and reports use.
"""
from __future__ import annotations

import numpy as np


def distances(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Lengths |x_j − x_i| for pairs ``idx`` (n, 2)."""
    return np.linalg.norm(x[:, idx[:, 1]] - x[:, idx[:, 0]], axis=-1)


def angles(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Angles i-j-k (degrees) for triples ``idx`` (n, 3), from atan2 (accurate near 0 and 180)."""
    a = x[:, idx[:, 0]] - x[:, idx[:, 1]]
    b = x[:, idx[:, 2]] - x[:, idx[:, 1]]
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), (a * b).sum(-1)))


def dihedrals(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Dihedrals i-j-k-l (degrees, IUPAC/GROMACS convention: 0 = cis) in (−180, 180]."""
    b1 = x[:, idx[:, 1]] - x[:, idx[:, 0]]
    b2 = x[:, idx[:, 2]] - x[:, idx[:, 1]]
    b3 = x[:, idx[:, 3]] - x[:, idx[:, 2]]
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * (b1 * n2).sum(-1)
    return np.degrees(np.arctan2(y, (n1 * n2).sum(-1)))


def signed_volumes(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(a − c)·((b − c) × (d − c)) for rows (c, a, b, d) of ``idx``: the handedness of the
    neighbours a, b, d around a centre c (its sign flips under reflection)."""
    c = x[:, idx[:, 0]]
    a, b, d = (x[:, idx[:, k]] - c for k in (1, 2, 3))
    return (a * np.cross(b, d)).sum(-1)
