//! `quiver serve --demo`: simulated upstream providers beside the router, on 127.0.0.1.
//!
//! Each model of the built-in scenario becomes a SIMULATED OpenAI-compatible endpoint that
//! answers after a latency drawn from the scenario's LLMPerf calibration (scaled down ten
//! times so the demo is quick), fails 2% of calls, and answers well with the model's
//! calibrated accuracy for the prompt's kind of task. The simulated quality comes back in
//! the `x-quiver-simulated-quality` header, so a new user can send it to `/v1/feedback`
//! and watch the router learn, without any API key. The endpoints embed too
//! (`/v1/embeddings` passes through to them): the prompt's hashed features, labelled
//! simulated, not a sentence embedding.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use quiver_bandit::{Featurizer, HashingFeaturizer, DEFAULT_LEARNERS, DEFAULT_ROUTE_POLICY};
use quiver_serve::{ModelConfig, RouteConfig, ServeConfig};
use quiver_sim::scenario::{ArmSpec, Scenario};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

struct Simulated {
    arms: Vec<ArmSpec>,
    rng: Mutex<ChaCha8Rng>,
}

/// The scenario task a prompt most looks like.
fn task_of(prompt: &str) -> &'static str {
    let lower = prompt.to_lowercase();
    if ["def ", "function", "python", "code", "```"]
        .iter()
        .any(|k| lower.contains(k))
    {
        "code"
    } else if lower.contains("a)") || lower.contains("which of the following") || lower.contains("why") {
        "reasoning"
    } else {
        "commonsense"
    }
}

