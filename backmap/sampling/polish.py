"""Energy guidance of a placement: a few steepest-descent steps on the chosen candidate's local
energy, in its torsions only (FlowBack-Adjoint's idea, in the sampler instead of a flow).

Why: a generator's draw can be right in its bond lengths and angles and still leave a close
contact with the environment — a phenyl ring turned a few degrees into its neighbours' hydrogens,
a hydrogen eclipsed against a 1-4 partner. Selection among K candidates only picks the least bad
draw.

Why torsions only: a descent in Cartesian coordinates also pulls every bond angle to its force
field minimum θ₀ — it cools the angles (sPS 568 K, 10 frames: the C_AR–C_AR–H_AR angle's JSD went
from 0.003 to 0.35 while the LJ energy's went from 0.58 to 0.13). Rotations about the unit's
rotatable bonds — bonds that are not in a ring and whose far side holds only atoms of the unit
(and atoms not placed yet) — change dihedrals and contacts and leave every bond length and bond
angle exactly as the generator drew it.

Each molecule of a group has its own step size: a step that raises its energy is undone and the
step shrinks (GROMACS's steepest-descent rule), so no placement's energy goes up.

Why central differences, not autograd: a unit has one to three rotors, so the gradient is 2R more
energies, and the scorer takes a unit's K configurations in one batched call anyway — the energy
at a trial and its gradient cost one call, where a forward and a backward pass cost 2.4× that (sPS,
shipped model with guidance: polishing 1.3 → 0.6 s per frame).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import networkx as nx
import numpy as np
import torch

EnergyFn = Callable[[torch.Tensor], torch.Tensor]  # (B, K, U, 3) -> (B, K): K configurations of B units


@dataclass
class Rotors:
    """The rotatable bonds of one unit, outermost last: axis atoms ``a`` (fixed end) and ``b``
    as slots — ≥ 0 a unit atom, < 0 the external atom ``-1 - slot`` of ``external`` — and which
    unit atoms each rotation moves (R, U)."""

    a: list[int]
    b: list[int]
    moves: torch.Tensor
    external: np.ndarray  # molecule-local atoms outside the unit that axes start from
    #: a unit that is a whole molecule (water, methanol) turns rigidly about its mapped centre:
    #: the unit atoms' weights in it (U,), and three more angles (a rotation vector) after the bonds'
    centre: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.a) + (3 if self.centre is not None else 0)


def find_rotors(graph: nx.Graph, unit_atoms: np.ndarray, placed: np.ndarray,
                centre_weights: np.ndarray | None = None) -> Rotors:
    """Rotors of a unit (molecule-local ``unit_atoms``) in the molecule's bond ``graph``, given
    which atoms of the molecule are ``placed`` (bool per atom; the unit's own need not be). A bond
    (a, b) with b in the unit qualifies when cutting it leaves b's side without a and without any
    placed atom outside the unit, a's side holds a placed atom outside the unit (the turn is
    relative to the environment), and b's side moves at least one unit atom besides b. A unit that
    holds its whole molecule (given ``centre_weights``: its atoms' mapping weights) turns rigidly
    about that centre (the CG position stays met). Its own torsions are left as drawn: descending
    them cools their distribution (methanol's H–O–C–H dihedral JSD 0.003 → 0.12 when its hydroxyl
    hydrogen also turned; potential energy per molecule 0.006 → 0.017)."""
    unit = set(int(u) for u in unit_atoms)
    slot = {u: k for k, u in enumerate(unit_atoms.tolist())}
    whole = centre_weights is not None and len(unit) == graph.number_of_nodes() and len(unit) > 1
    adjacency = {n: list(graph.neighbors(n)) for n in graph}
    found = []
    for b in unit:
        for a in graph.neighbors(b):
            if a not in unit and not placed[a]:
                continue
            side = _side(adjacency, b, a)
            if a in side or any(placed[x] and x not in unit for x in side):
                continue
            if not any(placed[x] and x not in unit for x in _side(adjacency, a, b)):
                continue  # a's side floats too: the turn would be about nothing the environment holds
            moving = sorted(slot[x] for x in side if x in unit and x != b)
            if moving:
                found.append((a, b, moving))
    found.sort(key=lambda t: -len(t[2]))  # the largest subtree first: inner rotations act on the result
    external = np.array(sorted({a for a, _b, _m in found if a not in unit}), int)
    ext_slot = {int(a): k for k, a in enumerate(external.tolist())}
    moves = torch.zeros(len(found), len(unit_atoms), dtype=torch.bool)
    a_slots, b_slots = [], []
    for r, (a, b, moving) in enumerate(found):
        moves[r, moving] = True
        a_slots.append(slot[a] if a in unit else -1 - ext_slot[a])
        b_slots.append(slot[b])
    centre = None
    if whole:
        w = np.asarray(centre_weights, float)
        centre = torch.as_tensor(w / w.sum(), dtype=torch.float32)
    return Rotors(a_slots, b_slots, moves, external, centre)


def _side(adjacency: dict, b, a) -> set:
    """The atoms reachable from ``b`` without crossing the bond b–a (``adjacency``: each atom's
    neighbours; a among them if the bond is in a ring)."""
    seen, stack = {b}, [b]
    while stack:
        n = stack.pop()
        for m in adjacency[n]:
            if m not in seen and (n != b or m != a):
                seen.add(m)
                stack.append(m)
    return seen


def rotate(x: torch.Tensor, rotors: Rotors, angles: torch.Tensor, external: torch.Tensor | None) -> torch.Tensor:
    """Unit positions ``x`` (B, U, 3) with each rotor turned by ``angles`` (B, R) (radians),
    in order, then (a whole-molecule unit) the rigid turn of its last three angles about the
    centre; differentiable in both."""
    for r in range(len(rotors.a)):
        a, b = rotors.a[r], rotors.b[r]
        p = x[:, a] if a >= 0 else external[:, -1 - a]
        u = x[:, b] - p
        u = u / u.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        t = angles[:, r, None, None]
        d = x - p[:, None]
        ud = u[:, None]
        # Rodrigues: d cos t + (u × d) sin t + u (u·d)(1 − cos t)
        turned = d * torch.cos(t) + torch.linalg.cross(ud.expand_as(d), d) * torch.sin(t) + \
            ud * (d * ud).sum(-1, keepdim=True) * (1 - torch.cos(t))
        x = torch.where(rotors.moves[r][None, :, None], p[:, None] + turned, x)
    if rotors.centre is not None:
        c = (rotors.centre.to(x.dtype)[None, :, None] * x).sum(1, keepdim=True)
        x = c + (x - c) @ rotation_matrices(angles[:, -3:]).transpose(1, 2)
    return x


def rotation_matrices(v: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations by the rotation vectors ``v`` (B, 3) (axis × angle in radians), by
    Rodrigues' formula; the identity at 0, differentiable."""
    t = v.norm(dim=-1).clamp(min=1e-12)[:, None, None]
    k = v / t[..., 0]
    zero = torch.zeros_like(k[:, 0])
    kx = torch.stack([zero, -k[:, 2], k[:, 1], k[:, 2], zero, -k[:, 0], -k[:, 1], k[:, 0], zero], -1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=v.dtype).expand_as(kx)
    return eye + torch.sin(t) * kx + (1 - torch.cos(t)) * (kx @ kx)


class PlacementPolish:
    """Descends ``steps`` steps in the rotor angles from each placement; ``max_step``: the largest
    angle change of the first step (radians); ``delta``: the central differences' half step."""

    def __init__(self, steps: int, max_step: float = 0.1, delta: float = 1e-3):
        if steps < 0:
            raise ValueError("polish steps must be ≥ 0")
        self.steps = int(steps)
        self.max_step = float(max_step)
        self.delta = float(delta)

    def _energy_and_gradient(self, x: torch.Tensor, energy: EnergyFn, rotors: Rotors, angles: torch.Tensor,
                             external: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The energy (B,) at ``angles`` (B, R) and its gradient (B, R) by central differences:
        the 1 + 2R configurations of each unit go to ``energy`` in one call."""
        B, R = angles.shape
        step = torch.eye(R, dtype=angles.dtype) * self.delta
        probes = torch.cat([angles[:, None], angles[:, None] + step, angles[:, None] - step], 1)  # (B, 1 + 2R, R)
        K = probes.shape[1]
        turned = rotate(x.repeat_interleave(K, 0), rotors, probes.reshape(B * K, R),
                        None if external is None else external.repeat_interleave(K, 0))
        e = energy(turned.view(B, K, *x.shape[1:]))
        return e[:, 0], (e[:, 1:R + 1] - e[:, R + 1:]) / (2 * self.delta)

    def __call__(self, x: torch.Tensor, energy: EnergyFn, rotors: Rotors,
                 external: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Placements ``x`` (B, U, 3) after the descent, and its log (energies before and after,
        accepted steps). ``external`` (B, E, 3): positions of ``rotors.external``."""
        if self.steps == 0 or not len(rotors):
            return x, {}
        with torch.no_grad():
            B, R = x.shape[0], len(rotors)
            current = torch.zeros(B, R, dtype=x.dtype)
            e, grad = self._energy_and_gradient(x, energy, rotors, current, external)
            e0 = e.clone()
            h = torch.full((B,), self.max_step, dtype=x.dtype)
            accepted = 0
            for _ in range(self.steps):
                g = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                gmax = g.abs().amax(-1).clamp(min=1e-12)
                trial = current - (h / gmax)[:, None] * g
                e_trial, g_trial = self._energy_and_gradient(x, energy, rotors, trial, external)
                better = torch.isfinite(e_trial) & (e_trial < e)
                accepted += int(better.sum())
                current = torch.where(better[:, None], trial, current)
                grad = torch.where(better[:, None], g_trial, grad)
                e = torch.where(better, e_trial, e)
                h = torch.where(better, h * 1.2, h * 0.2)
            out = rotate(x, rotors, current, external)
        return out, {"e_before": e0, "e_after": e, "accepted": accepted}
