//! What the server tells about itself: a route's state and snapshot, `/metrics`, health
//! and the API document.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use quiver_bandit::canary::CanaryReport;
use quiver_bandit::shadow::ShadowReport;

use crate::api_error::{ApiError, ErrorResponses};
use crate::health::Circuit;
use crate::metrics::{self, LearnerStats};
use crate::router::{CanaryAction, RecentDecision, Router};
use crate::state::{change_router, with_router, ApiJson, ApiPath, AppState};

/// A route's state: its learner's decisions and each model's totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteState {
    /// The route.
    pub route: String,
    /// Its policy spec.
    pub policy: String,
    /// Decisions made, all time.
    pub decisions: u64,
    /// The route's cost weight, quality points per USD.
    pub w_cost: f64,
    /// The target mean spend per request, USD, on a route with a budget.
    pub budget_usd_per_request: Option<f64>,
    /// The budget pacer's multiplier, on a route with a budget.
    pub budget_lambda: Option<f64>,
    /// Spend this UTC day, USD.
    pub spend_today_usd: f64,
    /// Spend this UTC month, USD.
    pub spend_month_usd: f64,
    /// The daily spend cap, if any.
    pub daily_cap_usd: Option<f64>,
    /// The monthly spend cap, if any.
    pub monthly_cap_usd: Option<f64>,
    /// This UTC month's calls on the route's dearest model at list prices, minus what they
    /// cost: what routing saved.
    pub savings_month_usd: f64,
    /// Each caller's daily spend cap, if any.
    pub caller_daily_cap_usd: Option<f64>,
    /// Each caller's monthly spend cap, if any.
    pub caller_monthly_cap_usd: Option<f64>,
    /// What each caller (a digest of its token) spent, when routing takes tokens.
    pub callers: Vec<CallerSpend>,
    /// Each model's totals (in a cluster, the cluster's: what the learner holds).
    pub arms: Vec<ArmState>,
    /// On a replica of a cluster, the route's figures across it (the figures above,
    /// but the models', are this replica's own).
    pub cluster: Option<ClusterState>,
}

/// A route's figures across its cluster, as this replica knows them (see `crate::cluster`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterState {
    /// This replica.
    pub replica: String,
    /// The others whose learning and spend it folded in.
    pub other_replicas: Vec<String>,
    /// Decisions, all time.
    pub decisions: u64,
    /// Spend this UTC day, USD: what the route's daily cap holds to.
    pub spend_today_usd: f64,
    /// Spend this UTC month, USD: what the route's monthly cap holds to.
    pub spend_month_usd: f64,
    /// This UTC month's calls at the dearest model's list prices, minus what they cost.
    pub savings_month_usd: f64,
}

/// One caller's spend on a route.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallerSpend {
    /// The first 16 hex digits of the SHA-256 of the caller's bearer token.
    pub caller: String,
    /// Spend this UTC day, USD.
    pub spend_today_usd: f64,
    /// Spend this UTC month, USD.
    pub spend_month_usd: f64,
}

/// One model's totals on a route.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArmState {
    /// The model.
    pub arm: String,
    /// Calls with an outcome.
    pub requests: u64,
    /// Failed calls.
    pub errors: u64,
    /// Qualities learned (feedback, and outcomes that carried one).
    pub qualities: u64,
    /// Their mean; null before the first.
    pub mean_quality: Option<f64>,
    /// Spend, USD.
    pub spend_usd: f64,
    /// Spend per call, USD (0 before any call).
    pub mean_cost_usd: f64,
    /// Expected latency, ms.
    pub mean_latency_ms: f64,
    /// Its standard error, ms.
    pub latency_std_error_ms: f64,
    /// Its circuit breaker (see the proxy).
    pub circuit: Circuit,
    /// Its deployments, when it lists several (see `crate::deployments`).
    pub deployments: Vec<DeploymentState>,
}

/// One deployment of a model, now.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentState {
    /// `model@name`, as the breakers and errors name it.
    pub key: String,
    /// Its circuit breaker.
    pub circuit: Circuit,
    /// Calls awaiting its first byte.
    pub in_flight: u32,
    /// Calls it started in the last minute (against its `rpm`).
    pub calls_last_minute: u32,
    /// Their prompt tokens (against its `tpm`).
    pub tokens_last_minute: u64,
}

