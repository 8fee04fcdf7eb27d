"""EquiReg Regularizer node (-> EQUIREG) and Equivariance Error node (IMAGE + EQUIREG -> per-image error and
a heat map).

The MPE function f comes from the connected VAE (encoder, decoder, or encoder after decoder) or from a
small CNN saved with ``samplers.equireg.save_mpe_cnn`` in ``models/equireg/`` (the folder is registered
with ComfyUI's ``folder_paths`` under the name ``equireg``, so ``extra_model_paths.yaml`` can add more).
The node only checks and stores the settings (:class:`.types.EquiRegSpec`); the sampler and guider bind
them to a differentiable f for each run (:func:`.comfy_bridge.bind_equireg`).
"""

from __future__ import annotations

import os

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import io

from ..samplers.equireg import (
    FORMS,
    GROUPS,
    REDUCTIONS,
    SCHEDULES,
    EquiReg,
    decoder_mpe,
    encoder_after_decoder_mpe,
    encoder_mpe,
    load_mpe_cnn,
)
from . import comfy_bridge as bridge
from . import convert
from .equivariance import check_source_form, equivariance_report, error_text, heat_map_image
from .types import EQUIREG_SOURCES, EquiRegSpec, EquiRegType

CATEGORY = "EquiReg/regularizer"
MPE_FOLDER = "equireg"
NO_FILE = "none"
MAX_SEED = 0xFFFFFFFFFFFFFFFF

folder_paths.add_model_folder_path(MPE_FOLDER, os.path.join(folder_paths.models_dir, MPE_FOLDER))


def mpe_files() -> list[str]:
    """Safetensors files in the registered ``equireg`` model folders."""
    return [f for f in folder_paths.get_filename_list(MPE_FOLDER) if f.lower().endswith(".safetensors")]


def mpe_file_path(name: str) -> str:
    """Absolute path of an MPE file chosen in the combo; clear errors for a missing choice/file."""
    if not name or name == NO_FILE:
        raise ValueError("mpe_file: source 'file' needs an MPE network file; put a .safetensors file "
                         "saved with "
                         f"samplers.equireg.save_mpe_cnn into models/{MPE_FOLDER}/ and choose it")
    path = folder_paths.get_full_path(MPE_FOLDER, name)
    if path is None or not os.path.isfile(path):
        raise ValueError(f"mpe_file: {name!r} was not found in models/{MPE_FOLDER}/ (refresh the node list "
                         f"after adding files); available: {', '.join(mpe_files()) or 'none'}")
    return path


def build_spec(source: str, vae, mpe_file: str, group: str, form: str, alpha: float, freq: float,
               schedule: str, cutoff_steps: int, reduction: str, seed: int) -> EquiRegSpec:
    """Validate the node's inputs and return the EQUIREG value."""
    if source not in EQUIREG_SOURCES:
        raise ValueError(f"source: unknown MPE source {source!r}; valid: {', '.join(EQUIREG_SOURCES)}")
    check_source_form(source, form)
    file_path = None
    if source == "file":
        file_path = mpe_file_path(mpe_file)
        with torch.inference_mode(False):
            try:
                load_mpe_cnn(file_path)  # surfaces a wrong or corrupt file here, not mid-sampling
            except (ValueError, FileNotFoundError) as exc:
                raise ValueError(f"mpe_file: {exc}") from exc
        vae = None
    else:
        if vae is None:
            raise ValueError(f"vae: source {source!r} takes the MPE function from a VAE; connect one (or "
                             "choose "
                             f"source 'file')")
        bridge.check_vae(vae)
    options = {"group": group, "form": form, "alpha": float(alpha), "freq": float(freq), "schedule": schedule,
               "cutoff_steps": int(cutoff_steps), "reduction": reduction, "seed": int(seed)}
    try:
        EquiReg(lambda t: t, **options)  # the core's checks (schedule vs freq/cutoff, alpha, names)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"equireg settings: {exc}") from exc
    return EquiRegSpec(source=source, vae=vae, file_path=file_path, **options)


