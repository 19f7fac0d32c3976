//! What a request may take of the server: the size of its head and body, the time to
//! send its body and to be answered, and the JSON errors past each limit.
//!
//! The body is read here, whole, under its size limit and its deadline, after the token
//! check ([`crate::auth`]) and before any handler runs: a client that trickles its body is answered 408 however slowly it sends, and a
//! chunked body that grows past the limit gets 413 like one that declares its length.
//! Bodies are small (1 MiB by default), so holding one in memory costs what the handler
//! would have held anyway. The time to send the head is bounded by the connection itself
//! (see [`crate::server`]).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::LengthLimitError;

use crate::api_error::ApiError;
use crate::config::ServeConfig;

/// The limits of one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Largest body, bytes.
    pub max_body_bytes: usize,
    /// Largest head (request line and headers), bytes.
    pub max_header_bytes: usize,
    /// Time to receive the body.
    pub body_read_timeout: Duration,
    /// Time to answer, for the endpoints that answer at once (not the proxy's streams).
    pub request_timeout: Duration,
}

impl From<&ServeConfig> for RequestLimits {
    fn from(config: &ServeConfig) -> Self {
        RequestLimits {
            max_body_bytes: config.max_body_bytes,
            max_header_bytes: config.max_header_bytes,
            body_read_timeout: Duration::from_millis(config.body_read_timeout_ms),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
        }
    }
}

/// The size of a request's head as sent: the request line and every header line.
fn head_bytes(request: &Request) -> usize {
    let line = request.method().as_str().len() + request.uri().to_string().len() + 11;
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + headers
}

/// The answer to a request whose body was not read to its end: the connection closes
/// after it, and says so, so that the client does not send its next request on it.
pub(crate) fn refused(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

/// Checks the head's size, for every request (an unknown path too).
pub async fn check_head(State(limits): State<RequestLimits>, request: Request, next: Next) -> Response {
    if head_bytes(&request) > limits.max_header_bytes {
        return refused(ApiError::HeadersTooLarge(format!(
            "the request line and headers exceed {} bytes",
            limits.max_header_bytes
        )));
    }
    next.run(request).await
}

/// Reads the body under its limits and hands the request on with the body in memory. It
/// runs per endpoint, after the token check: a caller without a token is refused before
/// the server reads a byte of its body.
pub async fn read_body(State(limits): State<RequestLimits>, request: Request, next: Next) -> Response {
    let too_large = || {
        refused(ApiError::PayloadTooLarge(format!(
            "the request body exceeds {} bytes",
            limits.max_body_bytes
        )))
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body_bytes as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, limits.max_body_bytes);
    let bytes = match tokio::time::timeout(limits.body_read_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            return match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<LengthLimitError>()) {
                Some(_) => too_large(),
                None => refused(ApiError::BadRequest(format!(
                    "reading the request body failed: {e}"
                ))),
            };
        }
        Err(_) => {
            return refused(ApiError::RequestTimeout(format!(
                "the request body did not arrive within {} ms",
                limits.body_read_timeout.as_millis()
            )))
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Answers 408 when the handler takes longer than the request deadline.
pub async fn deadline(State(limits): State<RequestLimits>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout(format!(
            "the request was not answered within {} ms",
            limits.request_timeout.as_millis()
        ))
        .into_response(),
    }
}

/// The answer for a path no endpoint serves.
/// Its body is never read, so the connection closes after it (see [`refused`]).
pub async fn unknown_path(method: Method, uri: Uri) -> Response {
    refused(ApiError::NotFound(format!(
        "no endpoint at {method} {}; /openapi.json lists the API",
        uri.path()
    )))
}

/// The answer for a method an endpoint does not take; its body is never read, so the
/// connection closes after it.
pub async fn wrong_method(method: Method, uri: Uri) -> Response {
    refused(ApiError::MethodNotAllowed(format!(
        "{} does not take {method}; /openapi.json lists the API",
        uri.path()
    )))
}

/// The answer on a connection beyond the server's limit; the connection then closes.
pub async fn overloaded() -> Response {
    let mut response = refused(ApiError::Overloaded(
        "the server is serving as many connections as it may; retry shortly".into(),
    ));
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}
