//! Probability mass functions over the eligible arms: the exploration maths, kept pure.
//!
//! Policies score arms; these functions turn scores into the distribution a decision is
//! drawn from, so that the logged propensity is read off the distribution actually sampled.
//! Every PMF here is a `Vec<f64>` indexed like the eligible arms, non-negative, summing to 1.

use std::cell::RefCell;

use rand::Rng;

use crate::packed::dot;
use crate::vectors::{dispatched, exp};

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

/// How far (in standard deviations) a score's distribution is integrated: beyond it each
/// tail of a normal holds less than `TAIL`, as a Beta score's reach does.
const REACH: f64 = 7.1;

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

/// The most mass a Beta posterior holds beyond each end of its reach.
pub(crate) const TAIL: f64 = 1e-12;

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

/// Nodes of the Gauss-Kronrod 7-15 rule on [-1, 1].
const NODES: usize = 15;

/// The 7-15 rule with its nodes in ascending order, and what a running distribution
/// function needs: `partial[l][i]`, the integral from -1 to node `i` of the Lagrange
/// polynomial that is 1 at node `l` and 0 at the others. With a density's values `f_l` at
/// the nodes, `sum_l partial[l][i] f_l` is its integral up to node `i` (exact for
/// polynomials of degree 14, [`Rule::integrals_to_nodes`]), so a score's distribution
/// function at every node follows from its densities there and its value at the
/// segment's start. Each column ends with the integral up to 1, the Kronrod weight `w_l`:
/// the 16 entries fill whole vectors, and the last sum is the rule's integral.
struct Rule {
    nodes: [f64; NODES],
    kronrod: [f64; NODES],
    /// The 7-point Gauss weights at the odd nodes, 0 elsewhere.
    gauss: [f64; NODES],
    partial: [[f64; NODES + 1]; NODES],
}

impl Rule {
    fn get() -> &'static Rule {
        static RULE: std::sync::OnceLock<Rule> = std::sync::OnceLock::new();
        RULE.get_or_init(Rule::new)
    }

    fn new() -> Rule {
        let mut rule = Rule {
            nodes: [0.0; NODES],
            kronrod: [0.0; NODES],
            gauss: [0.0; NODES],
            partial: [[0.0; NODES + 1]; NODES],
        };
        for i in 0..NODES {
            // GK_NODES is the non-negative half, descending.
            let (half, sign) = if i < 8 { (i, -1.0) } else { (14 - i, 1.0) };
            rule.nodes[i] = sign * GK_NODES[half];
            rule.kronrod[i] = KRONROD_WEIGHTS[half];
            // The Gauss nodes are the odd-indexed Kronrod nodes.
            if half % 2 == 1 {
                rule.gauss[i] = GAUSS_WEIGHTS[half / 2];
            }
        }
        let nodes = rule.nodes;
        let lagrange = |l: usize, u: f64| {
            (0..NODES)
                .filter(|&r| r != l)
                .map(|r| (u - nodes[r]) / (nodes[l] - nodes[r]))
                .product::<f64>()
        };
        // The rule itself on [-1, t_i] integrates the degree-14 polynomials exactly.
        for (l, column) in rule.partial.iter_mut().enumerate() {
            column[NODES] = rule.kronrod[l];
            for (i, entry) in column[..NODES].iter_mut().enumerate() {
                let (mid, half) = ((nodes[i] - 1.0) / 2.0, (nodes[i] + 1.0) / 2.0);
                *entry = half
                    * nodes
                        .iter()
                        .zip(&rule.kronrod)
                        .map(|(t, w)| w * lagrange(l, mid + half * t))
                        .sum::<f64>();
            }
        }
        rule
    }

    /// The integrals from -1 to each node, and last to 1, of the degree-14 polynomial
    /// through `values` at the nodes; a sum of columns, which vectorizes over the nodes.
    #[inline(always)]
    fn integrals_to_nodes(&self, values: &[f64; NODES]) -> [f64; NODES + 1] {
        let mut integrals = [0.0; NODES + 1];
        for (column, value) in self.partial.iter().zip(values) {
            for (integral, entry) in integrals.iter_mut().zip(column) {
                *integral += entry * value;
            }
        }
        integrals
    }
}

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
/// evaluation of a wider one). The segments are taken from left to right and each
/// score's distribution function is carried along them as the integral of its density
/// (read directly once, where the range starts), so only densities are evaluated at the
/// nodes. A score's density is 0 beyond its reach. Arms that cannot
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
        reach: quadrature.reach,
    };
    argmax_pmf_by_quadrature(k, &playing, quadrature, reach, spread, scores)
}

