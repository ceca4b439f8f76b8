"""The CUDA backend: the same ops as on the CPU, compared value by value and gradient by
gradient (on Numba's CUDA simulator in CI, with tiny shapes; for real on a GPU), a LeNet-5
training step, and every kernel compiled to PTX for compute capability 9.0."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from numba import cuda  # module level: the simulator swaps this name inside kernels

import numbaconv as nc
import numbaconv.functional as F
from numbaconv import models, nn, optim

pytestmark = pytest.mark.cuda

try:
    nc.get_backend("cuda")
    HAVE_CUDA = True
except RuntimeError:
    HAVE_CUDA = False
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="no GPU and no CUDA simulator")


def _pair(arrays, requires_grad=True):
    cpu = [nc.tensor(a, requires_grad=requires_grad and a.dtype.kind == "f") for a in arrays]
    gpu = [nc.tensor(a, device="cuda", requires_grad=requires_grad and a.dtype.kind == "f")
           for a in arrays]
    return cpu, gpu


def _check(fn, arrays, rtol=1e-5, atol=1e-5, grad=True):
    cpu, gpu = _pair(arrays, grad)
    y_c, y_g = fn(*cpu), fn(*gpu)
    assert y_g.device == "cuda" and y_g.dtype == y_c.dtype and y_g.shape == y_c.shape
    np.testing.assert_allclose(y_g.numpy(), y_c.numpy(), rtol=rtol, atol=atol, equal_nan=True)
    if grad and y_c.requires_grad:
        g = np.random.default_rng(7).standard_normal(y_c.shape).astype(y_c.dtype)
        y_c.backward(nc.tensor(g))
        y_g.backward(nc.tensor(g, device="cuda"))
        for i, (a, b) in enumerate(zip(cpu, gpu)):
            if a.grad is not None:
                assert b.grad is not None and b.grad.device == "cuda"
                np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=rtol * 10,
                                           atol=atol * 10, err_msg=f"grad of input {i}")


R = np.random.default_rng(0)


def r(*shape, dtype=np.float32):
    return R.standard_normal(shape).astype(dtype)


CASES = {
    "add broadcast": (lambda a, b: a + b, [r(2, 3), r(3)]),
    "sub mul div": (lambda a, b: (a - b) * a / (b * b + 1), [r(2, 1, 3), r(4, 1)]),
    "pow scalar": (lambda a: (a * a + 1) ** 1.5, [r(3, 4)]),
    "pow tensor": (lambda a, b: (a * a + 1) ** b, [r(3, 2), r(2)]),
    "maximum minimum": (lambda a, b: nc.maximum(a, b) + nc.minimum(a, b * 2), [r(3, 4), r(4)]),
    "unary": (lambda a: a.exp() + (a * a + 1).log() + (a * a).sqrt() + a.abs() - a.neg(),
              [r(2, 5)]),
    "activations": (lambda a: a.relu() + a.sigmoid() + a.tanh(), [r(3, 5)]),
    "sum mean dims": (lambda a: a.sum((0, 2), keepdim=True) + a.mean(1).sum(), [r(2, 3, 4)]),
    "max min dim": (lambda a: a.max(dim=1).values + a.min(dim=0, keepdim=True)[0].sum(),
                    [r(4, 3)]),
    "amax": (lambda a: a.amax((0, 1)), [r(3, 4, 2)]),
    "matmul 2d": (lambda a, b: a @ b, [r(3, 5), r(5, 2)]),
    "matmul batched": (lambda a, b: a @ b, [r(2, 3, 4), r(4, 5)]),
    "matmul vector": (lambda a, b: a @ b, [r(3, 4), r(4)]),
    "permute reshape": (lambda a: a.permute(2, 0, 1).reshape(4, -1) * 2, [r(2, 3, 4)]),
    "slice index": (lambda a: a[1:, ::2] * 3 + a[0, None, 1:3].sum(), [r(3, 5)]),
    "int index": (lambda a: a[nc.tensor([2, 0, 2], device=a.device)], [r(3, 4)]),
    "cat stack": (lambda a, b: nc.cat([a, b * 2], 1) + nc.stack([a, a], 1).sum(1).sum(1,
                  keepdim=True), [r(2, 3), r(2, 3)]),
    "pad constant": (lambda a: F.pad(a, (1, 2, 0, 1), value=0.5), [r(2, 3, 4)]),
    "pad reflect": (lambda a: F.pad(a, (2, 1), mode="reflect"), [r(2, 5)]),
    "pad circular": (lambda a: F.pad(a, (1, 1, 1, 0), mode="circular"), [r(1, 3, 4)]),
    "softmax": (lambda a: a.softmax(1) + a.log_softmax(0), [r(3, 5)]),
    "where compare": (lambda a, b: nc.where(a > b, a, b * 2), [r(3, 4), r(4)]),
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [r(2, 3, 7, 6),
                                                                        r(4, 3, 3, 3), r(4)]),
    "conv2d groups dilation": (lambda x, w: F.conv2d(x, w, groups=2, dilation=2, padding=2),
                               [r(1, 4, 6, 6), r(4, 2, 3, 3)]),
    "conv_transpose2d": (lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1,
                                                         output_padding=1),
                         [r(1, 3, 4, 4), r(3, 2, 3, 3)]),
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), [r(2, 2, 7, 7)]),
    "max_pool2d dilation": (lambda x: F.max_pool2d(x, 2, 1, 0, 2), [r(1, 2, 6, 6)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                   [r(2, 2, 7, 7)]),
    "adaptive pools": (lambda x: F.adaptive_avg_pool2d(x, (2, 3)) + F.adaptive_max_pool2d(
        x, (2, 3)), [r(1, 2, 5, 7)]),
    "lrn": (lambda x: F.local_response_norm(x, 3, 0.5, 0.75, 2.0), [r(2, 5, 3, 3)]),
    "interpolate": (lambda x: F.interpolate(x, scale_factor=2) + 0, [r(1, 2, 3, 4)]),
    "interpolate size": (lambda x: F.interpolate(x, size=(5, 7)), [r(1, 2, 3, 4)]),
    "linear": (lambda x, w, b: F.linear(x, w, b), [r(4, 5), r(3, 5), r(3)]),
    "cross_entropy": (lambda x: F.cross_entropy(x, nc.tensor([1, 0, 3], device=x.device),
                                                label_smoothing=0.1), [r(3, 4)]),
    "nll weight ignore": (lambda x: F.nll_loss(x.log_softmax(1), nc.tensor(
        [1, 2, 0], device=x.device), weight=nc.tensor([1.0, 2.0, 0.5], device=x.device),
        ignore_index=0), [r(3, 3)]),
    "mse": (lambda a, b: F.mse_loss(a, b), [r(3, 4), r(3, 4)]),
    "float64": (lambda a, b: (a @ b).tanh().sum(0), [r(3, 4, dtype=np.float64),
                                                     r(4, 2, dtype=np.float64)]),
    "conv2d rectangular": (lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=(0, 2),
                                                    dilation=(1, 2)),
                           [r(2, 3, 7, 6), r(4, 3, 2, 3), r(4)]),
    # depthwise layers take the direct kernels; a channel multiplier, stride and dilation
    "conv2d depthwise": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=2, dilation=2,
                                                  groups=3),
                         [r(2, 3, 7, 6), r(6, 1, 3, 3), r(6)]),
    # long rows against few of them: the split (two-pass) reductions and batch statistics
    "long reductions": (lambda a: a.sum() + a.mean(1).sum() * 2 + a.amax() -
                        a.amin() + (a * a).sum(1).mean(), [r(2, 700)]),
    "conv2d long bias grad": (lambda x, w, b: F.conv2d(x, w, b), [r(3, 2, 13, 13),
                                                                    r(3, 2, 1, 1), r(3)]),
    "batch_norm long": (lambda x, w, b: F.relu(F.batch_norm(x, None, None, w, b, True)),
                        [r(3, 2, 300) + 2, r(2), r(2)]),
    "elementwise scalars": (lambda a, b: (a * b.sum() - b.sum() / a.exp() + (a > 0.5) * a +
                                          nc.maximum(a, a * 0.5) + (a == a) * 1.0 +
                                          (a != 0) * a + (a < b.mean()) * 1.0 +
                                          (a <= 0) * 1.0 + (a >= 0) * a),
                            [r(2, 5), r(3)]),
}


@needs_cuda
@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_cpu(name):
    fn, arrays = CASES[name]
    _check(fn, arrays)


@needs_cuda
@pytest.mark.parametrize("name", ["conv2d", "conv2d groups dilation", "conv2d rectangular"])
def test_conv_with_materialised_columns(name, monkeypatch):
    """NUMBACONV_CUDA_CONV=im2col: the column matrix written out, then the plain GEMMs (the
    default reads it implicitly from the image); both agree with the CPU."""
    from numbaconv.kernels.cuda import conv as conv_k

    monkeypatch.setattr(conv_k, "IMPLICIT", False)
    fn, arrays = CASES[name]
    _check(fn, arrays)


@needs_cuda
def test_batchnorm_dropout_and_rng_on_device():
    nc.manual_seed(3)
    x = r(4, 3, 2, 2)
    bn_c, bn_g = nn.BatchNorm2d(3), nn.BatchNorm2d(3).to("cuda")
    _check(lambda t: (bn_c if t.device == "cpu" else bn_g)(t), [x])
    _check(lambda t: (bn_c if t.device == "cpu" else bn_g)(t, _relu=True), [x])  # fused ReLU
    np.testing.assert_allclose(bn_g.running_var.numpy(), bn_c.running_var.numpy(), rtol=1e-5)
    bn_c.eval()
    bn_g.eval()
    _check(lambda t: (bn_c if t.device == "cpu" else bn_g)(t), [x * 2])
    u = nc.rand(200, device="cuda").numpy()
    assert 0 <= u.min() and u.max() < 1 and 0.35 < u.mean() < 0.65
    z = nc.randn(200, device="cuda").numpy()
    assert abs(z.mean()) < 0.3 and 0.7 < z.std() < 1.3
    nc.manual_seed(5)
    a = nc.randn(8, device="cuda").numpy()
    nc.manual_seed(5)
    assert np.array_equal(a, nc.randn(8, device="cuda").numpy())
    d = F.dropout(nc.ones(200, device="cuda"), 0.25).numpy()
    assert set(np.unique(d)) <= {0.0, np.float32(1 / 0.75)} and 0.1 < (d == 0).mean() < 0.4


@needs_cuda
def test_optimizers_on_device():
    w0 = r(3, 4)
    for make in (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
                 lambda p: optim.AdamW(p, lr=0.05, amsgrad=True)):
        pc = nc.tensor(w0, requires_grad=True)
        pg = nc.tensor(w0, device="cuda", requires_grad=True)
        oc, og = make([pc]), make([pg])
        for _ in range(3):
            for p, o in ((pc, oc), (pg, og)):
                o.zero_grad()
                ((p * p - 1.0) ** 2).sum().backward()
                o.step()
        np.testing.assert_allclose(pg.numpy(), pc.numpy(), rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("a_t,b_t", [(False, False), (True, False), (False, True),
                                     (True, True)])
def test_gemm_layouts_and_split_k(a_t, b_t):
    """The GEMM against NumPy for each operand layout (which index a warp's loads run along),
    with K long enough to be split across blocks, ragged edges and a batch; the split sums
    are deterministic."""
    from numbaconv.kernels.cuda import linalg as mm

    be = nc.get_backend("cuda")
    rng = np.random.default_rng(1)
    batch, m, n, k = 2, mm.BM + 3, 5, 71 * mm.BK + 3
    a = rng.standard_normal((batch, k, m) if a_t else (batch, m, k)).astype(np.float32)
    b = rng.standard_normal((batch, n, k) if b_t else (batch, k, n)).astype(np.float32)
    sa = (m * k, 1, m) if a_t else (m * k, k, 1)
    sb = (n * k, 1, k) if b_t else (n * k, n, 1)
    ref = (a.transpose(0, 2, 1) if a_t else a) @ (b.transpose(0, 2, 1) if b_t else b)
    results = []
    for splits in (None, 3, 3, 100):  # 100: the block-per-output sum of the splits
        out = be.empty((batch, m, n), np.float32)
        mm.gemm(be, cuda.to_device(a.ravel()), sa, cuda.to_device(b.ravel()), sb, m, n, k,
                batch, out, np.float32, splits=splits)
        results.append(out.copy_to_host())
        np.testing.assert_allclose(results[-1], ref, rtol=1e-4, atol=1e-4)
    assert np.array_equal(results[1], results[2])


@needs_cuda
def test_binary_paths_match_cpu():
    """Every binary op through each of its three kernels (same shapes, one operand a single
    element, general broadcasting) against the CPU backend, ties and NaN included."""
    cpu, gpu = nc.get_backend("cpu"), nc.get_backend("cuda")
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 3)).astype(np.float32)
    a[0, 0] = np.nan
    b = a.copy()
    b[1] = rng.standard_normal(3)
    shapes = [(b, a), (np.float32([0.5]).reshape(1, 1), a), (a, np.float32([0.5])),
              (b[:1, :], a)]
    ops = ["add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt", "le",
           "gt", "ge"]
    for x, y in shapes:
        for op in ops:
            xx = np.abs(x) + 0.5 if op == "pow" else x
            want = cpu.binary(op, xx, y)
            got = gpu.to_numpy(gpu.binary(op, gpu.asarray(xx, xx.dtype),
                                          gpu.asarray(y, y.dtype)))
            np.testing.assert_allclose(got, want, rtol=1e-5, equal_nan=True, err_msg=op)
        for op in ("maximum", "minimum"):
            want = cpu.extremum_weights(x, y, op)
            got = gpu.extremum_weights(gpu.asarray(x, x.dtype), gpu.asarray(y, y.dtype), op)
            np.testing.assert_allclose(gpu.to_numpy(got), want, err_msg=op)
        for op in ("relu", "sigmoid", "tanh"):
            yy = np.tanh(np.nan_to_num(y))
            want = cpu.activation_backward(op, *(np.ascontiguousarray(v) for v in
                                                 np.broadcast_arrays(x, yy)))
            got = gpu.activation_backward(op, gpu.asarray(x, x.dtype), gpu.asarray(yy, yy.dtype))
            np.testing.assert_allclose(gpu.to_numpy(got), want, rtol=1e-5, equal_nan=True,
                                       err_msg=op)


@needs_cuda
def test_bad_target_is_reported_at_the_next_synchronisation():
    """No host round trip per loss call: the label is checked on the device and a bad one
    raised when the host next reads anything."""
    x = nc.tensor(r(3, 4), device="cuda", requires_grad=True)
    loss = F.cross_entropy(x, nc.tensor([1, 7, 0], device="cuda"))
    with pytest.raises(ValueError, match="target holds 7"):
        loss.item()
    ok = F.cross_entropy(x, nc.tensor([1, 2, 0], device="cuda"))
    assert np.isfinite(ok.item())  # the flag was cleared


@needs_cuda
def test_backend_memory_and_profile_api():
    import numbaconv.cuda as ncuda

    with ncuda.profile() as prof:
        y = (nc.ones(4, 4, device="cuda") * 2).sum()
        assert y.item() == 32
    assert prof.launches >= 3 and any("fill" in row[0] for row in prof.rows)
    assert "launches" in prof.report()
    assert ncuda.memory_allocated() >= 0 and ncuda.max_memory_allocated() >= 0
    ncuda.empty_cache()
    ncuda.synchronize()


@needs_cuda
def test_devices_do_not_mix_silently():
    with pytest.raises(RuntimeError, match="device"):
        nc.ones(2) + nc.ones(2, device="cuda")
    t = nc.ones(2, device="cuda").to("cpu")
    assert t.device == "cpu" and t.numpy().tolist() == [1, 1]


@needs_cuda
def test_lenet_step_matches_cpu():
    """Forward, backward and an SGD step of LeNet-5 on one image (the simulator runs every GPU
    thread in Python): same loss and weights on both devices, and no host array ever passed to
    a kernel."""
    from numba.core.errors import NumbaPerformanceWarning

    nc.manual_seed(0)
    cpu = models.lenet5()
    gpu = models.lenet5().to("cuda")
    gpu.load_state_dict(cpu.state_dict())
    x, y = r(1, 1, 28, 28), np.array([3])
    losses = []
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Host array used in CUDA kernel",
                                category=NumbaPerformanceWarning)
        for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
            opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            loss = F.cross_entropy(model(nc.tensor(x, device=dev)), nc.tensor(y, device=dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    for (k, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        assert b.device == "cuda"
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-6, err_msg=k)


def all_kernel_keys():
    from numbaconv.backend.cuda import _MODULES

    keys = []
    for mod, factory in _MODULES.items():
        ns = factory(np.dtype(np.float32))
        if callable(getattr(ns, "py_func", None)) or hasattr(ns, "fn"):
            keys.append(mod)
            continue
        for name, value in vars(ns).items():
            if isinstance(value, dict):
                keys += [f"{mod}.{name}.{k}" for k in value]
            elif hasattr(value, "py_func") or hasattr(value, "fn"):
                if not getattr(value, "_numbaconv_device", False):
                    keys.append(f"{mod}.{name}")
    return keys


_PTX_CHECK = r"""
import json, sys
import numba
from numba import cuda, types
from numbaconv.backend.cuda import kernel

def numba_type(desc):
    kind = desc[0]
    if kind == "array":
        return types.Array(numba.from_dtype(__import__("numpy").dtype(desc[1])), desc[2], desc[3])
    if kind == "tuple":
        return types.UniTuple(types.int64, desc[1]) if desc[1] else types.Tuple(())
    if kind == "bool":
        return types.boolean
    return numba.from_dtype(__import__("numpy").dtype(desc[1]))

bad = []
n = 0
for key, dtype, args in json.load(open(sys.argv[1])):
    k = kernel(key, dtype)
    sig = tuple(numba_type(a) for a in args)
    ptx, _ = cuda.compile_ptx(k.py_func, sig, cc=(9, 0),
                              fastmath=bool(k.targetoptions.get("fastmath", False)))
    n += 1
    uses_f64 = any(a[0] in ("array", "scalar") and a[1] == "float64" for a in args)
    if not uses_f64 and ".f64" in ptx:  # a kernel on float32 (or integer) data only
        lines = [l for l in ptx.splitlines() if ".f64" in l][:3]
        bad.append(f"{key} {args}: {lines}")
if bad:
    print("float32 kernels with .f64 instructions:\n" + "\n".join(bad))
    sys.exit(1)
print(f"compiled {n} kernel specialisations for sm_90")
"""


@needs_cuda
def test_setitem_on_device():
    x = nc.zeros(3, 4, device="cuda")
    x[1] = 2.0
    x[:, 1:3] = nc.tensor([5.0, 6.0], device="cuda")
    ref = np.zeros((3, 4), np.float32)
    ref[1] = 2
    ref[:, 1:3] = [5, 6]
    np.testing.assert_array_equal(x.numpy(), ref)


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1", reason="simulator only")
def test_simulator_shares_one_array_per_block(monkeypatch):
    """tests/_cudasim.py: every thread of a block gets the same shared array even when the
    interpreter switches threads while the first one creates it (forced here by a sleep at
    that point, where the simulator's own lookup lets other threads create their own)."""
    import time

    from numba import float32

    from tests import _cudasim

    real_empty = np.empty

    class SlowNumpy:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def empty(*a, **k):
            time.sleep(0.002)  # let the other threads of the block run here
            return real_empty(*a, **k)

    from numba.cuda.simulator import kernelapi

    monkeypatch.setattr(_cudasim, "np", SlowNumpy())
    monkeypatch.setattr(kernelapi, "np", SlowNumpy())  # the simulator's own lookup, if used

    @cuda.jit
    def block_sum(out):
        buf = cuda.shared.array(16, float32)
        t = cuda.threadIdx.x
        buf[t] = t
        cuda.syncthreads()
        s = float32(0)
        for i in range(16):
            s += buf[i]
        out[t] = s

    out = cuda.to_device(np.zeros(16, np.float32))
    block_sum[1, 16](out)
    np.testing.assert_array_equal(out.copy_to_host(), np.full(16, 120, np.float32))


def test_block_pool_reuses_blocks_by_size_class():
    """The caching allocator's bookkeeping, with a fake driver: a freed block serves the
    next request of its size class, nothing reaches the driver in steady state, out-of-memory
    releases the cached blocks and retries, and the counters match torch.cuda's meaning."""
    from numbaconv.kernels.cuda.memory import BlockPool, size_class

    assert size_class(1) == 512 and size_class(513) == 1024 and size_class(1 << 20) == 1 << 20
    big = (1 << 24) + 1
    assert big <= size_class(big) <= big * 1.125 + 1
    live, freed = [], []

    class OOM(Exception):
        pass

    def raw_alloc(size):
        if sum(s for s in live) + size > 10_000:
            raise OOM()
        live.append(size)
        return ("block", len(live), size)

    def raw_free(handle):
        live.remove(handle[2])
        freed.append(handle)

    pool = BlockPool(raw_alloc, raw_free, is_oom=lambda e: isinstance(e, OOM))
    for _ in range(3):  # a "training step" that allocates and frees the same sizes
        a, sa = pool.take(1000)
        b, sb = pool.take(3000)
        pool.give_back(a, sa)
        pool.give_back(b, sb)
    assert pool.n_raw_alloc == 2 and pool.n_alloc == 6
    assert pool.allocated == 0 and pool.peak == 1024 + 3072 and pool.reserved == 4096
    h, s = pool.take(9000)  # does not fit beside the cached blocks: they are released
    assert s == 9216 and len(freed) == 2 and pool.reserved == 9216
    pool.give_back(h, s)
    pool.empty_cache()
    assert pool.reserved == 0 and not live


@pytest.fixture(scope="module", autouse=True)
def _record_launches():
    """Every kernel launch of this module is recorded (key, dtype, argument types) for the PTX
    check at its end, so that it compiles what the tests ran without running them again."""
    from numbaconv.backend import cuda as cb

    saved = cb.RECORD
    if saved is None:
        cb.RECORD = []
    yield
    cb.RECORD = saved


def _launch_every_kernel():
    """What the PTX check needs launched when the tests above did not run (``-k``)."""
    from numbaconv.kernels.cuda import conv as conv_k

    x = nc.tensor(r(2, 3), device="cuda")
    (x.long() + 1).sum(), (x > 0).sum(), x.argmin(1), nc.randint(0, 5, (4,), device="cuda")
    x.unsqueeze(0).expand(2, 2, 3).sum()
    (x != 0).sum(), (x < 0).sum(), (x <= 0).sum(), (x >= 0).sum(), x.min()
    if _missing_kernels():
        for name in CASES:
            _check(*CASES[name])
        test_batchnorm_dropout_and_rng_on_device()
        test_optimizers_on_device()
        test_binary_paths_match_cpu()
        conv_k.IMPLICIT = False
        try:
            _check(*CASES["conv2d"])
        finally:
            conv_k.IMPLICIT = True
        for a_t in (False, True):
            for b_t in (False, True):
                test_gemm_layouts_and_split_k(a_t, b_t)
        test_lenet_step_matches_cpu()


def _recorded():
    from numbaconv.backend import cuda as cb

    return {json.dumps([k, d, a]): (k, d, a) for k, d, a in cb.RECORD or ()}


def _missing_kernels():
    return sorted(set(all_kernel_keys()) - {k for k, _, _ in _recorded().values()})


@needs_cuda
@pytest.mark.slow
def test_every_kernel_compiles_to_ptx_without_f64(tmp_path):
    """Every kernel specialisation that this module launched (the tests above; what they did
    not launch is launched here), compiled for sm_90 in processes without the simulator: a
    float32 kernel's PTX must hold no .f64 instruction. Two processes share the work."""
    if _missing_kernels():
        _launch_every_kernel()
    missing = _missing_kernels()
    assert not missing, f"kernels never launched by the suite: {missing}"
    records = sorted(_recorded().values(), key=lambda rec: json.dumps(rec))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    procs = []
    for part in range(2):
        path = tmp_path / f"launches{part}.json"
        path.write_text(json.dumps(records[part::2]))
        procs.append(subprocess.Popen([sys.executable, "-c", _PTX_CHECK, str(path)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
    compiled = 0
    for proc in procs:
        out, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
        compiled += int(out.split("compiled ")[1].split()[0])
    assert compiled == len(records)
