//! `cardmint.kernel._rust`: the thin pyo3 face of `cardmint-core`, following
//! `kernel/_protocol.py`. Every function copies (or, for immutable `bytes`, borrows) its
//! inputs, releases the GIL for the work, and returns new `bytearray`s. No `unsafe` here.
#![forbid(unsafe_code)]

mod error;

use std::sync::{Mutex, RwLock};

use cardmint_core::{
    alphabet, audit, correct as corr, digest as dig, index, mint, normalize as norm,
};
use cardmint_core::{pool, seal as sl, serial};
use pyo3::buffer::PyBuffer;
use pyo3::marker::Ungil;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PySlice, PyString, PyType};

use error::{invalid, to_py};

/// Input bytes: borrowed from an immutable `bytes`, else copied out of the buffer (which
/// another thread could change while the GIL is released).
enum Input<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Input<'_> {
    fn into_vec(self) -> Vec<u8> {
        match self {
            Input::Borrowed(b) => b.to_vec(),
            Input::Owned(v) => v,
        }
    }
}

impl std::ops::Deref for Input<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Input::Borrowed(b) => b,
            Input::Owned(v) => v,
        }
    }
}

fn input<'a>(obj: &'a Bound<'_, PyAny>, what: &str) -> PyResult<Input<'a>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Input::Borrowed(b.as_bytes()));
    }
    let py = obj.py();
    if let Ok(buf) = PyBuffer::<u8>::get(obj) {
        return Ok(Input::Owned(buf.to_vec(py)?));
    }
    // Buffers of other item types (int64 offsets, say) are read as raw bytes.
    let raw = PyMemoryView::from(obj)
        .and_then(|mv| mv.call_method1("cast", ("B",)))
        .map_err(|_| invalid(format!("{what} must be a C-contiguous bytes-like buffer")))?;
    let buf = PyBuffer::<u8>::get(&raw)?;
    Ok(Input::Owned(buf.to_vec(py)?))
}

/// Input bytes a row-wise operation streams through: borrowed whole from an immutable
/// `bytes`, or read piecewise out of any other buffer through a byte memoryview of it.
enum Source<'a, 'py> {
    Bytes(&'a [u8]),
    View { view: Bound<'py, PyAny>, len: usize },
}

impl Source<'_, '_> {
    fn len(&self) -> usize {
        match self {
            Source::Bytes(b) => b.len(),
            Source::View { len, .. } => *len,
        }
    }
}

fn source<'a, 'py>(obj: &'a Bound<'py, PyAny>, what: &str) -> PyResult<Source<'a, 'py>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Source::Bytes(b.as_bytes()));
    }
    let bad = || invalid(format!("{what} must be a C-contiguous bytes-like buffer"));
    let view = PyMemoryView::from(obj)
        .and_then(|mv| mv.call_method1("cast", ("B",)))
        .map_err(|_| bad())?;
    let len = view.len()?;
    Ok(Source::View { view, len })
}

/// Input copied per step when streaming a mutable buffer.
const STREAM_BYTES: usize = 1 << 22;

/// Work on fewer bytes than this runs holding the GIL. A server calls the kernel on one code
/// at a time (a bind digests the code, opens the sealed copy, formats it: microseconds
/// each), and letting go of the GIL and taking it back in a busy server is a thread switch
/// each time, which costs more than the work. Bulk calls still let go of it.
const DETACH_BYTES: usize = 1 << 14;

