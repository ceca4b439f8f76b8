"""``numbaconv.summary``: a per-layer table of a model, from a real traced forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from . import nn
from .arith import _layer_geometry, _simplify
from .autograd import enable_grad
from .nn.module import register_module_forward_hook
from .tensor import Tensor, zeros

__all__ = ["summary", "ModelSummary", "LayerRow"]

_GLOBAL = "global"  # a unit that sees the whole input (after Flatten / Linear)


@dataclass(frozen=True)
class LayerRow:
    """One layer call: dotted ``name``, ``type``, ``output_shape``, ``params`` (its own,
    counted at its first call only), ``mult_adds`` (multiply-adds of this call),
    ``receptive_field`` and ``rf_stride`` in input pixels (a number, an ``(h, w)`` pair when
    the axes differ, or ``"global"`` for units that see the whole input; ``None`` where a
    layer's geometry is not known)."""

    name: str
    type: str
    output_shape: tuple
    params: int
    mult_adds: int
    receptive_field: object
    rf_stride: object


class ModelSummary:
    """What :func:`summary` returns; ``str()`` gives the table."""

    def __init__(self, model_name, input_shape, rows, total_params, trainable_params,
                 unused_params, output_shape):
        self.model_name = model_name
        self.input_shape = input_shape
        self.rows = rows
        self.total_params = total_params
        self.trainable_params = trainable_params
        self.unused_params = unused_params
        self.output_shape = output_shape
        self.mult_adds = sum(r.mult_adds for r in rows)

    def __repr__(self):
        return (f"ModelSummary({self.model_name}, input {self.input_shape}: "
                f"{self.total_params:,} parameters, {self.mult_adds:,} multiply-adds)")

    def __str__(self):
        def fmt_rf(v):
            if v is None:
                return "?"
            if isinstance(v, tuple):
                return "x".join(_fmt_num(x) for x in v)
            return v if isinstance(v, str) else _fmt_num(v)

        header = ("Layer (type)", "Output shape", "Param #", "Mult-adds", "RF", "RF stride")
        body = [(f"{r.name} ({r.type})", str(list(r.output_shape)), f"{r.params:,}",
                 f"{r.mult_adds:,}", fmt_rf(r.receptive_field), fmt_rf(r.rf_stride))
                for r in self.rows]
        widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]

        def line(row):
            first = row[0].ljust(widths[0])
            return "  ".join([first] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])

        rule = "=" * len(line(header))
        out = [f"{self.model_name}, input {list(self.input_shape)}", rule, line(header),
               "-" * len(rule)]
        out += [line(row) for row in body]
        out += [rule, f"Total params: {self.total_params:,} ({self.total_params / 1e6:.2f} M)",
                f"Trainable params: {self.trainable_params:,}",
                f"Non-trainable params: {self.total_params - self.trainable_params:,}"]
        if self.unused_params:
            out.append(f"Params not used by this forward pass (e.g. auxiliary heads): "
                       f"{self.unused_params:,}")
        out += [f"Mult-adds: {self.mult_adds:,} ({self.mult_adds / 1e9:.2f} G)",
                f"Output shape: {list(self.output_shape)}", rule]
        return "\n".join(out)


def _fmt_num(x):
    return f"{x:g}" if isinstance(x, float) else str(x)


def _spatial(t):
    return tuple(t.shape[2:]) if isinstance(t, Tensor) and t.ndim == 4 else None


