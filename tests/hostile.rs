//! The server against hostile clients and upstreams, on 127.0.0.1, bounded in time: finite
//! but absurd numbers followed by restarts, an unreadable snapshot, snapshots that cannot be
//! written, torn log tails, slow heads and bodies, connection floods under a small
//! descriptor limit, streams that are long, stall or never start, and bodies far larger
//! than any answer. Each test sets short limits in its own configuration, so that each
//! attack ends within seconds.
#![allow(clippy::unwrap_used, clippy::panic)] // a test that fails should panic

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use futures_util::StreamExt;
use serde_json::{json, Value};
use support::{
    ask_to_stop, failing_start, metric, peak_rss_bytes, scratch, start_binary, start_binary_with_file_limit,
    terminate, wait_for_clean_stop, wait_for_metric, wait_for_stop,
};

const MIB: u64 = 1 << 20;

/// Writes `quiver.toml` in `dir` from `top` (top-level options) and `routes` (TOML of the
/// routes), with the log in `dir/log`.
fn write_config(dir: &Path, top: &str, routes: &str) -> String {
    let path = dir.join("quiver.toml");
    std::fs::write(
        &path,
        format!("listen = \"127.0.0.1:0\"\nlog_dir = \"log\"\n{top}\n{routes}"),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// One route `r` over priced models `a` and `b`, with two caller features.
const TWO_ARMS: &str =
    "[[routes]]\nname = \"r\"\npolicy = \"lints(v=0.3,floor=0.05)\"\nw_cost = 10.0\nextra_features = 2\n\
[[routes.models]]\nid = \"a\"\ninput_usd_per_million = 1.0\noutput_usd_per_million = 2.0\n\
[[routes.models]]\nid = \"b\"\ninput_usd_per_million = 5.0\noutput_usd_per_million = 10.0\n";

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client.post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{status}: {content_type}"
    );
    (status, response.json().await.unwrap())
}

