"""Groups for ``vae_mc``'s local moves (turns, cranks, inner moves) decided one after the other
(``local_decide: sequential``): as few and as large as exactness allows.

A local move's cost is mostly per group (the energy call's fixed cost, Python), not per unit. Units
decided one after the other may interact (:func:`sequential_metropolis` adds the
energy changes of the moves accepted before), but two units of one group must not share a restrained bead, a
bonded term or an excluded pair: those terms are not in the couplings, and a unit's proposal must
not depend on another's atoms (a crank's axis atoms are its bonded partners). Units of different
molecules never do. Within a molecule the plan steps (or crank clusters) are coloured so that no
two of a colour do, on the first molecule of each type (every molecule of a type has the same
topology): each colour's steps in every molecule make one group. On sPS: 3 groups for the inner
moves of the 20 beads, 2 for the turns of the 10 rings and the chain-end bead, 3 for the cranks of
the backbone beads with their rings (against ~300 groups of units beyond each other's cut-off).
"""
from __future__ import annotations

import numpy as np

from backmap.api.sampling import UnitGroup
from backmap_vae.blocks import colours


def row_conflicts(targets, rows: list[np.ndarray]) -> np.ndarray:
    """(R, R) bool: the atom sets ``rows`` (global indices, −1 padding allowed) that share an atom,
    a restrained bead, a bonded term or an excluded pair (``targets``: :class:`UnitTargets`)."""
    n = targets.system.n_atoms
    owner = np.full(n, -1)
    out = np.eye(len(rows), dtype=bool)
    for r, atoms in enumerate(rows):
        atoms = atoms[atoms >= 0]
        out[r, owner[atoms][owner[atoms] >= 0]] = True
        owner[atoms] = r
    params = targets.ff.params
    for terms in [t.atoms for t in params.bonded.values()] + [params.exclusions]:
        if not len(terms):
            continue
        terms = np.asarray(terms, np.int64).reshape(len(terms), -1)
        who = owner[terms]  # (T, k)
        for a in range(who.shape[1]):
            for b in range(a + 1, who.shape[1]):
                hit = (who[:, a] >= 0) & (who[:, b] >= 0) & (who[:, a] != who[:, b])
                out[who[hit, a], who[hit, b]] = True
    bead_rows: dict[int, set[int]] = {}
    for r, atoms in enumerate(rows):
        for a in atoms[atoms >= 0]:
            for b in targets.bead_of_atom[int(a)]:
                bead_rows.setdefault(b, set()).add(r)
    for shared in bead_rows.values():
        shared = sorted(shared)
        out[np.ix_(shared, shared)] = True
    return out | out.T


def first_molecule_rows(group: UnitGroup) -> np.ndarray:
    """The atom row of a group's unit in the lowest-numbered molecule it holds."""
    return group.atoms[int(np.argmin(group.molecules))]


def stack(parts: list[UnitGroup], key: int, labels: list[str], extra: dict | None = None) -> UnitGroup:
    """The rows of several groups of one molecule type as one group (atom rows padded with −1),
    with each row's log label in ``meta['row_labels']`` and ``extra`` meta arrays stacked the
    same way (``{name: [per part (B_p, U_p) array]}``, padded with 0). For moves that build no
    environment (no local frame beads: ``frame`` is None)."""
    width = max(p.atoms.shape[1] for p in parts)

    def pad(a: np.ndarray, fill: int) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)

    meta = {**parts[0].meta, "label": labels[0] if len(set(labels)) == 1 else "+".join(dict.fromkeys(labels)),
            "row_labels": np.concatenate([[lab] * len(p.atoms) for lab, p in zip(labels, parts)])}
    for name, arrays in (extra or {}).items():
        meta[name] = np.concatenate([pad(a, 0) for a in arrays])
    return UnitGroup(parts[0].moltype, key, meta, np.concatenate([p.molecules for p in parts]),
                     np.concatenate([pad(p.atoms, -1) for p in parts]), np.concatenate([p.bead for p in parts]),
                     np.concatenate([p.predecessor for p in parts]), None)


def coloured_groups(targets, groups: list[UnitGroup]) -> list[tuple[UnitGroup, list[int]]]:
    """``groups`` (each one plan step's — or one crank kind's — units of every molecule) stacked per
    molecule type and colour (:func:`row_conflicts` on the first molecule): (stacked group, the
    indices of its parts in ``groups``). Row labels: each part's label."""
    out = []
    for moltype in dict.fromkeys(g.moltype for g in groups):
        mine = [k for k, g in enumerate(groups) if g.moltype == moltype]
        conflicts = row_conflicts(targets, [first_molecule_rows(groups[k]) for k in mine])
        for colour in colours(conflicts):
            members = [mine[c] for c in colour]
            parts = [groups[k] for k in members]
            extra = {"wall_beads": [p.meta["wall_beads"] for p in parts]} if "wall_beads" in parts[0].meta else None
            out.append((stack(parts, -3000 - len(out), [targets.label(p) for p in parts], extra), members))
    return out
