# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
# No pickling (the classes hold C state; Cython would only add stubs that raise) and no
# __test__ dict: the module exposes exactly what kernel/_cy.pyi declares (stubtest).
# cython: auto_pickle=False, autotestdict=False
"""Cython backend of the cardmint kernel (the contract is kernel/_protocol.py, the
semantics docs/code-format.md).

Every ``def`` here only checks its arguments, acquires typed memoryviews and raw pointers,
and hands the work to C in kernel/csrc/ with the GIL released. ``threads`` is accepted and
ignored: this backend is single-threaded, the Rust one is the parallel one.
"""

import os as _os
import sys as _sys
import threading as _threading
import io as _io

import blake3 as _blake3

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_READ
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcmp, memcpy

include "csrc/cm_kernel.pxi"

NAME = "cython"

cdef enum:
    NONCE_LEN = 12
    TAG_LEN = 16
    KEY_LEN = 32
    MIN_SIZE = 8
    MAX_SIZE = 32
    # correction statuses (code-format section 8)
    C_OK = 0
    C_UNKNOWN = 1
    C_CORRECTED = 2
    C_AMBIGUOUS = 3
    C_NOT_FOUND = 4
    C_MALFORMED = 16

cdef bint _BIG_ENDIAN = _sys.byteorder == "big"
cdef uint8_t _EMPTY[1]

_INDEX_MAGIC = b"CMDIGIX1"
_INDEX_HEADER = 24
_INDEX_HASH = 32


# ---- argument plumbing ----

cdef const uint8_t[::1] _view(object obj, str name):
    """A read-only byte view of any C-contiguous buffer (numpy arrays of any dtype too)."""
    cdef const uint8_t[::1] v
    if type(obj) is bytes or type(obj) is bytearray:
        v = obj
        return v
    try:
        mv = memoryview(obj)
    except TypeError:
        raise TypeError(f"{name} must be a buffer (bytes, bytearray, memoryview, array)") from None
    if not mv.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if mv.nbytes == 0:
        # memoryview.cast refuses shapes with a zero in them, e.g. numpy (0, 16).
        v = b""
        return v
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    v = mv
    return v


cdef bytes _scalar_bytes(object obj, str name):
    """Small scalar arguments as bytes: no memoryview set-up when they already are."""
    if type(obj) is bytes:
        return <bytes>obj
    if type(obj) is bytearray:
        return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(obj), PyByteArray_GET_SIZE(obj))
    return bytes(_view(obj, name))


cdef inline const uint8_t* _ptr(const uint8_t[::1] v) noexcept nogil:
    # &v[0] of an empty view is out of bounds; C never reads it, but must get a valid pointer.
    return &v[0] if v.shape[0] > 0 else _EMPTY


cdef inline uint8_t* _out(bytearray b) noexcept:
    return <uint8_t*>PyByteArray_AS_STRING(b)


cdef size_t _length(object length) except 0:
    cdef long v
    if type(length) is int:
        # C comparison for the common case; a scalar check_one is dominated by such costs.
        try:
            v = length
        except OverflowError:
            v = 0
        if CM_MIN_LEN <= v <= CM_MAX_LEN:
            return <size_t>v
    if not CM_MIN_LEN <= length <= CM_MAX_LEN:
        raise ValueError(f"length must be {CM_MIN_LEN}..{CM_MAX_LEN}, got {length!r}")
    return <size_t>length


cdef size_t _size(object size) except 0:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"digest size must be {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    return <size_t>size


cdef size_t _rows(Py_ssize_t nbytes, size_t row, str name) except? 0:
    if nbytes % row:
        raise ValueError(f"{name} is {nbytes} bytes, not a multiple of the row size {row}")
    return <size_t>nbytes // row


cdef const uint8_t[::1] _key(object key, str name="key"):
    cdef const uint8_t[::1] k = _view(key, name)
    if k.shape[0] != KEY_LEN:
        raise ValueError(f"{name} must be {KEY_LEN} bytes, got {k.shape[0]}")
    return k


