//! Error type shared by the whole crate.

use std::path::PathBuf;

/// Every fallible operation of `bevrt-calib` returns this error. Messages name the file and,
/// where it applies, the field that was wrong.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: field `{field}`: {msg}")]
    Field {
        path: PathBuf,
        field: String,
        msg: String,
    },
    #[error("{path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("{path}: cannot decode image: {msg}")]
    Image { path: PathBuf, msg: String },
    #[error("invalid parameter `{field}`: {msg}")]
    Invalid { field: String, msg: String },
    #[error("calibration failed: {0}")]
    Calibration(String),
}

impl CalibError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        CalibError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn field(path: &std::path::Path, field: &str, msg: impl Into<String>) -> Self {
        CalibError::Field {
            path: path.to_path_buf(),
            field: field.to_string(),
            msg: msg.into(),
        }
    }
    pub(crate) fn parse(path: &std::path::Path, msg: impl Into<String>) -> Self {
        CalibError::Parse {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub(crate) fn invalid(field: &str, msg: impl Into<String>) -> Self {
        CalibError::Invalid {
            field: field.to_string(),
            msg: msg.into(),
        }
    }
}
