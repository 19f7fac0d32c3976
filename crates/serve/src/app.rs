//! The HTTP API: `build_app(state)` is the axum router that `quiver serve` and the tests
//! share. Handlers parse, call the [`Router`], and map errors; nothing else.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use quiver_bandit::{Applied, Outcome};
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;

use crate::api_error::ApiError;
use crate::config::ServeConfig;
use crate::metrics::{self, HttpLabels, LearnerStats, Metrics};
use crate::request_limits::{self, RequestLimits};
use crate::router::{Pending, RouteRequest, Router};

/// What every handler shares.
pub struct AppState {
    /// The router; changes run in place (they are brief), reads of its state on blocking threads.
    pub router: Mutex<Router>,
    /// The configuration.
    pub config: ServeConfig,
    /// The upstream HTTP client.
    pub http: reqwest::Client,
    /// What the server measures for `/metrics`.
    pub metrics: Metrics,
}

impl AppState {
    /// Waits until the log holds a change durably, timing the wait.
    pub async fn durable<T>(&self, pending: Pending<T>) -> Result<T, ApiError> {
        let started = Instant::now();
        let value = pending.durable().await?;
        self.metrics
            .log_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(value)
    }

    /// Locks the router; a poisoned lock (a panic while holding it) is an internal error.
    pub fn router(&self) -> Result<MutexGuard<'_, Router>, ApiError> {
        self.router
            .lock()
            .map_err(|_| ApiError::Internal("router lock poisoned".into()))
    }
}

/// Which token set may call an endpoint.
#[derive(Clone, Copy)]
pub enum Access {
    /// Routing and proxying.
    Route,
    /// Outcomes and feedback.
    Feedback,
    /// Everything, including reading state.
    Admin,
}

/// The middleware in front of each group of endpoints: the request goes on only with a
/// token its `access` accepts ([`authorize`]), else it is answered 401.
async fn require(
    State((state, access)): State<(Arc<AppState>, Access)>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorize(&state, request.headers(), access)?;
    Ok(next.run(request).await)
}

/// Checks the bearer token of a request against the tokens `access` accepts (admin
/// tokens are accepted everywhere; an empty token set leaves the endpoint open). Every
/// token is compared, each in constant time, so the time taken tells nothing of how
/// much of a token was right.
fn authorize(state: &AppState, headers: &HeaderMap, access: Access) -> Result<(), ApiError> {
    let auth = &state.config.auth;
    let own: &[String] = match access {
        Access::Route => &auth.route_tokens,
        Access::Feedback => &auth.feedback_tokens,
        Access::Admin => &[],
    };
    if own.is_empty() && auth.admin_tokens.is_empty() {
        return Ok(());
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let matched = own
        .iter()
        .chain(&auth.admin_tokens)
        .fold(subtle::Choice::from(0), |any, token| {
            any | token.as_bytes().ct_eq(given.as_bytes())
        });
    if bool::from(matched) && !given.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Parses a JSON body into the app's error shape: malformed JSON is 400, well-formed JSON
/// of the wrong shape or types 422, a missing JSON content type 415.
pub fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    parsed.map(|Json(v)| v).map_err(|e| match e {
        JsonRejection::JsonDataError(_) => ApiError::Invalid(e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(e.body_text()),
        _ => ApiError::BadRequest(e.body_text()),
    })
}

/// Runs a router operation on a blocking thread, under the router's lock.
pub async fn with_router<T: Send + 'static>(
    state: &Arc<AppState>,
    op: impl FnOnce(&mut Router) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || op(&mut *state.router()?))
        .await
        .map_err(|e| ApiError::Internal(format!("router task failed: {e}")))?
}

/// Makes a router change and waits until the log holds it durably. The change itself
/// (featurize, decide, stage) is brief and runs in place; the wait for the fsync sleeps as
/// a task, and concurrent changes share one fsync.
pub async fn change_router<T>(
    state: &Arc<AppState>,
    op: impl FnOnce(&mut Router) -> Result<Pending<T>, ApiError>,
) -> Result<T, ApiError> {
    let pending = op(&mut *state.router()?)?;
    state.durable(pending).await
}

/// `POST /v1/route` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    /// Route name.
    pub route: String,
    /// The rest of the request.
    #[serde(flatten)]
    pub request: RouteRequest,
}

async fn route(
    State(state): State<Arc<AppState>>,
    parsed: Result<Json<RouteBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = body(parsed)?;
    let routed = change_router(&state, move |r| Ok(r.route(&body.route, &body.request)?)).await?;
    state.metrics.routed.inc();
    let d = &routed.decision;
    Ok(Json(json!({
        "decision_id": routed.decision_id,
        "model": d.arm,
        "propensity": d.propensity,
        "propensity_kind": d.propensity_kind,
        "fallback": d.fallback,
        "explanation": d.arms,
        "excluded": d.excluded,
    }))
    .into_response())
}

/// `POST /v1/feedback` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    /// The decision.
    pub decision_id: String,
    /// Quality in [0, 1].
    pub quality: f64,
}

#[derive(Serialize)]
struct AppliedBody {
    decision_id: String,
    status: Applied,
}

