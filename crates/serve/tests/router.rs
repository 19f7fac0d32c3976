//! The in-process router: durability across a crash, idempotent feedback, and a log
//! written in the order changes were applied. (That the simulator reads the log is checked
//! in the workspace's `tests/log_contract.rs`: quiver-serve does not depend on quiver-sim.)
#![allow(clippy::unwrap_used, clippy::panic)] // a test helper that fails should panic

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quiver_bandit::{Applied, Outcome};
use quiver_serve::log::LogEvent;
use quiver_serve::{ModelConfig, Observed, RouteConfig, RouteRequest, Router, RouterOptions, ServeError};

/// Small segments, so the log rotates, and a short feedback horizon, so the oldest
/// decisions are forgotten and a restart rebuilds the tracked ones from mid-log.
fn crash_options() -> RouterOptions {
    RouterOptions {
        segment_bytes: 4096,
        feedback_horizon: 10,
        ..RouterOptions::default()
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn routes() -> Vec<RouteConfig> {
    let model = |id: &str, price: f64| ModelConfig::priced(id, price, 2.0 * price);
    vec![
        RouteConfig {
            w_cost: 20.0,
            budget_usd_per_request: Some(0.002),
            extra_features: 1,
            seed: 3,
            ..RouteConfig::new(
                "chat",
                "lints(v=0.3,floor=0.05)",
                vec![model("big", 5.0), model("small", 0.2), model("mid", 1.0)],
            )
        },
        RouteConfig {
            seed: 4,
            ..RouteConfig::new("code", "beta-ts", vec![model("big", 5.0), model("small", 0.2)])
        },
    ]
}

/// Operation `i` of a fixed workload: route, then outcome, then (for most) feedback, some
/// of it late.
fn workload(router: &Router, range: std::ops::Range<usize>, ids: &mut Vec<String>) {
    for i in range {
        let (route, features) = if i % 3 == 0 {
            ("code", vec![])
        } else {
            ("chat", vec![(i % 5) as f64 / 5.0])
        };
        let request = RouteRequest {
            prompt: Some(format!("question {i}: what is {} + {}?", i * 7, i % 11)),
            features,
            ..RouteRequest::default()
        };
        let routed = router.route(route, &request).unwrap().wait().unwrap();
        let arm = &routed.decision.arm;
        let cost = if arm == "big" { 0.004 } else { 0.0004 };
        router
            .record_outcome(
                &routed.decision_id,
                &Outcome::new(100.0 + i as f64, cost).with_tokens(20, 30),
            )
            .unwrap()
            .wait()
            .unwrap();
        ids.push(routed.decision_id);
        // Quality of decision i - 3 arrives now: late feedback.
        if i >= 3 && i % 4 != 0 {
            let q = if ids[i - 3].contains("chat") { 0.8 } else { 0.4 };
            assert_eq!(
                router.feedback(&ids[i - 3], q).unwrap().wait().unwrap(),
                Applied::Applied
            );
        }
    }
}

fn snapshot_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("snapshot.json")).unwrap()).unwrap()
}

fn learners_json(router: &Router) -> String {
    router
        .route_names()
        .iter()
        .map(|r| serde_json::to_string(&router.learner(r).unwrap().snapshot()).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A router in a directory of its own that ran the workload's first `operations`.
fn uninterrupted(name: &str, operations: usize) -> Router {
    let router = Router::open_with(routes(), &scratch(name), crash_options()).unwrap();
    workload(&router, 0..operations, &mut Vec::new());
    router
}

#[test]
fn a_restarted_router_equals_one_that_never_stopped() {
    let reference = uninterrupted("reference", 120);

    let dir = scratch("crashing");
    let mut ids = Vec::new();
    {
        // A snapshot captured midway and written after more changes (as the server writes
        // it, outside the router's lock); then a crash (the router is dropped without any
        // shutdown work).
        let first = Router::open_with(routes(), &dir, crash_options()).unwrap();
        workload(&first, 0..50, &mut ids);
        let captured = first.capture_snapshot().unwrap();
        workload(&first, 50..70, &mut ids);
        captured.write().unwrap();
        workload(&first, 70..90, &mut ids);
    }
    // The snapshot holds no tracked decision: it names where the log has the oldest, past
    // those the horizon forgot.
    let snapshot = snapshot_json(&dir);
    for route in ["chat", "code"] {
        assert_eq!(
            snapshot["routes"][route]["learner"]["tracked"],
            serde_json::json!({})
        );
        assert!(snapshot["tracked_from"][route]["decision"].as_u64().unwrap() > 0);
    }
    // A torn record at the end of the log, as a crash mid-write leaves it.
    let segments = log_segments(&dir);
    assert!(segments.len() > 2, "the log should have rotated");
    let last = segments.last().unwrap();
    let mut text = std::fs::read_to_string(last).unwrap();
    text.push_str("{\"decision_id\":\"chat:9");
    std::fs::write(last, text).unwrap();

    let restarted = Router::open_with(routes(), &dir, crash_options()).unwrap();
    workload(&restarted, 90..120, &mut ids);
    assert_eq!(learners_json(&restarted), learners_json(&reference));

    // And once more, from the log alone after a second snapshot.
    restarted.snapshot().unwrap();
    drop(restarted);
    let again = Router::open_with(routes(), &dir, crash_options()).unwrap();
    assert_eq!(learners_json(&again), learners_json(&reference));

    // A snapshot captured before a newer one was written is dropped, not written over it.
    let older = again.capture_snapshot().unwrap();
    workload(&again, 120..125, &mut ids);
    again.snapshot().unwrap();
    let newer = std::fs::read(dir.join("snapshot.json")).unwrap();
    older.write().unwrap();
    assert_eq!(std::fs::read(dir.join("snapshot.json")).unwrap(), newer);
    let before = learners_json(&again);
    drop(again);

    // Segments before the oldest tracked decision may be moved away; the one holding it
    // may not, and a restart without it names the record it needs.
    let segments = log_segments(&dir);
    let first_seq = |p: &Path| -> u64 {
        let name = p.file_name().unwrap().to_str().unwrap();
        name["decisions-".len()..name.len() - ".jsonl".len()]
            .parse()
            .unwrap()
    };
    let needed = snapshot_json(&dir)["tracked_from"]
        .as_object()
        .unwrap()
        .values()
        .map(|from| from["seq"].as_u64().unwrap())
        .min()
        .unwrap();
    let holding = segments.iter().rposition(|p| first_seq(p) <= needed).unwrap();
    assert!(holding > 0);
    let archive = scratch("crashing-archive");
    std::fs::create_dir_all(&archive).unwrap();
    for segment in &segments[..=holding] {
        std::fs::rename(segment, archive.join(segment.file_name().unwrap())).unwrap();
    }
    let error = Router::open_with(routes(), &dir, crash_options())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&format!("the log has no record {needed}")),
        "{error}"
    );
    let holding_segment = &segments[holding];
    std::fs::rename(
        archive.join(holding_segment.file_name().unwrap()),
        holding_segment,
    )
    .unwrap();
    let again = Router::open_with(routes(), &dir, crash_options()).unwrap();
    assert_eq!(learners_json(&again), before);
}

fn log_segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    segments.sort();
    segments
}

/// A snapshot in the older format keeps the tracked decisions in its learners and names
/// no log position: it restores as it was written, and the snapshots after it keep the
/// decisions they cannot locate in the log until the horizon forgets them.
#[test]
fn a_snapshot_of_the_older_format_restores_and_is_replaced() {
    let reference = uninterrupted("older-reference", 150);

    let dir = scratch("older");
    let mut ids = Vec::new();
    {
        let router = Router::open_with(routes(), &dir, crash_options()).unwrap();
        workload(&router, 0..60, &mut ids);
        let routes: serde_json::Map<String, serde_json::Value> = router
            .route_names()
            .iter()
            .map(|r| {
                (
                    r.clone(),
                    serde_json::to_value(router.learner(r).unwrap().snapshot()).unwrap(),
                )
            })
            .collect();
        let older = serde_json::json!({"last_seq": router.log_counts().0, "routes": routes});
        std::fs::write(dir.join("snapshot.json"), older.to_string()).unwrap();
    }
    let router = Router::open_with(routes(), &dir, crash_options()).unwrap();
    workload(&router, 60..66, &mut ids);
    router.snapshot().unwrap();
    let snapshot = snapshot_json(&dir);
    // "chat" still tracks decisions from before the restart; "code" (a third of the
    // requests) too.
    for route in ["chat", "code"] {
        assert_ne!(
            snapshot["routes"][route]["learner"]["tracked"],
            serde_json::json!({})
        );
    }
    drop(router);
    let router = Router::open_with(routes(), &dir, crash_options()).unwrap();
    workload(&router, 66..150, &mut ids);
    router.snapshot().unwrap();
    assert_eq!(snapshot_json(&dir)["tracked_from"].as_object().unwrap().len(), 2);
    drop(router);
    let router = Router::open_with(routes(), &dir, crash_options()).unwrap();
    assert_eq!(learners_json(&router), learners_json(&reference));
}

