//! `quiver replay`.

use std::path::PathBuf;
use std::sync::LazyLock;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use quiver_bandit::prior::{check_cap, DEFAULT_PRIOR_CAP};
use quiver_bandit::{Objective, PolicySpec, Priors, DEFAULT_LEARNERS, DEFAULT_PACING_STEP};
use quiver_sim::context::{task_in_context, ContextBuilder};
use quiver_sim::data::prices::read_list_prices;
use quiver_sim::data::{detect_format, load_wide, Format, LogStream, Split, WideDataset};
use quiver_sim::embeddings::{default_cache_dir, PromptEmbeddings};
use quiver_sim::ope::{estimator_by_name, evaluate, Estimator, EstimatorSettings};
use quiver_sim::priors::{fit_wide, TrainFeedback};

use quiver_sim::replay::{
    replay, replay_cascades, Cascade, Drift, Environment, Knobs, LatencyModel, ReplaySettings, Variant,
};
use quiver_sim::report::{summarize, summarize_cascades, table, usd};
use quiver_sim::scenario::Scenario;

use crate::parse_specs;
use crate::progress::bar;

/// Policies replayed when `--policies` is not given: the non-contextual baselines, then
/// the suite's learners ([`DEFAULT_LEARNERS`]).
pub static DEFAULT_POLICIES: LazyLock<String> = LazyLock::new(|| {
    ["random", "eps(0.05)", "ucb1", "beta-ts", "gaussian-ts"]
        .into_iter()
        .chain(DEFAULT_LEARNERS)
        .collect::<Vec<_>>()
        .join(",")
});

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct ReplayArgs {
    /// Data to evaluate on: a file, a directory or a quoted glob (default: the built-in
    /// scenario's test split).
    #[arg(long)]
    data: Option<String>,
    /// Learn on this data first, then evaluate on --data (see --train-feedback).
    #[arg(long)]
    train: Option<String>,
    /// How --train teaches the learners: `full` fits priors from every model's outcome on
    /// every row (an offline evaluation table, as `quiver priors fit` does); `bandit`
    /// replays it under bandit feedback (--train-passes, --explore-passes), as a log of
    /// the policy's own traffic would.
    #[arg(long, default_value = "full")]
    train_feedback: TrainFeedback,
    /// A table counts as at most this many observations per model when fitting priors.
    #[arg(long, default_value_t = DEFAULT_PRIOR_CAP)]
    prior_cap: f64,
    /// Start every learner from this priors file (written by `quiver priors fit`).
    #[arg(long)]
    priors: Option<PathBuf>,
    /// Models' list prices in LiteLLM's registry format (its
    /// `model_prices_and_context_window.json`, or a file of the same shape; RouterArena's
    /// per-million `model_cost.json` is read too): a priced model
    /// is expected to cost its prices from its first request, as on a route configured
    /// with them. Replaces the prices a table carries.
    #[arg(long)]
    prices: Option<PathBuf>,
    /// Data format.
    #[arg(long, default_value = "auto", requires = "data")]
    format: Format,
    /// Comma-separated policy specs, e.g. `linucb(alpha=0.3,gamma=0.999),eps(0.05),fixed(gpt-4o)`.
    #[arg(long, default_value = DEFAULT_POLICIES.as_str())]
    policies: String,
    /// A cascade to replay beside the policies (repeatable): call FIRST, check its answer,
    /// call THEN when the check fails. The check passes an answer of quality at least
    /// `pass` and misjudges with probability `check_error`.
    #[arg(long, value_name = "first=MODEL,then=MODEL[,pass=0.5][,check_error=0]", value_parser = cascade_arg)]
    cascade: Vec<Cascade>,
    /// Seeds; each shuffles the request order.
    #[arg(long, default_value_t = DEFAULT_SEEDS, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    seeds: u64,
    /// Keep only rows whose COLUMN equals VALUE (of --data, and of --train unless --train-split).
    #[arg(long, value_name = "COLUMN=VALUE", requires = "data")]
    split: Option<Split>,
    /// Row filter of --train.
    #[arg(long, value_name = "COLUMN=VALUE", requires = "train")]
    train_split: Option<Split>,
    /// Evaluate on this share of --data's rows, drawn at random (see --holdout-seed), after
    /// training on the rest as --train would (`0.3`: train on 70%, evaluate on 30%).
    #[arg(long, value_parser = holdout_share, requires = "data", conflicts_with_all = ["train", "train_split"])]
    holdout: Option<f64>,
    /// The seed of --holdout's draw: the same rows for every policy and every --seeds.
    #[arg(long, default_value_t = 0, requires = "holdout")]
    holdout_seed: u64,
    /// Budget: target mean spend per request in USD (paced by the learner), or `P%` of the
    /// best model's mean cost per request on the training rows, as in the validation suite
    /// (on the evaluated rows when there are none).
    #[arg(long, value_parser = budget_arg)]
    budget: Option<Budget>,
    /// Initial step size of the budget pacer's dual update (it shrinks as costs are
    /// observed).
    #[arg(long, default_value_t = DEFAULT_PACING_STEP, value_parser = pacer_step)]
    pacer_step: f64,
    /// Cost weight: quality points per USD.
    #[arg(long, value_parser = crate::w_cost_arg)]
    w_cost: Option<f64>,
    /// Latency weight: quality points per second.
    #[arg(long, value_parser = crate::w_latency_arg)]
    w_latency: Option<f64>,
    /// Replay each policy at N settings: `budget=A..B:N` (in USD, or both ends in % as
    /// --budget takes them) or `w-cost=A..B:N`.
    #[arg(long, value_parser = parse_sweep)]
    sweep: Option<Sweep>,
    /// Decisions made after a request before its quality arrives (0: before the next one).
    #[arg(long, default_value_t = 0)]
    feedback_delay: usize,
    /// Share of decisions whose quality never arrives.
    #[arg(long, default_value_t = 0.0, value_parser = crate::missing_feedback_arg)]
    missing_feedback: f64,
    /// Shift an arm's quality from an evaluation step on: `ARM@STEP:DELTA`.
    #[arg(long, value_parser = parse_drift)]
    drift: Option<Drift>,
    /// Latency where the table has none: `MEDIAN_MS[,SIGMA]` for every arm.
    #[arg(long, value_parser = parse_latency)]
    latency_model: Option<(f64, f64)>,
    /// Evaluate without learning (after --train).
    #[arg(long, alias = "freeze")]
    frozen: bool,
    /// Skip the full-information reference: each policy replayed again, shown every
    /// model's outcome after each decision (`full_gap`; it doubles the replay's work).
    #[arg(long)]
    no_full_information: bool,
    /// Passes over --train, under --train-feedback bandit.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    train_passes: usize,
    /// The first N passes over --train draw models uniformly at random, and the learner
    /// learns from what they reveal (an exploration phase); the rest follow the policy.
    #[arg(long, default_value_t = 0)]
    explore_passes: usize,
    /// Give the learner each row's task label (one-hot) as caller features. A server never
    /// derives a task: use this only when your requests will send it in `features`.
    /// Tables without prompts always use it, as it is their only context.
    #[arg(long)]
    task_feature: bool,
    /// Append each prompt's sentence embedding to the context, as a route with
    /// `[routes.embedding]` does: `minilm` is the bundled MiniLM-L3 encoder (a build with
    /// the `minilm` feature). Embeddings are computed once per table and cached.
    #[arg(long, value_enum)]
    embedding: Option<EmbeddingSource>,
    /// Coordinates of the embedding block (a route's `embedding.dims`).
    #[arg(long, default_value_t = 32, requires = "embedding")]
    embedding_dims: usize,
    /// Directory of the embeddings cache (default: `$XDG_CACHE_HOME/quiver/embeddings` when
    /// that is an absolute path, else `~/.cache/quiver/embeddings`, else
    /// `.quiver-cache/embeddings`).
    #[arg(long, requires = "embedding")]
    embedding_cache: Option<PathBuf>,
    /// Write summary.json, curves.parquet and plots here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the JSON summary instead of the table.
    #[arg(long)]
    json: bool,
}

