import subprocess
import sys

import pytest

import numbaconv as nc
from numbaconv.backend import default_device, parse_device


def test_default_is_cpu(monkeypatch):
    monkeypatch.delenv("NUMBACONV_BACKEND", raising=False)
    assert default_device() == "cpu"
    assert nc.zeros(1).device == "cpu"


def test_env_var_selects_and_validates(monkeypatch):
    monkeypatch.setenv("NUMBACONV_BACKEND", "CPU")
    assert default_device() == "cpu"
    monkeypatch.setenv("NUMBACONV_BACKEND", "opencl")
    with pytest.raises(ValueError, match="NUMBACONV_BACKEND='opencl'.*'cpu', 'cuda'"):
        nc.zeros(1)


def test_cuda_request_is_clear():
    # Either the CUDA backend works here, or asking for it explains itself.
    try:
        t = nc.zeros(2, device="cuda")
    except RuntimeError as e:
        assert "cuda" in str(e).lower()
    else:
        assert t.device == "cuda"


def test_parse_device():
    assert parse_device("cuda:0") == "cuda"
    with pytest.raises(ValueError, match="expected one of"):
        parse_device("gpu")


def test_import_does_not_touch_cuda():
    code = ("import sys, numbaconv as nc; nc.zeros(3) + 1; "
            "print(any(m.startswith('numba.cuda') or m.startswith('numba_cuda') "
            "for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_backend_protocol_is_implemented():
    from numbaconv.backend.base import Backend

    be = nc.get_backend("cpu")
    assert isinstance(be, Backend)
    missing = [m for m in Backend.__annotations__ if not hasattr(be, m)]
    protocol_methods = [m for m in dir(Backend) if not m.startswith("_")]
    missing += [m for m in protocol_methods if not hasattr(be, m)]
    assert not missing, missing


def test_mixing_devices_is_an_error():
    from numbaconv.functional._args import as_operands

    a = nc.ones(2)
    b = nc.ones(2)
    b.device = "cuda"  # a tensor that claims another device: the op must refuse, not copy
    with pytest.raises(RuntimeError, match="device"):
        as_operands(a, b, "add")
