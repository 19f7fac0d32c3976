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
pub fn with_floor(mut pmf: Vec<f64>, floor: f64) -> Vec<f64> {
    let k = pmf.len() as f64;
    let floor = effective_floor(pmf.len(), floor);
    for p in &mut pmf {
        *p = floor + (1.0 - k * floor) * *p;
    }
    pmf
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

/// The widest segment, in standard deviations of any score with mass in it, that the
/// quadrature accepts. The 7-point and 15-point rules can both step over a narrow score's
/// shoulder on a wide segment and agree on the wrong value (a score of spread 0.001
/// beside one of 0.19 lost 9e-5 so at a tolerance of 3e-7); on segments of six spreads
/// they cannot.
const RESOLUTION: f64 = 6.0;

/// How the quadrature works: how far each score reaches (in its standard deviations), the
/// total error allowed, and the resolution.
#[derive(Clone, Copy)]
struct Quadrature {
    reach: f64,
    tolerance: f64,
    resolution: f64,
}

/// The quadrature of the exact PMFs.
const EXACT: Quadrature = Quadrature {
    reach: REACH,
    tolerance: EXACT_TOLERANCE,
    resolution: RESOLUTION,
};

/// The most mass a Beta posterior may hold beyond its reach (else the reach is its
/// support's end).
const TAIL: f64 = 1e-12;

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
/// Gauss-Kronrod (7-15) quadrature over the range where the scores have mass, to a total
/// error estimate below [`EXACT_TOLERANCE`], on segments no wider than six standard
/// deviations of any score with mass in them (a narrower segment first, never a wasted
/// evaluation of a wider one). A score's law is evaluated only within its reach (beyond
/// it, density 0 and distribution 0 or 1). Arms that cannot
/// win (their score's upper reach is below another's lower reach) get 0 and are left out
/// of the products. A score with zero spread is widened to `1e-12` of its mean's scale; a
/// mean of minus infinity never wins.
pub fn gaussian_argmax_pmf(means: &[f64], stds: &[f64]) -> Vec<f64> {
    gaussian_argmax_pmf_by(means, stds, EXACT)
}

/// [`gaussian_argmax_pmf`] by a given quadrature.
fn gaussian_argmax_pmf_by(means: &[f64], stds: &[f64], quadrature: Quadrature) -> Vec<f64> {
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
    let reach = |a: usize| {
        let r = quadrature.reach * spread(a);
        (means[a] - r, means[a] + r)
    };
    let scores = |relevant: &[usize]| NormalScores {
        means: relevant.iter().map(|&a| means[a]).collect(),
        inverse_stds: relevant.iter().map(|&a| 1.0 / spread(a)).collect(),
    };
    argmax_pmf_by_quadrature(k, &playing, quadrature, reach, spread, |_| Vec::new(), scores)
}

/// The exact PMF of Thompson sampling over independent Beta scores shifted by penalties:
/// the probability that arm `k`'s score, `X_k - penalties[k]` with
/// `X_k ~ Beta(alphas[k], betas[k])`, is the largest, by the quadrature of
/// [`gaussian_argmax_pmf`] over where the scores have mass (nine standard deviations either
/// side of each mean, or the support's end where a skewed posterior's tail beyond holds
/// more than `1e-12`), split at each arm's mean and 1 and 3 standard deviations either
/// side of it, so that a peaked posterior is never stepped over.
pub fn beta_argmax_pmf(alphas: &[f64], betas: &[f64], penalties: &[f64]) -> Vec<f64> {
    let k = alphas.len();
    let all: Vec<usize> = (0..k).collect();
    let moments = |a: usize| {
        let (al, be) = (alphas[a], betas[a]);
        let n = al + be;
        (al / n, (al * be / (n * n * (n + 1.0))).sqrt())
    };
    // Where a posterior has its mass: REACH standard deviations either side of its mean,
    // or its support's end where the tail beyond holds more than TAIL (skewed posteriors).
    let reach = |a: usize| {
        let (mean, sd) = moments(a);
        let (lower, upper) = (mean - REACH * sd, mean + REACH * sd);
        let cdf = |x: f64| statrs::function::beta::beta_reg(alphas[a], betas[a], x);
        let lower = if lower > 0.0 && cdf(lower) < TAIL {
            lower
        } else {
            0.0
        };
        let upper = if upper < 1.0 && 1.0 - cdf(upper) < TAIL {
            upper
        } else {
            1.0
        };
        (lower - penalties[a], upper - penalties[a])
    };
    let splits = |a: usize| {
        let (mean, sd) = moments(a);
        let (lower, upper) = reach(a);
        [0.0, -1.0, 1.0, -3.0, 3.0]
            .iter()
            .map(|c| mean + c * sd - penalties[a])
            .filter(|&x| x > lower && x < upper)
            .chain([lower, upper])
            .collect()
    };
    let scores = |relevant: &[usize]| BetaScores {
        alphas: relevant.iter().map(|&a| alphas[a]).collect(),
        betas: relevant.iter().map(|&a| betas[a]).collect(),
        ln_betas: relevant
            .iter()
            .map(|&a| statrs::function::beta::ln_beta(alphas[a], betas[a]))
            .collect(),
        shifts: relevant.iter().map(|&a| penalties[a]).collect(),
    };
    let spread = |a: usize| moments(a).1;
    argmax_pmf_by_quadrature(k, &all, EXACT, reach, spread, splits, scores)
}

/// The argmax PMF over `k` arms of independent scores, of which `playing` may win: each
/// arm's score has its mass within `reach(a)` (lower, upper) and spreads `spread(a)` (the
/// quadrature's segments resolve it), the integral is split at every `splits(a)`, and
/// `laws` gives the densities and distribution functions of a set of arms. The range runs
/// from the highest lower reach (below it some score has no mass, so no arm wins there)
/// to the highest upper reach; an arm whose upper reach is below that range gets 0.
fn argmax_pmf_by_quadrature<S: ScoreLaws>(
    k: usize,
    playing: &[usize],
    quadrature: Quadrature,
    reach: impl Fn(usize) -> (f64, f64),
    spread: impl Fn(usize) -> f64,
    splits: impl Fn(usize) -> Vec<f64>,
    laws: impl Fn(&[usize]) -> S,
) -> Vec<f64> {
    let mut pmf = vec![0.0; k];
    let low = playing
        .iter()
        .map(|&a| reach(a).0)
        .fold(f64::NEG_INFINITY, f64::max);
    let relevant: Vec<usize> = playing.iter().copied().filter(|&a| reach(a).1 >= low).collect();
    if relevant.len() == 1 {
        pmf[relevant[0]] = 1.0;
        return pmf;
    }
    let high = relevant
        .iter()
        .map(|&a| reach(a).1)
        .fold(f64::NEG_INFINITY, f64::max);
    let mut breaks: Vec<f64> = relevant
        .iter()
        .flat_map(|&a| splits(a))
        .filter(|&x| x > low && x < high)
        .chain([low, high])
        .collect();
    breaks.sort_by(f64::total_cmp);
    breaks.dedup();
    let bodies: Vec<Body> = relevant
        .iter()
        .map(|&a| {
            let (lower, upper) = reach(a);
            Body {
                lower,
                upper,
                finest: quadrature.resolution * spread(a),
            }
        })
        .collect();
    let scores = laws(&relevant);
    let mut total = vec![0.0; relevant.len()];
    let mut scratch = Scratch::new(relevant.len());
    for pair in breaks.windows(2) {
        let share = quadrature.tolerance * (pair[1] - pair[0]) / (high - low);
        integrate(
            &scores,
            &bodies,
            (pair[0], pair[1]),
            share,
            0,
            &mut scratch,
            &mut total,
        );
    }
    let sum: f64 = total.iter().sum();
    for (&a, p) in relevant.iter().zip(&total) {
        pmf[a] = (p / sum).max(0.0);
    }
    pmf
}

/// Independent scores, as the quadrature reads them.
trait ScoreLaws {
    /// The number of scores.
    fn len(&self) -> usize;
    /// Score `j`'s density and distribution function at `s`.
    fn law(&self, j: usize, s: f64) -> (f64, f64);
}

/// Independent normal scores, for [`gaussian_argmax_pmf`].
struct NormalScores {
    means: Vec<f64>,
    inverse_stds: Vec<f64>,
}

impl ScoreLaws for NormalScores {
    fn len(&self) -> usize {
        self.means.len()
    }

    fn law(&self, j: usize, s: f64) -> (f64, f64) {
        let inv = self.inverse_stds[j];
        let z = (s - self.means[j]) * inv;
        // Beyond the reach the density is below 1e-17 of its peak and the distribution
        // function within 1e-19 of 0 or 1.
        if z.abs() > REACH {
            return (0.0, if z > 0.0 { 1.0 } else { 0.0 });
        }
        (
            (-0.5 * z * z).exp() * inv / (2.0 * std::f64::consts::PI).sqrt(),
            0.5 * statrs::function::erf::erfc(-z * std::f64::consts::FRAC_1_SQRT_2),
        )
    }
}

/// Independent shifted Beta scores, for [`beta_argmax_pmf`].
struct BetaScores {
    alphas: Vec<f64>,
    betas: Vec<f64>,
    ln_betas: Vec<f64>,
    shifts: Vec<f64>,
}

impl ScoreLaws for BetaScores {
    fn len(&self) -> usize {
        self.alphas.len()
    }

    fn law(&self, j: usize, s: f64) -> (f64, f64) {
        let x = s + self.shifts[j];
        if x <= 0.0 {
            return (0.0, 0.0);
        }
        if x >= 1.0 {
            return (0.0, 1.0);
        }
        let (a, b) = (self.alphas[j], self.betas[j]);
        let density = ((a - 1.0) * x.ln() + (b - 1.0) * (-x).ln_1p() - self.ln_betas[j]).exp();
        (density, statrs::function::beta::beta_reg(a, b, x))
    }
}

/// Where a score has its mass, and the widest segment that resolves it.
struct Body {
    lower: f64,
    upper: f64,
    finest: f64,
}

/// The quadrature's working vectors, one entry per score, allocated once per PMF: a
/// segment's rules are read before its halves are integrated, so every level of the
/// recursion can reuse them.
struct Scratch {
    kronrod: Vec<f64>,
    gauss: Vec<f64>,
    values: Vec<f64>,
    cdf: Vec<f64>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Scratch {
            kronrod: vec![0.0; n],
            gauss: vec![0.0; n],
            values: vec![0.0; n],
            cdf: vec![0.0; n],
        }
    }
}

