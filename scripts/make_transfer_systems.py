#!/usr/bin/env python
"""Octane and cumene of DeepBackmap's chemical-transferability set as backmap training systems in
the **sPS force field's atom types** (C, C_AR, H, H_AR; beads B = aliphatic, S = aromatic ring), so
that a model trained on them can be applied to sPS (thesis 5.4: train on octane + cumene, backmap sPS).

From (``--data``, default ../shared/data; see its README.md, section "transfer/"):
  transfer/top/{L49C,G065}.itp   ATB topologies: atom order and names, [bonds]
  transfer/dbm/{L49C,G065}.map   DBM mappings: atom feature type (C/C_AR/H/H_AR) and bead type
  transfer/dbm/ff2.txt           DBM's parameters (= the sPS force field): the dihedral types
  sps/top/topol.top, PS1.itp     the sPS force field header, and how sPS writes its terms
  transfer/{octane,cumene}/{aa,cg}/N.gro   paired frames (molecule count; checks)

Writes into ``--out`` (default recipes/transfer):
  <system>/topol.top   self-contained topology: sPS [defaults]/[atomtypes]/[bondtypes]/[angletypes]
                       copied verbatim; one moleculetype (name from the ATB itp, nrexcl 2 as PS1);
                       [atoms] with ATB names/order, DBM type, mass and charge of the sPS atom type
                       (an aromatic carbon without an aromatic H gets charge 0, as PS1's ipso carbon);
                       [bonds] from the ATB itp; [angles] every angle of the bond graph; [dihedrals]
                       as PS1.itp writes them (parameters from ff2.txt, since topol.top has no
                       [dihedraltypes]): one proper (func 1) per C-C bond, heavy-atom path preferred,
                       and per aromatic ring 6 in-ring + 6 out-of-plane harmonic impropers (func 2);
                       [exclusions] all pairs of the aromatic group more than nrexcl bonds apart
                       (as PS1.itp); [molecules] with the count of the .gro files.
  <system>/<system>.xml  VOTCA mapping.  The CG frames were NOT made with DBM's .map beads as
                       centres of mass; they follow DBM's cg.py scripts (the sPS rule of
                       docs/sps-mapping.md): octane B1 = atom C8 alone, B2..B4 = CH2 + 1/2 of each
                       neighbouring CH2 (B4: the CH3 end C1 H9 H10 at half, H11 not counted); cumene
                       B1 = C1 alone, B3 = C3 alone, S2 = centre of mass of the ring C6H5.  Atoms
                       with weight 0 are listed only to give them a home bead.

Then checks (prints one JSON document): backmap's .top reader and the VOTCA reader load the files,
the ``prepare`` step's pair reader reads all frames (atom names vs the topology, CG vs mapping
deviation: max / RMS nm), AA bond-length mean / s.d. per bond type, and ``gmx grompp`` on one frame
(when gmx is on PATH).

Rerun (from the repository root, in the venv):
    python scripts/make_transfer_systems.py [--data ../shared/data] [--out recipes/transfer] [--no-check]
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NREXCL = 2  # as PS1.itp

# name -> (ATB/DBM molecule, title, CG rule).  A bead: (name, type, [(atom, weight factor)]);
# the weight is factor * mass (VOTCA normalizes per bead), factor 0 only gives the atom a home.
_CH2 = lambda c, h1, h2, f=1.0: [(c, f), (h1, f), (h2, f)]  # noqa: E731
SYSTEMS: dict[str, tuple[str, str, list[tuple[str, str, list[tuple[str, float]]]]]] = {
    "octane": ("L49C", "liquid n-octane, 350 K", [
        ("B1", "B", [("C8", 1), ("H26", 0), ("H24", 0), ("H25", 0)]),
        ("B2", "B", _CH2("C6", "H20", "H21") + _CH2("C7", "H22", "H23", .5) + _CH2("C5", "H18", "H19", .5)),
        ("B3", "B", _CH2("C4", "H16", "H17") + _CH2("C5", "H18", "H19", .5) + _CH2("C3", "H14", "H15", .5)),
        ("B4", "B", _CH2("C2", "H12", "H13") + _CH2("C3", "H14", "H15", .5) + _CH2("C1", "H9", "H10", .5)
         + [("H11", 0)]),
    ]),
    "cumene": ("G065", "liquid cumene, 350 K", [
        ("B1", "B", [("C1", 1), ("H1", 0), ("H2", 0), ("H3", 0), ("C2", 0), ("H4", 0)]),
        ("S2", "S", [(a, 1) for a in ("C4", "C5", "H8", "C6", "H9", "C7", "H10", "C8", "H11", "C9", "H12")]),
        ("B3", "B", [("C3", 1), ("H5", 0), ("H6", 0), ("H7", 0)]),
    ]),
}
DBM_BEAD_TYPE = {"A": "S"}  # DBM's cumene map calls the ring bead A; sPS calls it S


# ---------------------------------------------------------------- reading
def sections(text: str) -> dict[str, list[list[str]]]:
    """GROMACS/DBM-style sections: name (lower case, '/name' closes) -> rows of fields, comments cut."""
    out: dict[str, list[list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.split(";")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            name = line.strip("[] ").lower()
            current = None if name.startswith("/") else out.setdefault(name, [])
        elif current is not None:
            current.append(line.split())
    return out


@dataclass
class ForceField:
    header: str  # sPS topol.top up to its #include, verbatim
    atomtypes: dict[str, tuple[float, float]]  # type -> (mass, charge)
    bondtypes: set[tuple[str, str]]
    angletypes: set[tuple[str, str, str]]
    dihedraltypes: dict[tuple[str, str, str, str], tuple[int, str]]  # -> (func, parameter text)


def read_forcefield(sps_top: Path, ff_txt: Path) -> ForceField:
    """The sPS header and types; dihedral types from DBM's ff2.txt (topol.top has none)."""
    lines = sps_top.read_text().splitlines()
    end = next(i for i, l in enumerate(lines) if l.lstrip().startswith("#include"))
    while lines[end - 1].strip() == "" or lines[end - 1].lstrip().startswith(";"):
        end -= 1
    s = sections(sps_top.read_text())
    assert "dihedraltypes" not in s, "sPS topol.top now has [dihedraltypes]: use them"
    dih = {}
    for row in sections(ff_txt.read_text())["dihedral_types"]:  # i j k l channel func params...
        dih[tuple(row[:4])] = (int(row[5]), "  ".join(row[6:]))
    return ForceField("\n".join(lines[:end]) + "\n",
                      {r[0]: (float(r[1]), float(r[2])) for r in s["atomtypes"]},
                      {tuple(r[:2]) for r in s["bondtypes"]}, {tuple(r[:3]) for r in s["angletypes"]}, dih)


