"""Fixtures for the integration tests: a real ComfyUI server with this pack loaded.

Everything here needs a ComfyUI checkout named by the environment variable ``COMFYUI_PATH`` and must run
in ComfyUI's Python environment::

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/integration

Without ``COMFYUI_PATH`` every test in this directory is skipped with that reason (shown by ``-ra``).

Fixtures
--------
``comfyui_path``  the checkout (skips when unset).
``tiny_checkpoint``  file name (for CheckpointLoaderSimple) of a random-weight checkpoint that ComfyUI
    detects as SD1.5, built once with ComfyUI's own classes and cached in the checkout's
    ``models/checkpoints`` (see ``build_tiny_checkpoint.py``).
``comfy``  a :class:`ComfyClient` bound to a server started once per session: ``--cpu
    --use-pytorch-cross-attention --preview-method latent2rgb`` on a free port, with this repository
    linked as ``custom_nodes/equireg_nodes``, only that custom-node folder enabled, and private
    input/output/temp/user directories. Setup fails when the log reports an import failure of the
    pack or when no ``EquiReg`` node is registered. The server is stopped at the end of the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_FOLDER = "equireg_nodes"  # name of the link in custom_nodes/: also the frontend's pack name
CHECKPOINT_NAME = "equireg_tiny_sd15.safetensors"
SERVER_START_TIMEOUT_S = float(os.environ.get("EQUIREG_SERVER_START_TIMEOUT", "240"))
DEFAULT_PROMPT_TIMEOUT_S = float(os.environ.get("EQUIREG_PROMPT_TIMEOUT", "300"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this directory ``integration`` (select or deselect them with ``-m``)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


# ---------------------------------------------------------------------------------------------------
# ComfyUI checkout and the tiny checkpoint
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    value = os.environ.get("COMFYUI_PATH")
    if not value:
        pytest.skip(
            "integration tests need a ComfyUI checkout: set COMFYUI_PATH=/path/to/ComfyUI and run "
            "pytest with ComfyUI's Python environment"
        )
    path = Path(value).expanduser().resolve()
    if not (path / "main.py").is_file() or not (path / "comfy_api").is_dir():
        pytest.fail(f"COMFYUI_PATH={value!r} is not a ComfyUI checkout (main.py / comfy_api missing)")
    return path


@pytest.fixture(autouse=True)
def _require_comfyui(comfyui_path: Path) -> None:
    """Autouse: every test of this directory is skipped (with the reason above) without COMFYUI_PATH."""


def _checkpoint_version(path: Path) -> str | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("equireg_builder_version")
    except Exception:  # unreadable or truncated file: rebuild
        return None


@pytest.fixture(scope="session")
def tiny_checkpoint(comfyui_path: Path) -> str:
    """Build (once; cached across sessions) the tiny SD1.5 checkpoint and return its file name."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from build_tiny_checkpoint import BUILDER_VERSION
    finally:
        sys.path.pop(0)
    target = comfyui_path / "models" / "checkpoints" / CHECKPOINT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    # A file lock, because several test sessions may share one ComfyUI checkout.
    with open(str(target) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists() or _checkpoint_version(target) != BUILDER_VERSION:
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).parent / "build_tiny_checkpoint.py"), str(target)],
                cwd=comfyui_path,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if proc.returncode != 0:
                pytest.fail(
                    f"building the tiny checkpoint failed (rc {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
                )
    return CHECKPOINT_NAME


# ---------------------------------------------------------------------------------------------------
# Server process
# ---------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _link_pack(comfyui_path: Path) -> bool:
    """Make custom_nodes/equireg_nodes point at this repository; True when this call created the link."""
    link = comfyui_path / "custom_nodes" / PACK_FOLDER
    if link.is_symlink() or link.exists():
        if link.resolve() != REPO_ROOT:
            pytest.fail(
                f"{link} exists but points at {link.resolve()}, not at this repository {REPO_ROOT}; "
                "remove it or point it here"
            )
        return False
    link.symlink_to(REPO_ROOT, target_is_directory=True)
    return True


