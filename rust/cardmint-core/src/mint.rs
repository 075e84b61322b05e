//! Minting codes from a seeded userspace CSPRNG, optionally never issuing a fingerprint
//! twice (code-format §4).
//!
//! Unique mode is defined sequentially (scan draws in order, skip a draw whose fingerprint
//! was accepted before) but runs in parallel: a batch of draws is generated in parallel,
//! then deduplicated against a fingerprint set split into shards by fingerprint hash. Equal
//! fingerprints always fall in the same shard and each shard walks its draws in draw order,
//! so every shard decides exactly as the sequential scan would. The skipped draws are
//! replaced by the next draws of the stream, in a following round.

use rayon::prelude::*;

use crate::alphabet::{ALPHABET, VALUE, WEIGHTED_BYTE, WEIGHTED_VALUE};
use crate::digest::check_key;
use crate::{check_length, pool, Error, Result};

/// Context string of the mint stream.
pub const MINT_CONTEXT: &[u8] = b"cardmint mint v1";
/// Most codes one `fill` may return.
pub const MAX_FILL: u64 = 1 << 27;

/// Draws per round of unique minting: bounds the scratch memory (about 30 bytes a draw).
const ROUND_DRAWS: usize = 1 << 20;
/// Draws generated per XOF read: enough to amortize the reader's setup, small enough to
/// stay on the stack.
const XOF_DRAWS: usize = 256;
/// Longest draw: 30 symbols, 150 bits.
const MAX_DRAW_BYTES: usize = 19;

/// How many draws ahead the dedupe loop touches the fingerprint table.
const PREFETCH_AHEAD: usize = 8;

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

