//! `quiver-sim`: the offline replay simulator and off-policy evaluation.
//!
//! It will load logged and full-information request datasets with polars, replay
//! `quiver-bandit` policies under bandit feedback, and estimate policy values off-policy.
//! This crate is the reserved home of that work; it has no public items yet.
