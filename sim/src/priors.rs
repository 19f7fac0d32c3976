//! Fitting [`Priors`] from a table: every arm's outcome on every row of a wide
//! (full-information) table, or the chosen arm's outcome on each decision of a log. The
//! math is [`quiver_bandit::prior`]'s; this module only walks the rows.

use std::collections::BTreeMap;

use nalgebra::DVector;
use quiver_bandit::cost::{ArmCost, CostModel};
use quiver_bandit::prior::{FoldStatistics, FOLDS, PRIORS_VERSION};
use quiver_bandit::usage::ArmUsage;
use quiver_bandit::{Arm, ArmPrior, Context, Outcome, Priors, SpendCurve};
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
/// builder of definition `context`, capped at `cap` observations per arm, with the
/// table's spend curve.
pub fn fit_wide(env: &Environment, context: &str, cap: f64) -> Priors {
    let data = env.data();
    let fitted = fit_arms(env, cap);
    let spend = spend_curve(env, &fitted);
    Priors {
        version: PRIORS_VERSION,
        context: context.to_string(),
        tasks: Vec::new(),
        dim: env.dim(),
        cap,
        source: format!("{} ({} rows, every arm observed)", data.source, data.rows()),
        arms: fitted.into_iter().map(|f| (f.name, f.prior)).collect(),
        spend,
    }
}

/// Every arm's prior from a full-information table, with what it expects on each row; an
/// arm without a quality on any row gets none.
fn fit_arms(env: &Environment, cap: f64) -> Vec<WideFit> {
    let data = env.data();
    let tokens: f64 = (0..data.rows()).map(|row| f64::from(env.input_tokens(row))).sum();
    let priced = data.priced_arms();
    data.arms
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
                let (usage, scale) = (ArmUsage::from(prior.usage), prior.scale());
                // What a learner holding `view` of the arm (priced or not) missed.
                let fit_correction = |view: &Arm| {
                    let seen = ArmCost {
                        arm: view,
                        usage: &usage,
                        default_output_tokens: 0.0,
                    };
                    let mut missed = FoldStatistics::new(env.dim());
                    for row in 0..data.rows() {
                        let outcome = Outcome::new(0.0, data.cost_usd(row, arm));
                        if let Some(m) = seen.missed(env.input_tokens(row), &outcome) {
                            missed.add(row, env.features(row), m);
                        }
                    }
                    missed.fit_ridge(scale)
                };
                prior.cost_correction = fit_correction(&Arm::new(name.as_str()));
                if priced[arm].has_prices() {
                    prior.answer_correction = fit_correction(&priced[arm]);
                }
            }
            Some(WideFit::new(env, &priced[arm], prior, &stats))
        })
        .collect()
}

/// One arm's prior from a wide table, and what it expects on each of the table's rows.
struct WideFit {
    name: String,
    prior: ArmPrior,
    /// Quality, as the fit predicts it for prompts it has not seen: from the folds
    /// without the row's.
    quality: Vec<f64>,
    /// Cost in USD, as a learner started from the prior expects it of the arm at the
    /// table's prices (if any), corrected on the context.
    cost_usd: Vec<f64>,
}

impl WideFit {
    fn new(env: &Environment, arm: &Arm, prior: ArmPrior, stats: &FoldStatistics) -> Self {
        let held_out = stats.held_out_coefficients(prior.quality.lambda);
        let whole = prior.quality.coefficients();
        let usage = ArmUsage::from(prior.usage);
        let seen = ArmCost {
            arm,
            usage: &usage,
            default_output_tokens: 0.0,
        };
        // The cost model a learner starts from the prior, so that the curve expects what
        // the learner will.
        let mut cost = CostModel::new(1, env.dim());
        cost.absorb_prior(0, arm, &prior);
        let (mut quality, mut cost_usd) = (Vec::new(), Vec::new());
        for row in 0..env.data().rows() {
            let features = env.features(row);
            let theta = held_out[row % FOLDS].as_ref().or(whole.as_ref());
            quality.push(theta.map_or(0.0, |t| t.dot(&DVector::from_column_slice(features))));
            cost_usd.push(cost.expected_usd(0, seen, features, env.input_tokens(row)));
        }
        WideFit {
            name: arm.id.clone(),
            prior,
            quality,
            cost_usd,
        }
    }
}

