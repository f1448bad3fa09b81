"""Blocks (backmap.sampling.blocks): specs read against the mapping's bead names and the plan,
with errors naming the key; the ``block`` training context shows a bead everything but its
block's later beads — what vae_mc's block moves show it."""
import numpy as np
import pytest
import torch
from test_temporal import DIP, _dfs, _pairs, _system

from backmap import BackmapError
from backmap.sampling.blocks import hidden_steps, parse_blocks
from backmap.sampling.environment import Channels
from backmap.sampling.spec import EnvironmentSpec
from backmap.sampling.traversal import make_plans
from backmap.system.io import read_frames
from backmap.training.sequences import build_sequences

MOLTYPE = "Protein_chain_A"


def _plans(cg_top):
    return make_plans(cg_top, _dfs(), EnvironmentSpec(unit="bead", strip_hydrogens=False), np.random.default_rng(0))


def test_blocks_are_read_in_plan_order_and_bad_specs_name_the_key():
    _top, cg_top = _system()
    plans = _plans(cg_top)
    order = [cg_top.blocks[0].mapping.beads[u.bead].name for u in plans[MOLTYPE].units]  # CY N CA CB C NM
    (block,) = parse_blocks(["C,CA"], cg_top, plans, "here")
    assert block.steps == (order.index("CA"), order.index("C")) and block.label == f"{MOLTYPE}:CA+C"
    assert hidden_steps([block], MOLTYPE, block.steps[0]) == block.steps[1:]
    assert hidden_steps([block], MOLTYPE, block.steps[1]) == () == hidden_steps([block], MOLTYPE, 0)
    assert parse_blocks([f"{MOLTYPE}:N,CA"], cg_top, plans, "here")[0].moltype == MOLTYPE
    for specs, words in [(["CA"], "two or more"), (["CA,XX"], "no molecule type has"), (["CA,CA"], "twice"),
                         (["Water:CA,C"], "no molecule type 'Water'"), (["CA,C", "C,NM"], "share a bead")]:
        with pytest.raises(BackmapError, match=f"here: .*{words}"):
            parse_blocks(specs, cg_top, plans, "here")


def test_the_block_context_hides_exactly_the_blocks_later_beads():
    """Per bead and atom step, what the ``block`` context shows is the ``gibbs`` context minus the
    later beads of the bead's block: the same for beads in no block, and for the block's last."""
    top, cg_top = _system()
    plans = _plans(cg_top)
    x = next(iter(read_frames(DIP / "traj.xtc"))).positions
    blocks = parse_blocks(["CA,C,NM"], cg_top, plans, "test")
    seqs = build_sequences(cg_top, plans, _pairs(x[None], cg_top, [0]), Channels.from_system(cg_top),
                           ("gibbs", "block"), strip_hydrogens=False, label=None, blocks=blocks)
    n = len(seqs) // 2
    units = plans[MOLTYPE].units
    checked = 0
    for i in range(n):
        gibbs, block = seqs.select(i), seqs.select(n + i)
        assert int(gibbs.bead) == int(block.bead)
        step = next(s for s, u in enumerate(units) if u.bead == int(gibbs.bead))
        hidden = {a for t in hidden_steps(blocks, MOLTYPE, step) for a in units[t].atoms}

        def seen(s):
            return {int(a) for a in s.atom_index[s.visible.any(0)]}

        assert seen(block) == seen(gibbs) - hidden
        checked += bool(hidden & seen(gibbs))
    assert checked == 2  # CA and C: each sees atoms that the block hides
    assert torch.equal(seqs.context[:n], torch.zeros(n, dtype=torch.long) + 1)
