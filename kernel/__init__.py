"""cardmint.kernel: mint, normalize, check, digest, index, correct and seal codes in bulk.

One face over three interchangeable engines (docs/code-format.md says what each does):

* ``rust``   — ``cardmint.kernel._rust``, multi-threaded, the default when present;
* ``cython`` — ``cardmint.kernel._cy``, single-threaded portable fallback;
* ``python`` — ``cardmint.kernel._pyref``, the readable reference (slow).

``CARDMINT_KERNEL=rust|cython|python`` picks one; otherwise the fastest available is used.
``BACKEND`` names the live one. ``Kernel(name)`` gives the same API over a named backend
(tests and benchmarks use it to compare them).

Bulk data crosses this boundary as numpy arrays: codes are fixed-width byte strings
(``dtype="S16"`` for 16-symbol codes), digests ``uint8`` arrays of shape ``(n, size)``.
Messy user input may be a list of ``str``/``bytes``, a ``S``/``U`` array, or ``Packed``
(one buffer plus ``n + 1`` offsets, e.g. the lines of a file without copying them).
"""

from __future__ import annotations

import enum
import importlib
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALPHABET",
    "AUDIT_GENESIS",
    "BACKEND",
    "DEFAULT_DIGEST_SIZE",
    "DEFAULT_GROUP",
    "DEFAULT_LENGTH",
    "AuditCheck",
    "AuditProblem",
    "Batch",
    "Correction",
    "CorrectionStatus",
    "DigestIndex",
    "Kernel",
    "KernelError",
    "Minter",
    "Packed",
    "Status",
    "available_backends",
    "get_kernel",
]

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
DEFAULT_LENGTH = 16
DEFAULT_GROUP = 4
DEFAULT_DIGEST_SIZE = 16
MIN_LENGTH, MAX_LENGTH = 4, 31
MAX_FILL = 1 << 27
NONCE_LEN, TAG_LEN = 12, 16
AUDIT_GENESIS = bytes(32)
AUDIT_FIELDS = 4
_ORDER = ("rust", "cython", "python")
_MODULES = {
    "rust": "cardmint.kernel._rust",
    "cython": "cardmint.kernel._cy",
    "python": "cardmint.kernel._pyref",
}


class KernelError(ValueError):
    """A kernel call was given something it cannot work with; the message says what."""


class Status(enum.IntEnum):
    """Per-input verdict of ``normalize`` / ``check`` (code-format §3.1)."""

    OK = 0
    EMPTY = 1
    BAD_LENGTH = 2
    BAD_CHAR = 3
    BAD_UTF8 = 4
    TOO_LONG = 5
    BAD_CHECK = 6

    @property
    def malformed(self) -> bool:
        return self not in (Status.OK, Status.BAD_CHECK)


class CorrectionStatus(enum.IntEnum):
    """Verdict of ``correct`` (code-format §8); malformed inputs are 16 + ``Status``."""

    OK = 0
    UNKNOWN = 1
    CORRECTED = 2
    AMBIGUOUS = 3
    NOT_FOUND = 4
    EMPTY = 17
    BAD_LENGTH = 18
    BAD_CHAR = 19
    BAD_UTF8 = 20
    TOO_LONG = 21


class AuditProblem(enum.IntEnum):
    """Why an audit event fails ``verify_audit``; the checks run in this order."""

    OK = 0
    MISSING = 1  # its id is above the next one: the events between are gone
    OUT_OF_ORDER = 2  # its id is at or below one already seen
    UNLINKED = 3  # its prev_hash is not the hash of the event before it
    EDITED = 4  # its content does not hash to its stored hash


class AuditCheck(NamedTuple):
    """Outcome of ``verify_audit``: events that check out (from the first), the hash of the
    last of them (the ``prev_head`` given when none), the index of the first bad event
    (``None`` when all check out) and why."""

    checked: int
    head: bytes
    first_bad: int | None
    problem: AuditProblem

    @property
    def ok(self) -> bool:
        return self.problem == AuditProblem.OK


