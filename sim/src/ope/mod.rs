//! Off-policy evaluation: what a candidate policy would have earned on a decision log.
//!
//! The candidate runs along the log in order. On each row it computes its PMF over the
//! arms from what came before (then learns from the logged outcome, unless frozen), so the
//! estimators target the mean value of the candidate's sequence of policies: IPS and DR
//! are unbiased for it given true propensities, and replay under uniform logging (the
//! martingale argument of Dudík et al. 2012 and Li et al. 2011); the others trade bias
//! for variance, as each one's docs say.
//!
//! One [`Estimator`] trait: an estimator only states its per-row terms and how their means
//! combine; the value, the bootstrap interval, the analytic (delta-method) interval and the
//! weight diagnostics are written once, in this module.
//!
//! Notation: on row `i` the logger chose `a_i` with propensity `mu_i`; the candidate gives
//! it probability `pi_i(a_i)`; `w_i = min(pi_i(a_i) / mu_i, clip)`; `r_i` is the observed
//! metric; `q(x, a)` is the cross-fitted reward model and `dm_i = sum_a pi_i(a) q(x_i, a)`.

mod candidate;
mod estimators;
mod evaluate;
mod resample;
mod reward_model;

pub use candidate::{
    chunk_inputs, inputs_for, report_metric, run_candidate, Candidate, CandidateRun, Metric, MetricReport,
    MetricStream,
};
pub use estimators::{all_estimators, estimator_by_name, Dm, Dr, Ips, Replay, Sndr, Snips, SwitchDr};
pub use evaluate::{evaluate, EstimatorSettings, OpeSummary};
pub use resample::{poisson_sums, Kernel, PoissonStream, ResampleSums};
pub use reward_model::{CrossFitted, RewardFit};

use serde::Serialize;

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
pub trait Estimator: Sync {
    /// Name, as given to `--estimators`.
    fn name(&self) -> &'static str;

    /// Up to three per-row terms.
    fn terms(&self, inputs: &OpeInputs, i: usize) -> [f64; 3];

    /// How many of the terms [`Estimator::combine`] reads (the rest are 0).
    fn arity(&self) -> usize {
        1
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
}

/// An estimate with its intervals and diagnostics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EstimateReport {
    /// Estimator name.
    pub estimator: String,
    /// Point estimate.
    pub value: f64,
    /// Delta-method (CLT) 95% interval.
    pub ci95_analytic: [f64; 2],
    /// Percentile bootstrap 95% interval, when resamples were asked for.
    pub ci95_bootstrap: Option<[f64; 2]>,
    /// Analytic standard error.
    pub std_error: f64,
}

/// Per-row terms of an estimator, materialized one column per term.
pub type Terms = [Vec<f64>; 3];

/// The estimator's per-row terms on `inputs`.
pub fn terms(estimator: &dyn Estimator, inputs: &OpeInputs) -> Terms {
    let n = inputs.rows();
    let mut columns: Terms = std::array::from_fn(|_| Vec::with_capacity(n));
    for i in 0..n {
        for (column, t) in columns.iter_mut().zip(estimator.terms(inputs, i)) {
            column.push(t);
        }
    }
    columns
}

/// The point estimate, in one pass without materializing the terms (the same sums, in
/// the same order, as [`estimate`] takes).
pub fn value(estimator: &dyn Estimator, inputs: &OpeInputs) -> f64 {
    let n = inputs.rows().max(1) as f64;
    estimator.combine(estimator.sums(inputs).map(|s| s / n))
}

/// Each resample's estimate from its count-weighted sums (empty resamples dropped).
fn resample_values<const N: usize>(estimator: &dyn Estimator, resamples: Vec<ResampleSums<N>>) -> Vec<f64> {
    resamples
        .iter()
        .filter(|r| r.count > 0)
        .map(|r| {
            let mut m = [0.0; 3];
            for (mean, sum) in m.iter_mut().zip(r.sums) {
                *mean = sum / r.count as f64;
            }
            estimator.combine(m)
        })
        .collect()
}

/// The Poisson-bootstrap sums of as many term columns as an estimator reads.
enum Resampling {
    One(PoissonStream<1>),
    Two(PoissonStream<2>),
    Three(PoissonStream<3>),
}

impl Resampling {
    fn new(arity: usize, resamples: usize, seed: u64) -> Self {
        let kernel = Kernel::detect();
        match arity {
            1 => Resampling::One(PoissonStream::new(resamples, seed, kernel)),
            2 => Resampling::Two(PoissonStream::new(resamples, seed, kernel)),
            _ => Resampling::Three(PoissonStream::new(resamples, seed, kernel)),
        }
    }

    /// Adds the next rows (see [`PoissonStream::add`]).
    fn add(&mut self, terms: &Terms) {
        let [t0, t1, t2] = terms.each_ref().map(Vec::as_slice);
        match self {
            Resampling::One(s) => s.add([t0]),
            Resampling::Two(s) => s.add([t0, t1]),
            Resampling::Three(s) => s.add([t0, t1, t2]),
        }
    }

