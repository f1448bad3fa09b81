"""Model files are validated when loaded (backmap.engine.model_schema): a model.json missing a key or
holding one of the wrong type, a mapping given as a string, NaN in the state or in the weights —
each one line naming the model file and the key, never a traceback, and nothing written."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import one_line_error, run_cli


def _damaged(template_model: Path, tmp_path: Path, how: str) -> Path:
    model = tmp_path / "model"
    shutil.copytree(template_model / "model", model)
    path = model / "model.json"
    d = json.loads(path.read_text())
    if how.startswith("no "):
        del d[how[3:]]
    elif how == "params is a string":
        d["params"] = "kick=0"
    elif how == "mapping is a string":
        d["system"]["mapping"] = d["system"]["mapping"][0]
    elif how == "plugin is a number":
        d["plugin"] = 3
    elif how == "NaN in the state":
        state = json.dumps(d["state"])
        number = next(tok for tok in state.replace("[", " ").replace(",", " ").split() if tok.startswith("0.0"))
        d["state"] = json.loads(state.replace(number, "NaN", 1))
    elif how == "NaN in the weights":
        from safetensors.torch import load, save

        tensors = load((model / "weights.safetensors").read_bytes())
        if not tensors:
            tensors = {"probe": torch.zeros(2)}
        name = next(iter(tensors))
        tensors[name] = tensors[name].float().clone()
        tensors[name].view(-1)[0] = float("nan")
        data = save(tensors)
        (model / "weights.safetensors").write_bytes(data)
        d["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
    path.write_text(json.dumps(d))
    return model


@pytest.mark.parametrize("how, key", [
    ("no plugin", "key plugin: missing"), ("no environment", "key environment: missing"),
    ("no channels", "key channels: missing"), ("params is a string", "key params:"),
    ("mapping is a string", "key system.mapping:"), ("plugin is a number", "key plugin:"),
    ("NaN in the state", "not a finite number"), ("NaN in the weights", "holds NaN or infinite values"),
])
def test_a_damaged_model_is_one_line_naming_the_file_and_the_key(template_model, tmp_path, how, key):
    model = _damaged(template_model, tmp_path, how)
    out = tmp_path / "out" / "aa.xtc"
    code, _, err = run_cli("apply", "--model", model, "--cg", template_model / "backmap" / "aa_cg.trr", "--out", out)
    line = one_line_error(code, err)
    assert key in line, line
    assert ("weights.safetensors" if "weights" in how else "model.json") in line
    assert not out.parent.exists()


def test_the_shipped_models_pass_the_schema():
    from backmap.engine.model_schema import validate_description

    shipped = Path(__file__).resolve().parent.parent / "models"
    for folder in sorted(p for p in shipped.iterdir() if (p / "model.json").is_file()):
        validate_description(json.loads((folder / "model.json").read_text()), folder / "model.json")