/// The exact PMF of Thompson sampling over independent Beta scores shifted by penalties:
/// the probability that arm `k`'s score, `X_k - penalties[k]` with
/// `X_k ~ Beta(alphas[k], betas[k])`, is the largest, by the quadrature of
/// [`gaussian_argmax_pmf`] over where the scores have mass. A Beta law is sub-Gaussian
/// with variance proxy `1 / (4 (alpha + beta + 1))` (Marchal and Arbel 2017), so beyond
/// `sqrt(ln(1 / TAIL) / (2 (alpha + beta + 1)))` of its mean each tail holds less than
/// `TAIL = 1e-12`, skewed or not; a score's reach is that, within the support.
pub fn beta_argmax_pmf(alphas: &[f64], betas: &[f64], penalties: &[f64]) -> Vec<f64> {
    let k = alphas.len();
    let all: Vec<usize> = (0..k).collect();
    let moments = |a: usize| {
        let (al, be) = (alphas[a], betas[a]);
        let n = al + be;
        (al / n, (al * be / (n * n * (n + 1.0))).sqrt())
    };
    let reach = |a: usize| {
        let (mean, _) = moments(a);
        let tail = ((1.0 / TAIL).ln() / (2.0 * (alphas[a] + betas[a] + 1.0))).sqrt();
        (
            (mean - tail).max(0.0) - penalties[a],
            (mean + tail).min(1.0) - penalties[a],
        )
    };
    let scores = |relevant: &[usize]| {
        let pick = |values: &[f64]| relevant.iter().map(|&a| values[a]).collect();
        BetaScores::new(pick(alphas), pick(betas), pick(penalties))
    };
    let spread = |a: usize| moments(a).1;
    argmax_pmf_by_quadrature(k, &all, EXACT, reach, spread, scores)
}

/// The argmax PMF over `k` arms of independent scores, of which `playing` may win: each
/// arm's score has its mass within `reach(a)` (lower, upper) and spreads `spread(a)` (the
/// quadrature's segments resolve it), and `laws` gives the densities and distribution
/// functions of a set of arms. The range runs from the highest lower reach (below it some
/// score has no mass, so no arm wins there) to the highest upper reach; an arm whose upper
/// reach is below that range gets 0.
fn argmax_pmf_by_quadrature<S: ScoreLaws>(
    k: usize,
    playing: &[usize],
    quadrature: Quadrature,
    reach: impl Fn(usize) -> (f64, f64),
    spread: impl Fn(usize) -> f64,
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
    let mut scratch = Scratch::new(&scores, low);
    integrate(
        &scores,
        &bodies,
        (low, high),
        quadrature.tolerance,
        0,
        &mut scratch,
        &mut total,
    );
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
    /// Score `j`'s density at `s`.
    fn density(&self, j: usize, s: f64) -> f64;
    /// Score `j`'s density at a segment's nodes.
    fn densities(&self, j: usize, nodes: &[f64; NODES], out: &mut [f64; NODES]) {
        for (f, &s) in out.iter_mut().zip(nodes) {
            *f = self.density(j, s);
        }
    }
    /// Score `j`'s distribution function at `s`.
    fn distribution(&self, j: usize, s: f64) -> f64;
}

