"""Recipe validation: messages name the file and the key path; paths resolve beside the recipe."""
import textwrap
from pathlib import Path

import pytest

from backmap.errors import BackmapError
from backmap.engine.recipe import load_recipe

from conftest import HEXANE

BASE = f"""
name: t
system:
  topology: {HEXANE / 'topol.top'}
  mapping: {HEXANE / 'hexane.xml'}
data:
  trajectory: {HEXANE / 'traj.xtc'}
"""


def _recipe(tmp_path: Path, body: str, base: str = BASE) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(base) + textwrap.dedent(body))
    return path


def _error(path: Path, *overrides: str) -> str:
    with pytest.raises(BackmapError) as err:
        load_recipe(path, list(overrides))
    return str(err.value)


def test_valid_recipe_resolves_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.xml").write_text((HEXANE / "hexane.xml").read_text())
    path = _recipe(tmp_path, """
        steps:
          - prepare: {}
          - train: {epochs: 3}
        """, base=f"""
        name: t
        workdir: out/here
        system:
          topology: {HEXANE / 'topol.top'}
          mapping: sub/m.xml
        """)
    recipe, steps = load_recipe(path)
    assert recipe.system.mapping == tmp_path / "sub" / "m.xml"
    assert recipe.default_workdir() == tmp_path / "out" / "here"
    assert [s.name for s in steps] == ["prepare", "train"] and steps[1].params.epochs == 3


def test_wrong_type_names_key_path(tmp_path):
    path = _recipe(tmp_path, """
        steps:
          - prepare: {}
          - train: {epochs: ten}
        """)
    assert _error(path) == "recipe.yaml: steps[1].train.epochs: expected int, got 'ten'"


def test_typo_suggests_the_key(tmp_path):
    path = _recipe(tmp_path, """
        sead: 3
        steps: [{prepare: {}}]
        """)
    assert _error(path) == "recipe.yaml: sead: unknown key (did you mean 'seed'?)"


def test_typo_in_step_params(tmp_path):
    path = _recipe(tmp_path, "steps: [{prepare: {cahce: false}}]\n")
    assert _error(path) == "recipe.yaml: steps[0].prepare.cahce: unknown key (did you mean 'cache'?)"


def test_nested_typo_and_missing_key(tmp_path):
    path = _recipe(tmp_path, """
        data:
          trajectory: x.xtc
          split: {test_fractoin: 0.1}
        steps: [{prepare: {}}]
        """, base=f"""
        name: t
        system:
          mapping: {HEXANE / 'hexane.xml'}
        """)
    msg = _error(path).splitlines()
    assert "recipe.yaml: system.topology: required key is missing" in msg
    assert any(m.startswith("recipe.yaml: data.trajectory: file not found: ") and m.endswith("x.xtc") for m in msg)
    assert "recipe.yaml: data.split.test_fractoin: unknown key (did you mean 'test_fraction'?)" in msg


def test_unknown_step_and_plugin(tmp_path):
    path = _recipe(tmp_path, """
        generator: {plugin: voxel_ganz}
        steps: [{prepair: {}}]
        """)
    msg = _error(path).splitlines()
    assert msg[0].startswith("recipe.yaml: generator.plugin: unknown generator plugin 'voxel_ganz'")
    assert msg[1].startswith("recipe.yaml: steps[0]: unknown step plugin 'prepair' (did you mean 'prepare'?)")


def test_out_of_range_and_literal(tmp_path):
    path = _recipe(tmp_path, """
        data:
          trajectory: {traj}
          split: {{test_fraction: 1.5, mode: middle}}
        steps: [{{prepare: {{}}}}]
        """.format(traj=HEXANE / "traj.xtc"), base=f"""
        name: t
        system:
          topology: {HEXANE / 'topol.top'}
          mapping: {HEXANE / 'hexane.xml'}
        """)
    msg = _error(path).splitlines()
    assert "recipe.yaml: data.split.test_fraction: input should be less than 1, got 1.5" in msg[0] or \
        msg[0].startswith("recipe.yaml: data.split.test_fraction: input should be less than 1")
    assert msg[1].startswith("recipe.yaml: data.split.mode: input should be 'tail' or 'random'")


def test_yaml_syntax_error_has_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: t\nsteps: [prepare\n  bad: : :\n")
    assert _error(path).startswith("recipe.yaml:")
    assert "not valid YAML" in _error(path)


def test_overrides(tmp_path):
    path = _recipe(tmp_path, "steps: [{prepare: {}}, {train: {epochs: 1}}]\n")
    recipe, steps = load_recipe(path, ["steps.train.epochs=5", "seed=11"])
    assert steps[1].params.epochs == 5 and recipe.seed == 11
    assert _error(path, "steps.train.epochs=x") == "recipe.yaml: steps[1].train.epochs: expected int, got 'x'"


def test_overrides_index_lists(tmp_path):
    path = _recipe(tmp_path, "refiners: [{plugin: langevin, params: {temperature: 300}}]\n"
                             "steps: [{prepare: {}}]\n")
    recipe, _ = load_recipe(path, ["refiners.0.params.temperature=350"])
    assert recipe.refiners[0].params["temperature"] == 350
    assert "not an index of a list of 1" in _error(path, "refiners.1.params.temperature=350")
    assert "not an index" in _error(path, "refiners.x.params=1")


def test_check_command(tmp_path, cli):
    good = _recipe(tmp_path, "steps: [{prepare: {}}]\n")
    code, out, _ = cli("check", good)
    assert code == 0 and "ok" in out
    bad = _recipe(tmp_path, "steps: [{prepare: {cache: maybe}}]\n")
    code, out, err = cli("check", bad)
    assert code == 2
    assert err.strip() == "error: recipe.yaml: steps[0].prepare.cache: expected bool, got 'maybe'"
    assert "Traceback" not in err


def test_workdir_paths_name_files_of_earlier_steps(tmp_path):
    """``workdir:PATH`` passes the recipe check although the file does not exist yet, and resolves
    against the run's work directory when the step runs (an error if the earlier step did not write it)."""
    from pydantic import TypeAdapter

    from backmap.errors import BackmapError
    from backmap.engine.recipe import StepInput, resolve_step_input

    adapter = TypeAdapter(StepInput)
    value = adapter.validate_python("workdir:refine/aa.xtc", context={"base_dir": str(tmp_path)})
    with pytest.raises(BackmapError, match="does not exist"):
        resolve_step_input(value, tmp_path / "run", "steps.evaluate")
    (tmp_path / "run" / "refine").mkdir(parents=True)
    (tmp_path / "run" / "refine" / "aa.xtc").write_bytes(b"x")
    assert resolve_step_input(value, tmp_path / "run") == tmp_path / "run" / "refine" / "aa.xtc"
    with pytest.raises(Exception, match="file not found"):
        adapter.validate_python("refine/aa.xtc", context={"base_dir": str(tmp_path)})