/// Where `--embedding` embeddings come from.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EmbeddingSource {
    /// The bundled MiniLM-L3 sentence encoder (384 dimensions).
    Minilm,
}

/// `builder` with the embedding block `args` ask for, the prompts of `datasets` embedded
/// (or read from the cache).
fn with_embeddings(
    builder: ContextBuilder,
    args: &ReplayArgs,
    datasets: &[&WideDataset],
) -> Result<ContextBuilder> {
    let Some(EmbeddingSource::Minilm) = args.embedding else {
        return Ok(builder);
    };
    let cache = args.embedding_cache.clone().unwrap_or_else(default_cache_dir);
    let embeddings = PromptEmbeddings::for_datasets(datasets, minilm()?.as_ref(), &cache)?;
    Ok(builder.with_embeddings(embeddings, args.embedding_dims)?)
}

/// The bundled encoder, in a build that has it.
fn minilm() -> Result<Box<dyn quiver_bandit::Embedder>> {
    #[cfg(feature = "minilm")]
    return match quiver_bandit::MiniLm::new() {
        Ok(encoder) => Ok(Box::new(encoder)),
        Err(e) => bail!("the bundled encoder: {e}"),
    };
    #[cfg(not(feature = "minilm"))]
    bail!("--embedding minilm: this build has no bundled encoder (build with `--features minilm`)")
}

