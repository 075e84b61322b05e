//! normalize / check / check_one / lenient normalization / the bulk form on arbitrary
//! bytes: no panic, and the invariants of docs/code-format.md §3 and §8 hold.
#![no_main]

use cardmint_core::alphabet::{is_valid, ALPHABET};
use cardmint_core::normalize::{
    check, check_into, check_one, normalize, normalize_into, normalize_lenient, status,
    MAX_INPUT_BYTES,
};
use cardmint_core::{MAX_LENGTH, MIN_LENGTH};
use libfuzzer_sys::fuzz_target;

fn offsets_of(cuts: &[usize]) -> Vec<u8> {
    cuts.iter()
        .flat_map(|&c| i64::try_from(c).unwrap_or(i64::MAX).to_le_bytes())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, raw)) = data.split_first() else {
        return;
    };
    let length = MIN_LENGTH + usize::from(first) % (MAX_LENGTH - MIN_LENGTH + 1);
    let mut strict = vec![0u8; length];
    let st = normalize_into(raw, &mut strict);
    assert!(st <= status::TOO_LONG, "normalize never says BAD_CHECK");
    assert_eq!(st == status::TOO_LONG, raw.len() > MAX_INPUT_BYTES);
    if raw.len() <= MAX_INPUT_BYTES {
        assert_eq!(st == status::BAD_UTF8, std::str::from_utf8(raw).is_err());
    }
    if st == status::OK {
        assert!(strict.iter().all(|c| ALPHABET.contains(c)), "{strict:?}");
        // Idempotent: the canonical form normalizes to itself.
        let mut again = vec![0u8; length];
        assert_eq!(normalize_into(&strict, &mut again), status::OK);
        assert_eq!(again, strict);
    } else {
        assert!(strict.iter().all(|&c| c == 0), "a refused slot is zeros");
    }

    let mut checked = vec![0u8; length];
    let cst = check_into(raw, &mut checked);
    if st == status::OK {
        assert_eq!(checked, strict);
        let want = if is_valid(&strict) {
            status::OK
        } else {
            status::BAD_CHECK
        };
        assert_eq!(cst, want);
    } else {
        assert_eq!(cst, st);
    }
    let (one_st, one_code) = check_one(raw, length).expect("a valid length");
    assert_eq!(one_st, cst);
    if cst == status::OK || cst == status::BAD_CHECK {
        assert_eq!(one_code, checked);
    } else {
        assert!(one_code.is_empty());
    }

    // Lenient (correction): the same as strict, except one U may be an erasure.
    let mut lenient = vec![0u8; length];
    let (lst, erased) = normalize_lenient(raw, &mut lenient);
    if st == status::OK {
        assert_eq!((lst, erased), (status::OK, None));
        assert_eq!(lenient, strict);
    }
    if let Some(p) = erased {
        assert_eq!(lst, status::OK);
        assert_eq!(lenient[p], b'U');
        assert_eq!(lenient.iter().filter(|&&c| c == b'U').count(), 1);
        assert_eq!(
            st,
            status::BAD_CHAR,
            "strict refuses the U lenient accepted"
        );
    }

    // The bulk form over the input cut in up to four pieces answers like the scalar form.
    let mut cuts = vec![0usize];
    for &b in data.iter().take(3) {
        let last = *cuts.last().unwrap_or(&0);
        cuts.push((last + usize::from(b)).min(raw.len()));
    }
    cuts.push(raw.len());
    let offsets = offsets_of(&cuts);
    let (codes, stats) = normalize(raw, &offsets, length, 1).expect("well-formed offsets");
    let (ccodes, cstats) = check(raw, &offsets, length, 1).expect("well-formed offsets");
    for (i, w) in cuts.windows(2).enumerate() {
        let piece = &raw[w[0]..w[1]];
        let mut slot = vec![0u8; length];
        assert_eq!(stats[i], normalize_into(piece, &mut slot));
        assert_eq!(&codes[i * length..(i + 1) * length], slot.as_slice());
        assert_eq!(cstats[i], check_into(piece, &mut slot));
        assert_eq!(&ccodes[i * length..(i + 1) * length], slot.as_slice());
    }
    // Offsets that run backwards or past the data are an error, never a panic.
    let bad = offsets_of(&[raw.len(), raw.len() + 1]);
    assert!(normalize(raw, &bad, length, 1).is_err());
});
