"""The devices a test runs on: the CPU here, CUDA in the GPU tier (tests marked `gpu`: `python -m pytest -m gpu`,
skipped where torch sees no CUDA device, tests/conftest.py). A test parametrized with DEVICES is its own CPU twin: the
same code and assertions on `cpu` in the default suite and on `cuda` in the GPU tier."""

from __future__ import annotations

import pytest

NO_CUDA = ("no CUDA device here (torch.cuda.is_available() is false): the GPU tier runs where there is one "
           "(scripts/gpu_check.sh)")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]
# A tiny run on CUDA set against the same run on the CPU. Both in fp32 (`on`), both drawing every random number on the
# host (the model's initialisation, the batches, exemplars, reservoirs), so they differ only where CUDA's kernels sum
# in another order than the CPU's: ~1e-7 relative per op. bf16, 65,000 times coarser, kept such runs' losses within
# 0.3% of fp32's and their accuracies within one validation example of ~108 (tests/gpu_ready/test_precision.py).
# Allowed: 0.1% of a loss, and two examples of ~108.
LOSS_RTOL, LOSS_ATOL = 1e-3, 1e-5
ACCURACY_ATOL = 0.02


def on(device: str) -> list[str]:
    """The overrides of a run on `device`, in fp32 so that a CUDA run is set against a CPU one (precision=auto is
    bf16 on CUDA)."""
    return [f"device={device}", "precision=fp32"]
