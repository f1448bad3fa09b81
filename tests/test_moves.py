"""The moves made on every backmapped frame: the built-in ones (plugins/backmap_moves) are what the
sampling settings ask for, a constraint move is made again after later moves, reports add up."""
from dataclasses import dataclass

import numpy as np
import pytest

from backmap.engine.assembly import make_backmapper
from backmap.engine.plugin import Move, MoveFrame
from backmap.engine.registry import default_registry
from backmap.errors import BackmapError
from backmap.sampling.backmapper import BackmapSettings
from backmap.sampling.cg_projection import CGProjection
from backmap.system.io import Frame
from backmap.system.pbc import minimum_image


def _scattering():
    """A generator scattering atoms 0.12 nm about their bead: clashes to repair, far off its CG input."""
    return default_registry().get("generator", "bead_centre").cls({"spread": 0.12})


def _run(cg, frame, seed=2, **settings):
    bm = make_backmapper(cg, _scattering(), BackmapSettings(candidates=4, gibbs_sweeps=0, **settings), seed=seed)
    return bm, bm.backmap_frame(frame)[0].positions


@pytest.fixture(scope="module")
def system(hexane_frame):
    topo, cg, x, fr = hexane_frame
    return cg, Frame(cg.apply(x), fr.dimensions, index=0)


def test_sampling_settings_are_the_built_in_moves(system):
    """``--repair-clashes 2 --project-cg`` is shorthand for five moves named in order: the same
    frame, byte for byte, and the same per-frame reports."""
    cg, frame = system
    by_settings, a = _run(cg, frame, repair_clashes=2, project_cg=True)
    named = ["repair_clashes", "repair_clashes", "project_cg", "repair_clashes", "repair_clashes"]
    assert [m.name for m in by_settings.moves] == named
    by_name, b = _run(cg, frame, project_cg=False, moves=named)
    np.testing.assert_array_equal(a, b)
    assert by_settings.move_reports == by_name.move_reports
    report = by_settings.move_reports[0]
    assert report["repair_clashes"]["rounds"] == 4 and report["repair_clashes"]["units_redrawn"] > 0


@dataclass
class KickReport:
    kicked: int


class Kick(Move):
    """Moves atom 0 by 0.05 nm along x (off its CG input); with ``still``, moves nothing."""

    name = "kick"
    Report = KickReport

    def __init__(self, still: bool = False):
        super().__init__()
        self.still = still

    def apply(self, frame: MoveFrame):
        if self.still:
            return frame.positions, KickReport(0)
        x = frame.positions.copy()
        x[0, 0] += 0.05
        return x, KickReport(1)


def test_a_constraint_is_made_again_after_a_later_move(system, monkeypatch):
    """The CG projection is a constraint: a move after it that moves an atom off the CG input is
    followed by the projection again, so the frame's beads meet their input exactly where they do
    without that move (molecules the projection leaves as drawn — 28–42 of 200 with this crude
    generator over seeds 0–3 — stay off in both); a move that returns the frame's positions
    themselves costs no projection."""
    cg, frame = system

    real = CGProjection.__call__

    def run(*extra):
        bm = make_backmapper(cg, _scattering(), BackmapSettings(candidates=4, gibbs_sweeps=0, project_cg=True), seed=2)
        calls = []

        def counted(self, *args):
            calls.append(len(self.molecule))  # the atoms projected
            return real(self, *args)

        monkeypatch.setattr(CGProjection, "__call__", counted)
        bm.moves += list(extra)
        y = bm.backmap_frame(frame)[0].positions
        on_beads = np.abs(minimum_image(cg.apply(y) - frame.positions, frame.dimensions)).max(1) < 1e-6
        return calls, on_beads, bm.move_reports[0]

    plain_calls, plain, _ = run()
    calls, kicked, report = run(Kick(still=True), Kick())
    assert (len(plain_calls), len(calls)) == (1, 2)  # once more after the kick, not after the still move
    assert calls[0] == cg.topology.n_atoms and 0 < calls[1] < cg.topology.n_atoms  # again: only the kicked atom's molecule
    assert report["kick"] == {"kicked": 1}  # made twice on the frame: the numbers add up
    assert plain.mean() > 0.5
    np.testing.assert_array_equal(kicked, plain)
    assert report["project_cg"]["cg_rmsd_after"] < report["project_cg"]["cg_rmsd_before"]


def test_a_built_in_move_refuses_a_system_it_cannot_work_on(system):
    cg, _frame = system
    with pytest.raises(BackmapError, match="regrow: no bead named Q7"):
        make_backmapper(cg, _scattering(), BackmapSettings(moves=["regrow:beads=Q7"]))
    with pytest.raises(BackmapError, match=r"moves \(regrow\).*beads"):
        make_backmapper(cg, _scattering(), BackmapSettings(moves=["regrow"]))
