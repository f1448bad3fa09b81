"""Trajectory input in any format MDAnalysis reads: LAMMPS dumps and data files, DCD, … made here
from the project's hexane data (AA → CG with the shipped mapping) and read back against the originals."""
import gzip
import json
import shutil
import warnings

import numpy as np
import pytest
import yaml

from backmap.engine.loaders import load_mapping, load_topology
from backmap.errors import BackmapError
from backmap.system.io import Frame, read_formats, read_frames, trajectory_info, write_lammps_dump
from backmap.system.projection import map_frames

from conftest import HEXANE, TRICLINIC, one_line_error

DECIMALS = 5  # digits after the point (Å) write_lammps_dump prints here


@pytest.fixture(scope="module")
def cg_top():
    topo = load_topology(HEXANE / "topol.top")
    return load_mapping(HEXANE / "hexane.xml", topo).cg_topology(topo)


@pytest.fixture(scope="module")
def cg_frames(cg_top):
    """The hexane AA trajectory mapped to CG in memory: the originals every file is compared to."""
    return list(map_frames(cg_top, HEXANE / "traj.trr"))


def _tolerance(frames, decimals: int = DECIMALS) -> float:
    """nm: half the last printed digit (Å) plus MDAnalysis' float32 rounding of the largest coordinate."""
    biggest = 10.0 * max(np.abs(f.positions).max() for f in frames)
    return (0.5 * 10.0 ** -decimals + 2 * biggest * np.finfo(np.float32).eps) / 10.0


def _assert_same(read, original, atol: float) -> None:
    assert len(read) == len(original)
    for r, o in zip(read, original):
        np.testing.assert_allclose(r.positions, o.positions, rtol=0, atol=atol)
        np.testing.assert_allclose(r.dimensions[:3], o.dimensions[:3], rtol=0, atol=atol)
        np.testing.assert_allclose(r.dimensions[3:], o.dimensions[3:], rtol=0, atol=1e-3)  # degrees


def _dump_text(path, frames, **kwargs) -> list[str]:
    write_lammps_dump(path, frames, **kwargs)
    return path.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("suffix", [".lammpstrj", ".dump", ".lammpsdump", ".lammpstrj.gz"])
def test_lammps_dump_round_trip(tmp_path, cg_top, cg_frames, suffix):
    """CG frames written as a LAMMPS dump (Å, `units real`) come back in nm, atom for atom, with the box."""
    path = tmp_path / "cg.lammpstrj"
    assert write_lammps_dump(path, cg_frames, cg_top.bead_types, decimals=DECIMALS) == len(cg_frames)
    text = path.read_text()
    assert text.startswith("ITEM: TIMESTEP\n0\nITEM: NUMBER OF ATOMS\n600\n"
                           "ITEM: BOX BOUNDS pp pp pp\n0.00000 35.43190\n")
    assert "ITEM: ATOMS id type x y z\n1 1 " in text and "\n2 2 " in text  # bead types A → 1, B → 2
    if suffix.endswith(".gz"):
        (tmp_path / f"cg{suffix}").write_bytes(gzip.compress(path.read_bytes()))
    elif suffix != ".lammpstrj":
        shutil.copy(path, tmp_path / f"cg{suffix}")
    path = tmp_path / f"cg{suffix}"
    assert trajectory_info(path) == (cg_top.n_beads, len(cg_frames))
    back = list(read_frames(path, cg_top.n_beads, expect="CG system of the mapping"))
    _assert_same(back, cg_frames, _tolerance(cg_frames))
    assert [f.time for f in back] == [float(f.index) for f in cg_frames]  # a dump's time is its step
    picked = list(read_frames(path, frames=[3, 7]))
    assert [f.index for f in picked] == [3, 7]
    _assert_same(picked, [cg_frames[3], cg_frames[7]], _tolerance(cg_frames))


def test_lammps_dump_triclinic_box(tmp_path):
    """The triclinic hexane box goes through LAMMPS' bounds and tilt factors and back."""
    topo = load_topology(TRICLINIC / "topol.top")
    cg = load_mapping(HEXANE / "hexane.xml", topo).cg_topology(topo)
    frames = list(map_frames(cg, TRICLINIC / "traj.xtc", frames=[0, 1]))
    assert not np.allclose(frames[0].dimensions[3:], 90.0)
    path = tmp_path / "tric.lammpstrj"
    assert "ITEM: BOX BOUNDS xy xz yz pp pp pp\n" in _dump_text(path, frames)
    _assert_same(list(read_frames(path, cg.n_beads)), frames, _tolerance(frames))


