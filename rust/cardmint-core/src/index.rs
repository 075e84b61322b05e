//! An in-memory hash index of fixed-width digests (positions = insertion order) and its
//! file format (code-format §9).
//!
//! Digests live back to back in position order; the table is open addressing (linear
//! probing) over u32 slots holding `tag << pos_bits | (position + 1)`, 0 meaning empty.
//! The tag is hash bits the slot index did not use, so most probes that land on another
//! digest are rejected without touching the digest array. The table size is any integer
//! (multiply-high reduction), which keeps memory near `width + 5.3` bytes per entry.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::digest::{check_size, MAX_SIZE};
use crate::{pool, rows_of, Error, Result};

pub const MAGIC: &[u8; 8] = b"CMDIGIX1";
const HEADER_LEN: usize = 24;
const CHECKSUM_LEN: usize = 32;

/// Table slots per entry when sized for a known count (load factor 0.75).
const SIZE_NUM: usize = 4;
const SIZE_DEN: usize = 3;
/// Load factor (num/den) past which an insert grows the table.
const MAX_LOAD: (usize, usize) = (7, 8);
/// Lookups resolved together, so their cache misses overlap.
const LOOKUP_GROUP: usize = 16;
/// Most entries an index holds: positions + 1 must fit in a u32 slot.
pub const MAX_ENTRIES: usize = u32::MAX as usize - 1;

