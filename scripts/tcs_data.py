#!/usr/bin/env python3
"""tcs_data.py -- helper for scripts/make_tcs_data.sh (tetracosane, C24H50, AA OPLS-AA and Martini 2).

Sub-commands (all outputs deterministic; no random numbers are drawn here):

  build-aa   OUTDIR            one all-trans C24H50 molecule: tcs.gro (internal geometry from the
                               OPLS-AA equilibrium values b0/theta0), tcs.itp (moleculetype TCS, one
                               residue TCS, atoms C1..C24 and H<i>A/B/C, OPLS types opls_135/136/140),
                               tcs.xml (VOTCA mapping onto 6 C1 beads, mass weights)
  build-cg   OUTDIR            tcs_martini.itp (Martini 2 C1 parameters, 6 beads B1..B6) and
                               martini_c1.itp ([ defaults ] + C1 atom type + C1-C1 LJ)
  map-gro    AA.gro NMOL OUT.gro   map an AA .gro (molecules whole or broken: minimum-image unwrap
                               along the chain) to the 6-bead resolution (mass-weighted), keeping box
  stats      --aa-tpr --aa-xtc | --cg-tpr --cg-xtc ...   chain statistics at the Martini resolution
                               (see `stats --help`), prints JSON

The molecule and mapping conventions are documented in data/tcs/*/README.md (written by the script).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

NC = 24                 # carbons
CPB = 4                 # carbons per Martini bead
NB = NC // CPB          # 6 beads
M_C, M_H = 12.011, 1.008
# OPLS-AA (oplsaa.ff/ffbonded.itp) equilibrium values: CT-CT 0.1529 nm, CT-HC 0.109 nm,
# CT-CT-CT 112.7, CT-CT-HC 110.7, HC-CT-HC 107.8 deg
B_CC, B_CH = 0.1529, 0.1090
A_CCC, A_CCH, A_HCH = 112.7, 110.7, 107.8

# Martini 2 (Marrink et al., J. Phys. Chem. B 111, 7812 (2007)): C1 bead, alkane bonded parameters
MARTINI_MASS = 72.0
MARTINI_SIGMA, MARTINI_EPS = 0.47, 3.5
MARTINI_B0, MARTINI_KB = 0.47, 1250.0
MARTINI_THETA0, MARTINI_KTHETA = 180.0, 25.0


def h_names(i: int) -> list[str]:
    """Hydrogen names on carbon i (1-based): H<i>A, H<i>B (+ H<i>C on the methyls)."""
    n = 3 if i in (1, NC) else 2
    return [f"H{i}{c}" for c in "ABC"[:n]]


def atoms_list() -> list[tuple[str, int]]:
    """(name, carbon index) in topology order: C1 H1A H1B H1C C2 H2A H2B ... C24 H24A H24B H24C."""
    out = []
    for i in range(1, NC + 1):
        out.append((f"C{i}", i))
        out += [(h, i) for h in h_names(i)]
    return out


def _unit(v):
    return v / np.linalg.norm(v)


def build_coords() -> np.ndarray:
    """All-trans zig-zag in the xy plane, hydrogens at the OPLS angles (nm)."""
    half = math.radians(A_CCC) / 2
    # successive C-C bonds alternate between directions at +-(90 - half) deg from y... use x as axis
    c = [np.zeros(3)]
    for i in range(1, NC):
        sgn = 1 if i % 2 else -1
        d = np.array([math.sin(half), sgn * math.cos(half), 0.0])
        c.append(c[-1] + B_CC * d)
    c = np.array(c)
    xyz = []
    a_hch = math.radians(A_HCH)
    for i in range(NC):
        xyz.append(c[i])
        if 0 < i < NC - 1:
            u1, u2 = _unit(c[i - 1] - c[i]), _unit(c[i + 1] - c[i])
            b = -_unit(u1 + u2)
            n = _unit(np.cross(u1, u2))
            for s in (1, -1):
                xyz.append(c[i] + B_CH * (math.cos(a_hch / 2) * b + s * math.sin(a_hch / 2) * n))
        else:
            j = 1 if i == 0 else NC - 2
            ax = _unit(c[i] - c[j])                 # along the terminal C-C bond, outwards
            k = 2 if i == 0 else NC - 3
            ref = c[k] - c[j]                       # in-plane reference: anti to the next bond
            perp = _unit(ref - ref.dot(ax) * ax)
            perp2 = np.cross(ax, perp)
            t = math.radians(180.0 - A_CCH)
            for phi in (180.0, 60.0, -60.0):        # staggered: one H anti to C(k)
                p = math.radians(phi)
                d = math.cos(t) * ax + math.sin(t) * (math.cos(p) * perp + math.sin(p) * perp2)
                xyz.append(c[i] + B_CH * d)
    xyz = np.array(xyz)
    return xyz - xyz.mean(0)


def bonds_list():
    names = atoms_list()
    idx = {n: k + 1 for k, (n, _) in enumerate(names)}
    bonds = []
    for i in range(1, NC + 1):
        if i > 1:
            bonds.append((idx[f"C{i - 1}"], idx[f"C{i}"]))
        bonds += [(idx[f"C{i}"], idx[h]) for h in h_names(i)]
    return sorted(tuple(sorted(b)) for b in bonds)


def graph_terms(nat: int, bonds):
    nb = {k: set() for k in range(1, nat + 1)}
    for a, b in bonds:
        nb[a].add(b)
        nb[b].add(a)
    angles = sorted({(min(a, c), j, max(a, c)) for j in nb for a in nb[j] for c in nb[j] if a != c})
    dih = set()
    for j, k in bonds:
        for i in nb[j] - {k}:
            for l in nb[k] - {j}:
                if i != l:
                    t = (i, j, k, l)
                    dih.add(t if t < t[::-1] else t[::-1])
    dih = sorted(dih)
    # 1-4 pairs (no rings here, so every dihedral end pair is a distinct 1-4 pair)
    pairs = sorted({tuple(sorted((d[0], d[3]))) for d in dih})
    return angles, dih, pairs


def write_aa(outdir: Path):
    outdir.mkdir(parents=True, exist_ok=True)
    names = atoms_list()
    xyz = build_coords()
    nat = len(names)
    with open(outdir / "tcs.gro", "w") as f:
        f.write("tetracosane C24H50, all-trans, OPLS-AA equilibrium geometry (scripts/tcs_data.py)\n")
        f.write(f"{nat:5d}\n")
        for k, ((n, _), r) in enumerate(zip(names, xyz)):
            f.write(f"{1:5d}{'TCS':<5s}{n:>5s}{k + 1:5d}{r[0]:8.3f}{r[1]:8.3f}{r[2]:8.3f}\n")
        f.write(f"{5.0:10.5f}{5.0:10.5f}{5.0:10.5f}\n")
    bonds = bonds_list()
    angles, dih, pairs = graph_terms(nat, bonds)
    L = ["; tetracosane (n-C24H50), OPLS-AA (oplsaa.ff atom types as in tests/data/hexane/topol.top:",
         "; opls_135 CH3 carbon, opls_136 CH2 carbon, opls_140 alkane H). Bonded parameters are looked",
         "; up by grompp from oplsaa.ff/ffbonded.itp (CT-CT, CT-HC, ... ; RB dihedrals).",
         "; Written by scripts/tcs_data.py build-aa.", "",
         "[ moleculetype ]", "; name  nrexcl", "TCS     3", "", "[ atoms ]",
         ";  nr  type      resnr res  atom  cgnr  charge    mass"]
    qtot = 0.0
    for k, (n, ci) in enumerate(names):
        if n.startswith("C"):
            typ, q, m = ("opls_135", -0.18, M_C) if ci in (1, NC) else ("opls_136", -0.12, M_C)
        else:
            typ, q, m = "opls_140", 0.06, M_H
        qtot += q
        L.append(f"{k + 1:5d}  {typ:<8s} 1  TCS  {n:<5s} {ci:4d}  {q:7.3f}  {m:7.3f}   ; qtot {qtot:+.2f}")
    L += ["", "[ bonds ]", ";  ai    aj funct"] + [f"{a:5d} {b:5d}  1" for a, b in bonds]
    L += ["", "[ pairs ]", ";  ai    aj funct"] + [f"{a:5d} {b:5d}  1" for a, b in pairs]
    L += ["", "[ angles ]", ";  ai    aj    ak funct"] + [f"{a:5d} {b:5d} {c:5d}  1" for a, b, c in angles]
    L += ["", "[ dihedrals ]", ";  ai    aj    ak    al funct"] + \
        [f"{a:5d} {b:5d} {c:5d} {d:5d}  3" for a, b, c, d in dih]
    (outdir / "tcs.itp").write_text("\n".join(L) + "\n")
    write_mapping(outdir / "tcs.xml")
    print(f"{nat} atoms, {len(bonds)} bonds, {len(pairs)} pairs, {len(angles)} angles, {len(dih)} dihedrals")


def write_mapping(path: Path):
    beads, maps = [], []
    for b in range(NB):
        members, w = [], []
        for i in range(b * CPB + 1, (b + 1) * CPB + 1):
            members.append(f"1:TCS:C{i}")
            w.append(f"{M_C:g}")
        for i in range(b * CPB + 1, (b + 1) * CPB + 1):
            for h in h_names(i):
                members.append(f"1:TCS:{h}")
                w.append(f"{M_H:g}")
        mp = "end" if b in (0, NB - 1) else "mid"
        beads.append(f"""      <cg_bead>
        <name>B{b + 1}</name>
        <type>C1</type>
        <mapping>{mp}</mapping>
        <beads>{' '.join(members)}</beads>
      </cg_bead>""")
        if b in (0, 1):
            maps.append(f"""    <map>
      <name>{mp}</name>
      <weights>{' '.join(w)}</weights>
    </map>""")
    bonds = "\n".join(f"        B{i + 1} B{i + 2}" for i in range(NB - 1))
    angles = "\n".join(f"        B{i + 1} B{i + 2} B{i + 3}" for i in range(NB - 2))
    xml = f"""<cg_molecule>
  <!--
    Tetracosane (n-C24H50, moleculetype TCS of data/tcs/aa/topol.top, one residue TCS; atoms C1..C24,
    hydrogens H<i>A/H<i>B(/H<i>C) on carbon i) at the Martini 2 resolution: 6 C1 beads B1..B6, bead k
    = carbons 4k-3..4k with their hydrogens, mass-weighted (C {M_C:g}, H {M_H:g}, the topology masses).
    End beads (C4H9) map "end", inner beads (C4H8) "mid". Written by scripts/tcs_data.py.
  -->
  <name>TCS</name>
  <ident>TCS</ident>
  <topology>
    <cg_beads>
{chr(10).join(beads)}
    </cg_beads>
    <cg_bonded>
      <bond>
        <name>bond</name>
        <beads>
{bonds}
        </beads>
      </bond>
      <angle>
        <name>angle</name>
        <beads>
{angles}
        </beads>
      </angle>
    </cg_bonded>
  </topology>
  <maps>
{chr(10).join(maps)}
  </maps>