def test_lammps_dump_atom_order_scaled_and_origin(tmp_path, cg_frames):
    """MDAnalysis sorts a dump's atoms by id, unscales xs ys zs, and moves the box to the origin."""
    frame = cg_frames[0]
    lines = _dump_text(tmp_path / "one.dump", [frame])
    head, atoms = lines[:9], lines[9:]
    shuffled = tmp_path / "shuffled.dump"
    shuffled.write_text("".join(head + atoms[::-1]))
    _assert_same(list(read_frames(shuffled)), [frame], _tolerance([frame]))

    length = 10.0 * frame.dimensions[0]  # cubic box, from 0
    rows = [line.split() for line in atoms]
    scaled = tmp_path / "scaled.dump"
    scaled.write_text("".join(head[:-1]) + "ITEM: ATOMS id type xs ys zs\n" + "".join(
        f"{i} {t} " + " ".join(f"{float(v) / length:.9f}" for v in xyz) + "\n" for i, t, *xyz in rows))
    _assert_same(list(read_frames(scaled)), [frame], _tolerance([frame]) + 1e-7)

    shifted = tmp_path / "shifted.dump"  # same numbers, box from -10 Å: positions come out +1 nm
    bounds = f"-10.00000 {length - 10.0:.5f}\n"
    shifted.write_text("".join(head[:5] + [bounds] * 3 + head[8:] + atoms))
    moved = Frame(frame.positions + 1.0, frame.dimensions)
    _assert_same(list(read_frames(shifted)), [moved], _tolerance([moved]))


def test_lammps_dump_forces_in_real_units(tmp_path):
    """Dump forces are read as kcal/mol/Å (`units real`) and returned in kJ/mol/nm."""
    path = tmp_path / "f.lammpstrj"
    path.write_text("ITEM: TIMESTEP\n10\nITEM: NUMBER OF ATOMS\n2\nITEM: BOX BOUNDS pp pp pp\n"
                    + "0 30\n" * 3 + "ITEM: ATOMS id type x y z fx fy fz\n"
                    "2 1 4.0 5.0 6.0 0.0 -2.0 0.5\n1 1 1.0 2.0 3.0 1.0 0.0 0.0\n")
    frame = next(read_frames(path))
    np.testing.assert_allclose(frame.positions, [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], atol=1e-6)
    np.testing.assert_allclose(frame.forces, np.array([[1.0, 0, 0], [0, -2.0, 0.5]]) * 41.84, rtol=1e-6)
    assert frame.time == 10.0


@pytest.mark.parametrize("style", ["atomic", "molecular", "full"])
def test_lammps_data_file(tmp_path, cg_top, cg_frames, style):
    """A LAMMPS data file (one frame, Å) in the styles LAMMPS' write_data names, atoms listed out of order."""
    frame = cg_frames[0]
    types = {t: k + 1 for k, t in enumerate(dict.fromkeys(cg_top.bead_types))}
    length = 10.0 * frame.dimensions[0]
    lines = []
    for i in range(cg_top.n_beads)[::-1]:
        x, y, z = 10.0 * frame.positions[i]
        extra = {"atomic": "", "molecular": f"{cg_top.resids[i]} ", "full": f"{cg_top.resids[i]} "}[style]
        charge = "0.0 " if style == "full" else ""
        lines.append(f"{i + 1} {extra}{types[cg_top.bead_types[i]]} {charge}{x:.5f} {y:.5f} {z:.5f}\n")
    path = tmp_path / "cg.data"
    path.write_text(f"LAMMPS data file\n\n{cg_top.n_beads} atoms\n{len(types)} atom types\n\n"
                    + "".join(f"0.0 {length:.5f} {a}lo {a}hi\n" for a in "xyz")
                    + "\nMasses\n\n" + "".join(f"{k} 43.0\n" for k in types.values())
                    + f"\nAtoms # {style}\n\n" + "".join(lines))
    assert trajectory_info(path) == (cg_top.n_beads, 1)
    _assert_same(list(read_frames(path, cg_top.n_beads)), [frame], _tolerance([frame]))