/// `f`, with the GIL released when `bytes` is at least `DETACH_BYTES`.
fn run<T, F>(py: Python<'_>, bytes: usize, f: F) -> T
where
    F: Ungil + FnOnce() -> T,
    T: Ungil,
{
    if bytes < DETACH_BYTES {
        f()
    } else {
        py.detach(f)
    }
}

/// A new `bytearray` of `n` rows of `out_w` bytes, computed by `f` from `n` rows of `in_w`
/// bytes of `src`. A mutable buffer is copied a few MiB at a time into one reused scratch
/// buffer (another thread may write to it while the GIL is released, so `f` must not read
/// it in place); `f` runs on each piece with the GIL released. Copying everything first
/// would allocate as much again as the input, and fresh pages cost more than the copy.
fn stream<'py>(
    py: Python<'py>,
    src: &Source<'_, 'py>,
    n: usize,
    in_w: usize,
    out_w: usize,
    f: impl Fn(&[u8], &mut [u8]) -> cardmint_core::Result<()> + Sync,
) -> PyResult<Bound<'py, PyByteArray>> {
    PyByteArray::new_with(py, n * out_w, |out| match src {
        Source::Bytes(b) => run(py, b.len(), || f(b, out)).map_err(to_py),
        Source::View { view, .. } => {
            // Never more scratch than the input: a 4 MiB zeroed buffer for one code cost
            // ~150 us (fresh pages), a hundred times the work.
            let rows_per = (STREAM_BYTES / in_w.max(1)).clamp(1, n.max(1));
            let mut scratch = vec![0u8; rows_per * in_w];
            for (k, outs) in out.chunks_mut(rows_per * out_w).enumerate() {
                let start = k * rows_per * in_w;
                let bytes = outs.len() / out_w * in_w;
                let piece = view.get_item(PySlice::new(
                    py,
                    start as isize,
                    (start + bytes) as isize,
                    1,
                ))?;
                let buf = PyBuffer::<u8>::get(&piece)?;
                buf.copy_to_slice(py, &mut scratch[..bytes])?;
                run(py, bytes, || f(&scratch[..bytes], outs)).map_err(to_py)?;
            }
            Ok(())
        }
    })
}

fn nonneg(v: i64, what: &str) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| invalid(format!("{what} must be >= 0, got {v}")))
}

/// Rows of `width` bytes in `len` bytes, or the core's error for a ragged buffer.
fn rows_len(len: usize, width: usize, what: &str) -> PyResult<usize> {
    if width == 0 || !len.is_multiple_of(width) {
        return Err(invalid(format!(
            "{what}: {len} bytes is not a multiple of {width}"
        )));
    }
    Ok(len / width)
}

fn threads_of(v: i64) -> PyResult<usize> {
    nonneg(v, "threads")
}

fn bytearray<'py>(py: Python<'py>, v: &[u8]) -> Bound<'py, PyByteArray> {
    PyByteArray::new(py, v)
}

/// A new `bytearray` of `len` bytes filled by `f` with the GIL released: the object is not
/// shared with any other code until it is returned, so nothing else can see or move it.
fn filled<'py>(
    py: Python<'py>,
    len: usize,
    f: impl FnOnce(&mut [u8]) -> cardmint_core::Result<()> + Send,
) -> PyResult<Bound<'py, PyByteArray>> {
    PyByteArray::new_with(py, len, |buf| py.detach(|| f(buf)).map_err(to_py))
}

/// Codes a minter streams (code-format §4); safe to share between threads.
#[pyclass(frozen, name = "Minter", module = "cardmint.kernel._rust")]
struct Minter {
    inner: Mutex<mint::Minter>,
}

fn lock_minter(m: &Mutex<mint::Minter>) -> std::sync::MutexGuard<'_, mint::Minter> {
    // A panic inside a fill cannot leave the minter half-updated (counters move last),
    // so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[pymethods]
impl Minter {
    #[new]
    fn new(
        length: i64,
        prefix: &Bound<'_, PyAny>,
        seed: &Bound<'_, PyAny>,
        unique: bool,
    ) -> PyResult<Self> {
        let length = nonneg(length, "length")?;
        let prefix = input(prefix, "prefix")?;
        let seed = input(seed, "seed")?;
        let m = mint::Minter::new(length, &prefix, &seed, unique).map_err(to_py)?;
        Ok(Minter {
            inner: Mutex::new(m),
        })
    }