/// Independent normal scores, for [`gaussian_argmax_pmf`].
struct NormalScores {
    means: Vec<f64>,
    inverse_stds: Vec<f64>,
    /// How far, in standard deviations, each density reaches.
    reach: f64,
}

impl NormalScores {
    fn standardized(&self, j: usize, s: f64) -> f64 {
        (s - self.means[j]) * self.inverse_stds[j]
    }
}

impl ScoreLaws for NormalScores {
    fn len(&self) -> usize {
        self.means.len()
    }

    fn density(&self, j: usize, s: f64) -> f64 {
        normal_density(self.standardized(j, s), self.inverse_stds[j], self.reach)
    }

    fn densities(&self, j: usize, nodes: &[f64; NODES], out: &mut [f64; NODES]) {
        normal_densities(nodes, self.means[j], self.inverse_stds[j], self.reach, out);
    }

    fn distribution(&self, j: usize, s: f64) -> f64 {
        let z = self.standardized(j, s);
        0.5 * statrs::function::erf::erfc(-z * std::f64::consts::FRAC_1_SQRT_2)
    }
}

/// Independent shifted Beta scores, for [`beta_argmax_pmf`].
struct BetaScores {
    alphas: Vec<f64>,
    betas: Vec<f64>,
    ln_betas: Vec<f64>,
    shifts: Vec<f64>,
    /// Each score's index among the distinct shifts.
    shift_of: Vec<usize>,
    /// Per distinct shift, the logarithms at the nodes of the segment last evaluated:
    /// scores with equal penalties (all of them, without a budget) share them, which
    /// leaves one `exp` per score and node.
    node_logs: RefCell<Vec<NodeLogs>>,
}

/// `ln x` and `ln(1 - x)` at a segment's nodes `x = s + shift`; NaN outside (0, 1).
#[derive(Clone, Copy)]
struct NodeLogs {
    /// The segment's first and last node, as computed for (NaN before any).
    segment: (f64, f64),
    ln_x: [f64; NODES],
    ln_1m_x: [f64; NODES],
}

impl BetaScores {
    fn new(alphas: Vec<f64>, betas: Vec<f64>, shifts: Vec<f64>) -> Self {
        let mut distinct: Vec<f64> = Vec::new();
        let shift_of = shifts
            .iter()
            .map(|&shift| {
                distinct.iter().position(|&d| d == shift).unwrap_or_else(|| {
                    distinct.push(shift);
                    distinct.len() - 1
                })
            })
            .collect();
        let unset = NodeLogs {
            segment: (f64::NAN, f64::NAN),
            ln_x: [0.0; NODES],
            ln_1m_x: [0.0; NODES],
        };
        BetaScores {
            ln_betas: alphas
                .iter()
                .zip(&betas)
                .map(|(&a, &b)| statrs::function::beta::ln_beta(a, b))
                .collect(),
            alphas,
            betas,
            shifts,
            shift_of,
            node_logs: RefCell::new(vec![unset; distinct.len()]),
        }
    }

    /// `ln x` and `ln(1 - x)` at score `j`'s `x = s + shift`; NaN outside (0, 1), where the
    /// density is 0.
    fn logs(&self, j: usize, s: f64) -> (f64, f64) {
        let x = s + self.shifts[j];
        if x <= 0.0 || x >= 1.0 {
            (f64::NAN, f64::NAN)
        } else {
            (x.ln(), (-x).ln_1p())
        }
    }

    /// Score `j`'s law: alpha, beta and `ln B(alpha, beta)`.
    fn law(&self, j: usize) -> (f64, f64, f64) {
        (self.alphas[j], self.betas[j], self.ln_betas[j])
    }
}

impl ScoreLaws for BetaScores {
    fn len(&self) -> usize {
        self.alphas.len()
    }

    fn density(&self, j: usize, s: f64) -> f64 {
        let (ln_x, ln_1m_x) = self.logs(j, s);
        beta_density(self.law(j), ln_x, ln_1m_x)
    }

