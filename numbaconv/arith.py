"""Convolution arithmetic: output sizes, receptive fields, and drawings of sliding windows.

The size formulas are PyTorch's (``torch.nn.Conv2d``, ``MaxPool2d``, ``ConvTranspose2d``
documentation), which are those of Dumoulin and Visin, "A guide to convolution arithmetic for
deep learning" (2016), extended by dilation and ``ceil_mode``. Every function takes an int (one
axis, or the same for both) or an ``(h, w)`` pair per argument, and answers in the same form.

>>> conv_output_size(224, 11, stride=4, padding=2)
55
>>> pool_output_size((112, 112), 3, 2, ceil_mode=True)
(56, 56)
>>> receptive_field([(3, 1), (3, 1), (2, 2)]).size
6
"""

from __future__ import annotations

import numbers
from fractions import Fraction

from .functional._args import pool_output_size as _pool_size

__all__ = ["conv_output_size", "pool_output_size", "conv_transpose_output_size",
           "receptive_field", "ReceptiveField", "draw_convolution"]


def _axes(value, name, fn, minimum):
    """(value_h, value_w) from an int or a pair; ints >= minimum."""
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise ValueError(f"{fn}(): {name}={value!r} must be an int or an (h, w) pair")
        vals = tuple(value)
    else:
        vals = (value, value)
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{fn}(): {name}={value!r} must be an int or a pair of ints")
        if v < minimum:
            raise ValueError(f"{fn}(): {name}={value!r} must be >= {minimum}")
    return int(vals[0]), int(vals[1])


def _is_pair(*values):
    return any(isinstance(v, tuple | list) for v in values)


def _answer(values, as_pair):
    return tuple(values) if as_pair else values[0]