</cg_molecule>
"""
    path.write_text(xml)


def write_cg(outdir: Path):
    outdir.mkdir(parents=True, exist_ok=True)
    c6 = 4 * MARTINI_EPS * MARTINI_SIGMA ** 6
    c12 = 4 * MARTINI_EPS * MARTINI_SIGMA ** 12
    (outdir / "martini_c1.itp").write_text(f"""; Martini 2 force field, only what tetracosane needs: the C1 bead type.
; Values from Marrink et al., J. Phys. Chem. B 111, 7812 (2007) (Martini 2.0; unchanged in 2.1/2.2):
; C1 mass {MARTINI_MASS:g}, LJ sigma {MARTINI_SIGMA} nm, epsilon(C1-C1) {MARTINI_EPS} kJ/mol (interaction level IV).
; Written by scripts/tcs_data.py build-cg (not copied from the Martini web site).
[ defaults ]
; nbfunc comb-rule gen-pairs fudgeLJ fudgeQQ
  1       1         no        1.0     1.0

[ atomtypes ]
; name  mass    charge ptype  c6            c12
  C1   {MARTINI_MASS:7.3f}  0.000  A   0.0  0.0

[ nonbond_params ]
; i  j  funct  c6 = 4 eps sigma^6    c12 = 4 eps sigma^12
  C1 C1  1     {c6:.6E}  {c12:.6E}
