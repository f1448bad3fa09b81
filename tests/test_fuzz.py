"""Fuzzing (hardening issue #20): mutated recipes, mapping files (VOTCA XML, DeepBackmap .map),
topologies and overrides are thrown at ``backmap check`` and ``backmap run --steps prepare``; every
case must end with exit code 0, or 2 with nothing but ``error: …`` lines — never a traceback.

The cases come from a seeded generator (``random.Random(seed)``): ``make_case(seed)`` gives the
same files and arguments for the same seed on every machine (all paths in the files are relative
to the case folder). Seeds below :data:`RUN_SEEDS` run ``check``, the others ``run --steps
prepare``. A failing case is reported with its seed, its files (also kept in a folder named in the
message) and the traceback; reproduce it with ``FUZZ_SEEDS=SEED[,SEED…] pytest tests/test_fuzz.py
-k seed``. ``FUZZ_CASES=N`` runs N check cases (and N/4 prepare cases) instead of the default for a
long local run; the default run does more than 1 000 cases in all.
"""
from __future__ import annotations

import copy
import os
import random
import shutil
import traceback
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import DATA, HEXANE, REPO

#: seeds from here on run ``backmap run --steps prepare``; below, ``backmap check``
RUN_SEEDS = 1_000_000
N_CHECK = int(os.environ.get("FUZZ_CASES", 0)) or 820
N_RUN = int(os.environ.get("FUZZ_CASES", 0)) // 4 or 190
#: seeds of cases that found a bug (each fixed): always run. Recipe not UTF-8 (92, 36, 1000036:
#: UnicodeDecodeError); override into ``steps: null`` (93: TypeError); a key with '[' (1489:
#: IndexError in the error message); ``~nouser/x`` as a path (1842: RuntimeError); .map [mult] rows
#: not two integers (95, 191, 500, 701); '²' as a number in [order] (1756, 1000094) and as a VOTCA
#: resid (2212: ValueError); a VOTCA weight 'inf' (1092: numpy RuntimeWarning on the terminal)
REGRESSION_SEEDS: list[int] = [36, 92, 93, 95, 191, 500, 701, 1092, 1489, 1756, 1842, 2212, 1000036, 1000094]

#: the recipe every case starts from; paths relative to the case folder (``../`` is the fuzz root)
BASE = {
    "name": "fuzz",
    "description": "fuzz base",
    "seed": 1,
    "workdir": "work",
    "system": {"topology": "../hexane/topol.top", "mapping": "../hexane/hexane.xml"},
    "data": {"trajectory": "../hexane/traj.xtc", "frames": "0:2", "skip_frames": [],
             "split": {"test_fraction": 0.5, "mode": "tail"}},
    "generator": {"plugin": "template", "params": {}, "environment": {"cutoff": 0.7, "traversal": "dfs"}},
    "refiners": [{"plugin": "langevin", "params": {}}],
    "regularizers": [],
    "steps": [
        {"prepare": {"cache": True}},
        {"map": {"frames": "0:1", "out": "cg/cg.gro"}},
        {"train": {"epochs": 1}},
        {"backmap": {"cg": "../cg.gro", "candidates": 2}},
        {"evaluate": {"reference": "../hexane/traj.xtc", "candidates": {"a": "output:backmap.aa"}}},
    ],
}

#: values of the wrong type, out of range, or naming the wrong file
WILD = [None, True, False, 0, 1, -1, 2, 10**30, -10**30, 1e308, -1e308, float("nan"), float("inf"),
        float("-inf"), 0.5, -0.5, "", " ", "x", "0:2", "::", "1:0", "-1", "0,,5", "3:1:-1", "0:2:0", "a:b",
        "1e400", "nan", "ℌ𝔢𝔵ä\u202e√", "\x00", "x" * 300, [], {}, [1, 2], [-1], [None], [[1]], {"a": 1},
        {"": None}, {"plugin": "x"}, "/nonexistent/x.xml", "../adir", "../blob.bin", "../empty.xtc",
        "../hexane/hexane.xml", "../hexane/traj.xtc", "../hexane/topol.top", "../hexane/conf.gro",
        "../hexane/topol.tpr", "../hexane/traj.trr", "../dbm/Protein.map", "../cg.gro", "workdir:x.xtc",
        "output:nope", "output:", "~nouser/x", "..", ".", "/"]
