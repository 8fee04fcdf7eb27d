"""Drive ComfyUI's real web frontend in headless Chromium (Playwright's Python driver, no bundled browser).

Used by ``test_frontend.py`` (every example workflow loads with no missing nodes and no invalid-workflow
alert; the Templates dialog lists the pack's workflows) and by ``make_example_workflows.py`` (API graph
-> ``app.loadApiJson`` -> layout -> ``JSON.stringify(app.graph.serialize())``, serialised inside the
browser because Playwright would turn ``undefined`` into ``null``, which the frontend's schema rejects).

Needs the ``playwright`` package (``pip install playwright``; only the driver, no ``playwright install``)
and a Chromium executable: ``/usr/bin/chromium`` (Debian ``apt-get install chromium fonts-dejavu-core``)
or the path in ``EQUIREG_CHROMIUM``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}
READY_TIMEOUT_MS = 180_000


def chromium_path() -> str | None:
    """The Chromium executable to drive, or None."""
    env = os.environ.get("EQUIREG_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    found = shutil.which("chromium")
    return found


def unavailable_reason() -> str | None:
    """Why the frontend cannot be driven here (None when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return ("frontend checks need the 'playwright' Python package in the test environment "
                "(pip install playwright; the driver only, no browser download)")
    if chromium_path() is None:
        return ("frontend checks need Chromium: apt-get install chromium fonts-dejavu-core, or set "
                "EQUIREG_CHROMIUM=/path/to/chromium")
    return None


class Frontend:
    """One headless Chromium page on a ComfyUI server's web UI (use as a context manager)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.console: list[str] = []
        self._pw = None
        self.browser = None
        self.page = None

    def __enter__(self) -> Frontend:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=chromium_path(), args=LAUNCH_ARGS,
                                                headless=True)
        self.page = self.browser.new_page(viewport=VIEWPORT)
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.browser is not None:
            self.browser.close()
        if self._pw is not None:
            self._pw.stop()

    # -- page state ----------------------------------------------------------------------------------
    def open(self) -> None:
        """(Re)load the UI, wait for the node registry and close the first-run template dialog."""
        self.page.goto(self.url)
        self.page.wait_for_function(
            "window.app && window.app.graph && window.LiteGraph && "
            "Object.keys(LiteGraph.registered_node_types).length > 100",
            timeout=READY_TIMEOUT_MS,
        )
        self.close_dialogs()

    def close_dialogs(self) -> None:
        for _ in range(3):
            if not self.visible_dialog_texts():
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(300)

    def visible_dialog_texts(self) -> list[str]:
        """Texts of the open dialogs (PrimeVue ``.p-dialog``)."""
        return self.page.evaluate(
            "() => [...document.querySelectorAll('.p-dialog')].filter(d => d.offsetParent !== null)"
            ".map(d => d.innerText)"
        )

    def toast_texts(self) -> list[str]:
        return self.page.evaluate(
            "() => [...document.querySelectorAll('.p-toast-message')].map(d => d.innerText)"
        )

    def registered_types(self) -> set[str]:
        return set(self.page.evaluate("() => Object.keys(LiteGraph.registered_node_types)"))

    # -- workflows -----------------------------------------------------------------------------------
    def load_ui(self, workflow: dict, name: str = "check", settle_ms: int = 800) -> dict:
        """Load a UI-format workflow like opening a file; report what the frontend made of it.

        Returns ``{"nodes": n, "unknown_types": [...], "dialogs": [...], "toasts": [...], "console":
        [...]}``: types without a registered node class, texts of dialogs and toasts that opened, and
        console lines about an invalid workflow or missing nodes.
        """
        self.close_dialogs()
        start = len(self.console)
        self.page.evaluate("async ([wf, name]) => { await app.loadGraphData(wf, true, true, name); }",
                           [workflow, name])
        self.page.wait_for_timeout(settle_ms)
        unknown = self.page.evaluate(
            "() => app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type] || "
            "n.has_errors || (n.constructor && n.constructor.name === 'LGraphNode' && "
            "n.type !== 'Reroute')).map(n => n.type)"
        )
        report = {
            "nodes": self.page.evaluate("() => app.graph._nodes.length"),
            "unknown_types": sorted(set(unknown)),
            "dialogs": self.visible_dialog_texts(),
            "toasts": self.toast_texts(),
            "console": [line for line in self.console[start:]
                        if "invalid workflow" in line.lower() or "missing" in line.lower()
                        or "zod" in line.lower()],
        }
        self.close_dialogs()
        return report

    def load_api(self, prompt: dict, name: str) -> None:
        self.page.evaluate("async ([p, n]) => { await app.loadApiJson(p, n); }", [prompt, name])
        self.page.wait_for_timeout(300)
        self.close_dialogs()

    def serialize(self) -> dict:
        """The current graph in UI format (stringified inside the browser: keeps ``undefined`` out)."""
        return json.loads(self.page.evaluate("() => JSON.stringify(app.graph.serialize())"))

    def graph_to_prompt(self) -> dict:
        """The API prompt the frontend would queue for the current graph."""
        script = "async () => JSON.stringify((await app.graphToPrompt()).output)"
        return json.loads(self.page.evaluate(script))

    def evaluate(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        self.page.screenshot(path=str(path), full_page=full_page)

    # -- templates -----------------------------------------------------------------------------------
    def open_templates(self, timeout_s: float = 30.0) -> str:
        """Open the Templates dialog (command ``Comfy.BrowseTemplates``); return its text."""
        self.close_dialogs()
        self.page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            texts = self.visible_dialog_texts()
            text = "\n".join(texts)
            if texts and ("Custom Nodes" in text or "custom" in text.lower()):
                break
            self.page.wait_for_timeout(300)
        return text

    def click_text(self, text: str, in_dialog: bool = True) -> None:
        """Click the first element showing exactly ``text``, inside the open dialog unless told otherwise
        (workflow tabs carry names too); scrolled into view first (the Templates dialog's cards are
        below the fold)."""
        scope = self.page.locator(".p-dialog") if in_dialog else self.page
        loc = scope.get_by_text(text, exact=True).first
        loc.scroll_into_view_if_needed()
        loc.click()
        self.page.wait_for_timeout(500)
