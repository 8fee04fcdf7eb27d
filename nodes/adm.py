"""Pixel-space diffusion models (guided-diffusion "ADM" UNets: DPS's ``ffhq_10m.pt``, OpenAI's
``256x256_diffusion_uncond.pt``) as ComfyUI MODELs, and the pixel-space VAE that goes with them.

Built from ComfyUI's public classes only:

- the MODEL is a ``comfy.model_base.BaseModel`` (EPS prediction, ``ModelSamplingDiscrete``) made from a
  model config (:class:`PixelADMModelConfig`, a ``supported_models_base.BASE``) whose sampling settings
  are the ADM "linear" schedule (ComfyUI calls ``linspace(1e-4, 0.02, 1000)`` ``sqrt_linear``; its
  ``linear`` is the Stable Diffusion one) and whose latent format is RGB in [-1, 1] with scale 1; its
  ``diffusion_model`` is :class:`.adm_logic.ComfyADMDiffusionModel` around our own ADMUNet, wrapped in a
  ``comfy.model_patcher.ModelPatcher``. Schedulers, KSampler, SamplerCustom(Advanced) and the EquiReg
  Posterior Sampler/Guider therefore work with it unchanged (the sampler bridge makes its weights
  differentiable like any other model's).
- the VAE is a real ``comfy.sd.VAE`` built exactly as ComfyUI's own ``VAELoader`` builds its
  ``pixel_space`` choice (``comfy.pixel_space_convert.PixelspaceConversionVAE``: identity encode/decode,
  IMAGE x in [0, 1] <-> latent 2x - 1, 3 channels, downscale 1), except that its dtype is forced to
  float32, so that the solvers' data term sees the model's estimate unrounded (ComfyUI would pick
  bfloat16 on many GPUs).

The loader also outputs a placeholder CONDITIONING: the models are unconditional, but KSampler and
SamplerCustom need positive/negative inputs. Use cfg 1.0 (with cfg 1 ComfyUI evaluates the model once).
"""

from __future__ import annotations

import logging
import os

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base
import folder_paths
import torch
from comfy.cli_args import args as comfy_args
from comfy_api.latest import io

from . import adm_logic

CATEGORY = "EquiReg/loaders"
log = logging.getLogger("equireg")


# ---------------------------------------------------------------------------------------------------
# Model folder (registered at import, so the loader's dropdown lists it)
# ---------------------------------------------------------------------------------------------------


def register_model_folder() -> str:
    """Register ``models/pixel_diffusion`` (first in the list) with the checkpoint extensions; keep any path
    that an ``extra_model_paths.yaml`` already added under that name. Returns the default folder."""
    default = os.path.join(folder_paths.models_dir, adm_logic.MODEL_FOLDER)
    existing = folder_paths.folder_names_and_paths.get(adm_logic.MODEL_FOLDER)
    paths = [p for p in (existing[0] if existing else []) if p != default]
    folder_paths.folder_names_and_paths[adm_logic.MODEL_FOLDER] = (
        [default, *paths], set(adm_logic.MODEL_EXTENSIONS))
    try:  # an empty folder shows users where the checkpoints go
        os.makedirs(default, exist_ok=True)
    except OSError:
        log.warning("EquiReg: could not create %s; create it and put the pixel-space checkpoints there",
                    default)
    return default


MODEL_FOLDER_PATH = register_model_folder()


# ---------------------------------------------------------------------------------------------------
# Model config, latent format, MODEL / VAE / CONDITIONING builders
# ---------------------------------------------------------------------------------------------------


class PixelSpaceLatentFormat(comfy.latent_formats.LatentFormat):
    """RGB "latents" in [-1, 1]: 3 channels, scale 1, no shift; previews show the image itself."""

    latent_channels = adm_logic.PIXEL_CHANNELS
    latent_dimensions = 2
    scale_factor = 1.0

    def __init__(self) -> None:
        # latent2rgb preview: identity colour map (the preview maps [-1, 1] to [0, 255] itself).
        self.latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        self.latent_rgb_factors_bias = None
        self.taesd_decoder_name = None


