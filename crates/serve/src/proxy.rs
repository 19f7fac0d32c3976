//! `POST /v1/chat/completions` and `/v1/completions` (the legacy text API): the
//! OpenAI-compatible proxy.
//!
//! `model` names a route. The route's learner picks a model; the request goes to that
//! model's upstream with `model` rewritten, and on an error status, a timeout or an
//! unusable body to the next model of the fallback order, within the request's deadline.
//! A status that blames the request itself (400, 413, 415, 422: another model would refuse
//! it too) is relayed to the client with the upstream's status, content type and body (not
//! its other headers), tried nowhere else and not recorded as the model's outcome. Each
//! called model's outcome (latency, tokens, cost at the configured prices, error) is
//! recorded as feedback automatically: a fallback's call is a child decision of the one
//! whose model failed (propensity 1, reason `fallback: ...`), so that its cost and its
//! quality are its own model's. The answering model's decision id comes back in the
//! `x-quiver-decision-id` header, for quality feedback later (and, after a fallback, the
//! first decision's in `x-quiver-parent-decision-id`). The upstream's own `x-*` headers
//! are passed on.
//!
//! Each model's health decides too (`crate::health`): a 5xx or a failed connection is
//! retried on the same model (another of its deployments, where one can take it) up to
//! `upstream_retries` times after an exponential backoff with jitter; a 429 or 503 with
//! `Retry-After` is not, and opens the circuit breaker of the model (of its deployment,
//! which hands the call on to another) for that long; a model whose breaker is open is
//! left out of the decision, so of the fallback order too, until a probe call after its
//! cooldown succeeds.
//!
//! Time and size limits, per attempt: the first byte (the response head and, for a
//! stream, its first event) must come within `upstream_timeout_ms`; a non-streamed body
//! must then arrive without a silence longer than `upstream_idle_timeout_ms`, within
//! `max_upstream_body_bytes` and the request's deadline (`request_timeout_ms`). Fallback
//! is only possible before the first byte reaches the client. A stream (`"stream": true`)
//! is then passed through as it arrives for as long as the upstream keeps sending: only a
//! silence longer than `upstream_idle_timeout_ms` or an upstream error cuts it, and it
//! then ends with an error event that OpenAI's SDKs raise. Its outcome is recorded when it
//! ends (a stream cut short counts as failed), from a tally of its events that holds one
//! line at a time, never the stream.
//!
//! The upstream call does not wait for the decision's fsync: nothing names the decision
//! until the answer, and the answer waits for the log to hold the decision (and, when the
//! outcome is recorded first, the outcome with it, in one fsync).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use quiver_bandit::{limits, ChatMessage, Outcome};
use serde_json::Value;

use crate::api_error::{ApiError, UpstreamResponses};
use crate::cache::{CacheKey, Cached, Lookup, ResponseCache};
use crate::cascade::Cascade;
use crate::config::ModelConfig;
use crate::deployments::{Deployments, Lease, NoDeployment};
use crate::health::Circuit;
use crate::router::{Pending, RouteRequest};
use crate::state::{change_router, ApiJson, AppState};
use crate::upstream::{Answer, Failure, Upstream, UpstreamBody, UpstreamCall};

/// Header naming the tags a request requires of the deployments that serve it.
pub const TAGS_HEADER: &str = "x-quiver-tags";

/// Header carrying the decision id.
pub const DECISION_HEADER: &str = "x-quiver-decision-id";
/// Header naming the model that answered.
pub const MODEL_HEADER: &str = "x-quiver-model";
/// Header saying whether the cache answered (`hit`) or stored the answer (`miss`).
pub const CACHE_HEADER: &str = "x-quiver-cache";
/// Header naming, on a fallback's answer or one a cascade escalated, the decision it
/// followed: whose model failed, or whose answer the check failed (`x-quiver-decision-id`
/// names the answer's own).
pub const PARENT_HEADER: &str = "x-quiver-parent-decision-id";
/// Header naming the session a request belongs to (see `crate::sessions`).
pub const SESSION_HEADER: &str = "x-quiver-session";

/// The request's caller features, for a route with `extra_features`: comma-separated
/// numbers, as `features` on `/v1/route`.
pub const FEATURES_HEADER: &str = "x-quiver-features";

/// The session a request names: its `x-quiver-session` header, else (without one, or
/// with an empty one) `named` (OpenAI's `user` on a completion, `session` on `/v1/route`).
pub(crate) fn session(headers: &HeaderMap, named: Option<String>) -> Result<Option<String>, ApiError> {
    let header = header_text(headers, SESSION_HEADER)?.map(str::trim);
    let name = header.filter(|h| !h.is_empty()).map(str::to_string).or(named);
    Ok(name.filter(|s| !s.is_empty()))
}

/// Header `name`'s text, if the request has it; a 400 unless it is visible ASCII.
fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ApiError> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .map_err(|_| ApiError::BadRequest(format!("`{name}` must be visible ASCII")))
        })
        .transpose()
}

/// The chat a completion request carries, as the route featurizes it: each message an
/// object with a string `role` and a `content` that is a string or text parts (an
/// assistant's may be null or absent: a tool call). What OpenAI refuses is refused here,
/// before any decision.
fn messages(body: &Value) -> Result<Vec<ChatMessage>, ApiError> {
    let list = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|list| !list.is_empty())
        .ok_or_else(|| ApiError::Invalid("`messages` must be a non-empty array of chat messages".into()))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            ChatMessage::from_json(m).map_err(|why| ApiError::Invalid(format!("`messages[{i}]` {why}")))
        })
        .collect()
}

/// The most answer tokens `body` lets its call be billed: OpenAI's
/// `max_completion_tokens` (else the older `max_tokens`) for each of its `n` choices (or
/// `best_of`, which are billed too), of each prompt of a list. None without a limit, or
/// with a limit of 0, which some upstreams read as their own default.
fn max_output_tokens(body: &Value) -> Option<u32> {
    let per_choice = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|limit| body.get(limit)?.as_u64())
        .filter(|&limit| limit > 0)?;
    let count = |field: &str| body.get(field).and_then(Value::as_u64).unwrap_or(1).max(1);
    let prompts = body
        .get("prompt")
        .and_then(Value::as_array)
        .map_or(1, |p| p.len().max(1)) as u64;
    let answers = count("n").max(count("best_of")).saturating_mul(prompts);
    Some(u32::try_from(per_choice.saturating_mul(answers)).unwrap_or(u32::MAX))
}

