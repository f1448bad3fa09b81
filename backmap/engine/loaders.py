"""Plugins chosen by name and files read by the reader plugin of their suffix: the reader turns a
file into the data model (:mod:`backmap.system`). Here, not in the data model, because choosing a
plugin is the engine's business: the data model never imports the engine."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

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


def make_plugin(kind: str, name: str, params: dict[str, Any], registry: Registry | None = None,
                where: str | None = None) -> Any:
    """An instance of the ``kind`` plugin ``name`` with raw ``params`` validated by its ``Params``;
    errors name ``where`` (e.g. ``--refiner openmm``) and the key."""
    from pydantic import ValidationError

    from backmap.engine.recipe import format_errors

    where = where or f"{kind} {name}"
    info = (registry or default_registry()).get(kind, name, where=where)
    try:
        return info.cls(info.cls.Params.model_validate(params))
    except ValidationError as exc:
        raise BackmapError(format_errors(exc, where, (), info.cls.Params)) from exc
