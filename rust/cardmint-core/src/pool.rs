//! Rayon pools, one per requested thread count, built once and kept: building a pool costs
//! far more than most calls, and callers pass the same few counts over and over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};

/// Below this many rows a call runs on the caller's thread: handing work to a pool costs
/// microseconds, more than the work itself.
const PARALLEL_MIN_ROWS: usize = 4096;

/// Cores the machine offers (what `threads = 0` means), asked once: the standard library
/// reads the cgroup files each time (system calls, ~10 us, on every kernel call).
pub fn threads_available() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Most workers one call may ask for: each distinct count keeps a pool of OS threads.
pub const MAX_THREADS: usize = 256;

/// The worker count `threads` stands for (0 = every core), capped at [`MAX_THREADS`].
pub fn resolve(threads: usize) -> usize {
    if threads == 0 {
        threads_available()
    } else {
        threads.min(MAX_THREADS)
    }
}

fn pool(threads: usize) -> Option<Arc<ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<ThreadPool>>>> = OnceLock::new();
    let pools = POOLS.get_or_init(|| Mutex::new(HashMap::new()));
    // A poisoned map only means another thread panicked while inserting; the map itself is
    // still consistent, so keep using it.
    let mut map = pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = map.get(&threads) {
        return Some(Arc::clone(p));
    }
    let built = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("cardmint-{i}"))
        .build()
        .ok()?;
    let p = Arc::new(built);
    map.insert(threads, Arc::clone(&p));
    Some(p)
}

/// Whether `rows` rows are worth spreading over `threads` workers.
pub fn parallel(threads: usize, rows: usize) -> bool {
    rows >= PARALLEL_MIN_ROWS && resolve(threads) > 1
}

/// Runs `f` inside the pool of `threads` workers, so that rayon iterators in `f` use exactly
/// that many. Callers only come here after `parallel` said yes; a pool that cannot be
/// created (out of threads) degrades to the global pool rather than failing the call.
pub fn run<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    match pool(resolve(threads)) {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// Rows per parallel task: big enough that task overhead vanishes, small enough to balance.
pub fn chunk_rows(rows: usize, threads: usize) -> usize {
    (rows / (resolve(threads) * 8)).clamp(1024, 1 << 16)
}

/// Calls `f(first_row, out_rows)` over `out` cut into whole rows of `out_width` items,
/// in parallel when it pays. Every row is written by exactly one call.
pub fn for_rows<T: Send>(
    threads: usize,
    out: &mut [T],
    out_width: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    let rows = out.len().checked_div(out_width).unwrap_or(0);
    if !parallel(threads, rows) {
        f(0, out);
        return;
    }
    let chunk = chunk_rows(rows, threads);
    run(threads, || {
        out.par_chunks_mut(chunk * out_width)
            .enumerate()
            .for_each(|(ci, c)| f(ci * chunk, c));
    });
}

/// Like [`for_rows`] for two outputs cut at the same rows: `f(first_row, a_rows, b_rows)`.
pub fn for_rows2<A: Send, B: Send>(
    threads: usize,
    a: &mut [A],
    a_width: usize,
    b: &mut [B],
    b_width: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync + Send,
) {
    let rows = b.len().checked_div(b_width).unwrap_or(0);
    if !parallel(threads, rows) {
        f(0, a, b);
        return;
    }
    let chunk = chunk_rows(rows, threads);
    run(threads, || {
        a.par_chunks_mut(chunk * a_width)
            .zip(b.par_chunks_mut(chunk * b_width))
            .enumerate()
            .for_each(|(ci, (x, y))| f(ci * chunk, x, y));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_cached_and_sized() {
        let a = pool(3).map(|p| Arc::as_ptr(&p) as usize);
        let b = pool(3).map(|p| Arc::as_ptr(&p) as usize);
        assert_eq!(a, b);
        assert_eq!(run(3, rayon::current_num_threads), 3);
        let s: u64 = run(2, || (0..1000u64).into_par_iter().sum());
        assert_eq!(s, 499_500);
        assert!(threads_available() >= 1);
        assert!(!parallel(1, 1 << 20));
        assert!(!parallel(2, 10));
    }

    #[test]
    fn for_rows_covers_every_row_once() {
        for threads in [1, 2, 3] {
            let mut out = vec![0u32; 3 * 50_000];
            for_rows(threads, &mut out, 3, |first, rows| {
                for (k, r) in rows.chunks_mut(3).enumerate() {
                    for x in r {
                        *x += u32::try_from(first + k).unwrap_or(u32::MAX);
                    }
                }
            });
            for (i, r) in out.chunks(3).enumerate() {
                assert!(r.iter().all(|&x| x as usize == i));
            }
        }
    }
}
