"""The model card (``card.json`` in the model package, rendered as its ``README.md``): what the
model was trained on, with what, for how long on which machine, how well it did on held-out frames,
and under which licence and citation it may be used. Written by the train step; each ``evaluate``
of the model's output records its result there (one entry per reference set, the latest kept).

The card is outside the package's hashed content: updating it never invalidates the model.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from backmap._version import __version__
from backmap.errors import BackmapError
from backmap.system.io import atomic_path

CARD_FILE = "card.json"
CARD_README = "README.md"
CARD_FORMAT = 1
DEFAULT_LICENCE = "MIT (the weights, like backmap itself); the system files keep their own terms"
DEFAULT_CITATION = f"backmap {__version__} (see its README, How to cite)"


def hardware() -> dict[str, Any]:
    """The machine a model was trained on, as far as it can be told from inside."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "torch threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "backmap": __version__}


def file_record(path: Path | str) -> dict[str, Any]:
    """A file of the training data: its name and SHA-256 (folders: every file in them)."""
    from backmap.engine.model_system import sha256

    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode())
            h.update(bytes.fromhex(sha256(f)))
        return {"file": path.name + "/", "sha256": h.hexdigest()}
    return {"file": path.name, "sha256": sha256(path)}


def system_fingerprint(molecules: dict[str, Any]) -> str:
    """SHA-256 of the molecule types' atoms and beads (``model.json``'s ``system.molecules``):
    two models with one fingerprint backmap the same system."""
    return hashlib.sha256(json.dumps(molecules, sort_keys=True).encode()).hexdigest()


def new_card(description: dict[str, Any], cg_topology=None, *, name: str | None = None, summary: str = "",
             data: list[Path] | None = None, frames: int | None = None, temperature: float | None = None,
             seconds: float | None = None, licence: str | None = None, citation: str | None = None,
             notes: str = "") -> dict[str, Any]:
    """A card for the model ``description`` (``model.json``'s content)."""
    molecules = description.get("system", {}).get("molecules", {})
    counts = {}
    if cg_topology is not None:
        for cb in cg_topology.blocks:
            counts[cb.block.moltype.name] = {"molecules": int(cb.block.count),
                                             "atoms each": len(cb.block.moltype.atom_names),
                                             "beads each": len(cb.mapping.beads)}
    return {
        "format": CARD_FORMAT, "name": name or "", "summary": summary,
        "generator": {"plugin": description["plugin"], "params": description.get("params", {}),
                      "environment": description.get("environment", {}),
                      "sampling": description.get("sampling", {})},
        "training": {"data": [file_record(p) for p in data or [] if Path(p).exists()], "frames": frames,
                     "temperature (K)": temperature, "seconds": None if seconds is None else round(seconds, 1),
                     "date": datetime.date.today().isoformat(), "hardware": hardware(),
                     "seed": description.get("seed")},
        "system": {"fingerprint": system_fingerprint(molecules), "molecule types": counts,
                   "files": description.get("system", {}).get("files", {})},
        "evaluations": [], "licence": licence or DEFAULT_LICENCE, "citation": citation or DEFAULT_CITATION,
        "notes": notes,
    }