""")
    L = ["; tetracosane (n-C24H50) in Martini 2: 6 C1 beads, each 4 carbons with their hydrogens",
         f"; (bead k = C(4k-3)..C(4k)). Bonds b0 {MARTINI_B0} nm, k {MARTINI_KB:g} kJ/mol/nm^2; angles (GROMACS type 2,",
         f"; cosine-harmonic as in all Martini 2 topologies) theta0 {MARTINI_THETA0:g} deg, k {MARTINI_KTHETA:g} kJ/mol;",
         "; nrexcl 1 (Martini standard: only bonded neighbours excluded). Written by scripts/tcs_data.py.",
         "", "[ moleculetype ]", "; name nrexcl", "TCS    1", "", "[ atoms ]",
         "; nr type resnr res  atom cgnr charge  mass"]
    for b in range(NB):
        L.append(f"  {b + 1}  C1   1     TCS  B{b + 1}   {b + 1}    0.0   {MARTINI_MASS:g}")
    L += ["", "[ bonds ]", "; i j funct b0 kb"]
    L += [f"  {i + 1} {i + 2}  1  {MARTINI_B0}  {MARTINI_KB:g}" for i in range(NB - 1)]
    L += ["", "[ angles ]", "; i j k funct theta0 ktheta"]
    L += [f"  {i + 1} {i + 2} {i + 3}  2  {MARTINI_THETA0:g}  {MARTINI_KTHETA:g}" for i in range(NB - 2)]
    (outdir / "tcs_martini.itp").write_text("\n".join(L) + "\n")


def aa_weights():
    """(n_atoms_per_molecule,) bead index and mass of each atom in topology order."""
    names = atoms_list()
    bead = np.array([(ci - 1) // CPB for _, ci in names])
    mass = np.array([M_C if n.startswith("C") else M_H for n, _ in names])
    return bead, mass


def unwrap_chain(x: np.ndarray, box: np.ndarray, order: np.ndarray) -> np.ndarray:
    """x: (nmol, napm, 3); unwrap along the bonded path `order` (parent index per atom, -1 = root)
    with the minimum image in an orthorhombic box."""
    y = x.copy()
    for a in range(x.shape[1]):
        p = order[a]
        if p < 0:
            continue
        d = y[:, a] - y[:, p]
        d -= box * np.round(d / box)
        y[:, a] = y[:, p] + d
    return y


def aa_parent():
    names = atoms_list()
    idx = {n: k for k, (n, _) in enumerate(names)}
    parent = np.full(len(names), -1)
    for k, (n, ci) in enumerate(names):
        if n == "C1":
            continue
        parent[k] = idx[f"C{ci - 1}"] if n.startswith("C") else idx[f"C{ci}"]
    return parent


def map_aa_positions(x: np.ndarray, box: np.ndarray) -> np.ndarray:
    """x: (nmol*74, 3) -> (nmol*6, 3) bead positions (whole molecules, minimum image unwrap)."""
    bead, mass = aa_weights()
    napm = len(bead)
    xm = unwrap_chain(x.reshape(-1, napm, 3), box, aa_parent())
    W = np.zeros((NB, napm))
    W[bead, np.arange(napm)] = mass
    W /= W.sum(1, keepdims=True)
    return np.einsum("ba,mai->mbi", W, xm).reshape(-1, 3)


def read_gro(path):
    lines = Path(path).read_text().splitlines()
    n = int(lines[1])
    x = np.array([[float(l[20:28]), float(l[28:36]), float(l[36:44])] for l in lines[2:2 + n]])
    box = np.array([float(v) for v in lines[2 + n].split()[:3]])
    return x, box


def map_gro(aa_gro, nmol, out):
    x, box = read_gro(aa_gro)
    napm = len(atoms_list())
    assert x.shape[0] == nmol * napm, (x.shape, nmol)
    b = map_aa_positions(x, box)
    b -= box * np.floor(b / box)    # put bead positions into the box (molecules may be split: fine for grompp)
    with open(out, "w") as f:
        f.write(f"tetracosane Martini 6-bead, mapped (mass-weighted) from {Path(aa_gro).name}\n{len(b):5d}\n")
        for k, r in enumerate(b):
            m, j = divmod(k, NB)
            f.write(f"{(m + 1) % 100000:5d}{'TCS':<5s}{'B' + str(j + 1):>5s}{(k + 1) % 100000:5d}"
                    f"{r[0]:8.3f}{r[1]:8.3f}{r[2]:8.3f}\n")
        f.write(f"{box[0]:10.5f}{box[1]:10.5f}{box[2]:10.5f}\n")


# ------------------------------------------------------------------ statistics
def linking_dihedrals(x: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(nmol, 5) dihedral (deg) C(4k-1)-C(4k)-C(4k+1)-C(4k+2) about the C-C bond that links bead k to k+1."""
    napm = len(atoms_list())
    xm = unwrap_chain(x.reshape(-1, napm, 3), box, aa_parent())
    names = [n for n, _ in atoms_list()]
    ci = [names.index(f"C{i}") for i in range(1, NC + 1)]
    C = xm[:, ci]                                       # (nmol, 24, 3)
    out = []
    for k in range(1, NB):
        a, b, c, d = (C[:, 4 * k - 2], C[:, 4 * k - 1], C[:, 4 * k], C[:, 4 * k + 1])
        b0, b1, b2 = b - a, c - b, d - c
        n1, n2 = np.cross(b0, b1), np.cross(b1, b2)
        m1 = np.cross(n1, b1 / np.linalg.norm(b1, axis=-1, keepdims=True))
        out.append(np.degrees(np.arctan2((m1 * n2).sum(-1), (n1 * n2).sum(-1))))
    return np.stack(out, axis=1)


