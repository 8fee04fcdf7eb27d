"""The EquiReg regularizer: an MPE function f, a group and a schedule composed into a penalty.

``EquiReg(f, group="hflip", form="equi", alpha=0.01, ...)(x, step, total_steps)`` returns
``alpha * penalty_i`` for every sample i of the batch x (shape (B,)). Solvers add its sum to their
data-consistency loss before differentiating (summing per-sample terms keeps the samples of a batch
independent; see :mod:`samplers.equireg.penalty` for the relation to the released library's
whole-batch norm).

x is whatever f takes: a (B, C, H, W) image in [-1, 1] for an image-space f (e.g. a CNN feature
extractor or a VAE encoder), or a latent for a latent-space f (e.g. a decoder, or encoder after
decoder for ``equicon``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .groups import Group, get_group
from .penalty import (
    FEATURE_ACTIONS,
    FORMS,
    REDUCTIONS,
    apply_feature_action,
    check_choice,
    equivariance_difference,
    reduce_per_sample,
    resolve_feature_action,
)
from .schedules import Schedule

__all__ = ["EquiReg"]

MPEFunction = Callable[[torch.Tensor], torch.Tensor]

# The options accepted by the constructor and by from_config, with their defaults.
_OPTIONS: dict[str, Any] = {
    "group": "hflip",
    "form": "equi",
    "alpha": 0.01,
    "freq": 1.0,
    "schedule": "every",
    "cutoff_steps": 0,
    "reduction": "norm",
    "feature_action": "auto",
    "seed": 0,
}


def _result_dtype(x: torch.Tensor) -> torch.dtype:
    # Penalties are reduced in at least float32 (see reduce_per_sample); half inputs give float32.
    return torch.promote_types(x.dtype, torch.float32)


class EquiReg:
    """Equivariance regularizer.

    Args:
        f: the MPE function, any callable mapping a batch (B, ...) to a batch (B, ...). See
            :mod:`samplers.equireg.mpe` for adapters and a small CNN feature extractor.
        group: ``hflip``, ``vflip``, ``rot90`` or ``rot180`` (or a :class:`Group`).
        form: ``equi`` (||rho(g) f(x) - f(T_g x)||) or ``equicon`` (||x - T_g^-1 f(T_g x)||).
        alpha: weight of the penalty (>= 0). ``alpha == 0`` switches the regularizer off.
        freq, schedule, cutoff_steps: when the penalty is applied (:mod:`samplers.equireg.schedules`).
        reduction: ``norm``, ``sqnorm`` or ``mse``, per sample.
        feature_action: ``auto``, ``spatial`` or ``invariant`` (how g acts on f's output).
        seed: seed of the ``random.Random`` that draws one group element per call (None: unseeded).

    Unknown keyword arguments are rejected with the list of valid ones.
    """

    OPTIONS: tuple[str, ...] = tuple(_OPTIONS)

    def __init__(
        self,
        f: MPEFunction,
        *,
        group: str | Group = "hflip",
        form: str = "equi",
        alpha: float = 0.01,
        freq: float = 1.0,
        schedule: str = "every",
        cutoff_steps: int = 0,
        reduction: str = "norm",
        feature_action: str = "auto",
        seed: int | None = 0,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise TypeError(
                f"EquiReg: unknown option(s) {', '.join(sorted(unknown))}; valid options: "
                f"{', '.join(self.OPTIONS)}"
            )
        if not callable(f):
            raise TypeError(f"EquiReg: f must be callable (the MPE function), got {type(f).__name__}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"EquiReg: alpha must be a number >= 0, got {alpha!r}")
        if not float(alpha) >= 0.0 or float(alpha) == float("inf"):
            raise ValueError(f"EquiReg: alpha must be a finite number >= 0, got {alpha}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"EquiReg: seed must be an int or None, got {seed!r}")
        self.f = f
        self.group = get_group(group)
        self.form = check_choice(form, FORMS, "form")
        self.alpha = float(alpha)
        self.schedule = Schedule(schedule, freq=freq, cutoff_steps=cutoff_steps)
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction")
        self.feature_action = check_choice(feature_action, FEATURE_ACTIONS, "feature_action")
        self.seed = seed
        self._rng = random.Random(seed)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(cls, config: Mapping[str, Any], f: MPEFunction) -> EquiReg:
        """Build from a dict of options (keys as in the constructor); unknown keys are rejected."""
        if not isinstance(config, Mapping):
            raise TypeError(f"EquiReg.from_config: config must be a mapping, got {type(config).__name__}")
        unknown = sorted(set(config) - set(_OPTIONS))
        if unknown:
            raise ValueError(
                f"EquiReg.from_config: unknown key(s) {', '.join(map(str, unknown))}; valid keys: "
                f"{', '.join(_OPTIONS)}"
            )
        return cls(f, **dict(config))

    def to_config(self) -> dict[str, Any]:
        """The options of this regularizer (``from_config(reg.to_config(), f)`` rebuilds it)."""
        return {
            "group": self.group.name,
            "form": self.form,
            "alpha": self.alpha,
            "freq": self.schedule.freq,
            "schedule": self.schedule.name,
            "cutoff_steps": self.schedule.cutoff_steps,
            "reduction": self.reduction,
            "feature_action": self.feature_action,
            "seed": self.seed,
        }

    def reseed(self, seed: int | None) -> None:
        """Restart the element draws from ``seed``."""
        self.seed = seed
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items())
        return f"EquiReg(f={self.f!r}, {opts})"

    # ------------------------------------------------------------------ evaluation
    def is_active(self, step: int, total_steps: int | None = None) -> bool:
        """Whether the penalty is applied at sampler step ``step`` (0-based, counting up)."""
        active = self.schedule.is_active(step, total_steps)  # validates step/total_steps always
        return active and self.alpha > 0.0

    def _element(self, element: int | None) -> int:
        if element is None:
            return self.group.sample(self._rng)
        return self.group.check_element(element)

    def difference(self, x: torch.Tensor, element: int | None = None) -> torch.Tensor:
        """The difference tensor d of the configured form (drawing an element if none is given)."""
        return equivariance_difference(
            self.f, x, self.group, self._element(element), self.form, self.feature_action
        )

    def equivariance_error(
        self, x: torch.Tensor, element: int | None = None, reduction: str | None = None
    ) -> torch.Tensor:
        """Per-sample error (B,) of the configured form, without alpha or schedule.

        ``element=None`` draws one element (shared by the batch) like :meth:`__call__`;
        ``reduction=None`` uses the regularizer's reduction.
        """
        reduction = self.reduction if reduction is None else check_choice(reduction, REDUCTIONS, "reduction")
        d = self.difference(x, element)
        return reduce_per_sample(d, reduction).to(_result_dtype(x))

    def error_map(self, x: torch.Tensor, element: int | None = None) -> torch.Tensor:
        """Per-pixel error map (B, 1, H', W'): the channel mean of |d|, for a heat map.

        Needs a spatial difference (an ``equicon`` f, or an ``equi`` f with spatial feature maps).
        For ``equi`` the map is pulled back by rho(g)^-1 so that it is aligned with x rather than
        with T_g x. H', W' are the spatial size of f's output (x's size for ``equicon``).
        """
        g = self._element(element)
        d = equivariance_difference(self.f, x, self.group, g, self.form, self.feature_action)
        if self.form == "equi":
            if resolve_feature_action(self.feature_action, d) != "spatial":
                raise ValueError(
                    f"error_map needs spatial features, but f returns shape {tuple(d.shape)} with "
                    f"feature_action={self.feature_action!r}; use equivariance_error for vector features"
                )
            d = apply_feature_action(self.group, d, self.group.inverse(g), "spatial")
        if d.dim() < 3:
            raise ValueError(f"error_map needs a spatial difference (ndim >= 3), got shape {tuple(d.shape)}")
        a = d.abs().to(_result_dtype(x))
        return a.reshape(a.shape[0], -1, a.shape[-2], a.shape[-1]).mean(dim=1, keepdim=True)

    def __call__(
        self,
        x: torch.Tensor,
        step: int,
        total_steps: int | None = None,
        *,
        element: int | None = None,
    ) -> torch.Tensor:
        """``alpha * penalty`` per sample, shape (B,).

        When the schedule is off at ``step`` or ``alpha == 0`` this returns exact zeros without
        evaluating f (and without drawing a group element). Otherwise one element is drawn from the
        group's ``sample_from`` with the seeded RNG (or ``element`` is used) and shared by the batch.
        The result dtype is x's dtype, or float32 for half-precision x.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"EquiReg: x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1:
            raise ValueError("EquiReg: x must have a batch dimension")
        if element is not None:
            self.group.check_element(element)  # bad elements fail even on inactive steps
        if not self.is_active(step, total_steps):
            return x.new_zeros(x.shape[0], dtype=_result_dtype(x))
        return self.alpha * self.equivariance_error(x, element=element)
