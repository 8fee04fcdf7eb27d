"""Posterior Sampler node: a SAMPLER (for SamplerCustom / SamplerCustomAdvanced, any scheduler) that runs
one of the core posterior solvers (DPS, PSLD, ReSample, SITCOM, DAPS) with a MEASUREMENT, a VAE and an
optional EQUIREG.

The node returns ``comfy.samplers.KSAMPLER(sample_posterior, extra_options={...})``. ComfyUI calls
:func:`sample_posterior` with the k-diffusion contract (``model(x, sigma * s_in, **extra_args)`` returns
the CFG-mixed denoised x0 in the model's latent space); it loads the VAE with the model, makes the
weights differentiable (:mod:`.comfy_bridge`, on every call), builds the differentiable decoder/encoder,
the noise space, the regularizer and the per-image measurement, and runs the core solver with
KSAMPLER's callback (latent previews + progress bar) and a Cancel check before every model evaluation.

ComfyUI 0.3.64 has no dynamic combo, so the node shows every solver's parameters, named
``<solver>_<option>``; only the chosen solver's are used (each tooltip says which solver uses it).
"""

from __future__ import annotations

import math
from typing import Any

import comfy.samplers
import torch
from comfy_api.latest import io

from ..samplers.solvers import get_solver, solver_option_docs, solver_options
from . import comfy_bridge as bridge
from .types import EquiRegType, MeasurementType

CATEGORY = "EquiReg/sampling"

#: Solvers offered by the node, in menu order.
NODE_SOLVERS: tuple[str, ...] = ("dps", "psld", "resample", "sitcom", "daps")


def widget_name(solver: str, option: str) -> str:
    return f"{solver}_{option}"


def _float_step(default: float) -> float:
    """A widget step fine enough to show the default (the frontend rounds to the step's decimals)."""
    if default == 0:
        return 0.01
    return min(0.01, 10.0 ** (math.floor(math.log10(abs(default))) - 1))


def solver_inputs() -> list:
    """One widget per (solver, option), typed from the option's default."""
    inputs = []
    for solver in NODE_SOLVERS:
        docs = solver_option_docs(solver)
        for option, default in solver_options(solver).items():
            name = widget_name(solver, option)
            tip = f"{solver.upper()} only: {docs.get(option, option)}."
            if isinstance(default, bool):
                inputs.append(io.Boolean.Input(name, default=default, tooltip=tip))
            elif isinstance(default, int):
                inputs.append(io.Int.Input(name, default=default, min=0, max=1_000_000, tooltip=tip))
            elif isinstance(default, float):
                inputs.append(io.Float.Input(name, default=default, min=0.0, max=1e6,
                                             step=_float_step(default), tooltip=tip))
            else:  # pragma: no cover - the core only has numeric/bool options
                raise TypeError(f"solver {solver}: option {option} has an unsupported default {default!r}")
    return inputs


def options_for(solver: str, widgets: dict[str, Any]) -> dict[str, Any]:
    """The chosen solver's options from the node's widget values (``<solver>_<option>`` names)."""
    if solver not in NODE_SOLVERS:
        raise ValueError(f"solver: unknown solver {solver!r}; valid solvers: {', '.join(NODE_SOLVERS)}")
    out = {}
    for option, default in solver_options(solver).items():
        name = widget_name(solver, option)
        value = widgets.get(name, default)
        if isinstance(default, bool):
            value = bool(value)
        elif isinstance(default, int):
            value = int(value)
        else:
            value = float(value)
        out[option] = value
    return out


def check_solver_options(solver: str, options: dict[str, Any]) -> None:
    """Early validation (at the node, not mid-sampling) with the widget name in the message."""
    for option, value in options.items():
        name = widget_name(solver, option)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: must be a finite number, got {value}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"{name}: must be >= 0, got {value}")
    positive = {
        "dps": ("step_size",),
        "resample": ("gamma", "pixel_lr", "latent_lr", "interval", "inter_steps"),
        "sitcom": ("lr",),
        "daps": ("lr", "tau", "sigma_min", "langevin_steps", "ode_steps"),
    }.get(solver, ())
    for option in positive:
        if option in options and not options[option] > 0:
            raise ValueError(f"{widget_name(solver, option)}: must be > 0 (a non-positive step size or count "
                             f"does nothing), got {options[option]}")


# ---------------------------------------------------------------------------------------------------
# The KSAMPLER function
# ---------------------------------------------------------------------------------------------------


