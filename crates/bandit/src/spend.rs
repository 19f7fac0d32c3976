//! What a table's requests cost a learner that chooses by `quality - w * cost`, at each
//! cost weight `w`: the curve a budget's pacer starts from
//! ([`crate::BudgetPacer::warm_start`]).
//!
//! On each row the learner chooses by what it expects, `q_a - w e_a` with `e_a` the
//! expected cost, and pays the row's cost `c_a`. The chosen arm's expected cost falls as
//! `w` grows (the choice can only move to an arm expected to cost less), so where the
//! expectation ranks arms as their costs do the table's mean cost `C(w)` is a
//! nonincreasing step function of `w`. It is kept at [`POINTS_PER_DECADE`] weights per
//! decade around the table's cost scale and read between them by linear interpolation in
//! `log w`. Where a budget binds, the dual multiplier that meets it is what an online pacer
//! would otherwise reach only by overspending first; Agrawal and Devanur (2016, "Linear
//! contextual bandits with knapsacks") estimate it from a first phase of the run for the
//! same reason. A table of past outcomes is such a phase, run before the first request.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, Result};
use crate::pmf;

/// Weights kept per decade.
pub const POINTS_PER_DECADE: i32 = 32;

/// Decades kept below and above `1 / s`, where `s` is the table's mean cost of its dearest
/// arm: at `w = 0.01 / s` cost moves a choice by at most a hundredth of a quality point;
/// at `w = 10^6 / s` an arm a million times cheaper than the dearest still counts.
const DECADES_BELOW: i32 = 2;
const DECADES_ABOVE: i32 = 6;

/// One weight of a [`SpendCurve`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendPoint {
    /// Quality points per USD.
    pub cost_weight: f64,
    /// Mean cost per request, USD, of the choices at that weight.
    pub mean_cost_usd: f64,
}

/// A table's mean cost per request against the cost weight the choices are made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendCurve {
    /// Increasing weights.
    pub points: Vec<SpendPoint>,
}

impl SpendCurve {
    /// The curve of a table of expected `qualities` and `expected` costs and the `costs`
    /// paid (USD), row by row with `arms` values each: on each row the choice at weight `w`
    /// is the first arm maximizing `quality - w * expected`, and it pays its cost. `None`
    /// without rows, or without any cost.
    pub fn fit(arms: usize, qualities: &[f64], expected: &[f64], costs: &[f64]) -> Option<SpendCurve> {
        debug_assert!(qualities.len() == costs.len() && expected.len() == costs.len());
        let rows = qualities.len().checked_div(arms)?;
        if rows == 0 {
            return None;
        }
        let dearest: f64 = costs
            .chunks(arms)
            .map(|row| row.iter().copied().fold(0.0, f64::max))
            .sum::<f64>()
            / rows as f64;
        if dearest <= 0.0 || !dearest.is_finite() {
            return None;
        }
        let mut scores = vec![0.0; arms];
        let mut points = Vec::new();
        for k in -DECADES_BELOW * POINTS_PER_DECADE..=DECADES_ABOVE * POINTS_PER_DECADE {
            let cost_weight = 10f64.powf(f64::from(k) / f64::from(POINTS_PER_DECADE)) / dearest;
            let mut spent = 0.0;
            for ((q, e), c) in qualities
                .chunks(arms)
                .zip(expected.chunks(arms))
                .zip(costs.chunks(arms))
            {
                for (score, (q, e)) in scores.iter_mut().zip(q.iter().zip(e)) {
                    *score = q - cost_weight * e;
                }
                spent += c[pmf::argmax(&scores)];
            }
            points.push(SpendPoint {
                cost_weight,
                mean_cost_usd: spent / rows as f64,
            });
        }
        Some(SpendCurve { points })
    }

    /// The mean cost per request at weight `w`: interpolated in `log w` between the
    /// curve's weights, held at its ends beyond them.
    pub fn mean_cost_usd(&self, w: f64) -> f64 {
        let after = self.points.partition_point(|p| p.cost_weight <= w);
        match (
            after.checked_sub(1).map(|i| &self.points[i]),
            self.points.get(after),
        ) {
            (Some(lo), Some(hi)) => {
                let t = (w / lo.cost_weight).ln() / (hi.cost_weight / lo.cost_weight).ln();
                lo.mean_cost_usd + t * (hi.mean_cost_usd - lo.mean_cost_usd)
            }
            (Some(only), None) | (None, Some(only)) => only.mean_cost_usd,
            (None, None) => 0.0,
        }
    }