#[inline]
fn word(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Hash of a digest. Digests are usually uniform already, but callers may index any
/// bytes, so every 8-byte word is folded in and the result mixed.
#[inline]
pub fn hash(d: &[u8]) -> u64 {
    let w = d.len();
    let mut h = 0x243f_6a88_85a3_08d3u64 ^ w as u64;
    let mut at = 0;
    while at + 8 <= w {
        h = (h ^ word(d, at))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
        at += 8;
    }
    if at < w {
        h = (h ^ word(d, w - 8))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
    h ^= h >> 32;
    h = h.wrapping_mul(0xd6e8_feb8_6659_fd93);
    h ^ (h >> 32)
}

/// Slot layout for a table of `cap` slots.
#[derive(Debug, Clone, Copy)]
struct Layout {
    cap: usize,
    pos_bits: u32,
}

impl Layout {
    fn for_capacity(cap: usize) -> Layout {
        // Positions + 1 up to the most entries this table will hold before growing.
        let most = cap * MAX_LOAD.0 / MAX_LOAD.1 + 1;
        let pos_bits = (usize::BITS - most.leading_zeros()).clamp(1, 32);
        Layout { cap, pos_bits }
    }

    #[inline]
    fn home(self, h: u64) -> usize {
        ((u128::from(h) * self.cap as u128) >> 64) as usize
    }

    /// Tag of a hash, already shifted into place (taken from the low bits, which the
    /// multiply-high reduction barely uses).
    #[inline]
    fn tag(self, h: u64) -> u32 {
        ((h << self.pos_bits) & 0xffff_ffff) as u32
    }

    #[inline]
    fn slot(self, h: u64, pos: usize) -> u32 {
        self.tag(h) | (pos as u32 + 1)
    }

    #[inline]
    fn split(self, s: u32) -> (u32, usize) {
        let mask = ((1u64 << self.pos_bits) - 1) as u32;
        (s & !mask, (s & mask) as usize - 1)
    }
}

#[derive(Debug)]
pub struct DigestIndex {
    width: usize,
    digests: Vec<u8>,
    slots: Vec<AtomicU32>,
    layout: Layout,
}

fn capacity_for(count: usize) -> usize {
    (count * SIZE_NUM / SIZE_DEN + 1).max(16)
}

impl DigestIndex {
    pub fn new(width: usize) -> Result<Self> {
        check_size(width)?;
        let cap = capacity_for(0);
        Ok(DigestIndex {
            width,
            digests: Vec::new(),
            slots: (0..cap).map(|_| AtomicU32::new(0)).collect(),
            layout: Layout::for_capacity(cap),
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn len(&self) -> usize {
        self.digests.len() / self.width
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Bytes held: digest storage plus the table.
    pub fn nbytes(&self) -> usize {
        self.digests.capacity() + self.slots.len() * 4
    }

    /// All digests in position order.
    pub fn digests(&self) -> &[u8] {
        &self.digests
    }

    #[inline]
    fn digest_at(&self, pos: usize) -> &[u8] {
        &self.digests[pos * self.width..(pos + 1) * self.width]
    }

    /// Position of `d` (exactly `width` bytes), if present.
    #[inline]
    pub fn find(&self, d: &[u8]) -> Option<usize> {
        let h = hash(d);
        self.probe(d, h, self.layout.home(h))
    }

    #[inline]
    fn probe(&self, d: &[u8], h: u64, mut i: usize) -> Option<usize> {
        let lay = self.layout;
        let tag = lay.tag(h);
        loop {
            let s = self.slots[i].load(Ordering::Relaxed);
            if s == 0 {
                return None;
            }
            let (t, pos) = lay.split(s);
            if t == tag && self.digest_at(pos) == d {
                return Some(pos);
            }
            i += 1;
            if i == lay.cap {
                i = 0;
            }
        }
    }

    /// Rebuilds the table for `cap` slots from the digest array, in parallel. Returns
    /// whether two rows held the same digest.
    fn rehash(&mut self, cap: usize, threads: usize) -> bool {
        let lay = Layout::for_capacity(cap);
        self.layout = lay;
        self.slots = Vec::new();
        self.slots = (0..cap).map(|_| AtomicU32::new(0)).collect();
        let dup = AtomicBool::new(false);
        let n = self.len();
        let this = &*self;
        let place = |first: usize, count: usize| {
            let end = first + count;
            let mut group = first;
            while group < end {
                let stop = (group + LOOKUP_GROUP).min(end);
                let mut hs = [0u64; LOOKUP_GROUP];
                for (h, pos) in hs.iter_mut().zip(group..stop) {
                    *h = hash(this.digest_at(pos));
                    // Touch the home slot now so the misses of the group overlap; the
                    // value itself is read again below.
                    std::hint::black_box(this.slots[lay.home(*h)].load(Ordering::Relaxed));
                }
                for (&h, pos) in hs.iter().zip(group..stop) {
                    let d = this.digest_at(pos);
                    let tag = lay.tag(h);
                    let want = lay.slot(h, pos);
                    let mut i = lay.home(h);
                    loop {
                        let cell = &this.slots[i];
                        let mut s = cell.load(Ordering::Relaxed);
                        if s == 0 {
                            // The digest bytes were written before the build started, so
                            // the slot value is all another thread needs to see.
                            match cell.compare_exchange(
                                0,
                                want,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            ) {
                                Ok(_) => break,
                                Err(cur) => s = cur,
                            }
                        }
                        let (t, other) = lay.split(s);
                        if t == tag && this.digest_at(other) == d {
                            dup.store(true, Ordering::Relaxed);
                            break;
                        }
                        i += 1;
                        if i == lay.cap {
                            i = 0;
                        }
                    }
                }
                group = stop;
            }
        };
        if pool::parallel(threads, n) {
            use rayon::prelude::*;
            let chunk = pool::chunk_rows(n, threads);
            pool::run(threads, || {
                (0..n.div_ceil(chunk))
                    .into_par_iter()
                    .for_each(|c| place(c * chunk, chunk.min(n - c * chunk)));
            });
        } else {
            place(0, n);
        }
        dup.into_inner()
    }

    /// The first duplicate pair (lowest second row) of the digest array, found the plain
    /// way; only called once the fast build has seen that one exists.
    fn first_duplicate(&self) -> Option<(usize, usize)> {
        let mut seen = std::collections::HashMap::with_capacity(self.len());
        for pos in 0..self.len() {
            if let Some(&first) = seen.get(self.digest_at(pos)) {
                return Some((first, pos));
            }
            seen.insert(self.digest_at(pos), pos);
        }
        None
    }

    fn clear(&mut self) {
        self.digests = Vec::new();
        let cap = capacity_for(0);
        self.slots = (0..cap).map(|_| AtomicU32::new(0)).collect();
        self.layout = Layout::for_capacity(cap);
    }

    /// Fills an empty index; positions are row numbers. Duplicates leave it empty and
    /// name the first pair.
    pub fn build(&mut self, digests: &[u8], threads: usize) -> Result<()> {
        self.build_owned(digests.to_vec(), threads)
    }

    /// [`DigestIndex::build`] taking the digest array as is (no copy).
    pub fn build_owned(&mut self, digests: Vec<u8>, threads: usize) -> Result<()> {
        if !self.is_empty() {
            return Err(Error::invalid("build needs an empty index"));
        }
        let n = rows_of(&digests, self.width, "digests")?;
        if n > MAX_ENTRIES {
            return Err(Error::invalid(format!(
                "an index holds at most {MAX_ENTRIES} digests, got {n}"
            )));
        }
        self.digests = digests;
        self.digests.shrink_to_fit();
        if self.rehash(capacity_for(n), threads) {
            let pair = self.first_duplicate();
            self.clear();
            if let Some((first, second)) = pair {
                return Err(Error::DuplicateDigest {
                    first: first as u64,
                    second: second as u64,
                });
            }
        }
        Ok(())
    }

    /// Inserts digests in order; the position of each (an existing one keeps its own).
    pub fn insert(&mut self, digests: &[u8], threads: usize) -> Result<Vec<i64>> {
        let n = rows_of(digests, self.width, "digests")?;
        if self.len() + n > MAX_ENTRIES {
            return Err(Error::invalid(format!(
                "an index holds at most {MAX_ENTRIES} digests"
            )));
        }
        let w = self.width;
        let need = self.digests.len() + digests.len();
        if need > self.digests.capacity() {
            // Grow by a quarter rather than doubling, so the digest array (most of the
            // memory) stays close to its contents.
            let more = (need - self.digests.len()).max(self.digests.capacity() / 4);
            self.digests.reserve_exact(more);
        }
        let mut out = Vec::with_capacity(n);
        for d in digests.chunks_exact(w) {
            let h = hash(d);
            if let Some(pos) = self.probe(d, h, self.layout.home(h)) {
                out.push(pos as i64);
                continue;
            }
            let pos = self.len();
            let (num, den) = MAX_LOAD;
            if (pos + 1) * den > self.layout.cap * num {
                // Grow ahead for the rest of the batch too, at the build load factor.
                let want = capacity_for(pos + 1 + (n - out.len())).max(self.layout.cap * 3 / 2);
                self.rehash(want, threads);
            }
            self.digests.extend_from_slice(d);
            let lay = self.layout;
            let mut i = lay.home(h);
            while *self.slots[i].get_mut() != 0 {
                i += 1;
                if i == lay.cap {
                    i = 0;
                }
            }
            *self.slots[i].get_mut() = lay.slot(h, pos);
            out.push(pos as i64);
        }
        Ok(out)
    }

    /// Position of every digest, or -1, as little-endian int64s.
    pub fn lookup(&self, digests: &[u8], threads: usize) -> Result<Vec<u8>> {
        let n = rows_of(digests, self.width, "digests")?;
        let mut out = vec![0u8; n * 8];
        self.lookup_into(digests, &mut out, threads)?;
        Ok(out)
    }

    /// [`DigestIndex::lookup`] into `out` (8 bytes per digest).
    pub fn lookup_into(&self, digests: &[u8], out: &mut [u8], threads: usize) -> Result<()> {
        let n = rows_of(digests, self.width, "digests")?;
        if out.len() != n * 8 {
            return Err(Error::invalid(format!(
                "output holds {} bytes, {n} positions need {}",
                out.len(),
                n * 8
            )));
        }
        let w = self.width;
        pool::for_rows(threads, out, 8, |first, dst| {
            let src = &digests[first * w..];
            for (ds, outs) in src
                .chunks(LOOKUP_GROUP * w)
                .zip(dst.chunks_mut(LOOKUP_GROUP * 8))
            {
                self.lookup_group(ds, w, outs);
            }
        });
        Ok(())
    }

    /// Up to LOOKUP_GROUP lookups: all home slots are loaded first, then resolved, so the
    /// cache misses of different lookups overlap instead of queueing.
    #[inline]
    fn lookup_group(&self, ds: &[u8], w: usize, out: &mut [u8]) {
        let lay = self.layout;
        let mut hs = [0u64; LOOKUP_GROUP];
        let mut first = [0u32; LOOKUP_GROUP];
        let k = out.len() / 8;
        for j in 0..k {
            let h = hash(&ds[j * w..(j + 1) * w]);
            hs[j] = h;
            first[j] = self.slots[lay.home(h)].load(Ordering::Relaxed);
        }
        // Touch each candidate's digest before comparing, again to overlap the misses.
        for &s in &first[..k] {
            if s != 0 {
                let (_, pos) = lay.split(s);
                if let Some(&b) = self.digests.get(pos * w) {
                    std::hint::black_box(b);
                }
            }
        }
        for j in 0..k {
            let d = &ds[j * w..(j + 1) * w];
            let s = first[j];
            let found = if s == 0 {
                None
            } else {
                let (t, pos) = lay.split(s);
                if t == lay.tag(hs[j]) && self.digest_at(pos) == d {
                    Some(pos)
                } else {
                    self.probe(d, hs[j], lay.home(hs[j]))
                }
            };
            let v = found.map_or(-1i64, |p| p as i64);
            out[j * 8..(j + 1) * 8].copy_from_slice(&v.to_le_bytes());
        }
    }

    fn file_bytes_header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&(self.width as u32).to_le_bytes());
        h[16..24].copy_from_slice(&(self.len() as u64).to_le_bytes());
        h
    }

    /// Writes the §9 file atomically: a temporary file beside `path`, synced, renamed.
    pub fn save(&self, path: &str) -> Result<()> {
        let header = self.file_bytes_header();
        let mut hasher = blake3::Hasher::new();
        hasher.update(&header);
        hasher.update(&self.digests);
        let sum = hasher.finalize();
        let tmp = format!("{path}.tmp{}", std::process::id());
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&header)?;
            f.write_all(&self.digests)?;
            f.write_all(sum.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            // Leave no half-written temporary behind; the error that matters is `e`.
            let _ = std::fs::remove_file(&tmp);
            Error::io(path, e)
        })
    }

    /// Reads and verifies a §9 file.
    pub fn load(path: &str, threads: usize) -> Result<Self> {
        let blob = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_file_bytes(path, blob, threads)
    }

    fn from_file_bytes(path: &str, mut blob: Vec<u8>, threads: usize) -> Result<Self> {
        if blob.len() < HEADER_LEN + CHECKSUM_LEN || &blob[..8] != MAGIC {
            return Err(Error::corrupt(path, "not a cardmint digest index file"));
        }
        let width = u32::from_le_bytes([blob[8], blob[9], blob[10], blob[11]]) as usize;
        let zero = u32::from_le_bytes([blob[12], blob[13], blob[14], blob[15]]);
        let count = word(&blob, 16);
        if zero != 0 || !(8..=MAX_SIZE).contains(&width) {
            return Err(Error::corrupt(path, format!("bad header (width {width})")));
        }
        let body = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(width))
            .and_then(|b| b.checked_add(HEADER_LEN + CHECKSUM_LEN));
        if body != Some(blob.len()) {
            return Err(Error::corrupt(
                path,
                format!(
                    "size {} does not match {count} digests of {width} bytes",
                    blob.len()
                ),
            ));
        }
        let end = blob.len() - CHECKSUM_LEN;
        if blake3::hash(&blob[..end]).as_bytes() != &blob[end..] {
            return Err(Error::corrupt(path, "checksum mismatch (file corrupted)"));
        }
        blob.truncate(end);
        blob.drain(..HEADER_LEN);
        let mut idx = DigestIndex::new(width)?;
        idx.build_owned(blob, threads)?;
        Ok(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, w: usize, salt: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(n * w);
        for i in 0..n {
            let h = blake3::hash(&[&(i as u64).to_le_bytes()[..], &[salt]].concat());
            out.extend_from_slice(&h.as_bytes()[..w]);
        }
        out
    }

    fn positions(v: &[u8]) -> Vec<i64> {
        v.chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    }

    #[test]
    fn build_lookup_every_width() {
        for w in 8..=32 {
            let d = rows(20_000, w, 1);
            let mut idx = DigestIndex::new(w).expect("index");
            idx.build(&d, 2).expect("build");
            assert_eq!(idx.len(), 20_000);
            let got = positions(&idx.lookup(&d, 2).expect("lookup"));
            assert!(got.iter().enumerate().all(|(i, &p)| p == i as i64));
            let missing = rows(5_000, w, 2);
            let got = positions(&idx.lookup(&missing, 1).expect("lookup"));
            assert!(got.iter().all(|&p| p == -1));
        }
    }

    #[test]
    fn structured_digests_still_spread() {
        // Digests equal but for one byte in the middle would collide on a naive hash.
        let mut d = Vec::new();
        for i in 0..50_000u32 {
            let mut row = [0u8; 24];
            row[10..14].copy_from_slice(&i.to_be_bytes());
            d.extend_from_slice(&row);
        }
        let mut idx = DigestIndex::new(24).expect("index");
        idx.build(&d, 2).expect("build");
        assert_eq!(idx.find(&d[24 * 777..24 * 778]), Some(777));
    }

    #[test]
    fn duplicates_name_lowest_second_row() {
        let mut d = rows(30_000, 16, 3);
        let (a, b, c) = (100usize, 20_000usize, 25_000usize);
        let copy = d[a * 16..(a + 1) * 16].to_vec();
        d[c * 16..(c + 1) * 16].copy_from_slice(&copy);
        let copy = d[5 * 16..6 * 16].to_vec();
        d[b * 16..(b + 1) * 16].copy_from_slice(&copy);
        let mut idx = DigestIndex::new(16).expect("index");
        match idx.build(&d, 2) {
            Err(Error::DuplicateDigest { first, second }) => {
                assert_eq!((first, second), (5, 20_000))
            }
            other => panic!("expected duplicate error, got {other:?}"),
        }
        assert!(idx.is_empty());
        assert!(idx.find(&d[..16]).is_none());
    }

    #[test]
    fn insert_grows_and_keeps_positions() {
        let d = rows(50_000, 16, 4);
        let mut idx = DigestIndex::new(16).expect("index");
        let mut expect = Vec::new();
        for part in d.chunks(16 * 999) {
            let got = idx.insert(part, 2).expect("insert");
            expect.extend(got);
        }
        assert!(expect.iter().enumerate().all(|(i, &p)| p == i as i64));
        assert!(idx.nbytes() <= 24 * 50_000, "{} bytes", idx.nbytes());
        // Re-inserting, and repeats within a batch, add nothing.
        let mut again = d[..32].to_vec();
        again.extend_from_slice(&rows(1, 16, 5));
        again.extend_from_slice(&rows(1, 16, 5));
        assert_eq!(
            idx.insert(&again, 1).expect("insert"),
            vec![0, 1, 50_000, 50_000]
        );
        assert_eq!(idx.len(), 50_001);
        assert!(idx.build(&d, 1).is_err());
        assert!(idx.insert(&d[..15], 1).is_err());
    }

    #[test]
    fn memory_per_entry() {
        let n = 1_000_000;
        let mut idx = DigestIndex::new(16).expect("index");
        idx.build(&rows(n, 16, 6), 0).expect("build");
        assert!(idx.nbytes() <= 24 * n, "{} bytes", idx.nbytes());
    }

    #[test]
    fn save_load_round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("cardmint-ix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("a.cmix").to_string_lossy().into_owned();
        let d = rows(10_000, 20, 7);
        let mut idx = DigestIndex::new(20).expect("index");
        idx.build(&d, 2).expect("build");
        idx.save(&path).expect("save");
        let back = DigestIndex::load(&path, 2).expect("load");
        assert_eq!(back.digests(), &d[..]);
        assert_eq!(back.width(), 20);
        let blob = std::fs::read(&path).expect("read");
        let check = |bytes: Vec<u8>, want: &str| match DigestIndex::from_file_bytes(&path, bytes, 1)
        {
            Err(e) => assert!(e.to_string().contains(want), "{e} lacks {want}"),
            Ok(_) => panic!("corrupt file accepted ({want})"),
        };
        let mut flip = blob.clone();
        flip[100] ^= 1;
        check(flip, "checksum");
        check(blob[..blob.len() - 1].to_vec(), "size");
        let mut w = blob.clone();
        w[8] = 7;
        check(w, "width");
        let mut m = blob.clone();
        m[0] = b'X';
        check(m, "not a cardmint");
        check(Vec::new(), "not a cardmint");
        assert!(matches!(
            DigestIndex::load(&format!("{path}.missing"), 1),
            Err(Error::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
