//! Off-policy evaluation: what a candidate policy would have earned on a decision log.
//!
//! The candidate runs along the log in order. On each row it computes its PMF over the
//! arms from what came before (then learns from the logged outcome, unless frozen), so the
//! estimators target the mean value of the candidate's sequence of policies: IPS and DR
//! are unbiased for it given true propensities, and replay under uniform logging (the
//! martingale argument of Dudík et al. 2012 and Li et al. 2011); the others trade bias
//! for variance, as each one's docs say. A learning candidate learns from every row,
//! whichever model it would have chosen there: it is valued as a learner fed the whole
//! log, which sees more than it would deployed, where it learns its own choices' outcomes
//! alone (Li et al.'s replay of a learner learns only from the rows it accepts). A frozen
//! candidate has no such gap.
//!
//! The estimators, their analytic intervals and the weight diagnostics are
//! [`quiver_bandit::ope`]'s, which the server's shadow candidates use too; this module adds
//! running a candidate along a log, the cross-fitted reward model `q(x, a)` and the
//! bootstrap interval.

mod candidate;
mod evaluate;
mod resample;
mod reward_model;

pub use candidate::{
    chunk_inputs, inputs_for, report_metric, run_candidate, Candidate, CandidateRun, Metric, MetricReport,
    MetricStream,
};
pub use evaluate::{evaluate, EstimatorSettings, OpeSummary};
pub use resample::{poisson_sums, Kernel, PoissonStream, ResampleSums};
pub use reward_model::{CrossFitted, RewardFit};

pub use quiver_bandit::ope::{
    all_estimators, diagnostics, estimator_by_name, value, Dm, Dr, EstimateReport, Estimator, Ips, OpeInputs,
    Replay, Sndr, Snips, SwitchDr, TermMoments, WeightDiagnostics, WeightStream,
};

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
/// whatever the chunks: the terms' moments ([`TermMoments`]) and the bootstrap's resample
/// sums.
pub struct EstimateStream<'a> {
    estimator: &'a dyn Estimator,
    moments: TermMoments,
    /// The bootstrap's sums, and the terms not yet handed to it.
    resampling: Option<(Resampling, Terms)>,
}

