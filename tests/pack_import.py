"""Import this repository the way ComfyUI does: as a package (here named ``equireg_pack``).

Node modules import the core relatively (``from ..samplers import operators``), so they can only be
imported as submodules of the pack, e.g. ``pack_module("nodes.logic")``. The pure-PyTorch parts load
without ComfyUI. When ``COMFYUI_PATH`` names a ComfyUI checkout (and the tests run in ComfyUI's Python
environment), it is put on ``sys.path`` first, so that modules needing ``comfy_api`` import too, the same
way in every test file of the session.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "equireg_pack"


def _add_comfyui() -> None:
    path = os.environ.get("COMFYUI_PATH")
    if not path or path in sys.path:
        return
    sys.path.append(path)  # appended: the repository's own packages keep precedence
    with contextlib.suppress(ImportError):
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # before anything imports comfy.model_management (it probes CUDA)


def load_pack() -> ModuleType:
    """The repository root as the package ``equireg_pack`` (loaded once; its __init__ is light)."""
    _add_comfyui()
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK_NAME]


def pack_module(name: str) -> ModuleType:
    """Import ``<pack>.<name>``, e.g. ``pack_module("nodes.logic")``."""
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.{name}")
