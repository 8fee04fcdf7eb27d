"""Posterior Guider node: a GUIDER that makes any built-in sampler (euler, dpmpp_2m, ...) measurement
guided, DPS style, for SamplerCustomAdvanced.

:class:`PosteriorGuider` subclasses ``comfy.samplers.CFGGuider`` and overrides ``predict_noise``: it
computes the CFG denoised x0 with gradients w.r.t. x, the DPS loss ``||y_i - A(decode(x0_i))||`` per image
(+ the EquiReg penalty), and returns x0 corrected so that an Euler step is a DPS step::

    x0_guided = x0 - zeta * k(sigma) * k(sigma') * sigma / (sigma - sigma') * grad_x loss

with ``k = sqrt(a^2 + b^2)`` of the noise space ``x = a x0 + b n`` (VE: ``a = 1, b = sigma``; flow:
``a = 1 - sigma, b = sigma``) and ``sigma'`` the next sigma of the schedule. Derivation: ComfyUI's Euler
step ``x' = x + (sigma' - sigma)(x - x0) / sigma`` moves by ``(sigma - sigma') / sigma * c`` when x0 gains
``c``; DPS on our state is ``x' = x'_uncond - zeta * k(sigma) k(sigma') * grad_x loss`` (the core's
convention, :mod:`samplers.solvers.common`); equating the two gives ``c``. Other samplers use the
corrected x0 in their own update (see :mod:`.guidance` for what that means for multistep, ancestral
and second-order samplers).

The guider clones the MODEL's patcher and attaches the VAE with ``set_additional_models``, so ComfyUI
loads both together; weights are made differentiable at the start of every sampling call (after
loading, which rebuilds them inside inference mode, e.g. with a LoRA).
"""

from __future__ import annotations

import logging
from typing import Any

import comfy.samplers
import torch
from comfy_api.latest import io

from . import comfy_bridge as bridge
from . import guidance
from .types import EquiRegSpec, EquiRegType, MeasurementType

CATEGORY = "EquiReg/sampling"
log = logging.getLogger("equireg")