class PixelADMModelConfig(comfy.supported_models_base.BASE):
    """Model config of a pixel-space ADM (not registered for checkpoint detection: the loader node
    builds the model itself)."""

    unet_config = {"disable_unet_model_creation": True}  # the network is ours, built by the loader
    unet_extra_config: dict = {}
    # ComfyUI's "sqrt_linear" is betas = linspace(start, end): guided-diffusion's "linear" schedule.
    # (Kept in the config so that nodes rebuilding model_sampling from it, e.g. ModelSamplingDiscrete,
    # get the same schedule.)
    sampling_settings = {"beta_schedule": "sqrt_linear", "linear_start": adm_logic.BETA_START,
                         "linear_end": adm_logic.BETA_END, "timesteps": adm_logic.NUM_TIMESTEPS}
    latent_format = PixelSpaceLatentFormat
    # Activation memory per pixel relative to SD's per latent pixel (ComfyUI's reservation heuristic):
    # ADM runs 128-256 channels at full resolution against SD's 320 at 1/8 resolution.
    memory_usage_factor = 0.6
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]

    def inpaint_model(self) -> bool:
        return False


def build_model_patcher(unet, load_device: torch.device | None = None,
                        offload_device: torch.device | None = None) -> comfy.model_patcher.ModelPatcher:
    """A ComfyUI MODEL (ModelPatcher around an EPS BaseModel) running ``unet`` (an ADMUNet on the CPU)."""
    load_device = load_device or comfy.model_management.get_torch_device()
    offload_device = offload_device or comfy.model_management.unet_offload_device()
    config = PixelADMModelConfig(dict(PixelADMModelConfig.unet_config))
    config.set_inference_dtype(unet.dtype, None)
    base = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EPS,
                                      device=offload_device)
    base.diffusion_model = adm_logic.ComfyADMDiffusionModel(unet.to(offload_device))
    # The exact ADM noise levels (the config above gives the same table; set explicitly so that the
    # schedule never depends on ComfyUI's naming of beta schedules).
    base.model_sampling.set_sigmas(adm_logic.schedule_sigmas())
    base.eval()
    return comfy.model_patcher.ModelPatcher(base, load_device=load_device, offload_device=offload_device)


def launch_unet_dtype() -> torch.dtype | None:
    """The weight dtype asked for on ComfyUI's command line (--fp16-unet / --bf16-unet / --fp32-unet)."""
    if comfy_args.fp32_unet:
        return torch.float32
    if comfy_args.bf16_unet:
        return torch.bfloat16
    if comfy_args.fp16_unet:
        return torch.float16
    return None


def load_pixel_model(model_name: str, weight_dtype: str = "auto", gradient_checkpointing: bool = False,
                     num_head_channels: int = adm_logic.DEFAULT_HEAD_CHANNELS):
    """Load ``models/pixel_diffusion/<model_name>`` as a ComfyUI MODEL (see the module docstring)."""
    path = folder_paths.get_full_path(adm_logic.MODEL_FOLDER, model_name)
    if path is None:
        folders = folder_paths.get_folder_paths(adm_logic.MODEL_FOLDER)
        raise FileNotFoundError(f"model_name: {model_name!r} is not in models/{adm_logic.MODEL_FOLDER} "
                                f"(folders searched: {folders})")
    load_device = comfy.model_management.get_torch_device()
    dtype, note = adm_logic.resolve_weight_dtype(
        weight_dtype, load_device, launch_unet_dtype(),
        bf16_ok=load_device.type == "cpu" or comfy.model_management.should_use_bf16(load_device))
    if note:
        log.warning("EquiReg: %s", note)
    unet = adm_logic.load_pixel_adm(path, dtype=dtype, num_head_channels=num_head_channels,
                                    gradient_checkpointing=gradient_checkpointing, name=model_name)
    log.info("EquiReg: loaded %s: %s", model_name, adm_logic.model_size_note(unet))
    return build_model_patcher(unet, load_device=load_device)


def pixel_space_vae() -> comfy.sd.VAE:
    """ComfyUI's pixel-space VAE (as VAELoader's ``pixel_space`` choice), in float32."""
    return comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)}, dtype=torch.float32)


