//! One candidate evaluated on a log: every metric by every chosen estimator, under one
//! validated set of estimator settings. `quiver ope` and `quiver replay` on a log both
//! evaluate through here.

use quiver_bandit::{Context, Objective, PolicySpec};
use serde::Serialize;

use super::{inputs_for, report_metric, run_candidate, Estimator, Metric, MetricReport};
use crate::data::LoggedDataset;
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
        if clip.is_nan() || clip <= 0.0 {
            return Err(SimError::InvalidOption(format!(
                "--clip must be positive, not {clip}"
            )));
        }
        if !switch_tau.is_finite() || switch_tau <= 0.0 {
            return Err(SimError::InvalidOption(format!(
                "--switch-tau must be a positive number, not {switch_tau}"
            )));
        }
        Ok(EstimatorSettings {
            clip,
            switch_tau,
            bootstrap,
            seed,
        })
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

/// Every metric's estimates of `spec` on `log` (with `contexts`, one per row), learning
/// along the log when `learn`.
pub fn evaluate(
    log: &LoggedDataset,
    contexts: &[Context],
    spec: &PolicySpec,
    objective: Objective,
    estimators: &[Box<dyn Estimator>],
    settings: EstimatorSettings,
    learn: bool,
) -> Result<OpeSummary> {
    let candidate = run_candidate(log, contexts, spec, objective, settings.seed, learn)?;
    let metrics = [Metric::Reward(objective), Metric::Quality, Metric::Cost]
        .into_iter()
        .map(|m| {
            let inputs = inputs_for(log, contexts, &candidate, m, settings.clip, settings.switch_tau);
            report_metric(&inputs, m, estimators, settings.bootstrap, settings.seed)
        })
        .collect();
    Ok(OpeSummary {
        dataset: log.source.clone(),
        rows: log.rows(),
        arms: log.arms.clone(),
        policy: spec.to_string(),
        learning: learn,
        metrics,
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
