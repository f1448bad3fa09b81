"""Force-field parameters of a topology as flat arrays in GROMACS units (nm, kJ/mol, rad).

parmed keeps GROMACS parameters in AMBER conventions (kcal/mol, Å, E = k x², degrees); this module
converts them back once, per molecule type, and tiles them over the molecules of each block.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from backmap.errors import BackmapError
from backmap.system.topology import MoleculeType, Topology

#: the bonded and non-bonded energy terms, in GROMACS's order of reporting
BONDED = ("bond", "angle", "urey_bradley", "proper", "rb", "improper", "lj14", "coulomb14")
NONBONDED = ("lj", "coulomb")
TERMS = BONDED + NONBONDED

KCAL = 4.184  # kJ per kcal
NM = 0.1  # nm per Å


@dataclass
class Terms:
    """Index and parameter arrays of one bonded term over the whole system."""

    atoms: np.ndarray  # (n, k) global atom indices
    params: np.ndarray  # (n, p)

    @classmethod
    def empty(cls, k: int, p: int) -> "Terms":
        return cls(np.zeros((0, k), int), np.zeros((0, p)))


@dataclass
class Parameters:
    """Everything the energy needs. Bonded terms: ``bond`` (b0, kb), ``angle`` (θ0, kθ),
    ``urey_bradley`` (r13, kUB), ``proper`` (φs, kφ, n) — types 1, 4 and 9, ``rb`` (C0..C5),
    ``improper`` (ξ0, kξ), ``pair`` (σ, ε, charge scale). Non-bonded: per-atom LJ type index and
    charge, the C6/C12 matrix, excluded pairs."""

    bonded: dict[str, Terms]
    charges: np.ndarray
    lj_type: np.ndarray
    c6: np.ndarray
    c12: np.ndarray
    exclusions: np.ndarray  # (n, 2) global i < j
    molecule: np.ndarray  # molecule index per atom
    n_molecules: int
    comb_rule: int
    fudge_qq: float
    info: dict = field(default_factory=dict)

    def restrict(self, atoms: np.ndarray) -> "Parameters":
        """Parameters of a subset of atoms (renumbered 0..len-1 in the given order); terms and
        exclusions survive only when all their atoms are in the subset."""
        new = np.full(len(self.charges), -1)
        new[atoms] = np.arange(len(atoms))

        def inside(idx: np.ndarray) -> np.ndarray:
            return (new[idx] >= 0).all(1) if len(idx) else np.zeros(0, bool)

        bonded = {}
        for name, t in self.bonded.items():
            keep = inside(t.atoms)
            bonded[name] = Terms(new[t.atoms[keep]], t.params[keep])
        ex = self.exclusions[inside(self.exclusions)]
        ex = np.sort(new[ex], axis=1)
        molecules, molecule = np.unique(self.molecule[atoms], return_inverse=True)
        return Parameters(bonded, self.charges[atoms], self.lj_type[atoms], self.c6, self.c12, ex,
                          molecule.ravel(), len(molecules), self.comb_rule, self.fudge_qq, dict(self.info))


def excluded_pairs(mt: MoleculeType) -> np.ndarray:
    """Pairs within nrexcl bonds plus explicit [ exclusions ], as (i < j)."""
    nrexcl = mt.nrexcl if mt.nrexcl is not None else 3
    pairs = set()
    if nrexcl > 0:
        for i, lengths in nx.all_pairs_shortest_path_length(mt.graph, cutoff=nrexcl):
            pairs.update((i, j) for j in lengths if j > i)
    pairs.update(tuple(sorted(p)) for p in mt.exclusions.tolist())
    return np.array(sorted(pairs), int).reshape(-1, 2)


def _require(term, what: str, mt: MoleculeType):
    if term.type is None:
        atoms = " ".join(str(a.idx + 1) for a in _atoms_of(term))
        raise BackmapError(f"molecule type {mt.name}: {what} {atoms} has no parameters in the topology")
    return term.type


def _atoms_of(term):
    return [getattr(term, f"atom{k}") for k in range(1, 5) if hasattr(term, f"atom{k}")]


def _idx(term) -> list[int]:
    return [a.idx for a in _atoms_of(term)]


def molecule_terms(mt: MoleculeType) -> dict[str, tuple[list, list]]:
    """Bonded terms of one molecule type: name → (atom index lists, parameter lists)."""
    p = mt.parameters
    out: dict[str, tuple[list, list]] = {k: ([], []) for k in
                                         ("bond", "angle", "urey_bradley", "proper", "rb", "improper", "pair")}

    def add(name, atoms, params):
        out[name][0].append(atoms)
        out[name][1].append(params)

    for b in p.bonds:
        if b.funct not in (1,):
            raise BackmapError(f"molecule type {mt.name}: bond function {b.funct} is not supported (only 1)")
        t = _require(b, "bond", mt)
        add("bond", _idx(b), [t.req * NM, 2 * t.k * KCAL / NM**2])
    for a in p.angles:
        if a.funct not in (1, 5):
            raise BackmapError(f"molecule type {mt.name}: angle function {a.funct} is not supported (1, 5)")
        t = _require(a, "angle", mt)
        add("angle", _idx(a), [np.radians(t.theteq), 2 * t.k * KCAL])
    for ub in p.urey_bradleys:
        t = _require(ub, "Urey-Bradley term", mt)
        add("urey_bradley", _idx(ub), [t.req * NM, 2 * t.k * KCAL / NM**2])
    for d in p.dihedrals:
        if d.funct not in (1, 4, 9):
            raise BackmapError(f"molecule type {mt.name}: dihedral function {d.funct} is not supported")
        t = _require(d, "dihedral", mt)
        for term in (t if hasattr(t, "__iter__") else [t]):  # DihedralTypeList for function 9
            add("proper", _idx(d), [np.radians(term.phase), term.phi_k * KCAL, term.per])
    for d in p.rb_torsions:
        t = _require(d, "Ryckaert-Bellemans dihedral", mt)
        add("rb", _idx(d), [c * KCAL for c in (t.c0, t.c1, t.c2, t.c3, t.c4, t.c5)])
    for d in p.impropers:
        t = _require(d, "improper dihedral", mt)
        add("improper", _idx(d), [np.radians(t.psi_eq), 2 * t.psi_k * KCAL])
    defaults = getattr(p, "defaults", None)
    c6_c12 = getattr(defaults, "comb_rule", 2) == 1
    for pair in p.adjusts:
        t = _require(pair, "pair", mt)
        if t.epsilon == 0 and t.chgscale == 0:
            continue  # parmed's placeholder for 1-4 pairs the topology does not list
        sigma, epsilon = _pair_from_c6_c12(pair, t, defaults, mt) if c6_c12 else (t.sigma * NM, t.epsilon * KCAL)
        add("pair", _idx(pair), [sigma, epsilon, t.chgscale])
    return out


def _pair_from_c6_c12(pair, t, defaults, mt: MoleculeType) -> tuple[float, float]:
    """σ, ε of a 1-4 pair of a combination-rule-1 topology (GROMOS), whose ``[ pairtypes ]`` and
    atom types hold C6 and C12: parmed reads them into its σ and ε fields unchanged. A pair that
    gen-pairs made from the atom types, parmed scales only in C12; GROMACS scales both by fudgeLJ."""
    c6, c12 = t.sigma * NM, t.epsilon * KCAL
    a, b = pair.atom1, pair.atom2
    generated_c6 = np.sqrt(a.sigma * b.sigma) * NM
    generated_c12 = defaults.fudgeLJ * np.sqrt(a.epsilon * b.epsilon) * KCAL
    if defaults.gen_pairs == "yes" and np.isclose(c6, generated_c6, rtol=1e-9, atol=0) \
            and np.isclose(c12, generated_c12, rtol=1e-9, atol=0):
        c6 *= defaults.fudgeLJ
    if c6 > 0 and c12 > 0:
        return (c12 / c6) ** (1 / 6), c6 * c6 / (4 * c12)
    if c6 == 0 and c12 == 0:
        return 1.0, 0.0  # no LJ: the pair's Coulomb only
    raise BackmapError(f"molecule type {mt.name}: the 1-4 pair {a.idx + 1}-{b.idx + 1} has C6 = {c6:g}, C12 = {c12:g}: "
                       "one of them zero cannot be written as σ and ε (not supported yet)")


def pair_list(topology: Topology) -> np.ndarray:
    """(n, 2) system atom indices of the 1-4 pairs the topology lists (``[ pairs ]``, or those
    ``gen-pairs`` gives parameters): the only pairs GROMACS computes 1-4 interactions for."""
    rows = [block.global_rows(np.asarray(atoms, int).reshape(-1, 2))
            for block in topology.blocks for atoms in [molecule_terms(block.moltype)["pair"][0]] if atoms]
    return np.sort(np.concatenate(rows), axis=1) if rows else np.zeros((0, 2), int)


def excluded_pair_list(topology: Topology) -> np.ndarray:
    """(n, 2) system atom indices (i < j) of the pairs GROMACS excludes from the non-bonded
    interactions: within ``nrexcl`` bonds of their molecule type, or in its ``[ exclusions ]``. A
    1-4 pair beyond ``nrexcl`` (e.g. ``nrexcl = 2``) is an ordinary non-bonded pair."""
    rows = [block.global_rows(excluded_pairs(block.moltype)) for block in topology.blocks]
    rows = [r for r in rows if len(r)]
    return np.sort(np.concatenate(rows), axis=1) if rows else np.zeros((0, 2), int)


_WIDTH = {"bond": (2, 2), "angle": (3, 2), "urey_bradley": (2, 2), "proper": (4, 3), "rb": (4, 6),
          "improper": (4, 2), "pair": (2, 3)}


def build_parameters(topology: Topology) -> Parameters:
    """Parameters of the whole system from a topology read from a ``.top`` file."""
    missing = [b.moltype.name for b in topology.blocks if b.moltype.parameters is None]
    if topology.meta.get("unparametrized"):
        raise BackmapError(f"no usable force-field parameters: {topology.meta['unparametrized']}; the topology "
                           "serves for structure only (particles, names, bonds)", source=topology.source)
    if missing or topology.defaults is None:
        raise BackmapError(f"no force-field parameters for {', '.join(missing) or 'the system'}: "
                           "use the GROMACS .top topology (a .tpr or .gro has none)", source=topology.source)
    d = topology.defaults
    if d["nbfunc"] != 1:
        raise BackmapError("only Lennard-Jones non-bonded interactions (nbfunc 1) are supported",
                           source=topology.source)
    bonded = {k: ([], []) for k in _WIDTH}
    charges, sig, eps, excl = [], [], [], []
    for block in topology.blocks:
        mt = block.moltype
        if mt.parameters.has_NBFIX():
            raise BackmapError(f"molecule type {mt.name}: [ nonbond_params ] are not supported yet",
                               source=topology.source)
        for name, (atoms, params) in molecule_terms(mt).items():
            if atoms:
                bonded[name][0].append(block.global_rows(atoms))
                bonded[name][1].append(np.tile(np.asarray(params, float), (block.count, 1)))
        atoms = mt.parameters.atoms
        charges.append(np.tile([a.charge for a in atoms], block.count))
        sig.append(np.tile([a.sigma * NM for a in atoms], block.count))
        eps.append(np.tile([a.epsilon * KCAL for a in atoms], block.count))
        ex = excluded_pairs(mt)
        excl.append(block.global_rows(ex.reshape(-1, 2)))
    terms = {}
    for name, (atoms, params) in bonded.items():
        k, p = _WIDTH[name]
        terms[name] = Terms(np.concatenate(atoms), np.concatenate(params)) if atoms else Terms.empty(k, p)
    sigma, epsilon = np.concatenate(sig), np.concatenate(eps)
    kinds, lj_type = np.unique(np.stack([sigma, epsilon], 1), axis=0, return_inverse=True)
    s, e = kinds[:, 0], kinds[:, 1]
    if d["comb_rule"] == 1:  # the atom types hold C6 and C12 (parmed reads them into σ and ε): geometric means
        c6, c12 = np.sqrt(s[:, None] * s[None, :]), np.sqrt(e[:, None] * e[None, :])
    else:
        # rule 2: arithmetic σ; rule 3: geometric σ (then C6/C12 are geometric means too)
        s_ij = 0.5 * (s[:, None] + s[None, :]) if d["comb_rule"] == 2 else np.sqrt(s[:, None] * s[None, :])
        e_ij = np.sqrt(e[:, None] * e[None, :])
        c6, c12 = 4 * e_ij * s_ij**6, 4 * e_ij * s_ij**12
    return Parameters(
        bonded=terms,
        charges=np.concatenate(charges),
        lj_type=lj_type.ravel(),
        c6=c6,
        c12=c12,
        exclusions=np.concatenate(excl),
        molecule=topology.molecule_index,
        n_molecules=topology.n_molecules,
        comb_rule=d["comb_rule"],
        fudge_qq=d["fudge_qq"],
    )
