//! `quiver-sim`: the offline replay simulator and off-policy evaluation of Quiver.
//!
//! ML engineers compare routing policies here before deploying one:
//!
//! - [`data`] loads datasets with polars (CSV, Parquet, JSON lines; a file, a directory or
//!   a glob) in the two shapes: wide (full information) and logged (bandit feedback), with
//!   readers for RouterBench, RouteLLM, RouterArena and the Open Bandit Dataset.
//! - [`replay`] replays `quiver-bandit` policies on wide data under bandit feedback, seeds
//!   in parallel, with scenario knobs (feedback delay and loss, drift, a latency model).
//! - [`ope`] estimates a candidate policy's value, quality and cost on a log with replay,
//!   IPS, SNIPS, DM, DR, SNDR and Switch-DR, with bootstrap and analytic intervals.
//! - [`logging`] turns wide data into a log under any logging policy: exact ground truth
//!   for the estimators.
//! - [`embeddings`] embeds a dataset's prompts once and caches them, for contexts with an
//!   embedding block.
//! - [`metrics`] and [`report`] summarize: regret, ratios to the best single model, the
//!   cost-quality frontier and AIQ, APGR and CPT.
//!
//! The learner is the same [`quiver_bandit::Learner`] the server runs, so a replayed policy
//! behaves as it would online.

pub mod context;
pub mod data;
pub mod embeddings;
mod error;
pub mod logging;
pub mod metrics;
pub mod ope;
pub mod output;
pub mod plot;
pub mod priors;
pub mod replay;
pub mod report;
pub mod scenario;
pub mod source;
pub mod suite;
pub mod write;

pub use error::{Result, SimError};
