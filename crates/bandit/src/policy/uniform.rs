//! Uniform random choice: the baseline every learner must beat, and the ideal logger.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Args, Choice, ChoiceInput, DecisionRng, Estimate, Policy, PolicyParams, PropensityKind};
use crate::error::Result;
use crate::stats::{ArmStatsTable, Forgetting};

/// Picks each eligible arm with probability `1/k`; learns means only to report them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Uniform {
    stats: ArmStatsTable,
}

impl Uniform {
    /// A uniform policy over `num_arms` arms.
    pub fn new(num_arms: usize, forgetting: Forgetting) -> Self {
        Uniform {
            stats: ArmStatsTable::new(num_arms, forgetting),
        }
    }
}

/// The `Policy` methods shared by every policy that learns from an [`ArmStatsTable`]
/// field: everything but estimating and choosing.
macro_rules! learn_from_arm_stats {
    ($field:ident) => {
        fn num_arms(&self) -> usize {
            self.$field.len()
        }
        fn update(&mut self, arm: usize, _features: &[f64], quality: f64) {
            self.$field.observe(arm, quality);
        }
        fn add_arm(&mut self, _family: &str) {
            self.$field.add_arm();
        }
        fn remove_arm(&mut self, arm: usize) {
            self.$field.remove_arm(arm);
        }
        fn absorb_prior(&mut self, arm: usize, prior: &crate::prior::ArmPrior) {
            self.$field.absorb_prior(arm, prior);
        }
        fn observations(&self, arm: usize) -> f64 {
            self.$field.get(arm).count
        }
        fn shrink_arm(&mut self, arm: usize, keep: f64) {
            self.$field.shrink_arm(arm, keep);
        }
        fn merge(&mut self, replica: &Self, base: &Self) -> crate::error::Result<()> {
            self.$field.merge(&replica.$field, &base.$field)
        }
    };
}
pub(crate) use learn_from_arm_stats;

impl Policy for Uniform {
    learn_from_arm_stats!(stats);

    fn estimate(&self, arm: usize, _features: &[f64]) -> Estimate {
        self.stats.get(arm).estimate()
    }

    fn choose(&self, input: &ChoiceInput<'_>, rng: &mut DecisionRng) -> Result<Choice> {
        let k = input.len();
        Ok(Choice {
            position: rng.random_range(0..k),
            pmf: crate::pmf::uniform(k),
            propensity: PropensityKind::Exact,
        })
    }
}

/// `random` (alias `uniform`): no parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UniformParams {}

impl PolicyParams for UniformParams {
    const NAMES: &'static [&'static str] = &["random", "uniform"];
    const WEIGHS_COSTS: bool = false;
    type Policy = Uniform;

    fn parse(_: &mut Args<'_>) -> Result<Self> {
        Ok(UniformParams {})
    }

    fn args(&self) -> Vec<String> {
        Vec::new()
    }

    fn build(&self, arm_ids: &[&str], _: usize, forgetting: Forgetting) -> Result<Uniform> {
        Ok(Uniform::new(arm_ids.len(), forgetting))
    }
}