cdef void _fix_i64(bytearray b) noexcept:
    # Positions are stored natively by C; the contract says little-endian.
    cdef uint8_t* p = _out(b)
    cdef Py_ssize_t i, n = len(b) // 8
    cdef int64_t x = 0
    if _BIG_ENDIAN:
        for i in range(n):
            memcpy(&x, p + 8 * i, 8)
            cm_store_i64le(p + 8 * i, x)


# ---- codes ----

def check_symbol(payload):
    """ASCII value of the check symbol for canonical ``payload`` (1..30 symbols)."""
    cdef bytes p = _scalar_bytes(payload, "payload")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(p)
    cdef int c
    if not 1 <= n <= CM_MAX_LEN - 1:
        raise ValueError(f"payload must be 1..{CM_MAX_LEN - 1} symbols, got {n}")
    c = cm_check_symbol(<const uint8_t*>PyBytes_AS_STRING(p), <size_t>n)
    if c < 0:
        raise ValueError(f"payload {p!r} has a byte that is not a symbol")
    return c


def validate(codes, length, threads=0):
    """One byte per code: 1 when every byte is a symbol and the check symbol is right."""
    cdef size_t L = _length(length)
    cdef const uint8_t[::1] c = _view(codes, "codes")
    cdef size_t n = _rows(c.shape[0], L, "codes")
    cdef bytearray out = bytearray(n)
    cdef uint8_t* o = _out(out)
    with nogil:
        cm_validate(_ptr(c), n, L, o)
    return out


cdef tuple _normalize(object data, object offsets, object length, int check):
    cdef size_t L = _length(length)
    cdef const uint8_t[::1] d = _view(data, "data")
    cdef const uint8_t[::1] off = _view(offsets, "offsets")
    cdef size_t rows = _rows(off.shape[0], 8, "offsets")
    cdef size_t n
    cdef int64_t bad
    if rows == 0:
        raise ValueError("offsets must hold n + 1 >= 1 entries")
    n = rows - 1
    with nogil:
        bad = cm_offsets_check(_ptr(off), n, <size_t>d.shape[0])
    if bad >= 0:
        raise ValueError(
            f"offsets[{bad}] = {cm_load_i64le(_ptr(off) + 8 * bad)} is negative, decreasing "
            f"or past the end of data ({d.shape[0]} bytes)")
    cdef bytearray codes = bytearray(n * L)
    cdef bytearray status = bytearray(n)
    cdef uint8_t* co = _out(codes)
    cdef uint8_t* so = _out(status)
    with nogil:
        cm_normalize(_ptr(d), _ptr(off), n, L, check, co, so)
    return codes, status


def normalize(data, offsets, length, threads=0):
    """(codes ``n * length``, status ``n``) of code-format section 3."""
    return _normalize(data, offsets, length, 0)


def check(data, offsets, length, threads=0):
    """normalize, then BAD_CHECK (6) for a wrong check symbol."""
    return _normalize(data, offsets, length, 1)


def check_one(raw, length):
    """Scalar ``check`` of one input: (status, canonical code or b"")."""
    cdef size_t L = _length(length)
    cdef bytes b
    cdef uint8_t buf[CM_MAX_LEN]
    cdef const char* s = NULL
    cdef Py_ssize_t n = 0
    cdef int st
    if type(raw) is bytes:
        s = PyBytes_AS_STRING(raw)
        n = PyBytes_GET_SIZE(raw)
    elif isinstance(raw, str):
        # The str's own (cached) UTF-8 form, no copy for ASCII. A str holding lone
        # surrogates has none; passing them through makes the strict decoder below report
        # BAD_UTF8, as the reference does.
        try:
            s = PyUnicode_AsUTF8AndSize(raw, &n)
        except UnicodeEncodeError:
            b = (<str>raw).encode("utf-8", "surrogatepass")
            s = PyBytes_AS_STRING(b)
            n = PyBytes_GET_SIZE(b)
    else:
        b = _scalar_bytes(raw, "raw")
        s = PyBytes_AS_STRING(b)
        n = PyBytes_GET_SIZE(b)
    st = cm_normalize_one(<const uint8_t*>s, <size_t>n, L, buf, NULL)
    if st != CM_OK:
        return st, b""
    # BAD_CHECK still reports the symbols, as the bulk check does in its code slot.
    return (CM_OK if cm_code_sum(buf, L) == 0 else CM_BAD_CHECK,
            PyBytes_FromStringAndSize(<char*>buf, L))


