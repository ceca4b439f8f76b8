"""Working with PyTorch and ONNX: safetensors files both ways, converted PyTorch checkpoints,
torchvision's weights in the zoo, and ONNX export run by onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import models


def _torch():
    return pytest.importorskip("torch")


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


def _randomize_bn(model, seed=3):
    """Running statistics and affine parameters away from their initial values, so that a
    mixed-up buffer would show."""
    rng = np.random.default_rng(seed)
    with nc.no_grad():
        for m in model.modules():
            if getattr(m, "running_var", None) is not None:
                c = m.running_var.shape[0]
                m.running_mean.copy_(nc.tensor(rng.normal(0, 0.1, c).astype(np.float32)))
                m.running_var.copy_(nc.tensor(rng.uniform(0.5, 1.5, c).astype(np.float32)))
                m.weight.copy_(nc.tensor(rng.uniform(0.5, 1.5, c).astype(np.float32)))
                m.bias.copy_(nc.tensor(rng.normal(0, 0.1, c).astype(np.float32)))


# ------------------------------------------------------------ safetensors


def _torch_lenet(torch):
    """LeNet-5 in PyTorch with numbaconv's module names (features / classifier)."""
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(),
                                          nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                                          nn.MaxPool2d(2))
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(400, 120), nn.ReLU(),
                                            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

        def forward(self, x):
            return self.classifier(self.features(x))

    return Net()


