#!/usr/bin/env python3
"""build_sps_crystal.py -- an ordered (crystal-like) start for sPS, and the checks of its order.

Used by scripts/make_sps_crystal_data.sh.

  build TOP OUT.gro [--nx 6 --ny 6]
      NX x NY all-trans (TTTT) syndiotactic 10-mers of molecule type PS1 (atom names and order from
      TOP), chain axes along z, packed side by side in a rectangular box. Pure geometry and a grid
      search, no random numbers: the same file every run (~1 min).
  order GRO XTC [--label L]
      The order of a trajectory: tacticity of the CH stereocentres, fraction of trans backbone
      C-C-C-C dihedrals (|phi| > 120 deg), mean |cos| of the chains' end-to-end vectors with z,
      lateral order (the highest Bragg peak of the chains' positions in the plane across z),
      density. One line of JSON.

How a chain is built (all lengths in nm): the 20 backbone carbons C2, C5, C18, C21, ..., C146, C149
form a planar zigzag in the x-z plane (C-C 0.153, C-C-C 114 deg: 0.513 nm per two monomers, the
alpha/beta forms' chain repeat of 0.505-0.51). Each carbon's two other substituents lie in the plane
through the outward bisector of its backbone bonds and y, 54.75 deg either side of the bisector (the
tetrahedral half-angle): H on the CH2 carbons; H and phenyl on the CH carbons, the phenyl on -y and +y
alternately (syndiotactic: in a planar zigzag the substituents of successive stereocentres point to
opposite sides of the backbone plane; `order` checks that the pattern of signed stereocentre volumes
is the one of the shipped melt). The chain ends carry H161 (on C2) and H162 (on C149) where the next
backbone carbon would be. The phenyl is a regular hexagon (C-C 0.139, C-H 0.108) whose plane contains
the CH-C(ipso) bond and is perpendicular to the chain axis, so the rings on one side stack face to
face 0.513 nm apart, as in the trans-planar crystal forms.

How the chains are packed: NX/2 x NY cells of a rectangular lattice a x b, two chains per cell, all
with their backbone planes along x: CHAIN at (0, 0) and a partner at (a/2, sy*b) that is either the
same chain or the chain turned 180 deg about z, shifted along z by 0, 1, 2 or 3 half-monomers
(0.128 nm steps); sy is 0 (rectangular) or 0.5 (centred). Of these 16 variants, and a, b on a 0.02 nm
grid, the script takes the densest at which no inter-chain pair (periodic images included) is closer
than MIN_GAP (0.22 nm) and no inter-chain carbon pair closer than MIN_GAP_C (0.32 nm; the force
field's C sigma). With this chain that is the centred lattice a = 1.26, b = 0.94 nm, all chains
parallel and in register (0.59 nm^2 per chain; beta form 0.64, alpha 0.66): hexagonal-like packing
with the phenyls of neighbouring chains interleaving. Along z the chains are stacked end to end,
END_GAP (0.22 nm) between the end hydrogens, so the start has 1.03 g/cm^3; energy minimisation and
anisotropic NPT relax both.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from scipy.spatial import cKDTree

CC, CH, C_CAR, CAR_CAR, CAR_H = 0.153, 0.110, 0.151, 0.139, 0.108
THETA = np.radians(114.0)  # backbone C-C-C
HALF_TET = np.radians(54.75)  # substituents' half-angle about the outward bisector
N_MON, PER_MON = 10, 16  # PS1: 10 monomers of 16 atoms, + H161 and H162
MIN_GAP, MIN_GAP_C = 0.22, 0.32  # nm, inter-chain minimum distance of the start: any atoms, carbons
END_GAP = 0.22  # nm, between the end hydrogens of chains stacked along z
MASS = {"C": 12.011, "H": 1.008}
# 0-based indices of the hydrogens of one chain
H_INDEX = {o + k for o in range(0, N_MON * PER_MON, PER_MON) for k in (0, 2, 3, 7, 9, 11, 13, 15)} | {160, 161}


def chain_topology(top: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Atom names and bonds (0-based pairs) of TOP's first molecule type, by backmap's reader."""
    from backmap.engine.loaders import load_topology

    moltype = load_topology(top).blocks[0].moltype
    return [str(n) for n in moltype.atom_names], [tuple(sorted(int(i) for i in b)) for b in moltype.bonds]


def backbone_index() -> list[int]:
    """0-based indices of the 20 backbone carbons in chain order: C2, C5, C18, C21, ..., C149."""
    return [idx for m in range(N_MON) for idx in (PER_MON * m + 1, PER_MON * m + 4)]


