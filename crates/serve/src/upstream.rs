//! Calls to the models' providers: the [`Upstream`] seam the gateway calls through, and
//! its OpenAI-compatible HTTP implementation, which owns each model's URL and key and the
//! limits of one attempt. Which model to call, retries, fallback and what is learned are
//! the gateway's (`crate::proxy`); an upstream makes one attempt and says what came of it.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde_json::Value;

use crate::config::{ModelConfig, ServeConfig};

/// One attempt at a model: `body` goes to `path` (after the model's `base_url`), with
/// `model` already rewritten to the provider's name.
pub struct UpstreamCall<'a> {
    /// The model called.
    pub model: &'a ModelConfig,
    /// The API path, e.g. `/chat/completions`.
    pub path: &'static str,
    /// The request body.
    pub body: &'a Value,
    /// Whether the answer is an event stream.
    pub stream: bool,
    /// When the whole request must be done.
    pub deadline: Instant,
}

/// A provider of models, called one attempt at a time.
pub trait Upstream: Send + Sync {
    /// Makes one attempt; any failure is a reason to fall back (see [`Failure`]).
    fn call<'a>(&'a self, call: UpstreamCall<'a>) -> BoxFuture<'a, Result<Answer, Failure>>;

    /// What a call to `model` billed for `input_tokens` and `output_tokens` cost, USD: by
    /// default at the model's list prices (`quiver_bandit::Arm::cost_usd`, the one formula);
    /// a provider that charges otherwise says so here.
    fn cost_usd(&self, model: &ModelConfig, input_tokens: u32, output_tokens: u32) -> f64 {
        model
            .arm()
            .cost_usd(f64::from(input_tokens), f64::from(output_tokens))
    }
}

/// The body of a streamed answer after its first chunk.
pub type UpstreamBody = futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>;

/// A usable answer of an upstream, with the `x-*` headers to pass on.
pub enum Answer {
    /// A whole JSON answer: its bytes and their JSON.
    Complete {
        /// The bytes, to pass on as they came.
        body: Bytes,
        /// The same, parsed.
        json: Value,
        /// The upstream's `x-*` headers.
        passed: Vec<(header::HeaderName, HeaderValue)>,
    },
    /// An event stream that has sent its first chunk.
    Stream {
        /// The first chunk.
        first: Bytes,
        /// The rest, as it comes.
        rest: UpstreamBody,
        /// The upstream's `x-*` headers.
        passed: Vec<(header::HeaderName, HeaderValue)>,
    },
    /// The upstream refused the request itself ([`is_client_error`]): relayed to the
    /// client as it came, neither retried elsewhere nor learned as the model's failure.
    Refused {
        /// The upstream's status.
        status: StatusCode,
        /// Its body.
        body: Bytes,
        /// Its content type.
        content_type: Option<HeaderValue>,
    },
}

/// Any OpenAI-compatible HTTP API: `POST {base_url}{path}` with the model's key as a
/// bearer token.
///
/// Limits of one attempt: its first byte (the response head and, for a stream, the first
/// chunk) must come within `upstream_timeout_ms` and the request's deadline; a complete
/// body must then arrive with no silence longer than `upstream_idle_timeout_ms`, within the
/// deadline and `max_upstream_body_bytes`.
pub struct OpenAiCompatible {
    http: reqwest::Client,
    first_byte: Duration,
    idle: Duration,
    max_body_bytes: usize,
}

impl OpenAiCompatible {
    /// The upstream over `http` with the limits of `config`.
    pub fn new(http: reqwest::Client, config: &ServeConfig) -> Self {
        OpenAiCompatible {
            http,
            first_byte: Duration::from_millis(config.upstream_timeout_ms),
            idle: Duration::from_millis(config.upstream_idle_timeout_ms),
            max_body_bytes: config.max_upstream_body_bytes,
        }
    }

