//! Replicas of `quiver serve` sharing one learner through a real `redis-server` on
//! 127.0.0.1: what each learns reaches the others within two sync intervals; a replica
//! killed with SIGKILL and restarted, and Redis stopped and restarted empty, lose nothing
//! acknowledged and count nothing twice: in the end every replica's statistics equal those
//! of one learner fed the union of the replicas' logs.
//!
//! `.ci/run` installs Debian's `redis-server` and sets `QUIVER_REQUIRE_REDIS`; elsewhere a
//! missing `redis-server` skips these tests with a message.
#![allow(clippy::unwrap_used)] // a test helper that fails should panic

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quiver_bandit::{Policy, PolicySpec};
use serde_json::{json, Value};
use support::{
    assert_line, get_json, get_text, metric, outside_tool, scratch, start_binary, wait_for_metric, Running,
};

const SYNC_MS: u64 = 250;
const POLICY: &str = "linucb(alpha=0.1,detect=0)";
const MODELS: [&str; 3] = ["small", "medium", "large"];

/// A `redis-server` on a free loopback port, without persistence, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// Starts one on `port` (0: a free one); None when `redis-server` cannot run here
    /// and the environment does not require it.
    fn start(port: u16, dir: &Path) -> Option<Redis> {
        let port = if port == 0 {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        } else {
            port
        };
        let spawned = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = outside_tool(spawned, "redis-server", "QUIVER_REQUIRE_REDIS", "redis-server")?;
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis.answers() {
            assert!(Instant::now() < deadline, "redis-server did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A replica's configuration file, under `dir/<name>/`; `more` is appended to the route.
fn replica_config(dir: &Path, name: &str, redis: &str, more: &str) -> PathBuf {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).unwrap();
    let models: String = MODELS
        .iter()
        .map(|m| format!("[[routes.models]]\nid = \"{m}\"\n"))
        .collect();
    let config = home.join("quiver.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nlog_dir = \"log\"\nsnapshot_interval_s = 1\n\
             [cluster]\nredis_url = \"{redis}\"\nreplica_id = \"{name}\"\nsync_interval_ms = {SYNC_MS}\n\
             [[routes]]\nname = \"r\"\npolicy = \"{POLICY}\"\n{models}{more}"
        ),
    )
    .unwrap();
    config
}

/// A scratch directory `name`, a Redis, and the homes and configurations of replicas `a`
/// and `b` in it (their route with `more`); None when `redis-server` cannot run here.
fn two_replicas(name: &str, more: &str) -> Option<(PathBuf, Redis, [PathBuf; 2], [PathBuf; 2])> {
    let dir = scratch(name);
    let redis = Redis::start(0, &dir)?;
    let homes = [dir.join("a"), dir.join("b")];
    let configs = ["a", "b"].map(|replica| replica_config(&dir, replica, &redis.url(), more));
    Some((dir, redis, homes, configs))
}

fn start_replica(config: &Path) -> (Running, String) {
    start_binary(&["--config", config.to_str().unwrap()])
}

async fn post(client: &reqwest::Client, url: &str, body: Value) -> reqwest::Response {
    client.post(url).json(&body).send().await.unwrap()
}

/// Routes `prompt` on route `r` of the replica at `base`: the decision.
async fn route(client: &reqwest::Client, base: &str, prompt: &str) -> Value {
    let answer = post(
        client,
        &format!("{base}/v1/route"),
        json!({"route": "r", "prompt": prompt}),
    )
    .await;
    answer.json().await.unwrap()
}

/// Routes `n` prompts on the replica at `base` and sends each decision's feedback (the
/// quality depends on the model and the prompt); returns how many were acknowledged.
async fn learn(client: &reqwest::Client, base: &str, tag: &str, n: usize) -> usize {
    let mut acknowledged = 0;
    for i in 0..n {
        let prompt = format!("{tag} question {i} about {}", ["code", "math", "poems"][i % 3]);
        let routed = route(client, base, &prompt).await;
        let model = routed["model"].as_str().unwrap();
        let quality = match (model, i % 3) {
            ("large", _) => 0.9,
            ("medium", 1) => 0.2,
            ("medium", _) => 0.7,
            _ => 0.3,
        };
        let body = json!({"decision_id": routed["decision_id"], "quality": quality});
        let answer = post(client, &format!("{base}/v1/feedback"), body).await;
        assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
        acknowledged += 1;
    }
    acknowledged
}

/// Per model: the ridge model's `A` (flattened), `b` and count, from a learner's or a
/// policy's JSON.
fn ridge_statistics(policy: &Value) -> Vec<(Vec<f64>, Vec<f64>, f64)> {
    policy["ridge"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let model: quiver_bandit::ridge::RidgeModel = serde_json::from_value(m.clone()).unwrap();
            let a = model.precision().iter().copied().collect();
            (a, model.b().iter().copied().collect(), model.count())
        })
        .collect()
}

