"""Devices: the ``--device`` names resolved on this machine, clear errors for what is not there, and
what ``backmap --version`` reports. (The GPU path of every stage is issue 62's; this holds its start.)"""
import pytest
import torch

from backmap.devices import check_device_name, openmm_platform_for, openmm_platforms, resolve_device, torch_devices
from backmap.errors import BackmapError

GPU = torch.cuda.is_available()


def test_device_names_resolve_on_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda:0" if GPU else "cpu")
    assert check_device_name(" CUDA:1 ") == "cuda:1"
    with pytest.raises(ValueError, match="'gpu' is not a device: expected auto, cpu, cuda or cuda:N"):
        check_device_name("gpu")
    with pytest.raises(BackmapError, match="--device: 'cuda:x' is not a device"):
        resolve_device("cuda:x")


def test_a_gpu_that_is_not_there_is_named():
    """``cuda:N`` beyond the devices torch sees: the error says which torch build sees how many."""
    count = torch.cuda.device_count() if GPU else 0
    with pytest.raises(BackmapError, match=rf"steps.train.device cuda:{count}: torch .* sees .*; use --device cpu"):
        resolve_device(f"cuda:{count}", where="steps.train.device")


def test_openmm_platforms_follow_the_device():
    installed = openmm_platforms()
    assert {"Reference", "CPU"} <= set(installed)
    assert openmm_platform_for("auto", "cpu") == ("CPU", {})
    assert openmm_platform_for("Reference") == ("Reference", {})
    missing = next((p for p in ("CUDA", "OpenCL") if p not in installed), None)
    if missing is not None:
        with pytest.raises(BackmapError, match=rf"platform: OpenMM platform '{missing}' is not installed here"):
            openmm_platform_for(missing)
    if not GPU:
        assert openmm_platform_for("auto") == ("CPU", {})
        assert torch_devices() == ["cpu"]


def test_version_lists_devices_and_platforms(cli):
    code, out, _err = cli("--version")
    assert code == 0
    lines = out.splitlines()
    assert any(line.strip().startswith("devices: cpu") for line in lines)
    assert any(line.strip().startswith("OpenMM platforms:") and "CPU" in line for line in lines)
