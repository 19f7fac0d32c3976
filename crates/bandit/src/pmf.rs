//! Probability mass functions over the eligible arms: the exploration maths, kept pure.
//!
//! Policies score arms; these functions turn scores into the distribution a decision is
//! drawn from, so that the logged propensity is read off the distribution actually sampled.
//! Every PMF here is a `Vec<f64>` indexed like the eligible arms, non-negative, summing to 1.

use rand::Rng;

/// Index of the largest score; ties go to the lowest index, so the choice is deterministic.
/// NaN scores never win.
pub fn argmax(scores: &[f64]) -> usize {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] || scores[best].is_nan() {
            best = i;
        }
    }
    best
}

/// The uniform PMF over `k` arms.
pub fn uniform(k: usize) -> Vec<f64> {
    vec![1.0 / k as f64; k]
}

/// All mass on `arm`.
pub fn one_hot(k: usize, arm: usize) -> Vec<f64> {
    let mut p = vec![0.0; k];
    p[arm] = 1.0;
    p
}

/// Epsilon-greedy: `epsilon / k` everywhere plus `1 - epsilon` on the greedy arm.
/// Guarantee: every arm has at least `epsilon / k`.
pub fn epsilon_greedy(k: usize, greedy: usize, epsilon: f64) -> Vec<f64> {
    debug_assert!((0.0..=1.0).contains(&epsilon));
    let mut p = vec![epsilon / k as f64; k];
    p[greedy] += 1.0 - epsilon;
    p
}

/// Mixes a PMF with the uniform one so that every arm has at least `floor`:
/// `p'(a) = floor + (1 - k * floor) * p(a)`. Sampling `p'` is the same as picking a uniform
/// arm with probability `k * floor` and drawing from `p` otherwise.
///
/// The floor is capped at `1 / k` (where `p'` is uniform).
pub fn with_floor(pmf: &[f64], floor: f64) -> Vec<f64> {
    let k = pmf.len() as f64;
    let floor = effective_floor(pmf.len(), floor);
    pmf.iter().map(|p| floor + (1.0 - k * floor) * p).collect()
}

/// The floor actually applied over `k` arms: `min(floor, 1 / k)`.
pub fn effective_floor(k: usize, floor: f64) -> f64 {
    floor.clamp(0.0, 1.0 / k as f64)
}

/// Draws an index from `pmf` by inverting its CDF at `u` in [0, 1).
pub fn sample_index(pmf: &[f64], u: f64) -> usize {
    let mut acc = 0.0;
    for (i, &p) in pmf.iter().enumerate() {
        acc += p;
        if u < acc {
            return i;
        }
    }
    // Rounding can leave the total a hair under 1: fall back to the last arm with mass.
    pmf.iter().rposition(|&p| p > 0.0).unwrap_or(0)
}

/// Estimates a randomized policy's PMF: the share of `draws` samples in which each arm's
/// sampled score is the largest. `sample` fills one sample of all `k` scores. The standard
/// error of each entry is at most `0.5 / sqrt(draws)`.
pub fn monte_carlo_argmax_pmf<R: Rng + ?Sized>(
    k: usize,
    draws: u32,
    rng: &mut R,
    mut sample: impl FnMut(&mut R, &mut [f64]),
) -> Vec<f64> {
    let mut counts = vec![0u32; k];
    let mut scores = vec![0.0; k];
    for _ in 0..draws {
        sample(rng, &mut scores);
        counts[argmax(&scores)] += 1;
    }
    counts.iter().map(|&c| f64::from(c) / f64::from(draws)).collect()
}

/// Total-variation accuracy [`gaussian_argmax_pmf`] integrates to.
pub const EXACT_TOLERANCE: f64 = 1e-7;

/// How far (in standard deviations) a score's distribution is integrated: beyond it a
/// normal's mass is below `1e-19`.
const REACH: f64 = 9.0;

