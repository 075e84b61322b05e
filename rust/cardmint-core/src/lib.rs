//! The pure-Rust kernel of cardmint: everything `docs/code-format.md` specifies, with no
//! Python in sight. The pyo3 crate `cardmint-py` is a thin layer over this one.
#![forbid(unsafe_code)]

pub mod alphabet;
pub mod audit;
pub mod correct;
pub mod digest;
pub mod error;
pub mod index;
pub mod mint;
pub mod normalize;
pub mod normtable;
pub mod pool;
pub mod seal;
pub mod serial;

pub use error::{Error, Result};

/// Shortest and longest code, in symbols (code-format §2).
pub const MIN_LENGTH: usize = 4;
pub const MAX_LENGTH: usize = 31;

/// Rejects a code length outside `4..=31` with a message that names it.
pub fn check_length(length: usize) -> Result<()> {
    if (MIN_LENGTH..=MAX_LENGTH).contains(&length) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "code length must be {MIN_LENGTH}..{MAX_LENGTH}, got {length}"
        )))
    }
}

/// Splits `buf` into rows of `width` bytes, refusing a ragged tail.
pub fn rows_of(buf: &[u8], width: usize, what: &str) -> Result<usize> {
    if width == 0 || !buf.len().is_multiple_of(width) {
        return Err(Error::invalid(format!(
            "{what}: {} bytes is not a multiple of {width}",
            buf.len()
        )));
    }
    Ok(buf.len() / width)
}
