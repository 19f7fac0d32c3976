//! What a call costs, in one place.
//!
//! - At an arm's prices: [`Arm::cost_usd`], the one formula of a call's cost from its
//!   tokens (the learner's expectation, the proxy's outcome and the spend caps use it).
//! - For an arm without prices, learned from outcomes: the per-token ratio of its usage
//!   ([`crate::usage`]) corrected, per context, by a ridge regression of what the ratio
//!   missed, since a request's cost depends on more than its prompt's length (the
//!   answer's length, say, which varies by task). With no data near a context the
//!   correction is 0.
//!
//! [`CostModel`] holds the learned part and answers what a request is expected to cost.

use serde::{Deserialize, Serialize};

use crate::arm::Arm;
use crate::error::Result;
use crate::prior::RidgePrior;
use crate::ridge::RidgeTable;
use crate::stats::Forgetting;
use crate::usage::ArmUsage;

/// Ridge prior of the corrections: weak next to a handful of observations.
const CORRECTION_RIDGE_LAMBDA: f64 = 1.0;

/// The expected cost of a request on each arm, with what is learned for arms without
/// prices. Serialized as the corrections alone (`null` in learners written before they
/// existed, which keep the ratio alone).
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
    /// From the prices, or else the per-token ratio (see [`ArmUsage::expected_cost_usd`]).
    fn by_usage(&self, tokens: u32) -> f64 {
        self.usage
            .expected_cost_usd(self.arm, tokens, self.default_output_tokens)
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
    /// arm `index`: from its prices, or else from its per-token ratio corrected for `x`.
    pub fn expected_usd(&self, index: usize, arm: ArmCost<'_>, x: &[f64], tokens: u32) -> f64 {
        let by_usage = arm.by_usage(tokens);
        match &self.corrections {
            Some(models) if !arm.arm.has_prices() => (by_usage + models.get(index).mean(x)).max(0.0),
            _ => by_usage,
        }
    }

    /// Learns what the per-token ratio missed on a request with features `x` and `tokens`
    /// prompt tokens that cost `cost_usd`, unless the arm has prices. Call it before the
    /// usage records that cost.
    pub fn learn(&mut self, index: usize, arm: ArmCost<'_>, x: &[f64], tokens: u32, cost_usd: f64) {
        if arm.arm.has_prices() || x.is_empty() {
            return;
        }
        let by_usage = arm.by_usage(tokens);
        if let Some(models) = self.corrections.as_mut() {
            models.observe(index, x, cost_usd - by_usage);
        }
    }

    /// Starts arm `index`'s correction from a prior fitted offline, unless it has prices.
    pub fn absorb_prior(&mut self, index: usize, arm: &Arm, prior: &RidgePrior, observations: f64) {
        if let (false, Some(models)) = (arm.has_prices(), self.corrections.as_mut()) {
            models.absorb_prior(index, prior, observations);
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
