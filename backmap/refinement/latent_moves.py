"""Exact Monte Carlo moves through a latent-variable model (VAE Monte Carlo; Monroe & Shen 2022,
seed ``002``, eq. 9 and appendix A).

A model with tractable densities — encoder q(z | x), prior P(z), decoder P(x | z) — proposes a
new state by x₁ → z₁ ~ q(·|x₁) → z₂ ~ P → x₂ ~ P(·|z₂). On the space of pairs (x, z) with target
π(x) q(z | x) this is an independence proposal with density P(z) P(x | z), so its importance weight

    ln w(x, z) = ln π(x) − [ln P(z) + ln P(x | z) − ln q(z | x)]      (ln π = −βU, unnormalized)

makes the Metropolis–Hastings ratio ln r = ln w(x₂, z₂) − ln w(x₁, z₁): eq. 9, exact for *any*
model, with acceptance 1 when P(x | z) P(z) = π(x) q(z | x). Drawing z₁ afresh from q(·|x₁) before
each move is a Gibbs step on the pair space, so the x-marginal of the chain is π.

Multiple-try selection (appendix A, "configurational bias"): draw M pairs, pick one with
probability ∝ w, accept with min(1, W_F / W_B), W_F = Σ forward weights and W_B the same set
with the chosen pair replaced by the current one (multiple-try Metropolis for independence
proposals: the backward trials are the forward ones, no further draws). M = 1 is eq. 9.

Everything here is in float64 log space; a NaN or infinite ratio is rejected and counted.
This module knows nothing about molecules: the ``vae_mc`` refiner supplies the densities and
energies of units in their environments, the tests supply a double well.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from backmap.devices import host_random


@dataclass
class JointLogDensity:
    """ln q(z | x), ln P(z), ln P(x | z) of pairs (x, z), each of one shape (float64)."""

    encoder: torch.Tensor
    prior: torch.Tensor
    decoder: torch.Tensor

    @property
    def model(self) -> torch.Tensor:
        """ln P̃(x) = ln P(x | z) + ln P(z) − ln q(z | x): the model's estimate of its own density
        at x (eq. 17), the proposal density of the pair move."""
        return (self.decoder.double() + self.prior.double()) - self.encoder.double()


class LatentModel(Protocol):
    """What a latent-variable model offers the moves, for a batch of B independent systems (units
    in their environments, or toy models). ``x``: (B, …) states; ``z``: (B, …) latents; M: trials."""

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """z ~ q(z | x)."""

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n pairs per system: z ~ P(z), x ~ P(x | z) → x (B, n, …), z (B, n, …)."""

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> JointLogDensity:
        """The three log densities of pairs (B, n, …) → each (B, n)."""


class IndependentChains:
    """A latent-variable model of one system whose ``generate(n, generator, batch=B)`` draws for B
    copies, driving B independent chains: the :class:`LatentModel` that :func:`vae_move` takes."""

    def __init__(self, model, chains: int):
        self.model, self.chains = model, chains

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.model.encode(x, generator)

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.generate(n, generator, batch=self.chains)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> JointLogDensity:
        return self.model.log_joint(x, z)


def log_weight(log_target: torch.Tensor, joint: JointLogDensity) -> torch.Tensor:
    """ln w = ln π(x) − ln P̃(x) (float64)."""
    return log_target.double() - joint.model


@dataclass
class MoveResult:
    """One move of B systems: the chosen proposal, whether it was accepted, whether its ratio was
    NaN/inf (rejected), the log acceptance ratio and the index of the chosen trial."""

    x: torch.Tensor
    accepted: torch.Tensor
    invalid: torch.Tensor
    log_ratio: torch.Tensor
    choice: torch.Tensor


def metropolis(log_ratio: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted, invalid) for log ratios (B,): accept with min(1, r). NaN is invalid: rejected
    and counted. +inf (leaving a state of zero target probability, e.g. a start outside a hard
    wall, for a valid proposal) is accepted, −inf (a proposal of zero probability) rejected."""
    return accept_with(log_ratio, torch.log(host_random(torch.rand, log_ratio.shape, generator=generator,
                                                        dtype=torch.float64)))


def accept_with(log_ratio: torch.Tensor, log_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`metropolis` with its ln u (uniform draws, same shape) given."""
    log_ratio = log_ratio.double()
    invalid = torch.isnan(log_ratio)
    return (log_u < log_ratio) & ~invalid, invalid


