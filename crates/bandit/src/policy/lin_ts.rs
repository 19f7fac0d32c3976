//! Linear Thompson sampling (Agrawal & Goyal 2013, "Thompson Sampling for Contextual
//! Bandits with Linear Payoffs"), with disjoint per-arm models.
//!
//! Arm `a` keeps the ridge model of [`crate::ridge`]. The algorithm draws
//! `theta~_a ~ N(theta_a, v^2 A_a^-1)` and scores `x' theta~_a - penalty_a`; only the score
//! matters, and `x' theta~_a` is exactly `N(x' theta_a, v^2 x' A_a^-1 x)`, independent
//! across arms, so each decision draws the scores themselves from those normals: the same
//! law as drawing the parameters, at the cost of LinUCB's quadratic forms instead of a
//! triangular solve per arm, and without keeping a Cholesky factor of each `A_a`. The PMF
//! is that of the same scalar normals (exact by default, or by Monte Carlo).

use serde::{Deserialize, Serialize};

use super::linucb::learn_from_ridge;
use super::{Args, Choice, ChoiceInput, DecisionRng, Estimate, Policy, PolicyParams, gaussian_thompson};
use crate::error::Result;
use crate::ridge::RidgeTable;
use crate::stats::Forgetting;

/// Linear Thompson sampling with full-covariance posteriors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinTs {
    v: f64,
    draws: u32,
    ridge: RidgeTable,
}

impl LinTs {
    /// Linear TS over `dim` features with posterior scale `v` and ridge `lambda`; `draws`
    /// samples estimate the PMF (0: exact).
    pub fn new(num_arms: usize, dim: usize, v: f64, lambda: f64, draws: u32, forgetting: Forgetting) -> Self {
        LinTs {
            v,
            draws,
            ridge: RidgeTable::new(num_arms, dim, lambda, forgetting),
        }
    }

    /// The arms' ridge models.
    pub fn models(&self) -> &RidgeTable {
        &self.ridge
    }
}

impl Policy for LinTs {
    fn set_draws(&mut self, draws: u32) {
        self.draws = draws;
    }

    learn_from_ridge!(ridge);

    fn choose(&self, input: &ChoiceInput<'_>, rng: &mut DecisionRng) -> Result<Choice> {
        Ok(gaussian_thompson(input, self.v, self.draws, rng, None))
    }
}

/// Linear TS's default ridge prior, chosen by the validation suite: `lints(v=0.3)` lost 5.9
/// points to the hull on average at `lambda = 1`, 3.0 at 10 and 30; `lints(v=0.1)` 0.2 at 10.
/// For `lints(v=0.05)`, the suite since ("Cold starts on many models at 24 seeds"): mean
/// lift after training +2.74 at 30 against +2.83 at 10, though 30 gains from a cold start
/// on 30 and 60 models.
pub const DEFAULT_LINTS_LAMBDA: f64 = 10.0;

/// The posterior's scale the validation suite chose (`quiver suite`; benches/RESULTS.md).
pub const DEFAULT_LINTS_V: f64 = 0.05;

/// `lints(v=0.05,lambda=10,draws=0)` (aliases `linear-ts`, `lin-ts`); `draws=0`: exact PMF.
/// `v`'s default is the validation suite's choice ([`crate::policy::DEFAULT_LEARNERS`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinTsParams {
    /// The posterior's scale.
    pub v: f64,
    /// The ridge (see [`DEFAULT_LINTS_LAMBDA`]).
    pub lambda: f64,
    /// Monte Carlo samples behind the propensity; 0: the exact PMF.
    pub draws: u32,
}

impl PolicyParams for LinTsParams {
    const NAMES: &'static [&'static str] = &["lints", "linear-ts", "lin-ts"];
    type Policy = LinTs;

    fn parse(args: &mut Args<'_>) -> Result<Self> {
        Ok(LinTsParams {
            v: args.positive("v", true, DEFAULT_LINTS_V)?,
            lambda: args.positive("lambda", false, DEFAULT_LINTS_LAMBDA)?,
            draws: args.draws(0)?,
        })
    }

    fn args(&self) -> Vec<String> {
        vec![
            format!("v={}", self.v),
            format!("lambda={}", self.lambda),
            format!("draws={}", self.draws),
        ]
    }

    fn build(&self, arm_ids: &[&str], dim: usize, forgetting: Forgetting) -> Result<LinTs> {
        Ok(LinTs::new(arm_ids.len(), dim, self.v, self.lambda, self.draws, forgetting))
    }

    fn draws_mut(&mut self) -> Option<&mut u32> {
        Some(&mut self.draws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testutil::choose_all;
    use rand::{Rng, SeedableRng};

    /// The scores drawn are those of posterior parameter draws: arm 0 beats arm 1 with
    /// probability `Phi((m_0 - m_1) / (v sqrt(s_0^2 + s_1^2)))`, `m_a = x' theta_a` and
    /// `s_a^2 = x' A_a^-1 x`; over 40,000 decisions within four standard errors.
    #[test]
    fn scores_follow_the_posterior_of_the_parameters() {
        let (dim, v) = (3, 0.7);
        let mut policy = LinTs::new(2, dim, v, 1.0, 16, Forgetting::None);
        let mut rng = DecisionRng::seed_from_u64(5);
        for step in 0..60 {
            let x: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let arm = step % 2;
            let r = 0.3 + 0.1 * arm as f64 + 0.2 * x[0] - 0.1 * x[2] + rng.random_range(-0.05..0.05);
            policy.update(arm, &x, r);
        }
        let x = [0.4, -0.3, 0.8];
        let (m, s2): (Vec<f64>, Vec<f64>) = (0..2)
            .map(|a| (policy.models().get(a).mean(&x), policy.models().get(a).variance(&x)))
            .unzip();
        let z = (m[0] - m[1]) / (v * (s2[0] + s2[1]).sqrt());
        let p = 0.5 * statrs::function::erf::erfc(-z / std::f64::consts::SQRT_2);
        let n = 40_000;
        let wins = (0..n)
            .filter(|_| choose_all(&policy, &x, &mut rng).position == 0)
            .count();
        let se = (p * (1.0 - p) / f64::from(n)).sqrt();
        assert!(
            (wins as f64 / f64::from(n) - p).abs() < 4.0 * se,
            "{wins} of {n} against {p}"
        );
    }
}