    /// [`ScoreLaws::density`] at each node, the logarithms shared among equal shifts.
    fn densities(&self, j: usize, nodes: &[f64; NODES], out: &mut [f64; NODES]) {
        let mut node_logs = self.node_logs.borrow_mut();
        let logs = &mut node_logs[self.shift_of[j]];
        let segment = (nodes[0], nodes[NODES - 1]);
        if logs.segment != segment {
            for ((&s, ln_x), ln_1m_x) in nodes.iter().zip(&mut logs.ln_x).zip(&mut logs.ln_1m_x) {
                (*ln_x, *ln_1m_x) = self.logs(j, s);
            }
            logs.segment = segment;
        }
        beta_densities(self.law(j), logs, out);
    }

    fn distribution(&self, j: usize, s: f64) -> f64 {
        let x = (s + self.shifts[j]).clamp(0.0, 1.0);
        statrs::function::beta::beta_reg(self.alphas[j], self.betas[j], x)
    }
}

/// The normal density at standard score `z` of a law with `1 / std` `inverse_std`; 0
/// beyond `reach`.
#[inline(always)]
fn normal_density(z: f64, inverse_std: f64, reach: f64) -> f64 {
    let density = exp(-0.5 * z * z) * inverse_std / (2.0 * std::f64::consts::PI).sqrt();
    if z.abs() > reach {
        0.0
    } else {
        density
    }
}

dispatched!(normal_densities => normal_densities_kernel(
    nodes: &[f64; NODES], mean: f64, inverse_std: f64, reach: f64, out: &mut [f64; NODES]
));

#[inline(always)]
fn normal_densities_kernel(
    nodes: &[f64; NODES],
    mean: f64,
    inverse_std: f64,
    reach: f64,
    out: &mut [f64; NODES],
) {
    for i in 0..NODES {
        out[i] = normal_density((nodes[i] - mean) * inverse_std, inverse_std, reach);
    }
}

/// The density of `Beta(alpha, beta)` (`law`: alpha, beta, `ln B(alpha, beta)`) from
/// [`BetaScores::logs`]; 0 where they are NaN, outside the support.
#[inline(always)]
fn beta_density((alpha, beta, ln_beta): (f64, f64, f64), ln_x: f64, ln_1m_x: f64) -> f64 {
    let density = exp((alpha - 1.0) * ln_x + (beta - 1.0) * ln_1m_x - ln_beta);
    if ln_x.is_nan() {
        0.0
    } else {
        density
    }
}

dispatched!(beta_densities => beta_densities_kernel(
    law: (f64, f64, f64), logs: &NodeLogs, out: &mut [f64; NODES]
));

#[inline(always)]
fn beta_densities_kernel(law: (f64, f64, f64), logs: &NodeLogs, out: &mut [f64; NODES]) {
    for ((f, &ln_x), &ln_1m_x) in out.iter_mut().zip(&logs.ln_x).zip(&logs.ln_1m_x) {
        *f = beta_density(law, ln_x, ln_1m_x);
    }
}

/// Where a score has its mass, and the widest segment that resolves it.
struct Body {
    lower: f64,
    upper: f64,
    finest: f64,
}

impl Body {
    fn meets(&self, (a, b): (f64, f64)) -> bool {
        self.upper > a && self.lower < b
    }
}

/// The quadrature's state, one entry per score: each score's distribution function where
/// the next segment starts, and the working values of the segment last evaluated.
struct Scratch {
    start: Vec<f64>,
    /// Whether each score has mass in the segment.
    meets: Vec<bool>,
    /// Each score's density at the segment's nodes.
    densities: Vec<[f64; NODES]>,
    /// Each score's distribution function at the segment's nodes.
    distributions: Vec<[f64; NODES]>,
    /// Each score's integrand `f_k prod_{j != k} F_j` at the nodes.
    values: Vec<[f64; NODES]>,
    /// The integrand's integral over the segment by the 15-point and 7-point rules, per
    /// score (unscaled: times the half-width).
    kronrod: Vec<f64>,
    gauss: Vec<f64>,
    /// Each density's integral over the segment by the two rules (unscaled).
    mass_kronrod: Vec<f64>,
    mass_gauss: Vec<f64>,
}

