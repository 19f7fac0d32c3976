//! `GET /v1/models` and `GET /v1/models/{id}`: the routes, listed as OpenAI models, since a
//! route is what a client names as `model`. Tools that list models at start-up find them.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api_error::{ApiError, ErrorResponses};
use crate::state::{with_router, ApiPath, AppState};

/// A route, as an OpenAI model object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelObject {
    /// The route's name: what a client sends as `model`.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Always 0: a route has no creation date.
    pub created: u64,
    /// Always `quiver`.
    pub owned_by: String,
}

/// The routes, as OpenAI's model list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// One model object per route.
    pub data: Vec<ModelObject>,
}

fn model(route: &str) -> ModelObject {
    ModelObject {
        id: route.into(),
        object: "model".into(),
        created: 0,
        owned_by: "quiver".into(),
    }
}

/// The routes, listed as OpenAI models (a route is what `model` names).
#[utoipa::path(
    get,
    path = "/v1/models",
    operation_id = "list_models",
    responses((status = 200, description = "The routes", body = ModelList), ErrorResponses)
)]
pub(crate) async fn list_models(State(state): State<Arc<AppState>>) -> Result<Json<ModelList>, ApiError> {
    let routes = with_router(&state, |router| Ok(router.route_names())).await?;
    Ok(Json(ModelList {
        object: "list".into(),
        data: routes.iter().map(|r| model(r)).collect(),
    }))
}

/// One route as an OpenAI model.
#[utoipa::path(
    get,
    path = "/v1/models/{id}",
    operation_id = "retrieve_model",
    params(("id" = String, Path, description = "The route's name")),
    responses((status = 200, description = "The route", body = ModelObject), ErrorResponses)
)]
pub(crate) async fn retrieve_model(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ModelObject>, ApiError> {
    let routes = with_router(&state, |router| Ok(router.route_names())).await?;
    if routes.contains(&id) {
        Ok(Json(model(&id)))
    } else {
        Err(ApiError::NotFound(format!(
            "no route `{id}`; GET /v1/models lists them"
        )))
    }
}
