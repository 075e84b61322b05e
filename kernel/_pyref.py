"""The pure-Python reference kernel: readable, slow, and the tie-breaker.

Every function here is a direct transcription of docs/code-format.md; the Rust and Cython
kernels must agree with it bit for bit (tests/test_kernel_agreement.py). It follows
``_protocol.BackendProto``.
"""

from __future__ import annotations

import bisect
import builtins
import itertools
import os
import struct

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from . import _normtable

Buffer = bytes | bytearray | memoryview

NAME = "python"

ALPHABET = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MIN_LENGTH = 4
MAX_LENGTH = 31
MAX_INPUT_BYTES = 1024
MAX_FILL = 1 << 27
MINT_CONTEXT = b"cardmint mint v1"
INDEX_MAGIC = b"CMDIGIX1"
NONCE_LEN = 12
TAG_LEN = 16

OK, EMPTY, BAD_LENGTH, BAD_CHAR, BAD_UTF8, TOO_LONG, BAD_CHECK = range(7)
C_OK, C_UNKNOWN, C_CORRECTED, C_AMBIGUOUS, C_NOT_FOUND = range(5)
MALFORMED_OFFSET = 16

_VALUE = {c: v for v, c in enumerate(ALPHABET)}
_ALIAS = {ord("O"): ord("0"), ord("I"): ord("1"), ord("L"): ord("1")}
_IGN_LO = [lo for lo, _ in _normtable.IGNORABLE]
_IGN_HI = [hi for _, hi in _normtable.IGNORABLE]
_MAPPED = dict(_normtable.MAPPED)
_ASCII_DROP = frozenset(b" \t\n\v\f\r-")
_LOOKALIKE = frozenset(
    frozenset(p.encode()) for p in ("8B", "5S", "2Z", "6G", "0D", "0Q", "1J", "17", "MN", "VY")
)

# ---------------------------------------------------------------- GF(32) check symbol
_EXP = [0] * 62
_LOG = [0] * 32
_x = 1
for _i in range(31):
    _EXP[_i] = _EXP[_i + 31] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 0x20:
        _x ^= 0x25  # x^5 + x^2 + 1
del _x, _i


def _mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _syndrome(values: list[int]) -> int:
    """sum a^(L-1-i) * s[i]; zero for a valid code."""
    n = len(values)
    acc = 0
    for i, v in enumerate(values):
        acc ^= _mul(_EXP[(n - 1 - i) % 31], v)
    return acc


def check_symbol(payload: bytes) -> int:
    if not 1 <= len(payload) <= MAX_LENGTH - 1:
        raise ValueError(f"payload must be 1..{MAX_LENGTH - 1} symbols, got {len(payload)}")
    try:
        values = [_VALUE[c] for c in payload]
    except KeyError as e:
        raise ValueError(f"payload has a byte that is not a symbol: {bytes([e.args[0]])!r}") from None
    # The check symbol has weight a^0 = 1, so it equals the syndrome of payload + "0".
    return ALPHABET[_syndrome([*values, 0])]


def _valid(code: bytes) -> bool:
    try:
        return _syndrome([_VALUE[c] for c in code]) == 0
    except KeyError:
        return False


def _length_ok(length: int) -> None:
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise ValueError(f"code length must be {MIN_LENGTH}..{MAX_LENGTH}, got {length}")


def _rows(buf: Buffer, width: int, what: str) -> list[bytes]:
    raw = bytes(buf)
    if width <= 0 or len(raw) % width:
        raise ValueError(f"{what}: {len(raw)} bytes is not a multiple of {width}")
    return [raw[i : i + width] for i in range(0, len(raw), width)]


def validate(codes: Buffer, length: int, threads: int = 0) -> bytearray:
    _length_ok(length)
    return bytearray(1 if _valid(c) else 0 for c in _rows(codes, length, "codes"))


# ---------------------------------------------------------------- normalization
def _classify(cp: int) -> bytes | None:
    """What one code point becomes: b"" dropped, None bad, else ASCII symbols."""
    if cp < 0x80:
        if 0x30 <= cp <= 0x39 or 0x41 <= cp <= 0x5A:
            return bytes((cp,))
        if 0x61 <= cp <= 0x7A:
            return bytes((cp - 32,))
        return b"" if cp in _ASCII_DROP else None
    i = bisect.bisect_right(_IGN_LO, cp) - 1
    if i >= 0 and cp <= _IGN_HI[i]:
        return b""
    mapped = _MAPPED.get(cp)
    return mapped.encode() if mapped is not None else None