/// `--budget`: USD per request, or a share of the best model's mean cost.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Budget {
    Usd(f64),
    /// A percentage of the best model's mean cost.
    PercentOfBest(f64),
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Usd(usd) => write!(f, "{usd}"),
            Budget::PercentOfBest(percent) => write!(f, "{percent}%"),
        }
    }
}

/// The pacer's step size, in the range its constructor takes (checked at once, not after
/// the data are read).
fn pacer_step(text: &str) -> std::result::Result<f64, String> {
    let step: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    quiver_bandit::BudgetPacer::new(1.0, step)
        .map(|_| step)
        .map_err(|_| format!("the pacer's step is {step}, outside (0, 10]"))
}

fn budget_arg(text: &str) -> std::result::Result<Budget, String> {
    match text.strip_suffix('%') {
        Some(percent) => {
            percent_of_best(percent.trim().parse().unwrap_or(f64::NAN)).map_err(|e| format!("`{text}`: {e}"))
        }
        None => budget_usd(text).map(Budget::Usd),
    }
}

fn percent_of_best(percent: f64) -> std::result::Result<Budget, String> {
    if percent > 0.0 && percent.is_finite() {
        Ok(Budget::PercentOfBest(percent))
    } else {
        Err("a share of the best model's cost is a percentage above 0, such as 25%".into())
    }
}

/// A budget in USD per request: as given, or its share of the best model's mean cost on
/// the training rows (the evaluated ones when there are none). Refused for evaluated rows
/// that cost nothing: a budget would pace nothing.
fn budget_in_usd(budget: Budget, data: &WideDataset, train: Option<&WideDataset>) -> Result<f64> {
    if data.cost_usd.is_none() {
        bail!(
            "a budget of {budget}: {} has no cost columns (`cost|MODEL`), so every call costs nothing and there is no spend to pace",
            data.source
        );
    }
    let share = match budget {
        Budget::Usd(usd) => return Ok(usd),
        Budget::PercentOfBest(percent) => percent / 100.0,
    };
    let (basis, rows) = match train {
        Some(train) => (train, "training"),
        None => (data, "evaluated"),
    };
    if basis.cost_usd.is_none() {
        bail!(
            "a budget of {budget}: {} has no cost columns, so no best model's cost to take a share of",
            basis.source
        );
    }
    let (best, cost) = quiver_sim::metrics::best_model(basis);
    let usd = checked_budget_usd(share * cost)
        .map_err(anyhow::Error::msg)
        .with_context(|| {
            format!(
                "a budget of {budget} of {}'s mean cost per request on the {rows} rows, ${cost}",
                basis.arms[best]
            )
        })?;
    tracing::info!(
        "budget: {budget} of {}'s mean cost per request on the {} {rows} rows, ${}",
        basis.arms[best],
        basis.rows(),
        quiver_sim::report::usd(usd)
    );
    Ok(usd)
}

/// `--holdout`: a share strictly between 0 and 1.
fn holdout_share(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if share > 0.0 && share < 1.0 => Ok(share),
        _ => Err(format!(
            "`{text}`: the share of rows held out is a number between 0 and 1, such as 0.3"
        )),
    }
}

/// A budget in USD per request, within the learner's bounds.
fn budget_usd(text: &str) -> std::result::Result<f64, String> {
    let usd = text.trim().parse().map_err(|_| {
        format!("`{text}` is neither USD per request (0.0012) nor a share of the best model's cost (25%)")
    })?;
    checked_budget_usd(usd)
}

fn checked_budget_usd(usd: f64) -> std::result::Result<f64, String> {
    quiver_bandit::limits::BUDGET_USD
        .check("the budget", usd)
        .map_err(|e| e.to_string())
}

/// `--sweep KEY=A..B:N`: the setting swept and its N values, evenly spaced.
#[derive(Debug, Clone)]
enum Sweep {
    Budget(Vec<Budget>),
    WCost(Vec<f64>),
}

/// Seeds of a replay unless `--seeds` says otherwise.
const DEFAULT_SEEDS: u64 = 5;

/// The most settings one sweep replays.
const MAX_SWEEP_POINTS: usize = 1000;

