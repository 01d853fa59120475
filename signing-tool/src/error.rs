//! Errors of the signing tool's library modules. Command handlers wrap them with `anyhow` context
//! naming the file or directory; every variant already names what it was working on.

use std::path::{Path, PathBuf};

/// What went wrong, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// hale-core refused something; `what` names the file or role.
    #[error("{what}: {source}")]
    Trust {
        what: String,
        #[source]
        source: hale_core::Error,
    },
    #[error(transparent)]
    Repo(#[from] hale_repo::RepoError),
    #[error("{0}")]
    Invalid(String),
}

impl ToolError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ToolError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub fn json(path: &Path, source: serde_json::Error) -> Self {
        ToolError::Json {
            path: path.to_path_buf(),
            source,
        }
    }
    pub fn trust(what: impl std::fmt::Display, source: hale_core::Error) -> Self {
        ToolError::Trust {
            what: what.to_string(),
            source,
        }
    }
}

/// Shorthand for a refusal with a message.
pub fn invalid(msg: impl Into<String>) -> ToolError {
    ToolError::Invalid(msg.into())
}

pub type Result<T, E = ToolError> = std::result::Result<T, E>;

/// Read a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| ToolError::io(path, e))
}

/// Read and parse a JSON file, naming it in the error.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    serde_json::from_slice(&read(path)?).map_err(|e| ToolError::json(path, e))
}
