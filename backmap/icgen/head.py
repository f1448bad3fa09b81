"""The autoregressive internal-coordinate head: per atom of a unit, a mixture density over its bond
angle, a von Mises mixture over its signed dihedral and (where the bond is not rigid) a Gaussian
bond length, given the encoder's context, which reference triple the atom is built on, the
previous atom's coordinates and the environment seen from the atom's own NeRF frame."""
from __future__ import annotations

import math

import numpy as np
import torch

from backmap.devices import host_random
from backmap.training.von_mises import sample_von_mises
from backmap.icgen.encoder import mlp

N_ANGLE, N_DIHEDRAL = 1, 4  # bond angles are unimodal; a second component only drifted
N_OUT = 3 * N_ANGLE + 4 * N_DIHEDRAL + 2
LOG_2PI = math.log(2 * math.pi)
#: the bond angle's and the bond length's parametrisation, (θ, r) side by side: how far a mean
#: reaches from its reference, a log-width's offset and clamp, a width's floor, a draw's clamp
MEAN_REACH = (1.5, 0.1)
LOG_WIDTH_OFFSET = (0.0, -4.0)
LOG_WIDTH_CLAMP = ((-3.0, 2.0), (-9.0, -1.0))
WIDTH_FLOOR = (0.01, 1e-4)
DRAW_CLAMP = ((0.05, math.pi - 0.05), (0.01, math.inf))


