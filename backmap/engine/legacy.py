"""Converting the pickled models of backmap 0.1 (``generator.pkl`` + ``generator.json``) into model
folders. The only place that unpickles: a user asks for it, for a file they trust."""
from __future__ import annotations

import json
import pickle
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
