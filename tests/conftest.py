"""Shared fixtures: one suite, run against every kernel backend.

`kernel` is parametrized over rust, cython and python. When CARDMINT_REQUIRE_BACKENDS
lists backends (the README's test command sets all three), a missing one is an error,
not a skip: a skipped backend would be a missing test.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cardmint.kernel import Kernel, KernelError
from hypothesis import HealthCheck, settings

VECTORS = Path(__file__).parent / "vectors"
BACKENDS = ("rust", "cython", "python")
REQUIRED = {b for b in os.environ.get("CARDMINT_REQUIRE_BACKENDS", "").split(",") if b}

settings.register_profile(
    "fast", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "slow", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


def _kernel(name: str) -> Kernel:
    try:
        return Kernel(name)
    except KernelError as e:
        if name in REQUIRED:
            pytest.fail(f"backend {name} is required here but unavailable: {e}")
        pytest.skip(f"backend {name} not built: {e}")


@pytest.fixture(params=BACKENDS, scope="session")
def kernel(request: pytest.FixtureRequest) -> Kernel:
    return _kernel(request.param)


@pytest.fixture(params=[b for b in BACKENDS if b != "python"], scope="session")
def native(request: pytest.FixtureRequest) -> Kernel:
    """Only the fast backends: for sizes the Python reference would take minutes on."""
    return _kernel(request.param)


@pytest.fixture(scope="session")
def reference() -> Kernel:
    return Kernel("python")


@pytest.fixture(scope="session")
def all_kernels() -> list[Kernel]:
    """Every available backend (the reference first), for agreement checks."""
    out = [Kernel("python")]
    for name in ("rust", "cython"):
        try:
            out.append(Kernel(name))
        except KernelError as e:
            if name in REQUIRED:
                pytest.fail(f"backend {name} is required here but unavailable: {e}")
    return out


def read_vectors(name: str) -> list[list[str]]:
    rows = []
    for line in (VECTORS / name).read_text().splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split("\t"))
    assert rows, f"{name} has no cases"
    return rows


@pytest.fixture(scope="session")
def vectors() -> Callable[[str], list[list[str]]]:
    return read_vectors