@dataclass
class Molecule:
    name: str
    atom_names: list[str]
    resname: str
    types: list[str]  # DBM feature types = sPS atom types
    dbm_beads: list[tuple[int, str]]  # (DBM bead index, sPS bead type) per atom
    bonds: list[tuple[int, int]]  # 0-based

    @property
    def graph(self) -> nx.Graph:
        g = nx.Graph()
        g.add_nodes_from(range(len(self.types)))
        g.add_edges_from(self.bonds)
        return g


def read_molecule(itp: Path, dbm_map: Path) -> Molecule:
    """ATB names/order/bonds + DBM types and beads; checks that the two agree atom by atom."""
    s = sections(itp.read_text())
    (name, _), atoms = s["moleculetype"][0], s["atoms"]
    rows = sections(dbm_map.read_text())["map"]
    assert [int(r[0]) for r in rows] == list(range(1, len(atoms) + 1)), f"{dbm_map}: atoms not 1..{len(atoms)}"
    types = [r[1] for r in rows]
    for a, t in zip(atoms, types):  # the DBM type must be the ATB atom's element (and aromaticity)
        heavy = float(a[7]) > 2
        assert heavy == t.startswith("C") and (a[1] == "CAro") == (t == "C_AR"), f"atom {a[0]}: {a[1]} vs {t}"
    return Molecule(name, [a[4] for a in atoms], atoms[0][3], types,
                    [(int(r[2]), DBM_BEAD_TYPE.get(r[3], r[3])) for r in rows],
                    [(int(b[0]) - 1, int(b[1]) - 1) for b in s["bonds"]])


# ---------------------------------------------------------------- bonded terms
def _typed(types: list[str], idx: tuple[int, ...], table) -> bool:
    key = tuple(types[i] for i in idx)
    return key in table or key[::-1] in table


def angles(mol: Molecule) -> list[tuple[int, int, int]]:
    g = mol.graph
    return [(i, j, k) for j in sorted(g) for i, k in itertools.combinations(sorted(g[j]), 2)]


