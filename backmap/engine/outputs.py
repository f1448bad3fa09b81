"""Files the steps of a run declare by name (``outputs.json`` in the work directory), so that a
later step — in the same run or a later one with ``--steps`` — finds what an earlier step wrote
wherever the recipe put it: ``pairs``, ``model``, ``backmap.aa``, ``backmap.cg``, ``refine.aa`` …"""
from __future__ import annotations

import json
from pathlib import Path

from backmap.errors import BackmapError
from backmap.system.io import atomic_path

OUTPUTS_FILE = "outputs.json"


class Outputs:
    """The declared outputs of the run in ``workdir`` (paths stored relative to it)."""

    def __init__(self, workdir: Path | str):
        self.workdir = Path(workdir)
        self.path = self.workdir / OUTPUTS_FILE

    def _read(self) -> dict[str, dict[str, str]]:
        if not self.path.is_file():
            return {}
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BackmapError(f"cannot read the run's declared outputs: {exc}", source=self.path) from None

    def declare(self, step: str, **files: Path | None) -> None:
        """Record ``step.name -> path`` for every file given (None: removed)."""
        table = self._read()
        for name, path in files.items():
            key = f"{step}.{name}" if name else step
            if path is None:
                table.pop(key, None)
                continue
            path = Path(path)
            rel = path.resolve().relative_to(self.workdir.resolve()) if path.resolve().is_relative_to(
                self.workdir.resolve()) else path.resolve()
            table[key] = {"path": str(rel), "step": step}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(table, indent=1))

    def find(self, name: str) -> Path | None:
        entry = self._read().get(name)
        return None if entry is None else self.workdir / entry["path"]

    def get(self, name: str, where: str = "") -> Path:
        """The file declared as ``name``; it must exist."""
        path = self.find(name)
        prefix = f"{where}: " if where else ""
        if path is None:
            known = ", ".join(sorted(self._read())) or "none yet"
            step = name.split(".")[0]
            raise BackmapError(f"{prefix}no output {name!r} in {self.workdir} (run the '{step}' step first; "
                               f"declared: {known})")
        if not path.exists():
            raise BackmapError(f"{prefix}{path} was declared as {name!r} but is gone (run its step again)")
        return path
