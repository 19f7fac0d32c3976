//! Property tests of what parses untrusted input: the HTTP endpoints' request parsers and
//! the configuration loader. Any body answers a JSON error in OpenAI's shape or a success,
//! never a server error; after any sequence of answered requests the router snapshots and
//! reopens to the same learners; an unknown key anywhere in a configuration stops loading
//! with its name.
#![allow(clippy::unwrap_used, clippy::panic)] // a test that fails should panic

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use quiver_serve::app::{build_app, AppState};
use serde_json::{json, Value};
use tower::ServiceExt;

const EXAMPLE: &str = include_str!("../../../quiver.example.toml");

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A configuration of one route `r` over two models without upstreams (a proxied call
/// fails over both).
fn config(dir: &Path) -> quiver_serve::ServeConfig {
    serde_json::from_value(json!({
        "log_dir": dir.join("log"),
        "routes": [{
            "name": "r", "policy": "lints(v=0.3,floor=0.05)", "w_cost": 10.0,
            "models": [
                {"id": "a", "input_usd_per_million": 1.0, "output_usd_per_million": 2.0},
                {"id": "b", "input_usd_per_million": 5.0, "output_usd_per_million": 10.0}
            ]
        }]
    }))
    .unwrap()
}

/// Numbers a client might send: ordinary, at and past every bound, and the extremes of f64.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-10.0..10.0f64).prop_map(Value::from),
        (0u64..200_000_000).prop_map(Value::from),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            1e6,
            -1e6,
            1e6 + 1.0,
            8.64e7,
            8.64e7 + 1.0,
            1000.0,
            1000.5,
            1e8,
            1e9,
            1e200,
            -1e200,
            1e308,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
        ])
        .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
    ]
}

/// A number within `[lo, hi]`, its ends included, or now and then any number.
fn within(lo: f64, hi: f64) -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (lo..=hi).prop_map(Value::from),
        1 => prop::sample::select(vec![lo, hi]).prop_map(Value::from),
        1 => number(),
    ]
}

/// The field names the endpoints read, and a few they do not.
const KEYS: &[&str] = &[
    "route",
    "prompt",
    "messages",
    "features",
    "decision_id",
    "quality",
    "latency_ms",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "objective",
    "w_cost",
    "w_latency",
    "constraints",
    "model",
    "stream",
    "role",
    "content",
    "max_cost_usd",
    "required_tags",
    "unknown",
];

/// Arbitrary JSON, biased towards the shapes the endpoints expect.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        prop::sample::select(vec![
            "r",
            "r:0",
            "r:1",
            "r:99999999999999999999",
            "a",
            "",
            "é\u{0}☃"
        ])
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(KEYS).prop_map(str::to_string), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request to an endpoint: a valid one, one with a field set to arbitrary JSON,
/// arbitrary JSON, or bytes that are not JSON.
fn request() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let id = (0u8..6).prop_map(|i| format!("r:{i}"));
    let valid = prop_oneof![
        (within(0.0, 1e9), within(0.0, 1e6)).prop_map(|(c, l)| (
            "/v1/route",
            json!({"route": "r", "prompt": "What is 2 + 2?", "objective": {"w_cost": c, "w_latency": l}})
        )),
        (id.clone(), within(0.0, 1.0))
            .prop_map(|(id, q)| ("/v1/feedback", json!({"decision_id": id, "quality": q}))),
        (id, within(0.0, 8.64e7), within(0.0, 1000.0)).prop_map(|(id, l, c)| (
            "/v1/outcome",
            json!({"decision_id": id, "latency_ms": l, "cost_usd": c})
        )),
        Just((
            "/v1/chat/completions",
            json!({"model": "r", "messages": [{"role": "user", "content": "hi"}]})
        )),
    ];
    let to_bytes = |(path, v): (&'static str, Value)| (path, serde_json::to_vec(&v).unwrap());
    prop_oneof![
        3 => valid.clone().prop_map(to_bytes),
        2 => (valid, prop::sample::select(KEYS), json_value()).prop_map(move |((path, mut v), k, x)| {
            v[k] = x;
            to_bytes((path, v))
        }),
        1 => (prop::sample::select(ENDPOINTS), json_value()).prop_map(to_bytes),
        1 => (prop::sample::select(ENDPOINTS), prop::collection::vec(any::<u8>(), 0..64)),
    ]
}

const ENDPOINTS: &[&str] = &["/v1/route", "/v1/feedback", "/v1/outcome", "/v1/chat/completions"];

/// Sends one request through the whole app: the status and the body as JSON.
async fn send(app: &axum::Router, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{path} answered {status} with a body that is not JSON ({e}): {bytes:?}"));
    (status, json)
}

