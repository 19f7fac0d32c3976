//! The learner: arms, a policy, cost and latency usage, the objective and budget pacing,
//! tied together into decide -> outcome -> update, with snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;

use imbl::OrdMap;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::arm::{Arm, Constraints};
use crate::change::{Cusum, RESTART_OBSERVATIONS, WATCHED_FROM};
use crate::error::{in_range, Error, ErrorKind, Result};
use crate::features::Context;
use crate::limits;
use crate::outcome::{validate_quality, BudgetPacer, Objective, Outcome};
use crate::pmf;
use crate::policy::{
    AnyPolicy, Choice, ChoiceInput, DecisionRng, Estimate, Policy, PolicySpec, PropensityKind,
};
use crate::prior::Priors;
use crate::ridge::RidgeTable;
use crate::stats::Forgetting;
use crate::usage::ArmUsage;

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Budget pacing settings; see [`BudgetPacer`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BudgetConfig {
    /// Target average spend per request, in USD.
    pub target_usd_per_request: f64,
    /// Dual step size (dimensionless); [`DEFAULT_PACING_STEP`] by default.
    #[serde(default = "default_pacing_step")]
    pub step_size: f64,
}

/// The budget pacer's initial step size: it adapts within tens of requests, then the step
/// shrinks as costs are observed (see [`BudgetPacer::current_step`]).
pub const DEFAULT_PACING_STEP: f64 = 0.05;

fn default_pacing_step() -> f64 {
    DEFAULT_PACING_STEP
}

/// Decisions a learner remembers for late feedback unless told otherwise. A tracked
/// decision holds its features until its feedback arrives: about 630 bytes with the
/// default featurizer's 64 (measured in `tests/tracked_memory.rs`), so this default holds
/// about 63 MB per route. Feedback later than this many newer decisions is refused as
/// unknown.
pub const DEFAULT_FEEDBACK_HORIZON: usize = 100_000;

/// Everything a learner is built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnerConfig {
    /// The policy and its parameters.
    pub policy: PolicySpec,
    /// Dimension of every context's features.
    pub dim: usize,
    /// Default trade-off of quality, cost and latency; requests may override it.
    pub objective: Objective,
    /// Optional budget pacing of spend per request.
    pub budget: Option<BudgetConfig>,
    /// Seed of every random draw; decision `i` draws from stream `i` of this seed.
    pub seed: u64,
    /// Output tokens expected of a priced arm before it has reported any.
    pub default_output_tokens: f64,
    /// How many decisions are remembered for late feedback; the oldest are forgotten first.
    pub max_tracked_decisions: usize,
}

impl LearnerConfig {
    /// A configuration with the given policy and dimension and the defaults: quality-only
    /// objective, no budget, seed 0, 256 default output tokens, [`DEFAULT_FEEDBACK_HORIZON`]
    /// tracked decisions.
    pub fn new(policy: PolicySpec, dim: usize) -> Self {
        LearnerConfig {
            policy,
            dim,
            objective: Objective::default(),
            budget: None,
            seed: 0,
            default_output_tokens: 256.0,
            max_tracked_decisions: DEFAULT_FEEDBACK_HORIZON,
        }
    }
}

/// One request to route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Its features and size.
    pub context: Context,
    /// Which arms may serve it.
    #[serde(default)]
    pub constraints: Constraints,
    /// A trade-off for this request only.
    #[serde(default)]
    pub objective: Option<Objective>,
    /// Arms that cannot serve now, and why (a gateway's open circuit breakers, say):
    /// left out of the decision, and so of its propensities, unless no other arm the
    /// constraints allow is left, when they are all considered again.
    #[serde(default)]
    pub unavailable: BTreeMap<String, String>,
}

impl Request {
    /// A request with no constraints and the learner's objective.
    pub fn new(context: Context) -> Self {
        Request {
            context,
            constraints: Constraints::default(),
            objective: None,
            unavailable: BTreeMap::new(),
        }
    }
}

/// One eligible arm's estimates at decision time: the explanation of a decision.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmEstimate {
    /// Arm id.
    pub arm: String,
    /// Estimated quality in this context.
    pub quality: f64,
    /// Its uncertainty (see [`Estimate::std`]).
    pub quality_std: f64,
    /// Expected cost of this request, USD.
    pub cost_usd: f64,
    /// Expected latency, ms.
    pub latency_ms: f64,
    /// Standard error of the expected latency, ms.
    pub latency_std_ms: f64,
    /// `quality - w_cost * cost_usd - w_latency * latency_s`, with the weights in force.
    pub reward: f64,
    /// Probability that this decision picks the arm.
    pub probability: f64,
}

/// What the learner decided for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Unique id, for outcome and feedback.
    pub id: u64,
    /// The chosen arm's id.
    pub arm: String,
    /// Probability with which this arm was chosen (after the exploration floor).
    pub propensity: f64,
    /// Whether `propensity` is exact or estimated.
    pub propensity_kind: PropensityKind,
    /// The other eligible arms, best estimated reward first: where to go on failure.
    pub fallback: Vec<String>,
    /// Per eligible arm estimates, in arm order.
    pub arms: Vec<ArmEstimate>,
    /// Why each ineligible arm was excluded.
    pub excluded: Vec<String>,
    /// The cost weight in force, quality points per USD (objective plus budget pacing).
    pub w_cost: f64,
}