/// Gauss-Kronrod 7-15 nodes on [-1, 1] (the non-negative half; the rule is symmetric),
/// Kronrod weights, and the Gauss weights of the odd nodes.
const GK_NODES: [f64; 8] = [
    0.991_455_371_120_812_6,
    0.949_107_912_342_758_5,
    0.864_864_423_359_769_1,
    0.741_531_185_599_394_4,
    0.586_087_235_467_691_1,
    0.405_845_151_377_397_2,
    0.207_784_955_007_898_5,
    0.0,
];
const KRONROD_WEIGHTS: [f64; 8] = [
    0.022_935_322_010_529_22,
    0.063_092_092_629_978_55,
    0.104_790_010_322_250_2,
    0.140_653_259_715_525_9,
    0.169_004_726_639_267_9,
    0.190_350_578_064_785_4,
    0.204_432_940_075_298_9,
    0.209_482_141_084_727_8,
];
const GAUSS_WEIGHTS: [f64; 4] = [
    0.129_484_966_168_869_7,
    0.279_705_391_489_276_7,
    0.381_830_050_505_118_9,
    0.417_959_183_673_469_4,
];

/// The exact PMF of Thompson sampling over independent normal scores: the probability that
/// arm `k`'s score, `N(means[k], stds[k]^2)`, is the largest,
///
/// ```text
/// p_k = integral of f_k(s) prod_{j != k} F_j(s) ds
/// ```
///
/// (`f`, `F`: the scores' densities and distribution functions), by adaptive
/// Gauss-Kronrod (7-15) quadrature over the range where the scores have mass, split at
/// each arm's mean, to a total error estimate below [`EXACT_TOLERANCE`]. Arms that cannot win (their score's upper reach is below another's
/// lower reach) get 0 and are left out of the products. A score with zero spread is
/// widened to `1e-12` of its mean's scale; a mean of minus infinity never wins.
pub fn gaussian_argmax_pmf(means: &[f64], stds: &[f64]) -> Vec<f64> {
    let k = means.len();
    let mut pmf = vec![0.0; k];
    if let Some(best) = means.iter().position(|m| *m == f64::INFINITY) {
        pmf[best] = 1.0;
        return pmf;
    }
    let playing: Vec<usize> = (0..k).filter(|&a| means[a].is_finite()).collect();
    if playing.is_empty() {
        return uniform(k);
    }
    let spread = |a: usize| stds[a].max(1e-12 * (1.0 + means[a].abs()));
    let low = playing
        .iter()
        .map(|&a| means[a] - REACH * spread(a))
        .fold(f64::NEG_INFINITY, f64::max);
    let relevant: Vec<usize> = playing
        .into_iter()
        .filter(|&a| means[a] + REACH * spread(a) >= low)
        .collect();
    if relevant.len() == 1 {
        pmf[relevant[0]] = 1.0;
        return pmf;
    }
    let scores = NormalScores {
        means: relevant.iter().map(|&a| means[a]).collect(),
        inverse_stds: relevant.iter().map(|&a| 1.0 / spread(a)).collect(),
    };
    let high = relevant
        .iter()
        .map(|&a| means[a] + REACH * spread(a))
        .fold(f64::NEG_INFINITY, f64::max);
    let mut breaks: Vec<f64> = relevant
        .iter()
        .map(|&a| means[a])
        .filter(|&x| x > low && x < high)
        .chain([low, high])
        .collect();
    breaks.sort_by(f64::total_cmp);
    breaks.dedup();
    let mut total = vec![0.0; relevant.len()];
    for pair in breaks.windows(2) {
        let share = EXACT_TOLERANCE * (pair[1] - pair[0]) / (high - low);
        scores.integrate(pair[0], pair[1], share, 0, &mut total);
    }
    let sum: f64 = total.iter().sum();
    for (&a, p) in relevant.iter().zip(&total) {
        pmf[a] = (p / sum).max(0.0);
    }
    pmf
}

/// Independent normal scores, for [`gaussian_argmax_pmf`].
struct NormalScores {
    means: Vec<f64>,
    inverse_stds: Vec<f64>,
}

