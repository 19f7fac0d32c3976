//! `POST /v1/chat/completions`: the OpenAI-compatible proxy.
//!
//! `model` names a route. The route's learner picks a model; the request goes to that
//! model's upstream with `model` rewritten, and on an error status, a timeout or an
//! unusable body to the next model of the fallback order, within the request's deadline.
//! The chosen model's outcome (latency, tokens, cost at the configured prices, error) is
//! recorded as feedback automatically; the decision id comes back in the
//! `x-quiver-decision-id` header, for quality feedback later. Streaming (`"stream": true`)
//! passes the upstream's server-sent events through as they arrive; the outcome is
//! recorded when the stream ends (a stream cut short counts as failed). The upstream's own
//! `x-*` headers are passed on. The proxy keeps its own deadline (`request_timeout_ms`)
//! so that a hanging model falls back instead of timing the whole request out.
//!
//! The upstream call does not wait for the decision's fsync: nothing names the decision
//! until the answer, and the answer waits for the log to hold the decision (and, when the
//! outcome is recorded first, the outcome with it, in one fsync).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use futures_util::StreamExt;
use quiver_bandit::{ChatMessage, Outcome};
use serde_json::Value;

use crate::api_error::ApiError;
use crate::app::{authorize, body, change_router, Access, AppState};
use crate::router::{ModelConfig, RouteRequest};

/// Header carrying the decision id.
pub const DECISION_HEADER: &str = "x-quiver-decision-id";
/// Header naming the model that answered.
pub const MODEL_HEADER: &str = "x-quiver-model";

fn messages(body: &Value) -> Result<Vec<ChatMessage>, ApiError> {
    let list = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::Invalid("`messages` must be an array of chat messages".into()))?;
    Ok(list
        .iter()
        .map(|m| {
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                // Multi-part content: its text parts, in order.
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => String::new(),
            };
            ChatMessage {
                role: m
                    .get("role")
                    .and_then(Value::as_str)
                    .unwrap_or("user")
                    .to_string(),
                content,
            }
        })
        .collect())
}

fn cost_usd(model: &ModelConfig, input_tokens: u32, output_tokens: u32) -> f64 {
    (f64::from(input_tokens) * model.input_usd_per_million
        + f64::from(output_tokens) * model.output_usd_per_million)
        / 1e6
}

/// Token counts from an OpenAI `usage` object.
fn usage(value: &Value) -> Option<(u32, u32)> {
    let u = value.get("usage")?;
    let field = |k: &str| {
        u.get(k)
            .and_then(Value::as_u64)
            .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
    };
    Some((field("prompt_tokens")?, field("completion_tokens")?))
}

/// Tokens of a finished event stream: the `usage` of its last chunk if any, else the
/// streamed content's length estimated at four characters a token.
fn stream_usage(text: &str, prompt_tokens: u32) -> (u32, u32) {
    let mut chars = 0usize;
    let mut found = None;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            continue;
        };
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(u) = usage(&chunk) {
            found = Some(u);
        }
        if let Some(content) = chunk.pointer("/choices/0/delta/content").and_then(Value::as_str) {
            chars += content.chars().count();
        }
    }
    found.unwrap_or((
        prompt_tokens,
        u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX),
    ))
}

/// The upstream's own `x-*` headers, passed on to the client.
fn extension_headers(upstream: &reqwest::Response) -> Vec<(header::HeaderName, HeaderValue)> {
    upstream
        .headers()
        .iter()
        .filter(|(name, _)| {
            name.as_str().starts_with("x-") && !name.as_str().starts_with("x-quiver-decision")
        })
        .filter_map(|(name, value)| {
            let name = header::HeaderName::from_bytes(name.as_str().as_bytes()).ok()?;
            let value = HeaderValue::from_bytes(value.as_bytes()).ok()?;
            Some((name, value))
        })
        .collect()
}

