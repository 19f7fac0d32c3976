//! `quiver data`.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use quiver_bandit::{Objective, PolicySpec};
use quiver_sim::context::{task_in_context, ContextBuilder};
use quiver_sim::data::prices::write_list_prices;
use quiver_sim::data::{load, Dataset, Format, Split};
use quiver_sim::logging::{log_wide, LoggingSettings};
use quiver_sim::scenario::Scenario;
use quiver_sim::suite::{IrtTable, SUITE_ROWS};
use quiver_sim::write::{write_logged, write_wide};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Convert a dataset (RouterBench, RouteLLM, RouterArena, Open Bandit Dataset, or the
    /// native shapes) to the wide or logged shape; wide data becomes a log under
    /// --logging-policy.
    Convert(ConvertArgs),
    /// Write the table of a scenario file (default: the built-in scenario), or one of the
    /// validation suite's item-response tables (--irt).
    Generate(GenerateArgs),
}

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct ConvertArgs {
    /// Input: a file, a directory or a quoted glob.
    #[arg(long)]
    data: String,
    /// Input format.
    #[arg(long, default_value = "auto")]
    format: Format,
    /// Keep only rows whose COLUMN equals VALUE.
    #[arg(long, value_name = "COLUMN=VALUE")]
    split: Option<Split>,
    /// Output shape: wide or logged.
    #[arg(long)]
    to: String,
    /// Policy that logs wide data (needs a floor to cover every arm).
    #[arg(long, default_value = "random")]
    logging_policy: String,
    /// Cost weight of the logging policy, quality points per USD.
    #[arg(long, default_value_t = 0.0)]
    w_cost: f64,
    /// Share of logged rows left without quality (feedback that never arrived).
    #[arg(long, alias = "missing-quality", default_value_t = 0.0)]
    missing_feedback: f64,
    /// Seed of the logging order and draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file: .csv, .parquet or .jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Also write the table's list prices here, in LiteLLM's registry format (`quiver
    /// replay --prices` reads it back): the shapes have no place for them, and RouteLLM's
    /// and RouterArena's tables carry theirs.
    #[arg(long)]
    prices_out: Option<PathBuf>,
}

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct GenerateArgs {
    /// A scenario file (default: the built-in one).
    #[arg(long, conflicts_with = "irt")]
    scenario: Option<PathBuf>,
    /// The validation suite's generated table with this many models (`quiver suite` uses
    /// 3, 11, 30 and 60, and 30 on 10,000 prompts), with its 70/30 split.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    irt: Option<u16>,
    /// Output file: .csv, .parquet or .jsonl; a `split` column says train or test.
    #[arg(long)]
    out: PathBuf,
    /// Prompts of the generated table (--irt): the suite's table has 4,000; a longer one
    /// has the same models, prices and first prompts.
    #[arg(long, requires = "irt", default_value_t = SUITE_ROWS as u32,
          value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    rows: u32,
    /// Also write the generated table's list prices here, in LiteLLM's registry format
    /// (`quiver replay --prices` reads it back).
    #[arg(long, requires = "irt")]
    prices_out: Option<PathBuf>,
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Convert(args) => convert(args),
        DataCommand::Generate(args) => generate(args),
    }
}

fn convert(args: ConvertArgs) -> Result<()> {
    let dataset = load(&args.data, args.format, args.split.as_ref())?;
    match &dataset {
        Dataset::Wide(data) if data.rows() == 0 => bail!("{}: no complete rows to convert", args.data),
        Dataset::Wide(data) => {
            if let Some(note) = data.dropped_note() {
                eprintln!("{note}");
            }
        }
        Dataset::Logged(log) if log.rows() == 0 => bail!("{}: no decisions to convert", args.data),
        Dataset::Logged(_) => {}
    }
    // Refused before anything is written; written once the table is.
    let list_prices = match (&dataset, &args.prices_out) {
        (_, None) => None,
        (Dataset::Wide(data), Some(path)) if !data.list_prices.is_empty() => {
            Some((data.list_prices.clone(), path))
        }
        (_, Some(_)) => bail!("--prices-out: {} carries no list prices", args.data),
    };
    match (dataset, args.to.as_str()) {
        (Dataset::Wide(data), "wide") => write_wide(&data, &args.out)?,
        (Dataset::Logged(log), "logged") => {
            if let Some(note) = log.earlier_contexts_note() {
                eprintln!("{note}");
            }
            quiver_sim::write::write_logged(&log, &args.out)?;
        }
        (Dataset::Wide(data), "logged") => {
            if data.split.is_some() && args.split.is_none() {
                eprintln!(
                    "{}: a log has no split column, so its rows' split is not written; convert each \
                     part with --split split=VALUE",
                    args.data
                );
            }
            let spec: PolicySpec = args.logging_policy.parse()?;
            if let Some(note) = spec.floor_overrides(data.num_arms()) {
                eprintln!("{note}");
            }
            let tasks = if task_in_context(data.prompts.is_some(), false) {
                data.tasks.as_deref().unwrap_or_default()
            } else {
                &[][..]
            };
            let builder = ContextBuilder::new(data.prompts.is_some(), tasks, data.feature_names.len());
            let settings = LoggingSettings {
                spec,
                objective: Objective::new(args.w_cost, 0.0)?,
                seed: args.seed,
                missing_feedback: args.missing_feedback,
            };
            let (log, _) = log_wide(&data, &builder, &settings)?;
            write_logged(&log, &args.out)?;
        }
        (Dataset::Logged(_), "wide") => {
            bail!("a log holds only the chosen arm's outcome; it cannot become full-information data")
        }
        (_, other) => bail!("--to `{other}`: use wide or logged"),
    }
    eprintln!("wrote {}", args.out.display());
    if let Some((prices, path)) = list_prices {
        write_list_prices(&prices, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn generate(args: GenerateArgs) -> Result<()> {
    if let Some(arms) = args.irt {
        let (train, test) = IrtTable {
            rows: args.rows as usize,
            ..IrtTable::of_suite(usize::from(arms))
        }
        .generate();
        let splits: Vec<String> = (0..train.rows())
            .map(|_| "train".to_string())
            .chain((0..test.rows()).map(|_| "test".to_string()))
            .collect();
        let mut data = train;
        data.append(test)?;
        data.split = Some(splits);
        write_wide(&data, &args.out)?;
        eprintln!("wrote {} ({} rows)", args.out.display(), data.rows());
        if let Some(path) = &args.prices_out {
            write_list_prices(&data.list_prices, path)?;
            eprintln!("wrote {}", path.display());
        }
        return Ok(());
    }
    let scenario = match &args.scenario {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("--scenario {}", path.display()))?;
            Scenario::parse(&text, &path.display().to_string())?
        }
        None => Scenario::builtin()?,
    };
    let (mut data, splits) = scenario.generate();
    data.split = Some(splits);
    write_wide(&data, &args.out)?;
    eprintln!("wrote {} ({} rows)", args.out.display(), data.rows());
    Ok(())
}
