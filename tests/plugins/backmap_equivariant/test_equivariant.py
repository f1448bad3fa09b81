"""The equivariant generator (plugins/backmap_equivariant): the NeRF decoder is exact and mirrors,
the e3nn encoder is rotation-equivariant and — only with SO(3)-only irreps — tells mirror images
apart, a trained model passes the conformance kit, places rigid bonds at exactly their length,
has a log-density that is the known answer of its own draws, and takes a stereocentre's hand from
the data it was trained on, with no stereo reference."""
import copy
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from backmap.api.icgen import Encoder
from backmap.api.icgen import internal, place
from backmap.api.icgen import bond_lengths
from conftest import DATA, HEXANE, run_cli, tcs_in_hexane_beads

from backmap.engine.assembly import make_backmapper
from backmap.engine.loaders import load_mapping, load_topology
from backmap.engine.models import load_model
from backmap.sampling.backmapper import BackmapSettings
from backmap.sampling.chirality import chiral_centres
from backmap.system.io import Frame, read_frames, write_frames
from backmap.testing import ConformanceSystem, check_generator

MIRROR = torch.diag(torch.tensor([1.0, -1.0, 1.0]))


def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (q * torch.sign(torch.linalg.det(q))).float()


def test_nerf_inverts_and_mirrors():
    g = torch.Generator().manual_seed(0)
    d, gp, p = torch.randn(3, 200, 3, generator=g, dtype=torch.float64)
    r = 0.1 + torch.rand(200, generator=g, dtype=torch.float64)
    theta = 0.05 + 3.0 * torch.rand(200, generator=g, dtype=torch.float64)
    phi = (2 * torch.rand(200, generator=g, dtype=torch.float64) - 1) * 3.1
    x = place(d, gp, p, r, theta, phi)
    for got, want in zip(internal(x, d, gp, p), (r, theta, phi)):
        assert torch.allclose(got, want, atol=1e-9)
    m = MIRROR.double()
    assert torch.allclose(place(d @ m, gp @ m, p @ m, r, theta, -phi), x @ m, atol=1e-12)


def _environment(seed: int):
    g = torch.Generator().manual_seed(seed)
    B, K, L, U = 4, 30, 6, 3
    atoms = torch.randn(B, K, 3, generator=g) * 0.3
    beads = torch.randn(B, L, 3, generator=g) * 0.4
    beads[:, 0] = 0.0  # the unit's own bead at the origin
    return dict(atom_positions=atoms, atom_types=torch.randint(0, 3, (B, K), generator=g),
                atom_mask=torch.rand(B, K, generator=g) < 0.9, interaction=torch.randint(0, 4, (B, U, K), generator=g),
                target_mask=torch.ones(B, U, dtype=torch.bool), bead_positions=beads,
                bead_types=torch.randint(0, 2, (B, L), generator=g), bead_mask=torch.ones(B, L, dtype=torch.bool))


def _encode(encoder, env, matrix):
    moved = dict(env, atom_positions=env["atom_positions"] @ matrix.T, bead_positions=env["bead_positions"] @ matrix.T)
    with torch.no_grad():
        return encoder(**moved)


@pytest.mark.parametrize("parity", ["so3", "o3"])
def test_encoder_is_rotation_equivariant_and_only_so3_sees_mirror_images(parity):
    torch.manual_seed(3)
    encoder = Encoder(3, 4, 2, 3, parity=parity)
    env = _environment(1)
    s0, v0 = _encode(encoder, env, torch.eye(3))
    for seed in range(3):
        rot = _rotation(seed)
        s1, v1 = _encode(encoder, env, rot)
        assert (s1 - s0).abs().max() < 1e-4  # scalars invariant
        if parity == "so3":  # SO(3)-only labels: the vectors rotate as vectors
            assert (v1 - v0 @ rot.T).abs().max() < 1e-4
    scale = s0.abs().mean()
    change = (_encode(encoder, env, MIRROR)[0] - s0).abs().max() / scale
    if parity == "so3":
        assert change > 1e-3, change  # triple products (a × b)·c: 6.8e-3–5.6e-2 over eight initializations
    else:
        assert change < 1e-5, change  # true parities: mirror-blind scalars (cannot choose a hand)


