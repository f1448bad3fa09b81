"""Model files: a folder with ``model.json`` (what the model is: plugin, parameters, environment
spec, feature channels, the system it was trained on, how it was trained) and
``weights.safetensors`` (every tensor and array of the generator's state).

Nothing is unpickled, so opening a model file cannot run code. A generator's ``state_dict`` is a
tree of dicts and lists whose leaves are tensors, numpy arrays or JSON values: the tensors go to
safetensors under their path in the tree, the rest stays in the JSON with a reference in their place.
The system the model was trained on (topology with its includes inlined, mapping, ``.mdp``) is
copied into the folder's ``system/`` with content hashes (:mod:`backmap.engine.model_system`): a
model folder, or its single-file archive (``.bmz``, :mod:`backmap.engine.model_archive`), works
wherever it is put. ``card.json`` (:mod:`backmap.engine.model_card`) says what the model is for and
how well it did; it is not part of the hashed content, so evaluating a model does not change it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backmap._version import __version__
from backmap.engine.plugin import Generator
from backmap.engine.registry import Registry, default_registry
from backmap.errors import BackmapError
from backmap.sampling.environment import Channels
from backmap.engine.model_archive import ARCHIVE_SUFFIX, unpacked_archive
from backmap.engine.model_card import new_card, write_card
from backmap.engine.model_registry import find_registered
from backmap.engine.model_schema import check_tensors_finite, validate_description
from backmap.engine.model_system import MODEL_FILE, WEIGHTS_FILE, package_system, verify_system
from backmap.system.io import atomic_path
from backmap.system.mapping import CGTopology

MODEL_FORMAT = 2
#: format 1 recorded the system as paths that could lead outside the folder
LEGACY_FORMATS = (1,)


@dataclass
class Model:
    """A loaded model: the generator (its environment spec set), the feature channels it was
    trained with, and its description (``model.json`` with paths resolved)."""

    generator: Generator
    channels: Channels
    description: dict[str, Any]
    directory: Path

    @property
    def topology(self) -> Path | None:
        t = self.description["system"].get("topology")
        return Path(t) if t else None

    @property
    def mapping(self) -> list[Path]:
        return [Path(m) for m in self.description["system"].get("mapping", [])]

    @property
    def mdp(self) -> Path | None:
        """The ``.mdp`` whose non-bonded settings the model's refinement uses (if it carries one)."""
        m = self.description["system"].get("mdp")
        return Path(m) if m else None

    @property
    def sampling(self) -> dict[str, Any]:
        """The sampling settings the model is best used with (``BackmapSettings`` keys, recorded by
        the train step's ``sampling``): apply and the backmap step take them where nothing is given."""
        return dict(self.description.get("sampling") or {})

    @property
    def trained_at(self) -> float | None:
        """The temperature (K) of the model's training data, as its card records it (None if not)."""
        from backmap.engine.model_card import read_card

        try:
            card = read_card(self.directory)
        except BackmapError:
            return None
        t = ((card or {}).get("training") or {}).get("temperature (K)")
        return float(t) if t else None

    def refuse_output_inside(self, out: Path, option: str = "--out") -> None:
        """Outputs never go into the model package (they would replace its files or be taken for
        part of it by a later export)."""
        if self.directory.resolve() in Path(out).resolve().parents:
            raise BackmapError(f"{option} lies inside the model package {self.directory}: write it elsewhere",
                               source=out)

    def check_system(self, cg_topology: CGTopology) -> None:
        """Refuse a system that is not the one the model was trained on, naming the difference. A
        generator that adapts to new chemistry (``Generator.adapt``) may meet molecule types under
        new names (chemical transfer); one it knows by name must still be the same molecule."""
        transferable = type(self.generator).adapt is not Generator.adapt
        check_molecules(self.description["system"].get("molecules", {}), cg_topology, self.directory, transferable)
        self.channels.check_system(cg_topology, where=f"model in {self.directory}")


def molecules_fingerprint(cg_topology: CGTopology) -> dict[str, Any]:
    """Per molecule type: atom names and types, and the beads (name, type, atoms) of its mapping."""
    out = {}
    for cb in cg_topology.blocks:
        mt, mm = cb.block.moltype, cb.mapping
        out[mt.name] = {"atom_names": [str(a) for a in mt.atom_names], "atom_types": [str(t) for t in mt.atom_types],
                        "beads": [[str(b.name), str(b.type), [int(a) for a in b.atoms]] for b in mm.beads]}
    return out


