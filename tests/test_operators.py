"""Generic tests of every measurement operator: adjointness, pseudo-inverses, shapes, dtypes, batching,
and the registry. Operator-specific definitions are checked in ``test_operators_definitions.py``."""

from __future__ import annotations

import pytest
import torch

from samplers import operators as ops

H, W = 37, 31  # odd, non-square, not multiples of the super-resolution factors


def _asymmetric_kernel() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(5, 3, generator=g, dtype=torch.float64)


def _matrix() -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    return torch.randn(50, 2 * H * W, generator=g, dtype=torch.float64)


def _given_mask() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return (torch.rand(H, W, generator=g) > 0.4).float()


# name -> factory of a linear operator acting on (B, 2, H, W) images
LINEAR = {
    "sr2": lambda: ops.make("super_resolution", factor=2),
    "sr4": lambda: ops.make("super_resolution", factor=4),
    "sr8": lambda: ops.make("super_resolution", factor=8),
    "gaussian_blur_default": lambda: ops.make("gaussian_blur"),  # k = 61: padding 30 < 31
    "gaussian_blur_small": lambda: ops.make("gaussian_blur", kernel_size=7, sigma=1.5),
    "motion_blur": lambda: ops.make("motion_blur", kernel_size=15, intensity=0.5, seed=1),
    "blur_asymmetric": lambda: ops.make("blur", kernel=_asymmetric_kernel()),
    "inpainting_box": lambda: ops.make("inpainting", mask_type="box"),
    "inpainting_random": lambda: ops.make("inpainting", mask_type="random", fraction=0.5, seed=2),
    "inpainting_given": lambda: ops.make("inpainting", mask=_given_mask()),
    "identity": lambda: ops.make("identity"),
    "matrix": lambda: ops.make("matrix", matrix=_matrix(), input_shape=(2, H, W)),
}
WITH_PINV = ["sr2", "sr4", "sr8", "inpainting_box", "inpainting_random", "inpainting_given", "identity",
             "matrix"]

NONLINEAR = {
    "phase_retrieval": lambda: ops.make("phase_retrieval"),
    "hdr": lambda: ops.make("hdr", scale=2.0),
}
ALL = {**LINEAR, **NONLINEAR}


def _x(batch: int, channels: int = 2, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, H, W, generator=g, dtype=dtype) * 2 - 1


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()


@pytest.mark.parametrize("name", list(LINEAR))
@pytest.mark.parametrize("batch", [1, 3])
def test_adjointness(name: str, batch: int) -> None:
    op = LINEAR[name]()
    assert op.linear
    x = _x(batch)
    ax = op(x)
    g = torch.Generator().manual_seed(10)
    y = torch.randn(ax.shape, generator=g, dtype=torch.float64)
    aty = op.adjoint(y)
    assert aty.shape == x.shape
    lhs, rhs = _dot(ax, y), _dot(x, aty)
    assert abs(lhs - rhs) / max(abs(lhs), abs(rhs)) < 1e-6, (lhs.item(), rhs.item())


