"""nn layers: shapes, state, errors, and forward/backward parity with torch.nn."""

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import nn
from numbaconv.nn import functional as F
from tests.helpers import assert_close, needs_torch, torch


def _copy_params(ours, theirs):
    """Give a torch module our module's parameter values (same names)."""
    sd = {k: torch.tensor(v.numpy()) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(sd)


def _compare(ours, theirs, x, rtol=1e-4, atol=1e-5, train=True):
    ours.train(train)
    theirs.train(train)
    _copy_params(ours, theirs)
    X = nc.tensor(x, requires_grad=True)
    TX = torch.tensor(x, requires_grad=True)
    y, ty = ours(X), theirs(TX)
    assert_close(y, ty, rtol, atol, "forward")
    g = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    y.backward(nc.tensor(g))
    ty.backward(torch.tensor(g))
    assert_close(X.grad, TX.grad, rtol, atol, "input grad")
    named_t = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, named_t[name].grad, rtol, atol * 10, f"grad of {name}")
    for name, b in ours.named_buffers():
        tb = dict(theirs.named_buffers())[name]
        assert_close(b, tb, rtol, atol, f"buffer {name}")


LAYERS = [
    ("Conv2d", lambda m: m.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 9, 8)),
    ("Conv2d groups", lambda m: m.Conv2d(4, 6, (3, 2), groups=2, dilation=(1, 2)), (2, 4, 7, 7)),
    ("Conv2d reflect", lambda m: m.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"),
     (1, 2, 6, 6)),
    ("ConvTranspose2d", lambda m: m.ConvTranspose2d(3, 2, 3, stride=2, padding=1,
                                                    output_padding=1), (2, 3, 4, 5)),
    ("Linear", lambda m: m.Linear(7, 5), (3, 7)),
    ("Linear 3d", lambda m: m.Linear(7, 5, bias=False), (2, 3, 7)),
    ("MaxPool2d", lambda m: m.MaxPool2d(3, 2, ceil_mode=True), (2, 3, 9, 9)),
    ("AvgPool2d", lambda m: m.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 3, 9, 9)),
    ("AdaptiveAvgPool2d", lambda m: m.AdaptiveAvgPool2d((2, 3)), (2, 3, 7, 8)),
    ("LocalResponseNorm", lambda m: m.LocalResponseNorm(3, 0.2, 0.75, 2.0), (2, 5, 4, 4)),
    ("BatchNorm2d", lambda m: m.BatchNorm2d(3), (4, 3, 5, 5)),
    ("BatchNorm1d", lambda m: m.BatchNorm1d(6), (8, 6)),
    ("BatchNorm1d 3d", lambda m: m.BatchNorm1d(3, momentum=0.3), (4, 3, 5)),
    ("Tanh", lambda m: m.Tanh(), (3, 4)),
    ("Sigmoid", lambda m: m.Sigmoid(), (3, 4)),
    ("Flatten", lambda m: m.Flatten(), (2, 3, 4)),
    ("Sequential", lambda m: m.Sequential(m.Conv2d(2, 4, 3), m.ReLU(), m.MaxPool2d(2),
                                           m.Flatten(), m.Linear(4 * 3 * 3, 5)), (3, 2, 8, 8)),
]


@needs_torch
@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[n for n, _, _ in LAYERS])
def test_layer_matches_torch(name, make, shape):
    nc.manual_seed(0)
    ours = make(nn)
    theirs = make(torch.nn)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _compare(ours, theirs, x)
    if "BatchNorm" in name:  # eval mode uses the running statistics just updated
        _compare(ours, theirs, x * 2 + 1, train=False)


@needs_torch
def test_batchnorm_running_stats_over_steps():
    ours, theirs = nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = (rng.standard_normal((6, 4, 3, 3)) * 3 + 1).astype(np.float32)
        ours(nc.tensor(x))
        theirs(torch.tensor(x))
    assert_close(ours.running_mean, theirs.running_mean, 1e-5, 1e-6)
    assert_close(ours.running_var, theirs.running_var, 1e-5, 1e-6)
    assert int(ours.num_batches_tracked.item()) == 5


def test_default_initialisation_bounds():
    nc.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3)
    bound = 1 / np.sqrt(16 * 9)
    w = conv.weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.abs(conv.bias.numpy()).max() <= bound
    lin = nn.Linear(100, 10)
    assert np.abs(lin.weight.numpy()).max() <= 0.1
    assert conv.weight.dtype == nc.float32 and conv.weight.requires_grad


