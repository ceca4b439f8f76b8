"""Misuse that used to give silently wrong results (issue 16): in-place changes of tensors
that backward needs, batches whose every target is ignored, 3-D inputs to interpolate."""

import numpy as np
import pytest

import numbaconv as nc
import numbaconv.functional as F
from numbaconv import nn, optim

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


def _pair():
    x = nc.tensor(np.arange(1, 4, dtype=np.float32))
    w = nc.tensor(np.arange(3, dtype=np.float32), requires_grad=True)
    return x, w


def _iop(op):
    def change(x):
        y = x
        if op == "+":
            y += 1
        elif op == "-":
            y -= 1
        elif op == "*":
            y *= 2
        else:
            y /= 2
    return change


@pytest.mark.parametrize("change", [
    lambda x: x.mul_(10),
    lambda x: x.add_(1),
    lambda x: x.sub_(1),
    lambda x: x.div_(2),
    _iop("+"), _iop("-"), _iop("*"), _iop("/"),
    lambda x: x.zero_(),
    lambda x: x.copy_(nc.zeros(3)),
    lambda x: x.__setitem__(0, 5.0),
    lambda x: x.detach().__setitem__(slice(1, 2), 7.0),   # through a view of its storage
    lambda x: x.reshape(3, 1).detach().mul_(2),
])
def test_inplace_change_of_a_saved_tensor_raises(change):
    x, w = _pair()
    y = (x * w).sum()
    with nc.no_grad():   # no_grad does not make it safe
        change(x)
    with pytest.raises(RuntimeError, match=r"Mul: a tensor of shape \(3,\) .* modified in place"):
        y.backward()


def test_inplace_change_of_an_unsaved_tensor_is_fine():
    x, w = _pair()
    y = (x + w).sum()  # an addition keeps neither operand
    x.mul_(10)
    y.backward()
    np.testing.assert_array_equal(w.grad.numpy(), np.ones(3, np.float32))
    y2 = (x * w).sum()  # and x, changed before this forward, is used as it now is
    y2.backward()
    np.testing.assert_array_equal(w.grad.numpy(), 1 + x.numpy())


def test_optimizer_step_between_forward_and_backward_raises():
    nc.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    opt = optim.SGD(model.parameters(), lr=0.1)
    x = nc.randn(2, 1, 4, 4)
    stale = model(x).sum()
    fresh = model(x).sum()
    fresh.backward()
    opt.step()
    with pytest.raises(RuntimeError, match="modified in place"):
        stale.backward()
    model.zero_grad()
    model(x).sum().backward()  # a forward after the step is consistent again


def test_retain_graph_then_step_raises_and_init_counts_as_a_write():
    lin = nn.Linear(3, 2)
    out = lin(nc.ones(1, 3)).sum()
    nn.init.zeros_(lin.weight)
    with pytest.raises(RuntimeError, match="Linear"):
        out.backward()


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_all_targets_ignored_gives_zero_gradient(smoothing, weighted):
    logits = nc.randn(3, 4, requires_grad=True)
    weight = nc.tensor([1.0, 2.0, 3.0, 4.0]) if weighted else None
    loss = F.cross_entropy(logits, nc.tensor([-100, -100, -100]), weight=weight,
                           label_smoothing=smoothing)
    loss.backward()
    assert np.isnan(loss.item())  # a mean over no targets, as PyTorch's
    np.testing.assert_array_equal(logits.grad.numpy(), np.zeros((3, 4), np.float32))
    if torch is not None:
        t = torch.tensor(logits.numpy(), requires_grad=True)
        torch.nn.functional.cross_entropy(
            t, torch.tensor([-100, -100, -100]), label_smoothing=smoothing,
            weight=None if weight is None else torch.tensor(weight.numpy())).backward()
        np.testing.assert_array_equal(t.grad.numpy(), logits.grad.numpy())


def test_some_targets_ignored_matches_the_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5)).astype(np.float64)
    target = np.array([1, -100, 4, -100])
    logits = nc.tensor(x, requires_grad=True)
    F.cross_entropy(logits, nc.tensor(target)).backward()
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ref = np.zeros_like(x)
    for r in (0, 2):
        ref[r] = p[r]
        ref[r, target[r]] -= 1
    np.testing.assert_allclose(logits.grad.numpy(), ref / 2, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kw", [{"scale_factor": 2}, {"size": 7}, {"size": (3,)},
                                {"scale_factor": (1.5,)}])
