//! Off-policy estimators against exact ground truth: wide data with known outcomes is
//! logged under a known policy, so every candidate's true value on the logged rows is
//! computable, and each estimator can be checked for bias and interval coverage.

#![allow(clippy::unwrap_used)] // a test helper that fails should panic

use ndarray::Array2;
use quiver_bandit::{Context, Objective, PolicySpec};
use quiver_sim::context::ContextBuilder;
use quiver_sim::data::{LoggedDataset, WideDataset};
use quiver_sim::logging::{log_wide, LoggingSettings};
use quiver_sim::ope::{estimate, inputs_for, run_candidate, Dr, Estimator, Ips, Metric, Replay, Sndr, Snips};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ARMS: usize = 4;

/// `rows` requests with one feature; arm `a` succeeds with probability
/// `0.2 + 0.15 a + 0.2 f` (f uniform in [0, 1]), drawn once per table seed.
fn table(rows: usize, seed: u64) -> WideDataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = WideDataset {
        source: "synthetic".into(),
        arms: (0..ARMS).map(|a| format!("a{a}")).collect(),
        feature_names: vec!["f_x".into()],
        features: Array2::zeros((rows, 1)),
        quality: Array2::zeros((rows, ARMS)),
        ..WideDataset::default()
    };
    for r in 0..rows {
        let f: f64 = rng.random();
        data.ids.push(r.to_string());
        data.features[[r, 0]] = f;
        for a in 0..ARMS {
            let p = 0.2 + 0.15 * a as f64 + 0.2 * f;
            data.quality[[r, a]] = if rng.random::<f64>() < p { 1.0 } else { 0.0 };
        }
    }
    data
}

fn logged(data: &WideDataset, logger: &str, seed: u64) -> (LoggedDataset, Vec<Context>) {
    let builder = ContextBuilder::new(false, &[], 1);
    let settings = LoggingSettings {
        spec: logger.parse().unwrap(),
        objective: Objective::default(),
        seed,
        missing_feedback: 0.0,
    };
    let (log, _) = log_wide(data, &builder, &settings).unwrap();
    let contexts = ContextBuilder::log_contexts(&log).unwrap();
    (log, contexts)
}

/// The candidate's true value on the logged rows: its PMF on each row times every arm's
/// true quality there (known from the wide table).
fn truth(data: &WideDataset, log: &LoggedDataset, contexts: &[Context], spec: &PolicySpec, seed: u64) -> f64 {
    let run = run_candidate(log, contexts, spec, Objective::default(), seed, false).unwrap();
    let by_id: std::collections::HashMap<&str, usize> = data
        .ids
        .iter()
        .enumerate()
        .map(|(r, id)| (id.as_str(), r))
        .collect();
    let mut total = 0.0;
    for i in 0..log.rows() {
        let row = by_id[log.decision_ids[i].as_str()];
        for (a, name) in log.arms.iter().enumerate() {
            let table_arm = data.arms.iter().position(|x| x == name).unwrap();
            total += run.pmf[[i, a]] * data.quality(row, table_arm);
        }
    }
    total / log.rows() as f64
}

struct Trial {
    truth: f64,
    values: Vec<(f64, [f64; 2])>,
    accepted: usize,
}

fn trial(logger: &str, target: &str, seed: u64, estimators: &[&dyn Estimator]) -> Trial {
    let data = table(400, 1000 + seed);
    let (log, contexts) = logged(&data, logger, seed);
    let spec: PolicySpec = target.parse().unwrap();
    let run = run_candidate(&log, &contexts, &spec, Objective::default(), seed, false).unwrap();
    let inputs = inputs_for(
        &log,
        &contexts,
        &run,
        Metric::Quality,
        f64::INFINITY,
        f64::INFINITY,
    );
    Trial {
        truth: truth(&data, &log, &contexts, &spec, seed),
        values: estimators
            .iter()
            .map(|e| {
                let r = estimate(*e, &inputs, 0, seed);
                (r.value, r.ci95_analytic.expect("an interval"))
            })
            .collect(),
        accepted: inputs.accepted.iter().filter(|&&a| a).count(),
    }
}