/// The outcome of a call to `model` that took `latency_ms` and was billed the given
/// tokens, at what `upstream` charges for them. An upstream's figures are a peer's, not a
/// caller's: beyond the physical ranges they are clamped into them and recorded, never
/// refused.
fn call_outcome(
    upstream: &dyn Upstream,
    model: &ModelConfig,
    latency_ms: f64,
    input_tokens: u32,
    output_tokens: u32,
) -> Outcome {
    let tokens = |t: u32| limits::TOKENS.clamp(f64::from(t)) as u32;
    let (input, output) = (tokens(input_tokens), tokens(output_tokens));
    let cost = upstream.cost_usd(model, input, output);
    Outcome::new(limits::LATENCY_MS.clamp(latency_ms), limits::COST_USD.clamp(cost))
        .with_tokens(input, output)
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
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

/// A complete answer's tokens: its `usage`, else, as for a stream without one, the prompt's
/// estimate and the answer's length at four characters a token, so that an upstream that
/// reports no usage is not taken for free (spend caps and budgets count it).
fn answer_tokens(json: &Value, prompt_tokens: u32) -> (u32, u32) {
    usage(json).unwrap_or_else(|| estimated_tokens(prompt_tokens, written_chars(json, "message")))
}

/// The characters a model wrote in an answer (`part` "message") or a stream's chunk
/// ("delta"), over every choice: the content or the text API's `text`, the reasoning some
/// models return beside it, and the tool calls' names and arguments, all billed as output.
fn written_chars(json: &Value, part: &str) -> usize {
    let chars = |text: Option<&Value>| text.and_then(Value::as_str).map_or(0, |t| t.chars().count());
    let function = |f: &Value| chars(f.get("name")) + chars(f.get("arguments"));
    let written = |message: &Value| {
        let calls = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        let texts = ["content", "reasoning_content", "reasoning"].map(|field| chars(message.get(field)));
        texts.iter().sum::<usize>()
            + message.get("function_call").map_or(0, function)
            + calls
                .filter_map(|call| call.get("function"))
                .map(function)
                .sum::<usize>()
    };
    let choices = json
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    choices
        .map(|choice| {
            choice
                .get(part)
                .map_or_else(|| chars(choice.get("text")), written)
        })
        .sum()
}

/// What a call that reported no `usage` is charged for: the prompt's estimated tokens, and
/// its answer's `answer_chars` at four characters a token.
fn estimated_tokens(prompt_tokens: u32, answer_chars: usize) -> (u32, u32) {
    (
        prompt_tokens,
        quiver_bandit::features::tokens_of_chars(answer_chars),
    )
}

/// Longest server-sent-event line the tally reads; longer ones pass through unread.
const MAX_EVENT_LINE: usize = 1 << 20;

/// What a streamed answer told so far, read as it passes through without keeping it: its
/// `usage` (the last one given), the characters the model wrote, whether an event was an
/// error and whether it ended with `[DONE]`. An event's `data:` lines are read together,
/// joined by line ends, as SSE reads them.
#[derive(Debug, Default)]
struct StreamTally {
    line: Vec<u8>,
    overlong: bool,
    /// Whether the last line ended with a `\r`, whose `\n` may come next.
    after_cr: bool,
    /// The data of the event under way.
    data: Option<Vec<u8>>,
    /// Whether the event under way is longer than an event may be: it is not read.
    skipping: bool,
    chars_written: usize,
    usage: Option<(u32, u32)>,
    /// An error event of the model's.
    errored: bool,
    /// An error event that blames the request (see [`blames_the_request`]).
    refused: bool,
    done: bool,
}

/// Whether an error event's `code` (or `status`) is one that blames the request, not the
/// model, as [`crate::upstream::is_client_error`] tells an upstream's status.
fn blames_the_request(error: &Value) -> bool {
    let code = error.get("code").or_else(|| error.get("status"));
    code.and_then(|c| c.as_u64().or_else(|| c.as_str()?.parse().ok()))
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .is_some_and(crate::upstream::is_client_error)
}

impl StreamTally {
    /// Reads the lines `bytes` completes; a line ends at `\n`, `\r\n` or a bare `\r`, as
    /// SSE allows.
    fn feed(&mut self, bytes: &[u8]) {
        let line_end = |b: &u8| matches!(b, b'\n' | b'\r');
        for piece in bytes.split_inclusive(line_end) {
            if std::mem::take(&mut self.after_cr) && piece == b"\n" {
                continue;
            }
            if self.line.len() + piece.len() <= MAX_EVENT_LINE {
                self.line.extend_from_slice(piece);
            } else {
                self.overlong = true;
            }
            if let Some(&last) = piece.last().filter(|b| line_end(b)) {
                self.after_cr = last == b'\r';
                self.end_line();
            }
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.overlong) {
            // An event longer than any is read as none, to its blank line.
            (self.data, self.skipping) = (None, true);
            return;
        }
        if line.trim_ascii().is_empty() {
            if !std::mem::take(&mut self.skipping) {
                self.end_event();
            }
        } else if let Some(data) = sse_data(&line).filter(|_| !self.skipping) {
            let event = self.data.get_or_insert_with(Vec::new);
            if !event.is_empty() {
                event.push(b'\n');
            }
            event.extend_from_slice(data);
            if event.len() > MAX_EVENT_LINE {
                (self.data, self.skipping) = (None, true);
            }
        }
    }

    /// Reads the event whose blank line came (or the last, at the stream's end).
    fn end_event(&mut self) {
        let Some(data) = self.data.take() else {
            return;
        };
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(&data) else {
            return;
        };
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            if blames_the_request(error) {
                self.refused = true;
            } else {
                self.errored = true;
            }
        }
        if let Some(u) = usage(&chunk) {
            self.usage = Some(u);
        }
        self.chars_written += written_chars(&chunk, "delta");
    }

    /// Reads what the stream left unended when it ends.
    fn end(&mut self) {
        self.end_line();
        self.end_event();
    }

    /// The tokens of the stream: its `usage` if it gave one, else the prompt's estimate
    /// and the content's length at four characters a token.
    fn tokens(&self, prompt_tokens: u32) -> (u32, u32) {
        self.usage
            .unwrap_or_else(|| estimated_tokens(prompt_tokens, self.chars_written))
    }
}

/// The headers the gateway sets on an answer: an upstream's of the same name are not passed on.
const GATEWAY_HEADERS: [&str; 6] = [
    DECISION_HEADER,
    MODEL_HEADER,
    CACHE_HEADER,
    PARENT_HEADER,
    SESSION_HEADER,
    // The client's id, or the gateway's: the one its access log holds.
    crate::app::REQUEST_ID_HEADER,
];

/// Passes the upstream's own headers on with `response`, but not the gateway's.
pub(crate) fn pass_on(response: &mut Response, passed: Vec<(header::HeaderName, HeaderValue)>) {
    let theirs = passed
        .into_iter()
        .filter(|(name, _)| !GATEWAY_HEADERS.contains(&name.as_str()));
    response.headers_mut().extend(theirs);
}

/// Names `parent`, if any, as the decision the answer's own decision followed.
fn with_parent(response: &mut Response, parent: Option<&str>) {
    if let Some(parent) = parent.and_then(|p| HeaderValue::from_str(p).ok()) {
        response.headers_mut().insert(PARENT_HEADER, parent);
    }
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
        tracing::error!(decision = decision_id, "could not record the outcome: {e:?}");
    }
}

/// OpenAI's chat completion request, as the proxy reads it: `model` names a route, the
/// messages' text is what the route featurizes, and every other field goes upstream as sent.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the body the proxy passes on as JSON
pub struct ChatCompletionRequest {
    /// The route.
    model: String,
    /// The chat, each message with a `role` and a `content` (a string or text parts).
    messages: Vec<Object>,
    /// Stream the answer as server-sent events.
    stream: Option<bool>,
}

/// Any JSON object.
pub(crate) type Object = serde_json::Map<String, Value>;

/// A completion through the route's chosen model, with fallback; the decision id is in the
/// `x-quiver-decision-id` header (not on an answer from the cache, `x-quiver-cache: hit`).
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    operation_id = "chat_completions",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The upstream's completion: JSON, or server-sent events when streaming",
            content((Object = "application/json"), (String = "text/event-stream")),
            headers(
                ("x-quiver-decision-id" = String, description = "The decision the answer is of, for its feedback"),
                ("x-quiver-model" = String, description = "The model that answered"),
                ("x-quiver-parent-decision-id" = String, description = "After a fallback or a cascade's escalation, the decision it followed"),
                ("x-quiver-cache" = String, description = "With the cache on: `hit` or `miss`")
            )),
        UpstreamResponses
    )
)]
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<Value>,
) -> Result<Response, ApiError> {
    complete(state, headers, request, Api::Chat).await
}

/// OpenAI's text completion request (the legacy API), as the proxy reads it: `model`
/// names a route, the prompt is what the route featurizes, every other field goes upstream.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the body the proxy passes on as JSON
pub struct CompletionRequest {
    /// The route.
    model: String,
    /// The prompt, or prompts (featurized as one text, one per line): text, or token ids.
    prompt: Value,
    /// Stream the answer as server-sent events.
    stream: Option<bool>,
}

/// A text completion (OpenAI's legacy API) through the route's chosen model, as
/// `/v1/chat/completions` does a chat.
#[utoipa::path(
    post,
    path = "/v1/completions",
    operation_id = "completions",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The upstream's completion: JSON, or server-sent events when streaming",
            content((Object = "application/json"), (String = "text/event-stream")),
            headers(
                ("x-quiver-decision-id" = String, description = "The decision the answer is of, for its feedback"),
                ("x-quiver-model" = String, description = "The model that answered"),
                ("x-quiver-parent-decision-id" = String, description = "After a fallback or a cascade's escalation, the decision it followed"),
                ("x-quiver-cache" = String, description = "With the cache on: `hit` or `miss`")
            )),
        UpstreamResponses
    )
)]
pub async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<Value>,
) -> Result<Response, ApiError> {
    complete(state, headers, request, Api::Text).await
}

/// Which of OpenAI's completion APIs a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    /// `/chat/completions`: `messages`.
    Chat,
    /// `/completions`: `prompt`.
    Text,
}

impl Api {
    /// The upstream path, after a model's `base_url`.
    fn path(self) -> &'static str {
        match self {
            Api::Chat => "/chat/completions",
            Api::Text => "/completions",
        }
    }

    /// What of `body` the route decides on: the chat's messages, or the prompt.
    fn route_request(self, body: &Value) -> Result<RouteRequest, ApiError> {
        Ok(match self {
            Api::Chat => RouteRequest {
                messages: Some(messages(body)?),
                ..RouteRequest::default()
            },
            Api::Text => {
                let prompt = body.get("prompt").and_then(prompt_text).ok_or_else(|| {
                    ApiError::Invalid(
                        "`prompt` must be a string, a non-empty list of strings, or token ids \
                         (a list of integers, or a list of such lists)"
                            .into(),
                    )
                })?;
                RouteRequest {
                    prompt: Some(prompt),
                    ..RouteRequest::default()
                }
            }
        })
    }
}

/// The text a legacy `prompt` is routed on: the string, or the strings one per line; token
/// ids (OpenAI's and vLLM's `int[]` and `int[][]`) are written as words, a list of them a
/// line, as no tokenizer is at hand: the same ids featurize alike.
fn prompt_text(prompt: &Value) -> Option<String> {
    let ids = |items: &[Value]| -> Option<String> {
        let ids = items.iter().map(|id| id.as_u64().map(|id| id.to_string()));
        Some(ids.collect::<Option<Vec<_>>>()?.join(" ")).filter(|text| !text.is_empty())
    };
    match prompt {
        Value::String(text) => Some(text.clone()),
        Value::Array(items) if items.first().is_some_and(Value::is_u64) => ids(items),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Some(text.clone()),
                Value::Array(inner) => ids(inner),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(|lines| lines.join("\n")),
        _ => None,
    }
}

