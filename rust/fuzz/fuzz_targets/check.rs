//! The check symbol (docs/code-format.md §2.1): a code completed by `check_symbol` is
//! valid, every single substitution and every adjacent transposition of it is caught, its
//! display and lower-case forms normalize back to it, and arbitrary bytes never panic.
#![no_main]

use cardmint_core::alphabet::{check_symbol, display, is_valid, validate, ALPHABET};
use cardmint_core::normalize::{check_into, status};
use cardmint_core::MAX_LENGTH;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Arbitrary bytes: an error for anything that is not 1..30 symbols, never a panic.
    let direct = check_symbol(data);
    let all_symbols = data.iter().all(|c| ALPHABET.contains(c));
    assert_eq!(
        direct.is_ok(),
        all_symbols && !data.is_empty() && data.len() < MAX_LENGTH
    );

    let payload: Vec<u8> = data
        .iter()
        .take(MAX_LENGTH - 1)
        .map(|&b| ALPHABET[usize::from(b & 31)])
        .collect();
    if payload.len() < 3 {
        return; // codes are 4..31 symbols
    }
    let mut code = payload.clone();
    code.push(check_symbol(&payload).expect("symbols"));
    let length = code.len();
    assert!(is_valid(&code));
    assert_eq!(validate(&code, length, 1).expect("one row"), vec![1]);

    for p in 0..length {
        for &s in ALPHABET {
            if s != code[p] {
                let mut edited = code.clone();
                edited[p] = s;
                assert!(!is_valid(&edited), "substitution at {p} slipped through");
            }
        }
        if p + 1 < length && code[p] != code[p + 1] {
            let mut swapped = code.clone();
            swapped.swap(p, p + 1);
            assert!(!is_valid(&swapped), "transposition at {p} slipped through");
        }
    }

    let group = usize::from(data[0] % 8);
    let shown = display(&code, length, group).expect("display");
    let lower = shown.to_ascii_lowercase();
    for form in [shown.as_slice(), lower.as_slice()] {
        let mut out = vec![0u8; length];
        assert_eq!(check_into(form, &mut out), status::OK);
        assert_eq!(out, code);
    }
});
