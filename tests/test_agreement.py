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
