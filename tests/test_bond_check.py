"""The generator-output bond check that `backmap apply` reports (backmap.forcefield.bond_check)."""
import numpy as np

from backmap.engine.loaders import load_topology
from backmap.forcefield.bond_check import BondCheck

from conftest import HEXANE


def test_broken_bonds_against_the_force_field_length(hexane_frame):
    """The simulated frame has none; moving one hydrogen per molecule out along its bond by 50 %
    breaks exactly one bond in 19, by 5 % none (far from the 20 % line either way: the .xtc rounds
    lengths by up to 0.0015 nm); across the box edge the minimum image is used."""
    topo, cg, x, fr = hexane_frame
    check = BondCheck(topo)
    assert len(check.pairs) == 19 * topo.blocks[0].count
    assert check.broken_fraction(x, fr.dimensions) == 0.0
    mt = topo.blocks[0].moltype
    c, h = next((i, j) for i, j in mt.bonds if mt.elements[i] == "C" and mt.elements[j] == "H")
    starts = 20 * np.arange(topo.blocks[0].count)
    for factor, expected in ((1.5, 1 / 19), (1.05, 0.0)):
        y = x.copy()
        y[starts + h] = y[starts + c] + factor * (y[starts + h] - y[starts + c])
        assert abs(check.broken_fraction(y, fr.dimensions) - expected) < 1e-12
    # a molecule cut by the box edge: its bonds are still measured across it
    wrapped = x.copy()
    wrapped[starts + h] += fr.dimensions[:3]
    assert check.broken_fraction(wrapped, fr.dimensions) == 0.0
    assert check.broken_fraction(wrapped) > 0.0


def test_no_check_without_bond_parameters():
    assert BondCheck.of(load_topology(HEXANE / "conf.gro")) is None
