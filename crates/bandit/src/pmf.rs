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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    fn sums_to_one(p: &[f64]) -> bool {
        (p.iter().sum::<f64>() - 1.0).abs() < 1e-12 && p.iter().all(|&x| x >= 0.0)
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
