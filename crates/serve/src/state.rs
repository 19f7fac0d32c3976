//! What every handler shares: the router (each route behind its own lock), the
//! configuration, the upstream client and the metrics; and the two ways a handler touches
//! the router.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::Json;
use serde::de::DeserializeOwned;

use crate::api_error::ApiError;
use crate::cache::ResponseCache;
use crate::cluster::Cluster;
use crate::config::ServeConfig;
use crate::deployments::Deployments;
use crate::embeddings::Embedders;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::router::{Observed, Pending, Router};
use crate::upstream::Upstream;

/// What every handler shares.
pub struct AppState {
    /// The router; changes run in place (they are brief), reads of its state on blocking
    /// threads.
    pub router: Router,
    /// The configuration.
    pub config: ServeConfig,
    /// The HTTP client of the embedding endpoints.
    pub http: reqwest::Client,
    /// The models' provider.
    pub upstream: Box<dyn Upstream>,
    /// What the server measures for `/metrics`.
    pub metrics: Metrics,
    /// The prompt embedders of routes with an embedding block.
    pub embedders: Embedders,
    /// The models' (and deployments') circuit breakers.
    pub health: Health,
    /// The models' deployments: limits and balancing.
    pub deployments: Deployments,
    /// The proxy's response cache.
    pub cache: ResponseCache,
    /// The cluster this replica shares its learning with, if any.
    pub cluster: Option<Cluster>,
    /// Work that outlives its request: calls whose clients went away, and outcomes on their
    /// way to the log. A stop waits for it before its final snapshot.
    pub background: tokio_util::task::TaskTracker,
}

impl AppState {
    /// What a decision on `route` for a prompt of `text`, asked with `headers`, takes from
    /// outside the router: the prompt's projected embedding, if the route has an embedding
    /// block and the embedding comes in time (see [`Embedders::embed`]); the models that
    /// cannot take the call: their circuit is open or, for a call the proxy makes (`call`:
    /// the tags it requires and the prompt's estimated tokens), none of their deployments
    /// can take it (see [`Deployments`]); and who asked (`crate::auth::caller`). Beside
    /// it, the prompt's embedding as its source gave it, for the semantic cache.
    pub async fn observe(
        &self,
        route: &str,
        text: &str,
        headers: &HeaderMap,
        call: Option<(&[String], u32)>,
    ) -> (Observed, Option<Vec<f32>>) {
        let (raw, embedding) = self
            .embedders
            .embed(&self.http, &self.metrics, route, text)
            .await
            .map(|e| (e.raw, e.projected))
            .unzip();
        let now = Instant::now();
        let mut unavailable = self.health.unavailable(route, now);
        let models = self
            .config
            .routes
            .iter()
            .filter(|r| r.name == route)
            .flat_map(|r| &r.models);
        // Deployments' breakers are keyed `model@deployment`: the deployments speak for them.
        unavailable.retain(|key, _| models.clone().any(|m| m.id == *key));
        if let Some(call) = call {
            for model in models {
                if let Some(no) = self
                    .deployments
                    .unavailable(route, model, call, &self.health, now)
                {
                    unavailable.entry(model.id.clone()).or_insert(no.reason);
                }
            }
        }
        let observed = Observed {
            embedding,
            unavailable,
            caller: crate::auth::caller(self, headers),
            calls: call.is_some(),
        };
        (observed, raw)
    }

    /// Waits until the log holds a change durably, timing the wait.
    pub async fn durable<T>(&self, pending: Pending<T>) -> Result<T, ApiError> {
        let started = Instant::now();
        let value = pending.durable().await?;
        self.metrics
            .log_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(value)
    }
}

/// A JSON body, the one extractor of the API's requests: malformed JSON is 400, well-formed
/// JSON of the wrong shape or types 422, a missing JSON content type or a compressed body
/// (which the server does not decode) 415, each in the API's error shape.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let encoding = request.headers().get(axum::http::header::CONTENT_ENCODING);
        if let Some(encoding) = encoding.filter(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity")) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "`content-encoding: {}` is not taken: send the JSON body uncompressed",
                String::from_utf8_lossy(encoding.as_bytes())
            )));
        }
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(e @ JsonRejection::JsonDataError(_)) => Err(ApiError::Invalid(e.body_text())),
            Err(e @ JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::UnsupportedMediaType(e.body_text()))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// A path's parameter, the API's other extractor: one that does not decode (a
/// percent-encoding that is not UTF-8, say) is 400 in the API's error shape.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// Runs a router operation on a blocking thread (it may wait for the routes' locks).
pub async fn with_router<T: Send + 'static>(
    state: &Arc<AppState>,
    op: impl FnOnce(&Router) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || op(&state.router))
        .await
        .map_err(|e| ApiError::Internal(format!("router task failed: {e}")))?
}

/// Makes a router change and waits until the log holds it durably. The change itself
/// (featurize, decide, stage) is brief and runs in place; the wait for the fsync sleeps as
/// a task, and concurrent changes share one fsync.
pub async fn change_router<T>(
    state: &Arc<AppState>,
    op: impl FnOnce(&Router) -> Result<Pending<T>, ApiError>,
) -> Result<T, ApiError> {
    let pending = op(&state.router)?;
    state.durable(pending).await
}
