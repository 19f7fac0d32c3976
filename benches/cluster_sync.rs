//! What sharing a route's learning between replicas costs (`crates/serve/src/cluster.rs`),
//! at d = 64 and K = 11 and 30, three replicas, one sync per 250 ms: the record's size,
//! the CPU to publish one (the replica's own learning, then MessagePack) and to fold one
//! in (decode, then add and refactorize every model that changed), and what that makes
//! per replica per second under steady traffic. Redis's own time and the network are not
//! in it: they move the bytes reported.
//!
//! And whether clustering touches the decision path: `Router::route` (decide and stage
//! the log record, without waiting for its fsync) timed call by call with and without a
//! replica name, percentiles printed.
//!
//! Run: `cargo bench --bench cluster_sync`. Without `--bench` (CI's test mode) it runs a
//! few rounds only, to keep the harness compiling and running.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Instant;

use quiver_bandit::Outcome;
use quiver_serve::cluster::SharedLearning;
use quiver_serve::{ModelConfig, RouteConfig, RouteRequest, Router, RouterOptions};

/// The allocator the `quiver` binary uses, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REPLICAS: usize = 3;
const SYNCS_PER_SECOND: f64 = 4.0;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quiver-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn route(models: usize) -> RouteConfig {
    let models = (0..models)
        .map(|m| ModelConfig::priced(&format!("model-{m}"), 0.1 + m as f64, 0.2 + 2.0 * m as f64))
        .collect();
    RouteConfig::new("r", "linucb(alpha=0.3,detect=0)", models)
}

fn router(name: &str, models: usize, replica: Option<&str>) -> (Router, PathBuf) {
    let dir = scratch(name);
    let options = RouterOptions {
        replica: replica.map(str::to_string),
        ..RouterOptions::default()
    };
    (
        Router::open_with(vec![route(models)], &dir, options).unwrap(),
        dir,
    )
}

const PROMPTS: [&str; 5] = [
    "Calculate 348 * 27 - 19.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "Write a short poem about autumn leaves",
    "Which is a mammal?\nA) shark\nB) whale\nC) trout",
    "Summarize the plot of Hamlet in three sentences.",
];

/// `n` decisions, each with its outcome and quality, staged without waiting for fsyncs.
fn traffic(router: &Router, n: usize, offset: usize) {
    for i in offset..offset + n {
        let request = RouteRequest {
            prompt: Some(format!("{} ({i})", PROMPTS[i % PROMPTS.len()])),
            ..RouteRequest::default()
        };
        let routed = router.route("r", &request).unwrap().split().0;
        let outcome = Outcome::new(200.0, 0.0004)
            .with_tokens(300, 200)
            .with_quality((i % 7) as f64 / 7.0);
        drop(router.record_outcome(&routed.decision_id, &outcome).unwrap());
    }
}

fn median(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

fn sync_cost(models: usize, rounds: usize) {
    let names: Vec<String> = (0..REPLICAS).map(|r| format!("replica{r}")).collect();
    let replicas: Vec<(Router, PathBuf)> = names
        .iter()
        .map(|n| router(&format!("sync-{models}-{n}"), models, Some(n)))
        .collect();
    // Every model learned on every replica, and each replica holds the others'.
    for (i, (r, _)) in replicas.iter().enumerate() {
        traffic(r, 40 * models, 1000 * i);
    }
    let fold_all = |replicas: &[(Router, PathBuf)]| {
        for (i, (from, _)) in replicas.iter().enumerate() {
            let record = SharedLearning::of(from, "r", &names[i])
                .unwrap()
                .encode()
                .unwrap();
            let others = replicas.iter().enumerate().filter(|(j, _)| *j != i);
            for (_, (to, _)) in others {
                SharedLearning::decode(&record)
                    .unwrap()
                    .fold_into(to, "r", &names[i])
                    .unwrap();
            }
        }
    };
    fold_all(&replicas);

    let (mut publish_ms, mut fold_ms, mut bytes) = (Vec::new(), Vec::new(), 0);
    for round in 0..rounds {
        // An interval's traffic on the second replica, every model touched.
        traffic(&replicas[1].0, 4 * models, 100_000 + round * 4 * models);
        let start = Instant::now();
        let record = SharedLearning::of(&replicas[1].0, "r", &names[1])
            .unwrap()
            .encode()
            .unwrap();
        publish_ms.push(start.elapsed().as_secs_f64() * 1e3);
        bytes = record.len();
        let start = Instant::now();
        SharedLearning::decode(&record)
            .unwrap()
            .fold_into(&replicas[0].0, "r", &names[1])
            .unwrap();
        fold_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let (publish, fold) = (median(publish_ms), median(fold_ms));
    let cpu_ms_per_s = SYNCS_PER_SECOND * (publish + (REPLICAS - 1) as f64 * fold);
    println!(
        "K = {models:>2}: record {:>6.0} KB; publish {publish:>5.2} ms, fold {fold:>5.2} ms; per replica \
         at 250 ms: sent {:>5.2} MB/s, received {:>5.2} MB/s, CPU {cpu_ms_per_s:>5.1} ms/s ({:.1}% of a core)",
        bytes as f64 / 1e3,
        SYNCS_PER_SECOND * bytes as f64 / 1e6,
        SYNCS_PER_SECOND * (REPLICAS - 1) as f64 * bytes as f64 / 1e6,
        cpu_ms_per_s / 10.0,
    );
    for (_, dir) in replicas {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn percentile(sorted_us: &[f64], p: f64) -> f64 {
    sorted_us[((sorted_us.len() as f64 - 1.0) * p).round() as usize]
}

fn decision_latency(calls: usize) {
    println!("Router::route at d = 64, K = 11, {calls} calls (decide and stage the record), microseconds:");
    println!("{:<14} {:>8} {:>8} {:>8} {:>8}", "", "p50", "p90", "p99", "p99.9");
    for replica in [None, Some("replica0")] {
        let (router, dir) = router("latency", 11, replica);
        traffic(&router, 2000, 0);
        let mut us = Vec::with_capacity(calls);
        for i in 0..calls {
            let request = RouteRequest {
                prompt: Some(PROMPTS[i % PROMPTS.len()].to_string()),
                ..RouteRequest::default()
            };
            let start = Instant::now();
            let routed = router.route("r", &request).unwrap();
            us.push(start.elapsed().as_secs_f64() * 1e6);
            drop(routed);
        }
        us.sort_by(f64::total_cmp);
        println!(
            "{:<14} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            if replica.is_some() { "clustered" } else { "alone" },
            percentile(&us, 0.5),
            percentile(&us, 0.9),
            percentile(&us, 0.99),
            percentile(&us, 0.999)
        );
        drop(router);
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 40 } else { 2 };
    println!("d = 64, {REPLICAS} replicas, medians of {rounds} rounds");
    for models in [11, 30] {
        sync_cost(models, rounds);
    }
    decision_latency(if full { 50_000 } else { 200 });
}
