"""The model zoo: published sizes reproduced by ``summary``, forward/backward, PyTorch parity."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, needs_torch, torch

import numbaconv as nc
from numbaconv import models, nn


@pytest.fixture(scope="module")
def summaries():
    """Summaries at the papers' 224x224x3 input, built once (each is one real forward pass)."""
    nets = {"alexnet": models.alexnet(), "googlenet": models.googlenet(aux_logits=False),
            "googlenet+aux": models.googlenet(), "resnet18": models.resnet18(),
            "resnet34": models.resnet34()}
    for c in ("A", "A-LRN", "B", "C", "D", "E"):
        nets["vgg-" + c] = models.vgg(c)
    return {name: nc.summary(m, (3, 224, 224)) for name, m in nets.items()}


def within(value, target, rel):
    return abs(value - target) <= rel * target


def test_alexnet_has_the_papers_60_million_parameters(summaries):
    s = summaries["alexnet"]
    assert within(s.total_params, 60e6, 0.03), s.total_params
    assert s.total_params == 60_965_224  # the two-GPU grouped layout, counted by hand
    assert s.output_shape == (1, 1000)
    shapes = [r.output_shape for r in s.rows if r.type == "Conv2d"]
    assert shapes[0] == (1, 96, 55, 55) and shapes[-1] == (1, 256, 13, 13)
    assert sum(r.type == "LocalResponseNorm" for r in s.rows) == 2


@pytest.mark.parametrize("config,millions", [("A", 133), ("A-LRN", 133), ("B", 133),
                                             ("C", 134), ("D", 138), ("E", 144)])
def test_vgg_parameter_counts_match_table_2(summaries, config, millions):
    assert within(summaries["vgg-" + config].total_params, millions * 1e6, 0.01)


def test_vgg19_and_resnet34_multiply_adds(summaries):
    assert within(summaries["vgg-E"].mult_adds, 19.6e9, 0.03), summaries["vgg-E"].mult_adds
    assert within(summaries["resnet34"].mult_adds, 3.6e9, 0.03), summaries["resnet34"].mult_adds
    assert within(summaries["resnet18"].mult_adds, 1.8e9, 0.03)


def test_googlenet_without_auxiliary_heads_has_about_6_8_million(summaries):
    plain = summaries["googlenet"]
    assert within(plain.total_params, 6.8e6, 0.05), plain.total_params
    assert plain.unused_params == 0
    # with the heads present, inference skips them: same total, the heads reported apart
    aux = summaries["googlenet+aux"]
    assert aux.total_params == plain.total_params
    assert aux.unused_params == models.googlenet().num_parameters() - plain.total_params > 6e6


def test_resnet_parameter_counts_are_torchvisions(summaries):
    assert summaries["resnet18"].total_params == 11_689_512
    assert summaries["resnet34"].total_params == 21_797_672


def test_receptive_fields_are_the_known_ones(summaries):
    vgg16 = nc.summary(models.vgg16(), (3, 224, 224))
    convs = [r for r in vgg16.rows if r.type == "Conv2d"]
    pools = [r for r in vgg16.rows if r.type == "MaxPool2d"]
    assert (convs[-1].receptive_field, convs[-1].rf_stride) == (196, 16)
    assert (pools[-1].receptive_field, pools[-1].rf_stride) == (212, 32)
    alex = [r for r in summaries["alexnet"].rows if r.type == "MaxPool2d"]
    assert (alex[-1].receptive_field, alex[-1].rf_stride) == (195, 32)
    assert summaries["alexnet"].rows[-1].receptive_field == "global"


