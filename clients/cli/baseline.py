"""The plain-Python baseline `cardmint bench` compares against.

This is how a careful engineer writes the job by hand without a kernel: `secrets` for
randomness, a set for uniqueness, the `blake3` package for keyed digests, a dict as the
index, `unicodedata` for normalization. It produces the same codes format (alphabet, GF(32)
check symbol) so the comparison is like for like; it is deliberately idiomatic, not
deliberately slow.
"""

from __future__ import annotations

import secrets
import unicodedata

import blake3

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
VALUE = {c: i for i, c in enumerate(ALPHABET)}
ALIASES = str.maketrans({"O": "0", "I": "1", "L": "1"})
DROP = dict.fromkeys(map(ord, " -\t\r\n\u00a0\u3000\u200b\u200c\u200d\ufeff"))

# GF(32) multiplication table by the weight of each position from the end.
_EXP = [1]
for _ in range(30):
    v = _EXP[-1] << 1
    _EXP.append(v ^ 0x25 if v & 0x20 else v)
_LOG = {e: i for i, e in enumerate(_EXP)}
MUL = [[0 if a == 0 or b == 0 else _EXP[(_LOG[a] + _LOG[b]) % 31] for b in range(32)] for a in range(32)]


def check_char(body: str) -> str:
    n = len(body) + 1
    acc = 0
    for i, ch in enumerate(body):
        acc ^= MUL[_EXP[(n - 1 - i) % 31]][VALUE[ch]]
    return ALPHABET[acc]


def is_valid(code: str) -> bool:
    return check_char(code[:-1]) == code[-1]


def mint(count: int, length: int = 16) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        body = "".join(secrets.choice(ALPHABET) for _ in range(length - 1))
        code = body + check_char(body)
        if code not in seen:
            seen.add(code)
            out.append(code)
    return out


def mint_digest(count: int, key: bytes, length: int = 16) -> tuple[list[str], list[bytes]]:
    codes = mint(count, length)
    return codes, digest(codes, key)


def digest(codes: list[str], key: bytes) -> list[bytes]:
    return [blake3.blake3(c.encode(), key=key).digest(16) for c in codes]


def normalize_check(raw: str, length: int = 16) -> str | None:
    s = unicodedata.normalize("NFKC", raw).upper().translate(DROP).translate(ALIASES)
    if len(s) != length or any(c not in VALUE for c in s):
        return None
    return s if is_valid(s) else None


def build_index(digests: list[bytes]) -> dict[bytes, int]:
    return {d: i for i, d in enumerate(digests)}


def lookup(index: dict[bytes, int], digests: list[bytes]) -> list[int]:
    return [index.get(d, -1) for d in digests]


def correct(raw: str, index: dict[bytes, int], key: bytes, length: int = 16) -> str | None:
    s = unicodedata.normalize("NFKC", raw).upper().translate(DROP).translate(ALIASES)
    found = []
    for p in range(len(s)):
        for c in ALPHABET:
            if c != s[p]:
                cand = s[:p] + c + s[p + 1 :]
                if is_valid(cand) and blake3.blake3(cand.encode(), key=key).digest(16) in index:
                    found.append(cand)
    for p in range(len(s) - 1):
        cand = s[:p] + s[p + 1] + s[p] + s[p + 2 :]
        if cand != s and is_valid(cand) and blake3.blake3(cand.encode(), key=key).digest(16) in index:
            found.append(cand)
    return found[0] if len(found) == 1 else None


def keys_check(issued_lines: list[str], input_lines: list[str], key: bytes) -> list[str]:
    """`cardmint keys check --issued` by hand: a dict of issued digests, then each line."""
    issued = build_index(digest([c for c in (normalize_check(x) for x in issued_lines) if c], key))
    out = []
    for line in input_lines:
        code = normalize_check(line)
        if code is None:
            out.append("bad\t\t")
        elif blake3.blake3(code.encode(), key=key).digest(16) in issued:
            out.append(f"ok\t{code}\t")
        else:
            out.append(f"unknown\t{code}\t")
    return out
