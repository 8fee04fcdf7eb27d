"""Equivariance differences and their per-sample reductions.

Notation: ``f`` is the MPE (manifold-preferential equivariant) function, ``T_g`` the input action
of a group element g (:mod:`samplers.equireg.groups`) and ``rho(g)`` the action on f's output.

Forms:

- ``equi``:    d = rho(g) f(x) - f(T_g x)         (equivariance error of f at x; the paper's "Equi")
- ``equicon``: d = x - T_g^{-1} f(T_g x)          (f must map back into x's space, e.g. an encoder
  after a decoder, f(z) = E(D(z)); the released library calls this ``equi_plus``, most likely the
  paper's "EquiCon"). Because every registered T_g is a pixel permutation (an isometry),
  ``||x - T_g^{-1} f(T_g x)|| = ||T_g x - f(T_g x)||``: the round-trip error of f at the transformed
  input.

Feature action rho (``feature_action``):

- ``spatial``: f(x) is a feature map whose last two dims are spatial (ndim >= 3); rho(g) = T_g.
- ``invariant``: rho(g) = identity. This is the right action for vector features (B, C) such as
  pooled CNN/CLIP embeddings or logits. (The released library applied the *input* op to such vectors,
  which reversed the channel order for ``hflip`` and transposed the (B, C) matrix for ``rot90``;
  neither happens here.)
- ``auto``: ``spatial`` if f(x).ndim >= 3, else ``invariant``.

Reductions are computed PER SAMPLE (result shape (B,)):

- ``norm``:   ||d_i||_2 over all non-batch dims;
- ``sqnorm``: ||d_i||_2^2;
- ``mse``:    ||d_i||_2^2 / numel(d_i).

The released library reduced the whole batch at once: ``||d||_batch = sqrt(sum_i ||d_i||^2)``. For a
batch of one the two are identical. For B > 1 the batch norm couples the samples (its gradient for
sample i is d_i / ||d||_batch, which depends on the other samples), whereas summing the per-sample
norms gives each sample exactly the gradient it would get in a run of its own, so a batch of N
behaves like N independent runs. (``sqnorm`` and ``mse`` sum to the batch versions up to the mse
normalisation by the per-sample rather than the whole-batch element count.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .groups import Group

__all__ = [
    "FEATURE_ACTIONS",
    "FORMS",
    "REDUCTIONS",
    "apply_feature_action",
    "equivariance_difference",
    "reduce_per_sample",
    "resolve_feature_action",
]

FORMS: tuple[str, ...] = ("equi", "equicon")
REDUCTIONS: tuple[str, ...] = ("norm", "sqnorm", "mse")
FEATURE_ACTIONS: tuple[str, ...] = ("auto", "spatial", "invariant")

MPEFunction = Callable[[torch.Tensor], torch.Tensor]


def check_choice(value: object, valid: tuple[str, ...], what: str) -> str:
    """Return ``value`` if it is one of ``valid``, else raise a ValueError listing the valid values."""
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid values: {', '.join(valid)}")
    return value


def _call_f(f: MPEFunction, x: torch.Tensor) -> torch.Tensor:
    out = f(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the MPE function must return a torch.Tensor, got {type(out).__name__}")
    if out.dim() < 1 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"the MPE function must keep the batch dimension: input shape {tuple(x.shape)}, "
            f"output shape {tuple(out.shape)}"
        )
    return out


def resolve_feature_action(feature_action: str, features: torch.Tensor) -> str:
    """The concrete action (``spatial`` or ``invariant``) for features of this shape."""
    check_choice(feature_action, FEATURE_ACTIONS, "feature_action")
    if feature_action == "auto":
        return "spatial" if features.dim() >= 3 else "invariant"
    if feature_action == "spatial" and features.dim() < 3:
        raise ValueError(
            f"feature_action='spatial' needs feature maps with two trailing spatial dims (ndim >= 3), "
            f"but f returned shape {tuple(features.shape)}; use 'invariant' (or 'auto') for vector features"
        )
    return feature_action


def apply_feature_action(group: Group, features: torch.Tensor, g: int, feature_action: str) -> torch.Tensor:
    """rho(g) applied to f's output (identity for the invariant action)."""
    action = resolve_feature_action(feature_action, features)
    if action == "invariant":
        group.check_element(g)
        return features
    return group.apply(features, g)


def equivariance_difference(
    f: MPEFunction,
    x: torch.Tensor,
    group: Group,
    g: int,
    form: str = "equi",
    feature_action: str = "auto",
) -> torch.Tensor:
    """The difference tensor d of the chosen form (see the module docstring), batch dim first."""
    check_choice(form, FORMS, "form")
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a batched tensor (B, ..., H, W) with ndim >= 3, got {shape}")
    tx = group.apply(x, g)
    f_tx = _call_f(f, tx)
    if form == "equi":
        fx = _call_f(f, x)
        rho_fx = apply_feature_action(group, fx, g, feature_action)
        if rho_fx.shape != f_tx.shape:
            raise ValueError(
                f"form='equi': rho(g) f(x) has shape {tuple(rho_fx.shape)} but f(T_g x) has shape "
                f"{tuple(f_tx.shape)} (group {group.name!r}, element {g}); f is not shape-equivariant "
                "for this input size"
            )
        return rho_fx - f_tx
    if f_tx.shape != tx.shape:
        raise ValueError(
            f"form='equicon' needs f to map back into x's space: f(T_g x) has shape "
            f"{tuple(f_tx.shape)}, T_g x has shape {tuple(tx.shape)} (x: {tuple(x.shape)}); "
            "use e.g. encoder_after_decoder_mpe for latents, or form='equi'"
        )
    return x - group.apply_inverse(f_tx, g)


def reduce_per_sample(d: torch.Tensor, reduction: str = "norm") -> torch.Tensor:
    """Reduce d (B, ...) to one value per sample (B,), computed in at least float32."""
    check_choice(reduction, REDUCTIONS, "reduction")
    flat = d.reshape(d.shape[0], -1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        # Squared sums of a large half-precision map overflow easily; reduce in float32.
        flat = flat.float()
    if reduction == "norm":
        return torch.linalg.vector_norm(flat, ord=2, dim=1)
    sq = flat.square().sum(dim=1)
    if reduction == "sqnorm":
        return sq
    return sq / max(1, flat.shape[1])
