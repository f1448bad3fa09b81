"""Distributions at the CG resolution: bonds, angles and dihedrals along the CG bond graph and
bead-type RDFs, of CG trajectories against the mapped reference (thesis Fig. 6.2).

A CG model is first judged where it was parameterised; `backmap assess` puts these numbers beside
the atomistic ones. Angles and dihedrals are all paths of 3 and 4 beads in the mapping's CG bond
graph (not only the ones the mapping lists), named by their bead types, so that a model that drops a
dihedral potential shows it here. Lengths nm, angles degrees.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from backmap.forcefield.neighbors import box_heights, neighbour_pairs
from backmap.metrics.divergence import Binning, histogram, jsd
from backmap.system.io import read_frames
from backmap.system.mapping import CGTopology
from backmap.system.pbc import box_vectors, minimum_image

BOND = Binning(width=0.002)
ANGLE = Binning(width=2.0, lo=0.0, hi=180.0)
DIHEDRAL = Binning(width=5.0, lo=-180.0, hi=180.0, periodic=True)


@dataclass
class CGTerms:
    """Bead index tuples (global) per named CG observable, and the RDF pair classes."""

    bonded: dict[str, np.ndarray]  # "bond:B-S" → (n, 2); "angle:…" (n, 3); "dihedral:…" (n, 4)
    types: np.ndarray  # bead type per bead
    excluded: np.ndarray  # sorted keys i * n + j of pairs within `exclude_bonds` bonds
    exclude_bonds: int


def _paths(bonds: Sequence[tuple[int, int]], n_beads: int) -> tuple[list, list, list]:
    """Bonds, and all simple paths of 3 and 4 beads, each once (one direction)."""
    nbr: list[set[int]] = [set() for _ in range(n_beads)]
    for i, j in bonds:
        nbr[i].add(j)
        nbr[j].add(i)
    two = sorted({(min(i, j), max(i, j)) for i, j in bonds})
    three = sorted({min((i, j, k), (k, j, i)) for j in range(n_beads)
                    for i, k in itertools.combinations(sorted(nbr[j]), 2)})
    four = set()
    for j, k in two:
        for a, b in ((j, k), (k, j)):
            for i in nbr[a] - {b}:
                for m in nbr[b] - {a, i}:
                    four.add(min((i, a, b, m), (m, b, a, i)))
    return two, three, sorted(four)


def _name(kind: str, types: Sequence[str]) -> str:
    t = list(types)
    return f"{kind}:{'-'.join(min(t, t[::-1]))}"


def cg_terms(cg_top: CGTopology, exclude_bonds: int = 3) -> CGTerms:
    """The CG observables of a mapping: bonded terms per bead-type sequence, RDF exclusions."""
    types = cg_top.bead_types.astype(str)
    groups: dict[str, list[np.ndarray]] = {}
    excluded = []
    for cb in cg_top.blocks:
        mm = cb.mapping
        local_types = [b.type for b in mm.beads]
        two, three, four = _paths(mm.bonds, mm.n_beads)
        offsets = cb.first_bead + mm.n_beads * np.arange(cb.block.count)
        for kind, tuples in (("bond", two), ("angle", three), ("dihedral", four)):
            by_name: dict[str, list] = {}
            for tup in tuples:
                t = [local_types[i] for i in tup]
                key = tuple(tup) if t <= t[::-1] else tuple(tup[::-1])
                by_name.setdefault(_name(kind, t), []).append(key)
            for name, idx in by_name.items():
                local = np.asarray(idx, int)
                groups.setdefault(name, []).append((local[None] + offsets[:, None, None]).reshape(-1, local.shape[1]))
        near = {p for p in two}
        if exclude_bonds >= 2:
            near |= {(min(a, c), max(a, c)) for a, _, c in three}
        if exclude_bonds >= 3:
            near |= {(min(a, d), max(a, d)) for a, _, _, d in four}
        if near:
            pairs = np.asarray(sorted(near), np.int64)
            glob = pairs[None] + offsets[:, None, None]
            excluded.append(glob.reshape(-1, 2))
    n = cg_top.n_beads
    ex = np.concatenate(excluded) if excluded else np.zeros((0, 2), np.int64)
    keys = np.unique(np.minimum(ex[:, 0], ex[:, 1]) * n + np.maximum(ex[:, 0], ex[:, 1]))
    bonded = {k: np.concatenate(v) for k, v in sorted(groups.items(), key=lambda kv: (_order(kv[0]), kv[0]))}
    return CGTerms(bonded, types, keys, exclude_bonds)


def _order(name: str) -> int:
    return ["bond", "angle", "dihedral"].index(name.split(":")[0])


def _geometry(x: np.ndarray, dims: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Bond lengths, angles or dihedrals (degrees) of the tuples ``idx``, minimum image per bond."""
    b = [minimum_image(x[idx[:, k + 1]] - x[idx[:, k]], dims) for k in range(idx.shape[1] - 1)]
    if len(b) == 1:
        return np.linalg.norm(b[0], axis=-1)
    if len(b) == 2:
        u, v = -b[0], b[1]
        c = np.einsum("ij,ij->i", u, v) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
        return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))
    n1, n2 = np.cross(b[0], b[1]), np.cross(b[1], b[2])
    m = np.cross(n1, b[1] / np.linalg.norm(b[1], axis=-1, keepdims=True))
    return np.degrees(np.arctan2(np.einsum("ij,ij->i", m, n2), np.einsum("ij,ij->i", n1, n2)))


