"""DigestIndex (build, lookup, insert, save/load, memory) and typo correction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cardmint.kernel import ALPHABET, CorrectionStatus, Kernel, KernelError
from hypothesis import given
from hypothesis import strategies as st

KEY = bytes(range(32))


def _digests(n: int, width: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, width), dtype=np.uint8)


def test_build_lookup_insert(kernel: Kernel) -> None:
    n = 200_000 if kernel.name != "python" else 5_000
    d = _digests(n)
    idx = kernel.index_from(d)
    assert len(idx) == n
    assert np.array_equal(idx.lookup(d), np.arange(n))
    misses = _digests(1000, seed=1)
    assert (idx.lookup(misses) == -1).all()
    # insert: new ones get the next positions, known ones (also repeats in the batch) keep theirs
    batch = np.concatenate([misses[:10], d[:5], misses[:3]])
    pos = idx.insert(batch)
    assert pos.tolist() == list(range(n, n + 10)) + list(range(5)) + list(range(n, n + 3))
    assert len(idx) == n + 10
    assert np.array_equal(idx.lookup(misses[:10]), np.arange(n, n + 10))


def test_insert_grows_from_empty(kernel: Kernel) -> None:
    idx = kernel.index(16)
    d = _digests(50_000 if kernel.name != "python" else 3000, seed=3)
    for part in np.array_split(d, 37):
        idx.insert(part)
    assert np.array_equal(idx.lookup(d), np.arange(len(d)))
    assert np.array_equal(idx.digests(), d)


@pytest.mark.parametrize("width", [8, 20, 32])
def test_other_widths(kernel: Kernel, width: int) -> None:
    d = _digests(1000, width)
    idx = kernel.index_from(d)
    assert idx.width == width
    assert np.array_equal(idx.lookup(d), np.arange(1000))
    with pytest.raises(KernelError, match="wide"):
        idx.lookup(_digests(2, 16))


def test_duplicates_in_a_build_are_named(kernel: Kernel) -> None:
    d = _digests(100)
    d[70] = d[20]
    d[90] = d[10]
    with pytest.raises(KernelError, match="rows 20 and 70"):
        kernel.index_from(d)


def test_save_load_roundtrip_and_corruption(kernel: Kernel, tmp_path: Path) -> None:
    d = _digests(10_000)
    idx = kernel.index_from(d)
    path = tmp_path / "issued.cmidx"
    idx.save(path)
    again = kernel.load_index(path)
    assert len(again) == 10_000 and np.array_equal(again.lookup(d), np.arange(10_000))
    blob = bytearray(path.read_bytes())
    blob[100] ^= 1
    (tmp_path / "flip.cmidx").write_bytes(blob)
    with pytest.raises(KernelError, match="checksum"):
        kernel.load_index(tmp_path / "flip.cmidx")
    (tmp_path / "short.cmidx").write_bytes(blob[:-7])
    with pytest.raises(KernelError, match=r"size|short|truncat"):
        kernel.load_index(tmp_path / "short.cmidx")
    (tmp_path / "junk.cmidx").write_bytes(b"not an index at all, just words" * 3)
    with pytest.raises(KernelError, match="not a cardmint"):
        kernel.load_index(tmp_path / "junk.cmidx")
    with pytest.raises(OSError, match="No such file"):
        kernel.load_index(tmp_path / "missing.cmidx")


def test_bytes_per_entry_at_ten_million(native: Kernel) -> None:
    """The issue's memory target: at most 24 bytes per 16-byte digest at 10^7 entries."""
    d = np.random.default_rng(7).integers(0, 256, (10_000_000, 16), dtype=np.uint8)
    idx = native.index_from(d)
    print(f"{native.name}: {idx.bytes_per_entry:.2f} bytes per entry at 10^7")
    assert idx.bytes_per_entry <= 24
    probe = np.random.default_rng(8).integers(0, 10_000_000, 100_000)
    assert np.array_equal(idx.lookup(d[probe]), probe)


# ---- correction
def _issued(kernel: Kernel, n: int, length: int, seed: bytes) -> tuple[np.ndarray, object]:
    codes = kernel.generate(n, length, seed=seed).codes
    return codes, kernel.index_from(kernel.digest(codes, KEY))


@given(st.binary(min_size=32, max_size=32), st.data())
def test_any_single_edit_of_an_issued_code_is_found(kernel: Kernel, seed: bytes, data: st.DataObject) -> None:
    codes, idx = _issued(kernel, 200, 16, seed)
    code = codes[data.draw(st.integers(0, 199))].decode()
    p = data.draw(st.integers(0, 15))
    if data.draw(st.booleans()) and p < 15 and code[p] != code[p + 1]:
        typed = code[:p] + code[p + 1] + code[p] + code[p + 2 :]
    else:
        typed = (
            code[:p] + data.draw(st.sampled_from([c for c in ALPHABET + "U" if c != code[p]])) + code[p + 1 :]
        )
    res = kernel.correct(typed.lower(), idx, KEY)  # type: ignore[arg-type]
    assert code in res.candidates
    if res.status == CorrectionStatus.CORRECTED:
        assert res.suggestion == code
    else:  # another issued code one edit away too: never guess
        assert res.status == CorrectionStatus.AMBIGUOUS and res.suggestion is None


def test_correction_statuses(kernel: Kernel) -> None:
    codes, idx = _issued(kernel, 50, 16, bytes(32))
    code = codes[0].decode()
    assert kernel.correct(code, idx, KEY).status == CorrectionStatus.OK  # type: ignore[arg-type]
    other = kernel.generate(1, seed=bytes([9] * 32)).codes[0].decode()
    assert kernel.correct(other, idx, KEY).status == CorrectionStatus.UNKNOWN  # type: ignore[arg-type]
    assert kernel.correct(code[:-1] + "U", idx, KEY).suggestion == code  # type: ignore[arg-type]
    assert kernel.correct("", idx, KEY).status == CorrectionStatus.EMPTY  # type: ignore[arg-type]
    assert kernel.correct(code + "00", idx, KEY).status == CorrectionStatus.BAD_LENGTH  # type: ignore[arg-type]
    assert kernel.correct(b"\xff" + code.encode(), idx, KEY).status == CorrectionStatus.BAD_UTF8  # type: ignore[arg-type]


def test_correct_against_ten_million(native: Kernel) -> None:
    """Correction needs the issued set; at 10^7 it still answers (speed is in benches/)."""
    codes = native.generate(1_000_000, seed=bytes(32), key=KEY)
    filler = np.random.default_rng(1).integers(0, 256, (9_000_000, 16), dtype=np.uint8)
    assert codes.digests is not None
    idx = native.index_from(np.concatenate([codes.digests, filler]))
    code = codes.codes[123].decode()
    typo = code[:6] + code[7] + code[6] + code[8:] if code[6] != code[7] else code[:6] + "U" + code[7:]
    res = native.correct(typo, idx, KEY)
    assert res.suggestion == code
