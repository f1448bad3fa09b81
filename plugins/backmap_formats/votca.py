"""VOTCA mapping XML (``<cg_molecule>``), as read by ``csg_map``: beads ``resid:resname:atom``,
weights from ``<maps>`` normalized per bead, CG bonded terms from ``<cg_bonded>``. backmap also reads
an optional ``<topology><placement_order>`` (bead names in the order to place them; ``csg_map``
ignores it), which overrides the traversal."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from backmap.api import BackmapError, Reader
from backmap.api.system import Bead, Mapping, MoleculeMapping, Topology


def _text(node: ET.Element, tag: str, where: str, path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise BackmapError(f"{where}: missing <{tag}>", source=path)
    return child.text.strip()


def _tuples(names: list[str], size: int, beads: dict[str, int], where: str, path: Path) -> list[tuple]:
    if len(names) % size:
        raise BackmapError(f"{where}: {len(names)} bead names is not a multiple of {size}", source=path)
    out = []
    for k in range(0, len(names), size):
        group = names[k:k + size]
        unknown = [n for n in group if n not in beads]
        if unknown:
            raise BackmapError(f"{where}: unknown bead {unknown[0]!r}", source=path)
        out.append(tuple(beads[n] for n in group))
    return out


class VotcaMappingReader(Reader):
    name = "votca_xml"
    what = "mapping"
    suffixes = (".xml",)
    summary = "VOTCA mapping XML (cg_molecule)"

    def read(self, path: Path, topology: Topology) -> Mapping:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            raise BackmapError(f"not valid XML: {exc}", source=path) from None
        nodes = [root] if root.tag == "cg_molecule" else root.findall(".//cg_molecule")
        if not nodes:
            raise BackmapError("no <cg_molecule> element", source=path)
        molecules = {}
        for node in nodes:
            mm = self._molecule(node, path, topology)
            molecules[mm.moltype.name] = mm
        return Mapping(molecules, [path])

    def _molecule(self, node: ET.Element, path: Path, topology: Topology) -> MoleculeMapping:
        name = _text(node, "name", "<cg_molecule>", path)
        where = f"molecule {name}"
        ident = _text(node, "ident", where, path)
        moltype = topology.moltypes.get(ident)
        if moltype is None:
            raise BackmapError(
                f"{where}: <ident> {ident!r} matches no molecule type of {topology.source.name} "
                f"(it has: {', '.join(topology.moltypes)})", source=path)
        maps = {}
        for m in node.findall("./maps/map"):
            mname = _text(m, "name", f"{where}, <map>", path)
            try:
                maps[mname] = np.array(_text(m, "weights", f"{where}, map {mname}", path).split(), float)
            except ValueError:
                raise BackmapError(f"{where}, map {mname}: weights must be numbers", source=path) from None
        beads, index = [], {}
        bead_nodes = node.findall("./topology/cg_beads/cg_bead")
        if not bead_nodes:
            raise BackmapError(f"{where}: no <cg_bead> in <topology><cg_beads>", source=path)
        for b in bead_nodes:
            bname = _text(b, "name", f"{where}, <cg_bead>", path)
            bwhere = f"{where}, bead {bname}"
            btype = _text(b, "type", bwhere, path)
            mname = _text(b, "mapping", bwhere, path)
            if mname not in maps:
                raise BackmapError(f"{bwhere}: <mapping> {mname!r} is not among <maps> ({', '.join(maps)})",
                                   source=path)
            spec = (b.findtext("beads") or "").split()
            atoms = []
            for item in spec:
                parts = item.split(":")
                if len(parts) != 3 or not parts[0].lstrip("-").isdecimal():  # not isdigit: "²"
                    raise BackmapError(f"{bwhere}: atom {item!r} is not resid:resname:atom", source=path)
                i = moltype.find_atom(int(parts[0]), parts[1], parts[2])
                if i is None:
                    raise BackmapError(f"{bwhere}: atom {item} is not in molecule type {moltype.name} "
                                       f"of {topology.source.name}", source=path)
                atoms.append(i)
            w = maps[mname]
            if atoms and len(w) != len(atoms):
                raise BackmapError(f"{bwhere}: map {mname} has {len(w)} weights for {len(atoms)} atoms",
                                   source=path)
            with np.errstate(over="ignore", invalid="ignore"):
                total = w.sum()
            if atoms and not (np.isfinite(w).all() and np.isfinite(total) and total > 0):
                raise BackmapError(f"{bwhere}: weights of map {mname} must be finite numbers with a positive sum "
                                   f"(they sum to {total})", source=path)
            if bname in index:
                raise BackmapError(f"{bwhere}: bead name used twice", source=path)
            index[bname] = len(beads)
            beads.append(Bead(bname, btype, np.array(atoms, int), w / total if atoms else w))
        bonded = {"bond": [], "angle": [], "dihedral": []}
        for kind, size in (("bond", 2), ("angle", 3), ("dihedral", 4)):
            for t in node.findall(f"./topology/cg_bonded/{kind}"):
                tname = t.findtext("name", default="?").strip()
                names = (t.findtext("beads") or "").split()
                bonded[kind] += _tuples(names, size, index, f"{where}, {kind} {tname}", path)
        placement = None
        order_text = node.findtext("./topology/placement_order")
        if order_text is not None:  # backmap's extension: bead names in placement order
            unknown = [n for n in order_text.split() if n not in index]
            if unknown:
                raise BackmapError(f"{where}, <placement_order>: unknown bead {unknown[0]!r}", source=path)
            placement = [index[n] for n in order_text.split()]
        return MoleculeMapping(moltype, name, beads, bonds=[tuple(sorted(b)) for b in bonded["bond"]],
                               angles=bonded["angle"], dihedrals=bonded["dihedral"], source=path,
                               order=placement)
