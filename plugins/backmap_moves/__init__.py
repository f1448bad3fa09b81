"""The built-in moves made on every backmapped frame after the sweeps (docs/moves.md): the regrow
block move, a round of clash repair, the CG projection, the closing pass of energy guidance and the
stereocentres' inversion. The settings ``--regrow``, ``--repair-clashes``, ``--project-cg``, ``--polish``
and ``--stereo-reference`` / ``--tacticity`` choose them
(``BackmapSettings.move_choices``); ``--move NAME:KEY=VALUE`` adds them like any other move."""
from __future__ import annotations

from backmap.api import hookimpl

from backmap_moves.clashes import RepairClashes
from backmap_moves.guidance import Polish
from backmap_moves.projection import ProjectCG
from backmap_moves.regrow import Regrow
from backmap_moves.stereo import InvertStereocentres


@hookimpl
def backmap_moves():
    return [Regrow, RepairClashes, ProjectCG, Polish, InvertStereocentres]
