//! The gateway over the `Upstream` seam: retries, fallback, relayed refusals and what is
//! learned are the gateway's, whatever provider answers. Driven in process with a
//! scripted provider that records every attempt.
#![allow(clippy::unwrap_used, clippy::panic)] // a test helper that fails should panic

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use quiver_serve::app::AppState;
use quiver_serve::upstream::{Answer, Failure, Upstream, UpstreamCall};
use serde_json::{json, Value};
use tower::ServiceExt;

/// What the scripted provider answers one attempt.
#[derive(Clone, Copy)]
enum Reply {
    /// A completion whose content names the model.
    Completion,
    /// A completion of 40 characters without `usage`.
    NoUsage,
    /// A JSON body that is not a completion.
    NotCompletion,
    /// A 5xx: another attempt may succeed.
    ServerError,
    /// The request's own fault, relayed as it came.
    Refused(u16),
    /// Nothing until the request's deadline, then a failure.
    Silent,
    /// A completion after 300 ms.
    Slow,
    /// A 429 asking to wait this many seconds.
    Wait(u64),
    /// A stream of five events 100 ms apart, its usage (3 and 5 tokens) in the last
    /// before `[DONE]`.
    SlowStream,
    /// The same stream in one chunk.
    WholeStream,
}

/// Answers each model's attempts from its script, in order, recording `(model, path)`.
#[derive(Default)]
struct Scripted {
    replies: Mutex<BTreeMap<String, VecDeque<Reply>>>,
    calls: Mutex<Vec<(String, &'static str)>>,
    /// Each call's `stream_options`, as sent.
    stream_options: Mutex<Vec<Option<Value>>>,
}

impl Scripted {
    fn script(&self, model: &str, replies: &[Reply]) {
        self.replies
            .lock()
            .unwrap()
            .insert(model.into(), replies.iter().copied().collect());
    }