    #[pyo3(signature = (count, threads = 0))]
    fn fill<'py>(
        &self,
        py: Python<'py>,
        count: i64,
        threads: i64,
    ) -> PyResult<Bound<'py, PyByteArray>> {
        let count = nonneg(count, "count")?;
        let threads = threads_of(threads)?;
        // Refuse before allocating: a refused fill may be gigabytes. fill_into checks again
        // under the lock it fills under.
        let length = py
            .detach(|| {
                let m = lock_minter(&self.inner);
                m.check_fill(count as u64).map(|()| m.length())
            })
            .map_err(to_py)?;
        let bytes = count * length;
        filled(py, bytes, |buf| {
            lock_minter(&self.inner).fill_into(buf, threads)
        })
    }

    #[getter]
    fn issued(&self, py: Python<'_>) -> u64 {
        py.detach(|| lock_minter(&self.inner).issued())
    }

    #[getter]
    fn drawn(&self, py: Python<'_>) -> u64 {
        py.detach(|| lock_minter(&self.inner).drawn())
    }

    #[getter]
    fn nbytes(&self, py: Python<'_>) -> usize {
        py.detach(|| lock_minter(&self.inner).nbytes())
    }
}

/// Hash index of fixed-width digests; readers share it, writers take it alone.
#[pyclass(frozen, name = "Index", module = "cardmint.kernel._rust")]
struct Index {
    width: usize,
    inner: RwLock<index::DigestIndex>,
}

impl Index {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, index::DigestIndex> {
        // Writers validate before they change anything, so a poisoned lock still guards
        // a consistent index.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, index::DigestIndex> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn positions_le(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|p| p.to_le_bytes()).collect()
}

#[pymethods]
impl Index {
    #[new]
    fn new(width: i64) -> PyResult<Self> {
        let width = nonneg(width, "width")?;
        let inner = index::DigestIndex::new(width).map_err(to_py)?;
        Ok(Index {
            width,
            inner: RwLock::new(inner),
        })
    }

    #[pyo3(signature = (digests, threads = 0))]
    fn insert<'py>(
        &self,
        py: Python<'py>,
        digests: &Bound<'py, PyAny>,
        threads: i64,
    ) -> PyResult<Bound<'py, PyByteArray>> {
        let d = input(digests, "digests")?;
        let threads = threads_of(threads)?;
        let pos = py
            .detach(|| self.write().insert(&d, threads))
            .map_err(to_py)?;
        Ok(bytearray(py, &positions_le(&pos)))
    }

    #[pyo3(signature = (digests, threads = 0))]
    fn build(&self, py: Python<'_>, digests: &Bound<'_, PyAny>, threads: i64) -> PyResult<()> {
        let owned = input(digests, "digests")?.into_vec();
        let threads = threads_of(threads)?;
        py.detach(|| self.write().build_owned(owned, threads))
            .map_err(to_py)
    }

    #[pyo3(signature = (digests, threads = 0))]
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        digests: &Bound<'py, PyAny>,
        threads: i64,
    ) -> PyResult<Bound<'py, PyByteArray>> {
        let d = input(digests, "digests")?;
        let threads = threads_of(threads)?;
        let out = py
            .detach(|| self.read().lookup(&d, threads))
            .map_err(to_py)?;
        Ok(bytearray(py, &out))
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        py.detach(|| self.read().len())
    }

    #[getter]
    fn width(&self) -> usize {
        self.width
    }

    #[getter]
    fn nbytes(&self, py: Python<'_>) -> usize {
        py.detach(|| self.read().nbytes())
    }

    fn digests<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let all = py.detach(|| self.read().digests().to_vec());
        PyBytes::new(py, &all)
    }

    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let path = path.to_string_lossy().into_owned();
        py.detach(|| self.read().save(&path)).map_err(to_py)
    }

    #[classmethod]
    #[pyo3(signature = (path, threads = 0))]
    fn load(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        path: std::path::PathBuf,
        threads: i64,
    ) -> PyResult<Self> {
        let path = path.to_string_lossy().into_owned();
        let threads = threads_of(threads)?;
        let idx = py
            .detach(|| index::DigestIndex::load(&path, threads))
            .map_err(to_py)?;
        Ok(Index {
            width: idx.width(),
            inner: RwLock::new(idx),
        })
    }
}

#[pyfunction]
fn threads_available() -> usize {
    pool::threads_available()
}

#[pyfunction]
fn check_symbol(payload: &Bound<'_, PyAny>) -> PyResult<u8> {
    let p = input(payload, "payload")?;
    alphabet::check_symbol(&p).map_err(to_py)
}

