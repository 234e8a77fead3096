//! Typed errors of the data crate.

use std::path::PathBuf;

/// Everything that can go wrong while tokenizing or reading data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tokenizer could not be loaded or lacks a token BERT needs.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A data line is malformed.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An input does not fit the requested encoding (too long, empty, …).
    #[error("{0}")]
    Encoding(String),
    /// A prepared-corpus shard file does not hold what its index describes.
    #[error("{path}: {message}; re-run `bert data prepare`")]
    CorruptShard {
        /// The shard file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
