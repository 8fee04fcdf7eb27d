"""Values carried by the pack's custom ComfyUI socket types, and the socket types themselves.

The dataclasses are pure Python/PyTorch (importable and testable without ComfyUI):

- ``EQUIREG_OPERATOR`` carries an :class:`OperatorSpec`: the operator's registry name and parameters (and
  a mask from the mask editor), not a built module. Every consumer builds its own fresh operator for the
  image size at hand with :meth:`OperatorSpec.build`, because ComfyUI hands one cached output object to
  all downstream nodes and operators keep per-size state (generated masks, resize matrices).
- ``MEASUREMENT`` carries a :class:`Measurement`: an operator built for the target size, the measurement
  ``y`` and what the solvers need to know about it.
- ``EQUIREG`` carries an :class:`EquiRegSpec`: the regularizer's settings; the sampler node binds it to a
  differentiable MPE function (it owns the VAE handling).

The ComfyUI socket types (``OperatorType``, ``MeasurementType``, ``EquiRegType``: ``io.Custom`` classes)
exist only when ``comfy_api`` is importable, i.e. inside ComfyUI; elsewhere they are ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# Relative import: inside ComfyUI a bare `import samplers` would find ComfyUI's comfy/samplers.py.
from ..samplers import operators as ops

OPERATOR_TYPE = "EQUIREG_OPERATOR"
MEASUREMENT_TYPE = "MEASUREMENT"
EQUIREG_TYPE = "EQUIREG"

#: Operators offered by the Operator node (``blur`` with a user kernel and ``matrix`` need tensors that a
#: widget cannot hold; they remain available in the Python API).
NODE_OPERATORS = (
    "super_resolution",
    "gaussian_blur",
    "motion_blur",
    "inpainting",
    "phase_retrieval",
    "hdr",
    "identity",
)
NOISE_NAMES = ("gaussian", "poisson", "none")
EQUIREG_SOURCES = ("vae_encoder", "vae_decoder", "vae_encoder_after_decoder", "file")


@dataclass(frozen=True)
class OperatorSpec:
    """A measurement operator by name and parameters (the value of an ``EQUIREG_OPERATOR`` socket).

    :param name: a key of ``samplers.operators.OPERATORS`` offered by the node (:data:`NODE_OPERATORS`).
    :param params: constructor parameters, without ``image_size`` and ``mask`` (given at build time).
    :param mask: for inpainting, a user mask (B or 1, 1, H, W) with 1 on observed pixels, or None.
    """

    name: str
    params: dict = field(default_factory=dict)
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.name not in ops.OPERATORS:
            raise ValueError(f"operator: unknown operator {self.name!r}; valid: {', '.join(ops.OPERATORS)}")
        if self.mask is not None and self.name != "inpainting":
            raise ValueError(f"operator: a mask is only used by inpainting, not by {self.name!r}")
        # Build once at the default size to surface invalid parameters (e.g. an even kernel size) at the
        # Operator node itself rather than later.
        self.build(None)

    def build(self, image_size: tuple[int, int] | None) -> ops.Operator:
        """A fresh operator for images of ``image_size`` (H, W) (None: size not known yet)."""
        params = dict(self.params)
        if self.name == "super_resolution" and image_size is not None:
            params["image_size"] = tuple(image_size)
        if self.name == "inpainting":
            if params.get("position") == "center":  # a centred box needs the image size
                params.pop("position")
                if image_size is not None:
                    h, w = image_size
                    bh, bw = params.get("box_size") or (h // 2, w // 2)
                    params["position"] = (max(0, (h - bh) // 2), max(0, (w - bw) // 2))
            if self.mask is not None:
                params["mask"] = self.mask
            elif image_size is not None:
                params["image_size"] = tuple(image_size)
        return ops.make(self.name, **params)

    def describe(self) -> str:
        """One line for text outputs, e.g. ``super_resolution(factor=4)``."""
        shown = {k: v for k, v in self.params.items()}
        if self.mask is not None:
            shown["mask"] = f"MASK {tuple(self.mask.shape[-2:])}"
        inner = ", ".join(f"{k}={v}" for k, v in shown.items())
        return f"{self.name}({inner})"


@dataclass(frozen=True)
class Measurement:
    """A measurement y = A(x) + noise of an unknown clean image x (the value of a ``MEASUREMENT`` socket).

    :param operator: the operator A, built for ``image_size``.
    :param y: (B, ...) float32 CPU tensor in A's output space, images on the [-1, 1] scale.
    :param image_size: (H, W) in pixels of the clean image x, i.e. of the image to restore.
    :param channels: channels of x (3 for RGB).
    :param sigma_y: standard deviation of the measurement noise on the [-1, 1] scale (0: noiseless; for
        Poisson noise an estimate from the measurement). Solvers that weigh the data term use it.
    :param noise_name: "gaussian", "poisson" or "none".
    :param operator_spec: how the operator was specified (for display and for rebuilding it).
    """

    operator: ops.Operator
    y: torch.Tensor
    image_size: tuple[int, int]
    channels: int = 3
    sigma_y: float = 0.0
    noise_name: str = "none"
    operator_spec: OperatorSpec | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.y, torch.Tensor) or self.y.dim() < 2:
            raise ValueError("measurement: y must be a tensor (B, ...)")
        if self.noise_name not in NOISE_NAMES:
            raise ValueError(f"measurement: noise_name must be one of {NOISE_NAMES}, got {self.noise_name!r}")
        if not self.sigma_y >= 0.0:
            raise ValueError(f"measurement: sigma_y must be >= 0, got {self.sigma_y}")

    @property
    def batch_size(self) -> int:
        return int(self.y.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int, int]:
        """(B, C, H, W) of the clean images."""
        return (self.batch_size, self.channels, *self.image_size)

    def check_image_size(self, size: tuple[int, int], what: str) -> None:
        """ValueError naming ``what`` unless ``size`` (H, W) is the measurement's target image size."""
        if tuple(size) != tuple(self.image_size):
            raise ValueError(
                f"{what}: size {size[0]}x{size[1]} (H x W) does not match the measurement's target image "
                f"size "
                f"{self.image_size[0]}x{self.image_size[1]}; build the latent with the EquiReg Target Latent "
                f"node so that the sizes always agree"
            )

    def describe(self) -> str:
        spec = (
            self.operator_spec.describe() if self.operator_spec is not None else type(self.operator).__name__
        )
        noise = "none" if self.noise_name == "none" else f"{self.noise_name} (sigma_y {self.sigma_y:.4g})"
        return (
            f"{spec}; y {tuple(self.y.shape)}; target {self.image_size[0]}x{self.image_size[1]} "
            f"x{self.channels} ch, batch {self.batch_size}; noise {noise}"
        )