def _scan(raw: bytes) -> tuple[int, bytes, list[int]]:
    """(status, symbols, positions of U). Status is OK, TOO_LONG, BAD_UTF8 or BAD_CHAR;
    BAD_CHAR is not raised for U alone so that correction can treat it as an erasure."""
    if len(raw) > MAX_INPUT_BYTES:
        return TOO_LONG, b"", []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return BAD_UTF8, b"", []
    out = bytearray()
    for ch in text:
        piece = _classify(ord(ch))
        if piece is None:
            return BAD_CHAR, b"", []
        out += bytes(_ALIAS.get(c, c) for c in piece)
    # After the aliases every letter and digit is a symbol except U.
    return OK, bytes(out), [i for i, c in enumerate(out) if c == 0x55]


def _normalize_one(raw: bytes, length: int) -> tuple[int, bytes]:
    status, syms, upos = _scan(raw)
    if status != OK:
        return status, b""
    if upos:
        return BAD_CHAR, b""
    if not syms:
        return EMPTY, b""
    if len(syms) != length:
        return BAD_LENGTH, b""
    return OK, syms


def _check_one(raw: bytes, length: int) -> tuple[int, bytes]:
    status, code = _normalize_one(raw, length)
    if status == OK and not _valid(code):
        return BAD_CHECK, code
    return status, code


def _split(data: Buffer, offsets: Buffer) -> list[bytes]:
    raw = bytes(data)
    packed = bytes(offsets)
    if len(packed) % 8:
        raise ValueError(f"offsets must be int64: {len(packed)} bytes is not a multiple of 8")
    offs = memoryview(packed).cast("q")
    if len(offs) < 1:
        raise ValueError("offsets must hold n + 1 entries")
    rows = []
    for i in range(len(offs) - 1):
        a, b = offs[i], offs[i + 1]
        if not 0 <= a <= b <= len(raw):
            raise ValueError(f"offsets[{i}..{i + 1}] = {a}..{b} is outside the data ({len(raw)} bytes)")
        rows.append(raw[a:b])
    return rows


def _bulk(fn, data: Buffer, offsets: Buffer, length: int) -> tuple[bytearray, bytearray]:  # type: ignore[no-untyped-def]
    _length_ok(length)
    codes = bytearray()
    status = bytearray()
    for row in _split(data, offsets):
        st, code = fn(row, length)
        status.append(st)
        codes += code if code else bytes(length)
    return codes, status


def normalize(data: Buffer, offsets: Buffer, length: int, threads: int = 0) -> tuple[bytearray, bytearray]:
    return _bulk(_normalize_one, data, offsets, length)


def check(data: Buffer, offsets: Buffer, length: int, threads: int = 0) -> tuple[bytearray, bytearray]:
    return _bulk(_check_one, data, offsets, length)


def check_one(raw: str | bytes, length: int) -> tuple[int, bytes]:
    _length_ok(length)
    if isinstance(raw, str):
        # A str with lone surrogates cannot be UTF-8: report it like undecodable bytes.
        raw = raw.encode("utf-8", "surrogatepass")
    return _check_one(bytes(raw), length)


def display(codes: Buffer, length: int, group: int) -> bytearray:
    _length_ok(length)
    if group < 0:
        raise ValueError(f"group must be >= 0, got {group}")
    out = bytearray()
    for c in _rows(codes, length, "codes"):
        if group == 0:
            out += c
        else:
            out += b"-".join(c[i : i + group] for i in range(0, length, group))
    return out


# ---------------------------------------------------------------- digests
def _key_ok(key: bytes, what: str = "key") -> None:
    if len(key) != 32:
        raise ValueError(f"{what} must be 32 bytes, got {len(key)}")


def _size_ok(size: int) -> None:
    if not 8 <= size <= 32:
        raise ValueError(f"digest size must be 8..32 bytes, got {size}")


def digest_one(code: bytes, key: bytes, size: int) -> bytes:
    _key_ok(key)
    _size_ok(size)
    return blake3.blake3(bytes(code), key=bytes(key)).digest(size)


def digest(codes: Buffer, length: int, key: bytes, size: int, threads: int = 0) -> bytearray:
    _length_ok(length)
    _key_ok(key)
    _size_ok(size)
    out = bytearray()
    for c in _rows(codes, length, "codes"):
        out += blake3.blake3(c, key=bytes(key)).digest(size)
    return out


