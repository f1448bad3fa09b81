"""Exact von Mises draws with an explicit generator, for generators whose dihedrals are von Mises
(mixtures): ``torch.distributions.VonMises`` takes no ``torch.Generator``, so seeded proposals
could not use it."""
from __future__ import annotations

import math

import torch

from backmap.devices import host_random


#: proposals drawn per round are about this many, at most 8 per open draw: a batch of up to 2 048
#: draws (1 152 candidate atoms on sPS) is done in one round in the usual case — cheaper than the
#: second round that three proposals per draw needed (0.39 against 0.50 ms at 1 152 draws)
PROPOSALS_PER_ROUND = 16384


def sample_von_mises(kappa: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Zero-mean von Mises draws in [−π, π] of concentrations ``kappa`` (any shape; the draws take
    its dtype), by Best & Fisher's (1979) rejection. Each round proposes only for the draws still
    open, and gives each of them several independent proposals when few are open (the first
    accepted one is kept: the same law as proposing one at a time). A batch of up to a few
    thousand, which costs kernel launches rather than arithmetic, is then done in one round in the
    usual case instead of ~6 (acceptance is ≥ 0.66 per proposal)."""
    k = kappa.reshape(-1)
    tau = 1 + torch.sqrt(1 + 4 * k * k)
    rho = (tau - torch.sqrt(2 * tau)) / (2 * k)
    r = torch.where(k < 1e-5, 1 / k + k, (1 + rho * rho) / (2 * rho))  # κ → 0: the uniform limit
    out = torch.zeros_like(k)
    open_ = torch.arange(len(k))
    for _ in range(100):
        if not len(open_):
            break
        tries = max(1, min(8, PROPOSALS_PER_ROUND // len(open_)))
        u1, u2, u3 = host_random(torch.rand, (3, tries, len(open_)), generator=generator, dtype=k.dtype)
        z = torch.cos(math.pi * u1)
        f = (1 + r * z) / (r + z)
        c = k * (r - f)
        ok = (c * (2 - c) > u2) | (torch.log(c / u2) + 1 - c >= 0)  # (tries, open)
        first = (ok.cumsum(0) == 0).sum(0, keepdim=True)  # the first accepted proposal (4x faster than argmax)
        accepted = first[0] < tries
        first = first.clamp_(max=tries - 1)
        value = torch.sign(u3.gather(0, first)[0] - 0.5) * torch.acos(f.gather(0, first)[0].clamp_(-1, 1))
        if len(open_) == len(out) and bool(accepted.all()):  # the usual case: every draw in the first round
            return value.view(kappa.shape)
        out[open_[accepted]] = value[accepted]
        open_, k, r = open_[~accepted], k[~accepted], r[~accepted]
    return out.view(kappa.shape)