/// The route's policy as the replica at `base` holds it.
async fn replica_statistics(client: &reqwest::Client, base: &str) -> Vec<(Vec<f64>, Vec<f64>, f64)> {
    let snapshot = get_json(client, format!("{base}/v1/routes/r/snapshot"), "").await;
    ridge_statistics(&snapshot["learner"]["policy"])
}

/// One policy fed every feedback in the replicas' logs (each log's decisions give its
/// feedback's model and prompt), with contexts built as the server builds them.
fn union_of_logs(config: &Path, homes: &[PathBuf]) -> Vec<(Vec<f64>, Vec<f64>, f64)> {
    let routes = quiver_serve::ServeConfig::load(config).unwrap().routes;
    let contexts = quiver_serve::Router::open(routes, &scratch("cluster_reference")).unwrap();
    let spec: PolicySpec = POLICY.parse().unwrap();
    let dim = contexts.layout("r").unwrap().dim();
    let mut policy = spec.build(&MODELS, dim).unwrap();
    for home in homes {
        let records = quiver_serve::log::read_log(&home.join("log")).unwrap();
        let decisions: HashMap<&str, (&str, &str)> = records
            .iter()
            .filter(|r| r.event == quiver_serve::log::LogEvent::Decision)
            .map(|r| (r.decision_id.as_str(), (r.arm.as_str(), r.prompt.as_str())))
            .collect();
        for feedback in records
            .iter()
            .filter(|r| r.event == quiver_serve::log::LogEvent::Feedback)
        {
            let (arm, prompt) = decisions[feedback.decision_id.as_str()];
            let request = quiver_serve::RouteRequest {
                prompt: Some(prompt.to_string()),
                ..Default::default()
            };
            let (context, _) = contexts.context("r", &request, None).unwrap();
            let arm = MODELS.iter().position(|m| *m == arm).unwrap();
            policy.update(arm, &context.features, feedback.quality.unwrap());
        }
    }
    ridge_statistics(&serde_json::to_value(&policy).unwrap())
}

/// Whether two sets of statistics agree to rounding (sums added in another order).
fn agree(a: &[(Vec<f64>, Vec<f64>, f64)], b: &[(Vec<f64>, Vec<f64>, f64)]) -> bool {
    let close = |x: &[f64], y: &[f64]| {
        x.len() == y.len()
            && x.iter()
                .zip(y)
                .all(|(p, q)| (p - q).abs() <= 1e-9 * p.abs().max(q.abs()).max(1.0))
    };
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((a1, b1, c1), (a2, b2, c2))| close(a1, a2) && close(b1, b2) && c1 == c2)
}

fn total(stats: &[(Vec<f64>, Vec<f64>, f64)]) -> f64 {
    stats.iter().map(|(_, _, count)| count).sum()
}

