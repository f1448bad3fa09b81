"""Recipe inputs checked before anything runs: ``backmap check`` and ``backmap run`` refuse what a
step would refuse at once, with one line per problem naming the recipe and the key, and write
nothing; messages stay on one line (overrides, union keys, truncated files); CG beads out of the
mapping's order are refused."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conftest import HEXANE

BASE = f"""
name: t
system:
  topology: {HEXANE / 'topol.top'}
  mapping: {HEXANE / 'hexane.xml'}
data:
  trajectory: {HEXANE / 'traj.xtc'}
steps: [{{prepare: {{}}}}]
"""


@pytest.fixture(scope="module")
def cg_files(tmp_path_factory) -> dict[str, Path]:
    """The hexane CG system as written by ``backmap map``: a 2-frame .xtc, a 1-frame .gro, and the
    .gro with its first two beads (A1, B of molecule 1) swapped."""
    import numpy as np

    from backmap.engine.loaders import load_mapping, load_topology
    from backmap.system.projection import map_trajectory

    tmp = tmp_path_factory.mktemp("cg")
    topo = load_topology(HEXANE / "topol.top")
    cg_top = load_mapping(HEXANE / "hexane.xml", topo).cg_topology(topo)
    files = {"xtc": tmp / "cg.xtc", "gro": tmp / "cg.gro", "swapped": tmp / "swapped.gro"}
    map_trajectory(cg_top, HEXANE / "traj.xtc", files["xtc"], np.arange(2))
    map_trajectory(cg_top, HEXANE / "traj.xtc", files["gro"], np.arange(1))
    lines = files["gro"].read_text().splitlines(keepends=True)
    lines[2], lines[3] = lines[3], lines[2]
    files["swapped"].write_text("".join(lines))
    return files


def _recipe(tmp_path: Path, body: str = "") -> Path:
    """A valid hexane recipe (work directory ``tmp_path/work``) with ``body`` appended; later keys
    of the same name replace earlier ones."""
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(BASE) + f"workdir: {tmp_path / 'work'}\n" + textwrap.dedent(body))
    return path


def _errors(result: tuple[int, str, str], tmp_path: Path) -> list[str]:
    """The error lines of a refused command, after checking exit code 2, no traceback, nothing written."""
    code, _, err = result
    assert code == 2, err
    assert "Traceback" not in err
    assert not (tmp_path / "work").exists()
    lines = err.strip().splitlines()
    assert all(line.startswith("error: recipe.yaml: ") for line in lines), lines
    return lines


def _one(result, tmp_path: Path, key: str) -> str:
    lines = _errors(result, tmp_path)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: recipe.yaml: {key}: "), lines[0]
    return lines[0]


# --------------------------------------------------------------------------- item 6: check = run's checks

def test_malformed_mapping_xml(cli, tmp_path):
    """6. `backmap check` says "ok" for inputs that `run` rejects at once (malformed mapping XML)."""
    bad = tmp_path / "bad.xml"
    bad.write_text("<cg_molecule><name>HEX</name>")
    line = _one(cli("check", _recipe(tmp_path), f"system.mapping={bad}"), tmp_path, "system.mapping")
    assert f"{bad}: not valid XML" in line


def test_mapping_atom_that_does_not_exist(cli, tmp_path):
    """6. `backmap check` says "ok" for inputs that `run` rejects at once (absent atoms)."""
    bad = tmp_path / "m.xml"
    bad.write_text((HEXANE / "hexane.xml").read_text().replace("6:CHR:H3", "6:CHR:H7"))
    line = _one(cli("check", _recipe(tmp_path), f"system.mapping={bad}"), tmp_path, "system.mapping")
    assert "bead A2: atom 6:CHR:H7 is not in molecule type Protein" in line


def test_xml_given_as_topology(cli, tmp_path):
    """6. `backmap check` says "ok" for inputs that `run` rejects at once (an `.xml` given as topology)."""
    line = _one(cli("check", _recipe(tmp_path), f"system.topology={HEXANE / 'hexane.xml'}"), tmp_path,
                "system.topology")
    assert "no topology reader for '.xml' files" in line


def test_empty_trajectory(cli, tmp_path):
    """6. `backmap check` says "ok" for inputs that `run` rejects at once (an empty trajectory)."""
    empty = tmp_path / "empty.xtc"
    empty.write_bytes(b"")
    line = _one(cli("check", _recipe(tmp_path), f"data.trajectory={empty}"), tmp_path, "data.trajectory")
    assert line.endswith(f"{empty}: the trajectory file is empty")


def test_trajectory_of_another_system(cli, tmp_path, cg_files):
    """6. `backmap check` says "ok" for inputs that `run` rejects at once (a mismatched trajectory:
    the CG trajectory given as AA)."""
    line = _one(cli("check", _recipe(tmp_path), f"data.trajectory={cg_files['xtc']}"), tmp_path, "data.trajectory")
    assert "600 atoms in the trajectory but 4000 in the topology topol.top" in line


def test_every_problem_is_reported(cli, tmp_path, cg_files):
    """6. Report every problem found (several lines allowed, each `error: file: key: message`)."""
    bad = tmp_path / "bad.xml"
    bad.write_text("<cg_molecule>")
    recipe = _recipe(tmp_path, f"""
        steps:
          - prepare: {{}}
          - backmap: {{cg: {cg_files['xtc']}, frames: "5"}}
          - evaluate: {{reference: {HEXANE / 'traj.xtc'}, candidates: {{cg: {cg_files['xtc']}}}}}
          - refine: {{aa: {cg_files['xtc']}, cg: workdir:backmap/aa_cg.trr}}
        """)
    lines = _errors(cli("check", recipe, f"system.mapping={bad}", "data.frames=0,30"), tmp_path)
    keys = [line.split(": ")[2] for line in lines]
    assert keys == ["system.mapping", "data.frames", "steps[1].backmap.frames", "steps[2].evaluate.candidates.cg",
                    "steps[3].refine.aa"]
    assert "frame 30 out of range (the trajectory has 21)" in lines[1]
    assert "frame 5 out of range (the trajectory has 2)" in lines[2]
    assert "600 atoms in the file but 4000 atoms in the topology" in lines[3]


def test_step_inputs_are_checked_against_their_system(cli, tmp_path, cg_files):
    """6. each step's input files (backmap `cg`, evaluate `reference`/`candidates`, refine `aa`/`cg`)
    have the atom count of the AA or CG system, and their frames exist."""
    recipe = _recipe(tmp_path, f"""
        steps:
          - backmap: {{cg: {HEXANE / 'traj.xtc'}}}
          - evaluate: {{reference: {cg_files['xtc']}, candidates: [workdir:backmap/aa.xtc]}}
          - refine: {{aa: {HEXANE / 'traj.xtc'}, cg: {cg_files['xtc']}, frames: "0,2"}}
        """)
    lines = _errors(cli("check", recipe), tmp_path)
    assert len(lines) == 3, lines
    assert lines[0].startswith("error: recipe.yaml: steps[0].backmap.cg: ")
    assert "4000 atoms in the file but 600 beads in the CG system of the mapping" in lines[0]
    assert lines[1].startswith("error: recipe.yaml: steps[1].evaluate.reference: ")
    assert lines[2].startswith("error: recipe.yaml: steps[2].refine.frames: ")
    assert "frame 2 out of range (the trajectory has 2)" in lines[2]


def test_run_checks_only_the_steps_it_runs(cli, tmp_path, cg_files):
    """6. `backmap run --steps NAME` checks the steps it runs, under their index in the recipe."""
    empty = tmp_path / "empty.xtc"
    empty.write_bytes(b"")
    recipe = _recipe(tmp_path, f"""
        steps:
          - prepare: {{}}
          - backmap: {{cg: {cg_files['gro']}, stereo_reference: {HEXANE / 'conf.gro'}, frames: "0"}}
          - refine: {{aa: {HEXANE / 'traj.xtc'}, cg: {cg_files['xtc']}, frames: "0,2"}}
        """)
    line = _one(cli("run", recipe, "--steps", "refine", f"data.trajectory={empty}"), tmp_path, "steps[2].refine.frames")
    assert "frame 2 out of range" in line
    code, _, err = cli("check", recipe, "steps.refine.frames=0:2")
    assert code == 0, err


def test_run_checks_before_writing(cli, tmp_path):
    """6. `backmap run` should run the same checks before its first step (so nothing is written
    when the recipe is broken)."""
    empty = tmp_path / "empty.xtc"
    empty.write_bytes(b"")
    _one(cli("run", _recipe(tmp_path), f"data.trajectory={empty}"), tmp_path, "data.trajectory")


def test_valid_recipe_still_passes(cli, tmp_path, cg_files):
    code, out, err = cli("check", _recipe(tmp_path, f"""
        steps:
          - prepare: {{}}
          - backmap: {{cg: {cg_files['gro']}}}
          - evaluate: {{reference: {HEXANE / 'traj.trr'}, candidates: {{a: output:backmap.aa}}}}
        """))
    assert code == 0, err
    assert "ok" in out and not (tmp_path / "work").exists()


# --------------------------------------------------------------------------- item 9: silent acceptance

def test_test_frames_beyond_the_trajectory(cli, tmp_path):
    """9. `split.test_frames: [50]` beyond the trajectory is accepted and the backmap step fails later."""
    recipe = _recipe(tmp_path)
    line = _one(cli("check", recipe, "data.split.test_frames=[3, 50]"), tmp_path, "data.split.test_frames")
    assert line.endswith("frame 50 does not exist (the trajectory has 21 frames)")
    _one(cli("run", recipe, "data.split.test_frames=[50]"), tmp_path, "data.split.test_frames")
    line = _one(cli("check", recipe, "data.split.test_frames=[3]", "data.frames=4:8"), tmp_path,
                "data.split.test_frames")
    assert "frame 3 is not among the selected frames" in line


def test_cg_beads_out_of_mapping_order_in_a_recipe(cli, tmp_path, cg_files):
    """9. CG beads in an order that contradicts the mapping (the `.gro` bead names are there to
    check) backmap with atoms 0.47 nm off."""
    recipe = _recipe(tmp_path, f"steps: [{{backmap: {{cg: {cg_files['swapped']}}}}}]\n")
    line = _one(cli("check", recipe), tmp_path, "steps[0].backmap.cg")
    assert "bead 0 is named 'B' but the mapping expects 'A1' there" in line


def test_cg_beads_out_of_mapping_order_in_apply(cli, tmp_path, cg_files):
    """9. Bead order: `backmap apply` refuses a CG file whose names contradict the mapping, naming
    the first differing bead (index, expected, found), before writing anything."""
    model = Path(__file__).resolve().parent.parent / "models" / "sps-voxel-gan"
    code, _, err = cli("apply", "--model", model, "--topology", HEXANE / "topol.top", "--mapping",
                       HEXANE / "hexane.xml", "--cg", cg_files["swapped"], "--out", tmp_path / "aa.gro")
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (f"error: {cg_files['swapped']}: bead 0 is named 'B' but the mapping expects 'A1' "
                           "there (2 beads differ): the beads are not in the mapping's order")
    assert list(tmp_path.iterdir()) == []


def test_check_bead_names_passes_other_formats_and_the_right_order(cg_files):
    from backmap.engine.checks import check_bead_names
    from backmap.engine.loaders import load_mapping, load_topology

    topo = load_topology(HEXANE / "topol.top")
    cg_top = load_mapping(HEXANE / "hexane.xml", topo).cg_topology(topo)
    check_bead_names(cg_files["gro"], cg_top)
    check_bead_names(cg_files["xtc"], cg_top)  # no names to compare


# --------------------------------------------------------------------------- item 8: one-line messages

def test_missing_mapping_path_names_no_pydantic_internals(cli, tmp_path):
    """8. a missing `system.mapping` path prints pydantic internals (`function-after[_must_exist(), …`)."""
    line = _one(cli("check", _recipe(tmp_path), "system.mapping=nope.xml"), tmp_path, "system.mapping")
    assert line == f"error: recipe.yaml: system.mapping: file not found: {tmp_path / 'nope.xml'}"
    _one(cli("check", _recipe(tmp_path), "system.mapping=[nope.xml]"), tmp_path, "system.mapping[0]")
    line = _one(cli("check", _recipe(tmp_path), "system.mapping=3"), tmp_path, "system.mapping")
    assert line.endswith("expected path or list, got 3")


def test_yaml_error_in_an_override(cli, tmp_path):
    """8. override `data.frames=[0,` gives a `yaml.parser.ParserError` traceback."""
    line = _one(cli("check", _recipe(tmp_path), "data.frames=[0,"), tmp_path, "override data.frames=[0,")
    assert "not a valid YAML value" in line


def test_frame_range_is_not_base_60(tmp_path):
    """8. `data.frames=1:30` is read by YAML 1.1 as base-60 and reported as `expected string, got 90`."""
    from backmap.engine.recipe import load_recipe

    path = _recipe(tmp_path)
    path.write_text(path.read_text().replace("data:\n", "data:\n  frames: 1:20\n"))  # in the file, too
    recipe, _ = load_recipe(path, ["seed=3"])
    assert recipe.data.frames == "1:20"
    recipe, _ = load_recipe(path, ["data.frames=1:30", "data.skip_frames=[2]"])
    assert recipe.data.frames == "1:30" and recipe.data.skip_frames == [2]


def test_truncated_gro(cli, tmp_path):
    """8. a truncated `.gro` gives `cannot access local variable 'unitcell'`."""
    truncated = tmp_path / "conf.gro"
    truncated.write_text("".join((HEXANE / "conf.gro").read_text().splitlines(keepends=True)[:4002]))
    line = _one(cli("check", _recipe(tmp_path), f"system.topology={truncated}"), tmp_path, "system.topology")
    assert line.endswith("the file ends after 4000 of the 4000 atoms its second line announces, before the box "
                         "line (truncated?)")
    line = _one(cli("check", _recipe(tmp_path), f"data.trajectory={truncated}"), tmp_path, "data.trajectory")
    assert "unitcell" not in line and "truncated?" in line