/// What recording an outcome or quality did.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// Newly applied to the learner.
    Applied,
    /// Already applied earlier; nothing changed (feedback is idempotent).
    AlreadyApplied,
    /// The decision's arm has since been removed; acknowledged, not learned.
    ArmRemoved,
}

/// The arm [`Learner::decide_arm`] chose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArmChoice {
    /// Decision id, for the outcome and quality.
    pub id: u64,
    /// Index of the chosen arm in [`Learner::arms`].
    pub arm: usize,
    /// Its probability under the decision's PMF.
    pub propensity: f64,
}

/// A decision's arithmetic, shared by [`Learner::propose`] and [`Learner::decide_arm`]:
/// vectors run over the eligible arms, `position` indexes them.
struct Selection {
    id: u64,
    eligible: Vec<usize>,
    excluded: Vec<String>,
    costs: Vec<f64>,
    estimates: Vec<Estimate>,
    latencies: Vec<(f64, f64)>,
    penalties: Vec<f64>,
    probabilities: Vec<f64>,
    propensity_kind: PropensityKind,
    position: usize,
    w_cost: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TrackedDecision {
    /// `None` once the arm has been removed.
    arm: Option<usize>,
    input_tokens: u32,
    /// Kept until both the cost and the quality are learned; empty after. Shared, so that
    /// copying the tracked decisions copies no features.
    features: Arc<[f64]>,
    outcome_recorded: bool,
    quality_recorded: bool,
}

impl TrackedDecision {
    /// A decision whose arm is gone: its feedback is acknowledged, never learned, so it
    /// keeps nothing but its size.
    fn of_removed_arm(input_tokens: u32) -> Self {
        TrackedDecision {
            arm: None,
            input_tokens,
            features: Arc::default(),
            outcome_recorded: false,
            quality_recorded: false,
        }
    }

    /// The features, for one part of the feedback (cost or quality). Once the other part
    /// is recorded too, the decision needs them no more and hands them over.
    fn take_or_share_features(&mut self, other_recorded: bool) -> Arc<[f64]> {
        if other_recorded {
            std::mem::take(&mut self.features)
        } else {
            Arc::clone(&self.features)
        }
    }
}

/// For each arm (by position), an arm that dominates it with confidence `z`, if any: one
/// that costs no more, is no slower, and whose quality's lower bound `mean - z std`
/// exceeds this arm's upper bound `mean + z std`, so that it wins at every cost and
/// latency weight (those of a budget's band included). Domination is a strict order, so
/// the arms it leaves always include a best one.
fn dominated(estimates: &[Estimate], costs: &[f64], latencies: &[(f64, f64)], z: f64) -> Vec<Option<usize>> {
    (0..estimates.len())
        .map(|p| {
            let upper = estimates[p].mean + z * estimates[p].std;
            (0..estimates.len()).find(|&q| {
                q != p
                    && costs[q] <= costs[p]
                    && latencies[q].0 <= latencies[p].0
                    && estimates[q].mean - z * estimates[q].std > upper
            })
        })
        .collect()
}

/// Keeps the elements of `values` whose position is marked in `keep`.
fn retain_positions<T>(values: &mut Vec<T>, keep: &[bool]) {
    let mut position = 0;
    values.retain(|_| {
        position += 1;
        keep[position - 1]
    });
}

/// A bandit learner for one route: decides, learns from outcomes, snapshots.
///
/// Decisions are a pure function of the state, the seed and the decision id, so a learner
/// restored from a snapshot decides exactly as the original would have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Learner {
    config: LearnerConfig,
    arms: Vec<Arm>,
    policy: AnyPolicy,
    usage: Vec<ArmUsage>,
    pacer: Option<BudgetPacer>,
    next_decision: u64,
    /// Decisions awaiting feedback, by id. A persistent map: a clone shares every node
    /// until one side changes it, so a snapshot costs O(1) here however many decisions
    /// are tracked, and the live learner copies only the nodes it touches afterwards.
    tracked: OrdMap<u64, TrackedDecision>,
    /// Per arm without prices, a ridge regression on the context of what the per-token
    /// cost ratio missed (observed cost minus the ratio's estimate): a request's cost
    /// depends on more than its prompt's length (the answer's length, say, which varies
    /// by task). With no data near a context it predicts no correction. Absent in
    /// snapshots written before it existed; such learners keep the ratio alone.
    #[serde(default)]
    cost_models: Option<RidgeTable>,
    /// Per arm, the change detection's sums (see [`crate::change`]); empty when the
    /// policy detects no change. Absent in snapshots written before it existed.
    #[serde(default)]
    change_detectors: Vec<Cusum>,
}

/// Ridge prior of the cost models: weak next to a handful of observations.
const COST_RIDGE_LAMBDA: f64 = 1.0;

/// A serialized learner with its format version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`] when written.
    pub format_version: u32,
    /// The learner's complete state.
    pub learner: Learner,
}

/// What [`Learner::new`] and [`Learner::reconfigure`] require of a configuration.
fn check_config(config: &LearnerConfig, arms: &[Arm]) -> Result<()> {
    if arms.is_empty() {
        return Err(ErrorKind::InvalidConfig("a learner needs at least one arm".into()).into());
    }
    if config.dim == 0 {
        return Err(
            ErrorKind::InvalidConfig("the feature dimension must be at least 1 (the bias)".into()).into(),
        );
    }
    if config.max_tracked_decisions == 0 {
        return Err(ErrorKind::InvalidConfig("max_tracked_decisions must be at least 1".into()).into());
    }
    in_range(
        "default_output_tokens",
        config.default_output_tokens,
        0.0,
        1e9,
        "[0, 1e9]",
    )?;
    Objective::new(config.objective.w_cost, config.objective.w_latency)?;
    for (i, arm) in arms.iter().enumerate() {
        arm.validate()?;
        if arms[..i].iter().any(|a| a.id == arm.id) {
            return Err(ErrorKind::DuplicateArm(arm.id.clone()).into());
        }
    }
    if let Some(b) = config.budget {
        BudgetPacer::new(b.target_usd_per_request, b.step_size)?;
    }
    Ok(())
}

