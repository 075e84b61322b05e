//! Verifying a stretch of the BLAKE3 audit chain (docs/storage.md) from packed columns.
//!
//! Event `i` hashes `prev_hash ‖ u64le id ‖ i64le at_µs ‖ for actor, action, subject, detail:
//! u32le length ‖ utf-8`. A stretch checks out when every id is the one after the previous,
//! every stored `prev_hash` is the hash before it and every stored hash is recomputed. Each
//! row only needs its own stored columns, so rows are checked in parallel and the verdict is
//! the lowest failing row, with the first failing check of that row.

use rayon::prelude::*;

use crate::{pool, Error, Result};

pub const HASH_LEN: usize = 32;
/// Text fields per event: actor, action, subject, detail.
pub const FIELDS: usize = 4;

/// Why a row fails, in the order the checks run.
pub const OK: u8 = 0;
pub const MISSING: u8 = 1;
pub const OUT_OF_ORDER: u8 = 2;
pub const UNLINKED: u8 = 3;
pub const EDITED: u8 = 4;

/// The packed columns of `n` consecutive events.
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    /// `n` ids.
    pub ids: &'a [i64],
    /// `n` times, µs since the epoch.
    pub at_us: &'a [i64],
    /// The text fields, field `k` of event `i` is `text[offsets[4i+k]..offsets[4i+k+1]]`.
    pub text: &'a [u8],
    /// `4n + 1` offsets into `text`.
    pub offsets: &'a [i64],
    /// `32n` bytes of stored previous hashes.
    pub prev_hashes: &'a [u8],
    /// `32n` bytes of stored hashes.
    pub hashes: &'a [u8],
}

/// Outcome: events that checked out, the hash of the last of them (`prev_head` if none),
/// the index of the first bad row and why (`None`/`OK` when all check out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub checked: usize,
    pub head: [u8; HASH_LEN],
    pub first_bad: Option<usize>,
    pub problem: u8,
}

impl Columns<'_> {
    /// Rows, once every column is consistent with the others.
    pub fn rows(&self) -> Result<usize> {
        let n = self.ids.len();
        if self.at_us.len() != n {
            return Err(Error::invalid(format!(
                "{n} ids but {} times",
                self.at_us.len()
            )));
        }
        if self.offsets.len() != FIELDS * n + 1 {
            return Err(Error::invalid(format!(
                "{n} events need {} offsets, got {}",
                FIELDS * n + 1,
                self.offsets.len()
            )));
        }
        for (what, col) in [("prev_hashes", self.prev_hashes), ("hashes", self.hashes)] {
            if col.len() != HASH_LEN * n {
                return Err(Error::invalid(format!(
                    "{what}: {} bytes, {n} events need {}",
                    col.len(),
                    HASH_LEN * n
                )));
            }
        }
        let size = self.text.len() as i64;
        if self.offsets[0] < 0
            || self.offsets[FIELDS * n] > size
            || self.offsets.windows(2).any(|w| w[1] < w[0])
        {
            return Err(Error::invalid(format!(
                "offsets must rise from >= 0 to <= {size} (the text size)"
            )));
        }
        Ok(n)
    }

    /// The chain hash of row `i` over the previous hash `prev`.
    pub fn hash_row(&self, i: usize, prev: &[u8]) -> [u8; HASH_LEN] {
        let mut msg = Vec::new();
        self.hash_row_with(i, prev, &mut msg)
    }

    /// [`Columns::hash_row`] building the message in `msg` (reused across rows).
    fn hash_row_with(&self, i: usize, prev: &[u8], msg: &mut Vec<u8>) -> [u8; HASH_LEN] {
        msg.clear();
        msg.extend_from_slice(prev);
        msg.extend_from_slice(&self.ids[i].to_le_bytes());
        msg.extend_from_slice(&self.at_us[i].to_le_bytes());
        for k in 0..FIELDS {
            let (a, b) = (
                self.offsets[FIELDS * i + k] as usize,
                self.offsets[FIELDS * i + k + 1] as usize,
            );
            msg.extend_from_slice(&(((b - a) as u64 & 0xffff_ffff) as u32).to_le_bytes());
            msg.extend_from_slice(&self.text[a..b]);
        }
        *blake3::hash(msg).as_bytes()
    }

    fn prev(&self, i: usize) -> &[u8] {
        &self.prev_hashes[i * HASH_LEN..(i + 1) * HASH_LEN]
    }

    fn hash(&self, i: usize) -> &[u8] {
        &self.hashes[i * HASH_LEN..(i + 1) * HASH_LEN]
    }

    /// Why row `i` fails given the previous stored hash `before`, or `OK`.
    fn check(&self, i: usize, want: i64, before: &[u8], msg: &mut Vec<u8>) -> u8 {
        let id = self.ids[i];
        if id != want {
            return if id > want { MISSING } else { OUT_OF_ORDER };
        }
        if self.prev(i) != before {
            return UNLINKED;
        }
        if self.hash_row_with(i, before, msg)[..] != *self.hash(i) {
            return EDITED;
        }
        OK
    }
}