@pytest.mark.parametrize("suffix", [".dcd", ".nc"])
def test_dcd_and_netcdf_round_trip(tmp_path, cg_top, cg_frames, suffix):
    """DCD and AMBER NetCDF written by MDAnalysis (Å, with the unit cell) read back in nm."""
    import MDAnalysis as mda

    path = tmp_path / f"cg{suffix}"
    u = mda.Universe.empty(cg_top.n_beads, trajectory=True)
    with warnings.catch_warnings(), mda.Writer(str(path), n_atoms=cg_top.n_beads) as w:
        warnings.simplefilter("ignore")  # netCDF4 missing: MDAnalysis writes through scipy, slowly
        for f in cg_frames:
            u.atoms.positions = f.positions * 10.0
            u.dimensions = np.r_[f.dimensions[:3] * 10.0, f.dimensions[3:]]
            w.write(u.atoms)
    assert trajectory_info(path) == (cg_top.n_beads, len(cg_frames))
    _assert_same(list(read_frames(path, cg_top.n_beads)), cg_frames, _tolerance(cg_frames, decimals=9))


def test_unreadable_inputs_name_the_file(tmp_path, cg_top, cg_frames):
    unknown = tmp_path / "cg.foo"
    unknown.write_text("1 2 3\n")
    with pytest.raises(BackmapError,
                       match=r"cg\.foo: cannot read '\.foo' trajectories; MDAnalysis reads .*\.lammpstrj"):
        list(read_frames(unknown))
    assert {".dcd", ".xtc", ".trr", ".gro", ".pdb", ".lammpsdump", ".data", ".nc", ".h5md"} <= set(read_formats())

    empty = tmp_path / "empty.lammpstrj"
    empty.touch()
    with pytest.raises(BackmapError, match=r"empty\.lammpstrj: the trajectory file is empty"):
        trajectory_info(empty)

    fewer = tmp_path / "fewer.lammpstrj"  # one molecule (3 beads) short of the mapping's CG system
    write_lammps_dump(fewer, [Frame(f.positions[:-3], f.dimensions, index=f.index) for f in cg_frames[:2]])
    with pytest.raises(BackmapError, match=r"fewer\.lammpstrj: 597 atoms in the trajectory but 600 in the CG system"):
        next(read_frames(fewer, cg_top.n_beads, expect="CG system of the mapping"))

    lines = _dump_text(tmp_path / "two.lammpstrj", cg_frames[:2])
    cut = tmp_path / "cut.lammpstrj"
    cut.write_text("".join(lines[:100]))  # inside the first frame
    with pytest.raises(BackmapError, match=r"cut\.lammpstrj: cannot read LAMMPSDUMP trajectory: the file ends inside"):
        list(read_frames(cut))
    changed = tmp_path / "changed.lammpstrj"  # the second frame claims one atom fewer
    second = lines[609:]
    changed.write_text("".join(lines[:609] + second[:3] + ["599\n"] + second[4:]))
    with pytest.raises(BackmapError, match=r"changed\.lammpstrj: cannot read LAMMPSDUMP trajectory after frame 0"):
        list(read_frames(changed))

    boxless = tmp_path / "nobox.pdb"
    boxless.write_text("ATOM      1  A1  HEX     1       1.000   2.000   3.000  1.00  0.00\nEND\n")
    with pytest.raises(BackmapError, match=r"nobox\.pdb: frame 0 has no box"):
        list(read_frames(boxless))