#[pyfunction]
#[pyo3(signature = (codes, length, threads = 0))]
fn validate<'py>(
    py: Python<'py>,
    codes: &Bound<'py, PyAny>,
    length: i64,
    threads: i64,
) -> PyResult<Bound<'py, PyByteArray>> {
    let c = source(codes, "codes")?;
    let (length, threads) = (nonneg(length, "length")?, threads_of(threads)?);
    cardmint_core::check_length(length).map_err(to_py)?;
    let n = rows_len(c.len(), length, "codes")?;
    stream(py, &c, n, length, 1, |rows, out| {
        alphabet::validate_into(rows, length, out, threads)
    })
}

type Pair<'py> = (Bound<'py, PyByteArray>, Bound<'py, PyByteArray>);

fn bulk<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    offsets: &Bound<'py, PyAny>,
    length: i64,
    threads: i64,
    one: norm::OneFn,
) -> PyResult<Pair<'py>> {
    let d = input(data, "data")?;
    let o = input(offsets, "offsets")?;
    let (length, threads) = (nonneg(length, "length")?, threads_of(threads)?);
    cardmint_core::check_length(length).map_err(to_py)?;
    let n = norm::count_inputs(&o).map_err(to_py)?;
    let codes_len = n
        .checked_mul(length)
        .ok_or_else(|| invalid("too many inputs"))?;
    let mut st = vec![0u8; n];
    let work = d.len() + codes_len;
    let codes = PyByteArray::new_with(py, codes_len, |buf| {
        run(py, work, || {
            norm::bulk_into(&d, &o, length, buf, &mut st, threads, one)
        })
        .map_err(to_py)
    })?;
    // The status bytes are small (one per input); copying them keeps every write into a
    // Python object inside a `new_with` initializer.
    Ok((codes, bytearray(py, &st)))
}

#[pyfunction]
#[pyo3(signature = (data, offsets, length, threads = 0))]
fn normalize<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    offsets: &Bound<'py, PyAny>,
    length: i64,
    threads: i64,
) -> PyResult<Pair<'py>> {
    bulk(py, data, offsets, length, threads, norm::normalize_into)
}

#[pyfunction]
#[pyo3(signature = (data, offsets, length, threads = 0))]
fn check<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    offsets: &Bound<'py, PyAny>,
    length: i64,
    threads: i64,
) -> PyResult<Pair<'py>> {
    bulk(py, data, offsets, length, threads, norm::check_into)
}

/// The scalar request path: no GIL release and no copy for `str` and `bytes`.
#[pyfunction]
fn check_one<'py>(
    py: Python<'py>,
    raw: &Bound<'py, PyAny>,
    length: i64,
) -> PyResult<(u8, Bound<'py, PyBytes>)> {
    let length = nonneg(length, "length")?;
    let (st, code) = if let Ok(s) = raw.cast::<PyString>() {
        match s.to_str() {
            Ok(text) => norm::check_one(text.as_bytes(), length),
            // Lone surrogates cannot be UTF-8: encode them as they are and let the
            // decoder report BAD_UTF8, as for undecodable bytes.
            Err(_) => {
                let b = s.call_method1("encode", ("utf-8", "surrogatepass"))?;
                let b = b.cast::<PyBytes>()?;
                norm::check_one(b.as_bytes(), length)
            }
        }
    } else {
        let b = input(raw, "raw")?;
        norm::check_one(&b, length)
    }
    .map_err(to_py)?;
    Ok((st, PyBytes::new(py, &code)))
}

#[pyfunction]
#[pyo3(signature = (codes, length, key, size, threads = 0))]
fn digest<'py>(
    py: Python<'py>,
    codes: &Bound<'py, PyAny>,
    length: i64,
    key: &Bound<'py, PyAny>,
    size: i64,
    threads: i64,
) -> PyResult<Bound<'py, PyByteArray>> {
    let c = source(codes, "codes")?;
    let k = input(key, "key")?;
    let (length, size, threads) = (
        nonneg(length, "length")?,
        nonneg(size, "size")?,
        threads_of(threads)?,
    );
    cardmint_core::check_length(length).map_err(to_py)?;
    dig::check_size(size).map_err(to_py)?;
    dig::check_key(&k, "key").map_err(to_py)?;
    let n = rows_len(c.len(), length, "codes")?;
    stream(py, &c, n, length, size, |rows, out| {
        dig::digest_to(rows, length, &k, size, out, threads)
    })
}

