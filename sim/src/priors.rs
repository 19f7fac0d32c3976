//! Fitting [`Priors`] from a table: every arm's outcome on every row of a wide
//! (full-information) table, or the chosen arm's outcome on each decision of a log. The
//! math is [`quiver_bandit::prior`]'s; this module only walks the rows.

use std::collections::BTreeMap;

use quiver_bandit::prior::{FoldStatistics, PRIORS_VERSION};
use quiver_bandit::{ArmPrior, Context, Priors};
use rayon::prelude::*;

use crate::context::ContextBuilder;
use crate::data::LogStream;
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
/// need no reweighting (its propensities matter for off-policy values, not here). The log
/// is read a chunk at a time ([`LogStream`]): the fit keeps sufficient statistics only.
pub fn fit_logged(log: &mut LogStream, cap: f64) -> Result<Priors> {
    let header = log.header().clone();
    let dim = ContextBuilder::for_log(&header).dim();
    let mut arms: Vec<ArmFit> = header.arms.iter().map(|_| ArmFit::new(dim)).collect();
    log.for_each_chunk(|chunk| {
        let contexts = ContextBuilder::log_contexts(&chunk)?;
        arms.par_iter_mut().enumerate().for_each(|(arm, fit)| {
            for i in (0..chunk.rows()).filter(|&i| chunk.arm[i] == arm) {
                fit.add(&contexts[i], chunk.quality[i], chunk.cost_usd[i]);
            }
        });
        Ok(())
    })?;
    let arms: BTreeMap<String, _> = header
        .arms
        .iter()
        .zip(arms)
        .filter_map(|(name, fit)| Some((name.clone(), fit.finish(cap)?)))
        .collect();
    Ok(Priors {
        version: PRIORS_VERSION,
        context: ContextBuilder::for_log(&header).definition(),
        dim,
        cap,
        source: format!("{} ({} logged decisions)", header.source, log.rows()),
        arms,
    })
}

/// One arm's statistics from the log rows that chose it, in log order.
struct ArmFit {
    stats: FoldStatistics,
    seen: usize,
    cost: f64,
    tokens: f64,
}

impl ArmFit {
    fn new(dim: usize) -> Self {
        ArmFit {
            stats: FoldStatistics::new(dim),
            seen: 0,
            cost: 0.0,
            tokens: 0.0,
        }
    }

    fn add(&mut self, context: &Context, quality: Option<f64>, cost_usd: f64) {
        if let Some(q) = quality {
            self.stats.add(self.seen, &context.features, q);
        }
        self.seen += 1;
        self.cost += cost_usd;
        self.tokens += f64::from(context.input_tokens);
    }

    fn finish(self, cap: f64) -> Option<ArmPrior> {
        Some(
            self.stats
                .fit(cap)?
                .with_usage(self.seen as f64, self.cost, self.tokens),
        )
    }
}
