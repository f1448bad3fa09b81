"""DeepBackmap ``.map`` files: ``[map]`` rows ``atom_index atom_type bead_index bead_type``
(1-based), ``[align]`` (bead → bead fixing its frame) and ``[mult]``; sections end with ``[/name]``.
The file's stem names the molecule type (``PS1.map`` ↔ ``PS1``). Beads are centres of mass."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from backmap.api import BackmapError, Reader
from backmap.api.system import Bead, Mapping, MoleculeMapping, Topology, read_sections


class DeepBackmapMapReader(Reader):
    name = "dbm_map"
    what = "mapping"
    suffixes = (".map",)
    summary = "DeepBackmap .map (beads as centres of mass)"

    def read(self, path: Path, topology: Topology) -> Mapping:
        moltype = topology.moltypes.get(path.stem)
        if moltype is None and len(topology.moltypes) == 1:
            moltype = next(iter(topology.moltypes.values()))
        if moltype is None:
            raise BackmapError(f"file name {path.stem!r} matches no molecule type of {topology.source.name} "
                               f"(it has: {', '.join(topology.moltypes)})", source=path)
        sections = read_sections(path)
        if not sections.get("map"):
            raise BackmapError("no [map] section", source=path)
        members: dict[int, list[int]] = defaultdict(list)
        bead_type: dict[int, str] = {}
        for lineno, words in sections["map"]:
            where = f"{path.name}:{lineno}"
            try:
                atom, atype, bead, btype = int(words[0]) - 1, words[1], int(words[2]), words[3]
            except (ValueError, IndexError):
                raise BackmapError("expected 'atom_index atom_type bead_index bead_type'", source=where) from None
            if not 0 <= atom < moltype.n_atoms:
                raise BackmapError(f"atom {atom + 1} is not in molecule type {moltype.name} "
                                   f"({moltype.n_atoms} atoms)", source=where)
            if atype != moltype.atom_types[atom]:
                raise BackmapError(f"atom {atom + 1} has type {moltype.atom_types[atom]} in the topology, "
                                   f"not {atype}", source=where)
            if bead_type.setdefault(bead, btype) != btype:
                raise BackmapError(f"bead {bead} has type {bead_type[bead]} and {btype}", source=where)
            members[bead].append(atom)
        order = sorted(members)
        counters: dict[str, int] = defaultdict(int)
        beads = []
        for b in order:
            counters[bead_type[b]] += 1
            atoms = np.array(members[b], int)  # file order: an [order] section places them so
            m = moltype.masses[atoms]
            beads.append(Bead(f"{bead_type[b]}{counters[bead_type[b]]}", bead_type[b], atoms, m / m.sum()))
        pos = {b: k for k, b in enumerate(order)}
        align = {}
        for lineno, words in sections.get("align", []):
            try:
                align[pos[int(words[0])]] = pos[int(words[1])]
            except (KeyError, ValueError, IndexError):
                raise BackmapError("[align] rows are 'bead fixpoint_bead' of existing beads",
                                   source=f"{path.name}:{lineno}") from None
        placement = None
        if "order" in sections:  # backmap's extension: bead indices (1-based) in placement order
            placement = []
            for lineno, words in sections["order"]:
                for w in words:
                    if not w.isdecimal() or int(w) not in pos:  # not isdigit: "²"
                        raise BackmapError(f"[order]: {w!r} is not a bead index of this file",
                                           source=f"{path}:{lineno}")
                    placement.append(pos[int(w)])
        mm = MoleculeMapping(moltype, moltype.name, beads, align=align, source=path, order=placement)
        mult = {}
        for lineno, words in sections.get("mult", []):
            try:
                bead, factor = int(words[0]), int(words[1])
            except (ValueError, IndexError):
                raise BackmapError("[mult] rows are 'bead multiplicity' (two integers)",
                                   source=f"{path.name}:{lineno}") from None
            if bead in pos:
                mult[pos[bead]] = factor
        mm.extras["mult"] = mult
        return Mapping({moltype.name: mm}, [path])
