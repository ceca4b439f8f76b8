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
    jit,
    linalg,
    loading,
    norm,
    optim,
    pool,
    random,
)

import numbaconv.backend.cpu  # noqa: F401  (installs the release on the package's kernels)

KERNEL_MODULES = (*conv.KERNEL_MODULES, elementwise, linalg, norm, optim, pool, random)
CPU_DIR = pathlib.Path(linalg.__file__).parent


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
    for path in sorted(CPU_DIR.rglob("*.py")):
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


def _module_name(path):
    parts = list(path.relative_to(CPU_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_cpu_kernel_modules_import_each_other_without_a_circle():
    """Every import between kernels/cpu modules (conv/'s included), at module level or inside
    a function, points one way: the graph has no cycle."""
    paths = {_module_name(p): p for p in CPU_DIR.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level >= 1):
                continue
            base = package.split(".") if package else []
            base = base[:len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{stem}.{alias.name}" if stem else alias.name
                target = sub if sub in paths else stem
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
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
    assert graph["linalg"] >= {"blas", "threads", "jit"} and "conv" not in graph["threads"]
    assert graph["conv"] >= {"conv.plan", "conv.gemm", "conv.winograd"}
    assert "conv" not in graph["conv.gemm"]  # strategies never import the entry points


def test_a_kernel_cache_key_covers_the_helpers_it_takes_from_other_files(monkeypatch):
    """Numba's cache checks a kernel's own file only; jit.njit adds a hash of every package
    module the kernel's module uses, so that editing a helper in another file (layout.py,
    blas.py, jit.py) recompiles the kernels that inlined it, and only those."""
    from numbaconv.kernels.cpu import blas, threads

    gemm, direct, layout = conv.gemm, conv.direct, conv.layout
    deps = jit.dependencies(gemm.__name__)
    assert {m.__name__ for m in (gemm, layout, conv.plan, jit, blas, threads)} <= deps
    assert direct.__name__ not in deps and layout.__name__ not in jit.dependencies(
        direct.__name__)
    kernel = gemm.gemm_forward
    key = kernel._cache._index_key((), kernel.targetctx.codegen())
    assert key[-1] == jit.sources_hash(gemm.__name__) and len(key[-1]) == 64
    before = {m: jit.sources_hash(m.__name__) for m in (gemm, direct)}
    real_read = jit._read
    monkeypatch.setattr(jit, "_HASHES", {})
    monkeypatch.setattr(jit, "_read", lambda path: real_read(path) + (
        b"# edited" if path == layout.__file__ else b""))
    assert jit.sources_hash(gemm.__name__) != before[gemm]  # a helper file changed
    assert jit.sources_hash(direct.__name__) == before[direct]  # not one it uses
    assert kernel._cache._index_key((), kernel.targetctx.codegen())[-1] != key[-1]