/// A completion of either API through the route's chosen model (see the module docs), in a
/// task of its own: a client that goes away before its answer does not cut the calls short
/// of their records, so each call's outcome, its cost among it, is recorded whether or not
/// anyone reads the answer.
async fn complete(
    state: Arc<AppState>,
    headers: HeaderMap,
    request: Value,
    api: Api,
) -> Result<Response, ApiError> {
    use tracing::Instrument;
    let background = state.background.clone();
    let completion = complete_in_task(state, headers, request, api).instrument(tracing::Span::current());
    background
        .spawn(completion)
        .await
        .map_err(|e| ApiError::Internal(format!("the completion's task failed: {e}")))?
        .map_err(ApiError::as_openai)
}

async fn complete_in_task(
    state: Arc<AppState>,
    headers: HeaderMap,
    mut request: Value,
    api: Api,
) -> Result<Response, ApiError> {
    let route = request
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::Invalid("`model` must name a route".into()))?
        .to_string();
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        // Sent on, it would be the upstream's to read, and its answer not what this expects.
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "`stream` must be true or false, not {other}"
            )))
        }
    };
    let mut route_request = api.route_request(&request)?;
    route_request.max_output_tokens = max_output_tokens(&request);
    let user = match request.get("user") {
        None | Some(Value::Null) => None,
        Some(Value::String(user)) => Some(user.clone()),
        Some(other) => return Err(ApiError::Invalid(format!("`user` must be a string, not {other}"))),
    };
    route_request.session = session(&headers, user)?;
    route_request.features = caller_features(&headers)?;
    state.router.check_features(&route, &route_request.features)?;
    let prompt = route_request.text()?;
    let tags = required_tags(&headers)?;
    let (mut store_under, mut read_cache) = (None, false);
    // Answers made under other required tags (another region, say) are not this request's.
    // Nor are those chosen for other caller features.
    let cache_scope = format!(
        "{route}{}|{}|{:?}",
        api.path(),
        tags.join(","),
        route_request.features
    );
    if let Some((key, read)) = cache_key(&state, &headers, &cache_scope, &request, stream) {
        if read {
            if let Lookup::Hit(hit) = state.cache.lookup(key.clone(), Instant::now()) {
                return answer_from_cache(&state, &route, hit, &prompt).await;
            }
        }
        (store_under, read_cache) = (Some(key), read);
    }
    let prompt_tokens = quiver_bandit::features::estimate_tokens(&prompt);
    // The embedding's wait counts against the request's time limit.
    let deadline = Instant::now() + Duration::from_millis(state.config.request_timeout_ms);
    let (observed, embedding) = state
        .observe(&route, &prompt, &headers, Some((&tags, prompt_tokens)))
        .await;
    // Where the cache compares prompts, a similar request's answer serves, still before
    // deciding; without the prompt's embedding (none came in time) it is a miss.
    // A text the embedder did not see whole would match any other with its beginning.
    let mut similar = match (&store_under, embedding) {
        (Some(_), Some(embedding))
            if state.cache.semantic() && state.embedders.sees_whole(&route, &prompt) =>
        {
            Some(ResponseCache::similar_key(
                &cache_scope,
                crate::auth::bearer(&headers),
                &request,
                embedding,
            ))
        }
        _ => None,
    };
    if read_cache {
        let now = Instant::now();
        if let Some(hit) = similar
            .as_ref()
            .and_then(|key| state.cache.lookup_similar(key, now))
        {
            let answer = answer_from_cache(&state, &route, hit, &prompt).await?;
            state.metrics.cache_semantic_hits.inc();
            return Ok(answer);
        }
        state.metrics.cache_misses.inc();
    }
    let unavailable = observed.unavailable.len();
    // A cascade checks whole answers: a stream passes unchecked.
    let cascade = state.router.cascade(&route)?.filter(|_| !stream).cloned();
    let asked_logprobs = cascade
        .as_ref()
        .is_some_and(|c| c.ask_logprobs(&mut request, api == Api::Chat));
    let block = observed.embedding.clone();
    let under_way = UnderWay::new(&state.router);
    let children = Children {
        route: &route,
        request: &route_request,
        block: block.as_deref(),
        under_way: &under_way,
    };
    let ((routed, models), mut decision_logged) = {
        let routed = state.router.route_observed(&route, &route_request, observed)?;
        let models = state.router.route_config(&route)?.models.clone();
        routed.map(|routed| (routed, models)).split()
    };
    state.metrics.proxied.inc();
    let decision_id = routed.decision_id.clone();
    under_way.add(&decision_id);
    let order: Vec<String> = std::iter::once(routed.decision.arm.clone())
        .chain(routed.decision.fallback.iter().cloned())
        .collect();
    // With every model unavailable (breakers, deployments' limits or tags), the decision
    // considered them all: so do the calls, past open breakers (never past limits or tags).
    let forced = unavailable >= models.len();
    let mut failures = Vec::new();
    // While every model was stopped by a limit (a deployment's, or an upstream's 429 or
    // 503 with `Retry-After`), the earliest one frees; `Some(None)` once one was not.
    let mut only_limits: Option<Option<Duration>> = None;
    let earliest = |limits: Option<Option<Duration>>, wait: Option<Duration>| match (limits, wait) {
        (None, wait) => Some(wait),
        (Some(Some(a)), Some(b)) => Some(Some(a.min(b))),
        _ => Some(None),
    };
    // Whether no model has a deployment for this request (with its tags, and a tpm that
    // takes its prompt), and whether a prompt too large is why.
    let (mut unfit, mut too_large) = (true, false);
    let mut answer = None;
    let client_stream_options = request.get("stream_options").cloned();
    let call = Call {
        api,
        stream,
        client_stream_options: client_stream_options.as_ref(),
        forced,
        tags: &tags,
        tokens: prompt_tokens,
        deadline,
    };
    for (attempt, arm) in order.iter().enumerate() {
        let Some(model) = models.iter().find(|m| &m.id == arm) else {
            continue;
        };
        let fallback = (attempt > 0).then(|| {
            let reason = format!("fallback: {}", failures.join("; "));
            (reason, &state.metrics.fallbacks)
        });
        let mut for_decision = CallDecision::new(&children, &decision_id, &model.id, fallback);
        let called = call_with_retries(&state, &route, &mut request, model, call, &mut for_decision).await;
        let (called, started) = match called? {
            Called::Deadline => {
                failures.push(format!("{arm}: deadline reached"));
                only_limits = Some(None);
                unfit = false;
                break;
            }
            Called::NoDeployment(no) => {
                // No call was made: nothing to learn, no breaker to tell.
                failures.push(format!("{arm}: no deployment can take the call ({})", no.reason));
                unfit &= no.untagged || no.too_large;
                too_large |= no.too_large;
                // A model no deployment of which fits says nothing of the others' limits.
                if !no.untagged && !no.too_large {
                    only_limits = earliest(only_limits, no.retry_after);
                }
                continue;
            }
            Called::Answered(called, started) => {
                unfit = false;
                (called, started)
            }
        };
        let streamed_by = for_decision.streamed_by.take();
        let mut own = || -> Result<(String, Option<String>), ApiError> {
            let own = for_decision.decision(&state)?;
            if let Some(logged) = for_decision.logged.take() {
                decision_logged = logged;
            }
            Ok(own)
        };
        match called {
            Ok(Answer::Complete { body, json, passed }) => {
                let (own_id, parent) = own()?;
                let (input, output) = answer_tokens(&json, prompt_tokens);
                record(
                    &state,
                    &own_id,
                    call_outcome(&*state.upstream, model, elapsed_ms(started), input, output),
                )
                .await;
                let mut served = Served {
                    body,
                    json,
                    passed,
                    model: model.id.clone(),
                    decision_id: own_id,
                    parent,
                };
                let failed = cascade.as_ref().filter(|c| c.then != model.id).and_then(|c| {
                    Some((
                        c.failed_check(&served.json)?,
                        models.iter().find(|m| m.id == c.then)?,
                    ))
                });
                // An answer that failed the check and is served all the same is not kept.
                let mut keep = true;
                if let Some((reason, then)) = failed {
                    let from = &served.decision_id;
                    match escalate(&state, &children, from, then, reason, &mut request, call).await? {
                        Some(escalated) => served = escalated,
                        None => keep = false,
                    }
                }
                if asked_logprobs {
                    Cascade::strip_logprobs(&mut served.json);
                    served.body = serde_json::to_vec(&served.json)
                        .map_err(|e| ApiError::Internal(e.to_string()))?
                        .into();
                }
                let mut response = Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(served.body.clone()))
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                pass_on(&mut response, served.passed);
                with_parent(&mut response, served.parent.as_deref());
                if let Some(key) = store_under.take() {
                    if keep && ResponseCache::keeps(&served.json) {
                        let cached = Cached {
                            body: served.body,
                            model: served.model.clone(),
                            decision_id: served.decision_id.clone(),
                        };
                        let evicted = state.cache.store(key, similar.take(), cached, Instant::now());
                        state.metrics.cache_evictions.inc_by(evicted);
                    }
                    response
                        .headers_mut()
                        .insert(CACHE_HEADER, HeaderValue::from_static("miss"));
                }
                answer = Some(with_headers(response, &served.decision_id, &served.model));
                break;
            }
            Ok(Answer::Stream { first, rest, passed }) => {
                let (own_id, parent) = own()?;
                // Its call goes on after this request returns; its outcome ends it.
                under_way.handed_on(&own_id);
                let outcome = StreamOutcome {
                    state: Arc::clone(&state),
                    decision_id: own_id.clone(),
                    model: model.clone(),
                    started,
                    prompt_tokens,
                    tally: StreamTally::default(),
                    failed: false,
                    breaker: streamed_by.map(|(key, started)| (route.clone(), key, started)),
                };
                let idle = Duration::from_millis(state.config.upstream_idle_timeout_ms);
                // The usage asked for the gateway's sake is not the client's to read.
                let filter =
                    EventFilter::new(model.stream_usage && !client_asked_usage(call.client_stream_options));
                let mut response = stream_through(first, rest, outcome, filter, idle);
                pass_on(&mut response, passed);
                with_parent(&mut response, parent.as_deref());
                answer = Some(with_headers(response, &own_id, &model.id));
                break;
            }
            Ok(Answer::Refused {
                status,
                body,
                content_type,
            }) => {
                let (own_id, parent) = own()?;
                tracing::info!(
                    decision = %own_id,
                    model = %model.id,
                    %status,
                    "the upstream refused the request itself: relayed, not retried, not learned"
                );
                let mut response = Response::builder()
                    .status(status)
                    .body(Body::from(body))
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                if let Some(content_type) = content_type {
                    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
                }
                with_parent(&mut response, parent.as_deref());
                answer = Some(with_headers(response, &own_id, &model.id));
                break;
            }
            Err(failure) => {
                let (own_id, _) = own()?;
                record(
                    &state,
                    &own_id,
                    call_outcome(&*state.upstream, model, elapsed_ms(started), 0, 0).failed(),
                )
                .await;
                only_limits = earliest(only_limits, failure.retry_after);
                failures.push(format!("{arm}: {failure}"));
            }
        }
    }
    if let Some(answer) = answer {
        state.durable(decision_logged).await?;
        return Ok(answer);
    }
    // No answer: the error names the decision, whose failed calls are in the log.
    let error = if Instant::now() >= deadline {
        ApiError::RequestTimeout(format!(
            "route `{route}` found no answer within `request_timeout_ms` ({} ms): {}",
            state.config.request_timeout_ms,
            failures.join("; ")
        ))
    } else if unfit && too_large && !failures.is_empty() {
        ApiError::PayloadTooLarge(format!(
            "the prompt's {prompt_tokens} tokens (as estimated) are more than the tpm of every \
             deployment of route `{route}` that could take it: {}",
            failures.join("; ")
        ))
    } else if unfit && !failures.is_empty() {
        ApiError::BadRequest(format!(
            "no model of route `{route}` has a deployment with the tags in `{TAGS_HEADER}` ({}): {}",
            tags.join(", "),
            failures.join("; ")
        ))
    } else if let Some(Some(wait)) = only_limits {
        ApiError::TooManyRequests(
            format!(
                "every model of route `{route}` is at its limits or asked to wait: {}",
                failures.join("; ")
            ),
            // Rounded up: a client that waits that long finds the limit freed.
            (wait.as_secs_f64().ceil() as u64).max(1),
        )
    } else {
        ApiError::Upstream(format!(
            "every model of route `{route}` failed: {}",
            failures.join("; ")
        ))
    };
    state.durable(decision_logged).await?;
    let mut response = error.into_response();
    if let Ok(id) = HeaderValue::from_str(&decision_id) {
        response.headers_mut().insert(DECISION_HEADER, id);
    }
    Ok(response)
}