KEYS = ["name", "seed", "system", "data", "steps", "topology", "mapping", "channels", "trajectory", "pairs",
        "frames", "skip_frames", "split", "test_frames", "test_fraction", "mode", "plugin", "params",
        "environment", "prepare", "map", "train", "backmap", "evaluate", "refine", "cache", "cg", "",
        "Näme", "x" * 50, "cutoff", "traversal", "unit", "refiners", "generator", "out"]
XML_TEXT = ["", " ", "x", "-1", "0", "1", "nan", "inf", "-0.5", "1e400", "1 1 1", "0 0 0 0 0 0 0", "ℌ𝔢𝔵",
            "1:CHL:C", "99:ZZZ:Q", "1:CHL", "a:b:c", "-1:CHL:C", "1:CHL:C 1:CHL:C", "A1 B", "A1 B A2 Q",
            "A1", "Protein", "HEX", "A"]
BLOB = bytes(random.Random(7).randrange(256) for _ in range(600))


@dataclass
class Case:
    seed: int
    what: str  # which input was mutated, and how
    files: dict[str, bytes] = field(default_factory=dict)  # case folder file -> content
    args: list[str] = field(default_factory=list)  # after the command and the recipe path

    @property
    def command(self) -> list[str]:
        return ["check"] if self.seed < RUN_SEEDS else ["run", "--steps", "prepare"]


# --------------------------------------------------------------------------- mutations

def _slots(tree, path=()):
    """Every (container path, key) in a YAML tree."""
    if isinstance(tree, dict):
        items = list(tree.items())
    elif isinstance(tree, list):
        items = list(enumerate(tree))
    else:
        return []
    out = []
    for k, v in items:
        out.append((path, k))
        out += _slots(v, path + (k,))
    return out


