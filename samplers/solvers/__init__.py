"""Posterior solvers with ComfyUI's KSAMPLER contract.

Every solver is ``fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)``;
``model(x, sigma * s_in, **extra_args)`` returns the denoised x0. Options: the common ones in
:data:`samplers.solvers.common.COMMON_OPTIONS` (``operator`` and ``measurement`` required) plus each
solver's own (:func:`solver_options`). Unknown options raise ``TypeError``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .common import (
    COMMON_OPTION_DOCS,
    COMMON_OPTIONS,
    Strategy,
    flow_noise_scaling,
    run_solver,
    ve_noise_scaling,
)
from .daps import DAPS
from .dps import DPS
from .psld import PSLD
from .resample import ReSample
from .sitcom import SITCOM
from .unconditional import Unconditional

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (DPS, PSLD, ReSample, SITCOM, DAPS, Unconditional)
}


def _make_solver(cls: type[Strategy]) -> Callable[..., Any]:
    @functools.wraps(run_solver)
    def solver(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        return run_solver(cls, model, x, sigmas, extra_args=extra_args, callback=callback,
                          disable=disable, **options)

    solver.__name__ = f"sample_{cls.name}"
    solver.__qualname__ = solver.__name__
    solver.__doc__ = cls.__doc__ or (__import__(cls.__module__, fromlist=["_"]).__doc__)
    return solver


#: name -> solver function (KSAMPLER contract)
SOLVERS: dict[str, Callable[..., Any]] = {name: _make_solver(cls) for name, cls in STRATEGIES.items()}


def get_solver(name: str) -> Callable[..., Any]:
    """The solver function called ``name``; unknown names raise ValueError listing the valid ones."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; valid solvers are {sorted(SOLVERS)}") from None


def solver_options(name: str) -> dict[str, Any]:
    """The solver-specific options of ``name`` with their defaults."""
    get_solver(name)
    return dict(STRATEGIES[name].options)


def solver_option_docs(name: str) -> dict[str, str]:
    """One-line descriptions of the solver-specific options of ``name`` (tooltips)."""
    get_solver(name)
    return dict(STRATEGIES[name].option_docs)


__all__ = [
    "COMMON_OPTIONS",
    "COMMON_OPTION_DOCS",
    "SOLVERS",
    "STRATEGIES",
    "flow_noise_scaling",
    "get_solver",
    "run_solver",
    "solver_option_docs",
    "solver_options",
    "ve_noise_scaling",
]
