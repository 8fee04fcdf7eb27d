"""ComfyUI entry point of the EquiReg node pack.

ComfyUI imports this file as a package. Nothing heavy is imported here: the node modules are
imported only when ComfyUI calls ``comfy_entrypoint``; outside ComfyUI (pytest, benchmarks)
importing this file costs nothing. ``NODE_CLASS_MAPPINGS`` must not be defined here: ComfyUI uses it
instead of ``comfy_entrypoint`` when it exists, and this pack's nodes are V3 nodes.
"""


async def comfy_entrypoint():
    """V3 entry point: ComfyUI calls this to get the extension with its node list."""
    from .nodes import comfy_extension  # deferred: needs comfy_api, which only exists in ComfyUI

    return await comfy_extension()
