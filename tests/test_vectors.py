"""Every backend reproduces the shared vectors in tests/vectors/ byte for byte."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cardmint.kernel import Kernel, Packed
from cardmint.kernel.tools import gen_vectors

from .conftest import VECTORS

Vectors = Callable[[str], list[list[str]]]


def test_vectors_match_the_reference(tmp_path: Path) -> None:
    """The committed vectors are exactly what the reference produces today."""
    gen_vectors.write_all(tmp_path)
    committed = sorted(p.name for p in VECTORS.iterdir() if p.is_file())
    regenerated = sorted(p.name for p in tmp_path.iterdir())
    assert committed == regenerated
    for name in committed:
        assert (VECTORS / name).read_bytes() == (tmp_path / name).read_bytes(), f"{name} drifted"


def test_normtable_is_generated_from_unicode_14() -> None:
    gen = Path(__file__).parents[1] / "kernel" / "tools" / "gen_normtable.py"
    proc = subprocess.run([sys.executable, str(gen), "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_checkchar(kernel: Kernel, vectors: Vectors) -> None:
    for payload, check in vectors("checkchar.tsv"):
        assert kernel.check_symbol(payload) == check, payload


@pytest.mark.parametrize("name", ["normalize", "check"])
def test_normalize_and_check(kernel: Kernel, vectors: Vectors, name: str) -> None:
    rows = vectors(f"{name}.tsv")
    for length in sorted({int(r[1]) for r in rows}):
        cases = [r for r in rows if int(r[1]) == length]
        raw = [bytes.fromhex(r[0]) for r in cases]
        res = getattr(kernel, name)(raw, length)
        assert res.status.tolist() == [int(r[2]) for r in cases]
        assert [c.decode() for c in res.codes.tolist()] == [r[3] for r in cases]
        for (hx, _, st, code), raw_one in zip(cases, raw, strict=True):
            if name == "check":
                assert kernel.check_one(raw_one, length) == (int(st), code.encode()), hx


def test_mint(kernel: Kernel, vectors: Vectors) -> None:
    for seed, length, prefix, unique, fills, codes in vectors("mint.tsv"):
        m = kernel.minter(int(length), prefix, seed=bytes.fromhex(seed), unique=unique == "1")
        got: list[str] = []
        for n in fills.split(","):
            got += [c.decode() for c in m.take(int(n)).codes.tolist()]
        assert got == codes.split(","), (seed, length, prefix)


def test_digest(kernel: Kernel, vectors: Vectors) -> None:
    for key, size, code, digest in vectors("digest.tsv"):
        k = bytes.fromhex(key)
        assert kernel.digest_one(code, k, int(size)).hex() == digest
        arr = np.array([code.encode()], dtype=f"S{len(code)}")
        assert kernel.digest(arr, k, int(size)).tobytes().hex() == digest


def test_seal(kernel: Kernel, vectors: Vectors) -> None:
    for key, code, digest, nonce, sealed in vectors("seal.tsv"):
        codes = np.array([code.encode()], dtype=f"S{len(code)}")
        d = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8).reshape(1, -1)
        n = np.frombuffer(bytes.fromhex(nonce), dtype=np.uint8).reshape(1, 12)
        out = kernel.seal(codes, d, bytes.fromhex(key), nonces=n)
        assert out.tobytes().hex() == sealed
        assert kernel.open(out, d, bytes.fromhex(key)).tolist() == [code.encode()]


def test_serials(kernel: Kernel, vectors: Vectors) -> None:
    for prefix, start, count, width, serials in vectors("serial.tsv"):
        got = kernel.serials(prefix, int(start), int(count), int(width))
        assert [s.decode() for s in got.tolist()] == serials.split(",")
        assert kernel.validate_serials(got).all()
    rows = vectors("serial_validate.tsv")
    got_valid = kernel.validate_serials(np.array([r[0].encode() for r in rows]))
    assert got_valid.tolist() == [r[1] == "1" for r in rows]


def test_display(kernel: Kernel, vectors: Vectors) -> None:
    for length, group, code, shown in vectors("display.tsv"):
        out = kernel.display(np.array([code.encode()], dtype=f"S{length}"), int(group))
        assert out.tolist() == [shown.encode()]


def test_correct(kernel: Kernel, vectors: Vectors) -> None:
    indexes: dict[tuple[str, str], object] = {}
    for key, size, length, issued, raw, status, normalized, cands in vectors("correct.tsv"):
        k = bytes.fromhex(key)
        if (key, issued) not in indexes:
            codes = np.array([c.encode() for c in issued.split(",")])
            indexes[key, issued] = kernel.index_from(kernel.digest(codes, k, int(size)))
        res = kernel.correct(bytes.fromhex(raw), indexes[key, issued], k, int(length))  # type: ignore[arg-type]
        assert (int(res.status), res.normalized, ",".join(res.candidates)) == (
            int(status),
            normalized,
            cands,
        ), raw


def test_index_files(kernel: Kernel, vectors: Vectors, tmp_path: Path) -> None:
    for name, width, digests in vectors("index.tsv"):
        want = [bytes.fromhex(d) for d in digests.split(",") if d]
        idx = kernel.load_index(VECTORS / name)
        assert idx.width == int(width) and len(idx) == len(want)
        assert [bytes(r) for r in idx.digests()] == want
        if want:
            arr = np.frombuffer(b"".join(want), dtype=np.uint8).reshape(len(want), -1)
            assert idx.lookup(arr).tolist() == list(range(len(want)))
        # Saving it again writes the very same bytes.
        idx.save(tmp_path / name)
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes()


def test_packed_lines_equal_list_input(kernel: Kernel, vectors: Vectors) -> None:
    rows = [
        bytes.fromhex(r[0])
        for r in vectors("check.tsv")
        if int(r[1]) == 16 and b"\n" not in bytes.fromhex(r[0])
    ]
    a = kernel.check(rows)
    b = kernel.check(Packed.lines(b"\n".join(rows) + b"\n"))
    assert a.status.tolist() == b.status.tolist()
    assert a.codes.tolist() == b.codes.tolist()


def test_audit(kernel: Kernel, vectors: Vectors) -> None:
    """The vector chain checks out whole and event by event; a flipped bit anywhere in an
    event's content is named as an edit."""
    from cardmint.kernel import AuditProblem

    rows = vectors("audit.tsv")
    ids = np.array([int(r[1]) for r in rows], dtype=np.int64)
    at = np.array([int(r[2]) for r in rows], dtype=np.int64)
    fields = [bytes.fromhex(f) for r in rows for f in r[3:7]]
    offsets = np.zeros(len(fields) + 1, dtype=np.int64)
    np.cumsum([len(f) for f in fields], out=offsets[1:])
    prevs = b"".join(bytes.fromhex(r[0]) for r in rows)
    hashes = b"".join(bytes.fromhex(r[7]) for r in rows)
    whole = kernel.verify_audit(ids, at, Packed(b"".join(fields), offsets), prevs, hashes)
    assert whole == (len(rows), bytes.fromhex(rows[-1][7]), None, AuditProblem.OK)
    for i, r in enumerate(rows):
        one = [bytes.fromhex(f) for f in r[3:7]]
        packed = Packed(b"".join(one), np.cumsum([0] + [len(f) for f in one]).astype(np.int64))
        args = (ids[i : i + 1], at[i : i + 1], packed, bytes.fromhex(r[0]))
        got = kernel.verify_audit(*args, bytes.fromhex(r[7]), prev_head=bytes.fromhex(r[0]), start=i)
        assert got.ok and got.head.hex() == r[7], r[1]
        bad = bytearray.fromhex(r[7])
        bad[i % 32] ^= 1
        got = kernel.verify_audit(*args, bytes(bad), prev_head=bytes.fromhex(r[0]), start=i)
        assert got == (0, bytes.fromhex(r[0]), 0, AuditProblem.EDITED), r[1]
