"""Build a tiny random-weight checkpoint that ComfyUI detects as Stable Diffusion 1.5.

Run with ComfyUI's Python, from the ComfyUI checkout (the integration fixture does this once and caches
the file)::

    cd $COMFYUI_PATH && python <this file> models/checkpoints/equireg_tiny_sd15.safetensors

The networks are ComfyUI's own classes: a one-level ``UNetModel`` (model_channels 320, context_dim 768:
the only keys SD1.5 detection looks at; depth and number of levels are read from the state dict), the
SD1 CLIP-L text model and a TAESD autoencoder as VAE (``taesd_decoder.*`` keys select TAESD). ComfyUI's
ops skip weight initialisation, so every tensor is filled here from a seeded generator: the file is
the same on every run. After saving, the file is loaded back with ``load_checkpoint_guess_config``
to check that it is detected as SD15 with an EPS model.
"""

from __future__ import annotations

import math
import os
import sys
import time

BUILDER_VERSION = "1"  # bump to force a rebuild of cached files when the recipe changes


def _fill_(module, generator) -> None:
    """Initialise every parameter/buffer of ``module`` deterministically (ComfyUI's ops leave them empty)."""
    import torch

    for name, p in list(module.named_parameters()) + list(module.named_buffers()):
        with torch.no_grad():
            leaf = name.rsplit(".", 1)[-1]
            if "position_ids" in name:
                p.copy_(torch.arange(p.shape[-1], dtype=p.dtype).expand_as(p))
            elif p.dim() >= 2:
                fan_in = math.prod(p.shape[1:])
                # Fan-in scaling keeps activations O(1) through the untrained network (finite outputs).
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
            elif leaf == "vae_scale":
                p.fill_(1.0)
            elif leaf == "weight":  # norm gains
                p.fill_(1.0)
            else:  # biases, scalars
                p.zero_()
            if p.dim() >= 2 and "embedding" in name:
                p.mul_(0.02 * math.sqrt(p.shape[-1]))


def build(path: str) -> dict:
    """Build and save the checkpoint at ``path``; return a small report dict."""
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # model_management otherwise probes CUDA at import
    import comfy.sd
    import comfy.sd1_clip
    import comfy.taesd.taesd
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import save_file

    t0 = time.time()
    g = torch.Generator().manual_seed(20261127)
    unet = UNetModel(
        image_size=32,
        in_channels=4,
        model_channels=320,
        out_channels=4,
        num_res_blocks=[1],
        channel_mult=(1,),
        num_heads=8,
        num_head_channels=-1,
        use_spatial_transformer=True,
        transformer_depth=[1],
        transformer_depth_middle=1,
        transformer_depth_output=[1, 1],
        context_dim=768,
        use_linear_in_transformer=False,
        legacy=False,
        dtype=torch.float32,
        device="cpu",
    )
    _fill_(unet, g)
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    _fill_(clip, g)
    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    _fill_(vae, g)

    sd = {}
    for k, v in unet.state_dict().items():
        sd["model.diffusion_model." + k] = v
    for k, v in clip.state_dict().items():
        if k.startswith("transformer.text_projection") or k.endswith("logit_scale"):
            continue  # SD1 checkpoints have neither (ComfyUI drops them when saving)
        sd["cond_stage_model." + k] = v
    for k, v in vae.state_dict().items():
        sd["first_stage_model." + k] = v
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    root, ext = os.path.splitext(path)
    tmp = root + ".partial" + ext  # ComfyUI picks the file reader by extension
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(sd, tmp, metadata={"equireg_builder_version": BUILDER_VERSION})
    built_s = time.time() - t0

    # Check detection with ComfyUI's own loader before publishing the file.
    model, clip_obj, vae_obj, _ = comfy.sd.load_checkpoint_guess_config(tmp)
    config_name = type(model.model.model_config).__name__
    model_type = str(model.model.model_type)
    if config_name != "SD15" or "EPS" not in model_type or clip_obj is None or vae_obj is None:
        os.remove(tmp)
        raise RuntimeError(f"tiny checkpoint detected as {config_name} / {model_type}, expected SD15 / EPS")
    os.replace(tmp, path)
    return {
        "path": path,
        "config": config_name,
        "model_type": model_type,
        "tensors": len(sd),
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "build_s": round(built_s, 2),
        "total_s": round(time.time() - t0, 2),
        "bytes": os.path.getsize(path),
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python build_tiny_checkpoint.py <output .safetensors>")
    sys.path.insert(0, os.getcwd())  # run from the ComfyUI checkout: `comfy` is importable from there
    print(build(sys.argv[1]))