@pytest.mark.parametrize("make,size", [
    (lambda: models.alexnet(10, 1), 67), (lambda: models.alexnet(10, 3, groups=1, lrn=False), 67),
    (lambda: models.vgg("C", 10, 3, batch_norm=True), 32),
    (lambda: models.vgg("A-LRN", 10, 1), 32),
    (lambda: models.resnet18(7, 2), 40), (lambda: models.resnet34(10, 3), 32),
    (lambda: models.resnet_mini(8, 10, 3), 16), (lambda: models.lenet5(10, 1), 28),
])
def test_every_model_runs_forward_and_backward(make, size):
    nc.manual_seed(0)
    model = make()
    c = model.num_parameters() and next(m for m in model.modules()
                                        if isinstance(m, nn.Conv2d)).in_channels
    x = nc.randn(2, c, size, size)
    out = model(x)
    n_classes = next(m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear))
    assert out.shape == (2, n_classes.out_features)
    assert out.dtype == np.float32
    nc.functional.cross_entropy(out, nc.tensor([0, 1])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert all(np.isfinite(g.numpy()).all() for g in grads)


def test_googlenet_auxiliary_heads_in_training_only():
    nc.manual_seed(0)
    net = models.googlenet(num_classes=5, in_channels=1)
    x, y = nc.randn(2, 1, 224, 224), nc.tensor([1, 3])
    out = net(x)
    assert isinstance(out, models.GoogLeNetOutputs)
    assert out.logits.shape == out.aux1.shape == out.aux2.shape == (2, 5)
    loss = net.loss(out, y)
    expect = (nc.functional.cross_entropy(out.logits, y).item()
              + 0.3 * nc.functional.cross_entropy(out.aux1, y).item()
              + 0.3 * nc.functional.cross_entropy(out.aux2, y).item())
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    loss.backward()
    assert net.aux1.fc2.weight.grad is not None
    assert net.inception3a.branch1[0].weight.grad is not None
    net.eval()
    with nc.no_grad():
        logits = net(x)
    assert isinstance(logits, nc.Tensor) and logits.shape == (2, 5)
    assert models.googlenet_loss(logits, y).item() > 0
    assert isinstance(models.googlenet(5, aux_logits=False)(x[:, :1].expand(2, 3, 224, 224)),
                      nc.Tensor)


def test_inception_concatenates_the_four_branches():
    block = models.Inception(192, 64, 96, 128, 16, 32, 32)
    assert block.out_channels == 256
    x = nc.randn(1, 192, 9, 9)
    out = block(x)
    assert out.shape == (1, 256, 9, 9)
    assert_close(out[:, :64], block.branch1(x), what="1x1 branch")
    assert_close(out[:, 64:192], block.branch2(x), what="3x3 branch")
    assert_close(out[:, 192:224], block.branch3(x), what="5x5 branch")
    assert_close(out[:, 224:], block.branch4(x), what="pool branch")


def test_vgg_hidden_width_changes_only_the_two_hidden_layers():
    narrow = models.vgg("A", num_classes=10, hidden=32)
    shapes = [tuple(p.shape) for p in narrow.classifier.parameters()]
    assert shapes == [(32, 512 * 7 * 7), (32,), (32, 32), (32,), (10, 32), (10,)]
    features = sum(p.numel() for p in narrow.features.parameters())
    assert features == sum(p.numel() for p in models.vgg("A", 10).features.parameters())


def test_vgg_batchnorm_aliases():
    bn = models.vgg16_bn(num_classes=10)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 13
    assert bn.num_parameters() == models.vgg("D", 10, batch_norm=True).num_parameters()


def test_model_arguments_are_checked():
    with pytest.raises(ValueError, match="groups=3"):
        models.alexnet(groups=3)
    with pytest.raises(ValueError, match="config='F'"):
        models.vgg("F")
    with pytest.raises(ValueError, match="hidden=0"):
        models.vgg("A", hidden=0)
    with pytest.raises(ValueError, match="blocks"):
        models.ResNet((2, 2, 0, 2))


def _to_torch(module):
    """A torch twin of a Sequential-built numbaconv module, with the same weights."""
    tnn = torch.nn
    if isinstance(module, nn.Sequential):
        return tnn.Sequential(*[_to_torch(m) for m in module])
    if isinstance(module, nn.Conv2d):
        t = tnn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                       module.stride, module.padding, module.dilation, module.groups,
                       module.bias is not None)
    elif isinstance(module, nn.Linear):
        t = tnn.Linear(module.in_features, module.out_features)
    elif isinstance(module, nn.BatchNorm2d):
        t = tnn.BatchNorm2d(module.num_features)
    elif isinstance(module, nn.LocalResponseNorm):
        return tnn.LocalResponseNorm(module.size, module.alpha, module.beta, module.k)
    elif isinstance(module, nn.MaxPool2d):
        return tnn.MaxPool2d(module.kernel_size, module.stride, module.padding,
                             module.dilation, ceil_mode=module.ceil_mode)
    elif isinstance(module, nn.AdaptiveAvgPool2d):
        return tnn.AdaptiveAvgPool2d(module.output_size)
    elif isinstance(module, nn.ReLU):
        return tnn.ReLU()
    elif isinstance(module, nn.Dropout):
        return tnn.Dropout(module.p)
    else:
        raise TypeError(type(module))
    t.load_state_dict({k: torch.tensor(v.numpy()) for k, v in module.state_dict().items()})
    return t


@needs_torch
@pytest.mark.torch
@pytest.mark.parametrize("name", ["alexnet", "vgg-A-LRN-bn"])
def test_models_match_pytorch_twins(name):
    nc.manual_seed(1)
    if name == "alexnet":
        net, size = models.alexnet(num_classes=10), 99
    else:
        net, size = models.VGG("A-LRN", 10, 3, batch_norm=True), 32
    net.eval()
    twin = torch.nn.Sequential(_to_torch(net.features), _to_torch(net.avgpool),
                               torch.nn.Flatten(), _to_torch(net.classifier)).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    xn = nc.tensor(x, requires_grad=True)
    out_n, out_t = net(xn), twin(xt)
    assert_close(out_n, out_t, rtol=1e-4, atol=1e-5, what="logits")
    out_n.sum().backward()
    out_t.sum().backward()
    assert_close(xn.grad, xt.grad, rtol=1e-3, atol=1e-6, what="input gradient")
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert_close(first.weight.grad, twin[0][0].weight.grad, rtol=1e-3, atol=1e-5,
                 what="conv1 weight gradient")
