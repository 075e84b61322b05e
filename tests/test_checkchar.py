"""Exhaustive proof that the check symbol catches every single substitution and every
adjacent transposition, for every code length, position and symbol pair; the same for the
Verhoeff digit of serials.

The codes are built with an independent transcription of the GF(32) arithmetic of
docs/code-format.md §2.1 and judged by each backend's bulk ``validate``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from cardmint.kernel import ALPHABET, Kernel

SYMS = ALPHABET.encode()

# GF(32) with x^5 + x^2 + 1, written out again here on purpose.
EXP = [1]
for _ in range(61):
    v = EXP[-1] << 1
    EXP.append(v ^ 0x25 if v & 0x20 else v)
LOG = {EXP[i]: i for i in range(31)}


def mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else EXP[LOG[a] + LOG[b]]


def syndrome(vals: list[int]) -> int:
    n = len(vals)
    acc = 0
    for i, v in enumerate(vals):
        acc ^= mul(EXP[(n - 1 - i) % 31], v)
    return acc


def make_valid(vals: list[int], free: int) -> list[int]:
    """Set the symbol at ``free`` so the whole code is valid."""
    vals = vals.copy()
    vals[free] = 0
    s = syndrome(vals)
    w = EXP[(len(vals) - 1 - free) % 31]
    vals[free] = 0 if s == 0 else EXP[(LOG[s] - LOG[w]) % 31]
    assert syndrome(vals) == 0
    return vals


def codes_with_single_edits(length: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """(valid bases, every single substitution and adjacent transposition of them).

    For each position p and each ordered symbol pair (a, b), a ≠ b, a base holds a at p
    (and b at p+1 for the transposition), and the edited code has b at p (or the two
    swapped). Every (position, pair) combination appears."""
    rng = np.random.default_rng(seed)
    bases: list[bytes] = []
    edited: list[bytes] = []
    for p in range(length):
        for a in range(32):
            vals = rng.integers(0, 32, length).tolist()
            vals[p] = a
            base = make_valid(vals, (p + 1) % length)
            if base[p] != a:  # the free symbol was p itself only when length == 1
                raise AssertionError
            bases.append(bytes(SYMS[v] for v in base))
            for b in range(32):
                if b != a:
                    sub = base.copy()
                    sub[p] = b
                    edited.append(bytes(SYMS[v] for v in sub))
    for p in range(length - 1):
        for a, b in itertools.permutations(range(32), 2):
            vals = rng.integers(0, 32, length).tolist()
            vals[p], vals[p + 1] = a, b
            base = make_valid(vals, (p + 2) % length)
            swapped = base.copy()
            swapped[p], swapped[p + 1] = b, a
            bases.append(bytes(SYMS[v] for v in base))
            edited.append(bytes(SYMS[v] for v in swapped))
    return bases, edited


def _lengths(kernel: Kernel) -> range | tuple[int, ...]:
    # The Python reference is ~1000x slower; it covers the shortest, default and longest.
    return range(4, 32) if kernel.name != "python" else (4, 16, 31)


def test_every_single_edit_is_caught(kernel: Kernel) -> None:
    total = 0
    for length in _lengths(kernel):
        bases, edited = codes_with_single_edits(length, seed=length)
        assert kernel.validate(np.array(bases, dtype=f"S{length}")).all(), length
        caught = ~kernel.validate(np.array(edited, dtype=f"S{length}"))
        assert caught.all(), f"length {length}: {np.flatnonzero(~caught)[:5]} slipped through"
        # Every position x every ordered pair, for substitutions and transpositions.
        assert len(edited) == length * 32 * 31 + (length - 1) * 32 * 31
        total += len(edited)
    print(f"{kernel.name}: {total} single edits, all caught")


def test_weights_are_distinct_so_any_transposition_is_caught() -> None:
    """The algebraic argument of code-format §2.1, checked for every length."""
    for length in range(2, 32):
        weights = [EXP[(length - 1 - i) % 31] for i in range(length)]
        assert len(set(weights)) == length and 0 not in weights


# ---- Verhoeff serials
D = [[0] * 10 for _ in range(10)]
for j in range(10):
    for k in range(10):
        if j < 5 and k < 5:
            D[j][k] = (j + k) % 5
        elif j < 5:
            D[j][k] = 5 + (j + k - 5) % 5
        elif k < 5:
            D[j][k] = 5 + (j - 5 - k) % 5
        else:
            D[j][k] = (j - k) % 5


def test_verhoeff_table_is_the_dihedral_group() -> None:
    for a, b, c in itertools.product(range(10), repeat=3):
        assert D[D[a][b]][c] == D[a][D[b][c]]
    assert all(sorted(row) == list(range(10)) for row in D)


@pytest.mark.parametrize("width", [1, 4, 9])
def test_every_single_serial_edit_is_caught(kernel: Kernel, width: int) -> None:
    """Every position (prefix, sequence number, check digit) x every digit a x every
    other digit b, plus the adjacent swap at every position."""
    rng = np.random.default_rng(width)
    for plen in (0, 3):
        n = plen + width + 1
        bases: list[bytes] = []
        for p in range(n):
            for a in range(10):
                prefix = [int(d) for d in rng.integers(0, 10, plen)]
                seq = [int(d) for d in rng.integers(0, 10, width)]
                if p < plen:
                    prefix[p] = a
                elif p < plen + width:
                    seq[p - plen] = a
                pre = "".join(map(str, prefix))
                num = int("".join(map(str, seq)))
                if p < plen + width:
                    base = kernel.serials(pre, num, 1, width).tolist()[0]
                else:  # the ten last digits give the ten check digits: pick the one ending in a
                    run = kernel.serials(pre, num - num % 10, 10, width).tolist()
                    base = next(s for s in run if s[-1] - 48 == a)
                assert base[p] - 48 == a
                bases.append(base)
        edited = [
            b[:p] + bytes([48 + x]) + b[p + 1 :]
            for b in bases
            for p in range(n)
            for x in range(10)
            if x != b[p] - 48
        ]
        edited += [
            b[:p] + b[p + 1 : p + 2] + b[p : p + 1] + b[p + 2 :]
            for b in bases
            for p in range(n - 1)
            if b[p] != b[p + 1]
        ]
        assert len(bases) == 10 * n
        assert kernel.validate_serials(np.array(bases, dtype=f"S{n}")).all()
        assert not kernel.validate_serials(np.array(edited, dtype=f"S{n}")).any()


def test_verhoeff_catches_every_adjacent_transposition_exhaustively() -> None:
    """All 10x10 digit pairs at every position of a 12-digit body, algebraically:
    the running value after the pair differs when the pair is swapped."""
    sigma = [1, 5, 7, 6, 2, 8, 3, 0, 9, 4]

    def p(i: int, n: int) -> int:
        for _ in range(i % 8):
            n = sigma[n]
        return n

    for pos in range(12):
        for a, b in itertools.permutations(range(10), 2):
            for c in range(10):  # the running value before the pair
                x = D[D[c][p(pos, a)]][p(pos + 1, b)]
                y = D[D[c][p(pos, b)]][p(pos + 1, a)]
                assert x != y, (pos, a, b, c)
