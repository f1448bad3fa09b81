"""Monte Carlo decisions compiled over the force field's tables (:meth:`ForceField.kernel_tables`):
the cross energies a local move changes and a systematic scan of Metropolis tests, as the ``vae_mc``
refiner makes them (the kernels: :mod:`backmap.forcefield.placement_kernel` for the energies,
:mod:`backmap.sampling.metropolis_kernel` for the decisions)."""
from __future__ import annotations

import numpy as np
import torch

from backmap.forcefield.energy import ForceField


def cross_energies(ff: ForceField, placements: torch.Tensor, atoms: np.ndarray, others: torch.Tensor,
                   other_atoms: np.ndarray, vectors: np.ndarray | None) -> torch.Tensor:
    """(C,) non-bonded energies between each placement (C, A, 3) of ``atoms`` (A,) and the atoms
    ``other_atoms`` (P,) at ``others`` (P, 3): non-excluded pairs within the cut-off, nearest
    images (no gradient). What a Monte Carlo move of one unit changes in another's energy."""
    from backmap.forcefield.placement_kernel import cross_pair_energies

    periodic = vectors is not None
    vec = np.asarray(vectors if periodic else np.eye(3), np.float64).reshape(3, 3)
    out = np.zeros(placements.shape[0])
    tables, pair_params, exclusions = ff.kernel_tables()
    cross_pair_energies(np.ascontiguousarray(placements.detach().to(torch.float64).numpy()),
                        np.ascontiguousarray(atoms, np.int64),
                        np.ascontiguousarray(others.detach().to(torch.float64).numpy()),
                        np.ascontiguousarray(other_atoms, np.int64), vec, np.linalg.inv(vec), periodic,
                        *tables, *pair_params, *exclusions, out)
    return torch.as_tensor(out, dtype=ff.dtype)


def sequential_metropolis(ff: ForceField, states: torch.Tensor, atoms: np.ndarray, moved: np.ndarray,
                          log_ratio: torch.Tensor, log_u: torch.Tensor, beta: float,
                          vectors: np.ndarray | None) -> torch.Tensor:
    """Metropolis decisions (G,) bool of G local moves made one after the other, compiled: move
    g takes its atoms ``atoms`` (G, A) from ``states[g, 0]`` to ``states[g, 1]`` ((G, 2, A, 3)
    nm; only those ``moved`` (G, A) change), ln π′/π = ``log_ratio`` (G,) against the state
    before any move; it is accepted if ln u (``log_u``) is below that ratio corrected by −β
    times the change of its moved atoms' non-bonded energy with those of every move accepted
    before it. Exact (a systematic scan of Metropolis updates) when no two units share a
    bonded term, an excluded pair or another term of the target, and no proposal depends on
    another unit's atoms. NaN ratios are rejected."""
    from backmap.sampling.metropolis_kernel import sequential_metropolis

    periodic = vectors is not None
    vec = np.asarray(vectors if periodic else np.eye(3), np.float64).reshape(3, 3)
    accepted = np.zeros(len(states), np.bool_)
    tables, pair_params, exclusions = ff.kernel_tables()
    sequential_metropolis(np.ascontiguousarray(states.detach().to(torch.float64).numpy()),
                          np.ascontiguousarray(atoms, np.int64), np.ascontiguousarray(moved, np.bool_),
                          np.ascontiguousarray(log_ratio.detach().to(torch.float64).numpy()),
                          np.ascontiguousarray(log_u.detach().to(torch.float64).numpy()), float(beta), vec,
                          np.linalg.inv(vec), periodic, *tables, *pair_params, *exclusions, accepted)
    return torch.as_tensor(accepted)
