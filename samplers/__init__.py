"""Pure-PyTorch core of the EquiReg node pack.

This package never imports ComfyUI: measurement operators and noise models
(:mod:`samplers.operators`), the EquiReg regularizer (:mod:`samplers.equireg`), posterior solvers
with ComfyUI's KSAMPLER contract (:mod:`samplers.solvers`) and exact test priors
(:mod:`samplers.priors`). Sub-packages are imported on demand.
"""

__version__ = "0.1.0"
