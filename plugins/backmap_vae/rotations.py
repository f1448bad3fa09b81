"""Local Metropolis moves for ``vae_mc``: rigid rotations of a unit (or a cluster of units) about an
axis through two atoms that stay where they are, so that every bond to the rest keeps its length.

- **Turns**: a unit bonded to the rest of its molecule by one bond (sPS's phenyl beads) turned
  about that bond.
- **Cranks**: a unit together with the units hanging on it (sPS's backbone bead and its phenyl
  ring) held by two bonds, rotated about the axis through the two atoms outside it (a crankshaft),
  or by one bond, turned about it (sPS's chain ends).

The angle is uniform in ±``width``, so the proposal is symmetric. A rigid rotation of a subset of
atoms keeps Lebesgue measure and every distance inside the subset (its held bonds); the bonds to
the rest end on the axis, so they keep their lengths too, and the δ measure of vae_mc's target is
kept. The move is therefore exact with acceptance min(1, π(x')/π(x)), with π the same restrained
target the VAE moves sample (springs, wall, restraint). Where a VAE move redraws a whole ring in a
packed melt (accepted ~0.3 % of the time at stationarity on sPS), a turn of ±20° is accepted ~46 %
of the time (docs/vae-sps.md, "Ring turns").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backmap.api.io import host_random
from backmap.api.sampling import UnitGroup
from backmap_vae.blocks import colour_apart, merge_groups, step_groups
from backmap_vae.local_groups import coloured_groups
from backmap_vae.targets import BoundUnits


def crossing_bonds(atoms: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """(K, 2) the bonds from ``atoms`` to the rest of the molecule, each as (inside, outside)."""
    inside = np.isin(bonds, atoms)
    cross = bonds[inside.sum(1) == 1]
    flip = ~np.isin(cross[:, 0], atoms)
    return np.where(flip[:, None], cross[:, ::-1], cross)


def rotation_axis(atoms: np.ndarray, bonds: np.ndarray) -> tuple[int, int] | None:
    """The two atoms (global indices) the rigid rotation of ``atoms`` turns about: with one bond to
    the rest (outside, inside), with two to different outside atoms those two (a crankshaft);
    None otherwise (no rotation keeps every bond to the rest)."""
    cross = crossing_bonds(atoms, bonds)
    if len(cross) == 1:
        return int(cross[0, 1]), int(cross[0, 0])
    if len(cross) == 2 and cross[0, 1] != cross[1, 1]:
        return int(cross[0, 1]), int(cross[1, 1])
    return None


def turn_axes(index: np.ndarray, bonds: np.ndarray) -> np.ndarray | None:
    """(B, 2) per unit (atom index rows (B, U), −1 padding) of a group whose units each hang on one
    bond: the global atoms of that bond (outside, inside); None unless every unit does."""
    axes = np.zeros((len(index), 2), np.int64)
    for u, row in enumerate(index):
        cross = crossing_bonds(row[row >= 0], bonds)
        if len(cross) != 1:
            return None
        axes[u] = cross[0, 1], cross[0, 0]
    return axes


def turned(local: torch.Tensor, pivot: torch.Tensor, axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Placements (B, U, 3) turned by ``angle`` (B,) about the unit vectors ``axis`` (B, 3) through
    ``pivot`` (B, 3) (Rodrigues)."""
    r = local - pivot[:, None]
    k = axis[:, None].expand_as(r)
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    out = r * c + torch.cross(k, r, dim=-1) * s + k * (k * r).sum(-1, keepdim=True) * (1 - c)
    return out + pivot[:, None]


