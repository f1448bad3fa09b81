"""GROMACS topologies: ``.top`` with its force-field parameters (parmed), ``.tpr`` (MDAnalysis),
and bare coordinates ``.gro``/``.pdb`` with bonds guessed from distances (MDAnalysis)."""
from __future__ import annotations

import tempfile
import warnings
from contextlib import closing
from pathlib import Path

import numpy as np

from backmap.api import BackmapError, Reader
from backmap.api.system import MoleculeBlock, MoleculeType, Topology, element_from_mass, gromacs_topdir


def _blocks(moltypes: list[MoleculeType], counts: list[int]) -> list[MoleculeBlock]:
    blocks, first = [], 0
    for mt, n in zip(moltypes, counts):
        if n > 0:
            blocks.append(MoleculeBlock(mt, n, first))
            first += n * mt.n_atoms
    return blocks


class GromacsTopReader(Reader):
    """``.top`` files with ``#include``/``#define`` resolved by parmed (GROMACS share dir searched)."""

    name = "gromacs_top"
    what = "topology"
    suffixes = (".top",)
    summary = "GROMACS .top/.itp with parameters (parmed)"

    def read(self, path: Path, topology=None) -> Topology:
        import parmed
        from parmed.gromacs import GromacsTopologyFile
        from parmed.gromacs._gromacsfile import GromacsFile

        topdir = gromacs_topdir()
        if topdir is not None:
            parmed.gromacs.GROMACS_TOPDIR = str(topdir)
        from parmed.exceptions import ParameterError

        unparametrized = None
        try:
            with closing(GromacsFile(str(path), includes=[str(topdir)] if topdir else [])) as f:
                lines = list(f)
            contents, templates_only = _split_molecules_section(lines)
            # parse each molecule type once (parmed would otherwise build every copy of every molecule)
            with tempfile.TemporaryDirectory() as tmp:
                flat = Path(tmp) / "preprocessed.top"
                flat.write_text("".join(templates_only))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        top = GromacsTopologyFile(str(flat))
                    except ParameterError as exc:  # e.g. Martini's G96 angles (function 2): parmed has none
                        top = GromacsTopologyFile(str(flat), parametrize=False)
                        unparametrized = f"{exc} (parmed cannot read a functional form used)"
        except BackmapError:
            raise
        except Exception as exc:
            hint = "" if topdir else " (GROMACS share directory not found: install gromacs or set GMXDATA)"
            raise BackmapError(f"cannot read GROMACS topology: {exc}{hint}", source=path) from exc
        if not contents:
            raise BackmapError("no [ molecules ] section", source=path)
        # parmed appended one copy of each molecule type, in definition order; split them up again
        offsets, start = {}, 0
        for name, (mol, _) in top.molecules.items():
            offsets[name] = (start, start + len(mol.atoms))
            start += len(mol.atoms)
        moltypes, counts = [], []
        for name, count in contents:
            if name not in top.molecules:
                raise BackmapError(f"[ molecules ] lists {name!r} but no [ moleculetype ] defines it", source=path)
            mol, nrexcl = top.molecules[name]
            a, b = offsets[name]
            moltypes.append(_from_parmed(name, mol, nrexcl, None if unparametrized else top[a:b]))
            counts.append(count)
        d = top.defaults
        defaults = {"nbfunc": int(d.nbfunc), "comb_rule": int(d.comb_rule), "gen_pairs": d.gen_pairs,
                    "fudge_lj": float(d.fudgeLJ), "fudge_qq": float(d.fudgeQQ)}
        topology = Topology(path, _blocks(moltypes, counts), defaults=defaults)
        if unparametrized:
            topology.meta["unparametrized"] = unparametrized
        return topology


