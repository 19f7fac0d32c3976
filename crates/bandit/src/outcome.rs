//! What happened after a decision, and how quality, cost and latency combine into reward.

use serde::{Deserialize, Serialize};

use crate::error::{in_range, Result};
use crate::limits;
use crate::spend::SpendCurve;

/// The observed result of serving one request.
///
/// Latency, tokens and cost are known when the response returns; `quality` (in [0, 1]) may
/// come with it, much later through [`crate::Learner::record_quality`], or never.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Wall time from request to last byte, in milliseconds.
    pub latency_ms: f64,
    /// Prompt tokens billed.
    pub input_tokens: u32,
    /// Completion tokens billed.
    pub output_tokens: u32,
    /// What the call cost, in USD.
    pub cost_usd: f64,
    /// The call failed (error status, timeout, unusable body).
    pub error: bool,
    /// Quality score in [0, 1], when already known.
    pub quality: Option<f64>,
}

impl Outcome {
    /// A successful call with the given latency and cost and no quality yet.
    pub fn new(latency_ms: f64, cost_usd: f64) -> Self {
        Outcome {
            latency_ms,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd,
            error: false,
            quality: None,
        }
    }

    /// Sets the quality score.
    pub fn with_quality(mut self, quality: f64) -> Self {
        self.quality = Some(quality);
        self
    }

    /// Sets the billed token counts.
    pub fn with_tokens(mut self, input_tokens: u32, output_tokens: u32) -> Self {
        self.input_tokens = input_tokens;
        self.output_tokens = output_tokens;
        self
    }

    /// The prompt tokens billed, or `estimated` (the decision's estimate) when the outcome
    /// does not say.
    pub fn tokens_or(&self, estimated: u32) -> u32 {
        if self.input_tokens > 0 {
            self.input_tokens
        } else {
            estimated
        }
    }

    /// Marks the call as failed.
    pub fn failed(mut self) -> Self {
        self.error = true;
        self
    }

    /// Rejects NaN, infinities and values outside their physical ranges (see
    /// [`crate::limits`]).
    pub fn validate(&self) -> Result<()> {
        limits::LATENCY_MS.check("outcome.latency_ms", self.latency_ms)?;
        limits::COST_USD.check("outcome.cost_usd", self.cost_usd)?;
        limits::TOKENS.check("outcome.input_tokens", f64::from(self.input_tokens))?;
        limits::TOKENS.check("outcome.output_tokens", f64::from(self.output_tokens))?;
        if let Some(q) = self.quality {
            validate_quality(q)?;
        }
        Ok(())
    }

    /// The quality the learner credits ([`credited_quality`]).
    pub(crate) fn credited_quality(&self) -> Option<f64> {
        credited_quality(self.quality, self.error)
    }
}

/// Checks a quality score: finite and in [0, 1].
pub fn validate_quality(quality: f64) -> Result<f64> {
    limits::QUALITY.check("quality", quality)
}

/// How quality, cost and latency trade off: `reward = quality - w_cost * cost_usd -
/// w_latency * latency_s`.
///
/// Units: quality is in [0, 1]; `w_cost` is quality points per USD (e.g. 20 means paying
/// $0.005 more must buy 0.1 more quality); `w_latency` is quality points per second.
/// Each request may override the learner's default weights; estimates are kept apart,
/// so a new trade-off applies at once, without relearning.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// Quality points per USD of expected cost.
    pub w_cost: f64,
    /// Quality points per second of expected latency.
    pub w_latency: f64,
}

/// A request's own trade-off: either weight, or both; one left out is the route's.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveOverride {
    /// Quality points per USD of expected cost.
    #[serde(default)]
    pub w_cost: Option<f64>,
    /// Quality points per second of expected latency.
    #[serde(default)]
    pub w_latency: Option<f64>,
}

impl ObjectiveOverride {
    /// The trade-off this gives over the route's `route`.
    pub fn over(&self, route: Objective) -> Objective {
        Objective {
            w_cost: self.w_cost.unwrap_or(route.w_cost),
            w_latency: self.w_latency.unwrap_or(route.w_latency),
        }
    }
}

