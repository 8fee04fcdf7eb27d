"""The Posterior Sampler through ComfyUI's model_sampling for every prediction type.

The tiny checkpoint is an EPS model; ComfyUI's own ModelSamplingDiscrete (v_prediction) and
ModelSamplingSD3 (rectified flow, CONST: x = (1 - sigma) x0 + sigma noise) nodes switch its prediction
type and noise space, which is all the pack sees of an SD2-v or SD3/Flux checkpoint. For each type:
DPS with a vanishing step reproduces ComfyUI's Euler image (the solver's noise space and step agree
with the model's), and a real step lowers the measurement residual.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_sampling_nodes import (
    ZETA,
    base_graph,
    photos,  # noqa: F401 - the module-scoped fixture of the pictures
    posterior_sampler_node,
    residual,
    run_images,
    with_euler,
)

PATCHES = {
    "v_prediction": {"class_type": "ModelSamplingDiscrete",
                     "inputs": {"model": ["1", 0], "sampling": "v_prediction", "zsnr": False}},
    "flow": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 3.0}},
}


def patched(graph: dict, kind: str) -> dict:
    graph["15"] = PATCHES[kind]
    graph["9"]["inputs"]["model"] = ["15", 0]
    graph["10"]["inputs"]["model"] = ["15", 0]
    return graph


@pytest.mark.parametrize("kind", sorted(PATCHES))
def test_posterior_sampler_follows_the_model_sampling(comfy, tiny_checkpoint, photos, kind):  # noqa: F811
    name, clean = next(iter(photos.items()))
    euler_graph = patched(with_euler(base_graph(tiny_checkpoint, [name], f"ms_{kind}_euler")), kind)
    euler = run_images(comfy, euler_graph)[0]

    g = patched(base_graph(tiny_checkpoint, [name], f"ms_{kind}_tiny"), kind)
    g["8"] = posterior_sampler_node(comfy, dps_step_size=1e-9, dps_eta=0.0)
    tiny = run_images(comfy, g)[0]
    assert np.abs(tiny - euler).max() <= 2.0 / 255, f"{kind}: DPS without guidance differs from Euler"

    g = patched(base_graph(tiny_checkpoint, [name], f"ms_{kind}_dps"), kind)
    g["8"] = posterior_sampler_node(comfy, dps_step_size=ZETA, dps_eta=0.0)
    dps = run_images(comfy, g)[0]
    assert np.isfinite(dps).all()
    r_dps, r_euler = residual(dps, clean), residual(euler, clean)
    assert r_dps < r_euler, (kind, r_dps, r_euler)
