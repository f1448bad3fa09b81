"""Check the import architecture of the core package ``backmap/``.

Usage::

    .venv/bin/python scripts/check_imports.py

Every module of ``backmap/`` is parsed with :mod:`ast`; all its imports count (module level, inside
functions, under ``if TYPE_CHECKING:``). Relative imports are resolved; ``from pkg import name``
imports ``pkg``, or the submodule ``pkg.name`` when there is one. The statement still runs ``pkg``'s
``__init__``, so for circles only it also counts as an import of ``pkg``: that is how a package
re-exporting its submodules forms a pair with one of them. An import of a module that does not exist
(yet) counts as one of its nearest existing package. The rules (docs/architecture.md):

1. no import circle beyond a package and one of its own submodules (``backmap.forcefield`` <->
   ``backmap.forcefield.energy`` is allowed: the package re-exports what it holds);
2. the data model ``backmap.system.*`` imports only ``backmap.system``, ``backmap.errors``,
   ``backmap.progress`` and ``backmap._version``;
3. the core never imports a plugin package (the packages under ``plugins/``);
4. no core module imports the package root ``backmap`` (it re-exports the plugin API), except
   ``backmap/__init__.py``, ``backmap/cli.py`` and ``backmap/api/__init__.py`` (which extends it);
5. no plugin package imports another (a plugin uses the core's public API, as a third-party one
   would);
6. plugins (``plugins/`` and the examples in ``docs/examples/``) import of backmap only
   ``backmap.api`` and its modules; the core never imports ``backmap.api`` (it re-exports the core);
7. no module below the use-case layer ``backmap.app`` imports it (only ``backmap.app`` itself,
   ``backmap.api`` and the command line ``backmap.cli*`` may);
8. no import circle inside a plugin package either (rule 1, for every package under ``plugins/``
   and every example plugin).

Prints the circles and every violation as ``path:line: message``; exits with 1 if there is any.
``tests/test_architecture.py`` runs the same code.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
ROOT_PACKAGE = "backmap"
LEAVES = frozenset({"backmap.errors", "backmap.progress", "backmap._version"})
DATA_MODEL = "backmap.system"
MAY_IMPORT_ROOT = frozenset({"backmap", "backmap.cli", "backmap.api"})
#: (importer, imported) plugin packages allowed to share code directly: none (shared building blocks
#: belong in the core's public API, e.g. ``backmap.api.icgen``)
KNOWN_CROSS_IMPORTS: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Import:
    """One import statement's target, as written in ``source`` (a module of the core)."""

    source: str
    target: str  # resolved absolute name: a core module, or any external/plugin module
    path: Path
    line: int
    package_side: bool = False  # ``pkg`` of ``from pkg import submodule``: counts for circles only

    def where(self) -> str:
        return f"{_display(self.path)}:{self.line}"


@dataclass
class ImportGraph:
    modules: dict[str, Path]  # core module name -> file
    imports: list[Import] = field(default_factory=list)

    def graph(self) -> nx.DiGraph:
        g: nx.DiGraph = nx.DiGraph()
        g.add_nodes_from(self.modules)
        for imp in self.imports:
            if imp.target in self.modules and imp.target != imp.source:
                g.add_edge(imp.source, imp.target)
        return g


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def module_name(path: Path, base: Path) -> str:
    """``base/backmap/system/io.py`` -> ``backmap.system.io``; a package's ``__init__`` -> the package."""
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(package_dir: Path) -> dict[str, Path]:
    return {module_name(p, package_dir.parent): p for p in sorted(package_dir.rglob("*.py"))}


