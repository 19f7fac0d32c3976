//! Fitting [`Priors`] from a table: every arm's outcome on every row of a wide
//! (full-information) table, or the chosen arm's outcome on each decision of a log. The
//! math is [`quiver_bandit::prior`]'s; this module only walks the rows.

use std::collections::BTreeMap;

use quiver_bandit::prior::{FoldStatistics, PRIORS_VERSION};
use quiver_bandit::{Context, Priors};
use rayon::prelude::*;

use crate::context::ContextBuilder;
use crate::data::LoggedDataset;
use crate::error::Result;
use crate::replay::Environment;

/// How a table to train on teaches a learner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainFeedback {
    /// Priors fitted from every arm's outcome on every row.
    Full,
    /// A replay under bandit feedback: the learner sees only what it chose.
    Bandit,
}

impl std::str::FromStr for TrainFeedback {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "full" => Ok(TrainFeedback::Full),
            "bandit" => Ok(TrainFeedback::Bandit),
            other => Err(format!("`{other}` is not a training feedback (full or bandit)")),
        }
    }
}

/// Priors for every arm of a full-information table, featurized as `env` was with a
/// builder of definition `context`, capped at `cap` observations per arm.
pub fn fit_wide(env: &Environment, context: &str, cap: f64) -> Priors {
    let data = env.data();
    let tokens: f64 = (0..data.rows()).map(|row| f64::from(env.input_tokens(row))).sum();
    let arms: BTreeMap<String, _> = data
        .arms
        .par_iter()
        .enumerate()
        .filter_map(|(arm, name)| {
            let mut stats = FoldStatistics::new(env.dim());
            let mut cost = 0.0;
            for row in 0..data.rows() {
                stats.add(row, env.features(row), data.quality(row, arm));
                cost += data.cost_usd(row, arm);
            }
            let mut prior = stats.fit(cap)?;
            if data.cost_usd.is_some() {
                prior = prior.with_usage(data.rows() as f64, cost, tokens);
                let mut cost_residuals = FoldStatistics::new(env.dim());
                for row in 0..data.rows() {
                    let expected = prior.usage.expected_cost_usd(f64::from(env.input_tokens(row)));
                    cost_residuals.add(row, env.features(row), data.cost_usd(row, arm) - expected);
                }
                prior.cost_correction = cost_residuals.fit_ridge(prior.scale());
            }
            Some((name.clone(), prior))
        })
        .collect();
    Priors {
        version: PRIORS_VERSION,
        context: context.to_string(),
        dim: env.dim(),
        cap,
        source: format!("{} ({} rows, every arm observed)", data.source, data.rows()),
        arms,
    }
}

/// Priors from a log's decisions that carry a quality: each arm learns from the rows where
/// it was chosen, its cost per token from all of them (no cost correction: a log's costs
/// are of the chosen model only, and a few decisions per context would not fit one). An
/// arm no decision with a quality chose gets no prior. The fit conditions on the context, so the logging policy's choices
/// need no reweighting (its propensities matter for off-policy values, not here).
pub fn fit_logged(log: &LoggedDataset, cap: f64) -> Result<Priors> {
    let builder = ContextBuilder::for_log(log);
    let contexts: Vec<Context> = ContextBuilder::log_contexts(log)?;
    let dim = builder.dim();
    let arms: BTreeMap<String, _> = log
        .arms
        .par_iter()
        .enumerate()
        .filter_map(|(arm, name)| {
            let mut stats = FoldStatistics::new(dim);
            let (mut requests, mut cost, mut tokens) = (0.0, 0.0, 0.0);
            let rows = (0..log.rows()).filter(|&i| log.arm[i] == arm);
            for (seen, i) in rows.enumerate() {
                if let Some(q) = log.quality[i] {
                    stats.add(seen, &contexts[i].features, q);
                }
                requests += 1.0;
                cost += log.cost_usd[i];
                tokens += f64::from(contexts[i].input_tokens);
            }
            Some((name.clone(), stats.fit(cap)?.with_usage(requests, cost, tokens)))
        })
        .collect();
    Ok(Priors {
        version: PRIORS_VERSION,
        context: builder.definition(),
        dim,
        cap,
        source: format!("{} ({} logged decisions)", log.source, log.rows()),
        arms,
    })
}