class Packed(NamedTuple):
    """Strings packed in one buffer: row i is ``data[offsets[i]:offsets[i + 1]]``."""

    data: Any  # bytes-like
    offsets: npt.NDArray[np.int64]

    @classmethod
    def lines(cls, data: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> Packed:
        """The lines of ``data``, split on b"\\n" (a final newline ends the last line)."""
        buf = np.frombuffer(data, dtype=np.uint8)
        nl = np.flatnonzero(buf == 0x0A)
        tail = bool(len(buf)) and (len(nl) == 0 or nl[-1] != len(buf) - 1)
        offsets = np.zeros(len(nl) + 1 + tail, dtype=np.int64)
        # Line i ends where newline i sat, once the i newlines before it are removed.
        offsets[1 : len(nl) + 1] = nl - np.arange(len(nl))
        if tail:
            offsets[-1] = len(buf) - len(nl)
        return cls(buf[buf != 0x0A], offsets)

    @property
    def rows(self) -> int:
        return len(self.offsets) - 1


@dataclass(frozen=True)
class Batch:
    """Minted codes (canonical, ``dtype=S{length}``) and, when keyed, their digests."""

    codes: npt.NDArray[np.bytes_]
    digests: npt.NDArray[np.uint8] | None
    group: int = DEFAULT_GROUP

    def __len__(self) -> int:
        return len(self.codes)


@dataclass(frozen=True)
class Normalized:
    codes: npt.NDArray[np.bytes_]
    status: npt.NDArray[np.uint8]


_CORRECTION_STATUS = {int(s): s for s in CorrectionStatus}


@dataclass(frozen=True)
class Correction:
    status: CorrectionStatus
    normalized: str
    candidates: tuple[str, ...]

    @property
    def suggestion(self) -> str | None:
        return self.candidates[0] if self.status == CorrectionStatus.CORRECTED else None


Inputs = Sequence[str] | Sequence[bytes] | npt.NDArray[Any] | Packed


def _err(exc: ValueError) -> KernelError:
    return KernelError(str(exc))


def _length(length: int) -> int:
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
        raise KernelError(f"length must be an int, got {type(length).__name__}")
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise KernelError(f"code length must be {MIN_LENGTH}..{MAX_LENGTH}, got {length}")
    return int(length)


def _key(key: bytes | bytearray | memoryview, what: str = "key") -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise KernelError(f"{what} must be 32 bytes, got {type(key).__name__}")
    key = bytes(key)
    if len(key) != 32:
        raise KernelError(f"{what} must be 32 bytes, got {len(key)}")
    return key


def _size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 32:
        raise KernelError(f"digest size must be an int in 8..32, got {size!r}")
    return int(size)


def _threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0:
        raise KernelError(f"threads must be an int >= 0 (0 = every core), got {threads!r}")
    return int(threads)


def _prefix(prefix: str | bytes) -> bytes:
    raw = prefix.encode("ascii", "replace") if isinstance(prefix, str) else bytes(prefix)
    bad = sorted({chr(c) for c in raw if chr(c) not in ALPHABET})
    if bad:
        raise KernelError(
            f"prefix {raw.decode('ascii', 'replace')!r} has characters outside the alphabet: "
            f"{' '.join(bad)} (I, L, O, U and lower case are not symbols)"
        )
    return raw


def _as_codes(codes: Any, length: int | None = None) -> tuple[npt.NDArray[np.bytes_], int]:
    """A C-contiguous ``S{L}`` array from an array or a sequence of str/bytes."""
    if isinstance(codes, np.ndarray):
        arr = codes
    else:
        if isinstance(codes, (str, bytes)):
            raise KernelError("expected a sequence of codes, got a single string")
        items = [c.encode("ascii", "replace") if isinstance(c, str) else c for c in codes]
        if not items:
            arr = np.empty(0, dtype=f"S{length or DEFAULT_LENGTH}")
        else:
            arr = np.array(items, dtype=f"S{max(len(c) for c in items)}")
    if arr.dtype.kind != "S":
        raise KernelError(f"codes must be a bytes array (dtype S{{L}}), got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise KernelError(f"codes must be one-dimensional, got shape {arr.shape}")
    width = arr.dtype.itemsize
    if length is not None and width != length:
        raise KernelError(f"codes are {width} bytes wide, expected {length}")
    return np.ascontiguousarray(arr), _length(width)


def _as_digests(digests: Any, size: int | None = None) -> tuple[npt.NDArray[np.uint8], int]:
    if not isinstance(digests, np.ndarray):
        raise KernelError("digests must be a uint8 array of shape (n, size)")
    if digests.ndim == 1 and digests.dtype.kind == "S":
        digests = digests.view(np.uint8).reshape(len(digests), digests.dtype.itemsize)
    if digests.dtype != np.uint8 or digests.ndim != 2:
        raise KernelError(
            f"digests must be a uint8 array of shape (n, size), got {digests.dtype} {digests.shape}"
        )
    width = _size(digests.shape[1])
    if size is not None and width != size:
        raise KernelError(f"digests are {width} bytes wide, expected {size}")
    return np.ascontiguousarray(digests), width


def _packed(inputs: Inputs) -> tuple[Any, npt.NDArray[np.int64]]:
    """(data, offsets) for the backends from any supported input form."""
    if isinstance(inputs, Packed):
        data = inputs.data
        offsets = np.ascontiguousarray(inputs.offsets, dtype=np.int64)
        size = len(memoryview(data).cast("B"))
        if offsets.ndim != 1 or len(offsets) < 1:
            raise KernelError("offsets must be a 1-d array of n + 1 entries")
        if offsets[0] < 0 or offsets[-1] > size or np.any(np.diff(offsets) < 0):
            raise KernelError(f"offsets must rise from >= 0 to <= {size} (the data size)")
        return data, offsets
    if isinstance(inputs, np.ndarray):
        if inputs.ndim != 1:
            raise KernelError(f"inputs must be one-dimensional, got shape {inputs.shape}")
        if inputs.dtype.kind == "U":
            inputs = np.char.encode(inputs, "utf-8", "surrogatepass")
        if inputs.dtype.kind != "S":
            raise KernelError(f"inputs must be str or bytes arrays, got dtype {inputs.dtype}")
        n, width = len(inputs), inputs.dtype.itemsize
        lens = np.char.str_len(inputs).astype(np.int64)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        grid = np.ascontiguousarray(inputs).view(np.uint8).reshape(n, width)
        if width == 0 or np.all(lens == width):
            return grid.reshape(-1), offsets
        # numpy pads short rows with NUL; keep only each row's own bytes.
        return grid[np.arange(width)[None, :] < lens[:, None]], offsets
    if isinstance(inputs, (str, bytes)):
        raise KernelError("expected a sequence of inputs, got a single string; use check_one")
    items = []
    for s in inputs:
        if isinstance(s, str):
            items.append(s.encode("utf-8", "surrogatepass"))
        elif isinstance(s, (bytes, bytearray, memoryview)):
            items.append(bytes(s))
        else:
            raise KernelError(f"inputs must be str or bytes, got {type(s).__name__}")
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in items], out=offsets[1:])
    return b"".join(items), offsets


