//! Bearer tokens: each group of endpoints accepts its own token set and the admin tokens.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api_error::ApiError;
use crate::request_limits;
use crate::state::AppState;

/// Which token set may call an endpoint.
#[derive(Clone, Copy)]
pub enum Access {
    /// Routing and proxying.
    Route,
    /// Outcomes and feedback.
    Feedback,
    /// Everything, including reading state.
    Admin,
}

/// The middleware in front of each group of endpoints, before its body is read: the
/// request goes on only with a token its `access` accepts ([`authorize`]), else it is
/// answered 401 and its connection closed.
pub(crate) async fn require(
    State((state, access)): State<(Arc<AppState>, Access)>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match authorize(&state, request.headers(), access) {
        Ok(()) => Ok(next.run(request).await),
        // The body is still unread: the connection closes after the answer.
        Err(e) => Ok(request_limits::refused(e)),
    }
}

/// The bearer token of a request, if it sent one (the scheme's name in any case, as RFC
/// 9110 has it).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start())
}

/// Who sent a routing request (`/v1/route`, the proxy): the first 16 hex digits of the
/// SHA-256 of its bearer token, so that logs and spend caps can tell callers apart without
/// holding a token. None when routing is open to anyone (any string would pass, so none
/// names a caller) or no token came.
pub(crate) fn caller(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let auth = &state.config.auth;
    if auth.route_tokens.is_empty() && auth.admin_tokens.is_empty() {
        return None;
    }
    let digest = Sha256::digest(bearer(headers)?.as_bytes());
    Some(hex(&digest[..8]))
}

/// `bytes` in lower-case hex, as digests are named in logs, keys and labels.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the bearer token of a request against the tokens `access` accepts (admin
/// tokens are accepted everywhere; an empty token set leaves the endpoint open). Every
/// token is compared, each in constant time, so the time taken tells nothing of how
/// much of a token was right.
fn authorize(state: &AppState, headers: &HeaderMap, access: Access) -> Result<(), ApiError> {
    let auth = &state.config.auth;
    let own: &[String] = match access {
        Access::Route => &auth.route_tokens,
        Access::Feedback => &auth.feedback_tokens,
        Access::Admin => &[],
    };
    if own.is_empty() && auth.admin_tokens.is_empty() {
        return Ok(());
    }
    let given = bearer(headers).unwrap_or_default();
    let matched = own
        .iter()
        .chain(&auth.admin_tokens)
        .fold(subtle::Choice::from(0), |any, token| {
            any | token.as_bytes().ct_eq(given.as_bytes())
        });
    if bool::from(matched) && !given.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for (value, token) in [
            ("Bearer t1", Some("t1")),
            ("bearer t1", Some("t1")),
            ("BEARER  t1", Some("t1")),
            ("Basic dTpw", None),
            ("Bearer", None),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer(&headers), token, "{value}");
        }
    }
}