/// The cache key of a request, and whether the cache may answer it (not with
/// `cache-control: no-cache`); None when the answer is not to be cached: the cache is
/// off, the answer streams, or `cache-control: no-store`.
fn cache_key(
    state: &AppState,
    headers: &HeaderMap,
    route: &str,
    request: &Value,
    stream: bool,
) -> Option<(CacheKey, bool)> {
    let directives = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    let has = |d: &str| directives.iter().any(|x| x == d);
    if !state.cache.enabled() || stream || has("no-store") {
        return None;
    }
    let key = ResponseCache::key(route, crate::auth::bearer(headers), request);
    Some((key, !has("no-cache")))
}

/// Answers from the cache: no upstream call; the hit is logged under the decision whose
/// answer it repeats, and nothing is learned.
async fn answer_from_cache(
    state: &Arc<AppState>,
    route: &str,
    hit: Cached,
    prompt: &str,
) -> Result<Response, ApiError> {
    let logged = state.router.log_cache_hit(&hit.decision_id, &hit.model, prompt)?;
    state.durable(logged).await?;
    state.metrics.cache_hits.inc();
    tracing::debug!(route, decision = %hit.decision_id, "answered from the cache");
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(CACHE_HEADER, "hit")
        .body(Body::from(hit.body))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Ok(model) = HeaderValue::from_str(&hit.model) {
        response.headers_mut().insert(MODEL_HEADER, model);
    }
    Ok(response)
}

/// The tags a request requires of the deployments that serve it: `x-quiver-tags`, comma-
/// separated (e.g. `region:eu`).
fn required_tags(headers: &HeaderMap) -> Result<Vec<String>, ApiError> {
    let Some(text) = header_text(headers, TAGS_HEADER)? else {
        return Ok(Vec::new());
    };
    Ok(text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect())
}

/// The caller features of [`FEATURES_HEADER`], none without it.
fn caller_features(headers: &HeaderMap) -> Result<Vec<f64>, ApiError> {
    let Some(text) = header_text(headers, FEATURES_HEADER)?.filter(|t| !t.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(str::trim)
        .map(|number| {
            number.parse().map_err(|_| {
                ApiError::Invalid(format!(
                    "`{FEATURES_HEADER}`: `{number}` is not a number; send comma-separated numbers"
                ))
            })
        })
        .collect()
}

/// A completion the proxy answers with: the first model's, a fallback's, or a cascade's
/// escalation's.
struct Served {
    body: Bytes,
    json: Value,
    passed: Vec<(header::HeaderName, HeaderValue)>,
    model: String,
    decision_id: String,
    /// For a fallback's or an escalation's answer, the decision it followed.
    parent: Option<String>,
}

/// The request that child decisions (a fallback's, a cascade's escalation) are logged for.
struct Children<'a> {
    route: &'a str,
    request: &'a RouteRequest,
    /// The request's context's embedding block, where the route has one.
    block: Option<&'a [f64]>,
    /// The request's calls under way, a child's among them.
    under_way: &'a UnderWay<'a>,
}

/// The decisions whose calls a request makes, counted against the spend caps until it is
/// done with them ([`crate::router::Router::end_call`] when this is dropped), whichever
/// way it ends: an answer, a refusal, a call never made, or the client going away. A
/// stream's call goes on after the request, until its outcome.
struct UnderWay<'a> {
    router: &'a crate::router::Router,
    decisions: std::sync::Mutex<Vec<String>>,
}

impl<'a> UnderWay<'a> {
    fn new(router: &'a crate::router::Router) -> Self {
        UnderWay {
            router,
            decisions: std::sync::Mutex::default(),
        }
    }

    fn add(&self, decision_id: &str) {
        self.decisions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(decision_id.to_string());
    }

    /// Leaves decision `decision_id`'s call to the stream that goes on making it.
    fn handed_on(&self, decision_id: &str) {
        self.decisions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|d| d != decision_id);
    }
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        let decisions = self
            .decisions
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for decision_id in decisions.iter() {
            self.router.end_call(decision_id);
        }
    }
}

impl Children<'_> {
    /// Logs a child decision of `parent` (whose model failed, or whose answer failed a
    /// cascade's check) on `model` for `reason`: its id, and its durability.
    fn log(
        &self,
        state: &AppState,
        parent: &str,
        model: &str,
        reason: String,
    ) -> Result<(String, Pending<()>), ApiError> {
        let child =
            state
                .router
                .log_child_decision(self.route, self.request, self.block, parent, model, reason)?;
        let (routed, logged) = child.split();
        self.under_way.add(&routed.decision_id);
        Ok((routed.decision_id, logged))
    }
}

