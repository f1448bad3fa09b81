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
import backmap.forcefield.geometry as geo
from backmap.forcefield.group_energy import GroupEnergies
from backmap.forcefield.neighbors import neighbour_pairs
from backmap.forcefield.parameters import BONDED, NONBONDED, TERMS, Parameters, build_parameters  # noqa: F401
from backmap.forcefield.pme import PME
from backmap.forcefield.settings import ONE_4PI_EPS0, NonbondedSettings
from backmap.system.pbc import Unwrapper, box_dimensions, box_vectors
from backmap.system.topology import Topology

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


def _linear_below(r: torch.Tensor, r_lo: torch.Tensor, energy, *params: torch.Tensor) -> torch.Tensor:
    """``energy(r, *params)`` above ``r_lo``; its tangent line below (finite energy and force as
    r → 0). ``energy`` is elementwise; ``params`` (tensors or numbers) broadcast against ``r``.
    The tangents are taken (by autograd) only where they are needed."""
    inside = r < (float(r_lo) if not torch.is_tensor(r_lo) or r_lo.ndim == 0 else r_lo)
    if not bool(inside.any()):
        return energy(r, *params)
    r_lo = torch.broadcast_to(torch.as_tensor(r_lo, dtype=r.dtype), r.shape)
    idx = torch.nonzero(inside.reshape(-1), as_tuple=True)[0]

    def at(v):
        return torch.broadcast_to(v, r.shape).reshape(-1).index_select(0, idx) if torch.is_tensor(v) else v

    r_lo_in = at(r_lo).detach()
    r_at = r_lo_in.clone().requires_grad_(True)
    with torch.enable_grad():
        e_at = energy(r_at, *(at(v) for v in params))
        slope, = torch.autograd.grad(e_at.sum(), r_at, create_graph=True)
    below = e_at + slope * (at(r) - r_lo_in)
    e = energy(torch.where(inside, r_lo, r), *params)
    return e.reshape(-1).index_put((idx,), below).reshape(r.shape)


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
        # per pair of LJ types (flat, index ti * n_types + tj): C6, C12, where the soft core starts, shift
        self._n_types = len(p.c6)
        shift = self._c12 / s.rvdw**12 - self._c6 / s.rvdw**6 if s.vdw_modifier == "potential-shift" else \
            torch.zeros_like(self._c6)
        self._lj_pairs = tuple(v.reshape(-1).contiguous() for v in (self._c6, self._c12, SOFT_FRACTION * self._sigma,
                                                                      shift))
        self._pme = PME(s.ewald_coefficient(), s.pme_order, ONE_4PI_EPS0 / s.epsilon_r, s.fourier_spacing,
                        tuple(s.fourier_n), dtype) if s.coulomb == "pme" else None
        self._f_coulomb = ONE_4PI_EPS0 / s.epsilon_r
        self._ewald = None  # PME real space: (β, erfc(β r_c) / r_c)
        if s.coulomb == "pme":
            beta = s.ewald_coefficient()
            erfc = float(torch.special.erfc(torch.tensor(beta * s.rcoulomb, dtype=torch.float64)))
            self._ewald = beta, erfc / s.rcoulomb
        self._kernel_args = None  # the compiled kernels' topology tables (kernel_tables)
        self._groups = GroupEnergies(self)

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

    def with_cutoff(self, cutoff: float) -> "ForceField":
        """The same force field with LJ and Coulomb cut off at ``cutoff`` nm where they reach
        farther: a cheap energy for removing clashes before sampling (a 0.7 nm sphere holds a
        sixth of the pairs of a 1.3 nm one), not one to sample or report."""
        s = self.settings
        if s.coulomb == "pme" or (s.rvdw <= cutoff and s.rcoulomb <= cutoff):
            return self
        short = ForceField.__new__(ForceField)
        short.topology = self.topology
        short._setup(self.params, s.model_copy(update={"rvdw": min(s.rvdw, cutoff),
                                                       "rcoulomb": min(s.rcoulomb, cutoff)}),
                     self.dtype, self._unwrap)
        return short

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

    def group_energies(self, positions: torch.Tensor, vectors: np.ndarray | None, groups: torch.Tensor,
                       *, check: bool = False, environment_fixed: bool = False, keep_index: bool = True
                       ) -> torch.Tensor:
        """(C, G) energies of every interaction that involves at least one atom of group g, in each
        of C configurations (the local energies of a Monte Carlo move): see
        :meth:`backmap.forcefield.group_energy.GroupEnergies.energies`."""
        return self._groups.energies(positions, vectors, groups, check=check, environment_fixed=environment_fixed,
                                     keep_index=keep_index)

    def kernel_tables(self) -> tuple[tuple, tuple, tuple]:
        """The compiled kernels' arguments that depend on the topology only: (LJ types, charges,
        number of types, C6, C12, soft-core radius and shift per type pair), (cut-off, rvdw,
        rcoulomb, f, k_rf, c_rf, r_min) and the excluded pairs as CSR (both directions)."""
        if self._kernel_args is None:
            s = self.settings
            ex = self.params.exclusions.reshape(-1, 2)
            both = np.concatenate([ex, ex[:, ::-1]]) if len(ex) else np.zeros((0, 2), np.int64)
            order = np.lexsort((both[:, 1], both[:, 0]))
            ptr = np.r_[0, np.cumsum(np.bincount(both[:, 0], minlength=self.n_atoms))].astype(np.int64)
            c6, c12, soft, shift = (np.ascontiguousarray(v.to(torch.float64).numpy()) for v in self._lj_pairs)
            k_rf, c_rf = s.reaction_field()
            self._kernel_args = (
                (np.asarray(self._lj_type.numpy(), np.int64), np.ascontiguousarray(self._q.to(torch.float64).numpy()),
                 self._n_types, c6, c12, soft, shift),
                (float(s.cutoff), float(s.rvdw), float(s.rcoulomb), float(self._f_coulomb), float(k_rf), float(c_rf),
                 R_MIN_COULOMB),
                (ptr, np.ascontiguousarray(both[order, 1], dtype=np.int64)))
        return self._kernel_args

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
        return self._bonded_terms(name, x, idx, par), idx[:, 0]

    def _bonded_terms(self, name: str, x: torch.Tensor, idx: torch.Tensor, par: torch.Tensor) -> torch.Tensor:
        """(B, T) energies of the bonded terms of kind ``name`` with atoms ``idx`` (T, k) and
        parameters ``par`` (T, p) in configurations ``x`` (B, N, 3), molecules whole."""
        xs = [x[:, idx[:, k]] for k in range(idx.shape[1])]
        if name in BONDED_GEOMETRIC:
            return bonded_energy(name, xs, par)
        if name == "lj14":
            r = geo.distance(*xs)
            sig, eps = par[:, 0], par[:, 1]
            return _linear_below(r, SOFT_FRACTION * sig,
                                 lambda r, sig, eps: 4 * eps * ((sig / r) ** 12 - (sig / r) ** 6), sig, eps)
        if name == "coulomb14":
            r = geo.distance(*xs)
            qq = self._q[idx[:, 0]] * self._q[idx[:, 1]] * par[:, 2] * ONE_4PI_EPS0 / self.settings.epsilon_r
            return _linear_below(r, torch.tensor(R_MIN_COULOMB, dtype=self.dtype), lambda r, qq: qq / r, qq)
        raise KeyError(name)  # pragma: no cover

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

    # ------------------------------------------------------------------ pair energies (shared)
    def _pair_energies(self, r: torch.Tensor, i: torch.Tensor, j: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """LJ and Coulomb energies of non-excluded pairs (``i``, ``j``: 1-D atom indices) at
        distances ``r`` (same length): cut-offs, LJ potential shift, soft linear core, reaction
        field (plain cut-off = ε_rf 1) or PME's real-space part, GROMACS Verlet-scheme forms.
        The one implementation of these formulas, for :meth:`energy` and :meth:`group_energies`."""
        s = self.settings
        tt = self._lj_type.index_select(0, i) * self._n_types + self._lj_type.index_select(0, j)
        c6, c12, r_soft, shift_lj = (tab.index_select(0, tt) for tab in self._lj_pairs)

        def lj(r, c6, c12, shift):
            inv6 = (r * r).reciprocal() ** 3
            return inv6 * (c12 * inv6 - c6) - shift

        e_lj = _linear_below(r, r_soft, lj, c6, c12, shift_lj)
        e_lj = torch.where(r < s.rvdw, e_lj, 0.0)
        qq = self._f_coulomb * self._q.index_select(0, i) * self._q.index_select(0, j)
        r_min = R_MIN_COULOMB
        if self._pme is not None:  # real-space Ewald, shifted to zero at r_c (GROMACS's potential-shift)
            beta, sh_ewald = self._ewald
            e_c = _linear_below(r, r_min, lambda r, qq: qq * (torch.special.erfc(beta * r) / r - sh_ewald), qq)
        else:
            k_rf, c_rf = s.reaction_field()
            e_c = _linear_below(r, r_min, lambda r, qq: qq * (r.reciprocal() + k_rf * (r * r) - c_rf), qq)
        e_c = torch.where(r < s.rcoulomb, e_c, 0.0)
        return e_lj, e_c

    def _excluded_energies(self, r: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Coulomb energies of excluded pairs at distances ``r``: the reaction field's constant
        part (as GROMACS keeps it), or under PME the mesh's erf part taken off again."""
        s = self.settings
        qq = self._f_coulomb * self._q[i] * self._q[j]
        if self._pme is not None:
            beta, _ = self._ewald
            e = -qq * torch.erf(beta * r) / r
        else:
            k_rf, c_rf = s.reaction_field()
            e = qq * (k_rf * r**2 - c_rf)
        return torch.where(r < s.rcoulomb, e, torch.zeros_like(r))

    def _self_energies(self, atoms: torch.Tensor) -> torch.Tensor:
        """Each atom's Coulomb interaction with itself (reaction field or PME), (len(atoms),)."""
        q2 = self._f_coulomb * self._q[atoms] ** 2
        if self._pme is not None:
            return -self._ewald[0] / np.sqrt(np.pi) * q2
        return -0.5 * self.settings.reaction_field()[1] * q2

    def _nonbonded(self, x: torch.Tensor, vectors: np.ndarray | None, subset, per_molecule: bool,
                   pair_lists: list | None = None):
        pme = self._pme is not None
        if pme and vectors is None:
            raise BackmapError("PME needs a periodic box: a subsystem force field (regularizers, local "
                               "environments) has none — use coulomb = reaction-field there")
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
            e_lj, e_c = self._pair_energies(r, i_t, j_t)
            # excluded pairs and self terms keep the reaction-field constant part, as GROMACS does
            ex = self.params.exclusions
            if subset is not None:
                ex = ex[subset[ex[:, 0]] | subset[ex[:, 1]]]
            ex_t = torch.as_tensor(ex)
            e_ex = self._excluded_energies(geo.distance(x[b, ex_t[:, 0]], x[b, ex_t[:, 1]]), ex_t[:, 0], ex_t[:, 1])
            self_atoms = torch.arange(self.n_atoms) if subset is None else torch.as_tensor(np.flatnonzero(subset))
            e_self = self._self_energies(self_atoms)
            if pme:
                # PME: the mesh holds the excluded pairs' interaction (erf part) and each atom's with
                # itself; both come off in the short-range term, as in GROMACS
                e_rec = self._pme.energy(x[b], self._q, vectors[b])  # per atom
                if subset is not None:  # interactions with ≥ 1 subset atom: all minus those of the rest
                    rest = torch.as_tensor(~np.asarray(subset, bool))
                    e_rec = e_rec - self._pme.energy(x[b], torch.where(rest, self._q, 0.0), vectors[b])
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
