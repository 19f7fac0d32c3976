//! Off-policy evaluation of a log read a chunk at a time equals the evaluation of the log
//! held whole, for any chunk size and file format, and a log's later records complete
//! their decisions wherever they fall.

#![allow(clippy::unwrap_used)] // a test that fails should panic

use std::path::{Path, PathBuf};

use quiver_bandit::{Objective, PolicySpec};
use quiver_sim::context::ContextBuilder;
use quiver_sim::data::{load_logged, Format, LogStream, LoggedDataset, Split};
use quiver_sim::logging::{log_wide, LoggingSettings};
use quiver_sim::ope::{
    all_estimators, evaluate, inputs_for, report_metric, run_candidate, EstimatorSettings, Metric,
    MetricReport,
};
use quiver_sim::scenario::Scenario;
use quiver_sim::write::write_logged;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The built-in scenario's test rows logged by epsilon-greedy, a fifth of the qualities
/// missing.
fn scenario_log() -> LoggedDataset {
    let scenario = Scenario::builtin().unwrap();
    let (test, _) = scenario.test_and_train();
    let builder = ContextBuilder::new(true, &[], test.feature_names.len());
    let settings = LoggingSettings {
        spec: "eps(0.2)".parse().unwrap(),
        objective: scenario.objective().unwrap(),
        seed: 3,
        missing_feedback: 0.2,
    };
    log_wide(&test, &builder, &settings).unwrap().0
}

fn settings() -> EstimatorSettings {
    EstimatorSettings::new(20.0, 100.0, 200, 5).unwrap()
}

fn objective() -> Objective {
    Objective::new(100.0, 0.0).unwrap()
}

/// Every metric's report of `spec` on the log at `path`, read whole.
fn whole(path: &Path, spec: &PolicySpec, split: Option<&Split>) -> Vec<MetricReport> {
    let log = load_logged(path.to_str().unwrap(), Format::Auto, split).unwrap();
    let contexts = ContextBuilder::log_contexts(&log).unwrap();
    let run = run_candidate(&log, &contexts, spec, objective(), 5, true).unwrap();
    let estimators = all_estimators();
    [Metric::Reward(objective()), Metric::Quality, Metric::Cost]
        .into_iter()
        .map(|m| {
            let inputs = inputs_for(&log, &contexts, &run, m, 20.0, 100.0);
            report_metric(&inputs, m, &estimators, 200, 5)
        })
        .collect()
}

fn streamed(
    path: &Path,
    spec: &PolicySpec,
    split: Option<&Split>,
    chunk_rows: usize,
) -> (usize, Vec<MetricReport>) {
    let mut log = LogStream::open(path.to_str().unwrap(), Format::Auto, split, chunk_rows).unwrap();
    let summary = evaluate(&mut log, spec, objective(), &all_estimators(), settings(), true).unwrap();
    (summary.rows, summary.metrics)
}

/// The same reports, to the bit: the same sums in the same order, whatever the chunks.
fn assert_same(streamed: &[MetricReport], whole: &[MetricReport], what: &str) {
    assert_eq!(streamed.len(), whole.len());
    for (s, w) in streamed.iter().zip(whole) {
        assert_eq!(s.metric, w.metric);
        assert_eq!(s.rows, w.rows, "{what}: {}", s.metric);
        assert_eq!(s.weights, w.weights, "{what}: {}", s.metric);
        for (a, b) in s.estimates.iter().zip(&w.estimates) {
            let at = format!("{what}: {} by {}", s.metric, a.estimator);
            assert_eq!(a.estimator, b.estimator);
            assert_eq!(a.value.to_bits(), b.value.to_bits(), "{at}");
            assert_eq!(a.ci95_bootstrap, b.ci95_bootstrap, "{at}");
            assert_eq!(a.std_error.to_bits(), b.std_error.to_bits(), "{at}");
        }
    }
}