def sample_posterior(model, x, sigmas, extra_args=None, callback=None, disable=None, *, equireg_posterior):
    """KSAMPLER sampler function (k-diffusion contract) running the configured core solver in ComfyUI."""
    cfg: dict[str, Any] = equireg_posterior
    bridge.check_attention_backend()
    guider = model.inner_model  # KSamplerX0Inpaint -> CFGGuider
    base = guider.inner_model  # -> BaseModel
    vae = cfg["vae"]
    measurement: Any = cfg["measurement"]
    spec = cfg["equireg"]

    extra_vaes = bridge.equireg_vaes(spec, vae)
    # Load first, then convert: loading and LoRA patching rebuild weights as inference tensors.
    bridge.load_model_and_vae(guider.model_patcher, vae, extra_vaes)
    bridge.make_differentiable(base, vae, extra_vaes)

    codec = bridge.VaeCodec(base, vae)
    bridge.check_sizes(measurement, tuple(x.shape), codec)
    device = x.device
    with torch.inference_mode(False):
        operator = bridge.operator_for(measurement, device)
        y = bridge.measurement_tensor(measurement, x.shape[0], device)
        reg = bridge.bind_equireg(spec, codec, device)
        solver = get_solver(cfg["solver"])
        # Everything the solver creates must be a normal tensor: it clones, re-leafs and optimises its
        # own tensors (grad parts switch autograd on locally).
        with torch.no_grad(), bridge.explain_gradient_errors():
            out = solver(
                bridge.interruptible_model(model), x.clone(), sigmas.clone(), extra_args=extra_args,
                callback=bridge.step_callback(callback), disable=disable,
                operator=operator, measurement=y, decode=codec.decode, encode=codec.encode, equireg=reg,
                noise_scaling=bridge.noise_scaling_for(base.model_sampling),
                sigma_y=float(measurement.sigma_y), **cfg["options"],
            )
    return out


def make_sampler(solver: str, options: dict[str, Any], measurement: Any, vae: Any, equireg: Any = None):
    """The SAMPLER object (``comfy.samplers.KSAMPLER``) for the given solver, options and inputs."""
    bridge.check_measurement(measurement)
    bridge.check_vae(vae)
    if equireg is not None:
        from .types import EquiRegSpec

        if not isinstance(equireg, EquiRegSpec):
            raise TypeError(f"equireg: expected an EQUIREG (from the EquiReg Regularizer node), got "
                            f"{type(equireg).__name__}")
    check_solver_options(solver, options)
    config = {"solver": solver, "options": dict(options), "measurement": measurement, "vae": vae,
              "equireg": equireg}
    return comfy.samplers.KSAMPLER(sample_posterior, extra_options={"equireg_posterior": config})


class EquiRegPosteriorSampler(io.ComfyNode):
    """SAMPLER for posterior sampling with a measurement (DPS, PSLD, ReSample, SITCOM, DAPS)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EquiRegPosteriorSampler",
            display_name="EquiReg Posterior Sampler",
            category=CATEGORY,
            description="A SAMPLER that restores the image behind a MEASUREMENT by diffusion posterior "
                        "sampling: connect it to SamplerCustom or SamplerCustomAdvanced with any scheduler. "
                        "The VAE decodes the model's estimate for the data term (gradients flow through the "
                        "UNet/DiT and the decoder; ComfyUI must not use flash/sage attention). EQUIREG adds "
                        "the equivariance regularizer. Only the parameters of the chosen solver are used.",
            inputs=[
                io.Combo.Input("solver", options=list(NODE_SOLVERS), default="dps",
                               tooltip="Posterior solver: dps (gradient through the model, any operator), "
                                       "psld (DPS + encoder gluing, linear operators), resample (hard data "
                                       "consistency + stochastic resampling), sitcom (input optimisation), "
                                       "daps (annealed Langevin on x0)."),
                MeasurementType.Input("measurement",
                                      tooltip="The measurement y and its operator (EquiReg Simulate "
                                              "Measurement or Measurement from Image). One per image, or one "
                                              "for the whole batch."),
                io.Vae.Input("vae", tooltip="The VAE of the model: decodes the model's estimate to "
                                            "compare it "
                                            "with the measurement (used directly, without clamping or "
                                            "tiling)."),
                EquiRegType.Input("equireg", optional=True,
                                  tooltip="Optional EquiReg regularizer (EquiReg Regularizer node)."),
                *solver_inputs(),
            ],
            outputs=[io.Sampler.Output(display_name="SAMPLER")],
        )

    @classmethod
    def execute(cls, solver: str, measurement, vae, equireg=None, **widgets) -> io.NodeOutput:
        bridge.check_attention_backend()
        options = options_for(solver, widgets)
        return io.NodeOutput(make_sampler(solver, options, measurement, vae, equireg))


NODES = [EquiRegPosteriorSampler]
