//! Typed errors of the model crate.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while configuring, loading or saving a BERT model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BertError {
    /// A configuration value is missing, unknown or cannot be honoured.
    #[error("{0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An error attached to the file it came from.
    #[error("{path}: {message}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A checkpoint does not fit the model: missing, unexpected or mis-shaped tensors.
    #[error("checkpoint {path} does not match the model: {message}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensors at fault, by name.
        message: String,
    },
    /// A model directory lacks a file it needs.
    #[error("{0}")]
    MissingFile(String),
}

impl BertError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            Self::Config(message) => Self::InFile {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        }
    }
}
