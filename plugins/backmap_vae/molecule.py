"""A whole-molecule VAE in bond-angle-torsion (BAT) coordinates for exact VAE Monte Carlo
(Monroe & Shen 2022, seed ``002``: their dialanine study; docs/vae-dipeptide.md).

States are vectors ``q`` (…, D) of the molecule's free internal coordinates — rigid translation
and rotation removed, constrained (hydrogen) bonds held at the topology's b0 and dropped from the
degrees of freedom — in the order torsions, angles, free bond lengths (:class:`ZMatrix`). The
density of Cartesian configurations x (modulo rigid motion) is p(q) / J(q), J the BAT Jacobian,
so the Monte Carlo target in q is

    ln π(q) = −β U(x(q)) + ln J(q)                                     (:class:`MoleculeTarget`)

and :func:`backmap.refinement.latent_moves.vae_move` applies unchanged (eq. 9): encoder
q(z | q), prior N(0, I), decoder P(q | z) are :class:`MoleculeVAE`'s exact densities.

The decoder is autoregressive over the D coordinates (a MADE-style masked network conditioned on
z, plus a z-only base network, as the paper's "masked network with skip connections"): each
torsion a mixture of von Mises distributions, each bond length or angle a Gaussian. Sampling is
sequential, but each hidden unit is computed once (a unit of degree d only depends on the first d
coordinates), so one draw costs one network pass; training and density evaluation are one
teacher-forced pass.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from backmap.api.io import host_random
from backmap.api.refinement import IndependentChains, JointLogDensity
from backmap.api.training import sample_von_mises

LOG_2PI = math.log(2 * math.pi)
TWO_PI = 2 * math.pi


def wrap(a: torch.Tensor) -> torch.Tensor:
    """Angles to [−π, π)."""
    return torch.remainder(a + math.pi, TWO_PI) - math.pi


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def bond_angle(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Angle a-b-c (radians) of points (…, 3)."""
    u, v = a - b, c - b
    return torch.atan2(torch.linalg.vector_norm(torch.linalg.cross(u, v), dim=-1), (u * v).sum(-1))


def dihedral(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor) -> torch.Tensor:
    """Dihedral angle p0-p1-p2-p3 (radians, IUPAC sign) of points (…, 3)."""
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1n = _unit(b1)
    v = b0 - (b0 * b1n).sum(-1, keepdim=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdim=True) * b1n
    return torch.atan2((torch.linalg.cross(b1n, v) * w).sum(-1), (v * w).sum(-1))