/// A snapshot's size is the models', not the decisions awaiting feedback; after a restart
/// those decisions still take their feedback, once.
#[test]
fn snapshots_do_not_grow_with_decisions_awaiting_feedback() {
    let dir = scratch("pending");
    let mut router = Router::open(routes(), &dir).unwrap();
    let route = |router: &mut Router, i: usize| {
        let request = RouteRequest {
            prompt: Some(format!("pending question {i}")),
            features: vec![0.5],
            ..RouteRequest::default()
        };
        router
            .route("chat", &request)
            .unwrap()
            .wait()
            .unwrap()
            .decision_id
    };
    let first = route(&mut router, 0);
    router.feedback(&first, 0.7).unwrap().wait().unwrap();
    let size = |router: &Router| {
        router.snapshot().unwrap();
        std::fs::metadata(dir.join("snapshot.json")).unwrap().len()
    };
    let pending: Vec<String> = (1..100).map(|i| route(&mut router, i)).collect();
    let small = size(&router);
    let more: Vec<String> = (100..2000).map(|i| route(&mut router, i)).collect();
    let large = size(&router);
    // Features alone would add over a kilobyte per decision.
    assert!(large < small + 1000, "{small} bytes, then {large}");
    drop(router);
    let router = Router::open(routes(), &dir).unwrap();
    for id in [&pending[0], &more[1000], more.last().unwrap()] {
        assert_eq!(
            router.feedback(id, 0.3).unwrap().wait().unwrap(),
            Applied::Applied
        );
    }
    // The quality it learned before the restart is known after it: a repeat, or refused.
    assert_eq!(
        router.feedback(&first, 0.7).unwrap().wait().unwrap(),
        Applied::AlreadyApplied
    );
    assert!(router.feedback(&first, 0.3).is_err());
}

#[test]
fn feedback_is_idempotent_and_bad_ids_are_refused() {
    let dir = scratch("feedback");
    let router = Router::open(routes(), &dir).unwrap();
    let routed = router
        .route(
            "chat",
            &RouteRequest {
                prompt: Some("hi".into()),
                features: vec![0.5],
                ..RouteRequest::default()
            },
        )
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(
        router.feedback(&routed.decision_id, 0.9).unwrap().wait().unwrap(),
        Applied::Applied
    );
    assert_eq!(
        router.feedback(&routed.decision_id, 0.9).unwrap().wait().unwrap(),
        Applied::AlreadyApplied
    );
    assert!(matches!(
        router.feedback(&routed.decision_id, 0.1),
        Err(ServeError::Bandit(e)) if matches!(e.kind(), quiver_bandit::ErrorKind::QualityConflict { .. })
    ));
    // So is an outcome bringing another quality: nothing of it is logged.
    let conflicting = Outcome::new(100.0, 0.001).with_quality(0.1);
    assert!(matches!(
        router.record_outcome(&routed.decision_id, &conflicting),
        Err(ServeError::Bandit(e)) if matches!(e.kind(), quiver_bandit::ErrorKind::QualityConflict { .. })
    ));
    assert!(!quiver_serve::log::read_log(&dir)
        .unwrap()
        .iter()
        .any(|r| r.decision_id == routed.decision_id && r.event == LogEvent::Outcome));
    // A failed call's implicit 0 is no statement: its cost and failure are recorded, and
    // logged without a second quality.
    let failed = Outcome::new(100.0, 0.001).failed();
    assert_eq!(
        router
            .record_outcome(&routed.decision_id, &failed)
            .unwrap()
            .wait()
            .unwrap(),
        Applied::Applied
    );
    let outcome = quiver_serve::log::read_log(&dir)
        .unwrap()
        .into_iter()
        .find(|r| r.decision_id == routed.decision_id && r.event == LogEvent::Outcome)
        .unwrap();
    assert_eq!(
        (outcome.error, outcome.quality, outcome.cost_usd),
        (true, None, 0.001)
    );
    assert!(matches!(
        router.feedback("chat:999", 0.5),
        Err(ServeError::Bandit(_))
    ));
    assert!(matches!(
        router.feedback("nope", 0.5),
        Err(ServeError::BadDecisionId(_))
    ));
    // Another spelling of the same number names no decision the log could find.
    let number = routed.decision_id.strip_prefix("chat:").unwrap();
    for spelling in [format!("chat:0{number}"), format!("chat:+{number}")] {
        assert!(
            matches!(router.feedback(&spelling, 0.5), Err(ServeError::BadDecisionId(_))),
            "{spelling}"
        );
    }
    assert!(matches!(
        router.feedback(&format!("chat:b:{number}"), 0.5),
        Err(ServeError::OtherReplica { .. })
    ));
    assert!(matches!(
        router.feedback("other:1", 0.5),
        Err(ServeError::UnknownRoute(_))
    ));
    assert!(router.feedback(&routed.decision_id, f64::NAN).is_err());
    assert!(matches!(
        router.route("chat", &RouteRequest::default()),
        Err(ServeError::EmptyRequest)
    ));
    // A replica's ids name it: without the replica, an id is not one it issued.
    let replica = RouterOptions {
        replica: Some("a".into()),
        ..RouterOptions::default()
    };
    let models = vec![
        ModelConfig::priced("big", 5.0, 10.0),
        ModelConfig::priced("small", 0.2, 0.4),
    ];
    let shared = vec![RouteConfig::new("chat", "lints(v=0.3,detect=0)", models)];
    let clustered = Router::open_with(shared, &scratch("feedback-replica"), replica).unwrap();
    let request = RouteRequest {
        prompt: Some("hi".into()),
        ..RouteRequest::default()
    };
    let id = clustered
        .route("chat", &request)
        .unwrap()
        .wait()
        .unwrap()
        .decision_id;
    let number = id.strip_prefix("chat:a:").unwrap();
    assert!(matches!(
        clustered.feedback(&format!("chat:{number}"), 0.5),
        Err(ServeError::BadDecisionId(_))
    ));
    assert_eq!(
        clustered.feedback(&id, 0.5).unwrap().wait().unwrap(),
        Applied::Applied
    );
    // Another replica's decision is handed on even for a route this one lacks (the
    // deciding replica may have it), but only in a spelling a replica could issue.
    for other in ["chat:b:3", "code:b:3"] {
        assert!(
            matches!(
                clustered.feedback(other, 0.5),
                Err(ServeError::OtherReplica { .. })
            ),
            "{other}"
        );
    }
    for bad in ["chat::3", "chat:b:03", "chat:b!:3", ":b:3"] {
        assert!(
            matches!(clustered.feedback(bad, 0.5), Err(ServeError::BadDecisionId(_))),
            "{bad}"
        );
    }
    let wrong_features = RouteRequest {
        prompt: Some("x".into()),
        ..RouteRequest::default()
    };
    assert!(router.route("chat", &wrong_features).is_err());
}

/// Threads route and give feedback through one router on two routes, each behind its own
/// lock, waiting for durability with the locks released (as the server does), while
/// another thread writes snapshots during the first half: every acknowledged change is in
/// the log, the log is gapless, and a restart from the last snapshot (taken while both
/// routes changed, each at its own log position) and the log equals the router that took
/// them.
#[test]
fn concurrent_changes_are_durable_and_logged_in_order() {
    let dir = scratch("concurrent");
    let router = Router::open(routes(), &dir).unwrap();
    let acked = std::sync::atomic::AtomicUsize::new(0);
    let (acknowledged, snapshots): (Vec<Vec<String>>, usize) = std::thread::scope(|scope| {
        let router = &router;
        let acked = &acked;
        let snapshotter = scope.spawn(move || {
            let mut written = 0;
            while acked.load(std::sync::atomic::Ordering::Relaxed) < 160 {
                router.snapshot().unwrap();
                written += 1;
            }
            written
        });
        let workers: Vec<_> = (0..8)
            .map(|t| {
                scope.spawn(move || {
                    let mut ids = Vec::new();
                    for i in 0..40 {
                        let (route, features) = if t % 2 == 0 {
                            ("chat", vec![0.2])
                        } else {
                            ("code", vec![])
                        };
                        let request = RouteRequest {
                            prompt: Some(format!("thread {t} question {i}")),
                            features,
                            ..RouteRequest::default()
                        };
                        let routed = router.route(route, &request).unwrap().wait().unwrap();
                        let pending = router.feedback(&routed.decision_id, 0.7).unwrap();
                        assert_eq!(pending.wait().unwrap(), Applied::Applied);
                        ids.push(routed.decision_id);
                        acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    ids
                })
            })
            .collect();
        let acknowledged = workers.into_iter().map(|w| w.join().unwrap()).collect();
        (acknowledged, snapshotter.join().unwrap())
    });
    assert!(snapshots > 0);
    let records = quiver_serve::log::read_log(&dir).unwrap();
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=640).collect::<Vec<u64>>());
    for id in acknowledged.iter().flatten() {
        let events: Vec<_> = records
            .iter()
            .filter(|r| &r.decision_id == id)
            .map(|r| r.event)
            .collect();
        assert_eq!(events, vec![LogEvent::Decision, LogEvent::Feedback], "{id}");
    }
    assert_eq!(router.log_counts().0, 640);
    let expected = learners_json(&router);
    drop(router);
    let restarted = Router::open(routes(), &dir).unwrap();
    assert_eq!(learners_json(&restarted), expected);
}