@pytest.mark.parametrize("name", list(LINEAR))
def test_adjoint_equals_autograd_vjp(name: str) -> None:
    op = LINEAR[name]()
    x = _x(3).requires_grad_(True)
    ax = op(x)
    v = torch.randn(ax.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    (vjp,) = torch.autograd.grad(ax, x, v)
    torch.testing.assert_close(op.adjoint(v), vjp, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", WITH_PINV)
def test_pseudo_inverse_is_right_inverse(name: str) -> None:
    op = LINEAR[name]()
    assert op.has_pseudo_inverse
    y = op(_x(3))
    # a generic measurement: A applied to a random image, so it lies in the range for masks too
    torch.testing.assert_close(op(op.pseudo_inverse(y)), y, rtol=1e-8, atol=1e-8)


def test_blurs_have_no_pseudo_inverse() -> None:
    op = ops.make("gaussian_blur", kernel_size=5, sigma=1.0)
    assert not op.has_pseudo_inverse
    with pytest.raises(NotImplementedError):
        op.pseudo_inverse(_x(1))


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_measurement_shape(name: str, dtype: torch.dtype) -> None:
    op = ALL[name]()
    x = _x(2, dtype=dtype)
    y = op(x)
    assert y.dtype == dtype
    assert tuple(y.shape) == op.measurement_shape(tuple(x.shape))
    assert torch.isfinite(y).all()
    if op.linear:
        assert op.adjoint(y).dtype == dtype


@pytest.mark.parametrize("name", list(ALL))
def test_batch_independence(name: str) -> None:
    op = ALL[name]()
    x = _x(3, seed=7)
    y = op(x)
    for i in range(3):
        torch.testing.assert_close(y[i:i + 1], op(x[i:i + 1]), rtol=1e-12, atol=1e-12)
    if op.linear:
        back = op.adjoint(y)
        for i in range(3):
            torch.testing.assert_close(back[i:i + 1], op.adjoint(y[i:i + 1]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in ALL if n != "matrix"])
def test_rejects_non_image_input(name: str) -> None:
    op = ALL[name]()
    if name == "identity":  # identity accepts any (B, ...) batch, but not a bare vector or an int tensor
        with pytest.raises(ValueError, match="dimensions"):
            op(torch.zeros(5))
    else:
        with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
            op(torch.zeros(2, H, W))
    with pytest.raises(TypeError, match="floating"):
        op(torch.zeros(1, 2, H, W, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        op([[0.0]])


def test_registry_lists_every_required_operator() -> None:
    expected = {"super_resolution", "gaussian_blur", "motion_blur", "blur", "inpainting", "phase_retrieval",
                "hdr", "identity", "matrix"}
    assert set(ops.OPERATORS) == expected
    for name, cls in ops.OPERATORS.items():
        assert cls.name == name
        assert issubclass(cls, ops.Operator)
    assert isinstance(ops.make("super_resolution", factor=2), ops.SuperResolution)
    assert ops.make("super_resolution", factor=2).factor == 2
    assert ops.make("gaussian_blur", kernel_size=9, sigma=2.0).kernel.shape == (9, 9)


def test_registry_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="super_resolution") as info:
        ops.make("superresolution")
    for name in ops.OPERATORS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="gaussian"):
        ops.make_noise("gauss")


def test_registry_unknown_parameter_lists_valid_parameters() -> None:
    with pytest.raises(TypeError, match="kernel_size") as info:
        ops.make("gaussian_blur", kernel_sise=5)
    assert "kernel_sise" in str(info.value) and "sigma" in str(info.value)
    with pytest.raises(TypeError, match="factor"):
        ops.make("super_resolution", scale_factor=4)
    with pytest.raises(TypeError, match="kernel"):  # required parameter missing
        ops.make("blur")
    with pytest.raises(TypeError, match="sigma"):
        ops.make_noise("gaussian", std=0.1)
    with pytest.raises(TypeError, match="none"):
        ops.make_noise("none", sigma=0.1)


@pytest.mark.parametrize("bad", [0, -3, 4, 60, 2.0, True])
def test_kernel_sizes_must_be_positive_odd_ints(bad: object) -> None:
    error = TypeError if isinstance(bad, (float, bool)) else ValueError
    with pytest.raises(error, match="kernel_size"):
        ops.make("gaussian_blur", kernel_size=bad)
    with pytest.raises(error, match="kernel_size"):
        ops.make("motion_blur", kernel_size=bad)


def test_user_kernel_validation() -> None:
    with pytest.raises(ValueError, match="odd"):
        ops.make("blur", kernel=torch.ones(4, 3))
    with pytest.raises(ValueError, match="2-D"):
        ops.make("blur", kernel=torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match="finite"):
        ops.make("blur", kernel=torch.tensor([[float("nan")]]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        ops.make("blur", kernel=[[1.0]])


def test_user_kernel_used_as_given() -> None:
    kernel = _asymmetric_kernel()  # not normalised
    op = ops.make("blur", kernel=kernel)
    x = _x(1)
    y = op(x)
    # an interior pixel is the plain correlation of the kernel with its neighbourhood
    i, j = 10, 12
    patch = x[0, 1, i - 2:i + 3, j - 1:j + 2]
    torch.testing.assert_close(y[0, 1, i, j], (patch * kernel).sum())
    # at the border, reflection padding (edge not repeated) supplies the missing pixels
    padded = torch.nn.functional.pad(x, (1, 1, 2, 2), mode="reflect")
    torch.testing.assert_close(y[0, 0, 0, 0], (padded[0, 0, 0:5, 0:3] * kernel).sum())


def test_reflection_padding_larger_than_image_is_rejected() -> None:
    op = ops.make("gaussian_blur", kernel_size=61, sigma=3.0)
    with pytest.raises(ValueError, match="kernel_size"):
        op(torch.zeros(1, 3, 30, 64))
    with pytest.raises(ValueError, match="kernel_size"):
        op.adjoint(torch.zeros(1, 3, 64, 16))


def test_sr_factor_validation() -> None:
    for bad in (3, 1, 16):
        with pytest.raises(ValueError, match=r"\(2, 4, 8\)"):
            ops.make("super_resolution", factor=bad)
    with pytest.raises(TypeError, match="factor"):
        ops.make("super_resolution", factor=4.0)


def test_sr_adjoint_image_size_resolution() -> None:
    op = ops.make("super_resolution", factor=4)
    y = torch.zeros(1, 1, 10, 8, dtype=torch.float64)
    assert op.adjoint(y).shape[-2:] == (40, 32)  # nothing known yet: factor times the measurement
    op(torch.zeros(1, 1, H, W))
    assert op.adjoint(y).shape[-2:] == (H, W)  # the last forward input size
    assert op.adjoint(y, image_size=(38, 29)).shape[-2:] == (38, 29)
    with pytest.raises(ValueError, match="image_size"):
        op.adjoint(y, image_size=(64, 64))
    fixed = ops.make("super_resolution", factor=4, image_size=(H, W))
    assert fixed.pseudo_inverse(y).shape[-2:] == (H, W)


def test_matrix_operator_on_vectors_and_images() -> None:
    g = torch.Generator().manual_seed(8)
    a = torch.randn(3, 6, generator=g, dtype=torch.float64)
    op = ops.make("matrix", matrix=a)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(op(x), x @ a.T)
    y = op(x)
    assert op.adjoint(y).shape == (4, 6)
    torch.testing.assert_close(op.adjoint(y), y @ a)
    torch.testing.assert_close(op.pseudo_inverse(y), y @ torch.linalg.pinv(a).T)
    # image-shaped input is flattened; the adjoint returns the last input shape
    img = x.reshape(4, 1, 2, 3)
    torch.testing.assert_close(op(img), y)
    assert op.adjoint(y).shape == (4, 1, 2, 3)
    assert op.measurement_shape((4, 1, 2, 3)) == (4, 3)
    with pytest.raises(ValueError, match="6"):
        op(torch.zeros(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="input_shape"):
        ops.make("matrix", matrix=a, input_shape=(2, 2))
    with pytest.raises(ValueError, match="2-D"):
        ops.make("matrix", matrix=torch.zeros(2, 2, 2))


def test_identity_and_hdr_values() -> None:
    x = torch.tensor([[[[-1.0, -0.6, -0.25, 0.0, 0.3, 0.5, 0.9]]]], dtype=torch.float64)
    assert torch.equal(ops.make("identity")(x), x)
    assert torch.equal(ops.make("identity").adjoint(x), x)
    hdr = ops.make("hdr")
    expected = torch.tensor([[[[-1.0, -1.0, -0.5, 0.0, 0.6, 1.0, 1.0]]]], dtype=torch.float64)
    torch.testing.assert_close(hdr(x), expected)
    torch.testing.assert_close(ops.make("hdr", scale=0.5)(x), 0.5 * x)
    assert not hdr.linear and not hasattr(hdr, "adjoint")
    with pytest.raises(ValueError, match="scale"):
        ops.make("hdr", scale=0.0)


def test_operators_move_with_state_dict() -> None:
    op = ops.make("gaussian_blur", kernel_size=5, sigma=1.0)
    assert "kernel" in op.state_dict()
    inp = ops.make("inpainting", mask_type="random", image_size=(H, W))
    assert inp.state_dict()["mask"].shape == (1, 1, H, W)
    mat = ops.make("matrix", matrix=_matrix())
    assert set(mat.state_dict()) == {"matrix", "pinv"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(ALL))
def test_cuda_matches_cpu(name: str) -> None:
    x = _x(2, dtype=torch.float32)
    cpu = ALL[name]()
    expected = cpu(x)
    for op in (ALL[name]().to("cuda"), ALL[name]()):  # moved module, and buffers cast at the call
        y = op(x.cuda())
        assert y.device.type == "cuda"
        torch.testing.assert_close(y.cpu(), expected, rtol=1e-4, atol=1e-4)
        if op.linear:
            torch.testing.assert_close(op.adjoint(y).cpu(), cpu.adjoint(expected), rtol=1e-4, atol=1e-4)