def bead_traj(top, traj, kind, frames=slice(None), dihedrals=None):
    """Return (T, nmol, 6, 3) whole-molecule bead positions in nm and the list of box lengths.
    kind "aa": if `dihedrals` is a list, the linking dihedrals of each frame are appended to it."""
    import MDAnalysis as mda
    u = mda.Universe(top, traj)
    out, boxes = [], []
    for ts in u.trajectory[frames]:
        x = ts.positions.astype(float) / 10.0
        box = ts.dimensions[:3].astype(float) / 10.0
        if kind == "aa":
            b = map_aa_positions(x, box).reshape(-1, NB, 3)
            if dihedrals is not None:
                dihedrals.append(linking_dihedrals(x, box))
        else:
            par = np.arange(-1, NB - 1)
            b = unwrap_chain(x.reshape(-1, NB, 3), box, par)
        out.append(b)
        boxes.append(box)
    return np.array(out), np.array(boxes)


def hist_peaks(v, lo, hi, nbins, smooth=5, min_frac=0.3):
    h, e = np.histogram(v, bins=nbins, range=(lo, hi), density=True)
    if smooth > 1:
        k = np.ones(smooth) / smooth
        h = np.convolve(h, k, mode="same")
    c = 0.5 * (e[1:] + e[:-1])
    pk = [i for i in range(1, len(h) - 1) if h[i] >= h[i - 1] and h[i] > h[i + 1] and h[i] >= min_frac * h.max()]
    return [round(float(c[i]), 4) for i in pk], h, c


