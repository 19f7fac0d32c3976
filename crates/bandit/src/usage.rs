//! Per-arm cost and latency: what each arm has cost and how long it took, and what the
//! next request should be expected to cost.
//!
//! Cost and latency are observed at once for every request (unlike quality), so they are
//! modelled directly rather than explored: the policies learn quality, and the learner
//! subtracts the expected cost and latency, weighted by the request's [`crate::Objective`].
//!
//! Expected cost of a request of `t` input tokens on arm `a` ([`crate::cost::ArmCost`]
//! computes it from these statistics):
//! - with prices: `t * input_usd_per_token + E[output tokens] * output_usd_per_token`, where
//!   `E[output tokens]` is the arm's observed mean, counting the answers a prior's spend
//!   implies at its prices; before any, the mean answer of the route's priced arms, and
//!   the configured default before any of those (so that a model not yet called is not
//!   taken for dearer than the ones that were, which would keep a budget from trying it);
//! - without prices, once outcomes reported tokens: `t * (sum cost / sum input tokens)`, a
//!   ratio estimator that scales with prompt length;
//! - otherwise the arm's mean cost per request, and 0 before any outcome (optimistic).
//!
//! The learner corrects this estimate per context with a ridge regression of what it
//! missed on each observed request ([`crate::cost`]): for a priced arm, the answer's
//! tokens, which vary by prompt (a one-letter choice, a page of code); for the others, the
//! cost in USD.

use serde::{Deserialize, Serialize};

use crate::arm::Arm;
use crate::error::{finite, Result};
use crate::outcome::Outcome;

/// Additive usage statistics of one arm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmUsage {
    /// Outcomes recorded.
    pub requests: u64,
    /// Outcomes that were errors.
    pub errors: u64,
    /// Total spend in USD.
    pub cost_usd: f64,
    /// Sum of input tokens (billed, or estimated when the outcome gave none).
    pub input_tokens: f64,
    /// Sum of billed output tokens.
    pub output_tokens: f64,
    /// Sum of latencies in ms.
    pub latency_ms: f64,
    /// Sum of squared latencies in ms^2.
    pub latency_ms_sq: f64,
    /// Qualities learned.
    #[serde(default)]
    pub qualities: u64,
    /// Their sum.
    #[serde(default)]
    pub quality_sum: f64,
    /// Spend, input tokens and requests that a prior fitted offline counts as (see
    /// [`crate::prior`]): they inform the expected cost, not the usage reported.
    #[serde(default)]
    pub prior: UsagePrior,
}

impl ArmUsage {
    /// Adds what `replica` recorded since `base` (see [`crate::Learner::merge`]), which
    /// `self` already holds. A replica started afresh records less than `base`: what it
    /// recorded before is taken out again, counts and sums alike.
    pub fn merge(&mut self, replica: &ArmUsage, base: &ArmUsage) {
        // Exact: `self` holds `base`'s counts, so the result is at least `replica`'s.
        self.requests = (self.requests + replica.requests).saturating_sub(base.requests);
        self.errors = (self.errors + replica.errors).saturating_sub(base.errors);
        self.qualities = (self.qualities + replica.qualities).saturating_sub(base.qualities);
        self.quality_sum += replica.quality_sum - base.quality_sum;
        self.cost_usd += replica.cost_usd - base.cost_usd;
        self.input_tokens += replica.input_tokens - base.input_tokens;
        self.output_tokens += replica.output_tokens - base.output_tokens;
        self.latency_ms += replica.latency_ms - base.latency_ms;
        self.latency_ms_sq += replica.latency_ms_sq - base.latency_ms_sq;
        self.prior.requests += replica.prior.requests - base.prior.requests;
        self.prior.cost_usd += replica.prior.cost_usd - base.prior.cost_usd;
        self.prior.input_tokens += replica.prior.input_tokens - base.prior.input_tokens;
    }
}

impl From<UsagePrior> for ArmUsage {
    /// The usage of an arm with no outcome yet, started from a prior.
    fn from(prior: UsagePrior) -> Self {
        ArmUsage {
            prior,
            ..ArmUsage::default()
        }
    }
}

/// Answers' tokens and the requests they came from.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AnswerSums {
    /// Tokens of the answers.
    pub tokens: f64,
    /// Requests answered.
    pub requests: f64,
}

impl AnswerSums {
    /// The mean answer, or `default` with no requests.
    pub fn mean_or(&self, default: f64) -> f64 {
        if self.requests > 0.0 {
            self.tokens / self.requests
        } else {
            default
        }
    }
}

impl std::ops::Add for AnswerSums {
    type Output = AnswerSums;

    fn add(self, other: AnswerSums) -> AnswerSums {
        AnswerSums {
            tokens: self.tokens + other.tokens,
            requests: self.requests + other.requests,
        }
    }
}

