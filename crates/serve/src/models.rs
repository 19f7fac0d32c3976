//! `GET /v1/models` and `GET /v1/models/{id}`: the routes, listed as OpenAI models, since a
//! route is what a client names as `model`. Tools that list models at start-up find them.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::state::{with_router, AppState};

fn model(route: &str) -> Value {
    json!({"id": route, "object": "model", "created": 0, "owned_by": "quiver"})
}

pub(crate) async fn list_models(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let routes = with_router(&state, |router| Ok(router.route_names())).await?;
    let data: Vec<Value> = routes.iter().map(|r| model(r)).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub(crate) async fn retrieve_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let routes = with_router(&state, |router| Ok(router.route_names())).await?;
    if routes.contains(&id) {
        Ok(Json(model(&id)))
    } else {
        Err(ApiError::NotFound(format!(
            "no route `{id}`; GET /v1/models lists them"
        )))
    }
}