def test_interpolate_3d_is_a_batch_of_signals(kw):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5))
    y = F.interpolate(nc.tensor(x), **kw)
    n_out = kw.get("size", None)
    n_out = (n_out[0] if isinstance(n_out, tuple) else n_out) if n_out is not None else int(
        np.floor(5 * (kw["scale_factor"][0] if isinstance(kw["scale_factor"], tuple)
                      else kw["scale_factor"])))
    assert y.shape == (2, 3, n_out)
    scale = 5 / n_out if "size" in kw else 1 / (kw["scale_factor"][0] if isinstance(
        kw["scale_factor"], tuple) else kw["scale_factor"])
    src = np.minimum(np.floor(np.arange(n_out) * np.float32(scale)).astype(int), 4)
    np.testing.assert_array_equal(y.numpy(), x[:, :, src])
    if torch is not None:
        ref = torch.nn.functional.interpolate(torch.tensor(x), **kw).numpy()
        np.testing.assert_array_equal(y.numpy(), ref)
    nc.gradcheck(lambda t: F.interpolate(t, **kw), (nc.tensor(x, requires_grad=True),))


def test_interpolate_rejects_other_ranks():
    with pytest.raises(ValueError, match=r"3-D \(N, C, L\) or 4-D"):
        F.interpolate(nc.ones(2, 3), scale_factor=2)
    with pytest.raises(ValueError, match="one value"):
        F.interpolate(nc.ones(1, 2, 3), size=(2, 2))


@pytest.mark.parametrize("make", [
    lambda: nc.tensor(np.ones(3, np.float16)),
    lambda: nc.zeros(3, dtype=nc.float16),
    lambda: nc.ones(2).to(dtype=nc.float16),
    lambda: nc.tensor([1.0], dtype="float16"),
])
def test_float16_is_refused_at_creation_with_the_supported_dtypes(make):
    """No kernel computes in float16: refused where the tensor would be made, in one line
    that names what is supported, not in a Numba traceback at its first op."""
    with pytest.raises(TypeError, match="float16.*float32, float64"):
        make()


# ------------------------------------------------------------------ files and faults


def test_corrupt_gz_idx_names_the_path(tmp_path):
    import gzip

    from numbaconv.data import idx

    good = tmp_path / "x.gz"
    idx.write_idx(good, np.arange(600, dtype=np.uint8).reshape(6, 10, 10))
    data = bytearray(good.read_bytes())
    data[30:40] = b"\xff" * 10  # inside the deflate stream
    bad = tmp_path / "bad-idx.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad-idx.gz"):
        idx.read_idx(bad)
    trunc = tmp_path / "trunc-idx.gz"
    trunc.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")[:-6])
    with pytest.raises(ValueError, match="trunc-idx.gz"):
        idx.read_idx(trunc)


def _model_and_opt():
    nc.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(nc.ones(2, 3)).sum().backward()
    opt.step()
    return model, opt


def test_bad_checkpoints_are_value_errors_naming_the_path(tmp_path):
    from numbaconv import train

    model, opt = _model_and_opt()
    ck = tmp_path / "ck.npz"
    train.save_checkpoint(ck, model, opt, epoch=0)
    whole = ck.read_bytes()
    cases = {"truncated.npz": whole[: len(whole) // 2], "text.npz": b"hello, not a checkpoint\n",
             "empty.npz": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    np.savez(tmp_path / "badmeta.npz", meta=np.frombuffer(b"{not json", np.uint8))
    np.savez(tmp_path / "nometa.npz", x=np.zeros(2))
    np.save(tmp_path / "bare.npy", np.zeros(3))
    for name in list(cases) + ["badmeta.npz", "nometa.npz", "bare.npy"]:
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            train.load_checkpoint(tmp_path / name, model, opt)


def test_checkpoint_restores_all_or_nothing(tmp_path):
    from numbaconv import train

    model, opt = _model_and_opt()
    ck = tmp_path / "ck.npz"
    train.save_checkpoint(ck, model, opt, epoch=3)
    other, other_opt = _model_and_opt()
    with nc.no_grad():
        for p in other.parameters():
            p.mul_(3)
    before = {k: v.numpy().copy() for k, v in other.state_dict().items()}
    # an optimizer with a different parameter layout: its part of the checkpoint cannot fit
    wrong_opt = optim.SGD([other[0].weight, other[0].bias], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="ck.npz"):
        train.load_checkpoint(ck, other, wrong_opt)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)
    state = train.load_checkpoint(ck, other, other_opt)  # the matching one restores all
    assert state["epoch"] == 3
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=k)