/// The spend curve of a wide table ([`SpendCurve`]): each row's choice made on what the
/// priors expect ([`WideFit`]), paying the row's cost. `None` without costs.
fn spend_curve(env: &Environment, fitted: &[WideFit]) -> Option<SpendCurve> {
    let data = env.data();
    if fitted.len() != data.arms.len() {
        return None;
    }
    let (rows, arms) = (data.rows(), data.arms.len());
    let (mut qualities, mut expected, mut costs) = (Vec::new(), Vec::new(), Vec::new());
    for row in 0..rows {
        for (arm, fit) in fitted.iter().enumerate() {
            qualities.push(fit.quality[row]);
            expected.push(fit.cost_usd[row]);
            costs.push(data.cost_usd(row, arm));
        }
    }
    SpendCurve::fit(arms, &qualities, &expected, &costs)
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
    // A log without costs teaches no usage: its 0s are no prices.
    let costs = header.cost_recorded;
    let mut arms: Vec<ArmFit> = header.arms.iter().map(|_| ArmFit::new(dim)).collect();
    log.for_each_chunk(|chunk| {
        let contexts = ContextBuilder::log_contexts(&chunk)?;
        arms.par_iter_mut().enumerate().for_each(|(arm, fit)| {
            for i in (0..chunk.rows()).filter(|&i| chunk.arm[i] == arm) {
                fit.add(
                    &contexts[i],
                    chunk.quality[i],
                    (costs && chunk.outcome[i]).then_some(chunk.cost_usd[i]),
                );
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
        tasks: Vec::new(),
        dim,
        cap,
        source: format!("{} ({} logged decisions)", header.source, log.rows()),
        arms,
        spend: None,
    })
}

/// One arm's statistics from the log rows that chose it, in log order.
struct ArmFit {
    stats: FoldStatistics,
    /// Decisions of the arm, and of those, calls whose cost came.
    rows: usize,
    calls: usize,
    cost: f64,
    tokens: f64,
}

impl ArmFit {
    fn new(dim: usize) -> Self {
        ArmFit {
            stats: FoldStatistics::new(dim),
            rows: 0,
            calls: 0,
            cost: 0.0,
            tokens: 0.0,
        }
    }

    /// A decision's row: its quality and its cost where they came.
    fn add(&mut self, context: &Context, quality: Option<f64>, cost_usd: Option<f64>) {
        if let Some(q) = quality {
            self.stats.add(self.rows, &context.features, q);
        }
        self.rows += 1;
        if let Some(cost) = cost_usd {
            self.calls += 1;
            self.cost += cost;
            self.tokens += f64::from(context.input_tokens);
        }
    }

    fn finish(self, cap: f64) -> Option<ArmPrior> {
        Some(
            self.stats
                .fit(cap)?
                .with_usage(self.calls as f64, self.cost, self.tokens),
        )
    }
}

#[cfg(test)]
mod tests {
    use quiver_bandit::prior::DEFAULT_PRIOR_CAP;
    use quiver_bandit::{Objective, DEFAULT_PACING_STEP};

    use super::*;
    use crate::data::WideDataset;
    use crate::metrics::single_arms;
    use crate::replay::{run_one, Feedback, Knobs, ReplaySettings, Variant};
    use crate::suite::IrtTable;

    /// A priced model that answers a coding prompt at length and a choice in a word: its
    /// priors carry the answer's length per prompt (in tokens, against its mean) for a
    /// learner that knows its prices, and the cost per prompt (in USD, against the
    /// per-token ratio) for one that does not. Before its first call, either learner
    /// expects each prompt's cost within 5% of the two prompts' difference in cost (the
    /// cross-validated ridge shrinks a little); without the answer correction, as priors
    /// fitted before it, the priced one expects the mean answer on both and is off by
    /// half that difference on each.
    #[test]
    fn a_priced_models_priors_carry_its_answers_length_per_prompt() {
        use quiver_bandit::{Learner, LearnerConfig, Request};
        let (input_price, output_price) = (1e-6, 4e-6);
        let prompts = [
            (
                "Write a Python function that parses an ISO date and test it",
                500.0,
            ),
            ("Which is larger, A or B?", 2.0),
        ];
        let rows = 200;
        let mut data = WideDataset {
            source: "answers".into(),
            arms: vec!["m".into()],
            ids: (0..rows).map(|r| r.to_string()).collect(),
            prompts: Some((0..rows).map(|r| prompts[r % 2].0.to_string()).collect()),
            features: ndarray::Array2::zeros((rows, 0)),
            quality: ndarray::Array2::from_elem((rows, 1), 0.5),
            ..WideDataset::default()
        };
        data.list_prices.insert("m".into(), (input_price, output_price));
        let builder = ContextBuilder::new(true, &[], 0);
        let tokens = {
            let env = Environment::new(&data, &builder).unwrap();
            [env.input_tokens(0), env.input_tokens(1)]
        };
        let cost = |kind: usize| f64::from(tokens[kind]) * input_price + prompts[kind].1 * output_price;
        let spread = cost(0) - cost(1);
        data.cost_usd = Some(ndarray::Array2::from_shape_fn((rows, 1), |(r, _)| cost(r % 2)));
        let env = Environment::new(&data, &builder).unwrap();
        let priors = fit_wide(&env, &builder.definition(), 2000.0);
        let learner = |arm: Arm, priors: &Priors| {
            let mut learner = Learner::new(
                LearnerConfig::new("linucb".parse().unwrap(), env.dim()),
                vec![arm],
            )
            .unwrap();
            learner.absorb_priors(priors).unwrap();
            learner
        };
        let expected = |learner: &Learner, kind: usize| {
            let decision = learner.propose(&Request::new(env.context(kind))).unwrap();
            decision.arms[0].cost_usd
        };
        let priced = Arm::new("m").with_prices(input_price, output_price);
        for arm in [priced.clone(), Arm::new("m")] {
            let learner = learner(arm, &priors);
            for kind in 0..2 {
                let (got, want) = (expected(&learner, kind), cost(kind));
                assert!((got - want).abs() < 0.05 * spread, "{kind}: {got} vs {want}");
            }
        }
        let mut older = priors.clone();
        older.arms.get_mut("m").unwrap().answer_correction = None;
        let learner = learner(priced, &older);
        for kind in 0..2 {
            let (got, want) = (expected(&learner, kind), cost(kind));
            assert!((got - want).abs() > 0.45 * spread, "{kind}: {got} vs {want}");
        }
    }

    /// The spend curve is fitted on what a learner started from the priors expects each
    /// model to cost on each row, with list prices or without: on a generated table every
    /// cost the fit expects is the one such a learner proposes, to rounding.
    #[test]
    fn the_spend_curve_expects_the_costs_a_learner_started_from_the_priors_expects() {
        use quiver_bandit::{Learner, LearnerConfig, Request};
        let (mut train, _) = IrtTable::of_suite(3).generate();
        let builder = ContextBuilder::new(true, &[], 0);
        for priced in [true, false] {
            if !priced {
                train.list_prices.clear();
            }
            let env = Environment::new(&train, &builder).unwrap();
            let fitted = fit_arms(&env, DEFAULT_PRIOR_CAP);
            let mut learner = Learner::new(
                LearnerConfig::new("linucb".parse().unwrap(), env.dim()),
                train.priced_arms(),
            )
            .unwrap();
            learner
                .absorb_priors(&fit_wide(&env, &builder.definition(), DEFAULT_PRIOR_CAP))
                .unwrap();
            for row in (0..train.rows()).step_by(7) {
                let decision = learner.propose(&Request::new(env.context(row))).unwrap();
                assert_eq!(decision.arms.len(), fitted.len());
                for (fit, proposed) in fitted.iter().zip(&decision.arms) {
                    assert_eq!(fit.name, proposed.arm);
                    let (want, got) = (proposed.cost_usd, fit.cost_usd[row]);
                    assert!(
                        (got - want).abs() <= 1e-9 * want,
                        "{priced} {row} {}: {got} vs {want}",
                        fit.name
                    );
                }
            }
        }
    }

    /// The suite's 11-model table under 10%, 25% and 50% of its best model's cost, the
    /// default learners started from priors of its training rows: with the spend curve the
    /// pacer starts near the multiplier the budget needs, and the first 100 requests
    /// spend the budget within 2% (mean of six seeds); without it the pacer starts at 0
    /// and those requests spend more.
    #[test]
    fn priors_with_a_spend_curve_keep_the_budget_from_the_first_requests() {
        let (train, test) = IrtTable::of_suite(11).generate();
        let builder = ContextBuilder::new(true, &[], 0);
        let train_env = Environment::new(&train, &builder).unwrap();
        let env = Environment::new(&test, &builder).unwrap();
        let best_cost = single_arms(&train, None)
            .iter()
            .max_by(|a, b| a.mean_quality.total_cmp(&b.mean_quality))
            .unwrap()
            .mean_cost_usd;
        let priors = fit_wide(&train_env, &builder.definition(), 2000.0);
        let without_curve = Priors {
            spend: None,
            ..priors.clone()
        };
        let first_spend = |priors: &Priors, spec: &str, budget: f64| {
            let settings = ReplaySettings {
                variants: vec![Variant {
                    spec: spec.parse().unwrap(),
                    objective: Objective::default(),
                    budget_usd: Some(budget),
                    label: spec.into(),
                }],
                seeds: 1,
                knobs: Knobs::default(),
                frozen: false,
                train_passes: 1,
                explore_passes: 0,
                priors: Some(priors.clone()),
                pacer_step: DEFAULT_PACING_STEP,
                checkpoints: test.rows() / 100,
                full_information: false,
            };
            let seeds = 6;
            (0..seeds)
                .map(|seed| {
                    let run = run_one(&env, None, &settings, 0, seed, Feedback::Bandit).unwrap();
                    assert_eq!(run.curve[0].step, 100);
                    run.curve[0].mean_cost_usd / budget
                })
                .sum::<f64>()
                / seeds as f64
        };
        for share in [0.1, 0.25, 0.5] {
            let budget = share * best_cost;
            for spec in quiver_bandit::DEFAULT_LEARNERS {
                let warm = first_spend(&priors, spec, budget);
                let cold = first_spend(&without_curve, spec, budget);
                assert!((warm - 1.0).abs() < 0.02, "{spec} at {share}: {warm}");
                assert!(cold > warm, "{spec} at {share}: {cold} vs {warm}");
            }
        }
    }
}
