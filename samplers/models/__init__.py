"""Network architectures (pure PyTorch, no ComfyUI): the guided-diffusion ADM UNet and its denoiser."""

from .adm import (
    ADMConfig,
    ADMUNet,
    UnsafeCheckpointError,
    infer_adm_config,
    load_adm_checkpoint,
    read_adm_state_dict,
    save_adm_safetensors,
    timestep_embedding,
)
from .adm_diffusion import ADMDenoiser, adm_alphas_cumprod, adm_betas, adm_sigmas

__all__ = [
    "ADMConfig",
    "ADMDenoiser",
    "ADMUNet",
    "UnsafeCheckpointError",
    "adm_alphas_cumprod",
    "adm_betas",
    "adm_sigmas",
    "infer_adm_config",
    "load_adm_checkpoint",
    "read_adm_state_dict",
    "save_adm_safetensors",
    "timestep_embedding",
]
