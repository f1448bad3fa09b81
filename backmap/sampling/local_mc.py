"""Local Monte Carlo moves decided in turn against the current state, compiled
(:mod:`backmap.sampling.local_mc_kernel`): for samplers whose target is a force field plus
centroid restraints on beads and springs on atom pairs, and whose moves each displace a few atoms.

:class:`LocalMetropolis` builds the topology's tables once (bonded terms, exclusions, which terms
and beads each atom is in); :meth:`LocalMetropolis.scan` then decides a list of moves one after
the other, each against the state the accepted ones before it left: a systematic scan of exact
Metropolis updates, for moves whose proposals do not depend on each other's atoms."""
from __future__ import annotations

import numpy as np
import torch

from backmap.errors import BackmapError
from backmap.forcefield.energy import ForceField
from backmap.sampling.local_mc_kernel import (
    ANGLE,
    BOND,
    COULOMB14,
    IMPROPER,
    LJ14,
    MAX_MOVED,
    PROPER,
    RB,
    metropolis_scan,
)
from backmap.forcefield.neighbors import box_heights

_KINDS = {"bond": (BOND,), "urey_bradley": (BOND,), "angle": (ANGLE,), "proper": (PROPER,), "rb": (RB,),
          "improper": (IMPROPER,), "pair": (LJ14, COULOMB14)}