# ---------------------------------------------------------------- minting
class Minter:
    def __init__(self, length: int, prefix: bytes, seed: bytes, unique: bool) -> None:
        _length_ok(length)
        _key_ok(seed, "seed")
        prefix = bytes(prefix)
        if any(c not in _VALUE for c in prefix):
            raise ValueError(f"prefix {prefix!r} has a byte that is not a symbol")
        self._r = length - len(prefix) - 1
        if self._r < 1:
            raise ValueError(f"prefix of {len(prefix)} leaves no random symbol in a code of {length}")
        self._length = length
        self._prefix = prefix
        self._unique = unique
        self._bytes = (5 * self._r + 7) // 8
        self._shift = max(0, 5 * self._r - 64)
        self._xof = blake3.blake3(MINT_CONTEXT, key=bytes(seed))
        self._seen: set[int] = set()
        self._drawn = 0
        self._issued = 0

    @property
    def issued(self) -> int:
        return self._issued

    @property
    def drawn(self) -> int:
        return self._drawn

    def _code(self, block: bytes) -> tuple[bytes, int]:
        nbits = 8 * self._bytes
        x = int.from_bytes(block, "big")
        syms = bytes(ALPHABET[(x >> (nbits - 5 * (j + 1))) & 31] for j in range(self._r))
        payload = self._prefix + syms
        value = x >> (nbits - 5 * self._r)
        return payload + bytes((check_symbol(payload),)), value >> self._shift

    def fill(self, count: int, threads: int = 0) -> bytearray:
        if count < 0 or count > MAX_FILL:
            raise ValueError(f"count must be 0..{MAX_FILL} per fill, got {count}")
        if self._issued + count > (1 << (5 * self._r)) // 2:
            raise ValueError(
                f"{self._issued + count} codes would exceed half of the {self._r}-symbol payload space"
            )
        out = bytearray()
        got = 0
        while got < count:
            want = count - got
            stream = self._xof.digest(want * self._bytes, seek=self._drawn * self._bytes)
            for k in range(want):
                code, fp = self._code(stream[k * self._bytes : (k + 1) * self._bytes])
                self._drawn += 1
                if self._unique:
                    if fp in self._seen:
                        continue
                    self._seen.add(fp)
                out += code
                got += 1
        self._issued += count
        return out


# ---------------------------------------------------------------- index
class Index:
    def __init__(self, width: int) -> None:
        _size_ok(width)
        self._width = width
        self._pos: dict[bytes, int] = {}
        self._rows: list[bytes] = []

    @property
    def width(self) -> int:
        return self._width

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        # A rough figure: dict slot + key object + list slot per entry.
        return len(self._rows) * (self._width + 33 + 8 + 24 + 8)

    def insert(self, digests: Buffer, threads: int = 0) -> bytearray:
        out = bytearray()
        for d in _rows(digests, self._width, "digests"):
            pos = self._pos.get(d)
            if pos is None:
                pos = len(self._rows)
                self._pos[d] = pos
                self._rows.append(d)
            out += struct.pack("<q", pos)
        return out

    def build(self, digests: Buffer, threads: int = 0) -> None:
        if self._rows:
            raise ValueError("build needs an empty index")
        rows = _rows(digests, self._width, "digests")
        pos: dict[bytes, int] = {}
        for i, d in enumerate(rows):
            j = pos.setdefault(d, i)
            if j != i:
                raise ValueError(f"duplicate digest at rows {j} and {i}")
        self._pos = pos
        self._rows = rows

    def lookup(self, digests: Buffer, threads: int = 0) -> bytearray:
        get = self._pos.get
        return bytearray(
            b"".join(struct.pack("<q", get(d, -1)) for d in _rows(digests, self._width, "digests"))
        )

    def digests(self) -> bytes:
        return b"".join(self._rows)

    def save(self, path: str) -> None:
        body = INDEX_MAGIC + struct.pack("<IIQ", self._width, 0, len(self._rows)) + self.digests()
        tmp = f"{path}.tmp{os.getpid()}"
        with builtins.open(tmp, "wb") as f:
            f.write(body + blake3.blake3(body).digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str, threads: int = 0) -> Index:
        with builtins.open(path, "rb") as f:
            blob = f.read()
        if len(blob) < 24 + 32 or blob[:8] != INDEX_MAGIC:
            raise ValueError(f"{path}: not a cardmint digest index file")
        width, zero, count = struct.unpack("<IIQ", blob[8:24])
        if zero != 0 or not 8 <= width <= 32:
            raise ValueError(f"{path}: bad header (width {width})")
        if len(blob) != 24 + count * width + 32:
            raise ValueError(f"{path}: size {len(blob)} does not match {count} digests of {width} bytes")
        if blake3.blake3(blob[:-32]).digest() != blob[-32:]:
            raise ValueError(f"{path}: checksum mismatch (file corrupted)")
        idx = cls(width)
        idx.build(blob[24:-32])
        return idx


