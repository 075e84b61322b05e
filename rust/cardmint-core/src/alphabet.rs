//! The symbol alphabet and the GF(32) check symbol (code-format §1, §2.1), and the display
//! form (§2).

use crate::pool;
use crate::{check_length, rows_of, Error, Result, MAX_LENGTH};

/// Crockford Base32 without `I L O U`; a symbol's value is its index here.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Marks a byte that is not a canonical symbol in [`VALUE`].
pub const NOT_SYMBOL: u8 = 0xFF;

/// Value of each byte as a canonical symbol, or [`NOT_SYMBOL`].
pub static VALUE: [u8; 256] = {
    let mut t = [NOT_SYMBOL; 256];
    let mut v = 0;
    while v < 32 {
        t[ALPHABET[v] as usize] = v as u8;
        v += 1;
    }
    t
};

/// Multiplies by `a = x` in GF(2)[x]/(x^5 + x^2 + 1). Branch-free so Horner loops vectorize.
#[inline(always)]
pub fn mul_x(v: u8) -> u8 {
    let t = v << 1;
    t ^ ((t >> 5) * 0x25)
}

/// `EXP[k] = a^k` for k in 0..62 (doubled so that sums of logs need no reduction).
pub static EXP: [u8; 62] = {
    let mut t = [0u8; 62];
    let mut x: u8 = 1;
    let mut i = 0;
    while i < 31 {
        t[i] = x;
        t[i + 31] = x;
        x <<= 1;
        if x & 0x20 != 0 {
            x ^= 0x25;
        }
        i += 1;
    }
    t
};