/// Checks `cols` as the stretch after `start` events ending in `prev_head`: the first event
/// must be id `start + 1` and link to `prev_head`.
pub fn verify(prev_head: &[u8], start: u64, cols: &Columns<'_>, threads: usize) -> Result<Verdict> {
    let head: [u8; HASH_LEN] = prev_head.try_into().map_err(|_| {
        Error::invalid(format!(
            "prev_head must be {HASH_LEN} bytes, got {}",
            prev_head.len()
        ))
    })?;
    let n = cols.rows()?;
    let start = i64::try_from(start)
        .map_err(|_| Error::invalid(format!("start {start} is beyond the id range")))?;
    if start.checked_add(n as i64).is_none() {
        return Err(Error::invalid(format!(
            "start {start} + {n} events overflow an id"
        )));
    }
    let before = |i: usize| if i == 0 { &head[..] } else { cols.hash(i - 1) };
    let scan = |lo: usize, hi: usize| -> Option<(usize, u8)> {
        let mut msg = Vec::with_capacity(256);
        (lo..hi).find_map(|i| {
            let why = cols.check(i, start + i as i64 + 1, before(i), &mut msg);
            (why != OK).then_some((i, why))
        })
    };
    let bad = if pool::parallel(threads, n) {
        let step = pool::chunk_rows(n, threads);
        pool::run(threads, || {
            (0..n.div_ceil(step))
                .into_par_iter()
                .map(|c| scan(c * step, ((c + 1) * step).min(n)))
                .find_first(Option::is_some)
                .flatten()
        })
    } else {
        scan(0, n)
    };
    Ok(match bad {
        None => {
            let mut last = head;
            if n > 0 {
                last.copy_from_slice(cols.hash(n - 1));
            }
            Verdict {
                checked: n,
                head: last,
                first_bad: None,
                problem: OK,
            }
        }
        Some((i, why)) => {
            let mut last = head;
            last.copy_from_slice(before(i));
            Verdict {
                checked: i,
                head: last,
                first_bad: Some(i),
                problem: why,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chain {
        ids: Vec<i64>,
        at: Vec<i64>,
        text: Vec<u8>,
        offsets: Vec<i64>,
        prev: Vec<u8>,
        hashes: Vec<u8>,
    }

    impl Chain {
        fn new(n: usize) -> Chain {
            let mut c = Chain {
                ids: vec![],
                at: vec![],
                text: vec![],
                offsets: vec![0],
                prev: vec![],
                hashes: vec![],
            };
            let mut head = [0u8; 32];
            for i in 0..n {
                c.ids.push(i as i64 + 1);
                c.at.push(1_700_000_000_000_000 + i as i64);
                for f in [
                    format!("token:{}", i % 3),
                    "card.bind".into(),
                    format!("card:{i}"),
                    "{}".into(),
                ] {
                    c.text.extend_from_slice(f.as_bytes());
                    c.offsets.push(c.text.len() as i64);
                }
                c.prev.extend_from_slice(&head);
                head = c.cols().hash_row(i, &head);
                c.hashes.extend_from_slice(&head);
            }
            c
        }

        fn cols(&self) -> Columns<'_> {
            Columns {
                ids: &self.ids,
                at_us: &self.at,
                text: &self.text,
                offsets: &self.offsets,
                prev_hashes: &self.prev,
                hashes: &self.hashes,
            }
        }
    }

    #[test]
    fn matches_the_message_layout() {
        let c = Chain::new(1);
        let mut msg = vec![0u8; 32];
        msg.extend_from_slice(&1u64.to_le_bytes());
        msg.extend_from_slice(&1_700_000_000_000_000i64.to_le_bytes());
        for f in ["token:0", "card.bind", "card:0", "{}"] {
            msg.extend_from_slice(&(f.len() as u32).to_le_bytes());
            msg.extend_from_slice(f.as_bytes());
        }
        assert_eq!(&c.hashes[..], blake3::hash(&msg).as_bytes());
    }

    #[test]
    fn finds_the_first_bad_row_in_parallel_too() {
        let n = 20_000;
        let mut c = Chain::new(n);
        for threads in [1, 2] {
            let v = verify(&[0u8; 32], 0, &c.cols(), threads).expect("verify");
            assert_eq!((v.checked, v.first_bad, v.problem), (n, None, OK));
            assert_eq!(&v.head[..], &c.hashes[(n - 1) * 32..]);
        }
        c.text[c.offsets[4 * 15_000] as usize] ^= 1;
        c.text[c.offsets[4 * 19_000] as usize] ^= 1;
        c.ids[17_000] = 1;
        for threads in [1, 2] {
            let v = verify(&[0u8; 32], 0, &c.cols(), threads).expect("verify");
            assert_eq!(
                (v.checked, v.first_bad, v.problem),
                (15_000, Some(15_000), EDITED)
            );
            assert_eq!(&v.head[..], &c.hashes[14_999 * 32..15_000 * 32]);
        }
        let v = verify(&c.hashes[..32], 1, &c.cols(), 1).expect("verify");
        assert_eq!((v.first_bad, v.problem), (Some(0), OUT_OF_ORDER));
        c.ids[0] = 5;
        let v = verify(&[0u8; 32], 0, &c.cols(), 1).expect("verify");
        assert_eq!((v.checked, v.first_bad, v.problem), (0, Some(0), MISSING));
        c.ids[0] = 0;
        let v = verify(&[0u8; 32], 0, &c.cols(), 1).expect("verify");
        assert_eq!(
            (v.checked, v.first_bad, v.problem),
            (0, Some(0), OUT_OF_ORDER)
        );
        c.ids[0] = 1;
        let v = verify(&[1u8; 32], 0, &c.cols(), 1).expect("verify");
        assert_eq!(
            (v.first_bad, v.problem, v.head),
            (Some(0), UNLINKED, [1u8; 32])
        );
        assert!(verify(&[0u8; 31], 0, &c.cols(), 1).is_err());
        let short = Columns {
            hashes: &c.hashes[..32],
            ..c.cols()
        };
        assert!(verify(&[0u8; 32], 0, &short, 1).is_err());
    }
}
