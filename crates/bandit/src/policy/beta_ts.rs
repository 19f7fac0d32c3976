//! Beta-Bernoulli Thompson sampling (Thompson 1933; Chapelle & Li 2011; Agrawal & Goyal 2012).
//!
//! Posterior of arm `a`: `Beta(alpha0 + S_a, beta0 + n_a - S_a)` with `S_a` the (possibly
//! discounted) sum of quality and `n_a` the count. A fractional quality `q` in [0, 1] counts
//! as `q` successes and `1 - q` failures, the usual extension beyond 0/1 rewards.
//! Score: one posterior sample minus the penalty. PMF: exact by quadrature with `draws=0`
//! ([`crate::pmf::beta_argmax_pmf`]; the default, unless a prior parameter is below 1); a
//! Monte Carlo estimate from `draws` samples otherwise.

use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

use super::uniform::learn_from_arm_stats;
use super::{exact_choice, MONTE_CARLO_DRAWS, thompson_choice, Args, Choice, ChoiceInput, DecisionRng, Estimate, Policy, PolicyParams};
use crate::error::Result;
use crate::stats::{ArmStatsTable, Forgetting};

/// Beta-Bernoulli Thompson sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BetaTs {
    alpha0: f64,
    beta0: f64,
    draws: u32,
    stats: ArmStatsTable,
}

impl BetaTs {
    /// Thompson sampling with prior `Beta(alpha0, beta0)`; `draws` samples estimate the PMF (0: exact).
    pub fn new(num_arms: usize, alpha0: f64, beta0: f64, draws: u32, forgetting: Forgetting) -> Self {
        BetaTs {
            alpha0,
            beta0,
            draws,
            stats: ArmStatsTable::new(num_arms, forgetting),
        }
    }

    /// The posterior `(alpha, beta)` of `arm`.
    pub fn posterior(&self, arm: usize) -> (f64, f64) {
        let s = self.stats.get(arm);
        (self.alpha0 + s.sum, self.beta0 + (s.count - s.sum).max(0.0))
    }
}

impl Policy for BetaTs {
    fn set_draws(&mut self, draws: u32) {
        self.draws = draws;
    }

    learn_from_arm_stats!(stats);

    /// Posterior mean `alpha / (alpha + beta)` and standard deviation.
    fn estimate(&self, arm: usize, _features: &[f64]) -> Estimate {
        let (a, b) = self.posterior(arm);
        let n = a + b;
        Estimate {
            mean: a / n,
            std: (a * b / (n * n * (n + 1.0))).sqrt(),
        }
    }

    fn choose(&self, input: &ChoiceInput<'_>, rng: &mut DecisionRng) -> Result<Choice> {
        let posteriors: Vec<Beta<f64>> = input
            .eligible
            .iter()
            .map(|&a| {
                let (alpha, beta) = self.posterior(a);
                // alpha, beta >= the validated positive prior, so this cannot fail.
                Beta::new(alpha, beta).map_err(|e| {
                    crate::ErrorKind::InvalidConfig(format!("beta posterior ({alpha}, {beta}): {e}")).into()
                })
            })
            .collect::<Result<_>>()?;
        let sample = |rng: &mut DecisionRng, scores: &mut [f64]| {
            for ((s, d), p) in scores.iter_mut().zip(&posteriors).zip(input.penalties) {
                *s = d.sample(rng) - p;
            }
        };
        let mut first = vec![0.0; input.len()];
        sample(rng, &mut first);
        if self.draws > 0 {
            return Ok(thompson_choice(input.len(), self.draws, rng, first, sample));
        }
        let (alphas, betas): (Vec<f64>, Vec<f64>) = input.eligible.iter().map(|&a| self.posterior(a)).unzip();
        Ok(exact_choice(&first, crate::pmf::beta_argmax_pmf(&alphas, &betas, input.penalties)))
    }
}

/// `beta-ts(alpha=1,beta=1,draws=0)` (aliases `ts`, `bts`); `draws=0`: exact PMF, the
/// default unless the prior is below 1 (then [`MONTE_CARLO_DRAWS`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BetaTsParams {
    /// The prior's successes.
    pub alpha: f64,
    /// The prior's failures.
    pub beta: f64,
    /// Monte Carlo samples behind the propensity; 0: the exact PMF.
    pub draws: u32,
}

impl PolicyParams for BetaTsParams {
    const NAMES: &'static [&'static str] = &["beta-ts", "ts", "bts"];
    type Policy = BetaTs;

    fn parse(args: &mut Args<'_>) -> Result<Self> {
        let (alpha, beta) = (args.positive("alpha", false, 1.0)?, args.positive("beta", false, 1.0)?);
        let default_draws = if alpha.min(beta) < 1.0 { MONTE_CARLO_DRAWS } else { 0 };
        let params = BetaTsParams {
            alpha,
            beta,
            draws: args.draws(default_draws)?,
        };
        // Below 1 a posterior's density is unbounded at an end, where the quadrature
        // would fall short while calling its result exact.
        if params.draws == 0 && params.alpha.min(params.beta) < 1.0 {
            return Err(args.invalid("draws=0 (the exact PMF) needs alpha and beta of at least 1"));
        }
        Ok(params)
    }

    fn args(&self) -> Vec<String> {
        vec![
            format!("alpha={}", self.alpha),
            format!("beta={}", self.beta),
            format!("draws={}", self.draws),
        ]
    }

    fn build(&self, arm_ids: &[&str], _: usize, forgetting: Forgetting) -> Result<BetaTs> {
        Ok(BetaTs::new(arm_ids.len(), self.alpha, self.beta, self.draws, forgetting))
    }

    fn draws_mut(&mut self) -> Option<&mut u32> {
        Some(&mut self.draws)
    }
}
