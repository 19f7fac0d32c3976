//! `quiver-serve`: the serving layer.
//!
//! It will host the in-process `Router` and the axum HTTP server (route, OpenAI-compatible
//! proxy, feedback, metrics) over `quiver-bandit` learners, with the fsynced decision log.
//! This crate is the reserved home of that work; it has no public items yet.