def _csr(items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of ``items`` (R, k) each of n atoms appears in (−1 entries skipped), as CSR."""
    items = np.asarray(items, np.int64)
    items = items.reshape(len(items), -1) if items.size else np.zeros((0, 1), np.int64)
    rows = np.repeat(np.arange(len(items)), items.shape[1])
    flat = items.ravel()
    keep = flat >= 0
    flat, rows = flat[keep], rows[keep]
    order = np.argsort(flat, kind="stable")
    ptr = np.r_[0, np.cumsum(np.bincount(flat, minlength=n))].astype(np.int64)
    return ptr, np.ascontiguousarray(rows[order], np.int64)


class LocalMetropolis:
    """The target π(x) ∝ exp(−β [U(x) + ½ k_bead Σ_I ‖Σ_a w_Ia x_a − R_I‖² + ½ k_spring Σ_p (‖r_p‖ − b_p)²])
    of ``ff``'s force field (reaction field or plain cut-off Coulomb: local), the centroid restraints
    of ``beads`` ((atoms, weights) per bead) and the springs on ``spring_pairs`` (S, 2) at
    ``spring_lengths``, for local moves (:meth:`scan`)."""

    def __init__(self, ff: ForceField, beads: list[tuple[np.ndarray, np.ndarray]], k_bead: float,
                 spring_pairs: np.ndarray, spring_lengths: np.ndarray, k_spring: float):
        if ff.settings.coulomb == "pme":
            raise BackmapError("local Monte Carlo energies need a short-ranged potential; the .mdp uses PME")
        N = ff.n_atoms
        self.ff, self.k_bead, self.k_spring = ff, float(k_bead), float(k_spring)
        kinds, atoms, params = [], [], []
        for name, terms in ff.params.bonded.items():
            if not len(terms.atoms):
                continue
            at = np.full((len(terms.atoms), 4), -1, np.int64)
            at[:, :terms.atoms.shape[1]] = terms.atoms
            par = np.zeros((len(terms.atoms), 6))
            par[:, :terms.params.shape[1]] = terms.params
            for kind in _KINDS[name]:
                kinds.append(np.full(len(at), kind, np.int64))
                atoms.append(at)
                params.append(par)
        self.term_kind = np.concatenate(kinds) if kinds else np.zeros(0, np.int64)
        self.term_atoms = np.concatenate(atoms) if atoms else np.zeros((0, 4), np.int64)
        self.term_params = np.ascontiguousarray(np.concatenate(params) if params else np.zeros((0, 6)))
        self.term_ptr, self.term_ids = _csr(self.term_atoms, N)
        sizes = [len(a) for a, _w in beads]
        self.bead_ptr = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        self.bead_atoms = np.concatenate([a for a, _w in beads]).astype(np.int64) if beads else np.zeros(0, np.int64)
        self.bead_weights = np.concatenate([w for _a, w in beads]).astype(np.float64) if beads else np.zeros(0)
        member = np.full((len(beads), max(sizes, default=0)), -1, np.int64)
        for b, (a, _w) in enumerate(beads):
            member[b, :len(a)] = a
        self.atom_bead_ptr, self.atom_beads = _csr(member, N)
        self.spring_pairs = np.ascontiguousarray(np.asarray(spring_pairs, np.int64).reshape(-1, 2))
        self.spring_lengths = np.ascontiguousarray(np.asarray(spring_lengths, np.float64).reshape(-1))
        self.atom_spring_ptr, self.atom_springs = _csr(self.spring_pairs, N)

    def scan(self, positions: torch.Tensor | np.ndarray, atoms: np.ndarray, moved: np.ndarray, new: np.ndarray,
             log_u: np.ndarray, beta: float, vectors: np.ndarray | None, walls: np.ndarray, extent: float,
             bead_targets: np.ndarray, rigid: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Decide G moves one after the other: move g takes the atoms ``atoms[g]`` (A,; −1
        padding) marked ``moved[g]`` to ``new[g]`` (A, 3, lab, nm) from ``positions`` (N, 3, every
        molecule whole) as the moves accepted before it left them, and is accepted if ln u
        (``log_u[g]``) < −``beta`` ΔE. Every atom of a row must lie within ``extent`` of its wall
        centre (``walls`` (G, A, 3)); ``bead_targets`` (n_beads, 3) are the restraints' centres R_I.
        ``rigid`` (G, A) int, optional: moved atoms of a move with one label k > 0 move as one rigid
        body (turned or translated together), so the terms among them are skipped (unchanged).
        Returns (accepted (G,), invalid (G,): NaN energies or a current state beyond the wall,
        rejected; ΔE (G,) kJ/mol of each move against the state it was proposed from (+inf beyond the
        wall); the positions after the accepted moves (a copy))."""
        ff = self.ff
        atoms = np.ascontiguousarray(atoms, np.int64)
        G = len(atoms)
        moved = np.ascontiguousarray(moved, np.bool_) & (atoms >= 0)
        if int(moved.sum(1).max(initial=0)) > MAX_MOVED:
            raise ValueError(f"a local move may move at most {MAX_MOVED} atoms")
        x = np.array(torch.as_tensor(positions).detach().to(torch.float64).numpy(), np.float64, order="C", copy=True)
        periodic = vectors is not None
        vec = np.asarray(vectors if periodic else np.eye(3), np.float64).reshape(3, 3)
        heights = box_heights(vec) if periodic else np.ones(3)
        if periodic and ff.settings.cutoff > 0.5 * heights.min():
            raise BackmapError(f"cut-off {ff.settings.cutoff} nm is more than half the box height "
                               f"({heights.min():.3f} nm)")
        tables, pair_params, exclusions = ff.kernel_tables()
        accepted = np.zeros(G, np.bool_)
        invalid = np.zeros(G, np.bool_)
        delta = np.zeros(G)
        rigid = np.zeros((G, atoms.shape[1]), np.int64) if rigid is None else np.ascontiguousarray(rigid, np.int64)
        metropolis_scan(x, atoms, moved, rigid, np.ascontiguousarray(new, np.float64),
                        np.ascontiguousarray(walls, np.float64), float(extent),
                        np.ascontiguousarray(log_u, np.float64), float(beta), vec, np.linalg.inv(vec), heights,
                        periodic, *tables, *pair_params, *exclusions, self.term_kind, self.term_atoms,
                        self.term_params, self.term_ptr, self.term_ids, pair_params[3], self.bead_ptr,
                        self.bead_atoms, self.bead_weights, np.ascontiguousarray(bead_targets, np.float64),
                        self.k_bead, self.atom_bead_ptr, self.atom_beads, self.spring_pairs, self.spring_lengths,
                        self.k_spring, self.atom_spring_ptr, self.atom_springs, accepted, invalid, delta)
        return accepted, invalid, delta, x