def _as_array(buf: bytearray, dtype: str | type, shape: tuple[int, ...] | None = None) -> npt.NDArray[Any]:
    arr = np.frombuffer(buf, dtype=dtype)
    return arr.reshape(shape) if shape is not None else arr


class DigestIndex:
    """In-memory index of issued codes' digests: batch lookup, insert, save/load.

    Positions are insertion order. Thread-safe; lookups release the GIL in the native
    backends.
    """

    def __init__(self, width: int = DEFAULT_DIGEST_SIZE, *, kernel: Kernel | None = None, _raw: Any = None):
        self._kernel = kernel or get_kernel()
        self._raw = _raw if _raw is not None else self._kernel.backend.Index(_size(width))

    @classmethod
    def from_digests(
        cls, digests: npt.NDArray[np.uint8], *, kernel: Kernel | None = None, threads: int = 0
    ) -> DigestIndex:
        arr, width = _as_digests(digests)
        idx = cls(width, kernel=kernel)
        try:
            idx._raw.build(arr, _threads(threads))
        except ValueError as e:
            raise _err(e) from None
        return idx

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, kernel: Kernel | None = None, threads: int = 0
    ) -> DigestIndex:
        k = kernel or get_kernel()
        try:
            raw = k.backend.Index.load(os.fspath(path), _threads(threads))
        except ValueError as e:
            raise _err(e) from None
        return cls(raw.width, kernel=k, _raw=raw)

    @property
    def width(self) -> int:
        return int(self._raw.width)

    @property
    def nbytes(self) -> int:
        return int(self._raw.nbytes)

    @property
    def bytes_per_entry(self) -> float:
        return self.nbytes / len(self) if len(self) else 0.0

    def __len__(self) -> int:
        return len(self._raw)

    def insert(self, digests: npt.NDArray[np.uint8], threads: int = 0) -> npt.NDArray[np.int64]:
        arr, _ = _as_digests(digests, self.width)
        return _as_array(self._raw.insert(arr, _threads(threads)), np.int64)

    def lookup(self, digests: npt.NDArray[np.uint8], threads: int = 0) -> npt.NDArray[np.int64]:
        arr, _ = _as_digests(digests, self.width)
        return _as_array(self._raw.lookup(arr, _threads(threads)), np.int64)

    def __contains__(self, digest: bytes) -> bool:
        arr = np.frombuffer(bytes(digest), dtype=np.uint8).reshape(1, -1)
        return bool(self.lookup(arr)[0] >= 0)

    def digests(self) -> npt.NDArray[np.uint8]:
        return np.frombuffer(self._raw.digests(), dtype=np.uint8).reshape(len(self), self.width)

    def save(self, path: str | os.PathLike[str]) -> None:
        self._raw.save(os.fspath(path))