def turn_geometry(units: BoundUnits, axes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The units' placements (B, U, 3) in their local frames, the first axis atoms (B, 3) and the
    unit vectors (B, 3) from them to the second ones: what :func:`turned` turns about."""
    local = units.local().double()
    ends = units.positions[torch.as_tensor(axes)].double()  # (B, 2, 3)
    ends = torch.einsum("bej,bkj->bek", ends - units.centre[:, None], units.rotation)  # lab → local frames
    axis = ends[:, 1] - ends[:, 0]
    return local, ends[:, 0], axis / axis.norm(dim=-1, keepdim=True)


def candidate_angles(B: int, width: float | torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """(B, n') angles of one rotation move per unit, the current state's (0) among them: [0, φ]
    with φ uniform in ±``width`` (Metropolis, n = 1), or the heat bath's (j − K)·h, j = 0 … n − 1,
    with K uniform in 0 … n − 1 and h uniform in (0, 2·width/(n − 1)]. ``width``: a float or (B,)."""
    if n == 1:
        return torch.stack([torch.zeros(B, dtype=torch.float64),
                            (2 * host_random(torch.rand, B, generator=gen, dtype=torch.float64) - 1) * width], 1)
    h = (1 - host_random(torch.rand, B, generator=gen, dtype=torch.float64)) * 2 * width / (n - 1)
    k = host_random(torch.randint, n, (B,), generator=gen)
    return (torch.arange(n)[None] - k[:, None]).double() * h[:, None]


def turn_move(units: BoundUnits, axes: np.ndarray, width: float, gen: torch.Generator, candidates: int = 1,
              sequential: bool = False, compiled: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One rotation move of every unit of a group about the axes through the atom pairs ``axes``
    (B, 2): the whole unit turns (:func:`rotation_move`)."""
    local, pivot, axis = turn_geometry(units, axes)
    return rotation_move(units, local, pivot, axis, units.index >= 0, width, gen, candidates, sequential,
                         compiled=compiled)


def rotation_proposals(local: torch.Tensor, pivot: torch.Tensor, axis: torch.Tensor, moved: torch.Tensor,
                       width: float | torch.Tensor, gen: torch.Generator, candidates: int = 1,
                       carried: torch.Tensor | None = None, anchor: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The angles (B, n) of :func:`candidate_angles` and the placements (B, n, U, 3) they give when
    the atoms ``moved`` (B, U) of ``local`` are turned about ``axis`` through ``pivot``, and the
    atoms ``carried`` (B, U), if any, translated by the displacement of the turned atom in slot
    ``anchor`` (B,). Turning by φ then by ψ is turning by φ + ψ, carried atoms included, and the
    map keeps volume: the family is a one-parameter group, as a plain rotation's."""
    angles = candidate_angles(len(local), width, candidates, gen)
    moved = torch.as_tensor(moved)[..., None]
    rows = torch.arange(len(local))
    out = []
    for a in angles.T:
        new = turned(local, pivot, axis, a)
        placed = torch.where(moved, new, local)
        if carried is not None:
            shift = (new[rows, anchor] - local[rows, anchor])[:, None]
            placed = torch.where(carried[..., None], local + shift, placed)
        out.append(placed)
    return angles, torch.stack(out, 1)


def rotation_move(units: BoundUnits, local: torch.Tensor, pivot: torch.Tensor, axis: torch.Tensor,
                  moved: torch.Tensor, width: float | torch.Tensor, gen: torch.Generator, candidates: int = 1,
                  sequential: bool = False, carried: torch.Tensor | None = None, anchor: torch.Tensor | None = None,
                  compiled: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One rigid rotation of the atoms ``moved`` (B, U) of each unit's placement ``local`` (B, U, 3)
    about the unit vector ``axis`` (B, 3) through ``pivot`` (B, 3), every other atom kept but the
    ``carried`` ones (:func:`rotation_proposals`). ``width``: a float or (B,). The units share no
    bonded term, bead or axis atom; they do not interact (decided independently) or, with
    ``sequential``, may: then they are decided one after the other, each with the energy changes
    of those accepted before it (Metropolis only): ``compiled`` (default), scored and decided in one
    compiled loop against the state the moves before it left (:meth:`BoundUnits.scan_in_turn`),
    else scored in torch against the state before the group and decided with the couplings
    (:meth:`BoundUnits.decide_in_turn`) — the same decisions up to rounding.

    ``candidates`` = 1: Metropolis, the angle uniform in ±``width``. n > 1: a heat-bath choice among
    the n angles of :func:`candidate_angles`: the same set of states arises from each of its members
    with the same probability, so choosing one ∝ π is exact; the n placements are scored in one
    call (the cost per call is mostly fixed). Returns (accepted (B,): moved, new placements
    (B, U, 3) local, invalid (B,): proposals whose ln π is NaN, rejected and counted; the angles
    (B,))."""
    B = len(local)
    angles, placements = rotation_proposals(local, pivot, axis, moved, width, gen, candidates, carried, anchor)
    turned_atoms = torch.as_tensor(moved)
    moved = turned_atoms if carried is None else turned_atoms | carried  # every atom that moves
    if sequential and candidates != 1:
        raise ValueError("sequential rotation moves are Metropolis moves (candidates = 1)")
    decided = None
    if sequential and compiled:  # two rigid bodies: the turned atoms, the carried ones
        bodies = turned_atoms.long() if carried is None else turned_atoms.long() + 2 * carried.long()
        decided = units.scan_in_turn(placements[:, 1], moved, gen, bodies)
    if decided is not None:  # scored and decided in one compiled loop
        rows = torch.arange(B)
        chosen = decided[0].long()
        return chosen.bool(), placements[rows, chosen], decided[1], angles[rows, chosen]
    some = None if bool((moved == (units.index >= 0)).all()) else moved  # not whole units
    logp = units.log_target(placements, some)  # (B, n), up to a constant per unit
    moved = moved[..., None]
    invalid = torch.isnan(logp).any(1)
    current = (angles == 0).int().argmax(1)
    if sequential:
        accepted, invalid = units.decide_in_turn(local, placements[:, 1], moved[..., 0], logp[:, 1] - logp[:, 0], gen)
        chosen = accepted.long()
    elif candidates == 1:
        u = host_random(torch.rand, B, generator=gen, dtype=torch.float64)
        chosen = torch.where(~invalid & (torch.log(u) < logp[:, 1] - logp[:, 0]), 1, 0)
    else:  # a NaN candidate rejects the move (counted); the current state is never NaN
        weights = torch.softmax(torch.nan_to_num(logp, nan=-torch.inf), 1)
        chosen = torch.where(invalid, current, host_random(torch.multinomial, weights, 1, generator=gen)[:, 0])
    rows = torch.arange(B)
    angle = angles[rows, chosen]
    return angle != 0, placements[rows, chosen], invalid, angle


@dataclass
class CrankGroup:
    """Clusters of one kind (the same plan steps of one molecule type), one per molecule of a
    colour: far enough apart to be moved and decided at once. ``group`` holds each cluster's atoms
    as one unit row (the wall of each atom at its own bead: ``meta['wall_beads']``), ``axes`` the
    atoms each turns about."""

    group: UnitGroup
    axes: np.ndarray


def crank_clusters(groups: list[UnitGroup], bonds: np.ndarray) -> list[tuple[str, tuple[int, ...]]]:
    """The clusters a crank moves, as (molecule type, plan steps): each unit bonded to the rest by
    two or more bonds together with the units hanging on it by one, where the cluster is held by one
    or two bonds (a rotation keeps them); from each type's first molecule."""
    out = []
    for moltype in dict.fromkeys(g.moltype for g in groups):
        first = min(int(m) for g in groups if g.moltype == moltype for m in g.molecules)
        atoms = {g.step: row[row >= 0] for g in groups if g.moltype == moltype
                 for m, row in zip(g.molecules, g.atoms) if m == first}
        owner = {int(a): s for s, at in atoms.items() for a in at}
        cross = {s: crossing_bonds(at, bonds) for s, at in atoms.items()}
        hangers = {s: owner.get(int(c[0, 1])) for s, c in cross.items() if len(c) == 1}
        for s in sorted(atoms):
            if len(cross[s]) < 2:
                continue
            steps = (s, *sorted(h for h, parent in hangers.items() if parent == s))
            if rotation_axis(np.concatenate([atoms[t] for t in steps]), bonds) is not None:
                out.append((moltype, steps))
    return out


def crank_groups(targets, groups: list[UnitGroup], bonds: np.ndarray,
                 clusters: list[tuple[str, tuple[int, ...]]], apart: bool = True) -> list[CrankGroup]:
    """The crank moves of a frame: each cluster kind's clusters in every molecule, coloured so that
    no bead of one lies within :meth:`UnitTargets.separation` (interactions included) of a bead of
    another in its group; not ``apart``: one group per kind (decided one after the other)."""
    out = []
    for moltype, steps in clusters:
        parts = [merge_groups(groups, moltype, s) for s in steps]
        atoms = np.concatenate([p.atoms for p in parts], 1)  # (B, A), −1 padding
        walls = np.concatenate([np.repeat(p.bead[:, None], p.atoms.shape[1], 1) for p in parts], 1)
        beads = np.stack([p.bead for p in parts], 1)
        names = targets.labels[moltype]
        label = f"{moltype}:{'+'.join(names[p.meta['bead']] for p in parts)} crank"
        colours = (colour_apart(targets, beads, targets.separation(interacting=False)) if apart
                   else [np.arange(len(beads))])
        for rows in colours:
            axes = np.array([rotation_axis(a[a >= 0], bonds) for a in atoms[rows]], np.int64)
            first = parts[0]
            flat = UnitGroup(moltype, -1000 - steps[0], {**first.meta, "label": label, "wall_beads": walls[rows]},
                             first.molecules[rows], atoms[rows], first.bead[rows], first.predecessor[rows],
                             None if first.frame is None else first.frame[rows])
            out.append(CrankGroup(flat, axes))
    return out


def rotation_groups(targets, cg: np.ndarray, box, bonds: np.ndarray, groups: list[UnitGroup] | None = None,
                    clusters: list[tuple[str, tuple[int, ...]]] | None = None, apart: bool = True
                    ) -> tuple[list[tuple[UnitGroup, np.ndarray]], list[CrankGroup]]:
    """A frame's turns — (colour group, axes) of the units hanging on one bond — and its cranks
    (:func:`crank_groups` of ``clusters``, default :func:`crank_clusters`), from the frame's colour
    groups ``groups`` (default: with interactions allowed). ``apart``: groups whose units never
    interact (decided at once); else the plan steps or cluster kinds that share no bead or bonded
    term, with the units of every molecule, in one group (decided one after the other,
    :func:`rotation_move`; :mod:`backmap_vae.local_groups`)."""
    if groups is None:
        groups = targets.frame_groups(cg, box, interacting=True)
    if clusters is None:
        clusters = crank_clusters(groups, bonds)
    if apart:
        turns = [(g, axes) for g in targets.frame_groups(cg, box, interacting=False)
                 if (axes := turn_axes(g.atoms, bonds)) is not None]
        return turns, crank_groups(targets, groups, bonds, clusters)
    turns = [(g, axes) for g in step_groups(groups) if (axes := turn_axes(g.atoms, bonds)) is not None]
    cranks = crank_groups(targets, groups, bonds, clusters, apart=False)
    return ([(g, np.concatenate([turns[k][1] for k in members]))
             for g, members in coloured_groups(targets, [g for g, _ in turns])],
            [CrankGroup(g, np.concatenate([cranks[k].axes for k in members]))
             for g, members in coloured_groups(targets, [c.group for c in cranks])])
