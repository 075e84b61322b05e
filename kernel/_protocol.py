"""The contract every kernel backend module implements (rust, cython, python).

`cardmint.kernel` (the public face) converts numpy arrays and Python objects into flat,
C-contiguous byte buffers, checks every argument, and calls one backend through this
contract. Backends therefore receive already-validated arguments; they still must never
crash the interpreter on bad input (raise ``ValueError`` instead).

Conventions
-----------
* A *buffer* is any C-contiguous object with the buffer protocol (bytes, bytearray,
  memoryview, numpy array). Backends copy or read it; they never write to it.
* ``codes`` is ``n`` canonical codes packed back to back, ``n * length`` bytes of ASCII.
* ``data, offsets`` is the packed-strings form: row ``i`` is
  ``data[offsets[i]:offsets[i+1]]``; ``offsets`` is ``n + 1`` little-endian int64.
* Every output is a new ``bytearray`` (numpy wraps it without copying).
* ``threads``: 0 = every core; backends without threads ignore it.
* The exact semantics of every operation are in ``docs/code-format.md``.
"""

from __future__ import annotations

from typing import Protocol

# collections.abc.Buffer is 3.12+; this is what the face passes in practice.
Buffer = bytes | bytearray | memoryview


class MinterProto(Protocol):
    """Streams unique (or not) codes from a seeded userspace CSPRNG (code-format §4)."""

    def __init__(self, length: int, prefix: bytes, seed: bytes, unique: bool) -> None: ...

    def fill(self, count: int, threads: int) -> bytearray:
        """The next ``count`` codes, ``count * length`` bytes."""
        ...

    @property
    def issued(self) -> int:
        """Codes returned so far."""
        ...

    @property
    def drawn(self) -> int:
        """Draws consumed so far (issued + skipped duplicates)."""
        ...


class IndexProto(Protocol):
    """In-memory hash index of fixed-width digests; positions are insertion order."""

    def __init__(self, width: int) -> None: ...

    def insert(self, digests: Buffer, threads: int) -> bytearray:
        """Insert ``len(digests) // width`` digests in order; int64 LE position of each
        (an existing digest, also one repeated earlier in the same batch, keeps its
        position and adds nothing)."""
        ...

    def build(self, digests: Buffer, threads: int) -> None:
        """Fill an *empty* index; positions = row numbers. When digests repeat, raises
        ``ValueError("duplicate digest at rows i and j")`` for the pair with the lowest
        second row j (i < j its first occurrence); the index is then left empty."""
        ...

    def lookup(self, digests: Buffer, threads: int) -> bytearray:
        """int64 LE position of each digest, or -1."""
        ...

    def __len__(self) -> int: ...

    @property
    def width(self) -> int: ...

    @property
    def nbytes(self) -> int:
        """Bytes of memory held (digests + table), for the bytes-per-entry figure."""
        ...

    def digests(self) -> bytes:
        """All digests in position order (``len * width`` bytes)."""
        ...

    def save(self, path: str) -> None:
        """Write the file format of code-format §9 (atomically: temp file + rename)."""
        ...

    @classmethod
    def load(cls, path: str, threads: int) -> IndexProto:
        """Read and verify a file of code-format §9; ``ValueError`` names what is wrong."""
        ...


class BackendProto(Protocol):
    NAME: str  # "rust" | "cython" | "python"

    Minter: type[MinterProto]
    Index: type[IndexProto]

    def check_symbol(self, payload: bytes) -> int:
        """ASCII value of the check symbol for canonical ``payload`` (1..30 symbols)."""
        ...

    def validate(self, codes: Buffer, length: int, threads: int) -> bytearray:
        """One byte per code: 1 when the check symbol is right (and every byte is a
        symbol), else 0."""
        ...

    def normalize(
        self, data: Buffer, offsets: Buffer, length: int, threads: int
    ) -> tuple[bytearray, bytearray]:
        """(codes ``n * length``, status ``n``): code-format §3."""
        ...

    def check(self, data: Buffer, offsets: Buffer, length: int, threads: int) -> tuple[bytearray, bytearray]:
        """normalize, then BAD_CHECK for a wrong check symbol (status 6)."""
        ...

    def check_one(self, raw: str | bytes, length: int) -> tuple[int, bytes]:
        """Scalar ``check`` of one input: (status, symbols). The symbols are the
        canonical code for OK and BAD_CHECK, else b"". A ``str`` that cannot be encoded
        as UTF-8 (lone surrogates) is BAD_UTF8."""
        ...

    def digest(self, codes: Buffer, length: int, key: bytes, size: int, threads: int) -> bytearray:
        """Keyed BLAKE3 of every code, ``n * size`` bytes (code-format §5)."""
        ...

    def digest_one(self, code: bytes, key: bytes, size: int) -> bytes: ...

    def display(self, codes: Buffer, length: int, group: int) -> bytearray:
        """Codes with '-' after every ``group`` symbols; each row ``length +
        (length - 1) // group`` bytes (``group == 0``: unchanged)."""
        ...

    def correct(
        self, raw: bytes, length: int, index: IndexProto, key: bytes
    ) -> tuple[int, bytes, list[bytes]]:
        """(status, normalized symbols or b"", issued candidates in order): §8. The
        digest size is the index's width."""
        ...

    def seal(
        self, codes: Buffer, length: int, digests: Buffer, size: int, key: bytes, nonces: Buffer
    ) -> bytearray:
        """``n * (length + 28)`` bytes: nonce | ciphertext | tag per code (§6)."""
        ...

    def open(self, sealed: Buffer, length: int, digests: Buffer, size: int, key: bytes) -> bytearray:
        """The codes back; ``ValueError("record i failed authentication")`` on the first
        bad record (lowest i), returning nothing."""
        ...

    def serials(self, prefix: bytes, start: int, count: int, width: int) -> bytearray:
        """``count`` serials: prefix digits | start+k zero-padded to ``width`` | Verhoeff
        digit; each ``len(prefix) + width + 1`` bytes (§7)."""
        ...

    def validate_serials(self, serials: Buffer, length: int) -> bytearray:
        """One byte per serial: 1 when all digits and the Verhoeff check holds."""
        ...

    def verify_audit(
        self,
        prev_head: bytes,
        start: int,
        ids: Buffer,
        at_us: Buffer,
        text: Buffer,
        offsets: Buffer,
        prev_hashes: Buffer,
        hashes: Buffer,
        threads: int,
    ) -> tuple[int, bytes, int, int]:
        """Check ``n`` audit events (docs/storage.md): ``ids``/``at_us`` ``n`` int64 LE,
        ``text, offsets`` the packed strings actor, action, subject, detail of each event
        (``4n`` rows), ``prev_hashes``/``hashes`` ``32n`` bytes. Event i must have id
        ``start + i + 1``, link to the hash before it (``prev_head`` for the first) and hash
        to its stored hash. Returns (events that check out, hash of the last of them or
        ``prev_head``, index of the first bad event or -1, why: 0 ok, 1 missing (its id is
        too high), 2 out of order (too low), 3 unlinked, 4 edited); checks in that order."""
        ...
