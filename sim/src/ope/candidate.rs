//! Running a candidate policy along a log: its PMF on every row, its own draw, and the
//! estimator inputs for each metric.

use ndarray::Array2;
use quiver_bandit::{Arm, Context, Learner, LearnerConfig, Objective, Outcome, PolicySpec, Request};
use serde::Serialize;

use super::{
    cross_fitted_predictions, diagnostics, estimate, EstimateReport, Estimator, OpeInputs, WeightDiagnostics,
};
use crate::data::LoggedDataset;
use crate::error::Result;

/// The candidate's view of every logged row.
#[derive(Debug, Clone)]
pub struct CandidateRun {
    /// `rows x arms`: the candidate's probability of each arm on each row.
    pub pmf: Array2<f64>,
    /// The arm the candidate itself drew on each row.
    pub sampled: Vec<usize>,
}

/// Runs `spec` along `log` in order. On each row it decides (PMF and own draw, from the
/// row's own random stream) from what came before, then, with `learn`, learns the logged
/// outcome.
pub fn run_candidate(
    log: &LoggedDataset,
    contexts: &[Context],
    spec: &PolicySpec,
    objective: Objective,
    seed: u64,
    learn: bool,
) -> Result<CandidateRun> {
    let k = log.arms.len();
    let dim = contexts.first().map_or(1, |c| c.features.len());
    let mut config = LearnerConfig::new(spec.clone(), dim);
    config.objective = objective;
    config.seed = seed;
    // Decisions are only read here, never resolved: remember few of them.
    config.max_tracked_decisions = 16;
    let mut learner = Learner::new(config, log.arms.iter().map(Arm::new).collect())?;
    let mut pmf = Array2::zeros((log.rows(), k));
    let mut sampled = Vec::with_capacity(log.rows());
    for (i, context) in contexts.iter().enumerate() {
        let decision = learner.decide(&Request::new(context.clone()))?;
        for estimate in &decision.arms {
            let a = learner.arm_index(&estimate.arm)?;
            pmf[[i, a]] = estimate.probability;
        }
        sampled.push(learner.arm_index(&decision.arm)?);
        if learn {
            let mut outcome = Outcome::new(log.latency_ms[i], log.cost_usd[i]);
            outcome.error = log.error[i];
            outcome.quality = log.quality[i];
            learner.learn(&log.arms[log.arm[i]], context, &outcome)?;
        }
    }
    Ok(CandidateRun { pmf, sampled })
}

/// A metric of a logged row that estimators can value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// `quality - w_cost cost - w_latency latency_s`; rows without quality (that did not
    /// fail) are skipped.
    Reward(Objective),
    /// Quality; rows without quality (that did not fail) are skipped.
    Quality,
    /// Cost in USD.
    Cost,
}

impl Metric {
    /// The name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Metric::Reward(_) => "value",
            Metric::Quality => "quality",
            Metric::Cost => "cost_usd",
        }
    }

    /// The quality of row `i`, credited as the learner credits it.
    fn quality(log: &LoggedDataset, i: usize) -> Option<f64> {
        quiver_bandit::credited_quality(log.quality[i], log.error[i])
    }

    fn observe(&self, log: &LoggedDataset, i: usize) -> Option<f64> {
        match self {
            Metric::Reward(o) => {
                Self::quality(log, i).map(|q| o.reward(q, log.cost_usd[i], log.latency_ms[i]))
            }
            Metric::Quality => Self::quality(log, i),
            Metric::Cost => Some(log.cost_usd[i]),
        }
    }
}

/// The estimator inputs for one metric: the rows where it was observed, the candidate's
/// probabilities and the cross-fitted reward model.
pub fn inputs_for(
    log: &LoggedDataset,
    contexts: &[Context],
    run: &CandidateRun,
    metric: Metric,
    clip: f64,
    switch_tau: f64,
) -> OpeInputs {
    let observed: Vec<Option<f64>> = (0..log.rows()).map(|i| metric.observe(log, i)).collect();
    let rows: Vec<(&[f64], usize, Option<f64>)> = contexts
        .iter()
        .enumerate()
        .map(|(i, c)| (c.features.as_slice(), log.arm[i], observed[i]))
        .collect();
    let q = cross_fitted_predictions(&rows, log.arms.len());
    let mut inputs = OpeInputs {
        clip,
        switch_tau,
        ..OpeInputs::default()
    };
    for (i, r) in observed.iter().enumerate() {
        let Some(r) = r else { continue };
        let a = log.arm[i];
        let (pi, qi) = (run.pmf.row(i), q.row(i));
        inputs.reward.push(*r);
        inputs.propensity.push(log.propensity[i]);
        inputs.target.push(pi[a]);
        inputs.q_logged.push(qi[a]);
        inputs.dm.push(pi.iter().zip(&qi).map(|(p, q)| p * q).sum());
        inputs.accepted.push(run.sampled[i] == a);
    }
    inputs
}

/// Every requested estimate of one metric, with the weight diagnostics.
#[derive(Debug, Clone, Serialize)]
pub struct MetricReport {
    /// `value`, `quality` or `cost_usd`.
    pub metric: String,
    /// Rows where the metric was observed.
    pub rows: usize,
    /// Importance-weight diagnostics on those rows.
    pub weights: WeightDiagnostics,
    /// One entry per estimator.
    pub estimates: Vec<EstimateReport>,
}

/// Estimates `metric` with each estimator.
pub fn report_metric(
    inputs: &OpeInputs,
    metric: Metric,
    estimators: &[Box<dyn Estimator>],
    resamples: usize,
    seed: u64,
) -> MetricReport {
    MetricReport {
        metric: metric.name().to_string(),
        rows: inputs.rows(),
        weights: diagnostics(inputs),
        estimates: estimators
            .iter()
            .map(|e| estimate(e.as_ref(), inputs, resamples, seed))
            .collect(),
    }
}
