"""The pack loads in a real ComfyUI server, the tiny checkpoint runs, and the committed schema fixture
(``tests/fixtures/equireg_object_info.json``, used by the CI workflow checks) matches the live server.

Regenerate the fixture after changing a node's schema::

    EQUIREG_UPDATE_FIXTURES=1 COMFYUI_PATH=... <comfy venv>/bin/python -m pytest tests/integration -k fixture
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: workflow_check
from workflow_check import without_file_lists  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "equireg_object_info.json"
OUR_NODES = {"EquiRegOperator", "EquiRegSimulateMeasurement", "EquiRegMeasurementFromImage",
             "EquiRegTargetLatent", "EquiRegMetrics"}


def test_pack_loads_without_errors(comfy, equireg_object_info):
    log = comfy.server.log()
    assert "EquiReg IMPORT FAILED" not in log, log[-6000:]
    assert OUR_NODES <= set(equireg_object_info), sorted(equireg_object_info)
    for node_id, info in equireg_object_info.items():
        assert node_id.startswith("EquiReg")
        assert info["category"].startswith("EquiReg/")
        assert info["python_module"] == "custom_nodes.equireg_nodes"


def test_object_info_fixture_is_current(equireg_object_info):
    """CI validates example workflows against this file, so it must be what the server really serves."""
    # Nodes sorted by id; inside a node the server's order is kept (input order = widget order).
    text = json.dumps(dict(sorted(equireg_object_info.items())), indent=1) + "\n"
    if os.environ.get("EQUIREG_UPDATE_FIXTURES"):
        FIXTURE.write_text(text)
    assert FIXTURE.exists(), f"{FIXTURE} is missing; run with EQUIREG_UPDATE_FIXTURES=1 to create it"
    committed = json.loads(FIXTURE.read_text())
    live = json.loads(text)
    # file-name dropdowns list the model folders of the machine, not the pack's schema
    stale = sorted(k for k in set(committed) | set(live)
                   if k not in committed or k not in live
                   or without_file_lists(committed[k]) != without_file_lists(live[k]))
    assert not stale, (f"{FIXTURE.name} is stale for {stale}; regenerate it with EQUIREG_UPDATE_FIXTURES=1 "
                       "(see this module's docstring)")


def test_tiny_checkpoint_txt2img(comfy, tiny_checkpoint):
    """The random-weight checkpoint loads as SD1.5 and a plain KSampler run gives a finite image."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "tiny_txt2img"}},
    }
    entry = comfy.run(prompt, timeout=300)
    (image,) = comfy.output_images(entry, "7")
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image).all()
    assert "model_type EPS" in comfy.server.log()
