"""Exact local moves of the geometry *inside* a unit for ``vae_mc`` (``inner``): small rigid
rotations of a few atoms of a bead that keep every held bond, so that the bond angles, the
hydrogens and the ring's shape move as they do in MD, without a whole-bead redraw.

On sPS at stationarity a whole-bead VAE redraw is accepted in 0.1–4 % of sweeps, and 80–90 % of
the beads keep their start's inner geometry for 200 sweeps; that geometry holds three quarters of
each molecule's Lennard-Jones variance (docs/vae-sps.md, "τ against the target's own variance"). Turns
and cranks move beads rigidly and cannot reach it.

The kinds of move of a unit (:func:`inner_kinds`), for each of its atoms a:
- **pivot**: a is bonded to one atom p (a hydrogen), or a with the atoms hanging on it only by
  it is bonded to the rest by one bond, to p; or the whole unit hangs on one bond to p: the set
  is rotated about a random axis (uniform on the sphere) through p;
- **crank**: a with the atoms hanging on it only by it is bonded to the rest by two bonds, to p and
  q: the set is rotated about the line p–q (a ring carbon and its hydrogen, a CH₂ of a chain).

Every bond from the set to the rest ends on the axis (or at the pivot), every distance inside the
set is kept: held bonds keep their lengths, Lebesgue measure is kept, so the δ measure of
vae_mc's target is kept. The angle is uniform in ±``step``/r, with r the largest distance of a
moved atom from the axis. A rotation about an axis keeps every atom's distance from it, so r —
and the proposal's density — is the same forward and back: the proposal is symmetric and the
acceptance is min(1, π(x')/π(x)) on the target the VAE moves sample. The kind is chosen
uniformly among the unit's kinds, whatever the state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backmap.api.io import host_random
from backmap.api.sampling import UnitGroup
from backmap_vae.rotations import rotation_move
from backmap_vae.targets import BoundUnits


def neighbours(bonds: np.ndarray, n_atoms: int) -> list[list[int]]:
    """Each atom's bonded partners, from (K, 2) bonds."""
    out: list[list[int]] = [[] for _ in range(n_atoms)]
    for i, j in np.asarray(bonds, np.int64).reshape(-1, 2):
        out[i].append(int(j))
        out[j].append(int(i))
    return out


def hanging(a: int, t: int, nbrs: list[list[int]], inside: set[int]) -> set[int] | None:
    """The atoms reached from ``t`` without passing through ``a`` if they all lie ``inside`` (a
    branch that hangs on a: a hydrogen, a ring on its CH), else None."""
    seen, todo = {t}, [t]
    while todo:
        for n in nbrs[todo.pop()]:
            if n == a or n in seen:
                continue
            if n not in inside:
                return None
            seen.add(n)
            todo.append(n)
    return seen


def inner_kinds(row: np.ndarray, nbrs: list[list[int]], units: np.ndarray | None = None
                ) -> list[tuple[np.ndarray, tuple[int, int], np.ndarray | None, int]]:
    """The inner moves of one unit (atom row (U,), −1 padding): (rotated slots (U,) bool, (p, q),
    carried slots (U,) bool or None, the slot of the atom a the move is built on), with (p, q) the
    global atoms of a crank's axis, or (p, −1) for a pivot about atom p.

    For each atom a, the rotated set is a with its terminal atoms (hydrogens), or a with every
    branch that hangs on it inside the row; it is pivoted if the rest holds it by one bond,
    cranked if by two. Where a carries branches that are more than one atom (a CH its ring, a CH₂
    its CH₃), a **shift** rotates a with its terminal atoms only and translates those branches
    rigidly by a's displacement, about the axis of a with every branch: a moves as far as the
    step allows, the branch's shape and its bond to a are kept. ``units`` (U,): the unit of each
    slot of a row that joins several (a crank cluster): then only the moves whose atoms span two
    or more units are kept (a CH with its ring, about its two backbone partners); the others are
    each unit's own."""
    atoms = [int(a) for a in row if a >= 0]
    inside = set(atoms)
    slot = {int(a): s for s, a in enumerate(row) if a >= 0}
    out: list[tuple[np.ndarray, tuple[int, int], np.ndarray | None, int]] = []
    seen: set[tuple[frozenset, frozenset]] = set()

    def mask_of(members: set[int]) -> np.ndarray:
        mask = np.zeros(len(row), bool)
        mask[[slot[m] for m in members]] = True
        return mask

    def axis_of(members: set[int]) -> tuple[int, int] | None:
        outside = sorted({o for m in members for o in nbrs[m]} - members)
        return (outside[0], -1) if len(outside) == 1 else (outside[0], outside[1]) if len(outside) == 2 else None

    def add(rotated: set[int], axis: tuple[int, int] | None, a: int, carried: set[int] = frozenset()) -> None:
        key = (frozenset(rotated), frozenset(carried))
        every = mask_of(rotated | carried)
        if axis is None or key in seen or (units is not None and len(set(units[every].tolist())) < 2):
            return
        seen.add(key)
        out.append((mask_of(rotated), axis, mask_of(carried) if carried else None, slot[a]))

    for a in atoms:
        branches = [b for t in nbrs[a] if t in inside and (b := hanging(a, t, nbrs, inside)) is not None]
        terminal = {a}.union(*[b for b in branches if len(b) == 1 and len(nbrs[next(iter(b))]) == 1])
        whole = {a}.union(*branches)
        add(terminal, axis_of(terminal), a)  # a with its hydrogens (a CH₂ between its partners)
        add(whole, axis_of(whole), a)  # a with every branch on it
        if whole != terminal:  # a with its hydrogens rotated, its larger branches carried along
            add(terminal, axis_of(whole), a, whole - terminal)
    if len(atoms) > 1:  # the whole unit on one bond (sPS's phenyl): it wobbles about the atom it hangs on
        add(inside, axis_of(inside), atoms[0])
    return out


