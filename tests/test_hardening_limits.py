"""Values out of range and values that would exhaust the machine: one line naming the option, the
value and the limit, refused before any work (docs/errors.md)."""
from __future__ import annotations

from pathlib import Path

import pytest

from backmap.sampling.backmapper import available_memory

from conftest import HEXANE, one_line_error, run_cli

APPLY = ["apply", "--model", "nowhere", "--cg", "nothing.gro", "--out", "aa.xtc"]


@pytest.mark.parametrize("option, value, message", [
    ("--candidates", "0", "--candidates 0: must be a number ≥ 1"),
    ("--gibbs", "-1", "--gibbs -1: must be a number ≥ 0"),
    ("--polish", "-5", "--polish -5: must be a number ≥ 0"),
    ("--cg-restraint", "nan", "--cg-restraint nan: must be a number ≥ 0"),
    ("--workers", "0", "--workers 0: must be a number ≥ 1"),
])
def test_an_out_of_range_option_names_itself_its_value_and_its_limit(tmp_path, monkeypatch, option, value, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(*APPLY, option, value)
    assert one_line_error(code, err).startswith(f"error: {message}")
    assert "pydantic" not in err and list(tmp_path.iterdir()) == []


def test_more_local_workers_than_cores_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(*APPLY, "--workers", "1000")
    line = one_line_error(code, err)
    assert "1000 local workers" in line and "cores" in line and "scheduler" in line


@pytest.mark.skipif(available_memory() is None, reason="no /proc/meminfo: the memory available is unknown")
def test_candidates_that_cannot_fit_in_memory_are_refused_before_sampling(template_model, tmp_path):
    out = tmp_path / "aa.xtc"
    code, _, err = run_cli("apply", "--model", template_model / "model", "--cg", template_model / "backmap" / "aa_cg.trr",
                           "--candidates", "1000000000", "--out", out)
    line = one_line_error(code, err)
    assert "1000000000 candidates" in line and "GiB" in line and "use at most" in line
    assert list(tmp_path.iterdir()) == []


def _bomb(levels: int = 7) -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for k in range(1, levels):
        lines.append(f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]")
    return "\n".join(lines) + "\nname: bomb\n"


@pytest.mark.parametrize("text, message", [
    (_bomb(), "expands to more than 100,000 values"),
    ("name: deep\nx: " + "[" * 3000 + "]" * 3000 + "\n", "nests deeper than 50 levels"),
    ("name: deep\nx: " + "[" * 60 + "]" * 60 + "\n", "nests deeper than 50 levels"),
])
def test_recipes_that_expand_without_bound_are_one_line(tmp_path, text, message):
    """A YAML alias bomb (9⁷ values from 8 lines) and nesting deeper than Python's recursion."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    code, _, err = run_cli("check", recipe)
    assert message in one_line_error(code, err)


def test_a_recipe_with_aliases_of_modest_size_still_loads(tmp_path):
    """Anchors and aliases are YAML the recipes may use: only their blow-up is refused."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: anchors
system: &sys {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:2'}}
steps: [{{map: {{}}}}]
""")
    code, _, err = run_cli("check", recipe)
    assert code == 0, err


@pytest.mark.parametrize("args, message", [
    (["--cutoff", "-1"], "--cutoff -1.0: must be a number > 0"),
    (["--epsilon-rf", "-1"], "--epsilon-rf -1.0: must be a number ≥ 0"),
    (["--epsilon-rf", "0.5"], "GROMACS requires epsilon-rf ≥ epsilon-r"),
])
def test_energy_refuses_what_gromacs_refuses(args, message):
    """Before, `--cutoff -1` silently dropped the LJ column and `--epsilon-rf -1` was used."""
    code, _, err = run_cli("energy", "--topology", HEXANE / "topol.top", "--traj", HEXANE / "conf.gro", *args)
    assert message in one_line_error(code, err)


@pytest.mark.parametrize("spelling", ["cutoff", "Cut_Off", "CUT-OFF"])
def test_the_mdp_reader_takes_every_spelling_gromacs_takes(tmp_path, spelling):
    from backmap.forcefield import NonbondedSettings

    mdp = tmp_path / "md.mdp"
    mdp.write_text(f"vdw_type = {spelling}\ncoulombtype = Reaction_Field\nvdw-modifier = Potential_Shift\n"
                   "epsilon_rf = 0\n")
    settings = NonbondedSettings.from_mdp(mdp)
    assert settings.coulomb == "reaction-field" and settings.epsilon_rf == 0
    mdp.write_text("epsilon-rf = 0.5\n")
    with pytest.raises(Exception, match="GROMACS requires epsilon-rf ≥ epsilon-r"):
        NonbondedSettings.from_mdp(mdp)
