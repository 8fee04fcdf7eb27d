"""ComfyUI-specific plumbing shared by the Posterior Sampler and the Posterior Guider: gradients,
VAE decode/encode for the loss, memory, noise space, progress and interruption.

Only ComfyUI's public extension points are used (no monkey-patching); this module is imported only
inside ComfyUI.

Why it is needed (see docs of the pack and ComfyUI's ``execution.py``): ComfyUI runs every prompt under
``torch.inference_mode()``, so the weights that the loader nodes build are *inference tensors*, which
autograd refuses to save for backward; its samplers run under ``no_grad``; ``VAE.decode`` clamps its
output to [0, 1] (zero gradient outside) and may fall back to tiled decoding without gradients. The
pattern that works, applied here on every sampling call:

1. load the model and the VAE together (:func:`load_model_and_vae`, or a cloned patcher with
   ``set_additional_models`` in the guider) *before* touching weights, because loading (and LoRA
   patching) rebuilds weights inside inference mode;
2. :func:`make_differentiable`: replace every inference-tensor parameter/buffer of the BaseModel and of
   ``vae.first_stage_model`` by a normal tensor (idempotent: checks ``is_inference()``, so a second call
   converts nothing). Plain inference still works on the converted weights;
3. differentiate with ``torch.inference_mode(False)`` + ``torch.enable_grad()`` on a fresh clone of x;
4. decode with ``vae.first_stage_model.decode`` directly (:class:`VaeCodec`): no clamp, no tiling.

Decoder outputs, checked in ComfyUI 0.3.64: ``TAESD.decode`` returns ``decoder(...).sub(0.5).mul(2)``
and the KL autoencoders (``AutoencoderKL`` / ``AutoencodingEngine``) return the decoder's raw output;
both are images on the [-1, 1] scale (``VAE.process_output`` maps them to [0, 1] with a clamp), so no
mapping is needed. ``first_stage_model.encode`` takes [-1, 1] images; for KL autoencoders it returns the
posterior *mode* (the mean: ``DiagonalGaussianRegularizer(sample=False)``); a tuple or a distribution
object is reduced to its mean as well. VAEs whose ``process_output`` is not that [-1, 1] -> [0, 1] map
(audio, Stable Cascade stage A) or whose latents are not 2-D images are rejected with a clear error.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from typing import Any

import comfy.cli_args
import comfy.model_management
import comfy.model_sampling
import torch

from ..samplers.equireg import (
    EquiReg,
    decoder_mpe,
    encoder_after_decoder_mpe,
    encoder_mpe,
    load_mpe_cnn,
)
from ..samplers.solvers import flow_noise_scaling, ve_noise_scaling
from .types import EquiRegSpec, Measurement

Tensor = torch.Tensor
log = logging.getLogger("equireg")

#: key under which the VAE rides along with a cloned model patcher (``set_additional_models``)
ADDITIONAL_MODELS_KEY = "equireg_vae"


# ---------------------------------------------------------------------------------------------------
# Attention backend
# ---------------------------------------------------------------------------------------------------


def check_attention_backend() -> None:
    """Raise a clear error when ComfyUI was launched with an attention kernel that has no backward."""
    args = comfy.cli_args.args
    for flag, attr in (("--use-flash-attention", "use_flash_attention"),
                       ("--use-sage-attention", "use_sage_attention")):
        if getattr(args, attr, False):
            raise RuntimeError(
                f"EquiReg posterior sampling needs gradients through the model's attention, but ComfyUI was "
                f"launched with {flag}, whose kernel has no backward pass. Restart ComfyUI with "
                f"--use-pytorch-cross-attention (or without {flag}) to use the EquiReg sampler/guider.")


# ---------------------------------------------------------------------------------------------------
# Inference tensors -> normal tensors
# ---------------------------------------------------------------------------------------------------


def to_normal_tensors_(module: torch.nn.Module) -> int:
    """Replace every inference-tensor parameter, buffer and plain tensor attribute of ``module`` (and of its
    submodules) by a normal copy; return how many were replaced.

    Idempotent (only ``is_inference()`` tensors are touched). Tied parameters stay tied. Parameters keep
    ``requires_grad=False`` and any attributes ComfyUI attached to them.
    """
    replaced: dict[int, Tensor] = {}
    count = 0
    with torch.inference_mode(False), torch.no_grad():
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                if p is None or not p.is_inference():
                    continue
                new = replaced.get(id(p))
                if new is None:
                    new = torch.nn.Parameter(p.clone(), requires_grad=False)
                    new.__dict__.update(getattr(p, "__dict__", {}))
                    replaced[id(p)] = new
                    count += 1
                m._parameters[name] = new
            for name, b in list(m._buffers.items()):
                if b is None or not b.is_inference():
                    continue
                new = replaced.get(id(b))
                if new is None:
                    new = b.clone()
                    replaced[id(b)] = new
                    count += 1
                m._buffers[name] = new
            # Tensors kept as plain attributes (caches, some positional embeddings) are saved for
            # backward just the same.
            for name, value in list(vars(m).items()):
                if isinstance(value, Tensor) and not name.startswith("_") and value.is_inference():
                    new = replaced.get(id(value))
                    if new is None:
                        new = value.clone()
                        replaced[id(value)] = new
                        count += 1
                    object.__setattr__(m, name, new)
    return count


def _base_model(model: Any) -> torch.nn.Module:
    """The BaseModel of a ModelPatcher / CFGGuider / BaseModel."""
    inner = getattr(model, "model", None)  # ModelPatcher
    if isinstance(inner, torch.nn.Module):
        return inner
    patcher = getattr(model, "model_patcher", None)  # CFGGuider
    if patcher is not None:
        return patcher.model
    if isinstance(model, torch.nn.Module):
        return model
    raise TypeError("make_differentiable: expected a ModelPatcher, CFGGuider or BaseModel, got "
                    f"{type(model).__name__}")


def make_differentiable(model: Any, vae: Any = None, extra_vaes: tuple = ()) -> int:
    """Make backpropagation possible through ``model`` (ModelPatcher or BaseModel: its ``diffusion_model``
    and everything else it holds) and through ``vae.first_stage_model`` (and those of ``extra_vaes``).

    Call it on EVERY sampling call after the models were loaded: loading to the device and LoRA patching
    rebuild weights inside inference mode. Returns the number of tensors converted (0 when nothing was
    needed). The same MODEL keeps working in plain samplers afterwards.
    """
    count = to_normal_tensors_(_base_model(model))
    for v in (vae, *extra_vaes):
        if v is not None:
            count += to_normal_tensors_(v.first_stage_model)
    if count:
        log.debug("EquiReg: converted %d inference tensors to normal tensors", count)
    return count


@contextlib.contextmanager
def explain_gradient_errors() -> Iterator[None]:
    """Re-raise autograd's inference-tensor errors with an explanation of where they come from."""
    try:
        yield
    except RuntimeError as exc:
        text = str(exc)
        if "Inference tensor" in text or "inference tensor" in text:
            raise RuntimeError(
                "EquiReg: a tensor created under ComfyUI's inference mode was needed for backpropagation. "
                "The model's and the VAE's own weights are converted automatically; this usually comes from "
                "an extra model attached by another node (ControlNet, IP-Adapter, model patches), which "
                f"posterior sampling does not support yet. Original error: {text}") from exc
        raise


