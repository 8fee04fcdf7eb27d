"""The pack's example workflows (``example_workflows/*.json``, UI format), made reproducibly.

Each workflow is written here as an API-format graph (what ``POST /prompt`` runs) plus a readable layout
(columns), node titles, groups and a Markdown note. ``python make_example_workflows.py`` turns them into
UI-format files the way the frontend itself does (``comfyui_integration.md`` §8): it starts ComfyUI (or
uses ``--url``), loads each graph with ``app.loadApiJson`` in headless Chromium, sets every seed to
"fixed", places the nodes, adds the groups and the note, and saves ``JSON.stringify(app.graph
.serialize())``. The tests check that each file still is its API graph (``workflow_api.ui_to_api``, and
the frontend's own ``graphToPrompt`` in ``test_frontend.py``), so edit the graphs here and regenerate::

    cd <repo> && COMFYUI_PATH=/path/to/ComfyUI <comfy-venv>/bin/python \
        tests/integration/make_example_workflows.py

(``--only NAME`` regenerates one; ``--url http://127.0.0.1:8188`` uses a running server; the ADM examples
``adm_*.json`` are made by ``test_adm_nodes.py``'s own generator.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
EXAMPLES_DIR = REPO_ROOT / "example_workflows"

#: The checkpoint name in ComfyUI's own default workflow (any SD1.5 checkpoint works).
SD15_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
#: ComfyUI ships input/example.png (768 x 768), so every workflow opens with a valid image.
EXAMPLE_IMAGE = "example.png"
POSITIVE = "a sharp, detailed, high quality photograph"
NEGATIVE = "blurry, low resolution, noise, jpeg artifacts, watermark, text"
SEED = 42

# Column x positions are derived from node widths; these are the gaps (canvas units).
COLUMN_GAP = 90
ROW_GAP = 80
MIN_WIDTH = 320
MIN_SCALE = 0.65  # initial zoom at least this (the frontend hides node text when zoomed out further)
TOP = 60
LEFT = 40


class Ref(str):
    """A node id; ``ref[k]`` is the link to its output ``k`` in API format."""

    def __getitem__(self, k):  # type: ignore[override]
        return [str(self), k]


@dataclass
class Example:
    """One example workflow: the API graph and how it is shown."""

    name: str
    note: str
    api: dict[str, dict] = field(default_factory=dict)
    layout: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (column, row)
    titles: dict[str, str] = field(default_factory=dict)
    groups: list[tuple[str, list[str], str]] = field(default_factory=list)  # (title, ids, colour)
    note_column: int = 0
    _rows: dict[int, int] = field(default_factory=dict)

    def add(self, class_type: str, col: int, title: str | None = None, **inputs: Any) -> Ref:
        ref = Ref(str(len(self.api) + 1))
        self.api[ref] = {"class_type": class_type, "inputs": inputs}
        row = self._rows.get(col, 0)
        self._rows[col] = row + 1
        self.layout[ref] = (col, row)
        if title:
            self.titles[ref] = title
        return ref

    def group(self, title: str, ids: list[str], color: str) -> None:
        self.groups.append((title, [str(i) for i in ids], color))


# Group colours of the frontend's palette (LGraphCanvas.node_colors groupcolor values).
BLUE, GREEN, PURPLE, YELLOW, CYAN = "#88A", "#8A8", "#a1309b", "#b58b2a", "#8AA"


# ---------------------------------------------------------------------------------------------------
# Widget defaults: our nodes' inputs are written out completely, so that an API graph equals what the
# frontend exports for the saved workflow (the frontend fills in every widget).
# ---------------------------------------------------------------------------------------------------


def widget_defaults(object_info: dict, class_type: str) -> dict:
    """Default value of every widget input of a node (from ``/object_info``)."""
    info = object_info[class_type]["input"]
    out = {}
    for section in ("required", "optional"):
        for name, spec in info.get(section, {}).items():
            kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
            if opts.get("forceInput"):
                continue
            if isinstance(kind, list):
                out[name] = opts.get("default", kind[0] if kind else None)
            elif kind == "COMBO":
                out[name] = opts.get("default", (opts.get("options") or [None])[0])
            elif kind in ("INT", "FLOAT", "BOOLEAN", "STRING"):
                zero = {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False, "STRING": ""}[kind]
                out[name] = opts.get("default", zero)
    return out


def ours(object_info: dict, class_type: str, **values: Any) -> dict:
    """All widget values of one of our nodes: the schema defaults overridden by ``values`` (links too)."""
    defaults = widget_defaults(object_info, class_type)
    unknown = set(values) - set(defaults) - {
        name for section in ("required", "optional")
        for name in object_info[class_type]["input"].get(section, {})
    }
    if unknown:
        raise KeyError(f"{class_type} has no input(s) {sorted(unknown)}")
    return {**defaults, **values}


def _operator(oi: dict, **values: Any) -> dict:
    return ours(oi, "EquiRegOperator", **values)


def _model(ex: Example, col: int = 0) -> tuple[Ref, Ref, Ref]:
    ckpt = ex.add("CheckpointLoaderSimple", col, "Load Checkpoint (any SD1.5 model)",
                  ckpt_name=SD15_CHECKPOINT)
    pos = ex.add("CLIPTextEncode", col, "Positive prompt (describe the image)", text=POSITIVE, clip=ckpt[1])
    neg = ex.add("CLIPTextEncode", col, "Negative prompt", text=NEGATIVE, clip=ckpt[1])
    return ckpt, pos, neg


def _sampler_custom(ex: Example, col: int, ckpt: Ref, pos: Ref, neg: Ref, sampler: Ref, sigmas: Ref,
                    latent: Ref, cfg: float, title: str | None = None) -> Ref:
    return ex.add("SamplerCustom", col, title, model=ckpt[0], add_noise=True, noise_seed=SEED, cfg=cfg,
                  positive=pos[0], negative=neg[0], sampler=sampler[0], sigmas=sigmas[0],
                  latent_image=latent[0])


# ---------------------------------------------------------------------------------------------------
# The workflows
# ---------------------------------------------------------------------------------------------------


def sr4_dps_equireg_sd15(oi: dict) -> Example:
    ex = Example("sr4_dps_equireg_sd15", note=(
        "## Super-resolution x4: DPS + EquiReg (SD1.5)\n"
        "Restores a **512 x 512** image from a **128 x 128** photo with diffusion posterior sampling (DPS) "
        "in the latent space of any SD1.5 checkpoint. EquiReg penalises estimates on which the VAE "
        "decoder is not flip-equivariant (off-manifold ones).\n\n"
        "1. Pick your checkpoint and a photo; *Resize* makes it 128 x 128 (the target is 4x that).\n"
        "2. Queue. The data term backpropagates through the UNet and the VAE decoder, so each step "
        "costs about 3 plain steps. Start ComfyUI with `--use-pytorch-cross-attention` (flash/sage "
        "attention has no backward).\n\n"
        "Tune `dps_step_size` (stronger pull toward the photo; too large gives artefacts) and the "
        "regularizer's `alpha` (0 = plain DPS)."))
    ckpt, pos, neg = _model(ex, col=0)
    photo = ex.add("LoadImage", 1, "Load Image (your low-resolution photo)", image=EXAMPLE_IMAGE)
    small = ex.add("ImageScale", 1, "Resize to 128 x 128 (measurement size)", image=photo[0],
                   upscale_method="area", width=128, height=128, crop="center")
    op = ex.add("EquiRegOperator", 2, None, **_operator(oi, operator="super_resolution", sr_factor="4"))
    meas = ex.add("EquiRegMeasurementFromImage", 2, None, **ours(
        oi, "EquiRegMeasurementFromImage", image=small[0], operator=op[0], noise="gaussian", sigma=0.05))
    latent = ex.add("EquiRegTargetLatent", 2, None, measurement=meas[0], vae=ckpt[2], init="empty")
    reg = ex.add("EquiRegRegularizer", 3, None, **ours(oi, "EquiRegRegularizer", source="vae_decoder",
                                                        vae=ckpt[2], group="hflip", form="equi", alpha=0.01))
    smp = ex.add("EquiRegPosteriorSampler", 3, None, **ours(
        oi, "EquiRegPosteriorSampler", solver="dps", measurement=meas[0], vae=ckpt[2], equireg=reg[0],
        dps_step_size=1.0, dps_eta=1.0))
    sigmas = ex.add("BasicScheduler", 4, None, model=ckpt[0], scheduler="normal", steps=50, denoise=1.0)
    out = _sampler_custom(ex, 4, ckpt, pos, neg, smp, sigmas, latent, cfg=3.0)
    img = ex.add("VAEDecode", 5, None, samples=out[0], vae=ckpt[2])
    ex.add("SaveImage", 5, "Save Image (512 x 512)", images=img[0], filename_prefix="equireg/sr4_dps_equireg")
    ex.group("Measurement: a 128 px photo, super-resolution x4", [photo, small, op, meas, latent], GREEN)
    ex.group("Posterior sampling", [reg, smp, sigmas, out], BLUE)
    return ex


def inpainting_mask_psld_equireg(oi: dict) -> Example:
    ex = Example("inpainting_mask_psld_equireg", note=(
        "## Inpainting with the mask editor: PSLD + EquiReg\n"
        "Fills the painted area of a photo with PSLD (DPS + a gluing term through the VAE encoder) and "
        "EquiReg, on any SD1.5 checkpoint.\n\n"
        "1. Load a photo (a multiple of 8 pixels per side; 512 x 512 suits SD1.5).\n"
        "2. **Right-click Load Image > Open in MaskEditor** and paint the area to fill; save. The MASK "
        "output goes into the Operator's `mask` input (painted = missing). Without a painted mask, "
        "disconnect it and use `mask_type` box instead.\n"
        "3. Queue.\n\n"
        "PSLD settings are the reference values for box inpainting (`psld_gamma` 0.01, `psld_omega` 0.1); "
        "EquiReg uses the VAE decoder as its MPE function (hflip, alpha 0.01), as the EquiReg paper's "
        "PSLD configuration."))
    ckpt, pos, neg = _model(ex, col=0)
    photo = ex.add("LoadImage", 1, "Load Image (paint the area to fill in the MaskEditor)",
                   image=EXAMPLE_IMAGE)
    op = ex.add("EquiRegOperator", 2, None, **_operator(oi, operator="inpainting", mask=photo[1]))
    meas = ex.add("EquiRegMeasurementFromImage", 2, None, **ours(
        oi, "EquiRegMeasurementFromImage", image=photo[0], operator=op[0], noise="none"))
    latent = ex.add("EquiRegTargetLatent", 2, None, measurement=meas[0], vae=ckpt[2], init="empty")
    reg = ex.add("EquiRegRegularizer", 3, None, **ours(oi, "EquiRegRegularizer", source="vae_decoder",
                                                        vae=ckpt[2], group="hflip", form="equi", alpha=0.01))
    smp = ex.add("EquiRegPosteriorSampler", 3, None, **ours(
        oi, "EquiRegPosteriorSampler", solver="psld", measurement=meas[0], vae=ckpt[2], equireg=reg[0],
        psld_gamma=0.01, psld_omega=0.1, psld_eta=0.0))
    sigmas = ex.add("BasicScheduler", 4, None, model=ckpt[0], scheduler="normal", steps=50, denoise=1.0)
    out = _sampler_custom(ex, 4, ckpt, pos, neg, smp, sigmas, latent, cfg=3.0)
    img = ex.add("VAEDecode", 5, None, samples=out[0], vae=ckpt[2])
    ex.add("SaveImage", 5, None, images=img[0], filename_prefix="equireg/inpainting_psld_equireg")
    ex.group("Measurement: the photo without the painted area", [photo, op, meas, latent], GREEN)
    ex.group("Posterior sampling", [reg, smp, sigmas, out], BLUE)
    return ex


def _simulated(ex: Example, oi: dict, operator: dict, noise_sigma: float = 0.05
               ) -> tuple[Ref, Ref, Ref, Ref, Ref]:
    """Clean image (resized to 512 x 512) -> operator -> Simulate Measurement (+ a preview of it)."""
    photo = ex.add("LoadImage", 1, "Load Image (the clean image)", image=EXAMPLE_IMAGE)
    clean = ex.add("ImageScale", 1, "Resize to 512 x 512 (ground truth)", image=photo[0],
                   upscale_method="area", width=512, height=512, crop="center")
    op = ex.add("EquiRegOperator", 2, None, **_operator(oi, **operator))
    sim = ex.add("EquiRegSimulateMeasurement", 2, None, **ours(
        oi, "EquiRegSimulateMeasurement", image=clean[0], operator=op[0], noise="gaussian", sigma=noise_sigma,
        seed=0))
    view = ex.add("PreviewImage", 2, "Preview: the measurement", images=sim[1])
    return photo, clean, op, sim, view


def _restore_and_score(ex: Example, ckpt: Ref, out: Ref, clean: Ref, label: str, prefix: str, col: int = 5
                       ) -> tuple[Ref, Ref, Ref]:
    img = ex.add("VAEDecode", col, None, samples=out[0], vae=ckpt[2])
    save = ex.add("SaveImage", col, None, images=img[0], filename_prefix=prefix)
    metrics = ex.add("EquiRegMetrics", col, None, image=img[0], reference=clean[0], label=label)
    return img, save, metrics


def gaussian_deblur_resample(oi: dict) -> Example:
    ex = Example("gaussian_deblur_resample", note=(
        "## Gaussian deblurring with ReSample (SD1.5)\n"
        "Blurs a clean image (61 px Gaussian kernel, sigma 3, noise 0.05) and restores it with "
        "ReSample: DPS steps plus, every `resample_interval` steps, hard data consistency (an "
        "optimisation of the decoded image and of the latent against the measurement) followed by "
        "stochastic resampling. Metrics compares the result with the ground truth.\n\n"
        "The consistency optimisations run up to `resample_pixel_iters` / `resample_latent_iters` "
        "iterations (reference 2000 / 500), so a consistency step takes much longer than a sampling "
        "step; lower them for a quick look."))
    ckpt, pos, neg = _model(ex, col=0)
    photo, clean, op, sim, view = _simulated(
        ex, oi, dict(operator="gaussian_blur", kernel_size=61, blur_sigma=3.0))
    latent = ex.add("EquiRegTargetLatent", 3, None, measurement=sim[0], vae=ckpt[2], init="empty")
    smp = ex.add("EquiRegPosteriorSampler", 3, None, **ours(
        oi, "EquiRegPosteriorSampler", solver="resample", measurement=sim[0], vae=ckpt[2]))
    sigmas = ex.add("BasicScheduler", 4, None, model=ckpt[0], scheduler="normal", steps=50, denoise=1.0)
    out = _sampler_custom(ex, 4, ckpt, pos, neg, smp, sigmas, latent, cfg=3.0)
    img, save, metrics = _restore_and_score(ex, ckpt, out, clean, "ReSample", "equireg/deblur_resample")
    ex.group("Simulated measurement", [photo, clean, op, sim, view], GREEN)
    ex.group("Posterior sampling", [latent, smp, sigmas, out], BLUE)
    ex.group("Result", [img, save, metrics], YELLOW)
    return ex


def motion_deblur_sitcom(oi: dict) -> Example:
    ex = Example("motion_deblur_sitcom", note=(
        "## Motion deblurring with SITCOM + EquiReg (SD1.5)\n"
        "Blurs a clean image with a random camera-shake kernel (61 px, intensity 0.5, kernel seed 0) "
        "and restores it with SITCOM: at every step the network input is optimised "
        "(`sitcom_inner_steps` Adam iterations) so that the decoded estimate fits the measurement, then "
        "an EquiReg phase (`sitcom_equi_steps`) lowers the equivariance error of the VAE encoder, as in "
        "the EquiReg paper's SITCOM setting (reduction sqnorm).\n\n"
        "SITCOM needs few steps (20 here) but each runs the inner optimisation."))
    ckpt, pos, neg = _model(ex, col=0)
    photo, clean, op, sim, view = _simulated(
        ex, oi, dict(operator="motion_blur", kernel_size=61, motion_intensity=0.5, seed=0))
    latent = ex.add("EquiRegTargetLatent", 3, None, measurement=sim[0], vae=ckpt[2], init="empty")
    reg = ex.add("EquiRegRegularizer", 3, None, **ours(oi, "EquiRegRegularizer", source="vae_encoder",
                                                        vae=ckpt[2], group="hflip", form="equi", alpha=0.01,
                                                        reduction="sqnorm"))
    smp = ex.add("EquiRegPosteriorSampler", 3, None, **ours(
        oi, "EquiRegPosteriorSampler", solver="sitcom", measurement=sim[0], vae=ckpt[2], equireg=reg[0]))
    sigmas = ex.add("BasicScheduler", 4, None, model=ckpt[0], scheduler="normal", steps=20, denoise=1.0)
    out = _sampler_custom(ex, 4, ckpt, pos, neg, smp, sigmas, latent, cfg=3.0)
    img, save, metrics = _restore_and_score(ex, ckpt, out, clean, "SITCOM + EquiReg", "equireg/motion_sitcom")
    ex.group("Simulated measurement", [photo, clean, op, sim, view], GREEN)
    ex.group("Posterior sampling", [latent, reg, smp, sigmas, out], BLUE)
    ex.group("Result", [img, save, metrics], YELLOW)
    return ex


def phase_retrieval_dps(oi: dict) -> Example:
    ex = Example("phase_retrieval_dps", note=(
        "## Fourier phase retrieval with DPS (SD1.5)\n"
        "Measures only the magnitude of the (2x oversampled) Fourier transform of a clean image, plus "
        "noise 0.05; the preview shows its log-magnitude. DPS (step size 1.0, the reference for phase "
        "retrieval) recovers an image whose spectrum magnitude matches.\n\n"
        "Phase retrieval is ill-posed (flips and shifts give the same magnitude), so results vary with "
        "the seed: the DPS paper reports the best of 4 runs. Change `noise_seed` and compare."))
    ckpt, pos, neg = _model(ex, col=0)
    photo, clean, op, sim, view = _simulated(ex, oi, dict(operator="phase_retrieval", pr_oversample=2.0))
    latent = ex.add("EquiRegTargetLatent", 3, None, measurement=sim[0], vae=ckpt[2], init="empty")
    smp = ex.add("EquiRegPosteriorSampler", 3, None, **ours(
        oi, "EquiRegPosteriorSampler", solver="dps", measurement=sim[0], vae=ckpt[2], dps_step_size=1.0,
        dps_eta=1.0))
    sigmas = ex.add("BasicScheduler", 4, None, model=ckpt[0], scheduler="normal", steps=50, denoise=1.0)
    out = _sampler_custom(ex, 4, ckpt, pos, neg, smp, sigmas, latent, cfg=3.0)
    img, save, metrics = _restore_and_score(ex, ckpt, out, clean, "DPS", "equireg/phase_retrieval_dps")
    ex.group("Simulated measurement (Fourier magnitude)", [photo, clean, op, sim, view], GREEN)
    ex.group("Posterior sampling", [latent, smp, sigmas, out], BLUE)
    ex.group("Result", [img, save, metrics], YELLOW)
    return ex


def research_compare_equireg_metrics(oi: dict) -> Example:
    ex = Example("research_compare_equireg_metrics", note=(
        "## Research: DPS with and without EquiReg, side by side\n"
        "Simulates a noisy x4 super-resolution measurement of a clean image, restores it twice from "
        "the **same seed and schedule** (top: DPS, bottom: DPS + EquiReg), and scores both against the "
        "ground truth (PSNR / SSIM; LPIPS when installed). *Equivariance Error* shows the premise of "
        "EquiReg on the two results: the regularised one should be more equivariant.\n\n"
        "Change the operator, the solver or `alpha` on one branch only to study its effect."))
    ckpt, pos, neg = _model(ex, col=0)
    photo, clean, op, sim, view = _simulated(ex, oi, dict(operator="super_resolution", sr_factor="4"))
    latent = ex.add("EquiRegTargetLatent", 3, None, measurement=sim[0], vae=ckpt[2], init="empty")
    sigmas = ex.add("BasicScheduler", 3, None, model=ckpt[0], scheduler="normal", steps=50, denoise=1.0)
    reg = ex.add("EquiRegRegularizer", 3, None, **ours(oi, "EquiRegRegularizer", source="vae_decoder",
                                                        vae=ckpt[2], group="hflip", form="equi", alpha=0.01))
    dps = dict(solver="dps", measurement=sim[0], vae=ckpt[2], dps_step_size=1.0, dps_eta=1.0)
    plain = ex.add("EquiRegPosteriorSampler", 4, "Posterior Sampler: DPS",
                   **ours(oi, "EquiRegPosteriorSampler", **dps))
    with_reg = ex.add("EquiRegPosteriorSampler", 4, "Posterior Sampler: DPS + EquiReg",
                      **ours(oi, "EquiRegPosteriorSampler", equireg=reg[0], **dps))
    out_a = _sampler_custom(ex, 5, ckpt, pos, neg, plain, sigmas, latent, cfg=3.0, title="SamplerCustom: DPS")
    out_b = _sampler_custom(ex, 5, ckpt, pos, neg, with_reg, sigmas, latent, cfg=3.0,
                            title="SamplerCustom: DPS + EquiReg")
    img_a = ex.add("VAEDecode", 6, "VAE Decode: DPS", samples=out_a[0], vae=ckpt[2])
    met_a = ex.add("EquiRegMetrics", 6, "Metrics: DPS", image=img_a[0], reference=clean[0], label="DPS")
    img_b = ex.add("VAEDecode", 6, "VAE Decode: DPS + EquiReg", samples=out_b[0], vae=ckpt[2])
    met_b = ex.add("EquiRegMetrics", 6, "Metrics: DPS + EquiReg", image=img_b[0], reference=clean[0],
                   label="DPS + EquiReg")
    both = ex.add("ImageBatch", 7, "Side by side (DPS, DPS + EquiReg)", image1=img_a[0], image2=img_b[0])
    ex.add("SaveImage", 7, None, images=both[0], filename_prefix="equireg/compare_dps_equireg")
    err = ex.add("EquiRegEquivarianceError", 7, None, image=both[0], equireg=reg[0])
    ex.group("Simulated measurement", [photo, clean, op, sim, view], GREEN)
    ex.group("Shared settings", [latent, sigmas, reg], CYAN)
    ex.group("Restore twice, same seed", [plain, with_reg, out_a, out_b], BLUE)
    ex.group("Compare", [img_a, met_a, img_b, met_b, both, err], YELLOW)
    return ex


def guider_dpmpp_2m(oi: dict) -> Example:
    ex = Example("guider_dpmpp_2m", note=(
        "## Posterior Guider with dpmpp_2m (SD1.5)\n"
        "The Posterior Guider adds DPS guidance toward the measurement (+ EquiReg) to **any built-in "
        "sampler**: here `dpmpp_2m` with the Karras schedule in SamplerCustomAdvanced, restoring a "
        "512 x 512 image from a 128 x 128 photo (super-resolution x4).\n\n"
        "`step_size` is calibrated so that one Euler step is one DPS step of that size (reference 0.3 "
        "for super-resolution). Swap the sampler in *KSamplerSelect* or the scheduler freely."))
    ckpt, pos, neg = _model(ex, col=0)
    photo = ex.add("LoadImage", 1, "Load Image (your low-resolution photo)", image=EXAMPLE_IMAGE)
    small = ex.add("ImageScale", 1, "Resize to 128 x 128 (measurement size)", image=photo[0],
                   upscale_method="area", width=128, height=128, crop="center")
    op = ex.add("EquiRegOperator", 2, None, **_operator(oi, operator="super_resolution", sr_factor="4"))
    meas = ex.add("EquiRegMeasurementFromImage", 2, None, **ours(
        oi, "EquiRegMeasurementFromImage", image=small[0], operator=op[0], noise="gaussian", sigma=0.05))
    latent = ex.add("EquiRegTargetLatent", 2, None, measurement=meas[0], vae=ckpt[2], init="empty")
    reg = ex.add("EquiRegRegularizer", 3, None, **ours(oi, "EquiRegRegularizer", source="vae_decoder",
                                                        vae=ckpt[2], group="hflip", form="equi", alpha=0.01))
    guider = ex.add("EquiRegPosteriorGuider", 3, None, model=ckpt[0], positive=pos[0], negative=neg[0],
                    cfg=3.0, measurement=meas[0], vae=ckpt[2], step_size=0.3, equireg=reg[0])
    noise = ex.add("RandomNoise", 4, None, noise_seed=SEED)
    sampler = ex.add("KSamplerSelect", 4, None, sampler_name="dpmpp_2m")
    sigmas = ex.add("BasicScheduler", 4, None, model=ckpt[0], scheduler="karras", steps=30, denoise=1.0)
    out = ex.add("SamplerCustomAdvanced", 5, None, noise=noise[0], guider=guider[0], sampler=sampler[0],
                 sigmas=sigmas[0], latent_image=latent[0])
    img = ex.add("VAEDecode", 6, None, samples=out[0], vae=ckpt[2])
    ex.add("SaveImage", 6, "Save Image (512 x 512)", images=img[0], filename_prefix="equireg/guider_dpmpp_2m")
    ex.group("Measurement: a 128 px photo, super-resolution x4", [photo, small, op, meas, latent], GREEN)
    ex.group("Guided sampling with a built-in sampler", [reg, guider, noise, sampler, sigmas, out], BLUE)
    return ex


BUILDERS = {
    f.__name__: f
    for f in (
        sr4_dps_equireg_sd15,
        inpainting_mask_psld_equireg,
        gaussian_deblur_resample,
        motion_deblur_sitcom,
        phase_retrieval_dps,
        research_compare_equireg_metrics,
        guider_dpmpp_2m,
    )
}


def build(name: str, object_info: dict) -> Example:
    return BUILDERS[name](object_info)


def workflow_id(name: str) -> str:
    """A stable id per example (the frontend uses it to tell workflows apart)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/equireg-comfyui/example_workflows/{name}"))