class PosteriorGuider(comfy.samplers.CFGGuider):
    """CFG guider whose denoised estimate carries a DPS correction toward a measurement."""

    def __init__(self, model_patcher: Any, vae: Any, measurement: Any, step_size: float,
                 equireg: EquiRegSpec | None = None) -> None:
        bridge.check_vae(vae)
        bridge.check_measurement(measurement)
        self.step_size = guidance.check_step_size(step_size, "step_size")
        if equireg is not None and not isinstance(equireg, EquiRegSpec):
            raise TypeError(f"equireg: expected an EQUIREG (from the EquiReg Regularizer node), got "
                            f"{type(equireg).__name__}")
        self.vae = vae
        self.measurement = measurement
        self.equireg = equireg
        self.extra_vaes = bridge.equireg_vaes(equireg, vae)
        patcher = bridge.patcher_with_vae(model_patcher, vae)
        for i, v in enumerate(self.extra_vaes):
            patcher.set_additional_models(f"{bridge.ADDITIONAL_MODELS_KEY}_{i}", [v.patcher])
        super().__init__(patcher)
        self._run: dict[str, Any] | None = None

    # ComfyUI calls inner_sample once per sampling call, after prepare_sampling loaded the model and the
    # VAE (additional models): the right moment to convert weights and build the run's objects.
    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar,
                     seed):
        bridge.check_attention_backend()
        base = self.inner_model
        bridge.make_differentiable(base, self.vae, self.extra_vaes)
        codec = bridge.VaeCodec(base, self.vae)
        bridge.check_sizes(self.measurement, tuple(noise.shape), codec)
        with torch.inference_mode(False):
            operator = bridge.operator_for(self.measurement, noise.device)
            y = bridge.measurement_tensor(self.measurement, noise.shape[0], noise.device)
            reg = bridge.bind_equireg(self.equireg, codec, noise.device)
        self._run = {"codec": codec, "operator": operator, "y": y, "equireg": reg,
                     "flow": bridge.is_flow(base.model_sampling), "warned": False}
        try:
            with bridge.explain_gradient_errors():
                return super().inner_sample(noise, latent_image, device, sampler, sigmas, denoise_mask,
                                            callback, disable_pbar, seed)
        finally:
            self._run = None

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - CFGGuider's signature
        bridge.throw_if_interrupted()
        run = self._run
        if run is None:  # called outside a sampling call (should not happen): plain CFG
            return super().predict_noise(x, timestep, model_options, seed)
        sigma = float(timestep.reshape(-1)[0])
        schedule = (model_options.get("transformer_options") or {}).get("sample_sigmas")
        if schedule is None and not run["warned"]:
            log.warning("EquiReg guider: no sigma schedule in model_options; the DPS step is scaled as "
                        "if this "
                        "were the last step")
            run["warned"] = True
        step, total, sigma_next = guidance.schedule_position(schedule, sigma)

        with torch.inference_mode(False), torch.enable_grad():
            x_leaf = x.detach().clone().requires_grad_(True)
            denoised = super().predict_noise(x_leaf, timestep.detach().clone(), model_options, seed)
            img = run["codec"].decode(denoised)
            y = run["y"]
            if y.shape[0] != x.shape[0]:  # a sampler evaluated a sub-batch (never in ComfyUI's samplers)
                raise ValueError(f"measurement: batch {y.shape[0]} does not match the evaluated batch "
                                 f"{x.shape[0]}")
            residual = (run["operator"](img.float()) - y).reshape(x.shape[0], -1)
            loss = residual.norm(dim=1)
            reg = run["equireg"]
            if reg is not None and reg.is_active(step, total):
                loss = loss + reg(denoised, step, total).float()
            (grad,) = torch.autograd.grad(loss.sum(), x_leaf)
            sigmas_now = torch.full((x.shape[0],), sigma, dtype=torch.float64)
            sigmas_next = torch.full((x.shape[0],), sigma_next, dtype=torch.float64)
            correction = guidance.dps_denoised_correction(grad.float(), sigmas_now, sigmas_next,
                                                          self.step_size, run["flow"])
            out = denoised.detach() + correction.to(denoised.dtype)
        if not torch.isfinite(out).all():
            raise FloatingPointError("EquiReg guider: the guided estimate became NaN/Inf at sigma "
                                     f"{sigma:.4g}; "
                                     f"lower step_size (now {self.step_size})")
        return out


class EquiRegPosteriorGuider(io.ComfyNode):
    """GUIDER adding DPS guidance toward a measurement inside any built-in sampler."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EquiRegPosteriorGuider",
            display_name="EquiReg Posterior Guider",
            category=CATEGORY,
            description="A GUIDER (CFG + DPS measurement guidance) for SamplerCustomAdvanced: any built-in "
                        "sampler (euler, dpmpp_2m, ...) then restores the image behind the MEASUREMENT. The "
                        "correction is calibrated so that one Euler step is one DPS step of size step_size.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (any checkpoint; LoRAs allowed)."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning (e.g. a description of the "
                                                          "image)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                io.Float.Input("cfg", default=3.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (gradients flow through both "
                                       "branches)."),
                MeasurementType.Input("measurement",
                                      tooltip="The measurement y and its operator. One per image, or one for "
                                              "the whole batch."),
                io.Vae.Input("vae", tooltip="The VAE of the model, used to decode the estimate for the "
                                            "data term."),
                io.Float.Input("step_size", default=0.3, min=0.0001, max=1000.0, step=0.001,
                               tooltip="zeta, the DPS step size (reference: 0.3 super-resolution/deblurring, "
                                       "0.5 inpainting, 1.0 phase retrieval). Must be > 0."),
                EquiRegType.Input("equireg", optional=True,
                                  tooltip="Optional EquiReg regularizer (EquiReg Regularizer node)."),
            ],
            outputs=[io.Guider.Output(display_name="GUIDER")],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg: float, measurement, vae, step_size: float,
                equireg=None) -> io.NodeOutput:
        bridge.check_attention_backend()
        guider = PosteriorGuider(model, vae, measurement, step_size, equireg)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)


NODES = [EquiRegPosteriorGuider]