impl Default for Objective {
    /// Quality only.
    fn default() -> Self {
        Objective {
            w_cost: 0.0,
            w_latency: 0.0,
        }
    }
}

impl Objective {
    /// The weights, checked against [`limits::W_COST`] and [`limits::W_LATENCY`].
    pub fn new(w_cost: f64, w_latency: f64) -> Result<Self> {
        limits::W_COST.check("w_cost", w_cost)?;
        limits::W_LATENCY.check("w_latency", w_latency)?;
        Ok(Objective { w_cost, w_latency })
    }

    /// The penalty, in quality points, of a cost and a latency.
    pub fn penalty(&self, cost_usd: f64, latency_ms: f64) -> f64 {
        self.w_cost * cost_usd + self.w_latency * latency_ms / 1000.0
    }

    /// `quality - penalty(cost_usd, latency_ms)`: the one reward formula of Quiver.
    pub fn reward(&self, quality: f64, cost_usd: f64, latency_ms: f64) -> f64 {
        quality - self.penalty(cost_usd, latency_ms)
    }
}

/// The quality a call is credited with: its score if it was given one, else 0 for a
/// failed call, else none yet. The learner, the log and off-policy evaluation all use it.
pub fn credited_quality(quality: Option<f64>, error: bool) -> Option<f64> {
    match (quality, error) {
        (Some(q), _) => Some(q),
        (None, true) => Some(0.0),
        (None, false) => None,
    }
}

/// Budget pacing by online dual descent on the spend constraint `E[cost] <= target`.
///
/// The multiplier `lambda >= 0` is dimensionless: the cost weight in force is
/// `w_cost + lambda / target_usd`, i.e. cost is measured in budgets. After each observed
/// cost `c`, `lambda <- clip(lambda + eta * (c / target_usd - 1), 0, lambda_max)`
/// (projected subgradient step on the Lagrangian, as in Agrawal & Devanur 2014 and
/// Balseiro et al. 2023's dual mirror descent). Summing the steps shows that the average
/// spend exceeds the target by at most `target * lambda_T / (eta_T * T)`, which vanishes:
/// the step `eta_n` shrinks as `eta / sqrt(1 + eta n)`, at most tenfold.
///
/// The analysis assumes a bounded gradient; a single call can cost a hundred budgets (a
/// cold start trying the dearest model), and one such step would throw `lambda` far past
/// the optimum, where the shrinking step takes most of a run to bring it back. So the
/// gradient is clipped to `[-1, 1]` (a spend of at most [`MAX_SPEND_RATIO`] budgets per
/// step) and the excess is carried as debt into the following steps: every dollar still
/// enters the dual, only later. The bound above then holds for the spend entered so far,
/// so the average overspend is at most `target * (lambda_T / (eta_T T) + debt_T / T)`:
/// the outstanding debt ([`BudgetPacer::debt`], exported in the server's metrics) is
/// what has not reached the dual yet. The price of the clip: under a steady overspend of
/// more than two budgets per call, `lambda` rises at most one step per call.
///
/// Where the budget binds between two arms the optimal policy is randomized (the linear
/// program of bandits with knapsacks mixes them: Badanidiyuru, Kleinberg and Slivkins
/// 2013; Agrawal and Devanur 2016 for the contextual case). A decision therefore does not
/// take the argmax at `lambda` alone: it mixes, with equal weight, the choices at
/// [`BudgetPacer::extra_cost_weights`], points of the band `lambda * (1 +- PACING_BAND)`.
/// An arm's probability is the share of the band points where it wins, so expected spend
/// falls with `lambda` in steps of an eighth of the gap between two arms rather than all
/// at once, the dual settles near the target instead of flipping between two arms, and the
/// propensity is the mixture of the policy's own (exact where the policy's is).
/// While the budget does not bind (`lambda = 0`) the band is empty and nothing changes.
///
/// The steps follow costs, and a server's costs come back after later decisions: with
/// many calls under way, every decision would pace by the multiplier that the calls
/// before them found, then their costs would all step it at once, and the multiplier
/// would swing instead of settling. A decision therefore paces by the multiplier ahead
/// of the calls under way ([`BudgetPacer::ahead`]): the one their costs would leave if
/// they came back at the estimates they were decided on, as a Smith predictor removes a
/// known delay from a feedback loop. Each cost still steps the pacer once, when it comes;
/// where the estimates are exact and the costs come back in the order of their decisions,
/// decisions with calls under way pace exactly as they would had each call come back
/// before the next decision.
///
/// The estimates of the calls a learner chooses run below their costs: a model is chosen
/// more often where its cost is underestimated (the optimizer's curse, Smith and Winkler
/// 2006), and a price list can miss what a provider bills. So the pacer ahead takes each
/// estimate times the ratio of what the learner's own calls cost to what it expected of
/// them when their costs came ([`BudgetPacer::calibrate`]; over about the latest
/// [`CALIBRATION_MEMORY`] costs, within `[1/4, 4]`). Every call under way counts, a step
/// each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetPacer {
    target_usd: f64,
    step_size: f64,
    lambda: f64,
    /// Costs observed so far: the step shrinks with them.
    #[serde(default)]
    observed: u64,
    /// Spend, in budgets, not yet entered into the dual because of clipping.
    #[serde(default)]
    debt: f64,
    /// What the learner expected its own calls to cost, and what they cost, in USD,
    /// discounted by [`CALIBRATION_MEMORY`].
    #[serde(default)]
    calibration: [f64; 2],
}