def _torch_resnet_mini(torch):
    """ResNet-mini-8 in PyTorch with numbaconv's (torchvision's) module names."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(out + (self.downsample(x) if self.downsample is not None else x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.layer1 = nn.Sequential(Block(16, 16, 1))
            self.layer2 = nn.Sequential(Block(16, 32, 2))
            self.layer3 = nn.Sequential(Block(32, 64, 2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(torch.flatten(self.pool(x), 1))

    return Net()


@pytest.mark.parametrize("name", ["lenet5", "resnet_mini"])
def test_safetensors_round_trip_through_pytorch(tmp_path, name):
    torch = _torch()
    from safetensors.torch import load_file, save_file

    nc.manual_seed(0)
    ours = models.lenet5() if name == "lenet5" else models.resnet_mini(8)
    _randomize_bn(ours)
    ours.eval()
    nc.save(ours.state_dict(), tmp_path / "ours.safetensors")
    theirs = _torch_lenet(torch) if name == "lenet5" else _torch_resnet_mini(torch)
    theirs.load_state_dict(load_file(tmp_path / "ours.safetensors"))  # strict: same keys
    theirs.eval()
    x = np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    got = ours(nc.tensor(x)).numpy()
    assert _rel(got, want) < 1e-5
    # and back: PyTorch writes, numbaconv reads into a fresh model, tensors identical
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()},
              tmp_path / "theirs.safetensors")
    back = models.lenet5() if name == "lenet5" else models.resnet_mini(8)
    back.load_state_dict(nc.load(tmp_path / "theirs.safetensors"))
    for (k, a), (k2, b) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    back.eval()
    np.testing.assert_array_equal(back(nc.tensor(x)).numpy(), got)


def test_save_and_load_refuse_what_they_cannot_do(tmp_path):
    path = tmp_path / "w.safetensors"
    nc.save({"a": nc.ones(3), "b": np.arange(4)}, path, metadata={"note": "x"})
    loaded = nc.load(path)
    assert list(loaded) == ["a", "b"] or set(loaded) == {"a", "b"}
    assert loaded["b"].dtype == np.int64
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.safetensors: not a whole safetensors file"):
        nc.load(tmp_path / "cut.safetensors")
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(ValueError, match="text.safetensors"):
        nc.load(tmp_path / "text.safetensors")
    with pytest.raises(TypeError, match="expected a Tensor or a NumPy array"):
        nc.save({"a": [1, 2]}, path)
    with pytest.raises(TypeError, match="metadata must be a dict of str to str"):
        nc.save({"a": nc.ones(1)}, path, metadata={"n": 1})
    np.testing.assert_array_equal(nc.load(path)["a"].numpy(), np.ones(3))  # untouched
    from safetensors.numpy import save_file

    save_file({"h": np.ones(2, np.float16)}, tmp_path / "half.safetensors")
    with pytest.raises(TypeError, match="float16.*--dtype float32"):
        nc.load(tmp_path / "half.safetensors")


def test_convert_a_pytorch_checkpoint(tmp_path, capsys):
    torch = _torch()
    from numbaconv.convert import main

    theirs = _torch_lenet(torch)
    sd = {"module." + k: v for k, v in theirs.state_dict().items()}
    sd["module.classifier.5.bias"] = sd["module.classifier.5.bias"].half()
    torch.save({"epoch": 3, "model_state_dict": sd}, tmp_path / "ckpt.pt")
    assert main([str(tmp_path / "ckpt.pt"), str(tmp_path / "out.safetensors")]) == 0
    assert "10 tensors" in capsys.readouterr().out
    ours = models.lenet5()
    ours.load_state_dict(nc.load(tmp_path / "out.safetensors"))
    np.testing.assert_array_equal(ours.features[0].weight.numpy(),
                                  theirs.features[0].weight.detach().numpy())
    assert ours.classifier[5].bias.dtype == np.float32
    # a checkpoint that would run code when unpickled is refused, not executed
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    assert main([str(tmp_path / "evil.pt"), str(tmp_path / "x.safetensors")]) == 1
    err = capsys.readouterr()
    assert "pwned" not in err.out and "weights-only" in err.err
    assert not (tmp_path / "x.safetensors").exists()


# ------------------------------------------------------------ torchvision weights

TORCHVISION = {
    "alexnet": (lambda: models.alexnet(variant="torchvision"), "alexnet", {}),
    "googlenet": (lambda: models.googlenet(variant="torchvision"), "googlenet",
                  {"aux_logits": True, "init_weights": True}),
    "googlenet_transform": (lambda: models.googlenet(variant="torchvision",
                                                     transform_input=True),
                            "googlenet", {"aux_logits": True, "init_weights": True,
                                          "transform_input": True}),
    "resnet18": (models.resnet18, "resnet18", {}),
    "resnet34": (models.resnet34, "resnet34", {}),
    **{f"vgg{d}{bn}": ((lambda c=c, b=bool(bn): models.vgg(c, batch_norm=b)), f"vgg{d}{bn}", {})
       for d, c in ((11, "A"), (13, "B"), (16, "D"), (19, "E")) for bn in ("", "_bn")},
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_weights_give_torchvision_outputs(name):
    tv = pytest.importorskip("torchvision.models", reason="torchvision is not installed")
    torch = _torch()
    make, tv_name, kwargs = TORCHVISION[name]
    torch.manual_seed(0)
    theirs = getattr(tv, tv_name)(weights=None, **kwargs)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    theirs.eval()
    ours = make()
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    ours.eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = theirs(x).numpy()
    assert _rel(ours(nc.tensor(x.numpy())).numpy(), want) <= 1e-5


def test_model_variants_are_checked():
    with pytest.raises(ValueError, match="variant='keras'"):
        models.alexnet(variant="keras")
    with pytest.raises(ValueError, match="variant='v3'"):
        models.googlenet(variant="v3")
    with pytest.raises(ValueError, match="transform_input=True is for 3-channel"):
        models.googlenet(variant="torchvision", in_channels=1, transform_input=True)
    tv = models.googlenet(variant="torchvision")
    assert sum(p.numel() for p in tv.parameters()) == 13_004_888  # torchvision's count
    assert sum(p.numel() for p in models.alexnet(variant="torchvision").parameters()) \
        == 61_100_840


# ------------------------------------------------------------ ONNX


def _zoo():
    z = {"lenet5": (models.lenet5, 1, 28), "resnet_mini8": (lambda: models.resnet_mini(8), 1, 28),
         "alexnet": (models.alexnet, 3, 224),
         "alexnet_torchvision": (lambda: models.alexnet(variant="torchvision"), 3, 224),
         "googlenet": (models.googlenet, 3, 224),
         "googlenet_torchvision": (lambda: models.googlenet(variant="torchvision",
                                                            transform_input=True), 3, 224),
         "resnet18": (models.resnet18, 3, 224), "resnet34": (models.resnet34, 3, 112)}
    for c in ("A", "A-LRN", "B", "C", "D", "E"):
        for bn in (False, True):
            if c == "A-LRN" and bn:
                continue
            # 32x32: the features end at 1x1, which the adaptive pool repeats to 7x7. The
            # classifier's width changes no node of the graph: the paper's 4096 for D (its
            # 120 million weights take 10 s to build, export and load), 64 for the others
            hidden = 4096 if c == "D" and not bn else 64
            z[f"vgg_{c}{'_bn' if bn else ''}"] = (
                (lambda c=c, bn=bn, hidden=hidden: models.vgg(c, num_classes=10, batch_norm=bn,
                                                              hidden=hidden)), 3, 32)
    return z


ZOO = _zoo()


@pytest.mark.parametrize("name", list(ZOO))
def test_every_zoo_model_exports_to_onnx_and_runs_in_onnxruntime(tmp_path, name):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    make, c, size = ZOO[name]
    nc.manual_seed(0)
    model = make()
    _randomize_bn(model)
    path = tmp_path / f"{name}.onnx"
    nc.onnx.export(model, nc.rand(2, c, size, size), path)
    assert model.training  # its mode is restored
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [c, size, size]
    ops = {n.op_type for n in proto.graph.node}
    assert {"Conv", "Flatten"} <= ops and not ops & {"Dropout", "Reshape"}
    if "_bn" in name or "resnet" in name or "torchvision" in name and "googlenet" in name:
        assert "BatchNormalization" in ops
    session = ort.InferenceSession(str(path))
    model.eval()
    for batch in (1, 3):
        x = np.random.default_rng(batch).random((batch, c, size, size), dtype=np.float32)
        got = session.run(None, {"input": x})[0]
        want = model(nc.tensor(x)).numpy()
        assert got.shape == want.shape
        assert _rel(got, want) <= 1e-5


def test_onnx_export_folds_what_does_not_depend_on_the_input(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Scaled(nc.nn.Module):  # ops on parameters and constants only: folded, even GetItem
        def __init__(self):
            super().__init__()
            self.conv = nc.nn.Conv2d(3, 4, 3)
            self.gain = nc.nn.Parameter(nc.rand(6))

        def forward(self, x):
            scale = (self.gain[:3] * 2).reshape(1, 3, 1, 1)
            return self.conv(x * scale + nc.tensor([0.1, 0.2, 0.3]).reshape(1, 3, 1, 1))

    model = Scaled()
    path = tmp_path / "s.onnx"
    nc.onnx.export(model, nc.rand(2, 3, 8, 8), path)
    proto = onnx.load(path)
    ops = [n.op_type for n in proto.graph.node if n.op_type != "Identity"]
    assert ops == ["Mul", "Add", "Conv"]
    x = np.random.default_rng(0).random((3, 3, 8, 8), dtype=np.float32)
    got = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    assert _rel(got, model(nc.tensor(x)).numpy()) <= 1e-6


def test_onnx_export_names_what_it_cannot_express(tmp_path):
    pytest.importorskip("onnx")

    class Picky(nc.nn.Module):
        def forward(self, x):
            return x[:, :2] * 2

    with pytest.raises(ValueError, match="the op GetItem has no ONNX form"):
        nc.onnx.export(Picky(), nc.rand(1, 4), tmp_path / "p.onnx")
    assert not (tmp_path / "p.onnx").exists()
    with pytest.raises(ValueError, match=r"adaptive pooling of 5x5 to 2x2"):
        nc.onnx.export(nc.nn.Sequential(nc.nn.Conv2d(1, 2, 1), nc.nn.AdaptiveAvgPool2d(2)),
                       nc.rand(1, 1, 5, 5), tmp_path / "q.onnx")
    with pytest.raises(TypeError, match="example_input must be float32"):
        nc.onnx.export(nc.nn.Linear(2, 2), nc.rand(1, 2, dtype=nc.float64), tmp_path / "r")
    with pytest.raises(ValueError, match="opset=11"):
        nc.onnx.export(nc.nn.Linear(2, 2), nc.rand(1, 2), tmp_path / "r", opset=11)