def test_orphaned_temporary_files_are_removed_by_the_next_save(tmp_path):
    import subprocess
    import sys

    from numbaconv import train

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / f".ck.npz.{dead}.abc123.tmp"
    orphan.write_bytes(b"x" * 100)
    mine = tmp_path / f".ck.npz.{__import__('os').getppid()}.live.tmp"  # a live process's
    mine.write_bytes(b"y")
    unrelated = tmp_path / ".other.npz.1.x.tmp"
    unrelated.write_bytes(b"z")
    model, opt = _model_and_opt()
    train.save_checkpoint(tmp_path / "ck.npz", model, opt, epoch=0)
    assert not orphan.exists() and mine.exists() and unrelated.exists()
    assert (tmp_path / "ck.npz").exists()


# ------------------------------------------------------------------ empty batches

EMPTY_CASES = {
    "conv2d": lambda x: nn.Conv2d(3, 4, 3, padding=1)(x),
    "conv_transpose2d": lambda x: nn.ConvTranspose2d(3, 2, 3, stride=2)(x),
    "batch_norm train": lambda x: nn.BatchNorm2d(3)(x),
    "batch_norm eval": lambda x: nn.BatchNorm2d(3).eval()(x),
    "local_response_norm": lambda x: F.local_response_norm(x, 3),
    "max_pool2d": lambda x: F.max_pool2d(x, 2),
    "avg_pool2d": lambda x: F.avg_pool2d(x, 3, 2, 1),
    "adaptive pools": lambda x: F.adaptive_avg_pool2d(x, 2) + F.adaptive_max_pool2d(x, 2),
    "dropout": lambda x: F.dropout(x, 0.3),
    "interpolate": lambda x: F.interpolate(x, scale_factor=2),
    "relu flatten linear": lambda x: nn.Linear(3 * 64, 5)(F.relu(x).flatten(1)),
    "softmax": lambda x: F.log_softmax(x, 1),
}


@pytest.mark.parametrize("name", list(EMPTY_CASES))
def test_layers_accept_an_empty_batch(name):
    """N = 0 as PyTorch: an empty output, and backward gives empty or zero gradients."""
    nc.manual_seed(0)
    x = nc.randn(0, 3, 8, 8, requires_grad=True)
    y = EMPTY_CASES[name](x)
    assert y.shape[0] == 0
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("loss", [
    lambda a: F.cross_entropy(a, nc.tensor(np.zeros(0, np.int64))),
    lambda a: F.mse_loss(a, nc.zeros(0, 4)),
    lambda a: a.mean(),
])
def test_losses_over_an_empty_batch_are_nan_with_zero_gradients(loss):
    a = nc.randn(0, 4, requires_grad=True)
    value = loss(a)
    assert np.isnan(value.item())  # a mean over nothing, as PyTorch's
    value.backward()
    assert a.grad.shape == (0, 4)


def test_batch_norm_keeps_its_running_statistics_on_an_empty_batch():
    bn = nn.BatchNorm2d(3)
    bn(nc.randn(4, 3, 2, 2))
    before = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    out = bn(nc.randn(0, 3, 2, 2, requires_grad=True))
    out.sum().backward()
    np.testing.assert_array_equal(bn.running_mean.numpy(), before[0])
    np.testing.assert_array_equal(bn.running_var.numpy(), before[1])
    np.testing.assert_array_equal(bn.weight.grad.numpy(), np.zeros(3, np.float32))


# ------------------------------------------------------------------ PyTorch's signatures


