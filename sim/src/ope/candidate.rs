//! Running a candidate policy along a log: its PMF on every row, its own draw, and the
//! estimator inputs for each metric.

use ndarray::Array2;
use quiver_bandit::{Arm, Context, Learner, LearnerConfig, Objective, Outcome, PolicySpec};
use serde::Serialize;

use super::reward_model::{CrossFitted, RewardFit};
use super::{EstimateReport, EstimateStream, Estimator, OpeInputs, WeightDiagnostics, WeightStream};
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

/// A candidate policy running along a log, a chunk of rows at a time.
pub struct Candidate {
    learner: Learner,
    learn: bool,
}

impl Candidate {
    /// `spec` over `arms`, on contexts of `dim` features, drawing from a stream apart from
    /// a logger's of the same `seed` ([`quiver_bandit::ope::candidate_seed`]); with
    /// `learn`, it learns each row's logged outcome after deciding on it.
    pub fn new(
        arms: &[String],
        dim: usize,
        spec: &PolicySpec,
        objective: Objective,
        seed: u64,
        learn: bool,
    ) -> Result<Self> {
        let mut config = LearnerConfig::new(spec.clone(), dim);
        config.objective = objective;
        config.seed = quiver_bandit::ope::candidate_seed(seed);
        // Decisions are only read here, never resolved: remember few of them.
        config.max_tracked_decisions = 16;
        Ok(Candidate {
            learner: Learner::new(config, arms.iter().map(Arm::new).collect())?,
            learn,
        })
    }

    /// Runs along the rows of `log` (the next chunk of the log) in order. On each row it
    /// decides (PMF and own draw, from the row's own random stream) from what came before,
    /// on the request as the route decided it (models left out as unavailable, the models
    /// it admitted, its own trade-off, where logged), then learns the logged outcome.
    pub fn run(&mut self, log: &LoggedDataset, contexts: &[Context]) -> Result<CandidateRun> {
        let learner = &mut self.learner;
        let objective = learner.config().objective;
        let mut pmf = Array2::zeros((log.rows(), log.arms.len()));
        let mut sampled = Vec::with_capacity(log.rows());
        for (i, context) in contexts.iter().enumerate() {
            let choice = learner.decide_pmf(&log.request(i, context.clone(), objective))?;
            pmf.row_mut(i).assign(&ndarray::ArrayView1::from(&choice.pmf));
            sampled.push(choice.arm);
            if !self.learn {
                continue;
            }
            let arm = &log.arms[log.arm[i]];
            if log.outcome[i] {
                let mut outcome = Outcome::new(log.latency_ms[i], log.cost_usd[i]);
                outcome.error = log.error[i];
                outcome.quality = log.quality[i];
                learner.learn(arm, context, &outcome)?;
            } else if let Some(quality) = log.quality[i] {
                // Feedback without an outcome: a quality and no cost, as the route learned.
                learner.learn_feedback(arm, context, quality)?;
            }
        }
        Ok(CandidateRun { pmf, sampled })
    }
}

/// Runs `spec` along the whole of `log` ([`Candidate::run`]).
pub fn run_candidate(
    log: &LoggedDataset,
    contexts: &[Context],
    spec: &PolicySpec,
    objective: Objective,
    seed: u64,
    learn: bool,
) -> Result<CandidateRun> {
    let dim = contexts.first().map_or(1, |c| c.features.len());
    Candidate::new(&log.arms, dim, spec, objective, seed, learn)?.run(log, contexts)
}

/// A metric of a logged row that estimators can value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// `quality - w_cost cost - w_latency latency_s`; rows without quality (that did not
    /// fail) are skipped, and so are rows without an outcome where the weights need one.
    Reward(Objective),
    /// Quality; rows without quality (that did not fail) are skipped.
    Quality,
    /// Cost in USD; rows whose outcome has not come are skipped.
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

    /// The metric on row `i` of `log`, if observed.
    pub fn observe(&self, log: &LoggedDataset, i: usize) -> Option<f64> {
        match self {
            Metric::Reward(o) => {
                let quality = Self::quality(log, i)?;
                if log.outcome[i] {
                    Some(o.reward(quality, log.cost_usd[i], log.latency_ms[i]))
                } else {
                    // Without its outcome, a reward that weighs cost or latency is unknown.
                    (o.w_cost == 0.0 && o.w_latency == 0.0).then_some(quality)
                }
            }
            Metric::Quality => Self::quality(log, i),
            Metric::Cost => log.outcome[i].then_some(log.cost_usd[i]),
        }
    }
}

/// The estimator inputs for one metric on the whole of `log`: the rows where it was
/// observed, the candidate's probabilities and the cross-fitted reward model.
pub fn inputs_for(
    log: &LoggedDataset,
    contexts: &[Context],
    run: &CandidateRun,
    metric: Metric,
    clip: f64,
    switch_tau: f64,
) -> OpeInputs {
    let dim = contexts.first().map_or(0, |c| c.features.len());
    let mut fit = RewardFit::new(dim, log.arms.len());
    for (i, context) in contexts.iter().enumerate() {
        fit.add(i, &context.features, log.arm[i], metric.observe(log, i));
    }
    chunk_inputs(log, contexts, run, metric, &fit.solve(), 0, clip, switch_tau)
}

/// The estimator inputs for one metric on a chunk of a log whose first row is the log's
/// row `first_row` (which decides each row's fold of the reward model `q`).
#[allow(clippy::too_many_arguments)]
pub fn chunk_inputs(
    log: &LoggedDataset,
    contexts: &[Context],
    run: &CandidateRun,
    metric: Metric,
    q: &CrossFitted,
    first_row: usize,
    clip: f64,
    switch_tau: f64,
) -> OpeInputs {
    let mut inputs = OpeInputs {
        clip,
        switch_tau,
        ..OpeInputs::default()
    };
    let mut qi = vec![0.0; log.arms.len()];
    for (i, context) in contexts.iter().enumerate() {
        let Some(r) = metric.observe(log, i) else { continue };
        q.predict(first_row + i, &context.features, &mut qi);
        let a = log.arm[i];
        let pi = run.pmf.row(i);
        inputs.reward.push(r);
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
    let mut stream = MetricStream::new(metric, estimators, resamples, seed);
    stream.add(inputs);
    stream.finish()
}

/// A metric's report over rows that come a chunk at a time.
pub struct MetricStream<'a> {
    metric: Metric,
    weights: WeightStream,
    estimates: Vec<EstimateStream<'a>>,
}

impl<'a> MetricStream<'a> {
    /// No rows yet; `resamples` bootstrap resamples (0: none) drawn from `seed`.
    pub fn new(metric: Metric, estimators: &'a [Box<dyn Estimator>], resamples: usize, seed: u64) -> Self {
        MetricStream {
            metric,
            weights: WeightStream::default(),
            estimates: estimators
                .iter()
                .map(|e| EstimateStream::new(e.as_ref(), resamples, seed))
                .collect(),
        }
    }

    /// Adds the next rows.
    pub fn add(&mut self, inputs: &OpeInputs) {
        self.weights.add(inputs);
        for e in &mut self.estimates {
            e.add(inputs);
        }
    }

    /// The report.
    pub fn finish(self) -> MetricReport {
        let weights = self.weights.finish();
        MetricReport {
            metric: self.metric.name().to_string(),
            rows: weights.rows,
            weights,
            estimates: self.estimates.into_iter().map(EstimateStream::finish).collect(),
        }
    }
}
