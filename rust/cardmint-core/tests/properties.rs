//! Property tests: the invariants of code-format §2-§8 over random inputs.

use proptest::prelude::*;

use cardmint_core::alphabet::{check_symbol, is_valid, ALPHABET};
use cardmint_core::correct::{correct, cstatus};
use cardmint_core::digest::digest;
use cardmint_core::index::DigestIndex;
use cardmint_core::mint::Minter;
use cardmint_core::normalize::{normalize_into, status};
use cardmint_core::serial;

fn payload(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(&ALPHABET[..]), 3..=max)
}

fn valid_code(max: usize) -> impl Strategy<Value = Vec<u8>> {
    payload(max).prop_map(|mut p| {
        let c = check_symbol(&p).expect("payload");
        p.push(c);
        p
    })
}

/// Text made of pieces normalization has an opinion on: symbols, aliases, lower case,
/// separators, full-width forms, ignorables, bad characters.
fn messy() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "A", "z", "o", "I", "l", "7", "-", " ", "\t", "\u{00A0}", "\u{200B}", "\u{FEFF}",
        "\u{2014}", "Ａ", "９", "①", "Ⅻ", "𝐊", "U", "u", "*", "é", "ß", "\u{3000}", "\u{FE0F}",
    ]);
    prop::collection::vec(pieces, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn normalize_is_idempotent(s in messy(), length in 4usize..=31) {
        let mut once = vec![0u8; length];
        if normalize_into(s.as_bytes(), &mut once) == status::OK {
            let mut twice = vec![0u8; length];
            prop_assert_eq!(normalize_into(&once, &mut twice), status::OK);
            prop_assert_eq!(once, twice);
        }
    }

    #[test]
    fn normalize_ignores_case_and_separators(code in valid_code(30)) {
        let lower = String::from_utf8(code.clone()).expect("ascii").to_lowercase();
        let spaced: String = lower.chars().flat_map(|c| [c, '-', ' ']).collect();
        let mut out = vec![0u8; code.len()];
        prop_assert_eq!(normalize_into(spaced.as_bytes(), &mut out), status::OK);
        prop_assert_eq!(out, code);
    }

    #[test]
    fn every_minted_code_validates(
        seed in prop::array::uniform32(any::<u8>()),
        length in 5usize..=31,
        unique in any::<bool>(),
        count in 0u64..300,
    ) {
        let mut m = Minter::new(length, b"", &seed, unique).expect("minter");
        let codes = m.fill(count, 1).expect("fill");
        prop_assert_eq!(codes.len() as u64, count * length as u64);
        for c in codes.chunks(length) {
            prop_assert!(is_valid(c));
        }
    }

    #[test]
    fn substitutions_and_transpositions_are_caught(code in valid_code(30), pos in 0usize..31, sym in 0usize..32) {
        prop_assert!(is_valid(&code));
        let pos = pos % code.len();
        let mut bad = code.clone();
        bad[pos] = ALPHABET[sym];
        prop_assert_eq!(is_valid(&bad), bad == code);
        if pos + 1 < code.len() {
            let mut swapped = code.clone();
            swapped.swap(pos, pos + 1);
            prop_assert_eq!(is_valid(&swapped), swapped == code);
        }
    }

    #[test]
    fn single_typo_is_corrected(code in valid_code(30), pos in 0usize..31, sym in 0usize..32) {
        let key = [3u8; 32];
        let length = code.len();
        let d = digest(&code, length, &key, 16, 1).expect("digest");
        let mut idx = DigestIndex::new(16).expect("index");
        idx.build(&d, 1).expect("build");
        let mut typo = code.clone();
        typo[pos % length] = ALPHABET[sym];
        let c = correct(&typo, length, &idx, &key).expect("correct");
        if typo == code {
            prop_assert_eq!(c.status, cstatus::OK);
        } else {
            prop_assert_eq!(c.status, cstatus::CORRECTED);
            prop_assert_eq!(&c.candidates[0], &code);
        }
        let mut erased = code.clone();
        erased[pos % length] = b'U';
        let c = correct(&erased, length, &idx, &key).expect("correct");
        prop_assert_eq!(c.candidates, vec![code]);
    }

    #[test]
    fn index_positions_survive_insert_and_lookup(
        rows in prop::collection::vec(prop::array::uniform8(any::<u8>()), 0..200),
    ) {
        let flat: Vec<u8> = rows.concat();
        let mut idx = DigestIndex::new(8).expect("index");
        let pos = idx.insert(&flat, 1).expect("insert");
        for (i, r) in rows.iter().enumerate() {
            let first = rows.iter().position(|x| x == r).expect("present");
            let firsts = rows[..first].iter().collect::<std::collections::HashSet<_>>().len();
            prop_assert_eq!(pos[i], firsts as i64);
            prop_assert_eq!(idx.find(r), Some(firsts));
        }
    }

    #[test]
    fn serials_validate(prefix in "[0-9]{0,6}", start in 0u64..1_000_000, width in 6usize..=12) {
        let s = serial::serials(prefix.as_bytes(), start, 20, width).expect("serials");
        let len = prefix.len() + width + 1;
        let flags = serial::validate_serials(&s, len).expect("validate");
        prop_assert!(flags.iter().all(|&f| f == 1));
    }
}
