"""Properties of the kernel, and Rust = Cython = Python on random input."""

from __future__ import annotations

import numpy as np
from cardmint.kernel import ALPHABET, Kernel, Packed, Status
from hypothesis import assume, given
from hypothesis import strategies as st

from .test_checkchar import codes_with_single_edits

# Characters people paste: the alphabet in both cases, aliases, separators, invisible and
# full-width forms, look-alikes outside the alphabet, and anything else Unicode has.
MESSY = st.one_of(
    st.sampled_from(list(ALPHABET + ALPHABET.lower() + "oOiIlLuU -\t\r")),
    st.sampled_from(
        ["\u00a0", "\u3000", "\u200b", "\u200c", "\u200d", "\ufeff", "\u00ad", "\u2013", "\ufe0f"]
    ),
    st.sampled_from([chr(c) for c in range(0xFF10, 0xFF5B)]),
    st.characters(codec="utf-8"),
)
TEXT = st.lists(MESSY, max_size=40).map("".join)
RAW = st.one_of(TEXT.map(lambda s: s.encode("utf-8")), st.binary(max_size=48))
SEEDS = st.binary(min_size=32, max_size=32)


def _codes(kernel: Kernel, seed: bytes, n: int, length: int = 16) -> np.ndarray:
    return kernel.generate(n, length, seed=seed).codes


@given(st.lists(RAW, max_size=30), st.sampled_from([4, 5, 16, 31]))
def test_backends_agree_on_normalize_and_check(
    all_kernels: list[Kernel], inputs: list[bytes], length: int
) -> None:
    ref = all_kernels[0]
    want_n = ref.normalize(inputs, length)
    want_c = ref.check(inputs, length)
    for k in all_kernels[1:]:
        got = k.normalize(inputs, length)
        assert got.status.tolist() == want_n.status.tolist(), k.name
        assert got.codes.tolist() == want_n.codes.tolist(), k.name
        got = k.check(inputs, length)
        assert got.status.tolist() == want_c.status.tolist(), k.name
        assert got.codes.tolist() == want_c.codes.tolist(), k.name
        assert [k.check_one(r, length) for r in inputs] == [ref.check_one(r, length) for r in inputs]


@given(TEXT, st.sampled_from([4, 16, 31]))
def test_normalize_is_idempotent(kernel: Kernel, text: str, length: int) -> None:
    first = kernel.normalize([text], length)
    if first.status[0] == Status.OK:
        again = kernel.normalize(first.codes, length)
        assert again.status[0] == Status.OK and again.codes[0] == first.codes[0]