# ---------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------


def load_model_and_vae(model_patcher: Any, vae: Any, extra_vaes: tuple = ()) -> None:
    """Load the diffusion model and the VAE(s) together, so that loading one never evicts the other."""
    patchers = [model_patcher, vae.patcher]
    patchers += [v.patcher for v in extra_vaes if v is not None and v is not vae]
    comfy.model_management.load_models_gpu(patchers)


def equireg_vaes(spec: Any, vae: Any) -> tuple:
    """VAEs of an EQUIREG spec other than the loss VAE (they must be loaded and converted too)."""
    other = getattr(spec, "vae", None) if spec is not None else None
    return (other,) if other is not None and other is not vae else ()


def patcher_with_vae(model_patcher: Any, vae: Any) -> Any:
    """A clone of ``model_patcher`` that loads ``vae`` together with the model (``prepare_sampling`` loads
    additional models with the model); the user's MODEL is left untouched."""
    patcher = model_patcher.clone()
    patcher.set_additional_models(ADDITIONAL_MODELS_KEY, [vae.patcher])
    return patcher


# ---------------------------------------------------------------------------------------------------
# VAE decode / encode for the loss
# ---------------------------------------------------------------------------------------------------


def check_vae(vae: Any, what: str = "vae") -> None:
    """ValueError naming ``what`` unless ``vae`` is an image VAE whose decoder outputs [-1, 1] images."""
    if vae is None or not hasattr(vae, "first_stage_model"):
        raise TypeError(f"{what}: expected a ComfyUI VAE, got {type(vae).__name__}")
    if vae.first_stage_model is None:
        raise ValueError(f"{what}: the VAE is invalid (no weights were found in its file)")
    if getattr(vae, "latent_dim", 2) != 2:
        raise ValueError(f"{what}: only image VAEs with 2-D latents are supported, this VAE has "
                         f"{vae.latent_dim}-D latents (video/audio VAE)")
    probe = torch.tensor([-1.0, 0.0, 1.0])
    try:
        mapped = vae.process_output(probe.clone())
    except Exception:  # an unusual VAE; decide by its output below
        mapped = None
    if mapped is None or not torch.allclose(mapped.float(), torch.tensor([0.0, 0.5, 1.0]), atol=1e-6):
        raise ValueError(f"{what}: this VAE does not decode to images on the [-1, 1] scale "
                         f"({type(vae.first_stage_model).__name__}); use an image VAE (SD/SDXL/SD3/Flux, "
                         "TAESD)")