/// The cost part of a prior: scaled sums of a table's spend and input tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsagePrior {
    /// Requests the prior counts as.
    pub requests: f64,
    /// Their spend, USD.
    pub cost_usd: f64,
    /// Their input tokens.
    pub input_tokens: f64,
}

impl UsagePrior {
    /// The expected cost of a request of `tokens` input tokens on an arm without prices
    /// with these sums: `tokens * cost / input tokens`, else the mean cost per request,
    /// else 0 (see the module docs).
    pub fn expected_cost_usd(&self, tokens: f64) -> f64 {
        if self.input_tokens > 0.0 {
            tokens * self.cost_usd / self.input_tokens
        } else if self.requests > 0.0 {
            self.cost_usd / self.requests
        } else {
            0.0
        }
    }

    /// Adds another prior's sums.
    pub fn add(&mut self, other: &UsagePrior) {
        self.requests += other.requests;
        self.cost_usd += other.cost_usd;
        self.input_tokens += other.input_tokens;
    }
}

impl ArmUsage {
    /// The mean of the qualities learned, none before the first.
    pub fn mean_quality(&self) -> Option<f64> {
        (self.qualities > 0).then(|| self.quality_sum / self.qualities as f64)
    }

    /// Counts a quality learned.
    pub(crate) fn add_quality(&mut self, quality: f64) {
        self.qualities += 1;
        self.quality_sum += quality;
    }

    /// Mean latency in ms (0 before any outcome) and its standard error.
    pub fn latency_estimate_ms(&self) -> (f64, f64) {
        if self.requests == 0 {
            return (0.0, 0.0);
        }
        let n = self.requests as f64;
        let mean = self.latency_ms / n;
        let var = (self.latency_ms_sq / n - mean * mean).max(0.0);
        (mean, (var / n).sqrt())
    }

    /// The answers' tokens of priced `arm` and the requests they came from: its own, and
    /// those a prior's spend implies at the arm's prices ([`Arm::output_tokens_costing`]).
    pub fn answer_sums(&self, arm: &Arm) -> AnswerSums {
        let prior = match arm.output_tokens_costing(self.prior.cost_usd, self.prior.input_tokens) {
            Some(tokens) if self.prior.requests > 0.0 => (tokens, self.prior.requests),
            _ => (0.0, 0.0),
        };
        AnswerSums {
            tokens: self.output_tokens + prior.0,
            requests: self.requests as f64 + prior.1,
        }
    }

    /// Expected cost in USD of a request of `input_tokens` on an arm without prices: its
    /// per-token ratio, its prior's sums pooled with its own (see the module docs).
    pub fn ratio_cost_usd(&self, input_tokens: u32) -> f64 {
        UsagePrior {
            requests: self.requests as f64 + self.prior.requests,
            cost_usd: self.cost_usd + self.prior.cost_usd,
            input_tokens: self.input_tokens + self.prior.input_tokens,
        }
        .expected_cost_usd(f64::from(input_tokens))
    }

    /// The statistics of `arm` with one more outcome; `input_tokens` is the billed count,
    /// or the prompt estimate, and the answer's tokens are [`answer_tokens`]'s.
    /// Refused, leaving the statistics as they are, if a sum would stop being finite
    /// (inputs inside [`crate::limits`] never make one).
    pub(crate) fn recorded(&self, arm: &Arm, outcome: &Outcome, input_tokens: u32) -> Result<ArmUsage> {
        let answer_tokens = answer_tokens(arm, outcome, input_tokens);
        let next = ArmUsage {
            requests: self.requests + 1,
            errors: self.errors + u64::from(outcome.error),
            cost_usd: self.cost_usd + outcome.cost_usd,
            input_tokens: self.input_tokens + f64::from(input_tokens),
            output_tokens: self.output_tokens + answer_tokens,
            latency_ms: self.latency_ms + outcome.latency_ms,
            latency_ms_sq: self.latency_ms_sq + outcome.latency_ms * outcome.latency_ms,
            ..*self
        };
        for (field, value) in [
            ("usage.cost_usd", next.cost_usd),
            ("usage.input_tokens", next.input_tokens),
            ("usage.output_tokens", next.output_tokens),
            ("usage.latency_ms", next.latency_ms),
            ("usage.latency_ms_sq", next.latency_ms_sq),
        ] {
            finite(field, value)?;
        }
        Ok(next)
    }
}

