//! One context definition offline and online: for the same request, the context
//! `quiver replay` builds from a table row equals the one `quiver serve` builds, the
//! definitions recorded in the replay's summary, the server's log and its snapshot agree,
//! and rebuilding contexts from the server's log gives the same vectors again.
#![allow(clippy::unwrap_used, clippy::panic)] // a test that fails should panic

mod support;

use std::process::Command;

use quiver_serve::{ModelConfig, RouteConfig, RouteRequest, Router};
use quiver_sim::context::ContextBuilder;
use quiver_sim::data::{load_wide, Dataset, EarlierContexts, Format, LogStream};
use support::scratch;

const PROMPTS: [&str; 4] = [
    "def reverse(xs): return xs[::-1]  # explain this",
    "What is the capital of France?",
    "Prove that the square root of 2 is irrational.",
    "Résumé: écris une lettre de motivation, s'il te plaît.",
];

fn route(extra_features: usize) -> RouteConfig {
    let model = |id: &str, price: f64| ModelConfig::priced(id, price, 2.0 * price);
    RouteConfig {
        extra_features,
        ..RouteConfig::new("r", "linucb", vec![model("small", 0.1), model("big", 5.0)])
    }
}

#[test]
fn replay_and_serve_build_the_same_context_for_the_same_request() {
    let dir = scratch("context_offline_online");
    // A table with prompts, a task label and one caller feature.
    let table = dir.join("table.csv");
    let mut text = String::from("id,prompt,task,f_len,quality|small,cost|small,quality|big,cost|big\n");
    for (i, prompt) in PROMPTS.iter().enumerate() {
        text.push_str(&format!(
            "r{i},\"{prompt}\",t{},{},1,0.0001,1,0.002\n",
            i % 2,
            i as f64 / 4.0
        ));
    }
    std::fs::write(&table, text).unwrap();
    let data = load_wide(table.to_str().unwrap(), Format::Auto, None).unwrap();

    // What `quiver replay` builds by default: no task, since a server has none.
    let replay = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args([
            "replay",
            "--data",
            table.to_str().unwrap(),
            "--policies",
            "random",
            "--seeds",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&replay.stdout).unwrap();
    let offline = ContextBuilder::new(true, &[], data.feature_names.len());
    assert_eq!(summary["dataset"]["context"], offline.definition());

    let log_dir = dir.join("log");
    let router = Router::open(vec![route(1)], &log_dir).unwrap();
    for (row, prompt) in PROMPTS.iter().enumerate() {
        let request = RouteRequest {
            prompt: Some(prompt.to_string()),
            features: data.row_features(row).to_vec(),
            ..RouteRequest::default()
        };
        let (online, definition) = router.context("r", &request, None).unwrap();
        assert_eq!(definition, offline.definition());
        assert_eq!(online, offline.wide_row(&data, row).unwrap(), "row {row}");
        router.route("r", &request).unwrap().wait().unwrap();
    }

    // The log records the definition with each decision, and the contexts rebuilt from it
    // (as `quiver ope` does) are the server's.
    let records = quiver_serve::log::read_log(&log_dir).unwrap();
    assert_eq!(records.len(), PROMPTS.len());
    assert!(records
        .iter()
        .all(|r| r.context.as_deref() == Some(offline.definition().as_str())));
    let logged = quiver_sim::data::load(log_dir.to_str().unwrap(), Format::Logged, None).unwrap();
    let quiver_sim::data::Dataset::Logged(logged) = logged else {
        panic!("the log did not load as a logged dataset");
    };
    let rebuilt = ContextBuilder::log_contexts(&logged).unwrap();
    for (row, context) in rebuilt.iter().enumerate() {
        assert_eq!(*context, offline.wide_row(&data, row).unwrap(), "log row {row}");
    }

    // The snapshot records it too, and a route whose context changed refuses to restore.
    router.snapshot().unwrap();
    drop(router);
    let snapshot: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(log_dir.join("snapshot.json")).unwrap()).unwrap();
    assert_eq!(snapshot["contexts"]["r"], offline.definition());
    let mut snapshot = snapshot;
    snapshot["contexts"]["r"] = "hashing(words=8,chars=4,caller=1)".into();
    std::fs::write(log_dir.join("snapshot.json"), snapshot.to_string()).unwrap();
    let error = Router::open(vec![route(1)], &log_dir).err().unwrap().to_string();
    assert!(error.contains("changed its context"), "{error}");
}

