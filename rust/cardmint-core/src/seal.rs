//! Sealing codes with ChaCha20-Poly1305 (code-format §6): record = nonce | ciphertext | tag,
//! associated data = the code's digest.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};

use crate::digest::{check_key, check_size};
use crate::{check_length, pool, rows_of, Error, Result};

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// Bytes of one sealed record of a `length`-symbol code.
pub fn record_len(length: usize) -> usize {
    length + NONCE_LEN + TAG_LEN
}

/// Seals every code; `nonces` holds one 12-byte nonce per code, or is empty to draw fresh
/// nonces from the OS CSPRNG.
pub fn seal(
    codes: &[u8],
    length: usize,
    digests: &[u8],
    size: usize,
    key: &[u8],
    nonces: &[u8],
    threads: usize,
) -> Result<Vec<u8>> {
    check_length(length)?;
    let key = check_key(key, "key")?;
    check_size(size)?;
    let n = rows_of(codes, length, "codes")?;
    let nd = rows_of(digests, size, "digests")?;
    let fresh;
    let nonces = if nonces.is_empty() && n > 0 {
        let mut buf = vec![0u8; n * NONCE_LEN];
        getrandom::fill(&mut buf)
            .map_err(|e| Error::invalid(format!("the OS CSPRNG failed: {e}")))?;
        fresh = buf;
        &fresh[..]
    } else {
        nonces
    };
    let nn = rows_of(nonces, NONCE_LEN, "nonces")?;
    if n != nd || n != nn {
        return Err(Error::invalid(format!(
            "{n} codes, {nd} digests and {nn} nonces must match"
        )));
    }
    let cipher = ChaCha20Poly1305::new(&key.into());
    let rec = record_len(length);
    let mut out = vec![0u8; n * rec];
    let failed = std::sync::atomic::AtomicBool::new(false);
    pool::for_rows(threads, &mut out, rec, |first, records| {
        for (k, r) in records.chunks_exact_mut(rec).enumerate() {
            let i = first + k;
            let nonce = &nonces[i * NONCE_LEN..(i + 1) * NONCE_LEN];
            let (head, rest) = r.split_at_mut(NONCE_LEN);
            let (body, tag) = rest.split_at_mut(length);
            head.copy_from_slice(nonce);
            body.copy_from_slice(&codes[i * length..(i + 1) * length]);
            let ad = &digests[i * size..(i + 1) * size];
            match cipher.encrypt_in_place_detached(Nonce::from_slice(nonce), ad, body) {
                Ok(t) => tag.copy_from_slice(&t),
                // Only a message beyond 2^38 bytes can fail; codes are 31 bytes at most.
                Err(_) => failed.store(true, std::sync::atomic::Ordering::Relaxed),
            }
        }
    });
    if failed.into_inner() {
        return Err(Error::invalid("encryption failed"));
    }
    Ok(out)
}

/// The codes back; the lowest record that fails authentication fails the whole batch.
pub fn open(
    sealed: &[u8],
    length: usize,
    digests: &[u8],
    size: usize,
    key: &[u8],
    threads: usize,
) -> Result<Vec<u8>> {
    check_length(length)?;
    let key = check_key(key, "key")?;
    check_size(size)?;
    let rec = record_len(length);
    let n = rows_of(sealed, rec, "sealed records")?;
    let nd = rows_of(digests, size, "digests")?;
    if n != nd {
        return Err(Error::invalid(format!(
            "{n} sealed records but {nd} digests"
        )));
    }
    let cipher = ChaCha20Poly1305::new(&key.into());
    let mut out = vec![0u8; n * length];
    let first_bad = std::sync::atomic::AtomicUsize::new(usize::MAX);
    pool::for_rows(threads, &mut out, length, |first, codes| {
        for (k, code) in codes.chunks_exact_mut(length).enumerate() {
            let i = first + k;
            let r = &sealed[i * rec..(i + 1) * rec];
            let (nonce, rest) = r.split_at(NONCE_LEN);
            let (body, tag) = rest.split_at(length);
            code.copy_from_slice(body);
            let ad = &digests[i * size..(i + 1) * size];
            let ok = cipher
                .decrypt_in_place_detached(Nonce::from_slice(nonce), ad, code, Tag::from_slice(tag))
                .is_ok();
            if !ok {
                first_bad.fetch_min(i, std::sync::atomic::Ordering::Relaxed);
                // Later records of this chunk cannot be the lowest failure.
                return;
            }
        }
    });
    match first_bad.into_inner() {
        usize::MAX => Ok(out),
        record => Err(Error::AuthenticationFailed { record }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = [5u8; 32];
        let codes = b"ABCDEFGHJKMN".repeat(3000);
        let n = codes.len() / 4;
        let digests = vec![9u8; n * 8];
        let nonces: Vec<u8> = (0..n * NONCE_LEN).map(|i| (i % 251) as u8).collect();
        let sealed = seal(&codes, 4, &digests, 8, &key, &nonces, 2).expect("seal");
        assert_eq!(sealed.len(), n * record_len(4));
        assert_eq!(&sealed[..NONCE_LEN], &nonces[..NONCE_LEN]);
        assert_eq!(open(&sealed, 4, &digests, 8, &key, 2).expect("open"), codes);
        let mut bad = sealed.clone();
        bad[5000 * record_len(4) + 13] ^= 1;
        bad[7000 * record_len(4) + 13] ^= 1;
        match open(&bad, 4, &digests, 8, &key, 2) {
            Err(Error::AuthenticationFailed { record }) => assert_eq!(record, 5000),
            other => panic!("expected a failure, got {other:?}"),
        }
        let mut other_ad = digests.clone();
        other_ad[0] ^= 1;
        assert!(open(&sealed, 4, &other_ad, 8, &key, 1).is_err());
        let fresh = seal(&codes[..8], 4, &digests[..16], 8, &key, &[], 1).expect("seal");
        assert_eq!(
            open(&fresh, 4, &digests[..16], 8, &key, 1).expect("open"),
            &codes[..8]
        );
        assert!(seal(&codes, 4, &digests[..8], 8, &key, &nonces, 1).is_err());
    }
}