def test_module_bookkeeping():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(),
                      nn.Sequential(nn.Flatten(), nn.Linear(8, 3)))
    assert [k for k in m.state_dict()] == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "1.num_batches_tracked", "3.1.weight", "3.1.bias"]
    assert len(list(m.parameters())) == 6 and len(list(m.children())) == 4
    assert m.num_parameters() == 2 * 9 + 2 + 2 + 2 + 8 * 3 + 3
    m.eval()
    assert not any(mod.training for mod in m.modules())
    m.train()
    assert m[1].training and isinstance(m[-1], nn.Sequential) and len(m[1:3]) == 2
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = m.nope
    assert "Conv2d(1, 2, kernel_size=(3, 3)" in repr(m) and "(3): Sequential(" in repr(m)


def test_state_dict_roundtrip_and_strictness():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    with pytest.raises(KeyError, match="missing keys"):
        b.load_state_dict({"weight": a.weight})
    res = b.load_state_dict({"weight": a.weight, "extra": a.bias}, strict=False)
    assert res.missing_keys == ["bias"] and res.unexpected_keys == ["extra"]
    with pytest.raises(ValueError, match="shape"):
        b.load_state_dict({"weight": nc.zeros(2, 2), "bias": a.bias})


def test_zero_grad_and_dropout():
    m = nn.Linear(3, 2)
    m(nc.randn(4, 3)).sum().backward()
    assert m.weight.grad is not None
    m.zero_grad()
    assert m.weight.grad is None
    d = nn.Dropout(0.25)
    x = nc.ones(10000)
    y = d(x).numpy()
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.03
    d.eval()
    assert d(x) is x


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="in_channels=0"):
        nn.Conv2d(0, 4, 3)
    with pytest.raises(ValueError, match="padding='same' needs stride=1"):
        nn.Conv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="p=1.5"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="expected 4-D"):
        nn.BatchNorm2d(3)(nc.randn(2, 3))
    with pytest.raises(ValueError, match="num_features=4"):
        nn.BatchNorm2d(4)(nc.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="features"):
        nn.Linear(3, 2)(nc.randn(2, 4))
    with pytest.raises(ValueError, match="at most half"):
        nn.MaxPool2d(2, padding=2)


def test_losses_values_and_errors():
    logits = nc.tensor([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]], requires_grad=True)
    target = nc.tensor([0, 2])
    loss = F.cross_entropy(logits, target)
    assert np.isfinite(loss.item())
    np.testing.assert_allclose(loss.item(), np.log(3) / 2, rtol=1e-6)
    loss.backward()
    assert np.all(np.isfinite(logits.grad.numpy()))
    with pytest.raises(ValueError, match="outside \\[0, 3\\)"):
        F.cross_entropy(logits, nc.tensor([0, 3]))
    with pytest.raises(TypeError, match="class indices"):
        F.cross_entropy(logits, nc.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="target has shape"):
        F.cross_entropy(logits, nc.tensor([0]))
    with pytest.raises(ValueError, match="reduction"):
        F.mse_loss(logits, logits, reduction="avg")
    with pytest.raises(ValueError, match="differ"):
        F.mse_loss(logits, nc.zeros(3))
    nan_loss = F.cross_entropy(nc.tensor([[float("nan"), 0.0]]), nc.tensor([0]))
    assert np.isnan(nan_loss.item())


@needs_torch
@pytest.mark.parametrize("kw", [dict(), dict(label_smoothing=0.1), dict(reduction="sum"),
                                dict(reduction="none"), dict(ignore_index=1),
                                dict(weight=True), dict(weight=True, label_smoothing=0.2)])
def test_cross_entropy_matches_torch(kw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4)).astype(np.float32) * 3
    t = rng.integers(0, 4, 6)
    w = rng.random(4).astype(np.float32) + 0.5
    kw = dict(kw)
    if kw.pop("weight", False):
        ours = F.cross_entropy(nc.tensor(x, requires_grad=True), nc.tensor(t),
                               weight=nc.tensor(w), **kw)
        theirs = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(t),
                                                   weight=torch.tensor(w), **kw)
    else:
        ours = F.cross_entropy(nc.tensor(x, requires_grad=True), nc.tensor(t), **kw)
        theirs = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(t), **kw)
    assert_close(ours, theirs, 1e-5, 1e-6)
    from tests.helpers import torch_parity

    torch_parity(lambda a: F.cross_entropy(a, nc.tensor(t), **kw),
                 lambda a: torch.nn.functional.cross_entropy(a, torch.tensor(t), **kw), [x])


