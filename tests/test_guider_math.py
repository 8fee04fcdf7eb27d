"""CI tests (no ComfyUI) of the Posterior Guider's math in ``nodes/guidance.py``."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "nodes" / "guidance.py"
# Loaded by path: inside ComfyUI (and in some environments) the name ``nodes`` is ComfyUI's own module.
_spec = importlib.util.spec_from_file_location("equireg_nodes_guidance", _PATH)
guidance = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guidance)


def _k(sigma: float, flow: bool) -> float:
    a, b = (1.0 - sigma, sigma) if flow else (1.0, sigma)
    return math.hypot(a, b)


@pytest.mark.parametrize("flow", [False, True])
def test_euler_step_with_corrected_denoised_is_a_dps_step(flow: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 7, generator=g, dtype=torch.float64)
    x0 = torch.randn(3, 4, 5, 7, generator=g, dtype=torch.float64)
    grad = torch.randn(3, 4, 5, 7, generator=g, dtype=torch.float64)
    if flow:
        sigma, sigma_next = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.7, 0.3, 0.0])
    else:
        sigma, sigma_next = torch.tensor([14.6, 3.0, 0.4]), torch.tensor([9.0, 1.5, 0.0])
    zeta = 0.37
    c = guidance.dps_denoised_correction(grad, sigma, sigma_next, zeta, flow)
    guided = guidance.euler_step(x, x0 + c, sigma, sigma_next)
    # DPS update on our state: Euler(x, x0) - zeta * k(sigma) * k(sigma') * grad (samplers.solvers.common)
    for i in range(3):
        s, sn = float(sigma[i]), float(sigma_next[i])
        euler = x[i] + (sn - s) * (x[i] - x0[i]) / s
        expected = euler - zeta * _k(s, flow) * _k(sn, flow) * grad[i]
        torch.testing.assert_close(guided[i], expected, rtol=1e-10, atol=1e-10)


def test_correction_is_per_sample_and_scalar_sigmas_broadcast() -> None:
    grad = torch.ones(2, 1, 3, 3)
    both = guidance.dps_denoised_correction(grad, torch.tensor(2.0), torch.tensor(1.0), 1.0, flow=False)
    one = guidance.dps_denoised_correction(grad[:1], torch.tensor([2.0]), torch.tensor([1.0]), 1.0,
                                           flow=False)
    torch.testing.assert_close(both[0], one[0])
    torch.testing.assert_close(both[1], one[0])
    # value from the definition: -zeta * sqrt(1+4) * sqrt(1+1) * 2 / (2 - 1)
    assert float(one.flatten()[0]) == pytest.approx(-math.sqrt(5) * math.sqrt(2) * 2.0, rel=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_or_non_finite_step_size_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="step_size"):
        guidance.dps_denoised_correction(torch.ones(1, 1, 2, 2), torch.tensor([1.0]), torch.tensor([0.5]),
                                         bad, flow=False)
    with pytest.raises(ValueError, match="my_step"):
        guidance.check_step_size(bad, "my_step")


def test_step_size_type_is_checked() -> None:
    with pytest.raises(TypeError, match="step_size"):
        guidance.check_step_size("0.1")
    with pytest.raises(TypeError, match="step_size"):
        guidance.check_step_size(True)


def test_sigma_order_is_checked() -> None:
    with pytest.raises(ValueError, match="sigma > sigma_next"):
        guidance.dps_denoised_correction(torch.ones(1, 1, 2, 2), torch.tensor([0.5]), torch.tensor([0.5]),
                                         1.0, flow=False)


def test_schedule_position() -> None:
    sigmas = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    assert guidance.schedule_position(sigmas, 14.6) == (0, 4, pytest.approx(7.0))
    assert guidance.schedule_position(sigmas, 3.0) == (2, 4, pytest.approx(1.0))
    # an intermediate (second-order) evaluation belongs to the current interval
    assert guidance.schedule_position(sigmas, 2.0) == (2, 4, pytest.approx(1.0))
    assert guidance.schedule_position(sigmas, 1.0) == (3, 4, pytest.approx(0.0))
    # float32 round-off of the current sigma still finds its step
    assert guidance.schedule_position(sigmas, 7.0 * (1 + 1e-6)) == (1, 4, pytest.approx(3.0))
    assert guidance.schedule_position(None, 5.0) == (0, 1, 0.0)


def test_vp_scale_matches_definition() -> None:
    s = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(guidance.vp_scale(s, flow=False), torch.sqrt(1 + s * s))
    torch.testing.assert_close(guidance.vp_scale(s, flow=True), torch.sqrt((1 - s) ** 2 + s * s))
