"""The differentiable, batched AA force field (torch).

Energies follow GROMACS's definitions term by term (checked against ``gmx mdrun -rerun``, see
docs/forcefield.md); forces come from autograd. Input: positions (B, N, 3) in nm and boxes
(B, 6) as (a, b, c, α, β, γ); molecules may be broken across the box (they are made whole first).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from backmap.errors import BackmapError
from backmap.forcefield import geometry as geo
from backmap.forcefield.neighbors import neighbour_pairs
from backmap.forcefield.parameters import Parameters, build_parameters
from backmap.forcefield.pme import PME
from backmap.forcefield.settings import ONE_4PI_EPS0, NonbondedSettings
from backmap.system.pbc import Unwrapper, box_dimensions, box_vectors
from backmap.system.topology import Topology

BONDED = ("bond", "angle", "urey_bradley", "proper", "rb", "improper", "lj14", "coulomb14")
NONBONDED = ("lj", "coulomb")
TERMS = BONDED + NONBONDED
#: below this fraction of σ_ij (and below R_MIN_COULOMB) energies continue linearly: finite forces on overlap
SOFT_FRACTION = 0.6
R_MIN_COULOMB = 0.05


@dataclass
class Energies:
    """Per-term energies (B,) in kJ/mol and, when asked for, per-molecule ones (B, n_molecules)."""

    terms: dict[str, torch.Tensor]
    per_molecule: dict[str, torch.Tensor] | None = None

    @property
    def total(self) -> torch.Tensor:
        return sum(self.terms.values())

    def numpy(self) -> dict[str, np.ndarray]:
        out = {k: v.detach().cpu().numpy() for k, v in self.terms.items()}
        out["potential"] = self.total.detach().cpu().numpy()
        return out


def _linear_below(r: torch.Tensor, r_lo: torch.Tensor, energy) -> torch.Tensor:
    """``energy(r)`` above ``r_lo``; its tangent line below (finite energy and force as r → 0)."""
    r_lo = torch.broadcast_to(r_lo, r.shape)
    inside = r < r_lo
    if not bool(inside.any()):
        return energy(r)
    r_at = r_lo.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        e_at = energy(r_at)
        slope, = torch.autograd.grad(e_at.sum(), r_at, create_graph=True)
    return torch.where(inside, e_at + slope * (r - r_lo), energy(torch.where(inside, r_lo, r)))


BONDED_GEOMETRIC = ("bond", "urey_bradley", "angle", "proper", "rb", "improper")


def bonded_energy(name: str, xs: list[torch.Tensor], par: torch.Tensor) -> torch.Tensor:
    """Energy of bonded terms of kind ``name`` from their atoms' positions ``xs`` (k tensors
    (..., T, 3)) and parameters ``par`` (T, p), in GROMACS's functional forms."""
    if name in ("bond", "urey_bradley"):
        return 0.5 * par[:, 1] * (geo.distance(*xs) - par[:, 0]) ** 2
    if name == "angle":
        return 0.5 * par[:, 1] * (geo.angle(*xs) - par[:, 0]) ** 2
    if name == "proper":
        return par[:, 1] * (1 + torch.cos(par[:, 2] * geo.dihedral(*xs) - par[:, 0]))
    if name == "rb":
        c = torch.cos(geo.dihedral(*xs) - torch.pi)
        return sum(par[:, n] * c**n for n in range(6))
    if name == "improper":
        d = torch.remainder(geo.dihedral(*xs) - par[:, 0] + torch.pi, 2 * torch.pi) - torch.pi
        return 0.5 * par[:, 1] * d**2
    raise KeyError(name)


def _box_vectors(box, n_frames: int) -> np.ndarray:
    """(B, 3, 3) box vectors from vectors or (a, b, c, α, β, γ) rows."""
    b = np.asarray(box, np.float64)
    if b.shape[-1] == 6:
        b = np.stack([box_vectors(row) for row in b.reshape(-1, 6)])
    b = b.reshape(-1, 3, 3)
    return np.repeat(b, n_frames, 0) if len(b) == 1 and n_frames > 1 else b