/// A snapshot copies the routes one at a time, each under its own lock, while the others
/// serve: a change to a route already copied, made while the snapshot waits for the next
/// route, is after that route's position in the snapshot, so a restart learns it from the
/// log (a single position for the whole snapshot would skip it).
#[test]
fn each_route_restarts_from_its_own_position_in_the_snapshot() {
    let dir = scratch("positions");
    let router = Router::open(routes(), &dir).unwrap();
    let mut ids = Vec::new();
    workload(&router, 0..6, &mut ids);
    let captured = std::thread::scope(|scope| {
        // Holding "code" keeps the snapshot waiting after it copied "chat" (routes are
        // copied in name order).
        let code = router.learner("code").unwrap();
        let capture = scope.spawn(|| router.capture_snapshot().unwrap());
        std::thread::sleep(Duration::from_millis(200));
        let request = RouteRequest {
            prompt: Some("meanwhile on chat".into()),
            features: vec![0.4],
            ..RouteRequest::default()
        };
        let routed = router.route("chat", &request).unwrap().wait().unwrap();
        let applied = router.feedback(&routed.decision_id, 0.9).unwrap().wait().unwrap();
        assert_eq!(applied, Applied::Applied);
        drop(code);
        capture.join().unwrap()
    });
    captured.write().unwrap();
    let expected = learners_json(&router);
    drop(router);
    let snapshot = snapshot_json(&dir);
    assert!(
        snapshot["learned_through"]["chat"].as_u64() < snapshot["learned_through"]["code"].as_u64(),
        "{}",
        snapshot["learned_through"]
    );
    let restarted = Router::open(routes(), &dir).unwrap();
    assert_eq!(learners_json(&restarted), expected);
}

/// After a failed write, a change that was applied in memory but never made durable is not
/// acknowledged later either: its retry fails instead of answering "already applied", and
/// a restart rebuilds the state from what is durable. (The next log segment is made
/// `/dev/full`, so the write after the rotation gets ENOSPC.)
#[cfg(target_os = "linux")]
#[test]
fn after_a_failed_write_nothing_more_is_acknowledged() {
    let dir = scratch("full");
    let options = RouterOptions {
        segment_bytes: 1,
        ..RouterOptions::default()
    };
    let request = RouteRequest {
        prompt: Some("hi".into()),
        features: vec![0.5],
        ..RouteRequest::default()
    };
    let router = Router::open_with(routes(), &dir, options.clone()).unwrap();
    let routed = router.route("chat", &request).unwrap().wait().unwrap();
    let full = dir.join("decisions-00000000000000000002.jsonl");
    std::os::unix::fs::symlink("/dev/full", &full).unwrap();
    assert!(router.feedback(&routed.decision_id, 0.9).unwrap().wait().is_err());
    let retry = router.feedback(&routed.decision_id, 0.9).unwrap().wait();
    assert!(retry.is_err(), "a retry must not be acknowledged: {retry:?}");
    assert!(router.route("chat", &request).is_err());
    assert!(router.snapshot().is_err());
    drop(router);
    // (Reading /dev/full never ends: restart without it.)
    std::fs::remove_file(&full).unwrap();
    let restarted = Router::open_with(routes(), &dir, options).unwrap();
    let applied = restarted
        .feedback(&routed.decision_id, 0.9)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(applied, Applied::Applied);
}

/// A snapshot restores under another feedback horizon and another way of finding a
/// Thompson policy's propensities (operational settings, as when a default changes on
/// upgrade); a changed policy refuses, naming both specs.
#[test]
fn a_new_horizon_restores_and_a_new_policy_is_named() {
    let dir = scratch("router_upgrade");
    let router = Router::open_with(routes(), &dir, crash_options()).unwrap();
    workload(&router, 0..30, &mut Vec::new());
    router.snapshot().unwrap();
    drop(router);
    let wider = RouterOptions {
        feedback_horizon: 1000,
        ..crash_options()
    };
    let reopened = Router::open_with(routes(), &dir, wider).unwrap();
    assert_eq!(
        reopened.learner("code").unwrap().config().max_tracked_decisions,
        1000
    );
    drop(reopened);
    let mut estimated = routes();
    estimated[1].policy = "beta-ts(draws=64)".into();
    let reopened = Router::open_with(estimated, &dir, crash_options()).unwrap();
    let learner = reopened.learner("code").unwrap();
    assert_eq!(
        learner.config().policy.to_string(),
        "beta-ts(alpha=1,beta=1,draws=64)"
    );
    assert!(learner.usage(0).requests > 0, "what it learned is kept");
    drop(learner);
    drop(reopened);
    let mut changed = routes();
    changed[1].policy = "beta-ts(alpha=2)".into();
    let error = Router::open_with(changed.clone(), &dir, crash_options())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("changed its policy (`beta-ts(alpha=1,beta=1,draws=0)` then, `beta-ts(alpha=2,beta=1,draws=0)` now)")
            && error.contains("--reset-route code"),
        "{error}"
    );
    // Asked to, the route starts afresh under the new policy; the other keeps its learner.
    let reset = RouterOptions {
        reset_routes: vec!["code".into()],
        ..crash_options()
    };
    let router = Router::open_with(changed, &dir, reset).unwrap();
    assert_eq!(router.learner("code").unwrap().usage(0).requests, 0);
    assert!(router.learner("chat").unwrap().usage(0).requests > 0);
}

/// What a router's routes learned, whatever their feedback horizons and the decisions
/// they still track.
fn learned(router: &Router) -> Vec<serde_json::Value> {
    router
        .route_names()
        .iter()
        .map(|r| {
            let mut learned = serde_json::to_value(router.learner(r).unwrap().without_tracked()).unwrap();
            learned["config"]["max_tracked_decisions"] = serde_json::Value::Null;
            learned
        })
        .collect()
}

/// A smaller feedback horizon is an operational setting: the router restarts under it
/// from a snapshot and the log, which is replayed under the snapshot's horizon, so that
/// every quality it acknowledged is learned again; or from the log alone, where a record
/// of a decision the new horizon no longer holds is skipped. A decision past the horizon
/// then takes no feedback.
#[test]
fn a_smaller_horizon_restarts_and_relearns_what_it_acknowledged() {
    let wide = RouterOptions {
        feedback_horizon: 100,
        ..crash_options()
    };
    let narrow = RouterOptions {
        feedback_horizon: 2,
        ..crash_options()
    };
    let dir = scratch("router_narrower");
    let mut ids = Vec::new();
    let before = {
        let router = Router::open_with(routes(), &dir, wide).unwrap();
        workload(&router, 0..30, &mut ids);
        router.snapshot().unwrap();
        workload(&router, 30..60, &mut ids);
        learned(&router)
    };
    let reopened = Router::open_with(routes(), &dir, narrow.clone()).unwrap();
    assert_eq!(learned(&reopened), before);
    assert!(matches!(
        reopened.feedback(&ids[40], 0.5),
        Err(ServeError::Bandit(e)) if e.is_unknown_decision()
    ));
    drop(reopened);
    std::fs::remove_file(dir.join("snapshot.json")).unwrap();
    let rebuilt = Router::open_with(routes(), &dir, narrow).unwrap();
    assert_eq!(
        rebuilt.learner("chat").unwrap().next_decision_id(),
        40,
        "two operations in three"
    );
}

/// Adding and removing models and changing prices, weights and the budget keep what the
/// route learned about the models it still has, across a restart, and a snapshot records
/// the new configuration at once.
#[test]
fn a_reconfigured_route_keeps_what_it_learned() {
    let dir = scratch("router_reconfigure");
    let router = Router::open_with(routes(), &dir, crash_options()).unwrap();
    let mut ids = Vec::new();
    workload(&router, 0..60, &mut ids);
    router.snapshot().unwrap();
    // Some of what it learned is only in the log, after the snapshot.
    workload(&router, 60..80, &mut ids);
    let before = router.learner("chat").unwrap().clone();
    drop(router);

    let mut changed = routes();
    let chat = &mut changed[0];
    chat.models.retain(|m| m.id != "mid");
    chat.models.push(ModelConfig::priced("new", 0.5, 1.0));
    chat.models[0].input_usd_per_million = 4.0;
    chat.w_cost = 10.0;
    chat.budget_usd_per_request = Some(0.003);
    let router = Router::open_with(changed.clone(), &dir, crash_options()).unwrap();
    let after = router.learner("chat").unwrap().clone();
    let ids: Vec<&str> = after.arms().iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["big", "small", "new"]);
    for id in ["big", "small"] {
        let (was, is) = (
            before.arms().iter().position(|a| a.id == id).unwrap(),
            after.arms().iter().position(|a| a.id == id).unwrap(),
        );
        assert_eq!(before.usage(was), after.usage(is), "{id}");
        assert!(before.usage(was).requests > 0, "{id}");
    }
    assert_eq!(after.usage(2).requests, 0);
    assert_eq!(after.arms()[0].input_usd_per_token, 4e-6);
    assert_eq!(after.config().objective.w_cost, 10.0);
    assert_eq!(after.pacer().unwrap().target_usd(), 0.003);
    // The snapshot holds the new configuration: reopening changes nothing more.
    let first = learners_json(&router);
    drop(router);
    let again = Router::open_with(changed, &dir, crash_options()).unwrap();
    // (Not `assert_eq!`: a failure would print two learners in full.)
    assert!(
        learners_json(&again) == first,
        "a second restart changed the learners"
    );
}

