"""The example workflows in ComfyUI's real web frontend (headless Chromium driven by Playwright).

Checked: every ``example_workflows/*.json`` loads with no missing node types, no "Some Nodes Are
Missing" dialog and no "Invalid workflow" alert (a renamed node type and a broken field are caught: the
check can fail); the frontend's own ``graphToPrompt`` gives exactly the prompt that
``workflow_api.ui_to_api`` gives (which ``test_example_workflows.py`` runs); the Templates dialog lists
the pack's workflows under "Custom Nodes" and opens one.

Skipped without ``COMFYUI_PATH`` (like every integration test) and without Playwright + Chromium::

    apt-get install -y chromium fonts-dejavu-core
    <comfy-venv>/bin/pip install playwright      # the driver only; uses /usr/bin/chromium
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from conftest import PACK_FOLDER  # noqa: E402
from frontend import Frontend, unavailable_reason  # noqa: E402
from workflow_api import strip_meta, ui_to_api  # noqa: E402

EXAMPLES = sorted((REPO_ROOT / "example_workflows").glob("*.json"))


@pytest.fixture(scope="module")
def frontend(comfy):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with Frontend(comfy.url) as fe:
        yield fe


def _problems(report: dict) -> list[str]:
    out = [f"unknown node types: {report['unknown_types']}"] if report["unknown_types"] else []
    out += [f"dialog: {t[:300]}" for t in report["dialogs"]]
    out += [f"alert: {t[:300]}" for t in report["toasts"]
            if any(w in t.lower() for w in ("invalid", "missing", "error"))]
    out += [f"console: {t[:300]}" for t in report["console"]]
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_loads_cleanly_and_converts_like_ui_to_api(frontend, comfy, path):
    workflow = json.loads(path.read_text())
    report = frontend.load_ui(workflow, path.stem)
    assert not _problems(report), f"{path.name}: " + "\n".join(_problems(report))
    assert report["nodes"] == len(workflow["nodes"])
    # every seed stays "fixed" after loading (the frontend would otherwise change them on queueing)
    modes = frontend.evaluate(
        "() => app.graph._nodes.flatMap(n => (n.widgets || []).filter(w => w.name === "
        "'control_after_generate').map(w => w.value))")
    assert all(m == "fixed" for m in modes), modes
    assert strip_meta(frontend.graph_to_prompt()) == ui_to_api(workflow, comfy.object_info)


def test_the_load_check_can_fail(frontend):
    """Negative controls: a node type that does not exist, and a field the frontend's schema rejects."""
    workflow = json.loads(EXAMPLES[0].read_text())
    renamed = copy.deepcopy(workflow)
    renamed["nodes"][0]["type"] = "EquiRegNotARealNode"
    report = frontend.load_ui(renamed, "negative-control")
    assert "EquiRegNotARealNode" in report["unknown_types"]
    assert any("Missing" in t and "EquiRegNotARealNode" in t for t in report["dialogs"]), report

    broken = copy.deepcopy(workflow)
    broken["nodes"][0]["pos"] = None  # what serialising through Playwright (undefined -> null) would do
    report = frontend.load_ui(broken, "negative-control-2")
    assert any("Invalid workflow" in t for t in report["toasts"]), report


def test_templates_dialog_lists_and_opens_the_packs_workflows(frontend):
    text = frontend.open_templates()
    assert "Custom Nodes" in text and PACK_FOLDER in text, text[:2000]
    frontend.click_text(PACK_FOLDER)
    frontend.page.wait_for_timeout(1000)
    listed = "\n".join(frontend.visible_dialog_texts())
    missing = [p.stem for p in EXAMPLES if p.stem not in listed]
    assert not missing, f"not listed under Custom Nodes > {PACK_FOLDER}: {missing}\n{listed[:2000]}"

    # opening one from the dialog loads it (fetched from /api/workflow_templates/<pack>/<name>.json)
    name = "guider_dpmpp_2m" if (REPO_ROOT / "example_workflows" / "guider_dpmpp_2m.json").exists() \
        else EXAMPLES[0].stem
    expected = json.loads((REPO_ROOT / "example_workflows" / f"{name}.json").read_text())
    frontend.click_text(name)
    frontend.page.wait_for_function(f"() => app.graph._nodes.length === {len(expected['nodes'])}",
                                    timeout=30_000)
    types = frontend.evaluate("() => app.graph._nodes.map(n => n.type).sort()")
    assert types == sorted(n["type"] for n in expected["nodes"])
    assert not any("Missing" in t for t in frontend.visible_dialog_texts())
    frontend.close_dialogs()
