//! HTTP errors: every failure becomes a status and a JSON body in OpenAI's error shape,
//! `{"error": {"message", "type", "param", "code"}}`, so OpenAI SDKs surface the reason.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use quiver_bandit::ErrorKind;
use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

use crate::error::ServeError;

/// An error answered over HTTP.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the body is not the JSON the endpoint takes.
    BadRequest(String),
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 404: no such route, decision or endpoint.
    NotFound(String),
    /// 405: the endpoint does not take this method.
    MethodNotAllowed(String),
    /// 408: the request (or its body) did not arrive, or was not answered, in time.
    RequestTimeout(String),
    /// 409: the request contradicts what the server holds (another quality for a decision).
    Conflict(String),
    /// 413: the request body is too large.
    PayloadTooLarge(String),
    /// 415: the body is not sent as JSON.
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid values.
    Invalid(String),
    /// 431: the request head is too large.
    HeadersTooLarge(String),
    /// 429: a limit of the route (a spend cap) refuses requests until `Retry-After` seconds.
    TooManyRequests(String, u64),
    /// 502: every upstream failed.
    Upstream(String),
    /// 503: the server serves as many connections as it may.
    Overloaded(String),
    /// 500: a fault of the server; details go to the log, not the client.
    Internal(String),
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        match &e {
            ServeError::UnknownRoute(_) | ServeError::OtherReplica { .. } | ServeError::NoCanary(_) => {
                ApiError::NotFound(e.to_string())
            }
            ServeError::BadDecisionId(_) | ServeError::EmptyRequest | ServeError::FeatureCount { .. } => {
                ApiError::Invalid(e.to_string())
            }
            ServeError::Bandit(b) => match b.kind() {
                ErrorKind::UnknownDecision(_) | ErrorKind::UnknownArm { .. } => {
                    ApiError::NotFound(e.to_string())
                }
                ErrorKind::QualityConflict { .. } | ErrorKind::OutcomeConflict { .. } => {
                    ApiError::Conflict(e.to_string())
                }
                ErrorKind::NotFinite { .. }
                | ErrorKind::OutOfRange { .. }
                | ErrorKind::DimensionMismatch { .. }
                | ErrorKind::NoEligibleArm { .. }
                | ErrorKind::InvalidPolicySpec { .. } => ApiError::Invalid(e.to_string()),
                _ => ApiError::Internal(e.to_string()),
            },
            ServeError::SpendCap { message, retry_after } => {
                ApiError::TooManyRequests(message.clone(), retry_after.as_secs().max(1))
            }
            ServeError::Config(_)
            | ServeError::Io { .. }
            | ServeError::Snapshot { .. }
            | ServeError::ContextChanged { .. }
            | ServeError::FinalSnapshot(_)
            | ServeError::Poisoned(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl ApiError {
    /// The error as OpenAI's completion endpoints answer it: a request they cannot take is
    /// a 400 there, malformed or of invalid values, so that an OpenAI SDK raises its
    /// `BadRequestError`.
    pub fn as_openai(self) -> Self {
        match self {
            ApiError::Invalid(message) => ApiError::BadRequest(message),
            other => other,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            ApiError::TooManyRequests(_, seconds) => Some(*seconds),
            _ => None,
        };
        let (status, kind, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "invalid_request_error", m),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or invalid bearer token".to_string(),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found_error", m),
            ApiError::MethodNotAllowed(m) => (StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", m),
            ApiError::RequestTimeout(m) => (StatusCode::REQUEST_TIMEOUT, "timeout_error", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "invalid_request_error", m),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", m),
            ApiError::HeadersTooLarge(m) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "invalid_request_error",
                m,
            ),
            ApiError::UnsupportedMediaType(m) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request_error", m)
            }
            ApiError::Invalid(m) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error", m),
            ApiError::TooManyRequests(m, _) => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", m),
            ApiError::Upstream(m) => (StatusCode::BAD_GATEWAY, "upstream_error", m),
            ApiError::Overloaded(m) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded_error", m),
            ApiError::Internal(detail) => {
                tracing::error!("internal error: {detail}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "something went wrong; see the server log".to_string(),
                )
            }
        };
        let body = ErrorBody {
            error: ErrorDetail {
                message,
                kind: kind.into(),
                param: None,
                code: status.as_u16().to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// Every error's body, in OpenAI's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The reason, its kind and the status.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `not_found_error`,
    /// `timeout_error`, `rate_limit_error`, `upstream_error`, `overloaded_error` or
    /// `server_error`.
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: String,
    /// The parameter at fault, as OpenAI's errors have it; the message names it, and this
    /// is null.
    pub param: Option<String>,
    /// The HTTP status, as text: OpenAI's `code` is a string (or null), and a typed
    /// client reads a number there as a malformed error.
    pub code: String,
}

/// The errors any endpoint may answer (each an [`ErrorBody`]): the OpenAPI document lists
/// them under every operation, and the proxy adds 502.
#[derive(IntoResponses)]
#[allow(dead_code)] // a description of responses, never built
pub enum ErrorResponses {
    /// The body is not JSON, or a path segment is not UTF-8 text.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// A bearer token is missing or wrong.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// No such route, decision, model or path.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The path does not take this method.
    #[response(status = 405)]
    MethodNotAllowed(ErrorBody),
    /// The body did not arrive, or the answer was not ready, in time.
    #[response(status = 408)]
    RequestTimeout(ErrorBody),
    /// Another quality for a decision that learned one, or another outcome for a decision
    /// whose call an outcome reported otherwise.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body is larger than `max_body_bytes`.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// The body is not sent as `application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// JSON, but not of the endpoint's shape (a field missing, unknown or of another
    /// type), or a value is invalid; the message names the field (and its range).
    #[response(status = 422)]
    Invalid(ErrorBody),
    /// The request head is larger than `max_header_bytes`.
    #[response(status = 431)]
    HeadersTooLarge(ErrorBody),
    /// The route reached a spend cap; `Retry-After` says when its period ends.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    TooManyRequests(ErrorBody),
    /// A fault of the server; the details are in its log.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The server serves as many connections as it may; retry after `Retry-After`.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Overloaded(ErrorBody),
}

/// What an endpoint that calls upstream may answer besides its success: the errors of
/// [`ErrorResponses`], a request's own faults as the upstream may relay them (any JSON),
/// and 502 when the upstream failed.
#[derive(IntoResponses)]
#[allow(dead_code)] // a description of responses, never built
pub enum UpstreamResponses {
    /// A malformed or invalid request (OpenAI's status for both); or an upstream's
    /// refusal, relayed unchanged.
    #[response(status = 400, headers(("x-quiver-decision-id" = String, description = "On the proxy, the decision made, if one was")))]
    BadRequest(serde_json::Value),
    /// A bearer token is missing or wrong.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// No such route or model.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The path does not take this method.
    #[response(status = 405)]
    MethodNotAllowed(ErrorBody),
    /// The body or the answer did not come in time.
    #[response(status = 408, headers(("x-quiver-decision-id" = String, description = "On the proxy, the decision made, if one was")))]
    RequestTimeout(ErrorBody),
    /// The body is too large, here or upstream (relayed unchanged).
    #[response(status = 413, headers(("x-quiver-decision-id" = String, description = "On the proxy, the decision made, if one was")))]
    PayloadTooLarge(serde_json::Value),
    /// The body is not JSON, here or upstream (relayed unchanged).
    #[response(status = 415, headers(("x-quiver-decision-id" = String, description = "On the proxy, the decision made, if one was")))]
    UnsupportedMediaType(serde_json::Value),
    /// An upstream's refusal of an invalid value, relayed unchanged.
    #[response(status = 422, headers(("x-quiver-decision-id" = String, description = "On the proxy, the decision made, if one was")))]
    Invalid(serde_json::Value),
    /// The route reached a spend cap, or every model's deployments their rate limits; retry
    /// after `Retry-After`.
    #[response(
        status = 429,
        headers(
            ("Retry-After" = u64, description = "Seconds to wait"),
            ("x-quiver-decision-id" = String, description = "On the proxy, the decision made, if one was")
        )
    )]
    TooManyRequests(ErrorBody),
    /// The request head is too large.
    #[response(status = 431)]
    HeadersTooLarge(ErrorBody),
    /// A fault of the server.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The upstream failed (on the proxy: every model of the route).
    #[response(
        status = 502,
        headers(("x-quiver-decision-id" = String, description = "On the proxy, the decision whose calls failed"))
    )]
    Upstream(ErrorBody),
    /// Too many connections; retry after `Retry-After`.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Overloaded(ErrorBody),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spend_cap_is_a_429_with_retry_after() {
        let error = ServeError::SpendCap {
            message: "route `r` reached its daily spend cap".into(),
            retry_after: std::time::Duration::from_millis(3_600_500),
        };
        let response = ApiError::from(error).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "3600");
    }
}
