"""Energy minimization with the torch force field under a CG restraint — the
"energy-minimization baseline" of thesis 5.1.3 / 6.1.4 and a clash remover.

Steepest descent with an adaptive step, as GROMACS's ``steep``: move every atom along its force
by at most ``h``, grow ``h`` by 1.2 after a step that lowers the energy, shrink it by 5 and retry
after one that does not. The restraint k Σ_I |M(x)_I − R_I|² keeps the mapped structure on the CG
input. Neighbour lists are built with a skin and rebuilt when an atom has moved half of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backmap.forcefield import ForceField
from backmap.system.mapping import CGTopology
from backmap.system.pbc import box_dimensions
from backmap.devices import to_host


@dataclass
class MinimizeResult:
    positions: np.ndarray
    energy: float
    restraint: float
    max_force: float
    steps: int


def _restraint_fn(cg_topology: CGTopology, beads: np.ndarray, k: float, dtype):
    blocks = []
    for cb in cg_topology.blocks:
        w = torch.as_tensor(cb.mapping.weight_matrix, dtype=dtype)
        target = torch.as_tensor(beads[cb.first_bead:cb.first_bead + cb.n_beads], dtype=dtype).view(
            cb.block.count, cb.mapping.n_beads, 3)
        blocks.append((cb.block.atom_slice, cb.block.count, cb.block.moltype.n_atoms, w, target))

    def energy(x: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(())
        for sl, count, n, w, target in blocks:
            mapped = torch.einsum("ba,cai->cbi", w, x[sl].view(count, n, 3))
            total = total + k * ((mapped - target) ** 2).sum()
        return total

    return energy


def minimize_restrained(ff: ForceField, positions: np.ndarray, box: np.ndarray, cg_topology: CGTopology,
                        beads: np.ndarray, restraint: float = 1000.0, steps: int = 200, tolerance: float = 100.0,
                        step_size: float = 0.01, skin: float = 0.1, cutoff: float | None = None) -> MinimizeResult:
    """Minimize U(x) + k Σ|M(x) − R|² from ``positions`` (whole molecules, nm). ``beads``: the
    CG positions (whole, same periodic image as the molecules); ``box``: (3, 3) vectors.
    ``cutoff`` (nm): non-bonded terms cut off there (:meth:`ForceField.with_cutoff`), for a
    clash remover whose result is sampled from afterwards; the energy returned is then the short one."""
    if cutoff is not None:
        ff = ff.with_cutoff(cutoff)
    dims = box_dimensions(box)
    x = torch.as_tensor(ff.make_whole(positions, dims), dtype=ff.dtype)
    restrain = _restraint_fn(cg_topology, beads, restraint, ff.dtype)
    box_b = np.asarray(box)[None]
    lists, anchor = None, None

    def evaluate(y: torch.Tensor):
        nonlocal lists, anchor
        yd = to_host(y)
        if lists is None or np.abs(yd - anchor).max() > skin / 2:
            lists, anchor = [ff.pairs(yd, np.asarray(box), skin=skin)], yd.copy()
        y = y.detach().clone().requires_grad_(True)
        u = ff.energy(y[None], box_b, pair_lists=lists, whole=True).total[0]
        r = restrain(y)
        grad, = torch.autograd.grad(u + r, y)
        return float(u.detach()), float(r.detach()), -grad

    u, r, force = evaluate(x)
    h = step_size
    done = 0
    for done in range(1, steps + 1):
        fmax = float(torch.linalg.norm(force, dim=1).max())
        if fmax < tolerance:
            break
        trial = x + h * force / fmax
        u2, r2, f2 = evaluate(trial)
        if u2 + r2 < u + r:
            x, u, r, force = trial, u2, r2, f2
            h *= 1.2
        else:
            h *= 0.2
            if h < 1e-7:
                break
    return MinimizeResult(to_host(x).astype(np.float64), u, r,
                          float(torch.linalg.norm(force, dim=1).max()), done)
