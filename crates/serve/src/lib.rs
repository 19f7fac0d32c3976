//! `quiver-serve`: the serving layer of Quiver.
//!
//! [`Router`] is the in-process API for applications that embed Quiver: per-route
//! `quiver-bandit` learners behind `route`, `record_outcome`, `feedback` and `snapshot`.
//! Every decision, outcome and feedback is appended to the [`log`] and fsynced before it
//! is acknowledged (each change returns a [`Pending`] result to wait for; group commit
//! shares one fsync among concurrent changes), in the logged dataset shape that `quiver
//! replay` and `quiver ope` read; on open, the router restores its snapshot and replays
//! the log after it, so a crash loses nothing that was acknowledged. Each route has its own
//! lock, so requests to different routes never wait for each other.
//!
//! The gateway calls models through the [`upstream::Upstream`] trait: one attempt at a
//! model and what came of it, and what a call costs. [`upstream::OpenAiCompatible`] owns
//! each model's URL and key and an attempt's limits; the proxy decides retries, fallback
//! and what is learned, whatever the provider.
//!
//! The HTTP server ([`app::build_app`], run by [`server::run`]) exposes the router:
//! `/v1/route`; the OpenAI-compatible `/v1/chat/completions` and `/v1/completions` proxy
//! with fallback and streaming, `/v1/embeddings` passed through, `/v1/models`;
//! `/v1/feedback` and `/v1/outcome`; each route's state, snapshot, candidates, canary and
//! recent decisions under `/v1/routes/{name}`; the `/ui` dashboard, `/metrics`, `/healthz`
//! and `/openapi.json` (every path in `app.rs`), behind bearer tokens and body and time
//! limits.

mod api_error;
pub mod app;
mod auth;
pub mod cache;
pub mod cascade;
pub mod cluster;
pub mod config;
mod decisions;
pub mod deployments;
pub mod embeddings;
mod error;
mod forward;
pub mod health;
pub mod metrics;
mod models;
mod openapi;
mod passthrough;
pub mod proxy;
mod request_limits;
mod router;
pub mod server;
pub mod sessions;
pub mod spend;
mod state;
mod status;
pub mod upstream;

pub use quiver_bandit::ObjectiveOverride;
pub use quiver_log as log;

pub use api_error::ApiError;
pub use config::{AuthConfig, CanaryConfig, EmbeddingConfig, ModelConfig, RouteConfig, ServeConfig};
pub use error::{Result, ServeError};
pub use router::{
    CanaryAction, CapturedSnapshot, ClusterFigures, LearnerRef, Observed, Pending, RecentDecision,
    ReplicaShare, RouteRequest, Routed, Router, RouterOptions,
};
pub use sessions::SessionConfig;
