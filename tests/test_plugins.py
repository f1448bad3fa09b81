"""The plugin system: built-ins through entry points, name clashes, a third-party package."""
import os
import subprocess
import sys
import textwrap
import types

import pluggy
import pytest

from backmap import BackmapError, Step, hookimpl
from backmap.engine import hooks
from backmap.engine.registry import collect, default_registry

from conftest import HEXANE, REPO


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


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory):
    """The example third-party package, pip-installed into its own directory."""
    import shutil

    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "toy"  # a copy, so that the build leaves the repo clean
    shutil.copytree(REPO / "docs" / "examples" / "backmap-toy-generator", source)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True)
    return target


def _backmap(site, *args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(site), BACKMAP_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "backmap.cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True)


def test_external_plugin_end_to_end(toy_site, tmp_path):
    listed = _backmap(toy_site, "plugins", "--kind", "generator")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split()[:5] for line in listed.stdout.splitlines()]
    assert ["generator", "toy_mean_offset", "backmap-toy-generator", "0.2.0", "backmap_toy"] in rows
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: toy
        workdir: work
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:6'}}
        generator: {{plugin: toy_mean_offset, params: {{noise: 0.01}}}}
        steps: [{{prepare: {{}}}}, {{train: {{}}}}]
        """))
    ran = _backmap(toy_site, "run", recipe)
    assert ran.returncode == 0, ran.stderr
    import pickle
    ckpt = pickle.loads((tmp_path / "work" / "model" / "generator.pkl").read_bytes())
    assert ckpt["plugin"] == "toy_mean_offset" and ckpt["params"] == {"noise": 0.01}
    # the plugin fitted the training frames the core prepared: mean offset of each atom from its home bead
    import json
    import numpy as np
    from backmap.system.pairs import PairSet
    current = json.loads((tmp_path / "work" / "pairs" / "current.json").read_text())
    pairs = PairSet.load(tmp_path / "work" / "pairs" / current["file"])
    train = ~np.isin(pairs.frames, current["test_frames"])
    home = [0] * 7 + [1] * 6 + [2] * 7
    aa = pairs.aa[train].reshape(train.sum(), -1, 20, 3)
    cg = pairs.cg[train].reshape(train.sum(), -1, 3, 3)[:, :, home]
    np.testing.assert_allclose(ckpt["state"]["Protein"], (aa - cg).mean(axis=(0, 1)), atol=1e-5)
    run = (tmp_path / "work" / "run.json").read_text()
    assert "backmap-toy-generator" in run
    # its parameters are validated by its own model
    bad = recipe.read_text().replace("noise: 0.01", "noise: -1")
    recipe.write_text(bad)
    checked = _backmap(toy_site, "check", recipe)
    assert checked.returncode == 2
    assert checked.stderr.strip().startswith("error: toy.yaml: generator.params.noise: input should be greater than")


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