def proper_dihedrals(mol: Molecule, ff: ForceField) -> list[tuple[int, int, int, int]]:
    """One func-1 dihedral per bond, as PS1.itp (backbone C-C-C-C; H-C-C-C at chain ends): among
    the typed i-j-k-l the one with most heavy end atoms, then lowest indices."""
    g, t = mol.graph, mol.types
    table = {k for k, (func, _) in ff.dihedraltypes.items() if func == 1}
    out = []
    for j, k in sorted(tuple(sorted(b)) for b in mol.bonds):
        cands = [(i, j, k, l) for i in sorted(g[j]) for l in sorted(g[k])
                 if k != i != l != j and _typed(t, (i, j, k, l), table)]
        if cands:
            heavy = lambda i: not t[i].startswith("H")  # noqa: E731
            out.append(min(cands, key=lambda d: (-heavy(d[0]) - heavy(d[3]), d)))
    return out


def aromatic_impropers(mol: Molecule, ff: ForceField) -> list[tuple[int, int, int, int]]:
    """Per 6-ring of C_AR, as PS1.itp: (r_i, r_i+1, r_i+2, r_i+3) and (r_i, r_i+1, r_i-1, substituent),
    the ring numbered from the carbon with a non-H substituent (ipso) towards its lower-numbered
    neighbour."""
    g, t = mol.graph, mol.types
    table = {k for k, (func, _) in ff.dihedraltypes.items() if func == 2}
    out = []
    for ring in nx.cycle_basis(g.subgraph([i for i in g if t[i] == "C_AR"])):
        assert len(ring) == 6
        sub = {r: [n for n in g[r] if n not in ring] for r in ring}
        assert all(len(v) == 1 for v in sub.values()), "ring atom without exactly one substituent"
        start = min(ring, key=lambda r: (t[sub[r][0]].startswith("H"), r))
        order = [start, min(n for n in g[start] if n in ring)]
        while len(order) < 6:
            order.append(next(n for n in g[order[-1]] if n in ring and n != order[-2]))
        out += [tuple(order[(i + d) % 6] for d in range(4)) for i in range(6)]
        out += [(order[i], order[(i + 1) % 6], order[i - 1], sub[order[i]][0]) for i in range(6)]
    for d in out:
        assert _typed(t, d, table), f"improper {d}: types {[t[i] for i in d]} not in ff2.txt"
    return out


def ring_exclusions(mol: Molecule) -> list[tuple[int, int]]:
    """Pairs of the aromatic group (C_AR, H_AR) more than NREXCL bonds apart, as PS1.itp."""
    g = mol.graph
    aromatic = g.subgraph([i for i in g if mol.types[i] in ("C_AR", "H_AR")])
    out = []
    for group in nx.connected_components(aromatic):
        dist = dict(nx.all_pairs_shortest_path_length(aromatic.subgraph(group)))
        out += [(i, j) for i, j in itertools.combinations(sorted(group), 2) if dist[i][j] > NREXCL]
    return sorted(out)


# ---------------------------------------------------------------- writing
def dihedral_rows(dihedrals: list[tuple[int, int, int, int]], types: list[str], ff: ForceField) -> list[str]:
    """[ dihedrals ] lines with explicit parameters, as PS1.itp writes them."""
    rows = []
    for d in dihedrals:
        key = tuple(types[i] for i in d)
        func, params = ff.dihedraltypes.get(key) or ff.dihedraltypes[key[::-1]]
        rows.append("".join(f"{i + 1:6d}" for i in d) + f"{func:7d}    {params}")
    return rows


