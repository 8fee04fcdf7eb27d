"""Nodes that define what was measured: Operator, Simulate Measurement, Measurement from Image, Target Latent.

The computations live in :mod:`.logic` (pure PyTorch, tested without ComfyUI). ComfyUI 0.3.64 has no
dynamic combo, so the Operator node shows every parameter; each tooltip says which operator uses it.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from . import convert, logic
from .types import NODE_OPERATORS, NOISE_NAMES, MeasurementType, OperatorType

CATEGORY = "EquiReg/measurement"
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def _noise_inputs(believed: bool) -> list:
    what = "believed to be in the image" if believed else "added to the simulated measurement"
    return [
        io.Combo.Input(
            "noise",
            options=list(NOISE_NAMES),
            default="gaussian",
            tooltip=f"Noise {what}: gaussian (uses sigma), poisson (uses poisson_rate) or none.",
        ),
        io.Float.Input(
            "sigma",
            default=0.05,
            min=0.0,
            max=2.0,
            step=0.005,
            tooltip="Gaussian noise standard deviation on the [-1, 1] image scale (DPS uses 0.05). "
            "Used when noise is gaussian.",
        ),
        io.Float.Input(
            "poisson_rate",
            default=1.0,
            min=0.001,
            max=1000.0,
            step=0.1,
            tooltip="Poisson noise: photon counts are 255 x rate x intensity (larger = less noise). "
            "Used when noise is poisson.",
        ),
    ]


class EquiRegOperator(io.ComfyNode):
    """Choose the measurement operator (forward model) and its parameters."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EquiRegOperator",
            display_name="EquiReg Operator",
            category=CATEGORY,
            description="The measurement operator A of y = A(x) + noise: super-resolution, Gaussian or "
                        "motion "
            "blur, inpainting (box, random pixels or a MASK from the mask editor), Fourier phase "
            "retrieval, HDR (clipping) or identity (denoising). Only the parameters named in a "
            "tooltip for the chosen operator are used.",
            inputs=[
                io.Combo.Input(
                    "operator",
                    options=list(NODE_OPERATORS),
                    default="super_resolution",
                    tooltip="Which degradation the measurement went through.",
                ),
                io.Combo.Input(
                    "sr_factor",
                    options=list(logic.SR_FACTORS),
                    default="4",
                    tooltip="super_resolution: down-sampling factor (bicubic, antialiased, as DPS). "
                    "The image size must be divisible by it.",
                ),
                io.Int.Input(
                    "kernel_size",
                    default=61,
                    min=1,
                    max=511,
                    tooltip="gaussian_blur, motion_blur: kernel size in pixels; a positive odd number "
                    "(DPS uses 61 at 256 px), smaller than the image.",
                ),
                io.Float.Input(
                    "blur_sigma",
                    default=3.0,
                    min=0.01,
                    max=100.0,
                    step=0.1,
                    tooltip="gaussian_blur: standard deviation of the Gaussian kernel in pixels.",
                ),
                io.Float.Input(
                    "motion_intensity",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="motion_blur: trajectory intensity (0 = straight line, 1 = very shaky).",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=2**31 - 1,
                    # explicit False: the frontend otherwise adds a "randomize" control to any INT named seed,
                    # which re-draws the operator every run and shifts the positional widget values
                    control_after_generate=False,
                    tooltip="motion_blur: seed of the random kernel; inpainting: seed of the random "
                    "pixels or of a randomly placed box. The same seed gives the same operator.",
                ),
                io.Combo.Input(
                    "mask_type",
                    options=list(logic.MASK_TYPES),
                    default="box",
                    tooltip="inpainting without a mask input: 'box' removes a box, 'random' removes "
                    "random pixels.",
                ),
                io.Int.Input(
                    "box_size",
                    default=0,
                    min=0,
                    max=16384,
                    tooltip="inpainting, mask_type box: side of the square box in pixels; 0 = half the "
                    "image in each dimension.",
                ),
                io.Combo.Input(
                    "box_position",
                    options=list(logic.BOX_POSITIONS),
                    default="center",
                    tooltip="inpainting, mask_type box: 'center', or 'random' (drawn from seed with "
                    "DPS's 16 px margins).",
                ),
                io.Float.Input(
                    "random_fraction",
                    default=0.7,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="inpainting, mask_type random: fraction of pixels removed.",
                ),
                io.Float.Input(
                    "pr_oversample",
                    default=2.0,
                    min=0.0,
                    max=8.0,
                    step=0.25,
                    tooltip="phase_retrieval: zero-padding ratio; oversample/8 x size zeros on each side "
                    "(DPS uses 2: a 256 px image gives a 384 px spectrum).",
                ),
                io.Float.Input(
                    "hdr_scale",
                    default=2.0,
                    min=0.01,
                    max=100.0,
                    step=0.1,
                    tooltip="hdr: exposure factor; the measurement is clip(scale x image, -1, 1).",
                ),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip="inpainting (optional): a MASK whose painted area (1) is missing, e.g. from "
                    "the mask editor of Load Image. Overrides mask_type. Must have the image's "
                    "size; batch 1 or one mask per image.",
                ),
            ],
            outputs=[
                OperatorType.Output(
                    display_name="operator",
                    tooltip="The operator, for Simulate Measurement or Measurement from Image.",
                )
            ],
        )

    @classmethod
    def execute(
        cls,
        operator: str,
        sr_factor: str,
        kernel_size: int,
        blur_sigma: float,
        motion_intensity: float,
        seed: int,
        mask_type: str,
        box_size: int,
        box_position: str,
        random_fraction: float,
        pr_oversample: float,
        hdr_scale: float,
        mask: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        spec = logic.operator_spec(
            operator,
            sr_factor=sr_factor,
            kernel_size=kernel_size,
            blur_sigma=blur_sigma,
            motion_intensity=motion_intensity,
            seed=seed,
            mask_type=mask_type,
            box_size=box_size,
            box_position=box_position,
            random_fraction=random_fraction,
            pr_oversample=pr_oversample,
            hdr_scale=hdr_scale,
            mask=mask,
        )
        return io.NodeOutput(spec)


class EquiRegSimulateMeasurement(io.ComfyNode):
    """Degrade a clean image: y = A(x) + noise."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EquiRegSimulateMeasurement",
            display_name="EquiReg Simulate Measurement",
            category=CATEGORY,
            description="Simulates a measurement of a clean image: applies the operator and adds noise. "
            "Outputs the MEASUREMENT for the posterior samplers and an image of it (the "
            "log-magnitude spectrum for phase retrieval; a low-resolution measurement is shown at "
            "the clean image's size).",
            inputs=[
                io.Image.Input("image", tooltip="The clean image(s) to degrade (the ground truth)."),
                OperatorType.Input("operator", tooltip="The measurement operator (EquiReg Operator node)."),
                *_noise_inputs(believed=False),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=MAX_SEED,
                    control_after_generate=True,
                    tooltip="Seed of the measurement noise; image i of a batch uses seed + i.",
                ),
            ],
            outputs=[
                MeasurementType.Output(
                    display_name="measurement",
                    tooltip="Measurement y, operator and target size, for the samplers.",
                ),
                io.Image.Output(
                    display_name="measurement_image", tooltip="A viewable image of the measurement."
                ),
            ],
        )

    @classmethod
    def execute(
        cls, image: torch.Tensor, operator, noise: str, sigma: float, poisson_rate: float, seed: int
    ) -> io.NodeOutput:
        measurement, view = logic.simulate(image, operator, noise, sigma, poisson_rate, seed)
        return io.NodeOutput(measurement, view)


class EquiRegMeasurementFromImage(io.ComfyNode):
    """Use your own degraded image as the measurement."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EquiRegMeasurementFromImage",
            display_name="EquiReg Measurement from Image",
            category=CATEGORY,
            description="Turns a degraded image you already have (a low-resolution, blurry or damaged photo) "
            "into a MEASUREMENT. The size of the image to restore follows from the operator: a "
            "128 px photo with super-resolution x4 gives a 512 px target. Outputs that size too.",
            inputs=[
                io.Image.Input("image", tooltip="The degraded image, i.e. what the operator produced."),
                OperatorType.Input(
                    "operator",
                    tooltip="The operator that degraded it (EquiReg Operator node). "
                    "Phase retrieval is not possible from an image.",
                ),
                *_noise_inputs(believed=True),
            ],
            outputs=[
                MeasurementType.Output(
                    display_name="measurement",
                    tooltip="Measurement y, operator and target size, for the samplers.",
                ),
                io.Int.Output(display_name="width", tooltip="Width in pixels of the image to restore."),
                io.Int.Output(display_name="height", tooltip="Height in pixels of the image to restore."),
            ],
        )

    @classmethod
    def execute(
        cls, image: torch.Tensor, operator, noise: str, sigma: float, poisson_rate: float
    ) -> io.NodeOutput:
        measurement = logic.measurement_from_image(image, operator, noise, sigma, poisson_rate)
        h, w = measurement.image_size
        return io.NodeOutput(measurement, w, h)