/// A route started afresh in another context leaves a log of two contexts: read offline,
/// whole or a chunk at a time, it is read in its last, the decisions before the change left
/// out (their outcomes with them) and said so, rather than evaluated as one. The server
/// reads it so too: it starts again after a stop with no snapshot since the reset, and its
/// shadow candidates are estimated on the last context's decisions.
#[test]
fn a_log_across_a_change_of_context_is_read_in_its_last() {
    let dir = scratch("context_reset_offline");
    let ask = |router: &Router, features: Vec<f64>| {
        let request = RouteRequest {
            prompt: Some("What is 2 + 2?".into()),
            features,
            ..RouteRequest::default()
        };
        let routed = router.route("r", &request).unwrap().wait().unwrap();
        let outcome = quiver_bandit::Outcome::new(100.0, 0.001).with_quality(0.5);
        router
            .record_outcome(&routed.decision_id, &outcome)
            .unwrap()
            .wait()
            .unwrap();
    };
    // Small segments: the decisions before the change fill segments of their own.
    let small = quiver_serve::RouterOptions {
        segment_bytes: 1_000,
        ..quiver_serve::RouterOptions::default()
    };
    let before = Router::open_with(vec![route(1)], &dir, small.clone()).unwrap();
    for x in [0.5, 0.25, 0.125] {
        ask(&before, vec![x]);
    }
    let first = before.layout("r").unwrap().definition();
    drop(before);
    let options = quiver_serve::RouterOptions {
        reset_routes: vec!["r".into()],
        ..small
    };
    let after = Router::open_with(vec![route(2)], &dir, options).unwrap();
    for x in [0.5, 0.75] {
        ask(&after, vec![x, 1.0]);
    }
    let last = after.layout("r").unwrap().definition();
    drop(after);
    assert_ne!(first, last);
    // Shadow candidates are estimated on the decisions of the route's context alone, as
    // `quiver ope` estimates them below.
    let shadowed = RouteConfig {
        shadow: vec!["random".into()],
        ..route(2)
    };
    let again = Router::open(vec![shadowed], &dir).unwrap();
    let report = again.candidates("r").unwrap().unwrap();
    assert_eq!((report.decisions, report.incumbent.rows), (2, 2), "{report:?}");
    drop(again);
    let path = dir.to_str().unwrap();
    assert!(quiver_log::segment_files(&dir).unwrap().len() > 2);
    let Dataset::Logged(log) = quiver_sim::data::load(path, Format::Logged, None).unwrap() else {
        panic!("a log read as another kind of data");
    };
    assert_eq!(log.rows(), 2);
    assert_eq!(log.context.as_deref(), Some(last.as_str()));
    assert_eq!(log.feature_names, ["f_0", "f_1"]);
    assert_eq!(log.row_features(1), [0.75, 1.0]);
    assert_eq!(
        log.earlier,
        EarlierContexts {
            route: "r".into(),
            decisions: 3,
            contexts: vec![first.clone()],
        }
    );
    let note = log.earlier_contexts_note().unwrap();
    assert!(
        note.contains("3 decisions of route `r`") && note.contains(&first) && note.contains(&last),
        "{note}"
    );
    // Read two records at a time, the same.
    let mut stream = LogStream::open(path, Format::Logged, None, 2).unwrap();
    assert_eq!(stream.rows(), 2);
    assert_eq!(stream.header().earlier, log.earlier);
    let mut chunks = Vec::new();
    stream
        .for_each_chunk(|chunk| {
            chunks.extend(chunk.decision_ids);
            Ok(())
        })
        .unwrap();
    assert_eq!(chunks, log.decision_ids);
    // `quiver ope` evaluates it, and `quiver data convert` converts it, saying what they
    // left out.
    let converted = scratch("context_reset_converted").join("log.parquet");
    for args in [
        &["ope", "--data", path, "--policy", "random", "--bootstrap", "10"][..],
        &[
            "data",
            "convert",
            "--data",
            path,
            "--to",
            "logged",
            "--out",
            converted.to_str().unwrap(),
        ],
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args(args)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{said}");
        assert!(said.contains("3 decisions of route `r`"), "{args:?}: {said}");
    }
}
