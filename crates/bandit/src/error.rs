//! The crate's one error type.

use std::fmt;

/// What went wrong, with the offending value; see [`Error::kind`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A number that must be finite was NaN or infinite.
    NotFinite {
        /// Which input held it, e.g. `features[3]` or `outcome.latency_ms`.
        field: String,
        /// The value as received.
        value: f64,
    },
    /// A number outside its documented range.
    OutOfRange {
        /// Which input held it.
        field: String,
        /// The value as received.
        value: f64,
        /// The allowed range, e.g. `[0, 1]`.
        range: &'static str,
    },
    /// A feature vector of the wrong length.
    DimensionMismatch {
        /// The dimension the learner was built with.
        expected: usize,
        /// The length received.
        found: usize,
    },
    /// No arm satisfies the request's constraints.
    NoEligibleArm {
        /// Why the arms were excluded, one reason per arm.
        reasons: Vec<String>,
    },
    /// An arm id that the learner does not know, and the arms it knows.
    UnknownArm {
        /// The id given.
        id: String,
        /// The ids known, in order.
        known: Vec<String>,
    },
    /// An arm id added twice.
    DuplicateArm(String),
    /// Feedback for a decision the learner never made or has forgotten.
    UnknownDecision(u64),
    /// A quality for a decision that has learned another one: a decision's quality is
    /// learned once.
    QualityConflict {
        /// The decision.
        id: u64,
        /// The quality it learned.
        learned: f64,
        /// The one refused.
        sent: f64,
    },
    /// An outcome for a decision whose call another outcome has reported otherwise: a
    /// decision's outcome is recorded once, and a repeat must say what the first said.
    OutcomeConflict {
        /// The decision.
        id: u64,
        /// The first field that differs.
        field: &'static str,
        /// Its value recorded.
        recorded: f64,
        /// Its value refused.
        sent: f64,
    },
    /// A policy specification that does not parse or has bad parameters.
    InvalidPolicySpec {
        /// The specification as written.
        spec: String,
        /// What is wrong with it and how to fix it.
        reason: String,
    },
    /// A snapshot written by an incompatible format version.
    SnapshotVersion {
        /// The version in the snapshot.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A snapshot whose parts disagree with each other.
    CorruptSnapshot(String),
    /// A configuration value that cannot work, e.g. a learner with no arms.
    InvalidConfig(String),
}

/// The error returned by every fallible operation of `quiver-bandit`.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    kind: ErrorKind,
}

impl Error {
    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Whether an input value was refused: NaN, infinite or outside its range.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::NotFinite { .. } | ErrorKind::OutOfRange { .. }
        )
    }

    /// Whether the error names a decision the learner does not track.
    pub fn is_unknown_decision(&self) -> bool {
        matches!(self.kind, ErrorKind::UnknownDecision(_))
    }

    pub(crate) fn not_finite(field: impl Into<String>, value: f64) -> Self {
        ErrorKind::NotFinite {
            field: field.into(),
            value,
        }
        .into()
    }

    pub(crate) fn out_of_range(field: impl Into<String>, value: f64, range: &'static str) -> Self {
        ErrorKind::OutOfRange {
            field: field.into(),
            value,
            range,
        }
        .into()
    }

    pub(crate) fn invalid_spec(spec: &str, reason: impl Into<String>) -> Self {
        ErrorKind::InvalidPolicySpec {
            spec: spec.to_string(),
            reason: reason.into(),
        }
        .into()
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error { kind }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::NotFinite { field, value } => {
                write!(f, "{field} is {value:?}; every number must be finite")
            }
            ErrorKind::OutOfRange { field, value, range } => {
                write!(f, "{field} is {value:?}, outside {range}")
            }
            ErrorKind::DimensionMismatch { expected, found } => write!(
                f,
                "feature vector has {found} values but the learner expects {expected}; \
                 featurize with the learner's featurizer"
            ),
            ErrorKind::NoEligibleArm { reasons } => {
                write!(f, "no arm is eligible for this request: {}", reasons.join("; "))
            }
            ErrorKind::UnknownArm { id, known } => {
                write!(f, "unknown arm `{id}` (the arms: {})", known.join(", "))
            }
            ErrorKind::DuplicateArm(id) => write!(f, "arm `{id}` already exists"),
            ErrorKind::UnknownDecision(id) => write!(
                f,
                "unknown decision {id}: never made here, or older than the feedback horizon"
            ),
            ErrorKind::QualityConflict { id, learned, sent } => write!(
                f,
                "decision {id} learned quality {learned} already (a failed call counts as 0); \
                 {sent} is refused: a decision's quality is learned once"
            ),
            ErrorKind::OutcomeConflict {
                id,
                field,
                recorded,
                sent,
            } => write!(
                f,
                "decision {id} recorded its outcome already with {field} {recorded}; {sent} is \
                 refused: a decision's outcome is recorded once, and a repeat says the same"
            ),
            ErrorKind::InvalidPolicySpec { spec, reason } => {
                write!(f, "policy `{spec}`: {reason}")
            }
            ErrorKind::SnapshotVersion { found, supported } => write!(
                f,
                "snapshot format version {found} is not supported (this build reads version {supported})"
            ),
            ErrorKind::CorruptSnapshot(why) => write!(f, "corrupt snapshot: {why}"),
            ErrorKind::InvalidConfig(why) => write!(f, "invalid configuration: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Checks that `value` is finite, naming `field` otherwise.
pub(crate) fn finite(field: &str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::not_finite(field, value))
    }
}

/// Checks that `value` is finite and in `[lo, hi]`.
pub(crate) fn in_range(field: &str, value: f64, lo: f64, hi: f64, range: &'static str) -> Result<f64> {
    finite(field, value)?;
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(Error::out_of_range(field, value, range))
    }
}
