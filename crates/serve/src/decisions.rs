//! `POST /v1/route`, `/v1/feedback` and `/v1/outcome`: decisions, and what came of them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use quiver_bandit::{limits, Applied, ArmEstimate, Outcome, PropensityKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api_error::{ApiError, ErrorResponses};
use crate::error::ServeError;
use crate::forward::Report;
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
    ApiJson(mut body): ApiJson<RouteBody>,
) -> Result<Json<RouteAnswer>, ApiError> {
    body.request.session = crate::proxy::session(&headers, body.request.session.take())?;
    state.router.check_features(&body.route, &body.request.features)?;
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

/// `POST /v1/feedback` body: a decision's quality and, optionally, its call's other
/// metrics, which make the report the call's outcome as `POST /v1/outcome` takes it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    /// The decision.
    pub decision_id: String,
    /// Quality in [0, 1].
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub quality: f64,
    /// Latency, ms: needed with any of the call's metrics below.
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// Cost, USD (as in `/v1/outcome`).
    #[serde(default)]
    pub cost_usd: Option<f64>,
    /// Prompt tokens.
    #[serde(default)]
    pub input_tokens: Option<u32>,
    /// Completion tokens.
    #[serde(default)]
    pub output_tokens: Option<u32>,
    /// The call failed.
    #[serde(default)]
    pub error: Option<bool>,
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    /// Newly applied to the learner.
    Applied,
    /// A repeat; nothing changed.
    AlreadyApplied,
    /// The decision's model has since been removed; acknowledged, logged and its cost
    /// counted, not learned.
    ArmRemoved,
    /// For a decision another replica of the cluster made: kept durably here and handed
    /// to that replica, which applies it (HTTP 202).
    Forwarded,
}

impl ReportStatus {
    /// Its name, as the API and the metrics say it.
    fn name(self) -> &'static str {
        match self {
            ReportStatus::Applied => "applied",
            ReportStatus::AlreadyApplied => "already_applied",
            ReportStatus::ArmRemoved => "arm_removed",
            ReportStatus::Forwarded => "forwarded",
        }
    }
}

impl From<Applied> for ReportStatus {
    fn from(applied: Applied) -> Self {
        match applied {
            Applied::Applied => ReportStatus::Applied,
            Applied::AlreadyApplied => ReportStatus::AlreadyApplied,
            Applied::ArmRemoved => ReportStatus::ArmRemoved,
        }
    }
}

/// What a report did: `applied`, `already_applied` (a repeat; nothing changed; another
/// quality for a decision that learned one, or an outcome that reports its call otherwise
/// than the first, is a 409 instead),
/// `arm_removed` (acknowledged, logged and paid for, not learned) or `forwarded` (to the replica that made the
/// decision).
#[derive(Debug, Serialize, ToSchema)]
pub struct AppliedBody {
    /// The decision.
    pub decision_id: String,
    /// What became of the report.
    pub status: ReportStatus,
}

/// Applies `report` to decision `decision_id`, durably; or, for a decision another
/// replica of the cluster made, accepts it for that replica (202).
async fn report(
    state: &Arc<AppState>,
    decision_id: String,
    report: Report,
) -> Result<(StatusCode, Json<AppliedBody>), ApiError> {
    let kind = match report {
        Report::Feedback { .. } => "feedback",
        Report::Outcome { .. } => "outcome",
    };
    let status = match (report.stage(&state.router, &decision_id), &state.cluster) {
        (Err(ServeError::OtherReplica { replica, route, .. }), Some(cluster)) => {
            if cluster.published(&route, &replica).await == Some(false) {
                return Err(ApiError::NotFound(format!(
                    "decision `{decision_id}` names replica `{replica}`, which never published route \
                     `{route}` to the cluster: no replica can apply it"
                )));
            }
            let (shared, id) = (Arc::clone(state), decision_id.clone());
            tokio::task::spawn_blocking(move || {
                let cluster = shared.cluster.as_ref().expect("matched above");
                cluster.forward(&replica, &id, report)?;
                shared.metrics.cluster_forwarded.inc();
                Ok::<_, ServeError>(())
            })
            .await
            .map_err(|e| ApiError::Internal(format!("forwarding: {e}")))??;
            let body = AppliedBody {
                decision_id,
                status: ReportStatus::Forwarded,
            };
            state.metrics.reported(kind, body.status.name());
            return Ok((StatusCode::ACCEPTED, Json(body)));
        }
        (staged, _) => state.durable(staged?).await?,
    };
    let body = AppliedBody {
        decision_id,
        status: status.into(),
    };
    state.metrics.reported(kind, body.status.name());
    Ok((StatusCode::OK, Json(body)))
}

