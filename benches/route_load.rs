//! `/v1/route` under load on 127.0.0.1: an in-process server (LinUCB over 11 models, the
//! 64-feature featurizer) and a fixed number of concurrent clients, each sending requests
//! back to back; prints throughput and latency percentiles measured at the client.
//!
//! Run: `cargo bench --bench route_load` (16 clients x 2,000 requests). Without `--bench`
//! (CI's test mode) it sends 4 x 50 requests, only to keep the harness running.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use serde_json::json;

/// The allocator the `quiver` binary uses, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (clients, per_client) = if full { (16, 2000) } else { (4, 50) };
    let dir = std::env::temp_dir().join(format!("quiver-route-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let models: Vec<serde_json::Value> = (0..11)
        .map(|i| json!({"id": format!("model-{i}"), "input_usd_per_million": 1.0 + i as f64, "output_usd_per_million": 2.0 + i as f64}))
        .collect();
    let config: quiver_serve::ServeConfig = serde_json::from_value(json!({
        "listen": "127.0.0.1:0",
        "log_dir": dir,
        "routes": [{"name": "load", "policy": "linucb(alpha=0.5,floor=0.01)", "models": models, "w_cost": 20.0}]
    }))
    .expect("config");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let state = quiver_serve::server::state(config).expect("state");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(quiver_serve::server::run(
            state,
            async move {
                let _ = stop_rx.await;
            },
            move |addr| {
                let _ = tx.send(addr);
            },
        ));
        let addr = rx.await.expect("address");
        let url = format!("http://{addr}/v1/route");
        let client = reqwest::Client::new();
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(per_client);
                    for i in 0..per_client {
                        let body = json!({"route": "load", "prompt": format!("client {c} asks question number {i}: what is {} times {}?", i * 7, c + 3)});
                        let t = Instant::now();
                        let response = client.post(&url).json(&body).send().await.expect("send");
                        assert!(response.status().is_success());
                        let _ = response.bytes().await;
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut all: Vec<Duration> = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client"));
        }
        let elapsed = started.elapsed();
        all.sort();
        let at = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
        println!(
            "/v1/route, {clients} concurrent clients, {} requests: {:.0} req/s; latency ms p50 {:.3}, p90 {:.3}, p99 {:.3}, max {:.3}",
            all.len(),
            all.len() as f64 / elapsed.as_secs_f64(),
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0)
        );
        let _ = stop_tx.send(());
        let _ = server.await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