/// Escalates an answer that failed a cascade's check (see `crate::cascade`): the answer
/// counts as quality 0 for its decision; a child decision on `then` is logged, the model
/// called and its outcome recorded. `None` when the escalation did not answer: the first
/// answer is served after all.
async fn escalate(
    state: &Arc<AppState>,
    children: &Children<'_>,
    from: &str,
    then: &ModelConfig,
    reason: String,
    request: &mut Value,
    call: Call<'_>,
) -> Result<Option<Served>, ApiError> {
    change_router(state, |r| Ok(r.feedback(from, 0.0)?)).await?;
    let escalation = Some((reason, &state.metrics.cascade_escalations));
    let mut for_decision = CallDecision::new(children, from, &then.id, escalation);
    let called = match call_with_retries(state, children.route, request, then, call, &mut for_decision).await
    {
        // A spend cap refused the second call: the first answer is served.
        Err(ApiError::TooManyRequests(why, _)) => {
            tracing::info!(decision = %from, "{why}");
            return Ok(None);
        }
        called => called?,
    };
    let Called::Answered(called, started) = called else {
        // No call was made: nothing to learn, and the first answer is served.
        return Ok(None);
    };
    let (decision_id, _) = for_decision.decision(state)?;
    let served = match called {
        Ok(Answer::Complete { body, json, passed }) => {
            let (input, output) = answer_tokens(&json, call.tokens);
            let outcome = call_outcome(&*state.upstream, then, elapsed_ms(started), input, output);
            record(state, &decision_id, outcome).await;
            Some(Served {
                body,
                json,
                passed,
                model: then.id.clone(),
                decision_id,
                parent: Some(from.to_string()),
            })
        }
        // The model refused the request itself (its context is too short, say): relayed
        // nowhere, not learned, as a first call's refusal is; the first answer is served.
        Ok(Answer::Refused { status, .. }) => {
            tracing::info!(
                decision = %decision_id,
                model = %then.id,
                %status,
                "the escalation's upstream refused the request itself: not learned"
            );
            None
        }
        // No answer to give (a stream cannot come of a non-streamed request): its call
        // failed.
        _ => {
            let outcome = call_outcome(&*state.upstream, then, elapsed_ms(started), 0, 0).failed();
            record(state, &decision_id, outcome).await;
            None
        }
    };
    if let Some(logged) = for_decision.logged.take() {
        state.durable(logged).await?;
    }
    Ok(served)
}

/// The decision a call to a model is made for: the route's, for the model its policy
/// chose; else (a fallback, a cascade's escalation) a child decision of its own, so that
/// its outcome and its quality's feedback are its model's, not the parent's model's. A
/// child is logged as its call is first sent, so that the spend caps count the call while
/// it is under way, and not when no call is made.
struct CallDecision<'a> {
    children: &'a Children<'a>,
    /// The route's decision, or a child's parent.
    parent: &'a str,
    model: &'a str,
    /// For a child: why, and the counter of such calls.
    child_for: Option<(String, &'a Counter)>,
    /// The child decision, once logged.
    child: Option<String>,
    /// The durability of the child's record, until taken.
    logged: Option<Pending<()>>,
    /// For a call that streams: the deployment whose breaker its end tells, and when its
    /// attempt started.
    streamed_by: Option<(String, Instant)>,
}

impl<'a> CallDecision<'a> {
    fn new(
        children: &'a Children<'a>,
        parent: &'a str,
        model: &'a str,
        child_for: Option<(String, &'a Counter)>,
    ) -> Self {
        CallDecision {
            children,
            parent,
            model,
            child_for,
            child: None,
            logged: None,
            streamed_by: None,
        }
    }

    /// The call's decision id, and the decision it follows for a child: the child is
    /// logged on the first call of this.
    fn decision(&mut self, state: &AppState) -> Result<(String, Option<String>), ApiError> {
        let Some((reason, counter)) = &self.child_for else {
            return Ok((self.parent.to_string(), None));
        };
        let child = match &self.child {
            Some(child) => child.clone(),
            None => {
                let (child, logged) = self
                    .children
                    .log(state, self.parent, self.model, reason.clone())?;
                counter.inc();
                self.logged = Some(logged);
                self.child.insert(child).clone()
            }
        };
        Ok((child, Some(self.parent.to_string())))
    }
}

/// What a call to one model needs besides the model.
#[derive(Clone, Copy)]
struct Call<'a> {
    api: Api,
    stream: bool,
    /// The request's `stream_options` as the client sent them.
    client_stream_options: Option<&'a Value>,
    /// Every model is unavailable, so all are tried, open breakers included.
    forced: bool,
    tags: &'a [String],
    /// The prompt's estimated tokens, counted against the deployments' tpm.
    tokens: u32,
    deadline: Instant,
}

/// How the calls to one model ended.
enum Called {
    /// The last attempt's answer or failure, and when the first attempt started.
    Answered(Result<Answer, Failure>, Instant),
    /// No deployment could take a call: nothing was sent.
    NoDeployment(NoDeployment),
    /// The request's deadline came before a first attempt.
    Deadline,
}

/// Calls `model` (a deployment of it, see `crate::deployments`), retrying as
/// `upstream_retries` allows after a 5xx or a failed connection, on another deployment
/// than those that failed where one can take the call; a deployment that asks to wait
/// hands the call on to another of the model's at once, not counted as a retry. Logs
/// `for_decision`'s decision, if it has one to log, before the first attempt is sent.
async fn call_with_retries(
    state: &AppState,
    route: &str,
    request: &mut Value,
    model: &ModelConfig,
    call: Call<'_>,
    for_decision: &mut CallDecision<'_>,
) -> Result<Called, ApiError> {
    let first_started = Instant::now();
    let mut retries = 0;
    // The last attempt's failure, once one failed; the deployments that failed, and those
    // that asked to wait, which this call never takes again.
    let mut failed = None;
    let (mut tried, mut waiting) = (Vec::new(), Vec::new());
    // How the call ends when nothing more is sent: with the last attempt's failure, if
    // one was sent, else as `unsent` says.
    let ended = |failed: Option<Result<Answer, Failure>>, unsent: Called| {
        failed.map_or(unsent, |failed| Called::Answered(failed, first_started))
    };
    loop {
        let started = Instant::now();
        // A retry's wait ends before the deadline, but the sleep may overrun it.
        if call.deadline <= started {
            return Ok(ended(failed, Called::Deadline));
        }
        let acquired = state.deployments.acquire(
            route,
            model,
            (call.tags, call.tokens, &tried),
            (&state.health, call.forced),
            started,
        );
        let lease = match acquired {
            // Only deployments that asked to wait are left (every model is tried, past open
            // breakers): the last one's failure is the answer.
            Ok(lease) if waiting.contains(&lease.index) => {
                state.deployments.cancel(&lease);
                return Ok(ended(failed, Called::Deadline));
            }
            // Released when the attempt ends, or when this task is dropped mid-call.
            Ok(lease) => Leased::new(&state.deployments, lease),
            // Nothing more can be sent: the last attempt's failure is the answer.
            Err(no) => return Ok(ended(failed, Called::NoDeployment(no))),
        };
        if !state.health.try_call(route, &lease.key, call.forced, started) {
            // Never sent: it counts against no limit.
            let lease = lease.into_inner();
            state.deployments.cancel(&lease);
            let no = NoDeployment {
                reason: format!("{}: its circuit breaker opened since the decision", lease.key),
                retry_after: None,
                untagged: false,
                too_large: false,
            };
            return Ok(ended(failed, Called::NoDeployment(no)));
        }
        if let Err(e) = for_decision.decision(state) {
            // Never sent: a half-open breaker's probe taken above is given back.
            state.health.give_back(route, &lease.key, started);
            state.deployments.cancel(&lease.into_inner());
            return Err(e);
        }
        let served = &lease.model_config;
        request["model"] = Value::String(served.upstream_model.clone().unwrap_or_else(|| served.id.clone()));
        if call.stream {
            ask_stream_usage(request, call.client_stream_options, served.stream_usage);
        }
        let attempt = UpstreamCall {
            model: served,
            path: call.api.path(),
            body: request,
            stream: call.stream,
            deadline: call.deadline,
        };
        let called = state
            .upstream
            .call(attempt)
            .await
            .and_then(|answer| match answer {
                Answer::Complete { json, .. } if json.get("choices").is_none() => {
                    Err(Failure::final_("the upstream's body is not a completion"))
                }
                answer => Ok(answer),
            });
        let took = started.elapsed();
        let (result, failure) = match &called {
            Ok(Answer::Refused { .. }) => ("refused", None),
            Ok(_) => ("ok", None),
            Err(failure) => ("error", Some(failure)),
        };
        let mut lease = lease;
        // A failed call counts as one that took the whole timeout: the latency balance
        // must not take a deployment that fails at once for a fast one. One that asked to
        // wait is rested by its breaker instead.
        let timeout = Duration::from_millis(state.config.upstream_timeout_ms);
        lease.latency_ms = match failure {
            None => Some(took),
            Some(failure) if failure.retry_after.is_none() => Some(took.max(timeout)),
            Some(_) => None,
        }
        .map(|took| took.as_secs_f64() * 1000.0);
        state
            .metrics
            .upstream_attempt(&model.id, call.api.path(), result, took);
        if let Ok(Answer::Stream { .. }) = &called {
            state.metrics.first_token(&model.id, took);
        }
        let retry_after = failure.and_then(|f| f.retry_after);
        if let Ok(Answer::Stream { .. }) = &called {
            // Whether a stream succeeds is known at its end (see `StreamOutcome`).
            for_decision.streamed_by = Some((lease.key.clone(), started));
        } else {
            state.health.record(
                route,
                &lease.key,
                failure.is_some(),
                retry_after,
                (started, Instant::now()),
            );
        }
        let Some(failure) = failure else {
            return Ok(Called::Answered(called, first_started));
        };
        state.metrics.upstream_failures.inc();
        tried.push(lease.index);
        if retry_after.is_some() && model.deployments.len() > 1 {
            waiting.push(lease.index);
            // Its breaker is open for the wait: another deployment takes the call, if any can.
            tracing::info!(model = %model.id, deployment = %lease.key, "handing the call on after: {failure}");
            failed = Some(called);
            continue;
        }
        let wait = backoff(retries);
        let closed = state.health.circuit(route, &lease.key, Instant::now()) == Circuit::Closed;
        if !failure.retryable
            || !closed
            || retries >= state.config.upstream_retries
            || Instant::now() + wait >= call.deadline
        {
            return Ok(Called::Answered(called, first_started));
        }
        tracing::info!(model = %model.id, deployment = %lease.key, retry = retries + 1, wait_ms = wait.as_millis() as u64, "retrying after: {failure}");
        failed = Some(called);
        tokio::time::sleep(wait).await;
        retries += 1;
    }
}

