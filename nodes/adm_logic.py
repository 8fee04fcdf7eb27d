"""Comfy-free parts of the pixel-space diffusion (ADM) nodes: options, checkpoint loading and the adapter
between our :class:`~samplers.models.ADMUNet` and ComfyUI's ``diffusion_model`` call.

Pure PyTorch: this module never imports ComfyUI (it is tested without it); :mod:`.adm` wraps what it
builds in ComfyUI's ``BaseModel`` / ``ModelPatcher`` / ``VAE``.

Pixel-space conventions: the model's "latents" are RGB images (B, 3, H, W) with values in [-1, 1]
(ComfyUI IMAGE values x in [0, 1] map to 2x - 1). The network is guided-diffusion's epsilon predictor on
the DDPM "linear" schedule, beta_t = linspace(1e-4, 0.02, 1000); checkpoints with a learned-range
variance (6 output channels) give the epsilon in their first 3 channels.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

# Relative imports: inside ComfyUI a bare `import samplers` would find ComfyUI's comfy/samplers.py.
from ..samplers.models import ADMUNet, adm_sigmas, load_adm_checkpoint
from ..samplers.models.adm import CONFIG_METADATA_KEY

#: Folder under ComfyUI's ``models/`` that the pack registers for pixel-space checkpoints.
MODEL_FOLDER = "pixel_diffusion"
#: File types the loader lists (``.pt``/``.pth`` are read with ``torch.load(weights_only=True)``).
MODEL_EXTENSIONS = (".pt", ".pth", ".safetensors")
#: Choices of the loader's weight_dtype widget.
WEIGHT_DTYPES = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: guided-diffusion's "linear" schedule (DPS FFHQ and OpenAI ImageNet 256x256 checkpoints).
NUM_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02
#: Image channels of a pixel-space model (RGB).
PIXEL_CHANNELS = 3
#: num_head_channels default of every public 256x256 ADM checkpoint.
DEFAULT_HEAD_CHANNELS = 64


def schedule_sigmas() -> torch.Tensor:
    """The 1000 discrete noise levels sigma_t = sqrt((1 - abar_t) / abar_t) of the ADM schedule, float64."""
    return adm_sigmas(NUM_TIMESTEPS, BETA_START, BETA_END, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------


def resolve_weight_dtype(
    choice: str, device: torch.device | str, launch_dtype: torch.dtype | None = None, bf16_ok: bool = True
) -> tuple[torch.dtype, str | None]:
    """The weight dtype for the loader's ``weight_dtype`` widget, and a note for the log (or None).

    ``device`` is where the model will run. Half precision is used only where it was asked for and only
    on an accelerator (GPU): ``fp16``/``bf16`` on a CPU fall back to float32 (slow and inexact there),
    ``bf16`` on a device without bfloat16 support (``bf16_ok`` False) too. ``auto`` is float32 unless
    ComfyUI was launched with ``--fp16-unet`` / ``--bf16-unet`` (``launch_dtype``) on an accelerator.
    The loss of the posterior solvers is computed in float32 whatever the weights are.
    """
    if choice not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype: expected one of {', '.join(WEIGHT_DTYPES)}, got {choice!r}")
    device = torch.device(device)
    accelerator = device.type != "cpu"
    if choice == "auto":
        if launch_dtype in (torch.float16, torch.bfloat16) and accelerator:
            choice = "fp16" if launch_dtype == torch.float16 else "bf16"
        else:
            return torch.float32, None
    wanted = _DTYPES[choice]
    if wanted == torch.float32:
        return wanted, None
    if not accelerator:
        return torch.float32, (f"weight_dtype {choice}: half precision is only used on a GPU; the model "
                               f"runs on {device.type}, so its weights stay float32")
    if wanted == torch.bfloat16 and not bf16_ok:
        return torch.float32, (f"weight_dtype bf16: {device} does not support bfloat16; using float32 "
                               "(fp16 is another option)")
    return wanted, None


def check_num_head_channels(value: Any) -> int:
    """Validate the num_head_channels widget: an int >= 1, or -1 (a fixed number of heads per block)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"num_head_channels: expected an int, got {type(value).__name__}")
    if value != -1 and value < 1:
        raise ValueError(f"num_head_channels: expected -1 or an int >= 1, got {value}")
    return value