def stereocentres() -> list[tuple[int, int, int, int]]:
    """(previous backbone C, CH, next backbone C, ipso C) 0-based, of the 9 CH stereocentres
    (C149 carries two H, so is none)."""
    bb = backbone_index()
    return [(bb[2 * m], bb[2 * m + 1], bb[2 * m + 2], PER_MON * m + 5) for m in range(N_MON - 1)]


def build_chain() -> np.ndarray:
    """One all-trans syndiotactic PS1 chain, (162, 3) nm, axis along z from z = 0."""
    pos = np.zeros((N_MON * PER_MON + 2, 3))
    dz, dx = CC * np.sin(THETA / 2), CC * np.cos(THETA / 2)
    nb = 2 * N_MON
    bb = np.array([[dx * (k % 2), 0.0, dz * k] for k in range(-1, nb + 1)])  # with virtual ends
    ey = np.array([0.0, 1.0, 0.0])
    for m in range(N_MON):
        o = PER_MON * m
        for j, atom in ((2 * m, o + 1), (2 * m + 1, o + 4)):  # CH2 (C2, C18, ...), CH (C5, C21, ...)
            p = bb[j + 1]
            pos[atom] = p
            out = 2 * p - bb[j] - bb[j + 2]
            out /= np.linalg.norm(out)
            up = np.cos(HALF_TET) * out + np.sin(HALF_TET) * ey
            down = np.cos(HALF_TET) * out - np.sin(HALF_TET) * ey
            if atom == o + 1:  # CH2: H (o+0) up, H (o+2) down
                pos[o], pos[o + 2] = p + CH * up, p + CH * down
            else:  # CH: phenyl down on even monomers, up on odd ones (syndiotactic), H the other way;
                # this way round the stereocentres' signs are those of the shipped melt (C5: -1)
                ph, h = (down, up) if m % 2 == 0 else (up, down)
                pos[o + 3] = p + CH * h
                ring(pos, o + 5, p + C_CAR * ph, ph)
    # the end hydrogens where the neighbouring backbone carbons would be
    pos[160] = pos[1] + CH * (bb[0] - bb[1]) / CC
    pos[161] = pos[PER_MON * (N_MON - 1) + 4] + CH * (bb[nb + 1] - bb[nb]) / CC
    return pos


def ring(pos: np.ndarray, i: int, ipso: np.ndarray, axis: np.ndarray) -> None:
    """A phenyl at atoms i..i+10 (C ipso, C, H, C, H, C para, H, C, H, C, H) with its para axis along
    AXIS and its plane perpendicular to z."""
    q = np.cross(np.array([0.0, 0.0, 1.0]), axis)
    q /= np.linalg.norm(q)
    centre = ipso + CAR_CAR * axis
    carbons = []
    for ang in (180.0, 120.0, 60.0, 0.0, -60.0, -120.0):  # ipso, ortho, meta, para, meta', ortho'
        a = np.radians(ang)
        carbons.append(centre + CAR_CAR * (np.cos(a) * axis + np.sin(a) * q))
    pos[i] = carbons[0]
    for k in range(1, 6):
        c = carbons[k]
        pos[i + 2 * k - 1] = c
        pos[i + 2 * k] = c + CAR_H * (c - centre) / CAR_CAR