# ---------------------------------------------------------------- correction
def correct(raw: bytes, length: int, index: Index, key: bytes) -> tuple[int, bytes, list[bytes]]:
    _length_ok(length)
    _key_ok(key)
    status, syms, upos = _scan(bytes(raw))
    if status == OK and len(upos) > 1:
        status = BAD_CHAR
    elif status == OK and not syms:
        status = EMPTY
    elif status == OK and len(syms) != length:
        status = BAD_LENGTH
    if status != OK:
        return MALFORMED_OFFSET + status, b"", []
    size = index.width

    def issued(code: bytes) -> bool:
        return index.lookup(digest_one(code, key, size))[:8] != b"\xff" * 8

    values = [_VALUE.get(c, 0) for c in syms]
    if not upos and _syndrome(values) == 0:
        return (C_OK if issued(syms) else C_UNKNOWN), syms, []
    positions = upos if upos else list(range(length))
    alike: list[bytes] = []
    other: list[bytes] = []
    for p in positions:
        # Zero the symbol at p; the one value that cancels the rest's syndrome is the fix.
        rest = values.copy()
        rest[p] = 0
        weight = _EXP[(length - 1 - p) % 31]
        fix = _EXP[(_LOG[_syndrome(rest)] - _LOG[weight]) % 31] if _syndrome(rest) else 0
        cand = syms[:p] + bytes((ALPHABET[fix],)) + syms[p + 1 :]
        if upos or frozenset((syms[p], cand[p])) in _LOOKALIKE:
            alike.append(cand)
        else:
            other.append(cand)
    swaps: list[bytes] = []
    if not upos:
        for p in range(length - 1):
            if syms[p] != syms[p + 1]:
                cand = syms[:p] + syms[p + 1 : p + 2] + syms[p : p + 1] + syms[p + 2 :]
                if _valid(cand):
                    swaps.append(cand)
    found = [c for c in (*alike, *swaps, *other) if issued(c)]
    if len(found) == 1:
        return C_CORRECTED, syms, found
    return (C_AMBIGUOUS if found else C_NOT_FOUND), syms, found


# ---------------------------------------------------------------- sealing
def seal(codes: Buffer, length: int, digests: Buffer, size: int, key: bytes, nonces: Buffer) -> bytearray:
    _length_ok(length)
    _key_ok(key)
    _size_ok(size)
    rows = _rows(codes, length, "codes")
    ds = _rows(digests, size, "digests")
    ns = _rows(nonces, NONCE_LEN, "nonces")
    if not len(rows) == len(ds) == len(ns):
        raise ValueError(f"{len(rows)} codes, {len(ds)} digests and {len(ns)} nonces must match")
    aead = ChaCha20Poly1305(bytes(key))
    out = bytearray()
    for c, d, n in zip(rows, ds, ns, strict=True):
        out += n + aead.encrypt(n, c, d)
    return out


def open(sealed: Buffer, length: int, digests: Buffer, size: int, key: bytes) -> bytearray:  # noqa: A001
    _length_ok(length)
    _key_ok(key)
    _size_ok(size)
    rows = _rows(sealed, length + NONCE_LEN + TAG_LEN, "sealed records")
    ds = _rows(digests, size, "digests")
    if len(rows) != len(ds):
        raise ValueError(f"{len(rows)} sealed records but {len(ds)} digests")
    aead = ChaCha20Poly1305(bytes(key))
    out = bytearray()
    for i, (rec, d) in enumerate(zip(rows, ds, strict=True)):
        try:
            out += aead.decrypt(rec[:NONCE_LEN], rec[NONCE_LEN:], d)
        except InvalidTag:
            raise ValueError(f"record {i} failed authentication") from None
    return out


# ---------------------------------------------------------------- serials (Verhoeff)
def _d(j: int, k: int) -> int:
    if j < 5 and k < 5:
        return (j + k) % 5
    if j < 5:
        return 5 + (j + k - 5) % 5
    if k < 5:
        return 5 + (j - 5 - k) % 5
    return (j - k) % 5


_SIGMA = [1, 5, 7, 6, 2, 8, 3, 0, 9, 4]  # (0 1 5 8 9 4 2 7)(3 6)


