"""Metrics node: PSNR and SSIM of restored images against a reference (LPIPS when available locally).

The computation is :func:`.logic.compute_metrics` (pure PyTorch, tested without ComfyUI).
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from . import logic


class EquiRegMetrics(io.ComfyNode):
    """Full-reference image quality of a restoration."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EquiRegMetrics",
            display_name="EquiReg Metrics",
            category="EquiReg/metrics",
            description="PSNR (dB) and SSIM of restored images against the reference (ground-truth) image, "
            "on the [0, 1] intensity range; the numbers are means over the batch, the text also lists each "
            "image. LPIPS (AlexNet) is added when the 'lpips' package and its weights are already on this "
            "machine (nothing is downloaded); the text says when it is not.",
            inputs=[
                io.Image.Input("image", tooltip="The restored image(s)."),
                io.Image.Input(
                    "reference",
                    tooltip="The ground truth: one image for the whole batch, or one per image. Same size "
                    "as the restored images.",
                ),
                io.String.Input(
                    "label",
                    default="",
                    tooltip="Optional name shown in front of the numbers (e.g. 'DPS + EquiReg').",
                ),
            ],
            outputs=[
                io.Float.Output(display_name="psnr", tooltip="Mean PSNR in dB (higher is better)."),
                io.Float.Output(display_name="ssim", tooltip="Mean SSIM, at most 1 (higher is better)."),
                io.String.Output(display_name="text", tooltip="A readable summary of all metrics."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image: torch.Tensor, reference: torch.Tensor, label: str = "") -> io.NodeOutput:
        result = logic.compute_metrics(image, reference)
        text = logic.metrics_text(result, label.strip())
        return io.NodeOutput(result["psnr_mean"], result["ssim_mean"], text, ui={"text": [text]})


NODES = [EquiRegMetrics]