def _at(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _wild(rng: random.Random):
    value = rng.choice(WILD)
    return copy.deepcopy(value)


def mutate_tree(tree: dict, rng: random.Random, what: list[str]) -> None:
    """One structural mutation of the recipe tree: delete, duplicate, rename, retype, renumber."""
    slots = _slots(tree)
    path, key = rng.choice(slots)
    parent = _at(tree, path)
    op = rng.choice(["delete", "delete", "duplicate", "rename", "wild", "wild", "wild", "number", "nest"])
    what.append(f"{op} {'.'.join(map(str, path + (key,)))}")
    if op == "delete":
        del parent[key]
    elif op == "duplicate":
        if isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        else:
            parent[rng.choice(KEYS)] = copy.deepcopy(parent[key])
    elif op == "rename":
        if isinstance(parent, list):
            parent[key] = {rng.choice(KEYS): parent[key]}
        else:
            value = parent.pop(key)
            new = rng.choice([rng.choice(KEYS), str(key).upper(), str(key)[:-1], str(key) + "s", 1, None, True])
            parent[new] = value
    elif op == "wild":
        parent[key] = _wild(rng)
    elif op == "number":
        value = parent[key]
        parent[key] = rng.choice([-1, 0, 10**18, -(10**18), float("nan"), 2**63, 1e-300]) \
            if isinstance(value, (int, float)) else rng.choice([-1, 0, 10**18, float("nan"), 3.5])
    else:  # a value in the wrong container
        parent[key] = rng.choice([[parent[key]], {str(key): parent[key]}, [parent[key], parent[key]]])


def mutate_text(data: bytes, rng: random.Random, what: list[str]) -> bytes:
    """One textual mutation: truncation, garbage inserted, lines dropped/duplicated/swapped/indented,
    the whole file empty, binary, or not UTF-8."""
    op = rng.choice(["truncate", "truncate", "insert", "insert", "drop_line", "dup_line", "swap_lines", "indent",
                     "empty", "blob", "latin1", "scalar", "cut_tail"])
    what.append(op)
    lines = data.splitlines(keepends=True) or [b""]
    if op == "truncate":
        return data[:int(rng.random() * len(data))]
    if op == "cut_tail":
        return data[:max(0, len(data) - rng.randrange(1, 40))]
    if op == "insert":
        at = int(rng.random() * len(data))
        junk = rng.choice([b":", b"[", b"{", b"]", b"}", b"\t", b'"', b"'", b"- ", b"&a", b"*a", b"!!python/object:os.system",
                           b"<", b">", b"&", b"</", b"<!--", b"]]>", b"\x00", b"\xff\xfe", b"\n", b"%", b"?", b"|",
                           b"\xe2\x80\xae", b"; ", b"[ map ]", b"[/map]", b" 1 2 3 "])
        return data[:at] + junk + data[at:]
    i = rng.randrange(len(lines))
    if op == "drop_line":
        del lines[i]
    elif op == "dup_line":
        lines.insert(i, lines[i])
    elif op == "swap_lines":
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "indent":
        lines[i] = rng.choice([b" ", b"   ", b"\t"]) + lines[i]
    elif op == "empty":
        return b""
    elif op == "blob":
        return BLOB[:rng.randrange(1, len(BLOB))]
    elif op == "latin1":
        lines[i] = lines[i].rstrip(b"\n") + b" \xe9\xe8\n"
    elif op == "scalar":
        return rng.choice([b"42\n", b"- a\n- b\n", b"~\n", b"'just a string'\n", b"---\n---\n", b"...\n"])
    return b"".join(lines)


def mutate_xml(text: str, rng: random.Random, what: list[str]) -> bytes:
    """One mutation of a VOTCA mapping: elements dropped, renamed, duplicated, their text replaced;
    atoms that do not exist, beads without atoms, bad weights; or a textual mutation."""
    op = rng.choice(["drop", "rename", "duplicate", "text", "text", "atom", "atom", "empty_bead", "weight", "weight",
                     "weights_count", "bonded", "placement", "ident", "textual", "textual"])
    if op == "textual":
        return mutate_text(text.encode(), rng, what)
    root = ET.fromstring(text)
    parents = {c: p for p in root.iter() for c in p}
    elements = list(root.iter())
    what.append(f"xml {op}")
    if op == "drop":
        el = rng.choice(elements[1:])
        parents[el].remove(el)
    elif op == "rename":
        rng.choice(elements).tag = rng.choice(["name", "beads", "cg_bead", "map", "maps", "weights", "x", "cg_molecule",
                                               "topology", "mapping", "type"])
    elif op == "duplicate":
        el = rng.choice(elements[1:])
        parents[el].append(copy.deepcopy(el))
    elif op == "text":
        rng.choice(elements).text = rng.choice(XML_TEXT)
    elif op in ("atom", "empty_bead"):
        beads = root.findall(".//cg_bead/beads")
        el = rng.choice(beads)
        atoms = (el.text or "").split()
        if op == "empty_bead":
            el.text = rng.choice(["", " ", None])
        elif atoms:
            i = rng.randrange(len(atoms))
            atoms[i] = rng.choice(["1:CHL:Q", "9:CHL:C", "1:XYZ:C", "0:CHL:C", "-3:CHL:C", "1:CHL:C", atoms[i] + ":x",
                                   "1::C", "::", "1:chl:c", "99999999999999999999:CHL:C", "²:CHL:C", "1:CHL:C:x"])
            if rng.random() < 0.3:
                atoms.append(rng.choice(atoms))
            el.text = " ".join(atoms)
    elif op in ("weight", "weights_count"):
        el = rng.choice(root.findall(".//maps/map/weights"))
        weights = (el.text or "").split()
        if op == "weights_count":
            weights = weights[:-1] if weights and rng.random() < 0.5 else weights + ["1"]
        elif weights:
            i = rng.randrange(len(weights))
            weights[i] = rng.choice(["0", "-1", "-12", "nan", "inf", "-inf", "1e308", "1e-320", "x", "1,5", "0x10"])
            if rng.random() < 0.2:
                weights = ["0"] * len(weights)
            if rng.random() < 0.2:
                weights = ["-1"] * len(weights)
        el.text = " ".join(weights)
    elif op == "bonded":
        el = rng.choice(root.findall(".//cg_bonded/*/beads"))
        el.text = rng.choice(XML_TEXT[-8:] + ["A1 A1", "A1 B B A2", "A1 B A2 A1", "A1 Z"])
    elif op == "placement":
        topo = root.find("topology")
        order = ET.SubElement(topo, "placement_order")
        order.text = rng.choice(["A1 B A2", "A2 B", "A1 A1 B A2", "", "Q", "A1 B A2 A1", " "])
    elif op == "ident":
        root.find("ident").text = rng.choice(["", "HEX", "protein", "Protein Protein", "ℌ𝔢𝔵"])
    return ET.tostring(root, encoding="unicode").encode()


def mutate_dbm(text: str, rng: random.Random, what: list[str]) -> bytes:
    """One mutation of a DeepBackmap .map: rows dropped/duplicated, fields replaced, dropped or
    added, section headers broken, [align]/[mult]/[order] rows with bad indices; or textual."""
    op = rng.choice(["field", "field", "field", "drop_field", "add_field", "row", "header", "align", "mult", "order",
                     "textual"])
    if op == "textual":
        return mutate_text(text.encode(), rng, what)
    what.append(f"dbm {op}")
    lines = text.splitlines()
    rows = [i for i, line in enumerate(lines) if line[:1].isdigit()]
    i = rng.choice(rows)
    words = lines[i].split()
    if op == "field":
        words[rng.randrange(len(words))] = rng.choice(["0", "-1", "21", "999999999999999999999", "x", "1.5", "opls_999",
                                                       "A", "B", "nan", "ℌ", "3", "1", "²", "-0"])
    elif op == "drop_field":
        del words[rng.randrange(len(words))]
    elif op == "add_field":
        words.insert(rng.randrange(len(words) + 1), rng.choice(["1", "x", "A"]))
    elif op == "row":
        if rng.random() < 0.5:
            del lines[i]
            return ("\n".join(lines) + "\n").encode()
        lines.insert(i, lines[i])
    elif op == "header":
        heads = [k for k, line in enumerate(lines) if line.startswith("[")]
        k = rng.choice(heads)
        lines[k] = rng.choice(["[", "[]", "[/]", "[MAP]", "[ map", "[mult]", "[order]", "[align]", "[/map]", ""])
    else:  # a section of backmap's or DeepBackmap's extensions with random rows
        body = rng.choice(["1 2", "1", "x y", "9 1", "1 9", "0 0", "-1 2", "1 2 3", "1 x", "3 2 1", "1 1 2 3", "a", "²", "1 ²"])
        lines += [f"[{op}]", body, f"[/{op}]"]
    lines[i] = " ".join(words) if op != "row" else lines[i]
    return ("\n".join(lines) + "\n").encode()


def _dump(tree) -> bytes:
    return yaml.safe_dump(tree, allow_unicode=True, sort_keys=False, width=1000).encode()


def _override(rng: random.Random) -> str:
    key = rng.choice(["data.frames", "seed", "name", "system.mapping", "steps.prepare.cache", "steps.prepare.x.y",
                      "steps.map.frames", "steps.nope.x", "data.split.test_frames", "refiners.plugin", "x.y.z",
                      "steps", "steps.x", "data", "system.topology", "", ".", "..", "steps..", "generator.params.x",
                      "data.skip_frames", "workdir"])
    value = rng.choice(["1", "[0,", "{", "null", "[]", "{}", "0:2", "-1", "x", "", "'", "[1, 2]", "{a: 1}", ".nan",
                        "../adir", "nope.xml", "../blob.bin", "1:30", "!!binary aGk=", "&a [*a]", "\x00"])
    return f"{key}={value}" if rng.random() < 0.95 else key


def make_case(seed: int) -> Case:
    """The case of ``seed``: which inputs are mutated, how many times, and the resulting files."""
    rng = random.Random(seed)
    tree = copy.deepcopy(BASE)
    if seed >= RUN_SEEDS:  # prepare must stay fast: keep the frames small unless mutated
        tree["steps"] = [{"prepare": {}}] + tree["steps"][1:]
    what: list[str] = []
    files: dict[str, bytes] = {}
    target = rng.choices(["recipe", "recipe_text", "xml", "dbm", "top", "overrides", "mix"],
                         weights=[30, 14, 26, 12, 5, 6, 7])[0]
    n = 1 + int(rng.expovariate(1.0))  # mostly one mutation, sometimes several
    args: list[str] = []
    if target in ("xml", "mix"):
        text = (HEXANE / "hexane.xml").read_text()
        data = text.encode()
        for _ in range(n):
            try:
                data = mutate_xml(data.decode(), rng, what)
            except (ET.ParseError, UnicodeDecodeError, IndexError, AttributeError):  # nothing left to mutate
                data = mutate_text(data, rng, what)
        files["mapping.xml"] = data
        tree["system"]["mapping"] = "mapping.xml"
    if target == "dbm":
        data = (DATA / "dbm" / "Protein.map").read_bytes()
        for _ in range(n):
            try:
                data = mutate_dbm(data.decode(), rng, what)
            except (UnicodeDecodeError, IndexError, ValueError):
                data = mutate_text(data, rng, what)
        name = rng.choice(["Protein.map"] * 4 + ["Other.map", "x.MAP"])
        files[name] = data
        tree["system"]["mapping"] = name
    if target == "top":
        data = (HEXANE / "topol.top").read_bytes()
        for _ in range(n):
            data = mutate_text(data, rng, what)
        files["topol.top"] = data
        tree["system"]["topology"] = "topol.top"
    if target in ("recipe", "mix"):
        for _ in range(n):
            if _slots(tree):
                mutate_tree(tree, rng, what)
    if target in ("overrides", "mix") or rng.random() < 0.05:
        args = [_override(rng) for _ in range(rng.randrange(1, 4))]
        what.append(f"overrides {args}")
    recipe = _dump(tree)
    if target == "recipe_text":
        for _ in range(n):
            recipe = mutate_text(recipe, rng, what)
    files["recipe.yaml"] = recipe
    return Case(seed, f"{target}: {'; '.join(what)}", files, args)


# --------------------------------------------------------------------------- running

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The fuzz root: links to the test data, a CG .gro of the hexane system, a folder, a binary
    blob and an empty file that mutated paths point at."""
    import numpy as np

    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.system.projection import map_trajectory

    root = tmp_path_factory.mktemp("fuzz")
    (root / "hexane").symlink_to(HEXANE)
    (root / "dbm").symlink_to(DATA / "dbm")
    (root / "adir").mkdir()
    (root / "blob.bin").write_bytes(BLOB)
    (root / "empty.xtc").write_bytes(b"")
    topo = load_topology(HEXANE / "topol.top")
    map_trajectory(load_mapping(HEXANE / "hexane.xml", topo).cg_topology(topo), HEXANE / "traj.xtc",
                   root / "cg.gro", np.arange(1))
    return root


def _problem(result, command: list[str], caught: list) -> str | None:
    """What is wrong with a finished command, or None. ``caught``: the warnings it raised; those of
    backmap's own code, or numpy's about NaN or overflow, would be printed to the user's terminal."""
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning)
            or str(REPO) in str(w.filename) and ".venv" not in str(w.filename)]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return "uncaught exception:\n" + "".join(traceback.format_exception(*result.exc_info))
    if result.exit_code not in (0, 2):
        return f"exit code {result.exit_code}"
    if "Traceback" in result.stderr or "Traceback" in result.stdout:
        return "a traceback in the output"
    if result.exit_code == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        # `run` prints the rule of the step it starts before the step's error
        other = [line for line in lines if not line.startswith("error: ")
                 and not (command[0] == "run" and line.startswith("─") and line.endswith("─"))]
        if not lines or other:
            return f"exit code 2 with other lines than 'error: …': {other or '(no output)'}"
    if ours:
        return "warnings:\n" + "\n".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in ours)
    return None


