"""The import rules of docs/architecture.md, checked by the same code as ``scripts/check_imports.py``."""
from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_imports.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


check = _load_script()


@pytest.fixture(scope="module")
def graph():
    return check.build()


def _fail(rule: str, problems: list[str]) -> str:
    return f"{rule} ({len(problems)}; run .venv/bin/python scripts/check_imports.py):\n" + "\n".join(problems)


# --- the core as it is ---------------------------------------------------------------------------------

def test_every_core_module_is_in_the_graph(graph):
    files = sorted(check.ROOT.joinpath("backmap").rglob("*.py"))
    assert sorted(graph.modules.values()) == files
    assert {"backmap", "backmap.cli", "backmap.system.topology", "backmap.engine.plugin"} <= set(graph.modules)
    assert graph.graph().number_of_edges() > 50


def test_no_import_circle_beyond_a_package_and_its_submodule(graph):
    problems = check.circle_violations(graph)
    assert not problems, _fail("import circles", problems)


def test_the_data_model_never_imports_the_layers_above(graph):
    problems = check.data_model_violations(graph)
    assert not problems, _fail("backmap.system imports beyond errors/progress/_version/system", problems)


def test_the_core_never_imports_a_plugin(graph):
    plugins = check.plugin_packages()
    assert {"backmap_formats", "backmap_steps"} <= plugins  # else the rule would check nothing
    problems = check.plugin_violations(graph, plugins)
    assert not problems, _fail("core modules importing plugin packages", problems)


def test_no_plugin_imports_another_plugin(tmp_path):
    """Rule 5: built-in plugins use the core's public API only; a new cross-import is caught."""
    assert check.cross_plugin_violations() == []
    for name in ("backmap_a", "backmap_b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "backmap_a" / "step.py").write_text("def f():\n    from backmap_b.x import y\n")
    (found,) = check.cross_plugin_violations(tmp_path)
    assert found.endswith("step.py:2: plugin backmap_a imports plugin backmap_b")


def test_plugins_import_backmap_only_through_its_api(tmp_path):
    """Rule 6: built-in and example plugins reach backmap only through ``backmap.api``."""
    assert check.api_violations() == []
    (tmp_path / "p.py").write_text("from backmap.api.io import atomic_path\n\ndef f():\n    import backmap.engine.models\n")
    (found,) = check.api_violations((tmp_path,))
    assert found.endswith("p.py:4: plugin code imports backmap.engine.models (use backmap.api)")


def test_no_core_module_imports_the_package_root(graph):
    problems = check.root_violations(graph)
    assert not problems, _fail("core modules importing the package root backmap", problems)


def test_the_documented_command_passes(capsys):
    assert check.main() == 0, capsys.readouterr().out


# --- the checker itself, on a made-up core ---------------------------------------------------------------

def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "backmap"


def test_every_kind_of_import_is_an_edge(tmp_path):
    package = _write(tmp_path, {
        "backmap/__init__.py": "",
        "backmap/errors.py": "",
        "backmap/system/__init__.py": "from .topology import Topology\n",
        "backmap/system/topology.py": "from ..errors import BackmapError\n",
        "backmap/system/io.py": """\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from backmap.engine.plugin import Reader
            def read():
                import backmap.system.pbc
            """,
        "backmap/system/pbc.py": "from backmap.system import topology, missing\n",
        "backmap/engine/__init__.py": "",
        "backmap/engine/plugin.py": "from backmap.engine.future_module import Thing\n",
    })
    edges = set(check.build(package).graph().edges)
    assert edges == {
        ("backmap.system", "backmap.system.topology"),  # relative, from a package's __init__
        ("backmap.system.topology", "backmap.errors"),  # relative, two levels
        ("backmap.system.io", "backmap.engine.plugin"),  # type-only
        ("backmap.system.io", "backmap.system.pbc"),  # inside a function
        ("backmap.system.pbc", "backmap.system.topology"),  # from pkg import submodule ...
        ("backmap.system.pbc", "backmap.system"),  # ... reads the package too
        ("backmap.engine.plugin", "backmap.engine"),  # a module not written yet: its package
    }


def test_each_rule_names_the_offending_line(tmp_path):
    package = _write(tmp_path, {
        "backmap/__init__.py": "",
        "backmap/cli.py": "from backmap import hookimpl\n",
        "backmap/a.py": "import backmap.b\n",
        "backmap/b.py": "import backmap.c\n",
        "backmap/c.py": "\n\nfrom backmap import a\n",
        "backmap/system/__init__.py": "",
        "backmap/system/io.py": "from backmap import Plugin\nfrom backmap.engine import loaders\n",
        "backmap/engine/__init__.py": "",
        "backmap/engine/loaders.py": "import backmap_formats.gromacs\n",
    })
    graph = check.build(package)
    assert check.circles(graph) == [["backmap.a", "backmap.b", "backmap.c"]]
    [circle] = check.circle_violations(graph)
    assert "backmap/c.py:3 backmap.c -> backmap.a" in circle
    assert [p.split(": ", 1)[1] for p in check.data_model_violations(graph)] == [
        "data model backmap.system.io imports backmap",
        "data model backmap.system.io imports backmap.engine.loaders",
    ]
    [plugin] = check.plugin_violations(graph, frozenset({"backmap_formats"}))
    assert plugin.endswith("backmap/engine/loaders.py:1: core module backmap.engine.loaders imports plugin "
                           "package backmap_formats.gromacs")
    [root] = check.root_violations(graph)  # backmap.cli may; ``from backmap import a`` imports backmap.a
    assert root.endswith("backmap/system/io.py:1: backmap.system.io imports the package root backmap "
                         "(import the defining module)")
