//! Correcting a mistyped code against the index of issued codes (code-format §8).

use crate::alphabet::{div, syndrome_values, ALPHABET, EXP, VALUE};
use crate::digest::{check_key, digest_into};
use crate::index::DigestIndex;
use crate::normalize::{normalize_lenient, status};
use crate::{check_length, Result, MAX_LENGTH};

/// Correction statuses; malformed inputs report their §3.1 status plus [`MALFORMED_OFFSET`].
pub mod cstatus {
    pub const OK: u8 = 0;
    pub const UNKNOWN: u8 = 1;
    pub const CORRECTED: u8 = 2;
    pub const AMBIGUOUS: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
}
pub const MALFORMED_OFFSET: u8 = 16;

/// Whether two symbols are a look-alike pair of §2.2 (either order).
pub fn lookalike(a: u8, b: u8) -> bool {
    const PAIRS: [(u8, u8); 10] = [
        (b'8', b'B'),
        (b'5', b'S'),
        (b'2', b'Z'),
        (b'6', b'G'),
        (b'0', b'D'),
        (b'0', b'Q'),
        (b'1', b'J'),
        (b'1', b'7'),
        (b'M', b'N'),
        (b'V', b'Y'),
    ];
    PAIRS
        .iter()
        .any(|&(x, y)| (a, b) == (x, y) || (a, b) == (y, x))
}

/// What `correct` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    pub status: u8,
    /// The normalized symbols (an erasure shows as `U`), empty when malformed.
    pub normalized: Vec<u8>,
    /// Issued candidates in §8 order.
    pub candidates: Vec<Vec<u8>>,
}