def run_case(root: Path, seed: int) -> str | None:
    """Run the case of ``seed`` in ``root/case-SEED``; None if it passed (its folder is removed),
    else the report (its folder is kept)."""
    from backmap.cli import cli

    case = make_case(seed)
    folder = root / f"case-{seed}"
    folder.mkdir()
    for name, data in case.files.items():
        (folder / name).write_bytes(data)
    cwd = os.getcwd()
    os.chdir(folder)  # a default work directory (runs/<name>) lands in the case folder
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = CliRunner().invoke(cli, [*case.command, "recipe.yaml", *case.args])
    finally:
        os.chdir(cwd)
    problem = _problem(result, case.command, caught)
    if problem is None:
        shutil.rmtree(folder)
        return None
    shown = "\n".join(f"--- {name} ({len(data)} bytes){': ' + repr(data[:3000]) if name != 'topol.top' else ''}"
                      for name, data in case.files.items())
    return (f"seed {seed}: backmap {' '.join(case.command)} recipe.yaml {' '.join(map(repr, case.args))}\n"
            f"mutation: {case.what}\nfiles kept in {folder}\n{shown}\nstderr: {result.stderr[-2000:]}\n{problem}")


def _run_all(root: Path, seeds) -> None:
    failures = [report for seed in seeds if (report := run_case(root, seed)) is not None]
    assert not failures, f"{len(failures)} failing cases:\n\n" + "\n\n".join(failures[:10])


