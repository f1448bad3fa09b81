"""Training on several systems (``training_systems``, chemical transfer): the systems' sequences
are joined with their beads, atoms and frames numbered one after the other, exactly as in the
concatenated topology a generator is shown; a recipe trains on two systems and backmaps a third."""
import json
import textwrap

import numpy as np
from conftest import DATA, HEXANE, REPO, run_cli, tcs_in_hexane_beads

from backmap.engine.loaders import load_mapping, load_topology
from backmap.engine.models import load_model
from backmap.engine.registry import default_registry
from backmap.sampling.environment import Channels
from backmap.sampling.spec import EnvironmentSpec
from backmap.sampling.traversal import make_plans
from backmap.system.pairs import pairs_from_trajectory
from backmap.training.data import TrainingData

TCS = DATA / "tcs" / "aa"


def _system(topology, mapping, trajectory, frames):
    top = load_topology(topology)
    cg = load_mapping(mapping, top).cg_topology(top)
    return pairs_from_trajectory(cg, trajectory, np.asarray(frames)), cg


def test_sequences_of_two_systems_are_numbered_as_the_joined_topology(tmp_path):
    hexane = _system(HEXANE / "topol.top", HEXANE / "hexane.xml", HEXANE / "traj.xtc", [0, 1])
    tcs = _system(TCS / "topol.top", tcs_in_hexane_beads(tmp_path / "tcs2.xml"), TCS / "traj.xtc", [0])
    spec = EnvironmentSpec(unit="bead", strip_hydrogens=False)
    traversal = default_registry().get("traversal", spec.traversal).cls()
    data = TrainingData.several([hexane, tcs], spec, lambda cg: make_plans(cg, traversal, spec, np.random.default_rng(0)),
                                lambda cg: Channels.for_spec(cg, spec.channels))
    joined = data.cg_topology
    assert [b.block.moltype.name for b in joined.blocks] == [b.block.moltype.name for s in (hexane, tcs)
                                                             for b in s[1].blocks]
    assert data.n_train_frames == 3
    seqs = data.sequences(("forward", "gibbs")).all()
    parts = [p.sequences(("forward", "gibbs")).all() for p in data.parts]
    assert len(seqs) == sum(len(p) for p in parts)
    # context-major: both contexts hold the same bead-frames in the same order
    n = len(seqs) // 2
    assert (seqs.context[:n] == 0).all() and (seqs.context[n:] == 1).all()
    assert (seqs.bead[:n] == seqs.bead[n:]).all() and (seqs.frame[:n] == seqs.frame[n:]).all()
    # every sequence's atoms belong to the molecule of its bead, in the joined numbering
    molecule_of_atom = joined.topology.molecule_index
    bead_molecule = np.concatenate([np.repeat(np.arange(b.block.count), b.mapping.n_beads)
                                    + sum(c.block.count for c in joined.blocks[:k])
                                    for k, b in enumerate(joined.blocks)])
    target = seqs.target_atoms.numpy()
    rows, cols = np.nonzero(target >= 0)
    assert (molecule_of_atom[target[rows, cols]] == bead_molecule[seqs.bead.numpy()[rows]]).all()
    # the second system's rows are shifted by the first system's sizes, and its frames follow
    second = seqs.bead >= hexane[1].n_beads
    assert second.sum() == len(parts[1])
    assert int(seqs.target_atoms[second][seqs.target_atoms[second] >= 0].min()) >= hexane[1].topology.n_atoms
    assert set(seqs.frame[second].tolist()) == {2}
    # the atom types are read through one channel set: the same type has the same channel
    assert (seqs.target_types[~second].unique().tolist() == seqs.target_types[second].unique().tolist())


def test_a_recipe_trains_on_two_systems_and_backmaps_another(tmp_path):
    tcs_map = tcs_in_hexane_beads(tmp_path / "tcs2.xml")
    recipe = tmp_path / "transfer.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: transfer
        seed: 1
        workdir: run
        system: {{topology: {TCS / 'topol.top'}, mapping: {tcs_map}}}
        training_systems:
          - name: hexane
            system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
            data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:1', split: {{test_fraction: 0}}}}
          - name: hexane-again
            system: {{topology: {tmp_path / 'hexane2.top'}, mapping: {tmp_path / 'hexane2.xml'}}}
            data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '1:2', split: {{test_fraction: 0}}}}
        generator: {{plugin: equivariant, params: {{constraints: all-bonds, width: 4, vectors: 2, tensors: 1, hidden: 8,
                                                    max_external_atoms: 8}}}}
        steps:
          - prepare: {{}}
          - train: {{epochs: 1, max_iterations: 5, batch_size: 32}}
          - backmap: {{cg: {tmp_path / 'tcs_cg.gro'}, candidates: 2, gibbs_sweeps: 0}}
        """))
    # a second copy of hexane under another molecule-type name: two systems, each its own topology
    (tmp_path / "hexane2.top").write_text((HEXANE / "topol.top").read_text().replace("Protein", "Hexane2"))
    (tmp_path / "hexane2.xml").write_text((HEXANE / "hexane.xml").read_text().replace("<ident>Protein</ident>",
                                                                                      "<ident>Hexane2</ident>"))
    code, _, err = run_cli("map", "--topology", TCS / "topol.top", "--mapping", tcs_map, "--traj", TCS / "traj.xtc",
                           "--frames", "0", "--out", tmp_path / "tcs_cg.gro")
    assert code == 0, err
    code, _, err = run_cli("run", recipe, catch_exceptions=False)
    assert code == 0, err
    run = tmp_path / "run"
    assert (run / "systems" / "hexane" / "pairs").is_dir() and (run / "systems" / "hexane-again" / "pairs").is_dir()
    model = load_model(run)
    assert [t["name"] for t in model.description["training"]["trained on"]] == ["hexane", "hexane-again"]
    assert {t.moltype for t in model.generator.tables.tables} == {"Protein", "Hexane2"}
    summary = json.loads((run / "backmap" / "aa.json").read_text())
    assert summary["summary"]["transfer"]["molecule types"] == ["TCS"], summary["summary"]


def test_a_model_meets_new_molecule_types_but_not_unknown_atom_types(tmp_path):
    """An adapting generator (equivariant) takes molecule types under new names; the shipped sPS
    model still refuses hexane, whose atom types it has no channel for — naming them."""
    cg = tmp_path / "hexane_cg.gro"
    code, _, err = run_cli("map", "--topology", HEXANE / "topol.top", "--mapping", HEXANE / "hexane.xml",
                           "--traj", HEXANE / "traj.xtc", "--frames", "0", "--out", cg)
    assert code == 0, err
    code, _, err = run_cli("apply", "--model", REPO / "models" / "sps-equivariant", "--topology", HEXANE / "topol.top",
                           "--mapping", HEXANE / "hexane.xml", "--cg", cg, "--out", tmp_path / "out" / "x.gro")
    assert code == 2 and "no channel for atom types ['opls_135', 'opls_136', 'opls_140']" in err, err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