    /// Checks what a file could get wrong: at least one point, finite positive increasing
    /// weights and finite costs that are not negative.
    pub fn validate(&self) -> Result<()> {
        let invalid =
            |why: String| Err(ErrorKind::InvalidConfig(format!("priors: spend curve {why}")).into());
        if self.points.is_empty() {
            return invalid("has no points".into());
        }
        for (i, p) in self.points.iter().enumerate() {
            if !(p.cost_weight.is_finite() && p.cost_weight > 0.0) {
                return invalid(format!(
                    "points[{i}].cost_weight is {}, not a number > 0",
                    p.cost_weight
                ));
            }
            if !(p.mean_cost_usd.is_finite() && p.mean_cost_usd >= 0.0) {
                return invalid(format!(
                    "points[{i}].mean_cost_usd is {}, not a number >= 0",
                    p.mean_cost_usd
                ));
            }
            if i > 0 && p.cost_weight <= self.points[i - 1].cost_weight {
                return invalid(format!("points[{i}].cost_weight does not increase"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Two arms on every row: quality 0.9 at $0.01, 0.6 at $0.001. The dearer one wins
    /// while `0.3 > 0.009 w`, i.e. below `w = 33.3` per USD.
    fn two_arms(rows: usize) -> (Vec<f64>, Vec<f64>) {
        let qualities = [0.9, 0.6].repeat(rows);
        let costs = [0.01, 0.001].repeat(rows);
        (qualities, costs)
    }

    #[test]
    fn two_arms_switch_where_the_cost_outweighs_the_quality() {
        let (q, c) = two_arms(5);
        let curve = SpendCurve::fit(2, &q, &c, &c).expect("costs");
        curve.validate().expect("valid");
        let switch = 0.3 / 0.009;
        for p in &curve.points {
            let expected = if p.cost_weight < switch { 0.01 } else { 0.001 };
            assert_eq!(p.mean_cost_usd, expected, "{p:?}");
        }
        // The grid spans 0.01 / s to 10^6 / s with s = $0.01.
        assert!((curve.points[0].cost_weight - 1.0).abs() < 1e-9);
        assert!((curve.points.last().unwrap().cost_weight - 1e8).abs() < 1e-3);
        assert_eq!(curve.mean_cost_usd(0.0), 0.01);
        assert_eq!(curve.mean_cost_usd(1e12), 0.001);
    }

    /// Each arm's expected cost is its mean over the rows; a row pays a cost around it, so
    /// a choice moved to an arm expected to cost less may pay more on that row. Paying the
    /// expectations, the curve never rises.
    #[test]
    fn the_curve_matches_brute_force_and_never_rises() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (rows, arms) = (200, 6);
        let q: Vec<f64> = (0..rows * arms).map(|_| rng.random_range(0.0..1.0)).collect();
        let e: Vec<f64> = (0..arms)
            .map(|_| 10f64.powf(rng.random_range(-6.0..-2.0)))
            .collect();
        let c: Vec<f64> = (0..rows * arms)
            .map(|i| e[i % arms] * rng.random_range(0.5..1.5))
            .collect();
        let e = e.repeat(rows);
        let curve = SpendCurve::fit(arms, &q, &e, &c).expect("costs");
        let paying_expectations = SpendCurve::fit(arms, &q, &e, &e).expect("costs");
        for pair in paying_expectations.points.windows(2) {
            assert!(pair[1].mean_cost_usd <= pair[0].mean_cost_usd, "{pair:?}");
        }
        for p in &curve.points {
            let mut total = 0.0;
            for r in 0..rows {
                let score = |a: usize| q[r * arms + a] - p.cost_weight * e[r * arms + a];
                let best = (0..arms).fold(0, |b, a| if score(a) > score(b) { a } else { b });
                total += c[r * arms + best];
            }
            assert!((p.mean_cost_usd - total / rows as f64).abs() < 1e-15, "{p:?}");
        }
    }

    #[test]
    fn between_weights_the_cost_is_interpolated_in_log_weight() {
        let curve = SpendCurve {
            points: vec![
                SpendPoint {
                    cost_weight: 10.0,
                    mean_cost_usd: 0.004,
                },
                SpendPoint {
                    cost_weight: 1000.0,
                    mean_cost_usd: 0.002,
                },
            ],
        };
        assert!((curve.mean_cost_usd(100.0) - 0.003).abs() < 1e-15);
        assert_eq!(curve.mean_cost_usd(1.0), 0.004);
        assert_eq!(curve.mean_cost_usd(1e6), 0.002);
    }

    #[test]
    fn tables_without_rows_or_costs_have_no_curve_and_bad_curves_are_named() {
        assert!(SpendCurve::fit(2, &[], &[], &[]).is_none());
        assert!(SpendCurve::fit(2, &[0.5, 0.7], &[0.0, 0.0], &[0.0, 0.0]).is_none());
        let (q, c) = two_arms(2);
        let mut curve = SpendCurve::fit(2, &q, &c, &c).expect("costs");
        curve.points[3].mean_cost_usd = f64::NAN;
        let err = curve.validate().unwrap_err().to_string();
        assert!(err.contains("points[3].mean_cost_usd is NaN"), "{err}");
        curve.points[3].mean_cost_usd = 0.0;
        curve.points[5].cost_weight = curve.points[4].cost_weight;
        let err = curve.validate().unwrap_err().to_string();
        assert!(err.contains("points[5].cost_weight does not increase"), "{err}");
    }
}
