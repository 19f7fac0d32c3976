//! What the server logs is a dataset the simulator reads: decisions with their outcomes and
//! late feedback merged into rows, propensities as logged, and a candidate evaluated on it
//! off-policy.
#![allow(clippy::unwrap_used)] // a test that fails should panic

mod support;

use quiver_bandit::{Applied, Objective, ObjectiveOverride, Outcome};
use quiver_serve::{ModelConfig, Observed, RouteConfig, RouteRequest, Router, RouterOptions};
use quiver_sim::context::ContextBuilder;
use quiver_sim::data::{load_logged, Format, LogStream};
use quiver_sim::ope::{
    estimate, evaluate, inputs_for, run_candidate, Estimator, EstimatorSettings, Ips, Metric,
};
use support::scratch;

fn route() -> RouteConfig {
    let model = |id: &str, price: f64| ModelConfig::priced(id, price, 2.0 * price);
    RouteConfig {
        w_cost: 20.0,
        budget_usd_per_request: Some(0.002),
        extra_features: 1,
        seed: 3,
        ..RouteConfig::new(
            "chat",
            "lints(v=0.3,floor=0.05)",
            vec![
                ModelConfig {
                    tags: vec!["frontier".into()],
                    ..model("big", 5.0)
                },
                model("small", 0.2),
                model("mid", 1.0),
            ],
        )
    }
}

