"""Reading a system from files: the reader plugin registered for each file's suffix turns it into
the data model (:mod:`backmap.system`). Here, not in the data model, because choosing a reader is
the engine's business: the data model never imports the engine."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from backmap.engine.registry import Registry, default_registry
from backmap.errors import BackmapError
from backmap.system.mapping import Mapping, MoleculeMapping
from backmap.system.topology import Topology


def load_topology(path: str | Path, registry=None) -> Topology:
    """Read a topology with the reader plugin registered for its suffix."""
    path = Path(path)
    if not path.is_file():
        raise BackmapError("topology file not found", source=path)
    registry = registry or default_registry()
    for info in registry.readers("topology"):
        if path.suffix.lower() in info.cls.suffixes:
            return info.cls().read(path)
    known = sorted({s for i in registry.readers("topology") for s in i.cls.suffixes})
    raise BackmapError(f"no topology reader for {path.suffix!r} files (known: {', '.join(known)})", source=path)


def load_mapping(paths: Path | str | Sequence[Path | str], topology: Topology, registry=None) -> Mapping:
    """Read mapping files with the reader registered for each suffix and check them
    against ``topology``."""
    registry = registry or default_registry()
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    molecules: dict[str, MoleculeMapping] = {}
    for path in paths:
        if not path.is_file():
            raise BackmapError("mapping file not found", source=path)
        reader = next((i for i in registry.readers("mapping") if path.suffix.lower() in i.cls.suffixes), None)
        if reader is None:
            known = sorted({s for i in registry.readers("mapping") for s in i.cls.suffixes})
            raise BackmapError(f"no mapping reader for {path.suffix!r} files (known: {', '.join(known)})",
                               source=path)
        result = reader.cls().read(path, topology)
        for mm in result.molecules.values():
            if mm.moltype.name in molecules:
                raise BackmapError(f"molecule type {mm.moltype.name} is mapped twice "
                                   f"(also in {molecules[mm.moltype.name].source})", source=path)
            molecules[mm.moltype.name] = mm
    return Mapping(molecules, paths)
