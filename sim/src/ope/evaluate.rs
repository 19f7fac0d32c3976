//! One candidate evaluated on a log: every metric by every chosen estimator, under one
//! validated set of estimator settings. `quiver ope` and `quiver replay` on a log both
//! evaluate through here.

use quiver_bandit::{Objective, PolicySpec};
use serde::Serialize;

use super::{chunk_inputs, Candidate, Estimator, Metric, MetricReport, MetricStream, RewardFit};
use crate::context::ContextBuilder;
use crate::data::LogStream;
use crate::error::{Result, SimError};

/// How the estimators weigh and resample, checked once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EstimatorSettings {
    clip: f64,
    switch_tau: f64,
    bootstrap: usize,
    seed: u64,
}

impl EstimatorSettings {
    /// Importance weights clipped at `clip` (> 0, infinity for none), Switch-DR's
    /// threshold `switch_tau` (finite, > 0), `bootstrap` resamples (0 for none), `seed`.
    pub fn new(clip: f64, switch_tau: f64, bootstrap: usize, seed: u64) -> Result<Self> {
        Self::check_clip(clip)?;
        Self::check_switch_tau(switch_tau)?;
        Ok(EstimatorSettings {
            clip,
            switch_tau,
            bootstrap,
            seed,
        })
    }

    /// Checks a largest importance weight: above 0 (infinity for none).
    pub fn check_clip(clip: f64) -> Result<()> {
        if clip.is_nan() || clip <= 0.0 {
            return Err(SimError::InvalidOption(format!(
                "--clip must be positive, not {clip}"
            )));
        }
        Ok(())
    }

    /// Checks Switch-DR's threshold: finite and above 0.
    pub fn check_switch_tau(switch_tau: f64) -> Result<()> {
        if !switch_tau.is_finite() || switch_tau <= 0.0 {
            return Err(SimError::InvalidOption(format!(
                "--switch-tau must be a positive number, not {switch_tau}"
            )));
        }
        Ok(())
    }
}

/// A candidate's estimated reward, quality and cost on a log.
#[derive(Debug, Clone, Serialize)]
pub struct OpeSummary {
    /// The log's path.
    pub dataset: String,
    /// Decisions evaluated.
    pub rows: usize,
    /// The log's arms.
    pub arms: Vec<String>,
    /// The candidate's specification.
    pub policy: String,
    /// Whether the candidate learned along the log (else it was frozen as it started).
    pub learning: bool,
    /// Reward, quality and cost, each by every estimator.
    pub metrics: Vec<MetricReport>,
}

/// Every metric's estimates of `spec` on the log `log` streams, learning along the log
/// when `learn`. The log is read twice, a chunk at a time: once for the reward models'
/// statistics, once for the candidate's decisions and the estimators' sums, so memory
/// holds one chunk, whatever the log's length.
pub fn evaluate(
    log: &mut LogStream,
    spec: &PolicySpec,
    objective: Objective,
    estimators: &[Box<dyn Estimator>],
    settings: EstimatorSettings,
    learn: bool,
) -> Result<OpeSummary> {
    let header = log.header().clone();
    let (dim, arms) = (ContextBuilder::for_log(&header).dim(), header.arms.len());
    let metrics = [Metric::Reward(objective), Metric::Quality, Metric::Cost];
    let mut fits = metrics.map(|_| RewardFit::new(dim, arms));
    let mut first_row = 0;
    log.for_each_chunk(|chunk| {
        let contexts = ContextBuilder::log_contexts(&chunk)?;
        for (fit, metric) in fits.iter_mut().zip(metrics) {
            for (i, context) in contexts.iter().enumerate() {
                fit.add(
                    first_row + i,
                    &context.features,
                    chunk.arm[i],
                    metric.observe(&chunk, i),
                );
            }
        }
        first_row += chunk.rows();
        Ok(())
    })?;
    let models = fits.map(RewardFit::solve);
    let mut candidate = Candidate::new(&header.arms, dim, spec, objective, settings.seed, learn)?;
    let mut streams = metrics.map(|m| MetricStream::new(m, estimators, settings.bootstrap, settings.seed));
    first_row = 0;
    log.for_each_chunk(|chunk| {
        let contexts = ContextBuilder::log_contexts(&chunk)?;
        let run = candidate.run(&chunk, &contexts)?;
        for ((stream, metric), q) in streams.iter_mut().zip(metrics).zip(&models) {
            let (clip, tau) = (settings.clip, settings.switch_tau);
            stream.add(&chunk_inputs(
                &chunk, &contexts, &run, metric, q, first_row, clip, tau,
            ));
        }
        first_row += chunk.rows();
        Ok(())
    })?;
    Ok(OpeSummary {
        dataset: header.source.clone(),
        rows: log.rows(),
        arms: header.arms.clone(),
        policy: spec.to_string(),
        learning: learn,
        metrics: streams.into_iter().map(MetricStream::finish).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_refuse_what_no_estimator_can_use() {
        assert!(EstimatorSettings::new(f64::INFINITY, 100.0, 0, 0).is_ok());
        for (clip, tau) in [
            (0.0, 1.0),
            (f64::NAN, 1.0),
            (-1.0, 1.0),
            (1.0, 0.0),
            (1.0, f64::INFINITY),
        ] {
            assert!(EstimatorSettings::new(clip, tau, 0, 0).is_err(), "{clip} {tau}");
        }
    }
}