def digest(codes, length, key, size, threads=0):
    """Keyed BLAKE3 of every code, ``n * size`` bytes (code-format section 5)."""
    cdef size_t L = _length(length)
    cdef size_t S = _size(size)
    cdef const uint8_t[::1] k = _key(key)
    cdef const uint8_t[::1] c = _view(codes, "codes")
    cdef size_t n = _rows(c.shape[0], L, "codes")
    cdef bytearray out = bytearray(n * S)
    cdef uint8_t* o = _out(out)
    with nogil:
        cm_b3_keyed_many(&k[0], _ptr(c), n, L, o, S)
    return out


def digest_one(code, key, size):
    """Keyed BLAKE3 of one code, ``size`` bytes."""
    cdef size_t S = _size(size)
    cdef bytes k = _scalar_bytes(key, "key")
    cdef bytes c = _scalar_bytes(code, "code")
    cdef uint8_t out[MAX_SIZE]
    if PyBytes_GET_SIZE(k) != KEY_LEN:
        raise ValueError(f"key must be {KEY_LEN} bytes, got {PyBytes_GET_SIZE(k)}")
    if PyBytes_GET_SIZE(c) > 64:
        # Codes are at most 31 bytes; anything longer than one block is not a hot path.
        return _blake3.blake3(c, key=k).digest(S)
    cm_b3_keyed_many(<const uint8_t*>PyBytes_AS_STRING(k), <const uint8_t*>PyBytes_AS_STRING(c),
                     1, <size_t>PyBytes_GET_SIZE(c), out, S)
    return PyBytes_FromStringAndSize(<char*>out, S)