    async fn attempt(&self, call: UpstreamCall<'_>) -> Result<Answer, Failure> {
        let UpstreamCall {
            model,
            path,
            body,
            stream,
            deadline,
        } = call;
        let base_url = model
            .base_url
            .as_ref()
            .ok_or_else(|| Failure::final_("no base_url configured"))?;
        let first_byte_by = deadline.min(Instant::now() + self.first_byte);
        let mut request = self
            .http
            .post(format!("{}{path}", base_url.trim_end_matches('/')))
            .json(body);
        if let Some(key) = model.api_key_env.as_ref().and_then(|v| std::env::var(v).ok()) {
            request = request.bearer_auth(key);
        }
        let no_first_byte = || format!("no first byte within {} ms", self.first_byte.as_millis());
        let response = tokio::time::timeout_at(first_byte_by.into(), request.send())
            .await
            .map_err(|_| no_first_byte())?
            .map_err(|e| Failure {
                retryable: e.is_connect(),
                ..Failure::final_(e.to_string())
            })?;
        let (limit, idle) = (self.max_body_bytes, self.idle);
        let status = response.status();
        if is_client_error(status) {
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let body = read_whole(Box::pin(response.bytes_stream()), idle, deadline, limit).await?;
            return Ok(Answer::Refused {
                status,
                body,
                content_type,
            });
        }
        if !status.is_success() {
            // A rate limit that names no wait is still one: the model rests for a second.
            let retry_after = match status.as_u16() {
                429 => Some(retry_after(&response).unwrap_or(RATE_LIMIT_WAIT)),
                503 => retry_after(&response),
                _ => None,
            };
            return Err(Failure {
                retryable: status.is_server_error() && retry_after.is_none(),
                retry_after,
                ..Failure::final_(format!("upstream answered {status}"))
            });
        }
        let passed = extension_headers(&response);
        if !stream && response.content_length().is_some_and(|len| len > limit as u64) {
            return Err(format!("the body is larger than {limit} bytes").into());
        }
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let mut body: UpstreamBody = Box::pin(response.bytes_stream());
        if stream {
            let event_stream = |t: &HeaderValue| {
                t.as_bytes()
                    .get(..17)
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"text/event-stream"))
            };
            if let Some(other) = content_type.filter(|t| !event_stream(t)) {
                return Err(Failure::final_(format!(
                    "asked to stream, the upstream answered {}",
                    String::from_utf8_lossy(other.as_bytes())
                )));
            }
            // The first event, past the comments (keep-alives) some providers send first.
            let mut first = Vec::new();
            while !first
                .split(|&b| b == b'\n' || b == b'\r')
                .any(|line| line.starts_with(b"data:"))
            {
                if first.len() > limit {
                    return Err(format!("no event in the stream's first {limit} bytes").into());
                }
                match tokio::time::timeout_at(first_byte_by.into(), body.next()).await {
                    Err(_) => return Err(no_first_byte().into()),
                    Ok(None) => return Err(Failure::final_("the stream ended before its first event")),
                    Ok(Some(Err(e))) => return Err(format!("reading the stream failed: {e}").into()),
                    Ok(Some(Ok(chunk))) => first.extend_from_slice(&chunk),
                }
            }
            return Ok(Answer::Stream {
                first: first.into(),
                rest: body,
                passed,
            });
        }
        let bytes = read_whole(body, idle, deadline, limit).await?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(json) => Ok(Answer::Complete {
                body: bytes,
                json,
                passed,
            }),
            Err(_) => Err(Failure::final_("the upstream's body is not JSON")),
        }
    }
}

impl Upstream for OpenAiCompatible {
    fn call<'a>(&'a self, call: UpstreamCall<'a>) -> BoxFuture<'a, Result<Answer, Failure>> {
        Box::pin(self.attempt(call))
    }
}

/// An upstream status that blames the request, not the model: another model would refuse
/// it too (400, 413, 415, 422). A 404 (a retired model, a wrong `base_url` or
/// `upstream_model`), key and quota problems (401, 403, 429) and the upstream's own
/// failures are the model's: they fall back.
pub fn is_client_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 413 | 415 | 422)
}