class ICDistribution:
    """The head's output for a batch of atoms (..., N_OUT), as distributions."""

    def __init__(self, out: torch.Tensor, theta_ref: torch.Tensor, theta_std: torch.Tensor, r_ref: torch.Tensor,
                 bounded: bool = False, dihedral: bool = True, angle: bool = True):
        """``dihedral`` False: only the angle and bond length (all :meth:`sample_angle` needs);
        ``angle`` False: only the dihedral (all :meth:`sample_dihedral` needs, once θ is drawn)."""
        o = 3 * N_ANGLE
        if angle:
            self._angle(torch.cat([out[..., :o], out[..., o + 4 * N_DIHEDRAL:]], -1), theta_ref, theta_std, r_ref,
                        bounded)
        if dihedral:
            self._dihedral(out[..., o:o + 4 * N_DIHEDRAL])

    @classmethod
    def of_parts(cls, angle_out: torch.Tensor | None, dihedral_out: torch.Tensor | None, theta_ref: torch.Tensor,
                 theta_std: torch.Tensor, r_ref: torch.Tensor, bounded: bool = False) -> "ICDistribution":
        """The distribution of the head's two outputs as :meth:`Head.angle_parts` and
        :meth:`Head.dihedral_given` give them (either may be None: that part is not built)."""
        dist = cls.__new__(cls)
        if angle_out is not None:
            dist._angle(angle_out, theta_ref, theta_std, r_ref, bounded)
        if dihedral_out is not None:
            dist._dihedral(dihedral_out)
        return dist

    def _angle(self, out: torch.Tensor, theta_ref, theta_std, r_ref, bounded: bool) -> None:
        """The bond angle's and length's parameters from ``out`` (..., 3·N_ANGLE + 2)."""
        a = N_ANGLE
        self.a_logit = torch.log_softmax(out[..., :a], -1)
        self.a_mean = theta_ref[..., None] + MEAN_REACH[0] * torch.tanh(out[..., a:2 * a])  # bounded: a bad step cannot fling it
        # relative to the data's spread of that row: Adam moves a log-width by ~lr per step, so
        # starting from 1 rad it took ~1000 steps to reach the 5° of a bond angle
        self.a_sigma = theta_std[..., None] * torch.exp(out[..., 2 * a:3 * a].clamp(*LOG_WIDTH_CLAMP[0])) + WIDTH_FLOOR[0]
        if bounded:
            # mean inside (0.3, π − 0.3), σ at most a quarter of the way to the draw's clamp (0.05,
            # π − 0.05): clamped draws sit
            # where the density is far lower than their probability — an entropy that training by
            # reverse KL finds and exploits (models fitted to data keep the unbounded form, unchanged)
            self.a_mean = self.a_mean.clamp(0.3, math.pi - 0.3)
            room = torch.minimum(self.a_mean - 0.05, math.pi - 0.05 - self.a_mean) / 4
            self.a_sigma = torch.minimum(self.a_sigma, room)
        o = 3 * a
        self.r_mean = r_ref + MEAN_REACH[1] * torch.tanh(out[..., o])
        self.r_sigma = torch.exp((out[..., o + 1] + LOG_WIDTH_OFFSET[1]).clamp(*LOG_WIDTH_CLAMP[1])) + WIDTH_FLOOR[1]  # starts at 0.02 nm, inside the clamp
        if bounded:  # at most a quarter of the mean (the draw's clamp at 0.01 nm), as for angles
            self.r_sigma = torch.minimum(self.r_sigma, (self.r_mean / 4).clamp(min=1e-4))

    def _dihedral(self, out: torch.Tensor) -> None:
        d = N_DIHEDRAL
        self.d_logit = torch.log_softmax(out[..., :d], -1)
        self.d_mean = torch.atan2(out[..., 2 * d:3 * d], out[..., d:2 * d] + 1e-9)
        self.d_kappa = torch.exp((out[..., 3 * d:4 * d] + 1.5).clamp(-3.0, 6.5)) + 1e-2  # σ ≥ 2°

    def log_prob(self, r: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor):
        """Log densities of the angle, the dihedral and the bond length (each (...))."""
        za = (theta[..., None] - self.a_mean) / self.a_sigma
        lp_a = torch.logsumexp(self.a_logit - 0.5 * za * za - torch.log(self.a_sigma) - 0.5 * LOG_2PI, -1)
        k = self.d_kappa
        lp_d = torch.logsumexp(self.d_logit + k * (torch.cos(phi[..., None] - self.d_mean) - 1)
                               - torch.log(2 * math.pi * torch.special.i0e(k)), -1)
        zr = (r - self.r_mean) / self.r_sigma
        lp_r = -0.5 * zr * zr - torch.log(self.r_sigma) - 0.5 * LOG_2PI
        return lp_a, lp_d, lp_r

    def sample_angle(self, generator: torch.Generator):
        """(r, θ) drawn: the bond length and angle (they do not depend on the dihedral)."""
        shape = self.a_mean.shape[:-1]
        if N_ANGLE == 1:  # one component: nothing to choose
            mean, sig = self.a_mean[..., 0], self.a_sigma[..., 0]
        else:
            ia = _component(self.a_logit, generator)
            mean = self.a_mean.gather(-1, ia[..., None])[..., 0]
            sig = self.a_sigma.gather(-1, ia[..., None])[..., 0]
        theta = (mean + sig * host_random(torch.randn, shape, generator=generator)).clamp(*DRAW_CLAMP[0])
        r = (self.r_mean + self.r_sigma * host_random(torch.randn, shape, generator=generator)).clamp(min=DRAW_CLAMP[1][0])
        return r, theta

    def sample_dihedral(self, generator: torch.Generator, reparameterized: bool = False) -> torch.Tensor:
        """φ drawn from the von Mises mixture; ``reparameterized``: differentiable in the mixture's
        parameters by implicit reparameterization (:func:`implicit_reparameterization`)."""
        with torch.no_grad():
            idd = _component(self.d_logit, generator)
            mu = self.d_mean.gather(-1, idd[..., None])[..., 0]
            kappa = self.d_kappa.gather(-1, idd[..., None])[..., 0]
            phi = torch.remainder(mu + sample_von_mises(kappa, generator) + math.pi, 2 * math.pi) - math.pi
        if not reparameterized:
            return phi
        cdf = (self.d_logit.exp() * von_mises_cdf(phi[..., None], self.d_mean, self.d_kappa)).sum(-1)
        k = self.d_kappa
        log_p = torch.logsumexp(self.d_logit + k * (torch.cos(phi[..., None] - self.d_mean) - 1)
                                - torch.log(2 * math.pi * torch.special.i0e(k)), -1)
        return implicit_reparameterization(phi, cdf, log_p)