# ---------------------------------------------------------------------------------------------------
# In the browser: API graph -> laid-out UI workflow
# ---------------------------------------------------------------------------------------------------

_ARRANGE_JS = """
([layout, titles, groups, note, noteColumn, gap]) => {
  const g = app.graph;
  const byId = Object.fromEntries(g._nodes.map(n => [String(n.id), n]));
  // every seed "fixed": reproducible examples (the API->UI conversion gives "randomize")
  for (const n of g._nodes) {
    for (const w of (n.widgets || [])) if (w.name === 'control_after_generate') w.value = 'fixed';
  }
  for (const [id, t] of Object.entries(titles)) byId[id].title = t;
  for (const n of g._nodes) {
    const [w, h] = n.computeSize();
    n.setSize([Math.max(w, gap.minWidth), h]);
  }
  // the note sits on top of its column
  let noteNode = null;
  if (note) {
    noteNode = LiteGraph.createNode('MarkdownNote');
    noteNode.widgets[0].value = note;
    noteNode.title = 'About this workflow';
    g.add(noteNode);
    noteNode.setSize([420, 330]);
  }
  const columns = {};
  for (const [id, [col, row]] of Object.entries(layout)) (columns[col] ||= []).push([row, byId[id]]);
  if (noteNode) (columns[noteColumn] ||= []).push([-1, noteNode]);
  const TITLE = LiteGraph.NODE_TITLE_HEIGHT;
  let x = gap.left;
  for (const col of Object.keys(columns).map(Number).sort((a, b) => a - b)) {
    const items = columns[col].sort((a, b) => a[0] - b[0]).map(e => e[1]);
    const width = Math.max(...items.map(n => n.size[0]));
    let y = gap.top;
    for (const n of items) {
      n.pos = [x, y + TITLE];
      y += n.size[1] + TITLE + gap.row;
    }
    x += width + gap.column;
  }
  for (const [title, ids, color] of groups) {
    const members = ids.map(id => byId[id]);
    const pad = 14;
    const gx = Math.min(...members.map(n => n.pos[0])) - pad;
    const gy = Math.min(...members.map(n => n.pos[1] - TITLE)) - pad - 34;
    const gw = Math.max(...members.map(n => n.pos[0] + n.size[0])) + pad - gx;
    const gh = Math.max(...members.map(n => n.pos[1] + n.size[1])) + pad - gy;
    const grp = new LiteGraph.LGraphGroup(title);
    grp.color = color;
    grp.pos = [gx, gy];
    grp.size = [gw, gh];
    g.add(grp);
  }
  g.setDirtyCanvas(true, true);
  // open the workflow showing all of it
  const xs = g._nodes.map(n => n.pos[0]), ys = g._nodes.map(n => n.pos[1] - TITLE);
  const xe = g._nodes.map(n => n.pos[0] + n.size[0]), ye = g._nodes.map(n => n.pos[1] + n.size[1]);
  const x0 = Math.min(...xs), y0 = Math.min(...ys);
  app.canvas.ds.fitToBounds([x0 - 20, y0 - 40, Math.max(...xe) - x0 + 40, Math.max(...ye) - y0 + 60]);
  if (app.canvas.ds.scale < gap.minScale) {  // below this the canvas drops the text: show the start instead
    app.canvas.ds.scale = gap.minScale;
    app.canvas.ds.offset = [-x0 + 20, -y0 + 40];
  }
  app.canvas.setDirty(true, true);
  return g._nodes.length;
}
"""


