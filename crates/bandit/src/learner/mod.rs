//! The learner: arms, a policy, cost and latency usage, the objective and budget pacing,
//! tied together into decide -> outcome -> update, with snapshots.
//!
//! Here: the learner's state, its configuration, and learning from feedback. Apart: the
//! decision pipeline (`decide.rs`: eligibility, estimates, penalties, pruning, the budget's
//! band, the choice and its explanation), the ledger of decisions awaiting feedback
//! (`ledger.rs`) and snapshots (`snapshot.rs`).

mod decide;
mod held;
mod ledger;
mod snapshot;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::arm::{Arm, Constraints};
use crate::change::{Cusum, RESTART_OBSERVATIONS, WATCHED_FROM};
use crate::cost::{ArmCost, CostModel};
use crate::error::{in_range, ErrorKind, Result};
use crate::features::Context;
use crate::limits;
use crate::outcome::{validate_quality, BudgetPacer, Objective, ObjectiveOverride, Outcome};
use crate::policy::{AnyPolicy, Policy, PolicySpec, PropensityKind};
use crate::prior::{PriorCoverage, Priors};
use crate::spend::SpendCurve;
use crate::usage::{AnswerSums, ArmUsage};

pub use held::HOLD_HORIZON;
use held::{Held, HeldDecisions};
use ledger::{Ledger, TrackedDecision};
pub use snapshot::{Snapshot, SNAPSHOT_VERSION};

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
    /// The estimated costs (USD) of the learner's earlier decisions whose calls are under
    /// way, their outcomes not yet recorded, oldest first: a budget paces this decision
    /// as if they had come back at these costs ([`BudgetPacer::ahead`]). Empty for a
    /// caller that records each outcome before deciding again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub costs_under_way: Vec<f64>,
}

impl Request {
    /// A request with no constraints and the learner's objective.
    pub fn new(context: Context) -> Self {
        Request {
            context,
            constraints: Constraints::default(),
            objective: None,
            unavailable: BTreeMap::new(),
            costs_under_way: Vec::new(),
        }
    }
}

/// What a logged decision's request asked beyond its context, as a decision log records
/// it: the models left out as unavailable, the models it admitted
/// ([`Decision::admitted`]: its constraints as the route judged them, with the models'
/// tags, expected costs and context windows) and its own trade-off. The server's shadow
/// candidates and an off-policy evaluation of the log decide each logged request again
/// from these, as the route did, without the models' tags, prices or windows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoggedTerms {
    /// Models left out as unavailable (none if every model was).
    pub unavailable: Vec<String>,
    /// Models the request admitted; empty: every model.
    pub admitted: Vec<String>,
    /// The request's own trade-off.
    pub objective: ObjectiveOverride,
}

impl LoggedTerms {
    /// Whether the request asked nothing beyond its context.
    pub fn is_empty(&self) -> bool {
        *self == LoggedTerms::default()
    }