/// How many of the latest costs, about, the ratio of costs to their estimates is taken
/// over: long enough to average a few dear calls, short enough to follow new prices.
pub const CALIBRATION_MEMORY: f64 = 1000.0;

/// The ratio of costs to their estimates is held within `[1 / MAX, MAX]`: a model whose
/// cost is barely known may be expected at a small share of it, and a few of its calls
/// would otherwise scale every estimate far.
const MAX_CALIBRATION: f64 = 4.0;

/// The most spend, in budgets, one dual step takes in: its gradient stays within `[-1, 1]`.
pub const MAX_SPEND_RATIO: f64 = 2.0;

/// Largest dual multiplier: at this weight one budget of cost outweighs 1000 quality points.
const LAMBDA_MAX: f64 = 1000.0;

/// Half-width of the band a decision mixes the multiplier over, relative to it: wide
/// enough that two arms tied at the dual optimum share the band in any proportion.
pub const PACING_BAND: f64 = 0.5;

/// Points of the band a decision mixes over.
pub const PACING_BAND_POINTS: usize = 8;

/// Halvings of `[0, LAMBDA_MAX]` in [`BudgetPacer::warm_start`]: to a millionth of a
/// quality point per budget.
const WARM_START_BISECTIONS: u32 = 30;

/// The most dual steps [`BudgetPacer::observe_calls`] takes at once.
pub const MAX_STEPS_AT_ONCE: u64 = 4096;

impl BudgetPacer {
    /// A pacer for `target_usd` per request with step size `eta` (0.05 is a good start).
    pub fn new(target_usd: f64, step_size: f64) -> Result<Self> {
        limits::BUDGET_USD.check("budget.target_usd", target_usd)?;
        in_range("budget.step_size", step_size, f64::MIN_POSITIVE, 10.0, "(0, 10]")?;
        Ok(BudgetPacer {
            target_usd,
            step_size,
            lambda: 0.0,
            observed: 0,
            debt: 0.0,
            calibration: [0.0, 0.0],
        })
    }

    /// The target spend per request in USD.
    pub fn target_usd(&self) -> f64 {
        self.target_usd
    }

    /// The current dual multiplier.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// Spend, in budgets, not yet entered into the dual (see the clipped gradient above).
    pub fn debt(&self) -> f64 {
        self.debt
    }

    /// The extra cost weight (quality points per USD) the pacer adds.
    pub fn extra_cost_weight(&self) -> f64 {
        self.lambda / self.target_usd
    }

    /// The extra cost weights (quality points per USD) a decision mixes over with equal
    /// probability: the midpoints of [`PACING_BAND_POINTS`] equal parts of the band
    /// `lambda * (1 +- PACING_BAND)`. Empty while `lambda` is 0.
    pub fn extra_cost_weights(&self) -> Vec<f64> {
        self.band_weights(self.lambda)
    }