fn parse_sweep(text: &str) -> std::result::Result<Sweep, String> {
    let form = "KEY=A..B:N, KEY budget (in USD, or both ends in %) or w-cost";
    let (key, range) = text.split_once('=').ok_or(form)?;
    let (bounds, n) = range.split_once(':').ok_or(form)?;
    let (a, b) = bounds.split_once("..").ok_or(form)?;
    let (a, b, percentages) = match (key, a.strip_suffix('%'), b.strip_suffix('%')) {
        ("budget", Some(a), Some(b)) => (a, b, true),
        ("budget", Some(_), None) | ("budget", None, Some(_)) => {
            return Err("a budget's ends are both in USD or both in % of the best model's cost".into())
        }
        _ => (a, b, false),
    };
    let number = |t: &str| t.parse::<f64>().map_err(|e| format!("{t}: {e}"));
    let (a, b) = (number(a)?, number(b)?);
    let n: usize = n.parse().map_err(|e| format!("N {n}: {e}"))?;
    if !(1..=MAX_SWEEP_POINTS).contains(&n) || !a.is_finite() || !b.is_finite() || b < a {
        return Err(format!("need A <= B and 1 <= N <= {MAX_SWEEP_POINTS}"));
    }
    let values = (0..n).map(|i| {
        if n == 1 {
            a
        } else {
            a + (b - a) * i as f64 / (n - 1) as f64
        }
    });
    match key {
        "budget" if percentages => values
            .map(percent_of_best)
            .collect::<std::result::Result<_, _>>()
            .map(Sweep::Budget),
        "budget" => values
            .map(|usd| checked_budget_usd(usd).map(Budget::Usd))
            .collect::<std::result::Result<_, _>>()
            .map(Sweep::Budget),
        "w-cost" => values
            .map(|w| {
                quiver_bandit::limits::W_COST
                    .check(key, w)
                    .map_err(|e| e.to_string())
            })
            .collect::<std::result::Result<_, _>>()
            .map(Sweep::WCost),
        other => Err(format!("`{other}`: sweep budget or w-cost")),
    }
}

fn cascade_arg(text: &str) -> std::result::Result<Cascade, String> {
    text.parse().map_err(|e: quiver_sim::SimError| e.to_string())
}

fn parse_drift(text: &str) -> std::result::Result<Drift, String> {
    let form = "ARM@STEP:DELTA";
    let (arm, rest) = text.rsplit_once('@').ok_or(form)?;
    let (step, delta) = rest.split_once(':').ok_or(form)?;
    Ok(Drift {
        arm: arm.to_string(),
        step: step
            .parse()
            .map_err(|_| format!("STEP `{step}` must be a whole number"))?,
        delta: delta
            .parse::<f64>()
            .ok()
            .filter(|d| (-1.0..=1.0).contains(d))
            .ok_or_else(|| format!("DELTA `{delta}` must be a shift of quality in [-1, 1]"))?,
    })
}

/// `--latency-model MEDIAN_MS[,SIGMA]`: the median and the log-normal sigma (default 0.3).
fn parse_latency(text: &str) -> std::result::Result<(f64, f64), String> {
    let mut parts = text.split(',');
    let number = |t: &str| {
        t.trim()
            .parse::<f64>()
            .map_err(|_| format!("`{t}` is not a number"))
    };
    let median = number(parts.next().unwrap_or_default())?;
    let sigma = parts.next().map(number).transpose()?.unwrap_or(0.3);
    if parts.next().is_some() {
        return Err("MEDIAN_MS[,SIGMA]: two numbers at most".into());
    }
    if !(median > 0.0 && sigma >= 0.0 && median.is_finite() && sigma.is_finite()) {
        return Err("need MEDIAN_MS > 0 and SIGMA >= 0".into());
    }
    Ok((median, sigma))
}

/// Reads a priors file and checks it was fitted on contexts built as `builder` builds
/// them: the same definition, and the same task labels in the same slots.
pub fn read_priors(path: &std::path::Path, builder: &ContextBuilder) -> Result<Priors> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let priors = Priors::from_json(&text).with_context(|| path.display().to_string())?;
    priors
        .check_context(&builder.definition())
        .with_context(|| path.display().to_string())?;
    if priors.tasks != builder.tasks() {
        bail!(
            "{}: the priors were fitted with the task labels [{}] one-hot, and these contexts carry [{}]: \
             the same slots would hold other tasks; fit the priors on this data's tasks",
            path.display(),
            priors.tasks.join(", "),
            builder.tasks().join(", ")
        );
    }
    Ok(priors)
}