class Minter:
    """A stream of codes, unique across every ``take`` of its lifetime (code-format §4).

    It keeps one 64-bit fingerprint per code issued, never the codes, so ``chunks`` can
    mint 10^8 codes holding only one chunk of codes at a time.
    """

    def __init__(
        self,
        kernel: Kernel,
        length: int = DEFAULT_LENGTH,
        prefix: str | bytes = "",
        *,
        seed: bytes | None = None,
        unique: bool = True,
        group: int = DEFAULT_GROUP,
    ):
        self.kernel = kernel
        self.length = _length(length)
        self.prefix = _prefix(prefix)
        if len(self.prefix) > self.length - 2:
            raise KernelError(
                f"prefix of {len(self.prefix)} symbols leaves too little room in a code of {self.length}"
            )
        self.group = _group(group)
        # Production minters take a fresh OS seed; a fixed seed is for reproducible tests.
        seed_bytes = secrets.token_bytes(32) if seed is None else _key(seed, "seed")
        try:
            self._raw = kernel.backend.Minter(self.length, self.prefix, seed_bytes, bool(unique))
        except ValueError as e:
            raise _err(e) from None

    @property
    def issued(self) -> int:
        return int(self._raw.issued)

    @property
    def random_bits(self) -> int:
        return 5 * (self.length - len(self.prefix) - 1)

    def take(
        self,
        count: int,
        *,
        key: bytes | None = None,
        digest_size: int = DEFAULT_DIGEST_SIZE,
        threads: int = 0,
    ) -> Batch:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 0 <= count <= MAX_FILL:
            raise KernelError(
                f"count must be an int in 0..{MAX_FILL} per call (use chunks for more), got {count!r}"
            )
        t = _threads(threads)
        try:
            raw = self._raw.fill(int(count), t)
        except ValueError as e:
            raise _err(e) from None
        codes = _as_array(raw, f"S{self.length}")
        digests = self.kernel.digest(codes, key, digest_size, threads=t) if key is not None else None
        return Batch(codes, digests, self.group)

    def chunks(self, total: int, chunk: int = 1 << 20, **kw: Any) -> Iterator[Batch]:
        if total < 0 or chunk <= 0:
            raise KernelError("total must be >= 0 and chunk > 0")
        left = total
        while left:
            n = min(chunk, left)
            yield self.take(n, **kw)
            left -= n


def _group(group: int) -> int:
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or not 0 <= group <= MAX_LENGTH:
        raise KernelError(f"group must be 0..{MAX_LENGTH} (0 = no hyphens), got {group!r}")
    return int(group)