/// A deployment's lease for one attempt, released when dropped: after the attempt (with its
/// latency when it succeeded), or with the task if the client goes away mid-call. A
/// stream's lease ends at its first chunk: in flight counts calls awaiting a first byte.
pub(crate) struct Leased<'a> {
    deployments: &'a Deployments,
    lease: Lease,
    latency_ms: Option<f64>,
    /// Whether dropping it releases the lease.
    armed: bool,
}

impl<'a> Leased<'a> {
    /// `lease`, released when dropped.
    pub(crate) fn new(deployments: &'a Deployments, lease: Lease) -> Self {
        Leased {
            deployments,
            lease,
            latency_ms: None,
            armed: true,
        }
    }

    /// The lease, no longer released on drop.
    fn into_inner(mut self) -> Lease {
        self.armed = false;
        self.lease.clone()
    }
}

impl std::ops::Deref for Leased<'_> {
    type Target = Lease;

    fn deref(&self) -> &Lease {
        &self.lease
    }
}

impl Drop for Leased<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.deployments.release(&self.lease, self.latency_ms);
        }
    }
}

/// The wait before retry `n` (from 0): exponential from 100 ms, at most 2 s, with full
/// jitter in its upper half so that clients that failed together do not retry together.
fn backoff(n: u32) -> Duration {
    let ceiling = (100.0 * 2f64.powi(n.min(16) as i32)).min(2000.0);
    Duration::from_secs_f64(ceiling * rand::random_range(0.5..=1.0) / 1000.0)
}

/// Sets a streamed request's `stream_options` for a model that takes them with its usage
/// asked for (`ask`: its `stream_usage`), else as the client sent them: an answer priced
/// by its usage is priced by what the upstream bills, not by an estimate of its tokens.
fn ask_stream_usage(request: &mut Value, client_options: Option<&Value>, ask: bool) {
    let Some(body) = request.as_object_mut() else {
        return;
    };
    match (client_options, ask) {
        (None, false) => {
            body.shift_remove("stream_options");
        }
        (Some(options), false) => {
            body.insert("stream_options".into(), options.clone());
        }
        (options, true) => {
            let mut options = options.and_then(Value::as_object).cloned().unwrap_or_default();
            options.insert("include_usage".into(), Value::Bool(true));
            body.insert("stream_options".into(), Value::Object(options));
        }
    }
}

/// Whether the client of a streamed call asked for its usage: the usage-only event the
/// gateway asked for on its own is not the client's to see.
fn client_asked_usage(client_options: Option<&Value>) -> bool {
    client_options.and_then(|o| o.get("include_usage")) == Some(&Value::Bool(true))
}

/// The events of a stream the client reads, passed whole as soon as their blank line
/// comes, so that an error event the gateway adds when the upstream breaks off starts an
/// event of its own; without the usage-only event (`choices` empty, `usage` set) when the
/// gateway asked for it and the client did not.
#[derive(Default)]
struct EventFilter {
    pending: Vec<u8>,
    /// Whether the usage-only event is left out.
    drop_usage: bool,
    /// Of an event that ended at a chunk's last byte, a `\r` (see [`event_end`]): whether
    /// it passed, so that a `\n` completing that `\r\n` goes where the event went.
    ended_on_cr: Option<bool>,
    /// Whether what passed ends inside an event (one too long to hold passes as it came).
    open: bool,
}

impl EventFilter {
    fn new(drop_usage: bool) -> Self {
        EventFilter {
            drop_usage,
            ..EventFilter::default()
        }
    }

    /// The events `chunk` completes, less the usage-only one if left out; the rest waits
    /// for more. An event longer than a line may be (`MAX_EVENT_LINE`) passes as it came,
    /// unread.
    fn pass(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(self.pending.len() + chunk.len());
        let mut chunk = chunk;
        if let (Some(passed), Some((&first, after))) = (self.ended_on_cr, chunk.split_first()) {
            self.ended_on_cr = None;
            if first == b'\n' {
                chunk = after;
                if passed {
                    out.push(first);
                }
            }
        }
        self.pending.extend_from_slice(chunk);
        if self.pending.len() > MAX_EVENT_LINE && event_end(&self.pending).is_none() {
            out.extend_from_slice(&self.rest());
            self.open = true;
            return Bytes::from(out);
        }
        let mut start = 0;
        while let Some(end) = event_end(&self.pending[start..]) {
            let event = &self.pending[start..start + end];
            let passed = !(self.drop_usage && is_usage_only(event));
            if passed {
                out.extend_from_slice(event);
            }
            self.open = false;
            start += end;
            if start == self.pending.len() && event.ends_with(b"\r") {
                self.ended_on_cr = Some(passed);
            }
        }
        self.pending.drain(..start);
        Bytes::from(out)
    }

    /// What is left when the stream ends: an event cut short passes as it came.
    fn rest(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.pending))
    }

    /// The event that ends a stream the upstream broke off (see [`error_event`]), in
    /// place of the event it cut short: whatever of it was held is dropped, and a part
    /// that passed is ended first, so that the error is an event of its own.
    fn broken_off(&mut self, message: &str) -> Bytes {
        self.pending.clear();
        let close = if std::mem::take(&mut self.open) {
            "\n\n"
        } else {
            ""
        };
        Bytes::from([close.as_bytes(), &error_event(message)].concat())
    }
}

/// The length of the first whole event of `bytes`, through its blank line (two line ends,
/// each `\n`, `\r\n` or `\r`, as SSE allows), if it has one.
fn event_end(bytes: &[u8]) -> Option<usize> {
    // Where the line end at `i` ends, if one does. A `\r` last may be the first half of a
    // `\r\n` not yet come: as a line's end it waits for the next byte; as the blank line
    // it ends the event whatever comes (a `\n` after it is an empty line, which SSE skips).
    let line_end = |i: usize, blank: bool| match (bytes.get(i), bytes.get(i + 1)) {
        (Some(b'\r'), Some(b'\n')) => Some(i + 2),
        (Some(b'\r'), Some(_)) | (Some(b'\n'), _) => Some(i + 1),
        (Some(b'\r'), None) if blank => Some(i + 1),
        _ => None,
    };
    let mut i = 0;
    while i < bytes.len() {
        match line_end(i, false) {
            Some(end) => match line_end(end, true) {
                Some(blank) => return Some(blank),
                None => i = end,
            },
            None => i += 1,
        }
    }
    None
}

/// The value of a server-sent event's `data:` line, trimmed; None for another line.
fn sse_data(line: &[u8]) -> Option<&[u8]> {
    line.trim_ascii().strip_prefix(b"data:").map(<[u8]>::trim_ascii)
}

/// Whether an event is the usage-only chunk an `include_usage` stream ends with.
fn is_usage_only(event: &[u8]) -> bool {
    let data: Vec<u8> = event
        .split(|&b| b == b'\n' || b == b'\r')
        .filter_map(sse_data)
        .collect::<Vec<_>>()
        .join(&b'\n');
    let Ok(chunk) = serde_json::from_slice::<Value>(&data) else {
        return false;
    };
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
        && chunk.get("usage").is_some_and(Value::is_object)
}

/// Records a streamed call's outcome when its body is dropped: after the last event, when
/// the upstream fails or falls silent mid-stream, or when the client goes away; and tells
/// the deployment's breaker whether the stream failed (broken off, silent, or an error
/// event), which is known only then. A stream whose error event blames the request is not
/// learned, as an upstream's refusal before any stream is not.
struct StreamOutcome {
    state: Arc<AppState>,
    decision_id: String,
    model: ModelConfig,
    started: Instant,
    prompt_tokens: u32,
    tally: StreamTally,
    failed: bool,
    /// The route and key of the breaker to tell, and when the attempt started.
    breaker: Option<(String, String, Instant)>,
}