def to_ui(frontend, example: Example) -> dict:
    """Load the example's API graph in the frontend, lay it out and export the UI workflow."""
    frontend.load_api(example.api, example.name)
    gaps = {"left": LEFT, "top": TOP, "row": ROW_GAP, "column": COLUMN_GAP, "minWidth": MIN_WIDTH,
            "minScale": MIN_SCALE}
    frontend.evaluate(_ARRANGE_JS, [example.layout, example.titles, example.groups, example.note,
                                    example.note_column, gaps])
    frontend.page.wait_for_timeout(300)
    ui = frontend.serialize()
    ui["id"] = workflow_id(example.name)
    ds = (ui.get("extra") or {}).get("ds")
    if ds:  # rounded, so that regenerating gives the same file
        ds["scale"] = round(float(ds["scale"]), 4)
        ds["offset"] = [round(float(v), 2) for v in ds["offset"]]
    return ui


_FIT_JS = """
([top, margin]) => {
  app.canvas.min_font_size_for_lod = 0;  // draw text at every zoom level
  const s = app.extensionManager.setting;
  if (s) { try { s.set('Comfy.Minimap.Visible', false); } catch (e) {} }
  const g = app.graph, T = LiteGraph.NODE_TITLE_HEIGHT, items = [...g._nodes, ...g._groups];
  const x0 = Math.min(...items.map(n => n.pos[0])) - margin;
  const y0 = Math.min(...items.map(n => n.pos[1] - T)) - margin;
  const x1 = Math.max(...items.map(n => n.pos[0] + n.size[0])) + margin;
  const y1 = Math.max(...items.map(n => n.pos[1] + n.size[1])) + margin;
  const el = app.canvas.canvas, w = el.clientWidth, h = el.clientHeight - top;
  const scale = Math.min(w / (x1 - x0), h / (y1 - y0));
  app.canvas.ds.scale = scale;
  app.canvas.ds.offset = [-x0 + (w / scale - (x1 - x0)) / 2, -y0 + top / scale + (h / scale - (y1 - y0)) / 2];
  app.canvas.setDirty(true, true);
  const r = el.getBoundingClientRect(), ds = app.canvas.ds;
  // the graph's rectangle on the page
  return [r.left + (x0 + ds.offset[0]) * scale, r.top + (y0 + ds.offset[1]) * scale,
          (x1 - x0) * scale, (y1 - y0) * scale];
}
"""


