//! Always the same arm: the "always model X" baseline (when X cannot serve a request, the
//! first eligible arm, as a primary model's fallback).

use serde::{Deserialize, Serialize};

use super::{Args, Choice, ChoiceInput, DecisionRng, Estimate, Policy, PolicyParams};
use crate::error::{Error, ErrorKind, Result};
use crate::prior::ArmPrior;
use crate::stats::{ArmStatsTable, Forgetting};

/// Picks one arm every time; learns means only to report them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fixed {
    /// The arm, or `None` once it has been removed.
    arm: Option<usize>,
    stats: ArmStatsTable,
}

impl Fixed {
    /// Always `arm`, out of `num_arms`.
    pub fn new(num_arms: usize, arm: usize) -> Self {
        Fixed {
            arm: Some(arm),
            stats: ArmStatsTable::new(num_arms, Forgetting::None),
        }
    }
}

impl Policy for Fixed {
    fn num_arms(&self) -> usize {
        self.stats.len()
    }

    fn estimate(&self, arm: usize, _features: &[f64]) -> Estimate {
        self.stats.get(arm).estimate()
    }

    fn absorb_prior(&mut self, arm: usize, prior: &ArmPrior) {
        self.stats.absorb_prior(arm, prior);
    }

    fn observations(&self, arm: usize) -> f64 {
        self.stats.get(arm).count
    }

    fn shrink_arm(&mut self, arm: usize, keep: f64) {
        self.stats.shrink_arm(arm, keep);
    }

    fn merge(&mut self, replica: &Self, base: &Self) -> Result<()> {
        self.stats.merge(&replica.stats, &base.stats)
    }

    fn choose(&self, input: &ChoiceInput<'_>, _rng: &mut DecisionRng) -> Result<Choice> {
        // Its arm when eligible; else, as a primary's fallback would, the first eligible
        // arm in the route's order (eligible arms come in that order).
        let position = self
            .arm
            .and_then(|arm| input.eligible.iter().position(|&a| a == arm))
            .unwrap_or(0);
        Ok(Choice::deterministic(input.len(), position))
    }

    fn update(&mut self, arm: usize, _features: &[f64], quality: f64) {
        self.stats.observe(arm, quality);
    }

    fn add_arm(&mut self, _family: &str) {
        self.stats.add_arm();
    }

    fn remove_arm(&mut self, arm: usize) {
        self.stats.remove_arm(arm);
        self.arm = match self.arm {
            Some(a) if a == arm => None,
            Some(a) if a > arm => Some(a - 1),
            other => other,
        };
    }
}

/// `fixed(arm=gpt-4o)`, or `fixed(gpt-4o)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixedParams {
    /// The arm's id.
    pub arm: String,
}

impl PolicyParams for FixedParams {
    const NAMES: &'static [&'static str] = &["fixed"];
    const WEIGHS_COSTS: bool = false;
    type Policy = Fixed;

    fn parse(args: &mut Args<'_>) -> Result<Self> {
        let arm = args
            .take("arm", true)
            .ok_or_else(|| args.invalid("fixed needs an arm, e.g. fixed(gpt-4o)"))?;
        Ok(FixedParams { arm: arm.to_string() })
    }

    fn args(&self) -> Vec<String> {
        vec![format!("arm={}", self.arm)]
    }

    fn build(&self, arm_ids: &[&str], _: usize, _: Forgetting) -> Result<Fixed> {
        let index = arm_ids.iter().position(|id| *id == self.arm).ok_or_else(|| {
            Error::from(ErrorKind::UnknownArm {
                id: self.arm.clone(),
                known: arm_ids.iter().map(|a| a.to_string()).collect(),
            })
        })?;
        Ok(Fixed::new(arm_ids.len(), index))
    }
}