def unconditional_conditioning() -> list:
    """A placeholder CONDITIONING for the unconditional pixel-space models (the model ignores it)."""
    return [[torch.zeros(1, 1, 1), {}]]


# ---------------------------------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------------------------------


class EquiRegLoadPixelDiffusionModel(io.ComfyNode):
    """Load a guided-diffusion (ADM) pixel-space checkpoint as a MODEL."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EquiRegLoadPixelDiffusionModel",
            display_name="EquiReg Load Pixel Diffusion Model",
            category=CATEGORY,
            description="Loads an unconditional guided-diffusion (ADM) UNet that works on pixels, such as "
                        "DPS's ffhq_10m.pt or OpenAI's 256x256_diffusion_uncond.pt, from "
                        f"models/{adm_logic.MODEL_FOLDER} (.pt/.pth read with weights_only, or "
                        ".safetensors). The MODEL predicts epsilon on the ADM linear schedule (1000 steps) "
                        "and samples RGB images in [-1, 1]: pair it with EquiReg Pixel Space VAE and any "
                        "scheduler/sampler. Connect 'conditioning' to both positive and negative; use cfg 1.",
            inputs=[
                io.Combo.Input("model_name", options=folder_paths.get_filename_list(adm_logic.MODEL_FOLDER),
                               tooltip=f"Checkpoint file in models/{adm_logic.MODEL_FOLDER} (you download "
                                       "it; nothing is downloaded at run time)."),
                io.Combo.Input("weight_dtype", options=list(adm_logic.WEIGHT_DTYPES), default="auto",
                               tooltip="Weight precision. fp16/bf16 halve memory on a GPU (ignored on CPU, "
                                       "where the weights stay fp32); auto = fp32 unless ComfyUI was "
                                       "launched with --fp16-unet/--bf16-unet. The posterior solvers' loss "
                                       "is float32 either way."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute the UNet's activations during the backward pass of the "
                                         "posterior solvers instead of storing them: much less memory, "
                                         "about 30% slower gradient steps. No effect on plain sampling."),
                io.Int.Input("num_head_channels", default=adm_logic.DEFAULT_HEAD_CHANNELS, min=-1, max=4096,
                             tooltip="Channels per attention head (the weights cannot tell): 64 for "
                                     "ffhq_10m.pt and the OpenAI 256x256 models; -1 = a fixed 4 heads "
                                     "per block. Files saved by this pack record their own value and must "
                                     "match it."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The pixel-space diffusion model."),
                io.Conditioning.Output(display_name="conditioning",
                                       tooltip="Placeholder conditioning (the model is unconditional): "
                                               "connect it to positive and negative."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, model_name: str, **kwargs) -> tuple:
        # Reload when the file was replaced under the same name.
        path = folder_paths.get_full_path(adm_logic.MODEL_FOLDER, model_name)
        if path is None:
            return (model_name,)
        st = os.stat(path)
        return (model_name, st.st_size, st.st_mtime_ns)

    @classmethod
    def execute(cls, model_name: str, weight_dtype: str, gradient_checkpointing: bool,
                num_head_channels: int) -> io.NodeOutput:
        model = load_pixel_model(model_name, weight_dtype, gradient_checkpointing, num_head_channels)
        return io.NodeOutput(model, unconditional_conditioning())


class EquiRegPixelSpaceVAE(io.ComfyNode):
    """The identity 'VAE' of pixel-space models."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EquiRegPixelSpaceVAE",
            display_name="EquiReg Pixel Space VAE",
            category=CATEGORY,
            description="A VAE for pixel-space models: encode maps an IMAGE in [0, 1] to 'latents' 2x - 1 "
                        "(3 channels, same size) and decode maps back. Use it with VAE Encode/Decode, "
                        "EquiReg Target Latent and the posterior samplers. It is ComfyUI's own pixel-space "
                        "VAE (as VAE Loader's 'pixel_space'), kept in float32 for an exact data term.",
            inputs=[],
            outputs=[io.Vae.Output(display_name="VAE", tooltip="The pixel-space VAE.")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(pixel_space_vae())


NODES = [EquiRegLoadPixelDiffusionModel, EquiRegPixelSpaceVAE]
