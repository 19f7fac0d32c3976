//! `quiver-serve`: the serving layer of Quiver.
//!
//! [`Router`] is the in-process API for applications that embed Quiver: per-route
//! `quiver-bandit` learners behind `route`, `record_outcome`, `feedback` and `snapshot`.
//! Every decision, outcome and feedback is appended to the [`log`] and fsynced before the
//! call returns, in the logged dataset shape that `quiver replay` and `quiver ope` read;
//! on open, the router restores its snapshot and replays the log after it, so a crash
//! loses nothing that was acknowledged.
//!
//! The HTTP server (axum: route, OpenAI-compatible proxy, feedback, metrics) builds on
//! this router.

mod error;
pub mod log;
mod router;

pub use error::{Result, ServeError};
pub use router::{ModelConfig, RouteConfig, RouteRequest, Routed, Router};