def test_duplicate_parameters_warn_and_are_stepped_once():
    w = nc.tensor([1.0, 2.0], requires_grad=True)
    with pytest.warns(UserWarning, match="same parameter more than once"):
        opt = optim.SGD([w, w], lr=0.5)
    (w * w).sum().backward()
    opt.step()
    np.testing.assert_allclose(w.numpy(), [1.0 - 0.5 * 2, 2.0 - 0.5 * 4])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_unbatched_losses(reduction, smoothing):
    """(C,) logits with a 0-d target, as PyTorch: the loss of one sample."""
    x = np.random.default_rng(2).standard_normal(5)
    a = nc.tensor(x, requires_grad=True)
    loss = F.cross_entropy(a, nc.tensor(3), reduction=reduction, label_smoothing=smoothing)
    assert loss.shape == ()
    loss.backward()
    logp = x - np.log(np.exp(x).sum())
    ref = -(1 - smoothing) * logp[3] - smoothing * logp.mean()
    np.testing.assert_allclose(loss.item(), ref, rtol=1e-12)
    p = np.exp(logp)
    onehot = np.eye(5)[3]
    np.testing.assert_allclose(a.grad.numpy(), p - (1 - smoothing) * onehot - smoothing / 5,
                               rtol=1e-10, atol=1e-14)
    b = nc.tensor(logp, requires_grad=True)
    nll = F.nll_loss(b, nc.tensor(1), reduction=reduction)
    assert nll.shape == () and nll.item() == pytest.approx(-logp[1])
    with pytest.raises(ValueError, match="0-d class index"):
        F.cross_entropy(a, nc.tensor([3]))


def test_layers_take_pytorchs_argument_names_and_loss_weights_are_buffers():
    lin = nn.Linear(3, 2)
    assert lin(input=nc.ones(1, 3)).shape == (1, 2)
    assert nn.Conv2d(1, 1, 3)(input=nc.ones(1, 1, 4, 4)).shape == (1, 1, 2, 2)
    for loss in (nn.CrossEntropyLoss(weight=nc.tensor([1.0, 2.0, 3.0])),
                 nn.NLLLoss(weight=nc.tensor([1.0, 2.0, 3.0]))):
        assert list(loss.state_dict()) == ["weight"]
        np.testing.assert_array_equal(loss.state_dict()["weight"].numpy(), [1, 2, 3])
    assert list(nn.CrossEntropyLoss().state_dict()) == []
    ce = nn.CrossEntropyLoss(weight=nc.tensor([1.0, 0.0]))
    x = nc.tensor([[0.0, 1.0], [2.0, 0.0]], requires_grad=True)
    value = ce(x, nc.tensor([1, 0])).item()  # only the first class counts
    assert value == pytest.approx(np.log(1 + np.exp(-2.0)))