impl NormalScores {
    /// Adds to `out[k]` the integral of `f_k(s) prod_{j != k} F_j(s)` over `[a, b]`, halving
    /// the interval until the 15-point and 7-point rules agree within `tolerance`.
    fn integrate(&self, a: f64, b: f64, tolerance: f64, depth: u32, out: &mut [f64]) {
        let (center, half) = ((a + b) / 2.0, (b - a) / 2.0);
        let n = self.means.len();
        let mut kronrod = vec![0.0; n];
        let mut gauss = vec![0.0; n];
        let (mut values, mut cdf) = (vec![0.0; n], vec![0.0; n]);
        for (i, &x) in GK_NODES.iter().enumerate() {
            let sides: &[f64] = if x == 0.0 { &[0.0] } else { &[-x, x] };
            for &node in sides {
                self.integrand(center + half * node, &mut values, &mut cdf);
                for (c, v) in values.iter().enumerate() {
                    kronrod[c] += KRONROD_WEIGHTS[i] * v;
                    // The Gauss nodes are the odd-indexed Kronrod nodes.
                    if i % 2 == 1 {
                        gauss[c] += GAUSS_WEIGHTS[i / 2] * v;
                    }
                }
            }
        }
        let error: f64 = kronrod
            .iter()
            .zip(&gauss)
            .map(|(k, g)| (k - g).abs() * half)
            .sum();
        if error <= tolerance || depth >= 40 {
            for (o, k) in out.iter_mut().zip(&kronrod) {
                *o += k * half;
            }
            return;
        }
        self.integrate(a, center, tolerance / 2.0, depth + 1, out);
        self.integrate(center, b, tolerance / 2.0, depth + 1, out);
    }

