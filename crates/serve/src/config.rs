//! `quiver.toml`: the server's configuration. Every option is documented in the example
//! `quiver.example.toml` at the repository root.

use std::path::{Path, PathBuf};

use quiver_bandit::canary::{CanaryRule, Promote};
use quiver_bandit::limits;
use serde::{Deserialize, Serialize};

use crate::cache::CacheConfig;
use crate::cascade::CascadeConfig;
use crate::cluster::ClusterConfig;
use crate::deployments::{Balance, DeploymentConfig};
use crate::error::{Result, ServeError};
use crate::health::BreakerConfig;
use crate::sessions::SessionConfig;
use crate::spend::SpendCap;

/// Bearer tokens, one set per kind of caller. An empty set leaves that endpoint open.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// May call `/v1/route`, `/v1/chat/completions` and `/v1/models`.
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
    /// Largest request body, bytes; larger ones get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest request head (the request line and headers), bytes; larger ones get 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Time limit for a client to send its request head, ms; the connection is closed
    /// after it. It also closes keep-alive connections idle that long.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_ms: u64,
    /// Time limit for a client to send its request body, ms; 408 after it.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_ms: u64,
    /// Connections served at once; more get a 503 and are closed. Lowered at start to
    /// what the process's file descriptor limit allows.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time limit of a whole request, ms: of everything but a stream's body (the proxy's
    /// fallbacks included); 408 after it.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// Time limit for an upstream's first byte, ms: its response head and, for a stream,
    /// its first event. Past it the proxy falls back to the next model. Fallback is only
    /// possible before the first byte reaches the client.
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout_ms: u64,
    /// Time limit between two chunks of an upstream's body, ms. A stream is never cut by
    /// its length, only by this silence; it then ends with an error event.
    #[serde(default = "default_upstream_idle_timeout")]
    pub upstream_idle_timeout_ms: u64,
    /// Largest upstream body of a non-streamed answer, bytes; a larger one counts as a
    /// failed attempt and the proxy falls back.
    #[serde(default = "default_max_upstream_body")]
    pub max_upstream_body_bytes: usize,
    /// Retries of a model after a failed call (a 5xx status or a failed connection; not a
    /// timeout, nor a 429, whose `Retry-After` cools the model down), each after an
    /// exponential backoff with jitter, within the request's deadline; then the next model.
    #[serde(default = "default_upstream_retries")]
    pub upstream_retries: u32,
    /// The models' circuit breakers (see `crate::health`).
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
    /// The proxy's response cache (see `crate::cache`); off by default.
    #[serde(default)]
    pub cache: CacheConfig,
    /// How the proxy picks among a model's deployments: `least-busy` or `latency`.
    #[serde(default)]
    pub balance: Balance,
    /// Decisions remembered for late feedback per route; older ones get 404. Each holds
    /// its features until then (about 630 bytes with 64 features).
    #[serde(default = "default_horizon")]
    pub feedback_horizon_decisions: usize,
    /// How long a decision of `/v1/route` counts at most, at its estimated cost, as a call
    /// under way that its route's budget paces ahead of, while its outcome has not come,
    /// seconds; 0 counts none (see [`crate::RouterOptions::routed_call_limit`]).
    #[serde(default = "default_routed_call_limit")]
    pub routed_call_limit_s: u64,
    /// Bearer tokens.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Web origins whose pages may call the API from a browser (CORS), e.g.
    /// `["https://app.example.com"]`; `["*"]` allows any and needs route or admin tokens.
    /// Empty (the default): none, and no CORS layer at all.
    #[serde(default)]
    pub cors_allow_origins: Vec<String>,
    /// Replicas sharing what the routes learn through Redis (see `crate::cluster`).
    /// None (the default): this server learns alone.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// The routes.
    pub routes: Vec<RouteConfig>,
    /// Routes to start afresh (`quiver serve --reset-route NAME`; not a file option):
    /// see [`crate::RouterOptions::reset_routes`].
    #[serde(skip)]
    pub reset_routes: Vec<String>,
}