@pytest.mark.parametrize("parity", ["so3", "o3"])
def test_bead_messages_are_e3nns_tensor_product_summed_over_beads(parity):
    """The encoder's second layer does the tensor product's arithmetic itself, summed over the
    beads first (Encoder.bead_messages); it must be e3nn's own ``tp`` applied per bead and summed."""
    torch.manual_seed(5)
    encoder = Encoder(3, 4, 2, 3, parity=parity).double()
    g = torch.Generator().manual_seed(7)
    B, L = 6, 9
    h1 = torch.randn(B, encoder.h1.dim, generator=g, dtype=torch.float64)
    y = torch.randn(B, L, encoder.sh.dim, generator=g, dtype=torch.float64)
    w = torch.randn(B, L, encoder.tp.weight_numel, generator=g, dtype=torch.float64)
    with torch.no_grad():
        want = encoder.tp(h1[:, None].expand(B, L, -1), y, w).sum(1)
        got = encoder.bead_messages(h1, y, w)
    # e3nn keeps its Wigner-3j buffers in float32: agreement to float32 precision of the largest entry
    assert (got - want).abs().max() < 1e-6 * want.abs().max()
    assert want.abs().max() > 1.0  # not vacuous


def _direct_encoding(encoder, env):
    """The encoder's two layers as their formulas read: every neighbour's radial-MLP weights
    computed in full, then summed with its Y_l (what the encoder reorders for speed)."""
    from e3nn import o3
    U = env["interaction"].shape[1]
    key = env["target_types"][:, :, None] if encoder.relations_by_type else torch.arange(U)[None, :, None]
    inter = env["interaction"].long() + encoder.n_interactions * key
    rel = (encoder.inter_embed(inter) * env["target_mask"][:, :, None, None]).sum(1)
    f_bead = encoder.bead_embed(env["bead_types"])
    feat = torch.cat([encoder.atom_embed(env["atom_types"]) + rel, f_bead], 1)
    pos = torch.cat([env["atom_positions"], env["bead_positions"]], 1)
    mask = torch.cat([env["atom_mask"], env["bead_mask"]], 1).to(pos.dtype)
    r = pos.norm(dim=-1)
    basis = encoder._basis(r)
    y = o3.spherical_harmonics(encoder.sh, pos, normalize=True, normalization="component")
    y = torch.where((r > 1e-6)[..., None], y, torch.zeros_like(y))
    w = encoder.radial1(torch.cat([basis, feat], -1)) * mask[..., None]
    W, V = encoder.width, encoder.vectors
    h1 = torch.cat([w[..., :W].sum(1), torch.einsum("bnc,bni->bci", w[..., W:W + V], y[..., 1:4]).flatten(1),
                    torch.einsum("bnc,bni->bci", w[..., W + V:], y[..., 4:9]).flatten(1)], -1) / 8.0
    nb = env["atom_positions"].shape[1]
    w2 = encoder.radial2(torch.cat([basis[:, nb:], f_bead], -1)) * mask[:, nb:, None]
    h = torch.cat([(encoder.bead_messages(h1, y[:, nb:], w2) / 4.0)[:, encoder.perm], h1], -1)
    h = encoder.gate(encoder.linear(h))
    s = encoder.pre(h)
    return torch.cat([encoder.readout(s, s), h[:, :W]], -1), h[:, W:].reshape(len(h), V, 3)