async fn feedback(
    State(state): State<Arc<AppState>>,
    parsed: Result<Json<FeedbackBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = body(parsed)?;
    let id = body.decision_id.clone();
    let status = change_router(&state, move |r| Ok(r.feedback(&body.decision_id, body.quality)?)).await?;
    state.metrics.feedback.inc();
    Ok(Json(json!(AppliedBody {
        decision_id: id,
        status
    })))
}

/// `POST /v1/outcome` body: what the call of a routed request cost, for applications
/// that call providers themselves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeBody {
    /// The decision.
    pub decision_id: String,
    /// Latency, ms.
    pub latency_ms: f64,
    /// Cost, USD.
    #[serde(default)]
    pub cost_usd: f64,
    /// Prompt tokens.
    #[serde(default)]
    pub input_tokens: u32,
    /// Completion tokens.
    #[serde(default)]
    pub output_tokens: u32,
    /// The call failed.
    #[serde(default)]
    pub error: bool,
    /// Quality, when already known.
    #[serde(default)]
    pub quality: Option<f64>,
}

async fn outcome(
    State(state): State<Arc<AppState>>,
    parsed: Result<Json<OutcomeBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b = body(parsed)?;
    let id = b.decision_id.clone();
    let outcome = Outcome {
        latency_ms: b.latency_ms,
        input_tokens: b.input_tokens,
        output_tokens: b.output_tokens,
        cost_usd: b.cost_usd,
        error: b.error,
        quality: b.quality,
    };
    let status = change_router(&state, move |r| Ok(r.record_outcome(&b.decision_id, &outcome)?)).await?;
    Ok(Json(json!(AppliedBody {
        decision_id: id,
        status
    })))
}

async fn route_state(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    with_router(&state, move |router| route_state_json(router, &name))
        .await
        .map(Json)
}

fn route_state_json(router: &mut Router, name: &str) -> Result<serde_json::Value, ApiError> {
    let learner = router.learner(name)?;
    let arms: Vec<serde_json::Value> = learner
        .arms()
        .iter()
        .enumerate()
        .map(|(i, arm)| {
            let usage = learner.usage(i);
            let (latency, latency_se) = usage.latency_estimate_ms();
            json!({
                "arm": arm.id,
                "requests": usage.requests,
                "errors": usage.errors,
                "spend_usd": usage.cost_usd,
                "mean_cost_usd": if usage.requests > 0 { usage.cost_usd / usage.requests as f64 } else { 0.0 },
                "mean_latency_ms": latency,
                "latency_std_error_ms": latency_se,
            })
        })
        .collect();
    Ok(json!({
        "route": name,
        "policy": learner.config().policy.to_string(),
        "decisions": learner.next_decision_id(),
        "w_cost": learner.config().objective.w_cost,
        "budget_lambda": learner.pacer().map(|p| p.lambda()),
        "arms": arms,
    }))
}

async fn route_snapshot(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<quiver_bandit::Snapshot>, ApiError> {
    with_router(&state, move |router| Ok(router.learner(&name)?.snapshot()))
        .await
        .map(Json)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let stats = with_router(&state, |router| Ok(LearnerStats::read(router)?)).await?;
    let text = state.metrics.render(stats);
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

/// The span of a request in the access log: method, path and request id.
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = id
    )
}

/// Times every request into `quiver_http_request_seconds`, by endpoint and status class.
async fn track_request(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", MatchedPath::as_str)
        .to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = HttpLabels {
        endpoint,
        status: format!("{}xx", response.status().as_u16() / 100),
    };
    state
        .metrics
        .http_request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn healthz() -> &'static str {
    "ok"
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

/// The axum app over `state`: every endpoint behind the request limits, every error in
/// OpenAI's JSON shape (unknown paths and methods included).
pub fn build_app(state: Arc<AppState>) -> axum::Router {
    let limits = RequestLimits::from(&state.config);
    let only = |access| middleware::from_fn_with_state((Arc::clone(&state), access), require);
    let routing = axum::Router::new()
        .route("/v1/route", post(route))
        .route_layer(only(Access::Route));
    let reporting = axum::Router::new()
        .route("/v1/feedback", post(feedback))
        .route("/v1/outcome", post(outcome))
        .route_layer(only(Access::Feedback));
    let reading = axum::Router::new()
        .route("/v1/routes/{name}", get(route_state))
        .route("/v1/routes/{name}/snapshot", get(route_snapshot))
        .route("/metrics", get(metrics))
        .route_layer(only(Access::Admin));
    let answered_at_once = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .merge(routing)
        .merge(reporting)
        .merge(reading)
        .route_layer(middleware::from_fn_with_state(limits, request_limits::deadline));
    // The proxy keeps its own deadline, so that it can fall back and record, and so that
    // a stream is bounded by its silences rather than its length.
    let proxy = axum::Router::new()
        .route("/v1/chat/completions", post(crate::proxy::chat_completions))
        .route_layer(only(Access::Route));
    answered_at_once
        .merge(proxy)
        .fallback(request_limits::unknown_path)
        .method_not_allowed_fallback(request_limits::wrong_method)
        .layer(middleware::from_fn_with_state(
            limits,
            request_limits::read_request,
        ))
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(Arc::clone(&state), track_request))
        // The access log, one line per request at its answer's head, in the span of its
        // request id (the client's `x-request-id`, else a new UUID, echoed on the answer).
        // Layers added later run first: the id is set, then logged, then echoed.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(
                    DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(LatencyUnit::Micros),
                ),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}