impl<'a> EstimateStream<'a> {
    /// No rows yet; `resamples` bootstrap resamples (0: none) drawn from `seed`, for an
    /// estimator with intervals.
    pub fn new(estimator: &'a dyn Estimator, resamples: usize, seed: u64) -> Self {
        EstimateStream {
            estimator,
            moments: TermMoments::default(),
            resampling: (resamples > 0 && estimator.has_intervals()).then(|| {
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
            self.moments.add(t);
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

    /// The estimate with its analytic interval ([`TermMoments::report`]) and, with
    /// resamples, the bootstrap's.
    pub fn finish(self) -> EstimateReport {
        let e = self.estimator;
        // Resamples of one row that moves the estimate all say the same: no interval.
        let too_few = self.moments.support(e) < 2;
        let ci95_bootstrap = self.resampling.map(|(mut resampling, pending)| {
            if too_few {
                return [f64::NAN, f64::NAN];
            }
            if !pending[0].is_empty() {
                resampling.add(&pending);
            }
            resampling.interval(e)
        });
        self.moments.report(e, ci95_bootstrap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> OpeInputs {
        OpeInputs {
            reward: vec![1.0, 0.0, 1.0, 0.5],
            propensity: vec![0.5, 0.25, 0.5, 0.2],
            target: vec![1.0, 0.5, 0.0, 0.8],
            q_logged: vec![0.6, 0.2, 0.7, 0.4],
            dm: vec![0.7, 0.3, 0.5, 0.6],
            accepted: vec![true, false, false, true],
            clip: f64::INFINITY,
            switch_tau: 3.0,
        }
    }

    #[test]
    fn snips_stays_within_the_reward_range_and_intervals_contain_the_value() {
        let x = inputs();
        let v = value(&Snips, &x);
        assert!((0.0..=1.0).contains(&v));
        let r = estimate(&Snips, &x, 200, 1);
        let [lo, hi] = r.ci95_analytic.unwrap();
        assert!(lo <= v && v <= hi);
        let b = r.ci95_bootstrap.unwrap();
        assert!(b[0] <= b[1]);
    }

    /// A candidate whose arm the log chose once weighs one row: a ratio estimator's value
    /// is that row's reward, and neither interval can say how far it is from the truth.
    /// IPS still averages over every row, so it keeps its intervals.
    #[test]
    fn a_ratio_weighing_one_row_has_no_interval() {
        let n = 3;
        let x = OpeInputs {
            reward: vec![1.0, 0.0, 1.0],
            propensity: vec![1.0; n],
            target: vec![0.0, 0.0, 1.0],
            q_logged: vec![0.5; n],
            dm: vec![0.5; n],
            accepted: vec![false, false, true],
            clip: f64::INFINITY,
            switch_tau: 3.0,
        };
        for estimator in [&Snips as &dyn Estimator, &Replay, &Sndr] {
            let r = estimate(estimator, &x, 200, 1);
            assert!((r.value - 1.0).abs() < 1e-12, "{}: {}", estimator.name(), r.value);
            assert!(r.std_error.is_nan(), "{}: {}", estimator.name(), r.std_error);
            let [lo, hi] = r.ci95_bootstrap.unwrap();
            assert!(lo.is_nan() && hi.is_nan(), "{}: [{lo}, {hi}]", estimator.name());
        }
        // IPS: terms (0, 0, 1), standard error sqrt(1/3 / 3) = 1/3.
        let r = estimate(&Ips, &x, 200, 1);
        assert!((r.std_error - 1.0 / 3.0).abs() < 1e-12, "{}", r.std_error);
        assert!(r.ci95_bootstrap.unwrap()[1] > r.ci95_bootstrap.unwrap()[0]);
    }

    /// The direct method's error is its reward model's, the same in every resample of the
    /// rows: it reports its value with no interval of either kind.
    #[test]
    fn the_direct_method_reports_no_interval() {
        let x = inputs();
        let r = estimate(&Dm, &x, 200, 1);
        assert_eq!(r.value, value(&Dm, &x));
        assert_eq!((r.ci95_analytic, r.ci95_bootstrap), (None, None));
        // Its standard error is still the rows' own, s / sqrt(n) of the terms.
        let n = x.dm.len() as f64;
        let mean = x.dm.iter().sum::<f64>() / n;
        let variance = x.dm.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0);
        assert!(
            (r.std_error - (variance / n).sqrt()).abs() < 1e-12,
            "{}",
            r.std_error
        );
    }

    /// The bootstrap interval of a plain mean against its closed form, `mean +- 1.96 s /
    /// sqrt(n)`: with 4,000 resamples the 2.5% and 97.5% quantiles are each within about 4%
    /// of the half-width (their standard error), so 12% is a tolerance of 3 standard errors.
    #[test]
    fn bootstrap_interval_of_a_mean_matches_the_normal_interval() {
        let n = 20_000;
        let reward: Vec<f64> = (0..n).map(|i| ((i as f64) * 0.618_033_988_75).fract()).collect();
        let x = OpeInputs {
            propensity: vec![1.0; n],
            target: vec![1.0; n],
            q_logged: vec![0.0; n],
            dm: vec![0.0; n],
            accepted: vec![true; n],
            clip: f64::INFINITY,
            switch_tau: 1.0,
            reward,
        };
        let r = estimate(&Ips, &x, 4000, 11);
        let mean = x.reward.iter().sum::<f64>() / n as f64;
        let sd = (x.reward.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        let half = 1.959964 * sd / (n as f64).sqrt();
        let [lo, hi] = r.ci95_bootstrap.unwrap();
        assert!(
            ((mean - lo) / half - 1.0).abs() < 0.12,
            "lower {lo}, mean {mean}, half {half}"
        );
        assert!(
            ((hi - mean) / half - 1.0).abs() < 0.12,
            "upper {hi}, mean {mean}, half {half}"
        );
        assert!((r.std_error * 1.959964 / half - 1.0).abs() < 1e-9);
    }
}