def render(frontend, workflow: dict, name: str, viewport: tuple[int, int], canvas_only: bool = False):
    """Open a UI workflow as a user would, fit it into the view and return a Pillow image of the page
    (or only of the graph's rectangle). Level of detail is switched off, so that text is drawn at any
    zoom."""
    import io

    from PIL import Image

    old_viewport = frontend.page.viewport_size
    frontend.page.set_viewport_size({"width": viewport[0], "height": viewport[1]})
    try:
        frontend.page.wait_for_timeout(500)  # the canvas follows the new size asynchronously
        frontend.load_ui(workflow, name)
        left, top, width, height = frontend.evaluate(_FIT_JS, [60, 60])
        frontend.page.wait_for_timeout(1500)
        img = Image.open(io.BytesIO(frontend.page.screenshot())).convert("RGB")
    finally:
        frontend.page.set_viewport_size(old_viewport)
        frontend.page.wait_for_timeout(500)
    if canvas_only:
        img = img.crop((round(left), round(top), round(left + width), round(top + height)))
    return img


def screenshot(frontend, workflow: dict, path: Path, name: str = "workflow", width: int = 1600,
               max_bytes: int = 500_000) -> int:
    """A PNG of the workflow in the frontend (``width`` px wide, fewer colours until < ``max_bytes``),
    rendered at 2200 px and downsampled; returns the file size."""
    import io

    from PIL import Image

    img = render(frontend, workflow, name, (2200, 1240))
    img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    for colors in (None, 256, 128, 64):
        out = img if colors is None else img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
        buf = io.BytesIO()
        out.save(buf, format="PNG", optimize=True)
        if buf.tell() < max_bytes:
            break
    path.write_bytes(buf.getvalue())
    return buf.tell()