async fn learners(app: &axum::Router) -> Value {
    let request = Request::get("/v1/routes/r/snapshot").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every answer is JSON; every error is in OpenAI's shape with its status as `code`
    /// and a reason; no input makes a server error (the proxy's 502, when no model could
    /// answer, is the upstreams' failure, not the request's). After the sequence the
    /// learners snapshot and reopen unchanged: no accepted number can break a restart.
    #[test]
    fn any_request_gets_json_and_the_router_always_reopens(
        requests in prop::collection::vec(request(), 1..24)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = scratch("parsers_requests");
        runtime.block_on(async {
            let state = quiver_serve::server::state(config(&dir)).unwrap();
            let app = build_app(Arc::clone(&state));
            for (path, body) in requests {
                let (status, answer) = send(&app, path, body).await;
                if status.is_success() {
                    continue;
                }
                prop_assert!(
                    status.is_client_error() || (path == "/v1/chat/completions" && status == StatusCode::BAD_GATEWAY),
                    "{path} answered {status}: {answer}"
                );
                prop_assert_eq!(&answer["error"]["code"], &json!(status.as_u16().to_string()));
                prop_assert!(answer["error"]["type"].is_string());
                prop_assert!(!answer["error"]["message"].as_str().unwrap_or("").is_empty());
            }
            let before = learners(&app).await;
            reopen(state, app, &dir, before).await
        })?;
    }

    /// A key the configuration does not know, added to any table of the example (the top,
    /// `[auth]`, a route, a model), stops loading with an error that names it.
    #[test]
    fn an_unknown_key_anywhere_in_the_config_is_named(
        table in 0usize..4,
        key in "[a-z][a-z_]{0,15}",
    ) {
        let mut config: toml::Table = EXAMPLE.parse().unwrap();
        let target = match table {
            0 => &mut config,
            1 => config["auth"].as_table_mut().unwrap(),
            2 => config["routes"].as_array_mut().unwrap()[0].as_table_mut().unwrap(),
            _ => config["routes"].as_array_mut().unwrap()[0]["models"].as_array_mut().unwrap()[1]
                .as_table_mut()
                .unwrap(),
        };
        // The example leaves these two commented out.
        prop_assume!(!target.contains_key(&key) && !["budget_usd_per_request", "upstream_model"].contains(&key.as_str()));
        target.insert(key.clone(), toml::Value::Integer(1));
        let dir = scratch("parsers_config");
        let path = dir.join("quiver.toml");
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        let error = quiver_serve::ServeConfig::load(&path).unwrap_err().to_string();
        prop_assert!(error.contains(&format!("unknown field `{key}`")), "{error}");
    }
}

/// Snapshots the router of `state`, closes it and its `app`, opens a new one on the same
/// log, and checks that it learned exactly `before`.
async fn reopen(
    state: Arc<AppState>,
    app: axum::Router,
    dir: &Path,
    before: Value,
) -> Result<(), TestCaseError> {
    state.router.snapshot().unwrap();
    drop((app, state));
    let reopened = quiver_serve::server::state(config(dir)).unwrap();
    let after = learners(&build_app(reopened)).await;
    prop_assert_eq!(after, before);
    Ok(())
}

/// Paths in the file are relative to it, whatever the working directory: the log
/// directory and each route's priors.
#[test]
fn paths_in_the_config_file_are_relative_to_it() {
    let dir = scratch("parsers_relative");
    let mut config: toml::Table = EXAMPLE.parse().unwrap();
    let route = config["routes"].as_array_mut().unwrap()[0]
        .as_table_mut()
        .unwrap();
    route.insert("priors".into(), toml::Value::String("priors/chat.json".into()));
    config.insert("log_dir".into(), toml::Value::String("/var/lib/quiver".into()));
    let path = dir.join("quiver.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let loaded = quiver_serve::ServeConfig::load(&path).unwrap();
    assert_eq!(
        loaded.routes[0].priors.as_deref(),
        Some(dir.join("priors/chat.json").as_path())
    );
    assert_eq!(
        loaded.log_dir,
        Path::new("/var/lib/quiver"),
        "an absolute path stays"
    );
}

/// The example documents every option at its default, so that reading it tells the truth.
#[test]
fn the_example_config_loads_and_states_the_defaults() {
    let dir = scratch("parsers_example");
    let path = dir.join("quiver.toml");
    std::fs::write(&path, EXAMPLE).unwrap();
    let example = quiver_serve::ServeConfig::load(&path).unwrap();
    let defaults = quiver_serve::ServeConfig::new(example.log_dir.clone(), example.routes.clone());
    let pairs = |c: &quiver_serve::ServeConfig| {
        (
            c.listen.clone(),
            c.snapshot_interval_s,
            [
                c.max_body_bytes,
                c.max_header_bytes,
                c.max_connections,
                c.max_upstream_body_bytes,
                c.feedback_horizon_decisions,
                c.upstream_retries as usize,
            ],
            [
                c.header_read_timeout_ms,
                c.body_read_timeout_ms,
                c.request_timeout_ms,
                c.upstream_timeout_ms,
                c.upstream_idle_timeout_ms,
                c.routed_call_limit_s,
            ],
        )
    };
    assert_eq!(pairs(&example), pairs(&defaults));
    assert_eq!(example.circuit_breaker, defaults.circuit_breaker);
    assert_eq!(example.cache, defaults.cache);
    assert_eq!(example.balance, defaults.balance);
    // The example's route states the policy a route gets without one.
    let mut route: toml::Table = EXAMPLE.parse::<toml::Table>().unwrap()["routes"][0]
        .as_table()
        .unwrap()
        .clone();
    route.remove("policy");
    let unnamed: quiver_serve::RouteConfig = route.try_into().unwrap();
    assert_eq!(unnamed.policy, quiver_bandit::DEFAULT_ROUTE_POLICY);
    assert_eq!(example.routes[0].policy, unnamed.policy);
}