    /// The models called since the last take, each at the chat API's path.
    fn take_calls(&self) -> Vec<String> {
        let calls = std::mem::take(&mut *self.calls.lock().unwrap());
        assert!(
            calls.iter().all(|(_, path)| *path == "/chat/completions"),
            "{calls:?}"
        );
        calls.into_iter().map(|(model, _)| model).collect()
    }
}

struct Provider(Arc<Scripted>);

impl Upstream for Provider {
    fn call<'a>(&'a self, call: UpstreamCall<'a>) -> BoxFuture<'a, Result<Answer, Failure>> {
        let model = call.model.id.clone();
        let deadline = tokio::time::Instant::from_std(call.deadline);
        self.0.calls.lock().unwrap().push((model.clone(), call.path));
        let options = call.body.get("stream_options").cloned();
        self.0.stream_options.lock().unwrap().push(options);
        let reply = self
            .0
            .replies
            .lock()
            .unwrap()
            .get_mut(&model)
            .and_then(VecDeque::pop_front);
        let complete = |json: Value| Answer::Complete {
            body: Bytes::from(json.to_string()),
            json,
            passed: Vec::new(),
        };
        Box::pin(async move {
            if let Some(Reply::Slow) = reply {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            match reply {
                Some(Reply::Completion | Reply::Slow) => Ok(complete(json!({
                    "choices": [{"message": {"role": "assistant", "content": model}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5},
                }))),
                Some(Reply::NoUsage) => Ok(complete(json!({
                    "choices": [{"message": {"role": "assistant", "content": "x".repeat(40)}}],
                }))),
                Some(Reply::NotCompletion) => Ok(complete(json!({"data": []}))),
                Some(Reply::ServerError) => Err(Failure {
                    retryable: true,
                    ..Failure::final_("upstream answered 500")
                }),
                Some(Reply::Refused(status)) => Ok(Answer::Refused {
                    status: StatusCode::from_u16(status).unwrap(),
                    body: Bytes::from(r#"{"error":{"code":"context_length_exceeded"}}"#),
                    content_type: None,
                }),
                Some(Reply::Wait(seconds)) => Err(Failure {
                    retry_after: Some(std::time::Duration::from_secs(seconds)),
                    ..Failure::final_("upstream answered 429")
                }),
                Some(Reply::SlowStream) => {
                    let events = stream_events();
                    let rest = futures_util::stream::iter(events[1..].to_vec()).then(|event| async move {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        Ok(event)
                    });
                    Ok(Answer::Stream {
                        first: events[0].clone(),
                        rest: Box::pin(rest),
                        passed: Vec::new(),
                    })
                }
                Some(Reply::WholeStream) => Ok(Answer::Stream {
                    first: Bytes::from(stream_events().concat()),
                    rest: Box::pin(futures_util::stream::empty()),
                    passed: Vec::new(),
                }),
                Some(Reply::Silent) => {
                    tokio::time::sleep_until(deadline).await;
                    Err(Failure::final_("no first byte before the deadline"))
                }
                None => Err(Failure::final_("no reply scripted")),
            }
        })
    }
}

/// The events of a streamed answer: four parts, the usage (3 and 5 tokens), `[DONE]`.
fn stream_events() -> Vec<Bytes> {
    let event = |data: Value| Bytes::from(format!("data: {data}\n\n"));
    let mut events: Vec<Bytes> = (0..4)
        .map(|i| event(json!({"choices": [{"delta": {"content": format!("part {i} ")}}]})))
        .collect();
    events.push(event(
        json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}),
    ));
    events.push(Bytes::from("data: [DONE]\n\n"));
    events
}

/// Asserts that model a of route `r` answered `calls` calls, each a success at the price
/// of its usage (3 input and 5 output tokens at a's prices), waiting up to 5 s for them:
/// the outcome of a stream, or of a call whose client left, is recorded after the answer.
async fn assert_a_answered(state: &AppState, calls: u64) {
    let usage = || *state.router.learner("r").unwrap().usage(0);
    let waited = std::time::Instant::now();
    while usage().requests < calls && waited.elapsed() < std::time::Duration::from_secs(5) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let a = usage();
    assert_eq!((a.requests, a.errors), (calls, 0));
    let per_call = (3.0 * 1.0 + 5.0 * 2.0) / 1e6;
    assert!(
        (a.cost_usd - calls as f64 * per_call).abs() < 1e-15,
        "{}",
        a.cost_usd
    );
}

/// A fresh directory `name`.
fn fresh(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The gateway in a fresh directory `name`, over a scripted provider.
fn gateway(name: &str, request_timeout_ms: u64) -> (Arc<Scripted>, Arc<AppState>, axum::Router) {
    gateway_over(config(&fresh(name), request_timeout_ms))
}

/// The gateway of `config`, over a scripted provider.
fn gateway_over(config: quiver_serve::ServeConfig) -> (Arc<Scripted>, Arc<AppState>, axum::Router) {
    let scripted = Arc::new(Scripted::default());
    let provider = Arc::clone(&scripted);
    let state = quiver_serve::server::state_with(config, move |_, _| Box::new(Provider(provider))).unwrap();
    let app = quiver_serve::app::build_app(Arc::clone(&state));
    (scripted, state, app)
}

fn config(dir: &Path, request_timeout_ms: u64) -> quiver_serve::ServeConfig {
    serde_json::from_value(json!({
        "log_dir": dir.join("log"),
        "request_timeout_ms": request_timeout_ms,
        "routes": [{
            "name": "r", "policy": "fixed(a)",
            "models": [
                {"id": "a", "input_usd_per_million": 1.0, "output_usd_per_million": 2.0},
                {"id": "b", "input_usd_per_million": 5.0, "output_usd_per_million": 10.0}
            ]
        }]
    }))
    .unwrap()
}

/// A chat through route `r`: the status, the answering model, the body, and the decision
/// ids of the answer and of the decision it followed.
async fn chat(app: &axum::Router) -> (StatusCode, Option<String>, Value, Ids) {
    let body = json!({"model": "r", "messages": [{"role": "user", "content": "hi"}]});
    let response = post(app, "/v1/chat/completions", &body).await;
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let model = header("x-quiver-model");
    let ids = Ids {
        decision: header("x-quiver-decision-id"),
        parent: header("x-quiver-parent-decision-id"),
        retry_after: header("retry-after"),
    };
    (status, model, json_of(response).await, ids)
}

/// Posts `body` as JSON to `path` of the app.
async fn post(app: &axum::Router, path: &str, body: &Value) -> axum::response::Response {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    app.clone().oneshot(request).await.unwrap()
}

/// An answer's JSON body.
async fn json_of(response: axum::response::Response) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

struct Ids {
    decision: Option<String>,
    parent: Option<String>,
    retry_after: Option<String>,
}

/// Posts a quality for `decision_id`: the status and what the report did.
async fn feedback(app: &axum::Router, decision_id: &str, quality: f64) -> (StatusCode, Value) {
    let body = json!({"decision_id": decision_id, "quality": quality});
    let response = post(app, "/v1/feedback", &body).await;
    (response.status(), json_of(response).await)
}

#[tokio::test]
async fn the_gateway_retries_falls_back_and_relays_whatever_the_provider() {
    let (scripted, state, app) = gateway("upstream-seam", 120_000);

    // A 5xx is retried once on the same model (`upstream_retries` = 1), then the next
    // model of the fallback order answers.
    scripted.script("a", &[Reply::ServerError, Reply::ServerError]);
    scripted.script("b", &[Reply::Completion]);
    let (status, model, body, ids) = chat(&app).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(model.as_deref(), Some("b"));
    assert_eq!(body["choices"][0]["message"]["content"], "b");
    assert_eq!(scripted.take_calls(), ["a", "a", "b"]);

    // The fallback's call is a decision of its own, after the one whose model failed: its
    // quality is b's, and the failed decision already holds a's failure.
    let (Some(own), Some(parent)) = (ids.decision, ids.parent) else {
        panic!("a fallback's answer names its decision and the one it followed");
    };
    assert_ne!(own, parent);
    assert_eq!(feedback(&app, &own, 1.0).await.1["status"], "applied");
    // The failed decision learned its failure as 0: another quality is a conflict.
    assert_eq!(feedback(&app, &parent, 1.0).await.0, StatusCode::CONFLICT);
    assert_eq!(feedback(&app, &parent, 0.0).await.1["status"], "already_applied");

    // A body that is not a completion is unusable: no retry, straight to the next model.
    scripted.script("a", &[Reply::NotCompletion]);
    scripted.script("b", &[Reply::Completion]);
    assert_eq!(chat(&app).await.1.as_deref(), Some("b"));
    assert_eq!(scripted.take_calls(), ["a", "b"]);

    // The request's own fault is relayed as it came, tried nowhere else.
    scripted.script("a", &[Reply::Refused(400)]);
    let (status, _, body, _) = chat(&app).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert_eq!(scripted.take_calls(), ["a"]);

    // A refusal after a fallback is the fallback's model's: its decision, after a's.
    scripted.script("a", &[Reply::ServerError, Reply::ServerError]);
    scripted.script("b", &[Reply::Refused(400)]);
    let (status, model, _, ids) = chat(&app).await;
    assert_eq!((status, model.as_deref()), (StatusCode::BAD_REQUEST, Some("b")));
    assert!(
        ids.parent.is_some() && ids.decision != ids.parent,
        "{:?}",
        ids.decision
    );
    assert_eq!(scripted.take_calls(), ["a", "a", "b"]);

    // Every model's calls were recorded as its own: a's three failures (a retried call is
    // one) and a success, b's
    // two answers at b's prices (3 input and 5 output tokens each); the refusals are not
    // the models'.
    scripted.script("a", &[Reply::Completion]);
    let (_, model, _, ids) = chat(&app).await;
    assert_eq!((model.as_deref(), ids.parent), (Some("a"), None));
    let learner = state.router.learner("r").unwrap();
    let (a, b) = (learner.usage(0), learner.usage(1));
    assert_eq!((a.requests, a.errors), (4, 3));
    assert_eq!((b.requests, b.errors), (2, 0));
    let per_call = (3.0 * 5.0 + 5.0 * 10.0) / 1e6;
    assert!((b.cost_usd - 2.0 * per_call).abs() < 1e-12, "{}", b.cost_usd);
}

/// A request whose deadline passes before any model answers is a 408, fallbacks included,
/// whichever model was being waited for; the silent model's failure is its own.
#[tokio::test]
async fn no_answer_within_the_deadline_is_a_408() {
    let (scripted, state, app) = gateway("upstream-deadline", 300);
    scripted.script("a", &[Reply::Silent]);
    scripted.script("b", &[Reply::Completion]);
    let (status, _, body, _) = chat(&app).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("300 ms") && message.contains("a: "), "{message}");
    assert_eq!(scripted.take_calls(), ["a"], "the deadline leaves no time for b");
    let learner = state.router.learner("r").unwrap();
    let a = learner.usage(0);
    assert_eq!((a.requests, a.errors), (1, 1));
}

/// A client that goes away while the model answers does not take the call's record with
/// it: the outcome, and the cost with it, is recorded when the answer comes.
#[tokio::test]
async fn a_call_the_client_left_is_recorded_all_the_same() {
    let (scripted, state, app) = gateway("upstream-left", 120_000);
    scripted.script("a", &[Reply::Slow]);
    let left = tokio::time::timeout(std::time::Duration::from_millis(50), chat(&app)).await;
    assert!(left.is_err(), "the client left before the answer");
    assert_a_answered(&state, 1).await;
}

/// A client that goes away mid-stream does not cut the call short either: the rest is
/// read without it, past the request's time limit as a connected client's stream would
/// be, and the call is the model's success at the cost of its usage. So is a stream whose
/// client left before reading anything, its whole answer in the first chunk.
#[tokio::test]
async fn a_stream_the_client_left_is_read_to_its_end() {
    // The stream lasts 500 ms, past the 250 ms the request has to start answering.
    let (scripted, state, app) = gateway("upstream-stream-left", 250);
    scripted.script("a", &[Reply::SlowStream, Reply::WholeStream]);
    let body = json!({"model": "r", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let response = post(&app, "/v1/chat/completions", &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = response.into_body().into_data_stream();
    let first = events.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("part 0"));
    drop(events);
    let unread = post(&app, "/v1/chat/completions", &body).await;
    assert_eq!(unread.status(), StatusCode::OK);
    drop(unread);
    assert_a_answered(&state, 2).await;
}

/// A server that stops while it reads a stream whose client left waits for its end: the
/// outcome is in the log before the final snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_the_streams_clients_left() {
    let dir = fresh("upstream-stop-waits");
    let mut config = config(&dir, 120_000);
    config.listen = "127.0.0.1:0".into();
    let scripted = Arc::new(Scripted::default());
    let provider = Arc::clone(&scripted);
    let state = quiver_serve::server::state_with(config, move |_, _| Box::new(Provider(provider))).unwrap();
    scripted.script("a", &[Reply::SlowStream]);
    let (address, bound) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(quiver_serve::server::run(
        state,
        async move {
            let _ = stopped.await;
        },
        move |addr| {
            let _ = address.send(addr);
        },
    ));
    let base = format!("http://{}", bound.await.unwrap());
    let body = json!({"model": "r", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let mut response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let decision = response.headers()["x-quiver-decision-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(response.chunk().await.unwrap().is_some());
    drop(response);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    let records = quiver_serve::log::read_log(&dir.join("log")).unwrap();
    let events: Vec<&str> = records
        .iter()
        .filter(|r| r.decision_id == decision)
        .map(|r| r.event.name())
        .collect();
    assert_eq!(events, ["decision", "outcome"]);
    let outcome = records.iter().rfind(|r| r.decision_id == decision).unwrap();
    assert!(!outcome.error, "{outcome:?}");
}

/// A stream is asked for its usage, whether the client asked or not, and priced by it;
/// the usage-only event reaches only a client that asked for it. A model configured
/// without `stream_usage` gets the client's options as they came.
#[tokio::test]
async fn a_stream_is_priced_by_the_usage_the_gateway_asks_for() {
    let dir = fresh("upstream-stream-usage");
    let mut config = config(&dir, 120_000);
    config.routes[0].models[1].stream_usage = false;
    let (scripted, state, app) = gateway_over(config);
    let stream = |options: Option<Value>| {
        let mut body = json!({"model": "r", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        if let Some(options) = options {
            body["stream_options"] = options;
        }
        let app = app.clone();
        async move {
            let response = post(&app, "/v1/chat/completions", &body).await;
            assert_eq!(response.status(), StatusCode::OK);
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        }
    };
    scripted.script("a", &[Reply::SlowStream, Reply::SlowStream]);
    let unasked = stream(None).await;
    let asked = stream(Some(json!({"include_usage": true}))).await;
    let usage_event = r#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#;
    assert!(
        !unasked.contains("\"usage\"") && unasked.ends_with("data: [DONE]\n\n"),
        "{unasked}"
    );
    assert!(asked.contains(usage_event), "{asked}");
    assert_eq!(
        asked.replace(&format!("{usage_event}\n\n"), ""),
        unasked,
        "every other event passes as it came"
    );
    // A stream's outcome is recorded as its body ends, after the client's last read.
    assert_a_answered(&state, 2).await;
    let sent = std::mem::take(&mut *scripted.stream_options.lock().unwrap());
    assert_eq!(
        sent,
        [
            Some(json!({"include_usage": true})),
            Some(json!({"include_usage": true}))
        ]
    );

    // Model b takes no `stream_options`: none is sent unless the client sent them.
    let mut config = self::config(&fresh("upstream-stream-usage-off"), 120_000);
    config.routes[0].policy = "fixed(b)".into();
    config.routes[0].models[1].stream_usage = false;
    let (scripted, _, app) = gateway_over(config);
    scripted.script("b", &[Reply::SlowStream]);
    let body = json!({"model": "r", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let response = post(&app, "/v1/chat/completions", &body).await;
    response.into_body().collect().await.unwrap();
    assert_eq!(*scripted.stream_options.lock().unwrap(), [None]);
}

/// A `stream` that is not a boolean is the request's error, said before any call.
#[tokio::test]
async fn a_stream_flag_must_be_a_boolean() {
    let (scripted, _, app) = gateway("upstream-stream-flag", 120_000);
    let body = json!({"model": "r", "stream": "yes", "messages": [{"role": "user", "content": "hi"}]});
    let response = post(&app, "/v1/chat/completions", &body).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let message = json_of(response).await["error"]["message"].to_string();
    assert!(
        message.contains("`stream` must be true or false, not \\\"yes\\\""),
        "{message}"
    );
    assert!(scripted.take_calls().is_empty());
}

/// Every model asking to wait is the client's 429, with the earliest wait; one that failed
/// otherwise makes it the gateway's 502.
#[tokio::test]
async fn every_model_asking_to_wait_is_a_429_with_the_earliest_wait() {
    let (scripted, _, app) = gateway("upstream-waits", 120_000);
    scripted.script("a", &[Reply::Wait(30)]);
    scripted.script("b", &[Reply::Wait(5)]);
    let (status, _, body, ids) = chat(&app).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(ids.retry_after.as_deref(), Some("5"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("asked to wait"),
        "{body}"
    );

    let (scripted, _, app) = gateway("upstream-waits-and-fails", 120_000);
    scripted.script("a", &[Reply::Wait(30)]);
    scripted.script("b", &[Reply::NotCompletion]);
    assert_eq!(chat(&app).await.0, StatusCode::BAD_GATEWAY);
}

/// A route with caller features takes them from `x-quiver-features` through the
/// OpenAI-compatible API, and logs them with the decision; without them, or with a word
/// among them, the 400 says how to send them.
#[tokio::test]
async fn caller_features_come_in_a_header() {
    let dir = fresh("upstream-features");
    let mut config = config(&dir, 120_000);
    config.routes[0].extra_features = 2;
    config.cache.enabled = true;
    let (scripted, _state, app) = gateway_over(config);
    scripted.script("a", &[Reply::Completion, Reply::Completion]);
    let chat = |features: Option<&str>| {
        let body = json!({"model": "r", "messages": [{"role": "user", "content": "hi"}]});
        let mut request = Request::post("/v1/chat/completions").header("content-type", "application/json");
        if let Some(features) = features {
            request = request.header(quiver_serve::proxy::FEATURES_HEADER, features);
        }
        app.clone()
            .oneshot(request.body(Body::from(body.to_string())).unwrap())
    };
    let missing = chat(None).await.unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let message = json_of(missing).await["error"]["message"].to_string();
    assert!(
        message.contains("takes 2 caller features") && message.contains("x-quiver-features"),
        "{message}"
    );
    let word = chat(Some("0.5, much")).await.unwrap();
    assert_eq!(word.status(), StatusCode::BAD_REQUEST);
    let message = json_of(word).await["error"]["message"].to_string();
    assert!(message.contains("`much` is not a number"), "{message}");
    // An empty header is no features, which this route refuses.
    let empty = chat(Some(" ")).await.unwrap();
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
    let message = json_of(empty).await["error"]["message"].to_string();
    assert!(message.contains("the request brought 0"), "{message}");
    let answered = chat(Some("0.5, -1")).await.unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    // The cache keeps answers apart by features: the same ones are a hit, others a miss
    // (and a wrong count still a 400).
    let cache = |response: &axum::response::Response| response.headers()["x-quiver-cache"].clone();
    assert_eq!(cache(&chat(Some("0.5, -1")).await.unwrap()), "hit");
    assert_eq!(chat(None).await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(cache(&chat(Some("1, 2")).await.unwrap()), "miss");
    assert_eq!(scripted.take_calls(), ["a", "a"]);
    let decisions: Vec<_> = quiver_serve::log::read_log(&dir.join("log"))
        .unwrap()
        .into_iter()
        .filter(|r| r.event == quiver_serve::log::LogEvent::Decision)
        .collect();
    assert_eq!(decisions.len(), 2);
    let logged: Vec<f64> = (0..2)
        .map(|i| decisions[0].features[&quiver_serve::log::feature_name(i)])
        .collect();
    assert_eq!(logged, [0.5, -1.0]);
}

/// An answer without `usage` is not free: its tokens are estimated as a stream's are (the
/// prompt's estimate, and its 40 characters at four a token), and cost at the model's prices.
#[tokio::test]
async fn an_answer_without_usage_is_estimated_not_free() {
    let (scripted, state, app) = gateway("upstream-no-usage", 120_000);
    scripted.script("a", &[Reply::NoUsage]);
    assert_eq!(chat(&app).await.0, StatusCode::OK);
    let a = *state.router.learner("r").unwrap().usage(0);
    assert_eq!(a.requests, 1);
    assert_eq!(
        a.output_tokens,
        f64::from(quiver_bandit::features::tokens_of_chars(40))
    );
    assert!(a.input_tokens > 0.0, "{a:?}");
    let cost = (a.input_tokens * 1.0 + a.output_tokens * 2.0) / 1e6;
    assert!((a.cost_usd - cost).abs() < 1e-15 && a.cost_usd > 0.0, "{a:?}");
}

/// `/v1/embeddings` relays a model's request to wait (a 429 with `Retry-After`) as a 429
/// with the same wait, not as the gateway's 502; another failure stays a 502. Neither
/// reaches the model's circuit breaker, which routes its completions: a provider may
/// limit or lack embeddings for a model whose completions are fine.
#[tokio::test]
async fn an_embedding_model_asking_to_wait_is_a_429() {
    use quiver_serve::health::Circuit;
    let mut config = config(&fresh("upstream-embeddings-wait"), 120_000);
    // Callable for embeddings; the scripted provider answers whatever the address.
    config.routes[0].models[0].base_url = Some("http://127.0.0.1:9".into());
    let (scripted, state, app) = gateway_over(config);
    scripted.script("a", &[Reply::Wait(7), Reply::ServerError]);
    let body = json!({"model": "a", "input": "hello"});
    let waited = post(&app, "/v1/embeddings", &body).await;
    assert_eq!(waited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(waited.headers()["retry-after"], "7");
    let message = json_of(waited).await["error"]["message"].to_string();
    assert!(message.contains("asked to wait"), "{message}");
    assert_eq!(
        post(&app, "/v1/embeddings", &body).await.status(),
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        state.health.circuit("r", "a", std::time::Instant::now()),
        Circuit::Closed
    );
}

/// A proxied call counts against the spend cap from its decision until the request is
/// done with it, however it ends: calls the provider refused (relayed, never learned, no
/// outcome) stop counting when their requests end, so they never hold a route at its cap.
#[tokio::test]
async fn refused_calls_stop_counting_against_a_spend_cap() {
    let dir = fresh("upstream-cap-refused");
    let estimate = {
        let (_, _, app) = gateway_over(config(&fresh("upstream-cap-estimate"), 120_000));
        let routed = json_of(post(&app, "/v1/route", &json!({"route": "r", "prompt": "hi"})).await).await;
        routed["explanation"][0]["cost_usd"].as_f64().unwrap()
    };
    assert!(estimate > 0.0);
    let mut config = config(&dir, 120_000);
    config.routes[0].spend_cap = Some(quiver_serve::spend::SpendCap {
        daily_usd: Some(1.5 * estimate),
        monthly_usd: None,
        downgrade_at: 1.0,
    });
    let (scripted, state, app) = gateway_over(config);
    scripted.script("a", &[Reply::Refused(400); 3]);
    for _ in 0..3 {
        let (status, _, _, _) = chat(&app).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "relayed, not held at the cap");
    }
    scripted.script("a", &[Reply::Completion]);
    let (status, model, _, _) = chat(&app).await;
    assert_eq!((status, model.as_deref()), (StatusCode::OK, Some("a")));
    let (day, _) = state.router.spend("r").unwrap();
    assert!((day - (3.0 * 1.0 + 5.0 * 2.0) / 1e6).abs() < 1e-15, "{day}");
}

/// A second outcome of a decision is checked as the first was, and must report the call
/// as the first did: a failure reported after a success is a 409, not a quality of 0 that
/// locks out the real feedback; an exact repeat is `already_applied`, and one that brings
/// the quality applies it.
#[tokio::test]
async fn a_second_outcome_reports_the_call_as_the_first_did() {
    let (_, state, app) = gateway("upstream-outcome-repeat", 120_000);
    let routed = json_of(post(&app, "/v1/route", &json!({"route": "r", "prompt": "hi"})).await).await;
    let id = routed["decision_id"].as_str().unwrap();
    let first = json!({"decision_id": id, "latency_ms": 100, "cost_usd": 0.001});
    assert_eq!(post(&app, "/v1/outcome", &first).await.status(), StatusCode::OK);
    let refused = [
        (
            json!({"decision_id": id, "latency_ms": -100, "error": true}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "latency_ms",
        ),
        (
            json!({"decision_id": id, "latency_ms": 100, "cost_usd": 0.001, "error": true}),
            StatusCode::CONFLICT,
            "error",
        ),
        (
            json!({"decision_id": id, "latency_ms": 100, "cost_usd": 5.0}),
            StatusCode::CONFLICT,
            "cost_usd 0.001; 5 is refused",
        ),
    ];
    for (body, status, names) in refused {
        let answer = post(&app, "/v1/outcome", &body).await;
        assert_eq!(answer.status(), status, "{body}");
        let message = json_of(answer).await["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains(names), "{message}");
    }
    let again = json_of(post(&app, "/v1/outcome", &first).await).await;
    assert_eq!(again["status"], "already_applied");
    let (status, answer) = feedback(&app, id, 0.3).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (StatusCode::OK, Some("applied"))
    );
    let (day, _) = state.router.spend("r").unwrap();
    assert!((day - 0.001).abs() < 1e-15, "{day}");
}

/// A repeat that leaves out its cost is priced as the first outcome was, not at the list
/// prices of the moment: after a restart with other prices it is the same report.
#[tokio::test]
async fn a_repeat_without_its_cost_is_priced_as_the_first_was() {
    let dir = fresh("upstream-outcome-repeat-prices");
    let tokens_only =
        |id: &str| json!({"decision_id": id, "latency_ms": 100, "input_tokens": 1000, "output_tokens": 500});
    let id = {
        let (_, state, app) = gateway_over(config(&dir, 120_000));
        let routed = json_of(post(&app, "/v1/route", &json!({"route": "r", "prompt": "hi"})).await).await;
        let id = routed["decision_id"].as_str().unwrap().to_string();
        assert_eq!(
            post(&app, "/v1/outcome", &tokens_only(&id)).await.status(),
            StatusCode::OK
        );
        state.router.snapshot().unwrap();
        id
    };
    let mut repriced = config(&dir, 120_000);
    repriced.routes[0].models[0].input_usd_per_million = 3.0;
    let (_, state, app) = gateway_over(repriced);
    let again = json_of(post(&app, "/v1/outcome", &tokens_only(&id)).await).await;
    assert_eq!(again["status"], "already_applied", "{again}");
    // A new decision is priced at the new list prices: 1,000 in at $3, 500 out at $2.
    let routed = json_of(post(&app, "/v1/route", &json!({"route": "r", "prompt": "hi"})).await).await;
    let id = routed["decision_id"].as_str().unwrap();
    assert_eq!(
        post(&app, "/v1/outcome", &tokens_only(id)).await.status(),
        StatusCode::OK
    );
    let (day, _) = state.router.spend("r").unwrap();
    assert!((day - 0.002 - 0.004).abs() < 1e-15, "{day}");
}

/// An outcome that reports its tokens and not its cost costs them at the decision's model's
/// list prices, as the proxy prices a call's `usage`; a stated cost, even 0, is the cost.
#[tokio::test]
async fn an_outcome_without_its_cost_is_priced_from_its_tokens() {
    let (_, state, app) = gateway("upstream-outcome-tokens", 120_000);
    let decide = || async {
        let routed = json_of(post(&app, "/v1/route", &json!({"route": "r", "prompt": "hi"})).await).await;
        routed["decision_id"].as_str().unwrap().to_string()
    };
    let tokens_only = decide().await;
    let body =
        json!({"decision_id": tokens_only, "latency_ms": 100, "input_tokens": 1000, "output_tokens": 500});
    assert_eq!(post(&app, "/v1/outcome", &body).await.status(), StatusCode::OK);
    // `fixed(a)`: 1,000 tokens in at $1 and 500 out at $2 a million.
    let (day, _) = state.router.spend("r").unwrap();
    assert!((day - 0.002).abs() < 1e-15, "{day}");
    // A model with one price only is priced by it, as the proxy prices it.
    let mut one_price = config(&fresh("upstream-outcome-one-price"), 120_000);
    one_price.routes[0].models[0].input_usd_per_million = 0.0;
    let (_, one_state, one_app) = gateway_over(one_price);
    let routed = json_of(post(&one_app, "/v1/route", &json!({"route": "r", "prompt": "hi"})).await).await;
    let body = json!({"decision_id": routed["decision_id"], "latency_ms": 100, "input_tokens": 1000, "output_tokens": 500});
    assert_eq!(
        post(&one_app, "/v1/outcome", &body).await.status(),
        StatusCode::OK
    );
    assert!((one_state.router.spend("r").unwrap().0 - 0.001).abs() < 1e-15);
    let stated = decide().await;
    let body = json!({"decision_id": stated, "latency_ms": 100, "cost_usd": 0.0, "input_tokens": 1000});
    assert_eq!(post(&app, "/v1/outcome", &body).await.status(), StatusCode::OK);
    assert_eq!(state.router.spend("r").unwrap().0, day);
    // Counts that no request has, or whose price no request costs, are refused naming the
    // counts the client sent, not a cost it did not send; nothing is recorded. (Route `r`
    // always serves `a`, dear here.)
    let mut dear = config(&fresh("upstream-outcome-dear"), 120_000);
    dear.routes[0].models[0].input_usd_per_million = 50.0;
    let (_, dear_state, dear_app) = gateway_over(dear);
    // 200,000,000 tokens is more than any request's; 99,000,000 at $50 a million is $4,950.
    for (tokens, names) in [(200_000_000u32, "input_tokens"), (99_000_000, "99000000 input")] {
        let routed =
            json_of(post(&dear_app, "/v1/route", &json!({"route": "r", "prompt": "hi"})).await).await;
        let body = json!({"decision_id": routed["decision_id"], "latency_ms": 100, "input_tokens": tokens});
        let refused = post(&dear_app, "/v1/outcome", &body).await;
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let message = json_of(refused).await["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.contains(names) && !message.contains("outcome.cost_usd"),
            "{message}"
        );
    }
    assert_eq!(dear_state.router.spend("r").unwrap().0, 0.0);
}