class VaeCodec:
    """Differentiable decode/encode between the model's x0 space and images (B, C, H, W) in [-1, 1].

    ``decode(z) = first_stage_model.decode(process_latent_out(z))`` (float32, on z's device, no clamp,
    no tiling); ``encode(img) = process_latent_in(first_stage_model.encode(img))`` (the posterior mean).
    """

    def __init__(self, base_model: Any, vae: Any) -> None:
        check_vae(vae)
        self.base = base_model
        self.vae = vae
        self.first_stage = vae.first_stage_model

    @property
    def scale(self) -> int:
        """Pixels per latent pixel."""
        return int(self.vae.spacial_compression_decode())

    def decode(self, z: Tensor) -> Tensor:
        latent = self.base.process_latent_out(z)
        img = self.first_stage.decode(latent.to(self.vae.device, self.vae.vae_dtype))
        return img.float().to(z.device)

    def encode(self, img: Tensor) -> Tensor:
        out = self.first_stage.encode(img.to(self.vae.device, self.vae.vae_dtype))
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor) and hasattr(out, "mode"):  # a distribution object
            out = out.mode()
        return self.base.process_latent_in(out.float().to(img.device))


class PlainVaeCodec(VaeCodec):
    """Decode/encode in the VAE's own latent space (no BaseModel: for nodes that work on IMAGEs)."""

    def __init__(self, vae: Any) -> None:
        check_vae(vae)
        self.base = None
        self.vae = vae
        self.first_stage = vae.first_stage_model

    def decode(self, z: Tensor) -> Tensor:
        return self.first_stage.decode(z.to(self.vae.device, self.vae.vae_dtype)).float().to(z.device)

    def encode(self, img: Tensor) -> Tensor:
        out = self.first_stage.encode(img.to(self.vae.device, self.vae.vae_dtype))
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor) and hasattr(out, "mode"):
            out = out.mode()
        return out.float().to(img.device)


