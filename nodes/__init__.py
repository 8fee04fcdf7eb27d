"""ComfyUI nodes of the EquiReg pack (V3 ``io.ComfyNode``s).

The repository root's ``comfy_entrypoint`` calls :func:`comfy_extension`; it collects the ``NODES`` list
of every module named in :data:`NODE_MODULES`. A module that fails to import is logged with its traceback
and the marker ``EquiReg IMPORT FAILED`` (the integration tests look for it) and the others still load.

Conventions for node modules:

- Import ComfyUI (``comfy_api``, ``comfy``, ``folder_paths``...) only in node modules, never in the pure
  modules (:mod:`.convert`, :mod:`.logic`, the dataclasses of :mod:`.types`), which are tested without
  ComfyUI.
- Import the core library and sibling modules relatively only (``from ..samplers import operators``,
  ``from .types import Measurement``): inside ComfyUI this package is ``<pack>.nodes`` and a bare
  ``import samplers`` would resolve to ComfyUI's own ``comfy/samplers.py`` (ComfyUI puts ``comfy/`` on
  ``sys.path``); ``tests/test_package.py`` enforces it. Tests import node modules the way ComfyUI does,
  through the repository loaded as a package: ``tests/pack_import.py``'s ``pack_module("nodes.logic")``.
- Node ids start with ``EquiReg``, categories with ``EquiReg/``; every input has a tooltip.
"""

from __future__ import annotations

import importlib
import logging

#: Node modules, in menu order. Modules that do not exist (yet) are skipped with an info message.
NODE_MODULES = ("measurement", "regularizer", "sampler", "guider", "metrics", "adm")

logger = logging.getLogger(__name__)


def collect_nodes() -> tuple[list, dict[str, str]]:
    """Import every node module; return (node classes, {module: error}) without raising."""
    nodes: list = []
    failures: dict[str, str] = {}
    for name in NODE_MODULES:
        qualified = f"{__name__}.{name}"
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name == qualified:  # the module itself is absent: an optional part of the pack
                logger.info("EquiReg: node module nodes.%s is not present; skipped", name)
                continue
            logger.error("EquiReg IMPORT FAILED: nodes.%s (its nodes are unavailable)", name, exc_info=True)
            failures[name] = f"{type(err).__name__}: {err}"
            continue
        except Exception as err:  # any error in one module must not hide the others
            logger.error("EquiReg IMPORT FAILED: nodes.%s (its nodes are unavailable)", name, exc_info=True)
            failures[name] = f"{type(err).__name__}: {err}"
            continue
        module_nodes = getattr(module, "NODES", None)
        if not isinstance(module_nodes, (list, tuple)):
            logger.error("EquiReg IMPORT FAILED: nodes.%s defines no NODES list", name)
            failures[name] = "no NODES list"
            continue
        nodes.extend(module_nodes)
    logger.info(
        "EquiReg: %d nodes loaded%s",
        len(nodes),
        f"; modules that failed: {', '.join(failures)}" if failures else "",
    )
    return nodes, failures


async def comfy_extension():
    """The pack's ``ComfyExtension`` (ComfyUI's V3 extension API)."""
    from comfy_api.latest import ComfyExtension  # deferred: comfy_api exists only inside ComfyUI

    nodes, _ = collect_nodes()

    class EquiRegExtension(ComfyExtension):
        async def get_node_list(self) -> list:
            return list(nodes)

    return EquiRegExtension()