def _component(log_weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A mixture component per row of ``log_weights`` (..., C), by inverse CDF (one uniform per
    row; for thousands of rows several times faster than ``torch.multinomial``)."""
    cdf = log_weights.exp().cumsum(-1)
    u = host_random(torch.rand, log_weights.shape[:-1], generator=generator, dtype=cdf.dtype)[..., None] * cdf[..., -1:]
    return (cdf[..., :-1] <= u).sum(-1)


def implicit_reparameterization(sample: torch.Tensor, cdf: torch.Tensor, log_density: torch.Tensor) -> torch.Tensor:
    """``sample`` (drawn without gradients) with the gradient of implicit reparameterization
    (Figurnov et al. 2018): dx/dθ = −(∂F(x; θ)/∂θ) / p(x; θ), for any distribution whose CDF F is
    differentiable in its parameters — here von Mises mixtures, whose draws (a discrete component,
    then rejection sampling) have no explicit reparameterization. The value is ``sample``."""
    return sample - (cdf - cdf.detach()) / torch.exp(log_density.detach())


_GL_NODES, _GL_WEIGHTS = (torch.as_tensor(a, dtype=torch.float64) for a in np.polynomial.legendre.leggauss(48))


def _von_mises_from_mode(d: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """∫₀^d of the zero-mean von Mises density for d in [−π, π], by 48-point Gauss–Legendre in the
    standardized variable u = t√κ (cut at 12, where the density is < 1e-30 of its peak), so that
    sharp (κ ~ 10³) and flat components are integrated alike; differentiable in d and κ."""
    sk = torch.sqrt(kappa)
    top = (d.abs() * sk).clamp(max=12.0)
    nodes, weights = _GL_NODES.to(d.dtype), _GL_WEIGHTS.to(d.dtype)
    u = 0.5 * top[..., None] * (nodes + 1)
    f = torch.exp(kappa[..., None] * (torch.cos(u / sk[..., None]) - 1))
    integral = 0.5 * top * (f * weights).sum(-1) / sk
    return torch.sign(d) * integral / (2 * math.pi * torch.special.i0e(kappa))


def von_mises_cdf(phi: torch.Tensor, mu: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """P(Φ ≤ φ) for φ in (−π, π] of a von Mises (μ, κ), counted from the fixed origin −π (an
    origin that moved with μ would add a spurious term to the implicit gradient)."""
    def unwrapped(d):  # ∫₀^d over the whole line: +1 per full turn
        n = torch.round(d / (2 * math.pi))
        return n + _von_mises_from_mode(d - 2 * math.pi * n, kappa)

    return unwrapped(phi - mu) - unwrapped(-math.pi - mu)


class Head(torch.nn.Module):
    """(context, slot, previous ICs, frame features) → the parameters of :class:`ICDistribution`.
    The dihedral is conditioned on the atom's own bond angle (drawn first): drawn independently,
    an sp³ hydrogen's angle and dihedral scattered the angles they imply together (C–C–H ± 10°
    against 5.5° in the data)."""

    def __init__(self, n_context: int, n_slots: int, n_frame: int, hidden: int = 128):
        super().__init__()
        self.context = torch.nn.Linear(n_context, 64)
        self.slot = torch.nn.Embedding(n_slots, 32)
        self.trunk = torch.nn.Sequential(mlp(64 + 32 + 5 + n_frame, hidden, hidden), torch.nn.SiLU())
        self.angle = torch.nn.Linear(hidden, 3 * N_ANGLE + 2)
        self.dihedral = mlp(hidden + 2, hidden // 2, 4 * N_DIHEDRAL)
        with torch.no_grad():  # small but not zero: identical mixture components would stay identical
            for last in (self.angle, self.dihedral[-1]):
                last.weight.mul_(0.01)
                last.bias.zero_()

    def features(self, context: torch.Tensor, slot: torch.Tensor, previous: torch.Tensor, frame: torch.Tensor):
        return self.trunk(torch.cat([self.context(context), self.slot(slot), previous, frame], -1))

    def unit_features(self, context: torch.Tensor):
        """:meth:`features` for drawing a unit atom by atom: (slot, previous, frame) → features,
        with the trunk's first layer's share of ``context`` and of every slot computed once here
        instead of once per atom (the same numbers up to rounding)."""
        first = self.trunk[0][0]
        c, s = self.context.out_features, self.slot.embedding_dim
        fixed = torch.nn.functional.linear(self.context(context), first.weight[:, :c], first.bias)
        by_slot = self.slot.weight @ first.weight[:, c:c + s].T
        rest = first.weight[:, c + s:].contiguous()

        def features(slot: torch.Tensor, previous: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
            x = fixed + by_slot[slot] + torch.nn.functional.linear(torch.cat([previous, frame], -1), rest)
            return self.trunk[1](self.trunk[0][2](self.trunk[0][1](x)))

        return features

    def angle_parts(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``self.angle(h)`` and the dihedral MLP's first layer's share of ``h`` (bias included),
        by one product: what :meth:`dihedral_given` completes once θ is drawn."""
        first, n = self.dihedral[0], self.angle.out_features
        y = torch.nn.functional.linear(h, torch.cat([self.angle.weight, first.weight[:, :-2]]),
                                       torch.cat([self.angle.bias, first.bias]))
        return y[..., :n], y[..., n:]

    def dihedral_given(self, share: torch.Tensor, theta: torch.Tensor,
                       cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The dihedral part of :meth:`outputs` from :meth:`angle_parts`' ``share`` and the drawn θ
        (``cos_sin``: its cosine and sine, if at hand)."""
        w = self.dihedral[0].weight
        cos, sin = cos_sin if cos_sin is not None else (torch.cos(theta), torch.sin(theta))
        x = torch.addcmul(torch.addcmul(share, cos[..., None], w[:, -2]), sin[..., None], w[:, -1])
        return self.dihedral[2](self.dihedral[1](x))

    def outputs(self, h: torch.Tensor, theta: torch.Tensor | None, angle: torch.Tensor | None = None) -> torch.Tensor:
        """The parameter vector of :class:`ICDistribution`; ``theta`` None: the dihedral part
        is not yet known (zeros) — only the angle and bond length may be drawn from it.
        ``angle``: ``self.angle(h)`` if already computed."""
        a = self.angle(h) if angle is None else angle
        if theta is None:
            d = torch.zeros(*h.shape[:-1], 4 * N_DIHEDRAL, dtype=h.dtype)
        else:
            d = self.dihedral(torch.cat([h, torch.cos(theta)[..., None], torch.sin(theta)[..., None]], -1))
        return torch.cat([a[..., :3 * N_ANGLE], d, a[..., 3 * N_ANGLE:]], -1)


class AtomwiseFirstLayer:
    """The trunk's first layer for drawing a unit atom by atom (inference with slot-ordered known
    points, :meth:`InternalCoordinateGenerator._features`' layout), split by what changes when.
    Once per unit: the context's share, the near beads' types' and the external atoms'
    known-flags', and the share of the points every atom of the unit sees (encoder vectors, lab
    origin and axes, near beads, external atoms: :meth:`fixed_share`) — linear in the atom's NeRF
    frame, so per atom only its frame's nine entries and its parent's place in it are multiplied
    in, not the ~30 points. Per atom: the previous atom's ICs and the unit's atoms placed so far,
    taken coordinate-major — (rows, 3, points), turned by three broadcast multiply-adds over
    contiguous rows, 4× faster on a CPU than the point-major (points, 3)·(3, 3) batched product.
    The same numbers as :meth:`Head.features` up to rounding."""

    def __init__(self, head: Head, n_vectors: int, n_near: int, n_bead_types: int, n_unit: int, n_external: int):
        first = head.trunk[0][0]
        c, s = head.context.out_features, head.slot.embedding_dim
        w = first.weight.detach()
        self.head, self.U, self.E = head, n_unit, n_external
        self.n_fixed = n_vectors + 3 + n_near  # points seen from every atom: encoder vectors, origin, 2 lab axes, beads
        o1 = c + s + 5 + 3 * self.n_fixed
        o2 = o1 + n_near * n_bead_types
        o3 = o2 + 3 * (n_unit + n_external)
        self.w_context, self.bias = w[:, :c], first.bias.detach()
        self.by_slot = head.slot.weight.detach() @ w[:, c:c + s].T
        self.w_previous = w[:, c + s:c + s + 5]
        self.w_fixed = w[:, c + s + 5:o1].reshape(len(w), self.n_fixed, 3)
        self.w_types = w[:, o1:o2]
        self.w_seen = w[:, o2:o3].reshape(len(w), n_unit + n_external, 3)
        self.w_flags = w[:, o3:o3 + n_unit + n_external]
        self._per_atom: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._fixed_weights: torch.Tensor | None = None
        d = head.dihedral[0]
        self._n_angle = head.angle.out_features
        self._w_parts = torch.cat([head.angle.weight, d.weight[:, :-2]]).detach()
        self._b_parts = torch.cat([head.angle.bias, d.bias]).detach()

    def angle_parts(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`Head.angle_parts` with its two weights joined once."""
        y = torch.nn.functional.linear(h, self._w_parts, self._b_parts)
        return y[:, :self._n_angle], y[:, self._n_angle:]

    def unit_share(self, context: torch.Tensor, near_types: torch.Tensor, external_ok: torch.Tensor) -> torch.Tensor:
        """(rows, hidden): the parts that stay the same for every atom of a unit."""
        x = torch.nn.functional.linear(self.head.context(context), self.w_context, self.bias)
        x = torch.addmm(x, near_types.flatten(1), self.w_types.T)
        return torch.addmm(x, external_ok.to(x.dtype), self.w_flags[:, self.U:].T)

    def fixed_share(self, points: torch.Tensor, shifted: torch.Tensor) -> torch.Tensor:
        """(units, 12, hidden) for :meth:`features`: of the points every atom of a unit sees,
        ``points`` (units, 3, fixed + external) in the lab frame, hidden ones zero, and which of them
        are taken relative to the atom's parent (``shifted``, (units, fixed + external), hidden
        ones zero) — the first layer's response to each entry A_ik of an atom's frame (rows 0–8,
        i·3 + k) and, with the sign turned, to each coordinate of the frame times its parent (9–11)."""
        if self._fixed_weights is None:  # (points, 3 · hidden): the weight of point p's coordinate i on h
            w = torch.cat([self.w_fixed, self.w_seen[:, self.U:]], 1)  # (hidden, P, 3)
            self._fixed_weights = w.permute(1, 2, 0).reshape(w.shape[1], -1).contiguous()
        n, P = points.shape[0], points.shape[2]
        hidden = self._fixed_weights.shape[1] // 3
        frame = (points.reshape(n * 3, P) @ self._fixed_weights).view(n, 3, 3, hidden).transpose(1, 2)  # (n, i, k, h)
        parent = (shifted @ self._fixed_weights).view(n, 3, hidden)
        return torch.cat([frame.reshape(n, 9, hidden), parent], 1)

    def atom_weights(self, known: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """For an atom whose unit atoms ``known`` (unit slots) are placed: the weight over
        (previous ICs, the known atoms coordinate-major) and their flags' share (hidden,)."""
        if known not in self._per_atom:
            points = self.w_seen[:, list(known)]  # (hidden, known, 3)
            w = torch.cat([self.w_previous, points.transpose(1, 2).flatten(1)], 1).contiguous()
            self._per_atom[known] = (w, self.w_flags[:, list(known)].sum(1))
        return self._per_atom[known]

    def features(self, unit_share: torch.Tensor, slot: torch.Tensor, previous: torch.Tensor, points: torch.Tensor,
                 axes: torch.Tensor, known: tuple[int, ...], fixed: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
        """The trunk's output (rows, hidden) for one atom: ``points`` (rows, 3, known) the unit's
        atoms placed so far in the lab frame relative to the atom's parent, turned into its frame
        ``axes`` (rows, 3, 3); ``fixed`` the units' :meth:`fixed_share` (rows / units rows each),
        ``parent`` (rows, 3) the atom's parent in the lab frame."""
        w, flags = self.atom_weights(known)
        rows = len(axes)
        # axes @ points as three broadcast multiply-adds: MKL's batched 3×3 product fell to a
        # quarter of that speed for fewer than ~46 points
        turned = axes[:, :, 0:1] * points[:, 0:1]
        turned.addcmul_(axes[:, :, 1:2], points[:, 1:2]).addcmul_(axes[:, :, 2:3], points[:, 2:3])
        x = torch.nn.functional.linear(torch.cat([previous, turned.flatten(1)], 1), w)
        coef = torch.cat([axes.reshape(rows, 9), -(axes * parent[:, None]).sum(2)], 1)  # (rows, 12)
        units = fixed.shape[0]
        x = x + torch.bmm(coef.view(units, rows // units, 12), fixed).view(rows, -1)
        x = x + (unit_share + self.by_slot[slot] + flags)
        trunk = self.head.trunk
        return trunk[1](trunk[0][2](trunk[0][1](x)))