def write_topology(path: Path, mol: Molecule, ff: ForceField, count: int, title: str) -> None:
    t, g = mol.types, mol.graph
    for b in mol.bonds:
        assert _typed(t, b, ff.bondtypes), f"bond {b}: no sPS bondtype"
    angs = angles(mol)
    for a in angs:
        assert _typed(t, a, ff.angletypes), f"angle {a}: no sPS angletype"
    L = [f"; {mol.name}: {title}, in the sPS force field (atom types C, C_AR, H, H_AR).",
         "; Written by scripts/make_transfer_systems.py from the ATB itp (names, order, bonds), DBM's .map",
         "; (atom types) and ff2.txt (dihedral parameters); header copied from ../shared/data/sps/top/topol.top.",
         "", ff.header, "[ moleculetype ]", "; Name      nrexcl", f"{mol.name:<10}{NREXCL:>4}", "",
         "[ atoms ]", ";   nr    type   resnr  residu    atom    cgnr     charge       mass"]
    for i, (name, typ) in enumerate(zip(mol.atom_names, t)):
        mass, charge = ff.atomtypes[typ]
        if typ == "C_AR" and not any(t[n] == "H_AR" for n in g[i]):
            charge = 0.0  # PS1.itp: the ipso carbon is neutral, each C_AR-H_AR pair is
        L.append(f"{i + 1:6d}   {typ:<6}{1:6d}   {mol.resname:<6}  {name:<6}{i + 1:6d}   {charge:8.3f}   {mass:8.4f}")
    L += ["", "[ bonds ]", ";  ai      aj     funct"] + [f"{i + 1:6d}  {j + 1:6d}       1" for i, j in mol.bonds]
    L += ["", "[ angles ]", ";  ai     aj    ak   funct"] + [f"{i + 1:6d}  {j + 1:6d}  {k + 1:6d}       1" for i, j, k in angs]
    L += ["", "[ dihedrals ]", ";  ai    aj    ak     al    funct", "; proper dihedrals, one per C-C bond (as PS1.itp)"]
    L += dihedral_rows(proper_dihedrals(mol, ff), t, ff)
    impropers = aromatic_impropers(mol, ff)
    if impropers:
        L += ["; improper dihedrals of the aromatic ring (as PS1.itp)"] + dihedral_rows(impropers, t, ff)
    excl = ring_exclusions(mol)
    if excl:
        L += ["", "[ exclusions ]", f"; pairs of the aromatic group more than {NREXCL} bonds apart (as PS1.itp)"]
        L += [f"{i + 1:6d}  {j + 1:6d}" for i, j in excl]
    L += ["", "[ system ]", f"{title} (DBM transfer set) in the sPS force field", "",
          "[ molecules ]", ";molecule name number", f"{mol.name:<10}{count:6d}", ""]
    path.write_text("\n".join(L))


def write_mapping(path: Path, mol: Molecule, ff: ForceField, system: str, beads) -> None:
    """VOTCA cg_molecule XML; checks each atom's home bead has the (renamed) DBM bead type."""
    index = {n: i for i, n in enumerate(mol.atom_names)}
    mass = {n: ff.atomtypes[mol.types[i]][0] for n, i in index.items()}
    share = np.full((len(beads), len(index)), -1.0)  # backmap's home bead: largest share, first on ties
    for b, (_, _, atoms) in enumerate(beads):
        tot = sum(f * mass[a] for a, f in atoms)
        for a, f in atoms:
            share[b, index[a]] = f * mass[a] / tot
    assert (share.max(0) >= 0).all(), "atom without a bead"
    home = share.argmax(0)
    for i, b in enumerate(home):
        assert beads[b][1] == mol.dbm_beads[i][1], f"{mol.atom_names[i]}: bead type {beads[b][1]} vs DBM"
    moved = [mol.atom_names[i] for i in range(len(home)) if home[i] + 1 != mol.dbm_beads[i][0]]
    x = ["<cg_molecule>", "  <!--",
         f"    {system} ({mol.name}) in sPS bead types: B = aliphatic, S = aromatic ring. Written by",
         "    scripts/make_transfer_systems.py; reproduces ../shared/data/transfer/" + system + "/cg/N.gro, which",
         "    DBM made with cg.py scripts, not as centres of mass of its .map beads (weight = mass x factor).",
         "    Weight 0 only gives an atom a home bead." + (f" Home bead differs from DBM's .map for: {' '.join(moved)}"
                                                          " (as sps.xml for sPS's first CH)." if moved else ""),
         "  -->", f"  <name>{mol.name}</name>", f"  <ident>{mol.name}</ident>", "  <topology>", "    <cg_beads>"]
    for name, btype, atoms in beads:
        x += ["      <cg_bead>", f"        <name>{name}</name>", f"        <type>{btype}</type>",
              f"        <mapping>{name}</mapping>",
              f"        <beads>{' '.join(f'1:{mol.resname}:{a}' for a, _ in atoms)}</beads>", "      </cg_bead>"]
    cg_bonds = sorted({tuple(sorted((int(home[i]), int(home[j])))) for i, j in mol.bonds if home[i] != home[j]})
    g = nx.Graph(cg_bonds)
    cg_angles = [(i, j, k) for j in sorted(g) for i, k in itertools.combinations(sorted(g[j]), 2)]
    x += ["    </cg_beads>", "    <cg_bonded>"]
    for kind, tuples in (("bond", cg_bonds), ("angle", cg_angles)):
        if tuples:
            x += [f"      <{kind}>", f"        <name>{kind}</name>", "        <beads>"]
            x += ["          " + " ".join(beads[b][0] for b in tup) for tup in tuples]
            x += ["        </beads>", f"      </{kind}>"]
    x += ["    </cg_bonded>", "  </topology>", "  <maps>"]
    for name, _, atoms in beads:
        w = " ".join(f"{f * mass[a]:g}" for a, f in atoms)
        x += ["    <map>", f"      <name>{name}</name>", f"      <weights>{w}</weights>", "    </map>"]
    x += ["  </maps>", "</cg_molecule>", ""]
    path.write_text("\n".join(x))