/// Mixes a fingerprint so that its top bits pick a shard and the rest a slot, whatever
/// structure the payloads had (with small payloads the fingerprint is the payload itself).
#[inline]
fn mix(fp: u64) -> u64 {
    let mut z = fp;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One shard of the fingerprint set: open addressing with linear probing over raw u64s,
/// 0 meaning empty (a zero fingerprint is remembered by a flag). A table sized by load
/// factor rather than a power of two keeps memory near 8-11 bytes per fingerprint.
#[derive(Debug, Default, Clone)]
struct FingerprintShard {
    slots: Vec<u64>,
    len: usize,
    has_zero: bool,
}

impl FingerprintShard {
    /// Slots filled at most this fraction (num/den) before the table grows by half.
    const MAX_LOAD: (usize, usize) = (4, 5);

    #[inline]
    fn home(hash: u64, cap: usize) -> usize {
        // Multiply-high maps the hash onto 0..cap without a power-of-two size; the shard
        // bits are rotated out of the way first.
        ((u128::from(hash.rotate_left(SHARD_BITS)) * cap as u128) >> 64) as usize
    }

    fn grow(&mut self, want: usize) {
        let (num, den) = Self::MAX_LOAD;
        if (want + 1) * den <= self.slots.len() * num {
            return;
        }
        let needed = (want + 1) * den / num + 1;
        let cap = needed.max(self.slots.len() * 3 / 2).max(64);
        let old = std::mem::replace(&mut self.slots, vec![0; cap]);
        for fp in old.into_iter().filter(|&f| f != 0) {
            let mut i = Self::home(mix(fp), cap);
            while self.slots[i] != 0 {
                i += 1;
                if i == cap {
                    i = 0;
                }
            }
            self.slots[i] = fp;
        }
    }

    /// Adds `fp`; false when it was already there.
    #[inline]
    fn insert(&mut self, fp: u64, hash: u64) -> bool {
        if fp == 0 {
            return !std::mem::replace(&mut self.has_zero, true);
        }
        self.grow(self.len + 1);
        let cap = self.slots.len();
        let mut i = Self::home(hash, cap);
        loop {
            let s = self.slots[i];
            if s == fp {
                return false;
            }
            if s == 0 {
                self.slots[i] = fp;
                self.len += 1;
                return true;
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }

    fn nbytes(&self) -> usize {
        self.slots.len() * 8
    }
}

/// A minter: `(length, prefix, seed, unique)` plus how far it has got.
#[derive(Debug, Clone)]
pub struct Minter {
    length: usize,
    prefix: Vec<u8>,
    /// Random symbols per code.
    r: usize,
    /// Stream bytes per draw, `ceil(5r / 8)`.
    draw_bytes: usize,
    /// The prefix's share of the check symbol: it never changes.
    prefix_acc: u8,
    /// Row of [`WEIGHTED_VALUE`] for the first payload symbol.
    weight_row: usize,
    unique: bool,
    stream: blake3::OutputReader,
    shards: Vec<FingerprintShard>,
    drawn: u64,
    issued: u64,
}

impl Minter {
    pub fn new(length: usize, prefix: &[u8], seed: &[u8], unique: bool) -> Result<Self> {
        check_length(length)?;
        let seed = check_key(seed, "seed")?;
        if let Some(&b) = prefix.iter().find(|&&c| VALUE[c as usize] > 31) {
            return Err(Error::invalid(format!(
                "prefix has a byte that is not a symbol: 0x{b:02x}"
            )));
        }
        if prefix.len() + 2 > length {
            return Err(Error::invalid(format!(
                "prefix of {} leaves no random symbol in a code of {length}",
                prefix.len()
            )));
        }
        let r = length - prefix.len() - 1;
        // Position i of the code has weight a^(length-1-i), row 31 - length + i.
        let first_row = crate::MAX_LENGTH - length;
        let prefix_acc = prefix.iter().enumerate().fold(0u8, |acc, (i, &c)| {
            acc ^ WEIGHTED_BYTE[first_row + i][c as usize]
        });
        let mut hasher = blake3::Hasher::new_keyed(&seed);
        hasher.update(MINT_CONTEXT);
        Ok(Minter {
            length,
            prefix: prefix.to_vec(),
            r,
            draw_bytes: (5 * r).div_ceil(8),
            prefix_acc,
            weight_row: first_row + prefix.len(),
            unique,
            stream: hasher.finalize_xof(),
            shards: if unique {
                vec![FingerprintShard::default(); SHARDS]
            } else {
                Vec::new()
            },
            drawn: 0,
            issued: 0,
        })
    }

    pub fn length(&self) -> usize {
        self.length
    }

    /// Codes returned so far.
    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// Draws consumed so far (issued + skipped duplicates).
    pub fn drawn(&self) -> u64 {
        self.drawn
    }

    /// Memory held by the fingerprint set.
    pub fn nbytes(&self) -> usize {
        self.shards.iter().map(FingerprintShard::nbytes).sum()
    }

    /// Writes the code of the draw whose stream bytes start `block` (which must hold at
    /// least one byte past the draw) into `out`.
    #[inline]
    fn code_of(&self, block: &[u8], out: &mut [u8]) {
        let (p, r) = (self.prefix.len(), self.r);
        out[..p].copy_from_slice(&self.prefix);
        // The first 16 stream bytes as one big-endian integer serve up to 25 symbols, 5 bits
        // off the top at a time; longer payloads read the rest from a two-byte window.
        let mut head = [0u8; 16];
        let k = self.draw_bytes.min(16);
        head[..k].copy_from_slice(&block[..k]);
        let mut x = u128::from_be_bytes(head);
        let rows = &WEIGHTED_VALUE[self.weight_row..];
        let n_head = r.min(25);
        let (head_out, tail_out) = out[p..p + r].split_at_mut(n_head);
        let mut acc = self.prefix_acc;
        for (slot, row) in head_out.iter_mut().zip(rows) {
            let sym = (x >> 123) as usize & 31;
            x <<= 5;
            *slot = ALPHABET[sym];
            acc ^= row[sym];
        }
        for (j, (slot, row)) in tail_out.iter_mut().zip(&rows[n_head..]).enumerate() {
            let bit = 5 * (n_head + j);
            let i = bit >> 3;
            let w = (usize::from(block[i]) << 8) | usize::from(block[i + 1]);
            let sym = (w >> (11 - (bit & 7))) & 31;
            *slot = ALPHABET[sym];
            acc ^= row[sym];
        }
        // The check symbol has weight 1: it equals the weighted sum of the rest.
        out[self.length - 1] = ALPHABET[acc as usize & 31];
    }

    /// The fingerprint of a draw: the payload value, or its top 64 bits when wider.
    #[inline]
    fn fingerprint(&self, block: &[u8]) -> u64 {
        let bits = 5 * self.r;
        if bits >= 64 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&block[..8]);
            u64::from_be_bytes(b)
        } else {
            let x = block[..self.draw_bytes]
                .iter()
                .fold(0u64, |x, &b| (x << 8) | u64::from(b));
            x >> (8 * self.draw_bytes - bits)
        }
    }

    /// Stream bytes of draws `first..first + count` into `buf` (`count * draw_bytes`).
    fn read_draws(&self, first: u64, buf: &mut [u8]) {
        let mut reader = self.stream.clone();
        reader.set_position(first * self.draw_bytes as u64);
        reader.fill(buf);
    }

    /// Codes of draws `first..` into the rows of `out`, straight from the stream.
    fn write_draws(&self, first: u64, out: &mut [u8]) {
        let b = self.draw_bytes;
        let mut buf = [0u8; XOF_DRAWS * MAX_DRAW_BYTES + 1];
        let mut d = first;
        for rows in out.chunks_mut(XOF_DRAWS * self.length) {
            let count = rows.len() / self.length;
            self.read_draws(d, &mut buf[..count * b]);
            for (k, code) in rows.chunks_exact_mut(self.length).enumerate() {
                self.code_of(&buf[k * b..], code);
            }
            d += count as u64;
        }
    }

    /// Refuses a fill of `count` codes beyond 2^27 or past half the payload space, before
    /// anything is allocated for it.
    pub fn check_fill(&self, count: u64) -> Result<()> {
        if count > MAX_FILL {
            return Err(Error::invalid(format!(
                "count must be 0..{MAX_FILL} per fill, got {count}"
            )));
        }
        let total = self.issued + count;
        let bits = 5 * self.r as u32;
        // Half the payload space is 2^(5r - 1); from 5r = 65 on it exceeds any u64 total.
        if bits <= 64 && u128::from(total) > (1u128 << (bits - 1)) {
            return Err(Error::Exhausted(format!(
                "{total} codes would exceed half of the {}-symbol payload space",
                self.r
            )));
        }
        Ok(())
    }

    /// The next `count` codes, `count * length` bytes.
    pub fn fill(&mut self, count: u64, threads: usize) -> Result<Vec<u8>> {
        self.check_fill(count)?;
        let n = usize::try_from(count).map_err(|_| Error::invalid("count too large"))?;
        let mut out = vec![0u8; n * self.length];
        self.fill_into(&mut out, threads)?;
        Ok(out)
    }

    /// [`Minter::fill`] into `out`, whose length (a multiple of the code length) sets the
    /// count: lets the caller hand over memory it already owns.
    pub fn fill_into(&mut self, out: &mut [u8], threads: usize) -> Result<()> {
        crate::rows_of(out, self.length, "output")?;
        let count = (out.len() / self.length) as u64;
        self.check_fill(count)?;
        if self.unique {
            self.fill_unique(out, threads);
        } else {
            let first = self.drawn;
            let this = &*self;
            pool::for_rows(threads, out, self.length, |row, rows| {
                this.write_draws(first + row as u64, rows);
            });
            self.drawn += count;
        }
        self.issued += count;
        Ok(())
    }

    fn fill_unique(&mut self, out: &mut [u8], threads: usize) {
        let length = self.length;
        let b = self.draw_bytes;
        let want = out.len() / length;
        // Size every shard once for the whole fill (fingerprints spread evenly over the
        // shards), instead of growing step by step and rehashing each time.
        let expect = (self.issued as usize + want) / SHARDS;
        let expect = expect + expect / 32 + 64;
        for shard in &mut self.shards {
            shard.grow(expect);
        }
        let mut produced = 0;
        while produced < want {
            let m = (want - produced).min(ROUND_DRAWS);
            // Stream bytes of draws [drawn, drawn + m), plus one pad byte for `code_of`.
            let mut raw = vec![0u8; m * b + 1];
            let first = self.drawn;
            let this = &*self;
            pool::for_rows(threads, &mut raw[..m * b], b, |row, bytes| {
                for (k, part) in bytes.chunks_mut(XOF_DRAWS * b).enumerate() {
                    this.read_draws(first + (row + k * XOF_DRAWS) as u64, part);
                }
            });
            let skipped = self.dedupe(&raw, m, threads);
            let accepted = m - skipped.len();
            let dst = &mut out[produced * length..(produced + accepted) * length];
            let this = &*self;
            if skipped.is_empty() {
                pool::for_rows(threads, dst, length, |row, rows| {
                    for (k, code) in rows.chunks_exact_mut(length).enumerate() {
                        this.code_of(&raw[(row + k) * b..], code);
                    }
                });
            } else {
                let mut keep = Vec::with_capacity(accepted);
                let mut next_skip = skipped.iter().copied().peekable();
                for i in 0..m {
                    if next_skip.peek() == Some(&i) {
                        next_skip.next();
                    } else {
                        keep.push(i);
                    }
                }
                pool::for_rows(threads, dst, length, |row, rows| {
                    for (k, code) in rows.chunks_exact_mut(length).enumerate() {
                        this.code_of(&raw[keep[row + k] * b..], code);
                    }
                });
            }
            self.drawn += m as u64;
            produced += accepted;
        }
    }

    /// Inserts the fingerprints of the `m` draws in `raw` in draw order; returns the
    /// (sorted) indices of the draws to skip.
    fn dedupe(&mut self, raw: &[u8], m: usize, threads: usize) -> Vec<usize> {
        let b = self.draw_bytes;
        let mut keyed = vec![(0u64, 0u64); m];
        let this = &*self;
        pool::for_rows(threads, &mut keyed, 1, |row, ks| {
            for (k, slot) in ks.iter_mut().enumerate() {
                let fp = this.fingerprint(&raw[(row + k) * b..]);
                *slot = (fp, mix(fp));
            }
        });
        // Stable counting sort of draw indices by shard, so each shard sees its draws in
        // draw order.
        let shard_of = |h: u64| (h >> (64 - SHARD_BITS)) as usize;
        let mut bounds = [0usize; SHARDS + 1];
        for &(_, h) in &keyed {
            bounds[shard_of(h) + 1] += 1;
        }
        for s in 0..SHARDS {
            bounds[s + 1] += bounds[s];
        }
        let mut order = vec![0u32; m];
        let mut fillp = bounds;
        for (i, &(_, h)) in keyed.iter().enumerate() {
            let s = shard_of(h);
            // m <= ROUND_DRAWS, so the index fits in u32.
            order[fillp[s]] = i as u32;
            fillp[s] += 1;
        }
        let work = |(s, shard): (usize, &mut FingerprintShard)| -> Vec<usize> {
            let mine = &order[bounds[s]..bounds[s + 1]];
            // Sized once for the whole batch, so no insert below moves the table.
            shard.grow(shard.len + mine.len());
            let cap = shard.slots.len();
            let mut skipped = Vec::new();
            for (k, &i) in mine.iter().enumerate() {
                if let Some(&ahead) = mine.get(k + PREFETCH_AHEAD) {
                    // Touch a later draw's home slot so its cache miss overlaps this work.
                    let h = keyed[ahead as usize].1;
                    std::hint::black_box(shard.slots[FingerprintShard::home(h, cap)]);
                }
                let (fp, h) = keyed[i as usize];
                if !shard.insert(fp, h) {
                    skipped.push(i as usize);
                }
            }
            skipped
        };
        let mut skipped: Vec<usize> = if pool::parallel(threads, m) {
            pool::run(threads, || {
                self.shards
                    .par_iter_mut()
                    .enumerate()
                    .flat_map_iter(work)
                    .collect()
            })
        } else {
            self.shards.iter_mut().enumerate().flat_map(work).collect()
        };
        skipped.sort_unstable();
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alphabet::is_valid;
    use std::collections::HashSet;

    /// The sequential definition of §4, written as plainly as possible.
    struct Reference {
        m: Minter,
        seen: HashSet<u64>,
    }

    impl Reference {
        fn fill(&mut self, count: usize) -> Vec<u8> {
            let b = self.m.draw_bytes;
            let mut out = Vec::new();
            let mut got = 0;
            while got < count {
                let mut block = vec![0u8; b + 1];
                self.m.read_draws(self.m.drawn, &mut block[..b]);
                self.m.drawn += 1;
                if self.m.unique && !self.seen.insert(self.m.fingerprint(&block)) {
                    continue;
                }
                let mut code = vec![0u8; self.m.length];
                self.m.code_of(&block, &mut code);
                out.extend_from_slice(&code);
                got += 1;
            }
            out
        }
    }

    fn seed(k: u8) -> [u8; 32] {
        core::array::from_fn(|i| i as u8 ^ k)
    }

    #[test]
    fn codes_are_valid_and_match_stream_layout() {
        let mut m = Minter::new(16, b"", &seed(1), false).expect("minter");
        let codes = m.fill(1000, 1).expect("fill");
        assert!(codes.chunks(16).all(is_valid));
        // Draw 0 is the top 75 bits of the first 10 stream bytes.
        let mut h = blake3::Hasher::new_keyed(&seed(1));
        h.update(MINT_CONTEXT);
        let mut first = [0u8; 10];
        h.finalize_xof().fill(&mut first);
        let x = first.iter().fold(0u128, |x, &b| (x << 8) | u128::from(b));
        for (j, &c) in codes[..15].iter().enumerate() {
            let sym = (x >> (80 - 5 * (j + 1))) & 31;
            assert_eq!(c, ALPHABET[sym as usize]);
        }
        assert_eq!(m.issued(), 1000);
        assert_eq!(m.drawn(), 1000);
    }

    #[test]
    fn parallel_equals_sequential_definition() {
        for (length, prefix, unique) in [
            (5usize, &b""[..], true),
            (6, &b"Q"[..], true),
            (16, &b"AB"[..], true),
            (16, &b""[..], false),
            (31, &b"X"[..], true),
        ] {
            let mut fast = Minter::new(length, prefix, &seed(9), unique).expect("minter");
            let mut slow = Reference {
                m: Minter::new(length, prefix, &seed(9), unique).expect("minter"),
                seen: HashSet::new(),
            };
            for (count, threads) in [(100usize, 1usize), (60_000, 2), (7, 3), (200_000, 0)] {
                let a = fast.fill(count as u64, threads).expect("fill");
                let b = slow.fill(count);
                assert_eq!(a, b, "L={length} prefix={prefix:?} count={count}");
                assert_eq!(fast.drawn(), slow.m.drawn);
            }
        }
    }

    #[test]
    fn tiny_payload_never_repeats_and_refuses_past_half() {
        // r = 4: 20 bits, so the second half of the allowance hits many duplicates.
        let mut m = Minter::new(5, b"", &seed(3), true).expect("minter");
        let half = 1u64 << 19;
        let mut all = HashSet::new();
        for _ in 0..4 {
            let codes = m.fill(half / 4, 2).expect("fill");
            for c in codes.chunks(5) {
                assert!(is_valid(c));
                assert!(all.insert(c.to_vec()), "repeated code");
            }
        }
        assert!(m.drawn() > m.issued());
        assert!(m.fill(1, 1).is_err());
        assert_eq!(m.issued(), half);
        // Memory stays near 8-15 bytes per fingerprint.
        assert!(m.nbytes() <= 16 * half as usize, "{}", m.nbytes());
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(Minter::new(3, b"", &seed(0), true).is_err());
        assert!(Minter::new(16, b"", &seed(0)[..31], true).is_err());
        assert!(Minter::new(16, b"U", &seed(0), true).is_err());
        assert!(Minter::new(5, b"ABCD", &seed(0), true).is_err());
        let mut m = Minter::new(16, b"", &seed(0), true).expect("minter");
        assert!(m.fill(MAX_FILL + 1, 1).is_err());
        assert_eq!(m.fill(0, 1).expect("fill").len(), 0);
    }
}
