//! The crate's one error type.

use std::path::PathBuf;

/// What went wrong in the serving layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// No route of that name.
    #[error("unknown route `{0}`")]
    UnknownRoute(String),
    /// A decision id that is not `<route>:<number>` (or `<route>:<replica>:<number>`).
    #[error("malformed decision id `{0}`; decision ids look like `<route>:<number>` (`<route>:<replica>:<number>` in a cluster)")]
    BadDecisionId(String),
    /// Feedback or an outcome for a decision another replica made (see `crate::cluster`).
    #[error("decision `{decision_id}` was made by replica `{replica}`, not by this server")]
    OtherReplica {
        /// The decision.
        decision_id: String,
        /// Its route.
        route: String,
        /// The replica that made it.
        replica: String,
    },
    /// An operator's action on the canary of a route that has none.
    #[error("route `{0}` has no canary: configure one under its `canary`")]
    NoCanary(String),
    /// A request with neither prompt nor messages.
    #[error("a request needs a prompt or messages")]
    EmptyRequest,
    /// A request with another number of caller features than its route takes.
    #[error(
        "route `{route}` takes {expected} caller features (its `extra_features`) and the request \
         brought {got}: send them as `features` on /v1/route, or in the `x-quiver-features` \
         header (comma-separated numbers) on the OpenAI-compatible endpoints"
    )]
    FeatureCount {
        /// The route.
        route: String,
        /// Its `extra_features`.
        expected: usize,
        /// The request's.
        got: usize,
    },
    /// A configuration that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The learning core refused the input.
    #[error(transparent)]
    Bandit(#[from] quiver_bandit::Error),
    /// A file of the log or the snapshot could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause, written out in the message (not chained as a source, which would
        /// print it twice).
        cause: std::io::Error,
    },
    /// The route reached a spend cap.
    #[error("{message}")]
    SpendCap {
        /// Which cap, what was spent, when it resets.
        message: String,
        /// Until the cap's period ends.
        retry_after: std::time::Duration,
    },
    /// A route whose state a panic may have left half changed.
    #[error("route `{0}` is out of service: a failure left its state inconsistent; restart the server")]
    Poisoned(String),
    /// The snapshot a stop writes, not written; the log holds what it would have.
    #[error(
        "stopped without the final snapshot ({0}); the log holds every change, and a restart replays it"
    )]
    FinalSnapshot(Box<ServeError>),
    /// A logged decision to learn from, made in another context than its route builds now
    /// (found when the log is learned again: after a crash before any snapshot, for a
    /// route added back, or for one whose snapshot could not be read).
    #[error(
        "route `{route}` decided record {seq} of the log in the context {then}, and builds {now} now: \
         what it learned does not carry over; restore the route's configuration, or start it afresh \
         with `--reset-route {route}`"
    )]
    ContextChanged {
        /// The route.
        route: String,
        /// The record.
        seq: u64,
        /// The logged context's definition.
        then: String,
        /// The route's today.
        now: String,
    },
    /// A snapshot that does not fit the configuration.
    #[error("{path}: {reason}")]
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, ServeError>;

/// Attaches a path to an I/O error.
pub(crate) fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ServeError {
    let path = path.into();
    move |cause| ServeError::Io { path, cause }
}

/// Refuses route `route`'s configuration for `cause`, naming the route, and saying that
/// the configuration is invalid once however the cause says it.
pub(crate) fn route_config(route: &str) -> impl FnOnce(ServeError) -> ServeError + '_ {
    move |cause| ServeError::Config(format!("route `{route}`: {}", config_reason(cause)))
}

/// What `cause` finds wrong with a configuration, without its own "invalid configuration"
/// (the error that wraps it says that once).
pub(crate) fn config_reason(cause: ServeError) -> String {
    match cause {
        ServeError::Config(why) => why,
        ServeError::Bandit(e) => match e.kind() {
            quiver_bandit::ErrorKind::InvalidConfig(why) => why.clone(),
            _ => e.to_string(),
        },
        other => other.to_string(),
    }
}