/// Waits until every replica holds `expected` statistics; returns how long that took.
async fn converge(
    client: &reqwest::Client,
    bases: &[&str],
    expected: &[(Vec<f64>, Vec<f64>, f64)],
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for base in bases {
            all &= agree(&replica_statistics(client, base).await, expected);
        }
        if all {
            return start.elapsed();
        }
        if start.elapsed() > within {
            let counts: Vec<f64> = futures_util::future::join_all(
                bases
                    .iter()
                    .map(|b| async { total(&replica_statistics(client, b).await) }),
            )
            .await;
            panic!(
                "replicas did not converge within {within:?}: they count {counts:?}, one learner fed every log {}",
                total(expected)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Snapshots the replica at `base` has written.
async fn snapshots_written(client: &reqwest::Client, base: &str) -> f64 {
    metric(client, base, "quiver_snapshots_total").await
}

async fn healthz(client: &reqwest::Client, base: &str) -> String {
    get_text(client, format!("{base}/healthz"), "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_what_they_learn_through_crashes_and_redis_restarts() {
    let Some((dir, redis, homes, configs)) = two_replicas("cluster_share", "") else {
        return;
    };
    let (mut a, base_a) = start_replica(&configs[0]);
    let (b, base_b) = start_replica(&configs[1]);
    let client = reqwest::Client::new();
    let two_intervals = Duration::from_millis(2 * SYNC_MS);

    // Each learns alone; each soon holds what both learned.
    let (n_a, n_b) = tokio::join!(learn(&client, &base_a, "a", 40), learn(&client, &base_b, "b", 30));
    let expected = union_of_logs(&configs[0], &homes);
    assert_eq!(total(&expected), (n_a + n_b) as f64);
    let took = converge(&client, &[&base_a, &base_b], &expected, Duration::from_secs(5)).await;
    // Two sync intervals, and the polling's own time on a busy machine.
    assert!(
        took <= two_intervals + Duration::from_millis(300),
        "converged after {took:?}, more than two sync intervals"
    );
    assert!(healthz(&client, &base_a).await.contains("replica `a`, in sync"));
    let state = get_json(&client, format!("{base_b}/v1/routes/r"), "").await;
    assert_eq!(state["decisions"], 30, "{state}");
    assert_eq!(state["cluster"]["decisions"], 70, "{state}");
    assert_eq!(state["cluster"]["other_replicas"], json!(["a"]), "{state}");

    // A replica killed mid-run restarts from its snapshot (taken once it held the other's
    // learning) and log, and counts nothing twice: neither what it had published nor what
    // it had folded in.
    let snapshots = snapshots_written(&client, &base_a).await;
    while snapshots_written(&client, &base_a).await < snapshots + 2.0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    learn(&client, &base_a, "a-before-kill", 10).await;
    a.kill().unwrap();
    a.wait().unwrap();
    drop(a);
    let (a, base_a) = start_replica(&configs[0]);
    learn(&client, &base_a, "a-after-restart", 10).await;
    let expected = union_of_logs(&configs[0], &homes);
    assert_eq!(total(&expected), (n_a + n_b + 20) as f64);
    converge(&client, &[&base_a, &base_b], &expected, Duration::from_secs(5)).await;

    // Redis gone (killed: what it held is lost): the replicas serve and learn alone and
    // say so; back empty, they publish again and fold in what the others learned meanwhile.
    let port = redis.port;
    drop(redis);
    tokio::time::sleep(two_intervals).await;
    {
        for base in [&base_a, &base_b] {
            let health = healthz(&client, base).await;
            assert!(health.contains("serving and learning alone"), "{health}");
            let metrics = get_text(&client, format!("{base}/metrics"), "").await;
            assert_line(&metrics, "quiver_cluster_redis_up 0");
        }
        tokio::join!(
            learn(&client, &base_a, "a-alone", 15),
            learn(&client, &base_b, "b-alone", 15)
        );
    }
    let redis = Redis::start(port, &dir).unwrap();
    let expected = union_of_logs(&configs[0], &homes);
    assert_eq!(total(&expected), (n_a + n_b + 50) as f64);
    converge(&client, &[&base_a, &base_b], &expected, Duration::from_secs(10)).await;
    assert!(healthz(&client, &base_b).await.contains("in sync"));
    drop((a, b, redis));
}

/// A log directory holds one replica's learning: started under another name, it would
/// count twice, and the server refuses to start.
#[test]
fn a_log_directory_keeps_its_replica_name() {
    let dir = scratch("cluster_name");
    let config = replica_config(&dir, "first", "redis://127.0.0.1:1", "");
    // Redis need not answer for a replica to start: it serves and learns alone.
    let (running, _) = start_replica(&config);
    drop(running);
    assert_eq!(
        std::fs::read_to_string(dir.join("first/log/replica_id"))
            .unwrap()
            .trim(),
        "first"
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"first\"", "\"second\"");
    std::fs::write(&config, text).unwrap();
    let err = support::failing_start(&["--config", config.to_str().unwrap()]);
    assert!(err.contains("holds what replica `first` learned"), "{err}");

    // Policies whose statistics are not sums cannot be shared.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"second\"", "\"first\"")
        .replace("detect=0", "detect=0,gamma=0.99");
    std::fs::write(&config, text).unwrap();
    let err = support::failing_start(&["--config", config.to_str().unwrap()]);
    assert!(
        err.contains("cannot be shared between replicas") && err.contains("gamma=0.99"),
        "{err}"
    );
    assert_eq!(err.matches("invalid configuration").count(), 1, "{err}");
}

/// Routes `n` prompts on the replica at `decide` and sends each decision's outcome and
/// feedback to the replica at `report`, which accepts them for the deciding one.
async fn decide_here_report_there(client: &reqwest::Client, decide: &str, report: &str, tag: &str, n: usize) {
    for i in 0..n {
        let routed = route(client, decide, &format!("{tag} request {i}")).await;
        let id = &routed["decision_id"];
        let quality = if routed["model"] == "large" { 0.9 } else { 0.4 };
        for (path, body) in [
            (
                "outcome",
                json!({"decision_id": id, "latency_ms": 120, "cost_usd": 0.001}),
            ),
            ("feedback", json!({"decision_id": id, "quality": quality})),
        ] {
            let answer = post(client, &format!("{report}/v1/{path}"), body).await;
            assert_eq!(answer.status(), 202);
            let answer: Value = answer.json().await.unwrap();
            assert_eq!(answer["status"], "forwarded", "{answer}");
        }
    }
}

/// Feedback and outcomes sent to a replica that did not make the decision are accepted
/// durably there and applied exactly once by the one that did, also when Redis is down
/// at the time and the accepting replica is killed before Redis returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_reach_the_replica_that_decided() {
    // The cap counts the cluster's spend: 30 calls of $0.001 reach it.
    let cap = "[routes.spend_cap]\ndaily_usd = 0.025\n";
    let Some((dir, redis, homes, configs)) = two_replicas("cluster_forward", cap) else {
        return;
    };
    // B first: A's first decisions, reported to B at once, find A published, as it is
    // before it serves.
    let (b, base_b) = start_replica(&configs[1]);
    let (a, base_a) = start_replica(&configs[0]);
    let client = reqwest::Client::new();

    decide_here_report_there(&client, &base_a, &base_b, "first", 20).await;
    // A repeat is accepted again, and applied as a repeat.
    let routed = route(&client, &base_a, "repeated").await;
    let id = routed["decision_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("r:a:"), "{id}");
    let feedback = format!("{base_b}/v1/feedback");
    for _ in 0..2 {
        let answer = post(&client, &feedback, json!({"decision_id": id, "quality": 0.5})).await;
        assert_eq!(answer.status(), 202);
    }
    // What the deciding replica would refuse is refused here.
    let bad = post(&client, &feedback, json!({"decision_id": id, "quality": 1.5})).await;
    assert_eq!(bad.status(), 422);

    let applied = "quiver_cluster_forwards_received_total{result=\"applied\"}";
    let five_s = Duration::from_secs(5);
    wait_for_metric(&client, &base_a, applied, |n| n == 20.0 * 2.0 + 1.0, five_s).await;
    let expected = union_of_logs(&configs[0], &homes);
    assert_eq!(total(&expected), 21.0);
    converge(&client, &[&base_a, &base_b], &expected, Duration::from_secs(5)).await;
    let repeated = "quiver_cluster_forwards_received_total{result=\"repeated\"}";
    assert_eq!(metric(&client, &base_a, repeated).await, 1.0);
    let state = get_json(&client, format!("{base_a}/v1/routes/r"), "").await;
    let calls: u64 = state["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(calls, 20, "every forwarded outcome counted once: {state}");

    // Redis down: B still accepts durably; killed before Redis returns, it restarts with
    // its outbox and hands everything over once Redis is back.
    let port = redis.port;
    drop(redis);
    decide_here_report_there(&client, &base_a, &base_b, "while-down", 10).await;
    assert_eq!(
        metric(&client, &base_b, "quiver_cluster_forwarded_total").await,
        20.0 * 2.0 + 2.0 + 20.0
    );
    let mut b = b;
    b.kill().unwrap();
    b.wait().unwrap();
    drop(b);
    let (b, base_b) = start_replica(&configs[1]);
    let redis = Redis::start(port, &dir).unwrap();
    wait_for_metric(&client, &base_a, applied, |n| n == 61.0, Duration::from_secs(10)).await;
    let expected = union_of_logs(&configs[0], &homes);
    assert_eq!(total(&expected), 31.0);
    converge(&client, &[&base_a, &base_b], &expected, Duration::from_secs(5)).await;
    // B, which spent nothing itself, holds to the cluster's spend.
    let state = get_json(&client, format!("{base_b}/v1/routes/r"), "").await;
    assert_eq!(state["spend_today_usd"], 0.0, "{state}");
    let spent = state["cluster"]["spend_today_usd"].as_f64().unwrap();
    assert!((spent - 0.03).abs() < 1e-9, "{state}");
    let refused = post(
        &client,
        &format!("{base_b}/v1/route"),
        json!({"route": "r", "prompt": "more"}),
    )
    .await;
    assert_eq!(refused.status(), 429);
    assert!(refused.text().await.unwrap().contains("daily spend cap"));
    // So does its dashboard, in a real browser.
    if let Some(browser) = support::chromium() {
        let url = format!("{base_b}/ui");
        let dom = tokio::task::spawn_blocking(move || support::browse(&browser, &url, None))
            .await
            .unwrap();
        for text in [
            "decisions <b class=\"decisions-count\">31</b> on 2 replicas",
            "spend today <b>$0.0300</b> of $0.0250",
        ] {
            assert!(dom.contains(text), "{text} missing from {dom}");
        }
    }
    // An id no replica could have issued is refused, not handed on.
    for bad in ["r::3", "r:a:03"] {
        let body = json!({"decision_id": bad, "quality": 0.5});
        let answer = post(&client, &format!("{base_b}/v1/feedback"), body).await;
        assert_eq!(answer.status(), 422, "{bad}");
    }
    // So is one of a replica that never published the route: none could apply it.
    let body = json!({"decision_id": "r:zzz:1", "quality": 0.5});
    let answer = post(&client, &format!("{base_b}/v1/feedback"), body).await;
    assert_eq!(answer.status(), 404);
    let text = answer.text().await.unwrap();
    assert!(
        text.contains("names replica `zzz`, which never published route `r`"),
        "{text}"
    );
    // B learns that A applied them, and lets them go.
    wait_for_metric(
        &client,
        &base_b,
        "quiver_cluster_forwards_pending",
        |n| n == 0.0,
        five_s,
    )
    .await;
    drop((a, b, redis));
}

/// Two replicas started under one name would overwrite each other's learning: the one
/// that finds the other's record under its name says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_under_one_name_are_told() {
    let dir = scratch("cluster_same_name");
    let Some(redis) = Redis::start(0, &dir) else {
        return;
    };
    let first = replica_config(&dir, "a", &redis.url(), "");
    let second = replica_config(&dir.join("elsewhere"), "a", &redis.url(), "");
    let (a, base_a) = start_replica(&first);
    let (other, base_other) = start_replica(&second);
    let client = reqwest::Client::new();
    let interval = Duration::from_millis(SYNC_MS);
    for base in [&base_a, &base_other, &base_a] {
        route(&client, base, "hello").await;
        tokio::time::sleep(3 * interval).await;
    }
    let told = "publishes under this replica's name";
    assert!(a.logged_within(told, Duration::from_secs(10)), "{:?}", a.logs());
    drop((a, other, redis));
}
