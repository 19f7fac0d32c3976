//! `quiver ope`.

use anyhow::{bail, Result};
use clap::Args;
use quiver_bandit::{Context, Objective, PolicySpec};
use quiver_sim::context::ContextBuilder;
use quiver_sim::data::{load_logged, Format, LoggedDataset, Split};
use quiver_sim::ope::{
    all_estimators, estimator_by_name, inputs_for, report_metric, run_candidate, Estimator, Metric,
    MetricReport,
};
use serde::Serialize;

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct OpeArgs {
    /// The decision log: a file, a directory or a quoted glob.
    #[arg(long)]
    data: String,
    /// The candidate policy spec.
    #[arg(long)]
    policy: String,
    /// Data format.
    #[arg(long, default_value = "auto")]
    format: String,
    /// Keep only rows whose COLUMN equals VALUE.
    #[arg(long, value_name = "COLUMN=VALUE")]
    split: Option<String>,
    /// Comma-separated estimators (default: all of replay, ips, snips, dm, dr, sndr, switch-dr).
    #[arg(long)]
    estimators: Option<String>,
    /// Cost weight of the value, quality points per USD.
    #[arg(long, default_value_t = 0.0)]
    w_cost: f64,
    /// Latency weight of the value, quality points per second.
    #[arg(long, default_value_t = 0.0)]
    w_latency: f64,
    /// Largest importance weight for IPS, SNIPS, DR and SNDR.
    #[arg(long, default_value_t = f64::INFINITY)]
    clip: f64,
    /// Switch-DR's weight threshold.
    #[arg(long, default_value_t = 100.0)]
    switch_tau: f64,
    /// Bootstrap resamples for the percentile intervals (0: analytic only).
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Seed of the candidate's draws and of the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate the candidate as it starts, without learning along the log.
    #[arg(long)]
    frozen: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
pub struct OpeSummary {
    pub dataset: String,
    pub rows: usize,
    pub arms: Vec<String>,
    pub policy: String,
    pub learning: bool,
    pub metrics: Vec<MetricReport>,
}

/// Estimator settings shared with `quiver replay` on logs.
pub struct EstimatorSettings {
    /// Largest importance weight.
    pub clip: f64,
    /// Switch-DR threshold.
    pub switch_tau: f64,
    /// Bootstrap resamples.
    pub bootstrap: usize,
    /// Seed.
    pub seed: u64,
}

impl From<&OpeArgs> for EstimatorSettings {
    fn from(a: &OpeArgs) -> Self {
        EstimatorSettings {
            clip: a.clip,
            switch_tau: a.switch_tau,
            bootstrap: a.bootstrap,
            seed: a.seed,
        }
    }
}

/// Every metric's estimates of `spec` on `log`.
pub fn evaluate(
    log: &LoggedDataset,
    contexts: &[Context],
    spec: &PolicySpec,
    objective: Objective,
    estimators: &[Box<dyn Estimator>],
    settings: impl Into<EstimatorSettings>,
    learn: bool,
) -> Result<OpeSummary> {
    let settings = settings.into();
    let candidate = run_candidate(log, contexts, spec, objective, settings.seed, learn)?;
    let metrics = [Metric::Reward(objective), Metric::Quality, Metric::Cost]
        .into_iter()
        .map(|m| {
            let inputs = inputs_for(log, contexts, &candidate, m, settings.clip, settings.switch_tau);
            report_metric(&inputs, m, estimators, settings.bootstrap, settings.seed)
        })
        .collect();
    Ok(OpeSummary {
        dataset: log.source.clone(),
        rows: log.rows(),
        arms: log.arms.clone(),
        policy: spec.to_string(),
        learning: learn,
        metrics,
    })
}

pub fn run(args: OpeArgs) -> Result<()> {
    let format: Format = args.format.parse()?;
    let split: Option<Split> = args.split.as_deref().map(str::parse).transpose()?;
    let log = load_logged(&args.data, format, split.as_ref())?;
    let spec: PolicySpec = args.policy.parse()?;
    let objective = Objective::new(args.w_cost, args.w_latency)?;
    if args.clip.is_nan() || args.clip <= 0.0 {
        bail!("--clip must be positive");
    }
    if !args.switch_tau.is_finite() || args.switch_tau <= 0.0 {
        bail!("--switch-tau must be a positive number");
    }
    if log.rows() == 0 {
        bail!("{}: no decisions to evaluate (check --split)", args.data);
    }
    let estimators: Vec<Box<dyn Estimator>> = match &args.estimators {
        None => all_estimators(),
        Some(list) => list
            .split(',')
            .map(|name| {
                estimator_by_name(name).ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown estimator `{name}`; use replay, ips, snips, dm, dr, sndr, switch-dr"
                    )
                })
            })
            .collect::<Result<_>>()?,
    };
    let contexts = ContextBuilder::log_contexts(&log)?;
    let summary = evaluate(
        &log,
        &contexts,
        &spec,
        objective,
        &estimators,
        &args,
        !args.frozen,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "{}: {} decisions, {} arms; candidate {} ({})",
        summary.dataset,
        summary.rows,
        summary.arms.len(),
        summary.policy,
        if summary.learning {
            "learning along the log"
        } else {
            "frozen"
        }
    );
    for m in &summary.metrics {
        let w = &m.weights;
        println!(
            "\n{} over {} rows: mean weight {:.3}, max weight {:.1}, ESS {:.0}, clipped {:.1}%, replay accepted {}",
            m.metric,
            m.rows,
            w.mean_weight,
            w.max_weight,
            w.effective_sample_size,
            100.0 * w.clipped_share,
            w.replay_accepted
        );
        println!(
            "{:<10} {:>12} {:>27} {:>27}",
            "estimator", "value", "95% CI (analytic)", "95% CI (bootstrap)"
        );
        for e in &m.estimates {
            let boot = e
                .ci95_bootstrap
                .map_or("-".to_string(), |b| format!("[{:.6}, {:.6}]", b[0], b[1]));
            println!(
                "{:<10} {:>12.6} {:>27} {:>27}",
                e.estimator,
                e.value,
                format!("[{:.6}, {:.6}]", e.ci95_analytic[0], e.ci95_analytic[1]),
                boot
            );
        }
    }
    Ok(())
}
