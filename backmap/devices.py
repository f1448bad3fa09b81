"""Where computations can run: the torch devices and OpenMM platforms this machine offers, and the
``--device`` / recipe ``device`` setting resolved to one of them with a clear error when it is not
there (e.g. ``cuda`` under a CPU build of torch).

``auto`` is the first GPU when torch sees one, else the CPU; ``cpu``; ``cuda`` (= ``cuda:0``) or
``cuda:N``. Models are written device-independent (every tensor moved to the CPU), so a model
trained on one loads on the other. torch and OpenMM are imported on first use."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from backmap.errors import BackmapError

if TYPE_CHECKING:
    import torch

#: what ``--device`` accepts
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"
#: the OpenMM platforms a GPU device maps onto, in order of preference
GPU_PLATFORMS = ("CUDA", "OpenCL")


def check_device_name(value: str) -> str:
    """``value`` if it is a device name ``--device`` accepts (for pydantic validators)."""
    if not isinstance(value, str) or not re.fullmatch(DEVICE_PATTERN, value.strip().lower()):
        raise ValueError(f"{value!r} is not a device: expected auto, cpu, cuda or cuda:N")
    return value.strip().lower()


def _torch_build() -> str:
    import torch

    cuda = torch.version.cuda
    return f"torch {torch.__version__} ({'CUDA ' + cuda if cuda else 'a CPU-only build'})"


def resolve_device(name: str = "auto", where: str = "--device") -> "torch.device":
    """The torch device ``name`` designates on this machine; an error naming ``where`` when it is
    not there."""
    import torch

    try:
        name = check_device_name(name)
    except ValueError as exc:
        raise BackmapError(f"{where}: {exc}") from None
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    index = int(name.partition(":")[2] or 0)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        seen = f"{count} CUDA device{'s' if count != 1 else ''}" if count else "no CUDA device"
        raise BackmapError(f"{where} {name}: {_torch_build()} sees {seen}; use --device cpu (or auto)")
    return torch.device(f"cuda:{index}")


def torch_devices() -> list[str]:
    """The torch devices this machine offers: ``cpu`` and each visible ``cuda:N`` with its name."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{k} ({torch.cuda.get_device_name(k)})" for k in range(torch.cuda.device_count())]
    return found


def openmm_platforms() -> list[str]:
    """The OpenMM platforms installed (Reference, CPU, and CUDA/OpenCL where their plugins load)."""
    try:
        import openmm as mm
    except ImportError:
        return []
    return [mm.Platform.getPlatform(k).getName() for k in range(mm.Platform.getNumPlatforms())]


def openmm_platform_for(choice: str, device: str = "auto", where: str = "platform") -> tuple[str, dict[str, str]]:
    """The OpenMM platform name and properties for a refiner's ``platform`` choice: ``auto``
    follows ``device`` (a GPU: CUDA, else OpenCL, in mixed precision on its index; the CPU: the CPU
    platform); a named platform must be installed."""
    installed = openmm_platforms()
    if choice == "auto":
        torch_device = resolve_device(device, where)
        if torch_device.type == "cuda":
            for name in GPU_PLATFORMS:
                if name in installed:
                    index = str(torch_device.index or 0)
                    return name, {"Precision": "mixed", ("CudaDeviceIndex" if name == "CUDA" else "OpenCLDeviceIndex"):
                                  index}
        return "CPU", {}
    if choice not in installed:
        raise BackmapError(f"{where}: OpenMM platform {choice!r} is not installed here (installed: "
                           f"{', '.join(installed) or 'none'})")
    return choice, {"Precision": "mixed"} if choice in GPU_PLATFORMS else {}
