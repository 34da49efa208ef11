//! The one error type of lapidary. Every message says what was expected and what was found, and
//! names the tensor, the op or the file involved. Not a place for recovery logic.

use std::fmt;

/// Result alias used across lapidary.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in lapidary, with enough context to act on.
#[derive(Debug)]
pub enum Error {
    /// A tensor had the wrong shape for an op.
    Shape {
        /// What received the tensor: an op name or a parameter path.
        context: String,
        /// A description of the expected shape, e.g. `[B, T, 640]` or `[4, 3]`.
        expected: String,
        /// The shape that was given.
        got: Vec<usize>,
    },
    /// A tensor had the wrong dtype for an op.
    DType {
        /// What received the tensor.
        context: String,
        /// The dtype(s) accepted.
        expected: String,
        /// The dtype that was given.
        got: crate::DType,
    },
    /// The requested device is not available in this build or on this machine.
    Device(String),
    /// A kernel launch or a device read failed.
    Runtime(String),
    /// An input was invalid in a way not covered above (the message says how).
    Invalid(String),
    /// A file could not be read or written.
    Io {
        /// The file involved.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// A shape error, for `context` (an op or tensor name).
    pub fn shape(context: impl Into<String>, expected: impl Into<String>, got: &[usize]) -> Self {
        Error::Shape { context: context.into(), expected: expected.into(), got: got.to_vec() }
    }

    /// An invalid-input error with a free-form message.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// An error unless `lo <= value <= hi`; `key` names the setting (a config field, a flag).
    pub fn check_range(key: &str, value: usize, lo: usize, hi: usize) -> Result<()> {
        if value < lo || value > hi {
            return Err(Error::invalid(format!("{key} is {value}; expected {lo} to {hi}")));
        }
        Ok(())
    }

    /// An error unless `value` is finite and above zero; `key` names the setting.
    pub fn check_positive(key: &str, value: f64) -> Result<()> {
        if !(value.is_finite() && value > 0.0) {
            return Err(Error::invalid(format!("{key} is {value}; expected a finite number above 0")));
        }
        Ok(())
    }

    /// An error naming the first NaN or infinity in `values`: `{what} holds {value} at flat
    /// index {i}; {why}`.
    pub fn check_finite(what: &str, values: &[f32], why: &str) -> Result<()> {
        match values.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(Error::invalid(format!("{what} holds {} at flat index {i}; {why}", values[i]))),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { context, expected, got } => {
                write!(f, "{context}: expected shape {expected}, got {got:?}")
            }
            Error::DType { context, expected, got } => {
                write!(f, "{context}: expected dtype {expected}, got {got}")
            }
            Error::Device(m) => write!(f, "device unavailable: {m}"),
            Error::Runtime(m) => write!(f, "runtime error: {m}"),
            Error::Invalid(m) => write!(f, "{m}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
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
