"""Turn a free-standing unit towards the atoms it will bond to, or dock a unit drawn in free space
onto the atom it bonds to (forward pass).

A unit with no bond to an atom placed so far hangs only from its bead's local frame: its position
is pinned by the CG bead, but its orientation is whatever the generator drew. When it is built out
of domain (chemical transfer: sPS rings drawn by a model that learned rings on cumene) that
orientation can be far off, and every unit bonded to it later has to close onto it wherever it
points — sPS's backbone then misses its beads by 0.25 nm (docs/transfer.md).

The CG input says where those later partners are: an atom that maps onto beads lies near their
centres, weighted as in the mapping (sPS: the CH a ring hangs from lies between its two backbone
beads; the ipso–CH direction that estimate gives is 8° from the true one). This module rotates
each candidate rigidly about its own mapped centre (so its bead's mapped position does not move)
so that its anchor atoms — those bonded to not yet placed atoms outside the unit — point at their
partners' estimates: a Kabsch fit of the anchor directions, with a small pull towards no rotation
so that a single anchor turns the unit the least (the spin about the anchor axis stays as drawn).
Units bonded to a placed atom are left alone: turning them would break that bond.

Docking (``dock``: bead types) is for units a model only ever learned in free space: cumene's ring
is built first, from its bead frame alone, while an sPS ring in the default order hangs from a
placed backbone, and drawn there the transfer model puckers 80 % of the rings (docs/transfer.md).
The sampler draws such a unit seeing the CG beads only (no atom placed), as in training; this
module then moves each candidate rigidly onto the one placed atom its anchor bonds to: turned
about its mapped centre so the anchor points at that atom, then slid along that line to the bond's
length (the force field's b0). Its bead's mapped centre moves by what the slide takes.
"""
from __future__ import annotations

import numpy as np
import torch

from backmap.errors import BackmapError
from backmap.forcefield.parameters import molecule_terms
from backmap.system.mapping import CGTopology
from backmap.sampling.traversal import Plan

#: weight of "no rotation" against one anchor's direction (the pull that picks, among the rotations
#: meeting a single anchor, the smallest)
IDENTITY_PULL = 1e-3