def test_negative_padding_crops():
    x = np.random.default_rng(3).standard_normal((1, 2, 5, 6))
    for pad in [(-1, 2), (1, -2, -1, 0), (-2, -1, 0, 0)]:
        t = nc.tensor(x, requires_grad=True)
        y = F.pad(t, pad)
        index = [slice(None)] * 4
        padded = x
        for i in range(len(pad) // 2):
            d = 3 - i
            lo, hi = pad[2 * i], pad[2 * i + 1]
            index[d] = slice(max(-lo, 0), x.shape[d] - max(-hi, 0))
        cropped = x[tuple(index)]
        widths = [(0, 0)] * 4
        for i in range(len(pad) // 2):
            widths[3 - i] = (max(pad[2 * i], 0), max(pad[2 * i + 1], 0))
        padded = np.pad(cropped, widths)
        np.testing.assert_array_equal(y.numpy(), padded)
        nc.gradcheck(lambda a, pad=pad: F.pad(a, pad), (t,))
    with pytest.raises(ValueError, match="only mode='constant'"):
        F.pad(nc.tensor(x), (-1, 1), mode="reflect")
    with pytest.raises(ValueError, match="crops 7"):
        F.pad(nc.tensor(x), (-3, -4))


@pytest.mark.parametrize("divisor", [-2, 1, 3])
def test_avg_pool_divisor_override_takes_any_nonzero_int(divisor):
    from numbaconv.kernels import reference

    x = np.random.default_rng(4).standard_normal((1, 2, 5, 6))
    y = F.avg_pool2d(nc.tensor(x), 3, 2, 1, divisor_override=divisor)
    ref = reference.avg_pool2d(x, (3, 3), (2, 2), (1, 1), divisor_override=divisor)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12)
    nc.gradcheck(lambda a: F.avg_pool2d(a, 3, 2, 1, divisor_override=divisor),
                 (nc.tensor(x, requires_grad=True),))
    with pytest.raises(ValueError, match="nonzero int"):
        F.avg_pool2d(nc.tensor(x), 2, divisor_override=0)


def test_softmax_dtype_and_batchnorm_without_bias():
    x = nc.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    y = F.softmax(x, 1, dtype=nc.float64)
    assert y.dtype == np.float64
    y[0, 0].backward()
    assert x.grad.dtype == np.float32
    assert F.log_softmax(x, 1, dtype="double").dtype == np.float64
    with pytest.raises(TypeError, match="floating-point"):
        F.softmax(x, 1, dtype=nc.int64)
    bn = nn.BatchNorm2d(3, bias=False)
    assert [n for n, _ in bn.named_parameters()] == ["weight"]
    assert "bias" not in bn.state_dict() and bn(nc.randn(2, 3, 2, 2)).shape == (2, 3, 2, 2)


def _a(*shape):
    return nc.randn(*shape, requires_grad=True)


EMPTY_OPS = {
    "add mul div": lambda: _a(0, 3) + _a(0, 3) * _a(3) / (_a(0, 3).abs() + 1),
    "exp log tanh sigmoid pow sqrt": lambda: ((_a(0, 3).exp() + 1).log() + _a(0, 3).tanh() +
                                              _a(0, 3).sigmoid() + _a(0, 3) ** 2 +
                                              (_a(0, 3).abs() + 1).sqrt()),
    "sum over the batch": lambda: _a(0, 3).sum(0), "max over a kept dim": lambda: _a(0, 3).amax(1),
    "max with indices": lambda: _a(0, 3).max(1)[0], "argmax": lambda: _a(0, 3).argmax(1) * 1.0,
    "matmul": lambda: _a(0, 3) @ _a(3, 2), "matmul over K = 0": lambda: _a(2, 0) @ _a(0, 3),
    "cat stack": lambda: nc.cat([_a(0, 3), _a(0, 3)], 0) + nc.stack([_a(0, 3)]).sum(0),
    "reshape permute index": lambda: _a(0, 3, 2).permute(2, 0, 1)[:, :, 1:].reshape(2, -1),
    "where maximum": lambda: nc.where(_a(0, 3) > 0, _a(0, 3), nc.maximum(_a(0, 3), _a(0, 3))),
    "pad": lambda: F.pad(_a(0, 3), (1, 1)),
    "nll sum": lambda: F.nll_loss(_a(0, 3), nc.tensor(np.zeros(0, np.int64)), reduction="sum"),
    "cross_entropy none": lambda: F.cross_entropy(_a(0, 3), nc.tensor(np.zeros(0, np.int64)),
                                                  reduction="none"),
    "batch_norm 1d": lambda: nn.BatchNorm1d(3)(_a(0, 3)),
    "conv2d groups": lambda: F.conv2d(_a(0, 4, 5, 5), _a(4, 2, 3, 3), groups=2),
    "max_pool2d ceil": lambda: F.max_pool2d(_a(0, 2, 5, 5), 2, ceil_mode=True),
}


@pytest.mark.parametrize("name", list(EMPTY_OPS))
def test_ops_accept_empty_batches(name):
    y = EMPTY_OPS[name]()
    assert np.all(np.isfinite(y.numpy())) or y.numel() == 0
    if y.requires_grad:  # (argmax's result has no gradient)
        (y.sum() if y.ndim else y).backward()


def test_an_extremum_over_nothing_is_refused():
    with pytest.raises(ValueError, match="dim 0 of shape"):
        _a(0, 3).argmax(0)
    with pytest.raises(ValueError, match="is empty"):
        _a(0, 3).max()
