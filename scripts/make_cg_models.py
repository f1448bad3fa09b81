#!/usr/bin/env python3
"""make_cg_models.py -- build coarse-grained (CG) force fields and CG MD trajectories with VOTCA + LAMMPS.

Two systems (see the wrappers scripts/make_sps_cg_models.sh and scripts/make_hexane_cg_models.sh):

  sps     syndiotactic polystyrene melt, 568 K, 36 chains x 20 beads (B backbone, S phenyl); three models
          after Stieffenhofer 2022 (thesis ch. 6, table 6.2) that share the same IBI pair potentials:
            A  bonds held at the reference mean (stiff harmonic, sigma ~0.0015 nm) + angles + both dihedrals
            B  Boltzmann-inverted (BI) bonds + angles + both dihedrals          (IBI was run with these)
            C  BI bonds + angles, no dihedrals
  hexane  n-hexane liquid, 300 K, 200 molecules x 3 beads (A1 B A2); two models:
            good  BI bond + BI angle + IBI pair potentials
            poor  BI bond, no angle potential, pair potentials = first IBI guess -kT ln g(r) (no iterations)

Pipeline (all in a scratch directory; results are written to temp names and renamed):
  1. CG topology: GROMACS .top -> .tpr (gmx grompp) so that VOTCA can read molecules/bead names; identity
     ("UNITY") mapping XMLs: one whose <cg_bonded> lists the non-bonded exclusions (all bead pairs within
     two bonds, exactly what LAMMPS `special_bonds lj 0 0 1` excludes), one with the real bonded terms.
  2. Reference distributions with csg_stat (RDFs with those exclusions -> IBI targets; bonded histograms).
  3. Bonded potentials: Boltzmann inversion of the csg_stat histograms in numpy (Jacobian r^2 / sin(theta),
     Gaussian smoothing, extrapolation where unsampled), written as LAMMPS bond/angle/dihedral tables.
  4. Pair potentials: csg_inverse (method ibi, program lammps) with the reference-mapped first frame as start.
  5. Production runs of each model (LAMMPS, Langevin NVT, fixed seeds, 1 thread); dump -> .xtc (nm).
  6. Analysis: bonded mean/sd and RDFs vs reference (summary.json), plot, README.md.

Units: VOTCA works in nm, kJ/mol, radians; LAMMPS runs in `units real` (Angstrom, kcal/mol, fs, degrees).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KB = 0.0083144626  # kJ/mol/K
KJ2KCAL = 1.0 / 4.184
NM2A = 10.0
REPO = Path(__file__).resolve().parent.parent

T0 = time.time()
TIMINGS: dict[str, float] = {}


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


class Timer:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.t = time.time()
        log(f"start: {self.name}")

    def __exit__(self, *exc):
        dt = time.time() - self.t
        TIMINGS[self.name] = TIMINGS.get(self.name, 0.0) + dt
        if exc[0] is None:
            log(f"done:  {self.name} ({dt:.1f} s)")


def run(cmd, cwd, logname, env=None, stdin=None):
    """Run cmd in cwd, output to cwd/logname; on failure show the tail and raise."""
    cwd = Path(cwd)
    logf = cwd / logname
    with open(cwd / "commands.log", "a") as fh:
        fh.write("$ " + " ".join(map(str, cmd)) + "\n")
    with open(logf, "w") as out:
        p = subprocess.run(list(map(str, cmd)), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                           env=env, input=stdin, text=True if stdin is not None else None)
    if p.returncode != 0:
        tail = logf.read_text(errors="replace").splitlines()[-40:]
        sys.stderr.write("\n".join(tail) + "\n")
        raise SystemExit(f"error: command failed ({p.returncode}): {' '.join(map(str, cmd))} (log {logf})")
    return logf


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def check_tools(tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"error: required program(s) not found: {', '.join(missing)}\n"
                         "       install them, e.g.  apt-get install lammps votca gromacs")


# ================================================================================================
# system definitions
# ================================================================================================
@dataclass
class System:
    name: str
    temp: float
    molname: str
    bead_names: list[str]            # per molecule
    bead_types: list[str]            # per molecule
    type_mass: dict[str, float]      # bead type -> mass (u)
    n_mol: int
    bonds: dict[str, list[tuple]]    # interaction name -> local index tuples (per molecule)
    angles: dict[str, list[tuple]]
    dihedrals: dict[str, list[tuple]]
    start_gro: Path
    ref_traj: Path
    cutoff: float                    # nm
    # histogram grids (nm / degrees): name -> (lo, hi, step)
    grids: dict[str, tuple] = field(default_factory=dict)
    # LAMMPS table ranges for bonds (nm)
    bond_table_range: dict[str, tuple] = field(default_factory=dict)
    # angle name -> (theta_w deg, k kJ/mol/deg^2, theta_d deg, A kJ/mol), applied to the LAMMPS tables:
    #   U += k/2 (theta - theta_w)^2 for theta > theta_w  +  A (1/sin^2 theta - 1/sin^2 theta_d) for theta > theta_d
    #   (the second, restricted-bending-like term diverges at 180 deg; capped at 179.75 deg in the table)
    angle_walls: dict[str, tuple] = field(default_factory=dict)
    # non-bonded exclusions: bead pairs of a molecule within this many bonds (LAMMPS special_bonds)
    nrexcl: int = 2
    # IBI update: scale factor of the potential update, VOTCA "smooth" post-update iterations (0 = none)
    ibi_scale: float = 1.0
    ibi_smooth: int = 0

    @property
    def types(self):
        return sorted(self.type_mass)

    @property
    def kT(self):
        return KB * self.temp

    def pair_names(self):
        t = self.types
        return [(t[i], t[j]) for i in range(len(t)) for j in range(i, len(t))]

    def exclusion_pairs(self, maxdist=None):
        """Local index pairs within `maxdist` bonds (bond graph), like LAMMPS special_bonds 1-2, 1-3."""
        maxdist = self.nrexcl if maxdist is None else maxdist
        n = len(self.bead_names)
        adj = {i: set() for i in range(n)}
        for lst in self.bonds.values():
            for i, j in lst:
                adj[i].add(j)
                adj[j].add(i)
        out = {1: [], 2: [], 3: []}
        for s in range(n):
            dist = {s: 0}
            q = deque([s])
            while q:
                v = q.popleft()
                for w in adj[v]:
                    if w not in dist:
                        dist[w] = dist[v] + 1
                        q.append(w)
            for t, d in dist.items():
                if t > s and 1 <= d <= maxdist:
                    out[d].append((s, t))
        return out


def sps_system(args) -> System:
    d = Path(args.sps_dir)
    names, types, bonds_bb, bonds_bs, bbb, sbs, bbbb, bsbs = [], [], [], [], [], [], [], []
    B = lambda k: 2 * (k - 1)          # noqa: E731  B(k), k = 1..10
    S = lambda k: 2 * (k - 1) + 1      # noqa: E731
    for k in range(1, 11):
        names += [f"B{k}", f"S{k}"]
        types += ["B", "S"]
    for k in range(1, 10):
        bonds_bb.append((B(k), B(k + 1)))
    for k in range(1, 11):
        bonds_bs.append((B(k), S(k)))
    for k in range(1, 10):
        bonds_bs.append((S(k), B(k + 1)))
    for k in range(1, 9):
        bbb.append((B(k), B(k + 1), B(k + 2)))
    for k in range(1, 10):
        sbs.append((S(k), B(k + 1), S(k + 1)))
    for k in range(1, 8):
        bbbb.append((B(k), B(k + 1), B(k + 2), B(k + 3)))
    for k in range(1, 10):
        bsbs.append((B(k), S(k), B(k + 1), S(k + 1)))
    return System(
        name="sps", temp=568.0, molname="PS1", bead_names=names, bead_types=types,
        type_mass={"B": 27.046, "S": 77.106}, n_mol=36,
        bonds={"BB": bonds_bb, "BS": bonds_bs}, angles={"BBB": bbb, "SBS": sbs},
        dihedrals={"BBBB": bbbb, "BSBS": bsbs},
        start_gro=d / "cg.gro", ref_traj=d / "cg.xtc", cutoff=1.2,
        grids={"BB": (0.15, 0.35, 0.001), "BS": (0.25, 0.48, 0.001),
               "BBB": (0.0, 180.0, 1.0), "SBS": (0.0, 180.0, 1.0),
               "BBBB": (-180.0, 180.0, 3.0), "BSBS": (-180.0, 180.0, 3.0)},
        bond_table_range={"BB": (0.08, 0.50), "BS": (0.10, 0.70)},
        # dihedral forces diverge when an adjacent angle reaches 180 deg (1/sin theta); without these walls
        # the BBBB dihedral blows up LAMMPS within ~1000 steps (LAMMPS 2021 here has no dihedral table/cut)
        angle_walls={"BBB": (177.0, 5.0, 175.0, 0.01), "SBS": (165.0, 5.0, 0.0, 0.0)},
        # exclude pairs within 3 bonds (as the reference's ps_excl.tpr, nrexcl = 3): with only 1-2/1-3
        # excluded, the sharp intramolecular B(k)-B(k+3) RDF peak (set by the BBBB dihedral) made IBI oscillate
        nrexcl=3, ibi_scale=0.5, ibi_smooth=1,
    )


def hexane_system(args, mapped_gro: Path, mapped_xtc: Path) -> System:
    return System(
        name="hexane", temp=300.0, molname="HEX", bead_names=["A1", "B", "A2"], bead_types=["A", "B", "A"],
        # OPLS-AA masses: A = CH3-CH2 (C2H5), B = CH2-CH2 (C2H4)
        type_mass={"A": 2 * 12.011 + 5 * 1.008, "B": 2 * 12.011 + 4 * 1.008}, n_mol=200,
        bonds={"bond": [(0, 1), (2, 1)]}, angles={"angle": [(0, 1, 2)]}, dihedrals={},
        start_gro=mapped_gro, ref_traj=mapped_xtc, cutoff=1.2,
        grids={"bond": (0.15, 0.40, 0.001), "angle": (0.0, 180.0, 1.0)},
        bond_table_range={"bond": (0.10, 0.55)},
    )


# ================================================================================================
# topology / mapping / LAMMPS data
# ================================================================================================
def write_gmx_top(sysm: System, path: Path):
    lines = ["; CG topology written by scripts/make_cg_models.py (only used so that VOTCA can read",
             "; molecules and bead names from a .tpr; no interactions are defined here)",
             "[ defaults ]", "1 1 no 1.0 1.0", "", "[ atomtypes ]"]
    for t, m in sysm.type_mass.items():
        lines.append(f"{t:4s} {m:10.4f} 0.0 A 0.0 0.0")
    lines += ["", "[ moleculetype ]", f"{sysm.molname} 1", "", "[ atoms ]"]
    for i, (n, t) in enumerate(zip(sysm.bead_names, sysm.bead_types), 1):
        lines.append(f"{i:5d} {t:4s} 1 {sysm.molname} {n:5s} {i:5d} 0.0 {sysm.type_mass[t]:10.4f}")
    lines += ["", "[ system ]", f"CG {sysm.name}", "", "[ molecules ]", f"{sysm.molname} {sysm.n_mol}", ""]
    path.write_text("\n".join(lines))


def make_tpr(sysm: System, work: Path) -> Path:
    write_gmx_top(sysm, work / "cg.top")
    (work / "cg.mdp").write_text(
        "; dummy run parameters, only to build cg.tpr for VOTCA\nintegrator = md\nnsteps = 0\n"
        "cutoff-scheme = Verlet\npbc = xyz\ncoulombtype = Cut-off\n"
        f"rcoulomb = {sysm.cutoff}\nrvdw = {sysm.cutoff}\n")
    shutil.copyfile(sysm.start_gro, work / "cg_start.gro")
    env = dict(os.environ, GMX_MAXBACKUP="-1")
    run(["gmx", "grompp", "-f", "cg.mdp", "-c", "cg_start.gro", "-p", "cg.top", "-o", "cg.tpr",
         "-po", "cg.mdout.mdp", "-maxwarn", "5"], work, "grompp_cg.log", env=env)
    return work / "cg.tpr"


def write_mapping(sysm: System, path: Path, bonded: dict[str, tuple[str, list[tuple]]], comment: str):
    """Identity (UNITY) mapping of the CG topology onto itself; `bonded`: name -> (kind, tuples)."""
    L = [f"<cg_molecule>\n  <!-- {comment} -->", f"  <name>{sysm.molname}</name>",
         f"  <ident>{sysm.molname}</ident>", "  <topology>", "    <cg_beads>"]
    for n, t in zip(sysm.bead_names, sysm.bead_types):
        L += ["      <cg_bead>", f"        <name>{n}</name>", f"        <type>{t}</type>",
              "        <mapping>UNITY</mapping>", f"        <beads>1:{sysm.molname}:{n}</beads>",
              "      </cg_bead>"]
    L += ["    </cg_beads>", "    <cg_bonded>"]
    for name, (kind, tuples) in bonded.items():
        L += [f"      <{kind}>", f"        <name>{name}</name>", "        <beads>"]
        for tup in tuples:
            L.append("          " + " ".join(sysm.bead_names[i] for i in tup))
        L += ["        </beads>", f"      </{kind}>"]
    L += ["    </cg_bonded>", "  </topology>", "  <maps>", "    <map>", "      <name>UNITY</name>",
          "      <weights>1</weights>", "    </map>", "  </maps>", "</cg_molecule>", ""]
    path.write_text("\n".join(L))


def gro_box_to_lammps(dims):
    """MDAnalysis dimensions (A, deg) -> (lx, ly, lz, xy, xz, yz) in Angstrom (restricted triclinic)."""
    from MDAnalysis.lib.mdamath import triclinic_vectors
    v = triclinic_vectors(dims)
    return v[0][0], v[1][1], v[2][2], v[1][0], v[2][0], v[2][1]


def write_lammps_data(sysm: System, path: Path, with_dihedrals=True):
    """LAMMPS data file (atom_style molecular, Angstrom) from the start frame, wrapped into the cell."""
    import MDAnalysis as mda
    from MDAnalysis.lib.mdamath import triclinic_vectors
    u = mda.Universe(str(sysm.start_gro))
    nb = len(sysm.bead_names)
    assert u.atoms.n_atoms == nb * sysm.n_mol, "bead count mismatch"
    assert list(u.atoms.names[:nb]) == sysm.bead_names, f"bead names {u.atoms.names[:nb]} != {sysm.bead_names}"
    box = u.dimensions
    h = triclinic_vectors(box)  # rows a, b, c
    frac = u.atoms.positions @ np.linalg.inv(h)
    frac -= np.floor(frac)
    pos = frac @ h
    lx, ly, lz, xy, xz, yz = gro_box_to_lammps(box)
    types = sysm.types
    btypes = list(sysm.bonds)
    atypes = list(sysm.angles)
    dtypes = list(sysm.dihedrals) if with_dihedrals else []
    nbond = sum(len(v) for v in sysm.bonds.values()) * sysm.n_mol
    nang = sum(len(v) for v in sysm.angles.values()) * sysm.n_mol
    ndih = sum(len(sysm.dihedrals[k]) for k in dtypes) * sysm.n_mol
    L = [f"LAMMPS data file: CG {sysm.name}, start = {sysm.start_gro.name} (make_cg_models.py)", "",
         f"{u.atoms.n_atoms} atoms", f"{len(types)} atom types", f"{nbond} bonds", f"{len(btypes)} bond types",
         f"{nang} angles", f"{len(atypes)} angle types"]
    if dtypes:
        L += [f"{ndih} dihedrals", f"{len(dtypes)} dihedral types"]
    L += ["", f"0.0 {lx:.6f} xlo xhi", f"0.0 {ly:.6f} ylo yhi", f"0.0 {lz:.6f} zlo zhi"]
    if abs(xy) + abs(xz) + abs(yz) > 0:
        L.append(f"{xy:.6f} {xz:.6f} {yz:.6f} xy xz yz")
    L += ["", "Masses", ""]
    for i, t in enumerate(types, 1):
        L.append(f"{i} {sysm.type_mass[t]:.4f}  # {t}")
    L += ["", "Atoms  # molecular", ""]
    for a in range(u.atoms.n_atoms):
        m, loc = divmod(a, nb)
        t = types.index(sysm.bead_types[loc]) + 1
        L.append(f"{a + 1} {m + 1} {t} {pos[a, 0]:.5f} {pos[a, 1]:.5f} {pos[a, 2]:.5f}")
    for sec, kinds, defs in (("Bonds", btypes, sysm.bonds), ("Angles", atypes, sysm.angles),
                             ("Dihedrals", dtypes, sysm.dihedrals)):
        if not kinds:
            continue
        L += ["", sec, ""]
        c = 0
        for m in range(sysm.n_mol):
            for ti, k in enumerate(kinds, 1):
                for tup in defs[k]:
                    c += 1
                    L.append(f"{c} {ti} " + " ".join(str(m * nb + i + 1) for i in tup))
    L.append("")
    path.write_text("\n".join(L))
    return dict(lx=lx, ly=ly, lz=lz, xy=xy, xz=xz, yz=yz)


# ================================================================================================
# VOTCA settings
# ================================================================================================
def pairname(t1, t2):
    return f"{t1}-{t2}"


def votca_nonbonded_xml(sysm: System, ibi: bool):
    L = []
    for t1, t2 in sysm.pair_names():
        n = pairname(t1, t2)
        L += ["  <non-bonded>", f"    <name>{n}</name>", f"    <type1>{t1}</type1>", f"    <type2>{t2}</type2>",
              "    <min>0.0</min>", f"    <max>{sysm.cutoff}</max>", "    <step>0.01</step>"]
        if ibi:
            L += ["    <inverse>", f"      <target>{n}.dist.tgt</target>",
                  "      <post_add>convergence</post_add>"]
            pu = (["scale"] if sysm.ibi_scale != 1.0 else []) + (["smooth"] if sysm.ibi_smooth else [])
            if pu:
                L += [f"      <post_update>{' '.join(pu)}</post_update>", "      <post_update_options>"]
                if sysm.ibi_scale != 1.0:
                    L.append(f"        <scale>{sysm.ibi_scale}</scale>")
                if sysm.ibi_smooth:
                    L.append(f"        <smooth><iterations>{sysm.ibi_smooth}</iterations></smooth>")
                L.append("      </post_update_options>")
            L += [
                  "      <lammps>", f"        <table>{t1}_{t2}.pot</table>",
                  "        <scale>10</scale>           <!-- nm -> Angstrom -->",
                  f"        <y_scale>{KJ2KCAL:.6f}</y_scale>  <!-- kJ/mol -> kcal/mol -->",
                  "        <table_begin>0.1</table_begin>", "        <table_bins>0.002</table_bins>",
                  "      </lammps>", "    </inverse>"]
        L.append("  </non-bonded>")
    return L


def votca_bonded_xml(sysm: System):
    L = []
    for name in list(sysm.bonds) + list(sysm.angles) + list(sysm.dihedrals):
        lo, hi, st = sysm.grids[name]
        if name in sysm.bonds:
            L += ["  <bonded>", f"    <name>{name}</name>", f"    <min>{lo}</min>", f"    <max>{hi}</max>",
                  f"    <step>{st}</step>", "  </bonded>"]
        else:  # radians
            r = math.pi / 180
            L += ["  <bonded>", f"    <name>{name}</name>", f"    <min>{lo * r:.8f}</min>", f"    <max>{hi * r:.8f}</max>",
                  f"    <step>{st * r:.8f}</step>", "  </bonded>"]
    return L


# ================================================================================================
# Boltzmann inversion (numpy) of csg_stat histograms
# ================================================================================================
def read_votca_table(path: Path):
    rows = []
    for line in path.read_text().splitlines():
        s = line.split()
        if not s or s[0].startswith(("#", "@")):
            continue
        rows.append([float(s[0]), float(s[1])])
    a = np.array(rows)
    return a[:, 0], a[:, 1]


def gaussian_smooth(y, sigma_bins, periodic=False):
    from scipy.ndimage import gaussian_filter1d
    return gaussian_filter1d(y, sigma_bins, mode="wrap" if periodic else "nearest")


def boltzmann_invert(x, hist, kind, kT, nsamples, smooth_bins=1.5, min_count=5.0):
    """x: bin centres (nm or degrees), hist: histogram (any normalisation), kind: bond|angle|dihedral.
    Returns (x, U) with U in kJ/mol, min(U) = 0, extrapolated where fewer than min_count samples."""
    x = np.asarray(x, float)
    p = np.clip(np.asarray(hist, float), 0, None)
    counts = p / p.sum() * nsamples
    periodic = kind == "dihedral"
    cs = gaussian_smooth(counts, smooth_bins, periodic)
    if kind == "bond":
        jac = x ** 2
    elif kind == "angle":
        jac = np.sin(np.radians(np.clip(x, 0.25, 179.75)))
    else:
        jac = np.ones_like(x)
    if periodic:
        U = -kT * np.log((cs + 0.5) / jac)          # everything "sampled" (pseudo-count for empty bins)
        U -= U.min()
        return x, U
    ok = cs >= min_count
    # largest contiguous sampled block containing the maximum
    imax = int(np.argmax(cs))
    lo = imax
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    hi = imax
    while hi < len(x) - 1 and ok[hi + 1]:
        hi += 1
    U = np.full_like(x, np.nan)
    U[lo:hi + 1] = -kT * np.log(cs[lo:hi + 1] / jac[lo:hi + 1])
    xs, Us = x[lo:hi + 1], U[lo:hi + 1]
    # harmonic fit of the sampled part -> curvature for extrapolation
    w = cs[lo:hi + 1]
    mean = np.sum(w * xs) / w.sum()
    var = np.sum(w * (xs - mean) ** 2) / w.sum()
    k = kT / var
    dx = x[1] - x[0]
    nedge = 3
    # left extrapolation
    if lo > 0:
        slope = (Us[nedge] - Us[0]) / (nedge * dx)        # dU/dx at the left edge (should be < 0)
        s_out = max(-slope, 0.0)                          # outward slope (growth to the left)
        d = x[lo] - x[:lo]
        U[:lo] = Us[0] + s_out * d + 0.5 * k * d ** 2
    if hi < len(x) - 1:
        slope = (Us[-1] - Us[-1 - nedge]) / (nedge * dx)
        s_out = max(slope, 0.0)
        d = x[hi + 1:] - x[hi]
        U[hi + 1:] = Us[-1] + s_out * d + 0.5 * k * d ** 2
    U -= np.nanmin(U)
    return x, U


def resample(xsrc, ysrc, xnew, periodic_deg=False):
    if periodic_deg:
        xs = np.concatenate([xsrc - 360, xsrc, xsrc + 360])
        ys = np.concatenate([ysrc, ysrc, ysrc])
        return np.interp(xnew, xs, ys)
    # linear interpolation inside, quadratic continuation outside via the last two points' slope
    y = np.interp(xnew, xsrc, ysrc)
    for side in (0, 1):
        if side == 0:
            m = xnew < xsrc[0]
            s = (ysrc[1] - ysrc[0]) / (xsrc[1] - xsrc[0])
            y[m] = ysrc[0] + s * (xnew[m] - xsrc[0])
        else:
            m = xnew > xsrc[-1]
            s = (ysrc[-1] - ysrc[-2]) / (xsrc[-1] - xsrc[-2])
            y[m] = ysrc[-1] + s * (xnew[m] - xsrc[-1])
    return y


def _write_force_table(fh, key, x, E, comment=""):
    """A LAMMPS bond/angle table: index, x, energy, force −dE/dx (kcal/mol per x unit)."""
    F = -np.gradient(E, x)
    fh.write(f"# {comment}\n{key}\nN {len(x)}\n\n")
    for i, (a, b, c) in enumerate(zip(x, E, F), 1):
        fh.write(f"{i} {a:.6f} {b:.8e} {c:.8e}\n")
    fh.write("\n")


def write_bond_table(fh, key, r_nm, U_kj, comment=""):
    _write_force_table(fh, key, r_nm * NM2A, U_kj * KJ2KCAL, comment)


def write_angle_table(fh, key, th_deg, U_kj, comment=""):
    # kcal/mol/degree: LAMMPS' angle table convention
    _write_force_table(fh, key, th_deg, U_kj * KJ2KCAL, comment)


def write_dihedral_table(fh, key, phi_deg, U_kj, comment=""):
    E = U_kj * KJ2KCAL
    fh.write(f"# {comment}\n{key}\nN {len(phi_deg)} DEGREES NOF\n\n")
    for i, (a, b) in enumerate(zip(phi_deg, E), 1):
        fh.write(f"{i} {a:.6f} {b:.8e}\n")
    fh.write("\n")


def bonded_potentials(sysm: System, work: Path, nframes: int):
    """BI of csg_stat's bonded histograms -> tables (LAMMPS units) and potentials in VOTCA units."""
    pots = {}
    counts = {}
    for kind, defs in (("bond", sysm.bonds), ("angle", sysm.angles), ("dihedral", sysm.dihedrals)):
        for name, tuples in defs.items():
            x, h = read_votca_table(work / "ref" / f"{name}.dist.new")
            if kind != "bond":
                x = np.degrees(x)
            if kind == "dihedral" and abs(x[-1] - x[0] - 360) < 1e-6:
                h = h.copy()
                h[0] += h[-1]
                x, h = x[:-1], h[:-1]
            ns = len(tuples) * sysm.n_mol * nframes
            counts[name] = ns
            pots[name] = (kind,) + boltzmann_invert(x, h, kind, sysm.kT, ns,
                                                    smooth_bins=2.0 if kind == "dihedral" else 1.5)
    return pots


