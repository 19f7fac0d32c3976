//! `POST /v1/embeddings`: passed through to the configured model that `model` names, so
//! that a client of the gateway embeds through it too. Nothing is routed or learned: an
//! embedding has no quality to feed back. The upstream's answer reaches the client as it
//! came when it is a success (its JSON body and `x-*` headers) or blames the request (400,
//! 413, 415, 422: its status, content type and body, as the proxy relays them); a request
//! to wait (429 or 503 with `Retry-After`) is a 429 with the same wait, as is a model whose
//! deployments are at their limits (until one frees); any other failure,
//! a body that is not JSON included, is a 502 naming it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::Value;

use crate::api_error::{ApiError, UpstreamResponses};
use crate::config::ModelConfig;
use crate::proxy::{pass_on, Leased};
use crate::state::{ApiJson, AppState};
use crate::upstream::{Answer, UpstreamCall};

/// The upstream path of an embeddings call, after a model's `base_url`.
const EMBEDDINGS_PATH: &str = "/embeddings";

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
    let callable = |m: &ModelConfig| m.base_url.is_some() || !m.deployments.is_empty();
    let models = || {
        state
            .config
            .routes
            .iter()
            .flat_map(|r| r.models.iter().map(move |m| (r.name.as_str(), m)))
    };
    let Some((route, model)) = models().find(|(_, m)| m.id == id && callable(m)) else {
        let known: Vec<&str> = models()
            .filter(|(_, m)| callable(m))
            .map(|(_, m)| m.id.as_str())
            .collect();
        return Err(ApiError::NotFound(format!(
            "no configured model `{id}` with a base_url or deployments (models: {})",
            known.join(", ")
        )));
    };
    let started = Instant::now();
    // A deployment of the model, as the proxy picks one (no tags, no prompt tokens).
    let lease = state
        .deployments
        .acquire(route, model, (&[], 0, &[]), (&state.health, false), started)
        .map_err(|no| {
            let reason = format!("model `{id}`: no deployment can take the call ({})", no.reason);
            match no.retry_after {
                // Its deployments' limits, which free in time: the client waits as long.
                Some(wait) => ApiError::TooManyRequests(reason, (wait.as_secs_f64().ceil() as u64).max(1)),
                None => ApiError::Upstream(reason),
            }
        })?;
    let lease = Leased::new(&state.deployments, lease);
    let served = &lease.model_config;
    body["model"] = Value::String(served.upstream_model.clone().unwrap_or_else(|| served.id.clone()));
    let call = UpstreamCall {
        model: served,
        path: EMBEDDINGS_PATH,
        body: &body,
        stream: false,
        deadline: started + Duration::from_millis(state.config.request_timeout_ms),
    };
    let answered = state.upstream.call(call).await;
    let upstream = |reason: String| ApiError::Upstream(format!("model `{id}`: {reason}"));
    let (result, answer) = match answered {
        Ok(Answer::Complete { body, passed, .. }) => {
            let mut answer = json_response(StatusCode::OK, body)?;
            pass_on(&mut answer, passed);
            ("ok", Ok(answer))
        }
        Ok(Answer::Refused {
            status,
            body,
            content_type,
        }) => {
            let mut answer = json_response(status, body)?;
            if let Some(content_type) = content_type {
                answer.headers_mut().insert(header::CONTENT_TYPE, content_type);
            }
            ("refused", Ok(answer))
        }
        Ok(Answer::Stream { .. }) => ("error", Err(upstream("it answered an event stream".into()))),
        // Asked to wait (a 429 or 503 with `Retry-After`): so is the client, as the proxy's
        // is when every model of a route asks.
        Err(failure) => match failure.retry_after {
            Some(wait) => (
                "error",
                Err(ApiError::TooManyRequests(
                    format!("model `{id}` asked to wait: {failure}"),
                    (wait.as_secs_f64().ceil() as u64).max(1),
                )),
            ),
            None => ("error", Err(upstream(failure.to_string()))),
        },
    };
    state
        .metrics
        .upstream_attempt(&model.id, EMBEDDINGS_PATH, result, started.elapsed());
    answer
}

fn json_response(status: StatusCode, body: Bytes) -> Result<Response, ApiError> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .map_err(|e| ApiError::Internal(e.to_string()))
}
