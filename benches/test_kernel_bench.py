"""Kernel throughput per operation and backend (see conftest.py for how to run)."""

from __future__ import annotations

import numpy as np
import pytest
from cardmint.kernel import Kernel, Packed
from pytest_benchmark.fixture import BenchmarkFixture

from .conftest import size

KEY = bytes(range(32))


def _packed(strings: list[str]) -> Packed:
    raw = [s.encode() for s in strings]
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in raw], out=offsets[1:])
    return Packed(b"".join(raw), offsets)


@pytest.mark.benchmark(group="mint+check")
def test_mint(benchmark: BenchmarkFixture, kernel: Kernel) -> None:
    n = size(kernel)
    out = benchmark(kernel.generate, n, unique=False)
    assert len(out.codes) == n and kernel.validate(out.codes[:100]).all()


@pytest.mark.benchmark(group="mint+check+digest+dedupe")
def test_mint_digest_unique(benchmark: BenchmarkFixture, kernel: Kernel) -> None:
    n = size(kernel)
    out = benchmark(kernel.generate, n, key=KEY)
    assert out.digests is not None and len(np.unique(out.codes[: min(n, 10_000)])) == min(n, 10_000)


@pytest.mark.benchmark(group="check ascii")
def test_check_ascii(benchmark: BenchmarkFixture, kernel: Kernel) -> None:
    n = size(kernel)
    codes = kernel.generate(n, seed=bytes(32)).codes
    inputs = _packed([c.decode().lower() for c in kernel.display(codes).tolist()])
    res = benchmark(kernel.check, inputs)
    assert (res.status == 0).all()


@pytest.mark.benchmark(group="check unicode")
def test_check_unicode(benchmark: BenchmarkFixture, kernel: Kernel) -> None:
    n = size(kernel)
    codes = kernel.generate(n, seed=bytes(32)).codes
    fw = str.maketrans({c: chr(ord(c) + 0xFEE0) for c in "0123456789ABCDEFGHJKMNPQRSTVWXYZ"})
    inputs = _packed(
        [
            c.decode()[:4] + "\u3000" + c.decode()[4:10].translate(fw) + "\u200b" + c.decode()[10:]
            for c in codes.tolist()
        ]
    )
    res = benchmark(kernel.check, inputs)
    assert (res.status == 0).all()


@pytest.mark.benchmark(group="digest")
def test_digest(benchmark: BenchmarkFixture, kernel: Kernel) -> None:
    codes = kernel.generate(size(kernel), seed=bytes(32)).codes
    out = benchmark(kernel.digest, codes, KEY)
    assert out.shape == (len(codes), 16)


@pytest.mark.benchmark(group="index build")
def test_index_build(benchmark: BenchmarkFixture, kernel: Kernel) -> None:
    n = size(kernel, 10_000_000, 100_000)
    digests = np.random.default_rng(1).integers(0, 256, (n, 16), dtype=np.uint8)
    idx = benchmark(kernel.index_from, digests)
    assert len(idx) == n


@pytest.mark.benchmark(group="index lookup")
def test_index_lookup(benchmark: BenchmarkFixture, kernel: Kernel) -> None:
    n = size(kernel, 10_000_000, 100_000)
    digests = np.random.default_rng(1).integers(0, 256, (n, 16), dtype=np.uint8)
    idx = kernel.index_from(digests)
    probe = digests[np.random.default_rng(2).integers(0, n, n)].copy()
    probe[::2, 0] ^= 0x5A
    pos = benchmark(idx.lookup, probe)
    assert (pos[1::2] >= 0).all()


@pytest.mark.benchmark(group="correct")
def test_correct(benchmark: BenchmarkFixture, kernel: Kernel) -> None:
    n = size(kernel, 10_000_000, 100_000)
    issued = kernel.generate(100, key=KEY, seed=bytes(32))
    assert issued.digests is not None
    filler = np.random.default_rng(1).integers(0, 256, (n, 16), dtype=np.uint8)
    idx = kernel.index_from(np.concatenate([issued.digests, filler]))
    code = issued.codes[7].decode()
    typo = code[:5] + ("8" if code[5] != "8" else "B") + code[6:]
    res = benchmark(kernel.correct, typo, idx, KEY)
    assert res.suggestion == code


@pytest.mark.benchmark(group="check_one (scalar)")
def test_check_one(benchmark: BenchmarkFixture, kernel: Kernel) -> None:
    code = kernel.generate(1, seed=bytes(32)).codes[0].decode()
    status, _ = benchmark(kernel.backend.check_one, code.lower(), 16)
    assert status == 0


@pytest.mark.benchmark(group="seal")
def test_seal(benchmark: BenchmarkFixture, kernel: Kernel) -> None:
    b = kernel.generate(size(kernel, 1_000_000, 10_000), key=KEY, seed=bytes(32))
    assert b.digests is not None
    sealed = benchmark(kernel.seal, b.codes, b.digests, KEY)
    assert np.array_equal(kernel.open(sealed, b.digests, KEY), b.codes)
