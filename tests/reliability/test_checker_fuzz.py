"""Item 10 of issue 5: the checker and the normalizer under every single edit and under fuzzing.

* **Single edits** (docs/code-format.md §2.1, §3, §8): for a sample of minted codes of every
  length 4..31 (with and without a prefix), every substitution by every other symbol, every
  adjacent transposition of two different symbols and the look-alike typings (``O``/``o``
  for ``0``, ``I``/``i``/``L``/``l`` for ``1``, ``U``/``u`` for any symbol, full-width
  forms) are judged by ``check`` and by ``correct`` against an index of the sample. The
  promises: a substitution or transposition is ``BAD_CHECK`` and corrects to the issued code
  (alone: ``CORRECTED``; with another issued code one edit away: ``AMBIGUOUS``, the code
  among the candidates); an alias is the code itself (``OK``); an erasure is ``BAD_CHAR`` to
  ``check`` and ``CORRECTED`` to ``correct``. Misses are counted and must be 0; the three
  backends answer identically. (tests/test_checkchar.py proves detection algebraically for
  every symbol pair with ``validate``; this runs the user-facing path, typed input to
  verdict and correction.)
* **Fuzzing**: a seeded generator of hostile input (full-width and circled forms, zero-width
  and other ignorables, combining marks, any code point including lone surrogates, raw
  invalid UTF-8, inputs at and around the 1,024-byte limit, 1 MiB inputs) plus a hypothesis
  strategy, through the bulk ``normalize``/``check``, the scalar ``check_one`` (``str`` and
  ``bytes``) and ``correct``: every call returns, every status is a documented one, and Rust
  = Cython = Python on every input. tests/test_agreement.py covers the same APIs at unit
  size; this is the ≥ 200,000-execution run.

The Rust core is fuzzed natively as well: ``make fuzz`` (rust/fuzz, cargo-fuzz, nightly).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from cardmint.kernel import ALPHABET, Correction, CorrectionStatus, Kernel, Packed, Status, _normtable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Report, Sizes

SYMS = ALPHABET.encode()
KEY = bytes(range(32))
LENGTHS = range(4, 32)
# What people type for a symbol that is not what they meant (§3 aliases, §8 erasure).
ALIASES = {ord("0"): (b"O", b"o"), ord("1"): (b"I", b"i", b"L", b"l")}
# Full-width forms (U+FF10.. digits, U+FF21.. capitals) of every symbol.
FULL_WIDTH = {c: chr(0xFF10 + c - 0x30 if c < 0x40 else 0xFF21 + c - 0x41).encode() for c in SYMS}


def _edit_corpus(codes: Sequence[bytes]) -> tuple[list[bytes], list[int], list[str]]:
    """(typed inputs, index of the code each came from, kind of edit) for every single
    substitution, adjacent transposition and look-alike typing of each code."""
    typed: list[bytes] = []
    origin: list[int] = []
    kinds: list[str] = []

    def add(raw: bytes, i: int, kind: str) -> None:
        typed.append(raw)
        origin.append(i)
        kinds.append(kind)

    for i, code in enumerate(codes):
        n = len(code)
        for p in range(n):
            for s in SYMS:
                if s != code[p]:
                    add(code[:p] + bytes([s]) + code[p + 1 :], i, "substitution")
            for alias in ALIASES.get(code[p], ()):
                add(code[:p] + alias + code[p + 1 :], i, "alias")
            for erasure in (b"U", b"u", "\uff35".encode()):  # U, u, full-width U
                add(code[:p] + erasure + code[p + 1 :], i, "erasure")
            if p + 1 < n and code[p] != code[p + 1]:
                add(code[:p] + code[p + 1 : p + 2] + code[p : p + 1] + code[p + 2 :], i, "transposition")
        add(b"".join(FULL_WIDTH[c] for c in code), i, "alias")
        add(code.lower(), i, "alias")
    return typed, origin, kinds


def _judge(kind: str, status: int, normalized: bytes, want: bytes) -> bool:
    """Whether ``check`` said what §3/§2.1 promise for this kind of edit."""
    if kind == "alias":
        return status == Status.OK and normalized == want
    if kind == "erasure":
        return status == Status.BAD_CHAR
    return status == Status.BAD_CHECK


def _corrected(kind: str, got: Correction, want: str) -> str:
    """'exact', 'ambiguous' (the code among several candidates) or 'miss' (§8)."""
    if kind == "alias":
        return "exact" if got.status == CorrectionStatus.OK and got.normalized == want else "miss"
    if got.status == CorrectionStatus.CORRECTED and got.candidates == (want,):
        return "exact"
    if kind != "erasure" and got.status == CorrectionStatus.AMBIGUOUS and want in got.candidates:
        return "ambiguous"
    return "miss"


def _sample(kernel: Kernel, length: int, seed: int, per_length: int) -> list[bytes]:
    prefix = "" if length % 2 else ALPHABET[length % 32 : length % 32 + min(2, length - 3)]
    m = kernel.minter(length, prefix, seed=seed.to_bytes(4, "big") * 8)
    return [bytes(c) for c in m.take(per_length).codes.tolist()]


def test_every_single_edit_is_detected_or_corrected(
    all_kernels: list[Kernel], sizes: Sizes, seed: int, report: Report
) -> None:
    per_length = 12 if sizes.soak else 2
    # The Python reference checks ~100x and corrects ~1000x slower than the native kernels:
    # at CI size it judges every 3rd edit with check and every 15th with correct (the
    # natives judge all of them, and all three must agree on the ones the reference saw).
    py_check, py_correct = (1, 1) if sizes.soak else (3, 15)
    natives = [k for k in all_kernels if k.name != "python"]
    reference = next(k for k in all_kernels if k.name == "python")
    tally: Counter[str] = Counter()
    t0 = time.perf_counter()
    for length in LENGTHS:
        codes = _sample(reference, length, seed + length, per_length)
        typed, origin, kinds = _edit_corpus(codes)
        verdicts = []
        for k in natives:
            checked = k.check(typed, length)
            verdicts.append((checked.status.tolist(), checked.codes.tolist()))
        assert all(v == verdicts[0] for v in verdicts[1:]), f"native backends disagree on check at L={length}"
        status, normalized = verdicts[0]
        ref = reference.check(typed[::py_check], length)
        assert ref.status.tolist() == status[::py_check], f"the reference disagrees on check at L={length}"
        assert ref.codes.tolist() == normalized[::py_check], f"the reference disagrees on check at L={length}"
        for kind, st_, norm, i in zip(kinds, status, normalized, origin, strict=True):
            ok = _judge(kind, st_, norm, codes[i])
            tally[f"check_{kind}"] += 1
            tally["check_miss"] += not ok
        tally["executions"] += len(typed) * len(natives) + len(typed[::py_check])
        digests = all_kernels[0].digest(np.array(codes, dtype=f"S{length}"), KEY)
        answers = [k.correct_many(typed, k.index_from(digests), KEY, length) for k in natives]
        assert all(a == answers[0] for a in answers[1:]), f"native backends disagree on correct at L={length}"
        ref_answers = reference.correct_many(typed[::py_correct], reference.index_from(digests), KEY, length)
        assert ref_answers == answers[0][::py_correct], f"the reference disagrees on correct at L={length}"
        tally["executions"] += len(typed) * len(natives) + len(typed[::py_correct])
        for kind, got, i in zip(kinds, answers[0], origin, strict=True):
            outcome = _corrected(kind, got, codes[i].decode())
            tally[f"correct_{outcome}"] += 1
        tally["codes"] += len(codes)
        tally["inputs"] += len(typed)
    elapsed = time.perf_counter() - t0
    report(
        "10-single-edits",
        lengths=f"{LENGTHS.start}..{LENGTHS.stop - 1}",
        codes=tally["codes"],
        inputs=tally["inputs"],
        substitutions=tally["check_substitution"],
        transpositions=tally["check_transposition"],
        aliases=tally["check_alias"],
        erasures=tally["check_erasure"],
        check_misses=tally["check_miss"],
        corrected_exact=tally["correct_exact"],
        corrected_ambiguous=tally["correct_ambiguous"],
        correct_misses=tally["correct_miss"],
        backends="=".join(k.name for k in all_kernels),
        executions=tally["executions"],
        executions_per_s=round(tally["executions"] / elapsed),
    )
    assert tally["check_miss"] == 0
    assert tally["correct_miss"] == 0
    assert tally["correct_exact"] + tally["correct_ambiguous"] == tally["inputs"]


# -- fuzzing -------------------------------------------------------------------------------

_MAPPED = [chr(cp) for cp, _ in _normtable.MAPPED]
_IGNORABLE = [chr(cp) for lo, hi in _normtable.IGNORABLE for cp in range(lo, min(hi, lo + 8) + 1)]
_COMBINING = [chr(cp) for cp in range(0x0300, 0x0370)] + ["\u20dd", "\u20e3", "\ufe0f"]
_ASCII = list(ALPHABET + ALPHABET.lower() + "oOiIlLuU -\t\r\n\x0b\x0c") + [chr(c) for c in range(128)]
_BAD_BYTES = [
    b"\xff",
    b"\xc0\xaf",  # overlong "/"
    b"\xe0\x80\xaf",  # overlong, 3 bytes
    b"\xed\xa0\x80",  # a surrogate, as UTF-8 would write it
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xc3",  # truncated
    b"\xe2\x82",  # truncated
    b"\x80",  # lone continuation
]


class Messy:
    """Hostile typed input from a seeded generator: fast enough for 10^5 inputs a run."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        r = self.rng
        self._pools: list[tuple[int, Callable[[], bytes]]] = [
            (500, lambda: r.choice(_ASCII).encode()),
            (700, lambda: r.choice(_MAPPED).encode()),
            (800, lambda: r.choice(_IGNORABLE).encode()),
            (860, lambda: r.choice(_COMBINING).encode()),
            # Any code point at all; lone surrogates on purpose too.
            (970, lambda: chr(r.randrange(0x110000)).encode("utf-8", "surrogatepass")),
            (975, lambda: chr(r.randrange(0xD800, 0xE000)).encode("utf-8", "surrogatepass")),
            (1000, lambda: r.choice(_BAD_BYTES)),
        ]

    def piece(self) -> bytes:
        kind = self.rng.randrange(1000)
        return next(make for upto, make in self._pools if kind < upto)()

    def one(self, codes: Sequence[bytes]) -> bytes:
        r = self.rng
        shape = r.randrange(1000)
        if shape < 500:  # a real code, a few characters damaged, inserted or made fancy
            parts = [bytes([c]) for c in r.choice(codes)]
            for _ in range(r.randrange(4)):
                at = r.randrange(len(parts) + 1)
                if r.random() < 0.5 and at < len(parts):
                    parts[at] = self.piece()
                else:
                    parts.insert(at, self.piece())
            return b"".join(parts)
        if shape < 970:
            return b"".join(self.piece() for _ in range(r.randrange(48)))
        # Around the 1,024-byte limit, and (one in a thousand) far past it.
        size = r.choice((1023, 1024, 1025, 4096)) if shape < 999 else 1 << 20
        unit = self.piece() or b"A"
        return (unit * (size // len(unit) + 1))[:size]


def _agree(kernels: Sequence[Kernel], inputs: Sequence[bytes], length: int) -> tuple[Counter[str], int]:
    """Bulk normalize and check on every backend, the native ones in list and packed form:
    the same answers everywhere, documented statuses only. (status counts, executions)"""
    offsets = np.zeros(len(inputs) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in inputs], out=offsets[1:])
    packed = Packed(b"".join(inputs), offsets)
    want_n = kernels[0].normalize(inputs, length)
    want_c = kernels[0].check(inputs, length)
    executions = 2 * len(inputs)
    for k in kernels:
        # The reference once, in list form (it is the slow one); the natives in both forms.
        for form in (inputs, packed) if k.name != "python" else ():
            got_n, got_c = k.normalize(form, length), k.check(form, length)
            assert np.array_equal(got_n.status, want_n.status), k.name
            assert np.array_equal(got_n.codes, want_n.codes), k.name
            assert np.array_equal(got_c.status, want_c.status), k.name
            assert np.array_equal(got_c.codes, want_c.codes), k.name
            executions += 2 * len(inputs)
    documented = {int(s) for s in Status}
    statuses = Counter(Status(s).name for s in want_c.status.tolist())
    assert set(want_c.status.tolist()) <= documented
    assert Status.BAD_CHECK not in set(want_n.status.tolist())
    too_long = np.array([len(s) > 1024 for s in inputs])
    assert np.array_equal(want_c.status == Status.TOO_LONG, too_long)
    return statuses, executions


def test_fuzz_normalize_check_correct(
    all_kernels: list[Kernel], sizes: Sizes, seed: int, report: Report
) -> None:
    """An execution is one input through one API call on one backend; the reference goes
    first in ``all_kernels``, so every input is judged by Python, Rust and Cython."""
    rounds = 300 if sizes.soak else 60
    per_round = 1_000
    gen = Messy(seed)
    statuses: Counter[str] = Counter()
    bulk = scalar = corrections = 0
    # An index of issued codes per length, so correct has something to find.
    lengths = (4, 8, 16, 31)
    issued = {n: all_kernels[0].generate(200, n, seed=KEY).codes for n in lengths}
    digests = {n: all_kernels[0].digest(c, KEY) for n, c in issued.items()}
    indexes = {k.name: {n: k.index_from(d) for n, d in digests.items()} for k in all_kernels}
    t0 = time.perf_counter()
    for r in range(rounds):
        if time.perf_counter() > t0 + sizes.limit_s:
            pytest.fail(f"fuzzing still running after {sizes.limit_s} s (round {r} of {rounds})")
        length = lengths[r % len(lengths)]
        codes = [bytes(c) for c in issued[length].tolist()]
        inputs = [gen.one(codes) for _ in range(per_round)]
        counts, done = _agree(all_kernels, inputs, length)
        statuses += counts
        bulk += done
        # The scalar path, with str (lone surrogates included: BAD_UTF8) and bytes, and
        # correct, on a slice of each round.
        few = inputs[:: 10 if sizes.soak else 40]
        as_str = [s.decode("utf-8", "surrogateescape") for s in few]
        answers = [
            (
                [k.check_one(s, length) for s in few],
                [k.check_one(s, length) for s in as_str],
                k.correct_many([*few, *as_str], indexes[k.name][length], KEY, length),
            )
            for k in all_kernels
        ]
        assert all(a == answers[0] for a in answers[1:]), f"backends disagree on check_one/correct, round {r}"
        assert {int(c.status) for c in answers[0][2]} <= {int(s) for s in CorrectionStatus}
        scalar += 2 * len(few) * len(all_kernels)
        corrections += 2 * len(few) * len(all_kernels)
    elapsed = time.perf_counter() - t0
    total = bulk + scalar + corrections
    report(
        "10-fuzz",
        inputs=rounds * per_round,
        executions=total,
        bulk=bulk,
        scalar=scalar,
        correct=corrections,
        crashes=0,
        disagreements=0,
        statuses="/".join(f"{k}:{v}" for k, v in sorted(statuses.items())),
        executions_per_s=round(total / elapsed),
    )
    assert total >= 200_000


# Hypothesis: arbitrary str (surrogates included), shrinkable, on top of the generator above.
CHARS = st.one_of(
    st.characters(),  # any code point hypothesis likes, incl. lone surrogates below
    st.characters(categories=["Cs"]),
    st.sampled_from(_MAPPED[:2000] + _IGNORABLE + _COMBINING),
    st.sampled_from(list(ALPHABET + "oOiIlLuU-")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(CHARS, max_size=40), min_size=1, max_size=40), st.sampled_from([4, 9, 16, 31]))
def test_hypothesis_strings_agree(all_kernels: list[Kernel], texts: list[str], length: int) -> None:
    raw = [t.encode("utf-8", "surrogatepass") for t in texts]
    _agree(all_kernels, raw, length)
    # numpy drops trailing NULs from a str array's items: compare with what it holds.
    arr = np.array(texts, dtype=f"U{max(1, *(len(t) for t in texts))}")
    want = all_kernels[0].check([t.rstrip("\x00").encode("utf-8", "surrogatepass") for t in texts], length)
    for k in all_kernels:
        got = k.check(arr, length)  # a str array: encoded with surrogatepass by the face
        assert np.array_equal(got.status, want.status) and np.array_equal(got.codes, want.codes), k.name
        assert [k.check_one(t, length) for t in texts] == [all_kernels[0].check_one(t, length) for t in texts]