/// Priors for the `code` route: `big` answered 95 of 100 past prompts well, `small` 5, at
/// $0.004 and $0.0004 a prompt.
fn write_priors(path: &Path, context: &str) {
    use quiver_bandit::prior::{FoldStatistics, PRIORS_VERSION};
    use quiver_bandit::{Featurizer, HashingFeaturizer, Priors};
    let featurizer = HashingFeaturizer::for_routes(0);
    let mut arms = std::collections::BTreeMap::new();
    let (mut qualities, mut costs) = (Vec::new(), Vec::new());
    for i in 0..100 {
        qualities.extend([f64::from(u8::from(i < 95)), f64::from(u8::from(i < 5))]);
        costs.extend([0.004, 0.0004]);
    }
    for (arm, good) in [("big", 95), ("small", 5)] {
        let mut stats = FoldStatistics::new(featurizer.dim());
        for i in 0..100 {
            let x = featurizer
                .featurize(&format!("past prompt {i}"), &[])
                .unwrap()
                .features;
            stats.add(i, &x, f64::from(u8::from(i < good)));
        }
        arms.insert(arm.to_string(), stats.fit(1e9).unwrap());
    }
    let priors = Priors {
        version: PRIORS_VERSION,
        context: context.into(),
        tasks: Vec::new(),
        dim: featurizer.dim(),
        cap: 1e9,
        source: "test".into(),
        arms,
        spend: quiver_bandit::SpendCurve::fit(2, &qualities, &costs, &costs),
    };
    std::fs::write(path, serde_json::to_string(&priors).unwrap()).unwrap();
}

/// A route with a budget starts its pacer where its priors' spend curve meets the budget
/// (choosing `big` costs 4 budgets, `small` 0.4); a restart keeps the multiplier learned
/// since, and a restart with another budget starts from the curve again.
#[test]
fn a_budgeted_route_starts_its_pacer_from_its_priors() {
    let dir = scratch("router_priors_pacer");
    std::fs::create_dir_all(&dir).unwrap();
    let priors = dir.join("priors.json");
    write_priors(&priors, "hashing(words=40,chars=16,caller=0)");
    let curve = quiver_bandit::Priors::from_json(&std::fs::read_to_string(&priors).unwrap())
        .unwrap()
        .spend
        .unwrap();
    let mut configs = routes();
    configs[1].priors = Some(priors);
    configs[1].budget_usd_per_request = Some(0.001);
    let mut expected = quiver_bandit::BudgetPacer::new(0.001, quiver_bandit::DEFAULT_PACING_STEP).unwrap();
    let start = expected.warm_start(&curve, configs[1].w_cost);
    assert!(start > 0.0);
    let lambda = |router: &Router| router.learner("code").unwrap().pacer().unwrap().lambda();
    let router = Router::open_with(configs.clone(), &dir.join("log"), crash_options()).unwrap();
    assert_eq!(lambda(&router), start);
    for i in 0..10 {
        let request = RouteRequest {
            prompt: Some(format!("new prompt {i}")),
            ..RouteRequest::default()
        };
        let routed = router.route("code", &request).unwrap().wait().unwrap();
        router
            .record_outcome(&routed.decision_id, &Outcome::new(100.0, 0.004))
            .unwrap()
            .wait()
            .unwrap();
    }
    let learned = lambda(&router);
    assert!(
        learned > start,
        "ten calls at 4 budgets raise it: {learned} vs {start}"
    );
    router.snapshot().unwrap();
    drop(router);
    let router = Router::open_with(configs.clone(), &dir.join("log"), crash_options()).unwrap();
    assert_eq!(lambda(&router), learned);
    drop(router);
    // A new budget starts afresh, from the curve the route's learner kept.
    configs[1].budget_usd_per_request = Some(0.002);
    let mut expected = quiver_bandit::BudgetPacer::new(0.002, quiver_bandit::DEFAULT_PACING_STEP).unwrap();
    let start = expected.warm_start(&curve, configs[1].w_cost);
    assert!(start > 0.0);
    let router = Router::open_with(configs, &dir.join("log"), crash_options()).unwrap();
    assert_eq!(lambda(&router), start);
}

#[test]
fn a_route_starts_from_its_priors_once() {
    let dir = scratch("router_priors");
    std::fs::create_dir_all(&dir).unwrap();
    let priors = dir.join("priors.json");
    write_priors(&priors, "hashing(words=40,chars=16,caller=0)");
    let mut configs = routes();
    configs[1].priors = Some(priors.clone());
    let router = Router::open_with(configs.clone(), &dir.join("log"), crash_options()).unwrap();
    // Beta(96, 6) against Beta(6, 96) with no cost weight: big, every time.
    let (alpha, beta) = match router.learner("code").unwrap().policy() {
        quiver_bandit::AnyPolicy::BetaTs(p) => (p.posterior(0), p.posterior(1)),
        other => panic!("{other:?}"),
    };
    assert_eq!((alpha, beta), ((96.0, 6.0), (6.0, 96.0)));
    for i in 0..20 {
        let request = RouteRequest {
            prompt: Some(format!("new prompt {i}")),
            ..RouteRequest::default()
        };
        let routed = router.route("code", &request).unwrap().wait().unwrap();
        assert_eq!(routed.decision.arm, "big");
        if i < 5 {
            // Five poor answers, so that the learned state differs from the priors.
            let outcome = Outcome::new(100.0, 0.001).with_quality(0.0);
            router
                .record_outcome(&routed.decision_id, &outcome)
                .unwrap()
                .wait()
                .unwrap();
        }
    }
    assert!(matches!(router.learner("code").unwrap().policy(),
        quiver_bandit::AnyPolicy::BetaTs(p) if p.posterior(0) == (96.0, 11.0)));
    // A restart, from the log alone and then from a snapshot, counts the priors once.
    let before = learners_json(&router);
    drop(router);
    let router = Router::open_with(configs.clone(), &dir.join("log"), crash_options()).unwrap();
    assert_eq!(learners_json(&router), before);
    router.snapshot().unwrap();
    drop(router);
    let router = Router::open_with(configs.clone(), &dir.join("log"), crash_options()).unwrap();
    assert_eq!(learners_json(&router), before);
    drop(router);
    // A route restored from its snapshot does not read its priors again: a file moved away
    // does not block the restart.
    std::fs::rename(&priors, dir.join("moved.json")).unwrap();
    let router = Router::open_with(configs.clone(), &dir.join("log"), crash_options()).unwrap();
    assert_eq!(learners_json(&router), before);
    drop(router);
    // A reset route starts again from its priors alone.
    std::fs::rename(dir.join("moved.json"), &priors).unwrap();
    let reset = RouterOptions {
        reset_routes: vec!["code".into()],
        ..crash_options()
    };
    let router = Router::open_with(configs.clone(), &dir.join("log"), reset).unwrap();
    match router.learner("code").unwrap().policy() {
        quiver_bandit::AnyPolicy::BetaTs(p) => {
            assert_eq!((p.posterior(0), p.posterior(1)), ((96.0, 6.0), (6.0, 96.0)))
        }
        other => panic!("{other:?}"),
    }
    drop(router);

    // Priors of other contexts, or a missing file, stop the start with the route and file.
    write_priors(&priors, "hashing(words=40,chars=16,caller=2)");
    let error = Router::open_with(configs.clone(), &dir.join("other"), crash_options())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("route `code`: priors ")
            && error.contains("priors.json")
            && error.contains("caller=2"),
        "{error}"
    );
    // Priors of other models: another route's, or misspelled ids.
    write_priors(&priors, "hashing(words=40,chars=16,caller=0)");
    let renamed = std::fs::read_to_string(&priors)
        .unwrap()
        .replace("\"big\"", "\"large\"")
        .replace("\"small\"", "\"tiny\"");
    std::fs::write(&priors, renamed).unwrap();
    let error = Router::open_with(configs.clone(), &dir.join("other"), crash_options())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("route `code`: priors")
            && error.contains("the priors have none of the models (big, small); their models: large, tiny")
            && error.matches("invalid configuration").count() == 1,
        "{error}"
    );
    configs[1].priors = Some(dir.join("missing.json"));
    let error = Router::open_with(configs, &dir.join("other"), crash_options())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("route `code`: priors") && error.contains("missing.json"),
        "{error}"
    );
}

