"""One script for a machine with an NVIDIA GPU: the CUDA tests for real; the four training
steps of LeNet-5 and ResNet-mini-8 (batch 256/128 and 4096/1024) in images/s next to PyTorch CUDA
eager (its defaults, and TF32 off), with launches and device allocations per step, driver
allocations in steady state, bit-for-bit repeatability and each step's heaviest kernels; then
every op of the table (its own cases and the convolution shapes of benchmarks/ops.py), forward+
backward, against PyTorch with TF32 off and against the CPU backend's values and gradients.
Prints compact tables; a few minutes on an H200, compilation included.

    python benchmarks/gpu_check.py              # needs numba-cuda and a GPU
    python benchmarks/gpu_check.py --skip-tests
    python benchmarks/gpu_check.py --zoo        # also the model zoo at 224x224
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tests():
    env = dict(os.environ, NUMBACONV_REAL_GPU="1", PYTHONUNBUFFERED="1")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    # pytest imports this checkout's numbaconv/, which finds its kernels only through an editable
    # install: a plain wheel install would make every CUDA test skip ("no GPU") and look green
    probe = subprocess.run([sys.executable, "-c", "import numbaconv.kernels.cuda"], cwd=ROOT,
                           capture_output=True, text=True, env=env)
    if probe.returncode != 0:
        print("CUDA tests NOT RUN: this checkout's numbaconv cannot import its kernels; install it "
              "with `pip install -e .`\n" + probe.stderr[-500:])
        return False
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          "-m", "not slow", os.path.join(ROOT, "tests", "test_cuda.py")],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    summary = lines[-1] if lines else out.stderr[-500:]
    print(f"CUDA tests on the GPU: {summary} ({time.perf_counter() - t0:.0f} s)")
    passed = re.search(r"(\d+) passed", summary)
    # only the simulator-only test may skip on a GPU
    skipped = [ln for ln in lines if ln.startswith("SKIPPED") and "simulator only" not in ln]
    ok = out.returncode == 0 and passed is not None and not skipped
    if not ok:
        print("\n".join(lines[-40:]))
    return ok


def timed(fn, sync, repeats=5, warmup=1):
    """Median seconds of ``fn`` followed by ``sync``, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _set_tf32(torch, on):
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def op_cases():
    """(label, numbaconv fn, torch fn, arrays): gpu_check's own table, then the convolution
    shapes of benchmarks/ops.py. Each fn takes the functional module first (numbaconv's or
    torch's), so one lambda serves both libraries."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import ops as ob

    rng = np.random.default_rng(0)

    def r(*s):
        return rng.standard_normal(s).astype(np.float32)

    cases = [
        ("conv 64x16x32x32 3x3", lambda F, x, w: F.conv2d(x, w, padding=1),
         [r(64, 16, 32, 32), r(16, 16, 3, 3) * 0.1]),
        ("conv alexnet 11x11/4", lambda F, x, w: F.conv2d(x, w, stride=4, padding=2),
         [r(8, 3, 224, 224), r(64, 3, 11, 11) * 0.1]),
        ("conv depthwise", lambda F, x, w: F.conv2d(x, w, padding=1, groups=32),
         [r(32, 32, 32, 32), r(32, 1, 3, 3)]),
        ("conv_transpose s2", lambda F, x, w: F.conv_transpose2d(
            x, w, stride=2, padding=1, output_padding=1), [r(16, 32, 16, 16),
                                                           r(32, 16, 3, 3) * 0.1]),
        ("max_pool 3/2", lambda F, x: F.max_pool2d(x, 3, 2), [r(64, 64, 55, 55)]),
        ("avg_pool 2/2", lambda F, x: F.avg_pool2d(x, 2), [r(64, 16, 32, 32)]),
        ("adaptive avg", lambda F, x: F.adaptive_avg_pool2d(x, 1), [r(128, 64, 7, 7)]),
        ("lrn size 5", lambda F, x: F.local_response_norm(x, 5), [r(64, 64, 27, 27)]),
        ("batch_norm", lambda F, x, w, b: F.batch_norm(x, None, None, w, b, True),
         [r(128, 32, 14, 14), r(32), r(32)]),
        ("matmul 512", lambda F, a, b: a @ b, [r(512, 512), r(512, 512)]),
        ("log_softmax", lambda F, a: F.log_softmax(a, 1), [r(256, 1000)]),
        ("cross_entropy", lambda F, a: F.cross_entropy(a, _labels(F, a, 1000)),
         [r(256, 1000)]),
    ]
    for n, c, h, w, o, k, s, p, d, g, label in ob.CONV_SHAPES:
        kw = dict(stride=s, padding=p, dilation=d, groups=g)
        cases.append((f"ops.py {label}", lambda F, x, wt, b, kw=kw: F.conv2d(x, wt, b, **kw),
                      [r(n, c, h, w), r(o, c // g, k, k) * 0.1, r(o)]))
    return cases


def _labels(F, a, n):
    labels = np.arange(a.shape[0]) % n
    if hasattr(F, "conv2d") and F.__name__.startswith("torch"):
        import torch

        return torch.tensor(labels, device="cuda")
    import numbaconv as nc

    return nc.tensor(labels, device=a.device)


def op_table():
    """Forward+backward of each op: numbaconv's GPU time next to PyTorch CUDA's with TF32 off,
    and the relative error of values and gradients to the CPU backend."""
    from numba import cuda

    import numbaconv as nc
    import numbaconv.functional as F

    torch = _torch_cuda()
    if torch is not None:
        import torch.nn.functional as TF

        _set_tf32(torch, False)
    import numbaconv.cuda as ncuda

    print(f"\n{'op (forward+backward)':28s} {'numbaconv ms':>12s} {'torch ms':>9s} "
          f"{'ratio':>6s} {'err fwd':>8s} {'err grad':>8s} {'im2col ms':>9s}")
    worst, ratios = 0.0, []
    for name, fn, arrays in op_cases():
        res, g = {}, None
        for dev in ("cpu", "cuda"):
            ts = [nc.tensor(a, device=dev, requires_grad=True) for a in arrays]
            y = fn(F, *ts)
            if g is None:  # one output gradient for both devices
                g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
            gy = nc.tensor(g, device=dev)
            y.backward(gy)
            res[dev] = (y.numpy(), [t.grad.numpy() for t in ts])
        gyc = gy

        def step(ts=ts, gyc=gyc):
            for t in ts:
                t.grad = None
            fn(F, *ts).backward(gyc)

        ms = timed(step, cuda.synchronize, 7, 2) * 1e3
        im2col_ms = float("nan")
        if name.startswith(("conv", "ops.py")):  # the same with the column matrix written out
            ncuda.conv_algorithm("im2col")
            im2col_ms = timed(step, cuda.synchronize, 7, 2) * 1e3
            ncuda.conv_algorithm("implicit")
        tms = float("nan")
        if torch is not None:
            tts = [torch.tensor(a, device="cuda", requires_grad=True) for a in arrays]
            tg = torch.tensor(gy.numpy(), device="cuda")

            def tstep(tts=tts, tg=tg):
                for t in tts:
                    t.grad = None
                fn(TF, *tts).backward(tg)

            tms = timed(tstep, torch.cuda.synchronize, 7, 2) * 1e3
        scale = np.abs(res["cpu"][0]).max() + 1e-12
        fwd = float(np.abs(res["cuda"][0] - res["cpu"][0]).max() / scale)
        bwd = max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))
                  for a, b in zip(res["cuda"][1], res["cpu"][1]))
        worst = max(worst, fwd, bwd)
        ratios.append(ms / tms)
        print(f"{name:28s} {ms:12.3f} {tms:9.3f} {ms / tms:6.2f} {fwd:8.1e} {bwd:8.1e} "
              f"{im2col_ms:9.3f}")
    if torch is not None:
        _set_tf32(torch, True)
    return worst, ratios


STEPS = (("LeNet-5", 256), ("ResNet-mini-8", 128), ("LeNet-5", 4096), ("ResNet-mini-8", 1024))


def training_steps(profile_top=6):
    """The four training steps of the issue: images/s of numbaconv and PyTorch CUDA eager
    (defaults, and TF32 off), launches and allocations per step, repeatability, and the
    heaviest kernels of one profiled step."""
    from numba import cuda

    import numbaconv as nc
    import numbaconv.cuda as ncuda
    import numbaconv.functional as F
    from numbaconv import models, optim

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import train as tb  # benchmarks/train.py: the same PyTorch models

    torch = _torch_cuda()
    rows, profiles = [], []
    for name, bs in STEPS:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((bs, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, bs)

        def build():
            nc.manual_seed(0)
            model = (models.lenet5() if name == "LeNet-5" else models.resnet_mini(8)).to("cuda")
            opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            return model, opt

        model, opt = build()
        X, Y = nc.tensor(x, device="cuda"), nc.tensor(y, device="cuda")

        def step(model=model, opt=opt, X=X, Y=Y):
            loss = F.cross_entropy(model(X), Y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        t0 = time.perf_counter()
        step()
        cuda.synchronize()
        first_s = time.perf_counter() - t0
        ours = bs / timed(step, cuda.synchronize, 20, 3)
        be = nc.get_backend("cuda")
        be.launcher.fast = False  # numba's own launch path, for the launch overhead's share
        numba_path = bs / timed(step, cuda.synchronize, 10, 1)
        be.launcher.fast = True
        with ncuda.profile() as prof:
            step()
        d0 = ncuda.memory_stats().get("driver_allocations", 0)
        for _ in range(3):
            step()
        cuda.synchronize()
        driver_allocs = ncuda.memory_stats().get("driver_allocations", 0) - d0
        # repeatability: two fresh runs of three steps from one seed, compared bit for bit
        finals = []
        for _ in range(2):
            m2, o2 = build()
            for _ in range(3):
                loss = F.cross_entropy(m2(X), Y)
                o2.zero_grad()
                loss.backward()
                o2.step()
            finals.append(np.concatenate([p.numpy().ravel() for p in m2.parameters()]))
        same_bits = bool(np.array_equal(finals[0], finals[1]))
        theirs = theirs_nt = float("nan")
        if torch is not None:
            tm = tb.torch_model(name).cuda()
            topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
            tx, ty = torch.tensor(x).cuda(), torch.tensor(y).cuda()

            def tstep():
                loss = torch.nn.functional.cross_entropy(tm(tx), ty)
                topt.zero_grad()
                loss.backward()
                topt.step()

            theirs = bs / timed(tstep, torch.cuda.synchronize, 20, 3)
            _set_tf32(torch, False)
            theirs_nt = bs / timed(tstep, torch.cuda.synchronize, 20, 3)
            _set_tf32(torch, True)
        rows.append((name, bs, ours, theirs, theirs_nt, prof.launches, prof.allocations,
                     driver_allocs, same_bits, first_s, numba_path))
        profiles.append((f"{name} batch {bs}", prof.rows[:profile_top],
                         sum(r[2] for r in prof.rows)))
        del model, opt, X, Y, step
    print("\nper-step profile (heaviest kernels, GPU ms)")
    for label, top, total in profiles:
        print(f"  {label}: {total:.2f} ms of kernels; " + ", ".join(
            f"{k} {c}x {ms:.2f}" for k, c, ms in top))
    print(f"\n{'training step':15s} {'batch':>5s} {'numbaconv img/s':>15s} {'torch img/s':>11s} "
          f"{'ratio':>6s} {'torch noTF32':>12s} {'ratio':>6s} {'launch':>6s} {'alloc':>5s} "
          f"{'drv':>3s} {'same bits':>9s} {'1st step s':>10s} {'numba launch img/s':>18s}")
    for name, bs, ours, theirs, nt, launches, allocs, drv, same, first_s, slow in rows:
        print(f"{name:15s} {bs:5d} {ours:15.0f} {theirs:11.0f} {ours / theirs:6.3f} "
              f"{nt:12.0f} {ours / nt:6.3f} {launches:6d} {allocs:5d} {drv:3d} "
              f"{'yes' if same else 'NO':>9s} {first_s:10.1f} {slow:18.0f}")
    return rows


def model_zoo():
    """Each zoo model at 224x224 on the GPU against the same weights on the CPU backend (eval
    mode: no dropout, BatchNorm's running statistics), then a timed training step on the GPU,
    next to torchvision's model of the same name where it is importable."""
    from numba import cuda

    import numbaconv as nc
    import numbaconv.functional as F
    from numbaconv import models, optim

    specs = [("alexnet", lambda: models.alexnet(), 16, "alexnet"),
             ("vgg11_bn", lambda: models.vgg11_bn(), 4, "vgg11_bn"),
             ("googlenet", lambda: models.googlenet(), 8, "googlenet"),
             ("resnet18", lambda: models.resnet18(), 8, "resnet18")]
    print("\nmodel zoo at 224x224: relative error to the float64 CPU backend (output max-norm;"
          " worst parameter gradient, 2-norm) of the GPU and, for scale, of float32 on the CPU")
    print(f"{'model':12s} {'batch':>5s} {'gpu fwd':>9s} {'gpu grad':>9s} {'cpu grad':>9s} "
          f"{'step ms':>8s} {'torchvision ms':>14s} {'params':>9s}")
    worst = 0.0
    for name, make, bs, tv_name in specs:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((bs, 3, 224, 224)).astype(np.float32)
        y = rng.integers(0, 1000, bs)
        nc.manual_seed(0)
        cpu_model = make().eval()
        gpu_model = make()
        gpu_model.load_state_dict(cpu_model.state_dict())
        gpu_model = gpu_model.to("cuda").eval()
        ref_model = make()
        ref_model.load_state_dict(cpu_model.state_dict())
        ref_model = ref_model.to(dtype=np.float64).eval()
        res = {}
        for key, model, dev, dt in (("f64", ref_model, "cpu", np.float64),
                                    ("cpu", cpu_model, "cpu", np.float32),
                                    ("cuda", gpu_model, "cuda", np.float32)):
            model.zero_grad()
            out = model(nc.tensor(x.astype(dt), device=dev))
            F.cross_entropy(out, nc.tensor(y, device=dev)).backward()
            res[key] = (out.numpy().astype(np.float64),
                        {k: p.grad.numpy().astype(np.float64)
                         for k, p in model.named_parameters() if p.grad is not None})

        def rel(key):  # relative to float64: output max-norm, worst parameter gradient 2-norm
            fwd = np.abs(res[key][0] - res["f64"][0]).max() / np.abs(res["f64"][0]).max()
            grad = max(np.linalg.norm(res[key][1][k] - g) / (np.linalg.norm(g) + 1e-30)
                       for k, g in res["f64"][1].items())
            return fwd, grad

        (fwd, grad), (_, cpu_grad) = rel("cuda"), rel("cpu")
        worst = max(worst, fwd, grad)
        total = nc.summary(gpu_model, (3, 224, 224), device="cuda").total_params

        gpu_model.train()
        opt = optim.SGD(gpu_model.parameters(), lr=0.01, momentum=0.9)
        X, Y = nc.tensor(x, device="cuda"), nc.tensor(y, device="cuda")
        lossf = models.googlenet_loss if name == "googlenet" else F.cross_entropy

        def step():
            loss = lossf(gpu_model(X), Y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        ms = timed(step, cuda.synchronize, 3) * 1e3
        tv_ms = float("nan")
        try:
            import torch
            import torchvision

            if torch.cuda.is_available():
                kw = {"aux_logits": True, "init_weights": True} if name == "googlenet" else {}
                tm = getattr(torchvision.models, tv_name)(**kw).cuda().train()
                topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
                tx, ty = torch.tensor(x).cuda(), torch.tensor(y).cuda()

                def tstep():
                    out = tm(tx)
                    logits = out[0] if isinstance(out, tuple) else out
                    loss = torch.nn.functional.cross_entropy(logits, ty)
                    topt.zero_grad()
                    loss.backward()
                    topt.step()

                tv_ms = timed(tstep, torch.cuda.synchronize, 3) * 1e3
        except Exception as exc:  # torchvision missing or a model it lacks: timings only
            print(f"  (torchvision {tv_name}: {type(exc).__name__}: {exc})")
        print(f"{name:12s} {bs:5d} {fwd:9.1e} {grad:9.1e} {cpu_grad:9.1e} {ms:8.1f} "
              f"{tv_ms:14.1f} {total / 1e6:8.2f}M")
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--zoo", action="store_true", help="also the 224x224 model zoo")
    ap.add_argument("--models-only", action="store_true", help="only the 224x224 model zoo")
    args = ap.parse_args(argv)
    os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    import warnings

    warnings.filterwarnings("ignore", message=".*under-utilization")
    import numba
    from numba import cuda

    import numbaconv as nc

    nc.get_backend("cuda")  # first: its caching allocator must be in place before a context
    dev = cuda.get_current_device()
    name = getattr(dev, "name", "simulator")
    print(f"GPU: {name.decode() if isinstance(name, bytes) else name}, "
          f"numba {numba.__version__}, numba-cuda "
          f"{getattr(__import__('numba_cuda'), '__version__', '?')}", flush=True)
    t0 = time.perf_counter()
    ok = True if args.skip_tests or args.models_only else run_tests()
    worst = 0.0
    if not args.models_only:
        rows = training_steps()
        worst, ratios = op_table()
        finite = [r for r in ratios if r == r]
        if finite:
            print(f"op ratios numbaconv/torch (TF32 off): worst {max(finite):.2f}, "
                  f"geometric mean {float(np.exp(np.mean(np.log(finite)))):.2f}")
        print("step ratios (img/s numbaconv/torch default): " + ", ".join(
            f"{n} {b}: {o / t:.3f}" for n, b, o, t, *_ in rows))
    if args.zoo or args.models_only:
        zoo = model_zoo()
        print(f"\nworst relative difference of a zoo model to the CPU backend: {zoo:.2e}")
    print(f"\nworst relative difference to the CPU backend: {worst:.2e}; tests "
          f"{'passed' if ok else 'FAILED'}; {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