def _split_molecules_section(lines: list[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """(name, count) rows of the preprocessed [ molecules ] section in file order, and the
    lines without that section."""
    section, rows, rest = None, [], []
    for line in lines:
        s = line.split(";")[0].strip()
        if s.startswith("["):
            section = s.strip("[] ").lower()
        if section == "molecules":
            if s and not s.startswith("["):
                name, count = s.split()[:2]
                rows.append((name, int(count)))
            continue
        rest.append(line)
    return rows, rest


def _from_parmed(name: str, mol, nrexcl: int, parametrized) -> MoleculeType:
    from parmed.periodic_table import Element

    atoms = mol.atoms
    elements = [Element[a.atomic_number] if a.atomic_number > 0 else element_from_mass(a.mass) for a in atoms]
    return MoleculeType(
        name=name,
        atom_names=np.array([a.name for a in atoms]),
        atom_types=np.array([str(a.type) for a in atoms]),
        elements=np.array(elements),
        masses=np.array([a.mass for a in atoms], float),
        charges=np.array([a.charge for a in atoms], float),
        resids=np.array([a.residue.number for a in atoms], int),
        resnames=np.array([a.residue.name for a in atoms]),
        bonds=np.array([(b.atom1.idx, b.atom2.idx) for b in mol.bonds], int).reshape(-1, 2),
        nrexcl=nrexcl,
        parameters=parametrized,
        exclusions=np.array(sorted({tuple(sorted((a.idx, b.idx))) for a in atoms for b in a._exclusion_partners}),
                            int).reshape(-1, 2),
    )


def _from_universe(path: Path, u, with_types: bool) -> Topology:
    """Group consecutive identical molecules of an MDAnalysis universe into blocks."""
    a = u.atoms
    if hasattr(a, "molnums"):
        molnum, names = a.molnums, list(a.moltypes)
    else:  # no molecule information: one molecule per bonded fragment
        molnum = a.fragindices
        names = None
    starts = np.flatnonzero(np.r_[True, molnum[1:] != molnum[:-1]])
    if len(np.unique(molnum)) != len(starts):
        raise BackmapError("molecules are not contiguous in atom order", source=path)
    ends = np.r_[starts[1:], len(a)]
    bond_idx = np.array(u.bonds.indices, int).reshape(-1, 2) if hasattr(u, "bonds") else np.zeros((0, 2), int)
    moltypes: list[MoleculeType] = []
    counts: list[int] = []
    by_signature: dict = {}
    used_names: set[str] = set()
    for s, e in zip(starts, ends):
        sig = (names[s] if names else None, tuple(a.names[s:e]), tuple(a.resnames[s:e]))
        mt = by_signature.get(sig)
        if mt is None:
            name = names[s] if names else "_".join(dict.fromkeys(a.resnames[s:e]))
            if name in used_names:
                name = f"{name}_{len(used_names)}"
            used_names.add(name)
            mt = by_signature[sig] = _moltype_slice(name, a, s, e, bond_idx, with_types)
        if moltypes and moltypes[-1] is mt:
            counts[-1] += 1
        else:
            moltypes.append(mt)
            counts.append(1)
    return Topology(path, _blocks(moltypes, counts))


def _moltype_slice(name: str, a, s: int, e: int, bond_idx: np.ndarray, with_types: bool) -> MoleculeType:
    """The molecule type of atoms s:e of an MDAnalysis atom group."""
    inside = (bond_idx >= s).all(1) & (bond_idx < e).all(1)
    res = a.resindices[s:e]
    masses = a.masses[s:e].astype(float)
    given = a.elements[s:e] if hasattr(a, "elements") else [""] * (e - s)
    elements = [str(x).capitalize() if str(x).strip() else element_from_mass(m) for x, m in zip(given, masses)]
    return MoleculeType(
        name=name,
        atom_names=np.array(a.names[s:e]),
        atom_types=np.array(a.types[s:e]) if with_types else np.array(a.names[s:e]),
        elements=np.array(elements),
        masses=masses,
        charges=a.charges[s:e].astype(float) if hasattr(a, "charges") else np.zeros(e - s),
        resids=res - res[0] + 1,
        resnames=np.array(a.resnames[s:e]),
        bonds=bond_idx[inside] - s,
    )


class TprReader(Reader):
    """GROMACS run input ``.tpr`` (atoms, molecule types, bonds; no force-field parameters)."""

    name = "gromacs_tpr"
    what = "topology"
    suffixes = (".tpr",)
    summary = "GROMACS .tpr (MDAnalysis), no parameters"

    def read(self, path: Path, topology=None) -> Topology:
        import MDAnalysis as mda

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                u = mda.Universe(str(path))
        except Exception as exc:
            raise BackmapError(f"cannot read .tpr: {exc}", source=path) from exc
        return _from_universe(path, u, with_types=True)


class CoordinateTopologyReader(Reader):
    """``.gro``/``.pdb`` as a topology: bonds guessed from distances, one molecule per fragment."""

    name = "coordinates"
    what = "topology"
    suffixes = (".gro", ".pdb")
    summary = ".gro/.pdb with guessed bonds (MDAnalysis)"

    def read(self, path: Path, topology=None) -> Topology:
        import MDAnalysis as mda

        from backmap.api.io import check_gro_complete

        if path.suffix.lower() == ".gro":  # MDAnalysis' own error on a cut-off .gro names no cause
            check_gro_complete(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                u = mda.Universe(str(path), guess_bonds=True, to_guess=["types", "masses", "elements", "bonds"])
        except Exception as exc:
            raise BackmapError(f"cannot guess a topology from coordinates: {exc}", source=path) from exc
        topo = _from_universe(path, u, with_types=False)
        topo.meta["guessed"] = True
        return topo
