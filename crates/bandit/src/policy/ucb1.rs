//! UCB1 (Auer, Cesa-Bianchi & Fischer 2002); discounted or sliding-window UCB
//! (Garivier & Moulines 2011) when the table forgets.
//!
//! Score: `mean_a + c * sqrt(2 ln N / n_a) - penalty_a`, with `N = sum_a n_a` (effective
//! counts under forgetting); an untried arm scores `+inf`. Deterministic: PMF one-hot.

use serde::{Deserialize, Serialize};

use super::uniform::learn_from_arm_stats;
use super::{Args, Choice, ChoiceInput, DecisionRng, Estimate, Policy, PolicyParams};
use crate::error::Result;
use crate::pmf;
use crate::stats::{ArmStatsTable, Forgetting};

/// UCB1 over per-arm sample means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ucb1 {
    c: f64,
    stats: ArmStatsTable,
}

impl Ucb1 {
    /// UCB1 with bonus scale `c` (1 is the textbook index).
    pub fn new(num_arms: usize, c: f64, forgetting: Forgetting) -> Self {
        Ucb1 {
            c,
            stats: ArmStatsTable::new(num_arms, forgetting),
        }
    }

    /// The optimistic index of `arm` before penalties.
    pub fn index(&self, arm: usize) -> f64 {
        let s = self.stats.get(arm);
        if s.count <= 0.0 {
            return f64::INFINITY;
        }
        let total = self.stats.total_count().max(1.0);
        s.mean() + self.c * (2.0 * total.ln() / s.count).sqrt()
    }
}

impl Policy for Ucb1 {
    learn_from_arm_stats!(stats);

    fn estimate(&self, arm: usize, _features: &[f64]) -> Estimate {
        self.stats.get(arm).estimate()
    }

    fn choose(&self, input: &ChoiceInput<'_>, _rng: &mut DecisionRng) -> Result<Choice> {
        let scores: Vec<f64> = input
            .eligible
            .iter()
            .zip(input.penalties)
            .map(|(&a, p)| self.index(a) - p)
            .collect();
        Ok(Choice::deterministic(input.len(), pmf::argmax(&scores)))
    }
}

/// `ucb1(c=1)` (alias `ucb`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ucb1Params {
    /// The bonus scale.
    pub c: f64,
}

impl PolicyParams for Ucb1Params {
    const NAMES: &'static [&'static str] = &["ucb1", "ucb"];
    type Policy = Ucb1;

    fn parse(args: &mut Args<'_>) -> Result<Self> {
        Ok(Ucb1Params {
            c: args.number("c", true, 1.0, 0.0, f64::MAX, "[0, inf)")?,
        })
    }

    fn args(&self) -> Vec<String> {
        vec![format!("c={}", self.c)]
    }

    fn build(&self, arm_ids: &[&str], _: usize, forgetting: Forgetting) -> Result<Ucb1> {
        Ok(Ucb1::new(arm_ids.len(), self.c, forgetting))
    }
}
