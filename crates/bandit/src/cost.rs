//! What a call costs, in one place.
//!
//! - At an arm's prices: [`Arm::cost_usd`], the one formula of a call's cost from its
//!   tokens (the learner's expectation, the proxy's outcome and the spend caps use it).
//! - What the learner expects a request to cost ([`ArmCost::expected_usd`]): the arm's
//!   estimate from its usage ([`crate::usage`]), corrected per context by a ridge
//!   regression of what that estimate missed, since a request's cost depends on more than
//!   its prompt's length. For a priced arm the correction is in answer tokens: at known
//!   prices the answer's length is what a request's cost does not say in advance, and it
//!   varies by prompt (a one-letter choice, a page of code). For an arm without prices it
//!   is in USD, on the per-token ratio. With no data near a context the correction is 0.
//!
//! [`CostModel`] holds the learned part and answers what a request is expected to cost.

use serde::{Deserialize, Serialize};

use crate::arm::Arm;
use crate::error::Result;
use crate::outcome::Outcome;
use crate::prior::ArmPrior;
use crate::ridge::RidgeTable;
use crate::stats::Forgetting;
use crate::usage::{answer_tokens, AnswerSums, ArmUsage};

/// Ridge prior of the corrections: weak next to a handful of observations.
const CORRECTION_RIDGE_LAMBDA: f64 = 1.0;

/// The expected cost of a request on each arm, with what is learned per context.
/// Serialized as the corrections alone (`null` in learners written before they existed,
/// which keep the usage's estimate alone).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CostModel {
    corrections: Option<RidgeTable>,
}

/// An arm as the cost model sees it: its prices and its usage so far.
#[derive(Debug, Clone, Copy)]
pub struct ArmCost<'a> {
    /// The arm, with its prices.
    pub arm: &'a Arm,
    /// What it has cost, per token and per request.
    pub usage: &'a ArmUsage,
    /// The answer tokens a priced arm with none of its own (nor a prior's) is expected to give.
    pub default_output_tokens: f64,
}

impl ArmCost<'_> {
    /// What a request of `tokens` prompt tokens is expected to cost, `missed` being the
    /// correction for its context (in answer tokens for a priced arm, else in USD).
    pub fn expected_usd(&self, tokens: u32, missed: f64) -> f64 {
        if self.arm.has_prices() {
            let answer = self.answers().mean_or(self.default_output_tokens);
            self.arm.cost_usd(f64::from(tokens), (answer + missed).max(0.0))
        } else {
            (self.usage.ratio_cost_usd(tokens) + missed).max(0.0)
        }
    }

    /// What the uncorrected expectation missed on a request of `tokens` prompt tokens
    /// that ended in `outcome`, in the correction's unit; `None` for a priced arm with no
    /// answer to compare with yet (its expectation is only the route's guess).
    pub fn missed(&self, tokens: u32, outcome: &Outcome) -> Option<f64> {
        if self.arm.has_prices() {
            let answers = self.answers();
            (answers.requests > 0.0).then(|| answer_tokens(self.arm, outcome, tokens) - answers.mean_or(0.0))
        } else {
            Some(outcome.cost_usd - self.usage.ratio_cost_usd(tokens))
        }
    }

    /// A priced arm's answers so far (see [`ArmUsage::answer_sums`]).
    fn answers(&self) -> AnswerSums {
        self.usage.answer_sums(self.arm)
    }
}

impl CostModel {
    /// The model of `arms` arms in contexts of dimension `dim`, nothing learned.
    pub fn new(arms: usize, dim: usize) -> Self {
        CostModel {
            corrections: Some(RidgeTable::with_prior(
                arms,
                dim,
                CORRECTION_RIDGE_LAMBDA,
                Forgetting::None,
                0.0,
            )),
        }
    }

    /// What a request with features `x` and `tokens` prompt tokens is expected to cost on
    /// arm `index`.
    pub fn expected_usd(&self, index: usize, arm: ArmCost<'_>, x: &[f64], tokens: u32) -> f64 {
        let missed = self.corrections.as_ref().map_or(0.0, |m| m.get(index).mean(x));
        arm.expected_usd(tokens, missed)
    }

    /// Learns what the estimate from `arm`'s usage missed on a request with features `x`
    /// and `tokens` prompt tokens that ended in `outcome`. Call it before the usage
    /// records that outcome.
    pub fn learn(&mut self, index: usize, arm: ArmCost<'_>, x: &[f64], tokens: u32, outcome: &Outcome) {
        if x.is_empty() {
            return;
        }
        if let (Some(models), Some(missed)) = (self.corrections.as_mut(), arm.missed(tokens, outcome)) {
            models.observe(index, x, missed);
        }
    }

    /// Starts arm `index`'s correction from a prior fitted offline
    /// ([`ArmPrior::cost_correction_for`]).
    pub fn absorb_prior(&mut self, index: usize, arm: &Arm, prior: &ArmPrior) {
        if let (Some(c), Some(models)) = (prior.cost_correction_for(arm), self.corrections.as_mut()) {
            models.absorb_prior(index, c, prior.observations);
        }
    }

    /// Forgets what arm `index` learned: its prices came or went, and with them the
    /// correction's unit.
    pub fn forget_arm(&mut self, index: usize) {
        if let Some(models) = self.corrections.as_mut() {
            // Shrunk to count as no observation, a model is back at its prior.
            models.shrink_arm(index, 0.0);
        }
    }

    /// Appends an arm, nothing learned.
    pub fn add_arm(&mut self) {
        if let Some(models) = self.corrections.as_mut() {
            models.add_arm(None);
        }
    }

    /// Removes arm `index`; later arms shift down by one.
    pub fn remove_arm(&mut self, index: usize) {
        if let Some(models) = self.corrections.as_mut() {
            models.remove_arm(index);
        }
    }

    /// Adds what `replica` learned since `base`: the corrections are sums of residuals
    /// against the ratio as each replica estimated it at the time, so they merge into
    /// nearly, not exactly, what one model fed the whole stream learns.
    pub fn merge(&mut self, replica: &CostModel, base: &CostModel) -> Result<()> {
        if let (Some(mine), Some(r), Some(b)) =
            (self.corrections.as_mut(), &replica.corrections, &base.corrections)
        {
            mine.merge(r, b)?;
        }
        Ok(())
    }

    /// Whether it models `arms` arms (or learns nothing, as older learners).
    pub fn fits(&self, arms: usize) -> bool {
        self.corrections.as_ref().is_none_or(|m| m.len() == arms)
    }
}
