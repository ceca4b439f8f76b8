"""kernels/cpu/loading.py: cache-loaded kernels drop the LLVM module kept only for linking."""

import ast
import importlib
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
from numba.core.dispatcher import Dispatcher
from numbaconv.kernels.cpu import (
    conv,
    elementwise,
    loading,
    matmul,
    norm,
    optim,
    pool,
    random,
    winograd,
)

import numbaconv.backend.cpu  # noqa: F401  (installs the release on the package's kernels)

KERNEL_MODULES = (conv, elementwise, matmul, norm, optim, pool, random, winograd)
CPU_DIR = pathlib.Path(conv.__file__).parent


def _parallel_kernels(mod):
    return {name for name, obj in vars(mod).items()
            if isinstance(obj, Dispatcher) and obj.targetoptions.get("parallel")
            and obj.py_func.__module__ == mod.__name__}


def test_parallel_kernels_are_never_called_from_jitted_code():
    # the release is safe only for entry points: a jitted caller compiled later would link the
    # kernel's module
    parallel = set().union(*(_parallel_kernels(m) for m in KERNEL_MODULES))
    assert {"gemm_forward", "implicit_forward", "max_pool2d_backward",
            "winograd_forward"} <= parallel
    offenders = []
    for path in sorted(CPU_DIR.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if not (isinstance(node, ast.FunctionDef)
                    and any("njit" in ast.unparse(d) for d in node.decorator_list)):
                continue
            for call in ast.walk(node):
                if isinstance(call, ast.Call):
                    f = call.func
                    name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
                    if name in parallel:
                        offenders.append(f"{path.name}:{node.name} calls {name}")
    assert offenders == []


def test_package_kernels_are_wrapped():
    for mod in KERNEL_MODULES:
        for name in _parallel_kernels(mod):
            assert "compile" in vars(getattr(mod, name)), f"{mod.__name__}.{name}"
    # idempotent: a second call wraps nothing again
    assert loading.release_linking_modules(*KERNEL_MODULES) == 0


def test_kernel_loaded_from_cache_drops_its_module_and_still_runs(tmp_path):
    src = textwrap.dedent("""
        import numpy as np
        from numba import njit, prange

        @njit(parallel=True, cache=True)
        def scaled_sum(a, s):
            out = np.empty_like(a)
            for i in prange(a.shape[0]):
                out[i] = a[i] * s + a[i]
            return out
    """)
    (tmp_path / "loadme_kernel.py").write_text(src)
    env_code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]);"
                "import loadme_kernel as k;"
                "k.scaled_sum(np.arange(5.0, dtype=np.float32), np.float32(2))")
    # a first process compiles the kernel and writes it to the cache
    subprocess.run([sys.executable, "-c", env_code, str(tmp_path)], check=True)
    sys.path.insert(0, str(tmp_path))
    try:
        mod = importlib.import_module("loadme_kernel")
        assert loading.release_linking_modules(mod) == 1
        a = np.arange(7, dtype=np.float32)
        out = mod.scaled_sum(a, np.float32(3))  # loaded from the cache
        np.testing.assert_array_equal(out, a * 4)
        assert out.dtype == np.float32
        assert sum(mod.scaled_sum.stats.cache_hits.values()) == 1
        (loaded,) = mod.scaled_sum.overloads.values()
        assert loaded.library._shared_module is None
        # a signature not in the cache compiles as usual and keeps what Numba keeps
        out64 = mod.scaled_sum(a.astype(np.float64), 3.0)
        np.testing.assert_array_equal(out64, a * 4)
        assert len(mod.scaled_sum.overloads) == 2
        np.testing.assert_array_equal(mod.scaled_sum(a, np.float32(3)), a * 4)  # still runs
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("loadme_kernel", None)


def test_the_cpu_kernel_modules_import_each_other_without_a_circle():
    """Every import between kernels/cpu modules, at module level or inside a function,
    points one way: the graph has no cycle."""
    graph = {}
    for path in CPU_DIR.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= ({node.module.split(".")[0]} if node.module
                         else {a.name for a in node.names})
        graph[path.stem] = deps
    state = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", f"import circle: {' -> '.join(trail + [name])}"
        state[name] = "open"
        for dep in graph.get(name, ()):
            visit(dep, trail + [name])
        state[name] = "done"

    for name in graph:
        visit(name, [])
    assert graph["matmul"] >= {"blas", "threads"} and "conv" not in graph["threads"]
