"""Training sequences streamed from disk (backmap.training.sequence_store): a batch read from the
shards is exactly the batch the in-memory sequences give, a killed build reuses what it wrote,
and nothing of the sequences is held in memory but the batch."""
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HEXANE

from backmap.engine.loaders import load_mapping, load_topology
from backmap.engine.registry import default_registry
from backmap.sampling.environment import Channels
from backmap.sampling.spec import EnvironmentSpec
from backmap.sampling.traversal import make_plans
from backmap.system.pairs import pairs_from_trajectory
from backmap.training import sequences as sequences_module
from backmap.training.data import TrainingData
from backmap.training.loop import trim
from backmap.training.sequences import build_sequences

CONTEXTS = ("forward", "gibbs")


@pytest.fixture(scope="module")
def hexane():
    top = load_topology(HEXANE / "topol.top")
    cg = load_mapping(HEXANE / "hexane.xml", top).cg_topology(top)
    pairs = pairs_from_trajectory(cg, HEXANE / "traj.xtc", np.arange(4))
    pairs.is_test[:] = False
    spec = EnvironmentSpec(unit="bead", strip_hydrogens=False)
    plans = make_plans(cg, default_registry().get("traversal", spec.traversal).cls(), spec, np.random.default_rng(0))
    return pairs, cg, spec, plans, Channels.for_spec(cg, spec.channels)


def _data(hexane, cache=None) -> TrainingData:
    pairs, cg, spec, plans, channels = hexane
    return TrainingData(pairs, cg, spec, channels, plans, cache=cache)


#: fields over the neighbour atoms: their padding (unseen candidates) holds whatever the part had
_NEIGHBOUR_FIELDS = ("atom_positions", "atom_types", "interaction")


def _same(a, b, padding=True):
    seen = a.atom_index >= 0
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.dtype == y.dtype and x.shape == y.shape, f.name
        if not padding and f.name in _NEIGHBOUR_FIELDS:
            mask = seen[:, None].expand_as(x) if f.name == "interaction" else seen  # interaction: (S, T, K)
            x, y = x[mask], y[mask]
        assert torch.equal(x, y), f.name


@pytest.mark.parametrize("on_disk,chunk", [(False, None), (True, None), (True, 7)])
def test_batches_from_shards_equal_the_in_memory_batches(hexane, tmp_path, monkeypatch, on_disk, chunk):
    pairs, cg, spec, plans, channels = hexane
    reference = build_sequences(cg, plans, pairs, channels, CONTEXTS, cutoff=spec.cutoff, strip_hydrogens=False)
    if chunk:  # large systems are built a few molecules at a time: the same sequences (up to padding)
        monkeypatch.setattr(sequences_module, "MOLECULE_CHUNK", chunk)
    store = _data(hexane, tmp_path / "seq" if on_disk else None).sequences(CONTEXTS)
    assert len(store) == len(reference)
    rng = np.random.default_rng(0)
    for ids in (rng.choice(len(store), 64, replace=False), np.arange(len(store) - 5, len(store)),
                np.array([3, 2, 1, len(store) // 2 + 3])):  # any order, across frames and contexts
        batch, expected = store.select(torch.as_tensor(ids)), reference.select(torch.as_tensor(ids))
        _same(trim(batch), trim(expected), padding=not chunk)
        if not chunk:  # padded as wide as the in-memory sequences: trim gives the same views (strides
            _same(batch, expected)  # change float rounding in the networks)
            assert all(getattr(trim(batch), f.name).stride() == getattr(trim(expected), f.name).stride()
                       for f in fields(batch))
    if on_disk:
        assert all(s.data is None for s in store.shards)  # records stay on disk
        assert store.nbytes() > 0


def test_a_killed_build_reuses_the_shards_it_wrote(hexane, tmp_path, monkeypatch):
    first = _data(hexane, tmp_path / "seq").sequences(CONTEXTS)
    paths = [s.path for s in first.shards]
    assert len(paths) == 4 and all(p.is_file() and p.with_suffix(".json").is_file() for p in paths)
    paths[2].with_suffix(".json").unlink()  # killed while writing frame 2: its index is written last
    built = []
    real = sequences_module.EnvironmentBuilder.set_frame

    def counting(self, cg, box):
        built.append(1)
        return real(self, cg, box)
    monkeypatch.setattr(sequences_module.EnvironmentBuilder, "set_frame", counting)
    again = _data(hexane, tmp_path / "seq").sequences(CONTEXTS)
    assert len(built) == 1  # only the frame without an index
    ids = torch.arange(len(again))
    _same(again.select(ids), first.select(ids))
    assert again.digest() == first.digest()
    # other settings: another folder, and the stale one is removed
    other = _data(hexane, tmp_path / "seq").sequences(("forward",))
    assert not paths[0].parent.exists()
    assert list((tmp_path / "seq").iterdir()) == [other.shards[0].path.parent]


def test_a_truncated_shard_is_an_error_naming_its_folder(hexane, tmp_path):
    store = _data(hexane, tmp_path / "seq").sequences(("forward",))
    path = store.shards[-1].path
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 100)
    fresh = _data(hexane, tmp_path / "seq").sequences(("forward",))
    with pytest.raises(Exception, match="shorter than its header"):
        fresh.select(torch.tensor([len(fresh) - 1]))


def test_the_folder_name_is_the_same_in_another_process(hexane, tmp_path):
    """A killed run is started again in a new process: its shards are found only if the folder's
    name (a digest of the settings, plans and channels) does not depend on the process."""
    store = _data(hexane, tmp_path / "seq").sequences(("forward",))
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import test_sequence_store as t
store = t._data(t.hexane.__wrapped__(), t.Path({str(tmp_path / 'seq')!r})).sequences(("forward",))
print(store.shards[0].path)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, BACKMAP_NO_PROGRESS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(store.shards[0].path)


def test_a_plugin_reading_fields_gets_the_whole_set(hexane):
    """Plugins written for the in-memory sequences (``data.sequences().bead_types``) still work."""
    store = _data(hexane).sequences(CONTEXTS)
    whole = store.all()
    assert torch.equal(store.bead_types, whole.bead_types) and torch.equal(store.lengths, whole.lengths)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        store.nothing