/// The data to evaluate and to train on, and the base objective, with the list prices of
/// `--prices`.
fn datasets(args: &ReplayArgs) -> Result<(WideDataset, Option<WideDataset>, Objective)> {
    let (mut data, mut train, objective) = unpriced_datasets(args)?;
    if let Some(path) = &args.prices {
        price_from_file(path, &mut data, train.as_mut())?;
    }
    if objective.w_latency > 0.0 && data.latency_ms.is_none() && args.latency_model.is_none() {
        tracing::warn!(
            "{} has no latency columns (`latency_ms|MODEL`): every call takes 0 ms, so a latency weight of {} weighs nothing",
            data.source,
            objective.w_latency
        );
    }
    Ok((data, train, objective))
}

/// Gives `data` (and `train`, whose models are `data`'s) the list prices of the file at
/// `path` (`--prices`), saying which models it does not price.
pub fn price_from_file(
    path: &std::path::Path,
    data: &mut WideDataset,
    train: Option<&mut WideDataset>,
) -> Result<()> {
    let prices = read_list_prices(path)?;
    let unpriced = data.price_from(&prices);
    if let Some(train) = train {
        train.price_from(&prices);
    }
    if !unpriced.is_empty() {
        tracing::warn!(
            "{}: no list price for {}; their cost is learned from their calls",
            path.display(),
            unpriced.join(", ")
        );
    }
    Ok(())
}

/// The data to evaluate and to train on, and the base objective.
fn unpriced_datasets(args: &ReplayArgs) -> Result<(WideDataset, Option<WideDataset>, Objective)> {
    let (format, split) = (args.format, args.split.as_ref());
    let objective = |default: Objective| -> Result<Objective> {
        Ok(Objective::new(
            args.w_cost.unwrap_or(default.w_cost),
            args.w_latency.unwrap_or(default.w_latency),
        )?)
    };
    match &args.data {
        Some(path) => {
            let data = load_wide(path, format, split)?;
            if let Some(share) = args.holdout {
                let (train, held_out) = data.holdout(share, args.holdout_seed)?;
                return Ok((held_out, Some(train), objective(Objective::default())?));
            }
            let mut train = args
                .train
                .as_deref()
                .map(|t| load_wide(t, format, args.train_split.as_ref().or(split)))
                .transpose()?;
            if let Some(train) = train.as_mut() {
                if train.rows() == 0 {
                    let why = match (train.dropped_note(), args.train_split.as_ref().or(split)) {
                        (Some(note), _) => format!(": {note}"),
                        (None, Some(_)) => " (check --train-split)".to_string(),
                        (None, None) => String::new(),
                    };
                    bail!(
                        "--train: no rows of {} are left to train on{why}",
                        args.train.as_deref().unwrap_or_default()
                    );
                }
                train.align_to(&data)?;
            }
            Ok((data, train, objective(Objective::default())?))
        }
        None => {
            if args.train.is_some() {
                bail!("--train needs --data (the built-in scenario brings its own train split)");
            }
            let scenario = Scenario::builtin()?;
            let (test, train) = scenario.test_and_train();
            Ok((test, Some(train), objective(scenario.objective()?)?))
        }
    }
}

/// `quiver replay` on a decision log: each policy evaluated off-policy along the log
/// (learning as it goes), by replay (rejection sampling), SNIPS and DR.
fn replay_log(args: &ReplayArgs, mut log: LogStream, specs: &[PolicySpec]) -> Result<()> {
    let objective = Objective::new(args.w_cost.unwrap_or(0.0), args.w_latency.unwrap_or(0.0))?;
    let source = args.data.as_deref().unwrap_or_default();
    for note in log
        .header()
        .unrecorded_notes(source, objective.w_cost, objective.w_latency)
    {
        tracing::warn!("{note}");
    }
    tracing::info!(
        "{} is a decision log: the policies are evaluated off-policy (replay, SNIPS and DR \
         estimates; `quiver ope` gives every estimator, and intervals)",
        log.header().source
    );
    let estimators: Vec<Box<dyn Estimator>> = ["replay", "snips", "dr"]
        .iter()
        .filter_map(|n| estimator_by_name(n))
        .collect();
    // Unclipped weights, Switch-DR's default threshold, no bootstrap: the table's three
    // point estimates.
    let settings = EstimatorSettings::new(f64::INFINITY, 100.0, 0, 0)?;
    let summaries = specs
        .iter()
        .map(|spec| evaluate(&mut log, spec, objective, &estimators, settings, !args.frozen))
        .collect::<Result<Vec<_>, _>>()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
        return Ok(());
    }
    println!(
        "log {}: {} decisions, {} arms; off-policy estimates of each policy learning along the log\n",
        log.header().source,
        log.rows(),
        log.header().arms.len()
    );
    println!(
        "{:<44} {:>8} {:>9} {:>9} {:>9} {:>11} {:>8}",
        "policy", "accepted", "replay", "snips", "dr", "dr cost_usd", "ESS"
    );
    for s in &summaries {
        let value = &s.metrics[0];
        let cost = &s.metrics[2];
        let get = |m: &quiver_sim::ope::MetricReport, name: &str| {
            m.estimates
                .iter()
                .find(|e| e.estimator == name)
                .map_or(f64::NAN, |e| e.value)
        };
        println!(
            "{:<44} {:>8} {:>9.4} {:>9.4} {:>9.4} {:>11} {:>8.0}",
            s.policy,
            value.weights.replay_accepted,
            get(value, "replay"),
            get(value, "snips"),
            get(value, "dr"),
            usd(get(cost, "dr")),
            value.weights.effective_sample_size
        );
    }
    Ok(())
}

