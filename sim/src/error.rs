//! The crate's one error type: every message names the file, and where it can the row and
//! column, of the bad input.

use std::fmt;
use std::path::PathBuf;

/// What went wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum SimError {
    /// A data path that matched no file.
    NoFiles {
        /// The path, directory or glob as given.
        pattern: String,
    },
    /// A file that could not be read or parsed at all.
    Read {
        /// The file.
        path: PathBuf,
        /// The reader's message.
        reason: String,
    },
    /// A required column is absent.
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column looked for.
        column: String,
        /// What to do about it.
        hint: String,
    },
    /// A value that does not fit its column.
    BadValue {
        /// The file.
        path: PathBuf,
        /// 1-based data row (the header is not counted).
        row: usize,
        /// The column.
        column: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Inputs that are each fine but do not fit together (e.g. train and test arms differ).
    Mismatch(String),
    /// A writing failure.
    Write {
        /// The file.
        path: PathBuf,
        /// The writer's message.
        reason: String,
    },
    /// An error from the learning core.
    Bandit(quiver_bandit::Error),
    /// A bad option value.
    InvalidOption(String),
    /// An embedder that failed on a dataset's prompts.
    Embedding(String),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::NoFiles { pattern } => write!(
                f,
                "no data file matches `{pattern}` (give a file, a directory or a quoted glob of .csv, .parquet or .jsonl files)"
            ),
            SimError::Read { path, reason } => write!(f, "{}: cannot read: {reason}", path.display()),
            SimError::MissingColumn { path, column, hint } => {
                write!(f, "{}: missing column `{column}`; {hint}", path.display())
            }
            SimError::BadValue {
                path,
                row,
                column,
                reason,
            } => write!(f, "{}: row {row}, column `{column}`: {reason}", path.display()),
            SimError::Mismatch(why) => write!(f, "{why}"),
            SimError::Write { path, reason } => write!(f, "{}: cannot write: {reason}", path.display()),
            SimError::Bandit(e) => write!(f, "{e}"),
            SimError::InvalidOption(why) => write!(f, "{why}"),
            SimError::Embedding(why) => write!(f, "embedding the prompts: {why}"),
        }
    }
}

impl std::error::Error for SimError {}

impl From<quiver_bandit::Error> for SimError {
    fn from(e: quiver_bandit::Error) -> Self {
        SimError::Bandit(e)
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, SimError>;