@pytest.mark.parametrize("by_type", [False, True])
def test_encoder_sums_neighbours_as_the_direct_formula(by_type):
    """The encoder applies its radial MLPs' last layers after the sum over neighbours and bags the
    relation embeddings (Encoder.forward, weighted_sums): it must give the numbers of the formula
    computed neighbour by neighbour, masks and relations by atom type included."""
    torch.manual_seed(11)
    encoder = Encoder(3, 4, 2, 3, relations_by_type=by_type).double()
    env = _environment(2)
    env["atom_positions"], env["bead_positions"] = env["atom_positions"].double(), env["bead_positions"].double()
    env["target_mask"][1, 2] = False  # a padded unit slot
    env["atom_positions"][0, 3] = 0.0  # a neighbour at the origin: no direction
    env["target_types"] = torch.randint(0, 3, env["target_mask"].shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got, want = encoder(**env), _direct_encoding(encoder, env)
    for a, b in zip(got, want):
        assert (a - b).abs().max() < 1e-6 * b.abs().max(), (a - b).abs().max()
        assert b.abs().max() > 1e-2  # not vacuous
    with torch.no_grad():  # no neighbour atoms at all (a unit alone with its beads)
        bare = dict(env, atom_positions=env["atom_positions"][:, :0], atom_types=env["atom_types"][:, :0],
                    atom_mask=env["atom_mask"][:, :0], interaction=env["interaction"][:, :, :0])
        for a, b in zip(encoder(**bare), _direct_encoding(encoder, bare)):
            assert (a - b).abs().max() < 1e-6 * b.abs().max()
    with torch.no_grad():  # the masks matter: a neighbour masked off changes nothing of the formula's
        env["atom_mask"][0, 5] = not env["atom_mask"][0, 5]
        assert (encoder(**env)[0] - got[0]).abs().max() > 1e-9


def _train_hexane(tmp, extra: str = "") -> Path:
    """A small equivariant model trained on hexane with every bond rigid, backmapped once."""
    recipe = tmp / "eq.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: eq
        seed: 3
        workdir: eq
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:3', split: {{test_fraction: 0.34, mode: tail}}}}
        generator: {{plugin: equivariant, params: {{constraints: all-bonds, width: 8, vectors: 4, tensors: 2, hidden: 32, lr: 4.0e-3,
                                                 max_external_atoms: 8{extra}}}}}  # room for longer alkanes (transfer)
        steps:
          - prepare: {{}}
          - train: {{epochs: 30, batch_size: 64}}
          - backmap: {{candidates: 4, gibbs_sweeps: 1}}
        """))
    code, _, err = run_cli("run", recipe, catch_exceptions=False)
    assert code == 0, err
    return tmp / "eq"


@pytest.fixture(scope="module")
def hexane_run(tmp_path_factory):
    return _train_hexane(tmp_path_factory.mktemp("equivariant"))


@pytest.fixture(scope="module")
def hexane_transferable_run(tmp_path_factory):
    """The same, with the networks' inputs keyed by chemistry (``transferable``)."""
    return _train_hexane(tmp_path_factory.mktemp("transferable"), ", transferable: true")


@pytest.mark.parametrize("run", ["hexane_run", "hexane_transferable_run"])
def test_conformance_kit_passes(run, request):
    hexane_run = request.getfixturevalue(run)
    model = load_model(hexane_run)
    system = ConformanceSystem.from_files(HEXANE / "topol.top", HEXANE / "hexane.xml",
                                          hexane_run / "backmap" / "aa_cg.trr", channels=model.channels)
    report = check_generator(model.generator, system)
    assert report["unit"] == "bead" and report["invariance_error_nm"] < 1e-4


def test_rigid_bonds_come_out_at_their_length(hexane_run):
    """Every bond of a backmapped frame, inside beads and between them, at the topology's b0: the
    tree holds one bond per atom exactly, the projection the rest (in memory: the files round
    coordinates to 1e-3 nm)."""
    model = load_model(hexane_run)
    top = load_topology(HEXANE / "topol.top")
    cg = load_mapping(HEXANE / "hexane.xml", top).cg_topology(top)
    frame = next(iter(read_frames(hexane_run / "backmap" / "aa_cg.trr")))
    bm = make_backmapper(cg, model.generator, BackmapSettings(candidates=4, gibbs_sweeps=1), seed=2)
    x = list(bm.run([frame]))[0].positions
    mt = top.blocks[0].moltype
    b0 = bond_lengths(mt)
    xs = x.reshape(-1, mt.n_atoms, 3)
    lengths = np.linalg.norm(xs[:, mt.bonds[:, 0]] - xs[:, mt.bonds[:, 1]], axis=-1)
    err = np.abs(lengths - np.array([b0[tuple(p)] for p in mt.bonds.tolist()]))
    assert err.max() < 1e-5, np.quantile(err, [0.5, 0.99, 1.0])  # float32; 1.2e-6–3.2e-6 over five training seeds


def test_frames_are_projected_onto_their_cg_input(hexane_run):
    """By default an equivariant model's frames map onto their CG input exactly (the core's CG
    projection, asked for by the generator), with the rigid bonds still at b0; without the
    projection they miss it by the generator's own error."""
    from backmap.system.pbc import minimum_image

    model = load_model(hexane_run)
    assert model.generator.projects_cg and model.generator.rigid_bonds == "all-bonds"
    top = load_topology(HEXANE / "topol.top")
    cg = load_mapping(HEXANE / "hexane.xml", top).cg_topology(top)
    frame = next(iter(read_frames(hexane_run / "backmap" / "aa_cg.trr")))
    miss = {}
    for project in (None, False):
        bm = make_backmapper(cg, model.generator, BackmapSettings(candidates=4, gibbs_sweeps=1, project_cg=project),
                             seed=2)
        x = list(bm.run([frame]))[0].positions
        d = minimum_image(cg.apply(x.astype(np.float64)) - frame.positions, frame.dimensions)
        miss[project] = float(np.sqrt((d ** 2).sum(-1).mean()))
    assert "project_cg" not in [m.name for m in bm.moves]
    assert miss[None] < 1e-5 < 1e-3 < miss[False], miss  # float32 output: 1e-7 nm here


def _captured_batch(model, cg_path):
    """A real environment batch of the sampler (first forward-pass step)."""
    top = load_topology(HEXANE / "topol.top")
    cg = load_mapping(HEXANE / "hexane.xml", top).cg_topology(top)
    frame = next(iter(read_frames(cg_path)))
    gen = model.generator
    seen = []
    original = gen.propose
    gen.propose = lambda batch, k, rng: (seen.append(batch), original(batch, k, rng))[1]
    bm = make_backmapper(cg, gen, BackmapSettings(candidates=2, gibbs_sweeps=1), seed=1)
    list(bm.run([frame]))
    gen.propose = original
    return seen


@pytest.mark.parametrize("spread", [1.0, 0.7])
def test_log_prob_is_the_density_of_the_draws(hexane_run, spread):
    """Also for draws narrowed by angle_spread (apply --temperature): vae_mc's acceptance reads it."""
    model = load_model(hexane_run)
    gen = model.generator
    gen.params = gen.params.model_copy(update={"project": False, "recentre": False,  # the density of the IC draws
                                                "angle_spread": spread})
    batches = _captured_batch(model, hexane_run / "backmap" / "aa_cg.trr")
    assert gen.has_log_prob
    for batch in (batches[0], batches[-1]):  # a forward-pass and a Gibbs-sweep environment
        view = gen._view_batch(batch)
        x, drawn = gen._sample(view, 5, torch.Generator().manual_seed(0), with_log_prob=True)
        scored = gen.log_prob(batch, x)
        assert scored.shape == drawn.shape and torch.isfinite(scored).all()
        assert torch.allclose(scored, drawn, atol=1e-3), (scored - drawn).abs().max()  # ≤ 4e-5 over five seeds


@pytest.fixture(scope="module")
def chiral_run(tmp_path_factory):
    """CHFClBr molecules of one hand (tests/data/chiral), 20 frames of random orientations."""
    tmp = tmp_path_factory.mktemp("chiral")
    top = load_topology(DATA / "chiral" / "chiral.top")
    rng = np.random.default_rng(5)
    t = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
    lengths = np.array([0.109, 0.135, 0.177, 0.194])[:, None]
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    box = np.array([3.0, 3.0, 3.0, 90, 90, 90])
    frames = []
    for _ in range(20):
        mols = []
        for centre in grid:
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            q *= np.sign(np.linalg.det(q))
            mols.append(0.5 + centre + np.vstack([[0, 0, 0], t * lengths * rng.uniform(0.98, 1.02, (4, 1))]) @ q.T)
        frames.append(Frame(np.concatenate(mols), box))
    write_frames(tmp / "aa.xtc", frames, top.atom_names, top.resnames, top.residue_numbers())
    write_frames(tmp / "ref.gro", frames[:1], top.atom_names, top.resnames, top.residue_numbers())
    runs = {}
    for augment in (False, True):
        name = f"hand{int(augment)}"
        recipe = tmp / f"{name}.yaml"
        recipe.write_text(textwrap.dedent(f"""
            name: {name}
            seed: 4
            workdir: {name}
            system: {{topology: {DATA / 'chiral' / 'chiral.top'}, mapping: {DATA / 'chiral' / 'chiral.xml'}}}
            data: {{trajectory: {tmp / 'aa.xtc'}, split: {{test_fraction: 0.1, mode: tail}}}}
            generator: {{plugin: equivariant, params: {{mirror_augment: {str(augment).lower()}, width: 8, vectors: 4,
                         tensors: 2, hidden: 32, lr: 5.0e-3}}}}
            steps:
              - prepare: {{}}
              - train: {{epochs: 25, batch_size: 32}}
            """))
        code, _, err = run_cli("run", recipe, catch_exceptions=False)
        assert code == 0, err
        runs[augment] = tmp / name
    return top, frames[-1], runs


def test_the_hand_comes_from_the_training_data(chiral_run):
    """Isolated molecules: the environment is one point, so nothing but the learned signed
    dihedrals can choose the hand. Trained on one enantiomer, the generator makes that one, with
    no stereo reference; trained with mirror images too, it makes both. Over six training seeds:
    1.000 every time, and 0.17–0.30 (the short training leaves a bias, but both hands appear)."""
    top, frame, runs = chiral_run
    cg = load_mapping(DATA / "chiral" / "chiral.xml", top).cg_topology(top)
    beads = cg.apply(frame.positions)
    kept = {}
    for augment, run in runs.items():
        bm = make_backmapper(cg, load_model(run).generator, BackmapSettings(candidates=1, gibbs_sweeps=0), seed=6)
        samples = [list(bm.run([Frame(beads, frame.dimensions)]))[0].positions for _ in range(4)]
        kept[augment] = np.mean([chiral_centres(top, frame.positions).kept(top, x) for x in samples])
    assert kept[False] >= 0.95, kept  # 108 centres
    assert 0.05 <= kept[True] <= 0.75, kept


# --------------------------------------------------------------------------- chemical transfer
TCS = DATA / "tcs" / "aa"


def _backmap_mapped(model, topology, mapping, trajectory):
    """Map the last AA frame of ``trajectory`` and backmap it: (backmapper, positions, reference, CG frame)."""
    from backmap.system.pbc import Unwrapper

    top = load_topology(topology)
    cg = load_mapping(mapping, top).cg_topology(top)
    aa = list(read_frames(trajectory, top.n_atoms))[-1]
    whole = Unwrapper(top)(aa.positions.astype(np.float64), aa.dimensions)
    frame = Frame(cg.apply(whole), aa.dimensions)
    bm = make_backmapper(cg, model.generator, BackmapSettings(candidates=4, gibbs_sweeps=1), seed=2,
                         channels=model.channels)
    return bm, list(bm.run([frame]))[0].positions.astype(np.float64), whole, frame, top, cg


def _ccc_angles(moltype, coords: np.ndarray) -> np.ndarray:
    """Every C–C–C angle of every chain (degrees)."""
    c = coords.reshape(-1, moltype.n_atoms, 3)[:, [i for i, e in enumerate(moltype.elements) if e == "C"]]
    u, v = c[:, :-2] - c[:, 1:-1], c[:, 2:] - c[:, 1:-1]
    cos = (u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
    return np.degrees(np.arccos(cos)).ravel()


@pytest.mark.parametrize("run", ["hexane_run", "hexane_transferable_run"])
def test_a_hexane_model_backmaps_tetracosane(run, request, tmp_path):
    """Chemical transfer: the model trained on hexane only backmaps tetracosane mapped in hexane's
    beads. Its unit tables are built for the new molecule type at run time (the generator's
    ``adapt``), its rows take the slots of the same chemistry, and the result has the chemistry's
    geometry: every bond at b0, the CG input met, C–C–C angles about as good as the model's own
    on hexane (a longer chain is outside what it saw: measured 17° spread against 12° on hexane)."""
    from backmap.system.pbc import minimum_image

    hexane_run = request.getfixturevalue(run)
    _bm, hexane, hexane_ref, _f, htop, _cg = _backmap_mapped(load_model(hexane_run), HEXANE / "topol.top",
                                                            HEXANE / "hexane.xml", HEXANE / "traj.xtc")
    bm, x, ref, frame, top, cg = _backmap_mapped(load_model(hexane_run), TCS / "topol.top",
                                                 tcs_in_hexane_beads(tmp_path / "tcs2.xml"), TCS / "traj.xtc")
    assert bm.adaptation["molecule types"] == ["TCS"] and bm.adaptation["units"] == 12, bm.adaptation
    rows = bm.adaptation["chemistry rows"]
    # the tables do not depend on training: 564 of 636 rows take a hexane slot as they are, 68 a
    # slot made for an earlier bead, 4 a coarser key (a bead type B bonded to B: hexane has none)
    assert rows["exact"] > 0.8 * sum(rows.values()), rows
    mt = top.blocks[0].moltype
    xs = x.reshape(-1, mt.n_atoms, 3)
    b0 = bond_lengths(mt)
    lengths = np.linalg.norm(xs[:, mt.bonds[:, 0]] - xs[:, mt.bonds[:, 1]], axis=-1)
    assert np.abs(lengths - np.array([b0[tuple(p)] for p in mt.bonds.tolist()])).max() < 1e-4
    d = minimum_image(cg.apply(x) - frame.positions, frame.dimensions)
    assert np.sqrt((d ** 2).sum(-1).mean()) < 1e-4
    own = _ccc_angles(htop.blocks[0].moltype, hexane)
    got, want = _ccc_angles(mt, x), _ccc_angles(mt, ref)
    # 1 056 angles; measured: TCS 118.2 ± 17.1° (reference 113.2 ± 3.8°), hexane 114.3 ± 12.0°
    assert abs(got.mean() - want.mean()) < 10.0, (got.mean(), want.mean())
    assert got.std() < 2.0 * own.std(), (got.std(), own.std())


def test_energy_guidance_lowers_the_energy_and_keeps_bonds_and_cg(hexane_run):
    """``polish_steps``: each placement turned about its rotatable bonds down its selection energy.
    Bond lengths stay at b0 and the frame still maps onto its CG input; the frame's Lennard-Jones +
    torsion energy is lower than without guidance for every one of three seeds."""
    from backmap.forcefield.energy import ForceField
    from backmap.system.pbc import minimum_image

    model = load_model(hexane_run)
    top = load_topology(HEXANE / "topol.top")
    cg = load_mapping(HEXANE / "hexane.xml", top).cg_topology(top)
    frame = next(iter(read_frames(hexane_run / "backmap" / "aa_cg.trr")))
    ff = ForceField(top)
    mt = top.blocks[0].moltype
    b0 = bond_lengths(mt)
    energy = {}
    for steps in (0, 10):
        for seed in (0, 1, 2):
            bm = make_backmapper(cg, model.generator, BackmapSettings(candidates=4, gibbs_sweeps=1, polish_steps=steps),
                                 seed=seed)
            x = list(bm.run([frame]))[0].positions.astype(np.float64)
            energy[steps, seed] = float(ff.energy(x[None], frame.dimensions, terms=["lj", "rb", "proper"]).total[0].detach())
            if steps:
                xs = x.reshape(-1, mt.n_atoms, 3)
                lengths = np.linalg.norm(xs[:, mt.bonds[:, 0]] - xs[:, mt.bonds[:, 1]], axis=-1)
                assert np.abs(lengths - np.array([b0[tuple(p)] for p in mt.bonds.tolist()])).max() < 1e-5
                d = minimum_image(cg.apply(x) - frame.positions, frame.dimensions)
                assert np.sqrt((d ** 2).sum(-1).mean()) < 1e-5
                assert bm.sampler.polish_log["placements"] > 0 and bm.sampler.polish_log["energy_drop"] > 0
    assert max(energy[10, s] for s in range(3)) < min(energy[0, s] for s in range(3)), energy


def test_energy_guidance_without_force_field_energies_is_refused(hexane_run, tmp_path):
    """A .tpr topology gives no selection energy to descend: a clear error naming the setting, no output."""
    out = tmp_path / "guided.xtc"
    code, stdout, stderr = run_cli("apply", "--model", hexane_run / "model", "--topology", HEXANE / "topol.tpr",
                                   "--cg", hexane_run / "backmap" / "aa_cg.trr", "--polish", "5", "--out", out)
    assert code != 0 and "polish_steps" in stdout + stderr, (code, stdout, stderr)
    assert not out.exists()


def test_the_models_sampling_settings_apply_unless_given(hexane_run, tmp_path):
    """A model's recorded ``sampling`` (e.g. the shipped sPS model's chain-start regrow) is what
    apply uses where no option says otherwise, and the provenance records it; beads the system
    does not have are dropped from it; an unknown key in it is refused naming the key and the
    model file, with nothing written."""
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(hexane_run / "model", model)
    description = json.loads((model / "model.json").read_text())
    cg = hexane_run / "backmap" / "aa_cg.trr"

    def apply(sampling, *options):
        (model / "model.json").write_text(json.dumps({**description, "sampling": sampling}))
        out = tmp_path / f"aa{len(list(tmp_path.glob('aa*.xtc')))}.xtc"
        code, stdout, stderr = run_cli("apply", "--model", model, "--cg", cg, "--frames", "0:1", "--gibbs", "0",
                                       "--out", out, *options)
        settings = json.loads(out.with_suffix(".json").read_text())["settings"] if code == 0 else None
        return code, stdout + stderr, settings, out

    code, said, settings, _ = apply({"regrow": ["A1"], "regrow_trials": 2, "candidates": 3})
    assert code == 0, said
    assert "the model's sampling settings" in said and "regrow_trials=2" in said
    assert settings["regrow"] == ["A1"] and settings["regrow_trials"] == 2 and settings["candidates"] == 3
    code, said, settings, _ = apply({"regrow": ["A1"], "regrow_trials": 2}, "--regrow-trials", "1", "--regrow", "")
    assert code == 0, said
    assert settings["regrow"] == [] and settings["regrow_trials"] == 1
    code, said, settings, _ = apply({"regrow": ["A1", "S9"]})  # recommended for another system's beads
    assert code == 0, said
    assert settings["regrow"] == ["A1"]
    code, said, settings, out = apply({"regrow_trails": 2})
    assert code != 0 and "regrow_trails" in said and "model.json" in said, said
    assert not out.exists()


def test_inference_draws_as_the_training_path(hexane_run):
    """Proposals without gradients take a faster path (ICInference._draw_atomwise: the head's first
    layer split by atom, coordinate-major points, the unit in build order). With the same random
    draws it must place what the path used with gradients places, up to float32 rounding carried
    along the chain — also where rows of a batch use different reference atoms (here: external
    atoms hidden in half the rows), and with the log densities of the draws."""
    model = load_model(hexane_run)
    gen = model.generator
    batches = _captured_batch(model, hexane_run / "backmap" / "aa_cg.trr")
    mixed = copy.deepcopy(batches[1])
    mixed.atom_mask[::2] = False  # no placed neighbour: other reference triples in those rows
    for batch in (batches[0], batches[-1], mixed):
        view = gen._view_batch(batch)
        for seed in range(3):
            with torch.no_grad():
                fast, fast_lp = gen._sample(view, 6, torch.Generator().manual_seed(seed), with_log_prob=True)
            with torch.enable_grad():
                plain, plain_lp = (x.detach() for x in gen._sample(view, 6, torch.Generator().manual_seed(seed),
                                                                    with_log_prob=True))
            # here: medians ~5e-8 nm, maxima 7e-6 to 3e-4 nm (a rare row whose rounding a later atom
            # amplifies), log densities within 4e-3; a missing or misplaced input moves most rows by > 1e-3
            per_row = (fast - plain).abs().amax(dim=(-1, -2)).flatten()
            assert float(per_row.median()) < 1e-5 and float((per_row > 1e-4).float().mean()) < 0.05
            assert float(per_row.max()) < 1e-2 and float((fast_lp - plain_lp).abs().max()) < 5e-2
            assert float((fast - fast[:, :1]).abs().max()) > 1e-2  # the candidates differ: not vacuous
            with torch.no_grad():  # without densities: the leaner per-atom step (_draw_atom_fast)
                lean = gen._sample(view, 6, torch.Generator().manual_seed(seed))
            per_row = (lean - plain).abs().amax(dim=(-1, -2)).flatten()
            assert float(per_row.median()) < 1e-5 and float((per_row > 1e-4).float().mean()) < 0.05
            assert float(per_row.max()) < 1e-2


def test_radial_basis_is_e3nns_smooth_finite():
    """Encoder._basis is e3nn's smooth_finite soft one-hot basis with each soft step's exponent
    cut at −80: e3nn's values wherever they are not negligible (trained models depend on them), zero
    outside the cutoff."""
    from e3nn.math import soft_one_hot_linspace

    encoder = Encoder(3, 4, 2, 3)
    r = torch.cat([torch.linspace(0.0, 1.5, 30001), torch.tensor([1e-7, 1.2, 1.2 - 1e-6])]).double()
    want = soft_one_hot_linspace(r, 0.0, encoder.radius, encoder.n_basis, basis="smooth_finite", cutoff=True)
    got = encoder._basis(r)
    # the same arithmetic: bit for bit with the e3nn this was written against; the limit (float32
    # rounding) leaves room for an e3nn that computes its constant otherwise (e3nn is not pinned)
    assert (got - want).abs().max() <= 1e-6 * want.abs().max() and want.abs().max() > 1.0
    assert (got[want < 1e-30] < 1e-30).all()  # the exponent's cut changes only negligible values
    assert (got[r >= encoder.radius] == 0).all()


def _shipped_sps_proposals(gibbs_sweeps: int, **params):
    """The shipped sPS model's generator (``params`` changed) and the batches it was asked to
    propose for while backmapping tests/data/sps/cg.gro (K = 2, no energy)."""
    shipped = Path(__file__).resolve().parents[3] / "models" / "sps-equivariant"
    gen = load_model(shipped).generator
    gen.params = gen.params.model_copy(update=params)
    top = load_topology(shipped / "system" / "topol.top")
    cg = load_mapping(shipped / "system" / "sps-rings-first.xml", top).cg_topology(top)
    seen = []
    original = gen.propose
    gen.propose = lambda batch, k, rng: (seen.append(batch), original(batch, k, rng))[1]
    bm = make_backmapper(cg, gen, BackmapSettings(candidates=2, gibbs_sweeps=gibbs_sweeps, energy=False), seed=1)
    list(bm.run([next(iter(read_frames(DATA / "sps" / "cg.gro")))]))
    gen.propose = original
    return gen, seen


def test_steps_built_alike_are_drawn_in_one_batch_each_row_by_its_own_table():
    """Clash repair merges steps whose units the generator draws alike (``batch_key``: on sPS the
    chain's middle beads of one kind). In a merged batch each row is drawn with its own bead's
    table: the log density of every draw, as drawn, is what its own step's batch scores it; steps
    built otherwise (a chain's end) get another key and are refused together."""
    from backmap.errors import BackmapError
    from backmap.sampling.environment import EnvironmentBatch

    gen, seen = _shipped_sps_proposals(gibbs_sweeps=1, project=False, recentre=False)  # the IC draws' density
    gibbs = {b.meta["bead"]: b for b in seen[len(seen) // 2:]}  # the Gibbs sweep: every atom placed
    keys = {bead: gen.batch_key(b.meta) for bead, b in gibbs.items()}
    assert keys[5] == keys[7] == keys[9] != keys[1] and keys[6] == keys[8] != keys[5]
    parts = [gibbs[5], gibbs[9], gibbs[7]]
    merged = EnvironmentBatch.concatenate(parts)
    merged.meta = {**parts[0].meta, "beads": [b.meta["bead"] for b in parts for _ in range(b.size)]}
    x, drawn = gen._sample(gen._view_batch(merged), 4, torch.Generator().manual_seed(0), with_log_prob=True)
    start = 0
    for part in parts:
        scored = gen.log_prob(part, x[start:start + part.size])
        assert torch.allclose(scored, drawn[start:start + part.size], atol=5e-3)  # here ≤ 1.6e-4; another step's: ~100
        start += part.size
    # not vacuous: a row's draws are its own environment's (scored in another step's, they fit badly)
    n = parts[0].size
    with torch.no_grad():
        assert float((gen.log_prob(parts[2], x[n:2 * n]) - drawn[n:2 * n]).abs().max()) > 1.0
    wrong = EnvironmentBatch.concatenate([gibbs[5], gibbs[1]])
    wrong.meta = {**gibbs[5].meta, "beads": [5] * gibbs[5].size + [1] * gibbs[1].size}
    with pytest.raises(BackmapError, match="built alike"):
        gen._view_batch(wrong)


def test_proposals_in_inference_mode_leave_training_possible():
    """``propose`` runs in torch's inference mode. What it returns must be a plain tensor (callers
    change candidates in place), and what it caches (the rings' SHAKE solvers) must be usable by
    the training path afterwards: a draw with gradients through the projection, on the shipped
    sPS model (whose rings have closures to project)."""
    gen, seen = _shipped_sps_proposals(gibbs_sweeps=0)
    cached = [v for v in gen.tables._projections.values() if v is not None]
    assert cached  # the rings were projected: solvers were made during the proposals
    assert not any(t.is_inference() for solver, points in cached
                   for t in (points, *(x for x in vars(solver).values() if torch.is_tensor(x))))
    drawn = gen.propose(seen[-1], 3, np.random.default_rng(0))
    assert not drawn.is_inference()
    drawn += 0.0  # in place, outside inference mode
    with torch.enable_grad():
        x = gen._sample(gen._view_batch(seen[-1]), 2, torch.Generator().manual_seed(0), reparameterized=True)
        x.sum().backward()  # raises if an inference tensor was saved for the backward pass
    assert any(p.grad is not None for p in gen.parameters())