def write_bonded_tables(sysm: System, pots, path: Path):
    with open(path, "w") as fh:
        fh.write(f"# Boltzmann-inverted bonded tables, CG {sysm.name} at {sysm.temp} K (make_cg_models.py)\n"
                 "# units real: Angstrom, degrees, kcal/mol\n\n")
        for name, (kind, x, U) in pots.items():
            if kind == "bond":
                lo, hi = sysm.bond_table_range[name]
                r = np.linspace(lo, hi, int(round((hi - lo) / 0.0005)) + 1)
                write_bond_table(fh, name, r, resample(x, U, r), f"bond {name}")
            elif kind == "angle":
                th = np.linspace(0, 180, 361)
                Ut = resample(x, U, th)
                if name in sysm.angle_walls:
                    tw, kw, td, A = sysm.angle_walls[name]
                    Ut += np.where(th > tw, 0.5 * kw * (th - tw) ** 2, 0.0)
                    if A > 0:
                        sn = np.sin(np.radians(np.clip(th, 0.25, 179.75)))
                        Ut += np.where(th > td, A * (1 / sn ** 2 - 1 / np.sin(np.radians(td)) ** 2), 0.0)
                write_angle_table(fh, name, th, Ut, f"angle {name}")
            else:
                ph = np.arange(-180.0, 180.0, 1.0)
                write_dihedral_table(fh, name, ph, resample(x, U, ph, periodic_deg=True), f"dihedral {name}")