# ---------------------------------------------------------------------------------------------------
# Noise space
# ---------------------------------------------------------------------------------------------------


def is_flow(model_sampling: Any) -> bool:
    """True for rectified-flow models (ComfyUI's CONST: SD3, Flux, ...)."""
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def noise_scaling_for(model_sampling: Any) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``noise_scaling(sigma, noise, x0)`` for the solvers: ``(1 - sigma) x0 + sigma noise`` for CONST
    (flow) models, ``x0 + sigma noise`` for EPS / V-prediction / EDM / X0 / Cosmos models (the VE space;
    ComfyUI's ``max_denoise`` variant is for the first noise only and is left out)."""
    if is_flow(model_sampling):
        return flow_noise_scaling
    if isinstance(model_sampling, (comfy.model_sampling.EPS, comfy.model_sampling.COSMOS_RFLOW)):
        return ve_noise_scaling

    def model_noise_scaling(sigma: Tensor, noise: Tensor, x0: Tensor) -> Tensor:
        # Unknown prediction type: use the model's own definition, out of place and broadcast.
        noise, x0 = torch.broadcast_tensors(noise, x0)
        return model_sampling.noise_scaling(sigma, noise.clone(), x0.clone(), max_denoise=False)

    return model_noise_scaling


# ---------------------------------------------------------------------------------------------------
# Measurement and operator
# ---------------------------------------------------------------------------------------------------


def check_measurement(measurement: Any, what: str = "measurement") -> Measurement:
    if not isinstance(measurement, Measurement):
        raise TypeError(f"{what}: expected a MEASUREMENT (from the EquiReg Simulate Measurement or "
                        "Measurement "
                        f"from Image node), got {type(measurement).__name__}")
    return measurement


def check_sizes(measurement: Measurement, latent_shape: tuple[int, ...], codec: VaeCodec) -> None:
    """Clear errors when the latent, the VAE and the measurement do not fit together."""
    if len(latent_shape) != 4:
        raise ValueError(f"latent: expected a 4-D image latent (B, C, h, w), got shape {tuple(latent_shape)}")
    batch, channels, h, w = latent_shape
    vae_channels = getattr(codec.vae, "latent_channels", channels)
    if vae_channels != channels:
        raise ValueError(f"vae: the VAE has {vae_channels}-channel latents but the model samples "
                         f"{channels}-channel "
                         "latents; connect the VAE that belongs to the model")
    out_channels = getattr(codec.vae, "output_channels", measurement.channels)
    if out_channels != measurement.channels:
        raise ValueError(f"measurement: the measurement is of {measurement.channels}-channel images but "
                         "the VAE "
                         f"decodes {out_channels}-channel images")
    measurement.check_image_size((h * codec.scale, w * codec.scale), "latent")
    if measurement.batch_size not in (1, batch):
        raise ValueError(f"measurement: batch of {measurement.batch_size} measurements for a latent batch of "
                         f"{batch}; give one measurement (used for every image) or one per image")


def operator_for(measurement: Measurement, device: torch.device) -> torch.nn.Module:
    """A private copy of the measurement's operator on ``device`` with normal (non-inference) tensors:
    the MEASUREMENT object is shared with other nodes and must not be moved or modified."""
    with torch.inference_mode(False):
        op = copy.deepcopy(measurement.operator)
        to_normal_tensors_(op)
        return op.to(device)


def measurement_tensor(measurement: Measurement, batch: int, device: torch.device) -> Tensor:
    """y as a normal float32 tensor of batch ``batch`` on ``device`` (a batch of one is repeated)."""
    y = measurement.y
    if y.shape[0] not in (1, batch):
        raise ValueError(f"measurement: batch of {y.shape[0]} measurements for a latent batch of {batch}")
    with torch.inference_mode(False):
        return y.detach().to(device, torch.float32).expand(batch, *y.shape[1:]).clone()


# ---------------------------------------------------------------------------------------------------
# EquiReg binding
# ---------------------------------------------------------------------------------------------------


class ImageSpaceEquiReg(EquiReg):
    """EquiReg with an image-space MPE function f, evaluated on model-space latents z through the decoder:
    the penalty at z is the penalty of f at the decoded image D(z) (the group acts on that image).

    Used for the ``vae_encoder`` and ``file`` sources: the solvers hand the regularizer their model-space
    x0 estimate, while those f take images in [-1, 1].
    """

    def __init__(self, f: Callable[[Tensor], Tensor], decode: Callable[[Tensor], Tensor], **options: Any):
        super().__init__(f, **options)
        self.decode = decode

    def difference(self, x: Tensor, element: int | None = None) -> Tensor:
        return super().difference(self.decode(x), element)

    def error_map(self, x: Tensor, element: int | None = None) -> Tensor:
        return super().error_map(self.decode(x), element)


def _load_file_mpe(path: str, device: torch.device) -> torch.nn.Module:
    with torch.inference_mode(False):
        net = load_mpe_cnn(path, device=device)
        to_normal_tensors_(net)
    return net


def image_space_f(
    spec: EquiRegSpec, codec: VaeCodec, device: torch.device
) -> Callable[[Tensor], Tensor] | None:
    """The MPE function of an image-space source (``vae_encoder``, ``file``), else None."""
    if spec.source == "vae_encoder":
        return encoder_mpe(codec.encode)
    if spec.source == "file":
        net = _load_file_mpe(spec.file_path, device)

        def cnn(img: Tensor) -> Tensor:
            return net(img.to(device, torch.float32))

        return cnn
    return None


def bind_equireg(spec: EquiRegSpec | None, codec: VaeCodec, device: torch.device) -> EquiReg | None:
    """Build the run's regularizer on model-space latents from an ``EQUIREG`` spec (None: no EquiReg).

    ``vae_decoder``: f(z) = D(z) (latent -> image, ``equi``); ``vae_encoder_after_decoder``:
    f(z) = E(D(z)) (latent -> latent, ``equi`` or ``equicon``); ``vae_encoder`` and ``file``: f on the
    decoded image (:class:`ImageSpaceEquiReg`). The spec's own VAE gives the MPE function (it may differ
    from the one used for the loss); a fresh regularizer per run restarts the element draws from the
    spec's seed, so runs are reproducible.
    """
    if spec is None:
        return None
    if not isinstance(spec, EquiRegSpec):
        raise TypeError(f"equireg: expected an EQUIREG (from the EquiReg Regularizer node), got "
                        f"{type(spec).__name__}")
    mpe_codec = codec if spec.vae is None or spec.vae is codec.vae else VaeCodec(codec.base, spec.vae)
    options = spec.options()
    f_img = image_space_f(spec, mpe_codec, device)
    if f_img is not None:
        return ImageSpaceEquiReg(f_img, codec.decode, **options)
    if spec.source == "vae_decoder":
        return EquiReg(decoder_mpe(mpe_codec.decode), **options)
    return EquiReg(encoder_after_decoder_mpe(mpe_codec.encode, mpe_codec.decode), **options)


# ---------------------------------------------------------------------------------------------------
# Progress and interruption
# ---------------------------------------------------------------------------------------------------


def throw_if_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException when the user pressed Cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def interruptible_model(model: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Wrap the sampler's model so that every evaluation first checks for Cancel (solvers with inner
    loops evaluate the model many times per step)."""

    def call(x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        throw_if_interrupted()
        return model(x, sigma, **kwargs)

    # The built-in samplers read e.g. model.inner_model.inner_model.model_sampling; keep that reachable.
    call.inner_model = getattr(model, "inner_model", None)
    return call


def step_callback(callback: Callable[[dict], Any] | None) -> Callable[[dict], Any]:
    """KSAMPLER's k_callback (previews + progress bar) preceded by an interrupt check, every step."""

    def on_step(info: dict) -> None:
        throw_if_interrupted()
        if callback is not None:
            callback(info)

    return on_step