/// Corrects `raw` against `index` (digest size = the index width) under `key`.
pub fn correct(raw: &[u8], length: usize, index: &DigestIndex, key: &[u8]) -> Result<Correction> {
    check_length(length)?;
    let key = check_key(key, "key")?;
    let mut buf = [0u8; MAX_LENGTH];
    let syms = &mut buf[..length];
    let (st, erasure) = normalize_lenient(raw, syms);
    if st != status::OK {
        return Ok(Correction {
            status: MALFORMED_OFFSET + st,
            normalized: Vec::new(),
            candidates: Vec::new(),
        });
    }
    let width = index.width();
    let mut dig = [0u8; 32];
    let mut issued = |code: &[u8]| {
        digest_into(&key, code, &mut dig[..width]);
        index.find(&dig[..width]).is_some()
    };
    let mut values = [0u8; MAX_LENGTH];
    for (v, &c) in values.iter_mut().zip(syms.iter()) {
        // The erased U counts as 0: its position is solved for below.
        *v = VALUE[c as usize] & 31;
    }
    let values = &values[..length];
    let syndrome = syndrome_values(values);
    if erasure.is_none() && syndrome == 0 {
        let status = if issued(syms) {
            cstatus::OK
        } else {
            cstatus::UNKNOWN
        };
        return Ok(Correction {
            status,
            normalized: syms.to_vec(),
            candidates: Vec::new(),
        });
    }
    let mut alike = Vec::new();
    let mut other = Vec::new();
    let positions = match erasure {
        Some(p) => p..p + 1,
        None => 0..length,
    };
    for p in positions {
        // Removing symbol p leaves `rest`; the fix is the one value that cancels it.
        let weight = EXP[(length - 1 - p) % 31];
        let rest = syndrome ^ crate::alphabet::mul(weight, values[p]);
        let fix = div(rest, weight);
        let mut cand = syms.to_vec();
        cand[p] = ALPHABET[fix as usize];
        if erasure.is_some() || lookalike(syms[p], cand[p]) {
            alike.push(cand);
        } else {
            other.push(cand);
        }
    }
    let mut swaps = Vec::new();
    if erasure.is_none() {
        for p in 0..length - 1 {
            let (u, v) = (values[p], values[p + 1]);
            if u == v {
                continue;
            }
            // Swapping changes the sum by a^k (a + 1) (u + v), k = the right one's weight.
            let k = EXP[(length - 2 - p) % 31];
            let delta = crate::alphabet::mul(crate::alphabet::mul(k, 3), u ^ v);
            if delta == syndrome {
                let mut cand = syms.to_vec();
                cand.swap(p, p + 1);
                swaps.push(cand);
            }
        }
    }
    let candidates: Vec<Vec<u8>> = alike
        .into_iter()
        .chain(swaps)
        .chain(other)
        .filter(|c| issued(c))
        .collect();
    let status = match candidates.len() {
        0 => cstatus::NOT_FOUND,
        1 => cstatus::CORRECTED,
        _ => cstatus::AMBIGUOUS,
    };
    Ok(Correction {
        status,
        normalized: syms.to_vec(),
        candidates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alphabet::is_valid;
    use crate::digest::digest;

    const KEY: [u8; 32] = [1u8; 32];

    fn index_of(codes: &[&[u8]]) -> DigestIndex {
        let flat: Vec<u8> = codes.concat();
        let d = digest(&flat, codes[0].len(), &KEY, 16, 1).expect("digest");
        let mut idx = DigestIndex::new(16).expect("index");
        idx.build(&d, 1).expect("build");
        idx
    }

    fn valid(payload: &[u8]) -> Vec<u8> {
        let mut c = payload.to_vec();
        c.push(crate::alphabet::check_symbol(payload).expect("payload"));
        c
    }

    #[test]
    fn statuses() {
        let code = valid(b"7K3M9QXD2HVA5RT");
        let idx = index_of(&[&code]);
        let ok = correct(&code, 16, &idx, &KEY).expect("correct");
        assert_eq!((ok.status, ok.candidates.len()), (cstatus::OK, 0));
        let other = valid(b"7K3M9QXD2HVA5RA");
        let unk = correct(&other, 16, &idx, &KEY).expect("correct");
        assert_eq!(unk.status, cstatus::UNKNOWN);
        // A single substitution is corrected back.
        let mut typo = code.clone();
        typo[4] = if typo[4] == b'A' { b'B' } else { b'A' };
        let c = correct(&typo, 16, &idx, &KEY).expect("correct");
        assert_eq!(c.status, cstatus::CORRECTED);
        assert_eq!(c.candidates, vec![code.clone()]);
        assert_eq!(c.normalized, typo);
        // An adjacent transposition too.
        let mut swapped = code.clone();
        swapped.swap(2, 3);
        let c = correct(&swapped, 16, &idx, &KEY).expect("correct");
        assert_eq!(c.candidates, vec![code.clone()]);
        // An erasure.
        let mut erased = code.clone();
        erased[7] = b'U';
        let c = correct(&erased, 16, &idx, &KEY).expect("correct");
        assert_eq!(
            (c.status, c.candidates.clone()),
            (cstatus::CORRECTED, vec![code.clone()])
        );
        assert_eq!(c.normalized, erased);
        let c = correct(b"UU", 16, &idx, &KEY).expect("correct");
        assert_eq!(c.status, MALFORMED_OFFSET + status::BAD_CHAR);
        let c = correct(b"", 16, &idx, &KEY).expect("correct");
        assert_eq!(c.status, MALFORMED_OFFSET + status::EMPTY);
        // Nothing issued nearby.
        let idx2 = index_of(&[&other]);
        let c = correct(&typo, 16, &idx2, &KEY).expect("correct");
        assert_eq!(c.status, cstatus::NOT_FOUND);
    }

    #[test]
    fn every_candidate_is_a_valid_code_in_order() {
        // Index every candidate the generator can produce, then check the order of §8.
        let code = valid(b"8BS52Z6GMNVY10J");
        let mut typo = code.clone();
        typo[0] = b'B';
        let mut all: Vec<Vec<u8>> = Vec::new();
        let s = syndrome_values(&typo.iter().map(|&c| VALUE[c as usize]).collect::<Vec<_>>());
        assert_ne!(s, 0);
        for p in 0..16 {
            for &sym in ALPHABET {
                let mut c = typo.clone();
                c[p] = sym;
                if is_valid(&c) {
                    all.push(c);
                }
            }
            if p < 15 {
                let mut c = typo.clone();
                c.swap(p, p + 1);
                if c != typo && is_valid(&c) {
                    all.push(c);
                }
            }
        }
        let refs: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
        let idx = index_of(&refs);
        let c = correct(&typo, 16, &idx, &KEY).expect("correct");
        assert_eq!(c.status, cstatus::AMBIGUOUS);
        assert_eq!(c.candidates.len(), all.len());
        // Look-alikes first: position 0 goes back from B to 8.
        assert_eq!(c.candidates[0], code);
        let first_other = c
            .candidates
            .iter()
            .position(|cand| {
                let diff: Vec<usize> = (0..16).filter(|&i| cand[i] != typo[i]).collect();
                diff.len() == 1 && !lookalike(typo[diff[0]], cand[diff[0]])
            })
            .expect("an ordinary substitution");
        for cand in &c.candidates[first_other..] {
            let diff = (0..16).filter(|&i| cand[i] != typo[i]).count();
            assert_eq!(diff, 1, "transposition after ordinary substitutions");
        }
    }
}
