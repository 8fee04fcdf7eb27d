"""The separate EquiReg optimisation phase used with SITCOM (solvers.md §2.5, §2.7).

After SITCOM's data-consistency optimisation returns x0_hat, EquiReg runs ``num_steps`` Adam steps on
x0_hat that minimise the penalty alone (no data term). Differences from the released library, on
purpose: the schedule is evaluated once with the *sampler* step (the released code passed the phase
iteration as the step); each iteration builds a fresh graph (no ``retain_graph``); the gradient is
taken with respect to x only, so f's parameters never accumulate ``.grad``; and the per-sample
penalties are summed, so (Adam being elementwise) every sample of a batch follows the trajectory it
would follow alone.
"""

from __future__ import annotations

import torch

from .regularizer import EquiReg

__all__ = ["equi_phase"]


def equi_phase(
    reg: EquiReg,
    x: torch.Tensor,
    step: int,
    total_steps: int | None = None,
    num_steps: int = 30,
    lr: float = 0.02,
) -> torch.Tensor:
    """Minimise ``reg(x).sum()`` over x with Adam; returns a detached tensor of x's dtype and device.

    If ``reg.is_active(step, total_steps)`` is False, x is returned unchanged (detached). Runs with
    gradients enabled even inside ``torch.no_grad()``. Half-precision x is optimised in float32 (f then
    receives float32 input) and cast back at the end.
    """
    if not isinstance(reg, EquiReg):
        raise TypeError(f"equi_phase: reg must be an EquiReg, got {type(reg).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"equi_phase: x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"equi_phase: num_steps must be an int >= 0, got {num_steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not float(lr) > 0.0:
        raise ValueError(f"equi_phase: lr must be a number > 0, got {lr!r}")
    if not reg.is_active(step, total_steps) or num_steps == 0:
        return x.detach()

    work_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    var = x.detach().to(work_dtype).clone().requires_grad_(True)
    opt = torch.optim.Adam([var], lr=float(lr))
    with torch.enable_grad():
        for _ in range(num_steps):
            loss = reg(var, step, total_steps).sum()
            if not loss.requires_grad:
                raise ValueError("equi_phase: the penalty does not depend differentiably on x; f must be "
                                 "differentiable (not detached or run under torch.no_grad)")
            (grad,) = torch.autograd.grad(loss, var)
            var.grad = grad
            opt.step()
            var.grad = None
    return var.detach().to(x.dtype)
