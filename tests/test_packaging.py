"""The project installs as a wheel with numbaconv.kernels mapped from the top-level kernels/."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_and_imports_kernels(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), "-q"],
        capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    wheel = next((tmp_path / "dist").glob("numbaconv-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for must in ("numbaconv/kernels/__init__.py", "numbaconv/kernels/reference.py",
                 "numbaconv/kernels/cpu/conv/__init__.py", "numbaconv/kernels/cpu/conv/gemm.py",
                 "numbaconv/backend/cpu.py"):
        assert must in names, f"{must} missing from {wheel.name}"
    assert not any(n.startswith("kernels/") for n in names), "a top-level kernels/ leaked"
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                          str(site), str(wheel)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    code = ("import numbaconv, numbaconv.kernels.cpu.conv as c, numbaconv.functional as F; "
            "x = numbaconv.randn(1, 1, 5, 5); "
            "print(numbaconv.__file__); print(c.__file__); "
            "print(F.conv2d(x, numbaconv.ones(1, 1, 3, 3)).shape)")
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0].startswith(str(site)) and lines[1].startswith(str(site)), out.stdout
    assert lines[2] == "(1, 1, 3, 3)"
