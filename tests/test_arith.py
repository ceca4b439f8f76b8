"""Convolution arithmetic, summary tables and the equivariance measures."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import assert_close, needs_torch, torch

import numbaconv as nc
from numbaconv import analysis, arith, nn
from numbaconv import functional as F


def _grid():
    yield from itertools.product((5, 8, 13), (1, 2, 3, 5), (1, 2, 3), (0, 1, 2), (1, 2))


def test_conv_output_size_matches_real_convolutions():
    checked = 0
    for size, k, s, p, d in _grid():
        if d * (k - 1) + 1 > size + 2 * p:
            with pytest.raises(ValueError, match="larger than the padded input"):
                arith.conv_output_size(size, k, s, p, d)
            continue
        x, w = nc.zeros(1, 1, size, size + 1), nc.zeros(1, 1, k, k)
        out = F.conv2d(x, w, stride=s, padding=p, dilation=d)
        assert arith.conv_output_size((size, size + 1), k, s, p, d) == out.shape[2:]
        assert arith.conv_output_size(size, k, s, p, d) == out.shape[2]
        checked += 1
    assert checked > 150


def test_pool_output_size_matches_real_pooling_including_ceil_mode():
    checked = 0
    for (size, k, s, p, d), ceil in itertools.product(_grid(), (False, True)):
        if p > k // 2 or d * (k - 1) + 1 > size + 2 * p:
            continue
        x = nc.zeros(1, 1, size, size)
        out = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil)
        assert arith.pool_output_size(size, k, s, p, d, ceil) == out.shape[2], (size, k, s, p, d)
        if d == 1:
            avg = F.avg_pool2d(x, k, s, p, ceil_mode=ceil)
            assert arith.pool_output_size(size, k, s, p, 1, ceil) == avg.shape[2]
        checked += 1
    assert checked > 150
    # the rule that the last window must start inside the input or the left padding
    assert arith.pool_output_size(5, 2, 2, 1, ceil_mode=True) == 3
    assert arith.pool_output_size(6, 3, 2, ceil_mode=True) == 3
    with pytest.raises(ValueError, match="at most half"):
        arith.pool_output_size(8, 3, 1, 2)


def test_conv_transpose_output_size_matches_real_layers():
    for size, k, s, p, d in _grid():
        for op in range(max(s, d)):
            expect = (size - 1) * s - 2 * p + d * (k - 1) + op + 1
            if expect < 1:
                with pytest.raises(ValueError):
                    arith.conv_transpose_output_size(size, k, s, p, op, d)
                continue
            out = F.conv_transpose2d(nc.zeros(1, 2, size, size), nc.zeros(2, 1, k, k),
                                     stride=s, padding=p, output_padding=op, dilation=d)
            assert arith.conv_transpose_output_size(size, k, s, p, op, d) == out.shape[2]
    with pytest.raises(ValueError, match="output_padding"):
        arith.conv_transpose_output_size(4, 3, 2, output_padding=2)


@needs_torch
@pytest.mark.torch
def test_sizes_agree_with_pytorch_layers():
    for size, k, s, p, d in _grid():
        if d * (k - 1) + 1 > size + 2 * p:
            continue
        x = torch.zeros(1, 1, size, size)
        assert torch.nn.Conv2d(1, 1, k, s, p, d)(x).shape[2] == arith.conv_output_size(
            size, k, s, p, d)
        if p <= k // 2:
            for ceil in (False, True):
                got = torch.nn.MaxPool2d(k, s, p, d, ceil_mode=ceil)(x).shape[2]
                assert got == arith.pool_output_size(size, k, s, p, d, ceil)


def test_size_arguments_are_checked():
    with pytest.raises(TypeError, match="stride"):
        arith.conv_output_size(8, 3, stride=1.5)
    with pytest.raises(ValueError, match="stride"):
        arith.conv_output_size(8, 3, stride=0)
    with pytest.raises(ValueError, match="padding='same' needs stride=1"):
        arith.conv_output_size(8, 3, 2, "same")
    assert arith.conv_output_size(9, 3, 1, "same") == 9
    assert arith.conv_output_size((9, 7), 3, 1, "valid") == (7, 5)


def test_receptive_field_of_stacks():
    rf = arith.receptive_field([(3, 1), (3, 1)])
    assert (rf.size, rf.stride) == (5, 1)
    size, stride = rf  # unpacks like a pair
    assert (size, stride) == rf == (5, 1) and rf.start == 2
    rf = arith.receptive_field([(3, 1, 1), (2, 2), (3, 1, 1), (2, 2)])
    assert (rf.size, rf.stride, rf.start) == (10, 4, 1.5)
    assert arith.receptive_field([(3, 1, 0, 2)]).size == 5  # dilation 2
    lenet = nc.models.lenet5()
    rf = arith.receptive_field(lenet.features)
    assert (rf.size, rf.stride) == (16, 4)
    rect = arith.receptive_field([nn.Conv2d(1, 1, (3, 5))])
    assert rect.size == (3, 5) and rect.stride == 1
    up = arith.receptive_field([(2, 2), nn.ConvTranspose2d(1, 1, 2, stride=2)])
    assert up.stride == 1 and up.size == 2
    with pytest.raises(TypeError, match="not a layer"):
        arith.receptive_field(["conv"])


def test_receptive_field_by_brute_force():
    """The field size is the extent of input pixels that change an output unit."""
    layers = [nn.Conv2d(1, 1, 3, padding=1), nn.AvgPool2d(2), nn.Conv2d(1, 1, 3, dilation=2),
              nn.AvgPool2d(3, 2)]
    for m in layers:
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0)
            nn.init.zeros_(m.bias)
    net = nn.Sequential(*layers)
    x = nc.zeros(1, 1, 40, 40, requires_grad=True)
    net(x)[0, 0, 1, 1].backward()
    rows = np.nonzero(np.abs(x.grad.numpy()[0, 0]).sum(axis=1))[0]
    rf = arith.receptive_field(net)
    assert rows.max() - rows.min() + 1 == rf.size
    assert rf.stride == 4
    assert (rows.max() + rows.min()) / 2 == pytest.approx(rf.start + rf.stride * 1)


def test_draw_convolution_makes_a_figure():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    fig = arith.draw_convolution(5, 3, stride=2, padding=1)
    assert len([a for a in fig.axes if a.patches]) == 9  # one panel per output position
    fig = arith.draw_convolution(4, 3, dilation=2, padding=2, output_index=(1, 1))
    assert len(fig.axes) == 1
    fig = arith.draw_convolution(3, 3, stride=2, padding=1, transposed=True, output_index=(0, 0))
    assert "transposed" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="output_index"):
        arith.draw_convolution(5, 3, output_index=(3, 0))


def test_summary_rows_and_table():
    s = nc.summary(nc.models.lenet5(), (1, 28, 28))
    assert s.total_params == nc.models.lenet5().num_parameters() == 61_706
    first = s.rows[0]
    assert (first.name, first.type, first.output_shape) == ("features.0", "Conv2d", (1, 6, 28, 28))
    assert first.params == 156 and first.mult_adds == 6 * 28 * 28 * 25
    assert (first.receptive_field, first.rf_stride) == (5, 1)
    assert s.mult_adds == sum(r.mult_adds for r in s.rows)
    text = str(s)
    assert "Total params: 61,706" in text and "features.3 (Conv2d)" in text
    batched = nc.summary(nc.models.lenet5(), (4, 1, 28, 28))
    assert batched.mult_adds == 4 * s.mult_adds
    hwc = nc.summary(nc.models.alexnet(num_classes=10), (99, 99, 3))  # "99x99x3"
    assert hwc.input_shape == (1, 3, 99, 99)


def test_summary_traces_branches_and_restores_the_mode():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(3, 4, 7, padding=3)
            self.pool = nn.MaxPool2d(2)
            self.bn = nn.BatchNorm2d(8)
            self.scale = nn.Parameter(nc.ones(1))

        def forward(self, x):
            y = F.cat([self.a(x), self.b(x)], 1) * self.scale
            return self.pool(self.bn(y))

    net = Branchy()
    s = nc.summary(net, (3, 16, 16))
    assert net.training  # put back
    pool = s.rows[-2] if s.rows[-1].name == "Branchy" else s.rows[-1]
    assert pool.type == "MaxPool2d" and pool.receptive_field == 8  # widest branch 7, then 2x2
    assert s.total_params == net.num_parameters()
    with pytest.raises(ValueError, match="input_shape"):
        nc.summary(net, (3, 0, 16))
    with pytest.raises(TypeError, match="Module"):
        nc.summary(lambda x: x, (3, 8, 8))


def test_circular_convolution_is_exactly_equivariant():
    nc.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, padding_mode="circular")
    x = nc.randn(2, 3, 12, 12)
    assert analysis.equivariance_error(conv, x, (2, 3)) < 1e-6
    assert analysis.equivariance_error(conv, x.numpy(), (2, 3)) < 1e-6  # a host array too
    zero_pad = nn.Conv2d(3, 5, 3, padding=1)
    err = analysis.equivariance_error(zero_pad, x, (2, 3))
    assert 1e-3 < err < 0.6  # only the border rows and columns differ


def test_pooling_stacks_are_nearly_equivariant():
    nc.manual_seed(0)
    x = nc.randn(2, 4, 16, 16)
    pool = nn.MaxPool2d(2)
    assert analysis.equivariance_error(pool, x, 2) < 1e-6  # a whole output pixel
    stack = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                          nn.AvgPool2d(2))
    exact = analysis.equivariance_error(stack, x, (2, 4))
    half = analysis.equivariance_error(stack, x, 1)  # half an output pixel: interpolated
    assert exact < 1e-6 < half < 1.0
    # a smooth image (period 32 pixels) survives a half-pixel output shift almost unchanged
    smooth = nc.tensor(np.tile(np.sin(np.arange(32) * 2 * np.pi / 32), (2, 4, 32, 1))
                       .astype(np.float32))
    assert analysis.equivariance_error(nn.AvgPool2d(2), smooth, 1) < 0.03


def test_shift_and_invariance():
    x = nc.tensor(np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5))
    assert_close(analysis.shift(x, (1, -2)), np.roll(x.numpy(), (1, -2), axis=(2, 3)))
    nc.manual_seed(0)
    net = nc.models.resnet_mini(8, 10, 1).eval()
    img = nc.randn(2, 1, 16, 16)
    assert analysis.invariance_error(net, img, 0) == 0
    err = analysis.invariance_error(net, img, 4)
    assert 0 < err < 1
    with pytest.raises(ValueError, match="4-D"):
        analysis.equivariance_error(net, img, 1)
    with pytest.raises(TypeError, match="shift"):
        analysis.shift(x, 1.5)


def test_visualisation_helpers():
    from numbaconv import visualize

    alex_like = nn.Conv2d(3, 10, 5)
    grid = visualize.filter_grid(alex_like, ncols=5)
    assert grid.shape == (2 * 6 + 1, 5 * 6 + 1, 3)
    assert grid.min() >= 0 and grid.max() <= 1
    grey = visualize.filter_grid(nn.Conv2d(1, 6, 5))
    assert grey.ndim == 2
    net = nc.models.lenet5()
    x = nc.randn(3, 1, 28, 28)
    acts = visualize.activations(net, x, ["features.1", "features.4"])
    assert acts["features.1"].shape == (3, 6, 28, 28) and (acts["features.1"] >= 0).all()
    with nc.no_grad():
        assert_close(acts["features.4"], net.features[:5](x))
    assert not net.features[1].__dict__.get("_forward_hooks")  # hooks removed
    with pytest.raises(ValueError, match="no layer named"):
        visualize.activations(net, x, "nope")
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    assert visualize.plot_filters(net.features[0]).axes
    assert len(visualize.plot_feature_maps(acts["features.1"], ncols=3).axes) == 6


def test_forward_hooks_can_replace_outputs_and_be_removed():
    relu = nn.ReLU()
    seen = []
    handle = relu.register_forward_hook(lambda m, i, o: seen.append(o.shape) or o * 2)
    assert relu(nc.ones(2)).numpy().tolist() == [2, 2]
    handle.remove()
    assert relu(nc.ones(2)).numpy().tolist() == [1, 1]
    assert seen == [(2,)]
    with pytest.raises(TypeError, match="callable"):
        relu.register_forward_hook(3)
