"""The internal-coordinate generator and its building blocks (the e3nn environment encoder, the
autoregressive internal-coordinate head, NeRF placement, unit tables), which the ``equivariant``
and ``vae`` generators are built on.

Part of :mod:`backmap.api`, the one surface plugins import."""
from __future__ import annotations

from backmap.icgen.encoder import Encoder, mlp  # noqa: F401
from backmap.icgen.generator import InternalCoordinateGenerator  # noqa: F401
from backmap.icgen.head import N_OUT, Head, ICDistribution  # noqa: F401
from backmap.icgen.inference import repeat_rows  # noqa: F401
from backmap.icgen.nerf import frame, internal, place  # noqa: F401
from backmap.icgen.params import EquivariantParams  # noqa: F401
from backmap.icgen.tables import bond_lengths  # noqa: F401

__all__ = ["Encoder", "EquivariantParams", "Head", "ICDistribution", "InternalCoordinateGenerator", "N_OUT",
           "bond_lengths", "frame", "internal", "mlp", "place", "repeat_rows"]