fn with_headers(mut response: Response, decision_id: &str, model: &str) -> Response {
    for (name, value) in [(DECISION_HEADER, decision_id), (MODEL_HEADER, model)] {
        if let Ok(v) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

async fn record(state: &Arc<AppState>, decision_id: &str, outcome: Outcome) {
    let id = decision_id.to_string();
    if let Err(e) = change_router(state, move |r| Ok(r.record_outcome(&id, &outcome)?)).await {
        eprintln!("quiver serve: could not record the outcome of {decision_id}: {e:?}");
    }
}

/// The proxy handler.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    parsed: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Access::Route)?;
    let mut request = body(parsed)?;
    let route = request
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::Invalid("`model` must name a route".into()))?
        .to_string();
    let stream = request.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let route_request = RouteRequest {
        messages: Some(messages(&request)?),
        ..RouteRequest::default()
    };
    let prompt_tokens = quiver_bandit::features::estimate_tokens(&route_request.text()?);
    let ((routed, models), decision_logged) = {
        let mut router = state.router()?;
        let routed = router.route(&route, &route_request)?;
        let models = router.route_config(&route)?.models.clone();
        routed.map(|routed| (routed, models)).split()
    };
    state.counters.proxied.fetch_add(1, Ordering::Relaxed);
    let decision_id = routed.decision_id.clone();
    let deadline = Instant::now() + Duration::from_millis(state.config.request_timeout_ms);
    let order: Vec<String> = std::iter::once(routed.decision.arm.clone())
        .chain(routed.decision.fallback.iter().cloned())
        .collect();
    let mut failures = Vec::new();
    let mut answer = None;
    for (attempt, arm) in order.iter().enumerate() {
        let Some(model) = models.iter().find(|m| &m.id == arm) else {
            continue;
        };
        let Some(base_url) = &model.base_url else {
            if attempt == 0 {
                record(&state, &decision_id, Outcome::new(0.0, 0.0).failed()).await;
            }
            failures.push(format!("{arm}: no base_url configured"));
            continue;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            failures.push(format!("{arm}: deadline reached"));
            break;
        }
        request["model"] = Value::String(model.upstream_model.clone().unwrap_or_else(|| model.id.clone()));
        let mut call = state
            .http
            .post(format!("{}/chat/completions", base_url.trim_end_matches('/')))
            .timeout(left.min(Duration::from_millis(state.config.upstream_timeout_ms)))
            .json(&request);
        if let Some(key) = model.api_key_env.as_ref().and_then(|v| std::env::var(v).ok()) {
            call = call.bearer_auth(key);
        }
        let started = Instant::now();
        let failure = match call.send().await {
            Ok(response) if response.status().is_success() => {
                let passed = extension_headers(&response);
                if stream {
                    let mut out = stream_through(
                        &state,
                        response,
                        &decision_id,
                        model,
                        attempt == 0,
                        started,
                        prompt_tokens,
                    );
                    out.headers_mut().extend(passed);
                    answer = Some(out);
                    break;
                }
                match response.bytes().await {
                    Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                        Ok(value) if value.get("choices").is_some() => {
                            let (input, output) = usage(&value).unwrap_or((0, 0));
                            if attempt == 0 {
                                let latency = started.elapsed().as_secs_f64() * 1000.0;
                                let outcome = Outcome::new(latency, cost_usd(model, input, output))
                                    .with_tokens(input, output);
                                record(&state, &decision_id, outcome).await;
                            }
                            let mut response = Response::builder()
                                .status(StatusCode::OK)
                                .header(header::CONTENT_TYPE, "application/json")
                                .body(Body::from(bytes))
                                .map_err(|e| ApiError::Internal(e.to_string()))?;
                            response.headers_mut().extend(passed);
                            answer = Some(with_headers(response, &decision_id, &model.id));
                            break;
                        }
                        _ => format!("{arm}: the upstream's body is not a chat completion"),
                    },
                    Err(e) => format!("{arm}: reading the body failed: {e}"),
                }
            }
            Ok(response) => format!("{arm}: upstream answered {}", response.status()),
            Err(e) if e.is_timeout() => format!("{arm}: timed out"),
            Err(e) => format!("{arm}: {e}"),
        };
        state.counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
        if attempt == 0 {
            let latency = started.elapsed().as_secs_f64() * 1000.0;
            record(&state, &decision_id, Outcome::new(latency, 0.0).failed()).await;
        }
        failures.push(failure);
    }
    if let Some(answer) = answer {
        decision_logged.durable().await?;
        return Ok(answer);
    }
    Err(ApiError::Upstream(format!(
        "every model of route `{route}` failed: {}",
        failures.join("; ")
    )))
}

/// Records a streamed call's outcome when its body is dropped: after the last event, when
/// the upstream fails mid-stream, or when the client goes away.
struct StreamOutcome {
    state: Arc<AppState>,
    decision_id: String,
    model: ModelConfig,
    started: Instant,
    prompt_tokens: u32,
    seen: Vec<u8>,
    failed: bool,
}

impl Drop for StreamOutcome {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.seen);
        let complete = text.contains("[DONE]");
        let (input, output) = stream_usage(&text, self.prompt_tokens);
        let latency = self.started.elapsed().as_secs_f64() * 1000.0;
        let mut outcome =
            Outcome::new(latency, cost_usd(&self.model, input, output)).with_tokens(input, output);
        outcome.error = self.failed || !complete;
        let (state, id) = (Arc::clone(&self.state), std::mem::take(&mut self.decision_id));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { record(&state, &id, outcome).await });
        }
    }
}

/// Passes an upstream event stream through; the outcome is recorded when the body is
/// dropped (see [`StreamOutcome`]). A stream that ends without `[DONE]` counts as failed.
fn stream_through(
    state: &Arc<AppState>,
    upstream: reqwest::Response,
    decision_id: &str,
    model: &ModelConfig,
    record_it: bool,
    started: Instant,
    prompt_tokens: u32,
) -> Response {
    let mut tracker = record_it.then(|| StreamOutcome {
        state: Arc::clone(state),
        decision_id: decision_id.to_string(),
        model: model.clone(),
        started,
        prompt_tokens,
        seen: Vec::new(),
        failed: false,
    });
    let body = upstream.bytes_stream().map(move |chunk| {
        if let Some(t) = tracker.as_mut() {
            match &chunk {
                Ok(bytes) => t.seen.extend_from_slice(bytes),
                Err(_) => t.failed = true,
            }
        }
        chunk.map_err(std::io::Error::other)
    });
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_default();
    with_headers(response, decision_id, &model.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_usage_prefers_the_usage_chunk_and_else_counts_content() {
        let with_usage = "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n";
        assert_eq!(stream_usage(with_usage, 0), (7, 3));
        let without = "data: {\"choices\":[{\"delta\":{\"content\":\"Hello world!\"}}]}\n\ndata: [DONE]\n";
        assert_eq!(stream_usage(without, 5), (5, 3));
    }
}