class EquiRegRegularizer(io.ComfyNode):
    """Configure the EquiReg equivariance regularizer."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EquiRegRegularizer",
            display_name="EquiReg Regularizer",
            category=CATEGORY,
            description="EquiReg: penalises estimates on which an MPE function f is not equivariant to flips/"
                        "rotations (low on clean images, high on off-manifold ones). Connect the output "
                        "to the "
                        "Posterior Sampler or Posterior Guider.",
            inputs=[
                io.Combo.Input("source", options=list(EQUIREG_SOURCES), default="vae_decoder",
                               tooltip="MPE function f: vae_decoder (f = decoder on the latent, 'equi'), "
                                       "vae_encoder (f = encoder on the decoded image, 'equi'), "
                                       "vae_encoder_after_decoder (f = E(D(z)), 'equi' or 'equicon'), or "
                                       "file "
                                       "(a small CNN from models/equireg on the decoded image)."),
                io.Vae.Input("vae", optional=True,
                             tooltip="VAE giving f for the vae_* sources (usually the model's VAE)."),
                io.Combo.Input("mpe_file", options=[NO_FILE, *mpe_files()], default=NO_FILE,
                               tooltip="source 'file': MPE network (.safetensors saved with "
                                       "save_mpe_cnn) in "
                                       f"models/{MPE_FOLDER}/."),
                io.Combo.Input("group", options=list(GROUPS), default="hflip",
                               tooltip="Group of transforms g: hflip, vflip, rot90 (quarter turns; square "
                                       "images) or rot180. One element is drawn per evaluation."),
                io.Combo.Input("form", options=list(FORMS), default="equi",
                               tooltip="equi: ||g f(x) - f(g x)||; equicon: ||x - g^-1 f(g x)|| (needs "
                                       "an f that "
                                       "maps back into x's space: vae_encoder_after_decoder)."),
                io.Float.Input("alpha", default=0.01, min=0.0, max=1000.0, step=0.001,
                               tooltip="Weight of the penalty (0 switches EquiReg off)."),
                io.Float.Input("freq", default=1.0, min=0.001, max=1.0, step=0.001,
                               tooltip="constant/cutoff schedules: apply every int(1/freq) steps (must "
                                       "be 1 for "
                                       "schedule 'every')."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="every",
                               tooltip="every: each step; constant: every int(1/freq) steps; cutoff: as "
                                       "constant "
                                       "but off for the last cutoff_steps steps."),
                io.Int.Input("cutoff_steps", default=0, min=0, max=100000,
                             tooltip="schedule 'cutoff': number of final steps without EquiReg (0 "
                                     "otherwise)."),
                io.Combo.Input("reduction", options=list(REDUCTIONS), default="norm",
                               tooltip="Per-image reduction of the difference: norm, sqnorm (squared) or "
                                       "mse."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=False,
                             tooltip="Seed of the random choice of group elements (restarted every run)."),
            ],
            outputs=[EquiRegType.Output(display_name="EQUIREG")],
        )

    @classmethod
    def execute(cls, source: str, mpe_file: str, group: str, form: str, alpha: float, freq: float,
                schedule: str, cutoff_steps: int, reduction: str, seed: int, vae=None) -> io.NodeOutput:
        return io.NodeOutput(build_spec(source, vae, mpe_file, group, form, alpha, freq, schedule,
                                        cutoff_steps, reduction, seed))


# ---------------------------------------------------------------------------------------------------
# Equivariance Error
# ---------------------------------------------------------------------------------------------------


def regularizer_on_images(spec: EquiRegSpec) -> tuple[EquiReg, object, torch.device]:
    """(regularizer, map from images (B, C, H, W) in [-1, 1] to f's input, device) for an EQUIREG spec.

    VAE sources work in the VAE's own latent space (no model scaling), loaded on the VAE's device.
    """
    options = {k: v for k, v in spec.options().items()}
    if spec.source == "file":
        device = comfy.model_management.get_torch_device()
        with torch.inference_mode(False):
            net = load_mpe_cnn(spec.file_path, device=device)
        return EquiReg(lambda img: net(img.to(device)), **options), (lambda img: img), device
    comfy.model_management.load_models_gpu([spec.vae.patcher])
    codec = bridge.PlainVaeCodec(spec.vae)
    device = spec.vae.device
    if spec.source == "vae_encoder":
        return EquiReg(encoder_mpe(codec.encode), **options), (lambda img: img), device
    if spec.source == "vae_decoder":
        return EquiReg(decoder_mpe(codec.decode), **options), codec.encode, device
    return EquiReg(encoder_after_decoder_mpe(codec.encode, codec.decode), **options), codec.encode, device


def equivariance_error(image: torch.Tensor, spec: EquiRegSpec) -> tuple[list[float], torch.Tensor, str]:
    """Per-image errors, heat-map IMAGE and text for a ComfyUI IMAGE and an EQUIREG spec."""
    if not isinstance(spec, EquiRegSpec):
        raise TypeError(f"equireg: expected an EQUIREG (from the EquiReg Regularizer node), got "
                        f"{type(spec).__name__}")
    x = convert.image_to_samplers(image, "image")
    reg, to_input, device = regularizer_on_images(spec)
    with torch.no_grad():
        inp = to_input(x.to(device))
        errors, maps = equivariance_report(reg, inp)
    heat = heat_map_image(maps, tuple(x.shape[-2:]))
    text = error_text(errors.cpu(), spec.reduction, spec.source, spec.group, spec.form)
    return [float(e) for e in errors.cpu()], heat, text


class EquiRegEquivarianceError(io.ComfyNode):
    """Show how equivariant the MPE function is on images: low on clean images, high on degraded ones."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EquiRegEquivarianceError",
            display_name="EquiReg Equivariance Error",
            category=CATEGORY,
            description="Per-image equivariance error of the EQUIREG's MPE function (mean over the group's "
                        "elements, without alpha or schedule) and a heat map of where it occurs. EquiReg's "
                        "premise: the error is low on clean images and high on degraded ones.",
            inputs=[
                io.Image.Input("image", tooltip="Images to evaluate (a batch gives one error per image)."),
                EquiRegType.Input("equireg", tooltip="The regularizer settings (EquiReg Regularizer node)."),
            ],
            outputs=[
                io.Float.Output(display_name="error", is_output_list=True,
                                tooltip="One equivariance error per image (a list)."),
                io.String.Output(display_name="text", tooltip="The errors as readable text."),
                io.Image.Output(display_name="heat_map",
                                tooltip="Where the error occurs (dark = low; one colour scale per batch)."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image, equireg) -> io.NodeOutput:
        errors, heat, text = equivariance_error(image, equireg)
        return io.NodeOutput(errors, text, heat, ui={"text": [text]})


NODES = [EquiRegRegularizer, EquiRegEquivarianceError]
