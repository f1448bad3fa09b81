"""Models of older backmaps made current: the pickled models of backmap 0.1 (``generator.pkl`` +
``generator.json``; the only place that unpickles: a user asks for it, for a file they trust), and
model folders of format 1, whose system files lay outside them (repackaged self-contained)."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

from backmap.engine.loaders import load_mapping, load_topology
from backmap.engine.models import save_model
from backmap.engine.registry import Registry, default_registry
from backmap.errors import BackmapError
from backmap.sampling.environment import Channels
from backmap.sampling.spec import SPEC_KEYS

#: 0.1 generator parameters that now belong to the train step (they do not change a trained model)
LOOP_KEYS = ("log_every", "max_iterations", "resume")


def convert_pickled_model(pickled: Path | str, out: Path | str, registry: Registry | None = None) -> Path:
    """Write the model folder ``out`` for the pickled model ``pickled``: the environment keys of
    its parameters become its environment spec, the training-loop keys are dropped, and the
    topology and mapping recorded beside it (``generator.json``) are checked against the model."""
    pickled, out = Path(pickled), Path(out)
    registry = registry or default_registry()
    if not pickled.is_file():
        raise BackmapError("pickled model not found", source=pickled)
    try:
        with open(pickled, "rb") as fh:
            ckpt = pickle.load(fh)  # noqa: S301 -- explicit, user-requested conversion of a trusted file
        plugin, params, state = ckpt["plugin"], dict(ckpt["params"]), ckpt["state"]
    except Exception as exc:  # a truncated or foreign file raises many types
        raise BackmapError(f"not a pickled backmap model ({exc.__class__.__name__}: {exc})", source=pickled) from None
    info_path = pickled.with_suffix(".json")
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if not info.get("topology") or not info.get("mapping"):
        raise BackmapError(f"{info_path.name} beside the model must name its topology and mapping", source=pickled)
    topology = (info_path.parent / info["topology"]).resolve()
    mapping = [(info_path.parent / m).resolve() for m in info["mapping"]]
    topo = load_topology(topology, registry)
    cg_topology = load_mapping(mapping, topo, registry).cg_topology(topo)
    cls = registry.get("generator", plugin, where=str(pickled)).cls
    environment = {k: params.pop(k) for k in SPEC_KEYS if k in params}
    for key in LOOP_KEYS:
        params.pop(key, None)
    generator = cls(params, environment=environment)
    generator.load_state_dict(state)
    recorded = state.get("channels") if isinstance(state, dict) else None
    if recorded:  # 0.1's voxel GAN kept its channels; the interaction channels were numbered in order
        channels = Channels(dict(recorded["atom_types"]), dict(recorded["bead_types"]),
                            {tuple(k): i for i, k in enumerate(recorded["interactions"])})
    else:
        channels = Channels.from_system(cg_topology)
    return save_model(out, generator, channels, topology, mapping, cg_topology, seed=info.get("seed"),
                      training={"converted from": str(pickled), "trained": info.get("trained")})


def repackage_model(source: Path | str, out: Path | str, topology: Path | None = None,
                    mapping: list[Path] | None = None, mdp: Path | None = None,
                    registry: Registry | None = None) -> Path:
    """Write the self-contained package ``out`` for a model folder of format 1, whose topology and
    mapping were paths relative to it (possibly outside it). Those files are read this one time
    (``topology``/``mapping`` replace them where they moved) and checked against the molecules the
    model recorded; weights, settings and training record are kept as they are."""
    from backmap.engine.model_card import read_card, write_card
    from backmap.engine.models import LEGACY_FORMATS, MODEL_FILE, model_directory, model_from_description

    directory = model_directory(source)
    out = Path(out)
    registry = registry or default_registry()
    try:
        description = json.loads((directory / MODEL_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackmapError(f"cannot read the model description: {exc}", source=directory / MODEL_FILE) from None
    if description.get("format") not in LEGACY_FORMATS:
        raise BackmapError("not a model of an older format: it is a package already (copy it, or `backmap "
                           "export-model` it)", source=directory / MODEL_FILE)
    system = description.get("system") or {}
    top = Path(topology) if topology else (directory / system["topology"]).resolve() if system.get("topology") else None
    maps = [Path(m) for m in mapping] if mapping else [(directory / m).resolve() for m in system.get("mapping", [])]
    if top is None or not maps:
        raise BackmapError("the model records no topology or mapping: give --topology and --mapping", source=directory)
    for path, what in ((top, "--topology"), *((m, "--mapping") for m in maps)):
        if not path.is_file():
            raise BackmapError(f"the model's file is not there (moved?): give it with {what}", source=path)
    model = model_from_description(directory, description, registry, check_files=False)
    topo = load_topology(top, registry)
    cg_topology = load_mapping(maps, topo, registry).cg_topology(topo)
    model.check_system(cg_topology)
    extra = {k: v for k, v in description.items()
             if k not in ("format", "backmap", "plugin", "params", "environment", "channels", "system", "state",
                          "weights")}
    same = out.resolve() == directory.resolve()
    target = out.with_name(f".{out.name}.repackaging") if same else out
    if target.exists() and any(target.iterdir()):
        raise BackmapError("exists already and is not empty: give a new folder as --out", source=out)
    save_model(target, model.generator, model.channels, top, maps, cg_topology, mdp=mdp, card={"name": out.name},
               **extra)
    for f in directory.iterdir():  # what else the folder held (training log, card)
        if f.is_file() and f.name not in (MODEL_FILE, "weights.safetensors") and not f.name.startswith("."):
            shutil.copyfile(f, target / f.name)
    card = read_card(target)
    if card is not None:  # what is known of its training is in model.json: no date or machine of today
        card["training"].update(hardware=None, date=None, frames=(description.get("training") or {}).get("train frames"))
        card["notes"] = (card.get("notes", "") + f" Repackaged from a format-1 model ({directory.name}) by "
                         "`backmap convert-model`.").strip()
        write_card(target, card)
    if same:
        backup = directory.with_name(f".{directory.name}.old")
        directory.rename(backup)
        target.rename(directory)
        shutil.rmtree(backup)
    return out