#[pyfunction]
fn digest_one<'py>(
    py: Python<'py>,
    code: &Bound<'py, PyAny>,
    key: &Bound<'py, PyAny>,
    size: i64,
) -> PyResult<Bound<'py, PyBytes>> {
    let c = input(code, "code")?;
    let k = input(key, "key")?;
    let out = dig::digest_one(&c, &k, nonneg(size, "size")?).map_err(to_py)?;
    Ok(PyBytes::new(py, &out))
}

/// Little-endian int64 values of a buffer of `8 * n` bytes.
fn int64s(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
    let raw = input(obj, what)?;
    let n = rows_len(raw.len(), 8, what)?;
    let mut out = Vec::with_capacity(n);
    for w in raw.chunks_exact(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        out.push(i64::from_le_bytes(b));
    }
    Ok(out)
}

/// Checks a stretch of the audit chain given as packed columns (`_protocol.verify_audit`).
#[pyfunction]
#[pyo3(signature = (prev_head, start, ids, at_us, text, offsets, prev_hashes, hashes, threads = 0))]
#[allow(clippy::too_many_arguments)]
fn verify_audit<'py>(
    py: Python<'py>,
    prev_head: &Bound<'py, PyAny>,
    start: i64,
    ids: &Bound<'py, PyAny>,
    at_us: &Bound<'py, PyAny>,
    text: &Bound<'py, PyAny>,
    offsets: &Bound<'py, PyAny>,
    prev_hashes: &Bound<'py, PyAny>,
    hashes: &Bound<'py, PyAny>,
    threads: i64,
) -> PyResult<(usize, Bound<'py, PyBytes>, i64, u8)> {
    let head = input(prev_head, "prev_head")?;
    let start =
        u64::try_from(start).map_err(|_| invalid(format!("start must be >= 0, got {start}")))?;
    let (ids, at_us, offsets) = (
        int64s(ids, "ids")?,
        int64s(at_us, "at_us")?,
        int64s(offsets, "offsets")?,
    );
    let text = input(text, "text")?;
    let prev_hashes = input(prev_hashes, "prev_hashes")?;
    let hashes = input(hashes, "hashes")?;
    let threads = threads_of(threads)?;
    let cols = audit::Columns {
        ids: &ids,
        at_us: &at_us,
        text: &text,
        offsets: &offsets,
        prev_hashes: &prev_hashes,
        hashes: &hashes,
    };
    let v = py
        .detach(|| audit::verify(&head, start, &cols, threads))
        .map_err(to_py)?;
    let bad = v.first_bad.map_or(-1, |i| i as i64);
    Ok((v.checked, PyBytes::new(py, &v.head), bad, v.problem))
}

#[pyfunction]
fn display<'py>(
    py: Python<'py>,
    codes: &Bound<'py, PyAny>,
    length: i64,
    group: i64,
) -> PyResult<Bound<'py, PyByteArray>> {
    let c = input(codes, "codes")?;
    let (length, group) = (nonneg(length, "length")?, nonneg(group, "group")?);
    let out = run(py, c.len(), || alphabet::display(&c, length, group)).map_err(to_py)?;
    Ok(bytearray(py, &out))
}

type Corrected<'py> = (u8, Bound<'py, PyBytes>, Vec<Bound<'py, PyBytes>>);

#[pyfunction]
fn correct<'py>(
    py: Python<'py>,
    raw: &Bound<'py, PyAny>,
    length: i64,
    index: &Bound<'py, Index>,
    key: &Bound<'py, PyAny>,
) -> PyResult<Corrected<'py>> {
    let r = input(raw, "raw")?;
    let k = input(key, "key")?;
    let length = nonneg(length, "length")?;
    let idx = index.get();
    // About 31 digests and lookups: too short to be worth releasing the GIL, except that
    // the read lock may wait for a writer, which must not happen while holding the GIL.
    let c = py
        .detach(|| corr::correct(&r, length, &idx.read(), &k))
        .map_err(to_py)?;
    let cands = c.candidates.iter().map(|x| PyBytes::new(py, x)).collect();
    Ok((c.status, PyBytes::new(py, &c.normalized), cands))
}