def pack(chain: np.ndarray, nx: int, ny: int):
    """Positions (nx*ny*162, 3), box (3,) and the chosen lattice of the packing in the module doc."""
    lz = round(float(np.ptp(chain[:, 2])) + END_GAP, 2)
    heavy = np.array([k not in H_INDEX for k in range(len(chain))])

    def partner(turn: bool, dz: float) -> np.ndarray:
        other = chain * np.array([-1.0, -1.0, 1.0]) if turn else chain.copy()  # 180 deg about z
        other[:, 2] += dz
        return other

    def fits(other: np.ndarray, a: float, b: float, sy: float) -> bool:
        # the cell a x b x lz holds CHAIN at (0, 0) and OTHER at (a/2, sy*b); every inter-chain pair
        # (periodic images included) must keep MIN_GAP, carbons MIN_GAP_C
        basis = [(chain, 0.0, 0.0), (other, a / 2, sy * b)]
        for r, (xr, rx, ry) in enumerate(basis):
            trees = (cKDTree(xr), cKDTree(xr[heavy]))
            for o, (xo, ox, oy) in enumerate(basis):
                for ix, iy, iz in np.ndindex(3, 3, 3):
                    if r == o and ix == iy == iz == 1:
                        continue
                    moved = xo + np.array([ox - rx + (ix - 1) * a, oy - ry + (iy - 1) * b, (iz - 1) * lz])
                    if np.isfinite(trees[0].query(moved, distance_upper_bound=MIN_GAP)[0]).any() or \
                       np.isfinite(trees[1].query(moved[heavy], distance_upper_bound=MIN_GAP_C)[0]).any():
                        return False
        return True

    best = None  # (area per chain, a, b, sy, turn, dz): the densest variant, first of equals
    dz_mon = CC * np.sin(THETA / 2)  # half a monomer along z
    for turn in (False, True):
        for k in range(4):
            other = partner(turn, k * dz_mon)
            for sy in (0.0, 0.5):
                for b in np.round(np.arange(0.60, 1.40, 0.02), 2):
                    a = next((a for a in np.round(np.arange(0.80, 2.60, 0.02), 2)
                              if fits(other, a, b, sy)), None)
                    if a is not None and (best is None or a * b / 2 < best[0] - 1e-9):
                        best = (a * b / 2, float(a), float(b), sy, turn, k * dz_mon)
    _, a, b, sy, turn, dz = best
    other = partner(turn, dz)
    assert nx % 2 == 0, "nx must be even (two chains per cell along x)"
    mols = []
    for ix in range(nx):
        for iy in range(ny):
            if ix % 2 == 0:
                mols.append(chain + np.array([(ix // 2) * a, iy * b, 0.0]))
            else:
                mols.append(other + np.array([(ix // 2) * a + a / 2, (iy + sy) * b, 0.0]))
    xyz = np.concatenate(mols)
    xyz -= xyz.min(axis=0) - np.array([0.1, 0.1, END_GAP / 2])
    lattice = {"a_nm": a, "b_nm": b, "second_chain": [round(a / 2, 3), round(sy * b, 3), round(dz, 3)],
               "second_turned_180_about_z": turn}
    return xyz, np.array([nx // 2 * a, ny * b, lz]), lattice


def write_gro(path: str, names: list[str], xyz: np.ndarray, box: np.ndarray, title: str) -> None:
    n_mol = len(xyz) // len(names)
    with open(path, "w") as f:
        f.write(f"{title}\n{len(xyz):5d}\n")
        for i, p in enumerate(xyz):
            f.write("%5d%-5s%5s%5d%8.3f%8.3f%8.3f\n" % (
                i // len(names) + 1, "PS1", names[i % len(names)], (i + 1) % 100000, *p))
        f.write("%10.5f%10.5f%10.5f\n" % tuple(box))
    assert n_mol * len(names) == len(xyz)


def cmd_build(args) -> None:
    names, bonds = chain_topology(args.top)
    assert len(names) == N_MON * PER_MON + 2 and names[1] == "C2" and names[148] == "C149", names[:5]
    chain = build_chain()
    xyz, box, lattice = pack(chain, args.nx, args.ny)
    # no overlaps: within a chain, every pair closer than 0.2 nm must be bonded or angle-bonded
    # (1-2 or 1-3), and no two chains may come closer than 0.15 nm
    nbr = {i: set() for i in range(len(names))}
    for i, j in bonds:
        nbr[i].add(j)
        nbr[j].add(i)
    near = {(i, j) for i, j in bonds} | {tuple(sorted((i, k))) for j in nbr for i in nbr[j]
                                          for k in nbr[j] if i != k}
    intra = {tuple(p) for p in cKDTree(chain).query_pairs(0.2, output_type="ndarray").tolist()}
    nonbonded = sorted(intra - near)
    n = len(names)
    mol = np.repeat(np.arange(len(xyz) // n), n)
    tree = cKDTree(xyz % box, boxsize=box)
    pairs = tree.sparse_distance_matrix(tree, 0.4, output_type="ndarray")  # (i, j, periodic distance)
    inter = pairs[mol[pairs["i"]] != mol[pairs["j"]]]["v"]
    close = inter[inter < 0.15]
    if len(close) or nonbonded or len(bonds) != 171:
        sys.exit(f"error: overlaps in the start: {len(close)} inter-chain pairs < 0.15 nm, "
                 f"intra-chain non-bonded pairs < 0.2 nm: {nonbonded[:5]} ({len(bonds)} bonds read)")
    d_bond = [np.linalg.norm(chain[i] - chain[j]) for i, j in bonds]
    mass = sum(MASS[x[0]] for x in names) * (len(xyz) // n)  # g/mol
    dens = mass / 6.02214076e23 / (np.prod(box) * 1e-21) * 1e3  # kg/m^3
    write_gro(args.out, names, xyz, box, "sPS all-trans syndiotactic chains, crystal-like packing")
    print(json.dumps({"chains": len(xyz) // n, "lattice": lattice,
                      "box_nm": [round(float(x), 4) for x in box], "density_kg_m3": round(dens, 1),
                      "min_interchain_nm": round(float(inter.min()), 3),
                      "bond_range_nm": [round(min(d_bond), 3), round(max(d_bond), 3)]}))


def lateral_order(centres: np.ndarray, box: np.ndarray, hk_max: int = 12) -> float:
    """max over the reciprocal-lattice vectors q = (h, k, 0) of the box with spacings 2 pi/|q| of
    0.5-1.5 nm of |mean_chains exp(i q . r)|^2, r the chains' centres: 1 for chains on a perfect
    lattice (at its Bragg peaks), ~ a few / n_chains for a liquid-like arrangement."""
    frac = centres @ np.linalg.inv(box)  # fractional coordinates (Angstrom in, Angstrom out)
    recip = 2 * np.pi * np.linalg.inv(box).T  # rows: reciprocal vectors (1/Angstrom)
    best = 0.0
    for h in range(-hk_max, hk_max + 1):
        for k in range(0, hk_max + 1):
            q = np.linalg.norm(h * recip[0] + k * recip[1])
            if q == 0 or not 2 * np.pi / 15.0 <= q <= 2 * np.pi / 5.0:
                continue
            best = max(best, abs(np.exp(2j * np.pi * (h * frac[:, 0] + k * frac[:, 1])).mean()) ** 2)
    return best


def cmd_order(args) -> None:
    import MDAnalysis as mda  # noqa: PLC0415
    from MDAnalysis.lib.distances import calc_dihedrals, minimize_vectors  # noqa: PLC0415

    u = mda.Universe(args.gro, args.xtc) if args.xtc else mda.Universe(args.gro)
    n_chain = u.atoms.n_atoms // (N_MON * PER_MON + 2)
    off = np.arange(n_chain)[:, None] * (N_MON * PER_MON + 2)
    bb = (np.array(backbone_index())[None, :] + off)  # (chains, 20)
    st = np.array(stereocentres())  # (9, 4)
    trans, cosz, dens, bragg, signs = [], [], [], [], None
    for ts in u.trajectory:
        box, x = ts.dimensions, u.atoms.positions  # Angstrom: only angles, ratios and signs are kept
        # unwrap each chain along its backbone bonds (the files' molecules may be split by the box)
        seg = minimize_vectors((x[bb[:, 1:]] - x[bb[:, :-1]]).reshape(-1, 3), box).reshape(n_chain, -1, 3)
        path = np.concatenate([x[bb[:, :1]], x[bb[:, :1]] + np.cumsum(seg, axis=1)], axis=1)
        phi = calc_dihedrals(path[:, :-3].reshape(-1, 3), path[:, 1:-2].reshape(-1, 3),
                             path[:, 2:-1].reshape(-1, 3), path[:, 3:].reshape(-1, 3))
        trans.append(np.mean(np.abs(np.degrees(phi)) > 120.0))
        ee = path[:, -1] - path[:, 0]
        cosz.append(np.mean(np.abs(ee[:, 2]) / np.linalg.norm(ee, axis=1)))
        bragg.append(lateral_order(path.mean(axis=1), ts.triclinic_dimensions))
        dens.append(u.atoms.total_mass() / 6.02214076e23 / (ts.volume * 1e-24) * 1e3)
        if signs is None:  # tacticity from the first frame: sign of (prev - c) x (next - c) . (ipso - c)
            signs = []
            for p, c, nx_, ip in st:
                v = [minimize_vectors(x[k + off[:, 0]] - x[c + off[:, 0]], box) for k in (p, nx_, ip)]
                signs.append(np.sign(np.einsum("ij,ij->i", np.cross(v[0], v[1]), v[2])))
            signs = np.array(signs).T  # (chains, 9)
    alternating = bool(np.all(signs[:, 1:] == -signs[:, :-1]))
    first = sorted(set(int(s) for s in signs[:, 0]))
    print(json.dumps({"label": args.label, "frames": len(trans),
                      "trans_fraction": round(float(np.mean(trans)), 3),
                      "trans_fraction_first_last": [round(float(trans[0]), 3), round(float(trans[-1]), 3)],
                      "mean_abs_cos_ee_z": round(float(np.mean(cosz)), 3),
                      "lateral_order": round(float(np.mean(bragg)), 3),
                      "density_kg_m3": round(float(np.mean(dens)), 1),
                      "syndiotactic": alternating, "first_centre_signs": first}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("top", help="GROMACS topology whose first molecule type is PS1 (topol.top)")
    b.add_argument("out")
    b.add_argument("--nx", type=int, default=6)
    b.add_argument("--ny", type=int, default=6)
    o = sub.add_parser("order")
    o.add_argument("gro")
    o.add_argument("xtc", nargs="?")
    o.add_argument("--label", default="")
    args = ap.parse_args()
    {"build": cmd_build, "order": cmd_order}[args.cmd](args)


if __name__ == "__main__":
    main()
