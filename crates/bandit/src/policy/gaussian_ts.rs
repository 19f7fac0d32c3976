//! Gaussian Thompson sampling (Agrawal & Goyal 2013, "Further optimal regret bounds").
//!
//! Arm `a`'s mean quality has prior `N(mu0, sigma0^2)`; observations are `N(mean, noise^2)`.
//! Posterior precision `tau_a = 1/sigma0^2 + n_a/noise^2`, mean
//! `m_a = (mu0/sigma0^2 + S_a/noise^2) / tau_a`, with `n_a`, `S_a` the (possibly discounted)
//! count and sum. Score: `m_a + z / sqrt(tau_a) - penalty_a`. PMF: exact by quadrature
//! with `draws=0` (the default); a Monte Carlo estimate from `draws` samples otherwise.
//! The default prior mean 1 is optimistic, so new arms are tried early.

use serde::{Deserialize, Serialize};

use super::uniform::learn_from_arm_stats;
use super::{Args, Choice, ChoiceInput, DecisionRng, Estimate, Policy, PolicyParams, gaussian_thompson};
use crate::error::Result;
use crate::stats::{ArmStatsTable, Forgetting};

/// Gaussian Thompson sampling with a conjugate normal prior.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaussianTs {
    mu0: f64,
    sigma0: f64,
    noise: f64,
    draws: u32,
    stats: ArmStatsTable,
}

impl GaussianTs {
    /// Prior `N(mu0, sigma0^2)`, observation noise `noise`; `draws` samples estimate the PMF (0: exact).
    pub fn new(
        num_arms: usize,
        mu0: f64,
        sigma0: f64,
        noise: f64,
        draws: u32,
        forgetting: Forgetting,
    ) -> Self {
        GaussianTs {
            mu0,
            sigma0,
            noise,
            draws,
            stats: ArmStatsTable::new(num_arms, forgetting),
        }
    }
}

impl Policy for GaussianTs {
    fn set_draws(&mut self, draws: u32) {
        self.draws = draws;
    }

    learn_from_arm_stats!(stats);

    /// Posterior mean and standard deviation of the arm's mean quality.
    fn estimate(&self, arm: usize, _features: &[f64]) -> Estimate {
        let s = self.stats.get(arm);
        let prior_precision = self.sigma0.powi(-2);
        let noise_precision = self.noise.powi(-2);
        let tau = prior_precision + s.count * noise_precision;
        Estimate {
            mean: (self.mu0 * prior_precision + s.sum * noise_precision) / tau,
            std: tau.sqrt().recip(),
        }
    }

    fn choose(&self, input: &ChoiceInput<'_>, rng: &mut DecisionRng) -> Result<Choice> {
        Ok(gaussian_thompson(input, 1.0, self.draws, rng, None))
    }
}

/// `gaussian-ts(mu0=1,sigma0=1,noise=0.5,draws=0)` (alias `gts`); `draws=0`: exact PMF.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaussianTsParams {
    /// The prior mean.
    pub mu0: f64,
    /// The prior's standard deviation.
    pub sigma0: f64,
    /// The observations' noise, a standard deviation.
    pub noise: f64,
    /// Monte Carlo samples behind the propensity.
    pub draws: u32,
}

impl PolicyParams for GaussianTsParams {
    const NAMES: &'static [&'static str] = &["gaussian-ts", "gts"];
    type Policy = GaussianTs;

    fn parse(args: &mut Args<'_>) -> Result<Self> {
        Ok(GaussianTsParams {
            mu0: args.number("mu0", false, 1.0, f64::MIN, f64::MAX, "(-inf, inf)")?,
            sigma0: args.positive("sigma0", false, 1.0)?,
            noise: args.positive("noise", false, 0.5)?,
            draws: args.draws(0)?,
        })
    }

    fn args(&self) -> Vec<String> {
        vec![
            format!("mu0={}", self.mu0),
            format!("sigma0={}", self.sigma0),
            format!("noise={}", self.noise),
            format!("draws={}", self.draws),
        ]
    }

    fn build(&self, arm_ids: &[&str], _: usize, forgetting: Forgetting) -> Result<GaussianTs> {
        Ok(GaussianTs::new(
            arm_ids.len(),
            self.mu0,
            self.sigma0,
            self.noise,
            self.draws,
            forgetting,
        ))
    }

    fn draws_mut(&mut self) -> Option<&mut u32> {
        Some(&mut self.draws)
    }
}
