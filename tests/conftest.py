import os
import sys

# CUDA kernels run on Numba's simulator unless a real GPU is asked for (benchmarks/gpu_check.py
# sets NUMBACONV_REAL_GPU=1). This must happen before numba is first imported.
if os.environ.get("NUMBACONV_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

sys.setswitchinterval(1e-4)  # speeds up syncthreads on the CUDA simulator

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    from tests._cudasim import patch_shared_arrays

    patch_shared_arrays()  # the simulator's shared arrays race without it (see there)

settings.register_profile(
    "default", max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

import numbaconv as nc  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_device(monkeypatch):
    monkeypatch.delenv("NUMBACONV_BACKEND", raising=False)
    nc.manual_seed(0)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