/// Per-model counts, spend and latency of a route.
#[utoipa::path(
    get,
    path = "/v1/routes/{name}",
    operation_id = "route_state",
    params(("name" = String, Path, description = "The route")),
    responses((status = 200, description = "The route's state", body = RouteState), ErrorResponses)
)]
pub(crate) async fn route_state(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<RouteState>, ApiError> {
    let mut route = with_router(&state, move |router| route_state_of(router, &name)).await?;
    let now = Instant::now();
    let models = &state.router.route_config(&route.route)?.models;
    for arm in &mut route.arms {
        arm.circuit = state.health.circuit(&route.route, &arm.arm, now);
        let Some(model) = models.iter().find(|m| m.id == arm.arm) else {
            continue;
        };
        arm.deployments = state
            .deployments
            .usage(&route.route, model, now)
            .into_iter()
            .map(
                |(key, in_flight, calls_last_minute, tokens_last_minute)| DeploymentState {
                    circuit: state.health.circuit(&route.route, &key, now),
                    key,
                    in_flight,
                    calls_last_minute,
                    tokens_last_minute,
                },
            )
            .collect();
    }
    Ok(Json(route))
}

fn route_state_of(router: &Router, name: &str) -> Result<RouteState, ApiError> {
    // Each read takes the route's lock: the spend before the learner, which holds it.
    let (spend_today_usd, spend_month_usd) = router.spend(name)?;
    let savings_month_usd = router.savings(name)?;
    let callers = router
        .caller_spend(name)?
        .into_iter()
        .map(|(caller, spend_today_usd, spend_month_usd)| CallerSpend {
            caller,
            spend_today_usd,
            spend_month_usd,
        })
        .collect();
    let cluster = router.cluster_figures(name)?.map(|c| ClusterState {
        replica: c.replica,
        other_replicas: c.other_replicas,
        decisions: c.decisions,
        spend_today_usd: c.spend.0,
        spend_month_usd: c.spend.1,
        savings_month_usd: c.savings,
    });
    let config = router.route_config(name)?;
    let (cap, caller_cap) = (config.spend_cap, config.caller_spend_cap);
    let learner = router.learner(name)?;
    let arms = learner
        .arms()
        .iter()
        .enumerate()
        .map(|(i, arm)| {
            let usage = learner.usage(i);
            let (latency, latency_se) = usage.latency_estimate_ms();
            ArmState {
                arm: arm.id.clone(),
                requests: usage.requests,
                errors: usage.errors,
                qualities: usage.qualities,
                mean_quality: usage.mean_quality(),
                spend_usd: usage.cost_usd,
                mean_cost_usd: if usage.requests > 0 {
                    usage.cost_usd / usage.requests as f64
                } else {
                    0.0
                },
                mean_latency_ms: latency,
                latency_std_error_ms: latency_se,
                circuit: Circuit::Closed,
                deployments: Vec::new(),
            }
        })
        .collect();
    Ok(RouteState {
        spend_today_usd,
        spend_month_usd,
        daily_cap_usd: cap.and_then(|c| c.daily_usd),
        monthly_cap_usd: cap.and_then(|c| c.monthly_usd),
        savings_month_usd,
        caller_daily_cap_usd: caller_cap.and_then(|c| c.daily_usd),
        caller_monthly_cap_usd: caller_cap.and_then(|c| c.monthly_usd),
        callers,
        route: name.to_string(),
        policy: learner.config().policy.to_string(),
        decisions: learner.next_decision_id(),
        w_cost: learner.config().objective.w_cost,
        budget_usd_per_request: learner.pacer().map(|p| p.target_usd()),
        budget_lambda: learner.pacer().map(|p| p.lambda()),
        arms,
        cluster,
    })
}

/// A route's shadow candidates beside its policy (see `quiver_bandit::shadow`).
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteCandidates {
    /// The route.
    pub route: String,
    /// Its policy spec: the incumbent's, which serves the decisions a canary does not.
    pub policy: String,
    /// The estimates.
    #[serde(flatten)]
    pub estimates: ShadowReport,
}

/// The route's shadow candidates, estimated off-policy on its log (SNIPS and DR with 95%
/// intervals, effective sample sizes) beside the incumbent, each model as a fixed policy
/// would do, and their hull.
#[utoipa::path(
    get,
    path = "/v1/routes/{name}/candidates",
    operation_id = "route_candidates",
    params(("name" = String, Path, description = "The route")),
    responses((status = 200, description = "The candidates' estimates", body = RouteCandidates), ErrorResponses)
)]
pub(crate) async fn route_candidates(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<RouteCandidates>, ApiError> {
    with_router(&state, move |router| {
        let Some(estimates) = router.candidates(&name)? else {
            return Err(ApiError::NotFound(format!(
                "route `{name}` has no shadow candidates: list policy specs in its `shadow`"
            )));
        };
        Ok(RouteCandidates {
            policy: router.learner(&name)?.config().policy.to_string(),
            route: name,
            estimates,
        })
    })
    .await
    .map(Json)
}

/// `POST /v1/routes/{name}/canary` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryBody {
    /// What to do.
    pub action: CanaryAction,
}

