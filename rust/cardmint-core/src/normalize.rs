//! Normalization of typed or pasted input into canonical symbols (code-format §3).

use crate::alphabet::is_valid;
use crate::normtable::{IGNORABLE, MAPPED_CHARS, MAPPED_CP, MAPPED_OFF};
use crate::{check_length, pool, Error, Result};

/// Per-input status bytes (§3.1).
pub mod status {
    pub const OK: u8 = 0;
    pub const EMPTY: u8 = 1;
    pub const BAD_LENGTH: u8 = 2;
    pub const BAD_CHAR: u8 = 3;
    pub const BAD_UTF8: u8 = 4;
    pub const TOO_LONG: u8 = 5;
    pub const BAD_CHECK: u8 = 6;
}

/// Inputs longer than this are refused before decoding.
pub const MAX_INPUT_BYTES: usize = 1024;

const DROP: u8 = 0;
const BAD: u8 = 1;
const NON_ASCII: u8 = 2;

/// What each byte becomes when it is a whole ASCII character: a symbol (upper-cased, with
/// the `O/I/L` aliases applied; `U` kept so that correction can see the erasure), DROP,
/// BAD, or NON_ASCII for a byte that starts or continues a multi-byte sequence.
static ASCII_MAP: [u8; 256] = {
    let mut t = [BAD; 256];
    let mut b = 0x80;
    while b < 256 {
        t[b] = NON_ASCII;
        b += 1;
    }
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = c;
        c += 1;
    }
    let mut c = b'A';
    while c <= b'Z' {
        let up = match c {
            b'O' => b'0',
            b'I' | b'L' => b'1',
            _ => c,
        };
        t[c as usize] = up;
        t[(c + 32) as usize] = up;
        c += 1;
    }
    t[b' ' as usize] = DROP;
    t[b'\t' as usize] = DROP;
    t[b'\n' as usize] = DROP;
    t[0x0B] = DROP;
    t[0x0C] = DROP;
    t[b'\r' as usize] = DROP;
    t[b'-' as usize] = DROP;
    t
};

/// What scanning one input found, before the length is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// OK, TOO_LONG, BAD_UTF8 or BAD_CHAR (U alone does not make it BAD_CHAR).
    pub status: u8,
    /// Symbols produced (may exceed the output slot; only the first `out.len()` are kept).
    pub count: usize,
    /// How many `U`s (erasures) there were, and where the first one landed (known when the
    /// input has exactly `out.len()` symbols, the only case correction looks at).
    pub erasures: usize,
    pub erasure_at: usize,
}

#[inline(always)]
fn push(out: &mut [u8], scan: &mut Scan, sym: u8) {
    if sym == b'U' {
        if scan.erasures == 0 {
            scan.erasure_at = scan.count;
        }
        scan.erasures += 1;
    }
    if let Some(slot) = out.get_mut(scan.count) {
        *slot = sym;
    }
    scan.count += 1;
}

/// What a non-ASCII code point becomes: `Some(b"")` dropped, `Some(symbols)`, or `None`.
pub fn classify_non_ascii(cp: u32) -> Option<&'static [u8]> {
    let i = IGNORABLE.partition_point(|&(lo, _)| lo <= cp);
    if i > 0 && cp <= IGNORABLE[i - 1].1 {
        return Some(&[]);
    }
    let j = MAPPED_CP.binary_search(&cp).ok()?;
    Some(&MAPPED_CHARS[MAPPED_OFF[j] as usize..MAPPED_OFF[j + 1] as usize])
}

fn scan_unicode(raw: &[u8], out: &mut [u8]) -> Scan {
    let mut scan = Scan {
        status: status::OK,
        count: 0,
        erasures: 0,
        erasure_at: 0,
    };
    let Ok(text) = std::str::from_utf8(raw) else {
        scan.status = status::BAD_UTF8;
        return scan;
    };
    for ch in text.chars() {
        let cp = ch as u32;
        if cp < 0x80 {
            match ASCII_MAP[cp as usize] {
                DROP => {}
                BAD => {
                    scan.status = status::BAD_CHAR;
                    return scan;
                }
                sym => push(out, &mut scan, sym),
            }
            continue;
        }
        match classify_non_ascii(cp) {
            Some(piece) => {
                for &c in piece {
                    // The table only maps to letters and digits; anything else would be a
                    // broken table, and is treated as the bad character it stands for.
                    let sym = ASCII_MAP[c as usize];
                    if sym <= NON_ASCII {
                        scan.status = status::BAD_CHAR;
                        return scan;
                    }
                    push(out, &mut scan, sym);
                }
            }
            None => {
                scan.status = status::BAD_CHAR;
                return scan;
            }
        }
    }
    scan
}

