"""Bad input on the command line: one line naming the file or key, exit code 2, no traceback,
nothing half-written."""


from conftest import HEXANE, TRICLINIC


def _map(cli, tmp_path, **kw):
    args = {"topology": HEXANE / "topol.tpr", "traj": HEXANE / "traj.xtc", "mapping": HEXANE / "hexane.xml",
            "out": tmp_path / "cg.xtc"} | kw
    flat = [x for k, v in args.items() for x in (f"--{k}", v)]
    return cli("map", *flat)


def _one_line_error(code, err):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_missing_file(cli, tmp_path):
    line = _one_line_error(*_map(cli, tmp_path, traj=tmp_path / "nope.xtc")[::2])
    assert line == f"error: {tmp_path / 'nope.xtc'}: trajectory file not found"
    assert not (tmp_path / "cg.xtc").exists()


def test_atom_count_mismatch_leaves_nothing(cli, tmp_path):
    line = _one_line_error(*_map(cli, tmp_path, traj=TRICLINIC / "traj.xtc")[::2])
    assert "traj.xtc:" in line and "atoms in the trajectory but 4000 in the topology topol.tpr" in line
    assert list(tmp_path.iterdir()) == []  # no output, no temp file


def test_mapping_topology_mismatch(cli, tmp_path):
    bad = tmp_path / "m.xml"
    bad.write_text((HEXANE / "hexane.xml").read_text().replace("6:CHR:H3", "6:CHR:H7"))
    line = _one_line_error(*_map(cli, tmp_path, mapping=bad)[::2])
    assert line.startswith(f"error: {bad}: molecule HEX, bead A2: atom 6:CHR:H7 is not in molecule type Protein")


def test_empty_trajectory(cli, tmp_path):
    empty = tmp_path / "empty.xtc"
    empty.write_bytes(b"")
    line = _one_line_error(*_map(cli, tmp_path, traj=empty)[::2])
    assert line.startswith(f"error: {empty}: ")


def test_unknown_output_format(cli, tmp_path):
    line = _one_line_error(*_map(cli, tmp_path, out=tmp_path / "cg.dcd")[::2])
    assert "cannot write '.dcd' files" in line


def test_unknown_plugin_in_recipe_run(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nsystem: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}\n"
                      "steps: [{evalute: {}}]\n")
    line = _one_line_error(*cli("run", recipe)[::2])
    assert line.startswith("error: r.yaml: steps[0]: unknown step plugin 'evalute' (did you mean 'evaluate'?)")


def test_debug_raises_the_exception(tmp_path):
    from click.testing import CliRunner

    from backmap.cli import cli as app
    from backmap.errors import BackmapError

    result = CliRunner().invoke(app, ["--debug", "map", "--topology", str(HEXANE / "topol.tpr"), "--traj",
                                      str(tmp_path / "x.xtc"), "--mapping", str(HEXANE / "hexane.xml"),
                                      "--out", str(tmp_path / "o.xtc")])
    assert isinstance(result.exception, BackmapError)
