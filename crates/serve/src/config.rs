//! `quiver.toml`: the server's configuration. Every option is documented in the example
//! `quiver.example.toml` at the repository root.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Result, ServeError};
use crate::router::RouteConfig;

/// Bearer tokens, one set per kind of caller. An empty set leaves that endpoint open.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// May call `/v1/route` and `/v1/chat/completions`.
    #[serde(default)]
    pub route_tokens: Vec<String>,
    /// May call `/v1/feedback` and `/v1/outcome`.
    #[serde(default)]
    pub feedback_tokens: Vec<String>,
    /// May read `/v1/routes/{name}` and `/metrics`, and call everything else.
    #[serde(default)]
    pub admin_tokens: Vec<String>,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Directory of the decision log and snapshots.
    pub log_dir: PathBuf,
    /// Seconds between periodic snapshots (one is also written on shutdown).
    #[serde(default = "default_snapshot_interval")]
    pub snapshot_interval_s: u64,
    /// Largest request body, bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Time limit of a whole request, ms (proxied calls included).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// Time limit of one upstream attempt before falling back, ms.
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout_ms: u64,
    /// Decisions remembered for late feedback per route; older ones get 404.
    #[serde(default = "default_horizon")]
    pub feedback_horizon_decisions: usize,
    /// Bearer tokens.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The routes.
    pub routes: Vec<RouteConfig>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_snapshot_interval() -> u64 {
    60
}
fn default_max_body() -> usize {
    1 << 20
}
fn default_request_timeout() -> u64 {
    120_000
}
fn default_upstream_timeout() -> u64 {
    60_000
}
fn default_horizon() -> usize {
    1_000_000
}

impl ServeConfig {
    /// Parses a configuration file, resolving `log_dir` against the file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_at(path))?;
        let mut config: ServeConfig =
            toml::from_str(&text).map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))?;
        if config.log_dir.is_relative() {
            if let Some(dir) = path.parent() {
                config.log_dir = dir.join(&config.log_dir);
            }
        }
        if config.routes.is_empty() {
            return Err(ServeError::Config(format!("{}: no [[routes]]", path.display())));
        }
        Ok(config)
    }
}
