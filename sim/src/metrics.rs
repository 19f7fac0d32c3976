//! Summary metrics: single arms, the per-request oracle, the cost-quality frontier and its
//! area (RouterBench's AIQ), RouteLLM's APGR and CPT, and confidence intervals over seeds.

pub use quiver_bandit::hull::{frontier, frontier_quality_at};
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::data::WideDataset;

/// One arm's means over a dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SingleArm {
    /// Arm name.
    pub arm: String,
    /// Mean quality.
    pub mean_quality: f64,
    /// Mean cost per request, USD.
    pub mean_cost_usd: f64,
    /// Mean latency, ms; `None` when neither the table nor a latency model gives one.
    pub mean_latency_ms: Option<f64>,
}

/// Every arm's means; `latency_mean_ms` (the latency model's means) stands in where the
/// table has no latency.
pub fn single_arms(data: &WideDataset, latency_mean_ms: Option<&[f64]>) -> Vec<SingleArm> {
    let n = data.rows().max(1) as f64;
    (0..data.num_arms())
        .map(|a| {
            let rows = 0..data.rows();
            SingleArm {
                arm: data.arms[a].clone(),
                mean_quality: rows.clone().map(|r| data.quality(r, a)).sum::<f64>() / n,
                mean_cost_usd: rows.clone().map(|r| data.cost_usd(r, a)).sum::<f64>() / n,
                mean_latency_ms: match (&data.latency_ms, latency_mean_ms) {
                    (Some(_), _) => Some(rows.map(|r| data.latency_ms(r, a).unwrap_or(0.0)).sum::<f64>() / n),
                    (None, Some(m)) => Some(m[a]),
                    (None, None) => None,
                },
            }
        })
        .collect()
}

/// Index of the arm with the highest mean quality (ties: the cheaper, then the first).
pub fn best_single(arms: &[SingleArm]) -> usize {
    let mut best = 0;
    for (i, a) in arms.iter().enumerate() {
        let b = &arms[best];
        if a.mean_quality > b.mean_quality
            || (a.mean_quality == b.mean_quality && a.mean_cost_usd < b.mean_cost_usd)
        {
            best = i;
        }
    }
    best
}

/// The single model of the highest mean quality (the cheaper of ties) and its mean cost
/// per request: what budgets are set as shares of.
pub fn best_model(data: &WideDataset) -> (usize, f64) {
    let singles = single_arms(data, None);
    let best = best_single(&singles);
    (best, singles[best].mean_cost_usd)
}

/// The per-request oracle: on each request the best-quality arm, the cheapest among ties
/// (RouterBench's "cheapest correct model"). Returns (mean quality, mean cost USD).
pub fn oracle(data: &WideDataset) -> (f64, f64) {
    let n = data.rows().max(1) as f64;
    let (mut q, mut c) = (0.0, 0.0);
    for r in 0..data.rows() {
        let mut best = 0;
        for a in 1..data.num_arms() {
            let (qa, qb) = (data.quality(r, a), data.quality(r, best));
            if qa > qb || (qa == qb && data.cost_usd(r, a) < data.cost_usd(r, best)) {
                best = a;
            }
        }
        q += data.quality(r, best);
        c += data.cost_usd(r, best);
    }
    (q / n, c / n)
}

/// RouterBench's AIQ (Hu et al. 2024, eq. 3): the mean quality of the frontier over the
/// cost range `[lo, hi]`, `1/(hi - lo) * integral of the frontier`, the frontier held flat
/// beyond its last point and at its first quality before its first point.
pub fn aiq(frontier: &[(f64, f64)], lo: f64, hi: f64) -> f64 {
    if frontier.is_empty() {
        return 0.0;
    }
    if hi <= lo {
        return frontier[0].1;
    }
    let at = |c: f64| frontier_quality_at(frontier, c);
    // The curve is piecewise linear: integrate exactly over the breakpoints in range.
    let mut xs: Vec<f64> = vec![lo, hi];
    xs.extend(frontier.iter().map(|p| p.0).filter(|&c| c > lo && c < hi));
    xs.sort_by(f64::total_cmp);
    let area: f64 = xs
        .windows(2)
        .map(|w| (w[1] - w[0]) * (at(w[0]) + at(w[1])) / 2.0)
        .sum();
    area / (hi - lo)
}

