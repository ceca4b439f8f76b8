"""One script for a machine with an NVIDIA GPU: the CUDA tests for real, every op against the
CPU backend on realistic shapes, and training-step timings (next to PyTorch's CUDA when it is
importable). Prints a compact table; finishes in a few minutes.

    python benchmarks/gpu_check.py              # needs numba-cuda and a GPU
    python benchmarks/gpu_check.py --skip-tests
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


def timed(fn, sync, repeats=5):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def op_parity():
    from numba import cuda

    import numbaconv as nc
    import numbaconv.functional as F

    rng = np.random.default_rng(0)

    def r(*s):
        return rng.standard_normal(s).astype(np.float32)

    cases = [
        ("conv 64x16x32x32 3x3", lambda x, w: F.conv2d(x, w, padding=1),
         [r(64, 16, 32, 32), r(16, 16, 3, 3) * 0.1]),
        ("conv alexnet 11x11/4", lambda x, w: F.conv2d(x, w, stride=4, padding=2),
         [r(8, 3, 224, 224), r(64, 3, 11, 11) * 0.1]),
        ("conv depthwise", lambda x, w: F.conv2d(x, w, padding=1, groups=32),
         [r(32, 32, 32, 32), r(32, 1, 3, 3)]),
        ("conv_transpose s2", lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1,
                                                             output_padding=1),
         [r(16, 32, 16, 16), r(32, 16, 3, 3) * 0.1]),
        ("max_pool 3/2", lambda x: F.max_pool2d(x, 3, 2), [r(64, 64, 55, 55)]),
        ("avg_pool 2/2", lambda x: F.avg_pool2d(x, 2), [r(64, 16, 32, 32)]),
        ("adaptive avg", lambda x: F.adaptive_avg_pool2d(x, 1), [r(128, 64, 7, 7)]),
        ("lrn size 5", lambda x: F.local_response_norm(x, 5), [r(64, 64, 27, 27)]),
        ("batch_norm", lambda x, w, b: F.batch_norm(x, None, None, w, b, True),
         [r(128, 32, 14, 14), r(32), r(32)]),
        ("matmul 512", lambda a, b: a @ b, [r(512, 512), r(512, 512)]),
        ("log_softmax", lambda a: a.log_softmax(1), [r(256, 1000)]),
        ("cross_entropy", lambda a: F.cross_entropy(a, nc.tensor(
            np.arange(256) % 1000, device=a.device)), [r(256, 1000)]),
    ]
    print(f"\n{'op':24s} {'max rel err fwd':>15s} {'bwd':>10s} {'gpu f+b ms':>11s}")
    worst = 0.0
    for name, fn, arrays in cases:
        res = {}
        for dev in ("cpu", "cuda"):
            ts = [nc.tensor(a, device=dev, requires_grad=True) for a in arrays]
            y = fn(*ts)
            g = nc.tensor(np.random.default_rng(1).standard_normal(y.shape).astype(np.float32),
                          device=dev)
            y.backward(g)
            res[dev] = (y.numpy(), [t.grad.numpy() for t in ts])

            if dev == "cuda":
                def step(ts=ts):
                    for t in ts:
                        t.grad = None
                    fn(*ts).backward(g)

                ms = timed(step, cuda.synchronize) * 1e3
        scale = np.abs(res["cpu"][0]).max() + 1e-12
        fwd = np.abs(res["cuda"][0] - res["cpu"][0]).max() / scale
        bwd = max(np.abs(a - b).max() / (np.abs(b).max() + 1e-12)
                  for a, b in zip(res["cuda"][1], res["cpu"][1]))
        worst = max(worst, fwd, bwd)
        print(f"{name:24s} {fwd:15.2e} {bwd:10.2e} {ms:11.2f}")
    return worst


def training_steps():
    from numba import cuda

    import numbaconv as nc
    import numbaconv.functional as F
    from numbaconv import models, optim

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import train as tb  # benchmarks/train.py: the same PyTorch models

    print(f"\n{'model':16s} {'batch':>5s} {'numbaconv img/s':>16s} {'PyTorch img/s':>14s}")
    for name, bs in (("LeNet-5", 256), ("ResNet-mini-8", 128)):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((bs, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, bs)
        nc.manual_seed(0)
        model = (models.lenet5() if name == "LeNet-5" else models.resnet_mini(8)).to("cuda")
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        X, Y = nc.tensor(x, device="cuda"), nc.tensor(y, device="cuda")

        def step():
            loss = F.cross_entropy(model(X), Y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        ours = bs / timed(step, cuda.synchronize, 10)
        theirs = float("nan")
        try:
            import torch

            if torch.cuda.is_available():
                tm = tb.torch_model(name).cuda()
                topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
                tx, ty = torch.tensor(x).cuda(), torch.tensor(y).cuda()

                def tstep():
                    loss = torch.nn.functional.cross_entropy(tm(tx), ty)
                    topt.zero_grad()
                    loss.backward()
                    topt.step()

                theirs = bs / timed(tstep, torch.cuda.synchronize, 10)
        except ImportError:
            pass
        print(f"{name:16s} {bs:5d} {ours:16.0f} {theirs:14.0f}")


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
    ap.add_argument("--skip-models", action="store_true", help="skip the 224x224 model zoo")
    ap.add_argument("--models-only", action="store_true", help="only the 224x224 model zoo")
    args = ap.parse_args(argv)
    os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    import warnings

    warnings.filterwarnings("ignore", message=".*under-utilization")
    import numba
    from numba import cuda

    dev = cuda.get_current_device()
    print(f"GPU: {dev.name.decode() if isinstance(dev.name, bytes) else dev.name}, "
          f"numba {numba.__version__}, numba-cuda "
          f"{getattr(__import__('numba_cuda'), '__version__', '?')}")
    t0 = time.perf_counter()
    ok = True if args.skip_tests or args.models_only else run_tests()
    worst = 0.0
    if not args.models_only:
        worst = op_parity()
        training_steps()
    if not args.skip_models:
        zoo = model_zoo()
        print(f"\nworst relative difference of a zoo model to the CPU backend: {zoo:.2e}")
    print(f"\nworst relative difference to the CPU backend: {worst:.2e}; tests "
          f"{'passed' if ok else 'FAILED'}; {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
