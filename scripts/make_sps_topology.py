#!/usr/bin/env python
"""Write a GROMACS topology of a syndiotactic polystyrene (sPS) melt: N chains ``PS1`` of M styrene units.

The output is ONE self-contained ``topol.top`` (no ``#include``): ``[defaults]``, ``[atomtypes]``,
``[bondtypes]``, ``[angletypes]``, the moleculetype ``PS1`` (``[atoms]``, ``[bonds]``, ``[angles]``,
``[dihedrals]``, ``[exclusions]``), ``[system]`` and ``[molecules]``.  Everything is generated from
the construction rules of the chain below and the force-field parameters in the tables of this file.

Force field: the all-atom polystyrene model of F. Mueller-Plathe, "Local structure and dynamics in
solvent-swollen polymers", Macromolecules 29, 4782-4791 (1996): Lennard-Jones sites with
Lorentz-Berthelot mixing, partial charges only on the aromatic CH groups (-/+0.115 e), harmonic
bonds and angles, a threefold backbone torsion and harmonic improper dihedrals that keep the phenyl
ring planar; no 1-4 pair interactions (nrexcl 2, gen-pairs no).  The harmonic bond force constant
(10000 kJ mol^-1 nm^-2) is the value of DeepBackmap's sPS topology; production runs constrain all
bonds anyway.

Construction rules of a chain of M units (atoms numbered from 1, 16 per unit, then 2 end hydrogens):

* unit m (m = 1..M), first atom o = 16 (m - 1):  H, C (the CH2 carbon), H, H, C (the CH carbon),
  C_AR (ipso), then five (C_AR, H_AR) pairs going round the ring; atom names are the element and the
  global index (``H1``, ``C2``, ...), all atoms in residue 1 ``PS1``;
* bonds: both CH2 hydrogens to CH2, CH2-CH, H-CH, CH-ipso, the ring (ipso, C1..C5, back to ipso),
  every ring H to its carbon, CH(m)-CH2(m+1) along the backbone, and the end hydrogens:
  atom 16 M + 1 on the first CH2, atom 16 M + 2 on the last CH;
* charge groups: (H, CH2, H), (H, CH), (ipso), then each (C_AR, H_AR) pair; each end H its own;
* charges: aromatic CH carbon -0.115, its H +0.115, everything else (ipso included) 0;
* angles: every bonded triple i-j-k (parameters from ``[angletypes]``);
* proper dihedrals (function 1): every four consecutive backbone carbons, and at the chain ends the
  torsions H(first atom)-CH2-CH-CH2 and CH-CH2-CH-H(of the last CH);
* improper dihedrals (function 2), 12 per ring (r0 = ipso, r1..r5 round the ring, s0 = the backbone CH,
  s1..s5 the ring hydrogens): (r_i, r_i+1, r_i+2, r_i+3) and (r_i, r_i+1, r_i-1, s_i), i = 0..5;
* exclusions: within each phenyl group (6 ring carbons + 5 ring hydrogens) every pair more than
  nrexcl bonds apart (the shorter ones are excluded by nrexcl already).

The output is equivalent to DeepBackmap's sPS topology (``shared/data/sps/top/topol.top`` +
``PS1.itp``) term by term; ``--check REFERENCE_TOP`` verifies that with ParmEd (atoms, parameters,
and every bonded term and exclusion compared as order-independent sets) and exits 1 on any
difference.  The output is deterministic (same arguments: byte-identical file).

Usage (from the repository root)::

    python scripts/make_sps_topology.py --out /tmp/sps-top
    python scripts/make_sps_topology.py --out /tmp/sps-top --check ../shared/data/sps/top/topol.top
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

MOLNAME = "PS1"
NREXCL = 2
ATOMS_PER_UNIT = 16

# ---- force field (Mueller-Plathe 1996), GROMACS units: nm, kJ/mol, degrees, amu, e ----
# name: (mass, default charge, sigma, epsilon)
ATOMTYPES = {
    "C": (12.0110, 0.0000, 0.3207, 0.3519),
    "C_AR": (12.0110, -0.1150, 0.3550, 0.2940),
    "H": (1.0080, 0.0000, 0.2318, 0.3180),
    "H_AR": (1.0080, 0.1150, 0.2420, 0.1260),
}
BOND_K = 10000.0
# (type, type): b0
BONDTYPES = [
    (("C", "C"), 0.153),
    (("C", "H"), 0.110),
    (("C_AR", "C_AR"), 0.139),
    (("C_AR", "H_AR"), 0.108),
    (("C", "C_AR"), 0.151),
]
TETRAHEDRAL = 109.45
# (type, type, type): (theta0, k)
ANGLETYPES = [
    (("H", "C", "H"), (TETRAHEDRAL, 306.40)),
    (("C", "C", "H"), (TETRAHEDRAL, 366.90)),
    (("C", "C", "C"), (TETRAHEDRAL, 482.30)),
    (("C_AR", "C", "H"), (TETRAHEDRAL, 366.90)),
    (("C", "C", "C_AR"), (TETRAHEDRAL, 482.30)),
    (("C", "C_AR", "C_AR"), (120.0, 376.60)),
    (("C_AR", "C_AR", "C_AR"), (120.0, 376.60)),
    (("C_AR", "C_AR", "H_AR"), (120.0, 418.80)),
]
TORSION = (0.0, 6.0, 3)  # backbone: phase (deg), k (kJ/mol), multiplicity
IMPROPER = (0.0, 167.4)  # ring planarity: xi0 (deg), k (kJ mol^-1 rad^-2)
AROMATIC_CH_CHARGE = 0.115

# ---- one styrene unit: (element, atom type) in order; local indices of its parts ----
UNIT = [("H", "H"), ("C", "C"), ("H", "H"), ("H", "H"), ("C", "C"), ("C", "C_AR")]
UNIT += [("C", "C_AR"), ("H", "H_AR")] * 5
assert len(UNIT) == ATOMS_PER_UNIT
CH2_H = (0, 2)
CH2 = 1
CH_H = 3
CH = 4
RING_C = (5, 6, 8, 10, 12, 14)  # ipso first, then round the ring
RING_H = (None, 7, 9, 11, 13, 15)  # the hydrogen on each ring carbon (none on ipso)


class Chain:
    """The PS1 moleculetype of a chain of ``n_units`` styrene units (1-based atom indices)."""

    def __init__(self, n_units: int):
        if n_units < 2:
            raise ValueError("a chain needs at least 2 units")
        self.n_units = n_units
        self.atoms: list[dict] = []
        self.bonds: list[tuple[int, int]] = []
        self.dihedrals: list[tuple[int, int, int, int]] = []
        self.impropers: list[tuple[int, int, int, int]] = []
        self._build()

    @staticmethod
    def _g(unit: int, local: int) -> int:
        return ATOMS_PER_UNIT * unit + local + 1

    def _build(self) -> None:
        n, g = self.n_units, self._g
        cg = 0
        for u in range(n):
            groups = [(0, 1, 2), (3, 4), (5,)] + [(c, c + 1) for c in RING_C[1:]]
            cg_of = {}
            for members in groups:
                cg += 1
                for local in members:
                    cg_of[local] = cg
            for local, (element, atype) in enumerate(UNIT):
                if atype == "C_AR" and local != RING_C[0]:
                    charge = -AROMATIC_CH_CHARGE
                elif atype == "H_AR":
                    charge = AROMATIC_CH_CHARGE
                else:
                    charge = 0.0
                self._add_atom(element, atype, cg_of[local], charge)
        h_begin = self._add_atom("H", "H", cg + 1, 0.0)
        h_end = self._add_atom("H", "H", cg + 2, 0.0)

        # bonds
        for u in range(n):
            for h in CH2_H:
                self.bonds.append((g(u, h), g(u, CH2)))
            self.bonds.append((g(u, CH2), g(u, CH)))
            self.bonds.append((g(u, CH_H), g(u, CH)))
            self.bonds.append((g(u, CH), g(u, RING_C[0])))
            for i in range(6):
                self.bonds.append((g(u, RING_C[i]), g(u, RING_C[(i + 1) % 6])))
                if RING_H[i] is not None:
                    self.bonds.append((g(u, RING_C[i]), g(u, RING_H[i])))
            if u + 1 < n:
                self.bonds.append((g(u, CH), g(u + 1, CH2)))
        self.bonds.append((g(0, CH2), h_begin))
        self.bonds.append((g(n - 1, CH), h_end))

        # proper torsions along the backbone, with the end hydrogens chosen as described above
        backbone = [g(u, a) for u in range(n) for a in (CH2, CH)]
        quads = [(g(0, CH2_H[0]),) + tuple(backbone[:3])]
        quads += [tuple(backbone[k:k + 4]) for k in range(len(backbone) - 3)]
        quads.append(tuple(backbone[-3:]) + (g(n - 1, CH_H),))
        self.dihedrals = quads

        # ring impropers
        for u in range(n):
            r = [g(u, a) for a in RING_C]
            s = [g(u, CH)] + [g(u, a) for a in RING_H[1:]]
            for i in range(6):
                self.impropers.append(tuple(r[(i + k) % 6] for k in range(4)))
            for i in range(6):
                self.impropers.append((r[i], r[(i + 1) % 6], r[(i - 1) % 6], s[i]))

    def _add_atom(self, element: str, atype: str, cgnr: int, charge: float) -> int:
        nr = len(self.atoms) + 1
        self.atoms.append(dict(nr=nr, type=atype, name=f"{element}{nr}", cgnr=cgnr, charge=charge,
                               mass=ATOMTYPES[atype][0]))
        return nr

    def neighbours(self) -> dict[int, list[int]]:
        nb: dict[int, list[int]] = collections.defaultdict(list)
        for i, j in self.bonds:
            nb[i].append(j)
            nb[j].append(i)
        return {k: sorted(v) for k, v in nb.items()}

    def angles(self) -> list[tuple[int, int, int]]:
        """Every bonded triple, by central atom."""
        nb = self.neighbours()
        out = []
        for j in sorted(nb):
            ns = nb[j]
            for a in range(len(ns)):
                for b in range(a + 1, len(ns)):
                    out.append((ns[a], j, ns[b]))
        return out

    def exclusions(self) -> list[tuple[int, int]]:
        """Pairs within each phenyl group more than NREXCL bonds apart."""
        nb = self.neighbours()
        out = []
        for u in range(self.n_units):
            group = sorted(self._g(u, a) for a in RING_C + RING_H[1:])
            for i in group:
                dist = bond_distances(nb, i, NREXCL)
                out.extend((i, j) for j in group if j > i and j not in dist)
        return out


def bond_distances(nb: dict[int, list[int]], start: int, limit: int) -> dict[int, int]:
    """Atoms within ``limit`` bonds of ``start`` (breadth first) -> number of bonds."""
    dist = {start: 0}
    frontier = [start]
    for d in range(1, limit + 1):
        nxt = []
        for i in frontier:
            for j in nb.get(i, ()):
                if j not in dist:
                    dist[j] = d
                    nxt.append(j)
        frontier = nxt
    return dist


def render(n_chains: int, n_units: int) -> str:
    chain = Chain(n_units)
    types_of = {a["nr"]: a["type"] for a in chain.atoms}
    lines = [
        f"; syndiotactic polystyrene melt: {n_chains} chains {MOLNAME} of {n_units} units",
        "; written by scripts/make_sps_topology.py; force field: F. Mueller-Plathe,",
        "; Macromolecules 29, 4782 (1996)",
        "",
        "[ defaults ]",
        "; nbfunc  comb-rule  gen-pairs  fudgeLJ  fudgeQQ",
        "  1       2          no         1.0      1.0",
        "",
        "[ atomtypes ]",
        "; name    mass      charge    ptype  sigma     epsilon",
    ]
    for name, (mass, charge, sigma, eps) in ATOMTYPES.items():
        lines.append(f"  {name:<6}  {mass:8.4f}  {charge:8.4f}  A      {sigma:8.4f}  {eps:8.4f}")
    lines += ["", "[ bondtypes ]", "; i     j       func  b0        kb"]
    for (ti, tj), b0 in BONDTYPES:
        lines.append(f"  {ti:<6}{tj:<6}  1     {b0:8.4f}  {BOND_K:10.2f}")
    lines += ["", "[ angletypes ]", "; i     j     k       func  theta0    k"]
    for (ti, tj, tk), (th, k) in ANGLETYPES:
        lines.append(f"  {ti:<6}{tj:<6}{tk:<6}  1     {th:8.2f}  {k:8.2f}")

    lines += ["", "[ moleculetype ]", "; name  nrexcl", f"  {MOLNAME}   {NREXCL}", "",
              "[ atoms ]", ";  nr  type   resnr  residue  atom   cgnr  charge    mass"]
    for a in chain.atoms:
        lines.append(f"{a['nr']:5d}  {a['type']:<6} {1:4d}   {MOLNAME:<7}  {a['name']:<6} {a['cgnr']:4d}"
                     f"  {a['charge']:7.3f}  {a['mass']:8.4f}")
    lines += ["", "[ bonds ]", ";   i      j  func"]
    lines += [f"{i:5d}  {j:5d}  1" for i, j in chain.bonds]
    lines += ["", "[ angles ]", ";   i      j      k  func"]
    lines += [f"{i:5d}  {j:5d}  {k:5d}  1" for i, j, k in chain.angles()]
    phase, kphi, mult = TORSION
    lines += ["", "[ dihedrals ]", "; backbone torsions", ";   i      j      k      l  func  phase   kd      mult"]
    lines += [f"{i:5d}  {j:5d}  {k:5d}  {l:5d}  1     {phase:6.2f}  {kphi:6.3f}  {mult:d}"
              for i, j, k, l in chain.dihedrals]
    xi0, kxi = IMPROPER
    lines += ["", "[ dihedrals ]", "; phenyl impropers", ";   i      j      k      l  func  xi0     kxi"]
    lines += [f"{i:5d}  {j:5d}  {k:5d}  {l:5d}  2     {xi0:6.2f}  {kxi:8.3f}"
              for i, j, k, l in chain.impropers]
    lines += ["", "[ exclusions ]", "; phenyl group: pairs further apart than nrexcl bonds"]
    lines += [f"{i:5d}  {j:5d}" for i, j in chain.exclusions()]
    lines += ["", "[ system ]", f"sPS melt, {n_chains} x {MOLNAME}", "",
              "[ molecules ]", "; name  count", f"{MOLNAME}  {n_chains}", ""]
    # sanity: every bonded term has a type entry
    btypes = {tuple(sorted(t)) for t, _ in BONDTYPES}
    atypes = {t for t, _ in ANGLETYPES} | {t[::-1] for t, _ in ANGLETYPES}
    for i, j in chain.bonds:
        assert tuple(sorted((types_of[i], types_of[j]))) in btypes, (i, j)
    for i, j, k in chain.angles():
        assert (types_of[i], types_of[j], types_of[k]) in atypes, (i, j, k)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# --check: term-by-term comparison with ParmEd


def _load(path: str):
    """ParmEd's parametrized structure of the whole system, and what ParmEd does not keep:
    the [molecules] list, each moleculetype's nrexcl and its charge-group numbers."""
    import warnings

    from parmed.gromacs import GromacsTopologyFile
    from parmed.gromacs._gromacsfile import GromacsFile

    path = os.path.abspath(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "nrexcl 2 not currently supported": we check exclusions ourselves
        top = GromacsTopologyFile(path)
    molecules, nrexcl, cgnr = [], {}, collections.defaultdict(list)
    section = name = None
    fh = GromacsFile(path)
    try:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            if line.startswith("["):
                section = line.strip("[] ")
            elif section == "moleculetype":
                name, n = line.split()[:2]
                nrexcl[name] = int(n)
            elif section == "atoms":
                cgnr[name].append(int(line.split()[5]))
            elif section == "molecules":
                mol, count = line.split()[:2]
                molecules.append((mol, int(count)))
    finally:
        fh.close()
    return top, molecules, nrexcl, dict(cgnr)


def _r(x: float) -> float:
    return round(float(x), 6)


def _describe(top, start: int, stop: int, template=None, nrexcl: int = 0) -> dict:
    """Order-independent description of atoms start..stop-1 of a parametrized ParmEd structure and
    of every term among them (ParmEd's units; atoms numbered from 1 at ``start``).  The explicit
    [exclusions] and the terms ParmEd does not parametrize are read from ``template`` (ParmEd's
    unexpanded moleculetype: expanding turns exclusions into zeroed exceptions)."""

    def rel(*atoms):
        idx = tuple(a.idx - start + 1 for a in atoms)
        return idx if all(1 <= i <= stop - start for i in idx) else None

    atoms = []
    for n, a in enumerate(top.atoms[start:stop]):
        t = a.atom_type
        # residue as numbered in [atoms] (ParmEd renumbers the expanded copies)
        res = template.atoms[n].residue if template is not None else a.residue
        atoms.append((a.name, a.type, _r(a.charge), _r(a.mass), res.name,
                      res.number if template is not None else res.idx - top.atoms[start].residue.idx,
                      _r(t.sigma), _r(t.epsilon)))
    bonds = {}
    for b in top.bonds:
        k = rel(b.atom1, b.atom2)
        if k is not None:
            bonds[tuple(sorted(k))] = (_r(b.type.req), _r(b.type.k)) if b.type else None
    angles = {}
    for an in top.angles:
        k = rel(an.atom1, an.atom2, an.atom3)
        if k is not None:
            angles[min(k, k[::-1])] = (_r(an.type.theteq), _r(an.type.k)) if an.type else None

    def dparams(t):
        if t is None:
            return None
        terms = list(t) if isinstance(t, list) else [t]
        return tuple(sorted((_r(x.phi_k), _r(x.per), _r(x.phase)) for x in terms))

    dihedrals = collections.Counter()
    for d in top.dihedrals:
        k = rel(d.atom1, d.atom2, d.atom3, d.atom4)
        if k is not None:  # proper (and periodic improper) torsions: i-j-k-l == l-k-j-i
            dihedrals[(min(k, k[::-1]), bool(d.improper), dparams(d.type))] += 1
    impropers = collections.Counter()
    for d in top.impropers:
        k = rel(d.atom1, d.atom2, d.atom3, d.atom4)
        if k is not None:  # harmonic impropers: as written
            impropers[(k, (_r(d.type.psi_eq), _r(d.type.psi_k)) if d.type else None)] += 1
    explicit = set()
    for a in (template.atoms if template is not None else ()):
        for b in a._exclusion_partners:
            explicit.add(tuple(sorted((a.idx + 1, b.idx + 1))))
    nb = collections.defaultdict(list)
    for i, j in bonds:
        nb[i].append(j)
        nb[j].append(i)
    effective = set(explicit)  # what the non-bonded kernel leaves out: explicit + within nrexcl bonds
    for i in range(1, stop - start + 1):
        effective.update(tuple(sorted((i, j))) for j in bond_distances(nb, i, nrexcl) if j != i)
    other = {}
    if template is not None:  # terms this force field does not use: must be absent from both
        for kind in ("adjusts", "urey_bradleys", "rb_torsions", "cmaps"):
            if len(getattr(template, kind)):
                other[kind] = len(getattr(template, kind))
    return dict(atoms=atoms, bonds=bonds, angles=angles, dihedrals=dihedrals, impropers=impropers,
                exclusions=explicit, effective_exclusions=effective, other=dict(other))


def _first_diff(a, b):
    if isinstance(a, list):
        if len(a) != len(b):
            return f"length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"item {i}: {x} vs {y}"
        return None
    if isinstance(a, dict):
        only_a = sorted(set(a) - set(b), key=str)
        only_b = sorted(set(b) - set(a), key=str)
        if only_a or only_b:
            return (f"only in ours: {only_a[:3]} ({len(only_a)}); "
                    f"only in the reference: {only_b[:3]} ({len(only_b)})")
        for k in sorted(a, key=str):
            if a[k] != b[k]:
                return f"{k}: {a[k]} vs {b[k]}"
        return None
    if isinstance(a, set):
        if a != b:
            return (f"only in ours: {sorted(a - b)[:3]} ({len(a - b)}); "
                    f"only in the reference: {sorted(b - a)[:3]} ({len(b - a)})")
        return None
    return None if a == b else f"{a} vs {b}"


def _global(top) -> dict:
    d = top.defaults
    types = {name: (_r(t.mass), _r(t.charge), _r(t.sigma), _r(t.epsilon))
             for name, t in top.parameterset.atom_types.items()}
    return dict(defaults=(d.nbfunc, d.comb_rule, d.gen_pairs, _r(d.fudgeLJ), _r(d.fudgeQQ)),
                combining_rule=top.combining_rule, atomtypes=types, n_atoms=len(top.atoms))


def check(ours_path: str, ref_path: str) -> int:
    """Compare two topologies term by term; print a JSON line; 0 if equivalent, 1 if not, 2 if one
    of them cannot be read."""
    try:
        (to, mo, xo, co), (tr, mr, xr, cr) = _load(ours_path), _load(ref_path)
    except Exception as exc:  # noqa: BLE001  (ParmEd's parse errors have no common base)
        print(json.dumps({"equivalent": False, "error": f"{type(exc).__name__}: {exc}"}))
        return 2
    summary: dict = {"equivalent": True}
    diffs = []
    go, gr = _global(to), _global(tr)
    for key in go:
        d = _first_diff(go[key], gr[key])
        if d is not None:
            diffs.append(f"{key}: {d}")
    if mo != mr:
        diffs.append(f"[molecules]: ours {mo}, reference {mr}")
    summary["molecules"] = mo
    summary["atoms_total"] = len(to.atoms)
    keys = ("atoms", "bonds", "angles", "dihedrals", "impropers", "exclusions", "effective_exclusions", "other")
    # one description per moleculetype (its first copy) and the totals over the whole system
    pos_o = pos_r = 0
    seen = set()
    for (name, count), (name_r, count_r) in zip(mo, mr):
        n_o = len(co.get(name, ()))
        n_r = len(cr.get(name_r, ()))
        if name not in seen:
            seen.add(name)
            if xo.get(name) != xr.get(name_r):
                diffs.append(f"{name} nrexcl: {xo.get(name)} vs {xr.get(name_r)}")
            if co.get(name) != cr.get(name_r):
                diffs.append(f"{name} cgnr: {_first_diff(co.get(name, []), cr.get(name_r, []))}")
            do = _describe(to, pos_o, pos_o + n_o, to.molecules[name][0], xo[name])
            dr = _describe(tr, pos_r, pos_r + n_r, tr.molecules[name_r][0], xr[name_r])
            for key in keys:
                d = _first_diff(do[key], dr[key])
                if d is not None:
                    diffs.append(f"{name} {key}: {d}")
            summary[name] = {k: (sum(do[k].values()) if isinstance(do[k], collections.Counter) else len(do[k]))
                             for k in keys if k != "other"} | {"nrexcl": xo[name], "other_terms": do["other"]}
        pos_o += n_o * count
        pos_r += n_r * count_r
    whole_o = _describe(to, 0, len(to.atoms))
    whole_r = _describe(tr, 0, len(tr.atoms))
    for key in ("atoms", "bonds", "angles", "dihedrals", "impropers"):
        d = _first_diff(whole_o[key], whole_r[key])
        if d is not None:
            diffs.append(f"whole system {key}: {d}")
    summary["system"] = {k: (sum(whole_o[k].values()) if isinstance(whole_o[k], collections.Counter)
                             else len(whole_o[k])) for k in ("bonds", "angles", "dihedrals", "impropers",
                                                               )}
    if diffs:
        summary["equivalent"] = False
        summary["n_differences"] = len(diffs)
        summary["first_difference"] = diffs[0]
    print(json.dumps(summary, default=str))
    return 1 if diffs else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write topol.top into (created if needed)")
    ap.add_argument("--chains", type=int, default=36, help="number of chains (default 36)")
    ap.add_argument("--monomers", type=int, default=10, help="styrene units per chain (default 10, >= 2)")
    ap.add_argument("--check", metavar="REFERENCE_TOP",
                    help="compare the written topology with this one term by term (ParmEd); exit 1 on a "
                         "difference, 2 if one cannot be read")
    args = ap.parse_args(argv)
    if args.chains < 1:
        ap.error("--chains must be >= 1")
    if args.monomers < 2:
        ap.error("--monomers must be >= 2")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "topol.top")
    text = render(args.chains, args.monomers)
    with open(path, "w", encoding="ascii", newline="\n") as fh:
        fh.write(text)
    print(f"wrote {path}", file=sys.stderr)
    if args.check:
        return check(path, args.check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