/// A route's canary starts from the route's priors as its policy does: every decision it
/// serves goes to `big`, which the priors favour 95 to 5, where a cold one tosses a coin.
/// It is rebuilt from the log at a restart, from the same priors.
#[test]
fn a_canary_starts_from_the_routes_priors() {
    use quiver_bandit::canary::Promote;
    use quiver_serve::CanaryConfig;
    let dir = scratch("router_priors_canary");
    std::fs::create_dir_all(&dir).unwrap();
    let priors = dir.join("priors.json");
    write_priors(&priors, "hashing(words=40,chars=16,caller=0)");
    let mut configs = routes();
    configs[1].priors = Some(priors);
    configs[1].canary = Some(CanaryConfig {
        policy: "gaussian-ts".into(),
        share: 0.5,
        promote: Promote::Manual,
        min_decisions: 500,
    });
    let served_by_canary = |router: &Router| -> Vec<String> {
        for i in 0..40 {
            let request = RouteRequest {
                prompt: Some(format!("new prompt {i}")),
                ..RouteRequest::default()
            };
            router.route("code", &request).unwrap().wait().unwrap();
        }
        let recent = router.recent_decisions("code").unwrap();
        recent.into_iter().filter(|d| d.canary).map(|d| d.model).collect()
    };
    let router = Router::open_with(configs.clone(), &dir.join("log"), crash_options()).unwrap();
    let served = served_by_canary(&router);
    // 40 requests at a share of one half: 10 or fewer with probability under 0.1%.
    assert!(served.len() > 10, "{served:?}");
    assert!(served.iter().all(|m| m == "big"), "{served:?}");
    router.snapshot().unwrap();
    drop(router);
    let router = Router::open_with(configs.clone(), &dir.join("log"), crash_options()).unwrap();
    let served = served_by_canary(&router);
    assert!(served.len() > 10, "{served:?}");
    assert!(served.iter().all(|m| m == "big"), "{served:?}");
    drop(router);
    // Restored from its snapshot, the route does not need the file: gone, it leaves the
    // candidates without priors rather than stopping the start.
    std::fs::remove_file(configs[1].priors.as_ref().unwrap()).unwrap();
    let router = Router::open_with(configs, &dir.join("log"), crash_options()).unwrap();
    let request = RouteRequest {
        prompt: Some("after the file went".into()),
        ..RouteRequest::default()
    };
    router.route("code", &request).unwrap().wait().unwrap();
}

/// A route with an embedding block logs each decision's block and which featurizer
/// decided, and a restart without a snapshot rebuilds the same learner from the log
/// without embedding anything again.
#[test]
fn embedding_blocks_are_logged_and_rebuild_the_learner_after_a_restart() {
    use quiver_serve::EmbeddingConfig;
    let dir = scratch("embedding_restart");
    let model = |id: &str, price: f64| ModelConfig::priced(id, price, 2.0 * price);
    let embedding = EmbeddingConfig {
        dims: 4,
        ..EmbeddingConfig::endpoint("http://127.0.0.1:9/v1/embeddings", "emb-1")
    };
    let route = RouteConfig {
        embedding: Some(embedding.clone()),
        ..RouteConfig::new(
            "r",
            "linucb(alpha=0.3)",
            vec![model("big", 5.0), model("small", 0.2)],
        )
    };
    let block = embedding.block().unwrap();
    let router = Router::open(vec![route.clone()], &dir).unwrap();
    assert_eq!(
        router.layout("r").unwrap().definition(),
        "hashing(words=40,chars=16,caller=0)+embedding(source=openai(model=emb-1),dims=4)"
    );
    for i in 0..30 {
        let request = RouteRequest {
            prompt: Some(format!("prompt {i}")),
            ..RouteRequest::default()
        };
        // Every third embedding "failed": the hashed features decide alone.
        let projected = (i % 3 != 0).then(|| block.project(&[i as f32, 1.0, -0.5, 0.25, 2.0]).unwrap());
        let routed = router
            .route_observed(
                "r",
                &request,
                Observed {
                    embedding: projected,
                    ..Observed::default()
                },
            )
            .unwrap()
            .wait()
            .unwrap();
        router
            .record_outcome(
                &routed.decision_id,
                &Outcome::new(100.0, 0.001).with_quality(if i % 2 == 0 { 1.0 } else { 0.2 }),
            )
            .unwrap()
            .wait()
            .unwrap();
    }
    let decisions: Vec<_> = quiver_serve::log::read_log(&dir)
        .unwrap()
        .into_iter()
        .filter(|r| r.event == LogEvent::Decision)
        .collect();
    assert_eq!(decisions.len(), 30);
    for (i, record) in decisions.iter().enumerate() {
        let by = if i % 3 == 0 { "hashing" } else { "embedding" };
        assert_eq!(record.featurizer.as_deref(), Some(by), "decision {i}");
        assert_eq!(record.embedding.is_some(), i % 3 != 0);
        assert_eq!(
            record.context.as_deref(),
            Some(router.layout("r").unwrap().definition().as_str())
        );
    }
    let before = learners_json(&router);
    drop(router);
    let rebuilt = Router::open(vec![route], &dir).unwrap();
    assert_eq!(learners_json(&rebuilt), before);

    // A route without an embedding block logs neither field; a projection handed to it
    // is refused rather than ignored.
    let plain = RouteConfig::new("p", "linucb", vec![model("big", 5.0)]);
    let router = Router::open(vec![plain], &scratch("embedding_plain")).unwrap();
    let request = RouteRequest {
        prompt: Some("hi".into()),
        ..RouteRequest::default()
    };
    let observed = Observed {
        embedding: Some(vec![1.0]),
        ..Observed::default()
    };
    assert!(router.route_observed("p", &request, observed).is_err());
    router.route("p", &request).unwrap().wait().unwrap();
}

/// A route near its daily spend cap keeps to its cheaper models, at the cap refuses to
/// decide, and after a restart knows what it spent.
#[test]
fn a_spend_cap_downgrades_then_refuses_and_survives_a_restart() {
    use quiver_serve::spend::SpendCap;
    let dir = scratch("router_spend_cap");
    let route = RouteConfig {
        spend_cap: Some(SpendCap {
            daily_usd: Some(0.001),
            monthly_usd: None,
            downgrade_at: 0.5,
        }),
        ..RouteConfig::new(
            "r",
            "fixed(dear)",
            vec![
                ModelConfig::priced("dear", 20.0, 40.0),
                ModelConfig::priced("cheap", 1.0, 2.0),
            ],
        )
    };
    let request = RouteRequest {
        prompt: Some("hi".into()),
        ..RouteRequest::default()
    };
    let router = Router::open(vec![route.clone()], &dir).unwrap();
    let mut served = Vec::new();
    let refusal = loop {
        let routed = match router.route("r", &request) {
            Ok(pending) => pending.wait().unwrap(),
            Err(e) => break e,
        };
        let cost = if routed.decision.arm == "dear" {
            0.0004
        } else {
            0.0001
        };
        // 10 + 10 tokens: 0.0006 on `dear` at its list prices.
        let outcome = Outcome::new(100.0, cost).with_tokens(10, 10);
        router
            .record_outcome(&routed.decision_id, &outcome)
            .unwrap()
            .wait()
            .unwrap();
        served.push((routed.decision.arm, routed.decision.excluded));
        assert!(served.len() < 10, "never refused");
    };
    // 0.0004 and 0.0008 by `dear`; from half the cap on, `cheap`: 0.0009, then 0.0010.
    let arms: Vec<&str> = served.iter().map(|(arm, _)| arm.as_str()).collect();
    assert_eq!(arms, ["dear", "dear", "cheap", "cheap"]);
    assert_eq!(
        served[2].1,
        ["dear: unavailable (spend cap of route `r`: 80% of the daily $0.001 spent or under way)"]
    );
    let ServeError::SpendCap { message, retry_after } = refusal else {
        panic!("{refusal}")
    };
    assert!(
        message.starts_with("route `r` reached its daily spend cap of $0.001 ($0.001 spent)"),
        "{message}"
    );
    assert!(retry_after <= Duration::from_secs(86_400));
    let (day, month) = router.spend("r").unwrap();
    assert!((day - 0.001).abs() < 1e-12 && (month - 0.001).abs() < 1e-12);
    // Four calls on `dear` would have cost 0.0024: routing saved 0.0014.
    let savings = router.savings("r").unwrap();
    assert!((savings - 0.0014).abs() < 1e-12, "{savings}");
    drop(router);
    let reopened = Router::open(vec![route], &dir).unwrap();
    assert_eq!(reopened.spend("r").unwrap(), (day, month));
    assert_eq!(reopened.savings("r").unwrap(), savings);
    assert!(matches!(
        reopened.route("r", &request),
        Err(ServeError::SpendCap { .. })
    ));
}

