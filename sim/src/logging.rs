//! Turning full-information data into a decision log under a chosen logging policy.
//!
//! The logger runs over the rows in a seeded random order with bandit feedback, exactly as
//! in a replay, and every decision is written with the propensity it was drawn with. Since
//! the wide table holds every arm's outcome, any candidate's true value on the same rows is
//! known, which gives off-policy estimators an exact ground truth.

use ndarray::{Array2, Axis};
use quiver_bandit::{Arm, Learner, LearnerConfig, Objective, Outcome, PolicySpec, Request};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::context::ContextBuilder;
use crate::data::{LoggedDataset, WideDataset};
use crate::error::{Result, SimError};

/// How to log a wide table.
#[derive(Debug, Clone)]
pub struct LoggingSettings {
    /// The logging policy (give it a `floor` so every arm keeps support).
    pub spec: PolicySpec,
    /// Reward weights of the logger.
    pub objective: Objective,
    /// Seed of the order and the logger's draws.
    pub seed: u64,
    /// Share of rows whose quality is left null (feedback that never came).
    pub missing_feedback: f64,
}

/// The log of `settings.spec` run over `data`. Row `i` of the log is the request
/// `order[i]` of the table, returned alongside. Refused where the logger gave some model
/// no chance on a request: no off-policy estimate can weigh a candidate's choice of it
/// there. (A model that a floored logger happened not to choose on a short table still
/// had its chance.)
pub fn log_wide(
    data: &WideDataset,
    builder: &ContextBuilder,
    settings: &LoggingSettings,
) -> Result<(LoggedDataset, Vec<usize>)> {
    crate::replay::check_missing_feedback(settings.missing_feedback)?;
    let mut config = LearnerConfig::new(settings.spec.clone(), builder.dim());
    config.objective = settings.objective;
    config.seed = settings.seed;
    config.max_tracked_decisions = 1024;
    let mut learner = Learner::new(config, data.arms.iter().map(Arm::new).collect())?;
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut order: Vec<usize> = (0..data.rows()).collect();
    order.shuffle(&mut rng);
    let policy = settings.spec.to_string();
    // The task one-hot the logger decided on is logged as caller features before the
    // table's own, as a server gets a task, so that the log's contexts are the logger's.
    let tasks = builder.tasks();
    let task_columns = tasks.iter().map(|t| format!("f_task_{t}"));
    let mut log = LoggedDataset {
        source: data.source.clone(),
        arms: {
            let mut a = data.arms.clone();
            a.sort();
            a
        },
        prompts: data.prompts.as_ref().map(|_| Vec::new()),
        feature_names: task_columns.chain(data.feature_names.iter().cloned()).collect(),
        cost_recorded: data.cost_usd.is_some(),
        latency_recorded: data.latency_ms.is_some(),
        ..LoggedDataset::default()
    };
    // Decisions that gave some model no chance.
    let mut unsupported = 0;
    for (i, &row) in order.iter().enumerate() {
        let context = builder.wide_row(data, row)?;
        let decision = learner.decide(&Request::new(context))?;
        let arm = learner.arm_index(&decision.arm)?;
        let supported =
            decision.arms.len() == data.num_arms() && decision.arms.iter().all(|a| a.probability > 0.0);
        unsupported += usize::from(!supported);
        let quality = data.quality(row, arm);
        let cost = data.cost_usd(row, arm);
        let latency = data.latency_ms(row, arm).unwrap_or(0.0);
        let missing = settings.missing_feedback > 0.0 && rng.random::<f64>() < settings.missing_feedback;
        let mut outcome = Outcome::new(latency, cost);
        if !missing {
            outcome.quality = Some(quality);
        }
        learner.record_outcome(decision.id, &outcome)?;
        log.decision_ids.push(data.ids[row].clone());
        log.timestamps.push(i.to_string());
        log.routes.push("replay".to_string());
        log.policies.push(policy.clone());
        log.arm.push(log.arms.binary_search(&data.arms[arm]).unwrap_or(0));
        log.propensity.push(decision.propensity);
        log.quality.push(outcome.quality);
        log.cost_usd.push(cost);
        log.latency_ms.push(latency);
        log.error.push(false);
        log.outcome.push(true);
        if let (Some(prompts), Some(source)) = (log.prompts.as_mut(), data.prompts.as_ref()) {
            prompts.push(source[row].clone());
        }
    }
    if unsupported > 0 {
        return Err(SimError::InvalidOption(format!(
            "the logging policy `{policy}` gave some model no chance on {unsupported} of {} \
             requests: off-policy estimates need every model a candidate may choose to have \
             had some probability on every request; give it a floor well under 1/{} \
             (`lints(floor=0.01)`, say) or log with `random`",
            log.rows(),
            data.num_arms()
        )));
    }
    let own = data.features.select(Axis(0), &order);
    let labels = data.tasks.as_deref().unwrap_or_default();
    let one_hot = Array2::from_shape_fn((order.len(), tasks.len()), |(i, t)| {
        f64::from(u8::from(labels.get(order[i]) == Some(&tasks[t])))
    });
    log.features = crate::data::standard(ndarray::concatenate![Axis(1), one_hot, own]);
    Ok((log, order))
}
