"""CI tests (no ComfyUI) of the pure parts of the Regularizer and Equivariance Error nodes
(``nodes/equivariance.py``)."""

from __future__ import annotations

import pytest
import torch
from pack_import import pack_module

eq = pack_module("nodes.equivariance")
equireg = pack_module("samplers.equireg")


def test_equicon_needs_an_f_that_maps_back_into_its_input_space():
    eq.check_source_form("vae_encoder_after_decoder", "equicon")
    for source in ("vae_encoder", "vae_decoder", "vae_encoder_after_decoder", "file"):
        eq.check_source_form(source, "equi")
    for source in ("vae_encoder", "vae_decoder", "file"):
        with pytest.raises(ValueError, match="form.*equicon"):
            eq.check_source_form(source, "equicon")
    with pytest.raises(ValueError, match="source"):
        eq.check_source_form("vae", "equi")


def test_report_averages_the_drawn_elements_of_the_group():
    # f = a fixed non-equivariant map: multiply by a ramp along the width (hflip changes it)
    ramp = torch.linspace(0.0, 1.0, 9).view(1, 1, 1, 9)

    def f(x):
        return x * ramp

    reg = equireg.EquiReg(f, group="rot90", form="equi", alpha=1.0)
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    errors, maps = eq.equivariance_report(reg, x, reduction="norm")
    assert errors.shape == (2,) and maps.shape == (2, 1, 9, 9)
    # definition: mean over the drawn elements g of ||rho(g) f(x) - f(T_g x)|| per image
    expected = []
    for g in reg.group.sample_from:
        d = reg.group.apply(f(x), g) - f(reg.group.apply(x, g))
        expected.append(d.flatten(1).norm(dim=1))
    torch.testing.assert_close(errors, torch.stack(expected).mean(0))
    # batch independence: image 1 alone gives its own error
    alone, _ = eq.equivariance_report(reg, x[1:])
    torch.testing.assert_close(alone[0], errors[1])


def test_report_is_zero_for_an_equivariant_f():
    reg = equireg.EquiReg(lambda x: 2.0 * x, group="hflip", form="equi", alpha=1.0)
    errors, maps = eq.equivariance_report(reg, torch.randn(3, 3, 7, 5))
    assert float(errors.abs().max()) == 0.0 and float(maps.abs().max()) == 0.0


def test_heat_map_image_has_one_colour_scale_per_batch():
    m = torch.zeros(2, 1, 4, 4)
    m[0, 0, 0, 0] = 2.0
    m[1, 0, 3, 3] = 1.0
    img = eq.heat_map_image(m, (8, 6))
    assert img.shape == (2, 8, 6, 3) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    torch.testing.assert_close(eq.colorize(torch.tensor(0.0)), eq._ANCHORS[0])
    torch.testing.assert_close(eq.colorize(torch.tensor(1.0)), eq._ANCHORS[-1])
    # brightness grows with the value; image 1's peak (half the batch max) is darker than image 0's
    assert img[0].sum(-1).max() > img[1].sum(-1).max() > img[1].sum(-1).min()
    with pytest.raises(ValueError, match="error map"):
        eq.heat_map_image(torch.zeros(2, 3, 4, 4), (4, 4))


def test_zero_map_gives_the_darkest_colour():
    img = eq.heat_map_image(torch.zeros(1, 1, 3, 3), (3, 3))
    torch.testing.assert_close(img[0, 0, 0], eq._ANCHORS[0])


def test_error_text_lists_every_image():
    text = eq.error_text(torch.tensor([0.5, 1.25]), "norm", "vae_decoder", "hflip", "equi")
    lines = text.splitlines()
    assert len(lines) == 3 and lines[1] == "image 0: 0.5" and lines[2] == "image 1: 1.25"