/// Calls the server makes (the proxy's) count against a spend cap from their decision on,
/// at their estimated cost, until their outcomes come: a burst of concurrent calls stops
/// at the cap instead of passing it together; an outcome replaces the estimate by the
/// cost; decisions whose calls the client makes (`/v1/route`) reserve nothing, though the
/// route's budget paces ahead of them.
#[test]
fn calls_under_way_count_against_a_spend_cap() {
    use quiver_serve::spend::SpendCap;
    use quiver_serve::Observed;
    let dir = scratch("router_spend_cap_in_flight");
    let route = |daily_usd: f64| RouteConfig {
        spend_cap: Some(SpendCap {
            daily_usd: Some(daily_usd),
            monthly_usd: None,
            downgrade_at: 1.0,
        }),
        budget_usd_per_request: Some(1e-5),
        ..RouteConfig::new("r", "beta-ts", vec![ModelConfig::priced("m", 1.0, 2.0)])
    };
    let request = RouteRequest {
        prompt: Some("hi".into()),
        ..RouteRequest::default()
    };
    // The model's estimated cost for this request, from a route without a cap.
    let estimate = {
        let router = Router::open(vec![route(1.0)], &scratch("router_spend_cap_estimate")).unwrap();
        router.route("r", &request).unwrap().wait().unwrap().decision.arms[0].cost_usd
    };
    assert!(estimate > 0.0);
    let router = Router::open(vec![route(3.5 * estimate)], &dir).unwrap();
    let proxied = || {
        let observed = Observed {
            calls: true,
            ..Observed::default()
        };
        router
            .route_observed("r", &request, observed)
            .map(|p| p.wait().unwrap())
    };
    // The client's call counts for the pacer, not against the cap.
    let client = router.route("r", &request).unwrap().wait().unwrap();
    let under_way: Vec<_> = (0..4).map(|_| proxied().unwrap()).collect();
    assert!(under_way[0].decision.w_cost > client.decision.w_cost);
    // Until they end: their outcomes may come in seconds, below their estimates.
    assert!(
        matches!(proxied(), Err(ServeError::SpendCap { retry_after, .. })
            if retry_after == quiver_serve::spend::UNDER_WAY_RETRY),
        "four calls under way reach 4 of the cap's 3.5 estimates"
    );
    // A decision the client calls for reserves nothing, but is refused all the same.
    assert!(matches!(
        router.route("r", &request),
        Err(ServeError::SpendCap { .. })
    ));
    // One call ends having cost nothing: room for one more.
    // (Answers of the length the estimate assumed, so that the estimate stays.)
    let free = Outcome::new(100.0, 0.0).with_tokens(1, 256);
    router
        .record_outcome(&under_way[0].decision_id, &free)
        .unwrap()
        .wait()
        .unwrap();
    let fifth = proxied().unwrap();
    assert!(matches!(proxied(), Err(ServeError::SpendCap { .. })));
    // Every call ends at half its estimate: 2 estimates spent, room for three more calls.
    for routed in under_way[1..].iter().chain([&fifth]) {
        let outcome = Outcome::new(100.0, 0.5 * estimate).with_tokens(1, 256);
        router
            .record_outcome(&routed.decision_id, &outcome)
            .unwrap()
            .wait()
            .unwrap();
    }
    for _ in 0..2 {
        proxied().unwrap();
    }
    assert!(matches!(proxied(), Err(ServeError::SpendCap { .. })));
    let (day, _) = router.spend("r").unwrap();
    assert!((day - 2.0 * estimate).abs() < 1e-12, "{day}");
}

/// A cap that spend reached is the refusal a caller hears, with its period's wait, though
/// another caller's calls under way hold the route's cap too (that one would say to ask
/// again in a second).
#[test]
fn a_cap_that_spend_reached_outranks_one_that_calls_under_way_hold() {
    use quiver_serve::spend::SpendCap;
    use quiver_serve::Observed;
    let cap = |daily_usd: f64| {
        Some(SpendCap {
            daily_usd: Some(daily_usd),
            monthly_usd: None,
            downgrade_at: 1.0,
        })
    };
    let request = RouteRequest {
        prompt: Some("hi".into()),
        ..RouteRequest::default()
    };
    let model = || vec![ModelConfig::priced("m", 1.0, 2.0)];
    let estimate = {
        let router = Router::open(
            vec![RouteConfig::new("r", "beta-ts", model())],
            &scratch("router_cap_order_estimate"),
        )
        .unwrap();
        router.route("r", &request).unwrap().wait().unwrap().decision.arms[0].cost_usd
    };
    let route = RouteConfig {
        spend_cap: cap(3.0 * estimate),
        caller_spend_cap: cap(1.5 * estimate),
        ..RouteConfig::new("r", "beta-ts", model())
    };
    let router = Router::open(vec![route], &scratch("router_cap_order")).unwrap();
    let call = |caller: &str| {
        let observed = Observed {
            calls: true,
            caller: Some(caller.to_string()),
            ..Observed::default()
        };
        router
            .route_observed("r", &request, observed)
            .map(|p| p.wait().unwrap())
    };
    // Caller `a` spends two estimates, past its cap of 1.5.
    for _ in 0..2 {
        let routed = call("a").unwrap();
        let outcome = Outcome::new(100.0, estimate).with_tokens(1, 256);
        router
            .record_outcome(&routed.decision_id, &outcome)
            .unwrap()
            .wait()
            .unwrap();
    }
    // Caller `b`'s call under way brings the route to its cap of three.
    let _under_way = call("b").unwrap();
    let Err(ServeError::SpendCap { message, retry_after }) = call("a") else {
        panic!("caller `a` is over its cap")
    };
    assert!(
        message.starts_with("caller `a` on route `r` reached its daily spend cap"),
        "{message}"
    );
    assert!(
        retry_after > quiver_serve::spend::UNDER_WAY_RETRY,
        "{retry_after:?}"
    );
    let Err(ServeError::SpendCap { message, retry_after }) = call("b") else {
        panic!("the route is held at its cap")
    };
    assert!(message.starts_with("route `r` has spent"), "{message}");
    assert_eq!(retry_after, quiver_serve::spend::UNDER_WAY_RETRY);
}

/// A decision under a budget paces by the multiplier ahead of the calls under way: the
/// one the pacer will have once their estimated costs come back, so that concurrent
/// calls do not all decide on the multiplier the calls before them found. A proxied call
/// stops counting when its outcome steps the pacer or its request is done with it.
#[test]
fn a_budget_paces_each_decision_ahead_of_the_calls_under_way() {
    let route = RouteConfig {
        budget_usd_per_request: Some(1e-5),
        w_cost: 0.0,
        ..RouteConfig::new("r", "beta-ts", vec![ModelConfig::priced("m", 1.0, 2.0)])
    };
    let router = Router::open(vec![route], &scratch("router_pacing_ahead")).unwrap();
    let request = RouteRequest {
        prompt: Some("hi".into()),
        ..RouteRequest::default()
    };
    let proxied = || {
        let observed = Observed {
            calls: true,
            ..Observed::default()
        };
        let routed = router
            .route_observed("r", &request, observed)
            .unwrap()
            .wait()
            .unwrap();
        let estimate = routed.decision.arms[0].cost_usd;
        (routed, estimate)
    };
    // The cost weight a decision should pace by, with these estimates under way.
    let ahead = |under_way: &[f64]| {
        let learner = router.learner("r").unwrap();
        learner.pacer().unwrap().ahead(under_way).extra_cost_weight()
    };
    let mut calls = Vec::new();
    let mut estimates = Vec::new();
    for _ in 0..3 {
        let (routed, estimate) = proxied();
        assert_eq!(routed.decision.w_cost, ahead(&estimates));
        calls.push(routed);
        estimates.push(estimate);
    }
    // Each estimate is dozens of budgets, so the weight grew with each call under way.
    assert!(estimates[0] > 10.0 * 1e-5, "{}", estimates[0]);
    assert!(ahead(&estimates[..2]) > ahead(&estimates[..1]) && ahead(&estimates[..1]) > 0.0);
    // The first request is done without an outcome; the second's outcome steps the pacer.
    router.end_call(&calls[0].decision_id);
    let outcome = Outcome::new(100.0, 2e-5).with_tokens(1, 256);
    router
        .record_outcome(&calls[1].decision_id, &outcome)
        .unwrap()
        .wait()
        .unwrap();
    let (next, _) = proxied();
    assert_eq!(next.decision.w_cost, ahead(&estimates[2..]));
    assert!(next.decision.w_cost < ahead(&estimates));
}

/// A decision whose call the client makes (`/v1/route`) counts as under way for the
/// budget's pacer until its outcome, or while one could still come: for
/// `routed_call_limit` until outcomes have come, then for twice the 95th percentile of the
/// latest waits for one (at most the limit), so that outcomes never reported soon stop
/// counting, a wait that grows lengthens it again, and a few slow ones do not. The
/// proxy's calls count beside them, in the order of their decisions.
#[test]
fn a_budget_paces_ahead_of_client_calls_while_their_outcomes_could_come() {
    // Estimates of about a budget, so that the order of the steps shows.
    let route = |name: &str| RouteConfig {
        budget_usd_per_request: Some(4e-4),
        w_cost: 0.0,
        ..RouteConfig::new(name, "beta-ts", vec![ModelConfig::priced("m", 1.0, 2.0)])
    };
    let limit = Duration::from_secs(4);
    let options = RouterOptions {
        routed_call_limit: limit,
        ..RouterOptions::default()
    };
    let dir = scratch("router_pacing_client_calls");
    let router = Router::open_with(vec![route("r"), route("s")], &dir, options).unwrap();
    let prompt = |text: &str| RouteRequest {
        prompt: Some(text.into()),
        ..RouteRequest::default()
    };
    let (short, long) = (prompt("hi"), prompt(&"a longer prompt ".repeat(40)));
    let estimate = |routed: &quiver_serve::Routed| routed.decision.arms[0].cost_usd;
    let decide = |name: &str| {
        let routed = router.route(name, &short).unwrap().wait().unwrap();
        let cost = estimate(&routed);
        (routed, cost)
    };
    let ahead = |name: &str, under_way: &[f64]| {
        let learner = router.learner(name).unwrap();
        learner.pacer().unwrap().ahead(under_way).extra_cost_weight()
    };
    let report = |routed: &quiver_serve::Routed| {
        let outcome = Outcome::new(100.0, 2e-5).with_tokens(1, 256);
        router
            .record_outcome(&routed.decision_id, &outcome)
            .unwrap()
            .wait()
            .unwrap();
    };
    // Sleeps until `at_ms` after `started`; the schedule leaves 1 s between what counts
    // and what does not, less three times this slack.
    let sleep_until = |started: Instant, at_ms: u64| {
        let at = started + Duration::from_millis(at_ms);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        assert!(
            Instant::now() < at + Duration::from_millis(300),
            "too slow to tell the times apart"
        );
    };
    let started = Instant::now();
    std::thread::scope(|scope| {
        // Route `s`: before any outcome, for the whole limit; a proxied call in between.
        scope.spawn(|| {
            let (a, a_cost) = decide("s");
            assert_eq!(a.decision.w_cost, ahead("s", &[]));
            let proxied = Observed {
                calls: true,
                ..Observed::default()
            };
            let p = router
                .route_observed("s", &long, proxied)
                .unwrap()
                .wait()
                .unwrap();
            let p_cost = estimate(&p);
            assert_ne!(ahead("s", &[a_cost, p_cost]), ahead("s", &[p_cost, a_cost]));
            sleep_until(started, 2000);
            let (b, b_cost) = decide("s");
            assert_eq!(b.decision.w_cost, ahead("s", &[a_cost, p_cost]));
            router.end_call(&p.decision_id);
            // An outcome refused ends nothing.
            let refused = router.record_outcome(&a.decision_id, &Outcome::new(f64::NAN, 0.0));
            assert!(refused.is_err());
            let (b2, b2_cost) = decide("s");
            assert_eq!(b2.decision.w_cost, ahead("s", &[a_cost, b_cost]));
            sleep_until(started, 5000);
            let (c, _) = decide("s");
            let counted = ahead("s", &[b_cost, b2_cost]);
            assert_eq!(c.decision.w_cost, counted, "the first lapsed at the limit");
        });
        // Route `r`: an outcome 0.5 s after its decision has the others count for 1 s.
        scope.spawn(|| {
            let (first, _) = decide("r");
            let (_, second_cost) = decide("r");
            sleep_until(started, 500);
            report(&first);
            let (third, _) = decide("r");
            assert_eq!(third.decision.w_cost, ahead("r", &[second_cost]));
            sleep_until(started, 3000);
            let (fourth, fourth_cost) = decide("r");
            assert_eq!(
                fourth.decision.w_cost,
                ahead("r", &[]),
                "the second and third lapsed"
            );
            // An outcome 2.5 s after its decision: the others count for the whole limit.
            report(&third);
            let (fifth, _) = decide("r");
            let counted = ahead("r", &[second_cost, fourth_cost]);
            assert_eq!(fifth.decision.w_cost, counted, "the second counts again");
            // Forty outcomes at once: the waits' 95th percentile is theirs, not the slow ones'.
            for _ in 0..40 {
                let (quick, _) = decide("r");
                report(&quick);
            }
            std::thread::sleep(Duration::from_secs(1));
            let (sixth, _) = decide("r");
            assert_eq!(sixth.decision.w_cost, ahead("r", &[]), "the fifth still counts");
        });
    });
}

