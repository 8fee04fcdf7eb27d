"""Finite transformation groups acting on the last two (spatial) dimensions of a tensor.

Every registered group acts by pixel permutations (flips and quarter turns), so each transform
T_g is an isometry (``||T_g x|| = ||x||``) and has an exact inverse. Elements are small integers
indexing the group's operations; index 0 is always the identity.

``sample_from`` lists the elements drawn at run time. As in the released EquiReg library, the
identity is never drawn (it gives a zero penalty), and ``rot90`` draws only the two quarter turns
(+90 and -90 degrees), never 180 degrees.

Images are (B, C, H, W) tensors in [-1, 1]; the transforms only assume that the last two dims are
spatial, so latents and feature maps of any leading shape work too. ``rot90`` swaps H and W, so a
non-square input changes shape (the inverse turns it back).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["GROUPS", "Group", "get_group"]

_Op = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(-1,))


def _vflip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(-2,))


def _rot90(x: torch.Tensor) -> torch.Tensor:
    # Counter-clockwise quarter turn in the (H, W) plane.
    return torch.rot90(x, k=1, dims=(-2, -1))


def _rot180(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, k=2, dims=(-2, -1))


def _rot270(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, k=3, dims=(-2, -1))


@dataclass(frozen=True)
class Group:
    """A finite group of spatial transforms.

    Attributes:
        name: registry name.
        element_names: human-readable name of each element (index = element).
        ops: the input action T_g of each element, acting on the last two dims.
        inverse_indices: ``inverse_indices[g]`` is the element g^-1.
        sample_from: the elements drawn at run time (never the identity).
    """

    name: str
    element_names: tuple[str, ...]
    ops: tuple[_Op, ...]
    inverse_indices: tuple[int, ...]
    sample_from: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.ops)
        if len(self.element_names) != n or len(self.inverse_indices) != n:
            raise ValueError(f"group {self.name!r}: ops, element_names and inverse_indices differ in length")
        if not self.sample_from or any(g not in range(n) for g in self.sample_from):
            raise ValueError(f"group {self.name!r}: sample_from must be a non-empty subset of 0..{n - 1}")

    @property
    def elements(self) -> tuple[int, ...]:
        """All element indices, identity (0) first."""
        return tuple(range(len(self.ops)))

    @property
    def order(self) -> int:
        """Number of elements |G|."""
        return len(self.ops)

    def check_element(self, g: int) -> int:
        """Return ``g`` as an int, or raise if it is not an element of this group."""
        if isinstance(g, bool) or not isinstance(g, int):
            raise TypeError(f"group {self.name!r}: element must be an int in {self.elements}, got {g!r}")
        if g not in self.elements:
            raise ValueError(
                f"group {self.name!r}: element must be one of {self.elements} "
                f"({', '.join(self.element_names)}), got {g}"
            )
        return g

    def inverse(self, g: int) -> int:
        """The element g^-1."""
        return self.inverse_indices[self.check_element(g)]

    def apply(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """T_g x, acting on the last two dims of ``x`` (ndim >= 2)."""
        op = self.ops[self.check_element(g)]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"group {self.name!r}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(
                f"group {self.name!r}: transforms act on the last two (spatial) dims; got a tensor of "
                f"shape {tuple(x.shape)}"
            )
        return op(x)

    def apply_inverse(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """T_g^-1 x."""
        return self.apply(x, self.inverse(g))

    def sample(self, rng: random.Random) -> int:
        """Draw one run-time element uniformly from :attr:`sample_from` using ``rng``."""
        return rng.choice(self.sample_from)


GROUPS: dict[str, Group] = {
    "hflip": Group(
        name="hflip",
        element_names=("identity", "hflip"),
        ops=(_identity, _hflip),
        inverse_indices=(0, 1),
        sample_from=(1,),
    ),
    "vflip": Group(
        name="vflip",
        element_names=("identity", "vflip"),
        ops=(_identity, _vflip),
        inverse_indices=(0, 1),
        sample_from=(1,),
    ),
    "rot90": Group(
        name="rot90",
        element_names=("identity", "rot90", "rot180", "rot270"),
        ops=(_identity, _rot90, _rot180, _rot270),
        inverse_indices=(0, 3, 2, 1),
        # Like the original: only a +90 or a -90 degree turn is drawn at run time.
        sample_from=(1, 3),
    ),
    "rot180": Group(
        name="rot180",
        element_names=("identity", "rot180"),
        ops=(_identity, _rot180),
        inverse_indices=(0, 1),
        sample_from=(1,),
    ),
}


def get_group(name: str | Group) -> Group:
    """Look up a group by name (a :class:`Group` is returned as is)."""
    if isinstance(name, Group):
        return name
    if not isinstance(name, str) or name not in GROUPS:
        raise ValueError(f"unknown group {name!r}; valid groups: {', '.join(GROUPS)}")
    return GROUPS[name]