def _p(i: int, n: int) -> int:
    for _ in range(i % 8):
        n = _SIGMA[n]
    return n


def _inv(j: int) -> int:
    return (5 - j) % 5 if j < 5 else j


def _verhoeff(digits: bytes, offset: int) -> int:
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = _d(c, _p(i + offset, ch - 0x30))
    return c


def serials(prefix: bytes, start: int, count: int, width: int) -> bytearray:
    prefix = bytes(prefix)
    if not prefix.isdigit() and prefix:
        raise ValueError(f"serial prefix must be digits, got {prefix!r}")
    if not 1 <= width <= 18:
        raise ValueError(f"serial width must be 1..18, got {width}")
    if start < 0 or count < 0 or start + count > 10**width:
        raise ValueError(f"serials {start}..{start + count} do not fit in {width} digits")
    if len(prefix) + width + 1 > 64:
        raise ValueError("a serial is at most 64 digits")
    out = bytearray()
    for k in range(count):
        body = prefix + str(start + k).zfill(width).encode()
        out += body + bytes((0x30 + _inv(_verhoeff(body, 1)),))
    return out


def validate_serials(serials: Buffer, length: int) -> bytearray:
    if not 2 <= length <= 64:
        raise ValueError(f"serial length must be 2..64, got {length}")
    return bytearray(
        1 if s.isdigit() and _verhoeff(s, 0) == 0 else 0 for s in _rows(serials, length, "serials")
    )


# ---------------------------------------------------------------- audit chain
AUDIT_OK, AUDIT_MISSING, AUDIT_OUT_OF_ORDER, AUDIT_UNLINKED, AUDIT_EDITED = range(5)
AUDIT_FIELDS = 4


def audit_hash(prev_hash: bytes, seq: int, at_us: int, fields: list[bytes]) -> bytes:
    """The chain hash of one event: BLAKE3(prev_hash | u64le id | i64le at_us | for actor,
    action, subject, detail: u32le length | utf-8) (docs/storage.md)."""
    msg = bytearray(prev_hash)
    msg += struct.pack("<Qq", seq, at_us)
    for field in fields:
        msg += struct.pack("<I", len(field) & 0xFFFFFFFF) + field
    return blake3.blake3(bytes(msg)).digest()


def verify_audit(
    prev_head: bytes,
    start: int,
    ids: Buffer,
    at_us: Buffer,
    text: Buffer,
    offsets: Buffer,
    prev_hashes: Buffer,
    hashes: Buffer,
    threads: int = 0,
) -> tuple[int, bytes, int, int]:
    """Check events ``start + 1 ...`` of the audit chain, the first linking to ``prev_head``:
    (events that check out, hash of the last of them, index of the first bad one or -1, why)."""
    head = bytes(prev_head)
    if len(head) != 32:
        raise ValueError(f"prev_head must be 32 bytes, got {len(head)}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    seqs = [v for (v,) in struct.iter_unpack("<q", bytes(ids))]
    times = [v for (v,) in struct.iter_unpack("<q", bytes(at_us))]
    offs = [v for (v,) in struct.iter_unpack("<q", bytes(offsets))]
    blob, prevs, digests = bytes(text), bytes(prev_hashes), bytes(hashes)
    n = len(seqs)
    if len(times) != n or len(offs) != AUDIT_FIELDS * n + 1:
        raise ValueError(f"{n} ids need {n} times and {AUDIT_FIELDS * n + 1} offsets")
    if len(prevs) != 32 * n or len(digests) != 32 * n:
        raise ValueError(f"{n} events need {32 * n} bytes of prev_hashes and of hashes")
    if offs[0] < 0 or offs[-1] > len(blob) or any(b < a for a, b in itertools.pairwise(offs)):
        raise ValueError(f"offsets must rise from >= 0 to <= {len(blob)} (the text size)")
    for i in range(n):
        want, seq = start + i + 1, seqs[i]
        if seq != want:
            return i, head, i, AUDIT_MISSING if seq > want else AUDIT_OUT_OF_ORDER
        if prevs[32 * i : 32 * i + 32] != head:
            return i, head, i, AUDIT_UNLINKED
        fields = [
            blob[offs[AUDIT_FIELDS * i + k] : offs[AUDIT_FIELDS * i + k + 1]] for k in range(AUDIT_FIELDS)
        ]
        digest = digests[32 * i : 32 * i + 32]
        if audit_hash(head, seq, times[i], fields) != digest:
            return i, head, i, AUDIT_EDITED
        head = digest
    return n, head, -1, AUDIT_OK