@given(SEEDS, st.integers(4, 31), st.integers(0, 3), st.booleans(), st.integers(1, 200))
def test_backends_agree_on_minting(
    all_kernels: list[Kernel], seed: bytes, length: int, plen: int, unique: bool, n: int
) -> None:
    prefix = ALPHABET[7 : 7 + min(plen, length - 2)]
    r = length - len(prefix) - 1
    n = min(n, (1 << (5 * r)) // 2)
    outs = []
    for k in all_kernels:
        m = k.minter(length, prefix, seed=seed, unique=unique)
        outs.append(np.concatenate([m.take(n // 2).codes, m.take(n - n // 2).codes]))
    for k, out in zip(all_kernels[1:], outs[1:], strict=True):
        assert out.tolist() == outs[0].tolist(), k.name
    codes = outs[0]
    assert all(c.startswith(prefix.encode()) for c in codes.tolist())
    if unique:
        assert len(set(codes.tolist())) == len(codes)


@given(SEEDS, st.integers(4, 31), st.integers(1, 300))
def test_every_minted_code_validates(kernel: Kernel, seed: bytes, length: int, n: int) -> None:
    n = min(n, (1 << (5 * (length - 1))) // 2)
    codes = kernel.generate(n, length, seed=seed).codes
    assert kernel.validate(codes).all()
    assert all(set(c.decode()) <= set(ALPHABET) for c in codes.tolist())


@given(SEEDS, st.sampled_from([4, 9, 16, 31]), st.data())
def test_every_single_edit_of_a_minted_code_is_caught(
    kernel: Kernel, seed: bytes, length: int, data: st.DataObject
) -> None:
    code = bytearray(kernel.generate(1, length, seed=seed).codes[0])
    p = data.draw(st.integers(0, length - 1))
    if data.draw(st.booleans()) and p < length - 1:
        assume(code[p] != code[p + 1])
        code[p], code[p + 1] = code[p + 1], code[p]
    else:
        other = data.draw(st.sampled_from([c for c in ALPHABET.encode() if c != code[p]]))
        code[p] = other
    assert not kernel.validate(np.array([bytes(code)], dtype=f"S{length}"))[0]


@given(SEEDS, st.integers(8, 32), st.lists(st.integers(4, 31), min_size=1, max_size=6))
def test_backends_agree_on_digest_seal_display(
    all_kernels: list[Kernel], key: bytes, size: int, lengths: list[int]
) -> None:
    for length in lengths:
        codes = all_kernels[0].generate(5, length, seed=key).codes
        nonces = np.frombuffer(key[:12] * 5, dtype=np.uint8).reshape(5, 12)
        want_d = all_kernels[0].digest(codes, key, size)
        want_s = all_kernels[0].seal(codes, want_d, key, nonces)
        for k in all_kernels[1:]:
            assert k.digest(codes, key, size).tobytes() == want_d.tobytes(), k.name
            assert k.seal(codes, want_d, key, nonces).tobytes() == want_s.tobytes(), k.name
            assert k.open(want_s, want_d, key).tolist() == codes.tolist(), k.name
            for g in (0, 3, 4):
                assert k.display(codes, g).tolist() == all_kernels[0].display(codes, g).tolist()


@given(SEEDS, st.sampled_from([8, 16, 31]), st.data())
def test_backends_agree_on_correction(
    all_kernels: list[Kernel], key: bytes, length: int, data: st.DataObject
) -> None:
    issued = all_kernels[0].generate(30, length, seed=key).codes
    digests = all_kernels[0].digest(issued, key)
    typed = bytearray(issued[data.draw(st.integers(0, 29))])
    for _ in range(data.draw(st.integers(0, 2))):
        typed[data.draw(st.integers(0, length - 1))] = data.draw(st.sampled_from(list(b"0123ABUVZ8BS")))
    raw = data.draw(st.sampled_from([bytes(typed), bytes(typed).lower(), b" " + bytes(typed) + b"-"]))
    results = []
    for k in all_kernels:
        idx = k.index_from(digests)
        results.append(k.correct(raw, idx, key, length))
    for k, res in zip(all_kernels[1:], results[1:], strict=True):
        assert res == results[0], k.name


def test_backends_agree_on_every_code_point(all_kernels: list[Kernel]) -> None:
    """All 1,114,112 code points (surrogates as their UTF-8-ish bytes), each padded with
    0..3 zeros so that a mapping to 1..4 symbols shows up as a 4-symbol code. The native
    backends must agree with each other everywhere, with the reference on a sample (every
    61st code point and every table entry), and with the table itself."""
    from cardmint.kernel import _normtable

    pads = (b"", b"0", b"00", b"000")
    cps = range(0x110000)
    rows = [chr(cp).encode("utf-8", "surrogatepass") + pad for cp in cps for pad in pads]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    packed = Packed(b"".join(rows), offsets)
    table = {cp for cp, _ in _normtable.MAPPED} | {lo for lo, _ in _normtable.IGNORABLE}
    sample = sorted(set(cps[::61]) | table | {0xD800, 0xDFFF})
    idx = np.array([4 * cp + j for cp in sample for j in range(4)])
    ref = all_kernels[0].normalize([rows[i] for i in idx], 4)
    natives = [k.normalize(packed, 4) for k in all_kernels[1:]]
    for k, got in zip(all_kernels[1:], natives, strict=True):
        assert got.status[idx].tolist() == ref.status.tolist(), k.name
        assert got.codes[idx].tolist() == ref.codes.tolist(), k.name
        assert np.array_equal(got.status, natives[0].status), k.name
        assert np.array_equal(got.codes, natives[0].codes), k.name
    # And the reference reads the table as written.
    status = dict(zip(idx.tolist(), ref.status.tolist(), strict=True))
    codes = dict(zip(idx.tolist(), ref.codes.tolist(), strict=True))
    for cp, mapped in _normtable.MAPPED:
        m = mapped.replace("O", "0").replace("I", "1").replace("L", "1")
        if "U" not in m and len(m) <= 4:
            j = 4 - len(m)
            assert status[4 * cp + j] == Status.OK and codes[4 * cp + j] == (m + "0" * j).encode(), hex(cp)
    for lo, _ in _normtable.IGNORABLE:
        assert status[4 * lo + 3] == Status.BAD_LENGTH  # dropped, leaving "000"


def test_single_edit_corpus_is_complete() -> None:
    bases, edited = codes_with_single_edits(4, seed=1)
    assert len(bases) == 4 * 32 + 3 * 32 * 31
    assert len(edited) == 4 * 32 * 31 + 3 * 32 * 31


# -- the audit chain: verify_audit -------------------------------------------------------

AUDIT_TEXT = st.one_of(st.text(max_size=12), st.text(min_size=300, max_size=400), st.just("\x1f"))
AUDIT_EVENT = st.tuples(st.integers(-(2**55), 2**55), st.lists(AUDIT_TEXT, min_size=4, max_size=4))
TAMPER = st.sampled_from(["none", "field", "at", "delete", "swap", "link", "hash"])


def _audit_columns(
    events: list[tuple[int, list[str]]], start: int, head: bytes
) -> tuple[np.ndarray, np.ndarray, list[bytes], list[bytes], list[bytes]]:
    """A chain of ``events`` after ``start`` events ending in ``head``, hashed by the
    storage's own (independent) function."""
    from cardmint.server.storage import audit_hash_us

    ids = np.arange(start + 1, start + len(events) + 1, dtype=np.int64)
    at = np.array([t for t, _ in events], dtype=np.int64)
    fields, prevs, hashes = [], [], []
    for seq, (t, f) in zip(ids.tolist(), events, strict=True):
        prevs.append(head)
        head = audit_hash_us(head, seq, t, *f)
        hashes.append(head)
        fields += [x.encode("utf-8", "surrogatepass") for x in f]
    return ids, at, fields, prevs, hashes


def _pack(fields: list[bytes]) -> Packed:
    offsets = np.zeros(len(fields) + 1, dtype=np.int64)
    np.cumsum([len(f) for f in fields], out=offsets[1:])
    return Packed(b"".join(fields), offsets)


@given(
    st.lists(AUDIT_EVENT, max_size=10),
    st.integers(0, 2**40),
    st.binary(min_size=32, max_size=32),
    TAMPER,
    st.data(),
)
def test_backends_agree_on_verify_audit(
    all_kernels: list[Kernel],
    events: list[tuple[int, list[str]]],
    start: int,
    head: bytes,
    tamper: str,
    data: st.DataObject,
) -> None:
    from cardmint.kernel import AuditProblem

    events = [
        (t, [f.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for f in fs]) for t, fs in events
    ]
    ids, at, fields, prevs, hashes = _audit_columns(events, start, head)
    n = len(events)
    want: tuple[int, bytes, int | None, AuditProblem] = (
        n,
        hashes[-1] if events else head,
        None,
        AuditProblem.OK,
    )
    if tamper != "none" and n:
        i = data.draw(st.integers(0, n - 1), label="row")
        if tamper == "field":
            j = 4 * i + data.draw(st.integers(0, 3), label="field")
            fields[j] = fields[j] + b"!"
            want = (i, prevs[i], i, AuditProblem.EDITED)
        elif tamper == "at":
            at[i] += 1
            want = (i, prevs[i], i, AuditProblem.EDITED)
        elif tamper == "delete":
            before = prevs[i]
            ids, at = np.delete(ids, i), np.delete(at, i)
            del fields[4 * i : 4 * i + 4], prevs[i], hashes[i]
            if i == n - 1:  # a shorter chain that still links (the anchor catches it)
                want = (n - 1, hashes[-1] if hashes else head, None, AuditProblem.OK)
            else:
                want = (i, before, i, AuditProblem.MISSING)
        elif tamper == "swap" and n >= 2:
            i = min(i, n - 2)
            ids[i], ids[i + 1] = ids[i + 1], ids[i]
            want = (i, prevs[i], i, AuditProblem.MISSING)
        elif tamper == "link":
            prevs[i] = bytes(b ^ 1 for b in prevs[i])
            want = (i, hashes[i - 1] if i else head, i, AuditProblem.UNLINKED)
        elif tamper == "hash":
            hashes[i] = bytes(b ^ 0x80 for b in hashes[i])
            want = (i, hashes[i - 1] if i else head, i, AuditProblem.EDITED)
    ref = all_kernels[0].verify_audit(
        ids, at, _pack(fields), b"".join(prevs), b"".join(hashes), prev_head=head, start=start
    )
    assert tuple(ref) == want
    for k in all_kernels[1:]:
        got = k.verify_audit(
            ids, at, _pack(fields), b"".join(prevs), b"".join(hashes), prev_head=head, start=start, threads=2
        )
        assert got == ref, k.name


def test_verify_audit_in_parallel_names_the_first_bad_event(all_kernels: list[Kernel]) -> None:
    """Enough events to be split over threads, with two bad ones: the lower one is named."""
    from cardmint.kernel import AuditProblem

    events = [
        (1_764_000_000_000_000 + i, [f"token:{i % 3}", "card.bind", f"card:{i}", "{}"]) for i in range(20_000)
    ]
    ids, at, fields, prevs, hashes = _audit_columns(events, 0, bytes(32))
    fields[4 * 12_345 + 2] = b"card:x"
    fields[4 * 17_000 + 2] = b"card:y"
    for k in all_kernels[1:]:
        got = k.verify_audit(ids, at, _pack(fields), b"".join(prevs), b"".join(hashes), threads=2)
        assert got == (12_345, hashes[12_344], 12_345, AuditProblem.EDITED), k.name
