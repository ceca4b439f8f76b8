import gc
import tracemalloc
import weakref

import numpy as np
import pytest

import numbaconv as nc


def test_grad_accumulates_into_leaves():
    x = nc.tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3 + 2, 3 + 4])


def test_shared_subexpression_gets_both_paths():
    x = nc.tensor([2.0], requires_grad=True)
    y = x * x
    z = y + y * 3  # dz/dx = 4 * 2x
    z.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [16.0])


def test_long_chain_has_no_recursion_limit():
    x = nc.tensor([1.0], requires_grad=True)
    y = x
    for _ in range(3000):
        y = y * 1.0 + 0.0
    y.sum().backward()
    assert x.grad.numpy()[0] == 1.0


def test_second_backward_is_an_error_unless_retained():
    x = nc.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    first = x.grad.numpy().copy()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * first, rtol=1e-6)
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_no_grad_records_nothing():
    x = nc.tensor([1.0], requires_grad=True)
    with nc.no_grad():
        y = x * 2
    assert not y.requires_grad and y.grad_fn is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()

    @nc.no_grad()
    def f(t):
        return t * 2

    assert not f(x).requires_grad
    assert nc.is_grad_enabled()


def test_backward_needs_scalar_or_gradient():
    x = nc.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match="one element"):
        y.backward()
    with pytest.raises(ValueError, match="shape"):
        y.backward(nc.ones(3))
    y.backward(nc.tensor([1.0, 10.0]))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 20.0])


def test_only_inputs_that_need_grad_get_one():
    x = nc.tensor([1.0], requires_grad=True)
    c = nc.tensor([5.0])
    (x * c).sum().backward()
    assert c.grad is None and x.grad.numpy()[0] == 5.0


def test_retain_grad_on_intermediate():
    x = nc.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    y.retain_grad()
    (y * y).sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), [6.0, 12.0])


def test_memory_does_not_grow_over_4000_iterations():
    w = nc.randn(16, 16, requires_grad=True)
    x = nc.randn(8, 16)

    def step():
        y = (x @ w).relu().log_softmax(1)
        loss = -y[:, 0].mean()
        loss.backward()
        w.grad = None

    for _ in range(200):  # warm up caches and kernels
        step()
    gc.collect()
    tracemalloc.start()
    for _ in range(1000):
        step()
    gc.collect()
    after_1k = tracemalloc.get_traced_memory()[0]
    for _ in range(3000):
        step()
    gc.collect()
    after_4k = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    # under 11 bytes per step: one object kept per step (56 bytes or more) would show
    assert after_4k - after_1k < 32 * 1024, (after_1k, after_4k)


def test_graph_is_freed_when_output_dies():
    import weakref

    x = nc.randn(100, requires_grad=True)
    y = (x * 2).exp()
    ref = weakref.ref(y.grad_fn)
    del y
    gc.collect()
    assert ref() is None


def test_gradients_accumulate_in_place_only_when_nothing_else_holds_them():
    """PyTorch's rule: a second backward adds into .grad in place unless the old gradient is
    held elsewhere (a kept reference, or one array shared by two leaves)."""
    x = nc.tensor(np.arange(300_000, dtype=np.float32) / 1000, requires_grad=True)  # big: kernel
    (x * 2).sum().backward()
    first = weakref.ref(x.grad.data)  # a weak reference does not hold the gradient
    (x * 3).sum().backward()
    assert first() is x.grad.data  # in place
    np.testing.assert_allclose(x.grad.numpy(), 5)
    kept = x.grad
    (x * 1).sum().backward()
    np.testing.assert_allclose(kept.numpy(), 5)  # the kept gradient did not change
    np.testing.assert_allclose(x.grad.numpy(), 6)
    a = nc.ones(4, requires_grad=True)
    b = nc.ones(4, requires_grad=True)
    for _ in range(2):
        (a + b).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), 2)
    np.testing.assert_array_equal(b.grad.numpy(), 2)
    small = nc.ones(3, requires_grad=True)
    for _ in range(3):
        (small * small).sum().backward()
    np.testing.assert_array_equal(small.grad.numpy(), 6)


