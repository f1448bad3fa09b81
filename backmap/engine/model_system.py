"""The system a model package carries: its GROMACS topology (every ``#include`` inlined, so the
package never reaches into a force-field library or a folder beside it), its mapping files and the
``.mdp`` its refinement uses, copied into ``system/`` and listed with their SHA-256.

A model folder is then self-contained: copy it, move it, zip it, mail it — loading reads only files
inside it, and refuses a file that was changed after the model was made.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from backmap.errors import BackmapError
from backmap.system.io import atomic_path

SYSTEM_DIR = "system"
MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
_INCLUDE = re.compile(r'^\s*#\s*include\s+["<]([^">]+)[">]')
_OPEN = re.compile(r"^\s*#\s*if(n?def)?\b")
_CLOSE = re.compile(r"^\s*#\s*endif\b")


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def include_dirs() -> list[Path]:
    """Where GROMACS looks for ``#include``s after the including file's folder: ``GMXLIB``, then
    its own force-field library."""
    from backmap.system.gmx import gromacs_topdir

    dirs = [Path(p) for p in os.environ.get("GMXLIB", "").split(os.pathsep) if p]
    topdir = gromacs_topdir()
    return dirs + ([topdir] if topdir is not None else [])


def flatten_topology(path: Path | str, search: Iterable[Path] | None = None) -> str:
    """The text of a GROMACS topology with every ``#include`` replaced by the file it names (found
    as ``grompp`` finds it: beside the including file, then in ``search``), recursively. An include
    that is not found is an error, unless it sits inside ``#ifdef``/``#ifndef`` (e.g. ``posre.itp``
    under ``POSRES``): that one is kept as a comment. Only the names as written go into the text,
    never a folder of this machine, so the same inputs give the same bytes everywhere."""
    path = Path(path)
    search = list(include_dirs() if search is None else search)
    out: list[str] = []

    def inline(file: Path, chain: tuple[Path, ...]) -> None:
        try:
            lines = file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise BackmapError(f"cannot read the topology: {exc}", source=file) from None
        depth = 0
        for number, line in enumerate(lines, 1):
            if _OPEN.match(line):
                depth += 1
            elif _CLOSE.match(line):
                depth = max(0, depth - 1)
            m = _INCLUDE.match(line)
            if not m:
                out.append(line)
                continue
            name = m.group(1)
            found = next((d / name for d in (file.parent, *search) if (d / name).is_file()), None)
            if found is None:
                if depth:
                    out.append(f"; backmap: not found when the model was packaged (conditional): {line.strip()}")
                    continue
                raise BackmapError(f"line {number}: #include \"{name}\" not found (beside the file, in GMXLIB or "
                                   "in GROMACS's force-field library)", source=file)
            found = found.resolve()
            if found in chain:
                raise BackmapError(f"line {number}: #include \"{name}\" includes itself", source=file)
            out.append(f"; >>> backmap: {line.strip()}")
            inline(found, (*chain, found))
            out.append(f"; <<< backmap: end of {name}")

    inline(path, (path.resolve(),))
    return "\n".join(out) + "\n"


def package_system(directory: Path, topology: Path | None, mapping: list[Path],
                   mdp: Path | None = None) -> dict[str, Any]:
    """Copy the system into ``directory/system/`` (the topology flattened) and return the
    ``system`` entries of ``model.json``: paths relative to the model folder and their hashes.
    Files are read before anything is written, so a package can be re-packaged in place."""
    contents: dict[str, bytes] = {}

    def take(name: str, data: bytes) -> str:
        stem, suffix = os.path.splitext(name)
        rel, k = f"{SYSTEM_DIR}/{name}", 2
        while rel in contents and contents[rel] != data:  # two mapping files of one name
            rel, k = f"{SYSTEM_DIR}/{stem}-{k}{suffix}", k + 1
        contents[rel] = data
        return rel

    def read(p: Path, what: str) -> bytes:
        try:
            return p.read_bytes()
        except OSError as exc:
            raise BackmapError(f"cannot read the model's {what}: {exc.strerror or exc}", source=p) from None

    system: dict[str, Any] = {"topology": None, "mapping": [], "mdp": None}
    if topology is not None:
        topology = Path(topology)
        if not topology.is_file():
            raise BackmapError("topology file not found", source=topology)
        data = flatten_topology(topology).encode() if topology.suffix.lower() in (".top", ".itp") \
            else read(topology, "topology")
        system["topology"] = take(topology.name, data)
    for m in mapping:
        m = Path(m)
        if not m.is_file():
            raise BackmapError("mapping file not found", source=m)
        system["mapping"].append(take(m.name, read(m, "mapping")))
    if mdp is not None:
        mdp = Path(mdp)
        if not mdp.is_file():
            raise BackmapError(".mdp file not found", source=mdp)
        system["mdp"] = take(mdp.name, read(mdp, ".mdp"))
    folder = Path(directory) / SYSTEM_DIR
    for rel, data in contents.items():
        with atomic_path(Path(directory) / rel) as tmp:
            tmp.write_bytes(data)
    if folder.is_dir():  # files of an earlier packaging that this one does not carry
        for old in folder.iterdir():
            if f"{SYSTEM_DIR}/{old.name}" not in contents and old.is_file() and not old.name.startswith("."):
                old.unlink()
    system["files"] = {rel: hashlib.sha256(data).hexdigest() for rel, data in sorted(contents.items())}
    return system


def inside(directory: Path, rel: str, where: Path | str) -> Path:
    """``directory/rel`` for a relative path that stays inside ``directory`` (no ``..``, not
    absolute, no link out): a model never reads a file outside its package."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or "\\" in rel or ":" in rel:
        raise BackmapError(f"the model names a file outside its package ({rel!r}); repackage it: "
                           "backmap convert-model MODEL --out NEW", source=where)
    path = Path(directory, *pure.parts)
    root = Path(directory).resolve()
    if root not in path.resolve().parents:
        raise BackmapError(f"{rel} leads outside the model package (a link?)", source=where)
    return path


def verify_system(directory: Path, system: dict[str, Any], where: Path | str) -> dict[str, Any]:
    """The ``system`` entries with absolute paths, after checking that every file the model names
    is in its package with the recorded hash."""
    files = system.get("files")
    if not isinstance(files, dict):
        raise BackmapError("model.json lists no system files (a model of an older backmap?); repackage it: "
                           "backmap convert-model MODEL --out NEW", source=where)
    named = [system.get("topology"), *system.get("mapping", []), system.get("mdp")]
    for rel in (r for r in named if r):
        if rel not in files:
            raise BackmapError(f"{rel} is not among the package's hashed files", source=where)
    for rel, digest in files.items():
        path = inside(directory, rel, where)
        if not path.is_file():
            raise BackmapError(f"the model package lacks {rel} (copied without its {SYSTEM_DIR}/ folder?)",
                               source=directory)
        if sha256(path) != digest:
            raise BackmapError(f"{rel} was changed after the model was made (its SHA-256 differs from the one in "
                               "model.json); restore it, or retrain", source=directory)
    out = dict(system)
    out["topology"] = str(inside(directory, system["topology"], where)) if system.get("topology") else None
    out["mapping"] = [str(inside(directory, m, where)) for m in system.get("mapping", [])]
    out["mdp"] = str(inside(directory, system["mdp"], where)) if system.get("mdp") else None
    return out
