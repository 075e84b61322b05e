"""pytest-benchmark suite: one group per kernel operation, one entry per backend.

    make bench                           # real sizes: 10^6 per native backend, 10^5 Python
    CARDMINT_BENCH_SIZE=tiny pytest benches --benchmark-disable   # what `make test` runs

Ratios between the entries of a group are what to read; `cardmint bench` prints the same
operations as one table with the plain-Python baseline.
"""

from __future__ import annotations

import os

import pytest
from cardmint.kernel import Kernel, KernelError

TINY = os.environ.get("CARDMINT_BENCH_SIZE") == "tiny"
BACKENDS = ("rust", "cython", "python")


def size(kernel: Kernel, native: int = 1_000_000, python: int = 100_000) -> int:
    if TINY:
        return 1_000
    return python if kernel.name == "python" else native


@pytest.fixture(params=BACKENDS, scope="session")
def kernel(request: pytest.FixtureRequest) -> Kernel:
    try:
        return Kernel(request.param)
    except KernelError as e:
        if request.param in os.environ.get("CARDMINT_REQUIRE_BACKENDS", ""):
            pytest.fail(str(e))
        pytest.skip(str(e))