/// Promote, roll back or restart a route's canary, or block or unblock its gate, now.
/// The change is an event in the log (a restart keeps it); an action that changes nothing
/// (promoting a promoted canary) is not logged.
#[utoipa::path(
    post,
    path = "/v1/routes/{name}/canary",
    operation_id = "route_canary",
    params(("name" = String, Path, description = "The route")),
    request_body = CanaryBody,
    responses((status = 200, description = "The canary after the action", body = CanaryReport), ErrorResponses)
)]
pub(crate) async fn route_canary(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<CanaryBody>,
) -> Result<Json<CanaryReport>, ApiError> {
    change_router(
        &state,
        move |router| Ok(router.canary_action(&name, body.action)?),
    )
    .await
    .map(Json)
}

/// A route's latest decisions.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecentDecisions {
    /// The route.
    pub route: String,
    /// Its latest decisions since the server started (at most 50), newest first.
    pub decisions: Vec<RecentDecision>,
}

/// The route's latest decisions, each with its explanation and its outcome and quality
/// once reported.
#[utoipa::path(
    get,
    path = "/v1/routes/{name}/decisions",
    operation_id = "route_decisions",
    params(("name" = String, Path, description = "The route")),
    responses((status = 200, description = "The latest decisions", body = RecentDecisions), ErrorResponses)
)]
pub(crate) async fn route_decisions(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<RecentDecisions>, ApiError> {
    with_router(&state, move |router| {
        Ok(RecentDecisions {
            decisions: router.recent_decisions(&name)?,
            route: name,
        })
    })
    .await
    .map(Json)
}

/// The route's learner state, versioned (the format of `snapshot.json`'s routes).
#[utoipa::path(
    get,
    path = "/v1/routes/{name}/snapshot",
    operation_id = "route_snapshot",
    params(("name" = String, Path, description = "The route")),
    responses((status = 200, description = "The learner's snapshot", body = Object), ErrorResponses)
)]
pub(crate) async fn route_snapshot(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<quiver_bandit::Snapshot>, ApiError> {
    with_router(&state, move |router| Ok(router.learner(&name)?.snapshot()))
        .await
        .map(Json)
}

/// Prometheus metrics, in the text exposition format 0.0.4.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "text/plain"),
        ErrorResponses
    )
)]
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    state.metrics.cache_bytes.set(state.cache.bytes() as i64);
    let stats = with_router(&state, |router| Ok(LearnerStats::read(router)?))
        .await?
        .with_circuits(&state.health, &state.config.routes, Instant::now());
    let text = state.metrics.render(stats);
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

/// Liveness: `ok` while the server serves.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    security(()),
    responses((status = 200, description = "Serving", body = String, content_type = "text/plain"), ErrorResponses)
)]
pub(crate) async fn healthz(State(state): State<Arc<AppState>>) -> String {
    match state.cluster.as_ref().map(|c| (c.replica(), c.health())) {
        None => "ok".into(),
        Some((replica, Ok(()))) => format!("ok\ncluster: replica `{replica}`, in sync"),
        Some((replica, Err(reason))) => {
            format!("ok\ncluster: replica `{replica}` serving and learning alone: {reason}")
        }
    }
}

/// The dashboard: one page, its script and styles compiled in, nothing fetched from
/// elsewhere (its content security policy says so). It holds no data: it reads the admin
/// endpoints with the token it is given (`/ui#token=...`, kept in the tab's session
/// storage) every two seconds.
#[utoipa::path(
    get,
    path = "/ui",
    operation_id = "dashboard",
    security(()),
    responses((status = 200, description = "The dashboard's page", body = String, content_type = "text/html"), ErrorResponses)
)]
pub(crate) async fn ui() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        include_str!("ui.html"),
    )
        .into_response()
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object), ErrorResponses)
)]
pub(crate) async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}