/// Each caller's cap counts only the outcomes of the decisions it asked for, each cost
/// once (a later outcome bringing the quality is feedback): a caller at its cap is
/// refused, naming itself, while another is served; decisions without a caller count
/// against no caller; the route's spend holds them all; the log names the caller on
/// decisions and outcomes, and a restart reads each caller's spend back from it.
#[test]
fn a_caller_spend_cap_refuses_that_caller_only_and_survives_a_restart() {
    use quiver_serve::spend::SpendCap;
    let dir = scratch("router_caller_cap");
    let route = RouteConfig {
        caller_spend_cap: Some(SpendCap {
            daily_usd: None,
            monthly_usd: Some(0.002),
            downgrade_at: 1.0,
        }),
        ..RouteConfig::new("r", "fixed(m)", vec![ModelConfig::priced("m", 1.0, 2.0)])
    };
    let request = RouteRequest {
        prompt: Some("hi".into()),
        ..RouteRequest::default()
    };
    let ask = |router: &Router, caller: Option<&str>| {
        let observed = Observed {
            caller: caller.map(str::to_string),
            ..Observed::default()
        };
        let routed = router.route_observed("r", &request, observed)?.wait()?;
        router
            .record_outcome(&routed.decision_id, &Outcome::new(10.0, 0.001))?
            .wait()?;
        // A later outcome with the quality (and the cost again) charges nothing more.
        let later = Outcome::new(10.0, 0.001).with_quality(1.0);
        let applied = router.record_outcome(&routed.decision_id, &later)?.wait()?;
        assert_eq!(applied, Applied::Applied);
        Ok::<_, ServeError>(())
    };
    let router = Router::open(vec![route.clone()], &dir).unwrap();
    ask(&router, Some("a")).unwrap();
    ask(&router, Some("a")).unwrap();
    let refusal = ask(&router, Some("a")).unwrap_err();
    let ServeError::SpendCap { message, .. } = refusal else {
        panic!("{refusal}")
    };
    assert!(
        message.starts_with("caller `a` on route `r` reached its monthly spend cap of $0.002 ($0.002 spent)"),
        "{message}"
    );
    ask(&router, Some("b")).unwrap();
    for _ in 0..3 {
        ask(&router, None).unwrap();
    }
    let month = |spend: &[(String, f64, f64)], caller: &str| {
        spend.iter().find(|(c, _, _)| c == caller).map(|(_, _, m)| *m)
    };
    let spend = router.caller_spend("r").unwrap();
    assert_eq!(spend.len(), 2, "{spend:?}");
    assert!((month(&spend, "a").unwrap() - 0.002).abs() < 1e-12);
    assert!((month(&spend, "b").unwrap() - 0.001).abs() < 1e-12);
    assert!((router.spend("r").unwrap().1 - 0.006).abs() < 1e-12);
    drop(router);
    let records = quiver_serve::log::read_log(&dir).unwrap();
    // Six decisions: each cost once, each quality as feedback.
    let count = |event| records.iter().filter(|r| r.event == event).count();
    assert_eq!((count(LogEvent::Outcome), count(LogEvent::Feedback)), (6, 6));
    let by_a = records
        .iter()
        .filter(|r| r.caller.as_deref() == Some("a"))
        .map(|r| r.event)
        .collect::<Vec<_>>();
    assert_eq!(
        by_a,
        [
            LogEvent::Decision,
            LogEvent::Outcome,
            LogEvent::Decision,
            LogEvent::Outcome
        ]
    );
    let reopened = Router::open(vec![route], &dir).unwrap();
    let after = reopened.caller_spend("r").unwrap();
    assert_eq!(month(&after, "a"), month(&spend, "a"));
    assert_eq!(month(&after, "b"), month(&spend, "b"));
    assert!(matches!(
        ask(&reopened, Some("a")),
        Err(ServeError::SpendCap { .. })
    ));
    ask(&reopened, Some("b")).unwrap();
}

/// A snapshot without recorded context definitions (an older format) still refuses a
/// route whose context changed, by its dimension, and names the way out.
#[test]
fn a_changed_dimension_is_refused_without_recorded_contexts() {
    let dir = scratch("router_old_contexts");
    let router = Router::open_with(routes(), &dir, crash_options()).unwrap();
    workload(&router, 0..10, &mut Vec::new());
    router.snapshot().unwrap();
    drop(router);
    let mut snapshot = snapshot_json(&dir);
    assert!(snapshot.as_object_mut().unwrap().remove("contexts").is_some());
    std::fs::write(dir.join("snapshot.json"), snapshot.to_string()).unwrap();
    let mut wider = routes();
    wider[0].extra_features = 2;
    let error = Router::open_with(wider, &dir, crash_options())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("route `chat` changed its context (65 features then, 66 now)")
            && error.contains("--reset-route chat"),
        "{error}"
    );
}

/// A decision whose model was removed before its outcome came: the outcome is
/// acknowledged as `arm_removed`, logged once and paid for (the call was made), never
/// learned; a repeat is `already_applied` and changes nothing; a restart reads the same
/// spend back from the log.
#[test]
fn a_removed_models_outcome_is_logged_and_paid_for_but_not_learned() {
    let dir = scratch("router_removed_model_outcome");
    let models = vec![
        ModelConfig::priced("dear", 20.0, 40.0),
        ModelConfig::priced("cheap", 1.0, 2.0),
    ];
    let route = |models: Vec<ModelConfig>| RouteConfig::new("r", "beta-ts", models);
    let router = Router::open(vec![route(models.clone())], &dir).unwrap();
    let request = RouteRequest {
        prompt: Some("hi".into()),
        constraints: quiver_bandit::Constraints {
            only_arms: ["dear".to_string()].into(),
            ..Default::default()
        },
        ..RouteRequest::default()
    };
    let routed = router.route("r", &request).unwrap().wait().unwrap();
    assert_eq!(routed.decision.arm, "dear");
    drop(router);

    let router = Router::open(vec![route(models[1..].to_vec())], &dir).unwrap();
    let before = router.learner("r").unwrap().clone();
    let outcome = Outcome::new(100.0, 0.003).with_quality(0.9);
    let report = |o: &Outcome| {
        router
            .record_outcome(&routed.decision_id, o)
            .unwrap()
            .wait()
            .unwrap()
    };
    assert_eq!(report(&outcome), Applied::ArmRemoved);
    assert_eq!(report(&outcome), Applied::AlreadyApplied);
    assert_eq!(
        router.feedback(&routed.decision_id, 0.9).unwrap().wait().unwrap(),
        Applied::AlreadyApplied
    );
    assert!(matches!(
        router.feedback(&routed.decision_id, 0.1),
        Err(ServeError::Bandit(e)) if e.to_string().contains("0.9")
    ));
    let (day, month) = router.spend("r").unwrap();
    assert!(
        (day - 0.003).abs() < 1e-12 && (month - 0.003).abs() < 1e-12,
        "{day} {month}"
    );
    // Nothing learned: everything but the decision's bookkeeping is as it was.
    let learned = |learner: &quiver_bandit::Learner| {
        serde_json::to_string(&learner.snapshot_without_tracked()).unwrap()
    };
    assert!(learned(&router.learner("r").unwrap()) == learned(&before));
    let outcomes: Vec<_> = quiver_serve::log::read_log(&dir)
        .unwrap()
        .into_iter()
        .filter(|r| r.decision_id == routed.decision_id && r.event != LogEvent::Decision)
        .collect();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(
        (outcomes[0].event, outcomes[0].cost_usd, outcomes[0].quality),
        (LogEvent::Outcome, 0.003, Some(0.9))
    );
    drop(router);

    let reopened = Router::open(vec![route(models[1..].to_vec())], &dir).unwrap();
    assert_eq!(reopened.spend("r").unwrap(), (day, month));
    assert_eq!(
        reopened
            .record_outcome(&routed.decision_id, &outcome)
            .unwrap()
            .wait()
            .unwrap(),
        Applied::AlreadyApplied
    );
}

