//! Correction (docs/code-format.md §8) against a small index built from the input: no
//! panic; every candidate is issued, valid and one edit away from what was typed, and the
//! status matches the candidates. A single edit of an issued code always finds it.
#![no_main]

use cardmint_core::alphabet::{check_symbol, is_valid, ALPHABET};
use cardmint_core::correct::{correct, cstatus, MALFORMED_OFFSET};
use cardmint_core::digest::digest;
use cardmint_core::index::DigestIndex;
use cardmint_core::normalize::{normalize_lenient, status};
use cardmint_core::{MAX_LENGTH, MIN_LENGTH};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [7u8; 32];

fn one_edit_apart(typed: &[u8], cand: &[u8]) -> bool {
    let diff: Vec<usize> = (0..typed.len()).filter(|&i| typed[i] != cand[i]).collect();
    match diff.as_slice() {
        [_] => true,
        [a, b] => {
            *b == a + 1 && typed[*a] == cand[*b] && typed[*b] == cand[*a] && typed[*a] != b'U'
        }
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let length = MIN_LENGTH + usize::from(data[0]) % (MAX_LENGTH - MIN_LENGTH + 1);
    let issued_n = 1 + usize::from(data[1] % 8);
    let edit = data[2];
    let rest = &data[3..];
    // Issued codes: payloads drawn from the input (cycled), completed with their check.
    let mut issued: Vec<Vec<u8>> = Vec::new();
    for k in 0..issued_n {
        let payload: Vec<u8> = (0..length - 1)
            .map(|j| ALPHABET[usize::from(rest.get(k * 7 + j).copied().unwrap_or(0) & 31)])
            .collect();
        let mut code = payload.clone();
        code.push(check_symbol(&payload).expect("symbols"));
        issued.push(code);
    }
    let flat = issued.concat();
    let digests = digest(&flat, length, &KEY, 16, 1).expect("digest");
    let mut index = DigestIndex::new(16).expect("width");
    index.insert(&digests, 1).expect("insert");

    // Either the raw bytes as typed, or one edit of the first issued code.
    let typed: Vec<u8> = if edit & 0x80 != 0 {
        rest.to_vec()
    } else {
        let mut t = issued[0].clone();
        let p = usize::from(edit & 0x1f) % length;
        match (edit >> 5) & 3 {
            0 => t[p] = ALPHABET[usize::from(rest.first().copied().unwrap_or(1) & 31)],
            1 if p + 1 < length => t.swap(p, p + 1),
            2 => t[p] = b'U',
            _ => t = t.to_ascii_lowercase(),
        }
        t
    };
    let got = correct(&typed, length, &index, &KEY).expect("valid arguments");
    let mut syms = vec![0u8; length];
    let (lst, erased) = normalize_lenient(&typed, &mut syms);
    if lst != status::OK {
        assert_eq!(got.status, MALFORMED_OFFSET + lst);
        assert!(got.normalized.is_empty() && got.candidates.is_empty());
        return;
    }
    assert_eq!(got.normalized, syms);
    let is_issued = |c: &[u8]| issued.iter().any(|i| i.as_slice() == c);
    if erased.is_none() && is_valid(&syms) {
        let want = if is_issued(&syms) {
            cstatus::OK
        } else {
            cstatus::UNKNOWN
        };
        assert_eq!(got.status, want);
        assert!(got.candidates.is_empty());
        return;
    }
    let want = match got.candidates.len() {
        0 => cstatus::NOT_FOUND,
        1 => cstatus::CORRECTED,
        _ => cstatus::AMBIGUOUS,
    };
    assert_eq!(got.status, want);
    for cand in &got.candidates {
        assert!(is_valid(cand) && is_issued(cand));
        assert!(one_edit_apart(&syms, cand), "{syms:?} -> {cand:?}");
        if let Some(p) = erased {
            assert!((0..length).all(|i| i == p || cand[i] == syms[i]));
        }
    }
    let mut dedup = got.candidates.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(
        dedup.len(),
        got.candidates.len(),
        "a candidate listed twice"
    );
    // One edit of an issued code (that changed it) is always found again.
    if edit & 0x80 == 0 && syms != issued[0] {
        assert!(
            got.candidates.contains(&issued[0]),
            "{syms:?} lost {:?}",
            issued[0]
        );
    }
});
