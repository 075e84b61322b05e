//! Decimal serial numbers with a Verhoeff check digit (code-format §7).

use crate::{rows_of, Error, Result};

/// `D[j][k]`: the dihedral group D5 product of §7.
static D: [[u8; 10]; 10] = {
    let mut t = [[0u8; 10]; 10];
    let mut j = 0;
    while j < 10 {
        let mut k = 0;
        while k < 10 {
            t[j][k] = if j < 5 && k < 5 {
                (j + k) % 5
            } else if j < 5 {
                5 + (j + k - 5) % 5
            } else if k < 5 {
                5 + (j + 5 - 5 - k) % 5
            } else {
                (j + 5 - k) % 5
            } as u8;
            k += 1;
        }
        j += 1;
    }
    t
};

/// `P[i][n] = sigma^i(n)` for i in 0..8, sigma = (0 1 5 8 9 4 2 7)(3 6).
static P: [[u8; 10]; 8] = {
    const SIGMA: [u8; 10] = [1, 5, 7, 6, 2, 8, 3, 0, 9, 4];
    let mut t = [[0u8; 10]; 8];
    let mut n = 0;
    while n < 10 {
        t[0][n] = n as u8;
        n += 1;
    }
    let mut i = 1;
    while i < 8 {
        let mut n = 0;
        while n < 10 {
            t[i][n] = SIGMA[t[i - 1][n] as usize];
            n += 1;
        }
        i += 1;
    }
    t
};

fn inv(j: u8) -> u8 {
    if j < 5 {
        (5 - j) % 5
    } else {
        j
    }
}

/// The Verhoeff accumulator of ASCII digits read right to left, the rightmost one at
/// permutation index `offset`.
fn verhoeff(digits: &[u8], offset: usize) -> u8 {
    digits.iter().rev().enumerate().fold(0u8, |c, (i, &ch)| {
        D[c as usize][P[(i + offset) % 8][(ch - b'0') as usize] as usize]
    })
}

/// Check digit (ASCII) completing `digits`.
pub fn check_digit(digits: &[u8]) -> u8 {
    b'0' + inv(verhoeff(digits, 1))
}

/// Whether `serial` is all digits and passes the Verhoeff check.
pub fn is_valid(serial: &[u8]) -> bool {
    !serial.is_empty() && serial.iter().all(u8::is_ascii_digit) && verhoeff(serial, 0) == 0
}

/// `count` serials from `start`: prefix | zero-padded number | check digit.
pub fn serials(prefix: &[u8], start: u64, count: u64, width: usize) -> Result<Vec<u8>> {
    if !prefix.iter().all(u8::is_ascii_digit) {
        return Err(Error::invalid(format!(
            "serial prefix must be digits, got {:?}",
            String::from_utf8_lossy(prefix)
        )));
    }
    if !(1..=18).contains(&width) {
        return Err(Error::invalid(format!(
            "serial width must be 1..18, got {width}"
        )));
    }
    let limit = 10u64.pow(width as u32);
    if start.checked_add(count).is_none_or(|end| end > limit) {
        return Err(Error::invalid(format!(
            "serials {start}..{} do not fit in {width} digits",
            u128::from(start) + u128::from(count)
        )));
    }
    let row = prefix.len() + width + 1;
    if row > 64 {
        return Err(Error::invalid("a serial is at most 64 digits"));
    }
    let n = usize::try_from(count).map_err(|_| Error::invalid("count too large"))?;
    let total = n
        .checked_mul(row)
        .ok_or_else(|| Error::invalid("count too large"))?;
    let mut out = Vec::with_capacity(total);
    let mut body = prefix.to_vec();
    body.resize(prefix.len() + width, b'0');
    for k in 0..count {
        let mut v = start + k;
        for slot in body[prefix.len()..].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&body);
        out.push(check_digit(&body));
    }
    Ok(out)
}

/// One byte per serial of `length` bytes: 1 when valid.
pub fn validate_serials(serials: &[u8], length: usize) -> Result<Vec<u8>> {
    if !(2..=64).contains(&length) {
        return Err(Error::invalid(format!(
            "serial length must be 2..64, got {length}"
        )));
    }
    rows_of(serials, length, "serials")?;
    Ok(serials
        .chunks_exact(length)
        .map(|s| u8::from(is_valid(s)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_verhoeff_values() {
        // The classic example: 236 -> check digit 3.
        assert_eq!(check_digit(b"236"), b'3');
        assert!(is_valid(b"2363"));
        assert!(!is_valid(b"2364"));
        assert_eq!(check_digit(b"12345"), b'1');
    }

    #[test]
    fn generated_serials_validate() {
        let s = serials(b"42", 998, 3, 4).expect("serials");
        assert_eq!(s.len(), 3 * 7);
        assert_eq!(&s[..6], b"420998");
        assert_eq!(validate_serials(&s, 7).expect("validate"), vec![1, 1, 1]);
        assert!(serials(b"4a", 0, 1, 4).is_err());
        assert!(serials(b"", 9999, 2, 4).is_err());
        assert!(serials(b"", 0, 1, 0).is_err());
        assert!(validate_serials(b"123", 2).is_err());
    }

    /// Every single substitution and adjacent transposition is caught, for serials of
    /// every length 2..=12 built on varied bodies, every position and every digit pair.
    #[test]
    fn exhaustive_detection() {
        for len in 1..=11usize {
            for base in 0..40u64 {
                let mut body: Vec<u8> = (0..len)
                    .map(|i| b'0' + ((base * 7 + i as u64 * 3 + base / 3) % 10) as u8)
                    .collect();
                body.push(check_digit(&body));
                assert!(is_valid(&body));
                for pos in 0..body.len() {
                    for d in b'0'..=b'9' {
                        if d == body[pos] {
                            continue;
                        }
                        let mut bad = body.clone();
                        bad[pos] = d;
                        assert!(!is_valid(&bad), "substitution missed in {bad:?}");
                    }
                }
            }
            // Transpositions: every digit pair at every adjacent position, the rest of
            // the serial fixed, check digit recomputed so the base is valid.
            for pos in 0..len {
                for u in b'0'..=b'9' {
                    for v in b'0'..=b'9' {
                        if u == v {
                            continue;
                        }
                        let mut body: Vec<u8> = (0..len).map(|i| b'0' + (i % 10) as u8).collect();
                        body[pos] = u;
                        if pos + 1 < len {
                            body[pos + 1] = v;
                            body.push(check_digit(&body));
                        } else {
                            // The pair ends at the check digit. Distinct first digits give
                            // distinct checks (substitutions are caught), so one of them
                            // makes the check v; a one-digit body has a single check.
                            let free = (len >= 2).then_some(0);
                            let found = (b'0'..=b'9').find(|&f| {
                                if let Some(i) = free {
                                    body[i] = f;
                                }
                                check_digit(&body) == v
                            });
                            if found.is_none() {
                                assert!(free.is_none(), "no first digit gives check {v}");
                                continue;
                            }
                            body.push(v);
                        }
                        body.swap(pos, pos + 1);
                        assert!(!is_valid(&body), "transposition missed in {body:?}");
                    }
                }
            }
        }
    }
}
