//! `POST /v1/route`, `/v1/feedback` and `/v1/outcome`: decisions, and what came of them.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use quiver_bandit::{Applied, Outcome};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api_error::ApiError;
use crate::router::RouteRequest;
use crate::state::{change_router, ApiJson, AppState};

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

pub(crate) async fn route(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<RouteBody>,
) -> Result<Response, ApiError> {
    let embedding = state.embed(&body.route, &body.request.text()?).await;
    let routed = change_router(&state, move |r| {
        Ok(r.route_embedded(&body.route, &body.request, embedding)?)
    })
    .await?;
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

pub(crate) async fn feedback(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<FeedbackBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
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

pub(crate) async fn outcome(
    State(state): State<Arc<AppState>>,
    ApiJson(b): ApiJson<OutcomeBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
