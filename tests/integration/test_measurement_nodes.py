"""Operator / Simulate Measurement / Measurement from Image / Target Latent / Metrics inside a real
ComfyUI server, through the HTTP API: results equal the pack's functions computed here, sizes chain
through core nodes, bad inputs give errors naming the input, and the server keeps running."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: pack_import
from pack_import import pack_module  # noqa: E402

logic = pack_module("nodes.logic")

OPERATOR_DEFAULTS = {
    "operator": "super_resolution", "sr_factor": "4", "kernel_size": 61, "blur_sigma": 3.0,
    "motion_intensity": 0.5, "seed": 0, "mask_type": "box", "box_size": 0, "box_position": "center",
    "random_fraction": 0.7, "pr_oversample": 2.0, "hdr_scale": 2.0,
}


def operator_node(**params) -> dict:
    return {"class_type": "EquiRegOperator", "inputs": {**OPERATOR_DEFAULTS, **params}}


def simulate_node(image, operator, noise="none", sigma=0.05, seed=0) -> dict:
    return {"class_type": "EquiRegSimulateMeasurement",
            "inputs": {"image": image, "operator": operator, "noise": noise, "sigma": sigma,
                       "poisson_rate": 1.0, "seed": seed}}


def load_png(comfy, name: str) -> torch.Tensor:
    """The IMAGE that LoadImage makes of a PNG in the input folder: (1, H, W, 3), pixel / 255."""
    from PIL import Image

    arr = np.asarray(Image.open(comfy.server.input_dir / name).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]


@pytest.fixture(scope="module")
def photo(comfy, make_test_image) -> str:
    return comfy.put_input_image("equireg_photo64.png", make_test_image(64, 64, seed=1))


def test_simulate_and_metrics_equal_the_pack_functions(comfy, photo):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": photo}},
        "2": operator_node(operator="gaussian_blur", kernel_size=9, blur_sigma=2.0),
        "3": simulate_node(["1", 0], ["2", 0], noise="gaussian", sigma=0.05, seed=5),
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 1], "filename_prefix": "equireg_blur"}},
        "5": {"class_type": "EquiRegMetrics",
              "inputs": {"image": ["3", 1], "reference": ["1", 0], "label": "blur"}},
    }
    entry = comfy.run(prompt)
    (saved,) = comfy.output_images(entry, "4")

    image = load_png(comfy, photo)
    spec = logic.operator_spec("gaussian_blur", kernel_size=9, blur_sigma=2.0)
    _, view = logic.simulate(image, spec, noise="gaussian", sigma=0.05, seed=5)
    assert saved.shape == (64, 64, 3)
    assert np.abs(saved - view[0].numpy()).max() <= 1.0 / 255 + 1e-6  # SaveImage rounds to 8 bits

    (text,) = comfy.node_output(entry, "5")["text"]
    expected = logic.compute_metrics(view, image)
    psnr, ssim = re.match(r"blur: PSNR ([\d.]+) dB, SSIM ([\d.]+)", text).groups()
    assert float(psnr) == pytest.approx(expected["psnr_mean"], abs=0.006)
    assert float(ssim) == pytest.approx(expected["ssim_mean"], abs=6e-5)
    assert "LPIPS" in text  # either a value or the reason it was not computed


def test_phase_retrieval_view_is_the_padded_log_spectrum(comfy, photo):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": photo}},
        "2": operator_node(operator="phase_retrieval", pr_oversample=2.0),
        "3": simulate_node(["1", 0], ["2", 0]),
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 1], "filename_prefix": "equireg_pr"}},
    }
    (saved,) = comfy.output_images(comfy.run(prompt), "4")
    _, view = logic.simulate(load_png(comfy, photo), logic.operator_spec("phase_retrieval"), noise="none")
    assert saved.shape == (96, 96, 3)  # 64 + 2 * 16 zeros
    assert np.abs(saved - view[0].numpy()).max() <= 1.0 / 255 + 1e-6


def test_inpainting_with_the_mask_from_an_image_alpha(comfy, make_test_image):
    """The mask editor stores its mask as transparency: LoadImage's MASK is 1 there (= missing)."""
    from PIL import Image

    rgb = (make_test_image(64, 64, seed=2) * 255).round().astype(np.uint8)
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[10:30, 20:50] = 0
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(comfy.server.input_dir / "equireg_masked.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "equireg_masked.png"}},
        "2": {"class_type": "EquiRegOperator", "inputs": {**OPERATOR_DEFAULTS, "operator": "inpainting",
                                                          "mask": ["1", 1]}},
        "3": simulate_node(["1", 0], ["2", 0]),
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 1], "filename_prefix": "equireg_inp"}},
    }
    (saved,) = comfy.output_images(comfy.run(prompt), "4")
    hole = alpha == 0
    assert np.allclose(saved[hole], 128 / 255, atol=1 / 255)  # missing pixels are 0 on [-1, 1]: mid-gray
    assert np.abs(saved[~hole] - rgb[~hole] / 255.0).max() <= 1 / 255 + 1e-6