    /// `f_k(s) prod_{j != k} F_j(s)` for every arm `k`, into `out` (`cdf`: scratch).
    fn integrand(&self, s: f64, out: &mut [f64], cdf: &mut [f64]) {
        let n = self.means.len();
        for (j, (m, inv)) in self.means.iter().zip(&self.inverse_stds).enumerate() {
            let z = (s - m) * inv;
            cdf[j] = 0.5 * statrs::function::erf::erfc(-z * std::f64::consts::FRAC_1_SQRT_2);
            out[j] = (-0.5 * z * z).exp() * inv / (2.0 * std::f64::consts::PI).sqrt();
        }
        // The product of the others' CDFs, from products before and after each arm.
        let mut before = 1.0;
        for j in 0..n {
            out[j] *= before;
            before *= cdf[j];
        }
        let mut after = 1.0;
        for j in (0..n).rev() {
            out[j] *= after;
            after *= cdf[j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    fn sums_to_one(p: &[f64]) -> bool {
        (p.iter().sum::<f64>() - 1.0).abs() < 1e-12 && p.iter().all(|&x| x >= 0.0)
    }

    /// Two arms: `P(X_1 > X_2) = Phi((m_1 - m_2) / sqrt(s_1^2 + s_2^2))`, over spreads from
    /// equal to 10^4 apart and gaps from none to far.
    #[test]
    fn two_normal_arms_match_the_closed_form() {
        let phi = |z: f64| 0.5 * statrs::function::erf::erfc(-z / std::f64::consts::SQRT_2);
        for (m1, s1, m2, s2) in [
            (0.0, 1.0, 0.0, 1.0),
            (0.3, 0.1, 0.2, 0.1),
            (0.5, 0.001, 0.49, 0.2),
            (0.5, 10.0, 0.2, 0.001),
            (0.8, 0.05, 0.1, 0.05),
            (-3.0, 2.0, 4.0, 0.5),
        ] {
            let p = gaussian_argmax_pmf(&[m1, m2], &[s1, s2]);
            let exact = phi((m1 - m2) / (s1 * s1 + s2 * s2).sqrt());
            let tv = (p[0] - exact).abs() + (p[1] - (1.0 - exact)).abs();
            assert!(tv < EXACT_TOLERANCE, "{m1} {s1} {m2} {s2}: {p:?} vs {exact}");
        }
    }

    /// More arms: within sampling error of 10^6 draws (5 standard errors), and symmetric
    /// arms share equally.
    #[test]
    fn many_normal_arms_match_monte_carlo() {
        let means = [0.5, 0.45, 0.55, 0.2, 0.52];
        let stds = [0.05, 0.1, 0.02, 0.3, 0.04];
        let exact = gaussian_argmax_pmf(&means, &stds);
        assert!(sums_to_one(&exact));
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let draws = 1_000_000;
        let estimated = monte_carlo_argmax_pmf(5, draws, &mut rng, |rng, scores| {
            for ((s, m), sd) in scores.iter_mut().zip(&means).zip(&stds) {
                let z: f64 = StandardNormal.sample(rng);
                *s = m + sd * z;
            }
        });
        for (p, q) in exact.iter().zip(&estimated) {
            let se = (p * (1.0 - p) / f64::from(draws)).sqrt();
            assert!(
                (p - q).abs() <= 5.0 * se + EXACT_TOLERANCE,
                "{exact:?} vs {estimated:?}"
            );
        }
        let same = gaussian_argmax_pmf(&[0.3; 4], &[0.1; 4]);
        assert!(
            same.iter().all(|p| (p - 0.25).abs() < EXACT_TOLERANCE),
            "{same:?}"
        );
    }

    /// An arm far below another's reach gets exactly 0; a mean of minus infinity never
    /// wins; plus infinity always does.
    #[test]
    fn hopeless_and_certain_arms() {
        let p = gaussian_argmax_pmf(&[0.9, 0.1, f64::NEG_INFINITY], &[0.01, 0.01, 1.0]);
        assert_eq!(p, vec![1.0, 0.0, 0.0]);
        let p = gaussian_argmax_pmf(&[0.9, f64::INFINITY], &[0.01, 0.01]);
        assert_eq!(p, vec![0.0, 1.0]);
    }

    #[test]
    fn argmax_breaks_ties_low_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(argmax(&[f64::NAN, 0.5, 0.2]), 1);
        assert_eq!(argmax(&[f64::NEG_INFINITY, f64::INFINITY]), 1);
    }

    #[test]
    fn epsilon_greedy_gives_every_arm_its_share() {
        let p = epsilon_greedy(4, 2, 0.2);
        assert!(sums_to_one(&p));
        for (got, want) in p.iter().zip([0.05, 0.05, 0.85, 0.05]) {
            assert!((got - want).abs() < 1e-12);
        }
    }

    #[test]
    fn floor_holds_and_is_capped_at_uniform() {
        let p = with_floor(&one_hot(5, 3), 0.02);
        assert!(sums_to_one(&p));
        assert!(p.iter().all(|&x| x >= 0.02 - 1e-15));
        assert!((p[3] - (0.02 + 0.9)).abs() < 1e-12);
        let capped = with_floor(&one_hot(4, 0), 0.5);
        assert!(capped.iter().all(|&x| (x - 0.25).abs() < 1e-12));
        assert_eq!(with_floor(&[0.3, 0.7], 0.0), vec![0.3, 0.7]);
    }

    #[test]
    fn inverse_cdf_sampling_hits_each_interval() {
        let p = [0.2, 0.0, 0.5, 0.3];
        assert_eq!(sample_index(&p, 0.0), 0);
        assert_eq!(sample_index(&p, 0.19), 0);
        assert_eq!(sample_index(&p, 0.2), 2);
        assert_eq!(sample_index(&p, 0.69), 2);
        assert_eq!(sample_index(&p, 0.7), 3);
        assert_eq!(sample_index(&[0.5, 0.5 - 1e-17], 0.999_999_999_999_999_9), 1);
    }

    #[test]
    fn monte_carlo_pmf_of_gaussian_scores_matches_the_closed_form() {
        let gaussian = |means: &'static [f64], stds: &'static [f64], draws, rng: &mut ChaCha8Rng| {
            monte_carlo_argmax_pmf(means.len(), draws, rng, |rng, scores| {
                for (a, s) in scores.iter_mut().enumerate() {
                    let z: f64 = StandardNormal.sample(rng);
                    *s = means[a] + stds[a] * z;
                }
            })
        };
        // P(X1 > X0) for X0 ~ N(0, 1), X1 ~ N(0.5, 1) is Phi(0.5 / sqrt(2)) = 0.638163.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let p = gaussian(&[0.0, 0.5], &[1.0, 1.0], 40_000, &mut rng);
        assert!(sums_to_one(&p));
        let se = (0.638163f64 * (1.0 - 0.638163) / 40_000.0).sqrt();
        assert!((p[1] - 0.638163).abs() < 4.0 * se, "{p:?}");
        // A zero-variance arm far ahead always wins.
        let p = gaussian(&[1.0, 0.0, -1.0], &[0.0, 0.1, 0.1], 100, &mut rng);
        assert_eq!(p, vec![1.0, 0.0, 0.0]);
    }
}