def read_card(directory: Path) -> dict[str, Any] | None:
    """The model's card, or None if it has none."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackmapError(f"cannot read the model card: {exc}", source=path) from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise BackmapError("not a backmap model card", source=path)
    return card


def write_card(directory: Path, card: dict[str, Any]) -> None:
    """``card.json`` and its rendering ``README.md``, each written atomically."""
    with atomic_path(Path(directory) / CARD_FILE) as tmp:
        tmp.write_text(json.dumps(card, indent=1, default=str) + "\n")
    with atomic_path(Path(directory) / CARD_README) as tmp:
        tmp.write_text(render_card(card))


def evaluation_entry(result: dict[str, Any], reference: Path, command: str = "",
                     labels: dict[str, str] | None = None, description: str = "") -> dict[str, Any]:
    """What a card keeps of ``evaluate``'s ``metrics.json`` content: the headline mean JSD per
    candidate and the noise floor, the per-observable JSD, and the CG RMSD, stereocentres and
    clashes where measured. ``labels``: the candidates to keep, under new names (e.g. "alone",
    "refined"); all, under their own names, if None."""
    head = result["summary"]["mean_jsd_headline"]
    labels = labels if labels is not None else {k: k for k in head["candidates"]}
    entry: dict[str, Any] = {
        "date": datetime.date.today().isoformat(), "backmap": __version__, "reference": file_record(reference),
        "data": description,
        "frames": result.get("frames", {}).get("reference"),
        "mean JSD": {labels[k]: round(float(v), 5) for k, v in head["candidates"].items() if k in labels},
        "noise floor": round(float(head["noise_floor"]), 5),
        "observables": list(head.get("observables", [])),
    }
    headline = set(entry["observables"])
    per: dict[str, dict] = {}
    scores: dict[str, dict] = {}
    for obs, row in (result.get("observables") or {}).items():
        cands = row.get("candidates") if isinstance(row, dict) else None
        if not isinstance(cands, dict):
            continue
        if obs in headline:
            per[obs] = {labels[k]: _round(v.get("jsd")) for k, v in cands.items() if k in labels}
        elif obs in SCORES:  # CG RMSD, clashes, broken bonds (means); stereocentres (fraction kept)
            key = "preserved" if row.get("kind") == "state" else "mean"
            scores[SCORES[obs]] = {labels[k]: _round(v.get(key)) for k, v in cands.items() if k in labels}
    if per:
        entry["per observable (JSD)"] = per
    entry.update(scores)
    if command:
        entry["command"] = command
    return entry


#: observables a card reports beside the JSDs: name -> row label
SCORES = {"cg_rmsd": "CG RMSD (nm)", "stereo:chirality": "stereocentres kept",
          "stereo:dyads": "tacticity (dyads) kept", "clash_fraction": "clashes per atom",
          "broken_bond_fraction": "broken bonds"}


def _round(v: Any) -> float | None:
    return None if v is None else round(float(v), 6)


def record_evaluation(directory: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Put ``entry`` on the model's card, replacing the one on the same reference data; a model
    without a card gets a minimal one. Returns the card."""
    from backmap.engine.model_system import MODEL_FILE

    directory = Path(directory)
    card = read_card(directory)
    if card is None:
        description = json.loads((directory / MODEL_FILE).read_text())
        card = new_card(description, name=directory.name)
    key = entry["reference"]["sha256"]
    card["evaluations"] = [e for e in card.get("evaluations", []) if e.get("reference", {}).get("sha256") != key]
    card["evaluations"].append(entry)
    write_card(directory, card)
    return card


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_card(card: dict[str, Any]) -> str:
    """The card as Markdown (what ``backmap models show`` prints)."""
    g, t, s = card.get("generator", {}), card.get("training", {}), card.get("system", {})
    lines = [f"# {card.get('name') or 'backmap model'}", ""]
    if card.get("summary"):
        lines += [card["summary"], ""]
    lines += ["| | |", "|---|---|", f"| generator | `{g.get('plugin')}` |"]
    if g.get("sampling"):
        lines.append("| sampling settings | " + ", ".join(f"{k}={v}" for k, v in g["sampling"].items()) + " |")
    mols = s.get("molecule types") or {}
    if mols:
        lines.append("| system | " + ", ".join(f"{n}: {m.get('molecules')} × {m.get('atoms each')} atoms, "
                                               f"{m.get('beads each')} beads" for n, m in mols.items()) + " |")
    lines.append(f"| system fingerprint | `{str(s.get('fingerprint', ''))[:16]}` |")
    data = t.get("data") or []
    if data:
        lines.append("| training data | " + ", ".join(f"`{d['file']}` ({d['sha256'][:12]})" for d in data) + " |")
    lines += [f"| training frames | {_fmt(t.get('frames'))} |",
              f"| temperature (K) | {_fmt(t.get('temperature (K)'))} |",
              f"| training time (s) | {_fmt(t.get('seconds'))} |"]
    hw = t.get("hardware") or {}
    if hw:
        parts = [hw.get("cpu"), hw.get("cores") and f"{hw['cores']} cores",
                 hw.get("torch threads") and f"{hw['torch threads']} torch threads", hw.get("gpu") and f"GPU {hw['gpu']}",
                 hw.get("torch") and f"torch {hw['torch']}", hw.get("backmap") and f"backmap {hw['backmap']}",
                 t.get("date")]
        lines.append("| trained on | " + ", ".join(str(x) for x in parts if x) + " |")
    lines += [f"| licence | {card.get('licence', '')} |", f"| citation | {card.get('citation', '')} |", ""]
    evals = card.get("evaluations") or []
    lines += ["## Evaluations", ""]
    if not evals:
        lines += ["None recorded yet (`backmap evaluate … --model-card MODEL` records one).", ""]
    for e in evals:
        ref = e.get("reference", {})
        lines += [f"**{e.get('data') or ref.get('file')}** ({_fmt(e.get('frames'))} reference frames, {e.get('date', '')}, backmap "
                  f"{e.get('backmap', '')}): mean JSD over {len(e.get('observables', [])) or 'the headline'} "
                  f"observables, noise floor {_fmt(e.get('noise floor'))}", ""]
        labels = list(e.get("mean JSD", {}))
        lines += ["| observable | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        lines.append("| **mean (headline)** | " + " | ".join(f"**{_fmt(e['mean JSD'][k])}**" for k in labels) + " |")
        for obs, row in (e.get("per observable (JSD)") or {}).items():
            lines.append(f"| {obs} | " + " | ".join(_fmt(row.get(k)) for k in labels) + " |")
        for what in SCORES.values():
            if what in e:
                lines.append(f"| {what} | " + " | ".join(_fmt(e[what].get(k)) for k in labels) + " |")
        lines.append("")
        if e.get("command"):
            lines += [f"Measured by: `{e['command']}`", ""]
    if card.get("notes"):
        lines += ["## Notes", "", card["notes"], ""]
    return "\n".join(lines)
