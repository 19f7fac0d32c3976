//! The server over real HTTP on 127.0.0.1: the proxy's fallback and streaming against
//! local upstreams, learning from feedback, feedback semantics and auth, and crash safety
//! of the real binary under SIGKILL.
#![allow(clippy::unwrap_used)] // a test helper that fails should panic

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use futures_util::StreamExt;
use serde_json::{json, Value};
use support::{
    assert_line, browse, chromium, get_json, get_text, post, post_json, promtool_check, sample, scratch,
    start_app, start_binary, start_binary_with_env, Running,
};

/// `quiver serve --demo` with a log of its own: the demo keeps its log under the
/// temporary directory, which tests running at once would otherwise share.
fn start_demo(name: &str) -> (Running, String) {
    let tmp = scratch(name);
    start_binary_with_env(
        &[("TMPDIR", tmp.to_str().unwrap())],
        &["--demo", "--listen", "127.0.0.1:0"],
    )
}

/// Fails with a command's output unless it succeeded.
fn assert_succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A local OpenAI-compatible upstream that behaves as `kind` says.
async fn upstream(kind: &'static str) -> SocketAddr {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/chat/completions",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| async move {
            let call = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match kind {
                "failing" => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
                // Every other call, from the first, fails.
                "flaky" if call.is_multiple_of(2) => (axum::http::StatusCode::BAD_GATEWAY, "flaked").into_response(),
                "ratelimited" => (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    [(axum::http::header::RETRY_AFTER, "1")],
                    axum::Json(json!({"error": {"message": "slow down", "code": "rate_limit_exceeded"}})),
                )
                    .into_response(),
                "ratelimited-long" => (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    [(axum::http::header::RETRY_AFTER, "60")],
                    axum::Json(json!({"error": {"message": "slow down", "code": "rate_limit_exceeded"}})),
                )
                    .into_response(),
                "ratelimited-quietly" => (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    axum::Json(json!({"error": {"message": "slow down", "code": "rate_limit_exceeded"}})),
                )
                    .into_response(),
                "missing" => (axum::http::StatusCode::NOT_FOUND, "no such model").into_response(),
                "refusing" => (
                    axum::http::StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": {"message": "too long", "code": "context_length_exceeded"}})),
                )
                    .into_response(),
                "badjson" => (axum::http::StatusCode::OK, "this is not json").into_response(),
                // The request as it came, in the answer's content.
                "echo" => axum::Json(json!({
                    "id": "x", "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": body.to_string()}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5}
                }))
                .into_response(),
                // An answer cut at its length limit.
                "truncated" => axum::Json(json!({
                    "id": "x", "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is"},
                                 "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5}
                }))
                .into_response(),
                // A JSON answer.
                "json" => axum::Json(json!({
                    "id": "x", "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "{\"answer\": 42}"}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5}
                }))
                .into_response(),
                // An answer it is unsure of: token log-probabilities of -2 when asked for.
                "unsure" => {
                    let mut choice = json!({"index": 0, "message": {"role": "assistant", "content": "maybe"}});
                    if body["logprobs"] == true {
                        choice["logprobs"] = json!({"content": [{"token": "may", "logprob": -2.0}, {"token": "be", "logprob": -2.0}]});
                    }
                    axum::Json(json!({"id": "x", "object": "chat.completion", "choices": [choice],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5}}))
                    .into_response()
                }
                _ => {
                    if kind == "slow" {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    if body["stream"].as_bool() == Some(true) {
                        let events = [
                            json!({"choices": [{"delta": {"content": "Hel"}}]}),
                            json!({"choices": [{"delta": {"content": "lo"}}]}),
                            json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}),
                        ];
                        let mut chunks: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
                        chunks.push("data: [DONE]\n\n".into());
                        // The last event comes a moment later: the stream is open meanwhile.
                        let body = futures_util::stream::iter(chunks).then(|chunk| async move {
                            if chunk.contains("[DONE]") {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                            Ok::<_, std::convert::Infallible>(chunk)
                        });
                        let body = axum::body::Body::from_stream(body);
                        ([(axum::http::header::CONTENT_TYPE, "text/event-stream")], body).into_response()
                    } else {
                        axum::Json(json!({
                            "id": "x", "object": "chat.completion",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer from {kind} for {}", body["model"])}}],
                            "usage": {"prompt_tokens": 10, "completion_tokens": 5}
                        }))
                        .into_response()
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn model(id: &str, addr: Option<SocketAddr>) -> Value {
    json!({"id": id, "base_url": addr.map(|a| format!("http://{a}")), "input_usd_per_million": 1.0, "output_usd_per_million": 2.0})
}

/// The log under `dir` holds exactly `events` for the decision that `response` names.
fn assert_logged<const N: usize>(dir: &Path, response: &reqwest::Response, events: [&str; N]) {
    let id = response.headers()["x-quiver-decision-id"].to_str().unwrap();
    let logged: Vec<String> = quiver_serve::log::read_log(&dir.join("log"))
        .unwrap()
        .iter()
        .filter(|r| r.decision_id == id)
        .map(|r| {
            serde_json::to_value(r.event)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(logged, events, "{id}");
}

/// In the log under `dir`: the child decisions (escalations called), and the qualities of
/// 0 (first answers that failed a cascade's check).
fn escalations_logged(dir: &Path) -> (usize, usize) {
    let records = quiver_serve::log::read_log(&dir.join("log")).unwrap();
    let children = records.iter().filter(|r| r.parent_decision_id.is_some()).count();
    let failed_answers = records.iter().filter(|r| r.quality == Some(0.0)).count();
    (children, failed_answers)
}

/// An upstream that streams as providers may: the model it is asked for says how. `late`
/// sends a keep-alive comment at once and its first event after 1.5 s; `json` answers a
/// stream with a JSON completion; `erring` sends an error event, then `[DONE]`; `cut`
/// breaks off in the middle of its second event; any other streams one event and `[DONE]`.
async fn awkward_upstream() -> SocketAddr {
    let app = axum::Router::new().route(
        "/chat/completions",
        axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
            let content =
                |text: &str| format!("data: {}\n\n", json!({"choices": [{"delta": {"content": text}}]}));
            let (done, now) = ("data: [DONE]\n\n".to_string(), Duration::ZERO);
            let events: Vec<(Duration, Result<String, std::io::Error>)> = match body["model"].as_str() {
                Some("late") => vec![
                    (now, Ok(": keep-alive\n\n".into())),
                    (Duration::from_millis(1500), Ok(content("late"))),
                    (now, Ok(done)),
                ],
                Some("json") => {
                    let answer = json!({"choices": [{"message": {"role": "assistant", "content": "whole"}}]});
                    return axum::Json(answer).into_response();
                }
                Some("erring") => vec![
                    (now, Ok(content("a"))),
                    (
                        now,
                        Ok(format!("data: {}\n\n", json!({"error": {"message": "boom"}}))),
                    ),
                    (now, Ok(done)),
                ],
                Some("rejecting") => vec![
                    (
                        now,
                        Ok(format!(
                            "data: {}\n\n",
                            json!({"error": {"message": "too long", "code": 400}})
                        )),
                    ),
                    (now, Ok(done)),
                ],
                Some("cut") => vec![
                    (now, Ok(content("a"))),
                    (
                        now,
                        Ok("data: {\"choices\": [{\"delta\": {\"content\": \"par".into()),
                    ),
                    (Duration::from_millis(50), Err(std::io::Error::other("gone"))),
                ],
                _ => vec![(now, Ok(content("fine"))), (now, Ok(done))],
            };
            let events = futures_util::stream::iter(events).then(|(wait, event)| async move {
                tokio::time::sleep(wait).await;
                event
            });
            let body = axum::body::Body::from_stream(events);
            ([(axum::http::header::CONTENT_TYPE, "text/event-stream")], body).into_response()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Streams as providers send them, read as their events say: a keep-alive comment is not
/// the first event (the upstream timeout still falls back), nor is a JSON answer an event
/// stream (it falls back); an error event is the call's failure though `[DONE]` follows;
/// a stream broken off mid-event ends with an error event the client can read, in place
/// of the event cut short. Failures mid-stream count against the model's breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_read_as_their_events_say() {
    let dir = scratch("serve_awkward_streams");
    let up = Some(awkward_upstream().await);
    let route = |name: &str, first: &str| json!({"name": name, "policy": format!("fixed({first})"), "models": [model(first, up), model("fine", up)]});
    // A cap that any call under way holds: one the upstream refused must end.
    let mut capped = route("rejecting", "rejecting");
    capped["spend_cap"] = json!({"daily_usd": 1e-9});
    let base = start_app(
        json!({
            "upstream_timeout_ms": 500,
            "upstream_retries": 0,
            "circuit_breaker": {"window": 10, "min_calls": 2, "failure_rate": 0.5, "cooldown_ms": 60000},
            "routes": [route("slow", "late"), route("whole", "json"), route("erring", "erring"), route("cut", "cut"), capped]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let stream = |route: &str| {
        let body = json!({"model": route, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let (client, url) = (&client, format!("{base}/v1/chat/completions"));
        async move {
            let answer = post(client, url, "", &body).await;
            assert_eq!(answer.status(), 200);
            let model = answer.headers()["x-quiver-model"].to_str().unwrap().to_string();
            let decision = answer.headers()["x-quiver-decision-id"]
                .to_str()
                .unwrap()
                .to_string();
            (model, decision, answer.text().await.unwrap())
        }
    };
    for (route, served) in [
        ("slow", "fine"),
        ("whole", "fine"),
        ("erring", "erring"),
        ("cut", "cut"),
    ] {
        assert_eq!(stream(route).await.0, served, "{route}");
    }
    let (_, cut, text) = stream("cut").await;
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(events.len(), 2, "{text}");
    for event in &events {
        let data = event.strip_prefix("data: ").unwrap();
        serde_json::from_str::<Value>(data).unwrap_or_else(|e| panic!("{e}: {text}"));
    }
    assert!(events[1].contains("\"error\""), "{text}");

    // Each stream's outcome is recorded as it ends; one the upstream refused in its
    // stream is not learned.
    let rejected = stream("rejecting").await.1;
    let erring = stream("erring").await.1;
    let failed = |id: &str| {
        let records = quiver_serve::log::read_log(&dir.join("log")).unwrap();
        let outcome = records
            .iter()
            .find(|r| r.decision_id == id && r.event.name() == "outcome");
        outcome.map(|r| r.error)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while failed(&erring).is_none() || failed(&cut).is_none() {
        assert!(std::time::Instant::now() < deadline, "no outcome");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((failed(&erring), failed(&cut)), (Some(true), Some(true)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(failed(&rejected), None);
    let again =
        json!({"model": "rejecting", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let status = post(&client, format!("{base}/v1/chat/completions"), "", &again)
        .await
        .status();
    assert_eq!(status, 200, "the refused call still counts as under way");
    // Each failed twice mid-stream: its breaker opened.
    for route in ["erring", "cut"] {
        let state = get_json(&client, format!("{base}/v1/routes/{route}"), "").await;
        let arm = state["arms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["arm"] == route)
            .unwrap();
        assert_eq!(arm["circuit"], "open", "{state}");
    }
}

/// The request goes upstream with its fields in the order the client wrote them: a JSON
/// schema's properties are generated in their order (a reasoning before its answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_goes_upstream_in_the_clients_order() {
    let dir = scratch("serve_key_order");
    let echo = Some(upstream("echo").await);
    let route = json!({"name": "r", "policy": "fixed(echo)", "models": [model("echo", echo)]});
    let base = start_app(json!({"routes": [route]}), &dir).await;
    let schema = r#"{"type":"json_schema","json_schema":{"name":"a","schema":{"type":"object","properties":{"reasoning":{"type":"string"},"answer":{"type":"string"}}}}}"#;
    let body = format!(
        r#"{{"zeta":1,"model":"r","messages":[{{"role":"user","content":"hi"}}],"response_format":{schema}}}"#
    );
    let answer = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    let received = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(received.starts_with(r#"{"zeta":1,"model":"#), "{received}");
    assert!(
        received.ends_with(&format!(r#""response_format":{schema}}}"#)),
        "{received}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_falls_back_in_order_and_streams() {
    let (failing, badjson, slow, good, refusing, missing) = (
        upstream("failing").await,
        upstream("badjson").await,
        upstream("slow").await,
        upstream("good").await,
        upstream("refusing").await,
        upstream("missing").await,
    );
    let dir = scratch("serve_proxy");
    let base = start_app(
        json!({
            "upstream_timeout_ms": 500,
            "auth": {"admin_tokens": ["admin"]},
            "routes": [
                {"name": "chat", "policy": "fixed(failing)", "models": [model("failing", Some(failing)), model("badjson", Some(badjson)), model("slow", Some(slow)), model("good", Some(good))]},
                {"name": "stream", "policy": "fixed(good)", "models": [model("good", Some(good)), model("failing", Some(failing))]},
                {"name": "dead", "policy": "fixed(failing)", "models": [model("failing", Some(failing)), model("badjson", Some(badjson))]},
                {"name": "strict", "policy": "fixed(refusing)", "models": [model("refusing", Some(refusing)), model("good", Some(good))]},
                {"name": "moved", "policy": "fixed(missing)", "models": [model("missing", Some(missing)), model("good", Some(good))]}
            ]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let response = post(
        &client,
        format!("{base}/v1/chat/completions"),
        "admin",
        &json!({"model": "chat", "messages": [{"role": "user", "content": "Say hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-quiver-model"], "good");
    assert!(response.headers()["x-quiver-decision-id"]
        .to_str()
        .unwrap()
        .starts_with("chat:"));
    assert_logged(&dir, &response, ["decision", "outcome"]);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "answer from good for \"good\""
    );
    // The policy's own choice failed: recorded as an error of `failing`.
    let state = get_json(&client, format!("{base}/v1/routes/chat"), "admin").await;
    assert_eq!(state["arms"][0]["arm"], "failing");
    assert_eq!(state["arms"][0]["requests"], 1);
    assert_eq!(state["arms"][0]["errors"], 1);
    // A name whose percent-encoding is not UTF-8 is refused in the API's error shape.
    for path in ["v1/routes/%FF", "v1/models/%FF"] {
        let refused = client
            .get(format!("{base}/{path}"))
            .bearer_auth("admin")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "{path}");
        let body: Value = refused.json().await.unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains("UTF-8"),
            "{body}"
        );
    }
    // Fallback went failing (a 500, called again once after a backoff) -> badjson -> slow
    // (timed out, not retried) -> good: four failed calls.
    let metrics = get_text(&client, format!("{base}/metrics"), "admin").await;
    assert_line(&metrics, "quiver_upstream_failures_total 4");
    for (model, calls) in [("failing", 2), ("badjson", 1), ("slow", 1)] {
        let line =
            format!("quiver_upstream_attempt_seconds_count{{model=\"{model}\",path=\"/chat/completions\",result=\"error\"}} {calls}");
        assert_line(&metrics, &line);
    }
    let dead = post(
        &client,
        format!("{base}/v1/chat/completions"),
        "admin",
        &json!({"model": "dead", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(dead.status(), 502);
    // The error names the route's decision, as the log and dashboard hold it: its first
    // model's call failed (its fallback's is a decision of its own).
    let failed_id = dead.headers()["x-quiver-decision-id"]
        .to_str()
        .unwrap()
        .to_string();
    let recent = get_json(&client, format!("{base}/v1/routes/dead/decisions"), "admin").await;
    let named = recent["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["decision_id"] == failed_id.as_str())
        .unwrap_or_else(|| panic!("{failed_id} not in {recent}"));
    assert_eq!(
        (&named["model"], &named["quality"]),
        (&json!("failing"), &json!(0.0))
    );
    let reason: Value = dead.json().await.unwrap();
    assert!(
        reason["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("every model of route `dead` failed"),
        "{reason}"
    );

    let streamed = post(
        &client,
        format!("{base}/v1/chat/completions"),
        "admin",
        &json!({"model": "stream", "stream": true, "messages": [{"role": "user", "content": "Say hello"}]}),
    )
    .await;
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.headers()["content-type"], "text/event-stream");
    // The upstream call did not wait for the decision's fsync, but the answer did; the
    // outcome follows when the stream ends, after its last event.
    assert_logged(&dir, &streamed, ["decision"]);
    let text = streamed.text().await.unwrap();
    assert!(
        text.contains("\"Hel\"") && text.contains("\"lo\"") && text.contains("[DONE]"),
        "{text}"
    );
    // The outcome is recorded as the stream's body is dropped, a moment after its end.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let state = loop {
        let state = get_json(&client, format!("{base}/v1/routes/stream"), "admin").await;
        let spent = state["arms"][0]["spend_usd"].as_f64().is_some_and(|s| s > 0.0);
        if spent || std::time::Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(state["arms"][0]["requests"], 1);
    assert_eq!(state["arms"][0]["errors"], 0);
    // 9 prompt and 2 completion tokens at $1 and $2 per million.
    assert!((state["arms"][0]["spend_usd"].as_f64().unwrap() - 13e-6).abs() < 1e-12);

    let all_fail = post(
        &client,
        format!("{base}/v1/chat/completions"),
        "admin",
        &json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(all_fail.status(), 404);
    let error: Value = all_fail.json().await.unwrap();
    assert_eq!(error["error"]["message"], "unknown route `nope`");

    // A chat OpenAI would refuse is refused before any decision, naming the message.
    let before = get_json(&client, format!("{base}/v1/routes/chat"), "admin").await;
    assert!(before["decisions"].is_u64(), "{before}");
    for (messages, said) in [
        (json!([]), "`messages` must be a non-empty array of chat messages"),
        (
            json!(["hi"]),
            "`messages[0]` must be an object with a string `role`",
        ),
        (
            json!([{"role": "system", "content": "be brief"}, {"content": "hi"}]),
            "`messages[1]` must be an object with a string `role`",
        ),
        (
            json!([{"role": "user", "content": 7}]),
            "`messages[0]` has a `content` that is neither a string nor a list of parts",
        ),
        (json!([{"role": "user"}]), "`messages[0]` has no `content`"),
    ] {
        let refused = post(
            &client,
            format!("{base}/v1/chat/completions"),
            "admin",
            &json!({"model": "chat", "messages": messages}),
        )
        .await;
        assert_eq!(refused.status(), 400, "{messages}");
        let error: Value = refused.json().await.unwrap();
        assert_eq!(error["error"]["message"], said, "{messages}");
    }
    let after = get_json(&client, format!("{base}/v1/routes/chat"), "admin").await;
    assert_eq!(after["decisions"], before["decisions"]);
    // `/v1/route` reads chat messages by the same rules: text parts, an assistant's null.
    let route = |messages: Value| {
        client
            .post(format!("{base}/v1/route"))
            .bearer_auth("admin")
            .json(&json!({"route": "chat", "messages": messages}))
            .send()
    };
    let parts = json!([
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "assistant", "content": null},
        {"role": "user", "content": "hi"}
    ]);
    assert_eq!(route(parts).await.unwrap().status(), 200);
    let refused = route(json!([{"role": "user", "content": 7}])).await.unwrap();
    assert_eq!(refused.status(), 422);
    let error: Value = refused.json().await.unwrap();
    let said = error["error"]["message"].as_str().unwrap();
    assert!(
        said.contains("a chat message has a `content` that is neither a string nor a list of parts"),
        "{said}"
    );

    // An upstream that blames the request: its status and body reach the client as they
    // came, no other model is tried, and the model is not charged with a failure.
    let refused = post(
        &client,
        format!("{base}/v1/chat/completions"),
        "admin",
        &json!({"model": "strict", "messages": [{"role": "user", "content": "a very long prompt"}]}),
    )
    .await;
    assert_eq!(refused.status(), 400);
    assert_eq!(refused.headers()["x-quiver-model"], "refusing");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    let strict = get_json(&client, format!("{base}/v1/routes/strict"), "admin").await;
    for arm in strict["arms"].as_array().unwrap() {
        assert_eq!(
            (arm["requests"].as_u64(), arm["errors"].as_u64()),
            (Some(0), Some(0)),
            "{arm}"
        );
    }

    // A 404 is the model's (retired, or a wrong base_url): the next model answers.
    let moved = post(
        &client,
        format!("{base}/v1/chat/completions"),
        "admin",
        &json!({"model": "moved", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(moved.status(), 200);
    assert_eq!(moved.headers()["x-quiver-model"], "good");

    // Prometheus accepts the metrics, and the histograms counted what happened: `slow`
    // timed out once, `good` answered three times (once streaming), every request was timed
    // (the 4xx: an unknown route, an upstream's refusal, five chats refused).
    let metrics = get_text(&client, format!("{base}/metrics"), "admin").await;
    promtool_check(&metrics);
    for line in [
        "quiver_upstream_attempt_seconds_count{model=\"slow\",path=\"/chat/completions\",result=\"error\"} 1",
        "quiver_upstream_attempt_seconds_count{model=\"good\",path=\"/chat/completions\",result=\"ok\"} 3",
        "quiver_upstream_attempt_seconds_count{model=\"refusing\",path=\"/chat/completions\",result=\"refused\"} 1",
        "quiver_time_to_first_token_seconds_count{model=\"good\"} 1",
        "quiver_http_request_seconds_count{endpoint=\"/v1/chat/completions\",status=\"4xx\"} 7",
        "quiver_http_request_seconds_bucket{endpoint=\"/v1/chat/completions\",status=\"2xx\",le=\"+Inf\"} 3",
    ] {
        assert_line(&metrics, line);
    }
    let commits = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quiver_log_commit_seconds_count "))
        .unwrap();
    assert!(commits.parse::<u64>().unwrap() >= 4, "{commits}");
}

/// Cascades through the proxy: an answer that fails the route's check is escalated to
/// the stronger model, whose answer the client gets with the escalation's decision id and
/// the parent's; the log holds both decisions (the child's `parent_decision_id`,
/// propensity 1 and reason), both calls' outcomes, and quality 0 for the failed answer. A
/// stream is not checked; token log-probabilities are asked for when a check reads them
/// and taken out of the answer of a client that did not ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_escalates_an_answer_that_fails_its_check() {
    let dir = scratch("serve_cascade");
    let (plain, structured, unsure) = (
        upstream("ok").await,
        upstream("json").await,
        upstream("unsure").await,
    );
    let base = start_app(
        json!({
            "auth": {"route_tokens": ["r"], "feedback_tokens": ["f"], "admin_tokens": ["a"]},
            "routes": [
                {"name": "json", "policy": "fixed(cheap)", "models": [model("cheap", Some(plain)), model("strong", Some(structured))],
                 "cascade": {"then": "strong", "json": true}},
                {"name": "sure", "policy": "fixed(cheap)", "models": [model("cheap", Some(unsure)), model("strong", Some(structured))],
                 "cascade": {"then": "strong", "min_mean_logprob": -1.0}},
                {"name": "lenient", "policy": "fixed(cheap)", "models": [model("cheap", Some(unsure)), model("strong", Some(structured))],
                 "cascade": {"then": "strong", "regex": "may", "min_mean_logprob": -3.0}}
            ]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let chat = |route: &'static str, stream: bool| {
        let body = json!({"model": route, "stream": stream, "messages": [{"role": "user", "content": "give me JSON"}]});
        answered_chat(&client, &base, body)
    };
    let ([model_id, child, parent], text) = chat("json", false).await;
    assert_eq!(model_id.as_deref(), Some("strong"));
    let (child, parent) = (child.unwrap(), parent.unwrap());
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "{\"answer\": 42}");
    let records = quiver_serve::log::read_log(&dir.join("log")).unwrap();
    let of = |id: &str| -> Vec<&quiver_serve::log::LogRecord> {
        records.iter().filter(|r| r.decision_id == id).collect()
    };
    let events = |id: &str| of(id).iter().map(|r| r.event.name()).collect::<Vec<_>>();
    assert_eq!(events(&parent), ["decision", "outcome", "feedback"]);
    assert_eq!(
        (of(&parent)[0].arm.as_str(), of(&parent)[2].quality),
        ("cheap", Some(0.0))
    );
    assert_eq!(events(&child), ["decision", "outcome"]);
    let (decided, outcome) = (of(&child)[0], of(&child)[1]);
    assert_eq!(decided.arm, "strong");
    assert_eq!(decided.propensity, 1.0);
    assert_eq!(decided.parent_decision_id.as_deref(), Some(parent.as_str()));
    assert_eq!(decided.reason.as_deref(), Some("cascade: the answer is not JSON"));
    // 10 prompt tokens at $1 and 5 completion tokens at $2 a million.
    assert!((outcome.cost_usd - 2e-5).abs() < 1e-12, "{}", outcome.cost_usd);
    assert!((of(&parent)[1].cost_usd - 2e-5).abs() < 1e-12);
    // The client's feedback goes to the answer it got.
    let feedback = json!({"decision_id": child, "quality": 1.0});
    let answer = post(&client, format!("{base}/v1/feedback"), "f", &feedback).await;
    assert_eq!(answer.status(), 200);

    // A stream passes unchecked.
    let ([model_id, _, parent], _) = chat("json", true).await;
    assert_eq!((model_id.as_deref(), parent), (Some("cheap"), None));
    // Unsure (mean log-probability -2 under -1): escalated; the upstream was asked for
    // log-probabilities the client did not ask for.
    let ([model_id, _, parent], _) = chat("sure", false).await;
    assert_eq!(model_id.as_deref(), Some("strong"));
    assert!(parent.is_some());
    // Sure enough for a lenient check (-2 over -3): the first answer, without them.
    let ([model_id, _, parent], text) = chat("lenient", false).await;
    assert_eq!((model_id.as_deref(), parent), (Some("cheap"), None));
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "maybe");
    assert!(answer["choices"][0].get("logprobs").is_none(), "{answer}");

    let metrics = get_text(&client, format!("{base}/metrics"), "a").await;
    assert_eq!(sample(&metrics, "quiver_cascade_escalations_total", &[]), 2.0);
    // Off-policy evaluation leaves the escalations out, and takes the rest with their
    // outcomes and feedback (the failed answers' quality 0).
    let log_dir = dir.join("log");
    let log = log_dir.to_str().unwrap();
    let read = quiver_sim::data::load_logged(log, quiver_sim::data::Format::Auto, None).unwrap();
    assert_eq!(read.decision_ids.len(), 4, "the first model's four decisions");
    assert!(!read.decision_ids.contains(&child));
    assert_eq!(read.quality.iter().filter(|q| **q == Some(0.0)).count(), 2);
}

/// An escalation no deployment can take makes no call and logs no child decision: the
/// first answer is served, learned as quality 0, where a failed call of quality 0 was once
/// logged for the stronger model, which was never asked. An escalation the stronger
/// model's upstream refuses itself (a 400) is not learned as a failure of that model, as
/// a first call's refusal is not: the first answer is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_no_deployment_can_take_is_not_logged() {
    let dir = scratch("serve_cascade_busy");
    let (plain, structured, refusing) = (
        upstream("ok").await,
        upstream("json").await,
        upstream("refusing").await,
    );
    let strong = json!({"id": "strong", "input_usd_per_million": 1.0, "output_usd_per_million": 2.0,
                        "deployments": [{"name": "only", "base_url": format!("http://{structured}"), "rpm": 1}]});
    let base = start_app(
        json!({
            "routes": [
                {"name": "json", "policy": "fixed(cheap)", "models": [model("cheap", Some(plain)), strong],
                 "cascade": {"then": "strong", "json": true}},
                {"name": "strict", "policy": "fixed(cheap)", "models": [model("cheap", Some(plain)), model("strong", Some(refusing))],
                 "cascade": {"then": "strong", "json": true}}
            ]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let mut served = Vec::new();
    for _ in 0..2 {
        let body = json!({"model": "json", "messages": [{"role": "user", "content": "give me JSON"}]});
        let ([model, _, parent], _) = answered_chat(&client, &base, body).await;
        served.push((model.unwrap(), parent));
    }
    assert_eq!(served[0].0, "strong");
    assert_eq!(
        served[1],
        ("cheap".to_string(), None),
        "the deployment's one call a minute is spent"
    );
    let (children, failed_answers) = escalations_logged(&dir);
    assert_eq!(children, 1, "one escalation called, one not");
    assert_eq!(failed_answers, 2, "both first answers failed the check");
    let metrics = get_text(&client, format!("{base}/metrics"), "").await;
    assert_eq!(sample(&metrics, "quiver_cascade_escalations_total", &[]), 1.0);

    let body = json!({"model": "strict", "messages": [{"role": "user", "content": "give me JSON"}]});
    let ([model, _, parent], _) = answered_chat(&client, &base, body).await;
    assert_eq!((model.as_deref(), parent), (Some("cheap"), None));
    let records = quiver_serve::log::read_log(&dir.join("log")).unwrap();
    let refused: Vec<&str> = records
        .iter()
        .filter(|r| r.route == "strict" && r.parent_decision_id.is_some())
        .map(|r| r.event.name())
        .collect();
    assert_eq!(
        refused,
        ["decision"],
        "the refused escalation is logged, not learned"
    );
    let state = get_json(&client, format!("{base}/v1/routes/strict"), "").await;
    let strong = state["arms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["arm"] == "strong")
        .unwrap();
    assert_eq!(strong["errors"], 0, "{state}");
}

/// A cascade's escalation is a second call: the spend caps are asked again before it is
/// made, so a route downgraded since its decision, or one at its cap, serves the first
/// answer rather than call the dearer model, and does not keep it in the cache. The
/// savings claim nothing for an escalation's call, since the request's first call counted
/// what the dearest model would have cost: they are that less what both calls cost,
/// served and on a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_keeps_to_the_spend_caps_and_claims_no_saving() {
    let dir = scratch("serve_cascade_caps");
    let (plain, structured) = (upstream("ok").await, upstream("json").await);
    // A call of 10 prompt and 5 completion tokens: $2e-5 on `cheap`, $2e-4 on `strong`.
    let strong = json!({"id": "strong", "base_url": format!("http://{structured}"),
                        "input_usd_per_million": 10.0, "output_usd_per_million": 20.0});
    let route = |name: &str, cap: Value| {
        json!({"name": name, "policy": "fixed(cheap)", "spend_cap": cap,
               "models": [model("cheap", Some(plain)), strong.clone()],
               "cascade": {"then": "strong", "json": true}})
    };
    let config = json!({
        "cache": {"enabled": true},
        "routes": [
            // Downgraded from $2.25e-4: after one escalated request and a second's first call.
            route("downgraded", json!({"daily_usd": 2.5e-4})),
            // Reached at the same point.
            route("capped", json!({"daily_usd": 2.3e-4, "downgrade_at": 1.0}))
        ]
    });
    let base = start_app(config.clone(), &dir).await;
    let client = reqwest::Client::new();
    let ask = |route: &str, prompt: &str| {
        let body = json!({"model": route, "messages": [{"role": "user", "content": prompt}]});
        let url = format!("{base}/v1/chat/completions");
        let client = &client;
        async move { post(client, url, "r", &body).await }
    };
    let served = |answer: &reqwest::Response| {
        let header = |name| {
            answer
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        (
            header("x-quiver-model"),
            header("x-quiver-parent-decision-id").is_some(),
        )
    };
    for route in ["downgraded", "capped"] {
        let first = ask(route, "one").await;
        assert_eq!(served(&first), (Some("strong".into()), true), "{route}");
        let second = ask(route, "two").await;
        assert_eq!(second.status(), 200);
        assert_eq!(
            served(&second),
            (Some("cheap".into()), false),
            "{route}: not escalated"
        );
    }
    let (children, failed_answers) = escalations_logged(&dir);
    assert_eq!(children, 2, "one escalation a route");
    assert_eq!(failed_answers, 4, "every first answer failed the check");
    // The answer served after a refused escalation was not kept: its repeat asks the
    // route, which is at its cap; the escalated answer was kept, and is served.
    assert_eq!(ask("capped", "two").await.status(), 429);
    let again = ask("capped", "one").await;
    assert_eq!(again.headers()["x-quiver-cache"], "hit");

    // Both calls cost $2.2e-4 and the second request $2e-5, where `strong` would have
    // cost $4e-4 for the two.
    let savings = 4e-4 - 2.4e-4;
    let state = get_json(&client, format!("{base}/v1/routes/downgraded"), "").await;
    let saved = state["savings_month_usd"].as_f64().unwrap();
    assert!((saved - savings).abs() < 1e-12, "{saved}");
    let copy = scratch("serve_cascade_caps_restart");
    for entry in std::fs::read_dir(dir.join("log")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.file_name().unwrap() != "lock" {
            std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
        }
    }
    let routes: Vec<quiver_serve::RouteConfig> = serde_json::from_value(config["routes"].clone()).unwrap();
    let restarted = quiver_serve::Router::open(routes, &copy).unwrap();
    let saved = restarted.savings("downgraded").unwrap();
    assert!((saved - savings).abs() < 1e-12, "{saved} on a restart");
}

/// `/v1/feedback` takes a call's other metrics beside its quality: the report is then the
/// call's outcome, as `/v1/outcome` takes it (logged once, with the cost and the quality,
/// and counted in the route's spend); metrics without a latency are refused, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_may_carry_the_calls_other_metrics() {
    let dir = scratch("serve_feedback_metrics");
    let base = start_app(
        json!({"routes": [{"name": "r", "policy": "random", "models": [model("a", None), model("b", None)]}]}),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let decide = || async {
        let routed = post_json(
            &client,
            format!("{base}/v1/route"),
            "",
            &json!({"route": "r", "prompt": "hi"}),
        )
        .await;
        routed["decision_id"].as_str().unwrap().to_string()
    };
    let feedback = |body: Value| {
        let (client, url) = (&client, format!("{base}/v1/feedback"));
        async move { post(client, url, "", &body).await }
    };
    let (plain, full) = (decide().await, decide().await);
    let answer = feedback(json!({"decision_id": plain, "quality": 0.5})).await;
    assert_eq!(answer.status(), 200);
    let body = json!({"decision_id": full, "quality": 1.0, "latency_ms": 250.0, "cost_usd": 0.003,
                      "input_tokens": 12, "output_tokens": 40});
    let answer = feedback(body.clone()).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.json::<Value>().await.unwrap()["status"], "applied");
    assert_eq!(
        feedback(body).await.json::<Value>().await.unwrap()["status"],
        "already_applied"
    );
    let refused = feedback(json!({"decision_id": plain, "quality": 0.5, "cost_usd": 0.001})).await;
    assert_eq!(refused.status(), 422);
    let refusal: Value = refused.json().await.unwrap();
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`latency_ms`"),
        "{refusal}"
    );

    let records = quiver_serve::log::read_log(&dir.join("log")).unwrap();
    let reported: Vec<_> = records
        .iter()
        .filter(|r| r.decision_id == full && r.event.name() != "decision")
        .collect();
    assert_eq!(reported.len(), 1, "one record for the report");
    let outcome = reported[0];
    assert_eq!(outcome.event.name(), "outcome");
    assert_eq!(
        (
            outcome.quality,
            outcome.cost_usd,
            outcome.latency_ms,
            outcome.output_tokens
        ),
        (Some(1.0), 0.003, 250.0, 40)
    );
    let state = get_json(&client, format!("{base}/v1/routes/r"), "").await;
    assert!(
        (state["spend_today_usd"].as_f64().unwrap() - 0.003).abs() < 1e-12,
        "{state}"
    );
    // Each model shows the qualities it learned and their mean (null before the first).
    let arms = state["arms"].as_array().unwrap();
    let learned: u64 = arms.iter().map(|a| a["qualities"].as_u64().unwrap()).sum();
    let sum: f64 = arms
        .iter()
        .map(|a| a["qualities"].as_f64().unwrap() * a["mean_quality"].as_f64().unwrap_or(0.0))
        .sum();
    assert_eq!((learned, sum), (2, 1.5), "{state}");
    assert!(
        arms.iter()
            .all(|a| a["mean_quality"].is_null() == (a["qualities"] == 0)),
        "{state}"
    );
}

/// A chat through the proxy (with the route token `r`, which a server without auth takes
/// too), which must be answered: its model, decision and parent decision headers, and its
/// body.
async fn answered_chat(client: &reqwest::Client, base: &str, body: Value) -> ([Option<String>; 3], String) {
    let answer = post(client, format!("{base}/v1/chat/completions"), "r", &body).await;
    assert_eq!(answer.status(), 200);
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let headers = [
        header("x-quiver-model"),
        header("x-quiver-decision-id"),
        header("x-quiver-parent-decision-id"),
    ];
    (headers, answer.text().await.unwrap())
}

/// The decision records of a log directory, in order: `(reason, session, model, propensity)`.
fn logged_decisions(dir: &Path) -> Vec<(Option<String>, Option<String>, String, f64)> {
    quiver_serve::log::read_log(&dir.join("log"))
        .unwrap()
        .into_iter()
        .filter(|r| r.event == quiver_serve::log::LogEvent::Decision)
        .map(|r| (r.reason, r.session, r.arm, r.propensity))
        .collect()
}

/// Sessions over HTTP: a session named in `/v1/route`'s body (or its `x-quiver-session`
/// header, which wins) stays on its first model, with propensity 1 and the reason
/// `session: stay` in the log, until its call fails; requests without one are decided
/// afresh each time; the proxy takes OpenAI's `user` as the session. The log holds a
/// digest, never the session's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stays_on_its_model_until_a_call_fails() {
    let dir = scratch("serve_sessions");
    let (one, two) = (upstream("ok").await, upstream("ok").await);
    let base = start_app(
        json!({
            "auth": {"route_tokens": ["r"], "feedback_tokens": ["f"], "admin_tokens": ["a"]},
            "routes": [{"name": "learn", "policy": "random", "models": [model("one", Some(one)), model("two", Some(two))]}]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let route = |session: Option<&'static str>, header: Option<&'static str>| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let mut request = client.post(format!("{base}/v1/route")).bearer_auth("r");
            if let Some(h) = header {
                request = request.header("x-quiver-session", h);
            }
            let body = json!({"route": "learn", "prompt": "hello", "session": session});
            let answer: Value = request.json(&body).send().await.unwrap().json().await.unwrap();
            (
                answer["decision_id"].as_str().unwrap().to_string(),
                answer["model"].as_str().unwrap().to_string(),
                answer["propensity"].as_f64().unwrap(),
            )
        }
    };
    let (_, first, p) = route(Some("alice"), None).await;
    assert_eq!(p, 0.5);
    let mut last = String::new();
    for _ in 0..9 {
        let (id, model, p) = route(Some("alice"), None).await;
        assert_eq!((model.as_str(), p), (first.as_str(), 1.0));
        last = id;
    }
    // Without a session, 40 decisions of a uniformly random policy on two models: both
    // models (all on one has probability 2^-39).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (_, model, p) = route(None, None).await;
        assert_eq!(p, 0.5);
        seen.insert(model);
    }
    assert_eq!(seen.len(), 2);
    // The header names another session than the body.
    let (_, _, p) = route(Some("alice"), Some("bob")).await;
    assert_eq!(p, 0.5, "a new session");
    // A failed call moves the session on: the next request is decided afresh.
    let outcome = json!({"decision_id": last, "latency_ms": 100.0, "error": true});
    let answer = post(&client, format!("{base}/v1/outcome"), "f", &outcome).await;
    assert_eq!(answer.status(), 200);
    let (_, _, p) = route(Some("alice"), None).await;
    assert_eq!(p, 0.5);
    // An empty header names no session: the body's stands.
    let (_, _, p) = route(Some("alice"), Some("")).await;
    assert_eq!(p, 1.0, "alice's session");

    // The proxy: OpenAI's `user`, which must be text.
    let body = json!({"model": "learn", "user": 5, "messages": [{"role": "user", "content": "hi"}]});
    let refused = post(&client, format!("{base}/v1/chat/completions"), "r", &body).await;
    assert_eq!(refused.status(), 400);
    let refusal: Value = refused.json().await.unwrap();
    assert_eq!(refusal["error"]["message"], "`user` must be a string, not 5");
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let body =
            json!({"model": "learn", "user": "carol", "messages": [{"role": "user", "content": "hi"}]});
        let answer = post(&client, format!("{base}/v1/chat/completions"), "r", &body).await;
        assert_eq!(answer.status(), 200);
        answered.insert(answer.headers()["x-quiver-model"].to_str().unwrap().to_string());
    }
    assert_eq!(answered.len(), 1, "{answered:?}");

    let logged = logged_decisions(&dir);
    let reasons: Vec<Option<&str>> = logged.iter().map(|(reason, ..)| reason.as_deref()).collect();
    let stay = Some("session: stay");
    let mut expected = vec![Some("session: new")];
    expected.extend([stay; 9]);
    expected.extend([None; 40]);
    expected.push(Some("session: new"));
    expected.push(Some("session: switch after a failed call"));
    expected.push(stay);
    expected.push(Some("session: new"));
    expected.extend([stay; 9]);
    assert_eq!(reasons, expected);
    let sessions: std::collections::BTreeSet<&str> =
        logged.iter().filter_map(|(_, s, ..)| s.as_deref()).collect();
    assert_eq!(sessions.len(), 3, "alice, bob and carol");
    assert!(sessions
        .iter()
        .all(|s| s.len() == 16 && !s.contains("alice") && !s.contains("carol")));
    assert!(logged
        .iter()
        .all(|(reason, _, _, p)| (*p == 1.0) == (reason.as_deref() == stay)));
    // Off-policy evaluation reads the decisions that gave every model its chance: all but
    // the 19 stays, both in memory and in chunks.
    let log_dir = dir.join("log");
    let log = log_dir.to_str().unwrap();
    let read = quiver_sim::data::load_logged(log, quiver_sim::data::Format::Auto, None).unwrap();
    assert_eq!(read.decision_ids.len(), logged.len() - 19);
    assert!(read.propensity.iter().all(|&p| p == 0.5));
    let stream = quiver_sim::data::LogStream::open(log, quiver_sim::data::Format::Auto, None, 7).unwrap();
    assert_eq!(stream.rows(), logged.len() - 19);
}

/// A restarted router finds its sessions in the log: a session keeps its model across
/// the restart, and a session whose last call failed moves on.
#[test]
fn sessions_are_rebuilt_from_the_log_on_restart() {
    let dir = scratch("sessions_restart");
    let models = vec![
        quiver_serve::ModelConfig::priced("one", 1.0, 2.0),
        quiver_serve::ModelConfig::priced("two", 1.0, 2.0),
    ];
    let config = quiver_serve::RouteConfig::new("chat", "random", models);
    let request = |session: &str| quiver_serve::RouteRequest {
        prompt: Some("hello".into()),
        session: Some(session.into()),
        ..Default::default()
    };
    let (kept, failed) = {
        let router = quiver_serve::Router::open(vec![config.clone()], &dir).unwrap();
        let kept = router.route("chat", &request("kept")).unwrap().wait().unwrap();
        let failed = router.route("chat", &request("failed")).unwrap().wait().unwrap();
        let outcome = quiver_bandit::Outcome::new(100.0, 0.0).failed();
        router
            .record_outcome(&failed.decision_id, &outcome)
            .unwrap()
            .wait()
            .unwrap();
        (kept.decision.arm, failed.decision.arm)
    };
    let router = quiver_serve::Router::open(vec![config], &dir).unwrap();
    let again = router
        .route("chat", &request("kept"))
        .unwrap()
        .wait()
        .unwrap()
        .decision;
    assert_eq!((again.arm, again.propensity), (kept, 1.0));
    let moved = router
        .route("chat", &request("failed"))
        .unwrap()
        .wait()
        .unwrap()
        .decision;
    assert_eq!(moved.propensity, 0.5, "decided afresh, not kept on {failed}");
}

/// Routes `n` requests on `route`: each decision's model and propensity.
async fn route_many(client: &reqwest::Client, base: &str, route: &str, n: usize) -> Vec<(String, f64)> {
    let mut decided = Vec::new();
    for i in 0..n {
        let url = format!("{base}/v1/route");
        let r = post_json(
            client,
            url,
            "r",
            &json!({"route": route, "prompt": format!("request {i}")}),
        )
        .await;
        decided.push((
            r["model"].as_str().unwrap().to_string(),
            r["propensity"].as_f64().unwrap(),
        ));
    }
    decided
}

/// A canary under an operator, over HTTP: every decision's propensity is the mixture's
/// (a quarter of the traffic on the canary `fixed(strong)`, three quarters once promoted,
/// none once rolled back), the admin endpoint promotes, blocks and rolls back, each an
/// event in the log with its reason (a repeat changes nothing and logs nothing), the
/// candidates report and `/metrics` say so, and bad requests get their reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_promotes_blocks_and_rolls_back_a_canary() {
    let dir = scratch("serve_canary");
    let base = start_app(
        json!({
            "auth": {"route_tokens": ["r"], "feedback_tokens": ["f"], "admin_tokens": ["a"]},
            "routes": [
                {"name": "learn", "policy": "fixed(weak)", "models": [model("weak", None), model("strong", None)],
                 "canary": {"policy": "fixed(strong)", "share": 0.25}},
                {"name": "plain", "policy": "fixed(weak)", "models": [model("weak", None)]}
            ]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let act = |action: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let url = format!("{base}/v1/routes/learn/canary");
            post_json(&client, url, "a", &json!({ "action": action })).await
        }
    };
    // The mixture's propensities: fixed(weak) with 1 - s, fixed(strong) with s.
    let check = |decided: &[(String, f64)], share: f64| {
        for (model, p) in decided {
            let expected = if model == "strong" { share } else { 1.0 - share };
            assert!((p - expected).abs() < 1e-12, "{model}: {p}, not {expected}");
        }
        decided.iter().filter(|(m, _)| m == "strong").count()
    };
    // 400 coins at 1/4: 100 +- 8.7; six standard deviations either way.
    let strong = check(&route_many(&client, &base, "learn", 400).await, 0.25);
    assert!((48..=152).contains(&strong), "{strong} of 400 on the canary");

    let promoted = act("promote").await;
    assert_eq!(promoted["stage"], "promoted");
    assert_eq!(promoted["serving_share"], 0.75);
    assert_eq!(act("promote").await["promotions"], 1, "a repeat changes nothing");
    let strong = check(&route_many(&client, &base, "learn", 400).await, 0.75);
    assert!(
        (248..=352).contains(&strong),
        "{strong} of 400 on the promoted canary"
    );

    assert_eq!(act("block").await["blocked"], true);
    let metrics = get_text(&client, format!("{base}/metrics"), "a").await;
    promtool_check(&metrics);
    // Policies are named by their canonical specs.
    let labels = ["route=\"learn\"", "policy=\"fixed(arm=strong)\""];
    let promoted_stage = [labels[0], labels[1], "stage=\"promoted\""];
    assert_eq!(sample(&metrics, "quiver_canary_stage", &promoted_stage), 1.0);
    assert_eq!(
        sample(&metrics, "quiver_canary_stage", &labels),
        1.0,
        "one stage at a time"
    );
    assert_eq!(sample(&metrics, "quiver_canary_serving_share", &labels), 0.75);
    assert_eq!(sample(&metrics, "quiver_canary_gate_blocked", &labels), 1.0);
    assert_eq!(sample(&metrics, "quiver_canary_promotions_total", &labels), 1.0);

    let rolled_back = act("roll_back").await;
    assert_eq!(
        (rolled_back["stage"].as_str(), rolled_back["rollbacks"].as_u64()),
        (Some("rolled_back"), Some(1))
    );
    check(&route_many(&client, &base, "learn", 50).await, 0.0);
    let report = get_json(&client, format!("{base}/v1/routes/learn/candidates"), "a").await;
    assert_eq!(report["canary"]["stage"], "rolled_back");
    assert_eq!(report["candidates"][0]["policy"], "fixed(arm=strong)");

    let events: Vec<(String, String, Option<String>)> = quiver_serve::log::read_log(&dir.join("log"))
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.event.name().starts_with("promotion")
                || r.event.name().contains("gate")
                || r.event.name() == "rollback"
        })
        .map(|r| (r.event.name().to_string(), r.policy, r.reason))
        .collect();
    let by_operator = |event: &str| {
        (
            event.to_string(),
            "fixed(arm=strong)".to_string(),
            Some("by an operator".to_string()),
        )
    };
    assert_eq!(
        events,
        [
            by_operator("promotion"),
            by_operator("gate_blocked"),
            by_operator("rollback")
        ]
    );

    // Refusals: a route token, an unknown action, a route without a canary.
    let refusal = |route: &str, token: &'static str, action: &str| {
        let request = client
            .post(format!("{base}/v1/routes/{route}/canary"))
            .bearer_auth(token)
            .json(&json!({ "action": action }));
        async move {
            let answer = request.send().await.unwrap();
            (answer.status(), answer.text().await.unwrap())
        }
    };
    assert_eq!(refusal("learn", "r", "promote").await.0, 401);
    let (status, body) = refusal("learn", "a", "launch").await;
    assert!(status == 422 && body.contains("launch"), "{status} {body}");
    let (status, body) = refusal("plain", "a", "promote").await;
    assert!(status == 404 && body.contains("has no canary"), "{status} {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_shifts_to_the_arm_with_the_best_feedback_and_feedback_rules_hold() {
    let dir = scratch("serve_feedback");
    let base = start_app(
        json!({
            "max_body_bytes": 65536,
            "auth": {"route_tokens": ["r"], "feedback_tokens": ["f"], "admin_tokens": ["a"]},
            "routes": [{"name": "learn", "policy": "beta-ts(draws=32)", "models": [model("weak", None), model("strong", None)]}]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let route = |prompt: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let r = post_json(
                &client,
                format!("{base}/v1/route"),
                "r",
                &json!({"route": "learn", "prompt": prompt}),
            )
            .await;
            (
                r["decision_id"].as_str().unwrap().to_string(),
                r["model"].as_str().unwrap().to_string(),
            )
        }
    };
    let feedback = |id: String, quality: Value, token: &'static str| {
        let client = client.clone();
        let base = base.clone();
        async move {
            post(
                &client,
                format!("{base}/v1/feedback"),
                token,
                &json!({"decision_id": id, "quality": quality}),
            )
            .await
        }
    };
    let mut late = Vec::new();
    let mut last = Vec::new();
    for i in 0..200 {
        let (id, model) = route(format!("request {i}")).await;
        let quality = if model == "strong" { 0.9 } else { 0.1 };
        if i % 10 == 0 {
            late.push((id, quality));
        } else {
            let r = feedback(id, json!(quality), "f").await;
            assert_eq!(r.status(), 200);
        }
        if i >= 150 {
            last.push(model);
        }
    }
    // Late feedback, long after its decision, still counts.
    for (id, q) in late {
        let r: Value = feedback(id, json!(q), "f").await.json().await.unwrap();
        assert_eq!(r["status"], "applied");
    }
    let strong = last.iter().filter(|m| *m == "strong").count();
    assert!(strong >= 40, "strong got {strong} of the last 50");

    let (id, _) = route("one more".into()).await;
    assert_eq!(feedback(id.clone(), json!(0.5), "f").await.status(), 200);
    let again: Value = feedback(id.clone(), json!(0.5), "f").await.json().await.unwrap();
    assert_eq!(again["status"], "already_applied");
    let other = feedback(id.clone(), json!(0.7), "f").await;
    assert_eq!(other.status(), 409);
    let reason: Value = other.json().await.unwrap();
    assert!(
        reason["error"]["message"]
            .as_str()
            .unwrap()
            .contains("learned quality 0.5 already"),
        "{reason}"
    );
    assert_eq!(
        feedback("learn:99999".into(), json!(0.5), "f").await.status(),
        404
    );
    let invalid = feedback(id.clone(), json!(1.5), "f").await;
    assert_eq!(invalid.status(), 422);
    let reason: Value = invalid.json().await.unwrap();
    assert_eq!(reason["error"]["message"], "quality is 1.5, outside [0, 1]");
    assert_eq!(feedback(id.clone(), json!("high"), "f").await.status(), 422);
    let malformed = client
        .post(format!("{base}/v1/feedback"))
        .bearer_auth("f")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(feedback(id.clone(), json!(0.5), "wrong").await.status(), 401);
    assert_eq!(
        feedback(id.clone(), json!(0.5), "r").await.status(),
        401,
        "a routing token may not give feedback"
    );
    let no_token = client
        .post(format!("{base}/v1/route"))
        .json(&json!({"route": "learn", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    // Who may call what: each token set its own group, admin everything, health and the
    // API document anyone.
    for (method, path, allowed) in [
        ("POST", "/v1/route", ["r", "a"].as_slice()),
        ("GET", "/v1/models", &["r", "a"]),
        ("GET", "/v1/models/learn", &["r", "a"]),
        ("POST", "/v1/chat/completions", &["r", "a"]),
        ("POST", "/v1/feedback", &["f", "a"]),
        ("POST", "/v1/outcome", &["f", "a"]),
        ("GET", "/v1/routes/learn", &["a"]),
        ("GET", "/v1/routes/learn/snapshot", &["a"]),
        ("GET", "/metrics", &["a"]),
        ("GET", "/healthz", &["", "r", "f", "a", "wrong"]),
        ("GET", "/openapi.json", &["", "r", "f", "a", "wrong"]),
    ] {
        for token in ["", "r", "f", "a", "wrong"] {
            let request = client
                .request(method.parse().unwrap(), format!("{base}{path}"))
                .bearer_auth(token)
                .json(&json!({}));
            let status = request.send().await.unwrap().status();
            assert_eq!(
                status == 401,
                !allowed.contains(&token),
                "{method} {path} with token `{token}`: {status}"
            );
        }
    }
    // The routes, as OpenAI models: what tools list at start-up.
    let models = get_json(&client, format!("{base}/v1/models"), "r").await;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "learn");
    assert_eq!(models["data"][0]["object"], "model");
    let one = client
        .get(format!("{base}/v1/models/learn"))
        .bearer_auth("r")
        .send()
        .await
        .unwrap();
    assert_eq!(one.json::<Value>().await.unwrap()["id"], "learn");
    let none = client
        .get(format!("{base}/v1/models/nope"))
        .bearer_auth("r")
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);
    assert!(none.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no route `nope`"));
    // A caller without a token is refused before its body is read, however large: 401,
    // not 413, and the connection closes.
    let unread = reqwest::Client::new()
        .post(format!("{base}/v1/route"))
        .json(&json!({"route": "learn", "prompt": "x".repeat(100_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(unread.status(), 401);
    assert_eq!(unread.headers()["connection"], "close");
    // The server answers 413 before reading the body and closes that connection: use a
    // client of its own, so that no later request is sent on the closed connection.
    let big = reqwest::Client::new()
        .post(format!("{base}/v1/route"))
        .bearer_auth("r")
        .json(&json!({"route": "learn", "prompt": "x".repeat(100_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    let metrics = get_text(&client, format!("{base}/metrics"), "a").await;
    assert_line(&metrics, "quiver_decisions_total{route=\"learn\"} 201");
    // Feedback by what became of it: a repeat is not counted as applied, a refusal not at all.
    for (status, count) in [("applied", 201), ("already_applied", 1)] {
        let line = format!("quiver_reports_total{{kind=\"feedback\",status=\"{status}\"}} {count}");
        assert_line(&metrics, &line);
    }
    let openapi: Value = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["paths"]["/v1/feedback"]["post"].is_object());
    assert!(
        openapi["paths"]["/v1/models"]["get"].is_object()
            && openapi["paths"]["/v1/models/{id}"]["get"].is_object()
    );
}

/// Every acknowledged operation survives SIGKILL, and the restored learner equals one that
/// applied the logged operations without interruption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged_and_restart_restores_the_state() {
    let dir = scratch("serve_crash");
    let config = dir.join("quiver.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nlog_dir = \"log\"\nsnapshot_interval_s = 1\n[[routes]]\nname = \"r\"\npolicy = \"lints(v=0.3,floor=0.05)\"\nw_cost = 10.0\n[[routes.models]]\nid = \"a\"\n[[routes.models]]\nid = \"b\"\n[[routes.models]]\nid = \"c\"\n",
    )
    .unwrap();
    let (mut child, base) = start_binary(&["--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<(String, f64)>::new()));
    let worker = {
        let acknowledged = Arc::clone(&acknowledged);
        let base = base.clone();
        tokio::spawn(async move {
            for i in 0..100_000 {
                let Ok(r) = client
                    .post(format!("{base}/v1/route"))
                    .json(&json!({"route": "r", "prompt": format!("question {i}")}))
                    .send()
                    .await
                else {
                    break;
                };
                let Ok(r) = r.json::<Value>().await else { break };
                let id = r["decision_id"].as_str().unwrap().to_string();
                let q = if r["model"] == "c" { 0.9 } else { 0.2 };
                let outcome = json!({"decision_id": id, "latency_ms": 100 + i % 50, "cost_usd": 0.001, "input_tokens": 10, "output_tokens": 20});
                match client
                    .post(format!("{base}/v1/outcome"))
                    .json(&outcome)
                    .send()
                    .await
                {
                    Ok(resp) if resp.status() == 200 => {}
                    _ => break,
                }
                match client
                    .post(format!("{base}/v1/feedback"))
                    .json(&json!({"decision_id": id, "quality": q}))
                    .send()
                    .await
                {
                    Ok(resp) if resp.status() == 200 => acknowledged.lock().unwrap().push((id, q)),
                    _ => break,
                }
            }
        })
    };
    // Let it run across at least one periodic snapshot, then kill it mid-stream.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    worker.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 20,
        "only {} operations before the kill",
        acknowledged.len()
    );

    // Every acknowledged feedback is in the log.
    let records = quiver_serve::log::read_log(&dir.join("log")).unwrap();
    for (id, q) in &acknowledged {
        assert!(
            records
                .iter()
                .any(|r| &r.decision_id == id && r.quality == Some(*q)),
            "acknowledged feedback for {id} is missing from the log"
        );
    }
    // An uninterrupted router fed the logged operations, in order.
    let reference_dir = scratch("serve_crash_reference");
    let routes: quiver_serve::ServeConfig = quiver_serve::ServeConfig::load(&config).unwrap();
    let reference = quiver_serve::Router::open(routes.routes.clone(), &reference_dir).unwrap();
    for r in &records {
        match r.event {
            quiver_serve::log::LogEvent::Decision => {
                let request = quiver_serve::RouteRequest {
                    prompt: Some(r.prompt.clone()),
                    ..Default::default()
                };
                let routed = reference.route("r", &request).unwrap().wait().unwrap();
                assert_eq!(routed.decision_id, r.decision_id);
                assert_eq!(
                    routed.decision.arm, r.arm,
                    "the reference decides as the server did"
                );
            }
            quiver_serve::log::LogEvent::Feedback => {
                reference
                    .feedback(&r.decision_id, r.quality.unwrap())
                    .unwrap()
                    .wait()
                    .unwrap();
            }
            quiver_serve::log::LogEvent::Outcome => {
                let outcome = quiver_bandit::Outcome::new(r.latency_ms, r.cost_usd)
                    .with_tokens(r.input_tokens, r.output_tokens);
                reference
                    .record_outcome(&r.decision_id, &outcome)
                    .unwrap()
                    .wait()
                    .unwrap();
            }
            // This server has no cache and no canary.
            event => panic!("a {} event on a route without cache or canary", event.name()),
        }
    }
    let (mut restarted, base) = start_binary(&["--config", config.to_str().unwrap()]);
    let restored: Value = reqwest::get(format!("{base}/v1/routes/r/snapshot"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expected = serde_json::to_value(reference.learner("r").unwrap().snapshot()).unwrap();
    restarted.kill().unwrap();
    restarted.wait().unwrap();
    assert_eq!(restored, expected);
}

#[tokio::test]
async fn demo_mode_serves_simulated_providers_labelled_as_such() {
    let (mut child, base) = start_demo("demo_mode");
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "demo", "messages": [{"role": "user", "content": "Which of the following explains tides? A) the moon"}]}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let quality = response
        .headers()
        .get("x-quiver-simulated-quality")
        .map(|v| v.to_str().unwrap().to_string());
    let id = response
        .headers()
        .get("x-quiver-decision-id")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = response.json().await.unwrap();
    let feedback = client
        .post(format!("{base}/v1/feedback"))
        .json(&json!({"decision_id": id.clone().unwrap_or_default(), "quality": quality.as_deref().unwrap_or("0").parse::<f64>().unwrap()}))
        .send()
        .await
        .unwrap()
        .status();
    // A stream is real server-sent events: content chunks, the finish with usage, [DONE].
    let streamed = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "demo", "stream": true, "messages": [{"role": "user", "content": "Write a function that reverses a list"}]}))
        .send()
        .await
        .unwrap();
    let stream_type = streamed.headers()["content-type"].to_str().unwrap().to_string();
    let events = streamed.text().await.unwrap();
    // The legacy text API is routed the same way.
    let text: Value = client
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": "demo", "prompt": ["Write a function", "that reverses a list"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // No prompt at all is refused before any decision, as OpenAI refuses it.
    let no_prompt = client
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": "demo", "prompt": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_prompt.status(), 400);
    let refusal: Value = no_prompt.json().await.unwrap();
    assert_eq!(
        refusal["error"]["message"],
        "`prompt` must be a string, a non-empty list of strings, or token ids (a list of integers, or a list of such lists)"
    );
    // Embeddings pass through to a model's simulated endpoint: one vector per input.
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let embedded = client
        .post(format!("{base}/v1/embeddings"))
        .json(&json!({"model": model, "input": ["one text", "another"]}))
        .send()
        .await
        .unwrap();
    let embedded_status = embedded.status();
    let simulated = embedded.headers().get("x-quiver-simulated").cloned();
    let embedded: Value = embedded.json().await.unwrap();
    // The demo route's shadow candidate, estimated on this run's log.
    let candidates = get_json(&client, format!("{base}/v1/routes/demo/candidates"), "open").await;
    let metrics = get_text(&client, format!("{base}/metrics"), "open").await;
    child.kill().unwrap();
    child.wait().unwrap();
    // The route runs the default policy, the suite's other learner in its shadow.
    let spelled = |spec: &str| spec.parse::<quiver_bandit::PolicySpec>().unwrap().to_string();
    assert_eq!(
        candidates["policy"],
        spelled(quiver_bandit::DEFAULT_ROUTE_POLICY),
        "{candidates}"
    );
    assert!(candidates["decisions"].as_u64().unwrap() >= 3, "{candidates}");
    let shadow = &candidates["candidates"][0];
    assert_eq!(
        shadow["policy"],
        spelled(quiver_bandit::DEFAULT_LEARNERS[0]),
        "{shadow}"
    );
    let rows = shadow["quality"]["rows"].as_u64().unwrap();
    assert!(rows >= 1, "{shadow}");
    // Kish's size lies in [0, rows]; at 0 (the candidate chose no logged model) the
    // self-normalized estimate and its interval are undefined, and say so.
    let size = shadow["effective_sample_size"].as_f64().unwrap();
    assert!((0.0..=rows as f64).contains(&size), "{shadow}");
    if size == 0.0 {
        assert!(shadow["quality"]["snips"]["value"].is_null(), "{shadow}");
        assert!(shadow["quality"]["snips"]["ci95"].is_null(), "{shadow}");
    }
    assert_eq!(candidates["models"].as_array().unwrap().len(), 6, "{candidates}");
    assert!(!candidates["hull"].as_array().unwrap().is_empty(), "{candidates}");
    // The same estimates in /metrics.
    promtool_check(&metrics);
    // The embeddings call is timed apart from the completions.
    let embeddings_path = format!("model=\"{model}\",path=\"/embeddings\"");
    let embeddings_calls = sample(
        &metrics,
        "quiver_upstream_attempt_seconds_count",
        &[&embeddings_path],
    );
    assert_eq!(embeddings_calls, 1.0);
    let shadow_quality = shadow["quality"]["dr"]["value"].as_f64().unwrap();
    let labels = [
        "route=\"demo\"",
        "policy=\"linucb(alpha=0.1,lambda=10)\"",
        "metric=\"quality\"",
        "estimator=\"dr\"",
        "bound=\"value\"",
    ];
    assert!((sample(&metrics, "quiver_shadow_estimate", &labels) - shadow_quality).abs() < 1e-12);
    let ess = sample(&metrics, "quiver_shadow_effective_sample_size", &labels[..2]);
    assert!((ess - shadow["effective_sample_size"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(status, 200);
    assert!(body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("[SIMULATED "));
    assert!(body["created"].as_u64().unwrap() > 0);
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap())
    );
    assert_eq!(stream_type, "text/event-stream");
    let data: Vec<&str> = events.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{events}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks[0]["choices"][0]["delta"]["content"]
        .as_str()
        .unwrap()
        .starts_with("[SIMULATED "));
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert!(matches!(quality.as_deref(), Some("0") | Some("1")), "{quality:?}");
    assert_eq!(feedback, 200);
    assert_eq!(text["object"], "text_completion", "{text}");
    assert!(text["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("[SIMULATED "));
    assert_eq!(embedded_status, 200, "{embedded} (model `{model}`)");
    assert!(simulated.is_some());
    assert_eq!(embedded["data"].as_array().unwrap().len(), 2);
    assert_eq!(embedded["data"][1]["embedding"].as_array().unwrap().len(), 64);
}

/// The official OpenAI Python SDK against the demo server: routes listed as models, a
/// completion and a stream parsed into the SDK's strict types, Quiver's headers, and an
/// unknown route raised as the SDK's `NotFoundError` (`tests/clients/openai_sdk.py`).
/// CI installs the SDK and sets `QUIVER_PYTHON` to that interpreter; without it the test
/// skips with a message.
#[test]
fn the_official_openai_sdk_works_against_the_demo() {
    let Some(python) = std::env::var_os("QUIVER_PYTHON") else {
        eprintln!("skipped: set QUIVER_PYTHON to a Python with the `openai` package");
        return;
    };
    let (child, base) = start_demo("demo_openai_sdk");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/openai_sdk.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&base)
        .output()
        .unwrap();
    drop(child);
    assert_succeeded(&out);
}

/// `/openapi.json` is a valid OpenAPI 3.1 document (openapi-spec-validator), and
/// schemathesis, sending generated requests to every operation of the demo server for a
/// bounded time, finds no undocumented status, no response that breaks its schema or
/// content type, and no server error.
#[test]
fn the_api_document_is_valid_and_the_server_keeps_to_it() {
    let Some(python) = std::env::var_os("QUIVER_PYTHON") else {
        eprintln!("skipped: set QUIVER_PYTHON to a Python with `schemathesis` and `openapi-spec-validator`");
        return;
    };
    let (child, base) = start_demo("demo_api_document");
    let dir = scratch("serve_api_document");
    let document = dir.join("openapi.json");
    let text = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = reqwest::Client::new();
        get_text(&client, format!("{base}/openapi.json"), "").await
    });
    std::fs::write(&document, text).unwrap();
    let validated = std::process::Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&document)
        .output()
        .unwrap();
    assert_succeeded(&validated);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/schemathesis.toml");
    let st = Path::new(&python).with_file_name("st");
    let run = std::process::Command::new(st)
        .arg("--config-file")
        .arg(config)
        .args(["run", &format!("{base}/openapi.json")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", "20", "--seed", "1", "--max-time", "60"])
        .args(["--generation-database", "none", "--request-timeout", "10"])
        .current_dir(&dir)
        .output()
        .unwrap();
    drop(child);
    assert_succeeded(&run);
}

/// A model failing half its calls is skipped once its breaker opens, which the decision,
/// the log, `/v1/routes` and `/metrics` say; it is probed after the cooldown and closes on
/// a success. A 429 with `Retry-After` falls back at once and cools the model down for
/// that long, with exactly one call to it; one without, for a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakers_skip_failing_models_and_retry_after_cools_them_down() {
    let (flaky, limited, quiet, good) = (
        upstream("flaky").await,
        upstream("ratelimited").await,
        upstream("ratelimited-quietly").await,
        upstream("good").await,
    );
    let dir = scratch("serve_breakers");
    let base = start_app(
        json!({
            "upstream_retries": 0,
            "circuit_breaker": {"window": 10, "min_calls": 4, "failure_rate": 0.5, "cooldown_ms": 500},
            "routes": [
                {"name": "flaky", "policy": "fixed(flaky)", "models": [model("flaky", Some(flaky)), model("good", Some(good))]},
                {"name": "limited", "policy": "fixed(limited)", "models": [model("limited", Some(limited)), model("good", Some(good))]},
                {"name": "quiet", "policy": "fixed(quiet)", "models": [model("quiet", Some(quiet)), model("good", Some(good))]}
            ]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let chat = |route: &'static str| {
        let client = client.clone();
        let url = format!("{base}/v1/chat/completions");
        async move {
            let answer = client
                .post(url)
                .json(&json!({"model": route, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200);
            answer.headers()["x-quiver-model"].to_str().unwrap().to_string()
        }
    };
    let calls = |metrics: &str, model: &str| {
        sample(
            metrics,
            "quiver_upstream_attempt_seconds_count",
            &[&format!("model=\"{model}\"")],
        )
    };
    // Calls 1 to 4 of `flaky`: fail, answer, fail, answer. Two failures of four open it.
    let served: Vec<String> = futures_util::future::join_all((0..4).map(|_| chat("flaky"))).await;
    assert_eq!(served.iter().filter(|m| *m == "flaky").count(), 2, "{served:?}");
    let state = get_json(&client, format!("{base}/v1/routes/flaky"), "").await;
    assert_eq!(state["arms"][0]["circuit"], "open");
    // Open: decisions leave it out, their propensities over the others alone.
    let decided: Value = client
        .post(format!("{base}/v1/route"))
        .json(&json!({"route": "flaky", "prompt": "hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(decided["model"], "good");
    assert_eq!(decided["propensity"], 1.0);
    let excluded = decided["excluded"][0].as_str().unwrap();
    assert!(
        excluded.starts_with("flaky: unavailable (circuit open: 2 of the last 4 calls failed"),
        "{excluded}"
    );
    let logged = quiver_serve::log::read_log(&dir.join("log")).unwrap();
    let record = logged
        .iter()
        .find(|r| r.decision_id == decided["decision_id"])
        .unwrap();
    assert_eq!(record.unavailable, ["flaky"]);
    for _ in 0..3 {
        assert_eq!(chat("flaky").await, "good");
    }
    let metrics = get_text(&client, format!("{base}/metrics"), "").await;
    assert_eq!(calls(&metrics, "flaky"), 4.0, "no call while open");
    let open = ["route=\"flaky\"", "arm=\"flaky\"", "state=\"open\""];
    assert_eq!(sample(&metrics, "quiver_circuit_state", &open), 1.0);
    // After the cooldown, call 5 probes it and fails: open again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(chat("flaky").await, "good");
    let state = get_json(&client, format!("{base}/v1/routes/flaky"), "").await;
    assert_eq!(state["arms"][0]["circuit"], "open");
    // The next probe, call 6, answers: closed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(chat("flaky").await, "flaky");
    let state = get_json(&client, format!("{base}/v1/routes/flaky"), "").await;
    assert_eq!(state["arms"][0]["circuit"], "closed");
    let metrics = get_text(&client, format!("{base}/metrics"), "").await;
    assert_eq!(calls(&metrics, "flaky"), 6.0);

    // A 429 asking for a second, and one asking nothing (a second too): one call, then
    // `good`; the model rests for that second.
    for route in ["limited", "quiet"] {
        assert_eq!(chat(route).await, "good");
        assert_eq!(chat(route).await, "good");
    }
    let metrics = get_text(&client, format!("{base}/metrics"), "").await;
    for route in ["limited", "quiet"] {
        assert_eq!(
            calls(&metrics, route),
            1.0,
            "{route}: no retry, no call while cooling down"
        );
        let state = get_json(&client, format!("{base}/v1/routes/{route}"), "").await;
        assert_eq!(state["arms"][0]["circuit"], "open", "{route}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for route in ["limited", "quiet"] {
        assert_eq!(chat(route).await, "good");
    }
    let metrics = get_text(&client, format!("{base}/metrics"), "").await;
    for route in ["limited", "quiet"] {
        assert_eq!(calls(&metrics, route), 2.0, "{route}: probed after the cooldown");
    }
}

/// With `[cache]` on, an identical request from the same caller is answered from the cache
/// with no upstream call and nothing learned, the hit logged as its own event; another
/// caller's identical request is not; `cache-control: no-cache` goes upstream; streams and
/// answers cut at their length limit are not cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_answers_repeats_per_caller_without_calling_upstream() {
    let (good, truncated) = (upstream("good").await, upstream("truncated").await);
    let dir = scratch("serve_cache");
    let base = start_app(
        json!({
            "cache": {"enabled": true, "ttl_s": 60},
            "auth": {"route_tokens": ["tenant-a", "tenant-b"], "admin_tokens": ["admin"]},
            "routes": [
                {"name": "chat", "policy": "fixed(good)", "models": [model("good", Some(good))]},
                {"name": "cut", "policy": "fixed(truncated)", "models": [model("truncated", Some(truncated))]}
            ]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "temperature": 0});
    let send = |token: &'static str, no_cache: bool, body: Value| {
        let request = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(token)
            .json(&body);
        let request = if no_cache {
            request.header("cache-control", "no-cache")
        } else {
            request
        };
        async move {
            let answer = request.send().await.unwrap();
            assert_eq!(answer.status(), 200);
            let cache = answer
                .headers()
                .get("x-quiver-cache")
                .map(|v| v.to_str().unwrap().to_string());
            let decision = answer
                .headers()
                .get("x-quiver-decision-id")
                .map(|v| v.to_str().unwrap().to_string());
            (cache, decision, answer.bytes().await.unwrap())
        }
    };
    let (cache, first_decision, first) = send("tenant-a", false, body.clone()).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    let (cache, decision, again) = send("tenant-a", false, body.clone()).await;
    assert_eq!((cache.as_deref(), decision), (Some("hit"), None));
    assert_eq!(again, first);
    let (cache, _, _) = send("tenant-b", false, body.clone()).await;
    assert_eq!(
        cache.as_deref(),
        Some("miss"),
        "another caller's answers are its own"
    );
    let (cache, _, _) = send("tenant-a", true, body.clone()).await;
    assert_eq!(cache.as_deref(), Some("miss"), "no-cache goes upstream");
    let mut cut = body.clone();
    cut["model"] = json!("cut");
    for _ in 0..2 {
        let (cache, _, _) = send("tenant-a", false, cut.clone()).await;
        assert_eq!(cache.as_deref(), Some("miss"), "an answer cut short is not kept");
    }
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (cache, _, _) = send("tenant-a", false, streamed).await;
    assert_eq!(cache, None, "streams are not cached");

    let metrics = get_text(&client, format!("{base}/metrics"), "admin").await;
    let calls = sample(
        &metrics,
        "quiver_upstream_attempt_seconds_count",
        &["model=\"good\""],
    );
    assert_eq!(calls, 4.0, "every request but the hit called upstream");
    assert_eq!(sample(&metrics, "quiver_cache_hits_total", &[]), 1.0);
    assert_eq!(sample(&metrics, "quiver_cache_misses_total", &[]), 4.0);
    assert!(sample(&metrics, "quiver_cache_bytes", &[]) > first.len() as f64);
    let state = get_json(&client, format!("{base}/v1/routes/chat"), "admin").await;
    assert_eq!(state["arms"][0]["requests"], 4, "the hit taught nothing");
    let hits: Vec<_> = quiver_serve::log::read_log(&dir.join("log"))
        .unwrap()
        .into_iter()
        .filter(|r| r.event == quiver_serve::log::LogEvent::CacheHit)
        .collect();
    assert_eq!(hits.len(), 1);
    assert_eq!(Some(&hits[0].decision_id), first_decision.as_ref());
    assert_eq!(hits[0].arm, "good");
}

/// Per-caller spend caps through the proxy: each token's calls count against its own
/// cap (a call of 10 prompt and 5 completion tokens costs $0.001 at the model's prices), so
/// the caller at its cap gets a 429 naming it while the other is served; the route's state
/// and `/metrics` show each caller's spend under a digest of its token, and the log names
/// the caller by that digest, never by the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_spend_caps_hold_each_token_to_its_own() {
    use sha2::{Digest, Sha256};
    let (addr, calls) = counting_upstream().await;
    let dir = scratch("serve_caller_caps");
    let base = start_app(
        json!({
            "auth": {"route_tokens": ["tenant-a", "tenant-b"], "admin_tokens": ["admin"]},
            "routes": [{
                "name": "chat", "policy": "fixed(m)",
                "caller_spend_cap": {"daily_usd": 0.002},
                "models": [{"id": "m", "base_url": format!("http://{addr}"),
                            "input_usd_per_million": 50.0, "output_usd_per_million": 100.0}]
            }]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let ask = |token: &'static str| {
        let request = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(token)
            .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}));
        async move {
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            (status, answer.json::<Value>().await.unwrap())
        }
    };
    let digest = |token: &str| -> String {
        Sha256::digest(token.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(ask("tenant-a").await.0, 200);
    assert_eq!(ask("tenant-a").await.0, 200);
    let (status, refusal) = ask("tenant-a").await;
    assert_eq!(status, 429, "{refusal}");
    let message = refusal["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "caller `{}` on route `chat` reached its daily spend cap of $0.002",
            digest("tenant-a")
        )),
        "{message}"
    );
    assert_eq!(ask("tenant-b").await.0, 200, "another caller is served");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);

    let state = get_json(&client, format!("{base}/v1/routes/chat"), "admin").await;
    assert_eq!(state["caller_daily_cap_usd"], 0.002);
    let spent = |token: &str| {
        state["callers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["caller"] == digest(token))
            .map(|c| c["spend_today_usd"].as_f64().unwrap())
    };
    assert!((spent("tenant-a").unwrap() - 0.002).abs() < 1e-12, "{state}");
    assert!((spent("tenant-b").unwrap() - 0.001).abs() < 1e-12, "{state}");
    let metrics = get_text(&client, format!("{base}/metrics"), "admin").await;
    let caller = format!("caller=\"{}\"", digest("tenant-b"));
    let day = sample(&metrics, "quiver_caller_spend_usd", &[&caller, "period=\"day\""]);
    assert!((day - 0.001).abs() < 1e-12, "{day}");
    let log = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect::<String>();
    assert!(!log.contains("tenant-a") && log.contains(&digest("tenant-a")));
}

/// A burst of concurrent calls stops at a route's spend cap before the route has learned
/// what its model's answers cost: each call under way counts at the most its `max_tokens`
/// let it cost at the model's prices, not at the route's guess of an answer's length,
/// which let a burst of 1,000-token answers spend several times the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_stops_at_the_spend_cap_by_its_calls_token_limits() {
    // Long enough in flight that the whole burst arrives while the first are.
    let (addr, _) = counting_upstream_after(Duration::from_millis(500), 5, 1000).await;
    let dir = scratch("serve_burst_cap");
    let cap = 0.005;
    let base = start_app(
        json!({
            "routes": [{
                "name": "chat", "policy": "fixed(m)",
                "spend_cap": {"daily_usd": cap},
                "models": [{"id": "m", "base_url": format!("http://{addr}"),
                            "input_usd_per_million": 1.0, "output_usd_per_million": 1.0}]
            }]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let burst = (0..20).map(|i| {
        let request = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "chat", "max_tokens": 1000,
                          "messages": [{"role": "user", "content": format!("question {i}")}]}));
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures_util::future::join_all(burst).await;
    assert!(statuses.iter().all(|s| [200, 429].contains(s)), "{statuses:?}");
    let served = statuses.iter().filter(|s| **s == 200).count();
    // A call costs $0.001005 and counts at about $0.001 under way: the cap lets five
    // through, the last of them admitted below it.
    let state = get_json(&client, format!("{base}/v1/routes/chat"), "admin").await;
    let spent = state["spend_today_usd"].as_f64().unwrap();
    let one_call = 0.001005;
    assert!(
        (spent - served as f64 * one_call).abs() < 1e-9,
        "{spent} for {served} calls"
    );
    assert!(
        served >= 4 && spent <= cap + one_call,
        "{served} calls spent ${spent}"
    );
    let metrics = get_text(&client, format!("{base}/metrics"), "admin").await;
    let refusals = sample(&metrics, "quiver_spend_cap_refusals_total", &["route=\"chat\""]);
    assert_eq!(refusals, (statuses.len() - served) as f64);
}

/// A fallback's call counts against the spend cap from its first attempt: requests that
/// come while the fallbacks of a failed model's calls are under way find the cap reached
/// by them, where they once found nothing under way and passed it together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallbacks_call_counts_against_the_spend_cap_while_under_way() {
    let down = upstream("failing").await;
    let (up, answered) = counting_upstream_after(Duration::from_millis(800), 5, 1000).await;
    let dir = scratch("serve_fallback_cap");
    let cap = 0.005;
    let priced = |id: &str, addr: SocketAddr| {
        json!({"id": id, "base_url": format!("http://{addr}"),
               "input_usd_per_million": 1.0, "output_usd_per_million": 1.0})
    };
    let base = start_app(
        json!({
            "upstream_retries": 0,
            "routes": [{
                "name": "chat", "policy": "fixed(down)",
                "spend_cap": {"daily_usd": cap},
                "models": [priced("down", down), priced("up", up)]
            }]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let ask = |i: usize| {
        let request = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "chat", "max_tokens": 1000,
                          "messages": [{"role": "user", "content": format!("question {i}")}]}));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Five calls fail at once and fall back; at $0.001005 at most each, their fallbacks
    // under way reach the cap.
    let first = tokio::spawn(futures_util::future::join_all((0..5).map(ask)));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while answered.load(std::sync::atomic::Ordering::SeqCst) < 5 {
        assert!(std::time::Instant::now() < deadline, "the fallbacks never came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let later = futures_util::future::join_all((5..20).map(ask)).await;
    assert!(later.iter().all(|s| *s == 429), "{later:?}");
    assert_eq!(first.await.unwrap(), vec![200; 5]);
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 5);
    let state = get_json(&client, format!("{base}/v1/routes/chat"), "admin").await;
    let spent = state["spend_today_usd"].as_f64().unwrap();
    assert!((spent - 5.0 * 0.001005).abs() < 1e-9, "{spent}");
}

/// Through the official OpenAI SDK (`tests/clients/openai_sdk_errors.py`): an upstream's
/// 400 surfaces as `BadRequestError` with the upstream's code after exactly one upstream
/// call, and a 429 with `Retry-After` falls back and rests its model (one call for two
/// requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_sees_upstream_refusals_and_rate_limits_as_it_should() {
    let Some(python) = std::env::var_os("QUIVER_PYTHON") else {
        eprintln!("skipped: set QUIVER_PYTHON to a Python with the `openai` package");
        return;
    };
    let (refusing, limited, good) = (
        upstream("refusing").await,
        upstream("ratelimited").await,
        upstream("good").await,
    );
    let dir = scratch("serve_sdk_errors");
    let base = start_app(
        json!({
            "routes": [
                {"name": "strict", "policy": "fixed(refusing)", "models": [model("refusing", Some(refusing)), model("good", Some(good))]},
                {"name": "limited", "policy": "fixed(limited)", "models": [model("limited", Some(limited)), model("good", Some(good))]}
            ]
        }),
        &dir,
    )
    .await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/openai_sdk_errors.py");
    let url = base.clone();
    let out =
        tokio::task::spawn_blocking(move || std::process::Command::new(python).arg(script).arg(url).output())
            .await
            .unwrap()
            .unwrap();
    assert_succeeded(&out);
    let metrics = get_text(&reqwest::Client::new(), format!("{base}/metrics"), "").await;
    let calls = |model: &str| {
        sample(
            &metrics,
            "quiver_upstream_attempt_seconds_count",
            &[&format!("model=\"{model}\"")],
        )
    };
    assert_eq!(calls("refusing"), 1.0, "the refused request was sent once");
    assert_eq!(calls("limited"), 1.0, "the rate-limited model was rested");
    assert_eq!(calls("good"), 2.0);
}

/// A local upstream that answers every call and counts them.
async fn counting_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    // A moment in flight, so that concurrent calls overlap.
    counting_upstream_after(Duration::from_millis(50), 10, 5).await
}

/// A local upstream that answers every call after `delay`, billing `prompt_tokens` and
/// `completion_tokens`, and counts the calls as they come.
async fn counting_upstream_after(
    delay: Duration,
    prompt_tokens: u32,
    completion_tokens: u32,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/chat/completions",
        axum::routing::post(move || {
            let calls = Arc::clone(&counter);
            async move {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                axum::Json(json!({
                    "id": "x", "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, calls)
}

/// Three deployments of one model with rpm limits, under a bounded concurrent load: no
/// deployment is called more often than its limit allows, the load fills all three, and
/// the requests past every limit get 429 with Retry-After, no upstream call and nothing
/// learned. Required tags keep calls on the deployments that carry them, and tags no
/// deployment carries are the request's fault (400).
#[tokio::test]
async fn deployments_keep_to_their_limits_and_tags() {
    let mut upstreams = Vec::new();
    for _ in 0..5 {
        upstreams.push(counting_upstream().await);
    }
    let deployment = |i: usize, rpm: Option<u32>, tag: &str| json!({"name": format!("d{i}"), "base_url": format!("http://{}", upstreams[i].0), "rpm": rpm, "tags": [tag]});
    let dir = scratch("serve_deployments");
    let base = start_app(
        json!({
            "routes": [
                {"name": "limited", "policy": "fixed(m)", "models": [{
                    "id": "m", "input_usd_per_million": 1.0, "output_usd_per_million": 2.0,
                    "deployments": [deployment(0, Some(3), "region:eu"), deployment(1, Some(2), "region:us"), deployment(2, Some(1), "region:us")]
                }]},
                {"name": "tagged", "policy": "fixed(m)", "models": [{
                    "id": "m", "input_usd_per_million": 1.0, "output_usd_per_million": 2.0,
                    "deployments": [deployment(3, None, "region:eu"), deployment(4, None, "region:us")]
                }]},
                {"name": "small", "policy": "fixed(m)", "models": [{
                    "id": "m", "deployments": [{"base_url": format!("http://{}", upstreams[3].0), "tpm": 20}]
                }]}
            ]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let chat = |route: &'static str, tags: Option<&'static str>| {
        let mut request = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": route, "messages": [{"role": "user", "content": "hello"}]}));
        if let Some(tags) = tags {
            request = request.header("x-quiver-tags", tags);
        }
        async move { request.send().await.unwrap() }
    };
    let counts = || -> Vec<usize> {
        upstreams
            .iter()
            .map(|(_, c)| c.load(std::sync::atomic::Ordering::SeqCst))
            .collect()
    };
    let answers = futures_util::future::join_all((0..10).map(|_| chat("limited", None))).await;
    let (mut served, mut refused) = (0, 0);
    for answer in answers {
        match answer.status().as_u16() {
            200 => served += 1,
            429 => {
                assert_eq!(answer.headers()["retry-after"], "60");
                let body: Value = answer.json().await.unwrap();
                assert!(
                    body["error"]["message"].as_str().unwrap().contains("rpm"),
                    "{body}"
                );
                refused += 1;
            }
            other => panic!("status {other}"),
        }
    }
    let calls = counts();
    assert_eq!((served, refused), (6, 4));
    assert_eq!(
        &calls[..3],
        &[3, 2, 1],
        "calls per deployment against rpm 3, 2, 1"
    );
    // The server has no tokens: any bearer passes.
    let state = get_json(&client, format!("{base}/v1/routes/limited"), "any").await;
    assert_eq!(
        state["arms"][0]["requests"], 6,
        "only the served calls are learned: {state}"
    );
    let deployments: Vec<(String, u64)> = state["arms"][0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["key"].as_str().unwrap().to_string(),
                d["calls_last_minute"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        deployments,
        [
            ("m@d0".to_string(), 3),
            ("m@d1".to_string(), 2),
            ("m@d2".to_string(), 1)
        ],
        "{state}"
    );
    let metrics = get_text(&client, format!("{base}/metrics"), "any").await;
    let closed = "quiver_deployment_circuit_state{route=\"limited\",deployment=\"m@d0\",state=\"closed\"} 1";
    assert_line(&metrics, closed);

    for _ in 0..6 {
        assert_eq!(chat("tagged", Some("region:eu")).await.status(), 200);
    }
    let calls = counts();
    assert_eq!(&calls[3..], &[6, 0], "region:eu calls stay on the eu deployment");
    let answer = chat("tagged", Some("region:apac")).await;
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("region:apac"),
        "{body}"
    );
    // A prompt larger than every deployment's tpm is the request's fault: no wait helps.
    let long = "word ".repeat(200);
    let answer = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "small", "messages": [{"role": "user", "content": long}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than the tpm of every deployment"),
        "{body}"
    );
    assert_eq!(counts()[3], 6, "no call was sent");
}

/// A model's deployments take over a call one of them failed: a deployment asking to wait
/// hands it on at once (no retry needed) and is not called again for it, a retry after a
/// 5xx goes to another deployment
/// than the failing one, and the latency balance does not take a deployment that fails at
/// once for a fast one.
#[tokio::test]
async fn a_models_deployments_take_over_a_call_one_of_them_failed() {
    let (limited, failing, good) = (
        upstream("ratelimited-long").await,
        upstream("failing").await,
        upstream("good").await,
    );
    // The first deployment is all but always the one a tie picks.
    let deployments = |first: SocketAddr| {
        json!([
            {"name": "first", "base_url": format!("http://{first}"), "weight": 1000.0},
            {"name": "second", "base_url": format!("http://{good}"), "weight": 0.001}
        ])
    };
    let both_wait = json!([
        {"name": "first", "base_url": format!("http://{limited}")},
        {"name": "second", "base_url": format!("http://{limited}")}
    ]);
    let routes = json!([
        {"name": "waits", "policy": "fixed(m)", "models": [{"id": "m", "deployments": deployments(limited)}]},
        {"name": "all_wait", "policy": "fixed(m)", "models": [{"id": "m", "deployments": both_wait}]},
        {"name": "fails", "policy": "fixed(m)", "models": [{"id": "m", "deployments": deployments(failing)}]}
    ]);
    let client = reqwest::Client::new();
    let statuses = |base: String, route: &'static str, n: usize| {
        let client = client.clone();
        async move {
            let mut statuses = Vec::new();
            for _ in 0..n {
                let answer = client
                    .post(format!("{base}/v1/chat/completions"))
                    .json(&json!({"model": route, "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await
                    .unwrap();
                statuses.push(answer.status().as_u16());
            }
            statuses
        }
    };
    let calls = |state: &Value| -> Vec<u64> {
        state["arms"][0]["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["calls_last_minute"].as_u64().unwrap())
            .collect()
    };
    let dir = scratch("serve_deployments_take_over");
    let base = start_app(json!({"upstream_retries": 1, "routes": routes.clone()}), &dir).await;
    assert_eq!(statuses(base.clone(), "waits", 4).await, [200; 4]);
    let state = get_json(&client, format!("{base}/v1/routes/waits"), "").await;
    assert_eq!(
        calls(&state),
        [1, 4],
        "one call asked to wait, then rested: {state}"
    );
    // Every deployment asks to wait: each is called once per request, the second request
    // (every model unavailable, so tried past open breakers) too, and the client waits.
    assert_eq!(statuses(base.clone(), "all_wait", 2).await, [429; 2]);
    let state = get_json(&client, format!("{base}/v1/routes/all_wait"), "").await;
    assert_eq!(calls(&state), [2, 2], "{state}");
    assert_eq!(statuses(base.clone(), "fails", 3).await, [200; 3]);
    let state = get_json(&client, format!("{base}/v1/routes/fails"), "").await;
    assert_eq!(
        calls(&state),
        [3, 3],
        "each retry on the other deployment: {state}"
    );

    let dir = scratch("serve_deployments_latency");
    let base = start_app(
        json!({"upstream_retries": 0, "balance": "latency",
            "circuit_breaker": {"window": 20, "min_calls": 20},
            "routes": routes}),
        &dir,
    )
    .await;
    let answered = statuses(base.clone(), "fails", 10).await;
    let failed = answered.iter().filter(|s| **s == 502).count();
    assert!(
        failed <= 1 && failed + answered.iter().filter(|s| **s == 200).count() == 10,
        "{answered:?}"
    );
}

/// `/ui` in a real headless Chromium: with the admin token it shows the route's live
/// numbers (its decision count, its newest decision, each model, the shadow candidate), and
/// no estimate for a route with no decision yet; without one it shows the refusal; it loads
/// nothing from elsewhere. The token is read as written (a base64 `+` stays a `+`). A
/// screenshot is kept at `target/tmp/dashboard.png`.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_live_numbers_in_a_real_browser() {
    const ADMIN: &str = "a+b/c=";
    let Some(browser) = chromium() else { return };
    let dir = scratch("serve_dashboard");
    let base = start_app(
        json!({
            "auth": {"route_tokens": ["r"], "feedback_tokens": ["f"], "admin_tokens": [ADMIN]},
            "routes": [{"name": "chat", "policy": "lints(v=0.3,floor=0.05,draws=0)",
                "budget_usd_per_request": 0.002,
                "models": [model("small", None), model("large", None)],
                "shadow": ["linucb(alpha=0.1)"]},
                {"name": "idle", "policy": "linucb", "models": [model("unasked", None)]}]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    for i in 0..37 {
        let prompt = json!({"route": "chat", "prompt": format!("question {i}")});
        let r = post_json(&client, format!("{base}/v1/route"), "r", &prompt).await;
        let quality = if r["model"] == "large" { 0.9 } else { 0.4 };
        let outcome = json!({"decision_id": r["decision_id"], "latency_ms": 120, "cost_usd": 0.001, "quality": quality});
        let status = post(&client, format!("{base}/v1/outcome"), "f", &outcome)
            .await
            .status();
        assert_eq!(status, 200);
    }
    let recent = get_json(&client, format!("{base}/v1/routes/chat/decisions"), ADMIN).await;
    let newest = recent["decisions"][0]["decision_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(newest, "chat:36");
    assert!(recent["decisions"][0]["quality"].as_f64().is_some());
    let page = client.get(format!("{base}/ui")).send().await.unwrap();
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    let html = page.text().await.unwrap();
    assert!(policy.starts_with("default-src 'self'"), "{policy}");
    // No script, stylesheet or font from elsewhere (the policy above would block one).
    for loads in ["<script src", "<link", "@import", "url("] {
        assert!(!html.contains(loads), "the page has {loads}");
    }

    let url = format!("{base}/ui#token={ADMIN}");
    let (dom, refused) = {
        let (browser, url, bare) = (browser.clone(), url.clone(), format!("{base}/ui"));
        tokio::task::spawn_blocking(move || (browse(&browser, &url, None), browse(&browser, &bare, None)))
            .await
            .unwrap()
    };
    assert!(dom.contains("live, updated"), "{dom}");
    assert!(dom.contains("class=\"decisions-count\">37<"), "{dom}");
    assert!(dom.contains(&format!(">{newest}<")), "{dom}");
    for text in [
        "small",
        "large",
        "linucb(alpha=0.1,lambda=10)",
        "lints(v=0.3,lambda=10,draws=0,floor=0.05) (live, as served)",
        // Every call cost $0.001.
        "spend per request <b>$0.00100</b> against a budget of $0.00200",
        // The idle route's model: no call, no estimate.
        "<td>unasked</td><td>0</td><td>0</td><td>$0.00</td><td>n/a</td><td>n/a</td><td><span class=\"closed\">closed</span></td><td>n/a</td><td>n/a</td>",
    ] {
        assert!(dom.contains(text), "{text} missing from {dom}");
    }
    assert!(!dom.contains(">excluded<"), "{dom}");
    assert!(
        refused.contains("class=\"error\"") && refused.contains("401"),
        "{refused}"
    );

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    tokio::task::spawn_blocking(move || browse(&browser, &url, Some(&shot)).len())
        .await
        .unwrap();
    let png = std::fs::read(Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}