/// Adds to `out[k]` the integral of `f_k(s) prod_{j != k} F_j(s)` over `[a, b]`, halving
/// the interval until it resolves every score with mass in it (`bodies`) and the 15-point
/// and 7-point rules agree within `tolerance`.
fn integrate<S: ScoreLaws>(
    scores: &S,
    bodies: &[Body],
    (a, b): (f64, f64),
    tolerance: f64,
    depth: u32,
    scratch: &mut Scratch,
    out: &mut [f64],
) {
    let (center, half) = ((a + b) / 2.0, (b - a) / 2.0);
    let resolved = bodies
        .iter()
        .all(|body| body.upper <= a || body.lower >= b || b - a <= body.finest);
    if resolved || depth >= 40 {
        let Scratch {
            kronrod,
            gauss,
            values,
            cdf,
        } = &mut *scratch;
        kronrod.fill(0.0);
        gauss.fill(0.0);
        for (i, &x) in GK_NODES.iter().enumerate() {
            let sides: &[f64] = if x == 0.0 { &[0.0] } else { &[-x, x] };
            for &node in sides {
                integrand(scores, center + half * node, values, cdf);
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
            .zip(gauss.iter())
            .map(|(k, g)| (k - g).abs() * half)
            .sum();
        if error <= tolerance || depth >= 40 {
            for (o, k) in out.iter_mut().zip(kronrod.iter()) {
                *o += k * half;
            }
            return;
        }
    }
    for half in [(a, center), (center, b)] {
        integrate(scores, bodies, half, tolerance / 2.0, depth + 1, scratch, out);
    }
}

/// `f_k(s) prod_{j != k} F_j(s)` for every score `k`, into `out` (`cdf`: scratch).
fn integrand<S: ScoreLaws>(scores: &S, s: f64, out: &mut [f64], cdf: &mut [f64]) {
    let n = scores.len();
    for j in 0..n {
        (out[j], cdf[j]) = scores.law(j, s);
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

    /// Two Beta arms with integer parameters: `P(X_1 > X_0) = sum_{i < a_1}
    /// B(a_0 + i, b_0 + b_1) / ((b_1 + i) B(1 + i, b_1) B(a_0, b_0))` (Miller 2015), from
    /// flat to peaked posteriors; and shifted uniforms: `P(U_0 > U_1 - d) = 1 - (1 - d)^2 / 2`.
    #[test]
    fn two_beta_arms_match_the_closed_forms() {
        use statrs::function::beta::ln_beta;
        for (a0, b0, a1, b1) in [
            (1.0, 1.0, 1.0, 1.0),
            (3.0, 7.0, 4.0, 6.0),
            (20.0, 10.0, 15.0, 12.0),
            (300.0, 100.0, 610.0, 190.0),
            (2.0, 50.0, 40.0, 3.0),
        ] {
            let p1: f64 = (0..a1 as u32)
                .map(|i| {
                    let i = f64::from(i);
                    (ln_beta(a0 + i, b0 + b1) - (b1 + i).ln() - ln_beta(1.0 + i, b1) - ln_beta(a0, b0)).exp()
                })
                .sum();
            let p = beta_argmax_pmf(&[a0, a1], &[b0, b1], &[0.0, 0.0]);
            let tv = (p[1] - p1).abs() + (p[0] - (1.0 - p1)).abs();
            assert!(tv < EXACT_TOLERANCE, "{a0} {b0} {a1} {b1}: {p:?} vs {p1}");
        }
        for d in [0.0, 0.1, 0.5, 0.9] {
            let p = beta_argmax_pmf(&[1.0, 1.0], &[1.0, 1.0], &[0.0, d]);
            let exact = 1.0 - (1.0 - d) * (1.0 - d) / 2.0;
            assert!((p[0] - exact).abs() < EXACT_TOLERANCE, "{d}: {p:?} vs {exact}");
        }
    }

    /// More Beta arms with penalties: within sampling error of 10^6 draws; an arm whose
    /// best score is below another's worst gets exactly 0.
    #[test]
    fn many_beta_arms_match_monte_carlo() {
        let alphas = [5.0, 40.0, 2.0, 120.0, 1.0];
        let betas = [3.0, 30.0, 2.0, 80.0, 9.0];
        let penalties = [0.1, 0.0, 0.05, 0.02, 0.0];
        let exact = beta_argmax_pmf(&alphas, &betas, &penalties);
        assert!(sums_to_one(&exact));
        let laws: Vec<rand_distr::Beta<f64>> = alphas
            .iter()
            .zip(&betas)
            .map(|(a, b)| rand_distr::Beta::new(*a, *b).unwrap())
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let draws = 1_000_000;
        let estimated = monte_carlo_argmax_pmf(5, draws, &mut rng, |rng, scores| {
            for ((s, law), p) in scores.iter_mut().zip(&laws).zip(&penalties) {
                *s = law.sample(rng) - p;
            }
        });
        for (p, q) in exact.iter().zip(&estimated) {
            let se = (p * (1.0 - p) / f64::from(draws)).sqrt();
            assert!(
                (p - q).abs() <= 5.0 * se + EXACT_TOLERANCE,
                "{exact:?} vs {estimated:?}"
            );
        }
        let p = beta_argmax_pmf(&[2.0, 2.0], &[2.0, 2.0], &[0.0, 1.5]);
        assert_eq!(p, vec![1.0, 0.0]);
    }

    /// Against the same integrand resolved far more finely (segments of two standard
    /// deviations, reach 12, error 1e-13): 400 sets of 2 to 12 arms, means clustered within
    /// 0.001 to 0.3 and spreads from 0.0006 to 0.2, narrow arms beside wide ones; and the
    /// narrow-beside-wide case that a quadrature without the resolution rule got wrong by
    /// 9e-5 at a tolerance of 3e-7.
    #[test]
    fn normal_arms_match_a_finer_quadrature() {
        let finer = Quadrature {
            reach: 12.0,
            tolerance: 1e-13,
            resolution: 2.0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let mut cases = vec![(
            vec![0.5015574666938564, 0.5057523651342063, 0.49199312045392607],
            vec![0.0011721369847499522, 0.18705774130066222, 0.002011530797869351],
        )];
        for case in 0..400 {
            let spread = [0.001, 0.01, 0.05, 0.3][case % 4];
            let (means, stds) = (0..2 + case % 11)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    let log_std: f64 = rng.random_range(-1.5..1.0);
                    (0.5 + spread * z, 0.02 * 10f64.powf(log_std))
                })
                .unzip();
            cases.push((means, stds));
        }
        for (means, stds) in cases {
            let p = gaussian_argmax_pmf(&means, &stds);
            let reference = gaussian_argmax_pmf_by(&means, &stds, finer);
            let tv: f64 = p.iter().zip(&reference).map(|(a, b)| (a - b).abs()).sum();
            assert!(tv < EXACT_TOLERANCE, "{means:?} {stds:?}: {p:?} vs {reference:?}");
        }
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
        let p = with_floor(one_hot(5, 3), 0.02);
        assert!(sums_to_one(&p));
        assert!(p.iter().all(|&x| x >= 0.02 - 1e-15));
        assert!((p[3] - (0.02 + 0.9)).abs() < 1e-12);
        let capped = with_floor(one_hot(4, 0), 0.5);
        assert!(capped.iter().all(|&x| (x - 0.25).abs() < 1e-12));
        assert_eq!(with_floor(vec![0.3, 0.7], 0.0), vec![0.3, 0.7]);
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