/// `LOG[v]` for v in 1..32 (`LOG[0]` is unused).
pub static LOG: [u8; 32] = {
    let mut t = [0u8; 32];
    let mut i = 0;
    while i < 31 {
        t[EXP[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Field product.
#[inline]
pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        0
    } else {
        EXP[LOG[a as usize] as usize + LOG[b as usize] as usize]
    }
}

/// Field quotient `a / b`, `b != 0`.
#[inline]
pub fn div(a: u8, b: u8) -> u8 {
    if a == 0 {
        0
    } else {
        EXP[(LOG[a as usize] as usize + 31 - LOG[b as usize] as usize) % 31]
    }
}

/// `sum a^(n-1-i) * v[i]` by Horner's rule over symbol values; zero for a valid code.
#[inline]
pub fn syndrome_values(values: &[u8]) -> u8 {
    values.iter().fold(0, |acc, &v| mul_x(acc) ^ v)
}

/// `WEIGHTED_VALUE[j][v] = a^(30 - j) * v`: row `31 - n + i` holds the weight of position
/// `i` in an `n`-symbol code, so a code's rows are a suffix of the table and the syndrome is
/// a XOR of independent lookups instead of a Horner chain (whose latency dominated).
pub static WEIGHTED_VALUE: [[u8; 32]; 31] = {
    let mut t = [[0u8; 32]; 31];
    let mut j = 0;
    while j < 31 {
        let w = EXP[30 - j];
        let mut v = 1;
        while v < 32 {
            // mul() is not const; the log tables are.
            t[j][v] = EXP[LOG[w as usize] as usize + LOG[v] as usize];
            v += 1;
        }
        j += 1;
    }
    t
};

/// As [`WEIGHTED_VALUE`] indexed by ASCII byte; a non-symbol byte reads 0x80, a bit no
/// field element has.
pub static WEIGHTED_BYTE: [[u8; 256]; 31] = {
    let mut t = [[0x80u8; 256]; 31];
    let mut j = 0;
    while j < 31 {
        let mut v = 0;
        while v < 32 {
            t[j][ALPHABET[v] as usize] = WEIGHTED_VALUE[j][v];
            v += 1;
        }
        j += 1;
    }
    t
};

/// The syndrome of ASCII symbols, or `None` when a byte is not a symbol.
#[inline]
pub fn syndrome(code: &[u8]) -> Option<u8> {
    let n = code.len();
    if n > MAX_LENGTH {
        // Weights repeat with period 31; only check_symbol-style callers get here.
        let mut acc = 0u8;
        for &c in code {
            let v = VALUE[c as usize];
            if v == NOT_SYMBOL {
                return None;
            }
            acc = mul_x(acc) ^ v;
        }
        return Some(acc);
    }
    let mut acc = 0u8;
    let mut bad = 0u8;
    for (row, &c) in WEIGHTED_BYTE[MAX_LENGTH - n..].iter().zip(code) {
        let t = row[c as usize];
        acc ^= t;
        bad |= t;
    }
    (bad & 0x80 == 0).then_some(acc)
}

/// Whether `code` is all symbols with a right check symbol.
#[inline]
pub fn is_valid(code: &[u8]) -> bool {
    syndrome(code) == Some(0)
}

/// The check symbol (ASCII) completing `payload` (1..=30 symbols).
pub fn check_symbol(payload: &[u8]) -> Result<u8> {
    if payload.is_empty() || payload.len() > MAX_LENGTH - 1 {
        return Err(Error::invalid(format!(
            "payload must be 1..{} symbols, got {}",
            MAX_LENGTH - 1,
            payload.len()
        )));
    }
    match syndrome(payload) {
        // Appending a 0 multiplies everything by a; the check has weight a^0 = 1.
        Some(s) => Ok(ALPHABET[mul_x(s) as usize]),
        None => {
            let bad = payload
                .iter()
                .find(|&&c| VALUE[c as usize] == NOT_SYMBOL)
                .copied()
                .unwrap_or(0);
            Err(Error::invalid(format!(
                "payload has a byte that is not a symbol: 0x{bad:02x}"
            )))
        }
    }
}

/// One byte per code: 1 when valid, else 0.
pub fn validate(codes: &[u8], length: usize, threads: usize) -> Result<Vec<u8>> {
    check_length(length)?;
    let n = rows_of(codes, length, "codes")?;
    let mut out = vec![0u8; n];
    validate_into(codes, length, &mut out, threads)?;
    Ok(out)
}

/// [`validate`] into `out` (one byte per code).
pub fn validate_into(codes: &[u8], length: usize, out: &mut [u8], threads: usize) -> Result<()> {
    check_length(length)?;
    let n = rows_of(codes, length, "codes")?;
    if out.len() != n {
        return Err(Error::invalid(format!(
            "output holds {} flags for {n} codes",
            out.len()
        )));
    }
    pool::for_rows(threads, out, 1, |first, flags| {
        let src = &codes[first * length..(first + flags.len()) * length];
        for (f, code) in flags.iter_mut().zip(src.chunks_exact(length)) {
            *f = u8::from(is_valid(code));
        }
    });
    Ok(())
}

/// Width of one display row: `length` symbols plus a `-` after every `group`.
pub fn display_width(length: usize, group: usize) -> usize {
    length + (length - 1).checked_div(group).unwrap_or(0)
}

/// Codes with `-` after every `group` symbols (`group == 0`: unchanged).
pub fn display(codes: &[u8], length: usize, group: usize) -> Result<Vec<u8>> {
    check_length(length)?;
    let n = rows_of(codes, length, "codes")?;
    let w = display_width(length, group);
    let mut out = Vec::with_capacity(n * w);
    for code in codes.chunks_exact(length) {
        if group == 0 {
            out.extend_from_slice(code);
            continue;
        }
        for (k, part) in code.chunks(group).enumerate() {
            if k > 0 {
                out.push(b'-');
            }
            out.extend_from_slice(part);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight(k: usize) -> u8 {
        EXP[k % 31]
    }

    #[test]
    fn field_tables_are_consistent() {
        for a in 0..32u8 {
            assert_eq!(mul_x(a), mul(a, 2));
            for b in 1..32u8 {
                assert_eq!(div(mul(a, b), b), a);
            }
        }
        // a = x has order exactly 31: all weights distinct.
        let mut seen = [false; 32];
        for k in 0..31 {
            assert!(!seen[weight(k) as usize]);
            seen[weight(k) as usize] = true;
        }
        assert_eq!(weight(31), 1);
    }

    #[test]
    fn syndrome_matches_weighted_sum() {
        let code = b"7K3M9QXD2HVA5RTW";
        let n = code.len();
        let mut s = 0u8;
        for (i, &c) in code.iter().enumerate() {
            s ^= mul(weight(n - 1 - i), VALUE[c as usize]);
        }
        assert_eq!(syndrome(code), Some(s));
    }

    #[test]
    fn table_syndrome_equals_horner() {
        for n in 1..=MAX_LENGTH + 3 {
            let code: Vec<u8> = (0..n).map(|i| ALPHABET[(i * 11 + n) % 32]).collect();
            let values: Vec<u8> = code.iter().map(|&c| VALUE[c as usize]).collect();
            assert_eq!(syndrome(&code), Some(syndrome_values(&values)), "n={n}");
            let mut bad = code.clone();
            bad[n / 2] = b'U';
            bad[0] = b'U';
            assert_eq!(syndrome(&bad), None);
        }
    }

    #[test]
    fn check_symbol_completes_a_valid_code() {
        let mut code = b"7K3M9QXD2HVA5RT".to_vec();
        let c = check_symbol(&code).expect("valid payload");
        code.push(c);
        assert!(is_valid(&code));
        assert!(check_symbol(b"").is_err());
        assert!(check_symbol(b"7U").is_err());
        assert!(check_symbol(&[b'0'; 31]).is_err());
    }

    /// Sets position `fix` so that `values` is a valid code (the syndrome is linear).
    fn make_valid(values: &mut [u8], fix: usize) {
        values[fix] = 0;
        let s = syndrome_values(values);
        values[fix] = div(s, weight(values.len() - 1 - fix));
        assert_eq!(syndrome_values(values), 0);
    }

    /// Every single substitution and every adjacent transposition, at every length 4..=31,
    /// every position and every symbol pair, is detected (code-format §2.1).
    #[test]
    fn exhaustive_detection() {
        for length in 4..=31usize {
            let mut base: Vec<u8> = (0..length).map(|i| ((i * 7 + 3) % 32) as u8).collect();
            make_valid(&mut base, length - 1);
            for pos in 0..length {
                for sym in 0..32u8 {
                    if sym == base[pos] {
                        continue;
                    }
                    let mut bad = base.clone();
                    bad[pos] = sym;
                    let ascii: Vec<u8> = bad.iter().map(|&v| ALPHABET[v as usize]).collect();
                    assert!(
                        !is_valid(&ascii),
                        "substitution missed: L={length} pos={pos}"
                    );
                }
            }
            for pos in 0..length - 1 {
                // Fix a position outside the pair so any (u, v) can sit in a valid code.
                let fix = if pos + 1 == length - 1 { 0 } else { length - 1 };
                for u in 0..32u8 {
                    for v in 0..32u8 {
                        if u == v {
                            continue;
                        }
                        let mut code = base.clone();
                        code[pos] = u;
                        code[pos + 1] = v;
                        make_valid(&mut code, fix);
                        code.swap(pos, pos + 1);
                        let ascii: Vec<u8> = code.iter().map(|&x| ALPHABET[x as usize]).collect();
                        assert!(
                            !is_valid(&ascii),
                            "transposition missed: L={length} pos={pos}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn display_groups() {
        let out = display(b"7K3M9QXD2HVA5RTW", 16, 4).expect("display");
        assert_eq!(out, b"7K3M-9QXD-2HVA-5RTW");
        let out = display(b"ABCDE", 5, 2).expect("display");
        assert_eq!(out, b"AB-CD-E");
        assert_eq!(display_width(5, 2), 7);
        assert_eq!(display(b"ABCDE", 5, 0).expect("display"), b"ABCDE");
        assert!(display(b"ABCD", 5, 0).is_err());
    }

    #[test]
    fn validate_flags() {
        let mut codes = b"7K3M9QXD2HVA5RT".to_vec();
        codes.push(check_symbol(&codes).expect("payload"));
        let mut bad = codes.clone();
        bad[0] = b'U';
        codes.extend_from_slice(&bad);
        assert_eq!(validate(&codes, 16, 1).expect("validate"), vec![1, 0]);
        assert!(validate(&codes, 3, 1).is_err());
    }
}