#[test]
fn a_log_read_in_chunks_is_evaluated_as_the_whole_log() {
    let log = scenario_log();
    assert!(log.rows() > 1000, "{} rows", log.rows());
    let dir = scratch("ope_stream_chunks");
    let spec: PolicySpec = "linucb(alpha=0.3)".parse().unwrap();
    for file in ["log.jsonl", "log.parquet"] {
        let path = dir.join(file);
        write_logged(&log, &path).unwrap();
        let expected = whole(&path, &spec, None);
        // Chunks smaller than a bootstrap block, not dividing it, and larger than the log.
        for chunk_rows in [7, 1000, 4096, 1 << 16] {
            let (rows, reports) = streamed(&path, &spec, None, chunk_rows);
            assert_eq!(rows, log.rows());
            assert_same(&reports, &expected, &format!("{file} in chunks of {chunk_rows}"));
        }
    }
}

/// Writes `log` as a server writes it: a decision record when the decision is made, its
/// outcome two decisions later, and its quality (where it came) five decisions later, so
/// that chunks cut between a decision and its later records.
fn write_server_log(log: &LoggedDataset, path: &Path) {
    let record = |i: usize, event: &str| {
        let mut r = serde_json::json!({
            "schema": 2,
            "event": event,
            "decision_id": format!("chat:{i}"),
            "timestamp": "2026-12-01T00:00:00Z",
            "route": if i.is_multiple_of(3) { "code" } else { "chat" },
            "policy": "eps(0.2)",
            "arm": "",
            "propensity": 1.0,
            "quality": null,
            "cost_usd": 0.0,
            "latency_ms": 0.0,
            "error": false,
            "prompt": "",
            "input_tokens": 0,
            "output_tokens": 0,
            "seq": 0,
        });
        match event {
            "decision" => {
                r["arm"] = log.arms[log.arm[i]].clone().into();
                r["propensity"] = log.propensity[i].into();
                r["prompt"] = log.prompts.as_ref().unwrap()[i].clone().into();
                for (j, name) in log.feature_names.iter().enumerate() {
                    r[name] = log.features[[i, j]].into();
                }
                // Empty lists, as a writer that does not leave them out writes them.
                r["unavailable"] = serde_json::json!([]);
                r["admitted"] = serde_json::json!([]);
            }
            "outcome" => {
                r["cost_usd"] = log.cost_usd[i].into();
                r["latency_ms"] = log.latency_ms[i].into();
                r["error"] = log.error[i].into();
            }
            _ => r["quality"] = log.quality[i].into(),
        }
        r.to_string()
    };
    let mut lines = Vec::new();
    let n = log.rows();
    for step in 0..n + 5 {
        if step < n {
            lines.push(record(step, "decision"));
        }
        if let Some(i) = step.checked_sub(2).filter(|&i| i < n) {
            lines.push(record(i, "outcome"));
        }
        if let Some(i) = step.checked_sub(5).filter(|&i| i < n && log.quality[i].is_some()) {
            lines.push(record(i, "feedback"));
        }
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn a_server_log_is_evaluated_as_its_merged_rows_in_any_chunks() {
    let log = scenario_log();
    let dir = scratch("ope_stream_events");
    let (merged, events) = (dir.join("merged.jsonl"), dir.join("events.jsonl"));
    write_logged(&log, &merged).unwrap();
    write_server_log(&log, &events);
    // Read whole, the events merge into the rows the merged file holds.
    let read = load_logged(events.to_str().unwrap(), Format::Auto, None).unwrap();
    let direct = load_logged(merged.to_str().unwrap(), Format::Auto, None).unwrap();
    assert_eq!(read.rows(), log.rows());
    assert_eq!(
        (&read.arm, &read.quality, &read.cost_usd),
        (&direct.arm, &direct.quality, &direct.cost_usd)
    );
    assert_eq!(
        (&read.latency_ms, &read.error),
        (&direct.latency_ms, &direct.error)
    );

    let spec: PolicySpec = "lints(v=0.1,draws=32)".parse().unwrap();
    let expected = whole(&merged, &spec, None);
    for chunk_rows in [5, 999] {
        let (rows, reports) = streamed(&events, &spec, None, chunk_rows);
        assert_eq!(rows, log.rows());
        assert_same(
            &reports,
            &expected,
            &format!("server log in chunks of {chunk_rows}"),
        );
    }
    // A split keeps the decisions, and their later records, of one route.
    let split: Split = "route=code".parse().unwrap();
    let (rows, reports) = streamed(&events, &spec, Some(&split), 64);
    assert_eq!(rows, log.rows().div_ceil(3));
    assert_same(&reports, &whole(&events, &spec, Some(&split)), "one route");
}

#[test]
fn a_record_for_a_decision_the_log_lacks_is_refused_with_its_place() {
    let log = scenario_log();
    let dir = scratch("ope_stream_orphan");
    let path = dir.join("events.jsonl");
    write_server_log(&log, &path);
    let mut text = std::fs::read_to_string(&path).unwrap();
    let lines = text.lines().count();
    text.push_str(
        &text
            .lines()
            .find(|l| l.contains("\"outcome\""))
            .unwrap()
            .replace("chat:", "chat:x"),
    );
    text.push('\n');
    std::fs::write(&path, text).unwrap();
    let expected = format!("{}: row {}, column `decision_id`", path.display(), lines + 1);
    for error in [
        LogStream::open(path.to_str().unwrap(), Format::Auto, None, 100)
            .and_then(|mut s| s.for_each_chunk(|_| Ok(())))
            .unwrap_err(),
        load_logged(path.to_str().unwrap(), Format::Auto, None).unwrap_err(),
    ] {
        let message = error.to_string();
        assert!(message.contains(&expected), "{message}");
        assert!(message.contains("a decision the log does not hold"), "{message}");
    }
}

/// Rows split over chunks that cut the bootstrap's batches anywhere: the same estimate.
#[test]
fn an_estimate_over_chunks_equals_one_over_all_rows() {
    use quiver_sim::ope::{estimate, EstimateStream, OpeInputs, Sndr};
    let rows = 70_001;
    let at = |i: usize, k: usize| ((i * 7919 + k * 104_729) % 1009) as f64 / 1009.0;
    let inputs = |range: std::ops::Range<usize>| OpeInputs {
        reward: range.clone().map(|i| at(i, 0)).collect(),
        propensity: range.clone().map(|i| 0.05 + 0.9 * at(i, 1)).collect(),
        target: range.clone().map(|i| at(i, 2)).collect(),
        q_logged: range.clone().map(|i| at(i, 3)).collect(),
        dm: range.clone().map(|i| at(i, 4)).collect(),
        accepted: range.map(|i| i % 3 == 0).collect(),
        clip: 10.0,
        switch_tau: 100.0,
    };
    let whole = estimate(&Sndr, &inputs(0..rows), 50, 9);
    let mut stream = EstimateStream::new(&Sndr, 50, 9);
    for start in (0..rows).step_by(33_333) {
        stream.add(&inputs(start..(start + 33_333).min(rows)));
    }
    let chunked = stream.finish();
    assert_eq!(chunked.value.to_bits(), whole.value.to_bits());
    assert_eq!(chunked.ci95_bootstrap, whole.ci95_bootstrap);
    assert!((chunked.std_error - whole.std_error).abs() <= 1e-12 * whole.std_error);
    assert!(whole.ci95_bootstrap.unwrap()[0] < whole.value && whole.value < whole.ci95_bootstrap.unwrap()[1]);
}

/// Priors fitted from a log read in small chunks equal those from one chunk, and each
/// model's rows are the decisions that chose it and got a quality.
#[test]
fn priors_from_a_log_do_not_depend_on_the_chunks() {
    use quiver_sim::priors::fit_logged;
    let log = scenario_log();
    let dir = scratch("ope_stream_priors");
    let path = dir.join("events.jsonl");
    write_server_log(&log, &path);
    let fit = |chunk_rows| {
        let mut stream = LogStream::open(path.to_str().unwrap(), Format::Auto, None, chunk_rows).unwrap();
        fit_logged(&mut stream, 500.0).unwrap()
    };
    let (small, whole) = (fit(7), fit(1 << 16));
    assert_eq!(small, whole);
    for (arm, prior) in &whole.arms {
        let chose = (0..log.rows())
            .filter(|&i| log.arms[log.arm[i]] == *arm && log.quality[i].is_some())
            .count();
        assert_eq!(prior.rows, chose as f64, "{arm}");
    }
}

/// A log evaluated while a server appends to it, or while it is compacted, evaluates as
/// it was when opened: every pass reads the same records.
#[test]
fn a_log_that_grows_or_is_compacted_while_read_reads_as_when_opened() {
    let log = scenario_log();
    let dir = scratch("ope_stream_live");
    let one_file = dir.join("events.jsonl");
    write_server_log(&log, &one_file);
    // Two segments: the first closed, the second open (the server appends to it).
    let text = std::fs::read_to_string(&one_file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let half = lines.len() / 2;
    let segments = dir.join("log");
    std::fs::create_dir_all(&segments).unwrap();
    let (first, open) = (
        segments.join("decisions-00000000000000000001.jsonl"),
        segments.join(format!("decisions-{:020}.jsonl", half + 1)),
    );
    std::fs::write(&first, lines[..half].join("\n") + "\n").unwrap();
    std::fs::write(&open, lines[half..].join("\n") + "\n").unwrap();
    let spec: PolicySpec = "eps(0.1)".parse().unwrap();
    let expected = whole(&one_file, &spec, None);
    let evaluate_while = |change: &dyn Fn()| {
        let mut stream = LogStream::open(segments.to_str().unwrap(), Format::Auto, None, 500).unwrap();
        change();
        let summary = evaluate(
            &mut stream,
            &spec,
            objective(),
            &all_estimators(),
            settings(),
            true,
        )
        .unwrap();
        assert_eq!(summary.rows, log.rows());
        summary.metrics
    };
    // New decisions, and the outcome of one already read, appended after opening.
    let appended = evaluate_while(&|| {
        let more: String = lines[..40]
            .iter()
            .map(|l| l.replace("chat:", "late:") + "\n")
            .collect();
        let outcome = lines
            .iter()
            .find(|l| l.contains("\"outcome\""))
            .unwrap()
            .replace("\"cost_usd\":", "\"cost_usd\":1,\"x\":");
        let mut file = std::fs::OpenOptions::new().append(true).open(&open).unwrap();
        std::io::Write::write_all(&mut file, (more + &outcome + "\n").as_bytes()).unwrap();
    });
    assert_same(&appended, &expected, "appended to");
    // The closed segment compacted between the passes.
    std::fs::write(&open, lines[half..].join("\n") + "\n").unwrap();
    let compacted = evaluate_while(&|| {
        assert_eq!(quiver_log::compact(&segments).unwrap().segments, 1);
    });
    assert!(!first.exists());
    assert_same(&compacted, &expected, "compacted");
}

/// A field whose values change kind is refused, naming the row, whether the log is read
/// whole or in chunks, wherever the chunks cut: a chunk of booleans after a chunk of
/// numbers was once read as numbers, so that a propensity of `true` weighed as 1.
#[test]
fn a_field_changing_kind_is_refused_wherever_the_chunks_cut() {
    let log = scenario_log();
    let dir = scratch("ope_stream_kinds");
    let path = dir.join("log.jsonl");
    write_logged(&log, &path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let mut record: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(record["propensity"].is_number(), "{record}");
            if (14..21).contains(&i) {
                record["propensity"] = serde_json::Value::Bool(true);
            }
            record.to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let expected = "row 15, field `propensity`: `true` is a boolean where row 1 has a number";
    let whole = load_logged(path.to_str().unwrap(), Format::Auto, None).unwrap_err();
    assert!(whole.to_string().ends_with(expected), "{whole}");
    let spec: PolicySpec = "linucb(alpha=0.3)".parse().unwrap();
    // Booleans alone in a chunk, beside numbers in one, and in the first chunk's.
    for chunk_rows in [7, 14, 1000] {
        let streamed = LogStream::open(path.to_str().unwrap(), Format::Auto, None, chunk_rows)
            .and_then(|mut log| evaluate(&mut log, &spec, objective(), &all_estimators(), settings(), true));
        let error = streamed
            .err()
            .unwrap_or_else(|| panic!("read in chunks of {chunk_rows}"));
        assert!(error.to_string().ends_with(expected), "{chunk_rows}: {error}");
    }
}