    /// [`BudgetPacer::extra_cost_weights`] at multiplier `lambda`.
    fn band_weights(&self, lambda: f64) -> Vec<f64> {
        if lambda <= 0.0 {
            return Vec::new();
        }
        let k = PACING_BAND_POINTS as f64;
        (0..PACING_BAND_POINTS)
            .map(|j| {
                let offset = PACING_BAND * (2.0 * (j as f64 + 0.5) / k - 1.0);
                lambda * (1.0 + offset) / self.target_usd
            })
            .collect()
    }

    /// Starts a pacer that has observed nothing where a table's `curve` says its budget
    /// binds: at the multiplier whose band, on top of the cost weight `w_cost`, spends the
    /// target on the curve, found by bisection (the band's spend falls with the multiplier
    /// where expected costs rank the arms as their costs do; the bisection finds a
    /// crossing either way). A budget the curve keeps unpaced leaves the multiplier at 0;
    /// one it cannot keep starts it at its largest value. Returns the multiplier.
    ///
    /// The step keeps its first size: the curve is a greedy chooser's, and a learner that
    /// explores spends more at the same multiplier (its noise moves choices from the arm
    /// most rows take to the dearer few), so the pacer still has a difference to find,
    /// which a step shrunk as if the table's rows had been paced would find only by
    /// overspending many budgets first.
    pub fn warm_start(&mut self, curve: &SpendCurve, w_cost: f64) -> f64 {
        if self.observed > 0 {
            return self.lambda;
        }
        let band_spend = |lambda: f64| {
            let weights = self.band_weights(lambda);
            weights
                .iter()
                .map(|w| curve.mean_cost_usd(w_cost + w))
                .sum::<f64>()
                / weights.len() as f64
        };
        self.lambda = if curve.mean_cost_usd(w_cost) <= self.target_usd {
            0.0
        } else if band_spend(LAMBDA_MAX) > self.target_usd {
            LAMBDA_MAX
        } else {
            let (mut low, mut high) = (0.0, LAMBDA_MAX);
            for _ in 0..WARM_START_BISECTIONS {
                let mid = 0.5 * (low + high);
                if band_spend(mid) > self.target_usd {
                    low = mid;
                } else {
                    high = mid;
                }
            }
            high
        };
        self.lambda
    }

    /// The step of the next update: `eta / sqrt(1 + eta * n)` after `n` costs, the
    /// decreasing schedule under which stochastic approximation settles on the dual
    /// optimum, held at `eta / 10` or more so that the pacer still follows prices and
    /// traffic that change.
    pub fn current_step(&self) -> f64 {
        let floor = self.step_size / 10.0;
        // At 99 / eta costs and beyond the schedule is below its floor: no square root.
        if self.step_size * self.observed as f64 >= 99.0 {
            return floor;
        }
        let shrink = (1.0 + self.step_size * self.observed as f64).sqrt();
        (self.step_size / shrink).max(floor)
    }

    /// Steps for `calls` requests observed elsewhere (another replica's) that cost
    /// `cost_usd` in all: one step per call at their mean cost, for the latest
    /// [`MAX_STEPS_AT_ONCE`] of them; older ones only count toward the step's shrinking.
    /// A replica's whole history, folded in for the first time, would otherwise take as
    /// many steps, while its pacer's own multiplier, which the decisions of that history
    /// answered to, is not shared.
    pub fn observe_calls(&mut self, calls: u64, cost_usd: f64) {
        let each = cost_usd.max(0.0) / calls.max(1) as f64;
        let stepped = calls.min(MAX_STEPS_AT_ONCE);
        self.observed += calls - stepped;
        for _ in 0..stepped {
            self.observe(each);
        }
    }

    /// The pacer as the calls under way will leave it if they cost their estimates
    /// `costs_usd` (oldest first) times [`BudgetPacer::cost_ratio`]: one
    /// [`BudgetPacer::observe`] each, however many there are (a few nanoseconds a call once
    /// the step is at its floor). The pacer itself does not change.
    pub fn ahead(&self, costs_usd: &[f64]) -> BudgetPacer {
        let mut ahead = self.clone();
        let ratio = self.cost_ratio();
        for &cost in costs_usd {
            ahead.observe(cost * ratio);
        }
        ahead
    }