def test_generator_is_deterministic():
    """Same seed, same case (the reports' seeds reproduce the failures)."""
    assert make_case(12345) == make_case(12345)
    assert make_case(RUN_SEEDS + 3) == make_case(RUN_SEEDS + 3)


def test_base_recipe_is_valid(root):
    """The unmutated recipe passes both commands, so mutations start from a valid input."""
    folder = root / "base"
    folder.mkdir()
    (folder / "recipe.yaml").write_bytes(_dump(BASE))
    from backmap.cli import cli

    for command in (["check"], ["run", "--steps", "prepare"]):
        result = CliRunner().invoke(cli, [*command, str(folder / "recipe.yaml")])
        assert result.exit_code == 0, (result.stderr, result.exception)


def test_fuzz_check(root):
    """``backmap check`` on mutated inputs: exit code 0 or 2 with one-line errors, no traceback."""
    _run_all(root, range(N_CHECK))


def test_fuzz_run_prepare(root):
    """``backmap run --steps prepare`` on mutated inputs (fewer cases: a valid one builds pairs)."""
    _run_all(root, range(RUN_SEEDS, RUN_SEEDS + N_RUN))


def test_seed_out_of_range(cli, tmp_path):
    """Found by hand beside the fuzzer: ``seed=-1`` passed the checks and then made numpy raise
    ``ValueError: expected non-negative integer`` when the run started; 2**64 would overflow torch."""
    (tmp_path / "hexane").symlink_to(HEXANE)
    (tmp_path / "case").mkdir()
    recipe = tmp_path / "case" / "recipe.yaml"
    recipe.write_bytes(_dump({**BASE, "steps": [{"prepare": {}}]}))
    for seed in ("-1", str(2**64)):
        code, _, err = cli("run", recipe, "--steps", "prepare", f"seed={seed}")
        assert code == 2 and err.startswith("error: recipe.yaml: seed: input should be"), err
    assert not (tmp_path / "case" / "work").exists()


@pytest.mark.parametrize("seed", REGRESSION_SEEDS + [int(s) for s in os.environ.get("FUZZ_SEEDS", "").split(",") if s])
def test_fuzz_seed(root, seed):
    """Cases that found a bug (fixed since), and the seeds given in ``FUZZ_SEEDS``."""
    report = run_case(root, seed)
    assert report is None, report