def saved_config(path: str | os.PathLike[str]) -> dict | None:
    """The architecture config stored in a ``.safetensors`` file by ``save_adm_safetensors`` (header only),
    or None (``.pt``/``.pth`` files and foreign safetensors carry none)."""
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
    if CONFIG_METADATA_KEY not in metadata:
        return None
    try:
        return json.loads(metadata[CONFIG_METADATA_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: metadata {CONFIG_METADATA_KEY!r} is not valid JSON ({err})") from err


def check_head_channels_against_file(num_head_channels: int, saved: dict | None, name: str) -> None:
    """ValueError when the widget contradicts the head split recorded in the file (attention would be
    computed with the wrong heads: finite but wrong outputs)."""
    if saved is None or "num_head_channels" not in saved:
        return
    stored = saved["num_head_channels"]
    if stored != num_head_channels:
        raise ValueError(f"num_head_channels: {name} was saved with num_head_channels={stored}, but the "
                         f"node asks for {num_head_channels}; set num_head_channels to {stored}")


def check_pixel_adm(unet: ADMUNet, name: str) -> None:
    """Accept only what the pixel-space MODEL supports: an unconditional RGB epsilon model (3 output
    channels, or 6 with a learned-range variance)."""
    c = unet.config
    if c.in_channels != PIXEL_CHANNELS:
        raise ValueError(f"{name}: the network takes {c.in_channels}-channel inputs; the pixel-space loader "
                         f"expects an RGB model ({PIXEL_CHANNELS} channels)")
    if c.out_channels not in (PIXEL_CHANNELS, 2 * PIXEL_CHANNELS):
        raise ValueError(f"{name}: the network has {c.out_channels} output channels; expected "
                         f"{PIXEL_CHANNELS} (epsilon) or {2 * PIXEL_CHANNELS} (epsilon + learned variance)")
    if c.num_classes is not None:
        raise ValueError(f"{name}: this is a class-conditional ADM ({c.num_classes} classes); the loader "
                         "supports unconditional checkpoints (e.g. 256x256_diffusion_uncond.pt, ffhq_10m.pt)")


def load_pixel_adm(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32, num_head_channels: int = 64,
    gradient_checkpointing: bool = False, name: str | None = None,
) -> ADMUNet:
    """Load an unconditional pixel-space ADM checkpoint on the CPU, in eval mode, in ``dtype``.

    ``.pt``/``.pth`` are read with ``torch.load(weights_only=True)`` (files that need pickled code are
    refused), ``.safetensors`` directly; the architecture comes from the keys and shapes, the head split
    from ``num_head_channels`` (which must agree with a config stored in the file). With
    ``gradient_checkpointing`` every ResBlock/AttentionBlock recomputes its activations in the backward
    pass (only when gradients are on: plain sampling is unaffected).
    """
    name = name or os.path.basename(os.fspath(path))
    check_num_head_channels(num_head_channels)
    if not isinstance(gradient_checkpointing, bool):
        raise TypeError(f"gradient_checkpointing: expected a bool, "
                        f"got {type(gradient_checkpointing).__name__}")
    check_head_channels_against_file(num_head_channels, saved_config(path), name)
    unet = load_adm_checkpoint(path, device="cpu", dtype=dtype, num_head_channels=num_head_channels)
    check_pixel_adm(unet, name)
    unet.use_checkpoint = gradient_checkpointing
    return unet.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------
# The diffusion_model adapter
# ---------------------------------------------------------------------------------------------------


class ComfyADMDiffusionModel(nn.Module):
    """Adapts :class:`ADMUNet` to the call ComfyUI's ``BaseModel`` makes:
    ``diffusion_model(x, timesteps, context=None, control=None, transformer_options={}, **conds)``.

    Returns the epsilon prediction (B, 3, H, W) in the dtype of ``x`` (the first half of a learned-range
    variance output). ``context`` (the placeholder conditioning of the loader) and
    ``transformer_options`` are ignored: the network is unconditional and has no patchable transformer.
    ControlNets and unknown conditioning inputs are refused with a clear error.
    """

    def __init__(self, unet: ADMUNet) -> None:
        super().__init__()
        if not isinstance(unet, ADMUNet):
            raise TypeError(f"ComfyADMDiffusionModel: expected an ADMUNet, got {type(unet).__name__}")
        self.unet = unet

    @property
    def dtype(self) -> torch.dtype:
        """Weight dtype (ComfyUI's ``BaseModel.get_dtype`` reads it and casts x to it)."""
        return self.unet.dtype

    @property
    def eps_channels(self) -> int:
        return self.unet.config.in_channels

    def _check_device(self, x: torch.Tensor) -> None:
        # ComfyUI's partial ("lowvram") loading only offloads its own ops layers; a plain module left on
        # the offload device would fail deep inside a conv with an unhelpful message.
        for p in self.unet.parameters():
            if p.device != x.device:
                raise RuntimeError(
                    f"the pixel-space ADM model is only partly on {x.device} (a weight is on {p.device}): "
                    "it must fit on the GPU entirely. Free GPU memory (unload other models), use "
                    "weight_dtype fp16/bf16, or launch ComfyUI with --highvram / --gpu-only")

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Any = None, control: Any = None,
                transformer_options: dict | None = None, **kwargs: Any) -> torch.Tensor:
        if kwargs:
            raise TypeError(f"pixel-space ADM model: unsupported conditioning input(s) {sorted(kwargs)}; it "
                            "takes only the image and the timestep (valid: context, control=None, "
                            "transformer_options)")
        if control is not None:
            raise ValueError("pixel-space ADM model: ControlNets are not supported")
        self._check_device(x)
        out = self.unet(x, timesteps)
        return out[:, : self.eps_channels]


def model_size_note(unet: ADMUNet) -> str:
    """One line for the log: parameters, dtype, config summary."""
    c = unet.config
    params = sum(p.numel() for p in unet.parameters())
    heads = f"{c.num_head_channels} ch/head" if c.num_head_channels != -1 else f"{c.num_heads} heads"
    return (f"ADM {params / 1e6:.1f} M params, {str(unet.dtype).replace('torch.', '')}, "
            f"{c.model_channels} ch x {list(c.channel_mult)}, {c.num_res_blocks} res blocks, attention at "
            f"ds {list(c.attention_ds)} ({heads}), {'learned' if c.learn_sigma else 'fixed'} variance, "
            f"gradient checkpointing {'on' if unet.use_checkpoint else 'off'}")

