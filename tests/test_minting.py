"""Minting: uniqueness within a batch and across a streamed run, prefixes, randomness."""

from __future__ import annotations

import numpy as np
import pytest
from cardmint.kernel import ALPHABET, Kernel, KernelError


def test_uniqueness_holds_across_every_chunk_of_a_run(kernel: Kernel) -> None:
    """4 random symbols = 2^20 payloads: a run of 2^19 codes in chunks collides constantly
    (birthday bound ~1,200 codes), yet no code ever repeats, in a chunk or across chunks.
    The minter never held more than one chunk of codes, only 64-bit fingerprints."""
    total = 1 << 19 if kernel.name != "python" else 1 << 14
    chunk = total // 16
    m = kernel.minter(5, seed=bytes(32))
    seen: set[bytes] = set()
    for batch in m.chunks(total, chunk):
        assert len(batch) == chunk
        seen.update(batch.codes.tolist())
    assert len(seen) == total == m.issued
    # It had to skip many duplicate draws to get there.
    assert m._raw.drawn > total


def test_a_run_stops_at_half_the_payload_space(kernel: Kernel) -> None:
    m = kernel.minter(4, "AB", seed=bytes(32))  # one random symbol: 32 payloads
    codes = m.take(16).codes
    assert len(set(codes.tolist())) == 16
    with pytest.raises(KernelError, match="half"):
        m.take(1)


def test_non_unique_mode_returns_raw_draws(kernel: Kernel) -> None:
    codes = kernel.generate(3000, 5, unique=False, seed=bytes(range(32))).codes
    assert len(set(codes.tolist())) < 3000  # 2^20 payloads: repeats are expected


def test_prefix_and_length(kernel: Kernel) -> None:
    b = kernel.generate(50, 12, prefix="GC", seed=bytes(32))
    assert b.codes.dtype == np.dtype("S12")
    assert all(c.startswith(b"GC") for c in b.codes.tolist())
    assert kernel.validate(b.codes).all()


@pytest.mark.parametrize("prefix", ["gc", "GIFT", "A-B", "ÄB"])
def test_prefix_outside_the_alphabet_is_refused_by_name(kernel: Kernel, prefix: str) -> None:
    with pytest.raises(KernelError, match="prefix"):
        kernel.generate(1, 16, prefix=prefix)


def test_os_seeded_runs_differ_and_look_uniform(native: Kernel) -> None:
    a = native.generate(200_000).codes
    b = native.generate(200_000).codes
    assert not set(a.tolist()) & set(b.tolist())
    # Symbol frequencies over the 15 random positions: chi-square with 31 degrees of
    # freedom; 70 is beyond the 99.99th percentile, so a false alarm is ~1 in 10^4.
    sym = np.frombuffer(a.tobytes(), dtype=np.uint8).reshape(-1, 16)[:, :15]
    counts = np.array([(sym == ord(c)).sum() for c in ALPHABET])
    expected = sym.size / 32
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 70, chi2


def test_digests_come_with_the_batch(kernel: Kernel) -> None:
    key = bytes(range(32))
    b = kernel.generate(100, key=key, digest_size=20, seed=bytes(32))
    assert b.digests is not None and b.digests.shape == (100, 20)
    assert np.array_equal(b.digests, kernel.digest(b.codes, key, 20))
    assert len({bytes(d) for d in b.digests}) == 100


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"count": -1}, "count"),
        ({"count": 1 << 40}, "count"),
        ({"count": 1.5}, "count"),
        ({"count": 1, "length": 3}, "length"),
        ({"count": 1, "length": 32}, "length"),
        ({"count": 1, "length": "16"}, "length"),
        ({"count": 1, "group": -1}, "group"),
        ({"count": 1, "key": b"short"}, "key"),
        ({"count": 1, "key": "x" * 32}, "key"),
        ({"count": 1, "key": bytes(32), "digest_size": 7}, "digest size"),
        ({"count": 1, "seed": bytes(31)}, "seed"),
        ({"count": 1, "threads": -1}, "threads"),
        ({"count": 1, "length": 4, "prefix": "ABC"}, "prefix"),
    ],
)
def test_bad_arguments_are_named_before_any_work(
    kernel: Kernel, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(KernelError, match=match):
        kernel.generate(**kwargs)  # type: ignore[arg-type]