def conv_output_size(input_size, kernel_size, stride=1, padding=0, dilation=1):
    """``floor((in + 2*padding - dilation*(kernel_size - 1) - 1) / stride) + 1``.

    ``padding`` may also be ``'valid'`` (0) or ``'same'`` (stride 1: the output is the input
    size). Raises ``ValueError`` when the dilated kernel is larger than the padded input."""
    fn = "conv_output_size"
    as_pair = _is_pair(input_size, kernel_size, stride, padding, dilation)
    size = _axes(input_size, "input_size", fn, 1)
    k = _axes(kernel_size, "kernel_size", fn, 1)
    s = _axes(stride, "stride", fn, 1)
    d = _axes(dilation, "dilation", fn, 1)
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif padding == "same":
            if s != (1, 1):
                raise ValueError(f"{fn}(): padding='same' needs stride=1, got stride={stride}")
            return _answer(size, as_pair)
        else:
            raise ValueError(f"{fn}(): padding={padding!r}; expected an int, a pair, 'same' "
                             f"or 'valid'")
    p = _axes(padding, "padding", fn, 0)
    out = []
    for i in range(2):
        eff = d[i] * (k[i] - 1) + 1
        if eff > size[i] + 2 * p[i]:
            raise ValueError(f"{fn}(): the kernel (dilated size {eff}) is larger than the padded "
                             f"input ({size[i]} + 2*{p[i]} = {size[i] + 2 * p[i]})")
        out.append((size[i] + 2 * p[i] - eff) // s[i] + 1)
    return _answer(out, as_pair)


def pool_output_size(input_size, kernel_size, stride=None, padding=0, dilation=1,
                     ceil_mode=False):
    """Pooling's size: as ``conv_output_size`` (``stride`` defaults to ``kernel_size``), but
    with ``ceil_mode`` the division rounds up, and then a last window that would start in the
    right padding is dropped (PyTorch's rule). ``padding`` must be at most half the kernel."""
    fn = "pool_output_size"
    as_pair = _is_pair(input_size, kernel_size, stride, padding, dilation)
    size = _axes(input_size, "input_size", fn, 1)
    k = _axes(kernel_size, "kernel_size", fn, 1)
    s = k if stride is None else _axes(stride, "stride", fn, 1)
    p = _axes(padding, "padding", fn, 0)
    d = _axes(dilation, "dilation", fn, 1)
    out = []
    for i in range(2):
        if p[i] > k[i] // 2:
            raise ValueError(f"{fn}(): padding={padding!r} must be at most half of "
                             f"kernel_size={kernel_size!r}")
        o = _pool_size(size[i], k[i], s[i], p[i], d[i], bool(ceil_mode))
        if o < 1:
            raise ValueError(f"{fn}(): the window (dilated size {d[i] * (k[i] - 1) + 1}) is "
                             f"larger than the padded input ({size[i] + 2 * p[i]})")
        out.append(o)
    return _answer(out, as_pair)


def conv_transpose_output_size(input_size, kernel_size, stride=1, padding=0, output_padding=0,
                               dilation=1):
    """``(in - 1)*stride - 2*padding + dilation*(kernel_size - 1) + output_padding + 1``;
    ``output_padding`` must be smaller than ``stride`` or ``dilation`` (PyTorch's rule)."""
    fn = "conv_transpose_output_size"
    as_pair = _is_pair(input_size, kernel_size, stride, padding, output_padding, dilation)
    size = _axes(input_size, "input_size", fn, 1)
    k = _axes(kernel_size, "kernel_size", fn, 1)
    s = _axes(stride, "stride", fn, 1)
    p = _axes(padding, "padding", fn, 0)
    op = _axes(output_padding, "output_padding", fn, 0)
    d = _axes(dilation, "dilation", fn, 1)
    out = []
    for i in range(2):
        if op[i] >= s[i] and op[i] >= d[i]:
            raise ValueError(f"{fn}(): output_padding={output_padding!r} must be smaller than "
                             f"stride={stride!r} or dilation={dilation!r}")
        o = (size[i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1
        if o < 1:
            raise ValueError(f"{fn}(): padding={padding!r} removes the whole output (size {o})")
        out.append(o)
    return _answer(out, as_pair)


class ReceptiveField:
    """Of one unit after a stack of layers, in input pixels: ``size`` (extent of the input it
    depends on) and ``stride`` (distance between neighbouring units' fields, the product of the
    strides); it unpacks as ``size, stride = receptive_field(layers)``. ``start`` is the centre
    of the first unit's field (negative when it lies in the padding). Each is a number, or an
    ``(h, w)`` pair when the two axes differ."""

    __slots__ = ("size", "stride", "start")

    def __init__(self, size, stride, start=0):
        self.size, self.stride, self.start = size, stride, start

    def __iter__(self):
        return iter((self.size, self.stride))

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return (self.size, self.stride)[i]

    def __eq__(self, other):
        if isinstance(other, ReceptiveField):
            return (self.size, self.stride, self.start) == (other.size, other.stride,
                                                            other.start)
        if isinstance(other, tuple):
            return (self.size, self.stride) == other
        return NotImplemented

    def __hash__(self):
        return hash((self.size, self.stride, self.start))

    def __repr__(self):
        return f"ReceptiveField(size={self.size!r}, stride={self.stride!r}, start={self.start!r})"


def _layer_geometry(layer, fn):
    """(kernel, stride, padding, dilation, transposed) pairs of one layer description."""
    from . import nn

    if isinstance(layer, nn.ConvTranspose2d):
        if isinstance(layer.padding, str):
            raise ValueError(f"{fn}(): {layer!r} has string padding")
        return layer.kernel_size, layer.stride, layer.padding, layer.dilation, True
    if isinstance(layer, nn.Conv2d):
        pad = layer.padding
        if pad == "valid":
            pad = (0, 0)
        elif pad == "same":
            pad = tuple((d * (k - 1)) // 2 for k, d in zip(layer.kernel_size, layer.dilation))
        return layer.kernel_size, layer.stride, pad, layer.dilation, False
    if isinstance(layer, nn.MaxPool2d):
        return layer.kernel_size, layer.stride, layer.padding, layer.dilation, False
    if isinstance(layer, nn.AvgPool2d):
        return layer.kernel_size, layer.stride, layer.padding, (1, 1), False
    if isinstance(layer, nn.Module):
        return None  # elementwise or channel-wise: no spatial effect
    if isinstance(layer, tuple | list) and 1 <= len(layer) <= 4:
        k, s, p, d = (tuple(layer) + (None, 0, 1)[len(layer) - 1:])[:4]
        s = 1 if s is None else s
        return (_axes(k, "kernel_size", fn, 1), _axes(s, "stride", fn, 1),
                _axes(p, "padding", fn, 0), _axes(d, "dilation", fn, 1), False)
    if isinstance(layer, numbers.Integral) and not isinstance(layer, bool):
        return _axes(layer, "kernel_size", fn, 1), (1, 1), (0, 0), (1, 1), False
    raise TypeError(f"{fn}(): {layer!r} is not a layer; expected a Module or a (kernel_size, "
                    f"stride, padding, dilation) tuple")


def _simplify(x):
    x = Fraction(x)
    return int(x) if x.denominator == 1 else float(x)


def receptive_field(layers) -> ReceptiveField:
    """The receptive field of a unit after ``layers``, applied in order.

    ``layers`` is a Module (a ``Sequential`` or any model: its submodules are taken in
    definition order, which is exact for a chain) or a list of layers, each a ``Conv2d``,
    ``ConvTranspose2d``, ``MaxPool2d``, ``AvgPool2d``, another Module (no spatial effect:
    ReLU, BatchNorm, ...), or a tuple ``(kernel_size[, stride[, padding[, dilation]]])``.
    With ``r`` the field size, ``j`` the stride between units and ``k' = d*(k-1)+1``:
    ``r += (k'-1)*j; start += ((k'-1)/2 - p)*j; j *= s``. A transposed convolution divides
    ``j`` by its stride. For networks with branches use ``numbaconv.summary``, which traces a
    real forward pass."""
    from . import nn

    fn = "receptive_field"
    if isinstance(layers, nn.Module):
        layers = [m for m in layers.modules() if not list(m.children())]
    elif not isinstance(layers, tuple | list):
        raise TypeError(f"{fn}(): layers must be a Module or a list of layers, got "
                        f"{type(layers).__name__}")
    size = [Fraction(1), Fraction(1)]
    jump = [Fraction(1), Fraction(1)]
    start = [Fraction(0), Fraction(0)]  # the centre of input pixel 0 is at 0
    for layer in layers:
        geo = _layer_geometry(layer, fn)
        if geo is None:
            continue
        k, s, p, d, transposed = geo
        for i in range(2):
            eff = d[i] * (k[i] - 1) + 1
            if transposed:
                jump[i] = jump[i] / s[i]
                taps = -(-eff // s[i])  # input units one output unit can depend on
                size[i] += (taps - 1) * jump[i] * s[i]
                start[i] += (p[i] - Fraction(eff - 1, 2)) * jump[i]
            else:
                size[i] += (eff - 1) * jump[i]
                start[i] += (Fraction(eff - 1, 2) - p[i]) * jump[i]
                jump[i] *= s[i]

    def out(v):
        a, b = _simplify(v[0]), _simplify(v[1])
        return a if a == b else (a, b)

    return ReceptiveField(out(size), out(jump), out(start))


def draw_convolution(input_size, kernel_size, stride=1, padding=0, dilation=1, *,
                     output_index=None, transposed=False, output_padding=0, ax=None):
    """Draw a convolution's sliding windows over its input and output grids, in the style of
    Dumoulin and Visin's figures: the input in blue with its zero padding dashed, the output
    in green beside it, and the window (with its dilation gaps) of one output unit and that
    unit highlighted. ``output_index=None`` draws every window position, one per panel
    (up to 16). With ``transposed=True`` the equivalent direct convolution is drawn: the input
    spread out by ``stride - 1`` zeros between pixels and padded by
    ``dilation*(kernel_size - 1) - padding``, as the guide explains transposed convolution.

    Needs matplotlib (``pip install numbaconv[viz]``). Returns the figure."""
    try:
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("draw_convolution() needs matplotlib: pip install matplotlib") from err

    fn = "draw_convolution"
    size = _axes(input_size, "input_size", fn, 1)
    k = _axes(kernel_size, "kernel_size", fn, 1)
    s = _axes(stride, "stride", fn, 1)
    d = _axes(dilation, "dilation", fn, 1)
    p = _axes(padding, "padding", fn, 0)
    if transposed:
        out = conv_transpose_output_size(size, k, s, p, output_padding, d)
        # the equivalent direct convolution: stride-1 over the zero-spread, re-padded input
        grid = tuple((size[i] - 1) * s[i] + 1 for i in range(2))
        pads = tuple(d[i] * (k[i] - 1) - p[i] for i in range(2))
        if min(pads) < 0:
            raise ValueError(f"{fn}(): padding={padding!r} larger than dilation*(kernel_size-1)"
                             f" cannot be drawn as a direct convolution")
        real = {(i * s[0], j * s[1]) for i in range(size[0]) for j in range(size[1])}
        conv_s = (1, 1)
        extra = _axes(output_padding, "output_padding", fn, 0)
    else:
        out = conv_output_size(size, k, s, p, d)
        grid, pads, conv_s, extra = size, p, s, (0, 0)
        real = {(i, j) for i in range(size[0]) for j in range(size[1])}
    out = out if isinstance(out, tuple) else (out, out)
    if output_index is None:
        positions = [(i, j) for i in range(out[0]) for j in range(out[1])][:16]
    else:
        oi = _axes(output_index, "output_index", fn, 0)
        if oi[0] >= out[0] or oi[1] >= out[1]:
            raise ValueError(f"{fn}(): output_index={output_index!r} outside the {out} output")
        positions = [oi]
    cols = min(4, len(positions))
    rows = -(-len(positions) // cols)
    total_h = grid[0] + 2 * pads[0] + extra[0]
    total_w = grid[1] + 2 * pads[1] + extra[1]
    cell = 0.28
    if ax is None:
        fig, axes = plt.subplots(rows, cols, squeeze=False,
                                 figsize=(cols * (total_w + out[1] + 2) * cell + 0.5,
                                          rows * (max(total_h, out[0]) + 1) * cell + 0.6))
        axes = [a for row in axes for a in row]
    else:
        if len(positions) != 1:
            raise ValueError(f"{fn}(): ax= draws one window; pass output_index=(i, j)")
        fig, axes = ax.figure, [ax]
    for a, (oi, oj) in zip(axes, positions):
        ox = total_w + 1.5  # output grid to the right of the input
        for i in range(total_h):
            for j in range(total_w):
                y, x = i - pads[0], j - pads[1]
                inside = (y, x) in real
                a.add_patch(Rectangle((j, -i - 1), 1, 1, fill=inside, lw=0.6,
                                      ls="-" if inside else "--",
                                      fc="#9ecae1" if inside else "none", ec="#3182bd"))
        for ki in range(k[0]):
            for kj in range(k[1]):
                i = oi * conv_s[0] + ki * d[0]
                j = oj * conv_s[1] + kj * d[1]
                a.add_patch(Rectangle((j, -i - 1), 1, 1, fc="#08519c", alpha=0.55, lw=0))
        for i in range(out[0]):
            for j in range(out[1]):
                hit = (i, j) == (oi, oj)
                a.add_patch(Rectangle((ox + j, -i - 1), 1, 1, lw=0.6, ec="#31a354",
                                      fc="#006d2c" if hit else "#a1d99b"))
        a.set_xlim(-0.5, ox + out[1] + 0.5)
        a.set_ylim(-max(total_h, out[0]) - 0.5, 0.5)
        a.set_aspect("equal")
        a.axis("off")
        a.set_title(f"output ({oi}, {oj})", fontsize=8)
    for a in axes[len(positions):]:
        a.axis("off")
    kind = "transposed convolution" if transposed else "convolution"
    fig.suptitle(f"{kind}: input {size[0]}x{size[1]}, kernel {k[0]}x{k[1]}, stride "
                 f"{s[0]}x{s[1]}, padding {p[0]}x{p[1]}, dilation {d[0]}x{d[1]} -> output "
                 f"{out[0]}x{out[1]}", fontsize=9)
    return fig