/// A route removed from the configuration and later added back goes on from what its log
/// holds: its decisions keep their numbers (a new decision never takes an old one's id),
/// what it learned before comes back, and its old decisions' feedback is still theirs.
#[test]
fn a_route_removed_and_added_back_goes_on_from_its_log() {
    let dir = scratch("router_route_back");
    let all = routes();
    let router = Router::open_with(all.clone(), &dir, crash_options()).unwrap();
    let mut ids = Vec::new();
    workload(&router, 0..30, &mut ids);
    let code_before = router.learner("code").unwrap().clone();
    drop(router);

    // Without `code`, the snapshot written at the stop forgets it.
    let router = Router::open_with(all[..1].to_vec(), &dir, crash_options()).unwrap();
    workload_on_chat(&router, 5);
    router.snapshot().unwrap();
    drop(router);
    assert!(snapshot_json(&dir)["routes"].get("code").is_none());

    let router = Router::open_with(all, &dir, crash_options()).unwrap();
    let back = router.learner("code").unwrap().clone();
    assert_eq!(back.next_decision_id(), code_before.next_decision_id());
    assert!(
        serde_json::to_string(&back.snapshot()).unwrap()
            == serde_json::to_string(&code_before.snapshot()).unwrap(),
        "the route came back without what it learned"
    );
    let request = RouteRequest {
        prompt: Some("again".into()),
        ..RouteRequest::default()
    };
    let routed = router.route("code", &request).unwrap().wait().unwrap();
    assert!(
        !ids.contains(&routed.decision_id),
        "{} was issued before",
        routed.decision_id
    );
    // The workload reported code decision 24's quality (0.4) and not yet 27's.
    let (reported, awaiting) = (&ids[24], &ids[27]);
    assert!(matches!(
        router.feedback(reported, 0.1),
        Err(ServeError::Bandit(e)) if e.to_string().contains("0.4")
    ));
    assert_eq!(
        router.feedback(reported, 0.4).unwrap().wait().unwrap(),
        Applied::AlreadyApplied
    );
    assert_eq!(
        router.feedback(awaiting, 0.7).unwrap().wait().unwrap(),
        Applied::Applied
    );
}

/// A log learned again (no snapshot yet after a crash, or a route added back) whose
/// decisions were made in another context than the route builds now is refused, as a
/// snapshot's would be: its features do not mean what they meant. Started afresh, the
/// route opens.
#[test]
fn a_log_learned_again_in_another_context_is_refused() {
    let dir = scratch("router_log_context_changed");
    let router = Router::open_with(routes(), &dir, crash_options()).unwrap();
    workload(&router, 0..10, &mut Vec::new());
    drop(router);
    assert!(!dir.join("snapshot.json").exists(), "a crash before any snapshot");
    let mut wider = routes();
    wider[0].extra_features = 2;
    let error = Router::open_with(wider.clone(), &dir, crash_options())
        .err()
        .expect("learned in another context")
        .to_string();
    assert!(
        error.contains("route `chat` decided record") && error.contains("--reset-route chat"),
        "{error}"
    );
    let options = RouterOptions {
        reset_routes: vec!["chat".into()],
        ..crash_options()
    };
    let reset = Router::open_with(wider.clone(), &dir, options).unwrap();
    let request = RouteRequest {
        prompt: Some("two features".into()),
        features: vec![0.1, 0.2],
        ..RouteRequest::default()
    };
    reset.route("chat", &request).unwrap().wait().unwrap();
    reset.snapshot().unwrap();
    drop(reset);
    // The same for a route removed, changed and added back.
    Router::open_with(wider[1..].to_vec(), &dir, crash_options())
        .unwrap()
        .snapshot()
        .unwrap();
    let mut narrower = wider;
    narrower[0].extra_features = 1;
    let error = Router::open_with(narrower, &dir, crash_options())
        .err()
        .expect("added back in another context")
        .to_string();
    assert!(error.contains("route `chat` decided record"), "{error}");
}

fn workload_on_chat(router: &Router, count: usize) {
    for i in 0..count {
        let request = RouteRequest {
            prompt: Some(format!("only chat {i}")),
            features: vec![0.2],
            ..RouteRequest::default()
        };
        let routed = router.route("chat", &request).unwrap().wait().unwrap();
        router.feedback(&routed.decision_id, 0.5).unwrap().wait().unwrap();
    }
}

/// A request's objective overrides the weights it names and keeps the route's for the
/// others: with the route's `w_latency` of 2 per second and the request's `w_cost` of
/// 100 per USD, each model's reward is its quality less both penalties.
#[test]
fn a_requests_objective_keeps_the_routes_weights_it_leaves_out() {
    let dir = scratch("router_objective_override");
    let route = RouteConfig {
        w_latency: 2.0,
        ..RouteConfig::new(
            "r",
            "beta-ts",
            vec![
                ModelConfig::priced("big", 5.0, 10.0),
                ModelConfig::priced("small", 0.2, 0.4),
            ],
        )
    };
    let router = Router::open(vec![route], &dir).unwrap();
    let request = |objective| RouteRequest {
        prompt: Some("what is the capital of France?".into()),
        objective,
        ..RouteRequest::default()
    };
    let first = router.route("r", &request(None)).unwrap().wait().unwrap();
    let outcome = Outcome::new(500.0, 0.01).with_tokens(10, 20);
    router
        .record_outcome(&first.decision_id, &outcome)
        .unwrap()
        .wait()
        .unwrap();
    let cost_only = quiver_serve::ObjectiveOverride {
        w_cost: Some(100.0),
        w_latency: None,
    };
    let routed = router
        .route("r", &request(Some(cost_only)))
        .unwrap()
        .wait()
        .unwrap();
    assert!(routed.decision.arms.iter().any(|e| e.latency_ms > 0.0));
    for estimate in &routed.decision.arms {
        let expected = estimate.quality - 100.0 * estimate.cost_usd - 2.0 * estimate.latency_ms / 1000.0;
        assert!((estimate.reward - expected).abs() < 1e-9, "{estimate:?}");
    }
}

/// A route added to a server whose log no longer starts at its first record (its oldest
/// segment moved away) starts all the same: a route the snapshot does not know needs no
/// record, and learns what of the log is its own (here nothing).
#[test]
fn a_new_route_needs_no_record_the_log_no_longer_has() {
    let dir = scratch("router_new_route_short_log");
    let chat = routes()[..1].to_vec();
    let router = Router::open_with(chat.clone(), &dir, crash_options()).unwrap();
    workload_on_chat(&router, 40);
    router.snapshot().unwrap();
    drop(router);
    let segments = log_segments(&dir);
    assert!(segments.len() > 2, "{segments:?}");
    std::fs::remove_file(&segments[0]).unwrap();
    let mut more = chat;
    more.push(RouteConfig::new(
        "new",
        "beta-ts",
        vec![ModelConfig::priced("m", 1.0, 2.0)],
    ));
    let router = Router::open_with(more, &dir, crash_options()).unwrap();
    assert_eq!(router.learner("new").unwrap().next_decision_id(), 0);
    assert!(router.learner("chat").unwrap().next_decision_id() == 40);
}

/// A route's own mistakes are named as the route's, even where it has shadow candidates
/// (whose learners would hit the same mistake first).
#[test]
fn a_routes_configuration_errors_name_the_route() {
    let dir = scratch("router_config_errors");
    let twins = vec![
        ModelConfig::priced("m", 1.0, 2.0),
        ModelConfig::priced("m", 1.0, 2.0),
    ];
    let cases = [
        (
            RouteConfig::new("r", "lints", twins.clone()),
            "route `r`: arm `m` already exists",
        ),
        (
            RouteConfig {
                shadow: vec!["eps(0.1)".into()],
                ..RouteConfig::new("r", "lints", twins)
            },
            "route `r`: arm `m` already exists",
        ),
        (
            RouteConfig {
                w_cost: -1.0,
                ..RouteConfig::new("r", "lints", vec![ModelConfig::priced("m", 1.0, 2.0)])
            },
            "route `r`: w_cost",
        ),
    ];
    for (route, named) in cases {
        let error = Router::open(vec![route], &dir)
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains(named) && !error.contains("shadow"), "{error}");
    }
}