def _mult_adds(module, inputs, out) -> int:
    """Multiply-adds of convolutions and fully connected layers, as the papers count them."""
    if not isinstance(out, Tensor):
        return 0
    if isinstance(module, nn.ConvTranspose2d):
        x = inputs[0]
        kh, kw = module.kernel_size
        return x.numel() * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def _adaptive_window(n_in, n_out):
    """Largest window and mean stride of PyTorch's adaptive pooling over one axis."""
    widest = max(-(-((i + 1) * n_in) // n_out) - (i * n_in) // n_out for i in range(n_out))
    return widest, Fraction(n_in, n_out)


class _Tracer:
    def __init__(self, names, input_tensor):
        self.names = names
        unit = (Fraction(1), Fraction(1))
        self.fields = {id(input_tensor): (unit, unit)}  # id -> ((size_h, size_w), (jump_h, jump_w))
        self.keep = [input_tensor]  # keeps every traced tensor alive, so ids stay unique
        self.rows = []
        self.called = set()

    def field_of(self, t):
        """Receptive field of tensor ``t``: its own if a layer made it, else the widest among
        the traced tensors it was computed from (walking the autograd graph: adds, concats,
        reshapes and other functional ops between layers)."""
        if id(t) in self.fields:
            return self.fields[id(t)]
        best, stack, seen = None, [t], set()
        while stack:
            cur = stack.pop()
            if id(cur) in seen:
                continue
            seen.add(id(cur))
            if id(cur) in self.fields and cur is not t:
                f = self.fields[id(cur)]
                if f == _GLOBAL or best is None:
                    best = f
                elif best != _GLOBAL:
                    best = (tuple(max(a, b) for a, b in zip(best[0], f[0])),
                            tuple(max(a, b) for a, b in zip(best[1], f[1])))
                continue
            ctx = getattr(cur, "_ctx", None)
            if ctx is not None:
                stack.extend(i for i in ctx.inputs if isinstance(i, Tensor))
        return best

    def __call__(self, module, inputs, output):
        leaf = not any(True for _ in module.children())
        own = [p for p in module._parameters.values() if p is not None]
        if not leaf and not own:
            return None
        first = id(module) not in self.called
        self.called.add(id(module))
        out = output[0] if isinstance(output, tuple) else output
        x = next((i for i in inputs if isinstance(i, Tensor)), None)
        field_in = self.field_of(x) if x is not None else None
        field = self._propagate(module, x, out, field_in)
        if isinstance(out, Tensor):
            self.fields[id(out)] = field
            self.keep.append(out)
        params = sum(p.numel() for p in own) if first else 0
        if field is None or field == _GLOBAL:
            rf = stride = field
        else:
            (sh, sw), (jh, jw) = field
            rf = _pair_or_one(sh, sw)
            stride = _pair_or_one(jh, jw)
        shape = out.shape if isinstance(out, Tensor) else ()
        self.rows.append(LayerRow(self.names.get(id(module), type(module).__name__),
                                  type(module).__name__, tuple(shape), params,
                                  _mult_adds(module, inputs, out), rf, stride))
        return None

    @staticmethod
    def _propagate(module, x, out, field):
        if field is None or field == _GLOBAL:
            return field
        (sh, sw), (jh, jw) = field
        if isinstance(module, nn.Linear | nn.Flatten):
            return _GLOBAL
        if isinstance(module, nn.AdaptiveAvgPool2d):  # and AdaptiveMaxPool2d
            si, so = _spatial(x), _spatial(out)
            if si is None or so is None:
                return None
            (kh, s_h), (kw, s_w) = _adaptive_window(si[0], so[0]), _adaptive_window(si[1], so[1])
            return ((sh + (kh - 1) * jh, sw + (kw - 1) * jw), (jh * s_h, jw * s_w))
        if isinstance(module, nn.Upsample):
            si, so = _spatial(x), _spatial(out)
            return ((sh, sw), (jh * Fraction(si[0], so[0]), jw * Fraction(si[1], so[1])))
        geo = _layer_geometry(module, "summary")
        if geo is None:  # no spatial effect, unless the layer changed the spatial size
            return field if _spatial(x) == _spatial(out) else None
        k, s, _p, d, transposed = geo
        size, jump = [sh, sw], [jh, jw]
        for i in range(2):
            eff = d[i] * (k[i] - 1) + 1
            if transposed:
                size[i] += (-(-eff // s[i]) - 1) * jump[i]
                jump[i] = jump[i] / s[i]
            else:
                size[i] += (eff - 1) * jump[i]
                jump[i] = jump[i] * s[i]
        return (tuple(size), tuple(jump))


def _pair_or_one(a, b):
    a, b = _simplify(a), _simplify(b)
    return a if a == b else (a, b)


def summary(model: nn.Module, input_shape, *, dtype=None, device=None) -> ModelSummary:
    """Trace one forward pass of ``model`` on a zero batch and tabulate every layer.

    ``input_shape`` is ``(C, H, W)`` (a batch of one is added, so multiply-adds are per image;
    ``(H, W, C)`` is recognised when C matches the first convolution's input channels and H
    does not)
    or ``(N, C, H, W)`` (counts are then for the whole batch); for models on flat inputs,
    ``(F,)`` or ``(N, F)``. The model runs in eval mode (so BatchNorm uses its running
    statistics and GoogLeNet's auxiliary heads are skipped) and is put back in the mode it was
    in. Rows are the layers (modules without submodules, and modules owning parameters) in
    the order they ran; parameters of modules that did not run are reported apart as unused.
    Multiply-adds count convolutions and fully connected layers (the convention of the
    AlexNet, VGG and ResNet papers); receptive fields are of one output unit, in input pixels.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary(): model must be a numbaconv.nn.Module, got "
                        f"{type(model).__name__}")
    if not isinstance(input_shape, tuple | list) or not input_shape or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in input_shape):
        raise ValueError(f"summary(): input_shape={input_shape!r} must be a tuple of positive "
                         f"ints, e.g. (3, 224, 224)")
    shape = tuple(input_shape)
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if len(shape) == 3 and first_conv is not None and shape[0] != first_conv.in_channels \
            and shape[2] == first_conv.in_channels:
        shape = (shape[2], shape[0], shape[1])  # "224x224x3" written height, width, channels
    if len(shape) in (1, 3):
        shape = (1,) + shape
    elif len(shape) not in (2, 4):
        raise ValueError(f"summary(): input_shape={input_shape!r} must be (C, H, W), "
                         f"(N, C, H, W), (F,) or (N, F)")
    first = next(model.parameters(), None)
    if device is None:
        device = first.device if first is not None else None
    if dtype is None:
        dtype = first.dtype if first is not None else None
    x = zeros(shape, dtype=dtype, device=device, requires_grad=True)
    names = {id(m): (name or type(model).__name__) for name, m in model.named_modules()}
    modes = {id(m): m.training for m in model.modules()}
    tracer = _Tracer(names, x)
    model.eval()
    try:
        with enable_grad(), register_module_forward_hook(tracer):
            out = model(x)
    finally:
        for m in model.modules():
            object.__setattr__(m, "training", modes[id(m)])
    out = out[0] if isinstance(out, tuple) else out
    called = {id(p) for name, m in model.named_modules() if id(m) in tracer.called
              for p in m._parameters.values() if p is not None}
    params = list(model.parameters())
    total = sum(p.numel() for p in params if id(p) in called)
    trainable = sum(p.numel() for p in params if id(p) in called and p.requires_grad)
    unused = sum(p.numel() for p in params if id(p) not in called)
    return ModelSummary(type(model).__name__, shape, tracer.rows, total, trainable, unused,
                        tuple(out.shape) if isinstance(out, Tensor) else ())
