//! The OpenAPI 3.1 document served at `/openapi.json`.

use serde_json::{json, Value};

/// The errors every endpoint may answer, each a JSON error in OpenAI's shape.
fn error_responses() -> Value {
    let errors = [
        ("400", "Body is not valid JSON of the expected shape"),
        ("401", "Missing or wrong bearer token"),
        ("404", "Unknown route or decision"),
        ("405", "The endpoint does not take this method"),
        (
            "408",
            "The body did not arrive, or the answer was not ready, in time",
        ),
        ("413", "The body is larger than max_body_bytes"),
        ("415", "The body is not application/json"),
        (
            "422",
            "Invalid values (a number outside its range names the field and the range)",
        ),
        ("431", "The request head is larger than max_header_bytes"),
        (
            "503",
            "The server is serving as many connections as it may; retry after Retry-After",
        ),
    ];
    let schema = json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
    Value::Object(
        errors
            .into_iter()
            .map(|(status, description)| {
                (
                    status.to_string(),
                    json!({"description": description, "content": schema}),
                )
            })
            .collect(),
    )
}

/// The document.
pub fn document() -> Value {
    let mut errors = error_responses();
    let json_body = |schema: &str| json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let ok = |description: &str| json!({"description": description, "content": {"application/json": {}}});
    let with = |mut base: Value, extra: Value| {
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        base
    };
    if let Some(e) = errors.as_object_mut() {
        e.insert(
            "502".into(),
            json!({"description": "Every upstream of the route failed"}),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Quiver", "version": env!("CARGO_PKG_VERSION"), "description": "Adaptive routing of LLM requests: route, proxy, feedback."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": "integer"}}}}},
                "RouteRequest": {"type": "object", "required": ["route"], "properties": {
                    "route": {"type": "string"},
                    "prompt": {"type": "string"},
                    "messages": {"type": "array", "items": {"type": "object", "properties": {"role": {"type": "string"}, "content": {"type": "string"}}}},
                    "features": {"type": "array", "items": {"type": "number"}},
                    "constraints": {"type": "object", "properties": {"require_tags": {"type": "array", "items": {"type": "string"}}, "exclude_tags": {"type": "array", "items": {"type": "string"}}, "only_arms": {"type": "array", "items": {"type": "string"}}, "max_cost_usd": {"type": "number"}}},
                    "objective": {"type": "object", "properties": {"w_cost": {"type": "number"}, "w_latency": {"type": "number"}}}
                }},
                "Feedback": {"type": "object", "required": ["decision_id", "quality"], "properties": {"decision_id": {"type": "string"}, "quality": {"type": "number", "minimum": 0, "maximum": 1}}},
                "Outcome": {"type": "object", "required": ["decision_id", "latency_ms"], "properties": {"decision_id": {"type": "string"}, "latency_ms": {"type": "number"}, "cost_usd": {"type": "number"}, "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"}, "error": {"type": "boolean"}, "quality": {"type": "number"}}},
                "ChatCompletionRequest": {"type": "object", "required": ["model", "messages"], "description": "OpenAI's chat completion request; `model` names a Quiver route.", "properties": {"model": {"type": "string"}, "messages": {"type": "array"}, "stream": {"type": "boolean"}}}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/route": {"post": {"summary": "Choose a model for a request", "requestBody": json_body("RouteRequest"), "responses": with(json!({"200": ok("decision_id, model, propensity, fallback order and per-model explanation")}), errors.clone())}},
            "/v1/chat/completions": {"post": {"summary": "OpenAI-compatible completion through the route's chosen model, with fallback; the decision id is in the x-quiver-decision-id header", "requestBody": json_body("ChatCompletionRequest"), "responses": with(json!({"200": ok("The upstream's completion (JSON, or text/event-stream when streaming)")}), errors.clone())}},
            "/v1/models": {"get": {"summary": "The routes, listed as OpenAI models (a route is what `model` names)", "responses": with(json!({"200": ok("object list, data: one model object per route")}), errors.clone())}},
            "/v1/models/{id}": {"get": {"summary": "One route as an OpenAI model", "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": with(json!({"200": ok("The model object")}), errors.clone())}},
            "/v1/feedback": {"post": {"summary": "Report a decision's quality (idempotent, accepted late)", "requestBody": json_body("Feedback"), "responses": with(json!({"200": ok("applied or already_applied")}), errors.clone())}},
            "/v1/outcome": {"post": {"summary": "Report what a routed call cost and how long it took", "requestBody": json_body("Outcome"), "responses": with(json!({"200": ok("applied or already_applied")}), errors.clone())}},
            "/v1/routes/{name}": {"get": {"summary": "Per-model counts, spend and latency of a route", "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": with(json!({"200": ok("Route state")}), errors.clone())}},
            "/v1/routes/{name}/snapshot": {"get": {"summary": "The route's learner state (admin)", "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": with(json!({"200": ok("Versioned learner snapshot")}), errors.clone())}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text/plain exposition format"}}}},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        }
    })
}