class PartnerOrientation:
    """Per molecule type and plan step, what turning a unit needs: its anchors (slots in the
    unit), their partner atoms, the partners' estimates as weights over the molecule's beads, and
    the weights of the unit's mapped centre."""

    def __init__(self, cg_topology: CGTopology, plans: dict[str, Plan], orient: bool = True,
                 dock: tuple[str, ...] = ()):
        self.orient = orient
        self.tables: dict[tuple[str, int], tuple[torch.Tensor, ...]] = {}
        #: (molecule type, plan step) of the units to draw in free space and dock
        self.docked: set[tuple[str, int]] = set()
        done: set[str] = set()
        for cb in cg_topology.blocks:
            mt, mapping = cb.block.moltype, cb.mapping
            if mt.name in done:
                continue
            done.add(mt.name)
            w = mapping.weight_matrix  # (beads, atoms)
            b0 = _bond_lengths(mt) if dock else {}
            bonded = [set() for _ in range(mt.n_atoms)]
            for i, j in mt.bonds:
                bonded[i].add(int(j))
                bonded[j].add(int(i))
            for s, unit in enumerate(plans[mt.name].units):
                atoms = list(unit.atoms)
                inside = set(atoms)
                slots, partners = [], []
                for slot, a in enumerate(atoms):
                    for p in sorted(bonded[a] - inside):
                        if w[:, p].sum() > 0:
                            slots.append(slot)
                            partners.append(p)
                if not slots:
                    continue
                estimate = w[:, partners].T / w[:, partners].sum(0)[:, None]  # (A, beads)
                centre = w[unit.bead, atoms]
                centre = centre / centre.sum() if centre.sum() > 0 else np.full(len(atoms), 1.0 / len(atoms))
                length = [b0.get((atoms[slot], p), np.nan) for slot, p in zip(slots, partners)]
                self.tables[(mt.name, s)] = (torch.as_tensor(slots), torch.as_tensor(partners),
                                             torch.as_tensor(estimate, dtype=torch.float32),
                                             torch.as_tensor(centre, dtype=torch.float32), int(unit.bead),
                                             torch.as_tensor(length, dtype=torch.float32))
                if mapping.beads[unit.bead].type in dock:
                    self.docked.add((mt.name, s))
            missing = [mapping.beads[unit.bead].name for s, unit in enumerate(plans[mt.name].units)
                       if mapping.beads[unit.bead].type in dock and (mt.name, s) not in self.tables]
            if missing:
                raise BackmapError(f"dock: bead {missing[0]} of {mt.name} has no bond to another bead's atom to "
                                   "dock onto")
        types = {bead.type for cb in cg_topology.blocks for bead in cb.mapping.beads}
        unknown = sorted(set(dock) - types)
        if unknown:
            raise BackmapError(f"dock: no bead of type {unknown[0]} in the mapping (its bead types: "
                               f"{', '.join(sorted(types))})")

    def blind(self, moltype: str, step: int) -> bool:
        """Whether this step's units are drawn in free space (seeing no placed atom) and docked."""
        return (moltype, step) in self.docked

    def __call__(self, moltype: str, step: int, candidates: torch.Tensor, first_atom: torch.Tensor,
                 bead: np.ndarray, cg_positions: np.ndarray, placed: torch.Tensor,
                 positions: torch.Tensor) -> torch.Tensor:
        """Candidates (B, K, U, 3) in the lab frame, the free-standing ones turned towards their
        partners' estimates from ``cg_positions`` (M, 3; molecules whole), the docked ones moved
        onto their placed partner in ``positions``; ``bead``: each row's unit bead (global index)."""
        table = self.tables.get((moltype, step))
        if table is None:
            return candidates
        slots, partners, estimate, centre, unit_bead, length = table
        known = placed[first_atom[:, None] + partners[None]]  # (B, A)
        if (moltype, step) in self.docked:
            return self._dock(candidates, slots, centre, length, known, positions[first_atom[:, None] + partners[None]])
        free = ~known.any(1)  # (B,) no bond to a placed atom
        if not self.orient or not bool(free.any()):
            return candidates
        first_bead = torch.as_tensor(np.asarray(bead) - unit_bead)
        beads = torch.as_tensor(cg_positions, dtype=torch.float32)[first_bead[:, None] + torch.arange(estimate.shape[1])]
        target = torch.einsum("ab,nbi->nai", estimate, beads)  # (B, A, 3)
        c = torch.einsum("u,nkui->nki", centre, candidates)  # (B, K, 3)
        turned = c[:, :, None] + torch.einsum("nkij,nkuj->nkui", _turn(candidates[:, :, slots] - c[:, :, None],
                                                                    target[:, None] - c[:, :, None]),
                                              candidates - c[:, :, None])
        return torch.where(free[:, None, None, None], turned, candidates)

    @staticmethod
    def _dock(candidates, slots, centre, length, known, partner) -> torch.Tensor:
        """Each candidate turned about its mapped centre so that its anchor points at its one
        placed partner, then slid along that line to the bond length; rows with no placed partner
        or more than one are left as drawn."""
        one = known.sum(1) == 1  # (B,)
        a = known.to(torch.int64).argmax(1)  # the placed partner's row in the table
        slot, b0 = slots[a], length[a]  # (B,)
        target = partner[torch.arange(len(a)), a]  # (B, 3)
        c = torch.einsum("u,nkui->nki", centre, candidates)
        anchor = candidates[torch.arange(len(a)), :, slot]  # (B, K, 3)
        rot = _turn((anchor - c)[:, :, None], (target[:, None] - c)[:, :, None])
        turned = c[:, :, None] + torch.einsum("nkij,nkuj->nkui", rot, candidates - c[:, :, None])
        line = target[:, None] - c  # the anchor now lies on it, |anchor − c| from c
        reach = line.norm(dim=-1, keepdim=True)
        along = line / reach.clamp_min(1e-6)
        slide = reach - (anchor - c).norm(dim=-1, keepdim=True) - b0[:, None, None]  # (B, K, 1)
        docked = turned + (slide * along)[:, :, None]
        return torch.where((one & torch.isfinite(b0))[:, None, None, None], docked, candidates)


def _turn(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotations (..., 3, 3) that best point the directions ``u`` (..., A, 3) along ``v`` (Kabsch
    on unit vectors), with a small pull towards no rotation: one direction turns the least."""
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    h = torch.einsum("...ai,...aj->...ij", u, v).double() + IDENTITY_PULL * torch.eye(3, dtype=torch.float64)
    left, _, right_t = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(right_t.transpose(-1, -2) @ left.transpose(-1, -2)))
    fix = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    return (right_t.transpose(-1, -2) @ fix @ left.transpose(-1, -2)).to(u.dtype)


def _bond_lengths(mt) -> dict[tuple[int, int], float]:
    """The force field's b0 (nm) of every bond of a molecule type, both ways round."""
    try:
        atoms, params = molecule_terms(mt)["bond"]
    except BackmapError as exc:
        raise BackmapError(f"dock: the bond lengths of {mt.name} are needed (a .top with parameters): {exc}") from None
    out = {}
    for (i, j), (b0, _k) in zip(atoms, params):
        out[(int(i), int(j))] = out[(int(j), int(i))] = float(b0)
    return out
