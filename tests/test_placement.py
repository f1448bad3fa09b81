"""Device placement without a GPU: ``backmap.placement.PlacementCheck`` names the CPU twice (the
stage's device ``cpu:0``, the host ``cpu``) and finds every tensor a GPU run would have on the wrong
side. The check itself is tested on each kind of misplacement; then training, ``apply`` and a torch
refiner run under it with ``--device cpu`` and place every tensor — and the same run with one
tensor deliberately left on the host fails."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from backmap.devices import host_random, on_device, resolve_device, to_host
from backmap.placement import PlacementCheck

from conftest import HEXANE, run_cli


def _violations(fn) -> list[str]:
    with PlacementCheck() as check:
        fn(resolve_device("cpu"))
    return [v.what for v in check.violations]


def test_the_stage_device_and_the_host_differ_during_a_check():
    with PlacementCheck():
        assert resolve_device("cpu") == torch.device("cpu", 0) != torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_right_placement_passes():
    def stage(dev):
        lin = torch.nn.Linear(3, 2).to(dev)
        with on_device(dev):
            y = lin(torch.as_tensor(np.ones((4, 3), np.float32)))  # a factory: on the device
            (y + torch.tensor(2.0, device="cpu")).sum().backward()  # a host scalar is allowed, as on CUDA
            y = y + host_random(torch.randn, (4, 2), generator=torch.Generator().manual_seed(0))
            to_host(y)
            np.asarray(y.detach().cpu())
            y[torch.tensor([0, 1], device="cpu")]  # host indices are allowed
    assert _violations(stage) == []


@pytest.mark.parametrize("case, expected", [
    ("host_operand", "add mixes tensors on the device with a host tensor"),
    ("numpy", "numpy of a tensor on the device"),
    ("cpu_generator", "a random draw on the device from a CPU torch.Generator"),
    ("unmoved_module", "linear mixes tensors on the device with a parameter never moved to the device"),
    ("outside_the_stage", "linear mixes tensors on the device with a host tensor"),
])
def test_each_misplacement_is_found(case, expected):
    def stage(dev):
        if case == "unmoved_module":
            lin = torch.nn.Linear(3, 2)
        else:
            lin = torch.nn.Linear(3, 2).to(dev)
        if case == "outside_the_stage":  # a factory call outside on_device: a host tensor on a GPU machine
            lin(torch.zeros(4, 3))
            return
        with on_device(dev):
            y = lin(torch.zeros(4, 3))
            if case == "host_operand":
                y + torch.from_numpy(np.ones((4, 2), np.float32))
            elif case == "numpy":
                y.detach().numpy()
            elif case == "cpu_generator":
                torch.randn(3, generator=torch.Generator().manual_seed(0))
    found = _violations(stage)
    assert len(found) == 1 and found[0].startswith(expected), found


def _recipe(tmp_path, generator: str, refiner: str) -> str:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: placement
        seed: 2
        device: cpu
        workdir: run
        system: {{topology: {HEXANE / 'topol.top'}, mapping: {HEXANE / 'hexane.xml'}}}
        data: {{trajectory: {HEXANE / 'traj.xtc'}, frames: '0:5', split: {{test_fraction: 0.2, mode: tail}}}}
        generator: {{plugin: {generator}, params: {{constraints: none}}}}
        refiners: [{{plugin: {refiner}, params: {{temperature: 300, constraints: none, steps: 4,
                     minimize_steps: 3}}}}]
        steps: [{{prepare: {{}}}}, {{train: {{epochs: 1, batch_size: 64, max_iterations: 30}}}},
                {{backmap: {{candidates: 2, gibbs_sweeps: 1, refiner: 0}}}}]
        """))
    return str(recipe)


@pytest.mark.slow
@pytest.mark.parametrize("generator, refiner", [("equivariant", "langevin"), ("vae", "mala")])
def test_training_backmapping_and_refinement_place_every_tensor(tmp_path, generator, refiner):
    """The train and backmap steps (and a torch refiner) with ``device: cpu`` under the check."""
    with PlacementCheck() as check:
        code, _, err = run_cli("run", _recipe(tmp_path, generator, refiner), catch_exceptions=False)
    assert code == 0, err
    assert check.violations == [], check.report()


@pytest.mark.slow
def test_a_tensor_left_on_the_host_is_found(tmp_path, monkeypatch):
    """The same run with the generator's random draws no longer moved to the device fails the check
    at the line that made them."""
    import backmap.icgen.head as head

    def left_on_host(fn, *args, generator, **kwargs):
        if any(isinstance(a, torch.Tensor) for a in args):
            args = tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)
        else:
            kwargs["device"] = "cpu"
        return fn(*args, generator=generator, **kwargs)  # the .to(device) forgotten

    monkeypatch.setattr(head, "host_random", left_on_host)
    with PlacementCheck() as check:
        code, _, err = run_cli("run", _recipe(tmp_path, "equivariant", "langevin"), catch_exceptions=False)
    assert code == 0, err
    assert any("backmap/icgen/head.py" in v.where and "host tensor" in v.what for v in check.violations), \
        check.report()


def test_a_plugin_moves_every_tensor_it_holds():
    """``Plugin.to`` reaches tensors in attributes, containers and backmap's own objects (here an
    ``EnvironmentBatch``-like holder from the core), and leaves containers without tensors as they
    are (shared references stay shared). The ``meta`` device stands in for a GPU."""
    from backmap.api import Refiner
    from backmap.refinement.constraints import BondConstraints

    class Holder(Refiner):
        name = "holder"

    plugin = Holder()
    shared = ["a", "b"]
    plugin.net = torch.nn.Linear(2, 2)
    plugin.tables = {"first": torch.zeros(3), "names": shared}
    plugin.solver = BondConstraints(np.array([[0, 1]]), np.array([0.1]), np.array([12.0, 1.0]))
    plugin.pair = (torch.ones(2), 3)
    plugin.to(torch.device("meta"))
    assert plugin.device == torch.device("meta")
    assert plugin.net.weight.device.type == "meta" and plugin.tables["first"].device.type == "meta"
    assert plugin.pair[0].device.type == "meta" and plugin.pair[1] == 3
    assert plugin.tables["names"] is shared
    held = [v for v in vars(plugin.solver).values() if isinstance(v, torch.Tensor)]
    assert held and all(t.device.type == "meta" for t in held)