def chain_stats(B):
    """B: (T, nmol, 6, 3) whole chains. Returns dict of Martini-resolution statistics."""
    bv = B[:, :, 1:] - B[:, :, :-1]
    bl = np.linalg.norm(bv, axis=-1).ravel()
    u1, u2 = -bv[:, :, :-1], bv[:, :, 1:]
    cos = (u1 * u2).sum(-1) / np.linalg.norm(u1, axis=-1) / np.linalg.norm(u2, axis=-1)
    ang = np.degrees(np.arccos(np.clip(cos, -1, 1))).ravel()
    re2 = (np.linalg.norm(B[:, :, -1] - B[:, :, 0], axis=-1) ** 2)
    com = B.mean(2, keepdims=True)
    rg2 = ((B - com) ** 2).sum(-1).mean(-1)
    bpk, _, _ = hist_peaks(bl, 0.3, 0.7, 80)
    apk, _, _ = hist_peaks(ang, 60, 180, 60)
    return {
        "frames": int(B.shape[0]), "molecules": int(B.shape[1]),
        "bond_mean_nm": round(float(bl.mean()), 4), "bond_std_nm": round(float(bl.std()), 4),
        "bond_peaks_nm": bpk,
        "angle_mean_deg": round(float(ang.mean()), 2), "angle_std_deg": round(float(ang.std()), 2),
        "angle_peaks_deg": apk,
        "Re_rms_nm": round(float(np.sqrt(re2.mean())), 4), "Rg_rms_nm": round(float(np.sqrt(rg2.mean())), 4),
        # standard errors from block averages over 4 blocks of frames (molecule average per frame)
        "Re_rms_blocks_nm": [round(float(np.sqrt(b.mean())), 4) for b in np.array_split(re2.mean(1), 4) if len(b)],
        "Rg_rms_blocks_nm": [round(float(np.sqrt(b.mean())), 4) for b in np.array_split(rg2.mean(1), 4) if len(b)],
    }


