"""The inputs of the CI workflow check (``tests/test_workflows.py``) against the real server and frontend
output: the core-node schema fixture equals the live ``/object_info`` and covers every core node the
example workflows use, and the checker accepts workflows saved by the real frontend (ComfyUI's own
workflow templates, which ship with ComfyUI's requirements).

Add or refresh core schemas after adding a core node to an example workflow::

    EQUIREG_UPDATE_FIXTURES=1 COMFYUI_PATH=... <venv>/bin/python -m pytest tests/integration -k core_fixture
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from workflow_check import FRONTEND_ONLY, check_workflow, without_file_lists  # noqa: E402

CORE_FIXTURE = TESTS / "fixtures" / "comfyui_object_info_core.json"
EXAMPLES = sorted((TESTS.parent / "example_workflows").glob("*.json"))
#: Core nodes kept in the fixture beyond those the examples use (handy for new examples).
EXTRA_CORE_NODES = [
    "PreviewAny",
    "KSamplerAdvanced",
    "LoraLoader",
    "LoraLoaderModelOnly",
    "ImageBatch",
    "SetLatentNoiseMask",
    "ExponentialScheduler",
    "SDTurboScheduler",
    "ImageInvert",
    "ModelSamplingDiscrete",
    "ImageCompositeMasked",
    "LatentUpscaleBy",
]


def _core_types_used_by_examples(live: dict) -> set[str]:
    used = set()
    for path in EXAMPLES:
        for node in json.loads(path.read_text()).get("nodes", []):
            t = node.get("type")
            if t not in FRONTEND_ONLY and not str(t).startswith("EquiReg") and t in live:
                used.add(t)
    return used


def test_core_fixture_matches_the_server_and_covers_the_examples(comfy):
    live = comfy.object_info
    fixture = json.loads(CORE_FIXTURE.read_text())
    wanted = _core_types_used_by_examples(live) | set(EXTRA_CORE_NODES) | (set(fixture) - {"_source"})
    if os.environ.get("EQUIREG_UPDATE_FIXTURES"):
        source = fixture.get("_source", {})
        source["note_update"] = (
            "Entries added or refreshed from a live server by "
            "tests/integration/test_workflow_fixtures.py; file-name dropdowns list that "
            "server's files."
        )
        fixture = {"_source": source, **{t: live[t] for t in sorted(wanted) if t in live}}
        CORE_FIXTURE.write_text(json.dumps(fixture, indent=1) + "\n")
    missing = sorted(wanted - set(fixture))
    assert not missing, (
        f"core schemas missing from {CORE_FIXTURE.name}: {missing} (update with EQUIREG_UPDATE_FIXTURES=1)"
    )
    differ = sorted(
        t
        for t in set(fixture) - {"_source"}
        if t in live and without_file_lists(fixture[t]) != without_file_lists(live[t])
    )
    assert not differ, f"{CORE_FIXTURE.name} differs from the live server for {differ}"


def test_checker_accepts_workflows_saved_by_the_real_frontend(comfy):
    """Positive control: ComfyUI's workflow templates were saved by the real frontend. Those made only of
    nodes this server has must (nearly all) pass; the few that fail are stale templates whose node
    schemas changed since they were saved (checked by hand: e.g. a SaveImage without its prefix)."""
    templates = pytest.importorskip("comfyui_workflow_templates")
    folder = Path(templates.__file__).parent / "templates"
    live = comfy.object_info
    checked, failed = 0, {}
    for path in sorted(folder.glob("*.json")):
        workflow = json.loads(path.read_text())
        if not isinstance(workflow, dict) or "nodes" not in workflow:
            continue
        if not {n["type"] for n in workflow["nodes"]} <= set(live) | FRONTEND_ONLY:
            continue
        checked += 1
        problems = check_workflow(workflow, live, require_fixed_seeds=False)
        if problems:
            failed[path.name] = problems[:3]
    assert checked >= 50, f"only {checked} templates use available nodes"
    assert len(failed) <= 0.25 * checked, json.dumps(failed, indent=1)[:6000]