/// Scans `raw`, writing symbols into `out` (as many as fit).
#[inline]
pub fn scan(raw: &[u8], out: &mut [u8]) -> Scan {
    let mut scan = Scan {
        status: status::OK,
        count: 0,
        erasures: 0,
        erasure_at: 0,
    };
    if raw.len() > MAX_INPUT_BYTES {
        scan.status = status::TOO_LONG;
        return scan;
    }
    // ASCII fast path; a bad ASCII byte must not hide invalid UTF-8 later on (BAD_UTF8
    // outranks BAD_CHAR), so it is remembered and the loop goes on.
    let mut bad = false;
    let mut count = 0usize;
    let mut erasures = 0usize;
    for &b in raw {
        let m = ASCII_MAP[b as usize];
        if m > NON_ASCII {
            if let Some(slot) = out.get_mut(count) {
                *slot = m;
            }
            count += 1;
            erasures += usize::from(m == b'U');
        } else if m == NON_ASCII {
            return scan_unicode(raw, out);
        } else {
            bad |= m == BAD;
        }
    }
    scan.count = count;
    scan.erasures = erasures;
    if erasures == 1 && count == out.len() {
        // Only a full-length input can be corrected, and then its U is inside `out`.
        scan.erasure_at = out.iter().position(|&c| c == b'U').unwrap_or(0);
    }
    if bad {
        scan.status = status::BAD_CHAR;
    }
    scan
}

/// Strict normalization of one input into `out` (`length` bytes): the status, with `out`
/// zeroed unless it is OK.
#[inline]
pub fn normalize_into(raw: &[u8], out: &mut [u8]) -> u8 {
    let s = scan(raw, out);
    let st = if s.status != status::OK {
        s.status
    } else if s.erasures > 0 {
        status::BAD_CHAR
    } else if s.count == 0 {
        status::EMPTY
    } else if s.count != out.len() {
        status::BAD_LENGTH
    } else {
        status::OK
    };
    if st != status::OK {
        out.fill(0);
    }
    st
}

/// `normalize_into`, then BAD_CHECK (keeping the symbols) for a wrong check symbol.
#[inline]
pub fn check_into(raw: &[u8], out: &mut [u8]) -> u8 {
    let st = normalize_into(raw, out);
    if st == status::OK && !is_valid(out) {
        status::BAD_CHECK
    } else {
        st
    }
}

/// Reads `n + 1` little-endian int64 offsets and checks they are monotone and inside
/// `data_len`; returns them as `usize`.
pub fn parse_offsets(offsets: &[u8], data_len: usize) -> Result<Vec<usize>> {
    count_inputs(offsets)?;
    let offs: Vec<i64> = offsets
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            i64::from_le_bytes(b)
        })
        .collect();
    let mut out = Vec::with_capacity(offs.len());
    for (i, w) in offs.windows(2).enumerate() {
        let (a, b) = (w[0], w[1]);
        let inside = 0 <= a && a <= b && usize::try_from(b).is_ok_and(|b| b <= data_len);
        if !inside {
            return Err(Error::invalid(format!(
                "offsets[{i}..{}] = {a}..{b} is outside the data ({data_len} bytes)",
                i + 1
            )));
        }
    }
    for &o in &offs {
        out.push(usize::try_from(o).map_err(|_| {
            Error::invalid(format!("offset {o} is outside the data ({data_len} bytes)"))
        })?);
    }
    Ok(out)
}

/// Strict normalization or check of one input into its output slot.
pub type OneFn = fn(&[u8], &mut [u8]) -> u8;

/// Runs `one` over the packed strings `data, offsets` into `codes` (`n * length`) and
/// `stat` (`n`); returns the offsets' `n` after checking them.
pub fn bulk_into(
    data: &[u8],
    offsets: &[u8],
    length: usize,
    codes: &mut [u8],
    stat: &mut [u8],
    threads: usize,
    one: OneFn,
) -> Result<()> {
    check_length(length)?;
    let offs = parse_offsets(offsets, data.len())?;
    let n = offs.len() - 1;
    if codes.len() != n * length || stat.len() != n {
        return Err(Error::invalid(format!(
            "outputs hold {} code bytes and {} statuses for {n} inputs",
            codes.len(),
            stat.len()
        )));
    }
    pool::for_rows2(threads, codes, length, stat, 1, |first, c, s| {
        for (k, (slot, st)) in c.chunks_exact_mut(length).zip(s.iter_mut()).enumerate() {
            let i = first + k;
            *st = one(&data[offs[i]..offs[i + 1]], slot);
        }
    });
    Ok(())
}

/// Number of inputs the offsets buffer describes (`len / 8 - 1`), checked for shape only.
pub fn count_inputs(offsets: &[u8]) -> Result<usize> {
    if !offsets.len().is_multiple_of(8) || offsets.is_empty() {
        return Err(Error::invalid(format!(
            "offsets must hold n + 1 int64 entries, got {} bytes",
            offsets.len()
        )));
    }
    Ok(offsets.len() / 8 - 1)
}

fn bulk(
    data: &[u8],
    offsets: &[u8],
    length: usize,
    threads: usize,
    one: OneFn,
) -> Result<(Vec<u8>, Vec<u8>)> {
    check_length(length)?;
    let n = count_inputs(offsets)?;
    let mut codes = vec![0u8; n * length];
    let mut stat = vec![0u8; n];
    bulk_into(data, offsets, length, &mut codes, &mut stat, threads, one)?;
    Ok((codes, stat))
}