class EquiRegTargetLatent(io.ComfyNode):
    """A latent of exactly the size the measurement asks for."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EquiRegTargetLatent",
            display_name="EquiReg Target Latent",
            category=CATEGORY,
            description="Creates the LATENT to sample, with the measurement's target size and batch and the "
            "VAE's latent channels and downscale ratio, so that sizes never mismatch. 'empty' gives "
            "zeros (like Empty Latent Image); 'measurement' encodes a back-projection of the "
            "measurement (for partial denoising).",
            inputs=[
                MeasurementType.Input("measurement", tooltip="The measurement to restore."),
                io.Vae.Input("vae", tooltip="The VAE of the checkpoint used for sampling."),
                io.Combo.Input(
                    "init",
                    options=["empty", "measurement"],
                    default="empty",
                    tooltip="'empty': zeros. 'measurement': VAE-encode the back-projected measurement "
                    "(pseudo-inverse for super-resolution and inpainting, the blurred image "
                    "for deblurring; not available for phase retrieval).",
                ),
            ],
            outputs=[
                io.Latent.Output(
                    display_name="latent", tooltip="Latent of the target size, one per measurement."
                ),
                io.Image.Output(
                    display_name="init_image",
                    tooltip="The back-projected measurement (gray where there is none).",
                ),
            ],
        )

    @classmethod
    def execute(cls, measurement, vae, init: str) -> io.NodeOutput:
        if getattr(vae, "latent_dim", 2) != 2:
            raise ValueError(
                f"vae: a {vae.latent_dim}-D (video/audio) VAE cannot encode images; use an image VAE"
            )
        downscale = int(vae.spacial_compression_encode())
        channels = int(vae.latent_channels)
        samples, init_image = logic.target_latent(
            measurement, downscale, channels, init, encode=lambda img: vae.encode(img)
        )
        return io.NodeOutput(convert.make_latent(samples), init_image)


NODES = [EquiRegOperator, EquiRegSimulateMeasurement, EquiRegMeasurementFromImage, EquiRegTargetLatent]
