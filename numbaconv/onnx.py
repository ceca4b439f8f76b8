"""Export a model to ONNX, the format that model servers and runtimes read.

:func:`export` runs one forward pass in eval mode and records it: every op on the tape
(``Function.apply``) and every BatchNorm layer (whose running statistics and ``eps`` the ONNX
node carries as they are), in the order they ran. Each becomes standard ONNX operators (Conv,
ConvTranspose, MaxPool, AveragePool, GlobalAveragePool, LRN, BatchNormalization, Gemm/MatMul,
Relu, Add, Concat, Reshape, Softmax, ...); parameters and buffers become initializers under
their ``state_dict`` names; the batch dimension of the input and the output is dynamic (named
``batch``). An op that has no ONNX form here (an adaptive pooling whose windows overlap,
indexing, a custom divisor...) is a ``ValueError`` naming it, raised before anything is
written. Needs the ``onnx`` package (``pip install 'numbaconv[onnx]'``; ``onnxruntime`` runs
the result).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import autograd
from .autograd import no_grad
from .tensor import Tensor


class _Tracer:
    """Records the ops of one forward pass as ONNX nodes."""

    def __init__(self, model, input_tensor):
        from onnx import helper

        self.helper = helper
        self.nodes, self.initializers = [], []
        self.names: dict[int, str] = {id(input_tensor): "input"}
        # the values that depend on the input; an op on none of them is folded into a constant
        self.dynamic: set[int] = {id(input_tensor)}
        self.keep = [input_tensor]  # the ids above stay valid while these live
        self.params = {}
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t is not None:
                self.params[id(t)] = (name, t)
        self.counter = 0
        self.suppress = 0

    # ------------------------------------------------------------ values
    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}_{self.counter}"

    def constant(self, array, hint="const") -> str:
        name = self.fresh(hint)
        self.initializers.append((name, np.asarray(array)))
        return name

    def name_of(self, t: Tensor) -> str:
        key = id(t)
        if key in self.names:
            return self.names[key]
        if key in self.params:  # a parameter or buffer: an initializer under its own name
            name, p = self.params[key]
            self.initializers.append((name, p.numpy()))
        else:  # a value made outside the ops (a scalar operand, a default weight)
            name = self.constant(np.ascontiguousarray(t.numpy()))
        self.names[key] = name
        self.keep.append(t)
        return name

    def output(self, t: Tensor, hint: str) -> str:
        name = self.fresh(hint)
        self.names[id(t)] = name
        self.dynamic.add(id(t))
        self.keep.append(t)
        return name

    def node(self, op, inputs, outputs, **attrs):
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=self.fresh(op),
                                                **attrs))

    # ------------------------------------------------------------ callbacks
    def on_module(self, module, args, kwargs):
        from .nn.layers import _BatchNorm

        if isinstance(module, _BatchNorm) and not module.training \
                and module.track_running_stats and self.suppress == 0:
            self.suppress += 1
            try:
                out = module.forward(*args, **kwargs)
            finally:
                self.suppress -= 1
            self.batch_norm(module, args[0] if args else kwargs["input"], out,
                            bool(kwargs.get("_relu", False)))
            return out
        return module.forward(*args, **kwargs)

    def on_function(self, cls, inputs, params, result):
        if self.suppress:
            return
        if not any(isinstance(t, Tensor) and id(t) in self.dynamic for t in inputs):
            return  # constant folding: the result becomes an initializer where it is used
        convert = _CONVERTERS.get(cls.__name__)
        if convert is None:
            raise ValueError(f"numbaconv.onnx.export(): the op {cls.__name__} has no ONNX "
                             f"form here (supported: {', '.join(sorted(_CONVERTERS))})")
        outs = result if isinstance(result, tuple) else (result,)
        convert(self, inputs, params, outs)

    # ------------------------------------------------------------ BatchNorm layers
    def batch_norm(self, module, x, out, relu):
        c = module.num_features
        dt = x.dtype

        def value(t, fill):
            return self.name_of(t) if t is not None else self.constant(np.full(c, fill, dt))

        ins = [self.name_of(x), value(module.weight, 1), value(module.bias, 0),
               self.name_of(module.running_mean), self.name_of(module.running_var)]
        y = self.output(out, "bn")
        if relu:
            mid = self.fresh("bn")
            self.node("BatchNormalization", ins, [mid], epsilon=float(module.eps))
            self.node("Relu", [mid], [y])
        else:
            self.node("BatchNormalization", ins, [y], epsilon=float(module.eps))


# ---------------------------------------------------------------- converters, by Function


def _conv(tr, inputs, p, outs):
    w = inputs[1]
    (ph, pw), kh, kw = p["padding"], w.shape[2], w.shape[3]
    tr.node("Conv", [tr.name_of(t) for t in inputs], [tr.output(outs[0], "conv")],
            kernel_shape=[kh, kw], strides=list(p["stride"]), pads=[ph, pw, ph, pw],
            dilations=list(p["dilation"]), group=int(p["groups"]))


def _conv_transpose(tr, inputs, p, outs):
    x, w = inputs[0], inputs[1]
    (sh, sw), (ph, pw), (dh, dw) = p["stride"], p["padding"], p["dilation"]
    kh, kw = w.shape[2], w.shape[3]
    oh, ow = p["out_shape"][2], p["out_shape"][3]
    extra = [oh - ((x.shape[2] - 1) * sh - 2 * ph + dh * (kh - 1) + 1),
             ow - ((x.shape[3] - 1) * sw - 2 * pw + dw * (kw - 1) + 1)]
    tr.node("ConvTranspose", [tr.name_of(t) for t in inputs], [tr.output(outs[0], "deconv")],
            kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw],
            dilations=[dh, dw], group=int(p["groups"]), output_padding=extra)


def _pool_ceil(x, p, dilation=(1, 1)):
    """ONNX's ceil_mode for the output size the op computed (PyTorch's rule)."""
    floor = [(x.shape[2 + i] + 2 * p["padding"][i] - dilation[i] * (p["kernel"][i] - 1) - 1)
             // p["stride"][i] + 1 for i in range(2)]
    return int(list(p["out_hw"]) != floor)


def _max_pool(tr, inputs, p, outs):
    x = inputs[0]
    (ph, pw) = p["padding"]
    tr.node("MaxPool", [tr.name_of(x)], [tr.output(outs[0], "maxpool")],
            kernel_shape=list(p["kernel"]), strides=list(p["stride"]), pads=[ph, pw, ph, pw],
            dilations=list(p["dilation"]), ceil_mode=_pool_ceil(x, p, p["dilation"]))


def _avg_pool(tr, inputs, p, outs):
    x = inputs[0]
    if p["divisor"] is not None:
        raise ValueError("numbaconv.onnx.export(): avg_pool2d with divisor_override has no "
                         "ONNX form (AveragePool divides by the window)")
    (ph, pw) = p["padding"]
    tr.node("AveragePool", [tr.name_of(x)], [tr.output(outs[0], "avgpool")],
            kernel_shape=list(p["kernel"]), strides=list(p["stride"]), pads=[ph, pw, ph, pw],
            ceil_mode=_pool_ceil(x, p), count_include_pad=int(p["count_include_pad"]))


def _adaptive(op, global_op):
    def convert(tr, inputs, p, outs):
        x = inputs[0]
        (h, w), (oh, ow) = x.shape[2:], p["out_hw"]
        y = tr.output(outs[0], global_op.lower())
        if (oh, ow) == (1, 1):
            tr.node(global_op, [tr.name_of(x)], [y])
        elif (oh, ow) == (h, w):
            tr.node("Identity", [tr.name_of(x)], [y])
        elif h % oh == 0 and w % ow == 0:  # equal, disjoint windows: a plain pooling
            tr.node(op, [tr.name_of(x)], [y], kernel_shape=[h // oh, w // ow],
                    strides=[h // oh, w // ow])
        elif oh % h == 0 and ow % w == 0:  # each window one input pixel: it is repeated
            scales = tr.constant(np.array([1, 1, oh // h, ow // w], np.float32), "scales")
            tr.node("Resize", [tr.name_of(x), "", scales], [y], mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        else:
            raise ValueError(f"numbaconv.onnx.export(): adaptive pooling of {h}x{w} to "
                             f"{oh}x{ow} (windows of unequal size) has no ONNX form; export "
                             f"at an input size whose feature map is a multiple of {oh}x{ow}")
    return convert


def _lrn(tr, inputs, p, outs):
    # PyTorch's and ONNX's LRN are the same: x / (k + alpha / size * sum of squares) ** beta
    tr.node("LRN", [tr.name_of(inputs[0])], [tr.output(outs[0], "lrn")], size=int(p["size"]),
            alpha=float(p["alpha"]), beta=float(p["beta"]), bias=float(p["k"]))


def _linear(tr, inputs, p, outs):
    x, w = inputs[0], inputs[1]
    y = tr.output(outs[0], "linear")
    if x.ndim == 2:
        tr.node("Gemm", [tr.name_of(t) for t in inputs], [y], transB=1)
        return
    wt = tr.constant(np.ascontiguousarray(w.numpy().T), "weight_t")
    if len(inputs) == 2:
        tr.node("MatMul", [tr.name_of(x), wt], [y])
    else:
        mid = tr.fresh("matmul")
        tr.node("MatMul", [tr.name_of(x), wt], [mid])
        tr.node("Add", [mid, tr.name_of(inputs[2])], [y])


def _simple(op, **attrs):
    def convert(tr, inputs, p, outs):
        tr.node(op, [tr.name_of(t) for t in inputs], [tr.output(outs[0], op.lower())],
                **attrs)
    return convert


def _reshape(tr, inputs, p, outs):
    x = inputs[0]
    shape = list(p["shape"])
    if x.ndim > 2 and len(shape) == 2 and shape[0] == x.shape[0]:  # flatten(1): N x rest
        tr.node("Flatten", [tr.name_of(x)], [tr.output(outs[0], "flatten")], axis=1)
        return
    # the batch stays dynamic: a leading dimension equal to the input's is copied from it
    if x.ndim and shape and shape[0] == x.shape[0]:
        shape[0] = 0
    tr.node("Reshape", [tr.name_of(x), tr.constant(np.array(shape, np.int64), "shape")],
            [tr.output(outs[0], "reshape")])


def _cat(tr, inputs, p, outs):
    tr.node("Concat", [tr.name_of(t) for t in inputs], [tr.output(outs[0], "concat")],
            axis=int(p["axis"]))


def _softmax(op):
    def convert(tr, inputs, p, outs):
        tr.node(op, [tr.name_of(inputs[0])], [tr.output(outs[0], op.lower())],
                axis=int(p["axis"]))
    return convert


def _permute(tr, inputs, p, outs):
    tr.node("Transpose", [tr.name_of(inputs[0])], [tr.output(outs[0], "transpose")],
            perm=[int(a) for a in p["axes"]])


def _reduce(op):
    def convert(tr, inputs, p, outs):
        axes = tr.constant(np.array(p["axes"], np.int64), "axes")
        tr.node(op, [tr.name_of(inputs[0]), axes], [tr.output(outs[0], op.lower())],
                keepdims=int(p["keepdims"]))
    return convert


def _mean(tr, inputs, p, outs):  # ReduceMean takes its axes as an attribute up to opset 17
    tr.node("ReduceMean", [tr.name_of(inputs[0])], [tr.output(outs[0], "reducemean")],
            axes=[int(a) for a in p["axes"]], keepdims=int(p["keepdims"]))


def _pad(tr, inputs, p, outs):
    widths = p["pads"]
    pads = [lo for lo, _ in widths] + [hi for _, hi in widths]
    if any(v < 0 for v in pads):
        raise ValueError("numbaconv.onnx.export(): pad with negative widths (cropping) has no "
                         "ONNX Pad form here")
    ins = [tr.name_of(inputs[0]), tr.constant(np.array(pads, np.int64), "pads")]
    mode = p["mode"]
    if mode == "constant":
        ins.append(tr.constant(np.array(p["value"] or 0, inputs[0].dtype), "pad_value"))
    tr.node("Pad", ins, [tr.output(outs[0], "pad")], mode=mode)


def _dropout(tr, inputs, p, outs):  # only in training mode, which export() never traces
    tr.node("Identity", [tr.name_of(inputs[0])], [tr.output(outs[0], "dropout")])


_CONVERTERS = {
    "Conv2d": _conv, "ConvTranspose2d": _conv_transpose, "MaxPool2d": _max_pool,
    "AvgPool2d": _avg_pool, "AdaptiveAvgPool2d": _adaptive("AveragePool", "GlobalAveragePool"),
    "AdaptiveMaxPool2d": _adaptive("MaxPool", "GlobalMaxPool"), "LocalResponseNorm": _lrn,
    "Linear": _linear, "Relu": _simple("Relu"), "Sigmoid": _simple("Sigmoid"),
    "Tanh": _simple("Tanh"), "Exp": _simple("Exp"), "Log": _simple("Log"),
    "Sqrt": _simple("Sqrt"), "Abs": _simple("Abs"), "Neg": _simple("Neg"),
    "Add": _simple("Add"), "Sub": _simple("Sub"), "Mul": _simple("Mul"), "Div": _simple("Div"),
    "Pow": _simple("Pow"), "Maximum": _simple("Max"), "Minimum": _simple("Min"),
    "MatMul": _simple("MatMul"), "Reshape": _reshape, "Cat": _cat,
    "Softmax": _softmax("Softmax"), "LogSoftmax": _softmax("LogSoftmax"), "Permute": _permute,
    "Sum": _reduce("ReduceSum"), "Mean": _mean, "Pad": _pad, "Dropout": _dropout,
}


def export(model, example_input: Tensor, path, opset: int = 17, input_name: str = "input",
           output_name: str = "output") -> None:
    """Trace ``model(example_input)`` in eval mode and write it to ``path`` as an ONNX model
    with a dynamic batch dimension (checked by ``onnx.checker`` before it is written, written
    atomically). The model's mode is restored afterwards."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        raise ImportError("numbaconv.onnx.export() needs the onnx package: pip install "
                          "'numbaconv[onnx]'") from None
    from .nn import Module

    if not isinstance(model, Module):
        raise TypeError(f"export(): model must be a numbaconv Module, got "
                        f"{type(model).__name__}")
    if not isinstance(example_input, Tensor):
        raise TypeError(f"export(): example_input must be a Tensor, got "
                        f"{type(example_input).__name__}")
    if example_input.dtype != np.float32:
        raise TypeError(f"export(): example_input must be float32, got {example_input.dtype}")
    if example_input.ndim < 1:
        raise ValueError("export(): example_input needs a batch dimension")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 17:
        raise ValueError(f"export(): opset={opset!r}; the operators written here are those of "
                         f"opsets 13 to 17")
    if autograd.TRACER[0] is not None:
        raise RuntimeError("export(): another export is tracing in this process")
    was_training = model.training
    model.eval()
    tracer = _Tracer(model, example_input)
    autograd.TRACER[0] = tracer
    try:
        with no_grad():
            out = model(example_input)
    finally:
        autograd.TRACER[0] = None
        model.train(was_training)
    if not isinstance(out, Tensor):
        raise ValueError(f"export(): the model returned {type(out).__name__}; a single tensor "
                         f"is exported")
    if id(out) not in tracer.names:
        raise ValueError("export(): the output was not computed by the traced ops")
    tracer.node("Identity", [tracer.names[id(out)]], [output_name])
    nodes = [n for n in tracer.nodes]
    for n in nodes:  # the input's own name
        n.input[:] = [input_name if v == "input" else v for v in n.input]
    x_info = helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                           ["batch", *example_input.shape[1:]])
    y_info = helper.make_tensor_value_info(output_name, TensorProto.FLOAT,
                                           ["batch", *out.shape[1:]])
    proto = helper.make_model(helper.make_graph(nodes, type(model).__name__, [x_info],
                                                [y_info]),
                              opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="numbaconv")
    for name, array in tracer.initializers:  # straight into the model: no copies of copies
        tensor = proto.graph.initializer.add()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.raw_data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"),
                                                             copy=False).tobytes()
    data = proto.SerializeToString()  # once: checking the bytes does not serialize again
    onnx.checker.check_model(data, full_check=True)
    from .train import _atomic_write

    _atomic_write(Path(os.fspath(path)), lambda f: f.write(data))
