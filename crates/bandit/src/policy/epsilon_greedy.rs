//! Epsilon-greedy (Sutton & Barto 2018, sec. 2.2).
//!
//! With probability `epsilon` a uniform eligible arm, otherwise the arm with the best
//! `mean - penalty`. PMF: `epsilon/k + (1 - epsilon) 1[a = greedy]`, exact.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::uniform::learn_from_arm_stats;
use super::{Args, Choice, ChoiceInput, DecisionRng, Estimate, Policy, PolicyParams, PropensityKind};
use crate::error::Result;
use crate::pmf;
use crate::stats::{ArmStatsTable, Forgetting};

/// Epsilon-greedy over per-arm sample means (untried arms count as quality 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpsilonGreedy {
    epsilon: f64,
    stats: ArmStatsTable,
}

impl EpsilonGreedy {
    /// Explores with probability `epsilon` in [0, 1].
    pub fn new(num_arms: usize, epsilon: f64, forgetting: Forgetting) -> Self {
        EpsilonGreedy {
            epsilon,
            stats: ArmStatsTable::new(num_arms, forgetting),
        }
    }
}

impl Policy for EpsilonGreedy {
    learn_from_arm_stats!(stats);

    fn estimate(&self, arm: usize, _features: &[f64]) -> Estimate {
        self.stats.get(arm).estimate()
    }

    fn choose(&self, input: &ChoiceInput<'_>, rng: &mut DecisionRng) -> Result<Choice> {
        let greedy = pmf::argmax(&input.greedy_scores());
        let pmf = pmf::epsilon_greedy(input.len(), greedy, self.epsilon);
        Ok(Choice {
            position: pmf::sample_index(&pmf, rng.random()),
            pmf,
            propensity: PropensityKind::Exact,
        })
    }
}

/// `eps(epsilon=0.1)` (aliases `epsilon-greedy`, `egreedy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpsilonGreedyParams {
    /// The share of decisions spread uniformly.
    pub epsilon: f64,
}

impl PolicyParams for EpsilonGreedyParams {
    const NAMES: &'static [&'static str] = &["eps", "epsilon-greedy", "egreedy"];
    type Policy = EpsilonGreedy;

    fn parse(args: &mut Args<'_>) -> Result<Self> {
        Ok(EpsilonGreedyParams {
            epsilon: args.number("epsilon", true, 0.1, 0.0, 1.0, "[0, 1]")?,
        })
    }

    fn args(&self) -> Vec<String> {
        vec![format!("epsilon={}", self.epsilon)]
    }

    fn build(&self, arm_ids: &[&str], _: usize, forgetting: Forgetting) -> Result<EpsilonGreedy> {
        Ok(EpsilonGreedy::new(arm_ids.len(), self.epsilon, forgetting))
    }
}