@needs_torch
def test_cross_entropy_spatial_and_nll_mse():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    t = rng.integers(0, 3, (2, 4, 5))
    from tests.helpers import torch_parity

    torch_parity(lambda a: F.cross_entropy(a, nc.tensor(t)),
                 lambda a: torch.nn.functional.cross_entropy(a, torch.tensor(t)), [x])
    torch_parity(lambda a: F.nll_loss(a.log_softmax(1), nc.tensor(t[:, 0, 0])),
                 lambda a: torch.nn.functional.nll_loss(a.log_softmax(1),
                                                        torch.tensor(t[:, 0, 0])),
                 [x[:, :, 0, 0].copy()])
    y = rng.standard_normal((3, 4)).astype(np.float32)
    torch_parity(lambda a: F.mse_loss(a, nc.tensor(y)),
                 lambda a: torch.nn.functional.mse_loss(a, torch.tensor(y)), [y * 2])


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_fused_relu_matches_batchnorm_then_relu(train):
    """BatchNorm2d(x, _relu=True) (ReLU fused in the forward and its mask in the backward
    kernel) equals relu(bn(x)) in values and in the gradients of x, weight and bias, where
    many outputs are exactly zero; float64 passes a gradient check too."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3, 4, 6)).astype(np.float32)
    x[:, :, 0, :2] = 0  # ties at the ReLU's kink: no gradient there, as in PyTorch
    grads = []
    for fused in (True, False):
        nc.manual_seed(0)
        bn = nn.BatchNorm2d(3)
        bn.weight.data[:] = np.array([1.5, -0.5, 1.0], np.float32)
        bn.bias.data[:] = np.array([0.2, 0.1, -0.3], np.float32)
        bn.train(train)
        t = nc.tensor(x, requires_grad=True)
        y = bn(t, _relu=True) if fused else F.relu(bn(t))
        (y * nc.tensor(np.arange(y.numel(), dtype=np.float32).reshape(y.shape) % 7)).sum() \
            .backward()
        grads.append((y.numpy(), t.grad.numpy(), bn.weight.grad.numpy(), bn.bias.grad.numpy()))
    assert (grads[0][0] == 0).mean() > 0.2
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    bn64 = nn.BatchNorm2d(3).to(dtype=nc.float64)
    bn64.train(train)
    x64 = nc.tensor(rng.standard_normal((3, 3, 2, 2)) + 0.3, requires_grad=True)
    nc.gradcheck(lambda t: bn64(t, _relu=True), (x64,))


def test_float64_layers_gradcheck():
    nc.manual_seed(0)
    bn = nn.BatchNorm2d(2).to(dtype=nc.float64)
    x = nc.randn(3, 2, 2, 2, dtype=nc.float64, requires_grad=True)
    nc.gradcheck(lambda t: bn(t), (x,))
    lin = nn.Linear(3, 2).to(dtype=nc.float64)
    nc.gradcheck(lambda t: lin(t).tanh(), (nc.randn(4, 3, dtype=nc.float64,
                                                     requires_grad=True),))




@needs_torch
@pytest.mark.parametrize("kw", [dict(), dict(label_smoothing=0.2), dict(reduction="sum"),
                                dict(reduction="none"), dict(weight=True)])
def test_cross_entropy_with_probability_targets(kw):
    from tests.helpers import torch_parity

    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    p = rng.random((5, 4)).astype(np.float32)
    p /= p.sum(1, keepdims=True)
    kw = dict(kw)
    w = rng.random(4).astype(np.float32) + 0.5
    extra_nc = dict(weight=nc.tensor(w)) if kw.pop("weight", False) else {}
    extra_th = {k: torch.tensor(w) for k in extra_nc}
    torch_parity(lambda a: F.cross_entropy(a, nc.tensor(p), **kw, **extra_nc),
                 lambda a: torch.nn.functional.cross_entropy(a, torch.tensor(p), **kw,
                                                             **extra_th), [x])
    with pytest.raises(TypeError, match="class probabilities of the input's shape"):
        F.cross_entropy(nc.tensor(x), nc.tensor(p[:, :3].copy()))


def test_a_module_assigned_over_a_plain_attribute_is_registered():
    """``self.x = None`` then ``self.x = Linear(...)`` (torchvision's ``downsample``): the layer
    is the attribute and in state_dict, not shadowed by the earlier None."""
    from numbaconv import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = None
            self.proj = nn.Linear(2, 3)
            self.scale = None
            self.scale = nn.Parameter(nc.ones(3))

    net = Net()
    assert isinstance(net.proj, nn.Linear)
    assert set(net.state_dict()) == {"proj.weight", "proj.bias", "scale"}
    net.proj = None
    assert net.proj is None and set(net.state_dict()) == {"scale"}