def check_molecules(recorded: dict[str, Any], cg_topology: CGTopology, where: Path | str,
                    new_names: bool = False) -> None:
    """Each molecule type of ``cg_topology`` is one of ``recorded`` with the same atoms and beads
    (``new_names``: or one under a name not recorded at all)."""
    if not recorded:
        return
    have = molecules_fingerprint(cg_topology)
    for name, mol in have.items():
        if name not in recorded and new_names:
            continue
        if name not in recorded:
            raise BackmapError(f"the model was trained on molecule types {sorted(recorded)}, not {name!r} "
                               "(a model of another system?)", source=where)
        rec = recorded[name]
        for key, what in (("atom_names", "atom names"), ("atom_types", "atom types"), ("beads", "beads")):
            if rec.get(key) is not None and rec[key] != mol[key]:
                n_rec, n_have = len(rec[key]), len(mol[key])
                detail = f"{n_rec} vs {n_have}" if n_rec != n_have else \
                    next(f"{a!r} vs {b!r}" for a, b in zip(rec[key], mol[key]) if a != b)
                raise BackmapError(f"molecule type {name}: the {what} differ from the model's ({detail}): the model "
                                   "was trained on another topology or mapping", source=where)


# --------------------------------------------------------------------------- state <-> files
def split_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "state") -> Any:
    """The JSON part of a state tree; its tensors and arrays are moved into ``tensors``."""
    if torch.is_tensor(obj):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise BackmapError(f"{prefix}: object arrays cannot be stored in a model file")
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__array__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: split_state(v, tensors, f"{prefix}.{k}") for k, v in obj.items()}
        return {"__items__": [[k, split_state(v, tensors, f"{prefix}.{i}")] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return [split_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise BackmapError(f"{prefix}: a {type(obj).__name__} cannot be stored in a model file (use tensors, arrays, "
                       "dicts, lists and plain values)")


def join_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The state tree back from its JSON part and its tensors."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__array__"}:
            return tensors[obj["__array__"]].numpy()
        if set(obj) == {"__items__"}:
            return {k: join_state(v, tensors) for k, v in obj["__items__"]}
        return {k: join_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_state(v, tensors) for v in obj]
    return obj


def save_model(directory: Path, generator: Generator, channels: Channels, topology: Path | None,
               mapping: list[Path], cg_topology: CGTopology | None = None, *, mdp: Path | None = None,
               card: dict[str, Any] | None = None, **extra: Any) -> Path:
    """Write the model package: weights and ``system/`` first, ``model.json`` last (each
    atomically), so a folder with a ``model.json`` is always complete; then its card (``card``:
    what :func:`backmap.engine.model_card.new_card` takes). ``extra`` (seed, training summary, …)
    is recorded.

    Identical content gives identical bytes (checksums and diffs of model folders mean something):
    no creation time (when a model was trained is in the run's ``run.json``), no safetensors
    metadata, keys in the order the generator gives them, sets sorted."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    state = split_state(generator.state_dict(), tensors)
    weights = save(dict(sorted(tensors.items())))
    system = package_system(directory, topology, list(mapping), mdp)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        tmp.write_bytes(weights)
    description = {
        "format": MODEL_FORMAT, "backmap": __version__,
        "plugin": generator.name, "params": generator.params.model_dump(mode="json"),
        "environment": generator.environment.model_dump(mode="json"), "channels": channels.to_json(),
        "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(weights).hexdigest()},
        "system": {**system, "molecules": molecules_fingerprint(cg_topology) if cg_topology is not None else {}},
        **extra, "state": state}
    with atomic_path(directory / MODEL_FILE) as tmp:
        tmp.write_text(json.dumps(description, indent=1, default=_json_default))
    if card is not None:
        write_card(directory, new_card(description, cg_topology, **card))
    return directory


def _json_default(obj: Any) -> Any:
    """JSON for what ``json`` does not know: sets in sorted order (their iteration order changes
    with the process' hash seed), anything else as its ``str``."""
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def model_directory(path: Path | str) -> Path:
    """The model folder for ``path``: the folder itself, its ``model.json``, a run's work directory
    (its ``model/``), a model archive (``.bmz``, unpacked once into the cache) or the name of a
    registered model (``backmap models list``). A pickled model of older versions is refused with
    the command that converts it."""
    path = Path(path)
    if not path.exists() and len(path.parts) == 1 and path.suffix.lower() != ARCHIVE_SUFFIX:
        registered = find_registered(str(path))
        if registered is not None:
            path = registered.path
    if path.suffix.lower() == ARCHIVE_SUFFIX and path.is_file():
        return unpacked_archive(path)
    if path.suffix == ".pkl" or (path.is_dir() and not (path / MODEL_FILE).is_file()
                                 and any(path.glob("*.pkl")) and not (path / "model" / MODEL_FILE).is_file()):
        pkl = path if path.suffix == ".pkl" else next(iter(sorted(path.glob("*.pkl"))))
        raise BackmapError(f"{pkl.name} is a pickled model of an older backmap: loading it could run arbitrary "
                           f"code, so it is not loaded. Convert it once (if you trust it) with: backmap convert-model "
                           f"{pkl} --out {pkl.parent}", source=pkl)
    if path.name == MODEL_FILE:
        path = path.parent
    if path.is_dir() and not (path / MODEL_FILE).is_file() and (path / "model" / MODEL_FILE).is_file():
        path = path / "model"
    if not (path / MODEL_FILE).is_file():
        if not path.exists() and len(path.parts) == 1:
            raise BackmapError("no such model folder or archive, and no registered model of this name (see "
                               "`backmap models list`)", source=path)
        raise BackmapError(f"no trained model here (expected a model folder with {MODEL_FILE}, a model archive "
                           f"({ARCHIVE_SUFFIX}), or a run directory whose train step wrote model/)", source=path)
    return path


def read_description(directory: Path) -> dict[str, Any]:
    """``model.json`` as written (paths relative to the package), its format checked; a model of
    an older format is refused with the command that repackages it."""
    try:
        description = json.loads((directory / MODEL_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackmapError(f"cannot read the model description: {exc}", source=directory / MODEL_FILE) from None
    fmt = description.get("format") if isinstance(description, dict) else None
    if fmt in LEGACY_FORMATS:
        raise BackmapError(f"a model of an older backmap (format {fmt}): it names its topology and mapping by paths "
                           "that may lead outside its folder, and a model only reads files inside its package now. "
                           f"Repackage it once (it reads those files this one time): backmap convert-model "
                           f"{directory} --out NEW_FOLDER", source=directory / MODEL_FILE)
    if not isinstance(description, dict) or fmt != MODEL_FORMAT:
        raise BackmapError(f"not a backmap model description (format {fmt!r} where {MODEL_FORMAT} is expected)"
                           if isinstance(description, dict) else "not a backmap model description",
                           source=directory / MODEL_FILE)
    validate_description(description, directory / MODEL_FILE)
    return description


def load_model(path: Path | str, registry: Registry | None = None) -> Model:
    """A trained model from its package (see :func:`model_directory`), never unpickling anything
    and never reading a file outside the package."""
    directory = model_directory(path)
    return model_from_description(directory, read_description(directory), registry)


def model_from_description(directory: Path, description: dict[str, Any], registry: Registry | None = None,
                           check_files: bool = True) -> Model:
    """The generator of a model description whose weights lie in ``directory``. ``check_files``:
    the system files are the package's own, hashed (off only for repackaging an older model, whose
    ``system`` paths the caller has resolved)."""
    from safetensors.torch import load as load_tensors

    registry = registry or default_registry()
    where = directory / MODEL_FILE
    try:
        weights = (directory / WEIGHTS_FILE).read_bytes()
    except FileNotFoundError:
        raise BackmapError(f"the model has no {WEIGHTS_FILE}", source=directory) from None
    recorded = (description.get("weights") or {}).get("sha256")
    if recorded is not None and hashlib.sha256(weights).hexdigest() != recorded:
        raise BackmapError(f"{WEIGHTS_FILE} was changed after the model was made (its SHA-256 differs from the one "
                           "in model.json)", source=directory)
    try:
        tensors = load_tensors(weights)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise BackmapError(f"cannot read the weights: {exc}", source=directory / WEIGHTS_FILE) from None
    check_tensors_finite(tensors, directory / WEIGHTS_FILE)
    if check_files:
        description["system"] = verify_system(directory, description.setdefault("system", {}), where)
    cls = registry.get("generator", description["plugin"], where=str(where)).cls
    if description["environment"].get("temporal"):  # trajectory-mode models made before the option existed
        description["environment"].setdefault("temporal_alignment", "frame")
    try:
        generator = cls(description["params"], environment=description["environment"])
        generator.load_state_dict(join_state(description["state"], tensors))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:  # a damaged state
        raise BackmapError(f"the model does not fit its plugin {description['plugin']!r}: {exc}",
                           source=directory) from None
    try:
        channels = Channels.from_json(description["channels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BackmapError(f"key channels: not a channel map ({type(exc).__name__}: {exc})", source=where) from None
    return Model(generator, channels, description, directory)