def select(log_w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Index (B,) of one trial per row of ``log_w`` (B, M) drawn with probability ∝ w (Gumbel
    max); rows whose weights are all NaN/−inf pick trial 0 (then rejected as invalid)."""
    return select_with(log_w, gumbel_noise(log_w.shape, generator))


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel draws (float64): the randomness of :func:`select`, drawn ahead of use."""
    return -torch.log(-torch.log(host_random(torch.rand, shape, generator=generator,
                                             dtype=torch.float64).clamp(min=1e-300)))


def select_with(log_w: torch.Tensor, gumbel: torch.Tensor) -> torch.Tensor:
    """:func:`select` with its Gumbel draws ``gumbel`` (same shape as ``log_w``) given."""
    score = torch.where(torch.isnan(log_w), torch.full_like(log_w, -torch.inf), log_w) + gumbel
    return score.argmax(-1)


def multiple_try_log_ratio(log_w_trials: torch.Tensor, log_w_current: torch.Tensor, choice: torch.Tensor
                           ) -> torch.Tensor:
    """ln(W_F / W_B) for trial weights (B, M), the current state's (B,) and the chosen trials (B,)."""
    forward = torch.logsumexp(log_w_trials, -1)
    others = log_w_trials.scatter(1, choice[:, None], log_w_current[:, None])  # chosen replaced by current
    backward = torch.logsumexp(others, -1)
    ratio = forward - backward
    # a NaN or +inf weight (a density that is NaN or zero where the model drew) anywhere invalidates
    # the move (logsumexp would hide a NaN trial); −inf weights (zero target probability) are valid
    bad = (torch.isnan(log_w_trials) | torch.isposinf(log_w_trials)).any(-1) | torch.isnan(log_w_current) \
        | torch.isposinf(log_w_current)
    return torch.where(bad, torch.full_like(ratio, torch.nan), ratio)


def vae_move(model: LatentModel, x: torch.Tensor, log_target: Callable[[torch.Tensor], torch.Tensor],
             generator: torch.Generator, trials: int = 1) -> MoveResult:
    """One VAE Monte Carlo move of every system of the batch from states ``x`` (B, …);
    ``log_target`` maps states (B, n, …) to ln π (B, n) (−βU, unnormalized)."""
    x2, target, joint = _current_and_trials(model, x, log_target, generator, trials)
    log_w = log_weight(target, joint)
    log_w1, log_w2 = log_w[:, 0], log_w[:, 1:]
    choice = select(log_w2, generator) if trials > 1 else torch.zeros(len(x), dtype=torch.long)
    ratio = multiple_try_log_ratio(log_w2, log_w1, choice)
    accepted, invalid = metropolis(ratio, generator)
    chosen = x2[torch.arange(len(x)), choice]
    new = torch.where(accepted.view(-1, *[1] * (x.ndim - 1)), chosen.to(x.dtype), x)
    return MoveResult(new, accepted, invalid, ratio, choice)


Coupling = Callable[[int, dict[int, tuple[torch.Tensor, torch.Tensor]], torch.Tensor], torch.Tensor]


def vae_move_sequential(model: LatentModel, x: torch.Tensor, log_target: Callable[[torch.Tensor], torch.Tensor],
                        coupling: Coupling, generator: torch.Generator, trials: int = 1,
                        near: np.ndarray | None = None) -> MoveResult:
    """One VAE Monte Carlo move of each of B systems that propose independently but may interact.

    The proposals (encoder, prior, decoder draws and their densities) and ``log_target`` are
    computed for all B at once, against the state before the move; then the moves are decided by
    :func:`decide_sequentially` (``near``: which systems may interact, see there)."""
    x2, target, joint = _current_and_trials(model, x, log_target, generator, trials)
    density = joint.model
    return decide_sequentially(x, target[:, 0], density[:, 0], x2, target[:, 1:], density[:, 1:], coupling,
                               generator, near)


def _current_and_trials(model: LatentModel, x: torch.Tensor, log_target: Callable[[torch.Tensor], torch.Tensor],
                        generator: torch.Generator, trials: int
                        ) -> tuple[torch.Tensor, torch.Tensor, JointLogDensity]:
    """z₁ ~ q(z | x), M trial pairs (x₂, z₂) from the model; the trials x₂, and ln π and the three
    densities of the current pair and the trials together — (B, 1 + M), the current one first: one call of
    the target and of the networks for both (their per-call cost is most of a move's)."""
    z1 = model.encode(x, generator)
    x2, z2 = model.generate(trials, generator)
    precise = torch.promote_types(x.dtype, x2.dtype)  # the current state as it is (float64 for units)
    xs = torch.cat([x[:, None].to(precise), x2.to(precise)], 1)
    zs = torch.cat([z1[:, None].to(z2.dtype), z2], 1)
    return x2, log_target(xs), model.log_joint(xs, zs)


def decide_sequentially(x: torch.Tensor, target1: torch.Tensor, model1: torch.Tensor, x2: torch.Tensor,
                        target2: torch.Tensor, model2: torch.Tensor, coupling: Coupling,
                        generator: torch.Generator, near: np.ndarray | None = None) -> MoveResult:
    """Decide the (multiple-try) moves of B systems one after the other, from their states ``x``
    (B, …) with ln π ``target1`` and proposal density ``model1`` (B,) to trials ``x2`` (B, M, …)
    with ``target2`` and ``model2`` (B, M), all computed against the state before the move.

    System k sees the moves of systems < k that were accepted: ``coupling(k, moved, states)``
    returns the change of ln π_k of k's ``states`` (n, …) when the systems in ``moved`` ({j: (old
    state, new state)}) are at their new states instead of the old. Each decision is then an exact
    (multiple-try) Metropolis–Hastings update of k given the current state, and a sweep over k is
    a systematic scan: exact, provided no system's proposal depends on another's state (the
    caller's guarantee: none sees another). ``model`` is ln P̃, the proposal density (a block of
    units drawn one after the other: the sum of theirs).

    ``near`` (B, B) bool, optional: ``near[k, j]`` False is the caller's promise that j's move
    never changes ln π_k (its coupling would be zero); ``moved`` then holds only k's near systems.
    The random draws (a Gumbel row per system when M > 1, a uniform per system) are made up front,
    so every system is first decided at once as if none before it had moved, and only those with an
    accepted near predecessor are decided again, one after the other, with their coupling: the same
    decisions as one at a time, without a Python step per system."""
    B, trials = len(x), x2.shape[1]
    log_w1 = target1.double() - model1.double()
    log_w2 = target2.double() - model2.double()
    gumbel = gumbel_noise((B, trials), generator) if trials > 1 else None
    log_u = torch.log(host_random(torch.rand, B, generator=generator, dtype=torch.float64))

    def decide(w1: torch.Tensor, w2: torch.Tensor, rows: slice):
        c = select_with(w2, gumbel[rows]) if trials > 1 else torch.zeros(len(w1), dtype=torch.long)
        r = multiple_try_log_ratio(w2, w1, c)
        return *accept_with(r, log_u[rows]), r, c

    accepted, invalid, ratio, choice = decide(log_w1, log_w2, slice(None))
    acc, pick = accepted.numpy(), choice.numpy()  # views: the corrections below land in both
    near = None if near is None else np.asarray(near, bool)
    moved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for k in range(B):
        before = list(moved) if near is None else np.flatnonzero(near[k, :k] & acc[:k]).tolist()
        if before:
            delta = coupling(k, {j: moved[j] for j in before}, torch.cat([x[k:k + 1], x2[k]])).double()
            rows = slice(k, k + 1)
            a, bad, r, c = decide(log_w1[rows] + delta[:1], log_w2[rows] + delta[1:][None], rows)
            accepted[k], invalid[k], ratio[k], choice[k] = a[0], bad[0], r[0], c[0]
        if acc[k]:
            moved[k] = (x[k], x2[k, int(pick[k])].to(x.dtype))
    new = x.clone()
    if acc.any():
        rows = torch.as_tensor(np.flatnonzero(acc))
        new[rows] = x2[rows, choice[rows]].to(x.dtype)
    return MoveResult(new, accepted, invalid, ratio, choice)