#[pyfunction]
#[pyo3(signature = (codes, length, digests, size, key, nonces))]
#[allow(clippy::too_many_arguments)]
fn seal<'py>(
    py: Python<'py>,
    codes: &Bound<'py, PyAny>,
    length: i64,
    digests: &Bound<'py, PyAny>,
    size: i64,
    key: &Bound<'py, PyAny>,
    nonces: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyByteArray>> {
    let c = input(codes, "codes")?;
    let d = input(digests, "digests")?;
    let k = input(key, "key")?;
    let n = input(nonces, "nonces")?;
    let (length, size) = (nonneg(length, "length")?, nonneg(size, "size")?);
    let out = run(py, c.len(), || sl::seal(&c, length, &d, size, &k, &n, 0)).map_err(to_py)?;
    Ok(bytearray(py, &out))
}

#[pyfunction]
fn open<'py>(
    py: Python<'py>,
    sealed: &Bound<'py, PyAny>,
    length: i64,
    digests: &Bound<'py, PyAny>,
    size: i64,
    key: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyByteArray>> {
    let s = input(sealed, "sealed")?;
    let d = input(digests, "digests")?;
    let k = input(key, "key")?;
    let (length, size) = (nonneg(length, "length")?, nonneg(size, "size")?);
    let out = run(py, s.len(), || sl::open(&s, length, &d, size, &k, 0)).map_err(to_py)?;
    Ok(bytearray(py, &out))
}

#[pyfunction]
fn serials<'py>(
    py: Python<'py>,
    prefix: &Bound<'py, PyAny>,
    start: i64,
    count: i64,
    width: i64,
) -> PyResult<Bound<'py, PyByteArray>> {
    let p = input(prefix, "prefix")?;
    let start = nonneg(start, "start")? as u64;
    let count = nonneg(count, "count")? as u64;
    let width = nonneg(width, "width")?;
    let out = run(py, (count as usize).saturating_mul(width), || {
        serial::serials(&p, start, count, width)
    })
    .map_err(to_py)?;
    Ok(bytearray(py, &out))
}

#[pyfunction]
fn validate_serials<'py>(
    py: Python<'py>,
    serials: &Bound<'py, PyAny>,
    length: i64,
) -> PyResult<Bound<'py, PyByteArray>> {
    let s = input(serials, "serials")?;
    let length = nonneg(length, "length")?;
    let out = run(py, s.len(), || serial::validate_serials(&s, length)).map_err(to_py)?;
    Ok(bytearray(py, &out))
}

#[pymodule(name = "_rust")]
fn cardmint_rust(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("NAME", "rust")?;
    m.add("UNICODE_VERSION", cardmint_core::normtable::UNICODE_VERSION)?;
    m.add_class::<Minter>()?;
    m.add_class::<Index>()?;
    m.add_function(wrap_pyfunction!(threads_available, m)?)?;
    m.add_function(wrap_pyfunction!(check_symbol, m)?)?;
    m.add_function(wrap_pyfunction!(validate, m)?)?;
    m.add_function(wrap_pyfunction!(normalize, m)?)?;
    m.add_function(wrap_pyfunction!(check, m)?)?;
    m.add_function(wrap_pyfunction!(check_one, m)?)?;
    m.add_function(wrap_pyfunction!(digest, m)?)?;
    m.add_function(wrap_pyfunction!(digest_one, m)?)?;
    m.add_function(wrap_pyfunction!(display, m)?)?;
    m.add_function(wrap_pyfunction!(verify_audit, m)?)?;
    m.add_function(wrap_pyfunction!(correct, m)?)?;
    m.add_function(wrap_pyfunction!(seal, m)?)?;
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(serials, m)?)?;
    m.add_function(wrap_pyfunction!(validate_serials, m)?)?;
    Ok(())
}
