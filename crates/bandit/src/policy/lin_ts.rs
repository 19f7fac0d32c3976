//! Linear Thompson sampling (Agrawal & Goyal 2013, "Thompson Sampling for Contextual
//! Bandits with Linear Payoffs"), with disjoint per-arm models.
//!
//! Arm `a` keeps the ridge model of [`crate::ridge`] and its Cholesky factor `L L' = A_a`.
//! Each decision draws `theta~_a ~ N(theta_a, v^2 A_a^-1)` by Cholesky sampling
//! (`theta~ = theta + v L'^-1 z`, `z ~ N(0, I)`) and scores `x' theta~_a - penalty_a`.
//! Since `x' theta~_a` is exactly `N(x' theta_a, v^2 x' A_a^-1 x)` and the arms are
//! independent, the PMF is estimated by Monte Carlo over those scalar normals.

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
    /// samples estimate the PMF.
    pub fn new(num_arms: usize, dim: usize, v: f64, lambda: f64, draws: u32, forgetting: Forgetting) -> Self {
        LinTs {
            v,
            draws,
            ridge: RidgeTable::new(num_arms, dim, lambda, true, forgetting),
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
        let x = input.features;
        let first: Vec<f64> = input
            .eligible
            .iter()
            .zip(input.penalties)
            .map(|(&a, p)| {
                let theta = self.ridge.get(a).sample_theta(self.v, rng);
                theta.iter().zip(x).map(|(t, xi)| t * xi).sum::<f64>() - p
            })
            .collect();
        Ok(gaussian_thompson(input, self.v, self.draws, rng, Some(first)))
    }
}

/// Linear TS's default ridge prior, chosen by the validation suite: `lints(v=0.3)` lost 5.9
/// points to the hull on average at `lambda = 1`, 3.0 at 10 and 30; `lints(v=0.1)` 0.2 at 10.
pub const DEFAULT_LINTS_LAMBDA: f64 = 10.0;

/// `lints(v=0.5,lambda=10,draws=0)` (aliases `linear-ts`, `lin-ts`); `draws=0`: exact PMF.
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
            v: args.positive("v", true, 0.5)?,
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
    use rand::{Rng, SeedableRng};

    #[test]
    fn posterior_draws_have_the_posterior_mean_and_covariance() {
        let dim = 3;
        let v = 0.7;
        let mut policy = LinTs::new(1, dim, v, 1.0, 16, Forgetting::None);
        let mut rng = DecisionRng::seed_from_u64(5);
        for _ in 0..40 {
            let x: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let r = 0.3 + 0.2 * x[0] - 0.1 * x[2] + rng.random_range(-0.05..0.05);
            policy.update(0, &x, r);
        }
        let model = policy.models().get(0);
        let n = 40_000;
        let draws: Vec<Vec<f64>> = (0..n)
            .map(|_| model.sample_theta(v, &mut rng).iter().copied().collect())
            .collect();
        let cov = model.covariance() * (v * v);
        for i in 0..dim {
            let mean_i = draws.iter().map(|t| t[i]).sum::<f64>() / n as f64;
            // The sample mean's standard error is sqrt(cov_ii / n); allow 4 of them.
            let se = (cov[(i, i)] / n as f64).sqrt();
            assert!((mean_i - model.theta()[i]).abs() < 4.0 * se, "mean {i}");
            for j in 0..dim {
                let mean_j = draws.iter().map(|t| t[j]).sum::<f64>() / n as f64;
                let c_ij = draws
                    .iter()
                    .map(|t| (t[i] - mean_i) * (t[j] - mean_j))
                    .sum::<f64>()
                    / (n - 1) as f64;
                // Var of a sample covariance of normals: (c_ij^2 + c_ii c_jj) / n.
                let se = ((cov[(i, j)].powi(2) + cov[(i, i)] * cov[(j, j)]) / n as f64).sqrt();
                assert!(
                    (c_ij - cov[(i, j)]).abs() < 4.0 * se,
                    "cov {i}{j}: {c_ij} vs {}",
                    cov[(i, j)]
                );
            }
        }
    }
}