# ================================================================================================
# LAMMPS input
# ================================================================================================
@dataclass
class Model:
    name: str
    bond: str            # "table" | "stiff"
    angle: bool
    dihedral: bool
    dt: float            # fs
    pair_dir: str        # key of the pair potential set ("ibi" | "guess")


def lammps_input(sysm: System, model: Model, *, data="start.data", bonded="bonded.table", pair_tables: dict,
                 seed: int, equil_steps: int, prod_steps: int, dump_every: int, dump="traj.dump",
                 extra_dump: tuple | None = None, ref_means: dict | None = None, stiff_sigma=0.0015,
                 thermo=1000, damp=100.0):
    types = sysm.types
    L = [f"# CG {sysm.name}, model {model.name} -- written by scripts/make_cg_models.py",
         "units           real", "atom_style      molecular", "boundary        p p p",
         f"read_data       {data}", "",
         f"# non-bonded exclusions: pairs within {sysm.nrexcl} bonds (bond graph); the VOTCA mapping lists the same",
         "special_bonds   lj 0.0 0.0 " + ("0.0" if sysm.nrexcl >= 3 else "1.0"), "",
         "pair_style      table linear 2000"]
    for t1, t2 in sysm.pair_names():
        i, j = types.index(t1) + 1, types.index(t2) + 1
        L.append(f"pair_coeff      {i} {j} {pair_tables[(t1, t2)]} VOTCA {sysm.cutoff * NM2A:.2f}")
    L.append("")
    if model.bond == "table":
        L.append("bond_style      table linear 2000")
        for bi, name in enumerate(sysm.bonds, 1):
            L.append(f"bond_coeff      {bi} {bonded} {name}")
    else:
        kT_kcal = sysm.kT * KJ2KCAL
        K = kT_kcal / (2 * (stiff_sigma * NM2A) ** 2)     # E = K (r - r0)^2  -> sigma = sqrt(kT / 2K)
        L.append(f"# stiff harmonic bonds at the reference mean, sigma = {stiff_sigma} nm (stand-in for constraints)")
        L.append("bond_style      harmonic")
        for bi, name in enumerate(sysm.bonds, 1):
            L.append(f"bond_coeff      {bi} {K:.3f} {ref_means[name] * NM2A:.5f}")
    if sysm.angles:
        if model.angle:
            L.append("angle_style     table linear 2000")
            for ai, name in enumerate(sysm.angles, 1):
                L.append(f"angle_coeff     {ai} {bonded} {name}")
        else:
            L += ["angle_style     zero", "angle_coeff     *"]
    if sysm.dihedrals:
        if model.dihedral:
            L.append("dihedral_style  table linear 1000")
            for di, name in enumerate(sysm.dihedrals, 1):
                L.append(f"dihedral_coeff  {di} {bonded} {name}")
        else:
            L += ["dihedral_style  zero", "dihedral_coeff  *"]
    L += ["", "neighbor        2.0 bin", "neigh_modify    every 1 delay 0 check yes", "",
          f"timestep        {model.dt}",
          f"velocity        all create {sysm.temp} {seed} dist gaussian mom yes rot no",
          "fix             integrate all nve",
          f"fix             thermostat all langevin {sysm.temp} {sysm.temp} {damp} {seed + 1} zero yes",
          "thermo_style    custom step temp pe ke ebond eangle edihed evdwl press",
          f"thermo          {thermo}", "",
          f"run             {equil_steps}", "",
          f"dump            traj all custom {dump_every} {dump} id type x y z",
          "dump_modify     traj sort id"]
    if extra_dump:
        every, fname = extra_dump
        L += [f"dump            extra all custom {every} {fname} id mol type x y z",
              "dump_modify     extra sort id format line \"%d %d %d %.3f %.3f %.3f\""]
    L += [f"run             {prod_steps}", ""]
    return "\n".join(L)


# ================================================================================================
# geometry analysis (numpy / MDAnalysis, minimum image)
# ================================================================================================
def global_index(sysm: System, tuples):
    nb = len(sysm.bead_names)
    a = np.array(tuples)
    return np.concatenate([a + m * nb for m in range(sysm.n_mol)])


def bonded_samples(sysm: System, universe, every=1):
    from MDAnalysis.lib.distances import calc_angles, calc_bonds, calc_dihedrals
    out = {n: [] for n in list(sysm.bonds) + list(sysm.angles) + list(sysm.dihedrals)}
    idx = {n: global_index(sysm, t) for d in (sysm.bonds, sysm.angles, sysm.dihedrals) for n, t in d.items()}
    for ts in universe.trajectory[::every]:
        x = universe.atoms.positions
        box = ts.dimensions
        for n in sysm.bonds:
            a = idx[n]
            out[n].append(calc_bonds(x[a[:, 0]], x[a[:, 1]], box) / NM2A)
        for n in sysm.angles:
            a = idx[n]
            out[n].append(np.degrees(calc_angles(x[a[:, 0]], x[a[:, 1]], x[a[:, 2]], box)))
        for n in sysm.dihedrals:
            a = idx[n]
            out[n].append(np.degrees(calc_dihedrals(x[a[:, 0]], x[a[:, 1]], x[a[:, 2]], x[a[:, 3]], box)))
    return {k: np.concatenate(v) for k, v in out.items()}