def test_cli_map_reads_an_aa_lammps_dump(tmp_path, cli, hexane_topology):
    """`backmap map` of the AA trajectory as a LAMMPS dump gives the CG frames of the .trr."""
    aa = list(read_frames(HEXANE / "traj.trr", frames=[0, 1, 2]))
    dump = tmp_path / "aa.lammpstrj"
    write_lammps_dump(dump, aa, hexane_topology.atom_names)
    outs = []
    for source in (HEXANE / "traj.trr", dump):
        out = tmp_path / f"cg_{source.suffix[1:]}.trr"
        code, stdout, err = cli("map", "--topology", HEXANE / "topol.top", "--traj", source,
                                "--mapping", HEXANE / "hexane.xml", "--out", out, "--frames", "0:3")
        assert code == 0, err
        assert "3 frames, 600 beads" in stdout
        outs.append(list(read_frames(out)))
    _assert_same(outs[1], outs[0], _tolerance(aa))

    code, _, err = cli("map", "--topology", HEXANE / "topol.top", "--traj", tmp_path / "aa.xyzzy",
                       "--mapping", HEXANE / "hexane.xml", "--out", tmp_path / "x.xtc")
    assert code == 2  # a missing file: the CLI's one-line error
    (tmp_path / "aa.xyzzy").write_text("x\n")
    code, _, err = cli("map", "--topology", HEXANE / "topol.top", "--traj", tmp_path / "aa.xyzzy",
                       "--mapping", HEXANE / "hexane.xml", "--out", tmp_path / "x.xtc")
    assert code == 2 and "aa.xyzzy: cannot read '.xyzzy' trajectories" in err and "\n" not in err.strip()


def test_cli_apply_reads_a_cg_lammps_dump(tmp_path, cli):
    """`backmap map` to .xtc, the same CG frames as a LAMMPS dump, backmapped by `backmap apply`
    with a template model trained on the hexane data."""
    cg_xtc = tmp_path / "cg.xtc"
    code, _, err = cli("map", "--topology", HEXANE / "topol.top", "--traj", HEXANE / "traj.trr",
                       "--mapping", HEXANE / "hexane.xml", "--out", cg_xtc)
    assert code == 0, err
    cg = list(read_frames(cg_xtc))
    topo = load_topology(HEXANE / "topol.top")
    cg_top = load_mapping(HEXANE / "hexane.xml", topo).cg_topology(topo)
    dump = tmp_path / "cg.lammpstrj"
    write_lammps_dump(dump, cg, cg_top.bead_types)

    recipe = {"name": "dump-apply", "seed": 1, "workdir": str(tmp_path / "run"),
              "system": {"topology": str(HEXANE / "topol.top"), "mapping": str(HEXANE / "hexane.xml")},
              "data": {"trajectory": str(HEXANE / "traj.trr"), "split": {"test_fraction": 0.2}},
              "generator": {"plugin": "template"}, "steps": [{"prepare": {}}, {"train": {}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = cli("run", path)
    assert code == 0, err

    out = tmp_path / "aa.xtc"
    code, _, err = cli("apply", "--model", tmp_path / "run", "--cg", dump, "--frames", "0:2",
                       "--candidates", 1, "--gibbs", 0, "--out", out)
    assert code == 0, err
    frames = list(read_frames(out, topo.n_atoms))
    assert len(frames) == 2
    np.testing.assert_allclose(frames[1].dimensions, cg[1].dimensions, atol=1e-3)
    # the same frames given as .xtc backmap to the same structures: the dump was read in the right
    # units, atom order and box (differences only where the output's 0.001 nm rounding flips)
    code, _, err = cli("apply", "--model", tmp_path / "run", "--cg", cg_xtc, "--frames", "0:2",
                       "--candidates", 1, "--gibbs", 0, "--out", tmp_path / "from_xtc.xtc")
    assert code == 0, err
    same = np.stack([f.positions for f in read_frames(tmp_path / "from_xtc.xtc", topo.n_atoms)])
    assert np.abs(np.stack([f.positions for f in frames]) - same).max() < 0.0021
    # the selector's parameters reach it (the Boltzmann selector's temperature), a wrong one is named
    code, _, err = cli("apply", "--model", tmp_path / "run", "--cg", cg_xtc, "--frames", "0:1", "--candidates", 4,
                       "--gibbs", 0, "--selector", "boltzmann", "--selector-param", "temperature=568",
                       "--out", tmp_path / "hot.gro")
    assert code == 0, err
    assert json.loads((tmp_path / "hot.json").read_text())["settings"]["selector_params"] == {"temperature": 568}
    code, _, err = cli("apply", "--model", tmp_path / "run", "--cg", cg_xtc, "--frames", "0:1", "--selector",
                       "boltzmann", "--selector-param", "temprature=568", "--out", tmp_path / "bad.gro")
    assert "selector_params" in one_line_error(code, err) and "temprature" in err and not (tmp_path / "bad.gro").exists()
