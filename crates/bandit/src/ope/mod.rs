//! Off-policy estimators: what a candidate policy would have earned on decisions another
//! policy made, from the logged propensities. Offline (`quiver ope`, `quiver replay --data
//! <log>`) and online (a route's shadow candidates, [`crate::shadow`]) alike.
//!
//! One [`Estimator`] trait: an estimator only states its per-row terms and how their means
//! combine; the value, the analytic (delta-method) interval and the weight diagnostics are
//! written once, here ([`TermMoments`], [`WeightStream`]).
//!
//! Notation: on row `i` the logger chose `a_i` with propensity `mu_i`; the candidate gives
//! it probability `pi_i(a_i)`; `w_i = min(pi_i(a_i) / mu_i, clip)`; `r_i` is the observed
//! metric; `q(x, a)` is a reward model that did not see row `i` and
//! `dm_i = sum_a pi_i(a) q(x_i, a)`.

mod estimators;

pub use estimators::{all_estimators, estimator_by_name, Dm, Dr, Ips, Replay, Sndr, Snips, SwitchDr};

use serde::{Deserialize, Serialize};

/// The normal quantile of a two-sided 95% interval.
pub const Z95: f64 = 1.959964;

/// The seed of a candidate run beside (or along the log of) a logger seeded `seed`. A
/// learner's draw for a decision comes from its seed and the decision's number, and a
/// candidate numbers its decisions as the logger did: under the logger's own seed, a
/// randomized candidate would repeat the logger's draws, and replay would accept far more
/// than its share of rows. The tag keeps the two streams apart (a bijection, so distinct
/// seeds stay distinct).
pub fn candidate_seed(seed: u64) -> u64 {
    seed ^ 0x6a09_e667_f3bc_c908
}

/// Everything the estimators read, one entry per row.
#[derive(Debug, Clone, Default)]
pub struct OpeInputs {
    /// Observed metric of the logged arm.
    pub reward: Vec<f64>,
    /// Logging propensity of the logged arm.
    pub propensity: Vec<f64>,
    /// Candidate's probability of the logged arm.
    pub target: Vec<f64>,
    /// Reward model's prediction for the logged arm.
    pub q_logged: Vec<f64>,
    /// Candidate's expected reward under the reward model, `sum_a pi(a) q(x, a)`.
    pub dm: Vec<f64>,
    /// Whether the candidate's own draw matched the logged arm (replay).
    pub accepted: Vec<bool>,
    /// Largest importance weight (IPS clipping); `inf` for none.
    pub clip: f64,
    /// Switch-DR's threshold on the weight.
    pub switch_tau: f64,
}

impl OpeInputs {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.reward.len()
    }

    /// The clipped importance weight of row `i`.
    pub fn weight(&self, i: usize) -> f64 {
        (self.target[i] / self.propensity[i]).min(self.clip)
    }
}

/// An off-policy estimator, defined by per-row terms whose means it combines.
pub trait Estimator: Sync + Send {
    /// Name, as given to `--estimators`.
    fn name(&self) -> &'static str;

    /// Up to three per-row terms.
    fn terms(&self, inputs: &OpeInputs, i: usize) -> [f64; 3];

    /// How many of the terms [`Estimator::combine`] reads (the rest are 0).
    fn arity(&self) -> usize {
        1
    }

    /// The term a ratio estimator divides by, if it is one: only the rows where that term
    /// is not 0 move the estimate.
    fn denominator(&self) -> Option<usize> {
        None
    }

    /// The sums of the terms over all rows. Written once here, but compiled for each
    /// estimator, so `terms` is a direct, inlined call rather than one virtual call per row.
    fn sums(&self, inputs: &OpeInputs) -> [f64; 3] {
        let mut sums = [0.0; 3];
        for i in 0..inputs.rows() {
            for (sum, t) in sums.iter_mut().zip(self.terms(inputs, i)) {
                *sum += t;
            }
        }
        sums
    }

    /// The estimate from the terms' means; by default the mean of the first term.
    fn combine(&self, means: [f64; 3]) -> f64 {
        means[0]
    }

    /// The gradient of [`Estimator::combine`] at `means` (for the delta method).
    fn gradient(&self, _means: [f64; 3]) -> [f64; 3] {
        [1.0, 0.0, 0.0]
    }

    /// Whether the estimator is unbiased given true propensities.
    fn unbiased(&self) -> bool;

    /// Whether resampling the rows measures the estimate's error, so that it has intervals.
    /// Not the direct method's: its error is the reward model's bias, which is the same in
    /// every resample.
    fn has_intervals(&self) -> bool {
        true
    }
}

/// An estimate with its intervals and diagnostics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EstimateReport {
    /// Estimator name.
    pub estimator: String,
    /// Point estimate.
    pub value: f64,
    /// Delta-method (CLT) 95% interval; none where resampling the rows does not measure the
    /// error ([`Estimator::has_intervals`]).
    pub ci95_analytic: Option<[f64; 2]>,
    /// Percentile bootstrap 95% interval, when resamples were asked for (and the estimator
    /// has intervals).
    pub ci95_bootstrap: Option<[f64; 2]>,
    /// Analytic standard error of the terms' mean (for the direct method, of its
    /// predictions over the rows alone).
    pub std_error: f64,
}