@dataclass
class CGSamples:
    """Per observable: bonded values pooled over frames, RDF counts and ideal counts summed."""

    values: dict[str, np.ndarray]
    rdf_counts: dict[str, np.ndarray]
    rdf_expected: dict[str, np.ndarray]
    n_frames: int


def sample_cg(terms: CGTerms, path: Path, frames: Sequence[int] | None = None, r_max: float = 1.2,
              width: float = 0.01) -> CGSamples:
    """Every CG observable over the frames of the CG trajectory ``path``."""
    values: dict[str, list] = {k: [] for k in terms.bonded}
    names = sorted(set(terms.types.tolist()))
    code = {t: k for k, t in enumerate(names)}
    bead = np.array([code[t] for t in terms.types])
    classes = [f"rdf:{a}-{b}" for a, b in itertools.combinations_with_replacement(names, 2)]
    pair_id = np.full((len(names), len(names)), -1)
    for k, (a, b) in enumerate(itertools.combinations_with_replacement(range(len(names)), 2)):
        pair_id[a, b] = pair_id[b, a] = k
    nb = int(round(r_max / width))
    edges = np.arange(nb + 1) * width
    counts = np.zeros((len(classes), nb))
    expected = np.zeros((len(classes), nb))
    n = len(terms.types)
    per_type = np.bincount(bead, minlength=len(names))
    ex_a, ex_b = bead[terms.excluded // n], bead[terms.excluded % n]
    n_pairs = np.zeros(len(classes))
    for a, b in itertools.combinations_with_replacement(range(len(names)), 2):
        total = per_type[a] * (per_type[a] - 1) / 2 if a == b else per_type[a] * per_type[b]
        left = np.sum(((ex_a == a) & (ex_b == b)) | ((ex_a == b) & (ex_b == a)))
        n_pairs[pair_id[a, b]] = total - left
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    n_frames = 0
    for fr in read_frames(path, n, frames, expect="CG system of the mapping"):
        n_frames += 1
        x, dims = fr.positions, fr.dimensions
        for name, idx in terms.bonded.items():
            values[name].append(_geometry(x, dims, idx))
        vectors = box_vectors(dims)
        cut = min(r_max, 0.499 * float(box_heights(vectors).min()))
        i, j, shift = neighbour_pairs(x, vectors, cut, terms.excluded)
        r = np.linalg.norm(x[j] + shift - x[i], axis=-1)
        k = (r / width).astype(np.int64)
        ok = k < nb
        pid = pair_id[bead[i[ok]], bead[j[ok]]]
        counts += np.bincount(pid * nb + k[ok], minlength=len(classes) * nb).reshape(len(classes), nb)
        expected += n_pairs[:, None] * shell[None] / abs(np.linalg.det(vectors))
    return CGSamples({k: np.concatenate(v) if v else np.zeros(0) for k, v in values.items()},
                     dict(zip(classes, counts)), dict(zip(classes, expected)), n_frames)


def rdf_edges(samples: CGSamples, width: float = 0.01) -> np.ndarray:
    nb = len(next(iter(samples.rdf_counts.values())))
    return np.arange(nb + 1) * width


def g_of_r(samples: CGSamples, name: str) -> np.ndarray:
    e = samples.rdf_expected[name]
    return np.divide(samples.rdf_counts[name], e, out=np.zeros_like(e), where=e > 0)


def binning_of(name: str) -> Binning:
    return {"bond": BOND, "angle": ANGLE, "dihedral": DIHEDRAL}[name.split(":")[0]]


def compare_cg(reference: CGSamples, candidates: dict[str, CGSamples]) -> dict[str, dict]:
    """JSD (bits) of every CG observable of each candidate against the reference; RDFs compare
    g(r) normalised to unit area (as the atomistic RDF metric), over r where the reference has
    pairs."""
    out: dict[str, dict] = {}
    for name, ref in reference.values.items():
        edges = binning_of(name).edges(ref, [c.values[name] for c in candidates.values() if name in c.values])
        h_ref = histogram(ref, edges)
        out[name] = {"reference": {"mean": float(np.mean(ref)), "std": float(np.std(ref))},
                     "jsd": {lab: jsd(h_ref, histogram(c.values[name], edges))
                             for lab, c in candidates.items() if name in c.values}}
    for name in reference.rdf_counts:
        g_ref = g_of_r(reference, name)
        out[name] = {"jsd": {lab: jsd(g_ref, g_of_r(c, name)) for lab, c in candidates.items()}}
    return out


def plot_cg(reference: CGSamples, candidates: dict[str, CGSamples], path: Path, max_panels: int = 12) -> Path:
    """Overlay of every CG observable (reference black, candidates coloured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from backmap.system.io import atomic_path

    names = list(reference.values)[:max_panels - len(reference.rdf_counts)] + list(reference.rdf_counts)
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        if name.startswith("rdf:"):
            r = rdf_edges(reference)
            mid = 0.5 * (r[1:] + r[:-1])
            ax.plot(mid, g_of_r(reference, name), "k-", lw=2, label="reference")
            for lab, c in candidates.items():
                ax.plot(mid, g_of_r(c, name), lw=1, label=lab)
            ax.set_xlabel(f"r {name[4:]} (nm)")
            ax.set_ylabel("g(r)")
        else:
            ref = reference.values[name]
            edges = binning_of(name).edges(ref, [c.values[name] for c in candidates.values()])
            mid = 0.5 * (edges[1:] + edges[:-1])
            h = histogram(ref, edges)
            ax.plot(mid, h / h.sum(), "k-", lw=2, label="reference")
            for lab, c in candidates.items():
                h = histogram(c.values[name], edges)
                ax.plot(mid, h / max(h.sum(), 1), lw=1, label=lab)
            unit = "nm" if name.startswith("bond") else "deg"
            ax.set_xlabel(f"{name} ({unit})")
            lo, hi = np.percentile(np.concatenate([ref] + [c.values[name] for c in candidates.values()]), [0.2, 99.8])
            if not name.startswith("dihedral"):
                pad = 0.1 * (hi - lo) + 1e-9
                ax.set_xlim(lo - pad, hi + pad)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip("."))
    plt.close(fig)
    return path