    /// Takes in that one of the learner's own calls, expected to cost `estimate_usd` when
    /// its cost came, cost `cost_usd` (the pacer steps on the cost in
    /// [`BudgetPacer::observe`]). A call expected to cost nothing (a model without prices
    /// not called yet) is left out: no ratio scales its estimate, and its cost would
    /// scale every other.
    pub fn calibrate(&mut self, estimate_usd: f64, cost_usd: f64) {
        if estimate_usd <= 0.0 {
            return;
        }
        let keep = 1.0 - 1.0 / CALIBRATION_MEMORY;
        let [estimated, paid] = self.calibration;
        self.calibration = [keep * estimated + estimate_usd, keep * paid + cost_usd];
    }

    /// Forgets the ratio of costs to estimates: the models or their prices changed.
    pub fn forget_calibration(&mut self) {
        self.calibration = [0.0, 0.0];
    }

    /// What the learner's own calls cost for each dollar it expected of them, lately
    /// (see [`BudgetPacer::calibrate`]); 1 before any call with an estimate above 0.
    pub fn cost_ratio(&self) -> f64 {
        match self.calibration {
            [estimated, paid] if estimated > 0.0 => {
                (paid / estimated).clamp(1.0 / MAX_CALIBRATION, MAX_CALIBRATION)
            }
            _ => 1.0,
        }
    }

