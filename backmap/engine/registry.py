"""The plugin manager: loads plugins from the ``backmap.plugins`` entry points (built-ins
included) and indexes their classes by kind and name."""
from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from importlib import metadata
from typing import Iterable, Iterator

import pluggy

from backmap.engine import hooks
from backmap.errors import BackmapError

ENTRY_POINT_GROUP = "backmap.plugins"

@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin class and where it came from."""

    name: str
    kind: str
    cls: type
    package: str
    version: str
    module: str

    @property
    def origin(self) -> str:
        return f"{self.package} {self.version} ({self.module})"


class Registry:
    """All plugin classes by kind and name."""

    def __init__(self, infos: Iterable[PluginInfo]):
        self._by_kind: dict[str, dict[str, PluginInfo]] = {k: {} for k in hooks.KIND_HOOKS}
        for info in infos:
            table = self._by_kind[info.kind]
            if info.name in table:
                other = table[info.name]
                raise BackmapError(
                    f"plugin name clash: {info.kind} {info.name!r} is provided by both "
                    f"{other.origin} and {info.origin}; uninstall one of the packages"
                )
            table[info.name] = info

    def __iter__(self) -> Iterator[PluginInfo]:
        for table in self._by_kind.values():
            yield from table.values()

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def get(self, kind: str, name: str, where: str | None = None) -> PluginInfo:
        """The plugin ``name`` of ``kind``; a clear error (with suggestions) if there is none."""
        table = self._by_kind[kind]
        if name in table:
            return table[name]
        known = sorted(table)
        hint = difflib.get_close_matches(name, known, n=1)
        msg = f"unknown {kind} plugin {name!r}"
        msg += f" (did you mean {hint[0]!r}?)" if hint else ""
        msg += f"; available: {', '.join(known) if known else 'none installed'}"
        raise BackmapError(msg, source=where)

    def readers(self, what: str) -> list[PluginInfo]:
        return [i for i in self._by_kind["reader"].values() if i.cls.what == what]


def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hooks.PROJECT)
    pm.add_hookspecs(hooks)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def _origin(pm: pluggy.PluginManager, obj: object) -> tuple[str, str]:
    for plug, dist in pm.list_plugin_distinfo():
        if plug is obj:
            return dist.project_name, dist.version
    module = getattr(obj, "__name__", type(obj).__name__)
    top = module.split(".")[0]
    try:
        return top, metadata.version(top)
    except metadata.PackageNotFoundError:
        return top, "unversioned"


def collect(pm: pluggy.PluginManager) -> Registry:
    """Ask every registered plugin for its classes, remembering who provided which."""
    infos: list[PluginInfo] = []
    for kind, hook_name in hooks.KIND_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            package, version = _origin(pm, impl.plugin)
            module = getattr(impl.plugin, "__name__", impl.plugin_name)
            for cls in impl.function() or []:
                # every base class in backmap.engine.plugin declares its kind: checked by that
                # attribute, so that the registry does not import the classes whose hooks it serves
                if not (isinstance(cls, type) and getattr(cls, "kind", None) == kind) or not getattr(cls, "name", None):
                    raise BackmapError(
                        f"{hook_name}() returned {cls!r}, which is not a named {kind.capitalize()} subclass",
                        source=f"plugin package {package} ({module})",
                    )
                infos.append(PluginInfo(cls.name, kind, cls, package, version, module))
    return Registry(infos)


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of all installed plugins (built once per process)."""
    return collect(plugin_manager())
