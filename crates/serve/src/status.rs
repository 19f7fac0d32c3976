//! What the server tells about itself: a route's state and snapshot, `/metrics`, health
//! and the API document.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::api_error::ApiError;
use crate::metrics::{self, LearnerStats};
use crate::router::Router;
use crate::state::{with_router, AppState};

pub(crate) async fn route_state(
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

pub(crate) async fn route_snapshot(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<quiver_bandit::Snapshot>, ApiError> {
    with_router(&state, move |router| Ok(router.learner(&name)?.snapshot()))
        .await
        .map(Json)
}

pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let stats = with_router(&state, |router| Ok(LearnerStats::read(router)?)).await?;
    let text = state.metrics.render(stats);
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

pub(crate) async fn healthz() -> &'static str {
    "ok"
}

pub(crate) async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}