/// Report a decision's quality (idempotent, accepted late).
#[utoipa::path(
    post,
    path = "/v1/feedback",
    operation_id = "feedback",
    request_body = FeedbackBody,
    responses(
        (status = 200, description = "What the feedback did", body = AppliedBody),
        (status = 202, description = "Accepted for the replica that made the decision", body = AppliedBody),
        ErrorResponses
    )
)]
pub(crate) async fn feedback(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<FeedbackBody>,
) -> Result<(StatusCode, Json<AppliedBody>), ApiError> {
    let FeedbackBody {
        decision_id,
        quality,
        latency_ms,
        cost_usd,
        input_tokens,
        output_tokens,
        error,
    } = body;
    let Some(latency_ms) = latency_ms else {
        if cost_usd.is_some() || input_tokens.is_some() || output_tokens.is_some() || error == Some(true) {
            return Err(ApiError::Invalid(
                "a call's metrics come with its `latency_ms`: the report is then the call's outcome, \
                 as `/v1/outcome` takes it"
                    .into(),
            ));
        }
        return report(&state, decision_id, Report::Feedback { quality }).await;
    };
    let outcome = OutcomeBody {
        decision_id,
        latency_ms,
        cost_usd,
        input_tokens: input_tokens.unwrap_or(0),
        output_tokens: output_tokens.unwrap_or(0),
        error: error.unwrap_or(false),
        quality: Some(quality),
    };
    report_outcome(&state, outcome).await
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
    /// Cost, USD. Left out, the tokens at the model's list prices (0 for a model without
    /// prices, or without tokens); for a repeat, the cost the first outcome reported.
    #[serde(default)]
    pub cost_usd: Option<f64>,
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

/// The cost of an outcome that gives its tokens and not its cost: at the decision's model's
/// list prices, as the proxy prices a call's `usage`. Another replica's decision is priced
/// by that replica's model, which this one does not know: such a report must say its cost.
/// Counts beyond any request's, or priced beyond any request's cost, are refused naming
/// the counts, which are what the client sent.
fn listed_cost(state: &AppState, outcome: &OutcomeBody) -> Result<f64, ApiError> {
    let (input, output) = (outcome.input_tokens, outcome.output_tokens);
    limits::TOKENS
        .check("input_tokens", f64::from(input))
        .and_then(|_| limits::TOKENS.check("output_tokens", f64::from(output)))
        .map_err(ServeError::from)?;
    match state.router.list_cost(&outcome.decision_id, input, output) {
        Ok(Some(cost)) if limits::COST_USD.check("cost_usd", cost).is_err() => Err(ApiError::Invalid(format!(
            "{input} input and {output} output tokens cost {cost} USD at the model's list prices, \
             outside {} for one request: check the counts, or send `cost_usd`",
            limits::COST_USD.range
        ))),
        Ok(cost) => Ok(cost.unwrap_or(0.0)),
        Err(ServeError::OtherReplica { replica, .. }) if state.cluster.is_some() => Err(ApiError::Invalid(format!(
            "`cost_usd` is needed for decision `{}`, which replica `{replica}` made: only it knows the model to price the tokens at",
            outcome.decision_id
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Report what a routed call cost and how long it took (idempotent: a repeat must report
/// the call as the first did, and may bring its quality).
#[utoipa::path(
    post,
    path = "/v1/outcome",
    operation_id = "outcome",
    request_body = OutcomeBody,
    responses(
        (status = 200, description = "What the outcome did", body = AppliedBody),
        (status = 202, description = "Accepted for the replica that made the decision", body = AppliedBody),
        ErrorResponses
    )
)]
pub(crate) async fn outcome(
    State(state): State<Arc<AppState>>,
    ApiJson(b): ApiJson<OutcomeBody>,
) -> Result<(StatusCode, Json<AppliedBody>), ApiError> {
    report_outcome(&state, b).await
}

/// Applies the outcome `b` reports (see [`outcome`]).
async fn report_outcome(
    state: &Arc<AppState>,
    b: OutcomeBody,
) -> Result<(StatusCode, Json<AppliedBody>), ApiError> {
    let cost_usd = match b.cost_usd {
        Some(cost) => cost,
        None => listed_cost(state, &b)?,
    };
    let outcome = Outcome {
        latency_ms: b.latency_ms,
        input_tokens: b.input_tokens,
        output_tokens: b.output_tokens,
        cost_usd,
        error: b.error,
        quality: b.quality,
    };
    report(state, b.decision_id, Report::Outcome { outcome }).await
}
