//! Epsilon-greedy (Sutton & Barto 2018, sec. 2.2).
//!
//! With probability `epsilon` a uniform eligible arm, otherwise the arm with the best
//! `mean - penalty`. PMF: `epsilon/k + (1 - epsilon) 1[a = greedy]`, exact.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::uniform::learn_from_arm_stats;
use super::{Choice, ChoiceInput, DecisionRng, Estimate, Policy, PropensityKind};
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
