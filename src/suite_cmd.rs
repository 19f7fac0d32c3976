//! `quiver suite`: the validation protocol defaults are chosen by. Every candidate runs on
//! every case (generated item-response tables of 3 to 60 models and 3-fold
//! cross-validation of the built-in scenario's train split, with and without drift, and,
//! given their directories, 3-fold cross-validation of RouterBench's train files and of the
//! RouteLLM tables; each also from a cold start, with each quality at once and late) under
//! budgets of 10%, 25% and 50% of the best model's cost; the report is each candidate's lift
//! over the hull per case, then its mean and worst lift, its worst spend and its worst lift
//! at the budget over the trained cases, and its mean and worst lift from cold, at once and
//! late. `--against` compares the report with an earlier `--json` run, per table and kind
//! of case, and `--from` reads one instead of running the suite.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use quiver_bandit::prior::{check_cap, DEFAULT_PRIOR_CAP};
use quiver_sim::priors::TrainFeedback;
use quiver_sim::suite::{self, Candidate, CaseResult, LiftChange};

use crate::parse_specs;
use crate::progress::bar;
use crate::replay_cmd::DEFAULT_POLICIES;

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct SuiteArgs {
    /// Comma-separated policy specs to compare.
    #[arg(long, default_value = DEFAULT_POLICIES.as_str())]
    candidates: String,
    /// How the training rows teach the candidates: `full` (priors) or `bandit` (a replay).
    #[arg(long, default_value = "full")]
    train_feedback: TrainFeedback,
    /// Passes over each case's training rows, under bandit feedback [default: 1].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    train_passes: Option<usize>,
    /// The priors' cap on observations per model, under full feedback [default: the
    /// server's].
    #[arg(long)]
    prior_cap: Option<f64>,
    /// Seeds per case.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    seeds: u64,
    /// A RouterBench directory: its `*_train.csv` files join the suite as 3 folds (its
    /// test files are never read).
    #[arg(long)]
    routerbench: Option<String>,
    /// A RouteLLM directory (`mmlu/`, `gsm8k/`): each table joins the suite as 3 folds.
    #[arg(long)]
    routellm: Option<String>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Read the results of an earlier `--json` run from this file instead of running the
    /// suite.
    #[arg(long, conflicts_with_all = ["candidates", "train_feedback", "train_passes", "prior_cap", "seeds", "routerbench", "routellm"])]
    from: Option<PathBuf>,
    /// Compare with an earlier `--json` run (of another build, say): each candidate's mean
    /// lift per table (its folds together) and per kind of case, in both runs, over the
    /// cases both have.
    #[arg(long, conflicts_with = "json")]
    against: Option<PathBuf>,
}

/// The results of `quiver suite --json`, read from `path`: each case once.
fn read_results(path: &Path) -> Result<Vec<CaseResult>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let results: Vec<CaseResult> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not the output of `quiver suite --json`", path.display()))?;
    if results.is_empty() {
        bail!("{}: no case in it; a run of the suite has some", path.display());
    }
    if let Some(case) = suite::repeated_case(&results) {
        bail!(
            "{}: {case} is there twice; a run of the suite has each case once",
            path.display()
        );
    }
    Ok(results)
}