impl Learner {
    /// A learner over `arms` (at least one) with `config`.
    pub fn new(config: LearnerConfig, arms: Vec<Arm>) -> Result<Self> {
        check_config(&config, &arms)?;
        let pacer = config
            .budget
            .map(|b| BudgetPacer::new(b.target_usd_per_request, b.step_size))
            .transpose()?;
        let ids: Vec<&str> = arms.iter().map(|a| a.id.as_str()).collect();
        let policy = config.policy.build(&ids, config.dim)?;
        Ok(Learner {
            usage: vec![ArmUsage::default(); arms.len()],
            cost_models: Some(RidgeTable::with_prior(
                arms.len(),
                config.dim,
                COST_RIDGE_LAMBDA,
                false,
                Forgetting::None,
                0.0,
            )),
            config,
            arms,
            policy,
            pacer,
            next_decision: 0,
            tracked: OrdMap::new(),
            change_detectors: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LearnerConfig {
        &self.config
    }

    /// The arms, in index order.
    pub fn arms(&self) -> &[Arm] {
        &self.arms
    }

    /// The policy.
    pub fn policy(&self) -> &AnyPolicy {
        &self.policy
    }

    /// Usage (requests, spend, tokens, latency) of the arm at `index`.
    pub fn usage(&self, index: usize) -> &ArmUsage {
        &self.usage[index]
    }

    /// The budget pacer, when pacing.
    pub fn pacer(&self) -> Option<&BudgetPacer> {
        self.pacer.as_ref()
    }

    /// The id the next decision will get.
    pub fn next_decision_id(&self) -> u64 {
        self.next_decision
    }

    /// Index of the arm with id `id`.
    pub fn arm_index(&self, id: &str) -> Result<usize> {
        self.arms.iter().position(|a| a.id == id).ok_or_else(|| {
            ErrorKind::UnknownArm {
                id: id.to_string(),
                known: self.arms.iter().map(|a| a.id.clone()).collect(),
            }
            .into()
        })
    }

    /// Starts the arms from priors fitted offline (see [`crate::prior`]): each arm with a
    /// prior adds it to what it has learned, adds its cost sums to its usage prior and,
    /// without prices, starts its cost correction from the prior's. Returns the ids of the arms without one. The
    /// caller checks that the priors were fitted in the context definition its requests
    /// are featurized with; the learner can check only the dimension.
    pub fn absorb_priors(&mut self, priors: &Priors) -> Result<Vec<String>> {
        priors.validate()?;
        if priors.dim != self.config.dim {
            return Err(ErrorKind::DimensionMismatch {
                expected: self.config.dim,
                found: priors.dim,
            }
            .into());
        }
        let mut arms_without_prior = Vec::new();
        for (index, arm) in self.arms.iter().enumerate() {
            match priors.arms.get(&arm.id) {
                Some(prior) => {
                    self.policy.absorb_prior(index, prior);
                    self.usage[index].prior.add(&prior.usage);
                    if let (Some(c), Some(models)) = (&prior.cost_correction, self.cost_models.as_mut()) {
                        if !arm.has_prices() {
                            models.absorb_prior(index, c, prior.observations);
                        }
                    }
                }
                None => arms_without_prior.push(arm.id.clone()),
            }
        }
        Ok(arms_without_prior)
    }

    fn validate_features(&self, features: &[f64]) -> Result<()> {
        if features.len() != self.config.dim {
            return Err(ErrorKind::DimensionMismatch {
                expected: self.config.dim,
                found: features.len(),
            }
            .into());
        }
        limits::FEATURE.check_all("features", features)
    }

    /// Everything a decision computes, before it is explained.
    fn select(&self, request: &Request) -> Result<Selection> {
        let x = &request.context.features;
        self.validate_features(x)?;
        request.constraints.validate()?;
        let unpaced = match request.objective {
            Some(o) => Objective::new(o.w_cost, o.w_latency)?,
            None => self.config.objective,
        };
        let w_cost = unpaced.w_cost + self.pacer.as_ref().map_or(0.0, BudgetPacer::extra_cost_weight);
        let objective = Objective { w_cost, ..unpaced };

        let tokens = request.context.input_tokens;
        let mut eligible = Vec::with_capacity(self.arms.len());
        let mut excluded = Vec::new();
        let mut costs = Vec::with_capacity(self.arms.len());
        for (i, arm) in self.arms.iter().enumerate() {
            let cost = self.expected_cost_usd(i, x, tokens);
            match request.constraints.exclusion(arm, tokens, cost) {
                Some(reason) => excluded.push(reason),
                None => {
                    eligible.push(i);
                    costs.push(cost);
                }
            }
        }
        if eligible.is_empty() {
            return Err(ErrorKind::NoEligibleArm { reasons: excluded }.into());
        }
        let available: Vec<bool> = eligible
            .iter()
            .map(|&a| !request.unavailable.contains_key(&self.arms[a].id))
            .collect();
        if available.contains(&true) {
            for (&a, _) in eligible.iter().zip(&available).filter(|(_, up)| !**up) {
                let id = &self.arms[a].id;
                excluded.push(format!("{id}: unavailable ({})", request.unavailable[id]));
            }
            retain_positions(&mut costs, &available);
            retain_positions(&mut eligible, &available);
        }
        let mut estimates: Vec<Estimate> = eligible.iter().map(|&a| self.policy.estimate(a, x)).collect();
        let mut latencies: Vec<(f64, f64)> = eligible
            .iter()
            .map(|&a| self.usage[a].latency_estimate_ms())
            .collect();
        let mut penalties: Vec<f64> = costs
            .iter()
            .zip(&latencies)
            .map(|(&c, &(l, _))| objective.penalty(c, l))
            .collect();
        let z = self.config.policy.prune;
        if z > 0.0 {
            let dominated = dominated(&estimates, &costs, &latencies, z);
            for (p, by) in dominated.iter().enumerate() {
                if let Some(q) = by {
                    excluded.push(format!(
                        "{}: dominated by {} (costs no more, better with confidence)",
                        self.arms[eligible[p]].id, self.arms[eligible[*q]].id
                    ));
                }
            }
            let keep: Vec<bool> = dominated.iter().map(Option::is_none).collect();
            retain_positions(&mut eligible, &keep);
            retain_positions(&mut costs, &keep);
            retain_positions(&mut estimates, &keep);
            retain_positions(&mut latencies, &keep);
            retain_positions(&mut penalties, &keep);
        }

        let id = self.next_decision;
        let mut rng = DecisionRng::seed_from_u64(self.config.seed);
        rng.set_stream(id);
        let input = ChoiceInput {
            features: x,
            eligible: &eligible,
            estimates: &estimates,
            penalties: &penalties,
        };
        let band = self
            .pacer
            .as_ref()
            .map(BudgetPacer::extra_cost_weights)
            .unwrap_or_default();
        let choice = if band.is_empty() {
            self.policy.choose(&input, &mut rng)?
        } else {
            self.choose_in_band(&input, &band, unpaced, &costs, &latencies, &mut rng)?
        };

        // The exploration floor wraps every policy: with probability k * floor a uniform
        // eligible arm, otherwise the policy's own choice.
        let k = eligible.len();
        let floor = pmf::effective_floor(k, self.config.policy.floor);
        let position = if floor > 0.0 && rng.random::<f64>() < k as f64 * floor {
            rng.random_range(0..k)
        } else {
            choice.position
        };
        Ok(Selection {
            id,
            probabilities: pmf::with_floor(&choice.pmf, floor),
            propensity_kind: choice.propensity,
            position,
            eligible,
            excluded,
            costs,
            estimates,
            latencies,
            penalties,
            w_cost,
        })
    }

    /// The choice under a binding budget (see [`BudgetPacer`]): the policy chooses at each
    /// extra cost weight of the pacer's band, added to the `unpaced` objective; the
    /// decision takes one of these choices at random, so its PMF is their mean.
    fn choose_in_band(
        &self,
        input: &ChoiceInput<'_>,
        band: &[f64],
        unpaced: Objective,
        costs: &[f64],
        latencies: &[(f64, f64)],
        rng: &mut DecisionRng,
    ) -> Result<Choice> {
        let mut choices = Vec::with_capacity(band.len());
        for &extra in band {
            let at = Objective {
                w_cost: unpaced.w_cost + extra,
                ..unpaced
            };
            let penalties: Vec<f64> = costs
                .iter()
                .zip(latencies)
                .map(|(&c, &(l, _))| at.penalty(c, l))
                .collect();
            choices.push(self.policy.choose(
                &ChoiceInput {
                    penalties: &penalties,
                    ..*input
                },
                rng,
            )?);
        }
        let share = 1.0 / band.len() as f64;
        let mut pmf = vec![0.0; input.len()];
        for choice in &choices {
            pmf.iter_mut().zip(&choice.pmf).for_each(|(p, q)| *p += share * q);
        }
        let propensity = choices
            .iter()
            .fold(PropensityKind::Exact, |kind, c| match (kind, c.propensity) {
                (PropensityKind::Exact, PropensityKind::Exact) => PropensityKind::Exact,
                (PropensityKind::Estimated { draws }, PropensityKind::Estimated { draws: more }) => {
                    PropensityKind::Estimated { draws: draws + more }
                }
                (PropensityKind::Estimated { draws }, PropensityKind::Exact)
                | (PropensityKind::Exact, PropensityKind::Estimated { draws }) => {
                    PropensityKind::Estimated { draws }
                }
            });
        let position = choices[rng.random_range(0..choices.len())].position;
        Ok(Choice {
            position,
            pmf,
            propensity,
        })
    }

    /// What [`Learner::decide`] would decide for `request` next, without remembering it:
    /// the same arm, propensity and explanation, and no change of state. Off-policy
    /// evaluation reads a candidate's PMF this way.
    pub fn propose(&self, request: &Request) -> Result<Decision> {
        Ok(self.explain(self.select(request)?))
    }

    /// The decision a selection makes, with its explanation.
    fn explain(&self, s: Selection) -> Decision {
        let k = s.eligible.len();
        let rewards: Vec<f64> = s
            .estimates
            .iter()
            .zip(&s.penalties)
            .map(|(e, p)| e.mean - p)
            .collect();
        let mut order: Vec<usize> = (0..k).filter(|&p| p != s.position).collect();
        order.sort_by(|&a, &b| rewards[b].total_cmp(&rewards[a]).then(a.cmp(&b)));
        let arms = (0..k)
            .map(|p| ArmEstimate {
                arm: self.arms[s.eligible[p]].id.clone(),
                quality: s.estimates[p].mean,
                quality_std: s.estimates[p].std,
                cost_usd: s.costs[p],
                latency_ms: s.latencies[p].0,
                latency_std_ms: s.latencies[p].1,
                reward: rewards[p],
                probability: s.probabilities[p],
            })
            .collect();
        Decision {
            id: s.id,
            arm: self.arms[s.eligible[s.position]].id.clone(),
            propensity: s.probabilities[s.position],
            propensity_kind: s.propensity_kind,
            fallback: order
                .iter()
                .map(|&p| self.arms[s.eligible[p]].id.clone())
                .collect(),
            arms,
            excluded: s.excluded,
            w_cost: s.w_cost,
        }
    }

    /// Chooses an arm for `request` and remembers the decision for its outcome.
    pub fn decide(&mut self, request: &Request) -> Result<Decision> {
        let s = self.select(request)?;
        let (id, arm) = (s.id, s.eligible[s.position]);
        let decision = self.explain(s);
        self.track(id, arm, &request.context);
        Ok(decision)
    }

    /// [`Learner::decide`] without the explanation, for simulators that play many
    /// decisions: the same choice and state change, returned as the arm's index.
    pub fn decide_arm(&mut self, request: &Request) -> Result<ArmChoice> {
        let s = self.select(request)?;
        let arm = s.eligible[s.position];
        self.track(s.id, arm, &request.context);
        Ok(ArmChoice {
            id: s.id,
            arm,
            propensity: s.probabilities[s.position],
        })
    }

    /// Re-registers a decision made before a restart, as read back from a decision log:
    /// decision `id` chose `arm` in `context`. The learner then tracks it as `decide` did
    /// (its outcome and quality can still be recorded) and the next decision gets `id + 1`.
    /// Decisions draw from per-id random streams, so nothing else needs replaying.
    /// A decision already tracked is left as it is, so resuming twice counts nothing twice.
    /// A decision of an arm removed since ([`Learner::reconfigure`]) is tracked as
    /// [`Learner::remove_arm`] leaves one: its outcome and quality are acknowledged, not learned.
    pub fn resume_decision(&mut self, id: u64, arm: &str, context: &Context) -> Result<()> {
        self.validate_features(&context.features)?;
        if !self.tracked.contains_key(&id) {
            match self.arms.iter().position(|a| a.id == arm) {
                Some(index) => self.track(id, index, context),
                None => self.track_decision(id, TrackedDecision::of_removed_arm(context.input_tokens)),
            }
        }
        Ok(())
    }

    /// Remembers decision `id` (arm `index`) for its outcome; the next decision gets `id + 1`.
    fn track(&mut self, id: u64, index: usize, context: &Context) {
        self.track_decision(
            id,
            TrackedDecision {
                arm: Some(index),
                input_tokens: context.input_tokens,
                features: context.features.as_slice().into(),
                outcome_recorded: false,
                quality_recorded: false,
            },
        );
    }

    fn track_decision(&mut self, id: u64, decision: TrackedDecision) {
        self.tracked.insert(id, decision);
        self.forget_beyond_horizon();
        self.next_decision = self.next_decision.max(id + 1);
    }

    fn forget_beyond_horizon(&mut self) {
        while self.tracked.len() > self.config.max_tracked_decisions {
            if let Some(&(oldest, _)) = self.tracked.get_min() {
                self.tracked.remove(&oldest);
            }
        }
    }

    /// Changes how many decisions are remembered for late feedback: an operational
    /// setting, not part of what was learned, so a restored learner takes the one
    /// configured now. The oldest decisions beyond it are forgotten.
    pub fn set_max_tracked_decisions(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(ErrorKind::InvalidConfig("max_tracked_decisions must be at least 1".into()).into());
        }
        self.config.max_tracked_decisions = n;
        self.forget_beyond_horizon();
        Ok(())
    }

    /// Takes a new configuration and arm list without forgetting what was learned: arms
    /// no longer listed are removed ([`Learner::remove_arm`]), new ones are added at the
    /// end from the policy's prior ([`Learner::add_arm`]; the kept arms keep their order,
    /// whatever the order of `arms`), kept ones take their new prices,
    /// context window and tags; the objective, seed, output-token default and feedback
    /// horizon take the new values, and a changed budget starts a new pacer. The policy and
    /// the dimension cannot change: what was learned is statistics of that model of those
    /// contexts. Returns what changed, one line each (empty when nothing did).
    pub fn reconfigure(&mut self, config: LearnerConfig, arms: &[Arm]) -> Result<Vec<String>> {
        if config.policy != self.config.policy || config.dim != self.config.dim {
            return Err(ErrorKind::InvalidConfig(format!(
                "the policy or the dimension changed (`{}` in {} then, `{}` in {} now): \
                 what was learned does not carry over",
                self.config.policy, self.config.dim, config.policy, config.dim
            ))
            .into());
        }
        check_config(&config, arms)?;
        let mut changes = Vec::new();
        // Add first, so that removing never leaves the learner without an arm.
        for arm in arms {
            match self.arms.iter().position(|a| a.id == arm.id) {
                Some(i) if self.arms[i] != *arm => {
                    changes.push(format!(
                        "model `{}`: prices, context window or tags updated",
                        arm.id
                    ));
                    self.arms[i] = arm.clone();
                }
                Some(_) => {}
                None => {
                    changes.push(format!("model `{}` added", arm.id));
                    self.add_arm(arm.clone())?;
                }
            }
        }
        let gone: Vec<String> = self
            .arms
            .iter()
            .filter(|a| !arms.iter().any(|b| b.id == a.id))
            .map(|a| a.id.clone())
            .collect();
        for id in gone {
            self.remove_arm(&id)?;
            changes.push(format!("model `{id}` removed"));
        }
        if config.budget != self.config.budget {
            changes.push(format!(
                "budget {:?} then, {:?} now: pacing starts afresh",
                self.config.budget.map(|b| b.target_usd_per_request),
                config.budget.map(|b| b.target_usd_per_request)
            ));
            self.pacer = config
                .budget
                .map(|b| BudgetPacer::new(b.target_usd_per_request, b.step_size))
                .transpose()?;
        }
        if config.objective != self.config.objective {
            changes.push(format!(
                "objective: w_cost {} then, {} now; w_latency {} then, {} now",
                self.config.objective.w_cost,
                config.objective.w_cost,
                self.config.objective.w_latency,
                config.objective.w_latency
            ));
        }
        if config.seed != self.config.seed
            || config.default_output_tokens != self.config.default_output_tokens
        {
            changes.push("seed or default output tokens".into());
        }
        let horizon = config.max_tracked_decisions;
        self.config = config;
        self.set_max_tracked_decisions(horizon)?;
        Ok(changes)
    }

    /// Re-registers, after a restart, that decision `id`'s outcome was recorded before the
    /// snapshot the learner was restored from: the state already holds what it taught, so
    /// only the decision's bookkeeping changes, as [`Learner::record_outcome`] would change
    /// it (a repeat then counts as already applied).
    pub fn resume_outcome(&mut self, id: u64, outcome: &Outcome) -> Result<()> {
        outcome.validate()?;
        self.mark_recorded(id, true, outcome.credited_quality().is_some())
    }

    /// [`Learner::resume_outcome`] for a quality recorded before the snapshot.
    pub fn resume_quality(&mut self, id: u64, quality: f64) -> Result<()> {
        validate_quality(quality)?;
        self.mark_recorded(id, false, true)
    }

    fn mark_recorded(&mut self, id: u64, outcome: bool, quality: bool) -> Result<()> {
        let tracked = self.tracked_mut(id)?;
        if tracked.arm.is_some() {
            tracked.outcome_recorded |= outcome;
            tracked.quality_recorded |= quality;
            if tracked.outcome_recorded && tracked.quality_recorded {
                tracked.features = Arc::default();
            }
        }
        Ok(())
    }

    /// Learns from an outcome of `arm` that this learner did not decide (a logged decision
    /// of another policy, or a warm start): cost and latency, and quality if present.
    /// The budget pacer is left alone: it tracks this learner's own spend.
    pub fn learn(&mut self, arm: &str, context: &Context, outcome: &Outcome) -> Result<()> {
        self.validate_features(&context.features)?;
        outcome.validate()?;
        let index = self.arm_index(arm)?;
        let tokens = if outcome.input_tokens > 0 {
            outcome.input_tokens
        } else {
            context.input_tokens
        };
        let usage = self.usage[index].recorded(outcome, tokens)?;
        self.learn_cost(index, &context.features, tokens, outcome.cost_usd);
        self.usage[index] = usage;
        if let Some(quality) = outcome.credited_quality() {
            self.learn_quality(index, &context.features, quality);
        }
        Ok(())
    }

    /// What recording `outcome` for decision `id` would do, without doing it: lets a
    /// caller log a change durably before applying it.
    pub fn outcome_would_apply(&self, id: u64, outcome: &Outcome) -> Result<Applied> {
        outcome.validate()?;
        let t = self.tracked(id)?;
        Ok(match t.arm {
            None => Applied::ArmRemoved,
            Some(_)
                if !t.outcome_recorded || (outcome.credited_quality().is_some() && !t.quality_recorded) =>
            {
                Applied::Applied
            }
            Some(_) => Applied::AlreadyApplied,
        })
    }

    /// What recording `quality` for decision `id` would do, without doing it.
    pub fn quality_would_apply(&self, id: u64, quality: f64) -> Result<Applied> {
        validate_quality(quality)?;
        let t = self.tracked(id)?;
        Ok(match t.arm {
            None => Applied::ArmRemoved,
            Some(_) if t.quality_recorded => Applied::AlreadyApplied,
            Some(_) => Applied::Applied,
        })
    }

    fn tracked(&self, id: u64) -> Result<&TrackedDecision> {
        self.tracked
            .get(&id)
            .ok_or_else(|| Error::from(ErrorKind::UnknownDecision(id)))
    }

    fn tracked_mut(&mut self, id: u64) -> Result<&mut TrackedDecision> {
        self.tracked
            .get_mut(&id)
            .ok_or_else(|| Error::from(ErrorKind::UnknownDecision(id)))
    }

    /// Records what decision `id` cost and how long it took, and its quality when the
    /// outcome carries one (a failed call counts as quality 0). Each part applies once.
    pub fn record_outcome(&mut self, id: u64, outcome: &Outcome) -> Result<Applied> {
        outcome.validate()?;
        let tracked = self.tracked_mut(id)?;
        let Some(arm) = tracked.arm else {
            return Ok(Applied::ArmRemoved);
        };
        let mut applied = Applied::AlreadyApplied;
        if !tracked.outcome_recorded {
            let tokens = if outcome.input_tokens > 0 {
                outcome.input_tokens
            } else {
                tracked.input_tokens
            };
            let usage = self.usage[arm].recorded(outcome, tokens)?;
            let tracked = self.tracked_mut(id)?;
            tracked.outcome_recorded = true;
            let features = tracked.take_or_share_features(tracked.quality_recorded);
            self.learn_cost(arm, &features, tokens, outcome.cost_usd);
            self.usage[arm] = usage;
            if let Some(pacer) = self.pacer.as_mut() {
                pacer.observe(outcome.cost_usd);
            }
            applied = Applied::Applied;
        }
        if let Some(quality) = outcome.credited_quality() {
            if self.apply_quality(id, quality)? == Applied::Applied {
                applied = Applied::Applied;
            }
        }
        Ok(applied)
    }

    /// Records the quality of decision `id`, possibly long after its outcome. Idempotent:
    /// only the first quality for a decision is learned.
    pub fn record_quality(&mut self, id: u64, quality: f64) -> Result<Applied> {
        validate_quality(quality)?;
        self.apply_quality(id, quality)
    }

    fn apply_quality(&mut self, id: u64, quality: f64) -> Result<Applied> {
        let tracked = self.tracked_mut(id)?;
        let Some(arm) = tracked.arm else {
            return Ok(Applied::ArmRemoved);
        };
        if tracked.quality_recorded {
            return Ok(Applied::AlreadyApplied);
        }
        tracked.quality_recorded = true;
        let features = tracked.take_or_share_features(tracked.outcome_recorded);
        self.learn_quality(arm, &features, quality);
        Ok(Applied::Applied)
    }

    /// Learns one quality of `arm`; first, under change detection, weighs how far it is
    /// from the estimate and restarts the arm on an alarm (see [`crate::change`]).
    fn learn_quality(&mut self, arm: usize, features: &[f64], quality: f64) {
        let threshold = self.config.policy.detect;
        if threshold > 0.0 && self.policy.observations(arm) >= WATCHED_FROM {
            self.change_detectors.resize(self.arms.len(), Cusum::default());
            let residual = quality - self.policy.estimate(arm, features).mean.clamp(0.0, 1.0);
            if self.change_detectors[arm].observe(residual, threshold) {
                self.policy.shrink_arm(arm, RESTART_OBSERVATIONS);
            }
        }
        self.policy.update(arm, features, quality);
    }

    /// What a request with features `x` and `tokens` prompt tokens is expected to cost on
    /// arm `i`: from its prices, or else from its per-token cost ratio corrected by its
    /// cost model.
    fn expected_cost_usd(&self, i: usize, x: &[f64], tokens: u32) -> f64 {
        let by_usage = self.cost_by_usage(i, tokens);
        match &self.cost_models {
            Some(models) if !self.arms[i].has_prices() => (by_usage + models.get(i).mean(x)).max(0.0),
            _ => by_usage,
        }
    }

    /// Arm `i`'s expected cost from its prices or its per-token ratio (see [`ArmUsage`]).
    fn cost_by_usage(&self, i: usize, tokens: u32) -> f64 {
        self.usage[i].expected_cost_usd(&self.arms[i], tokens, self.config.default_output_tokens)
    }

    /// Teaches arm `arm`'s cost model what the per-token ratio missed on a request with
    /// features `x` and `tokens` prompt tokens that cost `cost_usd`, unless the arm has
    /// prices. Call it before the usage records that cost.
    fn learn_cost(&mut self, arm: usize, x: &[f64], tokens: u32, cost_usd: f64) {
        if self.arms[arm].has_prices() || x.is_empty() {
            return;
        }
        let by_usage = self.cost_by_usage(arm, tokens);
        if let Some(models) = self.cost_models.as_mut() {
            models.observe(arm, x, cost_usd - by_usage);
        }
    }

    /// Forgets every decision with an id below `id`: their feedback horizon has passed.
    pub fn forget_decisions_before(&mut self, id: u64) {
        let (_, at, mut after) = self.tracked.split_lookup(&id);
        if let Some(decision) = at {
            after.insert(id, decision);
        }
        self.tracked = after;
    }

    /// Adds an arm at run time; it starts from the policy's optimistic prior.
    pub fn add_arm(&mut self, arm: Arm) -> Result<()> {
        arm.validate()?;
        if self.arms.iter().any(|a| a.id == arm.id) {
            return Err(ErrorKind::DuplicateArm(arm.id).into());
        }
        self.arms.push(arm);
        self.usage.push(ArmUsage::default());
        self.policy.add_arm();
        if let Some(models) = self.cost_models.as_mut() {
            models.add_arm();
        }
        Ok(())
    }

    /// Removes an arm at run time. Pending feedback for its decisions is acknowledged but
    /// no longer learned. The last arm cannot be removed.
    pub fn remove_arm(&mut self, id: &str) -> Result<Arm> {
        let index = self.arm_index(id)?;
        if self.arms.len() == 1 {
            return Err(ErrorKind::InvalidConfig(format!("cannot remove `{id}`, the only arm")).into());
        }
        self.policy.remove_arm(index);
        self.usage.remove(index);
        if index < self.change_detectors.len() {
            self.change_detectors.remove(index);
        }
        if let Some(models) = self.cost_models.as_mut() {
            models.remove_arm(index);
        }
        self.tracked = self
            .tracked
            .iter()
            .map(|(&id, t)| {
                let kept = match t.arm {
                    Some(a) if a == index => TrackedDecision::of_removed_arm(t.input_tokens),
                    Some(a) if a > index => TrackedDecision {
                        arm: Some(a - 1),
                        ..t.clone()
                    },
                    _ => t.clone(),
                };
                (id, kept)
            })
            .collect();
        Ok(self.arms.remove(index))
    }

    /// Adds what `replica` learned since `base`, a snapshot of this learner that the
    /// replica started from: the policy's statistics ([`Policy::merge`]) and each arm's
    /// usage are sums, so two replicas of `base` fed two halves of a stream merge into what
    /// one learner fed the whole stream would hold. The cost models are sums too, of
    /// residuals against the per-token ratio as each replica estimated it at the time, so
    /// they merge into nearly, not exactly, the whole's. Not merged, since no
    /// sum describes them: the budget pacer (each replica paces its own spend), change
    /// detection (a path, not a sum), decisions awaiting feedback (each replica answers
    /// for its own) and decision ids. Refused unless the three have the same arms, in the
    /// same order, and the policy does not forget.
    pub fn merge(&mut self, replica: &Learner, base: &Learner) -> Result<()> {
        let ids = |l: &Learner| l.arms.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
        if ids(replica) != ids(self) || ids(base) != ids(self) {
            return Err(ErrorKind::InvalidConfig("cannot merge learners with other arms".into()).into());
        }
        if replica.config.dim != self.config.dim || base.config.dim != self.config.dim {
            return Err(
                ErrorKind::InvalidConfig("cannot merge learners of other context dimensions".into()).into(),
            );
        }
        self.policy.merge(&replica.policy, &base.policy)?;
        for ((mine, r), b) in self.usage.iter_mut().zip(&replica.usage).zip(&base.usage) {
            mine.merge(r, b);
        }
        if let (Some(mine), Some(r), Some(b)) =
            (self.cost_models.as_mut(), &replica.cost_models, &base.cost_models)
        {
            mine.merge(r, b)?;
        }
        Ok(())
    }

    /// The complete state, versioned, for serialization.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            format_version: SNAPSHOT_VERSION,
            learner: self.clone(),
        }
    }

