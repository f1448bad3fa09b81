"""Training: data, options, the loop's context, regularizer samples, reverse KL, von Mises draws.

Part of :mod:`backmap.api`, the one surface plugins import."""
from __future__ import annotations

from backmap.training.data import FitContext, TrainOptions, TrainingData  # noqa: F401
from backmap.training.sequences import BeadSequences  # noqa: F401
from backmap.training.sequence_store import SequenceStore  # noqa: F401
from backmap.training.regularization import RegularizerSample, Schedule  # noqa: F401
from backmap.training.reverse_kl import ReverseKLOptions, ReverseKLTrainer, Target  # noqa: F401
from backmap.training.von_mises import sample_von_mises  # noqa: F401
from backmap.training.temporal_twist import choose_twist  # noqa: F401
from backmap.training.distributed import current_group  # noqa: F401
from backmap.training.energies import LocalEnergies  # noqa: F401
from backmap.training.loop import TrainingBatch, TrainingLoop, TrainsWithoutData  # noqa: F401

__all__ = ['BeadSequences', 'FitContext', 'LocalEnergies', 'RegularizerSample', 'ReverseKLOptions', 'ReverseKLTrainer', 'Schedule', 'SequenceStore', 'Target', 'TrainOptions', 'TrainingBatch', 'TrainingData', 'TrainingLoop', 'TrainsWithoutData', 'choose_twist', 'current_group', 'sample_von_mises']