def rdfs(sysm: System, universe, rmax, dr=0.01):
    """Pair RDFs (nm) with the non-bonded exclusions (pairs within 2 bonds in the same molecule)."""
    from MDAnalysis.lib.distances import distance_array
    nb = len(sysm.bead_names)
    n = universe.atoms.n_atoms
    mol = np.arange(n) // nb
    loc = np.arange(n) % nb
    excl = np.zeros((nb, nb), bool)
    for lst in sysm.exclusion_pairs().values():
        for i, j in lst:
            excl[i, j] = excl[j, i] = True
    np.fill_diagonal(excl, True)
    types = np.array([sysm.bead_types[i] for i in loc])
    edges = np.arange(0, rmax + dr / 2, dr)
    res = {p: np.zeros(len(edges) - 1) for p in sysm.pair_names()}
    vol = 0.0
    nf = 0
    for ts in universe.trajectory:
        x = universe.atoms.positions
        d = distance_array(x, x, box=ts.dimensions) / NM2A
        same = mol[:, None] == mol[None, :]
        bad = same & excl[loc[:, None], loc[None, :]]
        for (t1, t2) in res:
            i1 = np.where(types == t1)[0]
            i2 = np.where(types == t2)[0]
            sub = d[np.ix_(i1, i2)]
            m = ~bad[np.ix_(i1, i2)]
            if t1 == t2:
                m &= np.triu(np.ones_like(m), 1).astype(bool)
            h, _ = np.histogram(sub[m], bins=edges)
            res[(t1, t2)] += h
        vol += ts.volume / 1000.0
        nf += 1
    V = vol / nf
    r = 0.5 * (edges[1:] + edges[:-1])
    shell = 4 / 3 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    out = {}
    for (t1, t2), h in res.items():
        n1 = int(np.sum(types == t1))
        n2 = int(np.sum(types == t2))
        npairs = n1 * (n1 - 1) / 2 if t1 == t2 else n1 * n2
        out[pairname(t1, t2)] = h / nf / (npairs / V * shell)
    return r, out


def hist_overlap(a, b, lo, hi, nbins=90):
    ha, _ = np.histogram(a, bins=nbins, range=(lo, hi))
    hb, _ = np.histogram(b, bins=nbins, range=(lo, hi))
    ha = ha / max(ha.sum(), 1)
    hb = hb / max(hb.sum(), 1)
    return float(np.minimum(ha, hb).sum())


# ================================================================================================
# trajectory conversion
# ================================================================================================
def dump_to_xtc(sysm: System, dump: Path, xtc: Path, dt_ps: float, topology: Path):
    import MDAnalysis as mda
    u_top = mda.Universe(str(topology))
    u = mda.Universe(str(topology), str(dump), format="LAMMPSDUMP", dt=dt_ps)
    assert u.atoms.n_atoms == u_top.atoms.n_atoms
    tmp = xtc.with_name(xtc.stem + ".tmp.xtc")
    with mda.Writer(str(tmp), u.atoms.n_atoms, precision=3) as w:
        for i, ts in enumerate(u.trajectory):
            ts.time = i * dt_ps
            w.write(u.atoms)
    os.replace(tmp, xtc)
    return len(u.trajectory)


def verify_xtc(sysm: System, xtc: Path, topology: Path, ref_box):
    import MDAnalysis as mda
    u = mda.Universe(str(topology), str(xtc))
    assert u.atoms.n_atoms == len(sysm.bead_names) * sysm.n_mol
    worst = 0.0
    maxbond = 0.0
    samples = bonded_samples(sysm, u)
    for n in sysm.bonds:
        maxbond = max(maxbond, float(samples[n].max()))
    for ts in u.trajectory:
        worst = max(worst, float(np.abs(ts.dimensions - ref_box).max()))
    return dict(frames=len(u.trajectory), atoms=u.atoms.n_atoms, max_box_dev=worst, max_bond_nm=maxbond)


# ================================================================================================
# IBI with csg_inverse
# ================================================================================================
def ibi_settings_xml(sysm: System, iterations: int, script: str, files: list[str]):
    L = ["<cg>", "  <!-- written by scripts/make_cg_models.py -->"]
    L += votca_nonbonded_xml(sysm, ibi=True)
    L += ["  <inverse>", f"    <kBT>{sysm.kT:.5f}</kBT>", "    <program>lammps</program>",
          "    <map>excl.xml</map>   <!-- identity mapping whose bonded section = the exclusions -->",
          "    <simulation><tasks>1</tasks></simulation>",
          "    <lammps>",
          "      <!-- run_lammps.sh = lmp + conversion of the (triclinic) dump to traj.xtc, because VOTCA 2022.1's",
          "           LAMMPS dump reader rejects triclinic box bounds -->",
          "      <command>bash run_lammps.sh</command>",
          f"      <opts>-in {script} -log lammps.log -screen none</opts>",
          f"      <script>{script}</script>", "      <topol>cg.tpr</topol>", "      <traj>traj.xtc</traj>",
          "    </lammps>", "    <initial_configuration>maindir</initial_configuration>",
          f"    <filelist>{' '.join(files)}</filelist>",
          f"    <iterations_max>{iterations}</iterations_max>", "    <method>ibi</method>",
          "    <log_file>inverse.log</log_file>", "    <restart_file>restart_points.log</restart_file>",
          "  </inverse>", "</cg>", ""]
    return "\n".join(L)


def rdf_deviation(r, g, gt, rmin=0.0):
    m = r >= rmin
    return float(np.sqrt(np.mean((g[m] - gt[m]) ** 2)))


def ibi_history(sysm: System, ibi_dir: Path):
    """RMS deviation g - g_target per pair and iteration (step_001 ...)."""
    hist = []
    for step in sorted(ibi_dir.glob("step_[0-9][0-9][0-9]")):
        k = int(step.name[5:])
        if k == 0:
            continue
        row = {"iteration": k}
        okk = True
        for t1, t2 in sysm.pair_names():
            n = pairname(t1, t2)
            f = step / f"{n}.dist.new"
            if not f.exists():
                okk = False
                break
            r, g = read_votca_table(f)
            rt, gt = read_votca_table(ibi_dir / f"{n}.dist.tgt")
            row[n] = rdf_deviation(r, g, np.interp(r, rt, gt))
        if okk:
            hist.append(row)
    return hist


def clean_target(src: Path, dst: Path, gmin=1e-4):
    """Zero the sparse, noisy onset of a target RDF (isolated counts at short r separated by empty bins):
    g is kept only from the smallest r from which g > gmin everywhere up to the cut-off.
    (VOTCA's initial Boltzmann inversion refuses RDFs with empty bins inside the sampled range.)"""
    rows = [line.split() for line in src.read_text().splitlines() if line.strip() and line[0] not in "#@"]
    g = np.array([float(r[1]) for r in rows])
    bad = np.where(g <= gmin)[0]
    start = bad[-1] + 1 if len(bad) else 0
    out = []
    for i, r in enumerate(rows):
        val = float(r[1]) if i >= start else 0.0
        out.append(f"{r[0]} {val:.10g} {r[2] if len(r) > 2 else 'i'}")
    dst.write_text(f"# {src.name} cleaned by make_cg_models.py: g = 0 for r < {rows[start][0]} nm\n" + "\n".join(out) + "\n")