async fn decide(client: &reqwest::Client, base: &str, prompt: &str) -> String {
    let (status, body) = post(
        client,
        format!("{base}/v1/route"),
        json!({"route": "r", "prompt": prompt, "features": [0.5, 1.0]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["decision_id"].as_str().unwrap().to_string()
}

/// Every number of a JSON value is finite: JSON would have written `null` for the others.
fn assert_no_nulls_for_numbers(value: &Value, path: &str) {
    match value {
        Value::Object(map) => map
            .iter()
            .for_each(|(k, v)| assert_no_nulls_for_numbers(v, &format!("{path}.{k}"))),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| assert_no_nulls_for_numbers(v, &format!("{path}[{i}]"))),
        Value::Number(n) => assert!(n.as_f64().unwrap().is_finite(), "{path}"),
        _ => {}
    }
}

/// A platform configures a deployment through the environment: `QUIVER_ADMIN_TOKENS`
/// replaces the file's admin tokens, `QUIVER_LOG_DIR` its log directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_overrides_the_configuration_file() {
    let dir = scratch("env_overrides");
    let config = write_config(&dir, "[auth]\nadmin_tokens = [\"from-file\"]", TWO_ARMS);
    let log_dir = dir.join("elsewhere");
    let (child, base) = support::start_binary_with_env(
        &[
            ("QUIVER_ADMIN_TOKENS", "from-env"),
            ("QUIVER_LOG_DIR", log_dir.to_str().unwrap()),
        ],
        &["--config", &config],
    );
    let client = reqwest::Client::new();
    let metrics = |token: &'static str| client.get(format!("{base}/metrics")).bearer_auth(token).send();
    assert_eq!(metrics("from-env").await.unwrap().status(), 200);
    assert_eq!(metrics("from-file").await.unwrap().status(), 401);
    let routed = client
        .post(format!("{base}/v1/route"))
        .bearer_auth("from-env")
        .json(&json!({"route": "r", "prompt": "logged elsewhere?", "features": [0.5, 1.0]}))
        .send()
        .await
        .unwrap();
    assert_eq!(routed.status(), 200);
    assert!(log_dir.is_dir(), "the log went to QUIVER_LOG_DIR");
    drop(child);
}

/// A browser page from an allowed origin may call the API: its preflight is answered
/// before any token is asked for, and the answer lets it read the decision headers. Other
/// origins get no CORS headers, so the browser keeps their pages out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_lets_configured_origins_in_and_no_others() {
    let dir = scratch("cors");
    let config = write_config(
        &dir,
        "cors_allow_origins = [\"https://app.example\"]\n[auth]\nadmin_tokens = [\"t\"]",
        TWO_ARMS,
    );
    let (child, base) = start_binary(&["--config", &config]);
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, format!("{base}/v1/route"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let routed = client
        .post(format!("{base}/v1/route"))
        .header("origin", "https://app.example")
        .bearer_auth("t")
        .json(&json!({"route": "r", "prompt": "hi", "features": [0.5, 1.0]}))
        .send()
        .await
        .unwrap();
    assert_eq!(routed.status(), 200);
    assert_eq!(
        routed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let exposed = routed.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("x-quiver-decision-id"), "{exposed}");
    drop(child);
}

/// The access log: one line per request, JSON with `--log-format json`, in the span of the
/// request id that the answer echoes (the client's, else a new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_logged_with_the_id_its_answer_carries() {
    let dir = scratch("access_log");
    let config = write_config(&dir, "", TWO_ARMS);
    let (child, base) = start_binary(&["--config", &config, "--log-format", "json"]);
    let client = reqwest::Client::new();
    let given = client
        .get(format!("{base}/healthz"))
        .header("x-request-id", "client-id-7")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "client-id-7");
    let made = client.get(format!("{base}/healthz")).send().await.unwrap();
    let made = made.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 36, "a UUID: {made}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let requests: Vec<Value> = child
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "tower_http::trace::on_response")
        .collect();
    let ids: Vec<&str> = requests
        .iter()
        .map(|l| l["span"]["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["client-id-7", made.as_str()], "{requests:?}");
    assert!(requests
        .iter()
        .all(|l| l["span"]["path"] == "/healthz" && l["fields"]["status"] == 200));
}

/// The defect that could brick the server: a finite but huge number (1e200 ms, $1e308,
/// features of 1e200) was accepted, overflowed the learner's sums, and the snapshot wrote
/// `null`, which the next start could not read. Now each is refused with a 422 naming the
/// field and its bound; the largest accepted values keep every statistic finite; and the
/// server restarts after SIGTERM and after SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_numbers_are_refused_with_their_bound_and_the_server_always_restarts() {
    let dir = scratch("hostile_numbers");
    let config = write_config(&dir, "snapshot_interval_s = 1", TWO_ARMS);
    let (child, base) = start_binary(&["--config", &config]);
    let client = reqwest::Client::new();
    let id = decide(&client, &base, "What is 2 + 2?").await;
    let outcome = |extra: Value| {
        let mut body = json!({"decision_id": id, "latency_ms": 100.0, "cost_usd": 0.001});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let hostile = [
        (
            "outcome",
            outcome(json!({"latency_ms": 1e200})),
            "outcome.latency_ms is 1e200, outside [0, 86400000] ms",
        ),
        (
            "outcome",
            outcome(json!({"cost_usd": 1e308})),
            "outcome.cost_usd is 1e308, outside [0, 1000] USD",
        ),
        (
            "outcome",
            outcome(json!({"latency_ms": -1.0})),
            "outcome.latency_ms is -1.0, outside",
        ),
        (
            "outcome",
            outcome(json!({"output_tokens": 4_000_000_000u64})),
            "outcome.output_tokens is 4000000000.0, outside [0, 100000000]",
        ),
        (
            "outcome",
            outcome(json!({"quality": 7.0})),
            "quality is 7.0, outside [0, 1]",
        ),
        (
            "feedback",
            json!({"decision_id": id, "quality": 1e300}),
            "quality is 1e300, outside [0, 1]",
        ),
        (
            "route",
            json!({"route": "r", "prompt": "x", "features": [1e200, 1e200]}),
            "features[0] is 1e200, outside [-1000000, 1000000]",
        ),
        (
            "route",
            json!({"route": "r", "prompt": "x", "features": [0.0, 0.0], "objective": {"w_cost": 1e308, "w_latency": 0.0}}),
            "w_cost is 1e308, outside [0, 1e9]",
        ),
    ];
    for (endpoint, body, message) in hostile {
        let (status, answer) = post(&client, format!("{base}/v1/{endpoint}"), body.clone()).await;
        assert_eq!(status, 422, "{body} -> {answer}");
        let said = answer["error"]["message"].as_str().unwrap();
        assert!(said.starts_with(message), "{body}: {said}");
    }
    // The largest values accepted, again and again.
    for i in 0..40 {
        let id = decide(&client, &base, &format!("question {i}")).await;
        let body = json!({"decision_id": id, "latency_ms": 86_400_000.0, "cost_usd": 1000.0,
            "input_tokens": 100_000_000u32, "output_tokens": 100_000_000u32});
        assert_eq!(post(&client, format!("{base}/v1/outcome"), body).await.0, 200);
        let body = json!({"route": "r", "prompt": "edge", "features": [1e6, -1e6]});
        let (status, routed) = post(&client, format!("{base}/v1/route"), body).await;
        assert_eq!(status, 200);
        let body = json!({"decision_id": routed["decision_id"], "quality": 1.0, "latency_ms": 0.0});
        assert_eq!(post(&client, format!("{base}/v1/outcome"), body).await.0, 200);
    }
    let state: Value = reqwest::get(format!("{base}/v1/routes/r"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_no_nulls_for_numbers(&state, "routes/r");
    terminate(child);

    // SIGTERM wrote a snapshot; the restart reads it. Then SIGKILL after a periodic one.
    let (mut child, base) = start_binary(&["--config", &config]);
    let restored: Value = reqwest::get(format!("{base}/v1/routes/r"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(restored["arms"], state["arms"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let (child, base) = start_binary(&["--config", &config]);
    let again: Value = reqwest::get(format!("{base}/v1/routes/r"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["arms"], state["arms"]);
    terminate(child);
}

/// Decisions with outcomes and feedback, then a clean stop: the learner's snapshot as the
/// server served it.
async fn learn_and_stop(config: &str, rounds: usize) -> Value {
    let (child, base) = start_binary(&["--config", config]);
    let client = reqwest::Client::new();
    for i in 0..rounds {
        let id = decide(&client, &base, &format!("Translate «{i}» into 日本語")).await;
        let body = json!({"decision_id": id, "latency_ms": 100 + i, "cost_usd": 0.001, "input_tokens": 10, "output_tokens": 20});
        assert_eq!(post(&client, format!("{base}/v1/outcome"), body).await.0, 200);
        let body = json!({"decision_id": id, "quality": (i % 3) as f64 / 2.0});
        assert_eq!(post(&client, format!("{base}/v1/feedback"), body).await.0, 200);
    }
    let snapshot: Value = reqwest::get(format!("{base}/v1/routes/r/snapshot"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    terminate(child);
    snapshot
}

async fn served_snapshot(base: &str) -> Value {
    reqwest::get(format!("{base}/v1/routes/r/snapshot"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A snapshot that cannot be read never stops a start: a damaged route (a `null` where a
/// number belongs) or a damaged file is rebuilt from the log, to the very state it held.
/// When the log no longer holds that history, the start fails and names the flag that
/// starts the route afresh; with the flag, the route starts over and its decision ids go
/// on after the logged ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_snapshot_is_rebuilt_from_the_log_or_reset_on_request() {
    let dir = scratch("hostile_snapshot");
    let config = write_config(&dir, "", TWO_ARMS);
    let learned = learn_and_stop(&config, 30).await;
    let snapshot_path = dir.join("log").join("snapshot.json");
    let written = std::fs::read_to_string(&snapshot_path).unwrap();

    let damaged_route = regex_like_replace(&written, "\"latency_ms_sq\":", "null");
    for damaged in [
        damaged_route,
        written[..written.len() / 2].to_string(),
        "not json".to_string(),
    ] {
        std::fs::write(&snapshot_path, &damaged).unwrap();
        let (child, base) = start_binary(&["--config", &config]);
        assert_eq!(
            served_snapshot(&base).await,
            learned,
            "rebuilt from {}",
            &damaged[..20.min(damaged.len())]
        );
        terminate(child);
    }

    // The log gone and the snapshot damaged: nothing to rebuild from.
    std::fs::write(&snapshot_path, "not json").unwrap();
    let segments: Vec<_> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| quiver_serve::log::is_segment(p))
        .collect();
    let kept = dir.join("kept-segments");
    std::fs::create_dir_all(&kept).unwrap();
    for segment in &segments {
        std::fs::rename(segment, kept.join(segment.file_name().unwrap())).unwrap();
    }
    let error = failing_start(&["--config", &config]);
    assert!(error.contains("--reset-route"), "{error}");
    assert!(error.contains("routes r cannot be rebuilt"), "{error}");

    // With the log back, `--reset-route` starts the route over: nothing learned, the
    // decisions still re-registered (their feedback is known), new ids after theirs.
    for segment in &segments {
        std::fs::rename(kept.join(segment.file_name().unwrap()), segment).unwrap();
    }
    let (child, base) = start_binary(&["--config", &config, "--reset-route", "r"]);
    // A second server on the same log directory stops before it reads or writes it.
    let error = failing_start(&["--config", &config]);
    assert!(
        error.contains("another process writes this log directory"),
        "{error}"
    );
    let state: Value = reqwest::get(format!("{base}/v1/routes/r"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        state["arms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["requests"] == 0),
        "{state}"
    );
    let client = reqwest::Client::new();
    assert_eq!(decide(&client, &base, "after the reset").await, "r:30");
    let (status, again) = post(
        &client,
        format!("{base}/v1/feedback"),
        json!({"decision_id": "r:29", "quality": 1.0}),
    )
    .await;
    assert_eq!((status, again["status"].as_str()), (200, Some("already_applied")));
    terminate(child);
    let error = failing_start(&["--config", &config, "--reset-route", "nope"]);
    assert!(
        error.contains("--reset-route `nope`: no such route (routes: r)"),
        "{error}"
    );
}

/// `text` with the value after the first `key` replaced by `value`.
fn regex_like_replace(text: &str, key: &str, value: &str) -> String {
    let at = text.find(key).unwrap() + key.len();
    let end = at + text[at..].find([',', '}']).unwrap();
    format!("{}{value}{}", &text[..at], &text[end..])
}

/// A crash can cut the log's last record inside a multi-byte character. The server
/// starts, saying what it cut off, and `quiver ope` reads the log, both skipping the
/// torn record. A last record that lost its newline after the snapshot took it in reads
/// as torn too: the start is refused, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_record_torn_inside_a_character_neither_stops_a_start_nor_ope() {
    let dir = scratch("hostile_torn");
    let config = write_config(&dir, "", TWO_ARMS);
    learn_and_stop(&config, 5).await;
    let segment = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| quiver_serve::log::is_segment(p))
        .unwrap();
    let mut text = std::fs::read(&segment).unwrap();
    while text.last() == Some(&0) {
        text.pop();
    }
    let last_line = text.len() - 1 - text[..text.len() - 1].iter().rposition(|&b| b == b'\n').unwrap() - 1;
    std::fs::write(&segment, &text[..text.len() - 1]).unwrap();
    let refusal = failing_start(&["--config", &config]);
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(
        refusal.contains("the log has no record")
            && refusal.contains(&format!(
                "{name} ends in {last_line} bytes after its last newline"
            )),
        "{refusal}"
    );
    std::fs::write(&segment, &text).unwrap();
    let record = r#"{"decision_id":"r:5","timestamp":"2026-01-01T00:00:00.000Z","route":"r","policy":"p","arm":"a","propensity":1.0,"quality":null,"cost_usd":0.0,"latency_ms":0.0,"error":false,"prompt":"日本語""#;
    let cut = record.find('本').unwrap() + 1; // inside the character
    text.extend_from_slice(&record.as_bytes()[..cut]);
    std::fs::write(&segment, &text).unwrap();
    assert!(std::str::from_utf8(&text).is_err());
    let ope = std::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args([
            "ope",
            "--data",
            dir.join("log").to_str().unwrap(),
            "--policy",
            "random",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(ope.status.success(), "{}", String::from_utf8_lossy(&ope.stderr));
    let (child, base) = start_binary(&["--config", &config]);
    let cut = format!("cut off segment={} bytes={cut}", segment.display());
    assert!(
        child.logged_within(&cut, Duration::from_secs(10)),
        "{:?}",
        child.logs()
    );
    assert_eq!(
        decide(&reqwest::Client::new(), &base, "after the crash").await,
        "r:5"
    );
    terminate(child);
}

/// Upstreams for the proxy tests, each misbehaving as its path says.
async fn upstreams() -> SocketAddr {
    async fn stream_of(events: Vec<(u64, String)>) -> axum::response::Response {
        let body = futures_util::stream::iter(events).then(|(delay_ms, event)| async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Ok::<_, std::convert::Infallible>(event)
        });
        (
            [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
            axum::body::Body::from_stream(body),
        )
            .into_response()
    }
    fn token(text: &str) -> String {
        format!("data: {}\n\n", json!({"choices": [{"delta": {"content": text}}]}))
    }
    let completion = || {
        axum::Json(
            json!({"choices": [{"message": {"content": "fine"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}),
        )
    };
    let app = axum::Router::new()
        // Ten tokens, one every 300 ms: 3 s in all.
        .route(
            "/trickle/chat/completions",
            axum::routing::post(|| async {
                let mut events: Vec<(u64, String)> =
                    (0..10).map(|i| (300, token(&format!("t{i} ")))).collect();
                events.push((0, "data: [DONE]\n\n".into()));
                stream_of(events).await
            }),
        )
        // Two tokens, then silence.
        .route(
            "/stall/chat/completions",
            axum::routing::post(|| async {
                stream_of(vec![(0, token("a")), (0, token("b")), (30_000, token("never"))]).await
            }),
        )
        // A response head, then nothing.
        .route(
            "/headless/chat/completions",
            axum::routing::post(|| async { stream_of(vec![(30_000, token("never"))]).await }),
        )
        .route(
            "/good/chat/completions",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| async move {
                if body["stream"] == true {
                    stream_of(vec![(0, token("ok")), (0, "data: [DONE]\n\n".into())]).await
                } else {
                    completion().into_response()
                }
            }),
        )
        // 128 MiB of body, sent as it is made, with no length declared.
        .route(
            "/huge/chat/completions",
            axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
                // Streamed: 2048 events of 64 KiB each.
                let (count, chunk) = if body["stream"] == true {
                    (2048, token(&"x".repeat(64 * 1024 - 64)).into_bytes())
                } else {
                    (128, vec![b' '; MIB as usize])
                };
                let chunks = futures_util::stream::iter(0..count)
                    .map(move |_| Ok::<_, std::convert::Infallible>(chunk.clone()));
                let done = futures_util::stream::iter([Ok(b"data: [DONE]\n\n".to_vec())]);
                axum::body::Body::from_stream(chunks.chain(done)).into_response()
            }),
        )
        // A declared length far past the limit.
        .route(
            "/declared/chat/completions",
            axum::routing::post(|| async {
                (
                    [(axum::http::header::CONTENT_LENGTH, (512 * MIB).to_string())],
                    axum::body::Body::empty(),
                )
                    .into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn proxy_routes(upstream: SocketAddr, routes: &[(&str, &[&str])]) -> String {
    routes
        .iter()
        .map(|(name, models)| {
            let first = models[0];
            let models: String = models
                .iter()
                .map(|m| format!("[[routes.models]]\nid = \"{m}\"\nbase_url = \"http://{upstream}/{m}\"\n"))
                .collect();
            format!("[[routes]]\nname = \"{name}\"\npolicy = \"fixed({first})\"\n{models}")
        })
        .collect()
}

/// Asks `route` for a streamed answer: the response, its head read (200).
async fn open_stream(client: &reqwest::Client, base: &str, route: &str) -> reqwest::Response {
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": route, "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
}

/// The data lines of a stream: `text`, already read, then `body` to its end.
async fn data_lines<B: AsRef<[u8]>>(
    mut text: String,
    mut body: impl futures_util::Stream<Item = reqwest::Result<B>> + Unpin,
) -> Vec<String> {
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(chunk.unwrap().as_ref()));
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// Reads a streamed answer whole: its data lines, and how long it took.
async fn read_stream(client: &reqwest::Client, base: &str, route: &str) -> (String, Vec<String>, Duration) {
    let started = Instant::now();
    let response = open_stream(client, base, route).await;
    let model = response.headers()["x-quiver-model"].to_str().unwrap().to_string();
    let events = data_lines(String::new(), response.bytes_stream()).await;
    (model, events, started.elapsed())
}

/// A healthy stream is never cut by a total deadline, only by silence: ten tokens over 3 s
/// pass whole through a proxy whose first-byte limit is 1.5 s. A stream that falls silent
/// ends with an error event after the idle limit; one that never sends its first event
/// falls back to the next model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_bounded_by_silence_not_length() {
    let upstream = upstreams().await;
    let dir = scratch("hostile_streams");
    let routes = proxy_routes(
        upstream,
        &[
            ("trickle", &["trickle"]),
            ("stall", &["stall", "good"]),
            ("headless", &["headless", "good"]),
        ],
    );
    let config = write_config(
        &dir,
        "upstream_timeout_ms = 1500\nupstream_idle_timeout_ms = 1000\nrequest_timeout_ms = 2000",
        &routes,
    );
    let (child, base) = start_binary(&["--config", &config]);
    let client = reqwest::Client::new();

    let (model, events, took) = read_stream(&client, &base, "trickle").await;
    assert_eq!(model, "trickle");
    assert_eq!(events.len(), 11, "{events:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(took > Duration::from_millis(2500), "{took:?}");

    let (model, events, took) = read_stream(&client, &base, "stall").await;
    assert_eq!(model, "stall", "bytes were sent: no fallback");
    assert_eq!(events.len(), 3, "{events:?}");
    let error: Value = serde_json::from_str(&events[2]).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sent nothing for 1000 ms"),
        "{error}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    let (model, events, _) = read_stream(&client, &base, "headless").await;
    assert_eq!(
        (model.as_str(), events.last().map(String::as_str)),
        ("good", Some("[DONE]"))
    );
    terminate(child);

    let records = quiver_serve::log::read_log(&dir.join("log")).unwrap();
    let failed = |route: &str| {
        records
            .iter()
            .find(|r| r.route == route && r.event == quiver_serve::log::LogEvent::Outcome)
            .map(|r| r.error)
    };
    assert_eq!(failed("trickle"), Some(false));
    assert_eq!(failed("stall"), Some(true));
    assert_eq!(failed("headless"), Some(true));
}

/// A stop lets an open stream finish whole, and turns new connections away at once
/// rather than leaving them queued, unanswered, until the server exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_finishes_open_streams_and_refuses_new_connections() {
    let upstream = upstreams().await;
    let dir = scratch("hostile_stop");
    let routes = proxy_routes(upstream, &[("trickle", &["trickle"])]);
    let (child, base) = start_binary(&["--config", &write_config(&dir, "", &routes)]);
    let mut body = open_stream(&reqwest::Client::new(), &base, "trickle")
        .await
        .bytes_stream();
    let first = String::from_utf8_lossy(&body.next().await.unwrap().unwrap()).into_owned();

    ask_to_stop(&child);
    // Refused within 2 s, while the stream (2.7 s to go) is still open.
    let asked = Instant::now();
    let refused = loop {
        match connect(base.trim_start_matches("http://")) {
            Ok(_) if asked.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Ok(_) => panic!("still accepting connections 2 s after SIGTERM"),
            Err(e) => break e,
        }
    };
    // One made as the listener closes is reset with the queue it waited in.
    assert!(
        matches!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
        ),
        "{refused}"
    );

    let events = data_lines(first, body).await;
    assert_eq!(events.len(), 11, "{events:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    wait_for_clean_stop(child);
}

/// The server's diagnostics never hold a request: with its standard error unread (a full
/// pipe, a stalled journal), a thousand requests, each with its access-log line, are all
/// answered; an access-log line is about 350 bytes, so a 64 KiB pipe fills within 200.
/// Asked to stop with the pipe still full, it exits cleanly: its last line is queued too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_reader_holds_no_request() {
    let dir = scratch("hostile_stalled_log");
    let (child, base) = start_binary(&["--config", &write_config(&dir, "", TWO_ARMS)]);
    let http = bounded_client();
    child.stall_stderr();
    for i in 0..1000 {
        let answer = http.get(format!("{base}/healthz")).send().await;
        assert!(
            matches!(&answer, Ok(r) if r.status() == 200),
            "request {i}: {answer:?}"
        );
    }
    terminate(child);
}

/// Makes every snapshot of the server logging to `dir/log` fail: a directory stands where
/// its temporary file goes. Removing the returned path clears the way.
fn block_snapshots(dir: &Path) -> PathBuf {
    let blocker = dir.join("log").join("snapshot.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    blocker
}

/// A stop whose final snapshot cannot be written ([`block_snapshots`]) fails: the exit
/// status says so and the last line says why, and it exits as soon with nothing reading
/// standard error. It loses nothing: a restart replays the log, so a decision made before
/// takes its feedback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_without_its_final_snapshot_fails_loses_nothing_and_is_not_held() {
    for stalled in [false, true] {
        let dir = scratch(&format!("hostile_final_snapshot_{stalled}"));
        let config = write_config(&dir, "", TWO_ARMS);
        let (child, base) = start_binary(&["--config", &config]);
        let client = bounded_client();
        let id = decide(&client, &base, "before the stop").await;
        let blocker = block_snapshots(&dir);
        if stalled {
            child.stall_stderr();
            for _ in 0..1000 {
                client.get(format!("{base}/healthz")).send().await.unwrap();
            }
        }
        ask_to_stop(&child);
        let (status, logs) = wait_for_stop(child);
        assert_eq!(status.code(), Some(1), "stalled: {stalled}; {logs:?}");
        if !stalled {
            let last = logs.last().unwrap();
            assert!(
                last.starts_with("error: stopped without the final snapshot")
                    && last.contains("snapshot.json.tmp")
                    && last.ends_with("a restart replays it"),
                "{logs:?}"
            );
            assert!(!logs.iter().any(|l| l.contains("snapshot written")), "{logs:?}");
        }

        std::fs::remove_dir(&blocker).unwrap();
        let (child, base) = start_binary(&["--config", &config]);
        let body = json!({"decision_id": id, "quality": 1.0});
        assert_eq!(post(&client, format!("{base}/v1/feedback"), body).await.0, 200);
        terminate(child);
    }
}

/// A periodic snapshot that cannot be written ([`block_snapshots`]) is counted and logged,
/// and serving goes on; once the way is clear, the next one is written, and so is the
/// stop's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_snapshot_that_fails_is_counted_and_logged_and_serving_goes_on() {
    let dir = scratch("hostile_periodic_snapshot");
    let config = write_config(&dir, "snapshot_interval_s = 1", TWO_ARMS);
    let (child, base) = start_binary(&["--config", &config]);
    let client = bounded_client();
    let blocker = block_snapshots(&dir);
    let failed = |logs: &[String]| {
        logs.iter()
            .any(|l| l.contains("snapshot failed") && l.contains("snapshot.json.tmp"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&client, &base, "quiver_snapshot_failures_total").await < 1.0 || !failed(&child.logs()) {
        let said: Vec<String> = child
            .logs()
            .into_iter()
            .filter(|l| l.contains("snapshot"))
            .collect();
        assert!(
            Instant::now() < deadline,
            "no failed snapshot counted and logged: {said:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    decide(&client, &base, "while snapshots fail").await;

    let written = metric(&client, &base, "quiver_snapshots_total").await;
    std::fs::remove_dir(&blocker).unwrap();
    let snapshots = "quiver_snapshots_total";
    wait_for_metric(
        &client,
        &base,
        snapshots,
        |n| n > written,
        Duration::from_secs(10),
    )
    .await;
    terminate(child);
}

/// An upstream that answers with 128 MiB (or declares 512 MiB) counts as a failed attempt
/// and the proxy falls back, holding no more than the body limit; a 128 MiB stream passes
/// through without being held. Three rounds of each show that the memory is a constant,
/// not a share of what passed: the bounds leave room for the allocator's caches (a few
/// tens of MiB), far below the sizes sent (the proxy once grew by 251-372 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_upstream_bodies_fall_back_and_memory_stays_bounded() {
    let upstream = upstreams().await;
    let dir = scratch("hostile_huge");
    let routes = proxy_routes(
        upstream,
        &[
            ("huge", &["huge", "good"]),
            ("declared", &["declared", "good"]),
            ("huge-stream", &["huge"]),
        ],
    );
    let config = write_config(&dir, "max_upstream_body_bytes = 4194304", &routes);
    let (child, base) = start_binary(&["--config", &config]);
    let client = reqwest::Client::new();
    let ask = |route: &str| {
        client
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": route, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    ask("declared").await.unwrap();
    let before = peak_rss_bytes(child.id());
    for _ in 0..3 {
        for route in ["huge", "declared"] {
            let response = ask(route).await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["x-quiver-model"], "good", "{route}");
        }
    }
    let after_bodies = peak_rss_bytes(child.id());
    let grown = after_bodies.saturating_sub(before);
    assert!(
        grown < 48 * MIB,
        "three 128 MiB bodies grew peak RSS by {} MiB",
        grown / MIB
    );

    let (_, events, _) = read_stream(&client, &base, "huge-stream").await;
    assert_eq!(events.len(), 2049);
    let after_one_stream = peak_rss_bytes(child.id());
    for _ in 0..2 {
        let (_, events, _) = read_stream(&client, &base, "huge-stream").await;
        assert_eq!(events.len(), 2049);
    }
    let after_three_streams = peak_rss_bytes(child.id());
    let grown = after_one_stream.saturating_sub(after_bodies);
    assert!(
        grown < 96 * MIB,
        "a 128 MiB stream grew peak RSS by {} MiB",
        grown / MIB
    );
    let grown = after_three_streams.saturating_sub(after_one_stream);
    // Holding either stream would grow it by 128 MiB; the allocator's own slack (freed
    // chunks kept in the worker threads' arenas) has reached 39 under a loaded machine.
    assert!(
        grown < 64 * MIB,
        "two more streams grew peak RSS by {} MiB",
        grown / MIB
    );
    terminate(child);
}

/// A connection to `addr` whose connect and writes give up after five seconds.
fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let limit = Duration::from_secs(5);
    let stream = TcpStream::connect_timeout(&addr.parse().unwrap(), limit)?;
    stream.set_write_timeout(Some(limit))?;
    Ok(stream)
}

/// An HTTP client whose requests give up after ten seconds.
fn bounded_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Writes a request line, then one more header line every `every` until the server
/// closes the connection or `limit` passes; returns how long the connection stayed open.
fn trickle_head(addr: &str, every: Duration, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = connect(addr).unwrap();
    stream.set_read_timeout(Some(every)).unwrap();
    stream
        .write_all(b"POST /v1/route HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    while started.elapsed() < limit {
        if stream.write_all(b"X-Slow: yes\r\n").is_err() {
            return Some(started.elapsed());
        }
        match stream.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Ok(n) if n > 0 => {}
            // Closed (0 bytes, or reset).
            _ => return Some(started.elapsed()),
        }
    }
    None
}

/// Connections that never finish their head are closed after the head limit; beyond the
/// connection limit a connection gets a JSON 503 at once; once the slow ones are closed the
/// server answers again. Under a limit of 256 open files, 300 idle connections cannot make
/// the server stop answering for longer than the head limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_are_cut_and_connections_are_capped() {
    let dir = scratch("hostile_heads");
    let config = write_config(
        &dir,
        "header_read_timeout_ms = 1000\nmax_connections = 48",
        TWO_ARMS,
    );
    let (child, base) = start_binary(&["--config", &config]);
    let addr = base.trim_start_matches("http://").to_string();
    // Every wait is bounded: a server that stops answering fails the test, not CI's clock.
    let http = bounded_client();
    let before = peak_rss_bytes(child.id());
    let slow: Vec<_> = (0..40)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                trickle_head(&addr, Duration::from_millis(300), Duration::from_secs(6))
            })
        })
        .collect();
    for handle in slow {
        let open = handle.join().unwrap().expect("a slow head was never closed");
        assert!(open < Duration::from_millis(2500), "closed after {open:?}");
    }

    // 48 idle connections fill the server; the next is told so in JSON.
    let idle: Vec<TcpStream> = (0..48).map(|_| connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let busy = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers()["retry-after"], "1");
    let busy: Value = busy.json().await.unwrap();
    assert!(busy["error"]["message"]
        .as_str()
        .unwrap()
        .contains("as many connections"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        http.get(format!("{base}/healthz")).send().await.unwrap().status(),
        200
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let turned_away: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quiver_overloaded_connections_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(turned_away >= 1, "{metrics}");
    drop(idle);
    let grown = peak_rss_bytes(child.id()).saturating_sub(before);
    assert!(grown < 32 * MIB, "peak RSS grew by {} MiB", grown / MIB);
    terminate(child);

    let dir = scratch("hostile_descriptors");
    let config = write_config(&dir, "header_read_timeout_ms = 1000", TWO_ARMS);
    let (child, base) = start_binary_with_file_limit(256, &["--config", &config]);
    let addr = base.trim_start_matches("http://").to_string();
    let flood: Vec<TcpStream> = (0..300).filter_map(|_| connect(&addr).ok()).collect();
    assert!(flood.len() >= 250);
    // Each try is a new request bounded by the head limit, so that one lost connection
    // cannot use up the time the server is given.
    let started = Instant::now();
    let mut tries = Vec::new();
    loop {
        let answer = http
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        match answer {
            Ok(r) if r.status() == 200 => break,
            other => tries.push(format!("{:?}: {other:?}", started.elapsed())),
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "no answer under the flood:\n{}\nthe server's log:\n{}",
            tries.join("\n"),
            child.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(flood);
    terminate(child);
}

/// A burst of connections beyond the standard library's backlog (128) waits in the kernel's
/// queue while the server is busy, instead of losing its SYNs to TCP's retransmissions (1,
/// 3, then 7 s): with the server stopped, 300 connections all complete within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_waits_in_the_queue() {
    const BURST: usize = 300;
    let dir = scratch("hostile_burst");
    let config = write_config(&dir, "", TWO_ARMS);
    let (child, base) = start_binary(&["--config", &config]);
    let addr = base.trim_start_matches("http://").to_string();
    // The kernel caps every backlog at somaxconn.
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let queued = BURST.min(somaxconn + 1);
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill only sends a signal, to the server this test started.
    let signal = |number| assert_eq!(unsafe { libc::kill(pid, number) }, 0);
    // Stopped, the server accepts nothing: the kernel's queue alone holds the burst.
    signal(libc::SIGSTOP);
    let burst: Vec<_> = (0..BURST)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await
            })
        })
        .collect();
    let mut connected = Vec::new();
    for attempt in burst {
        if let Ok(Ok(stream)) = attempt.await.unwrap() {
            connected.push(stream);
        }
    }
    signal(libc::SIGCONT);
    assert!(
        connected.len() >= queued,
        "{} of {BURST} connections completed; the queue holds {queued}",
        connected.len()
    );
    let http = bounded_client();
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    drop(connected);
    terminate(child);
}

/// Sends a head declaring a 100-byte body to `path`, then one byte every 300 ms: the
/// server answers 408 in JSON after the body limit, on every endpoint, the proxy's too.
fn trickle_body(addr: &str, path: &str) -> (Duration, String) {
    let started = Instant::now();
    let mut stream = connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(8) {
        let _ = stream.write_all(b" ");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.ends_with(b"}") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    (started.elapsed(), String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_get_408_on_every_endpoint() {
    let dir = scratch("hostile_bodies");
    let upstream = upstreams().await;
    let routes = format!("{TWO_ARMS}{}", proxy_routes(upstream, &[("chat", &["good"])]));
    let config = write_config(&dir, "body_read_timeout_ms = 1500", &routes);
    let (child, base) = start_binary(&["--config", &config]);
    let addr = base.trim_start_matches("http://").to_string();
    let before = peak_rss_bytes(child.id());
    let endpoints = ["/v1/chat/completions", "/v1/route", "/v1/feedback", "/v1/outcome"];
    let handles: Vec<_> = endpoints
        .iter()
        .flat_map(|path| std::iter::repeat_n(*path, 25))
        .map(|path| {
            let addr = addr.clone();
            std::thread::spawn(move || (path, trickle_body(&addr, path)))
        })
        .collect();
    for handle in handles {
        let (path, (took, answer)) = handle.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(
            answer.contains("application/json") && answer.contains("did not arrive within 1500 ms"),
            "{path}: {answer}"
        );
        assert!(took < Duration::from_secs(4), "{path}: {took:?}");
    }
    let grown = peak_rss_bytes(child.id()).saturating_sub(before);
    assert!(grown < 32 * MIB, "peak RSS grew by {} MiB", grown / MIB);
    terminate(child);
}

/// Every status the server sends comes with a JSON error in OpenAI's shape, whose `code`
/// is the status: unknown paths, wrong methods, oversized bodies (declared or chunked),
/// oversized heads, missing tokens, bad JSON, wrong content types and invalid values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_in_openai_shape() {
    let dir = scratch("hostile_errors");
    let config = write_config(
        &dir,
        "max_body_bytes = 1024\nmax_header_bytes = 8192\n[auth]\nroute_tokens = [\"t\"]\nadmin_tokens = [\"a\"]",
        TWO_ARMS,
    );
    let (child, base) = start_binary(&["--config", &config]);
    let client = reqwest::Client::new();
    let big = "x".repeat(4096);
    let chunked = futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 512])));
    let cases = [
        (404, client.get(format!("{base}/nowhere"))),
        (405, client.get(format!("{base}/v1/route"))),
        // Without CORS origins configured, a preflight is just a method /v1/route lacks.
        (
            405,
            client.request(reqwest::Method::OPTIONS, format!("{base}/v1/route")),
        ),
        (
            401,
            client
                .post(format!("{base}/v1/route"))
                .json(&json!({"route": "r", "prompt": "x"})),
        ),
        (
            413,
            client
                .post(format!("{base}/v1/route"))
                .bearer_auth("t")
                .header("content-type", "application/json")
                .body(big.clone()),
        ),
        (
            413,
            client
                .post(format!("{base}/v1/route"))
                .bearer_auth("t")
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(chunked)),
        ),
        (
            431,
            client
                .get(format!("{base}/healthz"))
                .header("x-big", "y".repeat(16_384)),
        ),
        (
            400,
            client
                .post(format!("{base}/v1/route"))
                .bearer_auth("t")
                .header("content-type", "application/json")
                .body("{"),
        ),
        (
            415,
            client
                .post(format!("{base}/v1/route"))
                .bearer_auth("t")
                .body("{}"),
        ),
        // A compressed body is not decoded: said so, not read as malformed JSON.
        (
            415,
            client
                .post(format!("{base}/v1/route"))
                .bearer_auth("t")
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(vec![0x1f, 0x8b, 0x08, 0x00]),
        ),
        (
            422,
            client
                .post(format!("{base}/v1/route"))
                .bearer_auth("t")
                .json(&json!({"route": "r"})),
        ),
        (
            404,
            client
                .post(format!("{base}/v1/route"))
                .bearer_auth("t")
                .json(&json!({"route": "zz", "prompt": "x", "features": [0.0, 0.0]})),
        ),
    ];
    for (i, (expected, request)) in cases.into_iter().enumerate() {
        let response = request.send().await.unwrap_or_else(|e| panic!("case {i}: {e:?}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let closes = response.headers().get("connection").is_some_and(|v| v == "close");
        let text = response.text().await.unwrap();
        assert_eq!(status, expected, "{text}");
        // A body left unread closes the connection, and the answer says so.
        if [413, 431].contains(&expected) {
            assert!(closes, "{expected} without `connection: close`");
        }
        assert_eq!(content_type.as_deref(), Some("application/json"), "{status}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], expected.to_string());
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
        assert!(body["error"]["type"].is_string());
    }
    // Bodies the server never reads (no endpoint, no such method): the connection closes,
    // and the answer says so.
    for (expected, request) in [
        (404, client.post(format!("{base}/nowhere"))),
        (405, client.put(format!("{base}/v1/route"))),
    ] {
        let response = request.body("x".repeat(512)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), expected);
        assert_eq!(response.headers()["connection"], "close", "{expected}");
    }
    terminate(child);
}
