import numpy as np
import pytest

import numbaconv as nc


def test_tensor_dtypes_follow_pytorch():
    assert nc.tensor([1.0, 2.0]).dtype == nc.float32
    assert nc.tensor([1, 2]).dtype == nc.int64
    assert nc.tensor([True]).dtype == nc.bool_
    assert nc.tensor(np.zeros(3)).dtype == nc.float64  # NumPy arrays keep their dtype
    assert nc.tensor([1.0], dtype=nc.float64).dtype == nc.float64
    assert nc.tensor(3.5).shape == ()


def test_tensor_copies_its_data():
    a = np.arange(4.0, dtype=np.float32)
    t = nc.tensor(a)
    a[0] = 100
    assert t.numpy()[0] == 0


def test_properties_and_conversion():
    t = nc.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    assert t.shape == (1, 3) and t.ndim == 2 and t.device == "cpu" and t.requires_grad
    assert t.grad is None and t.is_leaf
    assert t.sum().item() == 6.0
    assert isinstance(t.sum().item(), float)
    d = t.detach()
    assert not d.requires_grad and d.shape == t.shape
    assert t.to("cpu") is t
    assert t.to(nc.float64).dtype == nc.float64
    assert t.double().dtype == nc.float64 and t.long().dtype == nc.int64


def test_item_needs_one_element():
    with pytest.raises(ValueError, match="one element"):
        nc.zeros(2).item()


@pytest.mark.parametrize("bad", ["abc", None, [1, "a"], {"a": 1}, [[1, 2], [3]]])
def test_non_numeric_data_is_a_type_error(bad):
    with pytest.raises(TypeError, match="data"):
        nc.tensor(bad)


def test_bad_dtype_and_device():
    with pytest.raises(TypeError, match="dtype"):
        nc.tensor([1.0], dtype="complex64")
    with pytest.raises(ValueError, match="device='tpu'.*'cpu', 'cuda'"):
        nc.tensor([1.0], device="tpu")
    with pytest.raises(TypeError, match="device"):
        nc.tensor([1.0], device=3)
    with pytest.raises(TypeError, match="floating-point"):
        nc.tensor([1, 2], requires_grad=True)


def test_creation_functions():
    assert nc.zeros(2, 3).numpy().sum() == 0 and nc.zeros((2, 3)).shape == (2, 3)
    assert nc.ones(4).numpy().tolist() == [1, 1, 1, 1]
    assert nc.full((2,), 7.0).dtype == nc.float32 and nc.full((2,), 7).dtype == nc.int64
    assert nc.arange(5).dtype == nc.int64 and nc.arange(0, 1, 0.25).shape == (4,)
    assert nc.arange(0, 1, 0.25).dtype == nc.float32
    r = nc.rand(1000)
    assert r.dtype == nc.float32 and 0 <= r.numpy().min() and r.numpy().max() < 1
    n = nc.randn(10000)
    assert abs(n.numpy().mean()) < 0.05 and abs(n.numpy().std() - 1) < 0.05
    x = nc.randn(3, 2, dtype=nc.float64)
    for f in (nc.zeros_like, nc.ones_like, nc.rand_like, nc.randn_like, nc.empty_like):
        y = f(x)
        assert y.shape == (3, 2) and y.dtype == nc.float64
    assert nc.full_like(x, 2.0).numpy().tolist() == [[2, 2]] * 3
    with pytest.raises(ValueError, match="non-negative"):
        nc.zeros(-1)
    with pytest.raises(TypeError, match="ints"):
        nc.zeros(2.5)
    with pytest.raises(ValueError, match="step"):
        nc.arange(0, 3, 0)


def test_manual_seed_reproduces():
    nc.manual_seed(7)
    a = nc.randn(5).numpy().copy()
    nc.manual_seed(7)
    assert np.array_equal(nc.randn(5).numpy(), a)
    assert not np.array_equal(nc.randn(5).numpy(), a)
    with pytest.raises(ValueError, match="seed"):
        nc.manual_seed(-1)


def test_repr_mentions_grad():
    x = nc.tensor([1.0], requires_grad=True)
    assert "requires_grad=True" in repr(x)
    assert "grad_fn=<Mul>" in repr(x * 2)
    assert "dtype=float64" in repr(nc.zeros(1, dtype=nc.float64))


def test_view_of_non_contiguous_is_an_error():
    x = nc.randn(3, 4).transpose(0, 1)
    assert not x.is_contiguous()
    with pytest.raises(RuntimeError, match="view"):
        x.view(12)
    assert x.reshape(12).shape == (12,)
    assert x.contiguous().view(12).shape == (12,)