class Kernel:
    """The kernel API over one backend. Module-level functions use the default one."""

    def __init__(self, name: str | None = None):
        self.name = name or _default_name()
        self.backend: ModuleType = _load(self.name)

    def __repr__(self) -> str:
        return f"Kernel({self.name!r})"

    # -- minting
    def minter(self, length: int = DEFAULT_LENGTH, prefix: str | bytes = "", **kw: Any) -> Minter:
        return Minter(self, length, prefix, **kw)

    def generate(
        self,
        count: int,
        length: int = DEFAULT_LENGTH,
        group: int = DEFAULT_GROUP,
        prefix: str | bytes = "",
        key: bytes | None = None,
        *,
        seed: bytes | None = None,
        digest_size: int = DEFAULT_DIGEST_SIZE,
        unique: bool = True,
        threads: int = 0,
    ) -> Batch:
        """``count`` fresh codes (unique unless ``unique=False``) and, with a key, digests."""
        m = self.minter(length, prefix, seed=seed, unique=unique, group=group)
        return m.take(count, key=key, digest_size=digest_size, threads=threads)

    # -- checking
    def check_symbol(self, payload: str) -> str:
        try:
            return chr(self.backend.check_symbol(payload.encode("ascii", "replace")))
        except ValueError as e:
            raise _err(e) from None

    def validate(self, codes: Any, threads: int = 0) -> npt.NDArray[np.bool_]:
        arr, length = _as_codes(codes)
        out = self.backend.validate(arr, length, _threads(threads))
        return _as_array(out, np.bool_)

    def _bulk(self, fn_name: str, inputs: Inputs, length: int, threads: int) -> Normalized:
        data, offsets = _packed(inputs)
        length = _length(length)
        try:
            codes, status = getattr(self.backend, fn_name)(data, offsets, length, _threads(threads))
        except ValueError as e:
            raise _err(e) from None
        return Normalized(_as_array(codes, f"S{length}"), _as_array(status, np.uint8))

    def normalize(self, inputs: Inputs, length: int = DEFAULT_LENGTH, threads: int = 0) -> Normalized:
        """Canonical codes and a ``Status`` per input (code-format §3)."""
        return self._bulk("normalize", inputs, length, threads)

    def check(self, inputs: Inputs, length: int = DEFAULT_LENGTH, threads: int = 0) -> Normalized:
        """``normalize`` plus the check symbol: ``BAD_CHECK`` for a wrong one."""
        return self._bulk("check", inputs, length, threads)

    def check_one(self, raw: str | bytes, length: int = DEFAULT_LENGTH) -> tuple[int, bytes]:
        """Scalar ``check`` for the per-request path: (status, canonical code)."""
        if not isinstance(raw, (str, bytes)):
            raise KernelError(f"expected str or bytes, got {type(raw).__name__}")
        return self.backend.check_one(raw, _length(length))  # type: ignore[no-any-return]

    def display(self, codes: Any, group: int = DEFAULT_GROUP) -> npt.NDArray[np.bytes_]:
        arr, length = _as_codes(codes)
        g = _group(group)
        width = length + ((length - 1) // g if g else 0)
        return _as_array(self.backend.display(arr, length, g), f"S{width}")

    # -- digests
    def digest(
        self, codes: Any, key: bytes, size: int = DEFAULT_DIGEST_SIZE, threads: int = 0
    ) -> npt.NDArray[np.uint8]:
        arr, length = _as_codes(codes)
        size = _size(size)
        out = self.backend.digest(arr, length, _key(key), size, _threads(threads))
        return _as_array(out, np.uint8, (len(arr), size))

    def digest_one(self, code: str | bytes, key: bytes, size: int = DEFAULT_DIGEST_SIZE) -> bytes:
        raw = code.encode("ascii", "replace") if isinstance(code, str) else bytes(code)
        return self.backend.digest_one(raw, _key(key), _size(size))  # type: ignore[no-any-return]

    def index(self, width: int = DEFAULT_DIGEST_SIZE) -> DigestIndex:
        return DigestIndex(width, kernel=self)

    def index_from(self, digests: npt.NDArray[np.uint8], threads: int = 0) -> DigestIndex:
        return DigestIndex.from_digests(digests, kernel=self, threads=threads)

    def load_index(self, path: str | os.PathLike[str], threads: int = 0) -> DigestIndex:
        return DigestIndex.load(path, kernel=self, threads=threads)

    # -- correction
    def correct(
        self, raw: str | bytes, index: DigestIndex, key: bytes, length: int = DEFAULT_LENGTH
    ) -> Correction:
        """Issued codes one edit away from a mistyped ``raw`` (code-format §8)."""
        return self.correct_many([raw], index, key, length)[0]

    def correct_many(
        self, raws: Sequence[str | bytes], index: DigestIndex, key: bytes, length: int = DEFAULT_LENGTH
    ) -> list[Correction]:
        """``correct`` for each input, checking the arguments once."""
        if not isinstance(index, DigestIndex) or index._kernel.name != self.name:
            raise KernelError(f"index must be a DigestIndex of the {self.name} kernel")
        length, key = _length(length), _key(key)
        fn, raw_index, status_of = self.backend.correct, index._raw, _CORRECTION_STATUS
        out = []
        for item in raws:
            if isinstance(item, str):
                raw = item.encode("utf-8", "surrogatepass")
            elif isinstance(item, bytes):
                raw = item
            else:
                raise KernelError(f"expected str or bytes, got {type(item).__name__}")
            status, normalized, cands = fn(raw, length, raw_index, key)
            out.append(
                Correction(
                    status_of[status], normalized.decode("ascii"), tuple(c.decode("ascii") for c in cands)
                )
            )
        return out

    # -- sealing
    def seal(
        self,
        codes: Any,
        digests: npt.NDArray[np.uint8],
        key: bytes,
        nonces: npt.NDArray[np.uint8] | None = None,
    ) -> npt.NDArray[np.uint8]:
        """ChaCha20-Poly1305 per code, the digest as associated data (code-format §6)."""
        arr, length = _as_codes(codes)
        dg, size = _as_digests(digests)
        if len(dg) != len(arr):
            raise KernelError(f"{len(arr)} codes but {len(dg)} digests")
        if nonces is None:
            nonce_buf: Any = secrets.token_bytes(NONCE_LEN * len(arr))
        else:
            if nonces.dtype != np.uint8 or nonces.shape != (len(arr), NONCE_LEN):
                raise KernelError(f"nonces must be uint8 of shape ({len(arr)}, {NONCE_LEN})")
            nonce_buf = np.ascontiguousarray(nonces)
        try:
            out = self.backend.seal(arr, length, dg, size, _key(key), nonce_buf)
        except ValueError as e:
            raise _err(e) from None
        return _as_array(out, np.uint8, (len(arr), length + NONCE_LEN + TAG_LEN))

    def open(
        self, sealed: npt.NDArray[np.uint8], digests: npt.NDArray[np.uint8], key: bytes
    ) -> npt.NDArray[np.bytes_]:
        if not isinstance(sealed, np.ndarray) or sealed.dtype != np.uint8 or sealed.ndim != 2:
            raise KernelError("sealed must be a uint8 array of shape (n, length + 28)")
        length = _length(sealed.shape[1] - NONCE_LEN - TAG_LEN)
        dg, size = _as_digests(digests)
        if len(dg) != len(sealed):
            raise KernelError(f"{len(sealed)} sealed records but {len(dg)} digests")
        try:
            out = self.backend.open(np.ascontiguousarray(sealed), length, dg, size, _key(key))
        except ValueError as e:
            raise _err(e) from None
        return _as_array(out, f"S{length}")

    # -- serials
    def serials(self, prefix: str, start: int, count: int, width: int = 9) -> npt.NDArray[np.bytes_]:
        """Card numbers: prefix digits, start..start+count-1 padded to ``width``, Verhoeff digit."""
        for name, v in (("start", start), ("count", count), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise KernelError(f"serial {name} must be an int, got {type(v).__name__}")
        if not 1 <= width <= 18:
            raise KernelError(f"serial width must be 1..18, got {width}")
        if start < 0 or count < 0 or start + count > 10**width:
            raise KernelError(f"serials {start}..{start + count} do not fit in {width} digits")
        try:
            out = self.backend.serials(prefix.encode("ascii", "replace"), int(start), int(count), int(width))
        except (ValueError, OverflowError) as e:
            raise KernelError(str(e)) from None
        return _as_array(out, f"S{len(prefix) + width + 1}")

    def validate_serials(self, serials: Any) -> npt.NDArray[np.bool_]:
        arr = np.asarray(serials, dtype="S") if not isinstance(serials, np.ndarray) else serials
        if arr.dtype.kind != "S" or arr.ndim != 1:
            raise KernelError("serials must be a 1-d bytes array")
        width = arr.dtype.itemsize
        try:
            out = self.backend.validate_serials(np.ascontiguousarray(arr), width)
        except ValueError as e:
            raise _err(e) from None
        return _as_array(out, np.bool_)

    # -- the audit chain
    def verify_audit(
        self,
        ids: npt.ArrayLike,
        at_us: npt.ArrayLike,
        fields: Packed,
        prev_hashes: Any,
        hashes: Any,
        *,
        prev_head: bytes = AUDIT_GENESIS,
        start: int = 0,
        threads: int = 0,
    ) -> AuditCheck:
        """Check ``n`` consecutive audit events given as columns (docs/storage.md): ids
        ``start + 1 ...``, times in µs since the epoch, ``fields`` the ``4n`` strings actor,
        action, subject, detail of each event in order, and ``n`` stored prev_hashes and
        hashes (``(n, 32)`` uint8 or ``32n`` bytes). The first event must link to
        ``prev_head``. The verdict names the first event that fails, as a walk would."""
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
            raise KernelError(f"start must be an int >= 0, got {start!r}")
        seqs = np.ascontiguousarray(ids, dtype="<i8")
        times = np.ascontiguousarray(at_us, dtype="<i8")
        if seqs.ndim != 1 or times.shape != seqs.shape:
            raise KernelError(f"ids and at_us must be 1-d and of one length, got {seqs.shape} {times.shape}")
        n = len(seqs)
        if not isinstance(fields, Packed):
            raise KernelError("fields must be Packed (4 strings per event)")
        text, offsets = _packed(fields)
        if len(offsets) != AUDIT_FIELDS * n + 1:
            raise KernelError(f"{n} events need {AUDIT_FIELDS * n} fields, got {len(offsets) - 1}")
        prevs, digests = _hashes(prev_hashes, n, "prev_hashes"), _hashes(hashes, n, "hashes")
        try:
            checked, head, bad, why = self.backend.verify_audit(
                _key(prev_head, "prev_head"),
                int(start),
                seqs,
                times,
                text,
                offsets.astype("<i8", copy=False),
                prevs,
                digests,
                _threads(threads),
            )
        except ValueError as e:
            raise _err(e) from None
        return AuditCheck(int(checked), bytes(head), None if bad < 0 else int(bad), AuditProblem(why))


def _hashes(value: Any, n: int, what: str) -> Any:
    """``n`` 32-byte hashes as one C-contiguous buffer."""
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        if arr.dtype != np.uint8 or arr.size != 32 * n or (arr.ndim == 2 and arr.shape[1] != 32):
            raise KernelError(f"{what} must be {n} hashes of 32 bytes, got {arr.dtype} {arr.shape}")
        return arr.reshape(-1)
    try:
        size = memoryview(value).nbytes
    except TypeError:
        raise KernelError(f"{what} must be a bytes-like buffer, got {type(value).__name__}") from None
    if size != 32 * n:
        raise KernelError(f"{what} must be {n} hashes of 32 bytes ({32 * n} bytes), got {size}")
    return value


def _load(name: str) -> ModuleType:
    if name not in _MODULES:
        raise KernelError(f"unknown kernel backend {name!r}; choose one of {', '.join(_ORDER)}")
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError as e:
        raise KernelError(f"kernel backend {name!r} is not available here: {e}") from None


def available_backends() -> list[str]:
    """Backends that import here, fastest first."""
    out = []
    for name in _ORDER:
        try:
            _load(name)
        except KernelError:
            continue
        out.append(name)
    return out


def _default_name() -> str:
    wanted = os.environ.get("CARDMINT_KERNEL", "").strip().lower()
    if wanted:
        _load(wanted)  # raises with a clear message when it is missing
        return wanted
    return available_backends()[0]


_KERNELS: dict[str, Kernel] = {}


def get_kernel(name: str | None = None) -> Kernel:
    """The shared ``Kernel`` for ``name`` (default: the live backend)."""
    key = name or BACKEND
    if key not in _KERNELS:
        _KERNELS[key] = Kernel(key)
    return _KERNELS[key]


BACKEND: str = _default_name()
_default = get_kernel(BACKEND)

# The module-level API is the live backend's. check_one skips the face's argument checks
# (the backend makes them) so the per-request path stays one cheap call.
generate = _default.generate
minter = _default.minter
normalize = _default.normalize
check = _default.check
_check_one = _default.backend.check_one


def check_one(raw: str | bytes, length: int = DEFAULT_LENGTH) -> tuple[int, bytes]:
    """Scalar ``check`` of one input on the live backend: (status, canonical code)."""
    return _check_one(raw, length)  # type: ignore[no-any-return]


validate = _default.validate
display = _default.display
digest = _default.digest
digest_one = _default.digest_one
correct = _default.correct
seal = _default.seal
open = _default.open  # noqa: A001
serials = _default.serials
validate_serials = _default.validate_serials
check_symbol = _default.check_symbol
verify_audit = _default.verify_audit