#[test]
fn the_log_is_a_dataset_the_simulator_reads_and_evaluates() {
    let dir = scratch("log_contract");
    // Small segments, so that the log rotates and closed segments can be compacted.
    let options = RouterOptions {
        segment_bytes: 8_000,
        ..RouterOptions::default()
    };
    let router = Router::open_with(vec![route()], &dir, options.clone()).unwrap();
    let mut ids: Vec<String> = Vec::new();
    for i in 0..40 {
        let mut request = RouteRequest {
            prompt: Some(format!("question {i}: what is {} + {}?", i * 7, i % 11)),
            features: vec![(i % 5) as f64 / 5.0],
            ..RouteRequest::default()
        };
        // Some requests bring terms of their own: the log records the models they admit.
        match i % 6 {
            1 => request.constraints.exclude_tags.insert("frontier".into()),
            2 => request.constraints.only_arms.insert("small".into()),
            _ => false,
        };
        if i % 5 == 3 {
            // At most what `small` costs (about $0.0001 a call), less than `big` ($0.0004).
            request.constraints.max_cost_usd = Some(0.0002);
            request.objective = Some(ObjectiveOverride {
                w_cost: Some(50.0),
                w_latency: None,
            });
        }
        let observed = Observed {
            caller: (i % 2 == 0).then(|| "0123456789abcdef".to_string()),
            ..Observed::default()
        };
        let routed = router
            .route_observed("chat", &request, observed)
            .unwrap()
            .wait()
            .unwrap();
        let cost = if routed.decision.arm == "big" {
            0.004
        } else {
            0.0004
        };
        let outcome = Outcome::new(100.0 + i as f64, cost).with_tokens(20, 30);
        router
            .record_outcome(&routed.decision_id, &outcome)
            .unwrap()
            .wait()
            .unwrap();
        ids.push(routed.decision_id);
        // The quality of decision i - 3 arrives now (late), except for every fourth.
        if i >= 3 && i % 4 != 0 {
            let applied = router.feedback(&ids[i - 3], 0.8).unwrap().wait().unwrap();
            assert_eq!(applied, Applied::Applied);
        }
        // Some answers are served again from the cache: events a policy learns nothing from.
        if i % 10 == 9 {
            let model = router.learner("chat").unwrap().arms()[0].id.clone();
            router
                .log_cache_hit(&ids[i], &model, "again")
                .unwrap()
                .wait()
                .unwrap();
        }
    }
    let learners = serde_json::to_string(&router.learner("chat").unwrap().snapshot()).unwrap();
    drop(router);
    // A restart reads the same log to the same learner.
    let reopened = Router::open_with(vec![route()], &dir, options.clone()).unwrap();
    let again = serde_json::to_string(&reopened.learner("chat").unwrap().snapshot()).unwrap();
    assert!(again == learners, "the restarted learner differs");
    drop(reopened);
    let read = load_logged(dir.to_str().unwrap(), Format::Auto, None).unwrap();

    // Compacted, the closed segments are Parquet; a restart with no snapshot (which reads
    // every record back) and the simulator read the same log as before.
    let segments = quiver_log::segment_files(&dir).unwrap();
    assert!(segments.len() > 2, "{segments:?}");
    let compact = std::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["log", "compact", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        compact.status.success(),
        "{}",
        String::from_utf8_lossy(&compact.stderr)
    );
    let said = String::from_utf8_lossy(&compact.stdout);
    assert!(
        said.contains(&format!("{} segments", segments.len() - 1)),
        "{said}"
    );
    let compacted = quiver_log::segment_files(&dir).unwrap();
    assert_eq!(compacted.len(), segments.len());
    assert!(compacted[..compacted.len() - 1]
        .iter()
        .all(|p| p.extension().unwrap() == "parquet"));
    let _ = std::fs::remove_file(dir.join("snapshot.json"));
    let reopened = Router::open_with(vec![route()], &dir, options).unwrap();
    let again = serde_json::to_string(&reopened.learner("chat").unwrap().snapshot()).unwrap();
    assert!(
        again == learners,
        "the learner restarted from the compacted log differs"
    );
    drop(reopened);
    let log = load_logged(dir.to_str().unwrap(), Format::Auto, None).unwrap();
    assert!(log == read, "the compacted log reads otherwise");

    assert_eq!(log.rows(), 40);
    assert_eq!(log.arms, vec!["big", "mid", "small"]);
    assert!(log.propensity.iter().all(|p| (0.05..=1.0).contains(p)));
    assert!(log.cost_usd.iter().all(|&c| c > 0.0));
    let with_quality = log.quality.iter().filter(|q| q.is_some()).count();
    assert_eq!(with_quality, (3..40).filter(|i| i % 4 != 0).count());

    // Each decision's request terms: the models its constraints admitted (the tag resolved,
    // the bound against each model's expected cost then), and its own trade-off.
    let requests = log.requests.as_ref().unwrap();
    for (i, terms) in requests.iter().enumerate() {
        let mut terms = terms.as_deref().cloned().unwrap_or_default();
        terms.admitted.sort();
        let named: &[&str] = match i % 6 {
            1 => &["mid", "small"],
            2 => &["small"],
            _ => &["big", "mid", "small"],
        };
        if i % 5 == 3 {
            assert!(terms
                .admitted
                .iter()
                .all(|m| named.contains(&m.as_str()) && m != "big"));
            assert!(
                terms.admitted.contains(&"small".to_string()),
                "decision {i}: {terms:?}"
            );
        } else if named.len() == 3 {
            assert!(terms.admitted.is_empty(), "decision {i}: {terms:?}");
        } else {
            assert_eq!(terms.admitted, named, "decision {i}");
        }
        assert_eq!(terms.objective.w_cost, (i % 5 == 3).then_some(50.0));
        assert!(terms.unavailable.is_empty() && terms.objective.w_latency.is_none());
        // The model served was among those admitted.
        let served = &log.arms[log.arm[i]];
        assert!(
            terms.admitted.is_empty() || terms.admitted.contains(served),
            "decision {i}"
        );
    }

    // A candidate decides each logged request as the route did: a model the request did not
    // admit gets no probability.
    let contexts = ContextBuilder::log_contexts(&log).unwrap();
    let run = run_candidate(
        &log,
        &contexts,
        &"random".parse().unwrap(),
        Default::default(),
        0,
        false,
    )
    .unwrap();
    for (i, pmf) in run.pmf.rows().into_iter().enumerate() {
        let admitted = requests[i].as_ref().map_or(&[][..], |t| &t.admitted[..]);
        let expected: Vec<f64> = log
            .arms
            .iter()
            .map(|m| match admitted.len() {
                0 => 1.0 / 3.0,
                n if admitted.contains(m) => 1.0 / n as f64,
                _ => 0.0,
            })
            .collect();
        assert_eq!(pmf.to_vec(), expected, "decision {i}");
    }
    let inputs = inputs_for(&log, &contexts, &run, Metric::Quality, f64::INFINITY, 100.0);
    let ips = estimate(&Ips, &inputs, 100, 0);
    assert!(ips.value.is_finite() && ips.value > 0.0);

    // Read seven records at a time, outcomes and feedback falling in later chunks than
    // their decisions, the log evaluates as it does read whole.
    let mut stream = LogStream::open(dir.to_str().unwrap(), Format::Auto, None, 7).unwrap();
    assert_eq!((stream.rows(), &stream.header().arms), (40, &log.arms));
    let settings = EstimatorSettings::new(f64::INFINITY, 100.0, 100, 0).unwrap();
    let estimators: Vec<Box<dyn Estimator>> = vec![Box::new(Ips)];
    let spec = "random".parse().unwrap();
    let summary = evaluate(
        &mut stream,
        &spec,
        Default::default(),
        &estimators,
        settings,
        false,
    )
    .unwrap();
    let streamed = &summary.metrics[1];
    assert_eq!(
        (streamed.metric.as_str(), streamed.rows),
        ("quality", inputs.rows())
    );
    assert_eq!(streamed.estimates[0].value.to_bits(), ips.value.to_bits());
    assert_eq!(streamed.estimates[0].ci95_bootstrap, ips.ci95_bootstrap);
}