impl Drop for StreamOutcome {
    fn drop(&mut self) {
        self.tally.end();
        let (input, output) = self.tally.tokens(self.prompt_tokens);
        let upstream = &*self.state.upstream;
        let mut outcome = call_outcome(upstream, &self.model, elapsed_ms(self.started), input, output);
        let tally = &self.tally;
        let failed = self.failed || tally.errored;
        outcome.error = failed || !tally.done;
        if let Some((route, key, started)) = self.breaker.take() {
            // An upstream that ends its streams without `[DONE]` is not failing, nor one
            // that refuses the request itself.
            let health = &self.state.health;
            health.record(&route, &key, failed, None, (started, Instant::now()));
        }
        if tally.refused && !failed {
            // As a refusal before the stream: the request's fault, not the model's. Its
            // call is over all the same: the spend caps stop counting it.
            self.state.router.end_call(&self.decision_id);
            tracing::info!(
                decision = %self.decision_id,
                model = %self.model.id,
                "the upstream refused the request itself in its stream: not learned"
            );
            return;
        }
        let (state, id) = (Arc::clone(&self.state), std::mem::take(&mut self.decision_id));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let background = state.background.clone();
            background.spawn_on(async move { record(&state, &id, outcome).await }, &handle);
        }
    }
}

/// The event that ends a stream the upstream broke off: OpenAI's SDKs raise an error on
/// an event whose data is an `error` object.
fn error_event(message: &str) -> Bytes {
    let error = serde_json::json!({"error": {"message": message, "type": "upstream_error", "param": null, "code": "502"}});
    Bytes::from(format!("data: {error}\n\n"))
}