def pack_load_errors(log: str) -> list[str]:
    """Lines of a ComfyUI log that report a failure to load this pack."""
    bad = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if PACK_FOLDER not in line:
            continue
        if (
            "IMPORT FAILED" in line
            or "Cannot import" in line
            or "Error while calling comfy_entrypoint" in line
            or "did not return" in line
            or "Skip " in line
        ):
            bad.append("\n".join(lines[max(0, i - 25) : i + 1]))  # the traceback precedes the message
    return bad


class ComfyServer:
    """A ComfyUI server subprocess with private data directories."""

    def __init__(self, comfyui_path: Path, workdir: Path, port: int | None = None) -> None:
        self.comfyui_path = comfyui_path
        self.workdir = workdir
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.input_dir = workdir / "input"
        self.output_dir = workdir / "output"
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        for d in ("input", "output", "temp", "user"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "main.py",
            "--cpu",
            "--use-pytorch-cross-attention",
            "--preview-method",
            "latent2rgb",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-all-custom-nodes",
            "--whitelist-custom-nodes",
            PACK_FOLDER,
            "--input-directory",
            str(self.input_dir),
            "--output-directory",
            str(self.output_dir),
            "--temp-directory",
            str(self.workdir / "temp"),
            "--user-directory",
            str(self.workdir / "user"),
            "--database-url",
            "sqlite:///:memory:",
            "--disable-auto-launch",
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.comfyui_path,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT_S) -> dict:
        """Wait until /object_info answers; return it. Fails with the log tail on timeout or exit."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"ComfyUI exited with rc {self.proc.returncode} during startup:\n{self.log()[-6000:]}"
                )
            try:
                r = requests.get(self.url + "/object_info", timeout=10)
                if r.status_code == 200:
                    return r.json()
            except requests.RequestException:
                pass
            time.sleep(0.5)
        pytest.fail(f"ComfyUI did not serve /object_info within {timeout:.0f} s:\n{self.log()[-6000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: only the server's processes
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        self._log.close()


# ---------------------------------------------------------------------------------------------------
# HTTP / websocket client
# ---------------------------------------------------------------------------------------------------


class PromptFailed(AssertionError):
    """A prompt ended with an execution error (or was interrupted); ``messages`` holds the history."""

    def __init__(self, message: str, entry: dict) -> None:
        super().__init__(message)
        self.entry = entry


class WsListener:
    """Collects the server's websocket JSON messages in a background thread (aiohttp client)."""

    def __init__(self, url: str, client_id: str) -> None:
        self.ws_url = url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
        self.messages: queue.Queue = queue.Queue()
        self.binary_frames = 0
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(self.ws_url, heartbeat=30) as ws:
            self._connected.set()
            while not self._stop.is_set():
                try:
                    msg = await ws.receive(timeout=0.2)
                except asyncio.TimeoutError:
                    continue
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.messages.put(json.loads(msg.data))
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self.binary_frames += 1  # latent previews
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break

    def __enter__(self) -> WsListener:
        self._thread.start()
        if not self._connected.wait(timeout=30):
            raise TimeoutError(f"could not open the websocket {self.ws_url}")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def next(self, timeout: float) -> dict | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None