/// A simulated `/chat/completions`.
async fn chat(
    State(sim): State<Arc<Simulated>>,
    Path(index): Path<usize>,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    let prompt: String = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| x["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    complete(&sim, index, &prompt, &body, false).await
}

/// A simulated `/completions` (the text API).
async fn text(
    State(sim): State<Arc<Simulated>>,
    Path(index): Path<usize>,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    let prompt = body["prompt"].as_str().unwrap_or_default().to_string();
    complete(&sim, index, &prompt, &body, true).await
}

/// An answer to `prompt`, in the chat or the text API's shape.
async fn complete(
    sim: &Simulated,
    index: usize,
    prompt: &str,
    body: &Value,
    text: bool,
) -> axum::response::Response {
    let Some(arm) = sim.arms.get(index) else {
        return (axum::http::StatusCode::NOT_FOUND, "no such simulated model").into_response();
    };
    let task = task_of(prompt);
    let (fails, good, latency_ms) = {
        let mut rng = sim.rng.lock().unwrap_or_else(|e| e.into_inner());
        let z: f64 = rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut *rng);
        let out = arm.output_tokens.get(task).copied().unwrap_or(100.0);
        let latency =
            (arm.latency.ttft_ms + arm.latency.ms_per_output_token * out) * (arm.latency.sigma * z).exp();
        let accuracy = arm.accuracy.get(task).copied().unwrap_or(0.5);
        (
            rng.random::<f64>() < 0.02,
            rng.random::<f64>() < accuracy,
            latency / 10.0,
        )
    };
    tokio::time::sleep(Duration::from_millis(latency_ms as u64)).await;
    if fails {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "simulated outage").into_response();
    }
    let quality = if good { 1.0 } else { 0.0 };
    let prompt_tokens = quiver_bandit::features::estimate_tokens(prompt);
    let completion_tokens = arm.output_tokens.get(task).copied().unwrap_or(100.0) as u32;
    let content = format!(
        "[SIMULATED {}] a {} answer to a {task} request",
        arm.id,
        if good { "good" } else { "poor" }
    );
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens});
    let simulated = [("x-quiver-simulated-quality", quality.to_string())];
    if body["stream"].as_bool() == Some(true) {
        // Server-sent events as OpenAI streams them: the content, the finish with usage, [DONE].
        let chunk = |delta: Value, finish: Value, usage: Value| {
            let mut event = if text {
                let words = delta["content"].as_str().unwrap_or_default();
                json!({"id": "simulated", "object": "text_completion", "created": created,
                    "model": arm.id, "choices": [{"index": 0, "text": words, "finish_reason": finish}]})
            } else {
                json!({"id": "simulated", "object": "chat.completion.chunk", "created": created,
                    "model": arm.id, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            if !usage.is_null() {
                event["usage"] = usage;
            }
            format!("data: {event}\n\n")
        };
        let events = [
            chunk(
                json!({"role": "assistant", "content": content}),
                Value::Null,
                Value::Null,
            ),
            chunk(json!({}), json!("stop"), usage),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        return (
            simulated,
            [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
            events,
        )
            .into_response();
    }
    let (object, choice) = if text {
        (
            "text_completion",
            json!({"index": 0, "finish_reason": "stop", "text": content}),
        )
    } else {
        let message = json!({"role": "assistant", "content": content});
        (
            "chat.completion",
            json!({"index": 0, "finish_reason": "stop", "message": message}),
        )
    };
    let answer = json!({
        "id": "simulated",
        "object": object,
        "created": created,
        "model": arm.id,
        "choices": [choice],
        "usage": usage
    });
    (simulated, axum::Json(answer)).into_response()
}

/// A simulated `/embeddings`: each input's hashed features (`quiver_bandit`'s featurizer).
async fn embed(Path(index): Path<usize>, axum::Json(body): axum::Json<Value>) -> axum::response::Response {
    let texts: Vec<String> = match &body["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap_or_default().to_string())
            .collect(),
        _ => {
            let error = json!({"error": {"message": "`input` must be a string or strings", "type": "invalid_request_error", "param": "input", "code": null}});
            return (axum::http::StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
        }
    };
    let featurizer = HashingFeaturizer::default();
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let features = featurizer
                .featurize(text, &[])
                .map(|c| c.features)
                .unwrap_or_default();
            json!({"object": "embedding", "index": i, "embedding": features})
        })
        .collect();
    let tokens: u32 = texts
        .iter()
        .map(|t| quiver_bandit::features::estimate_tokens(t))
        .sum();
    let answer = json!({"object": "list", "data": data, "model": format!("simulated-{index}"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    ([("x-quiver-simulated", "true")], axum::Json(answer)).into_response()
}

/// Starts the simulated providers and returns the server configuration that routes to them.
pub async fn demo_config(listen: Option<String>) -> Result<ServeConfig> {
    let scenario = Scenario::builtin()?;
    let sim = Arc::new(Simulated {
        arms: scenario.arms.clone(),
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(scenario.seed)),
    });
    let app = axum::Router::new()
        .route("/simulated/{index}/chat/completions", axum::routing::post(chat))
        .route("/simulated/{index}/completions", axum::routing::post(text))
        .route("/simulated/{index}/embeddings", axum::routing::post(embed))
        .with_state(sim);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    eprintln!("quiver serve --demo: SIMULATED upstream providers on http://{addr} (no real model is called)");
    let models = scenario
        .arms
        .iter()
        .enumerate()
        .map(|(i, arm)| ModelConfig {
            tags: vec!["simulated".into()],
            base_url: Some(format!("http://{addr}/simulated/{i}")),
            ..ModelConfig::priced(
                &arm.id,
                arm.input_usd_per_token * 1e6,
                arm.output_usd_per_token * 1e6,
            )
        })
        .collect();
    // A candidate in the shadow of the route's policy, so that
    // `GET /v1/routes/demo/candidates` shows one estimated on the demo's traffic.
    let route = RouteConfig {
        w_cost: scenario.objective.w_cost,
        w_latency: scenario.objective.w_latency,
        shadow: vec![DEFAULT_LEARNERS[0].into()],
        ..RouteConfig::new("demo", DEFAULT_ROUTE_POLICY, models)
    };
    let mut config = ServeConfig::new(std::env::temp_dir().join("quiver-demo"), vec![route]);
    if let Some(listen) = listen {
        config.listen = listen;
    }
    config.snapshot_interval_s = 30;
    config.request_timeout_ms = 60_000;
    config.upstream_timeout_ms = 20_000;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::task_of;

    #[test]
    fn prompts_map_to_scenario_tasks() {
        assert_eq!(task_of("Write a python function to reverse a list"), "code");
        assert_eq!(
            task_of("Which of the following explains tides?\nA) the moon"),
            "reasoning"
        );
        assert_eq!(task_of("Maria thanked Tom because _ helped."), "commonsense");
    }
}