def cmd_stats(a):
    fr = slice(a.start, None, a.step)
    dih = [] if a.kind == "aa" else None
    B, boxes = bead_traj(a.top, a.traj, a.kind, fr, dih)
    s = chain_stats(B)
    s["kind"] = a.kind
    if dih:
        # the CG bond length is set mostly by the torsion about the C-C bond linking the two beads:
        # trans (|phi| > 120 deg) gives the long (~0.50 nm), gauche the short (~0.45 nm) population
        phi = np.abs(np.concatenate(dih).ravel())
        bl = np.linalg.norm(B[:, :, 1:] - B[:, :, :-1], axis=-1).ravel()
        tr = phi > 120
        s["linking_torsion"] = {
            "trans_fraction": round(float(tr.mean()), 4),
            "bond_mean_trans_nm": round(float(bl[tr].mean()), 4), "bond_std_trans_nm": round(float(bl[tr].std()), 4),
            "bond_mean_gauche_nm": round(float(bl[~tr].mean()), 4), "bond_std_gauche_nm": round(float(bl[~tr].std()), 4),
        }
    if a.hist:
        bl = np.linalg.norm(B[:, :, 1:] - B[:, :, :-1], axis=-1).ravel()
        h, e = np.histogram(bl, bins=80, range=(0.3, 0.7), density=True)
        np.savetxt(a.hist, np.c_[0.5 * (e[1:] + e[:-1]), h], fmt="%.5f", header="bond length (nm)  density")
    print(json.dumps(s))


def cmd_table(path):
    """Markdown table of the chain statistics in stats.json (written by make_tcs_data.sh)."""
    s = json.loads(Path(path).read_text())
    a, c, d = s["aa_mapped"], s["martini"], s["density_g_cm3"]

    def fmt(v):
        return ", ".join(f"{x:g}" for x in v) if isinstance(v, list) else f"{v:g}"

    rows = [("density (g/cm³), NPT second half", f"{d['aa_npt_second_half']:.4f} (AA)",
             f"{d['martini_npt_second_half_bead_mass72']:.4f} (bead mass 72); "
             f"{d['martini_npt_second_half_bead_mass72'] * 338.664 / 432:.4f} as C24H50"),
            ("frames × molecules", f"{a['frames']} × {a['molecules']}", f"{c['frames']} × {c['molecules']}")]
    for key, label in [("bond_mean_nm", "bond length mean (nm)"), ("bond_std_nm", "bond length std (nm)"),
                       ("bond_peaks_nm", "bond length peaks (nm)"), ("angle_mean_deg", "angle mean (°)"),
                       ("angle_std_deg", "angle std (°)"), ("angle_peaks_deg", "angle peaks (°)"),
                       ("Re_rms_nm", "⟨R_e²⟩^½ (nm)"), ("Re_rms_blocks_nm", "⟨R_e²⟩^½ in 4 blocks (nm)"),
                       ("Rg_rms_nm", "⟨R_g²⟩^½ (nm)"), ("Rg_rms_blocks_nm", "⟨R_g²⟩^½ in 4 blocks (nm)")]:
        rows.append((label, fmt(a[key]), fmt(c[key])))
    if "linking_torsion" in a:
        lt = a["linking_torsion"]
        rows.insert(5, ("bond length by the torsion about the linking C–C bond (AA only)",
                        f"trans ({100 * lt['trans_fraction']:.0f} %): {lt['bond_mean_trans_nm']:g} ± "
                        f"{lt['bond_std_trans_nm']:g}; gauche: {lt['bond_mean_gauche_nm']:g} ± {lt['bond_std_gauche_nm']:g}",
                        "–"))
    out = ["| quantity | AA mapped to 6 beads | Martini 2 |", "|---|---|---|"]
    out += [f"| {r[0]} | {r[1]} | {r[2]} |" for r in rows]
    print("\n".join(out))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = p.add_subparsers(dest="cmd", required=True)
    s = sp.add_parser("build-aa"); s.add_argument("outdir", type=Path)
    s = sp.add_parser("build-cg"); s.add_argument("outdir", type=Path)
    s = sp.add_parser("map-gro"); s.add_argument("gro"); s.add_argument("nmol", type=int); s.add_argument("out")
    s = sp.add_parser("table"); s.add_argument("stats_json")
    s = sp.add_parser("stats", help="chain statistics at the 6-bead resolution, JSON on stdout")
    s.add_argument("kind", choices=["aa", "cg"], help="aa: map the AA trajectory first; cg: Martini beads")
    s.add_argument("top"); s.add_argument("traj")
    s.add_argument("--start", type=int, default=0, help="first frame")
    s.add_argument("--step", type=int, default=1)
    s.add_argument("--hist", help="write the bond-length histogram here")
    a = p.parse_args(argv)
    if a.cmd == "build-aa":
        write_aa(a.outdir)
    elif a.cmd == "build-cg":
        write_cg(a.outdir)
    elif a.cmd == "map-gro":
        map_gro(a.gro, a.nmol, a.out)
    elif a.cmd == "table":
        cmd_table(a.stats_json)
    else:
        cmd_stats(a)


if __name__ == "__main__":
    main()
