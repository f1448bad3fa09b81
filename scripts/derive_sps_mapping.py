#!/usr/bin/env python
"""Derive the VOTCA mapping XML for syndiotactic polystyrene (sPS) from DeepBackmap's data.

DeepBackmap's sPS evaluation set ships an atomistic trajectory (``aa.xtc``) and the same frames
mapped to a 2-bead-per-monomer CG model (``cg.xtc``: backbone bead ``B``, phenyl bead ``S``), but
not the mapping that produced ``cg.xtc``.  This script

1. makes every chain whole along the bond graph of the ``.itp`` (triclinic minimum image),
2. fits, for every one of the 20 beads of a chain, free weights (constrained to sum to 1, shared by
   all 36 chains) over the candidate atoms within two bonds of the atoms DeepBackmap's ``PS1.map``
   assigns to that bead -- this is the *derivation*: the fitted weights reveal the rule,
3. builds the weights of the interpretable rule found from the fit::

       S_m   = centre of mass of the phenyl ring C6H5 of monomer m
       B_m   = centre of mass of CH2(m) + 1/2 CH(m-1) + 1/2 CH(m)   (m = 2..10; the CH groups that
               carry the phenyl rings are shared half/half by the two B beads beside them)
       B_1   = the first CH2 carbon (C2) alone           (chain start, CH3 end group: no mass centre)
       B_10  = as B_m; the terminal hydrogen H162 does not contribute

   and compares the fitted weights with the rule,
4. measures the minimum-image deviation of rule-mapped beads from ``cg.xtc`` over all frames,
5. writes the mapping as a VOTCA ``cg_molecule`` XML (weights = masses, shared CH atoms at half
   mass, end hydrogens with weight 0 so that every atom has a home bead),
6. optionally (``--votca``) runs VOTCA's ``csg_map`` with that XML and measures its output the same
   way.

It prints one JSON line with the deviation figures (nm).  Requires numpy and MDAnalysis.

Example (from the repository root)::

    python scripts/derive_sps_mapping.py --data ../shared/data/sps/eval_t568 --out recipes/sps/sps.xml
    python scripts/derive_sps_mapping.py --data ../shared/data/sps/eval_t568 --out recipes/sps/sps.xml --votca
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import MDAnalysis as mda
from MDAnalysis.lib.distances import minimize_vectors

N_MONOMERS = 10
ATOMS_PER_MONOMER = 16
BEADS_PER_CHAIN = 2 * N_MONOMERS
# Frames of aa.xtc that are identical to DBM training snapshots (see the data README).
TRAINING_DUPLICATE_FRAMES = (9, 19, 41, 55, 62, 70, 76)


# --------------------------------------------------------------------------------------------
# Reading the inputs
# --------------------------------------------------------------------------------------------
def _sections(path: Path):
    """Yield (section, fields) for every data line of a GROMACS topology file."""
    section = None
    for line in path.read_text().splitlines():
        line = line.split(";")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[] ").lower()
            continue
        yield section, line.split()


def read_itp(path: Path):
    """Atoms (name, type, resnr, resname) and 0-based bonds of the single moleculetype in ``path``."""
    atoms, bonds, molname = [], [], None
    for section, f in _sections(path):
        if section == "moleculetype" and molname is None:
            molname = f[0]
        elif section == "atoms":
            atoms.append({"name": f[4], "type": f[1], "resnr": int(f[2]), "resname": f[3]})
        elif section == "bonds":
            bonds.append((int(f[0]) - 1, int(f[1]) - 1))
    return molname, atoms, bonds


def read_atomtype_masses(top: Path) -> dict[str, float]:
    masses = {}
    for section, f in _sections(top):
        if section == "atomtypes":
            masses[f[0]] = float(f[1])
    return masses


def read_dbm_map(path: Path) -> dict[int, list[int]]:
    """DeepBackmap ``[map]`` section: bead index (1-based) -> list of 0-based atom indices."""
    beads = collections.defaultdict(list)
    inside = False
    for line in path.read_text().splitlines():
        s = line.strip()
        if s == "[map]":
            inside = True
        elif s.startswith("[/map"):
            inside = False
        elif inside and s and not s.startswith(";"):
            atom, _, bead, _ = s.split()
            beads[int(bead)].append(int(atom) - 1)
    return dict(beads)


def bfs_bond_order(n_atoms: int, bonds):
    """(parent, child) pairs of a breadth-first spanning tree of the bond graph, from atom 0."""
    adj = collections.defaultdict(list)
    for i, j in bonds:
        adj[i].append(j)
        adj[j].append(i)
    seen, order, queue = {0}, [], collections.deque([0])
    while queue:
        i = queue.popleft()
        for j in adj[i]:
            if j not in seen:
                seen.add(j)
                order.append((i, j))
                queue.append(j)
    if len(seen) != n_atoms:
        raise ValueError("bond graph of the molecule is not connected")
    return order


def min_image(vec_nm: np.ndarray, box) -> np.ndarray:
    """Minimum-image version of difference vectors (nm) for an MDAnalysis box (Angstrom, degrees)."""
    box_nm = np.asarray(box, dtype=np.float64).copy()
    box_nm[:3] /= 10.0
    shape = vec_nm.shape
    return minimize_vectors(np.ascontiguousarray(vec_nm.reshape(-1, 3), dtype=np.float64),
                            box_nm).reshape(shape)


def load_frames(data: Path, n_atoms_mol: int, bonds, cg_xtc: Path | None = None):
    """Whole AA chains (F, C, 162, 3), CG beads as stored (F, C, 20, 3), boxes (F, 6); nm."""
    aa = mda.Universe(str(data / "aa.gro"), str(data / "aa.xtc"))
    cg = mda.Universe(str(data / "cg.gro"), str(cg_xtc or data / "cg.xtc"))
    if aa.trajectory.n_frames != cg.trajectory.n_frames:
        raise ValueError("aa.xtc and cg trajectory have different frame counts")
    n_chains = aa.atoms.n_atoms // n_atoms_mol
    order = bfs_bond_order(n_atoms_mol, bonds)
    xs, ys, boxes = [], [], []
    for _ in zip(aa.trajectory, cg.trajectory):
        box = aa.trajectory.ts.dimensions.copy()
        x = aa.atoms.positions.astype(np.float64).reshape(n_chains, n_atoms_mol, 3) / 10.0
        for i, j in order:  # walk the bond tree, every bond becomes its minimum image
            x[:, j] = x[:, i] + min_image(x[:, j] - x[:, i], box)
        xs.append(x)
        ys.append(cg.atoms.positions.astype(np.float64).reshape(n_chains, -1, 3) / 10.0)
        boxes.append(box)
    return np.array(xs), np.array(ys), np.array(boxes)


def read_cg_bead_names(data: Path) -> list[str]:
    lines = (data / "cg.gro").read_text().splitlines()
    return [ln[10:15].strip() for ln in lines[2:2 + BEADS_PER_CHAIN]]


# --------------------------------------------------------------------------------------------
# Fitting and the rule
# --------------------------------------------------------------------------------------------
def neighbourhood(seed, bonds, depth=2):
    adj = collections.defaultdict(set)
    for i, j in bonds:
        adj[i].add(j)
        adj[j].add(i)
    found = set(seed)
    frontier = set(seed)
    for _ in range(depth):
        frontier = {k for i in frontier for k in adj[i]} - found
        found |= frontier
    return sorted(found)


def fit_bead(X, Y, boxes, bead, candidates, frames):
    """Least-squares weights (sum 1) over ``candidates`` for one bead, shared by all chains.

    Solved in coordinates relative to the first candidate atom ``a0``: R - r_a0 = sum_i w_i
    (r_i - r_a0) for i != a0, w_a0 = 1 - sum.  The CG positions are first brought to the image
    closest to ``a0``.
    """
    ref, others = candidates[0], candidates[1:]
    rows, rhs = [], []
    for f in frames:
        r0 = X[f, :, ref]
        target = r0 + min_image(Y[f, :, bead] - r0, boxes[f])
        rows.append((X[f][:, others] - r0[:, None]).transpose(0, 2, 1).reshape(-1, len(others)))
        rhs.append((target - r0).reshape(-1))
    w_rest, *_ = np.linalg.lstsq(np.concatenate(rows), np.concatenate(rhs), rcond=None)
    return np.concatenate([[1.0 - w_rest.sum()], w_rest])


def monomer_atoms(m: int) -> dict[str, int]:
    """0-based indices of the named atoms of monomer m (0-based) in the PS1 atom order."""
    o = ATOMS_PER_MONOMER * m
    return {
        "CH2_H_a": o + 0, "CH2_C": o + 1, "CH2_H_b": o + 2,  # H1 C2 H3
        "CH_H": o + 3, "CH_C": o + 4,  # H4 C5 (carries the ring)
        "ring": list(range(o + 5, o + 16)),  # C6 C7 H8 C9 H10 C11 H12 C13 H14 C15 H16
    }


def rule_beads(atoms, masses, start_cap: int, end_cap: int):
    """Per bead: (name, type, map name, [(atom index, weight)]) of the rule.

    Weights are atom masses; CH groups shared by two B beads enter each with half mass.  Atoms
    with weight 0 are listed only to give them a home bead.
    """
    def m(i):
        return masses[atoms[i]["type"]]

    beads = []
    for k in range(N_MONOMERS):
        a = monomer_atoms(k)
        ch2 = [a["CH2_C"], a["CH2_H_a"], a["CH2_H_b"]]
        if k == 0:
            # Chain start: cg.xtc has exactly the position of C2.  H1, H3 and the end hydrogen
            # H161 need a home bead; they get weight 0.
            entries = [(a["CH2_C"], 1.0), (a["CH2_H_a"], 0.0), (a["CH2_H_b"], 0.0), (start_cap, 0.0)]
            map_name = "B_first"
        else:
            p = monomer_atoms(k - 1)
            entries = [(i, m(i)) for i in ch2]
            entries += [(p["CH_C"], m(p["CH_C"]) / 2), (p["CH_H"], m(p["CH_H"]) / 2)]
            entries += [(a["CH_C"], m(a["CH_C"]) / 2), (a["CH_H"], m(a["CH_H"]) / 2)]
            map_name = "B"
            if k == N_MONOMERS - 1:
                entries.append((end_cap, 0.0))  # H162: not in the bead position
                map_name = "B_last"
        beads.append((f"B{k + 1}", "B", map_name, entries))
        beads.append((f"S{k + 1}", "S", "S", [(i, m(i)) for i in a["ring"]]))
    return beads


def weight_matrix(beads, n_atoms):
    W = np.zeros((len(beads), n_atoms))
    for b, (_, _, _, entries) in enumerate(beads):
        for i, w in entries:
            W[b, i] += w
        W[b] /= W[b].sum()
    return W


def deviations(R, Y, boxes):
    """|minimum image (R - Y)| per frame, chain and bead (nm)."""
    return np.stack([np.linalg.norm(min_image(R[f] - Y[f], boxes[f]), axis=-1)
                     for f in range(len(R))])


def summarize(dev, bead_types):
    def stats(d):
        return {"max_nm": round(float(d.max()), 6), "rms_nm": round(float(np.sqrt((d ** 2).mean())), 6)}

    bt = np.array(bead_types)
    clean = [f for f in range(dev.shape[0]) if f not in TRAINING_DUPLICATE_FRAMES]
    out = stats(dev)
    out["per_type"] = {t: stats(dev[:, :, bt == t]) for t in sorted(set(bead_types))}
    out["chain_ends"] = {"B1": stats(dev[:, :, 0]), f"B{N_MONOMERS}": stats(dev[:, :, -2])}
    out["clean_frames"] = stats(dev[clean])
    out["n_frames"], out["n_beads"] = int(dev.shape[0]), int(dev.shape[1] * dev.shape[2])
    return out


# --------------------------------------------------------------------------------------------
# VOTCA XML
# --------------------------------------------------------------------------------------------
def _fmt(w: float) -> str:
    return f"{w:.4f}".rstrip("0").rstrip(".") if w else "0"


def write_votca_xml(path: Path, molname: str, atoms, beads, measured: str = "") -> None:
    def ref(i):
        a = atoms[i]
        return f"{a['resnr']}:{a['resname']}:{a['name']}"

    maps = {}
    for _, _, map_name, entries in beads:
        ws = [w for _, w in entries]
        if maps.setdefault(map_name, ws) != ws:
            raise ValueError(f"map {map_name} used with different weights")

    bnames = [b[0] for b in beads]
    B = [n for n in bnames if n.startswith("B")]
    S = [n for n in bnames if n.startswith("S")]
    bonds_bb = [f"{B[k]} {B[k + 1]}" for k in range(len(B) - 1)]
    bonds_bs = [f"{B[k]} {S[k]}" for k in range(len(S))] + \
               [f"{S[k]} {B[k + 1]}" for k in range(len(S) - 1)]
    angles_bbb = [f"{B[k]} {B[k + 1]} {B[k + 2]}" for k in range(len(B) - 2)]
    angles_sbs = [f"{S[k]} {B[k + 1]} {S[k + 1]}" for k in range(len(S) - 1)]

    L = []
    L.append("<cg_molecule>")
    L.append(f"""  <!--
    sPS (syndiotactic polystyrene, {N_MONOMERS}-mers, moleculetype {molname}), 2 beads per monomer:
    B = backbone, S = phenyl.  Reproduces DeepBackmap's sPS CG data (eval_t568/cg.xtc) from aa.xtc
    to xtc precision ({measured}); derived by scripts/derive_sps_mapping.py,
    see docs/sps-mapping.md.
    The weights are NOT plain mass weights of disjoint atom groups:
      S_k  = centre of mass of the phenyl ring C6H5 of monomer k (mass weights).
      B_k  = centre of mass of CH2(k) + half of CH(k-1) + half of CH(k) (k = 2..{N_MONOMERS}): each
             backbone CH carbon (and its H) that carries a ring appears in two B beads with half its
             mass.  VOTCA normalizes each map by its sum.
      B1   = the chain-start carbon C2 alone (this is what cg.xtc contains; not a mass centre).
    Weight 0 only gives an atom a home bead without moving the bead: H1, H3 and the end hydrogen
    H161 in B1, the end hydrogen H162 in B{N_MONOMERS}.
  -->""")
    L.append("  <name>PS</name>")
    L.append(f"  <ident>{molname}</ident>")
    L.append("  <topology>")
    L.append("    <cg_beads>")
    for name, btype, map_name, entries in beads:
        L.append("      <cg_bead>")
        L.append(f"        <name>{name}</name>")
        L.append(f"        <type>{btype}</type>")
        L.append(f"        <mapping>{map_name}</mapping>")
        L.append(f"        <beads>{' '.join(ref(i) for i, _ in entries)}</beads>")
        L.append("      </cg_bead>")
    L.append("    </cg_beads>")
    L.append("    <cg_bonded>")
    for kind, name, items, comment in (
            ("bond", "BB", bonds_bb, "backbone B(k)-B(k+1)"),
            ("bond", "BS", bonds_bs, "phenyl to both B beads sharing its CH: B(k)-S(k), S(k)-B(k+1)"),
            ("angle", "BBB", angles_bbb, "backbone B(k)-B(k+1)-B(k+2)"),
            ("angle", "SBS", angles_sbs, "S(k)-B(k+1)-S(k+1)")):
        L.append(f"      <!-- {comment} -->")
        L.append(f"      <{kind}>")
        L.append(f"        <name>{name}</name>")
        L.append("        <beads>")
        L.extend(f"          {it}" for it in items)
        L.append("        </beads>")
        L.append(f"      </{kind}>")
    L.append("    </cg_bonded>")
    L.append("  </topology>")
    L.append("  <maps>")
    for map_name, ws in maps.items():
        L.append("    <map>")
        L.append(f"      <name>{map_name}</name>")
        L.append(f"      <weights>{' '.join(_fmt(w) for w in ws)}</weights>")
        L.append("    </map>")
    L.append("  </maps>")
    L.append("</cg_molecule>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")


def run_csg_map(data: Path, xml: Path, out_xtc: Path) -> None:
    csg_map = shutil.which("csg_map")
    if csg_map is None:
        raise RuntimeError("csg_map not found on PATH")
    cmd = [csg_map, "--top", str(data / "ps_excl.tpr"), "--trj", str(data / "aa.xtc"),
           "--cg", str(xml), "--out", str(out_xtc)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"csg_map failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True,
                    help="eval_t568 folder: aa.gro aa.xtc cg.gro cg.xtc topol_PS1.itp topol.top [ps_excl.tpr]")
    ap.add_argument("--dbm-map", type=Path, default=None,
                    help="DeepBackmap PS1.map (default: DATA/../dbm/PS1.map)")
    ap.add_argument("--out", type=Path, required=True, help="VOTCA mapping XML to write")
    ap.add_argument("--fit-frames", type=int, default=20,
                    help="number of frames (evenly spaced) used for the free least-squares fit")
    ap.add_argument("--votca", action="store_true",
                    help="also run csg_map with the written XML and measure its output")
    ap.add_argument("--verbose", action="store_true", help="print fitted vs rule weights to stderr")
    args = ap.parse_args(argv)

    data = args.data
    dbm_map = args.dbm_map or data.parent / "dbm" / "PS1.map"
    molname, atoms, bonds = read_itp(data / "topol_PS1.itp")
    masses = read_atomtype_masses(data / "topol.top")
    n_mol = len(atoms)
    dbm = read_dbm_map(dbm_map)
    bead_names = read_cg_bead_names(data)

    X, Y, boxes = load_frames(data, n_mol, bonds)

    # Chain-end hydrogens: the two atoms after the last monomer.
    caps = list(range(N_MONOMERS * ATOMS_PER_MONOMER, n_mol))
    bonded_to = {j: i for i, j in bonds if j in caps} | {i: j for i, j in bonds if i in caps}
    start_cap = next(c for c in caps if bonded_to[c] == monomer_atoms(0)["CH2_C"])
    end_cap = next(c for c in caps if c != start_cap)

    beads = rule_beads(atoms, masses, start_cap, end_cap)
    if [b[0] for b in beads] != bead_names:
        raise ValueError(f"bead order {[b[0] for b in beads]} != cg.gro {bead_names}")
    W = weight_matrix(beads, n_mol)
    homeless = set(range(n_mol)) - {i for b in beads for i, _ in b[3]}
    if homeless:
        raise ValueError(f"atoms without a bead: {sorted(homeless)}")

    # 1) free fit over candidates near DBM's atoms of each bead, 2) compare with the rule.
    frames = np.unique(np.linspace(0, len(X) - 1, args.fit_frames).round().astype(int))
    W_fit = np.zeros_like(W)
    for b in range(BEADS_PER_CHAIN):
        seed = dbm[b + 1]
        cands = neighbourhood(seed, bonds, depth=2)
        # put the heaviest rule atom first as reference (numerically nicer)
        cands.sort(key=lambda i: -W[b, i])
        W_fit[b, cands] = fit_bead(X, Y, boxes, b, cands, frames)
        if args.verbose:
            print(f"{bead_names[b]}: " + ", ".join(
                f"{atoms[i]['name']} fit={W_fit[b, i]:.4f} rule={W[b, i]:.4f}" for i in cands
                if abs(W_fit[b, i]) > 2e-3 or W[b, i] > 0), file=sys.stderr)
    max_dw = float(np.abs(W_fit - W).max())

    bead_types = [b[1] for b in beads]
    R_rule = np.einsum("ba,fcax->fcbx", W, X)
    R_fit = np.einsum("ba,fcax->fcbx", W_fit, X)
    result = {"rule": summarize(deviations(R_rule, Y, boxes), bead_types),
              "free_fit": {**summarize(deviations(R_fit, Y, boxes), bead_types),
                           "fit_frames": len(frames),
                           "max_abs_weight_diff_to_rule": round(max_dw, 4)}}

    rule = result["rule"]
    write_votca_xml(args.out, molname, atoms, beads,
                    measured=f"max {rule['max_nm']:.4f} nm, rms {rule['rms_nm']:.4f} nm "
                             f"over {rule['n_frames']} frames x {rule['n_beads']} beads")
    result["xml"] = str(args.out)

    if args.votca:
        with tempfile.TemporaryDirectory() as tmp:
            out_xtc = Path(tmp) / "sps_cg.xtc"
            run_csg_map(data, args.out, out_xtc)
            _, Yv, _ = load_frames(data, n_mol, bonds, cg_xtc=out_xtc)
        R_v = Yv  # csg_map's beads, compared with cg.xtc exactly like the numpy mapping
        result["csg_map"] = summarize(deviations(R_v, Y, boxes), bead_types)
        # cg.xtc looks like csg_map output itself: count bit-identical bead positions
        result["csg_map"]["identical_to_cg_xtc_fraction"] = round(
            float((np.abs(R_v - Y).max(-1) < 1e-6).mean()), 4)
        result["csg_map_vs_numpy_rule"] = summarize(deviations(R_v, R_rule, boxes), bead_types)

    print(json.dumps(result))
    ok = result["rule"]["max_nm"] <= 0.005
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