def _lattice(shift: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Snap approximate periodic shifts to exact integer combinations of the box vectors."""
    if not len(shift):
        return shift
    n = np.rint(np.linalg.solve(vectors.T, shift.reshape(-1, 3).T).T)
    return (n @ vectors).reshape(shift.shape)


class ForceField:
    """Energies of a whole system (and of atom subsets) for batches of configurations."""

    def __init__(self, topology: Topology, settings: NonbondedSettings | None = None,
                 dtype: torch.dtype = torch.float64):
        self.topology = topology
        self._setup(build_parameters(topology), settings, dtype, Unwrapper(topology))

    def _setup(self, params: Parameters, settings, dtype, unwrap) -> None:
        self.settings = settings or NonbondedSettings()
        self.dtype = dtype
        self.params = p = params
        self._unwrap = unwrap
        self.n_atoms = len(p.charges)
        self._excluded_keys = np.unique(p.exclusions[:, 0] * self.n_atoms + p.exclusions[:, 1])
        t = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
        self._q = t(p.charges)
        self._c6, self._c12 = t(p.c6), t(p.c12)
        self._sigma = t(np.where(p.c6 > 0, (p.c12 / np.where(p.c6 > 0, p.c6, 1)) ** (1 / 6), 0.0))
        self._lj_type = torch.as_tensor(p.lj_type)
        self._mol = torch.as_tensor(p.molecule)
        s = self.settings
        self._pme = PME(s.ewald_coefficient(), s.pme_order, ONE_4PI_EPS0 / s.epsilon_r, s.fourier_spacing,
                        tuple(s.fourier_n), dtype) if s.coulomb == "pme" else None

    def make_whole(self, positions: np.ndarray, dimensions: np.ndarray) -> np.ndarray:
        """``positions`` (N, 3) with every molecule whole (a subsystem's are assumed whole)."""
        return self._unwrap(positions, dimensions) if self._unwrap is not None else np.asarray(positions)

    def subsystem(self, atoms: np.ndarray) -> "ForceField":
        """The force field of just these atoms (terms with all their atoms among them), for
        configurations given whole and without periodic boundaries (``box=None``): e.g. a unit's
        atoms and their neighbours in a local environment."""
        sub = ForceField.__new__(ForceField)
        sub.topology = None
        sub._setup(self.params.restrict(np.asarray(atoms)), self.settings, self.dtype, None)
        return sub

    # ------------------------------------------------------------------ public API
    def energy(self, positions, box, *, subset: np.ndarray | None = None,
               terms: Iterable[str] | None = None, per_molecule: bool = False,
               pair_lists: list | None = None, whole: bool = False) -> Energies:
        """Energies of configurations ``positions`` (B, N, 3) nm in boxes ``box``: (B, 3, 3) box
        vectors or (B, 6) as (a, b, c, α, β, γ).

        ``subset`` (boolean, N): only interactions that involve at least one of these atoms.
        ``terms``: only these terms. ``pair_lists``: per configuration, (i, j, shift) from
        :meth:`pairs` with a skin, to reuse over several nearby configurations (minimization).
        ``whole``: the molecules are already whole (skips making them so). Differentiable with
        respect to ``positions``."""
        x = torch.as_tensor(positions, dtype=self.dtype)
        if x.ndim == 2:
            x = x[None]
        wanted = list(terms or TERMS)
        vectors = None
        if box is not None:
            vectors = _box_vectors(box, len(x))
            dims = np.stack([box_dimensions(v) for v in vectors])
            if self._unwrap is None and not whole:
                raise ValueError("a subsystem force field takes whole configurations without a box (box=None)")
        if box is not None and not whole:
            # whole molecules: add (constant) lattice shifts found on a detached copy
            xd = x.detach().cpu().numpy()
            shift = np.stack([_lattice(self._unwrap(xd[b], dims[b]) - xd[b], vectors[b]) for b in range(len(xd))])
            x = x + torch.as_tensor(shift, dtype=self.dtype)
        B = x.shape[0]
        out: dict[str, torch.Tensor] = {}
        mol_out: dict[str, torch.Tensor] = {}
        for name in BONDED:
            if name in wanted:
                e, first_atom = self._bonded(name, x, subset)
                out[name] = e.sum(-1)
                if per_molecule:
                    mol_out[name] = self._scatter(e, self._mol[first_atom], B)
        if any(n in wanted for n in NONBONDED):
            lj, coul = self._nonbonded(x, vectors, subset, per_molecule, pair_lists)
            for name, (total, per_mol) in (("lj", lj), ("coulomb", coul)):
                if name in wanted:
                    out[name] = total
                    if per_molecule:
                        mol_out[name] = per_mol
        return Energies(out, mol_out if per_molecule else None)

    def forces(self, positions, box, **kw) -> tuple[Energies, torch.Tensor]:
        """Energies and forces −∇U (B, N, 3) in kJ/mol/nm."""
        x = torch.as_tensor(positions, dtype=self.dtype).detach().clone()
        x = x[None] if x.ndim == 2 else x
        x.requires_grad_(True)
        e = self.energy(x, box, **kw)
        grad, = torch.autograd.grad(e.total.sum(), x)
        return e, -grad

    # ------------------------------------------------------------------ internals
    def _scatter(self, e: torch.Tensor, mol: torch.Tensor, B: int) -> torch.Tensor:
        out = torch.zeros(B, self.params.n_molecules, dtype=e.dtype)
        return out.index_add_(1, mol, e)

    def _select(self, name: str, subset: np.ndarray | None):
        term = self.params.bonded["pair" if name in ("lj14", "coulomb14") else name]
        atoms, params = term.atoms, term.params
        if subset is not None and len(atoms):
            keep = subset[atoms].any(1)
            atoms, params = atoms[keep], params[keep]
        return torch.as_tensor(atoms), torch.as_tensor(params, dtype=self.dtype)

    def _bonded(self, name: str, x: torch.Tensor, subset) -> tuple[torch.Tensor, torch.Tensor]:
        idx, par = self._select(name, subset)
        if len(idx) == 0:
            return torch.zeros(x.shape[0], 0, dtype=self.dtype), idx.reshape(-1)[:0]
        xs = [x[:, idx[:, k]] for k in range(idx.shape[1])]
        if name in BONDED_GEOMETRIC:
            e = bonded_energy(name, xs, par)
        elif name == "lj14":
            r = geo.distance(*xs)
            sig, eps = par[:, 0], par[:, 1]
            e = _linear_below(r, SOFT_FRACTION * sig, lambda r: 4 * eps * ((sig / r) ** 12 - (sig / r) ** 6))
        elif name == "coulomb14":
            r = geo.distance(*xs)
            qq = self._q[idx[:, 0]] * self._q[idx[:, 1]] * par[:, 2] * ONE_4PI_EPS0 / self.settings.epsilon_r
            e = _linear_below(r, torch.tensor(R_MIN_COULOMB, dtype=self.dtype), lambda r: qq / r)
        else:  # pragma: no cover
            raise KeyError(name)
        return e, idx[:, 0]

    def pairs(self, x: np.ndarray, vectors: np.ndarray | None, skin: float = 0.0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Non-excluded pairs within the cut-off (+ ``skin``): cell grid under PBC, all pairs
        without a box. ``x`` must be whole molecules when reused through ``pair_lists``."""
        if vectors is not None:
            return neighbour_pairs(x, vectors, self.settings.cutoff + skin, self._excluded_keys)
        i, j = np.triu_indices(len(x), 1)
        keep = ~np.isin(i * len(x) + j, self._excluded_keys)
        keep &= ((x[j] - x[i]) ** 2).sum(-1) < (self.settings.cutoff + skin) ** 2
        return i[keep], j[keep], np.zeros((int(keep.sum()), 3))

    def _nonbonded(self, x: torch.Tensor, vectors: np.ndarray | None, subset, per_molecule: bool,
                   pair_lists: list | None = None):
        s = self.settings
        k_rf, c_rf = s.reaction_field()
        f = ONE_4PI_EPS0 / s.epsilon_r
        pme = self._pme is not None
        if pme:
            if vectors is None:
                raise BackmapError("PME needs a periodic box: a subsystem force field (regularizers, local "
                                   "environments) has none — use coulomb = reaction-field there")
            beta = s.ewald_coefficient()
            sh_ewald = float(torch.special.erfc(torch.tensor(beta * s.rcoulomb, dtype=torch.float64))) / s.rcoulomb
        B = x.shape[0]
        lj_tot, cl_tot = [], []
        lj_mol, cl_mol = [], []
        xd = x.detach().cpu().numpy()
        for b in range(B):
            if pair_lists is not None:
                i, j, shift = pair_lists[b]
            else:
                i, j, shift = self.pairs(xd[b], None if vectors is None else vectors[b])
            if subset is not None:
                keep = subset[i] | subset[j]
                i, j, shift = i[keep], j[keep], shift[keep]
            i_t, j_t = torch.as_tensor(i), torch.as_tensor(j)
            r = geo.norm(x[b, j_t] - x[b, i_t] + torch.as_tensor(shift, dtype=self.dtype))
            # Lennard-Jones
            ti, tj = self._lj_type[i_t], self._lj_type[j_t]
            c6, c12, sig = self._c6[ti, tj], self._c12[ti, tj], self._sigma[ti, tj]
            in_vdw = r < s.rvdw
            shift_lj = (c12 / s.rvdw**12 - c6 / s.rvdw**6) if s.vdw_modifier == "potential-shift" else 0.0
            e_lj = _linear_below(r, SOFT_FRACTION * sig, lambda r: c12 / r**12 - c6 / r**6 - shift_lj)
            e_lj = torch.where(in_vdw, e_lj, torch.zeros_like(e_lj))
            # reaction-field Coulomb (plain cut-off = ε_rf 1), GROMACS Verlet-scheme form
            qq = f * self._q[i_t] * self._q[j_t]
            in_c = r < s.rcoulomb
            if pme:  # real-space Ewald, shifted to zero at r_c (GROMACS's potential-shift)
                e_c = _linear_below(r, torch.tensor(R_MIN_COULOMB, dtype=self.dtype),
                                    lambda r: qq * (torch.special.erfc(beta * r) / r - sh_ewald))
            else:
                e_c = _linear_below(r, torch.tensor(R_MIN_COULOMB, dtype=self.dtype),
                                    lambda r: qq * (1 / r + k_rf * r**2 - c_rf))
            e_c = torch.where(in_c & (qq != 0), e_c, torch.zeros_like(e_c))
            # excluded pairs and self terms keep the reaction-field constant part, as GROMACS does
            ex = self.params.exclusions
            if subset is not None:
                ex = ex[subset[ex[:, 0]] | subset[ex[:, 1]]]
            ex_t = torch.as_tensor(ex)
            r_ex = geo.distance(x[b, ex_t[:, 0]], x[b, ex_t[:, 1]])
            qq_ex = f * self._q[ex_t[:, 0]] * self._q[ex_t[:, 1]]
            self_atoms = torch.arange(self.n_atoms) if subset is None else torch.as_tensor(np.flatnonzero(subset))
            if pme:
                # PME: the mesh holds the excluded pairs' interaction (erf part) and each atom's with
                # itself; both come off in the short-range term, as in GROMACS
                e_ex = torch.where(r_ex < s.rcoulomb, -qq_ex * torch.erf(beta * r_ex) / r_ex, torch.zeros_like(r_ex))
                e_self = -beta / np.sqrt(np.pi) * f * self._q[self_atoms] ** 2
                e_rec = self._pme.energy(x[b], self._q, vectors[b])  # per atom
                if subset is not None:  # interactions with ≥ 1 subset atom: all minus those of the rest
                    rest = torch.as_tensor(~np.asarray(subset, bool))
                    e_rec = e_rec - self._pme.energy(x[b], torch.where(rest, self._q, 0.0), vectors[b])
            else:
                e_ex = torch.where(r_ex < s.rcoulomb, qq_ex * (k_rf * r_ex**2 - c_rf), torch.zeros_like(r_ex))
                e_self = -0.5 * c_rf * f * self._q[self_atoms] ** 2
            lj_tot.append(e_lj.sum())
            cl_tot.append(e_c.sum() + e_ex.sum() + e_self.sum() + (e_rec.sum() if pme else 0.0))
            if per_molecule:
                mol = self._mol
                m_lj = torch.zeros(self.params.n_molecules, dtype=self.dtype)
                m_lj = m_lj.index_add(0, mol[i_t], 0.5 * e_lj).index_add(0, mol[j_t], 0.5 * e_lj)
                m_c = torch.zeros(self.params.n_molecules, dtype=self.dtype)
                m_c = m_c.index_add(0, mol[i_t], 0.5 * e_c).index_add(0, mol[j_t], 0.5 * e_c)
                m_c = m_c.index_add(0, mol[ex_t[:, 0]], e_ex).index_add(0, mol[self_atoms], e_self)
                if pme:
                    m_c = m_c.index_add(0, mol, e_rec)
                lj_mol.append(m_lj)
                cl_mol.append(m_c)
        lj = (torch.stack(lj_tot), torch.stack(lj_mol) if per_molecule else None)
        cl = (torch.stack(cl_tot), torch.stack(cl_mol) if per_molecule else None)
        return lj, cl