/// Passes an upstream event stream through, from its first chunk on. The stream lasts as
/// long as the upstream keeps sending: it is cut only by a silence longer than `idle` or
/// an upstream error, and then ends with an error event. The outcome, if tracked, is
/// recorded when the body is dropped (see [`StreamOutcome`]); a stream that ends without
/// `[DONE]` counts as failed. A client that goes away mid-stream does not cut the call
/// short: the rest is read without it ([`finish_without_client`]), so that the outcome is
/// the model's and the cost the upstream's usage.
fn stream_through(
    first: Bytes,
    rest: UpstreamBody,
    outcome: StreamOutcome,
    filter: EventFilter,
    idle: Duration,
) -> Response {
    /// The stream as the client reads it; `call` until the upstream's stream has ended.
    struct Passing {
        first: Option<Bytes>,
        call: Option<(UpstreamBody, StreamOutcome)>,
        filter: EventFilter,
        idle: Duration,
    }
    impl Drop for Passing {
        fn drop(&mut self) {
            let (Some((rest, mut outcome)), Ok(handle)) =
                (self.call.take(), tokio::runtime::Handle::try_current())
            else {
                return;
            };
            // The client left before it read the first chunk, which the tally has not seen.
            if let Some(first) = self.first.take() {
                outcome.tally.feed(&first);
            }
            let background = outcome.state.background.clone();
            background.spawn_on(finish_without_client(rest, outcome, self.idle), &handle);
        }
    }
    let passing = Passing {
        first: Some(first),
        call: Some((rest, outcome)),
        filter,
        idle,
    };
    let body = futures_util::stream::unfold(passing, move |mut p| async move {
        loop {
            let (rest, outcome) = p.call.as_mut()?;
            let next = match p.first.take() {
                Some(first) => Ok(Some(Ok(first))),
                None => tokio::time::timeout(idle, rest.next()).await,
            };
            let error = match next {
                Ok(None) => {
                    // The stream ended: its outcome is recorded now, with nothing left to read.
                    drop(p.call.take());
                    let left = p.filter.rest();
                    return (!left.is_empty()).then_some((Ok::<_, std::convert::Infallible>(left), p));
                }
                Ok(Some(Ok(chunk))) => {
                    outcome.tally.feed(&chunk);
                    let chunk = p.filter.pass(&chunk);
                    if chunk.is_empty() {
                        continue;
                    }
                    return Some((Ok(chunk), p));
                }
                Ok(Some(Err(e))) => format!("the upstream's stream failed: {e}"),
                Err(_) => format!("the upstream sent nothing for {} ms", idle.as_millis()),
            };
            outcome.failed = true;
            drop(p.call.take());
            return Some((Ok(p.filter.broken_off(&error)), p));
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_default()
}

/// Reads the rest of a streamed call whose client went away as the client would have, to
/// its end, a failure or a silence longer than `idle`; then records its outcome (dropping
/// it).
async fn finish_without_client(mut rest: UpstreamBody, mut outcome: StreamOutcome, idle: Duration) {
    loop {
        match tokio::time::timeout(idle, rest.next()).await {
            Ok(Some(Ok(chunk))) => outcome.tally.feed(&chunk),
            Ok(None) => return,
            Ok(Some(Err(_))) | Err(_) => {
                outcome.failed = true;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::BoxFuture;
    use serde_json::json;

    /// An agent's chat (an assistant's tool call without text, then the tool's answer) is
    /// a chat OpenAI takes, and so is one of text parts.
    #[test]
    fn a_tool_call_without_text_and_text_parts_are_chats() {
        let body = serde_json::json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "weather?"}, {"type": "image_url"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function"}]},
            {"role": "assistant", "tool_calls": [{"id": "c2", "type": "function"}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ]});
        let chat = messages(&body).unwrap();
        let texts: Vec<&str> = chat.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["weather?", "", "", "sunny"]);
    }

    /// The token limit that bounds a call's cost: the newer field first, times every
    /// answer billed; none for no limit or a limit of 0.
    #[test]
    fn a_calls_token_limit_counts_every_answer_it_bills() {
        let limit = |body: Value| max_output_tokens(&body);
        assert_eq!(limit(serde_json::json!({"max_tokens": 100})), Some(100));
        assert_eq!(
            limit(serde_json::json!({"max_tokens": 100, "max_completion_tokens": 30, "n": 3})),
            Some(90)
        );
        assert_eq!(
            limit(serde_json::json!({"max_tokens": 10, "n": 2, "best_of": 5, "prompt": ["a", "b"]})),
            Some(100)
        );
        assert_eq!(limit(serde_json::json!({"max_tokens": 10, "n": 0})), Some(10));
        assert_eq!(limit(serde_json::json!({"max_tokens": 0})), None);
        assert_eq!(limit(serde_json::json!({"n": 4})), None);
        assert_eq!(
            limit(serde_json::json!({"max_tokens": 1u64 << 40})),
            Some(u32::MAX)
        );
    }

    #[test]
    fn the_gateway_s_own_headers_are_not_the_upstream_s_to_set() {
        let passed = [
            ("x-ratelimit-remaining-requests", "99"),
            ("x-quiver-simulated-quality", "1"),
            ("x-request-id", "upstream-id"),
            ("x-quiver-cache", "hit"),
            ("x-quiver-parent-decision-id", "evil:1"),
            ("x-quiver-session", "s"),
            ("x-quiver-decision-id", "evil:2"),
            ("x-quiver-model", "evil"),
        ]
        .map(|(name, value)| {
            (
                header::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        });
        let mut response = Response::default();
        pass_on(&mut response, passed.to_vec());
        let mut names: Vec<&str> = response
            .headers()
            .keys()
            .map(header::HeaderName::as_str)
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["x-quiver-simulated-quality", "x-ratelimit-remaining-requests"]
        );
    }

    #[test]
    fn a_legacy_prompt_may_be_text_or_token_ids() {
        for (prompt, text) in [
            (json!("hi"), Some("hi")),
            (json!(["a", "b"]), Some("a\nb")),
            (json!([1212, 318, 257]), Some("1212 318 257")),
            (json!([[1212, 318], [257]]), Some("1212 318\n257")),
            (json!([]), None),
            (json!([[]]), None),
            (json!([1, "a"]), None),
            (json!([-1]), None),
            (json!({"text": "hi"}), None),
        ] {
            assert_eq!(prompt_text(&prompt).as_deref(), text, "{prompt}");
        }
    }

    #[test]
    fn the_tally_counts_the_text_api_s_chunks_too() {
        let text = "data: {\"choices\":[{\"text\":\"Hello world!\"}]}\n\ndata: [DONE]\n";
        assert_eq!(tally_of(&[text]).tokens(5), (5, 3));
    }

    /// Without `usage`, an answer is charged for all the model wrote: every choice's
    /// content, reasoning, and tool calls' names and arguments, streamed or not.
    #[test]
    fn an_answer_without_usage_is_charged_for_all_the_model_wrote() {
        let message = json!({
            "content": "abcd",
            "reasoning_content": "efgh",
            "tool_calls": [{"function": {"name": "ijkl", "arguments": "{\"m\":1}"}}],
        });
        let answer = json!({"choices": [{"message": message}, {"message": {"function_call": {"name": "no", "arguments": "pq"}}}]});
        assert_eq!(answer_tokens(&answer, 9), (9, 6), "{answer}");
        let chunk =
            |delta: Value| format!("data: {}\n\n", json!({"choices": [{"index": 1, "delta": delta}]}));
        let stream = [
            chunk(json!({"reasoning": "abcd"})),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"name": "efgh", "arguments": ""}}]})),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "ijkl"}}]})),
            chunk(json!({"content": null})),
        ];
        let tally = tally_of(&stream.each_ref().map(String::as_str));
        assert_eq!(tally.tokens(9), (9, 3));
    }

    #[test]
    fn backoff_doubles_from_100_ms_to_2_s_with_jitter_in_the_upper_half() {
        for (n, ceiling_ms) in [(0, 100), (1, 200), (4, 1600), (5, 2000), (40, 2000)] {
            for _ in 0..20 {
                let wait = backoff(n).as_secs_f64() * 1000.0;
                assert!(
                    wait >= ceiling_ms as f64 / 2.0 - 1e-9 && wait <= ceiling_ms as f64 + 1e-9,
                    "{n}: {wait}"
                );
            }
        }
    }

    /// The usage-only event the gateway asked for leaves the client's stream wherever the
    /// upstream's chunks cut the events, and every other event passes whole and in order.
    #[test]
    fn the_usage_event_asked_for_the_gateway_is_not_the_clients() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5}}\r\n\r\n\
                      : a comment\n\n\
                      data: [DONE]\n\n";
        let expected = stream.replace(
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5}}\r\n\r\n",
            "",
        );
        for cut in [1, 7, 40, stream.len()] {
            let mut filter = EventFilter::new(true);
            let mut out = Vec::new();
            for piece in stream.as_bytes().chunks(cut) {
                out.extend_from_slice(&filter.pass(piece));
            }
            out.extend_from_slice(&filter.rest());
            assert_eq!(String::from_utf8(out).unwrap(), expected, "chunks of {cut}");
        }
        // Events may end their lines with a bare `\r`, as SSE allows, or mix the endings.
        let cr = "data: {\"choices\":[{\"delta\":{}}]}\r\r\
                  data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\r\
                  data: [DONE]\n\r\n";
        for cut in [1, 2, 5, cr.len()] {
            let mut filter = EventFilter::new(true);
            let mut out = Vec::new();
            for piece in cr.as_bytes().chunks(cut) {
                out.extend_from_slice(&filter.pass(piece));
            }
            let passed = String::from_utf8(out).unwrap();
            assert_eq!(
                passed, "data: {\"choices\":[{\"delta\":{}}]}\r\rdata: [DONE]\n\r\n",
                "chunks of {cut}"
            );
            assert!(filter.rest().is_empty());
        }
        // An event ended by `\r\r` passes as soon as it ends, not with the next.
        let mut filter = EventFilter::new(true);
        assert_eq!(&filter.pass(b"data: 1\r\r")[..], b"data: 1\r\r");
        // An event the stream cut short passes as it came.
        let mut filter = EventFilter::new(true);
        assert!(filter.pass(b"data: {\"choi").is_empty());
        assert_eq!(&filter.rest()[..], b"data: {\"choi");
        // Without the usage left out, every event passes whole, the usage-only one too.
        let mut filter = EventFilter::new(false);
        let mut out = Vec::new();
        for piece in stream.as_bytes().chunks(7) {
            out.extend_from_slice(&filter.pass(piece));
        }
        assert_eq!(String::from_utf8(out).unwrap(), stream);
    }

    /// A stream the upstream broke off mid-event ends with an error event of its own: the
    /// part held is dropped, and a part that passed (an event too long to hold) is ended.
    #[test]
    fn the_error_of_a_stream_broken_off_is_an_event_of_its_own() {
        let mut filter = EventFilter::new(false);
        assert_eq!(&filter.pass(b"data: 1\n\ndata: {\"choi")[..], b"data: 1\n\n");
        let error = filter.broken_off("gone");
        assert!(error.starts_with(b"data: {\"error\""), "{error:?}");
        assert!(error.ends_with(b"}\n\n"));
        let mut filter = EventFilter::new(false);
        assert_eq!(
            filter.pass(&vec![b'a'; MAX_EVENT_LINE + 1]).len(),
            MAX_EVENT_LINE + 1
        );
        assert!(filter.broken_off("gone").starts_with(b"\n\ndata: {\"error\""));
    }

    /// A model that takes `stream_options` is asked for the usage, the client's other
    /// options kept; one that does not gets the client's options as they came.
    #[test]
    fn stream_usage_is_asked_of_the_models_that_take_it() {
        let options = serde_json::json!({"include_obfuscation": false});
        let mut request = serde_json::json!({"model": "m", "stream": true});
        ask_stream_usage(&mut request, Some(&options), true);
        assert_eq!(
            request["stream_options"],
            serde_json::json!({"include_obfuscation": false, "include_usage": true})
        );
        ask_stream_usage(&mut request, Some(&options), false);
        assert_eq!(request["stream_options"], options);
        ask_stream_usage(&mut request, None, true);
        assert_eq!(
            request["stream_options"],
            serde_json::json!({"include_usage": true})
        );
        ask_stream_usage(&mut request, None, false);
        assert!(request.get("stream_options").is_none());
        assert!(client_asked_usage(Some(
            &serde_json::json!({"include_usage": true})
        )));
        assert!(!client_asked_usage(Some(&options)) && !client_asked_usage(None));
    }

    fn tally_of(chunks: &[&str]) -> StreamTally {
        let mut tally = StreamTally::default();
        for chunk in chunks {
            tally.feed(chunk.as_bytes());
        }
        tally.end();
        tally
    }

    #[test]
    fn the_tally_prefers_the_usage_chunk_and_else_counts_content() {
        let with_usage = "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n";
        let tally = tally_of(&[with_usage]);
        assert_eq!(tally.tokens(0), (7, 3));
        assert!(tally.done);
        let without = "data: {\"choices\":[{\"delta\":{\"content\":\"Hello world!\"}}]}\n\ndata: [DONE]\n";
        assert_eq!(tally_of(&[without]).tokens(5), (5, 3));
    }

    /// Events split at any byte across chunks read as if whole; a last line without its
    /// newline is read at the end; the tally keeps one line, not the stream.
    #[test]
    fn the_tally_reads_events_split_anywhere_and_holds_one_line() {
        for end in ["\n", "\r\n", "\r"] {
            let text = format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":\"Grüße\"}}}}]}}{end}{end}\
                 data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":5}}}}{end}{end}\
                 data: [DONE]"
            );
            for cut in 0..text.len() {
                let (a, b) = text.as_bytes().split_at(cut);
                let mut tally = StreamTally::default();
                tally.feed(a);
                tally.feed(b);
                tally.end();
                let read = (tally.chars_written, tally.usage, tally.done);
                assert_eq!(read, (5, Some((3, 5)), true), "{end:?} cut at {cut}");
            }
        }
        let mut tally = StreamTally::default();
        let long = format!("data: {{\"x\": \"{}\"}}", "a".repeat(3 * MAX_EVENT_LINE));
        tally.feed(long.as_bytes());
        assert!(tally.line.len() <= MAX_EVENT_LINE);
        // The rest of that event is not read as an event of its own.
        tally.feed(b"\ndata: [DONE]\n");
        assert!(!tally.done);
        tally.feed(b"\ndata: [DONE]\n");
        tally.end();
        assert!(tally.done && tally.line.is_empty());
    }

    /// An event's `data:` lines are one JSON text, whatever ends its lines; an event whose
    /// data is an error object is the stream's failure, though `[DONE]` follows.
    #[test]
    fn the_tally_reads_an_events_lines_together_and_its_errors() {
        for end in ["\n", "\r\n", "\r"] {
            let text = format!(
                "data: {{\"choices\":{end}data: [{{\"delta\":{{\"content\":\"abcd\"}}}}]}}{end}{end}\
                 data: {{\"choices\": [],{end}data: \"usage\": {{\"prompt_tokens\": 11, \"completion_tokens\": 22}}}}{end}{end}"
            );
            let tally = tally_of(&[&text]);
            assert_eq!((tally.chars_written, tally.usage), (4, Some((11, 22))), "{end:?}");
            assert!(!tally.errored);
        }
        let failed = tally_of(&["data: {\"error\": {\"message\": \"boom\"}}\n\ndata: [DONE]\n\n"]);
        assert!(failed.errored && failed.done);
        for code in ["400", "\"400\"", "\"422\""] {
            let refused = tally_of(&[&format!("data: {{\"error\": {{\"code\": {code}}}}}\n\n")]);
            assert!(refused.refused && !refused.errored, "{code}");
        }
        assert!(tally_of(&["data: {\"error\": {\"code\": \"500\"}}\n\n"]).errored);
    }

    #[test]
    fn an_upstream_s_absurd_usage_is_clamped_into_the_physical_ranges() {
        let model = ModelConfig::priced("m", 10_000.0, 10_000.0);
        /// Charges list prices (the trait's default); never called.
        struct ListPrices;
        impl Upstream for ListPrices {
            fn call<'a>(&'a self, _: UpstreamCall<'a>) -> BoxFuture<'a, Result<Answer, Failure>> {
                Box::pin(async { Err(Failure::final_("not called")) })
            }
        }
        let outcome = call_outcome(&ListPrices, &model, 1e300, u32::MAX, u32::MAX);
        assert!(outcome.validate().is_ok(), "{outcome:?}");
        assert_eq!(outcome.input_tokens, 100_000_000);
        assert_eq!(outcome.cost_usd, limits::COST_USD.hi);
    }
}