/// Over 200 independent tables and logs, the mean of (estimate - truth) of an unbiased
/// estimator is within 3 standard errors of 0.
#[test]
fn unbiased_estimators_center_on_the_truth() {
    let estimators: [&dyn Estimator; 3] = [&Ips, &Dr, &Replay];
    for (logger, target) in [
        ("random", "fixed(a3)"),
        ("random", "fixed(a0)"),
        ("eps(0.5)", "fixed(a1)"),
    ] {
        let trials: Vec<Trial> = (0..200).map(|s| trial(logger, target, s, &estimators)).collect();
        for (k, e) in estimators.iter().enumerate() {
            // Replay is unbiased only under uniform logging.
            if e.name() == "replay" && logger != "random" {
                continue;
            }
            let errors: Vec<f64> = trials.iter().map(|t| t.values[k].0 - t.truth).collect();
            let n = errors.len() as f64;
            let mean = errors.iter().sum::<f64>() / n;
            let sd = (errors.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            assert!(
                mean.abs() < 3.0 * sd / n.sqrt(),
                "{} logged by {logger}, target {target}: mean error {mean}, se {}",
                e.name(),
                sd / n.sqrt()
            );
        }
    }
}

#[test]
fn snips_and_dr_intervals_cover_the_truth_in_at_least_90_percent_of_200_seeds() {
    let estimators: [&dyn Estimator; 3] = [&Snips, &Dr, &Sndr];
    let trials: Vec<Trial> = (0..200)
        .map(|s| trial("eps(0.3)", "fixed(a2)", s, &estimators))
        .collect();
    for (k, e) in estimators.iter().enumerate() {
        let covered = trials
            .iter()
            .filter(|t| t.values[k].1[0] <= t.truth && t.truth <= t.values[k].1[1])
            .count();
        assert!(covered >= 180, "{}: covered {covered} of 200", e.name());
        // Not by being wide: the mean half-width is 1.96 times the spread of the errors
        // over the seeds, within 25% (that spread, from 200 errors, is itself within about
        // 5% of its truth: 1 / sqrt(2 * 199)).
        let errors: Vec<f64> = trials.iter().map(|t| t.values[k].0 - t.truth).collect();
        let n = errors.len() as f64;
        let mean = errors.iter().sum::<f64>() / n;
        let spread = (errors.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let half_width = trials
            .iter()
            .map(|t| (t.values[k].1[1] - t.values[k].1[0]) / 2.0)
            .sum::<f64>()
            / n;
        let ratio = half_width / (1.959964 * spread);
        assert!((0.75..=1.25).contains(&ratio), "{}: {ratio}", e.name());
    }
}

/// Under uniform logging over K arms, a candidate whose draws are apart from the logger's
/// matches the logged arm on about n/K of the 400 rows of `target`'s trial: Binomial(n,
/// 1/K), so within 4 standard deviations.
fn replay_accepts_about_n_over_k_rows(target: &str) {
    let t = trial("random", target, 7, &[&Replay]);
    let (n, p) = (400.0, 1.0 / ARMS as f64);
    let sd = (n * p * (1.0 - p)).sqrt();
    assert!(
        (t.accepted as f64 - n * p).abs() < 4.0 * sd,
        "{target}: accepted {}",
        t.accepted
    );
}

#[test]
fn replay_accepts_about_n_over_k_rows_under_uniform_logging() {
    replay_accepts_about_n_over_k_rows("fixed(a1)");
}

/// A randomized candidate run with the logger's own seed draws apart from the logger, not
/// alike on the same rows.
#[test]
fn a_candidate_under_the_loggers_seed_draws_apart_from_it() {
    replay_accepts_about_n_over_k_rows("random");
}

/// A randomized candidate draws from a fresh random stream on every row: its own draws are
/// spread over the arms as its PMF says, not repeated.
#[test]
fn a_randomized_candidate_draws_anew_on_every_row() {
    let data = table(400, 5);
    let (log, contexts) = logged(&data, "random", 5);
    let spec: PolicySpec = "random".parse().unwrap();
    let run = run_candidate(&log, &contexts, &spec, Objective::default(), 0, false).unwrap();
    let (n, p) = (400.0, 1.0 / ARMS as f64);
    for arm in 0..ARMS {
        let count = run.sampled.iter().filter(|&&a| a == arm).count() as f64;
        assert!(
            (count - n * p).abs() < 4.0 * (n * p * (1.0 - p)).sqrt(),
            "arm {arm}: {count}"
        );
    }
}

/// A failed call without a score counts as quality 0, as the learner credits it.
#[test]
fn failed_calls_count_as_quality_zero() {
    let data = table(40, 6);
    let (mut log, contexts) = logged(&data, "random", 6);
    log.quality[0] = None;
    log.error[0] = true;
    log.quality[1] = None;
    let spec: PolicySpec = "random".parse().unwrap();
    let run = run_candidate(&log, &contexts, &spec, Objective::default(), 0, false).unwrap();
    let inputs = inputs_for(
        &log,
        &contexts,
        &run,
        Metric::Quality,
        f64::INFINITY,
        f64::INFINITY,
    );
    assert_eq!(
        inputs.rows(),
        39,
        "the unscored success is skipped, the failure kept"
    );
    assert_eq!(inputs.reward[0], 0.0);
}

/// A table without prompts is logged on its task one-hot, and the log carries it as caller
/// features: read back from its file, the log's contexts are the ones its logger decided on.
#[test]
fn a_log_of_a_table_without_prompts_keeps_its_loggers_contexts() {
    let mut data = table(60, 4);
    data.tasks = Some(
        (0..60)
            .map(|r| ["code", "chat", "math"][r % 3].to_string())
            .collect(),
    );
    let tasks = data.tasks.clone().unwrap();
    let builder = ContextBuilder::new(false, &tasks, 1);
    let settings = LoggingSettings {
        spec: "eps(0.3)".parse().unwrap(),
        objective: Objective::default(),
        seed: 2,
        missing_feedback: 0.0,
    };
    let (log, order) = log_wide(&data, &builder, &settings).unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("log_task_one_hot");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("log.csv");
    quiver_sim::write::write_logged(&log, &path).unwrap();
    let read = quiver_sim::data::load_logged(path.to_str().unwrap(), quiver_sim::data::Format::Logged, None)
        .unwrap();
    assert_eq!(
        read.feature_names,
        ["f_task_chat", "f_task_code", "f_task_math", "f_x"]
    );
    let contexts = ContextBuilder::log_contexts(&read).unwrap();
    for (i, &row) in order.iter().enumerate() {
        assert_eq!(
            contexts[i].features,
            builder.wide_row(&data, row).unwrap().features,
            "row {row}"
        );
    }
}