/// A router's performance-gap-recovered curve (RouteLLM, Ong et al. 2024): points of
/// (share of calls to the strong model, PGR = (q - q_weak) / (q_strong - q_weak)), closed
/// by (0, 0) and (1, 1) and sorted by share.
pub fn pgr_curve(points: &[(f64, f64)], q_weak: f64, q_strong: f64) -> Vec<(f64, f64)> {
    let gap = q_strong - q_weak;
    let mut curve: Vec<(f64, f64)> = vec![(0.0, 0.0), (1.0, 1.0)];
    curve.extend(
        points
            .iter()
            .map(|&(share, q)| (share, if gap.abs() > 0.0 { (q - q_weak) / gap } else { 0.0 })),
    );
    curve.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    curve
}

/// APGR: the area under the PGR curve over strong-call shares [0, 1] (trapezoids).
pub fn apgr(curve: &[(f64, f64)]) -> f64 {
    curve
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
        .sum()
}

/// CPT(x): the smallest share of strong-model calls at which the (linearly interpolated)
/// PGR curve reaches `x`.
pub fn cpt(curve: &[(f64, f64)], x: f64) -> f64 {
    for w in curve.windows(2) {
        let ((s0, p0), (s1, p1)) = (w[0], w[1]);
        if p0 >= x {
            return s0;
        }
        if p1 >= x {
            return if p1 > p0 {
                s0 + (x - p0) / (p1 - p0) * (s1 - s0)
            } else {
                s1
            };
        }
    }
    1.0
}

/// Mean and 95% Student-t interval of per-seed values; no interval from a single seed,
/// whose spread says nothing of the seeds' variance.
pub fn mean_ci95(values: &[f64]) -> (f64, Option<[f64; 2]>) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, None);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, None);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
        .map(|d| d.inverse_cdf(0.975))
        .unwrap_or(1.96);
    let half = t * (var / n as f64).sqrt();
    (mean, Some([mean - half, mean + half]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aiq_integrates_the_piecewise_linear_frontier() {
        let f = [(0.0, 0.5), (1.0, 1.0)];
        assert!((aiq(&f, 0.0, 1.0) - 0.75).abs() < 1e-12);
        // Flat beyond the last point: over [0, 2], (0.75 + 1.0) / 2.
        assert!((aiq(&f, 0.0, 2.0) - 0.875).abs() < 1e-12);
    }

    /// Brute force on random model sets: the hull at a cost is the best quality of any
    /// single model within it or any two-model mix costing exactly it.
    #[test]
    fn random_router_has_apgr_one_half_and_cpt_equal_to_the_target() {
        // A router calling the strong model with probability s gets q = s q_s + (1-s) q_w.
        let (qw, qs) = (0.6, 0.9);
        let points: Vec<(f64, f64)> = (1..10)
            .map(|i| i as f64 / 10.0)
            .map(|s| (s, s * qs + (1.0 - s) * qw))
            .collect();
        let curve = pgr_curve(&points, qw, qs);
        assert!((apgr(&curve) - 0.5).abs() < 1e-12);
        assert!((cpt(&curve, 0.5) - 0.5).abs() < 1e-12);
        assert!((cpt(&curve, 0.8) - 0.8).abs() < 1e-12);
    }

    #[test]
    fn ci_uses_student_t() {
        let (mean, ci) = mean_ci95(&[1.0, 2.0, 3.0]);
        assert_eq!(mean, 2.0);
        // t_{0.975, 2} = 4.302653; sd = 1; half-width = 4.302653 / sqrt(3).
        assert!((ci.unwrap()[1] - 2.0 - 4.302653 / 3f64.sqrt()).abs() < 1e-5);
        // One seed says nothing of the spread between seeds.
        assert_eq!(mean_ci95(&[5.0]), (5.0, None));
    }
}
