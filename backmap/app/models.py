"""The model use cases: list the registered models, show a card, export a package, convert an old
model (``backmap models list|show``, ``export-model``, ``convert-model``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from backmap.app.options import Request
from backmap.engine.model_archive import ARCHIVE_SUFFIX, copy_package, write_archive
from backmap.engine.model_card import read_card, system_fingerprint
from backmap.engine.model_registry import registered_models
from backmap.engine.models import load_model, model_directory, read_description
from backmap.errors import BackmapError
from backmap.fields import option


class ConvertModelRequest(Request):
    source: Path = option(description="A model folder of format 1, or a pickled model of backmap 0.1 (.pkl).",
                          argument=True)
    out: Path = option(description="Model folder to write.")
    topology: Path | None = option(None, "Format-1 model: the topology, if it is no longer where the model says.")
    mapping: list[Path] = option(default_factory=list, description="Format-1 model: the mapping file(s), if no "
                                                                    "longer where the model says.")
    mdp: Path | None = option(None, "Format-1 model: an .mdp to carry, whose non-bonded settings refinement uses.")


def convert_model(request: ConvertModelRequest) -> Path:
    """The folder of the self-contained package written from an older model."""
    from backmap.engine.legacy import convert_pickled_model, repackage_model

    r = request
    if r.source.suffix == ".pkl":
        return convert_pickled_model(r.source, r.out)
    return repackage_model(r.source, r.out, r.topology, list(r.mapping) or None, r.mdp)


class ExportModelRequest(Request):
    source: Path = option(description="A run directory, a model folder, an archive or a registered name.",
                          argument=True)
    out: Path = option(description="NAME.bmz (one file) or a new folder.")


def export_model(request: ExportModelRequest) -> Path:
    """The package of ``source``, checked (it loads), written as an archive or a folder."""
    directory = model_directory(request.source)
    load_model(directory)  # a package that would not load is not exported
    out = request.out
    if out.resolve() == directory.resolve() or directory.resolve() in out.resolve().parents:
        raise BackmapError("--out lies inside the model being exported", source=out)
    if out.suffix.lower() == ARCHIVE_SUFFIX:
        write_archive(directory, out)
    else:
        copy_package(directory, out)
    return out


def list_models() -> list[dict[str, Any]]:
    """Every registered model: name, pack, generator and its card's first evaluation (or the error
    that keeps it from being read)."""
    rows = []
    for m in registered_models():
        row: dict[str, Any] = {"name": m.name, "pack": m.pack, "package": m.distribution, "path": str(m.path)}
        try:
            directory = model_directory(m.path)
            row["generator"] = read_description(directory)["plugin"]
            card = read_card(directory) or {}
            row["summary"] = card.get("summary", "")
            evals = card.get("evaluations") or []
            if evals:
                row["mean JSD"] = evals[0].get("mean JSD")
                row["noise floor"] = evals[0].get("noise floor")
        except BackmapError as exc:
            row["error"] = str(exc)
        rows.append(row)
    return rows


def model_card(model: Path) -> dict[str, Any]:
    """``model``'s card (the package is checked first); a model without one gets a stub saying so."""
    loaded = load_model(model)
    return read_card(loaded.directory) or {
        "name": loaded.directory.name, "generator": {"plugin": loaded.description["plugin"]},
        "system": {"fingerprint": system_fingerprint(loaded.description["system"].get("molecules", {}))},
        "notes": "This model has no card (it was packaged without one): nothing is recorded of its training."}