    /// One dual step after observing a request's cost.
    pub fn observe(&mut self, cost_usd: f64) {
        let owed = self.debt + cost_usd / self.target_usd;
        let spend = owed.min(MAX_SPEND_RATIO);
        self.debt = owed - spend;
        let step = self.current_step() * (spend - 1.0);
        self.lambda = (self.lambda + step).clamp(0.0, LAMBDA_MAX);
        self.observed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelled_weight_is_refused_by_name() {
        let refused = serde_json::from_str::<Objective>(r#"{"w_costt": 1, "w_latency": 0}"#).unwrap_err();
        assert!(
            refused.to_string().contains("unknown field `w_costt`"),
            "{refused}"
        );
    }

    #[test]
    fn reward_is_quality_minus_weighted_cost_and_latency() {
        let o = Objective::new(20.0, 0.1).unwrap();
        assert!((o.reward(0.9, 0.005, 2000.0) - (0.9 - 0.1 - 0.2)).abs() < 1e-12);
        assert!(Objective::new(-1.0, 0.0).is_err());
        assert!(Objective::new(f64::NAN, 0.0).is_err());
    }

    #[test]
    fn outcome_validation_rejects_bad_numbers() {
        assert!(Outcome::new(10.0, 0.001).with_quality(0.5).validate().is_ok());
        assert!(Outcome::new(f64::INFINITY, 0.0).validate().is_err());
        assert!(Outcome::new(1.0, -0.1).validate().is_err());
        let err = Outcome::new(1.0, 0.0).with_quality(1.5).validate().unwrap_err();
        assert_eq!(err.to_string(), "quality is 1.5, outside [0, 1]");
        assert_eq!(Outcome::new(1.0, 0.0).failed().credited_quality(), Some(0.0));
        assert_eq!(Outcome::new(1.0, 0.0).credited_quality(), None);
    }

    #[test]
    fn calls_observed_elsewhere_take_at_most_so_many_steps() {
        let (target, eta) = (0.001, 0.05);
        let mut p = BudgetPacer::new(target, eta).unwrap();
        let calls = 1_000_000;
        // Two budgets a call: every step's gradient is 1, at the step's floor eta / 10
        // (the older calls counted first).
        p.observe_calls(calls, calls as f64 * 2.0 * target);
        let expected = MAX_STEPS_AT_ONCE as f64 * eta / 10.0;
        assert!(
            (p.lambda() - expected).abs() < 1e-9,
            "{} vs {expected}",
            p.lambda()
        );
        assert_eq!(p.current_step(), eta / 10.0);
        assert_eq!(p.debt(), 0.0);
    }

    #[test]
    fn pacer_raises_the_cost_weight_while_overspending_and_never_goes_negative() {
        let mut p = BudgetPacer::new(0.001, 0.05).unwrap();
        p.observe(0.0015);
        assert!((p.lambda() - 0.025).abs() < 1e-12);
        assert!((p.extra_cost_weight() - 25.0).abs() < 1e-9);
        for _ in 0..10 {
            p.observe(0.0);
        }
        assert_eq!(p.lambda(), 0.0);
    }

    /// The pacer ahead of calls under way is the pacer after their costs, and the pacer
    /// itself is left as it was.
    #[test]
    fn the_pacer_ahead_of_calls_under_way_has_observed_their_estimates() {
        let mut p = BudgetPacer::new(0.001, 0.05).unwrap();
        p.observe(0.004);
        let before = p.clone();
        let under_way = [0.0025, 0.0, 0.1, 0.0009];
        let ahead = p.ahead(&under_way);
        for cost in under_way {
            p.observe(cost);
        }
        assert_eq!(ahead, p);
        assert_ne!(ahead, before);
        assert_eq!(before.ahead(&[]), before);
    }

    /// The ratio of costs to their estimates weighs the latest most, stays within its
    /// bounds, and scales what the pacer ahead takes of each call under way.
    #[test]
    fn calls_under_way_count_at_the_ratio_of_costs_to_estimates() {
        let mut p = BudgetPacer::new(0.001, 0.05).unwrap();
        assert_eq!(p.cost_ratio(), 1.0);
        // A call expected to cost nothing teaches no ratio, nor weighs in a later one.
        p.calibrate(0.0, 0.002);
        assert_eq!(p.cost_ratio(), 1.0);
        p.calibrate(0.001, 0.0015);
        assert!((p.cost_ratio() - 1.5).abs() < 1e-12);
        // A thousand calls at 0.8 of their estimates later, the first weighs keep^1000.
        let keep = 1.0 - 1.0 / CALIBRATION_MEMORY;
        for _ in 0..1000 {
            p.calibrate(0.001, 0.0008);
        }
        let old = keep.powi(1000);
        let want = (old * 0.0015 + 0.0008 * (1.0 - old) / (1.0 - keep))
            / (old * 0.001 + 0.001 * (1.0 - old) / (1.0 - keep));
        assert!(
            (p.cost_ratio() - want).abs() < 1e-9,
            "{} vs {want}",
            p.cost_ratio()
        );
        let mut each = p.clone();
        each.observe(0.0025 * p.cost_ratio());
        assert_eq!(p.ahead(&[0.0025]), each);
        // Held within [1/4, 4].
        let mut dear = BudgetPacer::new(0.001, 0.05).unwrap();
        dear.calibrate(1e-6, 0.01);
        assert_eq!(dear.cost_ratio(), MAX_CALIBRATION);
        dear.calibrate(1.0, 0.0);
        assert_eq!(dear.cost_ratio(), 1.0 / MAX_CALIBRATION);
        dear.forget_calibration();
        assert_eq!(dear.cost_ratio(), 1.0);
    }

    /// However many calls are under way, each counts as a cost of its own would: more
    /// than the most steps taken at once for calls observed elsewhere, on a pacer before
    /// and after its step reaches its floor.
    #[test]
    fn every_call_under_way_counts_however_many_there_are() {
        let (target, eta) = (0.001, 0.05);
        // Costs of 0 to 3 budgets (1.5 on average; some clipped at 2 with debt carried).
        let costs: Vec<f64> = (0..MAX_STEPS_AT_ONCE as usize + 2000)
            .map(|i| target * 3.0 * ((i * 7919) % 1000) as f64 / 999.0)
            .collect();
        let mut settled = BudgetPacer::new(target, eta).unwrap();
        for _ in 0..(99.0 / eta) as usize {
            settled.observe(target);
        }
        for pacer in [BudgetPacer::new(target, eta).unwrap(), settled] {
            let mut each = pacer.clone();
            costs.iter().for_each(|&c| each.observe(c));
            assert_eq!(pacer.ahead(&costs), each);
            assert!(each.lambda() > pacer.ahead(&costs[2000..]).lambda());
        }
    }

    /// The step skips its square root at its floor, and is the schedule's either way.
    #[test]
    fn the_step_shrinks_to_its_floor() {
        let eta = 0.05;
        for n in [0_u64, 1, 1979, 1980, 1981, 100_000] {
            let p = BudgetPacer {
                observed: n,
                ..BudgetPacer::new(0.001, eta).unwrap()
            };
            let schedule = (eta / (1.0 + eta * n as f64).sqrt()).max(eta / 10.0);
            assert!((p.current_step() - schedule).abs() < 1e-15, "{n}");
        }
    }

    /// A call of a hundred budgets moves the dual one full step at a time: 2 budgets now,
    /// and 2 on each of the next 49 steps whatever they cost, then the debt is paid.
    #[test]
    fn pacer_takes_a_huge_cost_in_bounded_steps_and_loses_none_of_it() {
        let mut p = BudgetPacer::new(0.001, 0.05).unwrap();
        let mut expected = 0.0;
        for n in 0..50 {
            expected += p.current_step();
            p.observe(if n == 0 { 0.1 } else { 0.0 });
            assert!((p.lambda() - expected).abs() < 1e-12, "step {n}");
        }
        assert_eq!(p.debt(), 0.0);
        let before = p.lambda();
        let step = p.current_step();
        p.observe(0.0);
        assert!((p.lambda() - (before - step)).abs() < 1e-12);
    }

    /// A curve falling from $0.01 at w = 10 to $0.001 at w = 1000, linearly in `ln w`: its
    /// band's mean cost at multiplier `lambda` is
    /// `0.01 - 0.009 (ln(lambda / (10 B)) + m) / ln 100`, `m` the band's mean `ln(1 + o_j)`,
    /// so the target `B` is met at `lambda = 10 B exp((0.01 - B) ln 100 / 0.009 - m)`.
    #[test]
    fn a_warm_start_meets_the_target_on_the_curve() {
        use crate::spend::{SpendCurve, SpendPoint};
        let curve = SpendCurve {
            points: vec![
                SpendPoint {
                    cost_weight: 10.0,
                    mean_cost_usd: 0.01,
                },
                SpendPoint {
                    cost_weight: 1000.0,
                    mean_cost_usd: 0.001,
                },
            ],
        };
        let (target, eta) = (0.0055, 0.05);
        let k = PACING_BAND_POINTS as f64;
        let m = (0..PACING_BAND_POINTS)
            .map(|j| (1.0 + PACING_BAND * (2.0 * (j as f64 + 0.5) / k - 1.0)).ln())
            .sum::<f64>()
            / k;
        let want = 10.0 * target * ((0.01 - target) * 100f64.ln() / 0.009 - m).exp();
        let mut p = BudgetPacer::new(target, eta).unwrap();
        let lambda = p.warm_start(&curve, 0.0);
        assert!((lambda - want).abs() < 1e-5, "{lambda} vs {want}");
        assert_eq!(p.lambda(), lambda);
        // Every band weight falls between the curve's points, where the closed form holds.
        assert!(p.extra_cost_weights().iter().all(|w| (10.0..1000.0).contains(w)));
        // The step keeps its first size.
        assert_eq!(p.current_step(), eta);

        // A fixed cost weight is part of the weight the curve is read at: w_cost = 1000
        // alone keeps spend at $0.001, so the budget does not bind.
        let mut unpaced = BudgetPacer::new(target, eta).unwrap();
        assert_eq!(unpaced.warm_start(&curve, 1000.0), 0.0);
        assert!(unpaced.extra_cost_weights().is_empty());
        // A budget below the cheapest spend starts at the largest multiplier.
        let mut tight = BudgetPacer::new(0.0005, eta).unwrap();
        assert_eq!(tight.warm_start(&curve, 0.0), LAMBDA_MAX);
        // A pacer that has observed costs keeps its own multiplier.
        let mut running = BudgetPacer::new(target, eta).unwrap();
        running.observe(2.0 * target);
        let before = running.clone();
        assert_eq!(running.warm_start(&curve, 0.0), before.lambda());
        assert_eq!(running, before);
    }
}
