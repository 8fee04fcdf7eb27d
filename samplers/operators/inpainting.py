"""Inpainting: y = x * mask, with a 0/1 mask shared by all channels (DPS ``inpainting``).

The mask is either given (``mask=``) or generated: a missing box (``mask_type="box"``) or randomly missing
pixels (``mask_type="random"``). A generated mask needs the image size: pass ``image_size=(H, W)`` to build
it at construction, or leave it out and the mask is built, deterministically from ``seed``, for the size of
the first image measured (and rebuilt, again from ``seed``, if a later image has another size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import LinearOperator, check_float, check_image, check_int, check_shape, check_size_pair

MASK_TYPES = ("box", "random")
#: Margin kept between a randomly placed box and the image border (DPS ``random_sq_bbox``).
BOX_MARGIN = 16


def box_mask(image_size: tuple[int, int], box_size: tuple[int, int] | None = None,
             position: tuple[int, int] | None = None, seed: int = 0) -> torch.Tensor:
    """(H, W) float mask, 0 inside a box of ``box_size`` (default half the image in each dimension).

    ``position`` is the (top, left) corner; by default it is drawn (from ``seed``) as DPS does: top uniform
    in ``[16, H - 16 - h)`` (and left likewise) when that range is not empty, otherwise uniform over every
    position that keeps the box inside the image.
    """
    height, width = check_size_pair(image_size, "image_size")
    h, w = (height // 2, width // 2) if box_size is None else check_size_pair(box_size, "box_size")
    if h > height or w > width:
        raise ValueError(f"inpainting box_size {(h, w)} does not fit in an image of size {(height, width)}")
    h, w = max(h, 1), max(w, 1)
    if position is None:
        generator = torch.Generator().manual_seed(seed)
        corner = []
        for n, b in ((height, h), (width, w)):
            low, high = BOX_MARGIN, n - BOX_MARGIN - b  # half-open, as numpy's randint in DPS
            if high <= low:
                low, high = 0, n - b + 1  # small image: anywhere the box fits
            corner.append(int(torch.randint(low, high, (1,), generator=generator)))
        top, left = corner
    else:
        if not isinstance(position, (tuple, list)) or len(position) != 2:
            raise TypeError(f"inpainting position: expected a (top, left) pair of ints, got {position!r}")
        top = check_int(position[0], "inpainting position[0] (top)", minimum=0)
        left = check_int(position[1], "inpainting position[1] (left)", minimum=0)
        if top + h > height or left + w > width:
            raise ValueError(f"inpainting: a box of size {(h, w)} at (top, left) = {(top, left)} does not "
                             f"fit in an image of size {(height, width)}")
    mask = torch.ones(height, width)
    mask[top:top + h, left:left + w] = 0.0
    return mask


def random_mask(image_size: tuple[int, int], fraction: float = 0.7, seed: int = 0) -> torch.Tensor:
    """(H, W) float mask with ``int(H * W * fraction)`` pixels, chosen without replacement, set to 0."""
    height, width = check_size_pair(image_size, "image_size")
    fraction = check_float(fraction, "inpainting fraction", minimum=0.0, maximum=1.0)
    generator = torch.Generator().manual_seed(seed)
    missing = torch.randperm(height * width, generator=generator)[: int(height * width * fraction)]
    mask = torch.ones(height * width)
    mask[missing] = 0.0
    return mask.view(height, width)


class Inpainting(LinearOperator):
    """Inpainting y = x * mask on (B, C, H, W) images in [-1, 1]; the mask is the same for all channels.

    The adjoint and the pseudo-inverse are both ``mask * y`` (the mask is a 0/1 diagonal projection).

    :param mask_type: "box" (a missing box) or "random" (randomly missing pixels); ignored when ``mask`` is
        given.
    :param box_size: (h, w) of the box; default half the image in each dimension.
    :param position: (top, left) of the box; default drawn from ``seed`` with DPS's 16-pixel margins.
    :param fraction: fraction of pixels removed by the random mask (default 0.7).
    :param seed: seed of the box placement or of the random pixels (default 0).
    :param mask: a given 0/1 mask of shape (H, W), (1, 1, H, W) or (B, 1, H, W) (1 = observed pixel).
    :param image_size: (H, W), to build a generated mask at construction instead of at the first call.
    """

    name = "inpainting"

    def __init__(self, mask_type: str = "box", box_size: tuple[int, int] | None = None,
                 position: tuple[int, int] | None = None, fraction: float = 0.7, seed: int = 0,
                 mask: torch.Tensor | None = None, image_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        if mask_type not in MASK_TYPES:
            raise ValueError(f"inpainting mask_type: expected one of {MASK_TYPES}, got {mask_type!r}")
        self.mask_type = mask_type
        self.box_size = None if box_size is None else check_size_pair(box_size, "box_size")
        if position is not None:
            if not isinstance(position, (tuple, list)) or len(position) != 2:
                raise TypeError(f"inpainting position: expected a (top, left) pair of ints, got {position!r}")
            position = (check_int(position[0], "inpainting position[0] (top)", minimum=0),
                        check_int(position[1], "inpainting position[1] (left)", minimum=0))
        self.position = position
        self.fraction = check_float(fraction, "inpainting fraction", minimum=0.0, maximum=1.0)
        self.seed = check_int(seed, "inpainting seed", minimum=0)
        self.given_mask = mask is not None
        if mask is not None:
            self.register_buffer("mask", self._normalise_mask(mask))
        else:
            self.register_buffer("mask", None)
            if image_size is not None:
                self.mask = self._generate(check_size_pair(image_size, "image_size"))

    def extra_repr(self) -> str:
        if self.given_mask:
            return f"mask={tuple(self.mask.shape)}"
        if self.mask_type == "box":
            return f"mask_type='box', box_size={self.box_size}, position={self.position}, seed={self.seed}"
        return f"mask_type='random', fraction={self.fraction}, seed={self.seed}"

    @staticmethod
    def _normalise_mask(mask: torch.Tensor) -> torch.Tensor:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"inpainting mask: expected a torch.Tensor, got {type(mask).__name__}")
        if mask.is_complex():
            raise TypeError(f"inpainting mask: expected a real tensor of 0/1 values, got dtype {mask.dtype}")
        if mask.dim() == 2:
            mask = mask[None, None]
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"inpainting mask: expected shape (H, W), (1, 1, H, W) or (B, 1, H, W), got "
                             f"{tuple(mask.shape)}")
        if min(mask.shape) == 0:
            raise ValueError(f"inpainting mask: expected a non-empty mask, got shape {tuple(mask.shape)}")
        mask = mask.detach().float()
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("inpainting mask: expected values 0 (missing) or 1 (observed) only")
        return mask.clone()

    def _generate(self, size: tuple[int, int]) -> torch.Tensor:
        if self.mask_type == "box":
            mask = box_mask(size, self.box_size, self.position, self.seed)
        else:
            mask = random_mask(size, self.fraction, self.seed)
        return mask[None, None]

    def get_mask(self, x: torch.Tensor) -> torch.Tensor:
        """The (1 or B, 1, H, W) mask for images like ``x``, on its device and in its dtype."""
        check_image(x, "inpainting input")
        size = tuple(x.shape[-2:])
        if self.mask is None or (not self.given_mask and tuple(self.mask.shape[-2:]) != size):
            self.mask = self._generate(size).to(x.device)
        if tuple(self.mask.shape[-2:]) != size:
            raise ValueError(f"inpainting: the given mask has size {tuple(self.mask.shape[-2:])} but the "
                             f"images have size {size}")
        if self.mask.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"inpainting: the mask has batch size {self.mask.shape[0]} but the images have "
                             f"batch size {x.shape[0]} (expected 1 or equal)")
        return self.mask.to(device=x.device, dtype=x.dtype)

    def check_input(self, x: torch.Tensor) -> None:
        self.get_mask(x)

    def measurement_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        return check_shape(x_shape, "inpainting x_shape")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.get_mask(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.get_mask(y)

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.get_mask(y)
