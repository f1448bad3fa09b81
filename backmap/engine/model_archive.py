"""A model package as one file (``NAME.bmz``): a zip of the model folder, written the same way
every time (sorted names, fixed dates and permissions) so that identical models give identical
archives. ``--model NAME.bmz`` unpacks it once into the cache (keyed by the archive's hash) and
loads it from there."""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from backmap.engine.model_system import sha256
from backmap.errors import BackmapError
from backmap.system.io import atomic_path

ARCHIVE_SUFFIX = ".bmz"
_DATE = (1980, 1, 1, 0, 0, 0)
#: more than any model should hold: a guard against zip bombs
MAX_UNPACKED_BYTES = 4 << 30


def cache_dir() -> Path:
    """Where archives are unpacked: ``$BACKMAP_CACHE``, else ``$XDG_CACHE_HOME/backmap`` or
    ``~/.cache/backmap``."""
    if os.environ.get("BACKMAP_CACHE"):
        return Path(os.environ["BACKMAP_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "backmap"


def package_files(directory: Path) -> list[Path]:
    """The files of a model package, relative and sorted (hidden files and temporaries left out)."""
    out = []
    for path in sorted(Path(directory).rglob("*")):
        rel = path.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_symlink():
            raise BackmapError("a model package holds no links", source=path)
        if path.is_file():
            out.append(rel)
    return out


def write_archive(directory: Path, out: Path) -> Path:
    """``out`` (``.bmz``) from the model folder ``directory``."""
    out = Path(out)
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for rel in package_files(directory):
                info = zipfile.ZipInfo(rel.as_posix(), date_time=_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o100644 << 16
                zf.writestr(info, (Path(directory) / rel).read_bytes())
    return out


def copy_package(directory: Path, out: Path) -> Path:
    """A copy of the model folder at ``out`` (a new folder, written completely or not at all)."""
    out = Path(out)
    if out.exists():
        raise BackmapError("exists already: give a new folder (or a .bmz file) as --out", source=out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        for rel in package_files(directory):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(directory) / rel, tmp / rel)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp), out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def unpacked_archive(archive: Path) -> Path:
    """The folder an archive unpacks into, in the cache; unpacked now if it is not there yet.
    Member names that would leave the folder, links and oversized contents are refused."""
    archive = Path(archive)
    try:
        key = sha256(archive)[:24]
        target = cache_dir() / "models" / f"{archive.stem}-{key}"
        if (target / "model.json").is_file():
            return target
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
                raise BackmapError("the archive unpacks to more than 4 GiB: not a model package", source=archive)
            names = [m.filename for m in members if not m.is_dir()]
            for m in members:
                pure = PurePosixPath(m.filename)
                if pure.is_absolute() or ".." in pure.parts or "\\" in m.filename or ":" in m.filename:
                    raise BackmapError(f"archive member {m.filename!r} would be written outside the package",
                                       source=archive)
                if (m.external_attr >> 16) & 0o170000 == 0o120000:
                    raise BackmapError(f"archive member {m.filename!r} is a link", source=archive)
            if "model.json" not in names:
                raise BackmapError("not a model archive (no model.json at its top)", source=archive)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                for m in members:
                    if not m.is_dir():
                        dest = tmp.joinpath(*PurePosixPath(m.filename).parts)
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(m) as src, open(dest, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                try:
                    os.replace(tmp, target)
                except OSError:  # another process unpacked it meanwhile
                    if not (target / "model.json").is_file():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except zipfile.BadZipFile as exc:
        raise BackmapError(f"not a model archive: {exc}", source=archive) from None
    except OSError as exc:
        raise BackmapError(f"cannot unpack the model archive: {exc.strerror or exc}", source=archive) from None
    return target