/// The point estimate, in one pass without materializing the terms (NaN without rows).
pub fn value(estimator: &dyn Estimator, inputs: &OpeInputs) -> f64 {
    let n = inputs.rows() as f64;
    estimator.combine(estimator.sums(inputs).map(|s| s / n))
}

/// An estimator's terms over rows that come one at a time: their sums (the value) and
/// co-moments (the delta method's variance, by Welford's update), the same whatever the
/// chunks the rows come in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TermMoments {
    rows: usize,
    /// Rows where each term is not 0.
    #[serde(default)]
    nonzero_rows: [usize; 3],
    sums: [f64; 3],
    mean: [f64; 3],
    comoment: [[f64; 3]; 3],
}

impl TermMoments {
    /// Adds one row's terms.
    pub fn add(&mut self, t: [f64; 3]) {
        self.rows += 1;
        let n = self.rows as f64;
        let before = self.mean;
        for k in 0..3 {
            self.nonzero_rows[k] += usize::from(t[k] != 0.0);
            self.sums[k] += t[k];
            self.mean[k] += (t[k] - before[k]) / n;
        }
        for (j, row) in self.comoment.iter_mut().enumerate() {
            for (k, c) in row.iter_mut().enumerate() {
                *c += (t[j] - before[j]) * (t[k] - self.mean[k]);
            }
        }
    }

    /// Adds every row of `inputs` as `estimator` states its terms.
    pub fn add_rows(&mut self, estimator: &dyn Estimator, inputs: &OpeInputs) {
        for i in 0..inputs.rows() {
            self.add(estimator.terms(inputs, i));
        }
    }

    /// Rows added.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Rows that move `estimator`'s estimate: a ratio's, those where its denominator is
    /// not 0 (a candidate's arm logged once gives a ratio one row, whose influence is 0);
    /// every row otherwise.
    pub fn support(&self, estimator: &dyn Estimator) -> usize {
        estimator
            .denominator()
            .map_or(self.rows, |k| self.nonzero_rows[k])
    }

    /// The estimate (NaN without rows), with the delta method's standard error: the sample
    /// standard deviation of the linearized influence `grad . (t_i - mean)` over `sqrt(n)`
    /// (NaN under two rows of [`TermMoments::support`]), and `ci95_bootstrap` as given.
    pub fn report(&self, estimator: &dyn Estimator, ci95_bootstrap: Option<[f64; 2]>) -> EstimateReport {
        let n = self.rows;
        let means = self.sums.map(|s| s / n as f64);
        let value = estimator.combine(means);
        let se = if self.support(estimator) < 2 {
            f64::NAN
        } else {
            let g = estimator.gradient(means);
            let var = (0..3)
                .flat_map(|j| (0..3).map(move |k| (j, k)))
                .map(|(j, k)| g[j] * g[k] * self.comoment[j][k])
                .sum::<f64>()
                / (n - 1) as f64;
            (var.max(0.0) / n as f64).sqrt()
        };
        EstimateReport {
            estimator: estimator.name().to_string(),
            value,
            ci95_analytic: estimator
                .has_intervals()
                .then_some([value - Z95 * se, value + Z95 * se]),
            ci95_bootstrap,
            std_error: se,
        }
    }
}

/// Importance-weight diagnostics of a candidate against a log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightDiagnostics {
    /// Rows.
    pub rows: usize,
    /// Mean weight; 1 in expectation when the logger covers the candidate.
    pub mean_weight: f64,
    /// Largest weight before clipping.
    pub max_weight: f64,
    /// Effective sample size `(sum w)^2 / sum w^2` (Kish).
    pub effective_sample_size: f64,
    /// Share of rows whose weight was clipped.
    pub clipped_share: f64,
    /// Rows where the candidate's draw matched the logged arm (replay).
    pub replay_accepted: usize,
}

/// Weight diagnostics.
pub fn diagnostics(inputs: &OpeInputs) -> WeightDiagnostics {
    let mut stream = WeightStream::default();
    stream.add(inputs);
    stream.finish()
}

/// [`WeightDiagnostics`] over rows that come a chunk at a time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WeightStream {
    rows: usize,
    sum: f64,
    sum_sq: f64,
    max_raw: f64,
    clipped: usize,
    accepted: usize,
}

impl WeightStream {
    /// Adds the next rows.
    pub fn add(&mut self, inputs: &OpeInputs) {
        for i in 0..inputs.rows() {
            let raw = inputs.target[i] / inputs.propensity[i];
            let w = inputs.weight(i);
            self.rows += 1;
            self.sum += w;
            self.sum_sq += w * w;
            self.max_raw = self.max_raw.max(raw);
            self.clipped += usize::from(raw > inputs.clip);
            self.accepted += usize::from(inputs.accepted[i]);
        }
    }

    /// The diagnostics.
    pub fn finish(&self) -> WeightDiagnostics {
        let n = self.rows.max(1) as f64;
        WeightDiagnostics {
            rows: self.rows,
            mean_weight: self.sum / n,
            max_weight: self.max_raw,
            effective_sample_size: if self.sum_sq > 0.0 {
                self.sum * self.sum / self.sum_sq
            } else {
                0.0
            },
            clipped_share: self.clipped as f64 / n,
            replay_accepted: self.accepted,
        }
    }
}