/// A decision whose outcome has not come is no call that cost 0: off-policy cost leaves
/// it out, and so does a reward that weighs cost, while its quality (feedback without an
/// outcome) still counts where cost does not. A log converted to the logged shape keeps
/// it so (a null cost), and read in chunks it evaluates alike.
#[test]
fn decisions_awaiting_their_outcome_are_not_calls_that_cost_nothing() {
    let dir = scratch("log_contract_pending");
    let router = Router::open(vec![route()], &dir).unwrap();
    let (decisions, called) = (30, 20);
    for i in 0..decisions {
        let request = RouteRequest {
            prompt: Some(format!("question {i}")),
            features: vec![(i % 5) as f64 / 5.0],
            ..RouteRequest::default()
        };
        let routed = router.route("chat", &request).unwrap().wait().unwrap();
        if i < called {
            let outcome = Outcome::new(100.0, 0.001 * (1 + i % 3) as f64).with_tokens(20, 30);
            router
                .record_outcome(&routed.decision_id, &outcome)
                .unwrap()
                .wait()
                .unwrap();
        }
        // Feedback for every other decision, awaiting its outcome or not.
        if i % 2 == 0 {
            router.feedback(&routed.decision_id, 0.7).unwrap().wait().unwrap();
        }
    }
    drop(router);
    let log = load_logged(dir.to_str().unwrap(), Format::Auto, None).unwrap();
    let expected: Vec<bool> = (0..decisions).map(|i| i < called).collect();
    assert_eq!(log.outcome, expected);
    let converted = dir.with_extension("parquet");
    quiver_sim::write::write_logged(&log, &converted).unwrap();
    let read_back = load_logged(converted.to_str().unwrap(), Format::Auto, None).unwrap();
    assert_eq!(read_back.outcome, expected);
    // A log from elsewhere: a row with neither a cost nor a latency that did not fail
    // awaits its outcome; a failure that cost nothing does not.
    let plain = dir.with_extension("csv");
    std::fs::write(
        &plain,
        "decision_id,arm,propensity,quality,cost_usd,latency_ms,error\n\
         1,a,0.5,0.8,0.001,100,false\n2,a,0.5,0.7,,,false\n3,b,0.5,,,,true\n4,b,0.5,,,250,false\n",
    )
    .unwrap();
    let plain = load_logged(plain.to_str().unwrap(), Format::Auto, None).unwrap();
    assert_eq!(plain.outcome, [true, false, true, true]);

    let rows_of = |source: &std::path::Path, objective: Objective| -> Vec<(String, usize)> {
        let mut stream = LogStream::open(source.to_str().unwrap(), Format::Auto, None, 7).unwrap();
        let settings = EstimatorSettings::new(f64::INFINITY, 100.0, 0, 0).unwrap();
        let estimators: Vec<Box<dyn Estimator>> = vec![Box::new(Ips)];
        let summary = evaluate(
            &mut stream,
            &"random".parse().unwrap(),
            objective,
            &estimators,
            settings,
            true,
        )
        .unwrap();
        summary
            .metrics
            .iter()
            .map(|m| (m.metric.clone(), m.rows))
            .collect()
    };
    let with_quality = (0..decisions).filter(|i| i % 2 == 0).count();
    let called_with_quality = (0..called).filter(|i| i % 2 == 0).count();
    for source in [dir.as_path(), converted.as_path()] {
        assert_eq!(
            rows_of(source, Objective::default()),
            [
                ("value", with_quality),
                ("quality", with_quality),
                ("cost_usd", called)
            ]
            .map(|(m, n)| (m.to_string(), n))
        );
        let weighed = Objective::new(20.0, 0.0).unwrap();
        assert_eq!(
            rows_of(source, weighed)[0],
            ("value".to_string(), called_with_quality)
        );
    }
}

/// The simulator reads a log under the log's contract: a record of a newer format than
/// this build reads, or of an event it does not know, stops the reading with the file, row
/// and column named.
#[test]
fn the_simulator_refuses_records_it_cannot_read_under_the_contract() {
    let dir = scratch("log_contract_refusals");
    let router = Router::open(vec![route()], &dir).unwrap();
    let request = RouteRequest {
        prompt: Some("one question".into()),
        features: vec![0.5],
        ..RouteRequest::default()
    };
    router.route("chat", &request).unwrap().wait().unwrap();
    drop(router);
    let segment = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| quiver_serve::log::is_segment(p))
        .unwrap();
    let text = String::from_utf8(quiver_serve::log::read_segment(&segment).unwrap()).unwrap();
    let record: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(record["schema"], quiver_serve::log::SCHEMA_VERSION);
    let newer = format!("format version {}", quiver_serve::log::SCHEMA_VERSION + 1);
    for (field, value, expected) in [
        (
            "schema",
            serde_json::json!(quiver_serve::log::SCHEMA_VERSION + 1),
            newer.as_str(),
        ),
        ("event", serde_json::json!("rewind"), "unknown event `rewind`"),
    ] {
        let mut changed = record.clone();
        changed[field] = value;
        std::fs::write(&segment, format!("{changed}\n")).unwrap();
        let error = load_logged(dir.to_str().unwrap(), Format::Auto, None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(expected) && error.contains("row 1") && error.contains(field),
            "{error}"
        );
    }
}