def test_measurement_from_image_sizes_chain_into_core_nodes(comfy, tiny_checkpoint, make_test_image):
    """A 16 px photo with SR x4 -> a 64 px target: the INT outputs drive EmptyLatentImage, and Target
    Latent (measurement init) decodes to the same size."""
    small = comfy.put_input_image("equireg_photo16.png", make_test_image(16, 16, seed=3))
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint}},
        "2": {"class_type": "LoadImage", "inputs": {"image": small}},
        "3": operator_node(operator="super_resolution", sr_factor="4"),
        "4": {"class_type": "EquiRegMeasurementFromImage",
              "inputs": {"image": ["2", 0], "operator": ["3", 0], "noise": "gaussian", "sigma": 0.02,
                         "poisson_rate": 1.0}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": ["4", 1], "height": ["4", 2], "batch_size": 1}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "equireg_empty"}},
        "8": {"class_type": "EquiRegTargetLatent", "inputs": {"measurement": ["4", 0], "vae": ["1", 2],
                                                              "init": "measurement"}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "equireg_init"}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["8", 1], "filename_prefix": "equireg_bp"}},
    }
    entry = comfy.run(prompt)
    (empty,) = comfy.output_images(entry, "7")
    (decoded,) = comfy.output_images(entry, "10")
    (back_projection,) = comfy.output_images(entry, "11")
    assert empty.shape == decoded.shape == back_projection.shape == (64, 64, 3)
    assert np.isfinite(decoded).all()
    m = logic.measurement_from_image(load_png(comfy, small), logic.operator_spec("super_resolution"), "none")
    expected = (logic.back_projection(m)[0].permute(1, 2, 0).numpy() + 1) / 2
    assert np.abs(back_projection - np.clip(expected, 0, 1)).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize(
    "operator, image_size, node_type, message",
    [
        ({"operator": "super_resolution", "sr_factor": "8"}, 60, "EquiRegSimulateMeasurement",
         "image: size 60x60 (H x W) is not divisible by the super-resolution factor 8"),
        ({"operator": "gaussian_blur", "kernel_size": 8}, 64, "EquiRegOperator",
         "kernel_size: expected a positive odd number of pixels (e.g. 61), got 8"),
        ({"operator": "motion_blur", "kernel_size": 129}, 64, "EquiRegSimulateMeasurement",
         "image: size 64x64 (H x W) is too small for kernel_size 129"),
    ],
)
def test_bad_inputs_give_errors_naming_the_input(comfy, make_test_image, operator, image_size, node_type,
                                                 message):
    name = comfy.put_input_image(f"equireg_bad{image_size}.png", make_test_image(image_size, image_size))
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": operator_node(**operator),
        "3": simulate_node(["1", 0], ["2", 0]),
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }
    entry = comfy.run(prompt, check=False)
    (error,) = comfy.messages(entry, "execution_error")
    assert error["node_type"] == node_type
    assert message in error["exception_message"]


def test_mask_of_another_size_and_recovery(comfy, photo):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": photo}},
        "2": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}},
        "3": {"class_type": "EquiRegOperator", "inputs": {**OPERATOR_DEFAULTS, "operator": "inpainting",
                                                          "mask": ["2", 0]}},
        "4": simulate_node(["1", 0], ["3", 0]),
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 1]}},
    }
    entry = comfy.run(prompt, check=False)
    (error,) = comfy.messages(entry, "execution_error")
    assert "mask: the operator's MASK has size (32, 32) (H, W) but the image has size (64, 64)" in (
        error["exception_message"])
    # a non-positive kernel size is refused by ComfyUI's own validation (min 1), naming the input
    bad = {"1": prompt["1"], "2": operator_node(operator="gaussian_blur", kernel_size=0),
           "3": simulate_node(["1", 0], ["2", 0]),
           "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}}}
    refused = comfy.validation_error(bad)
    assert "kernel_size" in str(refused)
    # the server is still serving prompts
    prompt["2"]["inputs"].update(width=64, height=64)
    comfy.run(prompt)