/// (codes `n * length`, status `n`) for the packed strings `data, offsets` (§3).
pub fn normalize(
    data: &[u8],
    offsets: &[u8],
    length: usize,
    threads: usize,
) -> Result<(Vec<u8>, Vec<u8>)> {
    bulk(data, offsets, length, threads, normalize_into)
}

/// [`normalize`], then BAD_CHECK for a wrong check symbol.
pub fn check(
    data: &[u8],
    offsets: &[u8],
    length: usize,
    threads: usize,
) -> Result<(Vec<u8>, Vec<u8>)> {
    bulk(data, offsets, length, threads, check_into)
}

/// Scalar check of one input: (status, canonical code or empty).
pub fn check_one(raw: &[u8], length: usize) -> Result<(u8, Vec<u8>)> {
    check_length(length)?;
    let mut buf = [0u8; crate::MAX_LENGTH];
    let out = &mut buf[..length];
    let st = check_into(raw, out);
    let code = if st == status::OK || st == status::BAD_CHECK {
        out.to_vec()
    } else {
        Vec::new()
    };
    Ok((st, code))
}

/// Lenient normalization for correction (§8): as strict, except exactly one `U` is an
/// erasure. Returns the status and, when OK, the erased position.
pub fn normalize_lenient(raw: &[u8], out: &mut [u8]) -> (u8, Option<usize>) {
    let s = scan(raw, out);
    let st = if s.status != status::OK {
        s.status
    } else if s.erasures > 1 {
        status::BAD_CHAR
    } else if s.count == 0 {
        status::EMPTY
    } else if s.count != out.len() {
        status::BAD_LENGTH
    } else {
        status::OK
    };
    if st != status::OK {
        out.fill(0);
        return (st, None);
    }
    (st, (s.erasures == 1).then_some(s.erasure_at))
}

#[cfg(test)]
mod tests {
    use super::status::*;
    use super::*;

    fn norm(raw: &str, length: usize) -> (u8, Vec<u8>) {
        let mut out = vec![0u8; length];
        let st = normalize_into(raw.as_bytes(), &mut out);
        (st, out)
    }

    #[test]
    fn ascii_and_unicode() {
        assert_eq!(norm("ab-cd", 4), (OK, b"ABCD".to_vec()));
        assert_eq!(norm(" o i l ", 4).0, BAD_LENGTH);
        assert_eq!(norm(" o i l ", 3), (OK, b"011".to_vec()));
        assert_eq!(norm("oil0", 4), (OK, b"0110".to_vec()));
        assert_eq!(norm("ＡＢ\u{00A0}①Ⅻ", 6), (OK, b"AB1X11".to_vec()));
        assert_eq!(norm("\u{200B}-  ", 4).0, EMPTY);
        assert_eq!(norm("", 4).0, EMPTY);
        assert_eq!(norm("ABCU", 4).0, BAD_CHAR);
        assert_eq!(norm("AB*C", 4), (BAD_CHAR, vec![0; 4]));
        assert_eq!(norm("ABé", 4).0, BAD_CHAR);
        assert_eq!(norm(&"A".repeat(1025), 4).0, TOO_LONG);
        let mut out = [0u8; 4];
        assert_eq!(normalize_into(b"*\xff", &mut out), BAD_UTF8);
        assert_eq!(normalize_into(b"\xc3", &mut out), BAD_UTF8);
    }

    #[test]
    fn lenient_erasure() {
        let mut out = [0u8; 4];
        assert_eq!(normalize_lenient(b"AuCD", &mut out), (OK, Some(1)));
        assert_eq!(&out, b"AUCD");
        assert_eq!(
            normalize_lenient("Ａ-cuＤ".as_bytes(), &mut out),
            (OK, Some(2))
        );
        assert_eq!(&out, b"ACUD");
        assert_eq!(normalize_lenient(b"AUUD", &mut out), (BAD_CHAR, None));
        assert_eq!(normalize_lenient(b"AUD", &mut out), (BAD_LENGTH, None));
    }

    #[test]
    fn offsets_are_checked() {
        let offs: Vec<u8> = [0i64, 2, 1].iter().flat_map(|o| o.to_le_bytes()).collect();
        assert!(normalize(b"abcd", &offs, 4, 1).is_err());
        let offs: Vec<u8> = [0i64, 5].iter().flat_map(|o| o.to_le_bytes()).collect();
        assert!(normalize(b"abcd", &offs, 4, 1).is_err());
        assert!(normalize(b"abcd", &[0u8; 7], 4, 1).is_err());
        let offs: Vec<u8> = [0i64, 4, 4].iter().flat_map(|o| o.to_le_bytes()).collect();
        let (codes, st) = normalize(b"abcd", &offs, 4, 1).expect("normalize");
        assert_eq!(st, vec![OK, EMPTY]);
        assert_eq!(codes, b"ABCD\0\0\0\0");
    }
}
