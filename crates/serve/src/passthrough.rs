//! `POST /v1/embeddings`: passed through to the configured model that `model` names, so
//! that a client of the gateway embeds through it too. Nothing is routed or learned: an
//! embedding has no quality to feed back. The upstream's answer reaches the client as it
//! came (status, content type, body, `x-*` headers) when it is a success or blames the
//! request (400, 413, 415, 422); any other failure is a 502 naming it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::Value;

use crate::api_error::{ApiError, UpstreamResponses};
use crate::proxy::{extension_headers, read_whole};
use crate::state::{ApiJson, AppState};

/// OpenAI's embeddings request: `model` names a configured model; every other field goes
/// upstream as sent.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the body passed on as JSON
pub struct EmbeddingsRequest {
    /// A model of any route, by its `id`.
    model: String,
    /// The text, or texts, to embed.
    input: Value,
}

/// Embeddings from the configured model `model` names, passed through.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    operation_id = "embeddings",
    request_body = EmbeddingsRequest,
    responses(
        (status = 200, description = "The upstream's embeddings", body = Value),
        UpstreamResponses
    )
)]
pub(crate) async fn embeddings(
    State(state): State<Arc<AppState>>,
    ApiJson(mut body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let id = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::Invalid("`model` must name a configured model".into()))?
        .to_string();
    let models = || state.config.routes.iter().flat_map(|r| &r.models);
    let Some((model, base_url)) =
        models().find_map(|m| Some((m, m.base_url.as_ref()?)).filter(|(m, _)| m.id == id))
    else {
        let known: Vec<&str> = models()
            .filter(|m| m.base_url.is_some())
            .map(|m| m.id.as_str())
            .collect();
        return Err(ApiError::NotFound(format!(
            "no configured model `{id}` with a base_url (models: {})",
            known.join(", ")
        )));
    };
    body["model"] = Value::String(model.upstream_model.clone().unwrap_or_else(|| model.id.clone()));
    let config = &state.config;
    let mut call = state
        .http
        .post(format!("{}/embeddings", base_url.trim_end_matches('/')))
        .json(&body);
    if let Some(key) = model.api_key_env.as_ref().and_then(|v| std::env::var(v).ok()) {
        call = call.bearer_auth(key);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_millis(config.request_timeout_ms);
    let first_byte_by = deadline.min(started + Duration::from_millis(config.upstream_timeout_ms));
    let failed = |reason: String| {
        state
            .metrics
            .upstream_attempt(&model.id, "error", started.elapsed());
        ApiError::Upstream(format!("model `{id}`: {reason}"))
    };
    let response = tokio::time::timeout_at(first_byte_by.into(), call.send())
        .await
        .map_err(|_| failed(format!("no first byte within {} ms", config.upstream_timeout_ms)))?
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    let relayed = status.is_success() || matches!(status.as_u16(), 400 | 413 | 415 | 422);
    if !relayed {
        return Err(failed(format!("upstream answered {status}")));
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let passed = extension_headers(&response);
    let idle = Duration::from_millis(config.upstream_idle_timeout_ms);
    let bytes = read_whole(
        Box::pin(response.bytes_stream()),
        idle,
        deadline,
        config.max_upstream_body_bytes,
    )
    .await
    .map_err(|e| failed(e.to_string()))?;
    let result = if status.is_success() { "ok" } else { "refused" };
    state
        .metrics
        .upstream_attempt(&model.id, result, started.elapsed());
    let mut answer = Response::builder()
        .status(StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY))
        .body(Body::from(bytes))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(content_type) = content_type {
        answer.headers_mut().insert(header::CONTENT_TYPE, content_type);
    }
    answer.headers_mut().extend(passed);
    Ok(answer)
}
