"""EquiReg: equivariance regularization for diffusion posterior sampling (pure PyTorch).

Three orthogonal pieces compose the penalty: an MPE function f (:mod:`.mpe`), a group of spatial
transforms (:mod:`.groups`) and a schedule (:mod:`.schedules`); :class:`EquiReg` combines them with a
form (``equi`` / ``equicon``) and a per-sample reduction (:mod:`.penalty`). :func:`equi_phase` is the
separate penalty-only optimisation used with SITCOM.
"""

from .groups import GROUPS, Group, get_group
from .mpe import (
    SmallCNN,
    decoder_mpe,
    encoder_after_decoder_mpe,
    encoder_mpe,
    load_mpe_cnn,
    save_mpe_cnn,
)
from .penalty import FEATURE_ACTIONS, FORMS, REDUCTIONS
from .phase import equi_phase
from .regularizer import EquiReg
from .schedules import SCHEDULES, Schedule

__all__ = [
    "FEATURE_ACTIONS",
    "FORMS",
    "GROUPS",
    "REDUCTIONS",
    "SCHEDULES",
    "EquiReg",
    "Group",
    "Schedule",
    "SmallCNN",
    "decoder_mpe",
    "encoder_after_decoder_mpe",
    "encoder_mpe",
    "equi_phase",
    "get_group",
    "load_mpe_cnn",
    "save_mpe_cnn",
]