# ------------------------------------------------------------------------------------ Z-matrix
@dataclass(frozen=True)
class ZMatrix:
    """A spanning-tree Z-matrix of one molecule. Placement position k places topology atom
    ``order[k]`` from the already placed ``refs[k]`` = (parent, grandparent, great-grandparent)
    (placement positions, −1 = none): bond r_k to the parent (k ≥ 1), angle θ_k = (k, parent,
    grandparent) (k ≥ 2), torsion φ_k = (k, parent, grandparent, great-grandparent) (k ≥ 3).
    Frame: atom 0 at the origin, atom 1 on +z, atom 2 in the xz plane (x > 0).

    ``rigid[k]``: the bond of k to its parent is constrained (held at ``b0[k]``, nm, not a degree
    of freedom). ``primary[k]``: the first atom placed about the same axis (parent, grandparent);
    torsions of the others are stored as phases φ_k − φ_primary (MDAnalysis BAT's convention; a
    shear of unit Jacobian), which makes e.g. a methyl group's second and third hydrogens nearly
    fixed offsets of its first.

    The free coordinates ``q`` (…, D): torsions/phases of k = 3…N−1, angles of k = 2…N−1, free
    bond lengths (k ≥ 1, not rigid), in placement order within each group."""

    order: np.ndarray
    refs: np.ndarray
    rigid: np.ndarray
    b0: np.ndarray
    primary: np.ndarray
    names: tuple[str, ...] = field(default=())

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_topology(cls, moltype, root: Sequence[int] | None = None, constrained: str = "h-bonds",
                      b0: dict[tuple[int, int], float] | None = None) -> "ZMatrix":
        """From a :class:`backmap.system.topology.MoleculeType`'s bond graph (a tree or not: BFS
        spanning tree). ``root``: three topology atoms (a, b, c) with b and c bonded to a, or
        None: a = the centre of the heavy-atom graph, b and c its two heavy neighbours heading
        the largest branches. Children are placed heavy atoms first, larger branches first.
        ``constrained``: "h-bonds" (bonds with a hydrogen rigid) or "none". ``b0``: bond lengths
        (nm) by sorted atom pair; default: the topology's bond parameters."""
        import networkx as nx

        g = moltype.graph
        n = moltype.n_atoms
        if n < 3 or not nx.is_connected(g):
            raise ValueError("a Z-matrix needs one connected molecule of at least 3 atoms")
        heavy = [i for i in range(n) if str(moltype.elements[i]) != "H"]
        if b0 is None:
            from backmap.api.forcefield import molecule_terms

            atoms, params = molecule_terms(moltype)["bond"]
            b0 = {tuple(sorted(a)): float(p[0]) for a, p in zip(atoms, params)}

        def branch(child: int, parent: int) -> int:  # atoms on child's side of the bond
            h = g.copy()
            h.remove_edge(parent, child)
            return len(nx.node_connected_component(h, child)) if not nx.has_path(h, parent, child) else n

        def key(child: int, parent: int):
            return (str(moltype.elements[child]) == "H", -branch(child, parent), child)

        if root is None:
            hg = g.subgraph(heavy)
            centre = nx.center(hg) if len(heavy) >= 3 and nx.is_connected(hg) else nx.center(g)
            a = min(centre, key=lambda i: (-g.degree(i), i))
            kids = sorted(g.neighbors(a), key=lambda c: key(c, a))
            if len(kids) >= 2:
                root = (a, kids[0], kids[1])
            else:  # a chain end: b bonded to a, c bonded to b
                b = kids[0]
                root = (a, b, sorted((c for c in g.neighbors(b) if c != a), key=lambda c: key(c, b))[0])
        a, b, c = (int(i) for i in root)
        if not g.has_edge(a, b) or not (g.has_edge(a, c) or g.has_edge(b, c)):
            raise ValueError(f"root {root}: b must be bonded to a, c to a or b")
        pos = {a: 0, b: 1, c: 2}
        parent_of = {a: -1, b: 0, c: 0 if g.has_edge(a, c) else 1}
        order = [a, b, c]
        queue = deque([a, b, c])
        while queue:
            p = queue.popleft()
            for ch in sorted((x for x in g.neighbors(p) if x not in pos), key=lambda x: key(x, p)):
                pos[ch] = len(order)
                parent_of[ch] = pos[p]
                order.append(ch)
                queue.append(ch)
        par = np.array([parent_of[i] for i in order])
        refs = np.full((n, 3), -1)
        for k in range(1, n):
            refs[k, 0] = par[k]
        refs[2, 1] = 1 if par[2] == 0 else 0
        for k in range(3, n):
            p = par[k]
            if p == 0:  # about the root's first bond
                gp, ggp = 1, 2
            else:
                gp = par[p]
                ggp = par[gp] if gp != 0 else (1 if p != 1 else 2)
            refs[k, 1], refs[k, 2] = gp, ggp
        for k in range(3, n):
            if len({k, *refs[k]}) != 4 or (refs[k] >= k).any():
                raise ValueError(f"bad Z-matrix references for placement {k}: {refs[k]}")
        elements = [str(e) for e in moltype.elements]
        rigid = np.zeros(n, bool)
        lengths = np.zeros(n)
        for k in range(1, n):
            i, j = order[k], order[par[k]]
            lengths[k] = b0.get(tuple(sorted((i, j))), np.nan)
            rigid[k] = constrained == "h-bonds" and "H" in (elements[i], elements[j])
            if rigid[k] and not np.isfinite(lengths[k]):
                raise ValueError(f"constrained bond {i}-{j} has no b0")
        primary = np.full(n, -1)
        first: dict[tuple[int, int], int] = {}
        for k in range(3, n):
            primary[k] = first.setdefault((int(refs[k, 0]), int(refs[k, 1])), k)
        names = tuple(moltype.label(i) for i in range(n)) if hasattr(moltype, "label") else ()
        return cls(np.array(order), refs, rigid, lengths, primary, names)

    # ----------------------------------------------------------------- bookkeeping
    @property
    def n_atoms(self) -> int:
        return len(self.order)

    @property
    def free_bonds(self) -> np.ndarray:
        """Placement positions whose bond length is a degree of freedom."""
        return np.array([k for k in range(1, self.n_atoms) if not self.rigid[k]], int)

    @property
    def n_torsions(self) -> int:
        return self.n_atoms - 3

    @property
    def n_dof(self) -> int:
        return self.n_torsions + (self.n_atoms - 2) + len(self.free_bonds)

    @property
    def circular(self) -> np.ndarray:
        """(D,) True for torsions and phases."""
        out = np.zeros(self.n_dof, bool)
        out[:self.n_torsions] = True
        return out

    def labels(self) -> list[str]:
        """A name for each coordinate of q."""
        nm = (lambda k: self.names[self.order[k]]) if self.names else (lambda k: str(self.order[k]))
        out = [f"torsion {nm(k)}" + ("" if self.primary[k] == k else f" - torsion {nm(self.primary[k])}")
               for k in range(3, self.n_atoms)]
        out += [f"angle {nm(k)}-{nm(self.refs[k, 0])}-{nm(self.refs[k, 1])}" for k in range(2, self.n_atoms)]
        out += [f"bond {nm(k)}-{nm(self.refs[k, 0])}" for k in self.free_bonds]
        return out

    # ----------------------------------------------------------------- Cartesian ↔ internal
    def to_internal(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cartesian (…, N, 3), topology order → (r, θ, φ), each (…, N) in placement order
        (entries that do not exist are 0: r₀, θ₀, θ₁, φ₀…φ₂). Raw torsions, all bond lengths."""
        x = torch.as_tensor(x)
        xp = x[..., torch.as_tensor(self.order), :]
        n = self.n_atoms
        ref = torch.as_tensor(self.refs)
        zero = torch.zeros(xp.shape[:-2] + (1,), dtype=xp.dtype)
        k1 = torch.arange(1, n)
        r = torch.cat([zero, torch.linalg.vector_norm(xp[..., k1, :] - xp[..., ref[1:, 0], :], dim=-1)], -1)
        k2 = torch.arange(2, n)
        th = torch.cat([zero, zero, bond_angle(xp[..., k2, :], xp[..., ref[2:, 0], :], xp[..., ref[2:, 1], :])], -1)
        k3 = torch.arange(3, n)
        ph = torch.cat([zero, zero, zero, dihedral(xp[..., k3, :], xp[..., ref[3:, 0], :], xp[..., ref[3:, 1], :],
                                                   xp[..., ref[3:, 2], :])], -1)
        return r, th, ph

    def to_cartesian(self, r: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """(r, θ, φ) (…, N) in placement order → Cartesian (…, N, 3) in topology order, in the
        Z-matrix frame (NeRF; the exact inverse of :meth:`to_internal` up to rigid motion)."""
        shape = r.shape[:-1]
        dt = r.dtype
        ez = torch.tensor([0.0, 0.0, 1.0], dtype=dt).expand(shape + (3,))
        ex = torch.tensor([1.0, 0.0, 0.0], dtype=dt).expand(shape + (3,))
        pts = [torch.zeros(shape + (3,), dtype=dt), r[..., 1, None] * ez]
        p, o = self.refs[2, 0], self.refs[2, 1]
        u = _unit(pts[o] - pts[p])
        pts.append(pts[p] + r[..., 2, None] * (torch.cos(theta[..., 2, None]) * u + torch.sin(theta[..., 2, None]) * ex))
        for k in range(3, self.n_atoms):
            c, b, a = (pts[j] for j in self.refs[k])
            bc = _unit(c - b)
            # n ⟂ plane (a, b, c); m completes the frame
            nrm = _unit(torch.linalg.cross(b - a, bc))
            m = torch.linalg.cross(nrm, bc)
            rk, tk, pk = r[..., k, None], theta[..., k, None], phi[..., k, None]
            pts.append(c - rk * torch.cos(tk) * bc + rk * torch.sin(tk) * (torch.cos(pk) * m + torch.sin(pk) * nrm))
        xp = torch.stack(pts, -2)
        inv = torch.as_tensor(np.argsort(self.order))
        return xp[..., inv, :]

    def log_jacobian(self, r: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """ln J = Σ_{k≥1} 2 ln r_k + Σ_{k≥2} ln sin θ_k (…,): dx = J dq dΩ dt for the Cartesian
        volume element (Ω the orientation, t the translation of atom 0). Rigid bonds enter at
        their fixed length (a constant). −inf outside the domain (r ≤ 0 or θ ∉ (0, π))."""
        rr, st = r[..., 1:], torch.sin(theta[..., 2:])
        ok = (rr > 0).all(-1) & (st > 0).all(-1) & (theta[..., 2:] < math.pi).all(-1)
        val = 2 * torch.log(rr.abs()).sum(-1) + torch.log(st.abs()).sum(-1)
        return torch.where(ok, val, torch.full_like(val, -math.inf))

    # ----------------------------------------------------------------- q (free coordinates)
    def pack(self, r: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """(r, θ, φ) → q (…, D): phases for non-primary torsions; rigid bond lengths dropped."""
        k3 = torch.arange(3, self.n_atoms)
        prim = torch.as_tensor(self.primary[3:])
        tors = torch.where(prim == k3, phi[..., k3], wrap(phi[..., k3] - phi[..., prim]))
        return torch.cat([tors, theta[..., 2:], r[..., torch.as_tensor(self.free_bonds)]], -1)

    def unpack(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (…, D) → (r, θ, φ) with rigid bonds at b0 and torsions wrapped to [−π, π)."""
        n, nt = self.n_atoms, self.n_torsions
        shape, dt = q.shape[:-1], q.dtype
        tors = q[..., :nt]
        prim = torch.as_tensor(self.primary[3:]) - 3
        raw = torch.where(prim == torch.arange(nt), wrap(tors), wrap(tors + tors[..., prim]))
        phi = torch.cat([torch.zeros(shape + (3,), dtype=dt), raw], -1)
        theta = torch.cat([torch.zeros(shape + (2,), dtype=dt), q[..., nt:nt + n - 2]], -1)
        r = torch.as_tensor(np.where(self.rigid, self.b0, 0.0), dtype=dt).expand(shape + (n,)).clone()
        r[..., torch.as_tensor(self.free_bonds)] = q[..., nt + n - 2:]
        return r, theta, phi

    def q_from_x(self, x: torch.Tensor) -> torch.Tensor:
        return self.pack(*self.to_internal(x))

    def x_from_q(self, q: torch.Tensor) -> torch.Tensor:
        return self.to_cartesian(*self.unpack(q))

    def log_jacobian_q(self, q: torch.Tensor) -> torch.Tensor:
        r, theta, _ = self.unpack(q)
        return self.log_jacobian(r, theta)


class MoleculeTarget:
    """ln π(q) = −β U(x(q)) + ln J(q) for states q (…, D); ``energy`` maps Cartesian (M, N, 3)
    nm (float64) to potential energies (M,) kJ/mol.

    ``memory``: remember the values of the last two calls by exact state. ``vae_move`` evaluates
    the current states, then the proposals; the next move's current states are among those two
    sets, so only the proposals cost energies — half the work of a chain of moves."""

    def __init__(self, zmatrix: ZMatrix, energy: Callable[[torch.Tensor], torch.Tensor], beta: float,
                 memory: bool = False):
        self.zmatrix, self.energy, self.beta, self.memory = zmatrix, energy, float(beta), memory
        self._recent: list[dict[bytes, float]] = []
        self.evaluations = 0

    def evaluate(self, q: torch.Tensor) -> torch.Tensor:
        """ln π of states (M, D), always computed."""
        r, theta, phi = self.zmatrix.unpack(q.double())
        u = self.energy(self.zmatrix.to_cartesian(r, theta, phi)).double()
        self.evaluations += len(q)
        return -self.beta * u + self.zmatrix.log_jacobian(r, theta)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        flat = q.reshape(-1, q.shape[-1]).double()
        if not self.memory:
            return self.evaluate(flat).reshape(q.shape[:-1])
        rows = flat.numpy()
        keys = [row.tobytes() for row in rows]
        known = {k: v for d in self._recent for k, v in d.items()}
        missing = [i for i, k in enumerate(keys) if k not in known]
        if missing:
            for i, v in zip(missing, self.evaluate(flat[missing]).tolist()):
                known[keys[i]] = v
        out = torch.tensor([known[k] for k in keys], dtype=torch.float64)
        self._recent = (self._recent + [dict(zip(keys, out.tolist()))])[-2:]
        return out.reshape(q.shape[:-1])


# ------------------------------------------------------------------------------------- the VAE
def von_mises_sample(loc: torch.Tensor, kappa: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Exact von Mises draws about ``loc`` (float64) with an explicit generator, in [−π, π)."""
    return wrap(loc.double() + sample_von_mises(kappa.double(), generator))


class _MaskedLinear(torch.nn.Linear):
    def __init__(self, n_in: int, n_out: int, mask: torch.Tensor, bias: bool = True):
        super().__init__(n_in, n_out, bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight * self.mask, self.bias)


def _mlp(n_in: int, hidden: int, n_out: int, act=torch.nn.SiLU) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), act(), torch.nn.Linear(hidden, hidden), act(),
                               torch.nn.Linear(hidden, n_out))


class MoleculeVAE(torch.nn.Module):
    """VAE over a molecule's free internal coordinates q (…, D) of a :class:`ZMatrix`: encoder
    q(z | q) (MLP on standardized bonds/angles and sin/cos of torsions → diagonal Gaussian),
    prior N(0, I), autoregressive decoder P(q | z) = Π_i P(q_i | z, q_<i) — von Mises mixtures
    (``components``) for torsions, Gaussians for angles and bond lengths. ``skip``: the masked
    linear map from q_<i straight to the outputs (off: only the two masked hidden layers and the
    z-only base network see q_<i — the ablation of docs/vae-dipeptide.md)."""

    def __init__(self, zmatrix: ZMatrix, latent: int = 1, hidden: int = 256, components: int = 4, skip: bool = True):
        super().__init__()
        self.zmatrix, self.latent, self.hidden, self.components = zmatrix, latent, hidden, components
        circ = torch.as_tensor(zmatrix.circular)
        D = len(circ)
        self.n_dof, self.n_circ = D, int(circ.sum())
        if not bool(circ[:self.n_circ].all()):
            raise ValueError("torsions must come first in q")
        nc, ng, K = self.n_circ, D - self.n_circ, components
        dof = torch.arange(D)
        # features: sin, cos of each torsion; standardized value of each other coordinate
        self.register_buffer("feat_dof", torch.cat([dof[:nc], dof[:nc], dof[nc:]]))
        # outputs: 4K per torsion (logits, sin/cos of the means, ln κ), 2 per other (mean, ln σ)
        self.register_buffer("out_dof", torch.cat([dof[:nc].repeat_interleave(4 * K), dof[nc:].repeat_interleave(2)]))
        self.n_feat, self.n_out = len(self.feat_dof), len(self.out_dof)
        deg_h = torch.arange(hidden) % max(D - 1, 1) + 1  # hidden unit of degree d sees coordinates < d
        self.register_buffer("deg_h", deg_h)
        deg_f = self.feat_dof + 1
        self.h1 = _MaskedLinear(self.n_feat, hidden, deg_f[None, :] <= deg_h[:, None])
        self.z1 = torch.nn.Linear(latent, hidden, bias=False)
        self.h2 = _MaskedLinear(hidden, hidden, deg_h[None, :] <= deg_h[:, None])
        self.out = _MaskedLinear(hidden, self.n_out, deg_h[None, :] <= self.out_dof[:, None])
        self.skip = _MaskedLinear(self.n_feat, self.n_out, (deg_f[None, :] <= self.out_dof[:, None]) & skip, bias=False)
        self.base = _mlp(latent, hidden, self.n_out, torch.nn.Tanh)
        self.encoder = _mlp(self.n_feat, hidden, 2 * latent, torch.nn.ReLU)
        self.act = torch.nn.SiLU()
        # standardization of the non-circular coordinates (set by fit / set_scale)
        self.register_buffer("loc", torch.zeros(ng))
        self.register_buffer("scale", torch.ones(ng))
        self.double()

    # ----------------------------------------------------------------- pieces
    def set_scale(self, q: torch.Tensor) -> None:
        """Standardize bonds and angles by their mean and standard deviation over ``q`` (n, D)."""
        g = torch.as_tensor(q)[:, self.n_circ:]
        self.loc.copy_(g.mean(0))
        self.scale.copy_(g.std(0).clamp(min=1e-6))

    def features(self, q: torch.Tensor) -> torch.Tensor:
        t, g = q[..., :self.n_circ], q[..., self.n_circ:]
        return torch.cat([torch.sin(t), torch.cos(t), (g - self.loc) / self.scale], -1)

    def _posterior(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.encoder(feats).chunk(2, -1)
        return mean, log_std.clamp(-8.0, 2.0)

    def _params(self, feats: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """All decoder outputs (…, n_out), teacher-forced."""
        h = self.act(self.h1(feats) + self.z1(z))
        h = self.act(self.h2(h))
        return self.out(h) + self.skip(feats) + self.base(z)

    def _split(self, out: torch.Tensor):
        K, nc = self.components, self.n_circ
        c = out[..., :nc * 4 * K].unflatten(-1, (nc, 4, K))
        g = out[..., nc * 4 * K:].unflatten(-1, (-1, 2))
        logits = torch.log_softmax(c[..., 0, :], -1)
        mu = torch.atan2(c[..., 1, :], c[..., 2, :])
        kappa = torch.exp(c[..., 3, :].clamp(-5.0, 9.5))
        return logits, mu, kappa, g[..., 0], g[..., 1].clamp(-9.0, 3.0)

    @staticmethod
    def _vm_log_prob(t, logits, mu, kappa):
        """ln Σ_k w_k VM(t; μ_k, κ_k) per torsion; t (…, n), the rest (…, n, K)."""
        lp = kappa * (torch.cos(t[..., None] - mu) - 1) - LOG_2PI - torch.log(torch.special.i0e(kappa))
        return torch.logsumexp(logits + lp, -1)

    def _gauss_log_prob(self, y, mean, log_std):
        e = (y - mean) * torch.exp(-log_std)
        return -0.5 * e * e - log_std - 0.5 * LOG_2PI - torch.log(self.scale)

    def decoder_log_prob(self, q: torch.Tensor, z: torch.Tensor, per_dof: bool = False) -> torch.Tensor:
        """ln P(q | z) (…,) (or per coordinate (…, D)), in q's units (nm, rad)."""
        feats = self.features(q)
        logits, mu, kappa, mean, log_std = self._split(self._params(feats, z))
        lp = torch.cat([self._vm_log_prob(q[..., :self.n_circ], logits, mu, kappa),
                        self._gauss_log_prob(feats[..., 2 * self.n_circ:], mean, log_std)], -1)
        return lp if per_dof else lp.sum(-1)

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, z: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """q ~ P(q | z) for latents z (M, L), coordinate by coordinate; also ln P(q | z) as
        accumulated while drawing (M,) (a check on :meth:`decoder_log_prob`)."""
        M, dt = z.shape[0], z.dtype
        K, nc, D = self.components, self.n_circ, self.n_dof
        feats = torch.zeros(M, self.n_feat, dtype=dt)
        h1 = torch.zeros(M, self.hidden, dtype=dt)
        h2 = torch.zeros(M, self.hidden, dtype=dt)
        q = torch.zeros(M, D, dtype=dt)
        logp = torch.zeros(M, dtype=dt)
        zh = self.z1(z)
        base = self.base(z)
        w1, w2 = self.h1.weight * self.h1.mask, self.h2.weight * self.h2.mask
        wo, ws = self.out.weight * self.out.mask, self.skip.weight * self.skip.mask
        col = 0
        for i in range(D):
            units = torch.nonzero(self.deg_h == i).flatten() if i > 0 else None
            if units is not None and len(units):
                h1[:, units] = self.act(feats @ w1[units].T + self.h1.bias[units] + zh[:, units])
                h2[:, units] = self.act(h1 @ w2[units].T + self.h2.bias[units])
            width = 4 * K if i < nc else 2
            cols = slice(col, col + width)
            col += width
            o = h2 @ wo[cols].T + self.out.bias[cols] + feats @ ws[cols].T + base[:, cols]
            if i < nc:
                c = o.unflatten(-1, (4, K))
                logits = torch.log_softmax(c[:, 0], -1)
                mu, kappa = torch.atan2(c[:, 1], c[:, 2]), torch.exp(c[:, 3].clamp(-5.0, 9.5))
                k = host_random(torch.multinomial, torch.exp(logits), 1, generator=generator)
                t = von_mises_sample(mu.gather(1, k)[:, 0], kappa.gather(1, k)[:, 0], generator).to(dt)
                q[:, i] = t
                logp += self._vm_log_prob(t[:, None], logits[:, None], mu[:, None], kappa[:, None])[:, 0]
                feats[:, i], feats[:, nc + i] = torch.sin(t), torch.cos(t)
            else:
                g = i - nc
                mean, log_std = o[:, 0], o[:, 1].clamp(-9.0, 3.0)
                y = mean + torch.exp(log_std) * host_random(torch.randn, M, generator=generator, dtype=dt)
                q[:, i] = self.loc[g] + self.scale[g] * y
                e = (y - mean) * torch.exp(-log_std)
                logp += -0.5 * e * e - log_std - 0.5 * LOG_2PI - torch.log(self.scale[g])
                feats[:, 2 * nc + g] = y
        return q, logp

    # ----------------------------------------------------------------- LatentModel protocol
    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """z ~ q(z | x) for states x (…, D)."""
        with torch.no_grad():
            mean, log_std = self._posterior(self.features(x))
            return mean + torch.exp(log_std) * host_random(torch.randn, mean.shape, generator=generator,
                                                           dtype=mean.dtype)

    def generate(self, n: int, generator: torch.Generator, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(q (batch, n, D), z (batch, n, L)) with z ~ N(0, I), q ~ P(q | z)."""
        z = host_random(torch.randn, batch * n, self.latent, generator=generator, dtype=torch.float64)
        q, _ = self.sample(z, generator)
        return q.view(batch, n, -1), z.view(batch, n, -1)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> JointLogDensity:
        with torch.no_grad():
            feats = self.features(x)
            mean, log_std = self._posterior(feats)
            e = (z - mean) * torch.exp(-log_std)
            enc = (-0.5 * e * e - log_std - 0.5 * LOG_2PI).sum(-1)
            prior = (-0.5 * z * z - 0.5 * LOG_2PI).sum(-1)
            return JointLogDensity(enc, prior, self.decoder_log_prob(x, z))

    def for_chains(self, chains: int) -> IndependentChains:
        return IndependentChains(self, chains)

    # ----------------------------------------------------------------- training
    def loss_terms(self, q: torch.Tensor, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(−ln P(q | z) with z ~ q(z | q) reparameterized, KL(q(z | q) ‖ N(0, I))), each (n,)."""
        feats = self.features(q)
        mean, log_std = self._posterior(feats)
        z = mean + torch.exp(log_std) * host_random(torch.randn, mean.shape, generator=generator, dtype=mean.dtype)
        logits, mu, kappa, m, ls = self._split(self._params(feats, z))
        rec = -(self._vm_log_prob(q[..., :self.n_circ], logits, mu, kappa).sum(-1)
                + self._gauss_log_prob(feats[..., 2 * self.n_circ:], m, ls).sum(-1))
        kl = 0.5 * (mean * mean + torch.exp(2 * log_std) - 1 - 2 * log_std).sum(-1)
        return rec, kl

    @torch.no_grad()
    def evaluate(self, q: torch.Tensor, seed: int = 1, batch: int = 4096) -> dict[str, float]:
        """Mean reconstruction loss (−ln P(q | z)), KL and loss = −ELBO over ``q`` (nats per
        configuration, q's units)."""
        gen = torch.Generator().manual_seed(seed)
        dt = next(self.parameters()).dtype
        rec, kl = [], []
        for s in range(0, len(q), batch):
            r, k = self.loss_terms(q[s:s + batch].to(dt), gen)
            rec.append(r)
            kl.append(k)
        rec_m, kl_m = float(torch.cat(rec).mean()), float(torch.cat(kl).mean())
        return {"recon": rec_m, "kl": kl_m, "loss": rec_m + kl_m}

    def fit(self, data: torch.Tensor, epochs: int = 20, batch: int = 256, lr: float = 1e-3, anneal: float = 0.2,
            validation: float = 0.05, seed: int = 0, dtype: torch.dtype = torch.float32,
            log: Callable[[str], None] | None = None) -> dict:
        """Maximize the ELBO on states ``data`` (n, D) (or Cartesian (n, N, 3)): Adam, KL weight
        rising linearly 0 → 1 over the first ``anneal`` fraction of the steps, learning rate
        constant then cosine-decayed to lr/10 over the second half; a random ``validation``
        fraction held out. Trains in ``dtype`` (float32 is ~2× faster on CPU) and returns to
        float64. History: per epoch train loss and validation recon/KL/loss."""
        q = torch.as_tensor(data, dtype=torch.float64)
        if q.ndim == 3:
            q = self.zmatrix.q_from_x(q)
        gen = torch.Generator().manual_seed(seed)
        perm = host_random(torch.randperm, len(q), generator=gen)
        n_val = int(round(validation * len(q)))
        val, train = q[perm[:n_val]], q[perm[n_val:]]
        self.set_scale(train)
        self.to(dtype)
        train_d = train.to(dtype)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        steps_per_epoch = max(1, len(train) // batch)
        total = epochs * steps_per_epoch
        hist = {"epoch": [], "train_loss": [], "val": [], "seconds": [], "kl_weight": []}
        step, t0 = 0, time.perf_counter()
        for epoch in range(epochs):
            order = host_random(torch.randperm, len(train), generator=gen)
            run = 0.0
            for s in range(steps_per_epoch):
                frac = step / total
                w = min(1.0, frac / anneal) if anneal > 0 else 1.0
                decay = 1.0 if frac < 0.5 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (frac - 0.5) / 0.5))
                for grp in opt.param_groups:
                    grp["lr"] = lr * decay
                rec, kl = self.loss_terms(train_d[order[s * batch:(s + 1) * batch]], gen)
                loss = rec.mean() + w * kl.mean()
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.parameters(), 100.0)
                opt.step()
                run += float(loss.detach())
                step += 1
            ev = self.evaluate(val) if n_val else {}
            hist["epoch"].append(epoch + 1)
            hist["train_loss"].append(run / steps_per_epoch)
            hist["val"].append(ev)
            hist["seconds"].append(time.perf_counter() - t0)
            hist["kl_weight"].append(w)
            if log:
                log(f"epoch {epoch + 1}/{epochs}  train {run / steps_per_epoch:.3f}  val {ev}  kl_w {w:.2f}  "
                    f"{time.perf_counter() - t0:.0f} s")
        self.double()
        hist["n_train"], hist["n_val"] = len(train), n_val
        if n_val:
            hist["final_val"] = self.evaluate(val)
        return hist