pub fn run(args: SuiteArgs) -> Result<()> {
    let base = args.against.as_deref().map(read_results).transpose()?;
    let results = match &args.from {
        Some(path) => read_results(path)?,
        None => run_suite(&args)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    // Compared first: a comparison that fails prints no report.
    let comparison = match (base, &args.against) {
        (Some(base), Some(path)) => against(&results, &base, path)?,
        _ => String::new(),
    };
    print!("{}{comparison}", report(&results));
    Ok(())
}

fn run_suite(args: &SuiteArgs) -> Result<Vec<CaseResult>> {
    // A setting the training does not use would leave the run as the default's, under
    // another name.
    match args.train_feedback {
        TrainFeedback::Full if args.train_passes.is_some() => {
            bail!("--train-passes applies to --train-feedback bandit")
        }
        TrainFeedback::Bandit if args.prior_cap.is_some() => {
            bail!("--prior-cap applies to --train-feedback full (priors)")
        }
        _ => {}
    }
    let prior_cap = args.prior_cap.unwrap_or(DEFAULT_PRIOR_CAP);
    check_cap(prior_cap).context("--prior-cap")?;
    let candidates: Vec<Candidate> = parse_specs(&args.candidates, "--candidates")?
        .into_iter()
        .map(|spec| Candidate {
            spec,
            feedback: args.train_feedback,
            train_passes: args.train_passes.unwrap_or(1),
            prior_cap,
        })
        .collect();
    if candidates.is_empty() {
        bail!("--candidates is empty");
    }
    let tables = suite::tables(args.routerbench.as_deref(), args.routellm.as_deref())?;
    let cases = suite::cases(tables, true, true)?;
    // Each seed runs twice: under bandit feedback and with full information.
    let progress = bar(
        cases.len() as u64 * candidates.len() as u64 * args.seeds * 2,
        "validating",
    );
    let results = suite::run(&cases, &candidates, args.seeds, &|| progress.inc(1))?;
    progress.finish_and_clear();
    Ok(results)
}

/// The comparison with a base run: per table group, then per kind of case, each
/// candidate's mean lift in the base and in this run, and the change.
fn against(results: &[CaseResult], base: &[CaseResult], path: &Path) -> Result<String> {
    let comparison = suite::compare(results, base);
    if comparison.by_kind.is_empty() {
        bail!(
            "no case of this run is in {} (cases match by table, budget and candidate)",
            path.display()
        );
    }
    let all = || comparison.by_table.iter().chain(&comparison.by_kind);
    let sets = all().map(|c| c.cases_of.len()).max().unwrap_or(5).max(5);
    let width = all().map(|c| c.candidate.len()).max().unwrap_or(9).max(9);
    let mut out = format!(
        "\nagainst {}: mean lift over the hull in both runs, over the cases both have\n",
        path.display()
    );
    let mut section = |title: &str, changes: &[LiftChange]| {
        out.push_str(&format!(
            "{title:<sets$} {:<width$} {:>5} {:>8} {:>8} {:>8}\n",
            "candidate", "cases", "base", "this", "change"
        ));
        for c in changes {
            out.push_str(&format!(
                "{:<sets$} {:<width$} {:>5} {:>+8.4} {:>+8.4} {:>+8.4}\n",
                c.cases_of,
                c.candidate,
                c.cases,
                c.base,
                c.new,
                c.new - c.base
            ));
        }
    };
    section("table", &comparison.by_table);
    section("cases", &comparison.by_kind);
    if comparison.unmatched > 0 {
        out.push_str(&format!(
            "({} cases of this run are not in {} and are left out)\n",
            comparison.unmatched,
            path.display()
        ));
    }
    if comparison.base_unmatched > 0 {
        out.push_str(&format!(
            "({} cases of {} are not in this run and are left out)\n",
            comparison.base_unmatched,
            path.display()
        ));
    }
    if comparison.unnumbered > 0 {
        out.push_str(&format!(
            "({} cases of both whose lift is no number in one or both are left out)\n",
            comparison.unnumbered
        ));
    }
    Ok(out)
}

/// The per-case table, then one line per candidate: mean and worst lift, worst spend, worst
/// lift at the budget.
fn report(results: &[CaseResult]) -> String {
    let width = results
        .iter()
        .map(|r| r.candidate.len())
        .max()
        .unwrap_or(9)
        .max(9);
    let tables = results.iter().map(|r| r.table.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{:<tables$} {:>6} {:<width$} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}\n",
        "table", "budget", "candidate", "quality", "spend", "hull", "lift", "at_budget", "full_lift"
    );
    for r in results {
        out.push_str(&format!(
            "{:<tables$} {:>5.0}% {:<width$} {:>8.4} {:>7.1}% {:>8.4} {:>+8.4} {:>+9.4} {:>+9.4}\n",
            r.table,
            100.0 * r.budget_share,
            r.candidate,
            r.quality,
            100.0 * r.spend_vs_budget,
            r.hull,
            r.lift,
            r.lift_at_budget,
            r.full_information_lift
        ));
    }
    out.push_str(&format!(
        "\n{:<width$} {:>10} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "candidate",
        "mean lift",
        "worst lift",
        "worst spend",
        "at budget",
        "cold mean",
        "cold worst",
        "late mean",
        "late worst",
        "full mean",
        "cold full"
    ));
    out.push_str(&format!(
        "(trained cases, then cold starts with each quality at once, then {} decisions late; \
         worst spend: the farthest from the budget where it can be kept; \
         at budget: the worst lift over the hull at the budget instead of at the spend, where it can be kept; \
         full: the mean lift of the same candidate shown every model's outcome)\n",
        suite::LATE_FEEDBACK
    ));
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        if !names.contains(&r.candidate.as_str()) {
            names.push(&r.candidate);
        }
    }
    // Over the cases that have the figure (a full-information lift is not always run);
    // n/a over none (a run without trained or late cases, read with --from).
    let shown = |lift: Option<f64>| lift.map_or("n/a".into(), |l| format!("{l:+.4}"));
    let known = |lifts: &[f64]| -> Vec<f64> { lifts.iter().copied().filter(|l| l.is_finite()).collect() };
    let mean = |lifts: &[f64]| {
        let lifts = known(lifts);
        shown((!lifts.is_empty()).then(|| lifts.iter().sum::<f64>() / lifts.len() as f64))
    };
    let worst = |lifts: &[f64]| shown(known(lifts).into_iter().min_by(f64::total_cmp));
    for name in names {
        let lifts = |kind: &str, full: bool| -> Vec<f64> {
            results
                .iter()
                .filter(|r| r.candidate == name && r.kind() == kind)
                .map(|r| if full { r.full_information_lift } else { r.lift })
                .collect()
        };
        let (trained, cold, late) = (
            lifts("trained", false),
            lifts("cold", false),
            lifts("late", false),
        );
        let feasible = || {
            results
                .iter()
                .filter(|r| r.candidate == name && r.kind() == "trained" && r.feasible)
        };
        let spend = feasible()
            .map(|r| r.spend_vs_budget)
            .filter(|s| s.is_finite())
            .max_by(|a, b| (a - 1.0).abs().total_cmp(&(b - 1.0).abs()))
            .map_or("n/a".into(), |s| format!("{:.1}%", 100.0 * s));
        let at_budget: Vec<f64> = feasible().map(|r| r.lift_at_budget).collect();
        out.push_str(&format!(
            "{:<width$} {:>10} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            name,
            mean(&trained),
            worst(&trained),
            spend,
            worst(&at_budget),
            mean(&cold),
            worst(&cold),
            mean(&late),
            worst(&late),
            mean(&lifts("trained", true)),
            mean(&lifts("cold", true))
        ));
    }
    out
}
