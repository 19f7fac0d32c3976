//! The physical range of every number that enters a learner.
//!
//! A learner keeps sums of what it observes (spend, latencies and their squares, ridge
//! matrices of features). Finite but absurd inputs (a latency of 1e200 ms) would overflow
//! those sums to infinity, which no later input can undo and no snapshot can hold. Every
//! input is therefore checked against a range that no real request leaves:
//!
//! | input | range | why |
//! |---|---|---|
//! | quality | [0, 1] | the scale of every policy |
//! | latency | [0, 86,400,000] ms | one day |
//! | cost of one request | [0, 1,000] USD | far above any model's price for one call |
//! | tokens of one request | [0, 100,000,000] | far above any context window |
//! | a price | [0, 0.01] USD per token | $10,000 per million tokens |
//! | a caller feature | [-1,000,000, 1,000,000] | features are best scaled to about [-1, 1] |
//! | `w_cost` | [0, 1e9] quality points per USD | a nano-dollar outweighing all quality |
//! | `w_latency` | [0, 1e6] quality points per second | a microsecond outweighing all quality |
//! | a budget | [1e-9, 1,000] USD per request | as the cost of a request |
//!
//! With these bounds no statistic can leave the finite range: a sum of squared latencies
//! grows by at most 7.5e15 per outcome and a ridge matrix entry by at most 1e12 per
//! update, so overflowing `f64` (1.8e308) would take more than 1e290 outcomes.

use crate::error::{Error, Result};

/// A closed range `[lo, hi]` of an input, with its description for error messages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    /// The smallest value allowed.
    pub lo: f64,
    /// The largest value allowed.
    pub hi: f64,
    /// The range as written in errors and docs.
    pub range: &'static str,
}

impl Bound {
    /// `value`, if it is finite and inside the range; otherwise an error naming `field`,
    /// the value and the range.
    pub fn check(&self, field: &str, value: f64) -> Result<f64> {
        if !value.is_finite() {
            return Err(Error::not_finite(field, value));
        }
        if (self.lo..=self.hi).contains(&value) {
            Ok(value)
        } else {
            Err(Error::out_of_range(field, value, self.range))
        }
    }

    /// Checks every value of the vector `name`; an error names the first bad one as
    /// `name[i]`. The name is formatted only then: this runs on every decision.
    pub fn check_all(&self, name: &str, values: &[f64]) -> Result<()> {
        match values
            .iter()
            .position(|&v| !v.is_finite() || !(self.lo..=self.hi).contains(&v))
        {
            None => Ok(()),
            Some(i) => self.check(&format!("{name}[{i}]"), values[i]).map(|_| ()),
        }
    }

    /// `value` moved into the range: for figures that come from a peer rather than a
    /// caller (an upstream's reported usage), which are recorded rather than refused.
    pub fn clamp(&self, value: f64) -> f64 {
        if value.is_nan() {
            self.lo
        } else {
            value.clamp(self.lo, self.hi)
        }
    }
}

/// Quality scores.
pub const QUALITY: Bound = Bound {
    lo: 0.0,
    hi: 1.0,
    range: "[0, 1]",
};

/// Latency of one request, ms.
pub const LATENCY_MS: Bound = Bound {
    lo: 0.0,
    hi: 86_400_000.0,
    range: "[0, 86400000] ms (one day)",
};

/// Cost of one request, USD.
pub const COST_USD: Bound = Bound {
    lo: 0.0,
    hi: 1_000.0,
    range: "[0, 1000] USD",
};

/// Input or output tokens of one request.
pub const TOKENS: Bound = Bound {
    lo: 0.0,
    hi: 100_000_000.0,
    range: "[0, 100000000] tokens",
};

/// A price per token, USD.
pub const PRICE_USD_PER_TOKEN: Bound = Bound {
    lo: 0.0,
    hi: 0.01,
    range: "[0, 0.01] USD per token",
};

/// A caller's own feature value.
pub const FEATURE: Bound = Bound {
    lo: -1_000_000.0,
    hi: 1_000_000.0,
    range: "[-1000000, 1000000]",
};

/// The cost weight, quality points per USD.
pub const W_COST: Bound = Bound {
    lo: 0.0,
    hi: 1e9,
    range: "[0, 1e9] quality points per USD",
};

/// The latency weight, quality points per second.
pub const W_LATENCY: Bound = Bound {
    lo: 0.0,
    hi: 1e6,
    range: "[0, 1e6] quality points per second",
};

/// A budget, USD per request.
pub const BUDGET_USD: Bound = Bound {
    lo: 1e-9,
    hi: 1_000.0,
    range: "[1e-9, 1000] USD per request",
};

// The claim of the module docs, checked when compiling: the largest squared latency, the
// largest ridge increment and the largest cost penalty are far from overflowing however
// many outcomes accumulate.
const _: () = assert!(f64::MAX / (LATENCY_MS.hi * LATENCY_MS.hi) > 1e290);
const _: () = assert!(f64::MAX / (FEATURE.hi * FEATURE.hi) > 1e290);
const _: () = assert!(f64::MAX / (W_COST.hi * COST_USD.hi) > 1e290);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_names_the_field_and_the_range_and_clamps_peers_figures() {
        assert_eq!(LATENCY_MS.check("latency_ms", 12.5), Ok(12.5));
        let error = LATENCY_MS.check("outcome.latency_ms", 1e200).unwrap_err();
        assert_eq!(
            error.to_string(),
            "outcome.latency_ms is 1e200, outside [0, 86400000] ms (one day)"
        );
        assert!(COST_USD.check("cost_usd", f64::INFINITY).is_err());
        assert!(FEATURE.check("features[0]", -1e6).is_ok());
        assert!(FEATURE.check("features[0]", -1.000001e6).is_err());
        assert_eq!(TOKENS.clamp(4e9), 1e8);
        assert_eq!(COST_USD.clamp(f64::NAN), 0.0);
    }
}
