//! `quiver priors`.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use quiver_bandit::prior::{check_cap, Priors, DEFAULT_PRIOR_CAP};
use quiver_sim::context::{task_in_context, ContextBuilder};
use quiver_sim::data::{detect_format, load_wide, Format, Split};
use quiver_sim::priors::{fit_logged, fit_wide};
use quiver_sim::replay::Environment;
use quiver_sim::report::usd;

use crate::replay_cmd::price_from_file;

#[derive(Subcommand)]
pub enum PriorsCommand {
    /// Fit each model's quality prior from an evaluation table (every model's outcome on
    /// every row) or a decision log (the chosen model's outcome), for `quiver serve`
    /// (a route's `priors`) and `quiver replay --priors` to start from.
    Fit(FitArgs),
}

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct FitArgs {
    /// A wide table or a decision log: a file, a directory or a quoted glob.
    #[arg(long)]
    data: String,
    /// Data format.
    #[arg(long, default_value = "auto")]
    format: Format,
    /// Keep only rows whose COLUMN equals VALUE.
    #[arg(long, value_name = "COLUMN=VALUE")]
    split: Option<Split>,
    /// Put each row's task label (one-hot) in the contexts, for routes whose requests send
    /// it as caller features (see `quiver replay --task-feature`).
    #[arg(long)]
    task_feature: bool,
    /// The models' list prices (as `quiver replay --prices` reads them, `--prices-out` of
    /// `quiver data convert` among them), for a table: a priced model's priors then learn
    /// its answers' length, as a route with those prices does.
    #[arg(long)]
    prices: Option<PathBuf>,
    /// The table counts as at most this many observations per model.
    #[arg(long, default_value_t = DEFAULT_PRIOR_CAP)]
    cap: f64,
    /// The priors file to write (JSON).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(command: PriorsCommand) -> Result<()> {
    match command {
        PriorsCommand::Fit(args) => fit(args),
    }
}

fn fit(args: FitArgs) -> Result<()> {
    check_cap(args.cap).context("--cap")?;
    let priors = if detect_format(&args.data, args.format)? == Format::Logged {
        if args.prices.is_some() {
            bail!("--prices applies to a table of every model's outcome; a log's costs are its calls' own");
        }
        if args.task_feature {
            bail!(
                "--task-feature applies to a table with a task column; a log's contexts are the ones \
                 its server built, caller features included"
            );
        }
        let mut log = crate::open_log(&args.data, Format::Logged, args.split.as_ref())?;
        if !log.header().cost_recorded {
            eprintln!(
                "{} records no cost (`cost_usd`): the priors carry no usage, and a route learns \
                 its models' costs from its own calls",
                args.data
            );
        }
        fit_logged(&mut log, args.cap)?
    } else {
        let mut data = load_wide(&args.data, args.format, args.split.as_ref())?;
        if let Some(path) = &args.prices {
            price_from_file(path, &mut data, None)?;
        }
        if let Some(note) = data.dropped_note() {
            if data.rows() == 0 {
                bail!(
                    "{note}: no row holds every model's values, and priors are fitted on those \
                     that do; leave out the columns of a model with few values to fit the others"
                );
            }
            eprintln!("{note}");
        }
        let tasks = if task_in_context(data.prompts.is_some(), args.task_feature) {
            data.tasks.clone().unwrap_or_default()
        } else {
            Vec::new()
        };
        let builder = ContextBuilder::new(data.prompts.is_some(), &tasks, data.feature_names.len());
        let env = Environment::new(&data, &builder)?;
        Priors {
            tasks: builder.tasks().to_vec(),
            ..fit_wide(&env, &builder.definition(), args.cap)
        }
    };
    if priors.arms.is_empty() {
        bail!(
            "{}: no model has a quality on any row (check --split and the `quality|<model>` or `quality` columns): no priors to write",
            args.data
        );
    }
    let text = serde_json::to_string(&priors)?;
    std::fs::write(&args.out, text).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "{}: priors of {} models on `{}`",
        args.out.display(),
        priors.arms.len(),
        priors.context
    );
    if !priors.tasks.is_empty() {
        eprintln!(
            "  the first caller features are the task one-hot, in this order: {}",
            priors.tasks.join(", ")
        );
    }
    for (arm, p) in &priors.arms {
        // A log's priors carry the cost its calls reported, without a correction.
        let cost = match &p.cost_correction {
            _ if p.usage.requests == 0.0 => String::new(),
            Some(c) => format!(
                ", ${} per request, cost ridge {}",
                usd(p.usage.cost_usd / p.usage.requests),
                c.lambda
            ),
            None => format!(", ${} per request", usd(p.usage.cost_usd / p.usage.requests)),
        };
        let answers = match &p.answer_correction {
            Some(c) => format!(", answer ridge {}", c.lambda),
            None => String::new(),
        };
        eprintln!(
            "  {arm:<40} {:>7} rows, mean quality {:.4}, counts as {:.0}, ridge {}{cost}{answers}",
            p.rows,
            p.sum / p.observations,
            p.observations,
            p.quality.lambda
        );
    }
    Ok(())
}