impl Scratch {
    /// Starts every score's distribution function at `s`.
    fn new<S: ScoreLaws>(scores: &S, s: f64) -> Self {
        let n = scores.len();
        Scratch {
            start: (0..n).map(|j| scores.distribution(j, s)).collect(),
            meets: vec![false; n],
            densities: vec![[0.0; NODES]; n],
            distributions: vec![[0.0; NODES]; n],
            values: vec![[0.0; NODES]; n],
            kronrod: vec![0.0; n],
            gauss: vec![0.0; n],
            mass_kronrod: vec![0.0; n],
            mass_gauss: vec![0.0; n],
        }
    }

    /// Evaluates the rules on `[a, b]` from the distribution functions at `a`; returns the
    /// error estimate: the two rules' difference summed over the integrands and over the
    /// densities (whose integrals carry the distribution functions on).
    fn evaluate<S: ScoreLaws>(&mut self, scores: &S, bodies: &[Body], (a, b): (f64, f64)) -> f64 {
        let (center, half) = ((a + b) / 2.0, (b - a) / 2.0);
        let nodes = Rule::get().nodes.map(|t| center + half * t);
        for (j, body) in bodies.iter().enumerate() {
            self.meets[j] = body.meets((a, b));
            if self.meets[j] {
                scores.densities(j, &nodes, &mut self.densities[j]);
            }
        }
        combine(self, half)
    }

    /// Adds the last segment's integrals to `out` and carries the distribution functions to
    /// its end.
    fn accept(&mut self, (a, b): (f64, f64), out: &mut [f64]) {
        let half = (b - a) / 2.0;
        for (o, k) in out.iter_mut().zip(&self.kronrod) {
            *o += k * half;
        }
        for (s, m) in self.start.iter_mut().zip(&self.mass_kronrod) {
            *s = (*s + m * half).clamp(0.0, 1.0);
        }
    }
}

dispatched!(combine => combine_kernel(scratch: &mut Scratch, half: f64) -> f64);

/// The rest of [`Scratch::evaluate`] once the densities at the nodes of a segment of
/// half-width `half` are in: the distribution functions, the integrands and both rules'
/// integrals of each, and the error estimate.
// Plain indexed loops over scores: closures over them need not inline into the
// target-feature wrappers.
#[inline(always)]
fn combine_kernel(scratch: &mut Scratch, half: f64) -> f64 {
    let rule = Rule::get();
    let n = scratch.start.len();
    for j in 0..n {
        let (density, distribution) = (&mut scratch.densities[j], &mut scratch.distributions[j]);
        if !scratch.meets[j] {
            density.fill(0.0);
            distribution.fill(scratch.start[j]);
            scratch.mass_kronrod[j] = 0.0;
            scratch.mass_gauss[j] = 0.0;
            continue;
        }
        let integrals = rule.integrals_to_nodes(density);
        for i in 0..NODES {
            distribution[i] = (scratch.start[j] + half * integrals[i]).clamp(0.0, 1.0);
        }
        scratch.mass_kronrod[j] = integrals[NODES];
        scratch.mass_gauss[j] = dot(&rule.gauss, density);
    }
    // f_k prod_{j != k} F_j at every node, from the products before and after each
    // score; the nodes run in the inner loops, as independent lanes.
    let mut before = [1.0; NODES];
    for j in 0..n {
        let (values, density, distribution) = (
            &mut scratch.values[j],
            &scratch.densities[j],
            &scratch.distributions[j],
        );
        for i in 0..NODES {
            values[i] = density[i] * before[i];
            before[i] *= distribution[i];
        }
    }
    let mut after = [1.0; NODES];
    for j in (0..n).rev() {
        let (values, distribution) = (&mut scratch.values[j], &scratch.distributions[j]);
        for i in 0..NODES {
            values[i] *= after[i];
            after[i] *= distribution[i];
        }
        scratch.kronrod[j] = dot(&rule.kronrod, values);
        scratch.gauss[j] = dot(&rule.gauss, values);
    }
    let (mut differences, mut mass_differences, mut sizes, mut mass_sizes) = (0.0, 0.0, 0.0, 0.0);
    for j in 0..n {
        differences += (scratch.kronrod[j] - scratch.gauss[j]).abs();
        mass_differences += (scratch.mass_kronrod[j] - scratch.mass_gauss[j]).abs();
        sizes += scratch.kronrod[j].abs();
        mass_sizes += scratch.mass_kronrod[j].abs();
    }
    // A difference within the sums' rounding is no error (QUADPACK's rule), else a
    // tolerance near the rounding would halve segments forever.
    let rounding = 50.0 * f64::EPSILON * (sizes + mass_sizes);
    half * (differences + mass_differences - rounding).max(0.0)
}