pub fn run(args: ReplayArgs) -> Result<()> {
    let specs = parse_specs(&args.policies, "--policies")?;
    if let Some(path) = &args.data {
        if detect_format(path, args.format)? == Format::Logged {
            // What a log's off-policy estimates take: the policies, the objective's weights,
            // --frozen, --split and --json. Every other option simulates full information.
            let simulated = [
                ("--train", args.train.is_some()),
                ("--holdout", args.holdout.is_some()),
                ("--priors", args.priors.is_some()),
                ("--cascade", !args.cascade.is_empty()),
                ("--prices", args.prices.is_some()),
                ("--budget", args.budget.is_some()),
                ("--sweep", args.sweep.is_some()),
                ("--drift", args.drift.is_some()),
                ("--latency-model", args.latency_model.is_some()),
                ("--embedding", args.embedding.is_some()),
                ("--out", args.out.is_some()),
                ("--no-full-information", args.no_full_information),
                ("--task-feature", args.task_feature),
                // A log's estimates are exact: no request order to shuffle or feedback to delay.
                ("--seeds", args.seeds != DEFAULT_SEEDS),
                ("--feedback-delay", args.feedback_delay != 0),
                ("--missing-feedback", args.missing_feedback != 0.0),
                ("--pacer-step", args.pacer_step != DEFAULT_PACING_STEP),
                ("--prior-cap", args.prior_cap != DEFAULT_PRIOR_CAP),
                ("--train-feedback", args.train_feedback != TrainFeedback::Full),
                ("--train-passes", args.train_passes != 1),
                ("--explore-passes", args.explore_passes != 0),
            ];
            let given: Vec<&str> = simulated
                .iter()
                .filter(|(_, set)| *set)
                .map(|(flag, _)| *flag)
                .collect();
            if !given.is_empty() {
                let read_as = match args.format {
                    Format::Auto => "its columns are a log's",
                    _ => "as `--format logged` says",
                };
                bail!(
                    "{} {} to tables of every model's outcome, and {} is read as a decision log \
                     ({read_as}); a log is evaluated off-policy (`quiver ope` gives every estimator, \
                     and intervals)",
                    given.join(", "),
                    if given.len() == 1 { "applies" } else { "apply" },
                    path
                );
            }
            let log = crate::open_log(path, Format::Logged, args.split.as_ref())?;
            return replay_log(&args, log, &specs);
        }
    }
    if specs.is_empty() {
        bail!("--policies is empty");
    }
    let (data, train, objective) = datasets(&args)?;
    if data.rows() == 0 {
        match data.dropped_note() {
            Some(note) => bail!("no complete rows to evaluate: {note}"),
            None => bail!("{}: no rows to evaluate", data.source),
        }
    }
    for note in specs.iter().filter_map(|s| s.floor_overrides(data.num_arms())) {
        eprintln!("{note}");
    }
    if args.train_feedback == TrainFeedback::Full && (args.explore_passes > 0 || args.train_passes > 1) {
        bail!("--train-passes and --explore-passes apply to --train-feedback bandit");
    }
    if args.train_passes > 1 && train.is_none() {
        bail!(
            "--train-passes {}: there is no training data to pass over; give --train or --holdout",
            args.train_passes
        );
    }
    let paced = args.budget.is_some() || matches!(args.sweep, Some(Sweep::Budget(_)));
    if args.pacer_step != DEFAULT_PACING_STEP && !paced {
        bail!("--pacer-step sets the budget pacer's step: give --budget or --sweep budget=...");
    }
    if args.explore_passes > 0 && (train.is_none() || args.explore_passes > args.train_passes) {
        bail!(
            "--explore-passes {} needs training data and at most --train-passes passes",
            args.explore_passes
        );
    }
    if args.budget.is_some() && matches!(args.sweep, Some(Sweep::Budget(_))) {
        bail!("--budget and --sweep budget=... both set the budget; use one");
    }
    if args.w_cost.is_some() && matches!(args.sweep, Some(Sweep::WCost(_))) {
        bail!("--w-cost and --sweep w-cost=... both set the cost weight; use one");
    }
    if args.prior_cap != DEFAULT_PRIOR_CAP {
        check_cap(args.prior_cap).context("--prior-cap")?;
        if train.is_none() || args.train_feedback != TrainFeedback::Full {
            bail!(
                "--prior-cap caps priors fitted from --train (or --holdout) under --train-feedback full; \
                 a priors file keeps the cap it was fitted with (`quiver priors fit --cap`)"
            );
        }
    }
    if args.frozen && train.is_none() && args.priors.is_none() {
        tracing::warn!(
            "--frozen without --train, --holdout or --priors: the learners decide from their cold \
             start alone, and learn nothing"
        );
    }
    if args.feedback_delay >= data.rows() {
        bail!(
            "--feedback-delay {}: as many decisions as the {} evaluated rows or more, so no quality \
             would arrive before the run ends",
            args.feedback_delay,
            data.rows()
        );
    }
    if let Some(drift) = &args.drift {
        if drift.step >= data.rows() {
            bail!(
                "--drift {}@{}: step {} is past the {} evaluated rows, so nothing would drift",
                drift.arm,
                drift.step,
                drift.step,
                data.rows()
            );
        }
    }
    let budget = args
        .budget
        .map(|b| budget_in_usd(b, &data, train.as_ref()))
        .transpose()?;
    // Every policy runs at each setting: the one given, or each of the sweep's.
    let points: Vec<(Objective, Option<f64>, String)> = match &args.sweep {
        None => vec![(objective, budget, String::new())],
        Some(Sweep::Budget(budgets)) => budgets
            .iter()
            .map(|b| {
                Ok((
                    objective,
                    Some(budget_in_usd(*b, &data, train.as_ref())?),
                    format!(" @ budget={b}"),
                ))
            })
            .collect::<Result<_>>()?,
        Some(Sweep::WCost(weights)) => weights
            .iter()
            .map(|w| {
                Ok((
                    Objective::new(*w, objective.w_latency)?,
                    budget,
                    format!(" @ w-cost={w}"),
                ))
            })
            .collect::<Result<_>>()?,
    };
    let variants = specs
        .iter()
        .flat_map(|spec| {
            points.iter().map(move |(objective, budget_usd, suffix)| Variant {
                spec: spec.clone(),
                objective: *objective,
                budget_usd: *budget_usd,
                label: format!("{spec}{suffix}"),
            })
        })
        .collect();
    let mut tasks: Vec<String> = Vec::new();
    if task_in_context(data.prompts.is_some(), args.task_feature) {
        tasks.extend(data.tasks.clone().unwrap_or_default());
        if let Some(t) = &train {
            tasks.extend(t.tasks.clone().unwrap_or_default());
        }
    }
    let builder = ContextBuilder::new(data.prompts.is_some(), &tasks, data.feature_names.len());
    let datasets: Vec<&WideDataset> = std::iter::once(&data).chain(train.as_ref()).collect();
    let builder = with_embeddings(builder, &args, &datasets)?;
    let env = Environment::new(&data, &builder)?;
    let mut train_env = train
        .as_ref()
        .map(|t| Environment::new(t, &builder))
        .transpose()?;
    let mut priors = args
        .priors
        .as_deref()
        .map(|path| read_priors(path, &builder))
        .transpose()?;
    if let (Some(path), Some(read)) = (&args.priors, &priors) {
        let coverage = read
            .coverage(data.arms.iter().map(String::as_str))
            .with_context(|| format!("--priors {}", path.display()))?;
        if let Some(note) = coverage.note() {
            tracing::warn!("{}: {note}", path.display());
        }
    }
    if args.train_feedback == TrainFeedback::Full {
        if let Some(t) = train_env.take() {
            if priors.is_some() {
                bail!("--priors and --train (or --holdout) both give priors; use one, or --train-feedback bandit");
            }
            priors = Some(fit_wide(&t, &builder.definition(), args.prior_cap));
        }
    }
    let latency = match (args.latency_model, data.latency_ms.is_some()) {
        (Some((median, sigma)), false) => Some(LatencyModel {
            median_ms: vec![median; data.num_arms()],
            sigma,
        }),
        (Some(_), true) => {
            bail!("--latency-model applies to tables without latency_ms columns; this one has them")
        }
        (None, _) => None,
    };
    let settings = ReplaySettings {
        variants,
        seeds: args.seeds,
        knobs: Knobs {
            feedback_delay: args.feedback_delay,
            missing_feedback: args.missing_feedback,
            drift: args.drift.clone(),
            latency: latency.clone(),
        },
        frozen: args.frozen,
        train_passes: args.train_passes,
        explore_passes: args.explore_passes,
        priors,
        pacer_step: args.pacer_step,
        checkpoints: 200,
        // Frozen learners learn nothing while evaluated, so their reference would repeat them.
        full_information: !args.no_full_information && !args.frozen,
    };
    let runs_per_seed = if settings.full_information { 2 } else { 1 };
    let progress = bar(
        settings.variants.len() as u64 * settings.seeds * runs_per_seed,
        "replaying",
    );
    // Cascades first: they take a moment, and a model they misname stops the run at once.
    let cascade_runs = replay_cascades(&env, &settings.knobs, &args.cascade, settings.seeds)?;
    let runs = replay(&env, train_env.as_ref(), &settings, &|| progress.inc(1))?;
    progress.finish_and_clear();
    let mut summary = summarize(
        &data,
        &builder.definition(),
        train.as_ref().map(WideDataset::rows),
        &settings,
        &runs,
        latency.as_ref().map(LatencyModel::mean_ms).as_deref(),
    );
    let latency_known = data.latency_ms.is_some() || latency.is_some();
    summary.cascades = summarize_cascades(&summary, &args.cascade, &cascade_runs, latency_known);
    if let Some(dir) = &args.out {
        quiver_sim::output::write_out(dir, &summary, &settings, &runs)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", table(&summary));
        if let Some(dir) = &args.out {
            println!("wrote {}", dir.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ndarray::array;

    use super::*;

    /// Two models; the first is the better one, at `cost` a request.
    fn table(source: &str, cost: f64) -> WideDataset {
        WideDataset {
            source: source.into(),
            arms: vec!["good".into(), "cheap".into()],
            ids: vec!["0".into(), "1".into()],
            features: ndarray::Array2::zeros((2, 0)),
            quality: array![[1.0, 0.0], [1.0, 1.0]],
            cost_usd: Some(array![[cost, 0.001], [3.0 * cost, 0.001]]),
            ..WideDataset::default()
        }
    }

    /// A share of the best model's cost is taken on the training rows when there are any,
    /// so the evaluated rows never set their own budget.
    #[test]
    fn a_budget_share_is_of_the_best_models_cost_on_the_training_rows() {
        let (evaluated, train) = (table("eval.csv", 1.0), table("train.csv", 10.0));
        let share = Budget::PercentOfBest(25.0);
        assert_eq!(budget_in_usd(share, &evaluated, Some(&train)).unwrap(), 5.0);
        assert_eq!(budget_in_usd(share, &evaluated, None).unwrap(), 0.5);
        assert_eq!(
            budget_in_usd(Budget::Usd(0.002), &evaluated, Some(&train)).unwrap(),
            0.002
        );
        let err = budget_in_usd(Budget::PercentOfBest(1e8), &evaluated, Some(&train)).unwrap_err();
        assert!(
            format!("{err:#}")
                .contains("a budget of 100000000% of good's mean cost per request on the training rows, $20: the budget is"),
            "{err:#}"
        );
        let free = WideDataset {
            cost_usd: None,
            ..table("free.csv", 1.0)
        };
        for budget in [Budget::Usd(0.002), share] {
            let err = budget_in_usd(budget, &free, Some(&train)).unwrap_err();
            assert!(
                format!("{err:#}").contains("free.csv has no cost columns (`cost|MODEL`)"),
                "{err:#}"
            );
        }
    }

    #[test]
    fn budgets_parse_as_dollars_or_as_a_percentage() {
        assert_eq!(budget_arg("0.001"), Ok(Budget::Usd(0.001)));
        assert_eq!(budget_arg("25%"), Ok(Budget::PercentOfBest(25.0)));
        assert_eq!(budget_arg(" 12.5 %"), Ok(Budget::PercentOfBest(12.5)));
        for bad in ["0%", "-5%", "inf%", "%", "25 percent"] {
            assert!(budget_arg(bad).is_err(), "{bad}");
        }
    }
}