/// Why an upstream call failed, and what that allows next.
#[derive(Debug)]
pub struct Failure {
    /// What happened.
    pub message: String,
    /// A 5xx status without `Retry-After`, or a failed connection: the same model may be
    /// called again after a backoff.
    pub retryable: bool,
    /// A 429 or 503's `Retry-After`: the model's breaker opens for that long.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure that another call to the model would not mend soon.
    pub fn final_(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::final_(message)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How long a model that answered 429 without `Retry-After` rests: OpenAI's limits are
/// per minute and reset gradually, so a second lets some capacity return without leaving
/// the model out of a whole minute's decisions.
const RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);

/// The response's `Retry-After`, in seconds or as an HTTP date.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    wait_of(value, std::time::SystemTime::now())
}

/// The wait a `Retry-After` value asks for at `now` (RFC 9110, 10.2.3): seconds, or an
/// HTTP date (a date past is no wait). A day is past any cooldown the breaker keeps
/// (`max_cooldown_ms` bounds it further).
fn wait_of(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    const DAY: Duration = Duration::from_secs(86_400);
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        // A negative or non-finite value is no answer (`NaN.min(x)` is `x`: checked first).
        return seconds
            .is_finite()
            .then(|| Duration::try_from_secs_f64(seconds.min(DAY.as_secs_f64())).ok())
            .flatten();
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO).min(DAY))
}

/// The upstream's own `x-*` headers, to pass on to the client (the gateway keeps its own:
/// `crate::proxy::pass_on`).
fn extension_headers(upstream: &reqwest::Response) -> Vec<(header::HeaderName, HeaderValue)> {
    upstream
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-"))
        .filter_map(|(name, value)| {
            let name = header::HeaderName::from_bytes(name.as_str().as_bytes()).ok()?;
            let value = HeaderValue::from_bytes(value.as_bytes()).ok()?;
            Some((name, value))
        })
        .collect()
}

/// A whole body, with no silence longer than `idle`, by `deadline`, of at most `limit`
/// bytes.
pub async fn read_whole(
    mut body: UpstreamBody,
    idle: Duration,
    deadline: Instant,
    limit: usize,
) -> Result<Bytes, String> {
    // The chunks are kept as they came and joined once complete: growing one buffer
    // would allocate (and leave to the allocator) every size up to the limit.
    let mut chunks = Vec::new();
    let mut size = 0;
    loop {
        let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, body.next()).await {
            Err(_) => return Err(format!("the body stalled for {} ms", wait.as_millis())),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(format!("reading the body failed: {e}")),
            Ok(Some(Ok(chunk))) if size + chunk.len() > limit => {
                return Err(format!("the body is larger than {limit} bytes"))
            }
            Ok(Some(Ok(chunk))) => {
                size += chunk.len();
                chunks.push(chunk);
            }
        }
    }
    Ok(Bytes::from(chunks.concat()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_retry_after(value: &str) -> reqwest::Response {
        let response = axum::http::Response::builder()
            .status(429)
            .header(header::RETRY_AFTER, value)
            .body(Vec::<u8>::new())
            .unwrap_or_default();
        reqwest::Response::from(response)
    }

    #[test]
    fn retry_after_is_read_in_seconds_within_a_day() {
        assert_eq!(retry_after(&with_retry_after("2")), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after(&with_retry_after(" 0.5 ")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            retry_after(&with_retry_after("1e20")),
            Some(Duration::from_secs(86_400))
        );
        for unread in [
            "-1",
            "soon",
            "Wed, 41 Oct 2026 07:28:00 GMT",
            "NaN",
            "inf",
            "-inf",
        ] {
            assert_eq!(retry_after(&with_retry_after(unread)), None, "{unread}");
        }
    }

    #[test]
    fn retry_after_is_read_as_an_http_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        let wait = |value| wait_of(value, now);
        assert_eq!(
            wait("Wed, 21 Oct 2026 07:28:30 GMT"),
            Some(Duration::from_secs(30))
        );
        // The obsolete forms RFC 9110 asks a recipient to read.
        assert_eq!(
            wait("Wednesday, 21-Oct-26 07:29:00 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(wait("Wed Oct 21 07:28:02 2026"), Some(Duration::from_secs(2)));
        assert_eq!(
            wait("Wed, 21 Oct 2026 07:27:00 GMT"),
            Some(Duration::ZERO),
            "a date past"
        );
        assert_eq!(
            wait("Fri, 21 Oct 2067 07:28:00 GMT"),
            Some(Duration::from_secs(86_400))
        );
    }
}
