"""ComfyUI entry point of the EquiReg node pack.

ComfyUI imports this file as a package. Nothing heavy is imported here: the node modules are
imported only when ComfyUI asks for them through ``comfy_entrypoint``; outside ComfyUI (pytest,
benchmarks) importing this file costs nothing.
"""

WEB_DIRECTORY = None
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}


async def comfy_entrypoint():
    """V3 entry point: ComfyUI calls this to get the extension with its node list."""
    from .nodes import comfy_extension  # deferred: needs comfy_api, which only exists in ComfyUI

    return await comfy_extension()