def thumbnail(frontend, workflow: dict, path: Path, name: str, size: int = 384) -> int:
    """The Templates dialog's picture of an example (``<name>.jpg`` next to the JSON): the whole graph
    on the canvas colour, square, ``size`` px; returns the file size."""
    from PIL import Image

    img = render(frontend, workflow, name, (1500, 1000), canvas_only=True)
    side = max(img.size)
    square = Image.new("RGB", (side, side), img.getpixel((2, 2)))  # the canvas colour around the graph
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    img = square.resize((size, size), Image.LANCZOS)
    img.save(path, format="JPEG", quality=82, optimize=True)
    return path.stat().st_size


def write(path: Path, workflow: dict) -> None:
    path.write_text(json.dumps(workflow, indent=1, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running ComfyUI server with this pack (default: start one)")
    parser.add_argument("--only", action="append", choices=sorted(BUILDERS), help="regenerate only these")
    parser.add_argument("--no-write", action="store_true", help="only take the screenshot")
    parser.add_argument("--screenshot", type=Path,
                        help="also save a PNG of one workflow in the frontend here")
    parser.add_argument("--screenshot-workflow", default="sr4_dps_equireg_sd15", choices=sorted(BUILDERS),
                        help="the workflow shown in the screenshot")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import requests
    from frontend import Frontend, unavailable_reason
    from workflow_check import check_workflow

    reason = unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    server = None
    url = args.url
    if url is None:
        from conftest import ComfyServer, _link_pack

        comfyui = os.environ.get("COMFYUI_PATH")
        if not comfyui:
            print("set COMFYUI_PATH=/path/to/ComfyUI or pass --url", file=sys.stderr)
            return 2
        import tempfile

        workdir = Path(tempfile.mkdtemp(prefix="equireg_examples_"))
        _link_pack(Path(comfyui))
        server = ComfyServer(Path(comfyui), workdir)
        server.start()
        server.wait_ready()
        url = server.url
    status = 0
    try:
        object_info = requests.get(url + "/object_info", timeout=60).json()
        names = [] if args.no_write else (args.only or list(BUILDERS))
        with Frontend(url) as fe:
            for name in names:
                example = build(name, object_info)
                ui = to_ui(fe, example)
                problems = check_workflow(ui, object_info)
                if problems:  # written anyway: the frontend's export is the reference, the check may lag
                    print(f"{name}: tests/workflow_check.py reports:\n  " + "\n  ".join(problems),
                          file=sys.stderr)
                    status = 1
                write(EXAMPLES_DIR / f"{name}.json", ui)
                thumbnail(fe, ui, EXAMPLES_DIR / f"{name}.jpg", name)
                print(f"wrote example_workflows/{name}.json ({len(ui['nodes'])} nodes, "
                      f"{len(ui['links'])} links)")
        if args.screenshot:  # in a fresh page: one tab, as a user opening the file sees it
            with Frontend(url) as fe:
                name = args.screenshot_workflow
                workflow = json.loads((EXAMPLES_DIR / f"{name}.json").read_text())
                size = screenshot(fe, workflow, args.screenshot, name)
                print(f"wrote {args.screenshot} ({size} bytes) from {name}")
    finally:
        if server is not None:
            server.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