/// The answer's tokens of `outcome` on `arm` with `input_tokens` billed: as reported, or,
/// for a priced arm's outcome that gives a cost and no answer tokens (a table of costs, a
/// caller that reports only what a call cost), those its cost implies at the arm's prices
/// ([`Arm::output_tokens_costing`]).
pub(crate) fn answer_tokens(arm: &Arm, outcome: &Outcome, input_tokens: u32) -> f64 {
    match arm.output_tokens_costing(outcome.cost_usd, f64::from(input_tokens)) {
        Some(implied) if outcome.output_tokens == 0 && arm.has_prices() => implied,
        _ => f64::from(outcome.output_tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cost::ArmCost;

    /// What a learner expects a request of `tokens` prompt tokens to cost on `arm` with
    /// `usage`, before any correction, a priced arm answering 250 tokens by default.
    fn expected(usage: &ArmUsage, arm: &Arm, tokens: u32) -> f64 {
        let seen = ArmCost {
            arm,
            usage,
            default_output_tokens: 250.0,
        };
        seen.expected_usd(tokens, 0.0)
    }

    /// A replica's usage went from 20 requests (2 errors, $0.2) to 5 (0 errors, $0.05):
    /// it started afresh, and a learner that had folded the 20 holds 15 fewer of each.
    #[test]
    fn a_replica_started_afresh_takes_its_past_out_counts_and_sums_alike() {
        let usage = |requests, errors, cost_usd| ArmUsage {
            requests,
            errors,
            cost_usd,
            ..ArmUsage::default()
        };
        let mut mine = usage(30, 3, 0.3);
        mine.merge(&usage(5, 0, 0.05), &usage(20, 2, 0.2));
        assert_eq!((mine.requests, mine.errors), (15, 1));
        assert!((mine.cost_usd - 0.15).abs() < 1e-15);
    }

    #[test]
    fn expected_cost_uses_prices_then_ratio_then_mean() {
        let priced = Arm::new("p").with_prices(1e-6, 4e-6);
        let mut u = ArmUsage::default();
        assert!((expected(&u, &priced, 1000) - (1e-3 + 1e-3)).abs() < 1e-15);
        u = u
            .recorded(&priced, &Outcome::new(100.0, 0.002).with_tokens(1000, 500), 1000)
            .unwrap();
        assert!((expected(&u, &priced, 1000) - (1e-3 + 2e-3)).abs() < 1e-15);

        // A prior's spend of $0.03 over 10 requests of 1000 input tokens: 5000 answer
        // tokens at $4e-6, 500 per request, and with the one answer of 500 above, 500.
        u.prior = UsagePrior {
            requests: 10.0,
            cost_usd: 0.03,
            input_tokens: 10_000.0,
        };
        let sums = u.answer_sums(&priced);
        assert!(
            (sums.tokens - 5500.0).abs() < 1e-9 && sums.requests == 11.0,
            "{sums:?}"
        );
        assert!((expected(&u, &priced, 1000) - (1e-3 + 2e-3)).abs() < 1e-12);
        // An outcome with a cost and no answer tokens counts the answer the cost implies:
        // $0.0034 for 1000 input tokens is 600 answer tokens at $4e-6.
        u = u.recorded(&priced, &Outcome::new(100.0, 0.0034), 1000).unwrap();
        assert!((u.output_tokens - 1100.0).abs() < 1e-9, "{}", u.output_tokens);

        let unpriced = Arm::new("u");
        let mut u = ArmUsage::default();
        assert_eq!(expected(&u, &unpriced, 100), 0.0);
        u = u.recorded(&unpriced, &Outcome::new(100.0, 0.004), 200).unwrap();
        u = u.recorded(&unpriced, &Outcome::new(300.0, 0.002), 100).unwrap();
        // $0.006 over 300 tokens: $2e-5 per token.
        assert!((expected(&u, &unpriced, 50) - 1e-3).abs() < 1e-15);
        let (mean, se) = u.latency_estimate_ms();
        assert_eq!(mean, 200.0);
        assert!((se - (10_000.0f64 / 2.0).sqrt()).abs() < 1e-9);
        // A prior's sums pool with the observed ones: $0.006 + $0.003 over 300 + 600 tokens.
        u.prior = UsagePrior {
            requests: 3.0,
            cost_usd: 0.003,
            input_tokens: 600.0,
        };
        assert!((expected(&u, &unpriced, 90) - 9e-4).abs() < 1e-15);
        assert_eq!(u.requests, 2, "the usage reported is what was observed");
    }

    /// A sum that would overflow refuses the outcome and keeps the statistics intact.
    #[test]
    fn an_update_that_would_overflow_a_sum_is_refused() {
        let huge = ArmUsage {
            latency_ms_sq: f64::MAX,
            ..ArmUsage::default()
        };
        let error = huge
            .recorded(&Arm::new("a"), &Outcome::new(1e200, 0.0), 1)
            .unwrap_err();
        assert!(
            error.to_string().starts_with("usage.latency_ms_sq is inf"),
            "{error}"
        );
        assert_eq!(
            huge.recorded(&Arm::new("a"), &Outcome::new(0.0, 0.0), 1)
                .unwrap()
                .requests,
            1
        );
    }
}