    /// The request the route decided on, in `context`, its trade-off over the route's
    /// `route_objective`.
    pub fn request(&self, context: Context, route_objective: Objective) -> Request {
        let mut request = Request::new(context);
        request.unavailable = self
            .unavailable
            .iter()
            .map(|m| (m.clone(), "unavailable".to_string()))
            .collect();
        request.constraints.only_arms = self.admitted.iter().cloned().collect();
        if self.objective != ObjectiveOverride::default() {
            request.objective = Some(self.objective.over(route_objective));
        }
        request
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
    /// Its uncertainty (see [`crate::policy::Estimate::std`]).
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
    /// The arms the request admitted (its constraints, a model's expected cost against its
    /// `max_cost_usd` included, and a context window its prompt fits), when some were not;
    /// empty when every arm was. What a decision log records of them
    /// ([`LoggedTerms::admitted`]), so that the decision can be made again without the arms'
    /// tags, prices or windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admitted: Vec<String>,
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
    /// The decision's arm has since been removed; acknowledged and recorded once, not
    /// learned.
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
    /// The cost weight in force, quality points per USD (objective plus budget pacing).
    pub w_cost: f64,
}

/// The decision [`Learner::decide_pmf`] made.
#[derive(Debug, Clone, PartialEq)]
pub struct PmfChoice {
    /// Decision id, in the learner's own sequence.
    pub id: u64,
    /// The probability of every arm, in the order of [`Learner::arms`] (0 for an arm left out).
    pub pmf: Vec<f64>,
    /// Index of the arm drawn.
    pub arm: usize,
    /// What the decision is expected to cost: the arms' estimated costs under its PMF.
    pub expected_cost_usd: f64,
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
    /// Decisions awaiting feedback.
    tracked: Ledger,
    /// What each arm is expected to cost in a context beyond what its usage says (see
    /// [`crate::cost`]). Absent in snapshots written before it existed.
    #[serde(default, rename = "cost_models")]
    cost: CostModel,
    /// Per arm, the change detection's sums (see [`crate::change`]); empty when the
    /// policy detects no change. Absent in snapshots written before it existed.
    #[serde(default)]
    change_detectors: Vec<Cusum>,
    /// The priors' spend curve, kept so that a budget set by a later reconfiguration
    /// starts its pacer from it too; dropped when the arms or their prices change, since
    /// it describes choices among the arms it was fitted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spend_curve: Option<SpendCurve>,
    /// Decisions held while their quality is on its way (see `held.rs`); none under a
    /// policy that holds nothing, and none in [`Learner::without_tracked`].
    #[serde(default, skip_serializing_if = "HeldDecisions::is_empty")]
    held: HeldDecisions,
}

/// Each arm's family ([`Arm::family`]), in arm order.
fn families(arms: &[Arm]) -> Vec<String> {
    arms.iter().map(Arm::family).collect()
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
        let mut policy = config.policy.build(&ids, config.dim)?;
        policy.share_families(&families(&arms));
        Ok(Learner {
            usage: vec![ArmUsage::default(); arms.len()],
            cost: CostModel::new(arms.len(), config.dim),
            config,
            arms,
            policy,
            pacer,
            next_decision: 0,
            tracked: Ledger::default(),
            change_detectors: Vec::new(),
            spend_curve: None,
            held: HeldDecisions::default(),
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
    /// prior adds it to what it has learned, adds its cost sums to its usage prior and
    /// starts its cost correction from the prior's ([`CostModel::absorb_prior`]); a
    /// budget's pacer starts from the priors' spend curve ([`BudgetPacer::warm_start`]),
    /// which the learner keeps for a budget set later ([`Learner::reconfigure`]) when the
    /// priors were fitted on exactly its models. Returns how the priors' models meet the
    /// learner's; priors with none of them are refused. The caller checks that the priors
    /// were fitted in the context definition its requests are featurized with; the learner
    /// can check only the dimension.
    pub fn absorb_priors(&mut self, priors: &Priors) -> Result<PriorCoverage> {
        priors.validate()?;
        if priors.dim != self.config.dim {
            return Err(ErrorKind::DimensionMismatch {
                expected: self.config.dim,
                found: priors.dim,
            }
            .into());
        }
        let coverage = priors.coverage(self.arms.iter().map(|a| a.id.as_str()))?;
        for (index, arm) in self.arms.iter().enumerate() {
            if let Some(prior) = priors.arms.get(&arm.id) {
                self.policy.absorb_prior(index, prior);
                self.usage[index].prior.add(&prior.usage);
                self.cost.absorb_prior(index, arm, prior);
            }
        }
        // The curve is the spend of choices among the models it was fitted with.
        if priors.spend.is_some() && coverage.same_models() {
            self.spend_curve = priors.spend.clone();
        }
        self.warm_start_pacer();
        Ok(coverage)
    }

    /// Starts a pacer that has observed nothing from the priors' spend curve, if any.
    fn warm_start_pacer(&mut self) {
        if let (Some(pacer), Some(curve)) = (self.pacer.as_mut(), &self.spend_curve) {
            pacer.warm_start(curve, self.config.objective.w_cost);
        }
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

    /// Re-registers a decision made before a restart, as read back from a decision log:
    /// decision `id` chose `arm` in `context`. The learner then tracks it as `decide` did
    /// (its outcome and quality can still be recorded) and the next decision gets `id + 1`.
    /// Decisions draw from per-id random streams, so nothing else needs replaying.
    /// A decision already tracked is left as it is, so resuming twice counts nothing twice.
    /// A decision of an arm removed since ([`Learner::reconfigure`]) is tracked as
    /// [`Learner::remove_arm`] leaves one: its outcome and quality are acknowledged, not learned.
    pub fn resume_decision(&mut self, id: u64, arm: &str, context: &Context) -> Result<()> {
        self.validate_features(&context.features)?;
        if !self.tracked.contains(id) {
            match self.arms.iter().position(|a| a.id == arm) {
                Some(index) => self.track(id, index, context),
                None => self.track_decision(id, TrackedDecision::of_removed_arm(context.input_tokens)),
            }
        }
        Ok(())
    }

    /// Remembers decision `id` (arm `index`) for its outcome; the next decision gets `id + 1`.
    /// It awaits its quality (see `held.rs`).
    fn track(&mut self, id: u64, index: usize, context: &Context) {
        let decision = TrackedDecision::new(index, context);
        let features = Arc::clone(&decision.features);
        self.track_decision(id, decision);
        self.hold(id, index, features);
    }

    /// Decision `id` of `arm` awaits its quality: it is held from the next decision on if
    /// the quality has not come by then (see `held.rs`). A decision awaiting before it is
    /// held now.
    fn hold(&mut self, id: u64, arm: usize, features: impl Into<Arc<[f64]>>) {
        if self.policy.holds() {
            let features = features.into();
            let earlier = self.held.await_quality(id, Held { arm, features });
            self.hold_in_policy(earlier);
        }
    }

    /// Holds the latest decision if its quality has not come, so that the next decision
    /// knows it is coming (nothing under a policy that holds nothing). Every way of
    /// deciding does this first; a caller that decides with [`Learner::propose`] and
    /// tracks with [`Learner::resume_decision`] (a server that logs first) calls it before
    /// proposing.
    pub fn hold_latest(&mut self) {
        let latest = self.held.take_latest();
        self.hold_in_policy(latest);
    }

    /// Lets go of the decisions older than the horizon, then holds `decision` in the
    /// policy unless it is older too.
    fn hold_in_policy(&mut self, decision: Option<(u64, Held)>) {
        let horizon = self.next_decision.saturating_sub(self.held.horizon());
        self.let_go_before(horizon);
        if let Some((id, held)) = decision.filter(|(id, _)| *id >= horizon) {
            self.policy.hold(held.arm, &held.features);
            self.held.insert(id, held);
        }
    }

    /// Lets go of every held decision older than `id`.
    fn let_go_before(&mut self, id: u64) {
        while let Some(held) = self.held.take_oldest_before(id) {
            self.let_go(held);
        }
    }

    /// Takes a held decision out of the policy's width: its quality came, or will not.
    fn let_go(&mut self, held: Held) {
        self.policy.release(held.arm, &held.features);
    }

    fn track_decision(&mut self, id: u64, decision: TrackedDecision) {
        self.tracked
            .insert(id, decision, self.config.max_tracked_decisions);
        self.next_decision = self.next_decision.max(id + 1);
    }

    /// Takes `spec`'s way of finding propensities (a Thompson policy's `draws`): like the
    /// tracked decisions' bound, not part of what was learned, so a restored learner takes
    /// the one configured now. Refused when `spec` differs in anything else.
    pub fn adopt_draws(&mut self, spec: &PolicySpec) -> Result<()> {
        if !self.config.policy.learns_as(spec) {
            return Err(ErrorKind::InvalidConfig(format!(
                "`{spec}` learns otherwise than `{}`",
                self.config.policy
            ))
            .into());
        }
        self.config.policy = spec.clone();
        if let Some(&mut draws) = self.config.policy.kind.draws_mut() {
            self.policy.set_draws(draws);
        }
        Ok(())
    }

    /// Changes how many decisions are remembered for late feedback: an operational
    /// setting, not part of what was learned, so a restored learner takes the one
    /// configured now. The oldest decisions beyond it are forgotten.
    pub fn set_max_tracked_decisions(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(ErrorKind::InvalidConfig("max_tracked_decisions must be at least 1".into()).into());
        }
        self.config.max_tracked_decisions = n;
        self.tracked.keep_at_most(n);
        Ok(())
    }

    /// Takes a new configuration and arm list without forgetting what was learned: arms
    /// no longer listed are removed ([`Learner::remove_arm`]), new ones are added at the
    /// end from the policy's prior ([`Learner::add_arm`]; the kept arms keep their order,
    /// whatever the order of `arms`), kept ones take their new prices,
    /// context window and tags; the objective, seed, output-token default and feedback
    /// horizon take the new values, and a changed budget starts a new pacer (from the
    /// priors' spend curve while the arms and prices are the ones it describes). The policy and
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
        let mut choices_changed = false;
        // Add first, so that removing never leaves the learner without an arm.
        for arm in arms {
            match self.arms.iter().position(|a| a.id == arm.id) {
                Some(i) if self.arms[i] != *arm => {
                    changes.push(format!(
                        "model `{}`: prices, context window or tags updated",
                        arm.id
                    ));
                    choices_changed |= self.arms[i].input_usd_per_token != arm.input_usd_per_token
                        || self.arms[i].output_usd_per_token != arm.output_usd_per_token;
                    if self.arms[i].has_prices() != arm.has_prices() {
                        self.cost.forget_arm(i);
                    }
                    self.arms[i] = arm.clone();
                }
                Some(_) => {}
                None => {
                    changes.push(format!("model `{}` added", arm.id));
                    choices_changed = true;
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
            choices_changed = true;
        }
        if choices_changed && self.spend_curve.take().is_some() {
            changes.push("the priors' spend curve no longer describes the models: dropped".into());
        }
        // The ratio of costs to estimates was of other estimates.
        let estimates_changed =
            choices_changed || config.default_output_tokens != self.config.default_output_tokens;
        if let Some(pacer) = self.pacer.as_mut().filter(|_| estimates_changed) {
            pacer.forget_calibration();
        }
        // A `family:` tag may have moved a kept model to another family.
        self.policy.share_families(&families(&self.arms));
        let budget_changed = config.budget != self.config.budget;
        if budget_changed {
            let from = if self.spend_curve.is_some() {
                "the priors' spend curve"
            } else {
                "0"
            };
            changes.push(format!(
                "budget {:?} then, {:?} now: pacing starts afresh from {from}",
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
        if budget_changed {
            self.warm_start_pacer();
        }
        Ok(changes)
    }

    /// Re-registers, after a restart, that decision `id`'s outcome was recorded before the
    /// snapshot the learner was restored from: the state already holds what it taught, so
    /// only the decision's bookkeeping changes, as [`Learner::record_outcome`] would change
    /// it (a repeat then counts as already applied).
    pub fn resume_outcome(&mut self, id: u64, outcome: &Outcome) -> Result<()> {
        outcome.validate()?;
        let quality = outcome.credited_quality();
        self.tracked.mark_recorded(id, Some(outcome), quality)?;
        if quality.is_some() {
            self.let_go_of(id);
        }
        Ok(())
    }

    /// [`Learner::resume_outcome`] for a quality recorded before the snapshot.
    pub fn resume_quality(&mut self, id: u64, quality: f64) -> Result<()> {
        validate_quality(quality)?;
        self.tracked.mark_recorded(id, None, Some(quality))?;
        self.let_go_of(id);
        Ok(())
    }

    /// Lets go of decision `id` if it awaits its quality: the state already holds it.
    fn let_go_of(&mut self, id: u64) {
        if let Some((held, true)) = self.held.take(id) {
            self.let_go(held);
        }
    }

    /// Learns from an outcome of `arm` that this learner did not decide (a logged decision
    /// of another policy, or a warm start): cost and latency, and quality if present.
    /// The budget pacer is left alone: it tracks this learner's own spend.
    pub fn learn(&mut self, arm: &str, context: &Context, outcome: &Outcome) -> Result<()> {
        let index = self.arm_index(arm)?;
        self.learn_outcome(index, context, outcome, None, false)
    }

    /// [`Learner::learn`] of a quality whose call reported no outcome (feedback without
    /// one): the quality is learned, the cost is not.
    pub fn learn_feedback(&mut self, arm: &str, context: &Context, quality: f64) -> Result<()> {
        validate_quality(quality)?;
        let index = self.arm_index(arm)?;
        self.validate_features(&context.features)?;
        self.learn_quality(index, &context.features, quality, None);
        Ok(())
    }

    /// [`Learner::learn`] of the outcome of decision `id`, which the caller held with
    /// [`Learner::hold_untracked`] while it was on its way (a shadow candidate learning
    /// what its route served): lets go of the decision when the outcome carries its
    /// quality. The pacer is left alone, as by `learn`.
    pub fn learn_held(&mut self, id: u64, arm: &str, context: &Context, outcome: &Outcome) -> Result<()> {
        let index = self.arm_index(arm)?;
        self.learn_outcome(index, context, outcome, Some(id), false)
    }

    /// Learns a whole outcome of arm `arm` in `context`, for decision `id` if the caller
    /// knows it (to let go of the decision if held); the pacer too when the decision was
    /// this learner's `own`.
    fn learn_outcome(
        &mut self,
        arm: usize,
        context: &Context,
        outcome: &Outcome,
        id: Option<u64>,
        own: bool,
    ) -> Result<()> {
        self.validate_features(&context.features)?;
        outcome.validate()?;
        let tokens = outcome.tokens_or(context.input_tokens);
        let usage = self.usage[arm].recorded(&self.arms[arm], outcome, tokens)?;
        let own = own.then_some(context.input_tokens);
        self.apply_cost(arm, &context.features, tokens, usage, outcome, own);
        if let Some(quality) = outcome.credited_quality() {
            self.learn_quality(arm, &context.features, quality, id);
        }
        Ok(())
    }

    /// Whether decision `id`'s outcome (its cost and latency) is recorded already.
    pub fn outcome_recorded(&self, id: u64) -> Result<bool> {
        Ok(self.tracked.get(id)?.outcome_recorded)
    }

    /// The cost decision `id`'s outcome reported, once it is recorded: what a repeat that
    /// leaves its cost out reports again. `None` before, and for a decision restored as
    /// recorded.
    pub fn recorded_cost(&self, id: u64) -> Result<Option<f64>> {
        Ok(self.tracked.get(id)?.recorded_cost())
    }

    /// The arm decision `id` chose, while it is tracked; `None` once the arm was removed.
    pub fn tracked_arm(&self, id: u64) -> Result<Option<&Arm>> {
        Ok(self.tracked.get(id)?.arm.map(|arm| &self.arms[arm]))
    }

    /// Whether decision `id`'s quality has been recorded.
    pub fn quality_recorded(&self, id: u64) -> Result<bool> {
        Ok(self.tracked.get(id)?.quality_recorded)
    }

    /// What recording `outcome` for decision `id` would do, without doing it: lets a
    /// caller log a change durably before applying it.
    pub fn outcome_would_apply(&self, id: u64, outcome: &Outcome) -> Result<Applied> {
        outcome.validate()?;
        self.tracked.outcome_would_apply(id, outcome)
    }

    /// What recording `quality` for decision `id` would do, without doing it.
    pub fn quality_would_apply(&self, id: u64, quality: f64) -> Result<Applied> {
        validate_quality(quality)?;
        self.tracked.quality_would_apply(id, quality)
    }

    /// Records what decision `id` cost and how long it took, and its quality when the
    /// outcome carries one (a failed call counts as quality 0). Each part applies once.
    pub fn record_outcome(&mut self, id: u64, outcome: &Outcome) -> Result<Applied> {
        outcome.validate()?;
        let would = self.tracked.outcome_would_apply(id, outcome)?;
        let tracked = self.tracked.get_mut(id)?;
        let Some(arm) = tracked.arm else {
            self.tracked
                .mark_recorded(id, Some(outcome), outcome.credited_quality())?;
            return Ok(would);
        };
        let mut applied = Applied::AlreadyApplied;
        if !tracked.outcome_recorded {
            let tokens = outcome.tokens_or(tracked.input_tokens);
            let usage = self.usage[arm].recorded(&self.arms[arm], outcome, tokens)?;
            let tracked = self.tracked.get_mut(id)?;
            tracked.record_call(outcome);
            let (features, decided_tokens) = (
                tracked.take_or_share_features(tracked.quality_recorded),
                tracked.input_tokens,
            );
            self.apply_cost(arm, &features, tokens, usage, outcome, Some(decided_tokens));
            applied = Applied::Applied;
        }
        if let Some(quality) = outcome.credited_quality() {
            if self.apply_quality(id, quality)? == Applied::Applied {
                applied = Applied::Applied;
            }
        }
        Ok(applied)
    }

    /// What an outcome's cost teaches: the cost model and the arm's usage (`usage`,
    /// already checked), and the budget pacer when the decision was this learner's own,
    /// decided on `own` prompt tokens (the pacer tracks its own spend), with what the call
    /// was expected to cost on them just before its cost came, for its ratio of costs to
    /// estimates ([`BudgetPacer::calibrate`]). That is the estimate a call under way is
    /// counted at but for what the costs in between taught the cost model.
    fn apply_cost(
        &mut self,
        arm: usize,
        x: &[f64],
        tokens: u32,
        usage: ArmUsage,
        outcome: &Outcome,
        own: Option<u32>,
    ) {
        let estimate = own
            .filter(|_| self.pacer.is_some())
            .map(|decided| self.expected_cost_usd(arm, x, decided, self.route_answer_tokens()));
        self.learn_cost(arm, x, tokens, outcome);
        self.usage[arm] = usage;
        if let (Some(pacer), Some(estimate)) = (self.pacer.as_mut(), estimate) {
            pacer.calibrate(estimate, outcome.cost_usd);
            pacer.observe(outcome.cost_usd);
        }
    }

    /// [`Learner::record_outcome`] of decision `id`, made by [`Learner::decide_untracked`]:
    /// the caller says which arm it chose in which context. It learns the same things in
    /// the same way; nothing checks that the outcome is recorded once.
    pub fn record_untracked_outcome(
        &mut self,
        id: u64,
        arm: usize,
        context: &Context,
        outcome: &Outcome,
    ) -> Result<()> {
        self.check_arm_index(arm)?;
        self.learn_outcome(arm, context, outcome, Some(id), true)
    }

    /// [`Learner::record_quality`] of decision `id`, made by [`Learner::decide_untracked`]
    /// of arm `arm`, in the context `features` it was made in; lets go of the decision if
    /// [`Learner::hold_untracked`] held it.
    pub fn record_untracked_quality(
        &mut self,
        id: u64,
        arm: usize,
        features: &[f64],
        quality: f64,
    ) -> Result<()> {
        validate_quality(quality)?;
        self.check_arm_index(arm)?;
        self.validate_features(features)?;
        self.learn_quality(arm, features, quality, Some(id));
        Ok(())
    }

    /// Holds decision `id` of arm `arm`, made by [`Learner::decide_untracked`] in context
    /// `features`, while its quality is on its way, as a tracked decision is held (see
    /// `held.rs`): for a caller whose qualities come after later decisions. A caller of
    /// [`Learner::decide_pmf`] holds the arm it served, not the one drawn: the one whose
    /// outcome it will learn ([`Learner::learn_held`]).
    pub fn hold_untracked(&mut self, id: u64, arm: usize, features: &[f64]) -> Result<()> {
        self.check_arm_index(arm)?;
        self.validate_features(features)?;
        self.hold(id, arm, features);
        Ok(())
    }

    /// An untracked decision's arm index, as the caller passes it back.
    fn check_arm_index(&self, arm: usize) -> Result<()> {
        if arm < self.arms.len() {
            return Ok(());
        }
        Err(ErrorKind::UnknownArm {
            id: format!("#{arm}"),
            known: self.arms.iter().map(|a| a.id.clone()).collect(),
        }
        .into())
    }

    /// Records the quality of decision `id`, possibly long after its outcome. Idempotent:
    /// only the first quality for a decision is learned, a repeat is already applied, and
    /// another quality is refused ([`ErrorKind::QualityConflict`]).
    pub fn record_quality(&mut self, id: u64, quality: f64) -> Result<Applied> {
        self.quality_would_apply(id, quality)?;
        self.apply_quality(id, quality)
    }

    fn apply_quality(&mut self, id: u64, quality: f64) -> Result<Applied> {
        let tracked = self.tracked.get_mut(id)?;
        if tracked.quality_recorded {
            return Ok(Applied::AlreadyApplied);
        }
        tracked.quality_recorded = true;
        tracked.quality = Some(quality);
        let Some(arm) = tracked.arm else {
            return Ok(Applied::ArmRemoved);
        };
        let features = tracked.take_or_share_features(tracked.outcome_recorded);
        self.learn_quality(arm, &features, quality, Some(id));
        Ok(Applied::Applied)
    }

    /// Learns one quality of `arm`, of decision `id` if it was this learner's own (letting
    /// go of the decision if it was held), and under change detection weighs how far the
    /// quality is from the estimate and restarts the arm on an alarm (see
    /// [`crate::change`]).
    fn learn_quality(&mut self, arm: usize, features: &[f64], quality: f64, id: Option<u64>) {
        let mut held_here = false;
        if let Some(id) = id {
            if let Some((held, in_policy)) = self.held.take(id) {
                self.held.came_after(self.next_decision.saturating_sub(id));
                debug_assert_eq!(held.arm, arm, "a decision's quality is its arm's");
                held_here = in_policy;
            }
        }
        let threshold = self.config.policy.detect;
        if threshold > 0.0 && self.policy.observations(arm) >= WATCHED_FROM {
            self.change_detectors.resize(self.arms.len(), Cusum::default());
            let residual = quality - self.policy.estimate(arm, features).mean.clamp(0.0, 1.0);
            if self.change_detectors[arm].observe(residual, threshold) {
                self.policy.shrink_arm(arm, RESTART_OBSERVATIONS);
            }
        }
        if held_here {
            self.policy.update_held(arm, features, quality);
        } else {
            self.policy.update(arm, features, quality);
        }
        self.usage[arm].add_quality(quality);
    }

    /// Arm `i` as the cost model sees it, a priced arm with no answers of its own expected
    /// to answer in `answer_tokens`.
    /// (A function of the fields it reads, so that the cost model may be borrowed beside it.)
    fn arm_cost<'a>(arms: &'a [Arm], usage: &'a [ArmUsage], answer_tokens: f64, i: usize) -> ArmCost<'a> {
        ArmCost {
            arm: &arms[i],
            usage: &usage[i],
            default_output_tokens: answer_tokens,
        }
    }

    /// The answer a priced arm with none of its own is expected to give: the mean answer
    /// of the route's priced arms so far (see [`ArmUsage::answer_sums`]), else the
    /// configured default.
    fn route_answer_tokens(&self) -> f64 {
        self.arms
            .iter()
            .zip(&self.usage)
            .filter(|(arm, _)| arm.has_prices())
            .map(|(arm, usage)| usage.answer_sums(arm))
            .fold(AnswerSums::default(), |sum, sums| sum + sums)
            .mean_or(self.config.default_output_tokens)
    }

    /// What a request with features `x` and `tokens` prompt tokens is expected to cost on
    /// arm `i` (see [`CostModel::expected_usd`]); `answer_tokens` from
    /// [`Learner::route_answer_tokens`].
    fn expected_cost_usd(&self, i: usize, x: &[f64], tokens: u32, answer_tokens: f64) -> f64 {
        let arm = Self::arm_cost(&self.arms, &self.usage, answer_tokens, i);
        self.cost.expected_usd(i, arm, x, tokens)
    }

    /// Teaches the cost model what arm `arm`'s request cost (see [`CostModel::learn`]);
    /// before the usage records it.
    fn learn_cost(&mut self, arm: usize, x: &[f64], tokens: u32, outcome: &Outcome) {
        // What is learned compares with the arm's own usage, never with a default.
        let seen = Self::arm_cost(&self.arms, &self.usage, self.config.default_output_tokens, arm);
        self.cost.learn(arm, seen, x, tokens, outcome);
    }

    /// Forgets every decision with an id below `id`: their feedback horizon has passed.
    pub fn forget_decisions_before(&mut self, id: u64) {
        self.tracked.forget_before(id);
    }

    /// Adds an arm at run time; it starts from the policy's optimistic prior.
    pub fn add_arm(&mut self, arm: Arm) -> Result<()> {
        arm.validate()?;
        if self.arms.iter().any(|a| a.id == arm.id) {
            return Err(ErrorKind::DuplicateArm(arm.id).into());
        }
        self.policy.add_arm(&arm.family());
        self.arms.push(arm);
        self.usage.push(ArmUsage::default());
        self.cost.add_arm();
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
        self.cost.remove_arm(index);
        self.tracked.remove_arm(index);
        self.held.remove_arm(index);
        Ok(self.arms.remove(index))
    }

    /// Adds what `replica` learned since `base`, a snapshot of this learner that the
    /// replica started from: the policy's statistics ([`Policy::merge`]) and each arm's
    /// usage are sums, so two replicas of `base` fed two halves of a stream merge into what
    /// one learner fed the whole stream would hold. The cost models are sums too, of
    /// residuals against the per-token ratio as each replica estimated it at the time, so
    /// they merge into nearly, not exactly, the whole's. Not merged, since no
    /// sum describes them: the budget pacer (a path: [`Learner::pace_calls_elsewhere`]
    /// steps it with another replica's spend), change detection (a path, not a sum),
    /// decisions awaiting feedback (each replica answers for its own) and decision ids. Refused unless the three have the same arms, in the
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
        self.cost.merge(&replica.cost, &base.cost)
    }

    /// The calls recorded since `base` (this learner's past) and what they cost in all.
    /// An arm with fewer calls than in `base` was started afresh: it adds none.
    pub fn calls_since(&self, base: &Learner) -> (u64, f64) {
        self.usage
            .iter()
            .zip(&base.usage)
            .filter(|(now, then)| now.requests >= then.requests)
            .fold((0, 0.0), |(n, usd), (now, then)| {
                (
                    n + now.requests - then.requests,
                    usd + (now.cost_usd - then.cost_usd),
                )
            })
    }

    /// Steps the budget pacer with `calls` made elsewhere (by other replicas of the route)
    /// that cost `cost_usd` in all, as if it had recorded them
    /// ([`BudgetPacer::observe_calls`]): replicas that step each other's pacers pace one
    /// budget together.
    pub fn pace_calls_elsewhere(&mut self, calls: u64, cost_usd: f64) {
        if let Some(pacer) = &mut self.pacer {
            pacer.observe_calls(calls, cost_usd);
        }
    }
}
