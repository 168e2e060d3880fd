//! Typed errors of the library. Each variant names the file, line or key at fault,
//! so that the binary can print one readable line.

use std::path::PathBuf;

/// Errors raised by the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside Candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A model file (config.json, safetensors, GGUF) is missing, corrupt or inconsistent.
    #[error("{path}: {msg}")]
    Model { path: PathBuf, msg: String },

    /// The model's architecture is not one this crate implements.
    #[error("{path}: unsupported architecture `{arch}` (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        arch: String,
        supported: String,
    },

    /// The tokenizer could not be built or could not encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),

    /// A dataset line is invalid.
    #[error("{path}:{line}: {msg}")]
    Dataset {
        path: PathBuf,
        line: usize,
        msg: String,
    },

    /// A configuration value is invalid.
    #[error("{0}")]
    Config(String),

    /// Training produced a NaN or infinite loss or gradient.
    #[error("non-finite value: {0}")]
    NonFinite(String),

    /// Anything else, with its message.
    #[error("{0}")]
    Msg(String),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A model-file error on `path`.
    pub fn model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
