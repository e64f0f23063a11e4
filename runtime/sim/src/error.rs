//! The simulator's error type; messages name the field or file that was wrong.

use std::path::PathBuf;

use bevrt_calib::CalibError;

/// Errors of the simulator; messages name the field or file that was wrong.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("sim config: field `{field}`: {msg}")]
    Config { field: String, msg: String },
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error("buffer `{what}`: expected {expected} bytes, got {got}")]
    Buffer {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error(transparent)]
    Calib(#[from] CalibError),
}

impl SimError {
    pub(crate) fn config(field: &str, msg: impl Into<String>) -> Self {
        SimError::Config {
            field: field.to_string(),
            msg: msg.into(),
        }
    }
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        SimError::Io {
            path: path.to_path_buf(),
            msg: e.to_string(),
        }
    }
}