def display(codes, length, group):
    """Codes with '-' after every ``group`` symbols (``group == 0``: unchanged)."""
    cdef size_t L = _length(length)
    cdef const uint8_t[::1] c = _view(codes, "codes")
    cdef size_t n = _rows(c.shape[0], L, "codes")
    cdef size_t G
    if group < 0:
        raise ValueError(f"group must be >= 0, got {group!r}")
    if group == 0:
        return bytearray(c)
    G = <size_t>min(group, L)
    cdef bytearray out = bytearray(n * (L + (L - 1) // G))
    cdef uint8_t* o = _out(out)
    with nogil:
        cm_display(_ptr(c), n, L, G, o)
    return out


# ---- correction ----

def correct(raw, length, index, key):
    """(status, normalized symbols or b"", candidates in the index, in order): section 8."""
    cdef size_t L = _length(length)
    cdef const uint8_t[::1] k = _key(key)
    cdef const uint8_t[::1] r
    cdef uint8_t code[CM_MAX_LEN]
    cdef uint8_t cands[2 * CM_MAX_LEN * CM_MAX_LEN]
    cdef uint8_t digs[2 * CM_MAX_LEN * MAX_SIZE]
    cdef int64_t pos[2 * CM_MAX_LEN]
    cdef const uint8_t[::1] fv
    cdef int erasure = -1, st
    cdef bint valid
    cdef size_t nc, i, S
    cdef Index own
    if isinstance(raw, str):
        raw = (<str>raw).encode("utf-8", "surrogatepass")
    r = _view(raw, "raw")
    S = _size(index.width)
    st = cm_normalize_one(_ptr(r), <size_t>r.shape[0], L, code, &erasure)
    if st != CM_OK:
        return C_MALFORMED + st, b"", []
    normalized = PyBytes_FromStringAndSize(<char*>code, L)
    valid = erasure < 0 and cm_code_sum(code, L) == 0
    if valid:
        # Only the code itself is looked up: OK or UNKNOWN, never a correction.
        cands_bytes = normalized
        nc = 1
    else:
        nc = cm_correction_candidates(code, L, erasure, cands)
        cands_bytes = PyBytes_FromStringAndSize(<char*>cands, nc * L)
    if nc:
        cm_b3_keyed_many(&k[0], <const uint8_t*>PyBytes_AS_STRING(cands_bytes), nc, L, digs, S)
        if isinstance(index, Index):
            own = <Index>index
            with own._lock:
                cm_index_lookup(&own.ix, digs, nc, pos)
        else:
            # Another backend's index: go through its Python API, one call for all candidates.
            fv = _view(index.lookup(PyBytes_FromStringAndSize(<char*>digs, nc * S), 1),
                       "index.lookup result")
            if <size_t>fv.shape[0] != 8 * nc:
                raise ValueError("index.lookup returned the wrong number of positions")
            for i in range(nc):
                pos[i] = cm_load_i64le(&fv[8 * i])
    if valid:
        return (C_OK if pos[0] >= 0 else C_UNKNOWN), normalized, []
    kept = [cands_bytes[i * L:(i + 1) * L] for i in range(nc) if pos[i] >= 0]
    if len(kept) == 1:
        return C_CORRECTED, normalized, kept
    if len(kept) > 1:
        return C_AMBIGUOUS, normalized, kept
    return C_NOT_FOUND, normalized, kept


# ---- sealing ----

def seal(codes, length, digests, size, key, nonces):
    """``n * (length + 28)`` bytes: nonce | ciphertext | tag per code (section 6)."""
    cdef size_t L = _length(length)
    cdef size_t S = _size(size)
    cdef const uint8_t[::1] k = _key(key)
    cdef const uint8_t[::1] c = _view(codes, "codes")
    cdef size_t n = _rows(c.shape[0], L, "codes")
    cdef const uint8_t[::1] d = _view(digests, "digests")
    cdef const uint8_t[::1] nv
    cdef int rc = 0
    if <size_t>d.shape[0] != n * S:
        raise ValueError(f"digests is {d.shape[0]} bytes, expected {n} x {S}")
    # The face draws the nonces from the OS CSPRNG (or takes the caller's); a backend that
    # made its own would hide a missing argument.
    nv = _view(nonces, "nonces")
    if <size_t>nv.shape[0] != n * NONCE_LEN:
        raise ValueError(f"nonces is {nv.shape[0]} bytes, expected {n} x {NONCE_LEN}")
    cdef bytearray out = bytearray(n * (L + NONCE_LEN + TAG_LEN))
    cdef uint8_t* o = _out(out)
    with nogil:
        rc = cm_seal(&k[0], _ptr(c), n, L, _ptr(d), S, _ptr(nv), o)
    if rc != 0:
        raise MemoryError("OpenSSL could not set up ChaCha20-Poly1305")
    return out


def open(sealed, length, digests, size, key):
    """The codes back; ValueError naming the first record that fails authentication."""
    cdef size_t L = _length(length)
    cdef size_t S = _size(size)
    cdef const uint8_t[::1] k = _key(key)
    cdef const uint8_t[::1] s = _view(sealed, "sealed")
    cdef size_t n = _rows(s.shape[0], L + NONCE_LEN + TAG_LEN, "sealed")
    cdef const uint8_t[::1] d = _view(digests, "digests")
    cdef size_t bad = 0
    cdef int rc = 0
    if <size_t>d.shape[0] != n * S:
        raise ValueError(f"digests is {d.shape[0]} bytes, expected {n} x {S}")
    cdef bytearray out = bytearray(n * L)
    cdef uint8_t* o = _out(out)
    with nogil:
        rc = cm_open(&k[0], _ptr(s), n, L, _ptr(d), S, o, &bad)
    if rc == 1:
        raise ValueError(f"record {bad} failed authentication")
    if rc != 0:
        raise MemoryError("OpenSSL could not set up ChaCha20-Poly1305")
    return out


# ---- serials ----

def serials(prefix, start, count, width):
    """``count`` serials: prefix digits | start+k zero-padded to ``width`` | Verhoeff digit."""
    cdef const uint8_t[::1] p = _view(prefix, "prefix")
    cdef Py_ssize_t i
    cdef uint64_t st
    cdef size_t cnt, W
    for i in range(p.shape[0]):
        if not 48 <= p[i] <= 57:
            raise ValueError(f"serial prefix must be digits, got {bytes(p)!r}")
    if not 1 <= width <= 18:
        raise ValueError(f"serial width must be 1..18, got {width!r}")
    if start < 0 or count < 0 or start + count > 10 ** width:
        raise ValueError(f"serials {start}..{start + count} do not fit in {width} digits")
    if p.shape[0] + width + 1 > 64:
        raise ValueError("a serial is at most 64 digits")
    st, cnt, W = start, count, width
    cdef bytearray out = bytearray(cnt * (p.shape[0] + W + 1))
    cdef uint8_t* o = _out(out)
    with nogil:
        cm_serials(_ptr(p), <size_t>p.shape[0], st, cnt, W, o)
    return out


def validate_serials(serials, length):
    """One byte per serial: 1 when all digits and the Verhoeff check holds."""
    if not 2 <= length <= 64:
        raise ValueError(f"serial length must be 2..64, got {length!r}")
    cdef size_t L = length
    cdef const uint8_t[::1] s = _view(serials, "serials")
    cdef size_t n = _rows(s.shape[0], L, "serials")
    cdef bytearray out = bytearray(n)
    cdef uint8_t* o = _out(out)
    with nogil:
        cm_validate_serials(_ptr(s), n, L, o)
    return out


# ---- minting ----

cdef class Minter:
    """Streams unique (or not) codes from a seeded userspace CSPRNG (section 4)."""

    cdef cm_minter m
    cdef object _lock

    def __cinit__(self, length, prefix, seed, unique):
        cdef size_t L = _length(length)
        cdef const uint8_t[::1] p = _view(prefix, "prefix")
        cdef const uint8_t[::1] s = _key(seed, "seed")
        cdef Py_ssize_t i
        if <size_t>p.shape[0] + 2 > L:
            raise ValueError(
                f"prefix of {p.shape[0]} symbols leaves no payload in a code of length {L}")
        for i in range(p.shape[0]):
            if cm_symbol_value(p[i]) < 0:
                raise ValueError(f"prefix {bytes(p)!r} has a byte that is not a symbol")
        if cm_mint_init(&self.m, L, _ptr(p), <size_t>p.shape[0], &s[0], 1 if unique else 0):
            raise ValueError("invalid minter parameters")
        # fill releases the GIL; the lock keeps two Python threads out of the same state.
        self._lock = _threading.Lock()

    def __dealloc__(self):
        cm_mint_free(&self.m)

    def fill(self, count, threads=0):
        """The next ``count`` codes, ``count * length`` bytes."""
        cdef uint64_t n
        cdef int rc = 0
        cdef bytearray out
        cdef uint8_t* o
        if not 0 <= count <= CM_MINT_MAX_FILL:
            raise ValueError(f"count must be 0..{CM_MINT_MAX_FILL}, got {count!r}")
        n = count
        half = 1 << (5 * int(self.m.r) - 1)  # half the payload space, 2^(5r) / 2
        with self._lock:
            if int(self.m.issued) + count > half:
                raise ValueError(
                    f"minting {count} more codes would pass half the payload space "
                    f"({half}) after {self.m.issued} issued")
            out = bytearray(n * self.m.len)
            o = _out(out)
            with nogil:
                rc = cm_mint_fill(&self.m, n, o)
            if rc != 0:
                raise MemoryError("no memory for the fingerprint set")
        return out

    @property
    def issued(self):
        """Codes returned so far."""
        return self.m.issued

    @property
    def drawn(self):
        """Draws consumed so far (issued + skipped duplicates)."""
        return self.m.drawn


# ---- digest index ----

cdef class Index:
    """In-memory hash index of fixed-width digests; positions are insertion order."""

    cdef cm_index ix
    cdef object _lock

    def __cinit__(self, width):
        _size(width)
        cm_index_init(&self.ix, <size_t>width)
        # Operations release the GIL and insert may move the arrays; one at a time.
        self._lock = _threading.Lock()

    def __dealloc__(self):
        cm_index_free(&self.ix)

    def insert(self, digests, threads=0):
        """Insert digests in order; int64 LE position of each (existing ones keep theirs)."""
        cdef const uint8_t[::1] d = _view(digests, "digests")
        cdef size_t n = _rows(d.shape[0], self.ix.width, "digests")
        cdef bytearray out = bytearray(8 * n)
        cdef uint8_t* o = _out(out)
        cdef int rc = 0
        with self._lock:
            with nogil:
                rc = cm_index_insert(&self.ix, _ptr(d), n, <int64_t*>o)
        if rc != 0:
            if self.ix.count + n > CM_INDEX_MAX_COUNT:
                raise ValueError(f"the index holds at most {CM_INDEX_MAX_COUNT} digests")
            raise MemoryError("no memory for the index")
        _fix_i64(out)
        return out

    def build(self, digests, threads=0):
        """Fill an empty index; ValueError naming the first duplicate pair of rows."""
        cdef const uint8_t[::1] d = _view(digests, "digests")
        cdef size_t n = _rows(d.shape[0], self.ix.width, "digests")
        cdef uint64_t first = 0, second = 0
        cdef int rc = 0
        if n > CM_INDEX_MAX_COUNT:
            raise ValueError(f"the index holds at most {CM_INDEX_MAX_COUNT} digests")
        with self._lock:
            if self.ix.count:
                raise ValueError(f"build needs an empty index, this one holds {self.ix.count}")
            with nogil:
                rc = cm_index_build(&self.ix, _ptr(d), n, &first, &second)
        if rc == 1:
            raise ValueError(f"duplicate digest at rows {first} and {second}")
        if rc != 0:
            raise MemoryError("no memory for the index")

    def lookup(self, digests, threads=0):
        """int64 LE position of each digest, or -1."""
        cdef const uint8_t[::1] d = _view(digests, "digests")
        cdef size_t n = _rows(d.shape[0], self.ix.width, "digests")
        cdef bytearray out = bytearray(8 * n)
        cdef uint8_t* o = _out(out)
        with self._lock:
            with nogil:
                cm_index_lookup(&self.ix, _ptr(d), n, <int64_t*>o)
        _fix_i64(out)
        return out

    def __len__(self):
        return self.ix.count

    @property
    def width(self):
        return self.ix.width

    @property
    def nbytes(self):
        """Bytes of memory held (digests + table)."""
        return cm_index_nbytes(&self.ix)

    def digests(self):
        """All digests in position order (``len * width`` bytes)."""
        with self._lock:
            if self.ix.count == 0:
                return b""
            return PyBytes_FromStringAndSize(<char*>self.ix.digests,
                                             self.ix.count * self.ix.width)

    def save(self, path):
        """Write the file of code-format section 9 atomically (temp file + rename)."""
        path = _os.fspath(path)
        with self._lock:
            header = (_INDEX_MAGIC + int(self.ix.width).to_bytes(4, "little")
                      + (0).to_bytes(4, "little") + int(self.ix.count).to_bytes(8, "little"))
            if self.ix.count:
                # A view of the C array, not a copy: the index may be gigabytes. The lock
                # keeps it from moving until the write is done.
                body = PyMemoryView_FromMemory(<char*>self.ix.digests,
                                               self.ix.count * self.ix.width, PyBUF_READ)
            else:
                body = b""
            hasher = _blake3.blake3(header)
            hasher.update(body)
            # Unique per process and thread, created with the umask's permissions like any
            # other file the caller writes (mkstemp would force 0600).
            tmp = f"{path}.tmp{_os.getpid()}.{_threading.get_ident()}"
            try:
                with _io.open(tmp, "wb") as f:
                    f.write(header)
                    f.write(body)
                    f.write(hasher.digest())
                    f.flush()
                    _os.fsync(f.fileno())
                _os.replace(tmp, path)
            except BaseException:
                try:
                    _os.unlink(tmp)
                except OSError:
                    pass
                raise

    @classmethod
    def load(cls, path, threads=0):
        """Read and verify a file of code-format section 9."""
        path = _os.fspath(path)
        with _io.open(path, "rb") as f:
            data = f.read()
        view = memoryview(data)
        if len(data) < _INDEX_HEADER + _INDEX_HASH or data[:8] != _INDEX_MAGIC:
            raise ValueError(f"{path}: not a cardmint digest index file")
        width = int.from_bytes(data[8:12], "little")
        reserved = int.from_bytes(data[12:16], "little")
        count = int.from_bytes(data[16:24], "little")
        if not MIN_SIZE <= width <= MAX_SIZE:
            raise ValueError(f"{path}: bad header (width {width})")
        if reserved != 0:
            raise ValueError(f"{path}: bad header (reserved field {reserved}, not 0)")
        expected = _INDEX_HEADER + count * width + _INDEX_HASH
        if len(data) != expected:
            raise ValueError(
                f"{path}: size {len(data)} does not match {count} digests of {width} bytes "
                f"(truncated or padded)")
        if _blake3.blake3(view[:-_INDEX_HASH]).digest() != data[-_INDEX_HASH:]:
            raise ValueError(f"{path}: checksum mismatch (file corrupted)")
        index = cls(width)
        try:
            index.build(view[_INDEX_HEADER:-_INDEX_HASH])
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        return index


# ---- audit chain ----

cdef enum:
    AUDIT_OK = 0
    AUDIT_MISSING = 1
    AUDIT_OUT_OF_ORDER = 2
    AUDIT_UNLINKED = 3
    AUDIT_EDITED = 4
    AUDIT_FIELDS = 4


cdef inline int64_t _i64le(const uint8_t* p, size_t i) noexcept nogil:
    cdef uint64_t v = 0
    cdef int k
    for k in range(7, -1, -1):
        v = (v << 8) | p[8 * i + k]
    return <int64_t>v


cdef inline void _u64le(uint8_t* p, uint64_t v) noexcept nogil:
    cdef int k
    for k in range(8):
        p[k] = <uint8_t>(v >> (8 * k))


def verify_audit(prev_head, start, ids, at_us, text, offsets, prev_hashes, hashes, threads=0):
    """Check events ``start + 1 ...`` of the audit chain from packed columns: (events that
    check out, hash of the last, index of the first bad one or -1, why)."""
    cdef bytes head = _scalar_bytes(prev_head, "prev_head")
    if PyBytes_GET_SIZE(head) != 32:
        raise ValueError(f"prev_head must be 32 bytes, got {PyBytes_GET_SIZE(head)}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    cdef const uint8_t[::1] vid = _view(ids, "ids")
    cdef const uint8_t[::1] vat = _view(at_us, "at_us")
    cdef const uint8_t[::1] vtx = _view(text, "text")
    cdef const uint8_t[::1] vof = _view(offsets, "offsets")
    cdef const uint8_t[::1] vpr = _view(prev_hashes, "prev_hashes")
    cdef const uint8_t[::1] vhs = _view(hashes, "hashes")
    cdef size_t n = _rows(vid.shape[0], 8, "ids")
    if <size_t>vat.shape[0] != 8 * n or <size_t>vof.shape[0] != 8 * (AUDIT_FIELDS * n + 1):
        raise ValueError(f"{n} ids need {n} times and {AUDIT_FIELDS * n + 1} offsets")
    if <size_t>vpr.shape[0] != 32 * n or <size_t>vhs.shape[0] != 32 * n:
        raise ValueError(f"{n} events need {32 * n} bytes of prev_hashes and of hashes")
    cdef const uint8_t* po = _ptr(vof)
    cdef size_t size = <size_t>vtx.shape[0]
    cdef size_t j
    cdef int64_t a, b
    a = _i64le(po, 0)
    if a < 0 or _i64le(po, AUDIT_FIELDS * n) > <int64_t>size:
        raise ValueError(f"offsets must rise from >= 0 to <= {size} (the text size)")
    for j in range(AUDIT_FIELDS * n):
        if _i64le(po, j + 1) < _i64le(po, j):
            raise ValueError(f"offsets must rise from >= 0 to <= {size} (the text size)")
    cdef const uint8_t* pid = _ptr(vid)
    cdef const uint8_t* pat = _ptr(vat)
    cdef const uint8_t* ptx = _ptr(vtx)
    cdef const uint8_t* ppr = _ptr(vpr)
    cdef const uint8_t* phs = _ptr(vhs)
    cdef uint8_t cur[32]
    cdef uint8_t got[32]
    memcpy(cur, PyBytes_AS_STRING(head), 32)
    cdef int64_t first = <int64_t>start
    cdef bytearray scratch = bytearray(4096)
    cdef uint8_t* msg
    cdef size_t i, k, m, flen, need
    cdef int64_t want, seq
    cdef int why = AUDIT_OK
    for i in range(n):
        want = first + <int64_t>i + 1
        seq = _i64le(pid, i)
        if seq != want:
            why = AUDIT_MISSING if seq > want else AUDIT_OUT_OF_ORDER
            break
        if memcmp(ppr + 32 * i, cur, 32) != 0:
            why = AUDIT_UNLINKED
            break
        need = 32 + 16 + AUDIT_FIELDS * 4 + <size_t>(
            _i64le(po, AUDIT_FIELDS * i + AUDIT_FIELDS) - _i64le(po, AUDIT_FIELDS * i))
        if need > <size_t>PyByteArray_GET_SIZE(scratch):
            scratch = bytearray(2 * need)
        msg = _out(scratch)
        memcpy(msg, cur, 32)
        _u64le(msg + 32, <uint64_t>seq)
        _u64le(msg + 40, <uint64_t>_i64le(pat, i))
        m = 48
        for k in range(AUDIT_FIELDS):
            a = _i64le(po, AUDIT_FIELDS * i + k)
            b = _i64le(po, AUDIT_FIELDS * i + k + 1)
            flen = <size_t>(b - a)
            _u64le(got, <uint64_t>flen)  # the low four bytes are the u32le length
            memcpy(msg + m, got, 4)
            memcpy(msg + m + 4, ptx + a, flen)
            m += 4 + flen
        if cm_b3_hash_chunk(msg, m, got) != 0:
            # An event past one BLAKE3 chunk (1 KiB): the blake3 package hashes it.
            memcpy(got, PyBytes_AS_STRING(_blake3.blake3(scratch[:m]).digest()), 32)
        if memcmp(phs + 32 * i, got, 32) != 0:
            why = AUDIT_EDITED
            break
        memcpy(cur, phs + 32 * i, 32)
    if why == AUDIT_OK:
        return n, PyBytes_FromStringAndSize(<char*>cur, 32), -1, AUDIT_OK
    return i, PyBytes_FromStringAndSize(<char*>cur, 32), i, why