    /// The percentile interval of the resamples' estimates.
    fn interval(self, estimator: &dyn Estimator) -> [f64; 2] {
        let mut values = match self {
            Resampling::One(s) => resample_values(estimator, s.finish()),
            Resampling::Two(s) => resample_values(estimator, s.finish()),
            Resampling::Three(s) => resample_values(estimator, s.finish()),
        };
        // A resample can hold no weight at all (a ratio estimator is then undefined): drop it.
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return [f64::NAN, f64::NAN];
        }
        values.sort_by(f64::total_cmp);
        let at = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize];
        [at(0.025), at(0.975)]
    }
}

/// Percentile bootstrap interval of the estimate from `resamples` Poisson-bootstrap
/// resamples of the rows ([`poisson_sums`] describes the method); the interval depends
/// only on `seed`, not on the thread count.
pub fn bootstrap(estimator: &dyn Estimator, terms: &Terms, resamples: usize, seed: u64) -> [f64; 2] {
    if terms[0].is_empty() || resamples == 0 {
        return [f64::NAN, f64::NAN];
    }
    let mut resampling = Resampling::new(estimator.arity(), resamples, seed);
    resampling.add(terms);
    resampling.interval(estimator)
}

/// Value, analytic interval and (with `resamples > 0`) bootstrap interval.
pub fn estimate(
    estimator: &dyn Estimator,
    inputs: &OpeInputs,
    resamples: usize,
    seed: u64,
) -> EstimateReport {
    let mut stream = EstimateStream::new(estimator, resamples, seed);
    stream.add(inputs);
    stream.finish()
}

/// Rows of terms handed to the bootstrap at once: whole blocks of its streams, and
/// enough of them to share out among threads.
const RESAMPLE_BATCH: usize = 16 * PoissonStream::<1>::BATCH_MULTIPLE;

/// One estimator's [`EstimateReport`] over rows that come a chunk at a time, the same
/// whatever the chunks: the terms' sums (the value), their co-moments (the delta
/// method's variance, by Welford's update) and the bootstrap's resample sums.
pub struct EstimateStream<'a> {
    estimator: &'a dyn Estimator,
    rows: usize,
    sums: [f64; 3],
    mean: [f64; 3],
    comoment: [[f64; 3]; 3],
    /// The bootstrap's sums, and the terms not yet handed to it.
    resampling: Option<(Resampling, Terms)>,
}

impl<'a> EstimateStream<'a> {
    /// No rows yet; `resamples` bootstrap resamples (0: none) drawn from `seed`.
    pub fn new(estimator: &'a dyn Estimator, resamples: usize, seed: u64) -> Self {
        EstimateStream {
            estimator,
            rows: 0,
            sums: [0.0; 3],
            mean: [0.0; 3],
            comoment: [[0.0; 3]; 3],
            resampling: (resamples > 0).then(|| {
                (
                    Resampling::new(estimator.arity(), resamples, seed),
                    Terms::default(),
                )
            }),
        }
    }

    /// Adds the next rows.
    pub fn add(&mut self, inputs: &OpeInputs) {
        for i in 0..inputs.rows() {
            let t = self.estimator.terms(inputs, i);
            self.rows += 1;
            let n = self.rows as f64;
            let before = self.mean;
            for k in 0..3 {
                self.sums[k] += t[k];
                self.mean[k] += (t[k] - before[k]) / n;
            }
            for (j, row) in self.comoment.iter_mut().enumerate() {
                for (k, c) in row.iter_mut().enumerate() {
                    *c += (t[j] - before[j]) * (t[k] - self.mean[k]);
                }
            }
            if let Some((resampling, pending)) = self.resampling.as_mut() {
                for (column, x) in pending.iter_mut().zip(t) {
                    column.push(x);
                }
                if pending[0].len() == RESAMPLE_BATCH {
                    resampling.add(pending);
                    pending.iter_mut().for_each(Vec::clear);
                }
            }
        }
    }

    /// The estimate, with the delta method's standard error: the sample standard
    /// deviation of the linearized influence `grad . (t_i - mean)` over `sqrt(n)`.
    pub fn finish(self) -> EstimateReport {
        let e = self.estimator;
        let n = self.rows;
        let means = self.sums.map(|s| s / n.max(1) as f64);
        let value = e.combine(means);
        let se = if n < 2 {
            f64::NAN
        } else {
            let g = e.gradient(means);
            let var = (0..3)
                .flat_map(|j| (0..3).map(move |k| (j, k)))
                .map(|(j, k)| g[j] * g[k] * self.comoment[j][k])
                .sum::<f64>()
                / (n - 1) as f64;
            (var.max(0.0) / n as f64).sqrt()
        };
        let ci95_bootstrap = self.resampling.map(|(mut resampling, pending)| {
            if n == 0 {
                return [f64::NAN, f64::NAN];
            }
            if !pending[0].is_empty() {
                resampling.add(&pending);
            }
            resampling.interval(e)
        });
        EstimateReport {
            estimator: e.name().to_string(),
            value,
            ci95_analytic: [value - 1.959964 * se, value + 1.959964 * se],
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
#[derive(Debug, Clone, Default)]
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
    pub fn finish(self) -> WeightDiagnostics {
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
