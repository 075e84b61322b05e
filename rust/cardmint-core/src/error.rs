//! The one error type of the kernel. The binding maps each variant to one Python exception
//! class in one place, so messages are written here for the person reading the traceback.

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    /// An argument the caller should have checked: wrong size, out of range, ragged buffer.
    InvalidArgument(String),
    /// `build` met the same digest twice; rows are the first duplicate pair (lowest second).
    DuplicateDigest { first: u64, second: u64 },
    /// `open` found a record whose tag does not verify (the lowest such record).
    AuthenticationFailed { record: usize },
    /// A minter was asked for more codes than its payload space allows.
    Exhausted(String),
    /// An index file that is readable but not a valid §9 file.
    CorruptIndex { path: String, reason: String },
    /// The operating system refused a read, write or rename.
    Io { path: String, source: io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub fn io(path: &str, source: io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub fn corrupt(path: &str, reason: impl Into<String>) -> Self {
        Error::CorruptIndex {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(msg) | Error::Exhausted(msg) => f.write_str(msg),
            Error::DuplicateDigest { first, second } => {
                write!(f, "duplicate digest at rows {first} and {second}")
            }
            Error::AuthenticationFailed { record } => {
                write!(f, "record {record} failed authentication")
            }
            Error::CorruptIndex { path, reason } => write!(f, "{path}: {reason}"),
            Error::Io { path, source } => write!(f, "{path}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_problem() {
        let e = Error::DuplicateDigest {
            first: 3,
            second: 9,
        };
        assert_eq!(e.to_string(), "duplicate digest at rows 3 and 9");
        let e = Error::AuthenticationFailed { record: 7 };
        assert_eq!(e.to_string(), "record 7 failed authentication");
        let e = Error::corrupt("/x", "checksum mismatch (file corrupted)");
        assert_eq!(e.to_string(), "/x: checksum mismatch (file corrupted)");
        let e = Error::io("/y", io::Error::new(io::ErrorKind::NotFound, "gone"));
        assert!(e.to_string().starts_with("/y: "));
        assert!(std::error::Error::source(&e).is_some());
    }
}
