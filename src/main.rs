//! The `quiver` command line: glue between the flags and the library crates (the
//! simulator for replay, ope, data, priors and suite; the server for serve; the log for
//! log).
//!
//! Each subcommand parses its flags (clap), validates them into the simulator's typed
//! settings, runs, and prints. Errors carry the library's messages (file, row, column).
#![allow(clippy::print_stdout)] // printing results is the CLI's job

mod data_cmd;
mod demo;
mod log_cmd;
mod ope_cmd;
mod priors_cmd;
mod progress;
mod replay_cmd;
mod serve_cmd;
mod suite_cmd;

use std::io::Write;

use clap::{Parser, Subcommand};
use quiver_sim::data::{Format, LogStream, Split};
use quiver_sim::source::CHUNK_ROWS;

/// mimalloc: deciding, learning and serving allocate small, short-lived vectors per
/// request, from several threads at once. Replaying two seeds on two cores runs 1.7x
/// faster than with the system allocator, which contends across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Adaptive multi-armed-bandit routing for LLM requests.
#[derive(Parser)]
#[command(name = "quiver", version, about)]
struct Cli {
    /// Logged diagnostics on standard error (the server's access log among them): `human`
    /// lines or `json`, one object per line. `RUST_LOG` filters them (default: info;
    /// `RUST_LOG=info,tower_http=off` drops the access log).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Replay routing policies on full-information data under bandit feedback (with no
    /// arguments: the built-in scenario).
    Replay(Box<replay_cmd::ReplayArgs>),
    /// Estimate a candidate policy's value, quality and cost on a decision log.
    Ope(ope_cmd::OpeArgs),
    /// Convert or generate datasets.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Maintain a server's decision log: compact closed segments to Parquet.
    #[command(subcommand)]
    Log(log_cmd::LogCommand),
    /// Fit priors that learners start from, from an evaluation table or a log.
    #[command(subcommand)]
    Priors(priors_cmd::PriorsCommand),
    /// Serve routes over HTTP: route, OpenAI-compatible proxy, feedback.
    Serve(serve_cmd::ServeArgs),
    /// The validation suite the defaults are chosen by: each candidate's lift over the hull
    /// on generated tables of 3 to 60 models (and 30 on 10,000 prompts), the built-in
    /// scenario's train split and, with --routerbench and --routellm, RouterBench's train
    /// files and RouteLLM's tables whole (3-fold cross-validation), under budgets of 10%,
    /// 25% and 50% of the best model's cost; trained, drifting, cold and with late
    /// qualities.
    Suite(suite_cmd::SuiteArgs),
}

/// A flag's number, checked as clap parses it by `check` (the library's own check of that
/// setting), so that nonsense stops the command at once, before any data is read.
fn checked_number<E: std::fmt::Display>(
    text: &str,
    check: impl FnOnce(f64) -> Result<(), E>,
) -> Result<f64, String> {
    let x: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    check(x).map(|()| x).map_err(|e| e.to_string())
}

/// `--w-cost`: quality points per USD, within the learner's bounds.
fn w_cost_arg(text: &str) -> Result<f64, String> {
    checked_number(text, |w| {
        quiver_bandit::limits::W_COST.check("--w-cost", w).map(drop)
    })
}

/// `--w-latency`: quality points per second, within the learner's bounds.
fn w_latency_arg(text: &str) -> Result<f64, String> {
    checked_number(text, |w| {
        quiver_bandit::limits::W_LATENCY.check("--w-latency", w).map(drop)
    })
}

/// `--missing-feedback`: a share in [0, 1).
fn missing_feedback_arg(text: &str) -> Result<f64, String> {
    checked_number(text, quiver_sim::replay::check_missing_feedback)
}

/// Log lines held while standard error is not read, a few MB; later ones are dropped.
const QUEUED_LOG_LINES: usize = 16_384;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Diagnostics reach standard error through a queue and a thread of their own: when
    // its reader stalls (a full pipe, a slow journal), lines are dropped, never requests
    // held. The guard writes what is queued at exit.
    let (stderr, _written_at_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LOG_LINES)
        .lossy(true)
        .finish(std::io::stderr());
    let mut error_line = stderr.clone();
    // Colours only for a terminal: a file or a journal would keep their escape codes.
    let colours =
        std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_writer(stderr)
        .with_ansi(colours)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    match cli.log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command {
        Command::Replay(args) => replay_cmd::run(*args),
        Command::Ope(args) => ope_cmd::run(args),
        Command::Data(command) => data_cmd::run(command),
        Command::Log(command) => log_cmd::run(command),
        Command::Priors(command) => priors_cmd::run(command),
        Command::Serve(args) => serve_cmd::run_serve(args),
        Command::Suite(args) => suite_cmd::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Plain text, through the queue too: the error that ends a long run (a stop
            // whose snapshot failed) must not wait for a reader that stopped reading. One
            // write, so that it is queued whole.
            let _ = error_line.write_all(format!("error: {e:#}\n").as_bytes());
            std::process::ExitCode::FAILURE
        }
    }
}

/// Opens the decision log at `data`, read a chunk at a time, saying on standard error which
/// of its decisions it leaves out as made in an earlier context of their route.
pub fn open_log(data: &str, format: Format, split: Option<&Split>) -> anyhow::Result<LogStream> {
    let log = LogStream::open(data, format, split, CHUNK_ROWS)?;
    if let Some(note) = log.header().earlier_contexts_note() {
        eprintln!("{note}");
    }
    Ok(log)
}

/// Splits a comma-separated list of policy specs at the commas outside parentheses:
/// `linucb(alpha=0.3,gamma=0.99),eps(0.05)` is two specs.
fn split_specs(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut current = String::new();
    for c in list.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The policy specs of a comma-separated `list` given as `flag`, each once: two spellings
/// of one policy (`random` and `uniform`, or a parameter at its default written out) would
/// report the same policy twice under one name.
pub fn parse_specs(list: &str, flag: &str) -> anyhow::Result<Vec<quiver_bandit::PolicySpec>> {
    let mut specs: Vec<quiver_bandit::PolicySpec> = Vec::new();
    for text in split_specs(list) {
        let spec: quiver_bandit::PolicySpec = text.parse().map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        if specs.contains(&spec) {
            anyhow::bail!("{flag}: `{text}` is `{spec}`, listed already; list each policy once");
        }
        specs.push(spec);
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::{parse_specs, split_specs};

    #[test]
    fn specs_split_at_top_level_commas() {
        assert_eq!(
            split_specs("linucb(alpha=0.3,gamma=0.99), eps(0.05),random"),
            vec!["linucb(alpha=0.3,gamma=0.99)", "eps(0.05)", "random"]
        );
    }

    #[test]
    fn a_policy_listed_twice_is_refused() {
        assert_eq!(parse_specs("random,lints", "--policies").unwrap().len(), 2);
        for (list, second) in [
            ("random,uniform", "uniform"),
            ("linucb,linucb(alpha=0.1)", "linucb(alpha=0.1)"),
        ] {
            let error = parse_specs(list, "--policies").unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("--policies: `{second}` is `"))
                    && error.ends_with("listed already; list each policy once"),
                "{error}"
            );
        }
    }
}
