//! The HTTP API: `build_app(state)` assembles the endpoint groups (`crate::decisions`,
//! [`crate::proxy`], `crate::status`) behind their tokens (`crate::auth`), the request
//! limits, the access log and the request timer. Nothing else lives here.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;

use crate::auth::{require, Access};
use crate::decisions::{feedback, outcome, route};
use crate::metrics::HttpLabels;
use crate::models::{list_models, retrieve_model};
use crate::request_limits::{self, RequestLimits};
pub use crate::state::AppState;
use crate::status::{
    healthz, metrics, openapi, route_canary, route_candidates, route_decisions, route_snapshot, route_state,
    ui,
};

/// The CORS policy of `origins` (none when empty; any with `*`): GET and POST with
/// bearer tokens and JSON bodies, and the decision headers readable by the page. The
/// origins were checked at start-up ([`crate::config::ServeConfig::check_cors`]).
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allowed = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let layer = CorsLayer::new()
        .allow_origin(allowed)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([
            HeaderName::from_static(crate::proxy::DECISION_HEADER),
            HeaderName::from_static(crate::proxy::MODEL_HEADER),
        ]);
    Some(layer)
}

/// The header naming each request, set by the layers below on every answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The span of a request in the access log: method, path and request id.
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = id
    )
}

/// Times every request into `quiver_http_request_seconds`, by endpoint and status class.
async fn track_request(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", MatchedPath::as_str)
        .to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = HttpLabels {
        endpoint,
        status: format!("{}xx", response.status().as_u16() / 100),
    };
    state
        .metrics
        .http_request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The axum app over `state`: every endpoint behind the request limits, every error in
/// OpenAI's JSON shape (unknown paths and methods included).
pub fn build_app(state: Arc<AppState>) -> axum::Router {
    let limits = RequestLimits::from(&state.config);
    // Each endpoint, outermost first: its tokens, its body read under the limits, then
    // (except the proxy, which keeps its own deadline so that it can fall back and record,
    // and so that a stream is bounded by its silences rather than its length) the answer's
    // deadline.
    let read_body = || middleware::from_fn_with_state(limits, request_limits::read_body);
    let deadline = || middleware::from_fn_with_state(limits, request_limits::deadline);
    let group = |router: axum::Router<Arc<AppState>>, access: Option<Access>, answered_at_once: bool| {
        let router = if answered_at_once {
            router.route_layer(deadline())
        } else {
            router
        };
        let router = router.route_layer(read_body());
        match access {
            Some(access) => router.route_layer(middleware::from_fn_with_state(
                (Arc::clone(&state), access),
                require,
            )),
            None => router,
        }
    };
    let open = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route("/ui", get(ui));
    let routing = axum::Router::new()
        .route("/v1/route", post(route))
        .route("/v1/embeddings", post(crate::passthrough::embeddings))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(retrieve_model));
    let reporting = axum::Router::new()
        .route("/v1/feedback", post(feedback))
        .route("/v1/outcome", post(outcome));
    let admin = axum::Router::new()
        .route("/v1/routes/{name}", get(route_state))
        .route("/v1/routes/{name}/snapshot", get(route_snapshot))
        .route("/v1/routes/{name}/candidates", get(route_candidates))
        .route("/v1/routes/{name}/canary", post(route_canary))
        .route("/v1/routes/{name}/decisions", get(route_decisions))
        .route("/metrics", get(metrics));
    let proxy = axum::Router::new()
        .route("/v1/chat/completions", post(crate::proxy::chat_completions))
        .route("/v1/completions", post(crate::proxy::completions));
    let app = group(open, None, true)
        .merge(group(routing, Some(Access::Route), true))
        .merge(group(reporting, Some(Access::Feedback), true))
        .merge(group(admin, Some(Access::Admin), true))
        .merge(group(proxy, Some(Access::Route), false))
        .fallback(request_limits::unknown_path)
        .method_not_allowed_fallback(request_limits::wrong_method)
        .layer(middleware::from_fn_with_state(limits, request_limits::check_head))
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(Arc::clone(&state), track_request))
        // The access log, one line per request at its answer's head, in the span of its
        // request id (the client's `x-request-id`, else a new UUID, echoed on the answer).
        // Layers added later run first: the id is set, then logged, then echoed.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(
                    DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(LatencyUnit::Micros),
                ),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    // Outermost, and only when origins are configured: a browser's preflight is answered
    // before tokens are asked for.
    let app = match cors(&state.config.cors_allow_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.with_state(state)
}
