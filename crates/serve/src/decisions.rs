//! `POST /v1/route`, `/v1/feedback` and `/v1/outcome`: decisions, and what came of them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use quiver_bandit::{Applied, ArmEstimate, Outcome, PropensityKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api_error::{ApiError, ErrorResponses};
use crate::router::RouteRequest;
use crate::state::{change_router, ApiJson, AppState};

/// `POST /v1/route` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    /// Route name.
    pub route: String,
    /// The rest of the request.
    #[serde(flatten)]
    pub request: RouteRequest,
}

/// `POST /v1/route` answer: the decision.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteAnswer {
    /// `<route>:<number>`, for `/v1/outcome` and `/v1/feedback`.
    pub decision_id: String,
    /// The model chosen.
    pub model: String,
    /// The probability with which it was chosen.
    pub propensity: f64,
    /// Whether the propensity is exact or estimated.
    pub propensity_kind: PropensityKind,
    /// The other eligible models, best first: where to go if the call fails.
    pub fallback: Vec<String>,
    /// Each eligible model's estimates.
    pub explanation: Vec<ArmEstimate>,
    /// Why each ineligible model was excluded.
    pub excluded: Vec<String>,
}

/// Choose a model for a request.
#[utoipa::path(
    post,
    path = "/v1/route",
    operation_id = "route",
    request_body = RouteBody,
    responses((status = 200, description = "The decision", body = RouteAnswer), ErrorResponses)
)]
pub(crate) async fn route(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RouteBody>,
) -> Result<Json<RouteAnswer>, ApiError> {
    let (observed, _) = state
        .observe(&body.route, &body.request.text()?, &headers, None)
        .await;
    let routed = change_router(&state, move |r| {
        Ok(r.route_observed(&body.route, &body.request, observed)?)
    })
    .await?;
    state.metrics.routed.inc();
    let d = routed.decision;
    Ok(Json(RouteAnswer {
        decision_id: routed.decision_id,
        model: d.arm,
        propensity: d.propensity,
        propensity_kind: d.propensity_kind,
        fallback: d.fallback,
        explanation: d.arms,
        excluded: d.excluded,
    }))
}

/// `POST /v1/feedback` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    /// The decision.
    pub decision_id: String,
    /// Quality in [0, 1].
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub quality: f64,
}

/// What a report did: `applied`, `already_applied` (a repeat; nothing changed) or
/// `arm_removed` (acknowledged, not learned).
#[derive(Debug, Serialize, ToSchema)]
pub struct AppliedBody {
    /// The decision.
    pub decision_id: String,
    /// What became of the report.
    pub status: Applied,
}

/// Report a decision's quality (idempotent, accepted late).
#[utoipa::path(
    post,
    path = "/v1/feedback",
    operation_id = "feedback",
    request_body = FeedbackBody,
    responses((status = 200, description = "What the feedback did", body = AppliedBody), ErrorResponses)
)]
pub(crate) async fn feedback(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<FeedbackBody>,
) -> Result<Json<AppliedBody>, ApiError> {
    let id = body.decision_id.clone();
    let status = change_router(&state, move |r| Ok(r.feedback(&body.decision_id, body.quality)?)).await?;
    state.metrics.feedback.inc();
    Ok(Json(AppliedBody {
        decision_id: id,
        status,
    }))
}

/// `POST /v1/outcome` body: what the call of a routed request cost, for applications
/// that call providers themselves.
#[derive(Debug, Deserialize, ToSchema)]
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

/// Report what a routed call cost and how long it took (idempotent).
#[utoipa::path(
    post,
    path = "/v1/outcome",
    operation_id = "outcome",
    request_body = OutcomeBody,
    responses((status = 200, description = "What the outcome did", body = AppliedBody), ErrorResponses)
)]
pub(crate) async fn outcome(
    State(state): State<Arc<AppState>>,
    ApiJson(b): ApiJson<OutcomeBody>,
) -> Result<Json<AppliedBody>, ApiError> {
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
    Ok(Json(AppliedBody {
        decision_id: id,
        status,
    }))
}