def molecule_count(folder: Path, n_atoms: int) -> int:
    counts = {int(f.read_text().splitlines()[1]) for f in sorted((folder / "aa").glob("*.gro"))}
    assert len(counts) == 1 and counts.pop() % n_atoms == 0, f"{folder}/aa: atom counts differ or misfit"
    return int(next(f for f in (folder / "aa").glob("*.gro")).read_text().splitlines()[1]) // n_atoms


# ---------------------------------------------------------------- checks
def check(top: Path, xml: Path, pairs_dir: Path) -> dict:
    """Read with backmap as the prepare step does; CG deviation, AA bond statistics, grompp."""
    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.system.pairs import pair_folder_frames, pairs_from_folders

    topo = load_topology(top)
    cg_top = load_mapping(xml, topo).cg_topology(topo)
    frames = pair_folder_frames(pairs_dir)
    pairs = pairs_from_folders(cg_top, pairs_dir, frames)
    mt = topo.blocks[0].moltype
    bonds = topo.blocks[0].global_rows(mt.bonds)
    d = np.linalg.norm(pairs.aa[:, bonds[:, 0]] - pairs.aa[:, bonds[:, 1]], axis=-1).astype(float)
    key = np.array(["-".join(sorted(topo.atom_types[b])) for b in bonds])
    stats = {k: {"n": int(d[:, key == k].size), "mean_nm": round(float(d[:, key == k].mean()), 5),
                 "sd_nm": round(float(d[:, key == k].std()), 5)} for k in sorted(set(key))}
    out = {"topology": topo.summary(), "frames": ",".join(map(str, frames)), "n_frames": len(frames),
           "molecules": topo.n_molecules, "atoms": topo.n_atoms, "beads": cg_top.n_beads,
           "cg_vs_mapping_max_nm": round(pairs.info["cg_vs_mapping_max_nm"], 5),
           "cg_vs_mapping_rms_nm": round(pairs.info["cg_vs_mapping_rms_nm"], 5), "bond_lengths": stats}
    if shutil.which("gmx"):
        with tempfile.TemporaryDirectory() as tmp:
            mdp = Path(tmp) / "em.mdp"
            mdp.write_text("integrator = steep\nnsteps = 0\ncutoff-scheme = Verlet\nrcoulomb = 1.0\nrvdw = 1.0\n")
            r = subprocess.run(["gmx", "grompp", "-f", mdp, "-c", pairs_dir / "aa" / f"{frames[0]}.gro", "-p", top,
                                "-o", Path(tmp) / "t.tpr", "-po", Path(tmp) / "out.mdp", "-maxwarn", "0"],
                               capture_output=True, text=True, cwd=tmp)
            notes = re.findall(r"^(WARNING|ERROR|NOTE) \d+.*\n(.*)", r.stderr, re.M)
            out["grompp"] = {"ok": r.returncode == 0, "messages": [" ".join(n).strip() for n in notes]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "recipes" / "transfer")
    ap.add_argument("--no-check", action="store_true", help="only write the files")
    args = ap.parse_args()
    tr = args.data / "transfer"
    ff = read_forcefield(args.data / "sps" / "top" / "topol.top", tr / "dbm" / "ff2.txt")
    report = {}
    for system, (molname, title, beads) in SYSTEMS.items():
        mol = read_molecule(tr / "top" / f"{molname}.itp", tr / "dbm" / f"{molname}.map")
        folder = args.out / system
        folder.mkdir(parents=True, exist_ok=True)
        write_topology(folder / "topol.top", mol, ff, molecule_count(tr / system, len(mol.types)), title)
        write_mapping(folder / f"{system}.xml", mol, ff, system, beads)
        if not args.no_check:
            report[system] = check(folder / "topol.top", folder / f"{system}.xml", tr / system)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
