"""Fuzzing the command line's options and model files: seeded random values for `backmap apply`'s
options, and seeded damage to a model's ``model.json`` loaded through the public loader. Every case
must end with exit code 0, or 2 and nothing but ``error: …`` lines (a :class:`BackmapError` for the
loader) — never a traceback. A failure names its seed; ``FUZZ_CASES=N`` runs N cases of each kind."""
from __future__ import annotations

import copy
import json
import os
import random
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from backmap.cli import cli
from backmap.errors import BackmapError

N_CASES = int(os.environ.get("FUZZ_CASES", 0)) or 120

#: option -> how a valid value looks (the fuzzer also tries the hostile pool on every option)
OPTIONS = {
    "--candidates": "2", "--gibbs": "0", "--minimize": "0", "--cg-restraint": "0", "--polish": "0",
    "--polish-sweeps": "last", "--regrow": "B1", "--regrow-candidates": "0", "--regrow-trials": "1",
    "--repair-clashes": "0", "--dock": "B1", "--cutoff": "0.7", "--traversal": "dfs", "--selector": "random",
    "--selector-param": "temperature=300", "--generator-param": "kick=0", "--move": "wrap_molecules",
    "--refine": "langevin", "--workers": "1", "--threads-per-worker": "1", "--frames-per-task": "1",
    "--temperature": "300", "--steps": "2", "--restraint": "1000", "--constraints": "none", "--timestep": "0.001",
    "--friction": "10", "--param": "minimize_steps=1", "--seed": "1", "--frames": "0:1", "--mdp": "nowhere.mdp",
    "--stereo-reference": "nowhere.gro", "--topology": "nowhere.top", "--mapping": "nowhere.xml",
}
FLAGS = ["--colouring", "--orient-units", "--frame-by-frame", "--project-cg", "--no-project-cg"]
HOSTILE = ["-1", "0", "1e400", "-1e400", "nan", "inf", "-inf", "", " ", "abc", "1.5", "99999999999999999999",
           "2**70", "☃", "0x10", "1,2", "=", "a=", "=1", "key=[1,", "..", "/", "/dev/null", "-", "none", "null",
           "True", "1:0", "5:1:-1", "0:1:0", "10000", "s1,,s2", "wrap_molecules:sigma=nan", "nosuchplugin",
           "langevin:x=1", "tcp://", "slurm"]


def _case(seed: int) -> list[str]:
    rng = random.Random(seed)
    args: list[str] = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.1:
            args.append(rng.choice(FLAGS))
            continue
        option = rng.choice(sorted(OPTIONS))
        value = OPTIONS[option] if rng.random() < 0.3 else rng.choice(HOSTILE)
        args += [option, value]
    return args


@pytest.fixture(scope="module")
def base(template_model) -> list[str]:
    return ["apply", "--model", str(template_model / "model"), "--cg", str(template_model / "backmap" / "aa_cg.trr"),
            "--frames", "0:1", "--candidates", "1", "--gibbs", "0"]


@pytest.mark.slow
def test_fuzz_apply_options(base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    failures, outcomes = [], {0: 0, 2: 0}
    for seed in range(N_CASES):
        args = _case(seed)
        out = tmp_path / f"c{seed}" / "aa.xtc"
        result = CliRunner().invoke(cli, [*base, *args, "--out", str(out)])
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        bad = result.exit_code not in (0, 2) or result.exc_info and result.exc_info[0] not in (SystemExit,) \
            or "Traceback" in result.output or (result.exit_code == 2 and not any(
                ln.startswith(("error:", "Error:", "Usage:", "Try ")) for ln in lines))
        if bad:
            failures.append(f"seed {seed}: {args}: exit {result.exit_code}: {result.output[-400:]} {result.exc_info}")
        outcomes[result.exit_code] = outcomes.get(result.exit_code, 0) + 1
    assert not failures, "\n".join(failures[:10])
    assert outcomes[2] > N_CASES // 3  # most hostile values are refused, and some cases run


def _damage(description: dict, rng: random.Random) -> dict:
    """One random change at a random place: delete a key, or replace a value by another type."""
    d = copy.deepcopy(description)
    paths: list[tuple[dict | list, object]] = []
    stack: list[dict | list] = [d]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in list(items)[:50]:
            paths.append((node, k))
            if isinstance(v, (dict, list)) and len(paths) < 2000:
                stack.append(v)
    node, key = rng.choice(paths[:200]) if rng.random() < 0.7 else rng.choice(paths)
    if isinstance(node, dict) and rng.random() < 0.4:
        del node[key]
    else:
        node[key] = rng.choice([None, "x", 3, -1, 1.5, float("nan"), [], {}, ["a"], {"a": 1}, True])
    return d


def test_fuzz_model_files(template_model, tmp_path):
    from backmap.api.recipes import load_model

    model = tmp_path / "model"
    shutil.copytree(template_model / "model", model)
    original = json.loads((model / "model.json").read_text())
    failures, refused = [], 0
    for seed in range(N_CASES):
        (model / "model.json").write_text(json.dumps(_damage(original, random.Random(seed))))
        try:
            load_model(model)
        except BackmapError:
            refused += 1
        except Exception as exc:  # noqa: BLE001 - anything else is what the fuzzer looks for
            failures.append(f"seed {seed}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures[:10])
    assert refused > N_CASES // 4
