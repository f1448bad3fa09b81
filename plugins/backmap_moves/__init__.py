"""The built-in moves made on every backmapped frame after the sweeps (docs/moves.md): the regrow
block move, a round of clash repair, the CG projection and the closing pass of energy guidance.
The settings ``--regrow``, ``--repair-clashes``, ``--project-cg`` and ``--polish`` choose them
(``BackmapSettings.move_choices``); ``--move NAME:KEY=VALUE`` adds them like any other move."""
from __future__ import annotations

from backmap.api import hookimpl

from backmap_moves.clashes import RepairClashes
from backmap_moves.guidance import Polish
from backmap_moves.projection import ProjectCG
from backmap_moves.regrow import Regrow


@hookimpl
def backmap_moves():
    return [Regrow, RepairClashes, ProjectCG, Polish]