@dataclass(frozen=True)
class EquiRegSpec:
    """EquiReg settings (the value of an ``EQUIREG`` socket); bound to ``samplers.equireg.EquiReg`` with a
    differentiable MPE function by the sampler/guider nodes.

    :param source: "vae_encoder", "vae_decoder", "vae_encoder_after_decoder" (MPE from ``vae``) or "file"
        (a small CNN saved with ``samplers.equireg.save_mpe_cnn`` at ``file_path``).
    :param vae: the ComfyUI VAE object for the VAE sources, else None.
    :param file_path: absolute path of the MPE file for source "file", else None.
    The other fields are ``EquiReg``'s options of the same names.
    """

    source: str
    vae: Any = None
    file_path: str | None = None
    group: str = "hflip"
    form: str = "equi"
    alpha: float = 0.01
    freq: float = 1.0
    schedule: str = "every"
    cutoff_steps: int = 0
    reduction: str = "norm"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in EQUIREG_SOURCES:
            raise ValueError(
                f"equireg: source must be one of {', '.join(EQUIREG_SOURCES)}, got {self.source!r}"
            )
        if self.source == "file" and not self.file_path:
            raise ValueError("equireg: source 'file' needs file_path")
        if self.source != "file" and self.vae is None:
            raise ValueError(f"equireg: source {self.source!r} needs a VAE")

    def options(self) -> dict:
        """Keyword options for ``samplers.equireg.EquiReg`` (everything except the MPE function)."""
        return {
            "group": self.group,
            "form": self.form,
            "alpha": self.alpha,
            "freq": self.freq,
            "schedule": self.schedule,
            "cutoff_steps": self.cutoff_steps,
            "reduction": self.reduction,
            "seed": self.seed,
        }


try:  # ComfyUI socket types; comfy_api exists only inside ComfyUI
    from comfy_api.latest import io as _io
except ImportError:  # pragma: no cover - depends on the environment
    _io = None

OperatorType = _io.Custom(OPERATOR_TYPE) if _io is not None else None
MeasurementType = _io.Custom(MEASUREMENT_TYPE) if _io is not None else None
EquiRegType = _io.Custom(EQUIREG_TYPE) if _io is not None else None