    /// The learned state without the decisions awaiting feedback: for a caller that keeps
    /// its own record of decisions (a decision log), so that the snapshot's size does not
    /// grow with them. After [`Learner::restore`], the caller re-registers each decision
    /// from [`Learner::oldest_tracked_decision`] on with [`Learner::resume_decision`],
    /// [`Learner::resume_outcome`] and [`Learner::resume_quality`]; until then their
    /// feedback answers [`ErrorKind::UnknownDecision`].
    pub fn snapshot_without_tracked(&self) -> Snapshot {
        let mut snapshot = self.snapshot();
        snapshot.learner.tracked = OrdMap::new();
        snapshot
    }

    /// The id of the oldest decision still awaiting (or remembered for) feedback.
    pub fn oldest_tracked_decision(&self) -> Option<u64> {
        self.tracked.get_min().map(|&(id, _)| id)
    }

    /// Restores a learner from a snapshot, checking its version and consistency.
    pub fn restore(snapshot: Snapshot) -> Result<Self> {
        if snapshot.format_version != SNAPSHOT_VERSION {
            return Err(ErrorKind::SnapshotVersion {
                found: snapshot.format_version,
                supported: SNAPSHOT_VERSION,
            }
            .into());
        }
        let l = snapshot.learner;
        let k = l.arms.len();
        if k == 0 || l.policy.num_arms() != k || l.usage.len() != k {
            return Err(ErrorKind::CorruptSnapshot(format!(
                "{k} arms, but the policy has {} and usage {}",
                l.policy.num_arms(),
                l.usage.len()
            ))
            .into());
        }
        if l.cost_models.as_ref().is_some_and(|m| m.len() != k) {
            return Err(ErrorKind::CorruptSnapshot(format!(
                "{k} arms, but the cost models have another number"
            ))
            .into());
        }
        if l.tracked.values().any(|t| t.arm.is_some_and(|a| a >= k)) {
            return Err(ErrorKind::CorruptSnapshot("a tracked decision names a missing arm".into()).into());
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Context;

    /// A snapshot shares the tracked decisions with the live learner instead of copying
    /// them, and the learner's later changes do not reach the snapshot.
    #[test]
    fn snapshots_share_the_tracked_decisions() {
        let spec: PolicySpec = "linucb".parse().expect("spec");
        let mut l =
            Learner::new(LearnerConfig::new(spec, 2), vec![Arm::new("a"), Arm::new("b")]).expect("learner");
        let request = Request::new(Context {
            features: vec![1.0, 0.5],
            input_tokens: 10,
        });
        let ids: Vec<u64> = (0..1000)
            .map(|_| l.decide(&request).expect("decide").id)
            .collect();
        let snapshot = l.snapshot();
        assert!(snapshot.learner.tracked.ptr_eq(&l.tracked));
        l.record_quality(ids[10], 1.0).expect("feedback");
        assert!(!snapshot.learner.tracked[&ids[10]].quality_recorded);
        assert!(l.tracked[&ids[10]].quality_recorded);
    }
}
