use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not what it claims to be (bad magic, truncated, inconsistent sizes...).
    #[error("{path}: malformed {format} file: {msg}")]
    Format {
        path: PathBuf,
        format: &'static str,
        msg: String,
    },
    /// A well-formed file that uses something cria does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Msg(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }
}