def run_ibi(sysm: System, work: Path, model: Model, iterations: int, run_ps: float, equil_ps: float,
            seed: int, pots, dump_ps=0.5):
    ibi = work / "ibi"
    if (ibi / "done").exists():
        log("IBI already done in this work directory, reusing it")
        return ibi
    resume = ibi.exists() and (ibi / "restart_points.log").exists()
    ibi.mkdir(exist_ok=True)
    for f in ("cg.tpr", "excl.xml", "start.data", "bonded.table", "cg_start.gro"):
        shutil.copyfile(work / f, ibi / f)
    (ibi / "run_lammps.sh").write_text(
        "#!/bin/bash\n# called by csg_inverse in each step directory: run LAMMPS, then dump -> xtc for csg_stat\n"
        "set -euo pipefail\nexport OMP_NUM_THREADS=1\n"
        "if ! lmp \"$@\"; then\n"
        "  # rare crash (bond out of table after a near-180 deg angle): retry once with half the time step\n"
        "  cp lammps.log lammps.failed.log\n"
        "  awk '$1==\"timestep\"{$2=$2/2} $1==\"run\"{$2=$2*2} $1==\"dump\"&&$2==\"traj\"{$5=$5*2} {print}' ibi.in > ibi.retry.in\n"
        "  mv ibi.retry.in ibi.in; rm -f traj.dump\n"
        "  echo \"retry with half time step in $PWD\" >> ../retries.log\n"
        "  lmp \"$@\"\n"
        "fi\n"
        f"{sys.executable} {Path(__file__).resolve()} dump2xtc traj.dump cg_start.gro traj.xtc\n")
    for t1, t2 in sysm.pair_names():
        n = pairname(t1, t2)
        clean_target(work / "ref" / f"{n}.dist.tgt", ibi / f"{n}.dist.tgt")
    nsteps = int(round(run_ps * 1000 / model.dt))
    neq = int(round(equil_ps * 1000 / model.dt))
    every = int(round(dump_ps * 1000 / model.dt))
    tables = {(t1, t2): f"{t1}_{t2}.pot" for t1, t2 in sysm.pair_names()}
    (ibi / "ibi.in").write_text(lammps_input(sysm, model, pair_tables=tables, seed=seed, equil_steps=neq,
                                             prod_steps=nsteps, dump_every=every, thermo=max(nsteps // 10, 1)))
    (ibi / "settings.xml").write_text(ibi_settings_xml(sysm, iterations, "ibi.in",
                                                       ["ibi.in", "start.data", "bonded.table", "cg.tpr",
                                                        "cg_start.gro", "run_lammps.sh"]))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = ["csg_inverse", "--options", "settings.xml"]
    log(f"csg_inverse ({'resuming' if resume else 'new'}), {iterations} iterations x ({equil_ps}+{run_ps}) ps, "
        f"log {ibi / 'inverse.log'}")
    run(cmd, ibi, "csg_inverse.out", env=env)
    (ibi / "done").write_text("ok\n")
    return ibi


# ================================================================================================
# reference statistics with csg_stat
# ================================================================================================
def reference_stats(sysm: System, work: Path):
    ref = work / "ref"
    ref.mkdir(exist_ok=True)
    for f in ("cg.tpr", "excl.xml", "bonded.xml"):
        shutil.copyfile(work / f, ref / f)
    (ref / "rdf.xml").write_text("\n".join(["<cg>"] + votca_nonbonded_xml(sysm, ibi=False) + ["</cg>", ""]))
    (ref / "bonded_opts.xml").write_text("\n".join(["<cg>"] + votca_bonded_xml(sysm) + ["</cg>", ""]))
    traj = ref / ("ref" + sysm.ref_traj.suffix)
    shutil.copyfile(sysm.ref_traj, traj)
    run(["csg_stat", "--top", "cg.tpr", "--trj", traj.name, "--cg", "excl.xml", "--options", "rdf.xml",
         "--ext", "dist.tgt", "--nt", "1"], ref, "csg_stat_rdf.log")
    run(["csg_stat", "--top", "cg.tpr", "--trj", traj.name, "--cg", "bonded.xml", "--options", "bonded_opts.xml",
         "--ext", "dist.new", "--nt", "1"], ref, "csg_stat_bonded.log")


# ================================================================================================
# main pipelines
# ================================================================================================
def common_setup(sysm: System, work: Path):
    make_tpr(sysm, work)
    ex = sysm.exclusion_pairs()
    write_mapping(sysm, work / "excl.xml",
                  {f"excl1{k + 1}": ("bond", ex[k]) for k in range(1, sysm.nrexcl + 1)},
                  "identity mapping; the bonded section only defines the non-bonded exclusions "
                  f"(all pairs within {sysm.nrexcl} bonds = LAMMPS special_bonds lj 0 0 "
                  f"{'0' if sysm.nrexcl >= 3 else '1'})")
    bonded = {n: ("bond", t) for n, t in sysm.bonds.items()}
    bonded.update({n: ("angle", t) for n, t in sysm.angles.items()})
    bonded.update({n: ("dihedral", t) for n, t in sysm.dihedrals.items()})
    write_mapping(sysm, work / "bonded.xml", bonded, "identity mapping with the CG bonded interactions")
    write_lammps_data(sysm, work / "start.data")


def lammps_version():
    try:
        p = subprocess.run(["lmp", "-h"], capture_output=True, text=True)
        for line in p.stdout.splitlines():
            if line.startswith("Large-scale") or "LAMMPS (" in line:
                return line.strip()
        for line in p.stdout.splitlines():
            if "version" in line.lower():
                return line.strip()
    except Exception:
        pass
    return "unknown"


def run_production(sysm: System, work: Path, model: Model, pair_tables: dict, seed: int, equil_ps: float,
                   nframes: int, every_ps: float, ref_means: dict, extra_dump=None, stiff_sigma=0.0015):
    d = work / f"prod_{model.name}"
    d.mkdir(exist_ok=True)
    shutil.copyfile(work / "start.data", d / "start.data")
    shutil.copyfile(work / "bonded.table", d / "bonded.table")
    local = {}
    for k, src in pair_tables.items():
        shutil.copyfile(src, d / src.name)
        local[k] = src.name
    every = int(round(every_ps * 1000 / model.dt))
    neq = int(round(equil_ps * 1000 / model.dt))
    nprod = every * (nframes - 1)
    (d / "in.lammps").write_text(lammps_input(sysm, model, pair_tables=local, seed=seed, equil_steps=neq,
                                              prod_steps=nprod, dump_every=every, dump="traj.lammpstrj",
                                              ref_means=ref_means, extra_dump=extra_dump,
                                              stiff_sigma=stiff_sigma, thermo=every))
    if (d / "done").exists():
        log(f"production {model.name} already done, reusing")
        return d
    t = time.time()
    log(f"LAMMPS production {model.name}: {neq} + {nprod} steps of {model.dt} fs in {d}")
    try:
        run(["lmp", "-in", "in.lammps", "-log", "lammps.log", "-screen", "none"], d, "lmp.out",
            env=dict(os.environ, OMP_NUM_THREADS="1"))
        (d / "dt_used").write_text(f"{model.dt}\n")
    except SystemExit:
        # rare crash: retry once with half the time step (same physical times and seeds)
        log(f"production {model.name} crashed; retrying with dt = {model.dt / 2} fs")
        shutil.copyfile(d / "lammps.log", d / "lammps.failed.log")
        m2 = Model(model.name, model.bond, model.angle, model.dihedral, model.dt / 2, model.pair_dir)
        (d / "in.lammps").write_text(lammps_input(sysm, m2, pair_tables=local, seed=seed, equil_steps=2 * neq,
                                                  prod_steps=2 * nprod, dump_every=2 * every, dump="traj.lammpstrj",
                                                  ref_means=ref_means, extra_dump=None if extra_dump is None else
                                                  (2 * extra_dump[0], extra_dump[1]),
                                                  stiff_sigma=stiff_sigma, thermo=2 * every))
        run(["lmp", "-in", "in.lammps", "-log", "lammps.log", "-screen", "none"], d, "lmp.out",
            env=dict(os.environ, OMP_NUM_THREADS="1"))
        (d / "dt_used").write_text(f"{m2.dt}\n")
    (d / "wall_s").write_text(f"{time.time() - t:.1f}\n")
    (d / "done").write_text("ok\n")
    return d


def thermo_temperature(logfile: Path, col=1):
    temps = []
    on = False
    for line in logfile.read_text().splitlines():
        s = line.split()
        if s[:2] == ["Step", "Temp"]:
            on = True
            continue
        if on:
            if s and s[0] == "Loop":
                on = False
                continue
            try:
                temps.append(float(s[col]))
            except (ValueError, IndexError):
                pass
    return float(np.mean(temps[len(temps) // 2:])) if temps else float("nan")


def summarize(sysm: System, models: dict, ref_u, universes: dict, work: Path):
    from MDAnalysis.lib.distances import calc_bonds  # noqa: F401 (import check)
    ref_s = bonded_samples(sysm, ref_u)
    r, ref_g = rdfs(sysm, ref_u, sysm.cutoff)
    summ = {"reference": {}, "models": {}}
    for n, v in ref_s.items():
        summ["reference"][n] = stats(n, v, sysm)
    allsamp = {"reference": ref_s}
    allg = {"reference": ref_g}
    for m, u in universes.items():
        s = bonded_samples(sysm, u)
        _, g = rdfs(sysm, u, sysm.cutoff)
        allsamp[m] = s
        allg[m] = g
        e = {}
        nfr = len(u.trajectory)
        for n, v in s.items():
            e[n] = stats(n, v, sysm)
            vv = np.abs(v) if n in sysm.dihedrals else v
            q = vv.reshape(nfr, -1).mean(1)
            e[n]["mean_by_quarter"] = [float(x.mean()) for x in np.array_split(q, 4)]
            lo, hi = hist_range(n, sysm)
            e[n]["overlap_with_reference"] = hist_overlap(v, ref_s[n], lo, hi)
        e["rdf_rms_deviation"] = {p: rdf_deviation(r, g[p], ref_g[p]) for p in g}
        summ["models"][m] = e
    return summ, allsamp, r, allg


def hist_range(n, sysm):
    if n in sysm.bonds:
        return sysm.grids[n][0], sysm.grids[n][1]
    if n in sysm.angles:
        return 0.0, 180.0
    return -180.0, 180.0


def stats(n, v, sysm):
    d = {"mean": float(np.mean(v)), "sd": float(np.std(v)), "n": int(len(v))}
    if n in sysm.dihedrals:   # signed dihedrals: report |phi| statistics too (BSBS is bimodal at +-phi)
        d["mean_abs"] = float(np.mean(np.abs(v)))
        d["sd_abs"] = float(np.std(np.abs(v)))
    return d


def plot(sysm: System, allsamp, r, allg, ibi_hist, path: Path, models_order):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(sysm.bonds) + list(sysm.angles) + list(sysm.dihedrals)
    panels = names + [pairname(*p) for p in sysm.pair_names()] + (["IBI"] if ibi_hist else [])
    ncol = 4 if len(panels) > 6 else 3
    nrow = int(math.ceil(len(panels) / ncol))
    fig, axs = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.1 * nrow))
    axs = np.atleast_1d(axs).ravel()
    colors = {"reference": "k"}
    cyc = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for i, m in enumerate(models_order):
        colors[m] = cyc[i % 4]
    for ax, p in zip(axs, panels):
        if p in names:
            lo, hi = hist_range(p, sysm)
            for m in ["reference"] + models_order:
                h, e = np.histogram(allsamp[m][p], bins=90 if p not in sysm.bonds else 100, range=(lo, hi), density=True)
                ax.plot(0.5 * (e[1:] + e[:-1]), h, color=colors[m], lw=2 if m == "reference" else 1.2, label=m)
            ax.set_xlabel(f"{p} ({'nm' if p in sysm.bonds else 'deg'})")
        elif p == "IBI":
            its = [h["iteration"] for h in ibi_hist]
            for q in sysm.pair_names():
                ax.plot(its, [h[pairname(*q)] for h in ibi_hist], marker="o", ms=3, label=pairname(*q))
            ax.set_yscale("log")
            ax.set_xlabel("IBI iteration")
            ax.set_ylabel("RMS(g - g_target)")
            ax.legend(fontsize=7)
            continue
        else:
            for m in ["reference"] + models_order:
                ax.plot(r, allg[m][p], color=colors[m], lw=2 if m == "reference" else 1.2, label=m)
            ax.set_xlabel(f"r (nm), g_{p}")
        ax.set_title(p, fontsize=9)
    axs[0].legend(fontsize=7)
    for ax in axs[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def final_timings(work: Path, ibi: Path, prod_names, parallel: bool):
    """Stage timings; stages reused from an earlier (resumed) run take their wall time from the files."""
    t = {k: round(v, 1) for k, v in TIMINGS.items()}
    steps = sorted(ibi.glob("step_[0-9][0-9][0-9]"))
    if len(steps) > 1:
        last = max(f.stat().st_mtime for f in steps[-1].glob("*.dist.new")) if list(steps[-1].glob("*.dist.new")) \
            else steps[-1].stat().st_mtime
        ibi_wall = last - steps[0].stat().st_mtime
        t["IBI (csg_inverse + LAMMPS)"] = round(max(t.get("IBI (csg_inverse + LAMMPS)", 0.0), ibi_wall), 1)
    walls = {m: float((work / f"prod_{m}" / "wall_s").read_text()) for m in prod_names}
    ends = {m: (work / f"prod_{m}" / "done").stat().st_mtime for m in prod_names}
    for m, w in walls.items():
        t[f"LAMMPS production {m}"] = round(w, 1)
    t = {k: v for k, v in t.items() if not k.startswith("production")}
    # wall time of the production phase (runs 2 at a time): first start to last end
    prod_total = (max(ends.values()) - min(ends[m] - walls[m] for m in prod_names)) if parallel \
        else sum(walls.values())
    if parallel:
        t["production phase (parallel)"] = round(prod_total, 1)
    other = sum(v for k, v in t.items() if not k.startswith(("LAMMPS production", "production phase")))
    t["total (stages; productions in parallel)" if parallel else "total"] = round(other + prod_total, 1)
    return t


def prepare_work(args, name):
    if args.workdir:
        work = Path(args.workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
        log(f"work directory (kept, resumable): {work}")
        return work, False
    work = Path(tempfile.mkdtemp(prefix=f"make_cg_models.{name}.", dir=os.environ.get("TMPDIR", "/tmp")))
    log(f"work directory: {work}")
    return work, True


def ref_means_from(samples, sysm):
    return {n: float(np.mean(samples[n])) for n in sysm.bonds}


# ------------------------------------------------------------------------------------------------
def main_sps(args):
    import MDAnalysis as mda
    check_tools(["lmp", "csg_stat", "csg_inverse", "gmx"])
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work, temp = prepare_work(args, "sps")
    sysm = sps_system(args)
    seed = args.seed
    # start = first frame of the mapped reference trajectory (positions AND box; the reference is NPT, so
    # every frame has its own box, and cg.gro is a different snapshot with a ~12 % smaller volume)
    u0 = mda.Universe(str(sysm.start_gro), str(sysm.ref_traj))
    u0.trajectory[0]
    u0.atoms.write(str(work / "start_frame0.gro"))
    sysm.start_gro = work / "start_frame0.gro"
    with Timer("setup (tpr, mappings, LAMMPS data)"):
        common_setup(sysm, work)
    with Timer("reference distributions (csg_stat)"):
        reference_stats(sysm, work)
    ref_u = mda.Universe(str(sysm.start_gro), str(sysm.ref_traj))
    nframes_ref = len(ref_u.trajectory)
    with Timer("Boltzmann inversion of bonded terms"):
        pots = bonded_potentials(sysm, work, nframes_ref)
        write_bonded_tables(sysm, pots, work / "bonded.table")
        ref_samples = bonded_samples(sysm, ref_u)
        ref_means = ref_means_from(ref_samples, sysm)
    models = {
        "A": Model("A", "stiff", True, True, args.dt_a, "ibi"),
        "B": Model("B", "table", True, True, args.dt, "ibi"),
        "C": Model("C", "table", True, False, args.dt_c, "ibi"),
    }
    with Timer("IBI (csg_inverse + LAMMPS)"):
        ibi = run_ibi(sysm, work, models["B"], args.iterations, args.ibi_ps, args.ibi_equil_ps, seed, pots)
    hist = ibi_history(sysm, ibi)
    last = sorted(ibi.glob("step_[0-9][0-9][0-9]"))
    # the last step whose simulation finished (it has the RDFs): its LAMMPS tables are the final pair potentials
    final = [s for s in last if all((s / f"{pairname(*p)}.dist.new").exists() for p in sysm.pair_names())][-1]
    log(f"final IBI potentials: {final.name} (RDF RMS deviation {hist[-1] if hist else '-'})")
    pair_tables = {p: final / f"{p[0]}_{p[1]}.pot" for p in sysm.pair_names()}
    universes = {}
    walls = {}
    from concurrent.futures import ThreadPoolExecutor
    with Timer(f"production runs A, B, C ({args.jobs} in parallel)"):
        with ThreadPoolExecutor(max_workers=args.jobs) as ex:
            futs = {m: ex.submit(run_production, sysm, work, models[m], pair_tables, seed + 10 * (ord(m) - 64),
                                 args.equil_ps, args.frames, args.every_ps, ref_means, None, args.stiff_sigma)
                    for m in ("A", "B", "C")}
            dirs = {m: f.result() for m, f in futs.items()}
    for m in ("A", "B", "C"):
        with Timer(f"convert model {m}"):
            d = dirs[m]
            walls[m] = float((d / "wall_s").read_text())
            n = dump_to_xtc(sysm, d / "traj.lammpstrj", d / f"{m}.xtc", args.every_ps, sysm.start_gro)
            log(f"model {m}: {n} frames, LAMMPS wall {walls[m]:.0f} s, "
                f"T = {thermo_temperature(d / 'lammps.log'):.1f} K")
            universes[m] = mda.Universe(str(sysm.start_gro), str(d / f"{m}.xtc"))
    with Timer("analysis"):
        summ, allsamp, r, allg = summarize(sysm, models, ref_u, universes, work)
        checks = {m: verify_xtc(sysm, work / f"prod_{m}" / f"{m}.xtc", sysm.start_gro, ref_u.dimensions)
                  for m in universes}
        summ["checks"] = checks
        summ["ibi"] = {"iterations": len(hist), "history": hist, "final_step": final.name,
                       "final_rdf_rms_deviation": hist[-1] if hist else None}
        summ["lammps_wall_s"] = walls
        summ["temperature_K"] = {m: thermo_temperature(work / f"prod_{m}" / "lammps.log") for m in universes}
        summ["pressure_atm"] = {m: thermo_temperature(work / f"prod_{m}" / "lammps.log", col=8) for m in universes}
        summ["settings"] = settings_dict(args, sysm, models)
        plot(sysm, allsamp, r, allg, hist, work / "cg_distributions.png", ["A", "B", "C"])
    # ---- outputs
    pot_dir = out / "potentials"
    pot_dir.mkdir(exist_ok=True)
    for m in ("A", "B", "C"):
        atomic_copy(work / f"prod_{m}" / f"{m}.xtc", out / f"{m}.xtc")
        atomic_copy(work / f"prod_{m}" / "in.lammps", pot_dir / f"in.{m}.lammps")
    atomic_copy(work / "prod_A" / "traj.lammpstrj", out / "A.lammpstrj")
    atomic_copy(work / "bonded.table", pot_dir / "bonded.table")
    atomic_copy(work / "start.data", pot_dir / "start.data")
    for p, f in pair_tables.items():
        atomic_copy(f, pot_dir / f.name)
    for f in ("excl.xml", "bonded.xml", "cg.top"):
        atomic_copy(work / f, pot_dir / f)
    atomic_copy(ibi / "settings.xml", pot_dir / "ibi_settings.xml")
    atomic_copy(ibi / "ibi.in", pot_dir / "ibi.in")
    conv = out / "ibi_convergence"
    conv.mkdir(exist_ok=True)
    for p in sysm.pair_names():
        n = pairname(*p)
        atomic_copy(ibi / f"{n}.dist.tgt", conv / f"{n}.dist.tgt")
        atomic_copy(final / f"{n}.dist.new", conv / f"{n}.dist.{final.name}")
        atomic_copy(final / f"{n}.pot.new", conv / f"{n}.pot.{final.name}.new")
    atomic_write_text(conv / "history.json", json.dumps(hist, indent=1))
    # BI potentials (kJ/mol) for reference
    bi = {n: {"kind": k, "x": x.tolist(), "U_kJmol": U.tolist()} for n, (k, x, U) in pots.items()}
    atomic_write_text(pot_dir / "bonded_bi_kjmol.json", json.dumps(bi))
    atomic_copy(work / "cg_distributions.png", out / "cg_distributions.png")
    summ["timings_s"] = final_timings(work, ibi, ["A", "B", "C"], args.jobs > 1)
    rl = ibi / "retries.log"
    summ["retries"] = (f"IBI: {len(rl.read_text().splitlines())} iteration(s) re-run at half dt" if rl.exists() else "") + \
        "".join(f"; production {m}: dt {(work / f'prod_{m}' / 'dt_used').read_text().strip()} fs"
                for m in ("A", "B", "C") if (work / f"prod_{m}" / "lammps.failed.log").exists())
    atomic_write_text(out / "summary.json", json.dumps(summ, indent=1))
    atomic_write_text(out / "README.md", sps_readme(sysm, summ, args, models))
    finish(work, temp, args, out, summ)


def finish(work, temp, args, out, summ):
    """Remove a temporary work directory (or say where it is kept) and print the summary."""
    if temp and not args.keep_work:
        shutil.rmtree(work)
    else:
        log(f"work directory kept: {work}")
    log(f"done: {out}")
    print_summary(summ)


def settings_dict(args, sysm, models):
    return {"temperature_K": sysm.temp, "cutoff_nm": sysm.cutoff, "seed": args.seed,
            "models": {m: vars(v) for m, v in models.items()},
            "equil_ps": args.equil_ps, "frames": args.frames, "every_ps": args.every_ps,
            "ibi_iterations_requested": args.iterations, "ibi_run_ps": args.ibi_ps,
            "ibi_equil_ps": args.ibi_equil_ps, "stiff_sigma_nm": getattr(args, "stiff_sigma", None),
            "lammps": lammps_version(), "thermostat": "fix langevin (damp 100 fs) + nve, 1 thread"}


def print_summary(summ):
    print("\nper-model bonded statistics (mean/sd; dihedrals |phi|) vs reference:")
    ref = summ["reference"]
    for n, r in ref.items():
        key = ("mean_abs", "sd_abs") if "mean_abs" in r else ("mean", "sd")
        row = f"  {n:6s} ref {r[key[0]]:9.4f}/{r[key[1]]:8.4f}"
        for m, e in summ["models"].items():
            row += f" | {m} {e[n][key[0]]:9.4f}/{e[n][key[1]]:8.4f} ov {e[n]['overlap_with_reference']:.2f}"
        print(row)
    for m, e in summ["models"].items():
        print(f"  RDF RMS deviation {m}: " + ", ".join(f"{k} {v:.3f}" for k, v in e["rdf_rms_deviation"].items()))
    print("timings (s):", summ["timings_s"])


def table_md(summ, sysm):
    ref = summ["reference"]
    ms = list(summ["models"])
    L = ["| term | reference | " + " | ".join(ms) + " |", "|---|---|" + "---|" * len(ms)]
    for n, r in ref.items():
        unit = "nm" if n in sysm.bonds else "deg"
        if "mean_abs" in r:
            fmt = lambda d: f"{d['mean_abs']:.1f} ± {d['sd_abs']:.1f}"  # noqa: E731
            lab = f"{n} (\\|phi\\|, {unit})"
        elif n in sysm.bonds:
            fmt = lambda d: f"{d['mean']:.4f} ± {d['sd']:.4f}"  # noqa: E731
            lab = f"{n} ({unit})"
        else:
            fmt = lambda d: f"{d['mean']:.1f} ± {d['sd']:.1f}"  # noqa: E731
            lab = f"{n} ({unit})"
        row = f"| {lab} | {fmt(r)} | " + " | ".join(
            f"{fmt(summ['models'][m][n])} (ov {summ['models'][m][n]['overlap_with_reference']:.2f})" for m in ms) + " |"
        L.append(row)
    for p in next(iter(summ["models"].values()))["rdf_rms_deviation"]:
        L.append(f"| RDF {p} RMS dev. | 0 | " + " | ".join(f"{summ['models'][m]['rdf_rms_deviation'][p]:.3f}" for m in ms) + " |")
    return "\n".join(L)


def sps_readme(sysm, summ, args, models):
    ibi = summ["ibi"]
    retries = summ.get("retries") or "none were needed"
    fin = ibi["final_rdf_rms_deviation"] or {}
    tim = summ["timings_s"]
    return f"""# sPS CG models A, B, C (568 K) — CG force fields and CG MD trajectories

Made by `scripts/make_sps_cg_models.sh` (→ `scripts/make_cg_models.py sps`); a cache, not committed
(`data/` is git-ignored). Thesis ch. 6 (Stieffenhofer 2022), table 6.2: models A < B < C.
LAMMPS: {summ['settings']['lammps']}; VOTCA 2022.1 (csg_stat, csg_inverse); GROMACS only for `gmx grompp`
(a CG .tpr that VOTCA reads as topology). Total wall time {list(tim.values())[-1] / 60:.1f} min (2 cores: the three
production runs 2 at a time, each LAMMPS run 1 thread).

## Input
`../shared/data/sps/eval_t568/cg.xtc` (atomistic reference mapped to CG, 78 frames, and `cg.gro` for names;
36 chains × 20 beads B1 S1 … B10 S10, triclinic box, nm). All analyses use minimum-image geometry.

## Force field (all models share the non-bonded part)
- Topology per chain: bonds BB B(k)–B(k+1), BS B(k)–S(k) and S(k)–B(k+1) (one type); angles BBB, SBS
  (S(k)–B(k+1)–S(k+1)); dihedrals BBBB (B(k)…B(k+3)) and BSBS (B(k)–S(k)–B(k+1)–S(k+1), treated as a second
  tabulated proper dihedral). Masses B 27.046 u, S 77.106 u.
- Non-bonded exclusions: all bead pairs of a chain within 3 bonds of the bond graph (LAMMPS
  `special_bonds lj 0 0 0`; the same nrexcl = 3 convention as the reference's `ps_excl.tpr`): 1-2 B(k)B(k+1),
  B(k)S(k), S(k)B(k+1); 1-3 B(k)B(k+2), S(k)S(k+1), B(k)S(k+1), S(k)B(k+2); 1-4 e.g. B(k)B(k+3), S(k)S(k+2),
  B(k)S(k+2), S(k)B(k+3) (28 + 34 + 30 pairs per chain). VOTCA excludes exactly these pairs because they are
  listed as pseudo-bonds `excl12`/`excl13`/`excl14` in the identity mapping `potentials/excl.xml` (csg_stat
  excludes every bead pair of every mapped bonded interaction; checked against a numpy RDF). Intramolecular
  pairs further apart interact through the pair potentials and count in the RDFs. (A first IBI attempt
  excluding only 1-2 and 1-3 pairs oscillated: the sharp intramolecular B(k)–B(k+3) peak at 0.75 nm, which
  the BBBB dihedral controls, kept being "corrected" by the B–B pair potential.)
- Bonded potentials: csg_stat histograms of the reference (`potentials/bonded.xml`, grids: bonds 0.001 nm,
  angles 1°, dihedrals 3°), Boltzmann-inverted in numpy (csg_boltzmann not used): U = −kT ln(P/J),
  J = r² (bonds), sin θ (angles), 1 (dihedrals); Gaussian smoothing of the histogram (σ = 1.5 bins,
  dihedrals 2 bins, periodic); outside the sampled range (< 5 counts) extrapolated with the edge slope +
  the harmonic curvature kT/var. Tables in `potentials/bonded.table` (LAMMPS units real).
- Pair potentials B–B, B–S, S–S: IBI with `csg_inverse` (method ibi, program lammps), targets = csg_stat RDFs
  of the reference with the exclusions above, 0–{sysm.cutoff} nm, 0.01 nm bins, cut-off {sysm.cutoff} nm,
  initial guess −kT ln g; update scaled by {sysm.ibi_scale} and smoothed (VOTCA post_update `scale smooth`, 1
  smoothing pass) to damp oscillations; the sparse onset of each target (isolated counts at short r separated by
  empty bins, which VOTCA's initial inversion rejects) is set to 0 below the first r from which g > 1e-4
  throughout. Run with model B's bonded terms, NVT 568 K at the reference box, start = first
  mapped frame; {ibi['iterations']} iterations of {args.ibi_equil_ps} ps equilibration + {args.ibi_ps} ps sampling
  (Langevin, dt {args.dt} fs, dump every 0.5 ps). The final potentials are the LAMMPS tables of
  {ibi['final_step']} (the last iteration whose RDFs were measured); RMS(g − g_target) there:
  {', '.join(f'{k} {v:.3f}' for k, v in fin.items() if k != 'iteration')}. History: `ibi_convergence/history.json`;
  last RDFs vs target: `ibi_convergence/*.dist.{ibi['final_step']}` vs `*.dist.tgt`. No pressure correction (NVT).
- Models: A = stiff harmonic bonds at the reference mean (σ = {args.stiff_sigma} nm; **deviation**: the thesis
  constrains bonds, but LAMMPS cannot SHAKE a chain) + BI angles + both dihedrals, dt {args.dt_a} fs;
  B = BI bonds + angles + both dihedrals, dt {args.dt} fs; C = BI bonds + angles, no dihedrals
  (`dihedral_style zero`, exclusions unchanged), dt {args.dt_c} fs.
- **Angle walls (deviation from plain BI)**: dihedral forces diverge when an adjacent angle reaches 180°; with
  pure BI angles LAMMPS crashed within ~1000 steps (BBB reaches 179.9° in the reference; LAMMPS 2021 here has no
  `dihedral_style table/cut`). So, in the LAMMPS tables of all models, U_BBB += ½·5 kJ/mol/deg²·(θ − 177°)² for
  θ > 177° plus a restricted-bending-like 0.01 kJ/mol·(1/sin²θ − 1/sin²175°) for θ > 175° (≈ 6.7 kT at 179°;
  2 % of the reference BBB angles lie above 177°), and U_SBS += ½·5·(θ − 165°)² for θ > 165° (0.1 % of the
  reference). `potentials/bonded_bi_kjmol.json` holds the pure BI curves. Time step 1 fs for all models (with 2 fs,
  model B crashed within ~12 ps and, in a first attempt, model C after ~400 ps). Safety net: a LAMMPS run that still crashes
  (bond outside its table) is repeated once with half the time step: {retries}.

## Production
Each model from the same start (frame 0 of `cg.xtc`, positions and box), Langevin NVT 568 K (damp 100 fs, `zero yes`), fixed
box, {args.equil_ps} ps equilibration, then {args.frames} frames every {args.every_ps} ps. Seeds: velocity/Langevin
{args.seed}+10/20/30 (+1) for A/B/C, IBI {args.seed}; 1 thread (`OMP_NUM_THREADS=1`, serial lmp).
LAMMPS wall time (s): {', '.join(f'{m} {v:.0f}' for m, v in summ['lammps_wall_s'].items())};
mean temperature (K): {', '.join(f'{m} {v:.1f}' for m, v in summ['temperature_K'].items())}.

## Files
| file | content |
|---|---|
| `A.xtc`, `B.xtc`, `C.xtc` | CG trajectories, nm, 720 beads in `cg.gro` order, triclinic box per frame, atoms wrapped into the cell (molecules not whole, like `cg.xtc`), time = 0, {args.every_ps}, … ps |
| `A.lammpstrj` | model A's LAMMPS dump as written (`id type x y z`, Å, sorted by id; type 1 = B, 2 = S) |
| `potentials/` | `bonded.table`, pair tables `*_*.pot` (LAMMPS, keyword VOTCA), `in.{{A,B,C}}.lammps`, `start.data`, VOTCA mappings, `ibi_settings.xml`, `ibi.in`, `bonded_bi_kjmol.json` |
| `ibi_convergence/` | targets, RDFs and potentials of the final iteration, RMS deviation per iteration |
| `summary.json` | per model per bonded type mean/sd (+ histogram overlap) vs reference, RDF RMS deviations, checks, timings |
| `cg_distributions.png` | bonds, angles, dihedrals, RDFs: reference vs A, B, C; IBI convergence |

## Bonded statistics (mean ± sd; ov = histogram overlap with the reference, 1 = identical)
{table_md(summ, sysm)}

## Caveats (read before using the models)
- IBI ran {ibi['iterations']} × {args.ibi_equil_ps + args.ibi_ps:g} ps, each iteration restarting from the mapped
  reference frame, so the pair potentials were tuned while the chains were close to reference conformations;
  slower conformational relaxation can show up in the long runs. Mean BBB angle per quarter of the production
  (reference {summ['reference']['BBB']['mean']:.1f}°): {'; '.join(m + ' ' + ', '.join(f'{x:.1f}' for x in e['BBB']['mean_by_quarter']) for m, e in summ['models'].items())}.
  Better (not done): IBI continuing from the previous iteration's end configuration with longer runs.
- Box: the reference is an NPT run, every frame of `cg.xtc` has its own strongly sheared triclinic box
  (volume 65.9–69.5 nm³, γ 111–128°); the CG runs use frame 0's box (99.07 × 29.97 × 24.60 Å, γ = 111.0°,
  68.2 nm³) at fixed volume. (`cg.gro` is a different snapshot with a 59.8 nm³ box; it only supplies names.)
  No pressure correction: mean LAMMPS pressure (atm) {', '.join(f'{m} {v:.0f}' for m, v in summ.get('pressure_atm', {}).items())}.
- A differs from B only in the bonds (held near the mean, by construction), C from B only in the dihedrals.

## Checks
{json.dumps(summ['checks'])}

## Timings (s)
{json.dumps(summ['timings_s'])}

Re-run: `scripts/make_sps_cg_models.sh` (env: see its header).
"""


# ------------------------------------------------------------------------------------------------
def main_hexane(args):
    import MDAnalysis as mda
    check_tools(["lmp", "csg_stat", "csg_inverse", "gmx"])
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work, temp = prepare_work(args, "hexane")
    hx = Path(args.hexane_dir).resolve()
    with Timer("map AA -> CG (backmap map)"):
        bm = [str(REPO / ".venv" / "bin" / "backmap")] if (REPO / ".venv/bin/backmap").exists() else ["backmap"]
        run(bm + ["map", "--topology", hx / "topol.tpr", "--traj", hx / "traj.xtc", "--mapping", hx / "hexane.xml",
                  "--out", work / "mapped.xtc"], work, "map.log")
        run(bm + ["map", "--topology", hx / "topol.tpr", "--traj", hx / "traj.xtc", "--mapping", hx / "hexane.xml",
                  "--out", work / "mapped.gro", "--frames", "0"], work, "map0.log")
    sysm = hexane_system(args, work / "mapped.gro", work / "mapped.xtc")
    seed = args.seed
    with Timer("setup (tpr, mappings, LAMMPS data)"):
        common_setup(sysm, work)
    with Timer("reference distributions (csg_stat)"):
        reference_stats(sysm, work)
    ref_u = mda.Universe(str(sysm.start_gro), str(sysm.ref_traj))
    with Timer("Boltzmann inversion of bonded terms"):
        pots = bonded_potentials(sysm, work, len(ref_u.trajectory))
        write_bonded_tables(sysm, pots, work / "bonded.table")
    models = {"good": Model("good", "table", True, False, args.dt, "ibi"),
              "poor": Model("poor", "table", False, False, args.dt, "guess")}
    with Timer("IBI (csg_inverse + LAMMPS)"):
        ibi = run_ibi(sysm, work, models["good"], args.iterations, args.ibi_ps, args.ibi_equil_ps, seed, pots)
    hist = ibi_history(sysm, ibi)
    steps = sorted(ibi.glob("step_[0-9][0-9][0-9]"))
    final = [s for s in steps if all((s / f"{pairname(*p)}.dist.new").exists() for p in sysm.pair_names())][-1]
    tables = {"good": {p: final / f"{p[0]}_{p[1]}.pot" for p in sysm.pair_names()},
              # first IBI guess = -kT ln g(r): the tables simulated in step_001
              "poor": {p: ibi / "step_001" / f"{p[0]}_{p[1]}.pot" for p in sysm.pair_names()}}
    universes, walls = {}, {}
    for m in ("good", "poor"):
        with Timer(f"production model {m}"):
            extra = (int(round(args.extra_dump_ps * 1000 / args.dt)), "extra.lammpstrj") if m == "good" else None
            d = run_production(sysm, work, models[m], tables[m], seed + (1 if m == "good" else 2) * 10,
                               args.equil_ps, args.frames, args.every_ps, None, extra_dump=extra)
            walls[m] = float((d / "wall_s").read_text())
            dump_to_xtc(sysm, d / "traj.lammpstrj", d / f"{m}.xtc", args.every_ps, sysm.start_gro)
            universes[m] = mda.Universe(str(sysm.start_gro), str(d / f"{m}.xtc"))
    with Timer("analysis"):
        summ, allsamp, r, allg = summarize(sysm, models, ref_u, universes, work)
        summ["checks"] = {m: verify_xtc(sysm, work / f"prod_{m}" / f"{m}.xtc", sysm.start_gro, ref_u.dimensions)
                          for m in universes}
        summ["ibi"] = {"iterations": len(hist), "history": hist, "final_step": final.name,
                       "final_rdf_rms_deviation": hist[-1] if hist else None}
        summ["lammps_wall_s"] = walls
        summ["temperature_K"] = {m: thermo_temperature(work / f"prod_{m}" / "lammps.log") for m in universes}
        summ["settings"] = settings_dict(args, sysm, models)
        plot(sysm, allsamp, r, allg, hist, work / "cg_distributions.png", ["good", "poor"])
    atomic_copy(work / "mapped.xtc", out / "mapped.xtc")
    for m in ("good", "poor"):
        atomic_copy(work / f"prod_{m}" / f"{m}.xtc", out / f"{m}.xtc")
    extra = work / "prod_good" / "extra.lammpstrj"
    if extra.stat().st_size < 300_000:
        atomic_copy(extra, out / "good.lammpstrj")
        summ["good_lammpstrj"] = True
    else:
        summ["good_lammpstrj"] = False
    summ["timings_s"] = final_timings(work, ibi, ["good", "poor"], False)
    if args.extra_out:
        eo = Path(args.extra_out).resolve()
        eo.mkdir(parents=True, exist_ok=True)
        atomic_copy(work / "cg_distributions.png", eo / "cg_distributions.png")
        atomic_copy(work / "bonded.table", eo / "bonded.table")
        for m in tables:
            for p, f in tables[m].items():
                atomic_copy(f, eo / f"{m}.{f.name}")
            atomic_copy(work / f"prod_{m}" / "in.lammps", eo / f"in.{m}.lammps")
        atomic_write_text(eo / "summary.json", json.dumps(summ, indent=1))
    atomic_write_text(out / "README.md", hexane_readme(sysm, summ, args))
    finish(work, temp, args, out, summ)


def hexane_readme(sysm, summ, args):
    ibi = summ["ibi"]
    fin = ibi["final_rdf_rms_deviation"] or {}
    tim = summ["timings_s"]
    dump_line = ("| `good.lammpstrj` | model good's LAMMPS dump as written by LAMMPS (`id mol type x y z`, Å, 3 decimals, "
                 f"every {args.extra_dump_ps} ps; type 1 = A, 2 = B) |" if summ.get("good_lammpstrj") else "")
    return f"""# hexane_cg_models — two CG models of liquid n-hexane (300 K) and their trajectories

Generated by `scripts/make_hexane_cg_models.sh` (→ `scripts/make_cg_models.py hexane`) from `../hexane`
(200 n-hexane molecules, OPLS-AA, 300 K, cubic 3.543 nm box, 21 frames; see its README). Tools: VOTCA 2022.1
(csg_stat, csg_inverse), LAMMPS ({summ['settings']['lammps']}), `gmx grompp` (CG .tpr for VOTCA),
`backmap map`. Everything here was made by that script; no other data used. Wall time {tim.get('total', 0):.0f} s
(1 core busy; every LAMMPS run 1 thread).

## CG mapping and reference
`mapped.xtc`: `../hexane/traj.xtc` mapped with `backmap map` and `../hexane/hexane.xml` (3 beads per molecule,
A1 B A2, molecules made whole first); 21 frames, 600 beads, nm. This is the in-distribution reference.

## Force fields (LAMMPS units real; T = 300 K, kT = {sysm.kT:.4f} kJ/mol)
- Bonds A1–B, A2–B (one type) and angle A1–B–A2: Boltzmann inversion (numpy) of csg_stat histograms of
  `mapped.xtc` (Jacobian r² / sin θ, Gaussian smoothing 1.5 bins, extrapolated where < 5 counts), tables.
- Non-bonded exclusions: pairs within 2 bonds (LAMMPS `special_bonds lj 0 0 1`) = all intramolecular pairs;
  VOTCA uses the same (identity mapping with bond + angle). Pair types A–A, A–B, B–B, cut-off {sysm.cutoff} nm.
- `good` = BI bond + BI angle + IBI pair potentials: `csg_inverse` (ibi, lammps), targets = csg_stat RDFs of
  `mapped.xtc`; {ibi['iterations']} iterations of {args.ibi_equil_ps} ps + {args.ibi_ps} ps (dt {args.dt} fs); final
  potentials = tables of {ibi['final_step']}, RMS(g − g_target): {', '.join(f'{k} {v:.3f}' for k, v in fin.items() if k != 'iteration')}.
- `poor` = BI bond, **no angle potential** (`angle_style zero`), pair potentials = first IBI guess
  −kT ln g(r) (the tables simulated in IBI step_001, no iterations). Same exclusions as `good`, so nothing acts
  between A1 and A2 of a molecule: without the angle potential most molecules fold and their end beads
  overlap (A1–B–A2 angle {summ['models']['poor']['angle']['mean']:.0f} ± {summ['models']['poor']['angle']['sd']:.0f}° instead of
  {summ['reference']['angle']['mean']:.0f} ± {summ['reference']['angle']['sd']:.0f}°) — a deliberately bad model, clearly worse in
  every statistic.

## Runs
LAMMPS, Langevin NVT 300 K (damp 100 fs, `zero yes`) + nve, dt {args.dt} fs, box of `../hexane` frame 0,
start = mapped frame 0; {args.equil_ps} ps equilibration, then {args.frames} frames every {args.every_ps} ps.
Seeds: IBI {args.seed}, good {args.seed + 10}, poor {args.seed + 20} (velocity; Langevin = seed + 1); 1 thread.
LAMMPS wall time (s): {', '.join(f'{m} {v:.0f}' for m, v in summ['lammps_wall_s'].items())};
mean temperature (K): {', '.join(f'{m} {v:.1f}' for m, v in summ['temperature_K'].items())}.

## Files
| file | content |
|---|---|
| `mapped.xtc` | AA test trajectory mapped to CG (reference), 21 frames |
| `good.xtc`, `poor.xtc` | CG trajectories, {args.frames} frames, nm, precision 0.001 nm, beads molecule after molecule A1 B A2, wrapped into the box |
{dump_line}

Topology for reading: any CG .gro with 200 × (A1 B A2), e.g. `backmap map ... --frames 0 --out cg.gro`.

## Bonded statistics and RDFs vs mapped reference (mean ± sd; ov = histogram overlap)
{table_md(summ, sysm)}

Timings (s): {json.dumps(tim)}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="system", required=True)
    s = sub.add_parser("sps", help="sPS models A, B, C")
    s.add_argument("--sps-dir", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sps" / "eval_t568"))
    s.add_argument("--out", default=str(REPO / "data" / "sps-cg-models"))
    s.add_argument("--iterations", type=int, default=20)
    s.add_argument("--ibi-ps", type=float, default=30.0)
    s.add_argument("--ibi-equil-ps", type=float, default=5.0)
    s.add_argument("--dt", type=float, default=1.0, help="fs, model B and IBI")
    s.add_argument("--dt-a", type=float, default=1.0, help="fs, model A (stiff bonds)")
    s.add_argument("--dt-c", type=float, default=1.0, help="fs, model C (no dihedrals; 2 fs crashed once)")
    s.add_argument("--jobs", type=int, default=2, help="production runs in parallel (each 1 thread)")
    s.add_argument("--stiff-sigma", type=float, default=0.0015, help="nm, model A bond fluctuation")
    s.add_argument("--equil-ps", type=float, default=50.0)
    s.add_argument("--frames", type=int, default=80)
    s.add_argument("--every-ps", type=float, default=10.0)
    s.add_argument("--seed", type=int, default=4242)
    h = sub.add_parser("hexane", help="hexane models good, poor")
    h.add_argument("--hexane-dir", default=str(REPO / "tests" / "data" / "hexane"))
    h.add_argument("--out", default=str(REPO / "tests" / "data" / "hexane_cg_models"))
    h.add_argument("--extra-out", default=str(REPO / "data" / "hexane-cg-models-extra"),
                   help="potentials/plot/summary (not committed); '' to skip")
    h.add_argument("--iterations", type=int, default=10)
    h.add_argument("--ibi-ps", type=float, default=40.0)
    h.add_argument("--ibi-equil-ps", type=float, default=10.0)
    h.add_argument("--dt", type=float, default=2.0)
    h.add_argument("--equil-ps", type=float, default=100.0)
    h.add_argument("--frames", type=int, default=25)
    h.add_argument("--every-ps", type=float, default=10.0)
    h.add_argument("--extra-dump-ps", type=float, default=20.0)
    h.add_argument("--seed", type=int, default=1993)
    for p in (s, h):
        p.add_argument("--workdir", default=None, help="use/keep this work directory (resumable)")
        p.add_argument("--keep-work", action="store_true")
    c = sub.add_parser("dump2xtc", help="internal: LAMMPS dump (Angstrom) -> xtc (nm), used during IBI")
    c.add_argument("dump")
    c.add_argument("topology")
    c.add_argument("xtc")
    args = ap.parse_args()
    if args.system == "dump2xtc":
        import MDAnalysis as mda
        u = mda.Universe(args.topology, args.dump, format="LAMMPSDUMP")
        tmp = args.xtc + ".tmp.xtc"
        with mda.Writer(tmp, u.atoms.n_atoms) as w:
            for ts in u.trajectory:
                w.write(u.atoms)
        os.replace(tmp, args.xtc)
        return
    if args.system == "sps":
        main_sps(args)
    else:
        main_hexane(args)


if __name__ == "__main__":
    main()
