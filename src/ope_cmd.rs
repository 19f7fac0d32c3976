//! `quiver ope`.

use anyhow::{bail, Result};
use clap::Args;
use quiver_bandit::{Objective, PolicySpec};
use quiver_sim::data::{detect_format, load, Dataset, Format, Split};
use quiver_sim::ope::{all_estimators, estimator_by_name, evaluate, Estimator, EstimatorSettings};

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
    format: Format,
    /// Keep only rows whose COLUMN equals VALUE.
    #[arg(long, value_name = "COLUMN=VALUE")]
    split: Option<Split>,
    /// Comma-separated estimators (default: all of replay, ips, snips, dm, dr, sndr, switch-dr).
    #[arg(long, value_parser = estimators_arg)]
    estimators: Option<EstimatorNames>,
    /// Cost weight of the value, quality points per USD [default: 0] (a log records a
    /// request's own weights, not its route's: give the route's `w_cost`).
    #[arg(long, value_parser = crate::w_cost_arg)]
    w_cost: Option<f64>,
    /// Latency weight of the value, quality points per second [default: 0].
    #[arg(long, value_parser = crate::w_latency_arg)]
    w_latency: Option<f64>,
    /// Largest importance weight for IPS, SNIPS, DR and SNDR.
    #[arg(long, default_value_t = f64::INFINITY, value_parser = |t: &str| crate::checked_number(t, EstimatorSettings::check_clip))]
    clip: f64,
    /// Switch-DR's weight threshold.
    #[arg(long, default_value_t = 100.0, value_parser = |t: &str| crate::checked_number(t, EstimatorSettings::check_switch_tau))]
    switch_tau: f64,
    /// Bootstrap resamples for the percentile intervals (0: analytic only).
    #[arg(long, default_value_t = 1000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=100_000))]
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

/// `--estimators`: known names, each once, in the order first named.
#[derive(Clone)]
struct EstimatorNames(Vec<&'static str>);

fn estimators_arg(list: &str) -> std::result::Result<EstimatorNames, String> {
    let mut names = Vec::new();
    for name in list.split(',') {
        let estimator = estimator_by_name(name).ok_or_else(|| {
            format!("unknown estimator `{name}`; use replay, ips, snips, dm, dr, sndr, switch-dr")
        })?;
        if !names.contains(&estimator.name()) {
            names.push(estimator.name());
        }
    }
    Ok(EstimatorNames(names))
}

pub fn run(args: OpeArgs) -> Result<()> {
    let converted;
    // Detected from the first file's columns, another system's log is converted below; a
    // native log keeps auto, whose reader says what a table that is no log lacks.
    let format = match args.format {
        Format::Auto => match detect_format(&args.data, Format::Auto) {
            Ok(Format::Logged) | Err(_) => Format::Auto,
            Ok(detected) => detected,
        },
        given => given,
    };
    let mut log = match format {
        Format::Auto | Format::Logged => crate::open_log(&args.data, format, args.split.as_ref())?,
        // Another system's log (the Open Bandit Dataset's) is read whole and streamed as a
        // logged table from a file of its own, which goes when the command ends.
        other => {
            let Dataset::Logged(read) = load(&args.data, other, args.split.as_ref())? else {
                bail!(
                    "{}: format {other} is not a log; `quiver replay` evaluates full-information tables",
                    args.data
                );
            };
            converted = Converted::new()?;
            quiver_sim::write::write_logged(&read, &converted.0)?;
            crate::open_log(&converted.0.display().to_string(), Format::Logged, None)?
        }
    };
    let spec: PolicySpec = args.policy.parse()?;
    if args.w_cost.is_none() && args.w_latency.is_none() {
        eprintln!(
            "note: the value is quality alone (no --w-cost or --w-latency): a log does not record \
             its route's weights, so give the route's `w_cost` and `w_latency` to estimate the \
             value it routes for"
        );
    }
    let objective = Objective::new(args.w_cost.unwrap_or(0.0), args.w_latency.unwrap_or(0.0))?;
    for note in log
        .header()
        .unrecorded_notes(&args.data, objective.w_cost, objective.w_latency)
    {
        tracing::warn!("{note}");
    }
    let settings = EstimatorSettings::new(args.clip, args.switch_tau, args.bootstrap, args.seed)?;
    if log.rows() == 0 {
        bail!("{}: no decisions to evaluate (check --split)", args.data);
    }
    let estimators: Vec<Box<dyn Estimator>> = match &args.estimators {
        None => all_estimators(),
        Some(EstimatorNames(names)) => names.iter().filter_map(|name| estimator_by_name(name)).collect(),
    };
    let mut summary = evaluate(&mut log, &spec, objective, &estimators, settings, !args.frozen)?;
    summary.dataset.clone_from(&args.data);
    if summary
        .metrics
        .iter()
        .any(|m| m.metric == "quality" && m.rows == 0)
    {
        eprintln!(
            "note: {}: none of its {} decisions has a quality (a `quality` column, or feedback records); \
             value and quality are undefined (NaN, null in JSON), cost is estimated on the \
             decisions whose outcome came",
            args.data, summary.rows
        );
    }
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
        let interval = |i: Option<[f64; 2]>| match i {
            None => "-".to_string(),
            Some([lo, hi]) if lo.is_nan() || hi.is_nan() => "n/a".to_string(),
            Some([lo, hi]) => format!("[{lo:.6}, {hi:.6}]"),
        };
        for e in &m.estimates {
            println!(
                "{:<10} {:>12.6} {:>27} {:>27}",
                e.estimator,
                e.value,
                interval(e.ci95_analytic),
                interval(e.ci95_bootstrap)
            );
        }
    }
    let without = summary
        .metrics
        .iter()
        .flat_map(|m| &m.estimates)
        .find(|e| e.ci95_analytic.is_none());
    if let Some(e) = without {
        println!(
            "\n{}: no interval: its error is its reward model's bias, which resampling the rows \
             does not measure; dr corrects that model with the logged rewards",
            e.estimator
        );
    }
    let unmeasured = summary
        .metrics
        .iter()
        .flat_map(|m| &m.estimates)
        .any(|e| e.ci95_analytic.is_some() && e.std_error.is_nan());
    if unmeasured {
        println!(
            "\nn/a: fewer than two rows move the estimate (of a ratio, rows where the candidate's \
             weight is not 0): no interval can say how far it is from the truth"
        );
    }
    Ok(())
}

/// A log converted for streaming, removed when dropped.
struct Converted(std::path::PathBuf);

impl Converted {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let name = format!("quiver-ope-{}-{nanos}.parquet", std::process::id());
        Ok(Converted(std::env::temp_dir().join(name)))
    }
}

impl Drop for Converted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
