"""Write the shared test vectors (tests/vectors/) from the pure-Python reference kernel.

    python -m cardmint.kernel.tools.gen_vectors OUTDIR

pytest and `cargo test` read these files and every backend must reproduce them; a pytest
test regenerates them and fails when the committed copies drifted (so a change of the
reference's behaviour is always a visible, reviewed change of the vectors).
Format: tab-separated text, one case per line, `#` lines are comments; binary fields are
lower-case hex, lists are comma-separated.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from cardmint.kernel import _pyref as ref

ALPHABET = ref.ALPHABET.decode()


def _keys(n: int, rng: random.Random) -> list[bytes]:
    return [bytes(32), bytes(range(32))] + [rng.randbytes(32) for _ in range(n - 2)]


def _code(rng: random.Random, length: int, prefix: str = "") -> str:
    body = prefix + "".join(rng.choice(ALPHABET) for _ in range(length - len(prefix) - 1))
    return body + chr(ref.check_symbol(body.encode()))


def checkchar(rng: random.Random) -> list[str]:
    rows = ["# payload\tcheck symbol (code-format §2.1)"]
    for n in range(1, 31):
        payloads = ["0" * n, "Z" * n, (ALPHABET * 2)[:n]]
        payloads += ["".join(rng.choice(ALPHABET) for _ in range(n)) for _ in range(6)]
        rows += [f"{p}\t{chr(ref.check_symbol(p.encode()))}" for p in payloads]
    return rows


def _messy_inputs(rng: random.Random) -> list[tuple[bytes, int]]:
    code = _code(rng, 16)
    fw = "".join(chr(ord(c) + 0xFEE0) for c in code)  # full-width forms
    cases: list[str | bytes] = [
        code,
        code.lower(),
        "-".join(code[i : i + 4] for i in range(0, 16, 4)),
        " " + " ".join(code[i : i + 4] for i in range(0, 16, 4)) + " \r",
        fw,
        "\ufeff" + code,
        code[:8] + "\u200b" + code[8:],
        code[:4] + "\u00a0" + code[4:8] + "\u3000" + code[8:] + "\u200d",
        code[:5] + "\u2013" + code[5:],  # en dash
        code[:5] + "\ufe0f" + code[5:],  # variation selector
        code.replace("0", "O").replace("1", "I"),
        code.replace("1", "l"),
        code[:3] + "U" + code[4:],
        code[:3] + "*" + code[4:],
        code[:3] + "\u00e9" + code[4:],  # é
        code[:3] + "A\u0301" + code[5:],  # combining acute
        "\U0001d40a" + code[1:],  # mathematical bold K
        "\u212a" + code[1:],  # Kelvin sign
        "\u2460" + code[1:],  # circled digit one
        "\u216b" + code[3:],  # Roman numeral twelve -> XII
        "\u00df" + code[2:],  # sharp s: NFKC keeps it, so bad
        "\u0131" + code[1:],  # dotless i: not ASCII after NFKC, bad
        "",
        "   ",
        "----",
        "\u200b\ufeff",
        code[:15],
        code + "0",
        code[:8],
        "x" * 1025,
        " " * 1024,
        " " * 1025,
        b"\xff" + code.encode(),
        b"\xc0\xaf" + code.encode(),  # overlong "/"
        b"\xed\xa0\x80" + code.encode(),  # encoded surrogate
        code.encode() + b"\xe2\x82",  # truncated sequence
        b"\xf4\x90\x80\x80",  # above U+10FFFF
        code.encode() + b"\x00",
        "\t" + code + "\n",
        code[:-1] + ("0" if code[-1] != "0" else "1"),  # wrong check symbol
        code[1] + code[0] + code[2:] if code[0] != code[1] else code[::-1],
    ]
    out = [(c.encode("utf-8") if isinstance(c, str) else c, 16) for c in cases]
    # Other lengths, with and without junk.
    for length in (4, 5, 8, 12, 20, 31):
        c = _code(rng, length)
        out += [(c.encode(), length), (c.lower().encode(), length), (("  " + c + "-").encode(), length)]
        out += [(c.encode(), 16)]
    # Random soup of every kind of piece.
    pieces = [*ALPHABET, "o", "i", "l", "u", " ", "-", "\u3000", "\u200b", "\uff21", "\uff10", "\u00e9", "*"]
    for _ in range(120):
        s = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 22)))
        out.append((s.encode(), 16))
    return out


def normalize_and_check(rng: random.Random) -> tuple[list[str], list[str]]:
    head = "# input (hex)\tlength\tstatus\tcode (empty when not OK{})"
    norm = [head.format("")]
    chk = [head.format(" or BAD_CHECK")]
    for raw, length in _messy_inputs(rng):
        st, code = ref._normalize_one(raw, length)
        norm.append(f"{raw.hex()}\t{length}\t{st}\t{code.decode()}")
        st, code = ref._check_one(raw, length)
        chk.append(f"{raw.hex()}\t{length}\t{st}\t{code.decode()}")
    return norm, chk


def mint(rng: random.Random) -> list[str]:
    rows = ["# seed (hex)\tlength\tprefix\tunique (0/1)\tfill sizes\tcodes of all fills, in order"]
    cases = [
        (16, "", 1, [5, 0, 7]),
        (16, "", 0, [4]),
        (16, "GC", 1, [6]),
        (31, "", 1, [3, 2]),
        (17, "", 1, [4]),  # r = 13: 65 bits, fingerprint drops 1 bit
        (16, "ABC", 1, [4]),  # r = 12: 60 bits, exact fingerprint
        (5, "", 1, [300, 700]),  # r = 4: 2^20 codes, duplicates are common
        (5, "", 0, [400]),
        (6, "7", 1, [1000]),
        (4, "AB", 1, [16]),  # r = 1: exactly half of the 32 payloads
        (8, "", 1, [1, 1, 1, 1]),
    ]
    for k, (length, prefix, unique, fills) in enumerate(cases):
        seed = bytes(32) if k == 0 else rng.randbytes(32)
        m = ref.Minter(length, prefix.encode(), seed, bool(unique))
        codes = b"".join(m.fill(n) for n in fills)
        listed = [codes[i : i + length].decode() for i in range(0, len(codes), length)]
        rows.append(
            f"{seed.hex()}\t{length}\t{prefix}\t{unique}\t{','.join(map(str, fills))}\t{','.join(listed)}"
        )
    return rows


def digest(rng: random.Random) -> list[str]:
    rows = ["# key (hex)\tsize\tcode\tdigest (hex)"]
    for key in _keys(4, rng):
        for size in (8, 16, 20, 32):
            for length in (4, 16, 31):
                c = _code(rng, length)
                rows.append(f"{key.hex()}\t{size}\t{c}\t{ref.digest_one(c.encode(), key, size).hex()}")
    return rows


def seal(rng: random.Random) -> list[str]:
    rows = ["# key (hex)\tcode\tdigest (hex)\tnonce (hex)\tsealed record (hex): nonce|ciphertext|tag"]
    for key in _keys(3, rng):
        for length, size in ((16, 16), (4, 8), (31, 32)):
            c = _code(rng, length).encode()
            d = ref.digest_one(c, key, size)
            n = rng.randbytes(12)
            s = ref.seal(c, length, d, size, key, n)
            rows.append(f"{key.hex()}\t{c.decode()}\t{d.hex()}\t{n.hex()}\t{bytes(s).hex()}")
    return rows


def serial(rng: random.Random) -> list[str]:
    rows = ["# prefix\tstart\tcount\twidth\tserials"]
    for prefix, start, count, width in (
        ("", 0, 10, 1),
        ("", 0, 12, 2),
        ("100", 0, 5, 9),
        ("8", 999_999_995, 5, 9),
        ("42", 12345, 3, 18),
    ):
        s = ref.serials(prefix.encode(), start, count, width)
        n = len(prefix) + width + 1
        listed = [s[i : i + n].decode() for i in range(0, len(s), n)]
        rows.append(f"{prefix}\t{start}\t{count}\t{width}\t{','.join(listed)}")
    return rows


def serial_validate(rng: random.Random) -> list[str]:
    rows = ["# serial\tvalid (0/1)"]
    good = bytes(ref.serials(b"7311", 0, 20, 8))
    for i in range(0, len(good), 13):
        s = good[i : i + 13].decode()
        rows.append(f"{s}\t1")
        bad = s[:5] + str((int(s[5]) + 1) % 10) + s[6:]
        rows.append(f"{bad}\t{ref.validate_serials(bad.encode(), 13)[0]}")
    for s in ("0000000000000", "12345678901x3", "1234567890123"):
        rows.append(f"{s}\t{ref.validate_serials(s.encode(), 13)[0]}")
    return rows


def display(rng: random.Random) -> list[str]:
    rows = ["# length\tgroup\tcode\tdisplayed"]
    for length in (4, 5, 16, 17, 31):
        c = _code(rng, length)
        for group in (0, 1, 3, 4, 5, length, 31):
            d = ref.display(c.encode(), length, group).decode()
            rows.append(f"{length}\t{group}\t{c}\t{d}")
    return rows


def correct(rng: random.Random) -> list[str]:
    rows = ["# key (hex)\tsize\tlength\tissued codes\tinput (hex)\tstatus\tnormalized\tcandidates in order"]
    key = rng.randbytes(32)
    for length in (16, 8, 31):
        issued = [_code(rng, length) for _ in range(40)]
        a = issued[0]
        # Lookalike typo: B -> 8 etc.
        pos = next((i for i, ch in enumerate(a[:-1]) if ch in "8B5S2Z6G"), 0)
        swap = {"8": "B", "B": "8", "5": "S", "S": "5", "2": "Z", "Z": "2", "6": "G", "G": "6"}
        typo_alike = a[:pos] + swap.get(a[pos], "X" if a[pos] != "X" else "Y") + a[pos + 1 :]
        b = issued[1]
        typo_swap = b[:2] + b[3] + b[2] + b[4:] if b[2] != b[3] else b[:-1]
        c = issued[2]
        typo_sub = c[:4] + ("W" if c[4] != "W" else "X") + c[5:]
        d = issued[3]
        erased = d[:5] + "U" + d[6:]
        # Ambiguous: issue a second code one substitution away from a typo of e.
        e = issued[4]
        typo_e = e[:1] + ("Q" if e[1] != "Q" else "R") + e[2:]
        twin = None
        for p in range(2, length):
            # The fix at p that makes typo_e valid is another code one edit from it.
            for s in ALPHABET:
                cand = typo_e[:p] + s + typo_e[p + 1 :]
                if cand != typo_e and ref._valid(cand.encode()):
                    twin = cand
                    break
            if twin:
                break
        assert twin is not None
        issued.append(twin)
        inputs = [
            a,
            _code(rng, length),  # valid, not issued
            typo_alike,
            typo_swap,
            typo_sub,
            erased,
            erased.lower(),
            typo_e,
            _code(rng, length)[:-1] + "U",  # an erasure of a code that was never issued
            d[:3] + "UU" + d[5:],
            a[:-1],
            "",
            a[:3] + "*" + a[4:],
            "-".join(a[i : i + 4] for i in range(0, length, 4)).lower(),
        ]
        idx = ref.Index(16)
        for code in issued:
            idx.insert(ref.digest_one(code.encode(), key, 16))
        for raw in inputs:
            st, norm, cands = ref.correct(raw.encode(), length, idx, key)
            rows.append(
                f"{key.hex()}\t16\t{length}\t{','.join(issued)}\t{raw.encode().hex()}\t{st}\t"
                f"{norm.decode()}\t{','.join(x.decode() for x in cands)}"
            )
    return rows


def index_file(rng: random.Random, out: Path) -> list[str]:
    rows = ["# file\twidth\tdigests in position order (hex)"]
    for width, n in ((16, 5), (8, 3), (32, 0)):
        idx = ref.Index(width)
        digests = [rng.randbytes(width) for _ in range(n)]
        idx.build(b"".join(digests))
        name = f"index_w{width}_n{n}.cmidx"
        idx.save(str(out / name))
        rows.append(f"{name}\t{width}\t{','.join(d.hex() for d in digests)}")
    return rows


def audit(rng: random.Random) -> list[str]:
    """One chain of audit events, ids 1.. from the genesis hash: short fields, non-ASCII
    ones, and events whose message spans one, several and more than 16 BLAKE3 blocks (one
    1024-byte chunk) with edges on both sides of each boundary."""
    rows = [
        "# prev_hash (hex)\tid\tat_us\tactor (hex)\taction (hex)\tsubject (hex)\tdetail (hex)\thash (hex)"
    ]
    head = bytes(32)
    # 64 bytes of header (hash, id, time, four lengths) plus the detail's: around 64 and 1024.
    sizes = [0, 1, 0, 63, 64, 65, 127, 128, 959, 960, 961, 1023, 1024, 2000, 3100]
    for i, detail_len in enumerate(sizes, start=1):
        at_us = rng.randrange(-(2**55), 2**55)
        actor = f"token:{rng.randrange(1000)}".encode()
        action = rng.choice(["card.bind", "card.redeem", "lot.mint", "règle:é"]).encode()
        subject = (
            "card:" + "".join(rng.choice(ALPHABET + "✓é") for _ in range(rng.randrange(0, 12)))
        ).encode()
        detail = bytes(rng.choice(b'0123456789abcdef{}:,"') for _ in range(detail_len))
        fields = [actor, action, subject, detail]
        digest = ref.audit_hash(head, i, at_us, fields)
        rows.append("\t".join([head.hex(), str(i), str(at_us), *(f.hex() for f in fields), digest.hex()]))
        head = digest
    return rows


def write_all(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261122)
    files = {"checkchar.tsv": checkchar(rng)}
    files["normalize.tsv"], files["check.tsv"] = normalize_and_check(rng)
    files["mint.tsv"] = mint(rng)
    files["digest.tsv"] = digest(rng)
    files["seal.tsv"] = seal(rng)
    files["serial.tsv"] = serial(rng)
    files["serial_validate.tsv"] = serial_validate(rng)
    files["display.tsv"] = display(rng)
    files["correct.tsv"] = correct(rng)
    files["index.tsv"] = index_file(rng, out)
    files["audit.tsv"] = audit(rng)
    for name, rows in files.items():
        (out / name).write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/vectors"))