fn default_route_policy() -> String {
    quiver_bandit::DEFAULT_ROUTE_POLICY.into()
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
fn default_max_header_bytes() -> usize {
    32 << 10
}
fn default_header_read_timeout() -> u64 {
    10_000
}
fn default_body_read_timeout() -> u64 {
    30_000
}
fn default_max_connections() -> usize {
    1024
}
fn default_request_timeout() -> u64 {
    120_000
}
fn default_upstream_timeout() -> u64 {
    60_000
}
fn default_upstream_idle_timeout() -> u64 {
    60_000
}
fn default_max_upstream_body() -> usize {
    4 << 20
}
fn default_upstream_retries() -> u32 {
    1
}
fn default_horizon() -> usize {
    quiver_bandit::DEFAULT_FEEDBACK_HORIZON
}
fn default_routed_call_limit() -> u64 {
    crate::router::ROUTED_CALL_LIMIT.as_secs()
}

impl ServeConfig {
    /// A configuration of `routes` logging to `log_dir`, with every other option at its
    /// default.
    pub fn new(log_dir: PathBuf, routes: Vec<RouteConfig>) -> Self {
        ServeConfig {
            listen: default_listen(),
            log_dir,
            snapshot_interval_s: default_snapshot_interval(),
            max_body_bytes: default_max_body(),
            max_header_bytes: default_max_header_bytes(),
            header_read_timeout_ms: default_header_read_timeout(),
            body_read_timeout_ms: default_body_read_timeout(),
            max_connections: default_max_connections(),
            request_timeout_ms: default_request_timeout(),
            upstream_timeout_ms: default_upstream_timeout(),
            upstream_idle_timeout_ms: default_upstream_idle_timeout(),
            max_upstream_body_bytes: default_max_upstream_body(),
            upstream_retries: default_upstream_retries(),
            circuit_breaker: BreakerConfig::default(),
            cache: CacheConfig::default(),
            balance: Balance::default(),
            feedback_horizon_decisions: default_horizon(),
            routed_call_limit_s: default_routed_call_limit(),
            auth: AuthConfig::default(),
            cors_allow_origins: Vec::new(),
            cluster: None,
            routes,
            reset_routes: Vec::new(),
        }
    }

    /// Parses a configuration file, resolving `log_dir` and the routes' `priors` against
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_at(path))?;
        let mut config: ServeConfig =
            toml::from_str(&text).map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))?;
        if let Some(dir) = path.parent() {
            let paths = std::iter::once(&mut config.log_dir)
                .chain(config.routes.iter_mut().filter_map(|r| r.priors.as_mut()));
            for relative in paths.filter(|p| p.is_relative()) {
                *relative = dir.join(&*relative);
            }
        }
        if config.routes.is_empty() {
            return Err(ServeError::Config(format!("{}: no [[routes]]", path.display())));
        }
        Ok(config)
    }

    /// Applies the environment's overrides, as a platform sets them per deployment:
    /// `QUIVER_LISTEN`, `QUIVER_LOG_DIR` (relative to the working directory), and
    /// `QUIVER_ROUTE_TOKENS`, `QUIVER_FEEDBACK_TOKENS`, `QUIVER_ADMIN_TOKENS`
    /// (comma-separated). `var` reads a variable (`std::env::var`). A variable that is
    /// empty or holds no token overrides nothing: an unset `${VAR}` in a manifest must
    /// not leave an endpoint open. A value that cannot serve (an address without a port, a
    /// log directory that is a file) is refused, naming its variable.
    pub fn apply_env(&mut self, read: impl Fn(&str) -> Option<String>) -> Result<()> {
        let var = |name: &str| read(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let refuse =
            |name: &str, value: &str, why: &str| Err(ServeError::Config(format!("{name}=`{value}`: {why}")));
        if let Some(listen) = var("QUIVER_LISTEN") {
            let port = listen
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok());
            if port.is_none() {
                return refuse("QUIVER_LISTEN", &listen, "give host:port, e.g. 0.0.0.0:8080");
            }
            self.listen = listen;
        }
        if let Some(dir) = var("QUIVER_LOG_DIR") {
            if Path::new(&dir).is_file() {
                return refuse("QUIVER_LOG_DIR", &dir, "a file, where a directory is needed");
            }
            self.log_dir = PathBuf::from(dir);
        }
        let tokens = |name: &str| -> Option<Vec<String>> {
            let list: Vec<String> = var(name)?
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect();
            (!list.is_empty()).then_some(list)
        };
        if let Some(t) = tokens("QUIVER_ROUTE_TOKENS") {
            self.auth.route_tokens = t;
        }
        if let Some(t) = tokens("QUIVER_FEEDBACK_TOKENS") {
            self.auth.feedback_tokens = t;
        }
        if let Some(t) = tokens("QUIVER_ADMIN_TOKENS") {
            self.auth.admin_tokens = t;
        }
        Ok(())
    }

    /// Every limit lets something through: a limit of 0 would refuse every request (or
    /// never snapshot, or remember no decision), so it stops the start, named.
    pub fn check_limits(&self) -> Result<()> {
        let limits = [
            ("snapshot_interval_s", self.snapshot_interval_s),
            ("max_body_bytes", self.max_body_bytes as u64),
            ("max_header_bytes", self.max_header_bytes as u64),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("max_connections", self.max_connections as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("upstream_timeout_ms", self.upstream_timeout_ms),
            ("upstream_idle_timeout_ms", self.upstream_idle_timeout_ms),
            ("max_upstream_body_bytes", self.max_upstream_body_bytes as u64),
            (
                "feedback_horizon_decisions",
                self.feedback_horizon_decisions as u64,
            ),
        ];
        match limits.iter().find(|(_, value)| *value == 0) {
            Some((key, _)) => Err(ServeError::Config(format!("`{key}` is 0; it must be at least 1"))),
            None => Ok(()),
        }
    }

    /// The CORS origins must be origins (`https://host[:port]`, no path, no trailing
    /// slash) or `*`; and `*` only where the proxy asks for a token, or any web page in a
    /// user's browser could spend through an open gateway.
    pub fn check_cors(&self) -> Result<()> {
        for origin in &self.cors_allow_origins {
            let scheme_ok = origin.starts_with("http://") || origin.starts_with("https://");
            let host = origin.split_once("://").map_or("", |(_, h)| h);
            if origin != "*" && (!scheme_ok || host.is_empty() || host.contains('/')) {
                return Err(ServeError::Config(format!(
                    "cors_allow_origins: `{origin}` is not an origin (scheme://host[:port], no path or trailing slash)"
                )));
            }
        }
        let open_proxy = self.auth.route_tokens.is_empty() && self.auth.admin_tokens.is_empty();
        if open_proxy && self.cors_allow_origins.iter().any(|o| o == "*") {
            return Err(ServeError::Config(
                "cors_allow_origins = [\"*\"] needs route or admin tokens: without them any web page could call the proxy".into(),
            ));
        }
        Ok(())
    }

    /// Tokens on routing or feedback and none on the admin endpoints would leave these
    /// (every route's state, snapshots, canary actions, `/metrics`) open to anyone: an
    /// operator who locks the doors locks all of them, or says which stay open.
    pub fn check_auth(&self) -> Result<()> {
        let auth = &self.auth;
        let lists = [
            ("route_tokens", &auth.route_tokens),
            ("feedback_tokens", &auth.feedback_tokens),
            ("admin_tokens", &auth.admin_tokens),
        ];
        // No client sends an empty token (nor one with spaces around it): such a list
        // would lock its endpoints for good.
        for (key, tokens) in lists {
            if let Some(token) = tokens
                .iter()
                .find(|t| t.trim().is_empty() || t.trim() != t.as_str())
            {
                return Err(ServeError::Config(format!(
                    "auth: {key} holds `{token}`: a token is neither empty nor starts or ends with a space"
                )));
            }
        }
        let locked = !auth.route_tokens.is_empty() || !auth.feedback_tokens.is_empty();
        if locked && auth.admin_tokens.is_empty() {
            return Err(ServeError::Config(
                "auth: route or feedback tokens are set and admin_tokens is empty, which would leave the \
                 admin endpoints (routes' state, snapshots, canary actions, /metrics) open to anyone; \
                 set admin_tokens (or QUIVER_ADMIN_TOKENS)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Refuses a deployment that cannot work (a weight or limit out of range, a model
    /// with deployments and its own `base_url`), naming it.
    pub fn check_deployments(&self) -> Result<()> {
        for route in &self.routes {
            let mut ids = std::collections::BTreeSet::new();
            if let Some(twice) = route.models.iter().find(|m| !ids.insert(m.id.as_str())) {
                return Err(ServeError::Config(format!(
                    "route `{}`: model `{}` is listed twice",
                    route.name, twice.id
                )));
            }
            // A route's circuit breakers are keyed by model, or `model@deployment` (an
            // unnamed deployment by its place): no two may share one.
            let mut keys = std::collections::BTreeSet::new();
            for model in &route.models {
                let at = |what: String| {
                    ServeError::Config(format!("route `{}`, model `{}`: {what}", route.name, model.id))
                };
                if !model.deployments.is_empty() && model.base_url.is_some() {
                    return Err(at(
                        "give base_url on the model or on its deployments, not both".into()
                    ));
                }
                if let Some(url) = &model.base_url {
                    check_base_url(url).map_err(at)?;
                }
                check_tags(&model.tags).map_err(at)?;
                let own = crate::deployments::deployment_keys(model);
                let own = if own.is_empty() {
                    vec![model.id.clone()]
                } else {
                    own
                };
                for key in own {
                    if !keys.insert(key.clone()) {
                        return Err(at(format!(
                            "two circuit breakers of the route are `{key}` (a model's deployment is \
                             `model@name`, an unnamed one named by its place in the list)"
                        )));
                    }
                }
                for (i, deployment) in model.deployments.iter().enumerate() {
                    deployment.check().map_err(|e| {
                        at(format!(
                            "deployment {}: {e}",
                            deployment.name.clone().unwrap_or_else(|| i.to_string())
                        ))
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Every `api_key_env` must name a variable that is set: a key that is missing would
    /// send requests upstream without authorization. (A keyless model leaves it out.)
    pub fn check_api_keys(&self) -> Result<()> {
        for route in &self.routes {
            for model in &route.models {
                let deployments = model.deployments.iter().map(|d| d.api_key_env.as_ref());
                for var in std::iter::once(model.api_key_env.as_ref())
                    .chain(deployments)
                    .flatten()
                {
                    if std::env::var(var).map_or(true, |v| v.is_empty()) {
                        return Err(ServeError::Config(format!(
                            "route `{}`, model `{}`: api_key_env names `{var}`, which is not set \
                             (leave api_key_env out for a model without a key)",
                            route.name, model.id
                        )));
                    }
                }
            }
            let embedding_key = route.embedding.as_ref().and_then(|e| e.api_key_env.as_ref());
            if let Some(var) = embedding_key {
                if std::env::var(var).map_or(true, |v| v.is_empty()) {
                    return Err(ServeError::Config(format!(
                        "route `{}`, embedding: api_key_env names `{var}`, which is not set",
                        route.name
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Tags as a request can require them in `x-quiver-tags` (comma-separated visible ASCII,
/// trimmed): one that is empty, holds a comma or another character, or begins or ends in
/// a space could never be required.
pub(crate) fn check_tags(tags: &[String]) -> std::result::Result<(), String> {
    let unrequirable = |t: &&String| {
        t.trim().is_empty()
            || t.trim() != t.as_str()
            || t.chars().any(|c| c == ',' || !(c.is_ascii_graphic() || c == ' '))
    };
    match tags.iter().find(unrequirable) {
        Some(tag) => Err(format!(
            "tag `{tag}` could never be required in `x-quiver-tags` (comma-separated visible \
             ASCII, trimmed): a tag is not empty, holds no comma, and neither begins nor ends in a space"
        )),
        None => Ok(()),
    }
}

/// An upstream's base URL must be an http(s) URL with a host: anything else would fail
/// every call.
pub(crate) fn check_base_url(url: &str) -> std::result::Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => Ok(()),
        Ok(_) => Err(format!("base_url `{url}` is not an http(s) URL with a host")),
        Err(e) => Err(format!("base_url `{url}` is not a URL ({e})")),
    }
}

/// The most caller features a route takes: each model holds a square matrix of the
/// context's dimension, so a few hundred already weigh megabytes per model.
pub const MAX_CALLER_FEATURES: usize = 256;

/// One model a route can call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model id, as the upstream names it.
    pub id: String,
    /// USD per million input tokens.
    #[serde(default)]
    pub input_usd_per_million: f64,
    /// USD per million output tokens.
    #[serde(default)]
    pub output_usd_per_million: f64,
    /// Context window in tokens.
    #[serde(default)]
    pub context_window: Option<u32>,
    /// Tags (provider, region, capabilities; `family:NAME` names its family, see
    /// [`quiver_bandit::Arm::family`]).
    #[serde(default)]
    pub tags: Vec<String>,
    /// OpenAI-compatible base URL of the upstream (`/chat/completions` is appended);
    /// needed only to proxy.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Environment variable holding the upstream's API key, sent as a bearer token.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The model name sent upstream (default: `id`).
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// Its deployments, when more than one provider, region or key serves it (see
    /// `crate::deployments`); none: the model is served at its `base_url`.
    #[serde(default)]
    pub deployments: Vec<DeploymentConfig>,
    /// Whether a streamed call asks the upstream for its usage (`stream_options:
    /// {"include_usage": true}`), so that it is priced by the tokens billed rather than
    /// estimated from its text; false for an upstream that refuses the option.
    #[serde(default = "asks_stream_usage")]
    pub stream_usage: bool,
}

fn asks_stream_usage() -> bool {
    true
}

impl ModelConfig {
    /// The model as a learner's arm: its prices per token, context window and tags.
    pub fn arm(&self) -> quiver_bandit::Arm {
        let mut arm = quiver_bandit::Arm::new(&self.id).with_prices(
            self.input_usd_per_million / 1e6,
            self.output_usd_per_million / 1e6,
        );
        arm.context_window_tokens = self.context_window;
        arm.tags = self.tags.iter().cloned().collect();
        arm
    }

    /// A model with its list prices and nothing else: no context window, tags or upstream.
    pub fn priced(id: &str, input_usd_per_million: f64, output_usd_per_million: f64) -> Self {
        ModelConfig {
            id: id.into(),
            input_usd_per_million,
            output_usd_per_million,
            context_window: None,
            tags: Vec::new(),
            base_url: None,
            api_key_env: None,
            upstream_model: None,
            deployments: Vec::new(),
            stream_usage: true,
        }
    }
}

/// One route: a name, a policy and its models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Route name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Policy spec, e.g. `lints(v=0.3,floor=0.01)`; [`quiver_bandit::DEFAULT_ROUTE_POLICY`]
    /// when none is given.
    #[serde(default = "default_route_policy")]
    pub policy: String,
    /// The models.
    pub models: Vec<ModelConfig>,
    /// Quality points per USD.
    #[serde(default)]
    pub w_cost: f64,
    /// Quality points per second.
    #[serde(default)]
    pub w_latency: f64,
    /// Target mean spend per request, USD.
    #[serde(default)]
    pub budget_usd_per_request: Option<f64>,
    /// Number of caller features each request brings.
    #[serde(default)]
    pub extra_features: usize,
    /// Seed of the route's decisions.
    #[serde(default)]
    pub seed: u64,
    /// A priors file (`quiver priors fit`) the route's models start from when the route
    /// starts without a learner from the snapshot: first start, a rebuild from the log
    /// (which then teaches it on top, as it did the first time), or `--reset-route`. A
    /// restored route holds what the priors taught and does not need the file; its shadow
    /// candidates, rebuilt from the log at every start, read it when it is there.
    #[serde(default)]
    pub priors: Option<PathBuf>,
    /// A sentence embedding of the prompt as a block of the context, after the hashed
    /// features (`quiver_bandit::embedding`). None (the default): hashed features only.
    #[serde(default)]
    pub embedding: Option<EmbeddingConfig>,
    /// Spend caps per UTC day and month (see `crate::spend`). None: no cap.
    #[serde(default)]
    pub spend_cap: Option<SpendCap>,
    /// Each caller's own spend caps on the route, callers told apart by their bearer
    /// token (see `crate::spend`). None: no cap.
    #[serde(default)]
    pub caller_spend_cap: Option<SpendCap>,
    /// Candidate policies run in the shadow of the route's policy: each decides on every
    /// request without serving it, learns the route's outcomes and is estimated
    /// off-policy (`quiver_bandit::shadow`; `GET /v1/routes/{name}/candidates`).
    #[serde(default)]
    pub shadow: Vec<String>,
    /// A candidate serving a share of the route's traffic behind a safety gate
    /// (`quiver_bandit::canary`). None (the default): no canary.
    #[serde(default)]
    pub canary: Option<CanaryConfig>,
    /// Escalation to a stronger model when the chosen one's answer fails a check
    /// (`crate::cascade`). None (the default): no cascade.
    #[serde(default)]
    pub cascade: Option<CascadeConfig>,
    /// How requests naming a session stay on one model (`crate::sessions`).
    #[serde(default)]
    pub sessions: SessionConfig,
}

impl RouteConfig {
    /// Settings that could not work, or would silently do nothing: too many caller
    /// features, an embedding that could never come in time, sessions remembered for no
    /// time, the route's own policy (or one twice) among its shadow candidates or as its
    /// canary, a budget no policy of the route weighs (`random`, `fixed`).
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.extra_features > MAX_CALLER_FEATURES {
            return Err(format!(
                "extra_features {} is more than {MAX_CALLER_FEATURES}",
                self.extra_features
            ));
        }
        if self.embedding.as_ref().is_some_and(|e| e.timeout_ms == 0) {
            return Err("embedding.timeout_ms is 0: no embedding would ever come in time".into());
        }
        let sessions = &self.sessions;
        if sessions.enabled && (sessions.idle_timeout_s == 0 || sessions.max_sessions == 0) {
            return Err(
                "sessions.idle_timeout_s and sessions.max_sessions must be at least 1 (`enabled = false` turns sessions off)"
                    .into(),
            );
        }
        if let Some(budget) = self.budget_usd_per_request {
            limits::BUDGET_USD
                .check("budget_usd_per_request", budget)
                .map_err(|e| e.to_string())?;
        }
        // The learner's bounds on a price per token, per million tokens as the file says.
        let most = limits::PRICE_USD_PER_TOKEN.hi * 1e6;
        for model in &self.models {
            if model.context_window == Some(0) {
                return Err(format!(
                    "model `{}`: context_window is 0, so no prompt would fit (leave it out for no limit)",
                    model.id
                ));
            }
            for (key, price) in [
                ("input_usd_per_million", model.input_usd_per_million),
                ("output_usd_per_million", model.output_usd_per_million),
            ] {
                if !(price.is_finite() && (0.0..=most).contains(&price)) {
                    return Err(format!(
                        "model `{}`: {key} is {price}, outside [0, {most}] USD per million tokens",
                        model.id
                    ));
                }
            }
        }
        // "policy `x`: why", or "shadow policy `x`: why" for a candidate.
        let spec = |text: &str, role: &str| {
            text.parse::<quiver_bandit::PolicySpec>()
                .map_err(|e| format!("{role}{e}"))
        };
        let own = spec(&self.policy, "")?;
        let mut candidates = Vec::new();
        for text in &self.shadow {
            let candidate = spec(text, "shadow ")?;
            if candidate == own {
                return Err(format!("shadow `{text}` is the route's own policy"));
            }
            if candidates.contains(&candidate) {
                return Err(format!("shadow `{text}` is listed twice"));
            }
            candidates.push(candidate);
        }
        if let Some(canary) = &self.canary {
            let candidate = spec(&canary.policy, "canary ")?;
            if candidate == own {
                return Err(format!(
                    "canary `{}` is the route's own policy: it would be compared with itself",
                    canary.policy
                ));
            }
            candidates.push(candidate);
        }
        let paced = std::iter::once(&own)
            .chain(&candidates)
            .any(|policy| policy.kind.weighs_costs());
        if self.budget_usd_per_request.is_some() && !paced {
            return Err(format!(
                "budget_usd_per_request: policy `{}` weighs no cost, so no budget would pace it",
                self.policy
            ));
        }
        Ok(())
    }
}

/// A route's canary: a candidate policy serving a share of the traffic, promoted or
/// rolled back on its off-policy estimate (`quiver_bandit::canary`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// Its policy spec; it runs as a shadow candidate too (added to `shadow` if missing).
    pub policy: String,
    /// Its share of the traffic while in canary, in `(0, 0.5]`.
    #[serde(default = "default_canary_share")]
    pub share: f64,
    /// `auto`: the gate promotes it when its value's 95% lower bound exceeds the route's
    /// policy's; `manual` (the default): only an operator does. Either way the gate rolls
    /// it back when its upper bound falls below.
    #[serde(default)]
    pub promote: Promote,
    /// Completed decisions in a stage before the gate judges it.
    #[serde(default = "default_canary_min_decisions")]
    pub min_decisions: u64,
}

fn default_canary_share() -> f64 {
    0.05
}

fn default_canary_min_decisions() -> u64 {
    500
}

impl CanaryConfig {
    /// The gate's rule.
    pub fn rule(&self) -> CanaryRule {
        CanaryRule {
            share: self.share,
            promote: self.promote,
            min_decisions: self.min_decisions,
        }
    }
}

impl RouteConfig {
    /// A route of `models` under `policy`, every other option at its default (as a
    /// configuration file that leaves them out).
    pub fn new(name: &str, policy: &str, models: Vec<ModelConfig>) -> Self {
        RouteConfig {
            name: name.into(),
            policy: policy.into(),
            models,
            w_cost: 0.0,
            w_latency: 0.0,
            budget_usd_per_request: None,
            extra_features: 0,
            seed: 0,
            priors: None,
            embedding: None,
            spend_cap: None,
            caller_spend_cap: None,
            shadow: Vec::new(),
            canary: None,
            cascade: None,
            sessions: SessionConfig::default(),
        }
    }
}

/// Where a route's prompt embeddings come from: an OpenAI-compatible `/v1/embeddings`
/// endpoint (`url` and `model`) or the encoder bundled in a build with the `minilm`
/// feature (`bundled = "minilm-l3"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// The endpoint's URL, e.g. `https://api.openai.com/v1/embeddings`.
    #[serde(default)]
    pub url: Option<String>,
    /// The model the endpoint embeds with, sent as `model`.
    #[serde(default)]
    pub model: Option<String>,
    /// Environment variable holding the endpoint's API key, sent as a bearer token.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// `minilm-l3`: the bundled encoder, in process, instead of an endpoint.
    #[serde(default)]
    pub bundled: Option<String>,
    /// Time limit of one embedding, ms; past it, or on any failure, the hashed features
    /// decide alone and the log says so.
    #[serde(default = "default_embedding_timeout")]
    pub timeout_ms: u64,
    /// Coordinates of the projected block (1 to 256).
    #[serde(default = "default_embedding_dims")]
    pub dims: usize,
}

fn default_embedding_timeout() -> u64 {
    300
}
fn default_embedding_dims() -> usize {
    32
}

/// The bundled encoder's name, as `bundled` takes it.
pub const BUNDLED_MINILM: &str = "minilm-l3";

impl EmbeddingConfig {
    /// An OpenAI-compatible endpoint at `url` embedding with `model`, other options at
    /// their defaults.
    pub fn endpoint(url: &str, model: &str) -> Self {
        EmbeddingConfig {
            url: Some(url.into()),
            model: Some(model.into()),
            api_key_env: None,
            bundled: None,
            timeout_ms: default_embedding_timeout(),
            dims: default_embedding_dims(),
        }
    }

    /// What embeds, as the context definition records it: `openai(model=M)` for an
    /// endpoint (any host serving the model embeds alike), `minilm-l3` for the bundled
    /// encoder. Checks that exactly one source is given, in full.
    pub fn source(&self) -> Result<String> {
        let bad = |why: &str| Err(ServeError::Config(format!("embedding: {why}")));
        match (&self.url, &self.bundled) {
            (Some(url), None) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return bad(&format!("url `{url}` is not an http(s) URL"));
                }
                match &self.model {
                    Some(model) if !model.trim().is_empty() => Ok(format!("openai(model={model})")),
                    _ => bad("an endpoint needs `model`"),
                }
            }
            (None, Some(name)) if name == BUNDLED_MINILM => {
                if self.model.is_some() || self.api_key_env.is_some() {
                    return bad("`model` and `api_key_env` are for an endpoint, not `bundled`");
                }
                Ok(BUNDLED_MINILM.into())
            }
            (None, Some(name)) => bad(&format!(
                "unknown bundled encoder `{name}` (the one there is: `{BUNDLED_MINILM}`)"
            )),
            _ => bad("give either `url` (with `model`) or `bundled`, not both"),
        }
    }

    /// The block the embeddings fill (checks the source and `dims`).
    pub fn block(&self) -> Result<quiver_bandit::EmbeddingBlock> {
        Ok(quiver_bandit::EmbeddingBlock::new(&self.source()?, self.dims)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(var: Option<&str>) -> ServeConfig {
        let model = ModelConfig {
            api_key_env: var.map(str::to_string),
            ..ModelConfig::priced("m", 1.0, 2.0)
        };
        ServeConfig::new(
            PathBuf::from("log"),
            vec![RouteConfig::new("r", "linucb", vec![model])],
        )
    }

    #[test]
    fn the_environment_overrides_listen_log_dir_and_tokens() {
        let mut config = with_key(None);
        config.auth.admin_tokens = vec!["from-file".into()];
        let env = [
            ("QUIVER_LISTEN", "0.0.0.0:9000"),
            ("QUIVER_LOG_DIR", "/var/lib/quiver"),
            ("QUIVER_ADMIN_TOKENS", "a1, a2,"),
            ("QUIVER_ROUTE_TOKENS", "r1"),
        ];
        let read = |name: &str| env.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string());
        config.apply_env(read).unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000");
        assert_eq!(config.log_dir, PathBuf::from("/var/lib/quiver"));
        assert_eq!(config.auth.admin_tokens, ["a1", "a2"]);
        assert_eq!(config.auth.route_tokens, ["r1"]);
        assert!(config.auth.feedback_tokens.is_empty(), "unset: the file's (none)");
    }

    #[test]
    fn empty_token_variables_leave_the_files_tokens() {
        let mut config = with_key(None);
        config.auth.admin_tokens = vec!["from-file".into()];
        for empty in ["", " ", ",", " , "] {
            let read = |name: &str| (name == "QUIVER_ADMIN_TOKENS").then(|| empty.to_string());
            config.apply_env(read).unwrap();
            assert_eq!(config.auth.admin_tokens, ["from-file"], "{empty:?}");
        }
        config
            .apply_env(|name| (name == "QUIVER_LISTEN").then(String::new))
            .unwrap();
        assert_eq!(config.listen, default_listen());
    }

    /// A variable that cannot serve is refused, naming it; one with spaces around it is
    /// read without them.
    #[test]
    fn a_variable_that_cannot_serve_is_named() {
        let file = std::env::temp_dir().join(format!("quiver-env-file-{}", std::process::id()));
        std::fs::write(&file, "").unwrap();
        let file = file.display().to_string();
        for (name, value) in [
            ("QUIVER_LISTEN", "garbage"),
            ("QUIVER_LISTEN", "[::]"),
            ("QUIVER_LOG_DIR", &file),
        ] {
            let mut config = with_key(None);
            let err = config
                .apply_env(|n| (n == name).then(|| value.to_string()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(name) && err.contains(value), "{err}");
        }
        let mut config = with_key(None);
        config
            .apply_env(|n| (n == "QUIVER_LISTEN").then(|| " [::]:9000 ".into()))
            .unwrap();
        assert_eq!(config.listen, "[::]:9000");
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn a_token_no_client_could_send_is_refused() {
        for token in ["", " ", " padded"] {
            let mut config = with_key(None);
            config.auth.admin_tokens = vec!["admin".into()];
            config.auth.route_tokens = vec!["fine".into(), token.into()];
            let err = config.check_auth().unwrap_err().to_string();
            assert!(err.contains("route_tokens"), "{err}");
        }
    }

    #[test]
    fn a_limit_of_zero_is_named() {
        let mut config = with_key(None);
        assert!(config.check_limits().is_ok());
        config.request_timeout_ms = 0;
        let err = config.check_limits().unwrap_err().to_string();
        assert!(err.contains("`request_timeout_ms` is 0"), "{err}");
        config.request_timeout_ms = 1;
        config.max_body_bytes = 0;
        let err = config.check_limits().unwrap_err().to_string();
        assert!(err.contains("`max_body_bytes` is 0"), "{err}");
    }

    #[test]
    fn cors_origins_are_checked() {
        let mut config = with_key(None);
        config.cors_allow_origins = vec!["https://app.example".into(), "http://localhost:3000".into()];
        assert!(config.check_cors().is_ok());
        for bad in [
            "https://app.example/",
            "app.example",
            "https://app.example/path",
            "https://",
        ] {
            config.cors_allow_origins = vec![bad.into()];
            let err = config.check_cors().unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}` is not an origin")), "{err}");
        }
        config.cors_allow_origins = vec!["*".into()];
        assert!(config
            .check_cors()
            .unwrap_err()
            .to_string()
            .contains("needs route or admin tokens"));
        config.auth.route_tokens = vec!["t".into()];
        assert!(config.check_cors().is_ok());
    }

    /// Settings that could not work, or would silently do nothing, stop the start, named.
    #[test]
    fn settings_that_do_nothing_are_refused() {
        let route = |extra: serde_json::Value| -> RouteConfig {
            let mut route = serde_json::json!({
                "name": "r", "policy": "lints(v=0.05)",
                "models": [{"id": "m", "base_url": "http://127.0.0.1:9/v1"}]
            });
            route
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(route).unwrap()
        };
        assert_eq!(route(serde_json::json!({})).check(), Ok(()));
        for (extra, refusal) in [
            (
                serde_json::json!({"extra_features": 257}),
                "extra_features 257 is more than 256",
            ),
            (
                serde_json::json!({"embedding": {"url": "http://127.0.0.1:9/v1/embeddings", "model": "e", "timeout_ms": 0}}),
                "embedding.timeout_ms is 0",
            ),
            (
                serde_json::json!({"sessions": {"max_sessions": 0}}),
                "sessions.idle_timeout_s and sessions.max_sessions",
            ),
            (
                serde_json::json!({"sessions": {"idle_timeout_s": 0}}),
                "sessions.idle_timeout_s and sessions.max_sessions",
            ),
            (
                serde_json::json!({"shadow": ["lints"]}),
                "shadow `lints` is the route's own policy",
            ),
            (
                serde_json::json!({"shadow": ["eps(0.1)", "eps(epsilon=0.1)"]}),
                "shadow `eps(epsilon=0.1)` is listed twice",
            ),
            (
                serde_json::json!({"canary": {"policy": "lints(v=0.05)"}}),
                "compared with itself",
            ),
            // Named by the keys the file has, not by what they become inside.
            (
                serde_json::json!({"budget_usd_per_request": -1.0}),
                "budget_usd_per_request is -1.0, outside [1e-9, 1000] USD per request",
            ),
            (
                serde_json::json!({"budget_usd_per_request": 2000.0}),
                "budget_usd_per_request is 2000.0, outside",
            ),
            (
                serde_json::json!({"models": [{"id": "m", "input_usd_per_million": -0.4}]}),
                "model `m`: input_usd_per_million is -0.4, outside [0, 10000] USD per million",
            ),
            (
                serde_json::json!({"models": [{"id": "m", "context_window": 0}]}),
                "model `m`: context_window is 0",
            ),
            (
                serde_json::json!({"models": [{"id": "m", "output_usd_per_million": 20000.0}]}),
                "model `m`: output_usd_per_million is 20000, outside",
            ),
            (
                serde_json::json!({"shadow": ["linucb(alpha=-1)"]}),
                "shadow policy `linucb(alpha=-1)`",
            ),
            (
                serde_json::json!({"canary": {"policy": "eps(2)"}}),
                "canary policy `eps(2)`",
            ),
            (
                serde_json::json!({"policy": "fixed(m)", "budget_usd_per_request": 0.001}),
                "budget_usd_per_request: policy `fixed(m)` weighs no cost, so no budget would pace it",
            ),
            (
                serde_json::json!({"policy": "random", "shadow": ["fixed(m)"], "budget_usd_per_request": 0.001}),
                "policy `random` weighs no cost",
            ),
        ] {
            let error = route(extra.clone()).check().unwrap_err();
            assert!(error.contains(refusal), "{extra}: {error}");
        }
        assert_eq!(
            route(serde_json::json!({"sessions": {"enabled": false, "max_sessions": 0}})).check(),
            Ok(())
        );
        // A learning candidate beside a fixed route's policy, in the shadow or as its canary,
        // is paced by the budget.
        let paced_shadow =
            serde_json::json!({"policy": "fixed(m)", "shadow": ["lints"], "budget_usd_per_request": 0.001});
        assert_eq!(route(paced_shadow).check(), Ok(()));
        let paced_canary = serde_json::json!({"policy": "fixed(m)", "canary": {"policy": "lints"}, "budget_usd_per_request": 0.001});
        assert_eq!(route(paced_canary).check(), Ok(()));

        let with_models = |models: serde_json::Value| {
            let mut config = with_key(None);
            config.routes[0].models = serde_json::from_value(models).unwrap();
            config.check_deployments()
        };
        for (url, refusal) in [
            ("htp:/nonsense", "not an http(s) URL"),
            ("localhost:8080", "not an http(s) URL"),
            ("", "not a URL"),
        ] {
            let error = with_models(serde_json::json!([{"id": "m", "base_url": url}]))
                .unwrap_err()
                .to_string();
            assert!(error.contains(refusal), "{url}: {error}");
        }
        for tags in [
            serde_json::json!({"tags": [""]}),
            serde_json::json!({"tags": ["region:eu,us"]}),
            serde_json::json!({"tags": ["region:zürich"]}),
            serde_json::json!({"deployments": [{"base_url": "http://127.0.0.1:9/v1", "tags": [" region:eu"]}]}),
        ] {
            let mut model = serde_json::json!({"id": "m"});
            model
                .as_object_mut()
                .unwrap()
                .extend(tags.as_object().unwrap().clone());
            let error = with_models(serde_json::json!([model])).unwrap_err().to_string();
            assert!(
                error.contains("could never be required in `x-quiver-tags`"),
                "{tags}: {error}"
            );
        }
        let spaced = serde_json::json!([{"id": "m", "tags": ["family:gpt 4"]}]);
        assert!(with_models(spaced).is_ok());
        let listed_twice = serde_json::json!([{"id": "m"}, {"id": "n"}, {"id": "m"}]);
        let error = with_models(listed_twice).unwrap_err().to_string();
        assert_eq!(
            error,
            "invalid configuration: route `r`: model `m` is listed twice"
        );
        let twins = serde_json::json!([{"id": "m", "deployments": [
            {"name": "a", "base_url": "http://127.0.0.1:9/v1"},
            {"name": "a", "base_url": "http://127.0.0.1:10/v1"}
        ]}]);
        let error = with_models(twins).unwrap_err().to_string();
        assert!(
            error.contains("route `r`, model `m`: two circuit breakers of the route are `m@a`"),
            "{error}"
        );
        let by_place = serde_json::json!([{"id": "m", "deployments": [
            {"base_url": "http://127.0.0.1:9/v1"},
            {"name": "0", "base_url": "http://127.0.0.1:10/v1"}
        ]}]);
        assert!(with_models(by_place)
            .unwrap_err()
            .to_string()
            .contains("are `m@0`"));
        // Across models too: model `m@0` and the first deployment of model `m`.
        let across = serde_json::json!([
            {"id": "m", "deployments": [{"base_url": "http://127.0.0.1:9/v1"}]},
            {"id": "m@0", "base_url": "http://127.0.0.1:10/v1"}
        ]);
        let error = with_models(across).unwrap_err().to_string();
        assert!(
            error.contains("model `m@0`: two circuit breakers of the route are `m@0`"),
            "{error}"
        );
        let bad_deployment = serde_json::json!([{"id": "m", "deployments": [{"base_url": "ftp://x/v1"}]}]);
        assert!(with_models(bad_deployment)
            .unwrap_err()
            .to_string()
            .contains("not an http(s) URL"));

        let cache = |ttl_s: u64, max_bytes: usize| crate::cache::CacheConfig {
            enabled: true,
            ttl_s,
            max_bytes,
            semantic_similarity: None,
        };
        assert!(cache(300, 1).check(false).is_ok());
        assert!(cache(0, 1)
            .check(false)
            .unwrap_err()
            .contains("cache.ttl_s and cache.max_bytes"));
        assert!(cache(300, 0).check(false).is_err());
        let semantic = crate::cache::CacheConfig {
            semantic_similarity: Some(0.9),
            ..cache(300, 1)
        };
        assert!(semantic.check(true).is_ok());
        assert!(semantic.check(false).unwrap_err().contains("no route has one"));
        let cap = |daily_usd, monthly_usd| crate::spend::SpendCap {
            daily_usd,
            monthly_usd,
            downgrade_at: 0.9,
        };
        assert!(cap(None, None).check().unwrap_err().contains("caps nothing"));
        assert!(cap(Some(1.0), Some(30.0)).check().is_ok());
        let never = cap(Some(50.0), Some(1.0)).check().unwrap_err();
        assert!(
            never.contains("daily_usd 50 is more than monthly_usd 1"),
            "{never}"
        );
    }

    #[test]
    fn locked_routes_need_locked_admin_endpoints() {
        let mut config = with_key(None);
        assert!(config.check_auth().is_ok(), "all open");
        config.auth.feedback_tokens = vec!["f".into()];
        let err = config.check_auth().unwrap_err().to_string();
        assert!(err.contains("set admin_tokens"), "{err}");
        config.auth.admin_tokens = vec!["a".into()];
        assert!(config.check_auth().is_ok());
        config.auth.feedback_tokens.clear();
        assert!(config.check_auth().is_ok(), "admin tokens alone lock everything");
    }

    #[test]
    fn an_api_key_variable_must_be_set() {
        assert!(with_key(None).check_api_keys().is_ok());
        assert!(with_key(Some("PATH")).check_api_keys().is_ok());
        let err = with_key(Some("QUIVER_SURELY_UNSET_KEY_6F2A"))
            .check_api_keys()
            .unwrap_err();
        assert!(
            err.to_string().contains(
                "route `r`, model `m`: api_key_env names `QUIVER_SURELY_UNSET_KEY_6F2A`, which is not set"
            ),
            "{err}"
        );
    }

    #[test]
    fn an_embedding_source_is_one_endpoint_or_the_bundled_encoder() {
        let parse = |text: &str| -> std::result::Result<EmbeddingConfig, String> {
            toml::from_str(text).map_err(|e| e.to_string())
        };
        let endpoint =
            parse("url = \"https://api.openai.com/v1/embeddings\"\nmodel = \"text-embedding-3-small\"")
                .unwrap();
        assert_eq!(endpoint.source().unwrap(), "openai(model=text-embedding-3-small)");
        assert_eq!((endpoint.timeout_ms, endpoint.dims), (300, 32));
        let bundled = parse("bundled = \"minilm-l3\"\ndims = 16").unwrap();
        assert_eq!(bundled.block().unwrap().dims(), 16);
        assert!(parse("url = \"http://x\"\ntimeout = 5")
            .unwrap_err()
            .contains("unknown field `timeout`"));
        for (text, why) in [
            ("url = \"http://x/v1/embeddings\"", "needs `model`"),
            ("url = \"ftp://x\"\nmodel = \"m\"", "not an http(s) URL"),
            ("bundled = \"bert\"", "unknown bundled encoder `bert`"),
            ("bundled = \"minilm-l3\"\nmodel = \"m\"", "for an endpoint"),
            (
                "url = \"http://x\"\nmodel = \"m\"\nbundled = \"minilm-l3\"",
                "not both",
            ),
            ("timeout_ms = 5", "not both"),
        ] {
            let err = parse(text).unwrap().source().unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
        let wide = parse("bundled = \"minilm-l3\"\ndims = 512").unwrap();
        assert!(wide.block().unwrap_err().to_string().contains("embedding.dims"));
    }

    /// A canary names its policy; the rest has defaults, and a misspelled key is named.
    #[test]
    fn a_canary_takes_its_defaults_and_refuses_unknown_keys() {
        let parse = |text: &str| -> std::result::Result<CanaryConfig, String> {
            toml::from_str(text).map_err(|e| e.to_string())
        };
        let canary = parse("policy = \"linucb(alpha=0.1)\"").unwrap();
        let rule = canary.rule();
        assert_eq!(
            (rule.share, rule.promote, rule.min_decisions),
            (0.05, Promote::Manual, 500)
        );
        let auto = parse("policy = \"random\"\npromote = \"auto\"\nshare = 0.2").unwrap();
        assert_eq!((auto.promote, auto.share), (Promote::Auto, 0.2));
        assert!(parse("policy = \"random\"\nshares = 0.2")
            .unwrap_err()
            .contains("unknown field `shares`"));
        assert!(parse("policy = \"random\"\npromote = \"always\"")
            .unwrap_err()
            .contains("always"));
        assert!(parse("share = 0.2")
            .unwrap_err()
            .contains("missing field `policy`"));
    }
}
