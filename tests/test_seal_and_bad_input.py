"""Sealing, and bad input of every kind: a clear error naming the problem, never a crash."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from cardmint.kernel import Kernel, KernelError, Packed, Status
from hypothesis import given
from hypothesis import strategies as st

KEY = bytes(range(32))


def _batch(kernel: Kernel, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    b = kernel.generate(n, key=KEY, seed=bytes(32))
    assert b.digests is not None
    return b.codes, b.digests


def test_seal_roundtrip_with_fresh_nonces(kernel: Kernel) -> None:
    codes, digests = _batch(kernel)
    sealed = kernel.seal(codes, digests, KEY)
    assert sealed.shape == (64, 16 + 28)
    assert len({bytes(r[:12]) for r in sealed}) == 64  # a fresh nonce per code
    assert not any(bytes(c) in sealed.tobytes() for c in codes.tolist())  # no plaintext
    assert np.array_equal(kernel.open(sealed, digests, KEY), codes)


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
def test_any_tampering_fails_and_names_the_record(kernel: Kernel, where: str) -> None:
    codes, digests = _batch(kernel)
    sealed = kernel.seal(codes, digests, KEY).copy()
    col = {"nonce": 3, "ciphertext": 12 + 5, "tag": 16 + 12 + 7}[where]
    sealed[41, col] ^= 0x40
    with pytest.raises(KernelError, match="record 41"):
        kernel.open(sealed, digests, KEY)


def test_a_sealed_code_only_opens_under_its_own_digest_and_key(kernel: Kernel) -> None:
    codes, digests = _batch(kernel)
    sealed = kernel.seal(codes, digests, KEY)
    swapped = digests.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    with pytest.raises(KernelError, match="record 0"):
        kernel.open(sealed, swapped, KEY)
    with pytest.raises(KernelError, match="record 0"):
        kernel.open(sealed, digests, bytes(32))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda k: k.validate(np.array([1, 2, 3])), "dtype"),
        (lambda k: k.validate("ABCD"), "single string"),
        (lambda k: k.validate(np.zeros((2, 2), dtype="S16")), "one-dimensional"),
        (lambda k: k.validate(np.array([b"AB"], dtype="S2")), "length"),
        (lambda k: k.digest(np.array([b"ABCD"]), b"k" * 31), "32 bytes"),
        (lambda k: k.digest(np.array([b"ABCD"]), KEY, 64), "digest size"),
        (lambda k: k.normalize("one string"), "single string"),
        (lambda k: k.normalize([1, 2]), "str or bytes"),
        (lambda k: k.normalize(np.zeros(3)), "dtype"),
        (lambda k: k.normalize(Packed(b"abc", np.array([0, 5]))), "offsets"),
        (lambda k: k.normalize(Packed(b"abc", np.array([2, 1, 3]))), "offsets"),
        (lambda k: k.normalize(["x"], length=99), "length"),
        (lambda k: k.check_one(12345), "str or bytes"),
        (lambda k: k.index(4), "digest size"),
        (lambda k: k.index_from(np.zeros((3, 16), dtype=np.int32)), "uint8"),
        (lambda k: k.serials("12a", 0, 1, 4), "digits"),
        (lambda k: k.serials("1", 9990, 20, 4), "fit"),
        (lambda k: k.serials("1", -5, 1, 4), "fit"),
        (
            lambda k: k.open(np.zeros((2, 3), dtype=np.uint8), np.zeros((2, 16), dtype=np.uint8), KEY),
            "length",
        ),
        (lambda k: k.seal(np.array([b"ABCD"]), np.zeros((2, 16), dtype=np.uint8), KEY), "digests"),
        (lambda k: k.display(np.array([b"ABCD"]), 99), "group"),
        (lambda k: k.check_symbol("AIOU"), "not a symbol"),
        (lambda k: k.check_symbol(""), "payload"),
    ],
)
def test_bad_arguments_raise_a_named_error(kernel: Kernel, call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((KernelError, ValueError), match=match):
        call(kernel)


def test_empty_inputs_are_fine(kernel: Kernel) -> None:
    assert len(kernel.normalize([]).status) == 0
    assert len(kernel.check(Packed.lines(b"")).status) == 0
    assert len(kernel.validate(np.array([], dtype="S16"))) == 0
    assert kernel.digest(np.array([], dtype="S16"), KEY).shape == (0, 16)
    assert len(kernel.generate(0).codes) == 0
    idx = kernel.index_from(np.zeros((0, 16), dtype=np.uint8))
    assert len(idx) == 0 and len(idx.lookup(np.zeros((0, 16), dtype=np.uint8))) == 0


@given(st.binary(max_size=300), st.lists(st.integers(-5, 400), max_size=8), st.integers(-3, 40))
def test_backend_never_crashes_on_raw_buffers(
    kernel: Kernel, data: bytes, offsets: list[int], length: int
) -> None:
    """The backends themselves (below the face's checks) refuse nonsense with ValueError."""
    offs = np.array(offsets or [0], dtype=np.int64)
    for fn in (kernel.backend.normalize, kernel.backend.check):
        try:
            codes, status = fn(data, offs, length, 0)
        except ValueError:
            continue
        assert len(status) == len(offs) - 1 and len(codes) == length * len(status)
    with contextlib.suppress(ValueError):
        kernel.backend.validate(data, length, 0)
    with contextlib.suppress(ValueError):
        kernel.backend.display(data, length, 4)
    with contextlib.suppress(ValueError):
        kernel.backend.digest(data, length, KEY, 16, 0)


def test_huge_and_binary_inputs_are_malformed_not_fatal(kernel: Kernel) -> None:
    blob = bytes(range(256)) * 64
    # A batch mixing str and bytes on purpose: accepted, though Inputs names one kind per batch.
    res = kernel.check([blob, b"\x00" * 5000, "A" * 2000, b"\xc3"])  # type: ignore[arg-type]
    assert res.status.tolist() == [Status.TOO_LONG, Status.TOO_LONG, Status.TOO_LONG, Status.BAD_UTF8]
    assert kernel.check_one("\ud800" * 3) == (Status.BAD_UTF8, b"")