/// Adds to `out[k]` the integral of `f_k(s) prod_{j != k} F_j(s)` over `[a, b]`, halving
/// the interval until it resolves every score with mass in it (`bodies`) and the 15-point
/// and 7-point rules agree within `tolerance`. Halves are integrated left before right, so
/// the segments are accepted in order and `scratch` carries the distribution functions
/// from each to the next.
fn integrate<S: ScoreLaws>(
    scores: &S,
    bodies: &[Body],
    (a, b): (f64, f64),
    tolerance: f64,
    depth: u32,
    scratch: &mut Scratch,
    out: &mut [f64],
) {
    let resolved = bodies
        .iter()
        .all(|body| !body.meets((a, b)) || b - a <= body.finest);
    if resolved || depth >= 40 {
        let error = scratch.evaluate(scores, bodies, (a, b));
        if error <= tolerance || depth >= 40 {
            scratch.accept((a, b), out);
            return;
        }
    }
    let center = (a + b) / 2.0;
    for half in [(a, center), (center, b)] {
        integrate(scores, bodies, half, tolerance / 2.0, depth + 1, scratch, out);
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

    /// Scores that share a shift share their nodes' logarithms; each score's densities at
    /// a segment's nodes are still its own, bit for bit, whatever order the scores and
    /// segments are read in, at nodes inside and outside the support.
    #[test]
    fn shared_logarithms_give_each_score_its_own_density() {
        let shifts = vec![0.0, 0.05, 0.0, 0.05, 0.3, 0.0];
        let scores = BetaScores::new(
            vec![2.0, 7.5, 30.0, 1.0, 3.0, 0.5],
            vec![5.0, 2.5, 12.0, 1.0, 40.0, 0.7],
            shifts,
        );
        let segments = [(-0.4, 0.2), (0.1, 0.15), (0.6, 1.1), (-0.4, 0.2)];
        for (round, &(a, b)) in segments.iter().enumerate() {
            let nodes = Rule::get().nodes.map(|t| (a + b) / 2.0 + (b - a) / 2.0 * t);
            for j in (0..scores.len()).map(|j| (j + round) % scores.len()) {
                let mut out = [f64::NAN; NODES];
                scores.densities(j, &nodes, &mut out);
                for (f, &s) in out.iter().zip(&nodes) {
                    assert_eq!(f.to_bits(), scores.density(j, s).to_bits(), "score {j} at {s}");
                }
            }
        }
    }

    /// The partial-integral matrix integrates every polynomial of degree up to 14 exactly
    /// from -1 to each node and to 1.
    #[test]
    fn partial_integrals_are_exact_for_polynomials() {
        let rule = Rule::get();
        for degree in 0..NODES as i32 {
            let values: [f64; NODES] = rule.nodes.map(|t| t.powi(degree));
            let ends = rule.nodes.iter().chain([&1.0]);
            for (t, integral) in ends.zip(rule.integrals_to_nodes(&values)) {
                let exact = (t.powi(degree + 1) - (-1f64).powi(degree + 1)) / f64::from(degree + 1);
                assert!((integral - exact).abs() < 1e-13, "degree {degree} at {t}");
            }
        }
        assert_eq!(rule.gauss.iter().filter(|&&w| w > 0.0).count(), 7);
    }

    /// The integrand with every distribution function read directly (not carried along),
    /// by the 15-point rule on `segments` equal segments of `[low, high]`.
    fn direct_pmf<S: ScoreLaws>(scores: &S, (low, high): (f64, f64), segments: usize) -> Vec<f64> {
        let rule = Rule::get();
        let n = scores.len();
        let mut total = vec![0.0; n];
        let half = (high - low) / segments as f64 / 2.0;
        for segment in 0..segments {
            let center = low + (2 * segment + 1) as f64 * half;
            for (t, w) in rule.nodes.iter().zip(&rule.kronrod) {
                let s = center + half * t;
                let cdf: Vec<f64> = (0..n).map(|j| scores.distribution(j, s)).collect();
                for (k, p) in total.iter_mut().enumerate() {
                    let others: f64 = (0..n).filter(|&j| j != k).map(|j| cdf[j]).product();
                    *p += w * half * scores.density(k, s) * others;
                }
            }
        }
        total
    }

    /// Carried distribution functions against directly read ones on a fine fixed grid: 60
    /// sets of 2 to 12 normal arms (spreads 0.001 to 0.2) and 60 of Beta arms (from three
    /// to a few thousand pseudo-counts, skewed ones included, penalties up to 0.1). Beta
    /// parameters stay at 2 or more here: below, the density's slope is unbounded at the
    /// support's end, where the fixed grid itself converges too slowly to be a reference
    /// (the closed forms cover parameters of 1).
    #[test]
    fn carried_distributions_match_direct_ones() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for case in 0..60 {
            let k = 2 + case % 11;
            let (means, stds): (Vec<f64>, Vec<f64>) = (0..k)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    (0.5 + 0.05 * z, 0.2 * 10f64.powf(rng.random_range(-2.3..0.0)))
                })
                .unzip();
            let scores = NormalScores {
                means: means.clone(),
                inverse_stds: stds.iter().map(|s| 1.0 / s).collect(),
                reach: REACH,
            };
            let range = (0.5 - 13.0 * 0.2, 0.5 + 13.0 * 0.2);
            let reference = direct_pmf(&scores, range, 20_000);
            let p = gaussian_argmax_pmf(&means, &stds);
            let tv: f64 = p.iter().zip(&reference).map(|(a, b)| (a - b).abs()).sum();
            assert!(tv < EXACT_TOLERANCE, "{means:?} {stds:?}: {p:?} vs {reference:?}");
        }
        for case in 0..60 {
            let k = 2 + case % 11;
            let mut alphas = Vec::new();
            let mut betas = Vec::new();
            let mut shifts = Vec::new();
            for _ in 0..k {
                let n = 10f64.powf(rng.random_range(0.0..3.5));
                let mean: f64 = rng.random_range(0.02..0.98);
                alphas.push(2.0 + mean * n);
                betas.push(2.0 + (1.0 - mean) * n);
                shifts.push(if case % 2 == 0 {
                    0.0
                } else {
                    rng.random_range(0.0..0.1)
                });
            }
            let scores = BetaScores::new(alphas.clone(), betas.clone(), shifts.clone());
            let reference = direct_pmf(&scores, (-0.1, 1.0), 4_000);
            let p = beta_argmax_pmf(&alphas, &betas, &shifts);
            let tv: f64 = p.iter().zip(&reference).map(|(a, b)| (a - b).abs()).sum();
            assert!(
                tv < EXACT_TOLERANCE,
                "{alphas:?} {betas:?} {shifts:?}: {p:?} vs {reference:?}"
            );
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
