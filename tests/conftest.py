import os

import torch

# The Triton kernels run on the CPU only under the interpreter, which must be chosen before triton.jit runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pytest_configure(config):
    """A plain `pytest` runs each micro-benchmark once, as a test; `pytest --benchmark-only` (or
    --benchmark-enable) times them. pytest-benchmark's own configure hook runs after this one (trylast)."""
    if not (config.getoption("benchmark_only", False) or config.getoption("benchmark_enable", False)):
        config.option.benchmark_disable = True