@dataclass
class InnerGroup:
    """A colour group's inner moves: per unit its kinds' rotated slots (B, K, U), their axes
    (B, K, 2) as global atoms (q = −1: a pivot about p, the axis drawn per move) and its number of
    kinds (B,); for shifts the slots carried along (B, K, U) and the slot of the atom whose
    displacement they follow (B, K) (None: no shifts)."""

    group: UnitGroup
    masks: torch.Tensor
    axes: torch.Tensor
    kinds: torch.Tensor
    carried: torch.Tensor | None = None
    anchors: torch.Tensor | None = None


def inner_group(group: UnitGroup, nbrs: list[list[int]], spanning: bool = False) -> InnerGroup | None:
    """The inner moves of a colour group's units; None if none of them has one. ``spanning``: the
    group's rows are crank clusters (``meta['wall_beads']`` names each slot's bead), and only the
    moves across two or more of their units are made (:func:`inner_kinds`)."""
    walls = group.meta["wall_beads"] if spanning else [None] * len(group.atoms)
    per_unit = [inner_kinds(row, nbrs, w) for row, w in zip(group.atoms, walls)]
    K = max(len(k) for k in per_unit)
    if not K:
        return None
    B, U = group.atoms.shape
    masks = np.zeros((B, K, U), bool)
    carried = np.zeros((B, K, U), bool)
    anchors = np.zeros((B, K), np.int64)
    axes = np.zeros((B, K, 2), np.int64)
    for u, kinds in enumerate(per_unit):
        for k, (mask, axis, carry, anchor) in enumerate(kinds):
            masks[u, k], axes[u, k], anchors[u, k] = mask, axis, anchor
            if carry is not None:
                carried[u, k] = carry
    return InnerGroup(group, torch.as_tensor(masks), torch.as_tensor(axes), torch.as_tensor([len(k) for k in per_unit]),
                      torch.as_tensor(carried) if carried.any() else None, torch.as_tensor(anchors))


def random_directions(B: int, gen: torch.Generator) -> torch.Tensor:
    """(B, 3) unit vectors uniform on the sphere."""
    v = host_random(torch.randn, B, 3, generator=gen, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True)


def inner_rotation(units: BoundUnits, moves: InnerGroup, step: float, gen: torch.Generator
                   ) -> tuple[torch.Tensor, ...]:
    """The rotation of one inner move of every unit (bound with :meth:`UnitTargets.bind_unrotated`):
    a kind drawn uniformly per unit; (local placements (B, U, 3), pivots (B, 3), unit axes (B, 3),
    rotated atoms (B, U), largest angles step/r (B,): r the rotated atoms' largest distance from
    the axis, which the rotation keeps, the kind (B,), the atoms carried along (B, U) or None,
    and the slot (B,) whose displacement they follow)."""
    B = len(moves.kinds)
    kind = (host_random(torch.rand, B, generator=gen,
                        dtype=torch.float64) * moves.kinds).long().clamp(max=moves.masks.shape[1] - 1)
    rows = torch.arange(B)
    real = units.index >= 0
    moved = moves.masks[rows, kind] & real
    carried = None if moves.carried is None else moves.carried[rows, kind] & real
    p, q = moves.axes[rows, kind].unbind(-1)
    local = units.local().double()
    frame = lambda atoms: torch.einsum("bj,bkj->bk", units.positions[atoms] - units.centre, units.rotation)  # noqa: E731
    pivot = frame(p)
    crank = q >= 0
    axis = torch.where(crank[:, None], frame(q.clamp(min=0)) - pivot, random_directions(B, gen))
    axis = axis / axis.norm(dim=-1, keepdim=True)
    r = local - pivot[:, None]
    radius = (r - (r * axis[:, None]).sum(-1, keepdim=True) * axis[:, None]).norm(dim=-1)  # from the axis
    reach = torch.where(moved, radius, torch.zeros_like(radius)).amax(-1).clamp(min=1e-3)
    anchor = None if moves.anchors is None else moves.anchors[rows, kind]
    return local, pivot, axis, moved, step / reach, kind, carried, anchor


def inner_move(units: BoundUnits, moves: InnerGroup, step: float, gen: torch.Generator, candidates: int = 1,
               sequential: bool = False, compiled: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One inner move of every unit of a group (:func:`inner_rotation`), decided by
    :func:`rotation_move` (``sequential``: see there). Returns its (accepted, new local placements,
    invalid, angle) and the kind chosen per unit (B,)."""
    local, pivot, axis, moved, width, kind, carried, anchor = inner_rotation(units, moves, step, gen)
    acc, new, invalid, angle = rotation_move(units, local, pivot, axis, moved, width, gen, candidates, sequential,
                                             carried, anchor, compiled)
    return acc & (moves.kinds > 0), new, invalid, angle, kind  # a unit without a kind has moved nothing
