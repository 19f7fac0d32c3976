//! A route that embeds with the encoder bundled by the `minilm` feature, over real HTTP on
//! 127.0.0.1. (Routes embedding through an endpoint are tested in the workspace's
//! `tests/embedding.rs`.) CI runs it with `cargo test -p quiver-serve --features minilm`.
#![cfg(feature = "minilm")]
#![allow(clippy::unwrap_used)] // a test that fails should panic

use quiver_serve::log::LogEvent;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_embeds_with_the_bundled_encoder() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("embedding_minilm_route");
    let _ = std::fs::remove_dir_all(&dir);
    let config = json!({
        "log_dir": dir.join("log"),
        "listen": "127.0.0.1:0",
        "routes": [{
            "name": "r",
            "policy": "linucb",
            "models": [{"id": "m", "input_usd_per_million": 1.0}],
            "embedding": {"bundled": "minilm-l3", "timeout_ms": 5000, "dims": 8}
        }]
    });
    let config: quiver_serve::ServeConfig = serde_json::from_value(config).unwrap();
    let state = quiver_serve::server::state(config).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        quiver_serve::server::run(state, std::future::pending(), move |a| {
            let _ = tx.send(a);
        })
        .await
        .unwrap()
    });
    let base = format!("http://{}", rx.await.unwrap());
    let answer = reqwest::Client::new()
        .post(format!("{base}/v1/route"))
        .json(&json!({"route": "r", "prompt": "How do I reverse a list in Python?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let decision = quiver_serve::log::read_log(&dir.join("log"))
        .unwrap()
        .into_iter()
        .find(|r| r.event == LogEvent::Decision)
        .unwrap();
    assert_eq!(decision.featurizer.as_deref(), Some("embedding"));
    let block = decision.embedding.unwrap();
    assert_eq!(block.len(), 8);
    assert!((block.iter().map(|v| v * v).sum::<f64>() - 1.0).abs() < 1e-9);
}