class ComfyClient:
    """Small blocking client for one ComfyUI server: prompts, history, outputs, interrupt."""

    def __init__(self, server: ComfyServer, object_info: dict) -> None:
        self.server = server
        self.url = server.url
        self.object_info = object_info
        self.client_id = uuid.uuid4().hex

    # -- raw HTTP ------------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30, **params: Any):
        import requests

        r = requests.get(self.url + path, params=params or None, timeout=timeout)
        r.raise_for_status()
        return r

    def post(self, path: str, payload: dict | None = None, timeout: float = 30):
        import requests

        return requests.post(self.url + path, json=payload if payload is not None else {}, timeout=timeout)

    # -- prompts -------------------------------------------------------------------------------------
    def queue_prompt(self, prompt: dict, extra_data: dict | None = None) -> str:
        """POST /prompt; return the prompt id. A validation error raises with ComfyUI's node_errors."""
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        r = self.post("/prompt", body)
        if r.status_code != 200:
            raise AssertionError(f"/prompt rejected the prompt (HTTP {r.status_code}): {r.text[:4000]}")
        data = r.json()
        if data.get("node_errors"):
            raise AssertionError(f"/prompt reported node errors: {json.dumps(data['node_errors'])[:4000]}")
        return data["prompt_id"]

    def validation_error(self, prompt: dict) -> dict:
        """POST a prompt that must fail validation; return ComfyUI's error JSON (fails if it was accepted)."""
        r = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if r.status_code == 200:
            pid = r.json()["prompt_id"]
            with contextlib.suppress(Exception):
                self.wait(pid, timeout=DEFAULT_PROMPT_TIMEOUT_S, check=False)
            raise AssertionError("the prompt was accepted, expected a validation error")
        return r.json()

    def history(self, prompt_id: str) -> dict | None:
        return self.get(f"/history/{prompt_id}").json().get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = DEFAULT_PROMPT_TIMEOUT_S, check: bool = True) -> dict:
        """Poll /history until the prompt finished; on timeout interrupt it and fail.

        With ``check`` an execution error or interruption raises :class:`PromptFailed` with ComfyUI's
        exception message and traceback.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None:  # ComfyUI writes the history entry when the prompt has ended
                break
            if self.server.proc.poll() is not None:
                raise AssertionError(f"ComfyUI died while running the prompt:\n{self.server.log()[-6000:]}")
            time.sleep(0.2)
        else:
            self.interrupt()
            raise AssertionError(
                f"prompt {prompt_id} did not finish within {timeout:.0f} s (interrupted); "
                f"log tail:\n{self.server.log()[-4000:]}"
            )
        if check and (entry.get("status") or {}).get("status_str") != "success":
            raise PromptFailed(f"prompt {prompt_id} failed: {self.error_text(entry)}", entry)
        return entry

    def run(self, prompt: dict, timeout: float = DEFAULT_PROMPT_TIMEOUT_S, check: bool = True) -> dict:
        """Queue a prompt and wait for it; return its /history entry."""
        return self.wait(self.queue_prompt(prompt), timeout=timeout, check=check)

    @staticmethod
    def messages(entry: dict, kind: str) -> list[dict]:
        return [data for name, data in entry.get("status", {}).get("messages", []) if name == kind]

    @classmethod
    def error_text(cls, entry: dict) -> str:
        errors = cls.messages(entry, "execution_error")
        if errors:
            e = errors[0]
            return (
                f"{e.get('node_type')} (node {e.get('node_id')}): {e.get('exception_type')}: "
                f"{e.get('exception_message')}\n{''.join(e.get('traceback', []))[-3000:]}"
            )
        if cls.messages(entry, "execution_interrupted"):
            return "interrupted"
        return json.dumps(entry.get("status"))[:2000]

    def interrupt(self) -> None:
        with contextlib.suppress(Exception):
            self.post("/interrupt", {}, timeout=10)

    def ws(self) -> WsListener:
        """A websocket listener for this client's prompts (use as a context manager)."""
        return WsListener(self.url, self.client_id)

    def run_and_interrupt(
        self, prompt: dict, after_progress: int, timeout: float = DEFAULT_PROMPT_TIMEOUT_S
    ) -> tuple[dict, list[dict]]:
        """Queue ``prompt``, POST /interrupt once a progress message reaches ``after_progress``.

        Returns the /history entry (not checked) and the websocket messages seen.
        """
        seen: list[dict] = []
        with self.ws() as ws:
            prompt_id = self.queue_prompt(prompt)
            deadline = time.monotonic() + timeout
            interrupted = False
            while time.monotonic() < deadline:
                msg = ws.next(timeout=0.5)
                if msg is None:
                    if self.history(prompt_id) is not None:
                        break
                    continue
                seen.append(msg)
                data = msg.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if not interrupted and msg["type"] == "progress" and data.get("value", 0) >= after_progress:
                    self.interrupt()
                    interrupted = True
                if msg["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                    break
            else:
                self.interrupt()
                raise AssertionError(f"prompt {prompt_id} did not end within {timeout:.0f} s")
        return self.wait(prompt_id, timeout=60, check=False), seen

    # -- outputs -------------------------------------------------------------------------------------
    @staticmethod
    def node_output(entry: dict, node_id: str) -> dict:
        outputs = entry.get("outputs", {})
        if str(node_id) not in outputs:
            raise AssertionError(f"node {node_id} has no UI output; outputs exist for {sorted(outputs)}")
        return outputs[str(node_id)]

    def read_image(self, info: dict):
        """Download one output image (an entry of a node's ``images`` list) as a float (H, W, C) array."""
        import io as _io

        import numpy as np
        from PIL import Image

        r = self.get(
            "/view",
            filename=info["filename"],
            subfolder=info.get("subfolder", ""),
            type=info.get("type", "output"),
        )
        img = Image.open(_io.BytesIO(r.content))
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0

    def output_images(self, entry: dict, node_id: str) -> list:
        return [self.read_image(i) for i in self.node_output(entry, node_id).get("images", [])]

    def put_input_image(self, name: str, array) -> str:
        """Write an (H, W, 3) float array in [0, 1] as PNG into the server's input directory."""
        import numpy as np
        from PIL import Image

        arr = np.clip(np.asarray(array, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(self.server.input_dir / name)
        return name

    def free(self) -> None:
        self.post("/free", {"unload_models": True, "free_memory": True})


def synthetic_image(height: int, width: int, seed: int = 0):
    """A deterministic, smooth (H, W, 3) test picture in [0, 1]: gradients, a disc and a bar."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    yy /= max(height - 1, 1)
    xx /= max(width - 1, 1)
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.float64)
    bar = (np.abs(xx - rng.uniform(0.2, 0.8)) < 0.06).astype(np.float64)
    img = np.stack([0.2 + 0.6 * xx, 0.2 + 0.6 * yy, 0.5 + 0.3 * np.sin(6 * xx + 3 * yy)], axis=-1)
    img = img * (1 - 0.5 * disc[..., None]) + 0.4 * disc[..., None] * np.array([0.9, 0.3, 0.2])
    img = img * (1 - 0.6 * bar[..., None]) + 0.6 * bar[..., None] * np.array([0.1, 0.2, 0.8])
    return np.clip(img, 0.0, 1.0)


@pytest.fixture(scope="session")
def comfy_server(comfyui_path: Path, tmp_path_factory: pytest.TempPathFactory):
    created = _link_pack(comfyui_path)
    server = ComfyServer(comfyui_path, tmp_path_factory.mktemp("comfyui"))
    server.start()
    try:
        object_info = server.wait_ready()
        errors = pack_load_errors(server.log())
        if errors:
            pytest.fail("ComfyUI could not load the EquiReg pack:\n" + "\n---\n".join(errors))
        ours = sorted(
            k for k, v in object_info.items() if v.get("python_module") == f"custom_nodes.{PACK_FOLDER}"
        )
        if not ours:
            pytest.fail(
                "ComfyUI started but registered no node of the EquiReg pack (is NODE_CLASS_MAPPINGS "
                "defined in the root __init__.py? ComfyUI then never calls comfy_entrypoint). Log:\n"
                + server.log()[-6000:]
            )
        yield server, object_info
    finally:
        server.stop()
        if os.environ.get("EQUIREG_KEEP_SERVER_LOG"):
            shutil.copy(server.log_path, os.environ["EQUIREG_KEEP_SERVER_LOG"])
        if created:
            with contextlib.suppress(OSError):
                (comfyui_path / "custom_nodes" / PACK_FOLDER).unlink()


@pytest.fixture(scope="session")
def comfy(comfy_server) -> ComfyClient:
    """Client of the session's ComfyUI server (see the module docstring)."""
    server, object_info = comfy_server
    return ComfyClient(server, object_info)


@pytest.fixture(scope="session")
def equireg_object_info(comfy: ComfyClient) -> dict:
    """The /object_info entries of this pack's nodes."""
    return {
        k: v for k, v in comfy.object_info.items() if v.get("python_module") == f"custom_nodes.{PACK_FOLDER}"
    }


@pytest.fixture(scope="session")
def make_test_image():
    """:func:`synthetic_image` (a fixture, so test modules need not import this conftest)."""
    return synthetic_image
