"""The plugin system: built-ins through entry points, name clashes, a third-party package."""
import textwrap
import types

import pluggy
import pytest

from backmap import BackmapError, Step, hookimpl
from backmap.engine import hooks
from backmap.engine.registry import collect, default_registry

from conftest import HEXANE


def test_builtins_come_from_entry_points():
    reg = default_registry()
    prepare = reg.get("step", "prepare")
    assert (prepare.package, prepare.module) == ("backmap", "backmap_steps")
    assert {i.name for i in reg.readers("mapping")} == {"votca_xml", "dbm_map"}


def test_plugins_command_lists_table(cli):
    code, out, _ = cli("plugins")
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert ["step", "prepare", "backmap", "0.1.0", "backmap_steps"] in [r[:5] for r in rows]
    assert ["reader", "votca_xml", "backmap", "0.1.0", "backmap_formats"] in [r[:5] for r in rows]


def _module(name, *classes):
    mod = types.ModuleType(name)

    @hookimpl
    def backmap_steps():
        return list(classes)

    mod.backmap_steps = backmap_steps
    return mod


def test_name_clash_names_both_packages():
    class A(Step):
        name = "prepare"

    pm = pluggy.PluginManager(hooks.PROJECT)
    pm.add_hookspecs(hooks)
    pm.load_setuptools_entrypoints("backmap.plugins")
    pm.register(_module("my_pkg", A))
    with pytest.raises(BackmapError) as err:
        collect(pm)
    msg = str(err.value)
    assert "step 'prepare' is provided by both backmap 0.1.0 (backmap_steps) and my_pkg" in msg


def test_hook_returning_non_plugin_is_reported():
    pm = pluggy.PluginManager(hooks.PROJECT)
    pm.add_hookspecs(hooks)
    pm.register(_module("broken_pkg", object))
    with pytest.raises(BackmapError, match="broken_pkg.*not a named Step subclass"):
        collect(pm)


# The example third-party package, installed into a fresh virtual environment, trains, backmaps and
# is evaluated in tests/test_example_plugin.py.


def test_without_the_package_the_plugin_is_unknown(tmp_path, cli):
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: toy
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        generator: {{plugin: toy_mean_offset}}
        steps: [{{prepare: {{}}}}]
        """))
    code, _, err = cli("check", recipe)
    assert code == 2 and "unknown generator plugin 'toy_mean_offset'" in err


def test_run_context_has_every_member_of_the_step_context_protocol():
    """Steps are typed against backmap.api.StepContext; the core's RunContext must offer all of it."""
    from backmap.api import StepContext
    from backmap.engine.pipeline import RunContext

    members = {n for n in vars(StepContext) if not n.startswith("_")} | set(StepContext.__annotations__)
    assert {"recipe", "workdir", "path", "where", "cg_topology", "pairs", "outputs"} <= members
    for name in members:
        assert hasattr(RunContext, name) or name in RunContext.__init__.__code__.co_names, name


def test_every_hookspec_names_the_base_class_of_its_kind():
    import backmap.api as api
    from backmap.engine import hooks

    for kind, hook in hooks.KIND_HOOKS.items():
        annotation = getattr(hooks, hook).__annotations__["return"]
        base = annotation.removeprefix("list[type[").removesuffix("]]")
        assert getattr(api, base).kind == kind, (hook, annotation)
