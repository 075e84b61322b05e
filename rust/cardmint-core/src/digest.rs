//! Keyed BLAKE3 digests of canonical codes (code-format §5).

use crate::{check_length, pool, rows_of, Error, Result};

pub const MIN_SIZE: usize = 8;
pub const MAX_SIZE: usize = 32;

pub fn check_key(key: &[u8], what: &str) -> Result<[u8; 32]> {
    key.try_into()
        .map_err(|_| Error::invalid(format!("{what} must be 32 bytes, got {}", key.len())))
}

pub fn check_size(size: usize) -> Result<()> {
    if (MIN_SIZE..=MAX_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "digest size must be {MIN_SIZE}..{MAX_SIZE} bytes, got {size}"
        )))
    }
}

/// The first `out.len()` bytes (8..=32) of the keyed hash of `code`.
#[inline]
pub fn digest_into(key: &[u8; 32], code: &[u8], out: &mut [u8]) {
    let h = blake3::keyed_hash(key, code);
    out.copy_from_slice(&h.as_bytes()[..out.len()]);
}

/// Digest of one code.
pub fn digest_one(code: &[u8], key: &[u8], size: usize) -> Result<Vec<u8>> {
    let key = check_key(key, "key")?;
    check_size(size)?;
    let mut out = vec![0u8; size];
    digest_into(&key, code, &mut out);
    Ok(out)
}

/// `n * size` bytes: the digest of every code.
pub fn digest(
    codes: &[u8],
    length: usize,
    key: &[u8],
    size: usize,
    threads: usize,
) -> Result<Vec<u8>> {
    check_length(length)?;
    check_size(size)?;
    let n = rows_of(codes, length, "codes")?;
    let mut out = vec![0u8; n * size];
    digest_to(codes, length, key, size, &mut out, threads)?;
    Ok(out)
}

/// [`digest`] into `out` (`n * size` bytes).
pub fn digest_to(
    codes: &[u8],
    length: usize,
    key: &[u8],
    size: usize,
    out: &mut [u8],
    threads: usize,
) -> Result<()> {
    check_length(length)?;
    let key = check_key(key, "key")?;
    check_size(size)?;
    let n = rows_of(codes, length, "codes")?;
    if out.len() != n * size {
        return Err(Error::invalid(format!(
            "output holds {} bytes, {n} digests need {}",
            out.len(),
            n * size
        )));
    }
    pool::for_rows(threads, out, size, |first, dst| {
        let src = &codes[first * length..];
        digest_rows(&key, src, length, dst, size);
    });
    Ok(())
}

/// Digests the codes of `src` (rows of `length`) into the rows of `dst` (rows of `size`),
/// as many as `dst` holds.
pub fn digest_rows(key: &[u8; 32], src: &[u8], length: usize, dst: &mut [u8], size: usize) {
    for (code, out) in src.chunks_exact(length).zip(dst.chunks_exact_mut(size)) {
        digest_into(key, code, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_blake3_crate() {
        let key = [7u8; 32];
        let d = digest_one(b"7K3M9QXD2HVA5RTW", &key, 16).expect("digest");
        assert_eq!(
            d,
            &blake3::keyed_hash(&key, b"7K3M9QXD2HVA5RTW").as_bytes()[..16]
        );
        assert!(digest_one(b"X", &key[..31], 16).is_err());
        assert!(digest_one(b"X", &key, 7).is_err());
        assert!(digest_one(b"X", &key, 33).is_err());
        // Enough codes for whole lane groups and a tail, every length.
        for length in 4..=31 {
            let codes: Vec<u8> = (0..length * 21)
                .map(|i| b"0123456789ABCDEFGH"[i % 18])
                .collect();
            let all = digest(&codes, length, &key, 20, 1).expect("digest");
            for (code, d) in codes.chunks(length).zip(all.chunks(20)) {
                assert_eq!(d, &blake3::keyed_hash(&key, code).as_bytes()[..20]);
            }
        }
        let codes = b"ABCDABCE";
        let all = digest(codes, 4, &key, 8, 2).expect("digest");
        assert_eq!(
            &all[..8],
            &digest_one(b"ABCD", &key, 8).expect("digest")[..]
        );
        assert_eq!(
            &all[8..],
            &digest_one(b"ABCE", &key, 8).expect("digest")[..]
        );
    }
}