def test_backward_reads_the_given_gradient_without_keeping_it():
    """backward(g) reads g in place (no up-front copy), yet no leaf's .grad is g's array, and
    changing g afterwards changes no gradient; a dtype or layout mismatch is converted."""
    x = nc.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    z = nc.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    g = nc.tensor(np.full((2, 3), 2, np.float32))
    (x + z).backward(g)  # add's backward hands the same gradient to both inputs
    x.backward(g)  # a leaf as the root: its gradient is the seed itself
    leaf = nc.tensor(np.zeros((2, 3), np.float32), requires_grad=True)
    leaf.backward(g)
    for t in (x, z, leaf):
        assert not np.shares_memory(t.grad.data, g.data)
    g.data[...] = 100
    np.testing.assert_array_equal(x.grad.numpy(), 4)
    np.testing.assert_array_equal(z.grad.numpy(), 2)
    np.testing.assert_array_equal(leaf.grad.numpy(), 2)
    # a float64 or transposed gradient reaches the ops as a C-contiguous float32 copy
    for given in (np.ones((2, 3)), np.ones((3, 2), np.float32).T):
        y = nc.tensor(np.ones((2, 3), np.float32), requires_grad=True)
        (y * 3).backward(nc.tensor(given))
        assert y.grad.dtype == nc.float32 and y.grad.data.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(y.grad.numpy(), 3)


def test_post_accumulate_grad_hook_fires_once_with_the_whole_gradient():
    from numbaconv import autograd

    w = nc.tensor(np.ones(3, np.float32), requires_grad=True)
    v = nc.tensor(np.ones(3, np.float32), requires_grad=True)
    unused = nc.tensor(np.ones(3, np.float32), requires_grad=True)
    seen, order = [], []
    w.register_post_accumulate_grad_hook(lambda t: seen.append(("w", t.grad.numpy().copy())))
    v.register_post_accumulate_grad_hook(lambda t: seen.append(("v", t.grad.numpy().copy())))
    handle = unused.register_post_accumulate_grad_hook(lambda t: seen.append("unused"))
    # w is used three times, the last use far from the loss; v only near the loss
    h = (w * 2).exp() + w * 3
    y = (h * v).sum() + (w * w).sum()

    def at_end():
        order.append([name for name, _ in seen])

    w.register_post_accumulate_grad_hook(lambda t: autograd.queue_callback(at_end))
    y.backward()
    names = [name for name, _ in seen]
    assert names == ["v", "w"]  # v's gradient is complete first; unused never fires
    want_w = 2 * np.exp(2) + 3 + 2  # d/dw of v(e^2w + 3w) + w^2 at w = v = 1
    np.testing.assert_allclose(seen[1][1], np.full(3, want_w, np.float32), rtol=1e-6)
    assert order == [["v", "w"]]  # the queued callback ran after the pass
    handle.remove()
    with pytest.raises(RuntimeError, match="no backward pass is running"):
        autograd.queue_callback(at_end)
    with pytest.raises(RuntimeError, match="only leaf tensors"):
        h.register_post_accumulate_grad_hook(print)


def test_removed_hooks_stay_silent_and_uncounted():
    from numbaconv.autograd import _Hooks

    before = _Hooks.hooked  # with none registered, backward skips the bookkeeping
    w = nc.tensor(np.ones(2, np.float32), requires_grad=True)
    calls = []
    handle = w.register_post_accumulate_grad_hook(calls.append)
    assert _Hooks.hooked == before + 1
    (w * 2).sum().backward()
    handle.remove()
    handle.remove()  # twice is harmless
    (w * 2).sum().backward()
    assert len(calls) == 1 and calls[0] is w
    assert _Hooks.hooked == before
