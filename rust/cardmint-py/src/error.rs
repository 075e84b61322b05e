//! The one place where kernel errors become Python exceptions: invalid arguments, corrupt
//! files, failed authentication and exhausted minters are `ValueError`; what the operating
//! system refused is `OSError` (with errno and filename, so Python picks the subclass,
//! e.g. `FileNotFoundError`).

use cardmint_core::Error;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::PyErr;

/// The Python exception class an error maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyKind {
    ValueError,
    OSError,
}

/// Which class each variant becomes; one arm per variant so a new variant cannot slip
/// through unmapped.
pub fn kind(e: &Error) -> PyKind {
    match e {
        Error::InvalidArgument(_)
        | Error::DuplicateDigest { .. }
        | Error::AuthenticationFailed { .. }
        | Error::Exhausted(_)
        | Error::CorruptIndex { .. } => PyKind::ValueError,
        Error::Io { .. } => PyKind::OSError,
    }
}

/// Converts a kernel error into the Python exception to raise.
pub fn to_py(e: Error) -> PyErr {
    match kind(&e) {
        PyKind::ValueError => PyValueError::new_err(e.to_string()),
        PyKind::OSError => match &e {
            Error::Io { path, source } => match source.raw_os_error() {
                Some(errno) => PyOSError::new_err((errno, strerror(source, errno), path.clone())),
                None => PyOSError::new_err(e.to_string()),
            },
            _ => PyOSError::new_err(e.to_string()),
        },
    }
}

/// The OS message without Rust's " (os error N)" suffix, as Python's own OSError shows it.
fn strerror(e: &std::io::Error, errno: i32) -> String {
    let text = e.to_string();
    let suffix = format!(" (os error {errno})");
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

/// A `ValueError` for an argument the binding itself rejects (e.g. a negative count).
pub fn invalid(msg: impl Into<String>) -> PyErr {
    to_py(Error::invalid(msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn every_variant_has_its_class() {
        let cases = [
            (Error::invalid("x"), PyKind::ValueError),
            (
                Error::DuplicateDigest {
                    first: 1,
                    second: 2,
                },
                PyKind::ValueError,
            ),
            (
                Error::AuthenticationFailed { record: 0 },
                PyKind::ValueError,
            ),
            (Error::Exhausted("full".into()), PyKind::ValueError),
            (
                Error::corrupt("/f", "checksum mismatch"),
                PyKind::ValueError,
            ),
            (
                Error::io("/f", io::Error::from_raw_os_error(2)),
                PyKind::OSError,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(kind(&e), want, "{e}");
        }
    }

    #[test]
    fn os_messages_read_like_pythons() {
        let e = io::Error::from_raw_os_error(2);
        let msg = strerror(&e, 2);
        assert!(!msg.contains("os error"), "{msg}");
        assert!(!msg.is_empty());
    }
}