def _resolve_from(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    parts = source.split(".") if is_package else source.split(".")[:-1]
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _known(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of ``name`` that is one of ``modules`` (``name`` itself if it lies outside
    their packages)."""
    if name.split(".")[0] not in {m.split(".")[0] for m in modules}:
        return name
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) if parts else name


def module_imports(source: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(source, _known(alias.name, modules), path, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, source, is_package)
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            found.extend(Import(source, sub, path, node.lineno) for sub in subs)
            only_submodules = len(subs) == len(node.names)
            found.append(Import(source, _known(base, modules), path, node.lineno, package_side=only_submodules))
    return found


def build(package_dir: Path = ROOT / ROOT_PACKAGE) -> ImportGraph:
    modules = find_modules(package_dir)
    result = ImportGraph(modules)
    for name, path in modules.items():
        result.imports.extend(module_imports(name, path, modules))
    return result


def plugin_packages(plugins_dir: Path = ROOT / "plugins") -> frozenset[str]:
    return frozenset(p.parent.name for p in plugins_dir.glob("*/__init__.py"))


def _is_package_pair(a: str, b: str) -> bool:
    return a.startswith(b + ".") or b.startswith(a + ".")


def circles(graph: ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module, each sorted, largest first."""
    sccs = [sorted(c) for c in nx.strongly_connected_components(graph.graph()) if len(c) > 1]
    return sorted(sccs, key=lambda c: (-len(c), c))


def describe(graph: ImportGraph, circle: list[str]) -> str:
    """The circle and the import lines that close it."""
    members = set(circle)
    edges = [imp for imp in graph.imports
             if imp.source in members and imp.target in members and imp.source != imp.target]
    lines = "; ".join(f"{imp.where()} {imp.source} -> {imp.target}" for imp in edges)
    return f"{' <-> '.join(circle)} ({lines})"


def circle_violations(graph: ImportGraph) -> list[str]:
    return [f"import circle of {len(c)} modules: {describe(graph, c)}" for c in circles(graph)
            if not (len(c) == 2 and _is_package_pair(*c))]


def data_model_violations(graph: ImportGraph) -> list[str]:
    def allowed(target: str) -> bool:
        return target in LEAVES or target == DATA_MODEL or target.startswith(DATA_MODEL + ".")

    return [f"{imp.where()}: data model {imp.source} imports {imp.target}"
            for imp in graph.imports
            if imp.source.startswith(DATA_MODEL) and imp.target in graph.modules and not allowed(imp.target)
            and not imp.package_side]


def plugin_violations(graph: ImportGraph, plugins: frozenset[str]) -> list[str]:
    return [f"{imp.where()}: core module {imp.source} imports plugin package {imp.target}"
            for imp in graph.imports if imp.target.split(".")[0] in plugins]


def root_violations(graph: ImportGraph) -> list[str]:
    return [f"{imp.where()}: {imp.source} imports the package root {ROOT_PACKAGE} (import the defining module)"
            for imp in graph.imports
            if imp.target == ROOT_PACKAGE and imp.source not in MAY_IMPORT_ROOT and not imp.package_side]


API = "backmap.api"
EXAMPLES = ROOT / "docs" / "examples"


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import statement of a file, function-local too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
    return out


def cross_plugin_violations(plugins_dir: Path = ROOT / "plugins") -> list[str]:
    """Imports of one plugin package by another (every import statement, function-local too)."""
    plugins = plugin_packages(plugins_dir)
    found = []
    for path in sorted(plugins_dir.glob("*/**/*.py")):
        owner = path.relative_to(plugins_dir).parts[0]
        for line, name in _imported(path):
            top = name.split(".")[0]
            if top in plugins and top != owner and (owner, top) not in KNOWN_CROSS_IMPORTS:
                found.append(f"{_display(path)}:{line}: plugin {owner} imports plugin {top}")
    return found


def api_violations(folders: tuple[Path, ...] = (ROOT / "plugins", EXAMPLES)) -> list[str]:
    """Imports of backmap by plugins that do not go through ``backmap.api``."""
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            for line, name in _imported(path):
                if name.split(".")[0] == ROOT_PACKAGE and name != API and not name.startswith(API + "."):
                    found.append(f"{_display(path)}:{line}: plugin code imports {name} (use {API})")
    return found


def core_api_violations(graph: ImportGraph) -> list[str]:
    return [f"{imp.where()}: core module {imp.source} imports {imp.target} (the plugins' surface)"
            for imp in graph.imports
            if (imp.target == API or imp.target.startswith(API + ".")) and not imp.source.startswith(API)]


APP = "backmap.app"
#: the faces above the use-case layer: they may import it
ABOVE_APP = ("backmap.app", "backmap.api", "backmap.cli")


def app_layer_violations(graph: ImportGraph) -> list[str]:
    """Imports of the use-case layer from below it (function-local imports included)."""
    return [f"{imp.where()}: {imp.source} imports the use-case layer {imp.target} (it lies above)"
            for imp in graph.imports
            if (imp.target == APP or imp.target.startswith(APP + ".")) and not imp.package_side
            and not any(imp.source == a or imp.source.startswith(a + ".") or imp.source.startswith(a + "_")
                        for a in ABOVE_APP)]


def plugin_graphs(plugins_dir: Path = ROOT / "plugins") -> list[ImportGraph]:
    """The import graph of each plugin package (and of each example plugin under docs/examples)."""
    dirs = [p.parent for p in sorted(plugins_dir.glob("*/__init__.py"))]
    dirs += [p.parent for p in sorted(EXAMPLES.glob("*/*/__init__.py")) if p.parent.name != "tests"]
    return [build(d) for d in dirs]


def plugin_circle_violations(plugins_dir: Path = ROOT / "plugins") -> list[str]:
    return [v for g in plugin_graphs(plugins_dir) for v in circle_violations(g)]


def violations(graph: ImportGraph, plugins: frozenset[str]) -> list[str]:
    return (circle_violations(graph) + data_model_violations(graph)
            + plugin_violations(graph, plugins) + root_violations(graph) + core_api_violations(graph)
            + app_layer_violations(graph))


def main() -> int:
    graph = build()
    found = circles(graph)
    print(f"{len(graph.modules)} modules, {graph.graph().number_of_edges()} imports between them")
    print(f"circles: {len(found)}" + "".join(f"\n  {describe(graph, c)}" for c in found))
    problems = (violations(graph, plugin_packages()) + cross_plugin_violations() + api_violations()
                + plugin_circle_violations())
    print(f"violations: {len(problems)}" + "".join(f"\n  {p}" for p in problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
