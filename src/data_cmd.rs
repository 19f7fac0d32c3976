//! `quiver data`.

use std::path::{Path, PathBuf};

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
    /// --logging-policy (a table without prompts is logged on its task one-hot, which the
    /// log carries as caller features `f_task_<task>` before the table's own).
    Convert(ConvertArgs),
    /// Write the table of a scenario file (default: the built-in scenario), or one of the
    /// validation suite's item-response tables (--irt).
    Generate(GenerateArgs),
}

/// What `data convert` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Shape {
    /// Every model's outcome per prompt (a full-information table).
    Wide,
    /// One decision per row, with its propensity, as a server logs them.
    Logged,
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
    /// Output shape.
    #[arg(long, value_enum)]
    to: Shape,
    /// Policy that logs wide data (default: random). It must give every model some
    /// probability on every row, or the log cannot evaluate a policy that chooses another.
    #[arg(long)]
    logging_policy: Option<String>,
    /// Cost weight of the logging policy, quality points per USD (default: 0).
    #[arg(long, value_parser = crate::w_cost_arg)]
    w_cost: Option<f64>,
    /// Share of logged rows left without quality, feedback that never arrived (default: 0).
    #[arg(long, alias = "missing-quality", value_parser = crate::missing_feedback_arg)]
    missing_feedback: Option<f64>,
    /// Seed of the logging order and draws (default: 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Output file: .parquet, .jsonl (or .ndjson, .json: JSON lines); any other name is
    /// written as CSV.
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
    /// 3, 11, 30 and 60, and 30 on 10,000 prompts), with its 70/30 split. Each size is one
    /// fixed table, the suite's: its seed follows from the number of models.
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

/// Outcomes (models times prompts) a generated table may hold: 16 bytes each in memory
/// for quality and cost, so at most about 1.6 GB.
const MAX_GENERATED_CELLS: u64 = 100_000_000;

/// Refuses a prices file on the path of the table written or read, which it would
/// overwrite.
fn distinct_outputs(out: &Path, prices_out: Option<&Path>, data: Option<&str>) -> Result<()> {
    let Some(prices_out) = prices_out else {
        return Ok(());
    };
    let same = |a: &Path, b: &Path| {
        let whole = |p: &Path| std::fs::canonicalize(p).or_else(|_| std::path::absolute(p)).ok();
        whole(a).is_some_and(|a| Some(a) == whole(b))
    };
    if same(prices_out, out) {
        bail!("--prices-out {}: the same file as --out", prices_out.display());
    }
    if data.is_some_and(|data| same(prices_out, Path::new(data))) {
        bail!("--prices-out {}: the same file as --data", prices_out.display());
    }
    Ok(())
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Convert(args) => convert(args),
        DataCommand::Generate(args) => generate(args),
    }
}

fn convert(args: ConvertArgs) -> Result<()> {
    distinct_outputs(&args.out, args.prices_out.as_deref(), Some(&args.data))?;
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
    let logging = [
        ("--logging-policy", args.logging_policy.is_some()),
        ("--w-cost", args.w_cost.is_some()),
        ("--missing-feedback", args.missing_feedback.is_some()),
        ("--seed", args.seed.is_some()),
    ];
    let logs_a_table = matches!((&dataset, args.to), (Dataset::Wide(_), Shape::Logged));
    if let Some((flag, _)) = logging.iter().find(|(_, given)| *given).filter(|_| !logs_a_table) {
        bail!(
            "{flag} applies to a wide table converted to a log (--to logged); this conversion logs nothing"
        );
    }
    match (dataset, args.to) {
        (Dataset::Wide(data), Shape::Wide) => write_wide(&data, &args.out)?,
        (Dataset::Logged(log), Shape::Logged) => {
            if let Some(note) = log.earlier_contexts_note() {
                eprintln!("{note}");
            }
            quiver_sim::write::write_logged(&log, &args.out)?;
        }
        (Dataset::Wide(data), Shape::Logged) => {
            if data.split.is_some() && args.split.is_none() {
                eprintln!(
                    "{}: a log has no split column, so its rows' split is not written; convert each \
                     part with --split split=VALUE",
                    args.data
                );
            }
            let spec: PolicySpec = args.logging_policy.as_deref().unwrap_or("random").parse()?;
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
                objective: Objective::new(args.w_cost.unwrap_or(0.0), 0.0)?,
                seed: args.seed.unwrap_or(0),
                missing_feedback: args.missing_feedback.unwrap_or(0.0),
            };
            let (log, _) = log_wide(&data, &builder, &settings)?;
            write_logged(&log, &args.out)?;
        }
        (Dataset::Logged(_), Shape::Wide) => {
            bail!("a log holds only the chosen arm's outcome; it cannot become full-information data")
        }
    }
    eprintln!("wrote {}", args.out.display());
    if let Some((prices, path)) = list_prices {
        write_list_prices(&prices, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn generate(args: GenerateArgs) -> Result<()> {
    distinct_outputs(&args.out, args.prices_out.as_deref(), None)?;
    if let Some(arms) = args.irt {
        let cells = u64::from(arms) * u64::from(args.rows);
        if cells > MAX_GENERATED_CELLS {
            bail!(
                "--irt {arms} --rows {}: {cells} outcomes, above the {MAX_GENERATED_CELLS} a generated table may hold \
                 (its quality and cost matrices in memory)",
                args.rows
            );
        }
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
