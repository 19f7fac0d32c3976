//! Priors fitted offline: what a table of past outcomes says about each arm's quality,
//! in the form a learner starts from.
//!
//! For arm `a` with `n` observed rows `(x_i, r_i)` (every row of a wide evaluation table,
//! or the rows of a log where `a` was chosen), the fit is a ridge regression that leaves
//! the bias (feature 0) unshrunk:
//!
//! ```text
//! P = X'X + lambda_a D,  D = diag(0, 1, ..., 1)      (posterior precision, in units of noise)
//! theta = P^-1 X'r                                   (posterior mean)
//! ```
//!
//! `lambda_a` is chosen per arm by `k`-fold cross-validation of the squared error over a
//! log grid ([`LAMBDA_GRID`]); the held-out error is computed in closed form from the
//! folds' sufficient statistics, `sum r^2 - 2 theta'X'r + theta'X'X theta`, so the fit
//! never keeps the rows.
//!
//! A learner adds the prior as pseudo-observations, scaled by `s = min(1, cap / n)`:
//! linear policies take `A += s P`, `b += s X'r` (the Gaussian prior `N(theta, (sP)^-1)`,
//! Bishop 2006, section 3.3), non-contextual ones `count += s n`, `sum += s sum r`. The cap
//! bounds how many observations the table counts as, so that live traffic that differs
//! from the table moves the estimate within about `cap` requests; weighting supervised
//! warm-start data against bandit feedback is studied by Zhang, Agarwal, Daume, Langford
//! and Negahban (2019), "Warm-starting contextual bandits".

use std::collections::BTreeMap;

use nalgebra::{Cholesky, DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::arm::Arm;
use crate::error::{ErrorKind, Result};
use crate::spend::SpendCurve;
use crate::usage::UsagePrior;

/// Format version of [`Priors`] files.
pub const PRIORS_VERSION: u32 = 1;

/// Default [`Priors::cap`]: a table counts as at most this many observations per arm.
pub const DEFAULT_PRIOR_CAP: f64 = 2000.0;

/// Refuses a cap that is not a number of observations of at least 1.
pub fn check_cap(cap: f64) -> Result<()> {
    if cap >= 1.0 && cap.is_finite() {
        return Ok(());
    }
    Err(ErrorKind::InvalidConfig(format!(
        "the priors' cap is {cap}; it must be a number of observations, at least 1"
    ))
    .into())
}

/// Cross-validation folds of the ridge choice.
pub const FOLDS: usize = 5;

/// The ridge values cross-validation chooses from.
pub const LAMBDA_GRID: [f64; 9] = [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0];

/// A ridge regression's prior on its coefficients: `s P` and `s X'y` (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RidgePrior {
    /// The ridge cross-validation chose.
    pub lambda: f64,
    /// `s P`, its upper triangle row by row.
    pub precision: Vec<f64>,
    /// `s X'y`.
    pub moment: Vec<f64>,
}

/// One arm's prior: capped sufficient statistics of its quality and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmPrior {
    /// Rows of the table behind the prior, before the cap.
    pub rows: f64,
    /// Observations the prior counts as, `s n`.
    pub observations: f64,
    /// `s sum r`.
    pub sum: f64,
    /// `s sum r^2`.
    pub sum_sq: f64,
    /// Quality on the context.
    pub quality: RidgePrior,
    /// What the rows cost, scaled by `s` (empty when the table has no costs): arms without
    /// prices expect `tokens * cost_usd / input_tokens` from it until their own
    /// observations pool in (see [`crate::usage`]).
    #[serde(default)]
    pub usage: UsagePrior,
    /// What that per-token estimate missed on each row, in USD, on the context: the start
    /// of the learner's cost correction for the arm without prices.
    #[serde(default)]
    pub cost_correction: Option<RidgePrior>,
    /// What the arm's mean answer missed on each row, in tokens (those the row's cost
    /// implies at the arm's list prices), on the context: the start of the learner's cost
    /// correction for the arm with prices. Absent when the table had no prices for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_correction: Option<RidgePrior>,
}

/// Priors for the arms of one route, fitted from one table in one context definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Priors {
    /// [`PRIORS_VERSION`] when written.
    pub version: u32,
    /// The featurizer definition the contexts were built with
    /// ([`crate::Featurizer::definition`]); a route with another one cannot use the priors.
    pub context: String,
    /// The task labels whose one-hot the contexts carried as their first caller features,
    /// in order (a table's, fitted with its task as a feature); none without. The context's
    /// definition counts them but does not name them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// The feature dimension.
    pub dim: usize,
    /// The cap on observations per arm the fit applied.
    pub cap: f64,
    /// What the priors were fitted from (file names, row counts).
    pub source: String,
    /// Per arm id.
    pub arms: BTreeMap<String, ArmPrior>,
    /// What the table's rows would cost choosing by what these priors expect at each cost
    /// weight: where a budget's pacer starts. Absent where the table says nothing of it (a
    /// log: only the chosen arm's cost is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<SpendCurve>,
}

/// Sufficient statistics of one arm's rows, one set per fold.
#[derive(Debug, Clone)]
pub struct FoldStatistics {
    dim: usize,
    xtx: Vec<DMatrix<f64>>,
    xtr: Vec<DVector<f64>>,
    rows: Vec<f64>,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
}

impl FoldStatistics {
    /// Empty statistics in dimension `dim`.
    pub fn new(dim: usize) -> Self {
        FoldStatistics {
            dim,
            xtx: vec![DMatrix::zeros(dim, dim); FOLDS],
            xtr: vec![DVector::zeros(dim); FOLDS],
            rows: vec![0.0; FOLDS],
            sum: vec![0.0; FOLDS],
            sum_sq: vec![0.0; FOLDS],
        }
    }

    /// Adds row `row` (its number picks the fold) with features `x` and quality `r`.
    pub fn add(&mut self, row: usize, x: &[f64], r: f64) {
        let fold = row % FOLDS;
        let xv = DVector::from_column_slice(x);
        self.xtx[fold].syger(1.0, &xv, &xv, 1.0);
        self.xtr[fold].axpy(r, &xv, 1.0);
        self.rows[fold] += 1.0;
        self.sum[fold] += r;
        self.sum_sq[fold] += r * r;
    }

    /// Rows added.
    pub fn rows(&self) -> f64 {
        self.rows.iter().sum()
    }

    /// The statistics of every fold but `skip` (all of them for `None`).
    fn pooled(&self, skip: Option<usize>) -> (DMatrix<f64>, DVector<f64>) {
        let mut xtx = DMatrix::zeros(self.dim, self.dim);
        let mut xtr = DVector::zeros(self.dim);
        for fold in (0..FOLDS).filter(|f| Some(*f) != skip) {
            xtx += &self.xtx[fold];
            xtr += &self.xtr[fold];
        }
        // `syger` fills the lower triangle only.
        xtx.fill_upper_triangle_with_lower_triangle();
        (xtx, xtr)
    }

    /// The held-out squared error of ridge `lambda`, summed over the folds.
    fn cross_validated_error(&self, lambda: f64) -> f64 {
        (0..FOLDS)
            .filter(|&f| self.rows[f] > 0.0)
            .map(|f| {
                let (xtx, xtr) = self.pooled(Some(f));
                let Some(theta) = ridge_solve(xtx, &xtr, lambda) else {
                    return f64::INFINITY;
                };
                let mut held_xtx = self.xtx[f].clone();
                held_xtx.fill_upper_triangle_with_lower_triangle();
                self.sum_sq[f] - 2.0 * theta.dot(&self.xtr[f]) + (held_xtx * &theta).dot(&theta)
            })
            .sum()
    }

    /// The arm's prior: the quality ridge with the lowest cross-validated error, scaled
    /// to count as at most `cap` observations. `None` without rows.
    pub fn fit(&self, cap: f64) -> Option<ArmPrior> {
        let rows = self.rows();
        if rows == 0.0 {
            return None;
        }
        let scale = (cap / rows).min(1.0);
        Some(ArmPrior {
            rows,
            observations: rows * scale,
            sum: self.sum.iter().sum::<f64>() * scale,
            sum_sq: self.sum_sq.iter().sum::<f64>() * scale,
            quality: self.fit_ridge(scale)?,
            usage: UsagePrior::default(),
            cost_correction: None,
            answer_correction: None,
        })
    }

    /// For each fold, the coefficients of ridge `lambda` fitted on the other folds: what
    /// the fit predicts for rows it has not seen. `None` for a fold whose complement has
    /// no rows.
    pub fn held_out_coefficients(&self, lambda: f64) -> Vec<Option<DVector<f64>>> {
        (0..FOLDS)
            .map(|f| {
                let (xtx, xtr) = self.pooled(Some(f));
                ridge_solve(xtx, &xtr, lambda)
            })
            .collect()
    }

    /// The ridge with the lowest cross-validated error, its statistics scaled by `scale`.
    /// `None` without rows.
    pub fn fit_ridge(&self, scale: f64) -> Option<RidgePrior> {
        if self.rows() == 0.0 {
            return None;
        }
        let lambda = LAMBDA_GRID
            .iter()
            .copied()
            .map(|l| (l, self.cross_validated_error(l)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(LAMBDA_GRID[0], |(l, _)| l);
        let (xtx, xtr) = self.pooled(None);
        Some(RidgePrior {
            lambda,
            precision: upper_triangle(&(shrunk(xtx, lambda) * scale)),
            moment: (xtr * scale).as_slice().to_vec(),
        })
    }
}

/// `X'X + lambda D`: every feature but the bias shrunk.
fn shrunk(mut xtx: DMatrix<f64>, lambda: f64) -> DMatrix<f64> {
    for i in 1..xtx.nrows() {
        xtx[(i, i)] += lambda;
    }
    xtx
}

/// `(X'X + lambda D)^-1 X'r`, or `None` if the bias has no rows.
fn ridge_solve(xtx: DMatrix<f64>, xtr: &DVector<f64>, lambda: f64) -> Option<DVector<f64>> {
    Cholesky::new(shrunk(xtx, lambda)).map(|c| c.solve(xtr))
}

fn upper_triangle(m: &DMatrix<f64>) -> Vec<f64> {
    (0..m.nrows())
        .flat_map(|i| (i..m.ncols()).map(move |j| (i, j)))
        .map(|(i, j)| m[(i, j)])
        .collect()
}

impl ArmPrior {
    /// The cost correction a learner starts `arm` from: in answer tokens if it has
    /// prices, else in USD.
    pub fn cost_correction_for(&self, arm: &Arm) -> Option<&RidgePrior> {
        if arm.has_prices() {
            self.answer_correction.as_ref()
        } else {
            self.cost_correction.as_ref()
        }
    }

    /// The scale `s` the cap applied.
    pub fn scale(&self) -> f64 {
        self.observations / self.rows
    }

    /// The prior with the cost of its rows: `requests` rows that cost `cost_usd` in all
    /// for `input_tokens` tokens, scaled as the quality statistics were.
    pub fn with_usage(mut self, requests: f64, cost_usd: f64, input_tokens: f64) -> Self {
        let scale = self.scale();
        self.usage = UsagePrior {
            requests: requests * scale,
            cost_usd: cost_usd * scale,
            input_tokens: input_tokens * scale,
        };
        self
    }
}

impl RidgePrior {
    /// `s P` as a dense symmetric matrix.
    pub fn precision_matrix(&self, dim: usize) -> DMatrix<f64> {
        let mut m = DMatrix::zeros(dim, dim);
        let mut values = self.precision.iter();
        for i in 0..dim {
            for j in i..dim {
                let v = values.next().copied().unwrap_or(0.0);
                m[(i, j)] = v;
                m[(j, i)] = v;
            }
        }
        m
    }

    /// The prior's mean coefficients, `P^-1 X'y`.
    pub fn coefficients(&self) -> Option<DVector<f64>> {
        let dim = self.moment.len();
        Some(Cholesky::new(self.precision_matrix(dim))?.solve(&DVector::from_column_slice(&self.moment)))
    }

    /// The prior's mean in context `x`, `x' P^-1 X'y`.
    pub fn mean(&self, x: &[f64]) -> Option<f64> {
        Some(self.coefficients()?.dot(&DVector::from_column_slice(x)))
    }
}

impl Priors {
    /// Parses and validates a priors file's text.
    pub fn from_json(text: &str) -> Result<Priors> {
        let priors: Priors =
            serde_json::from_str(text).map_err(|e| ErrorKind::InvalidConfig(format!("priors: {e}")))?;
        priors.validate()?;
        Ok(priors)
    }

    /// Refuses priors fitted in another context definition than `definition`: the same
    /// coefficients would weigh other features.
    pub fn check_context(&self, definition: &str) -> Result<()> {
        if self.context == definition {
            return Ok(());
        }
        Err(ErrorKind::InvalidConfig(format!(
            "the priors were fitted on contexts `{}`, but this route builds `{definition}`",
            self.context
        ))
        .into())
    }

    /// Checks what a file could get wrong: version, dimensions, finite values and counts
    /// that a table could have produced. Errors name the arm and the field.
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: String| Err(ErrorKind::InvalidConfig(what).into());
        if self.version != PRIORS_VERSION {
            return invalid(format!(
                "priors version {} is not supported (expected {PRIORS_VERSION})",
                self.version
            ));
        }
        if self.dim == 0 {
            return invalid("priors: dim must be at least 1".into());
        }
        check_cap(self.cap)?;
        if let Some(curve) = &self.spend {
            curve.validate()?;
        }
        for (arm, p) in &self.arms {
            p.quality.validate(self.dim, arm, "quality")?;
            for (field, correction) in [
                ("cost_correction", &p.cost_correction),
                ("answer_correction", &p.answer_correction),
            ] {
                if let Some(c) = correction {
                    c.validate(self.dim, arm, field)?;
                }
            }
            let u = &p.usage;
            let scalars = [
                ("rows", p.rows),
                ("observations", p.observations),
                ("sum", p.sum),
                ("sum_sq", p.sum_sq),
                ("usage.requests", u.requests),
                ("usage.cost_usd", u.cost_usd),
                ("usage.input_tokens", u.input_tokens),
            ];
            if let Some((field, value)) = scalars.iter().find(|(_, v)| !v.is_finite()) {
                return invalid(format!(
                    "priors of arm {arm}: {field} is {value}, not a finite number"
                ));
            }
            if p.rows < 1.0 {
                return invalid(format!(
                    "priors of arm {arm}: rows is {}, at least 1 is needed",
                    p.rows
                ));
            }
            if !(0.0..=p.rows).contains(&p.observations)
                || !(0.0..=p.observations * (1.0 + 1e-9)).contains(&p.sum)
                || !(0.0..=p.observations * (1.0 + 1e-9)).contains(&p.sum_sq)
            {
                return invalid(format!(
                    "priors of arm {arm}: observations, sum and sum_sq must satisfy \
                     0 <= sum_sq, sum <= observations <= rows (qualities in [0, 1])"
                ));
            }
            if u.requests < 0.0 || u.cost_usd < 0.0 || u.input_tokens < 0.0 {
                return invalid(format!("priors of arm {arm}: usage sums must not be negative"));
            }
            // The fit caps every arm's observations, and the bias (feature 0, always 1)
            // is unshrunk: the precision's first entry counts the observations and the
            // moment's first sums their qualities. A file where they disagree was edited.
            let agrees = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0);
            if p.observations > self.cap * (1.0 + 1e-9) {
                return invalid(format!(
                    "priors of arm {arm}: observations is {}, above the cap {}",
                    p.observations, self.cap
                ));
            }
            if !agrees(p.quality.precision[0], p.observations) || !agrees(p.quality.moment[0], p.sum) {
                return invalid(format!(
                    "priors of arm {arm}: quality.precision[0] ({}) and quality.moment[0] ({}) must \
                     equal observations ({}) and sum ({}): the bias counts every observation",
                    p.quality.precision[0], p.quality.moment[0], p.observations, p.sum
                ));
            }
        }
        Ok(())
    }

    /// How these priors' models meet `models`, a route's or a table's; refused when they
    /// have none of them (their ids are another route's, or misspelled).
    pub fn coverage<'a>(&self, models: impl IntoIterator<Item = &'a str>) -> Result<PriorCoverage> {
        let models: Vec<&str> = models.into_iter().collect();
        let coverage = PriorCoverage {
            without_prior: models
                .iter()
                .filter(|m| !self.arms.contains_key(**m))
                .map(|m| m.to_string())
                .collect(),
            unused: self
                .arms
                .keys()
                .filter(|m| !models.contains(&m.as_str()))
                .cloned()
                .collect(),
            spend_curve: self.spend.is_some(),
        };
        if coverage.without_prior.len() == models.len() {
            return Err(ErrorKind::InvalidConfig(format!(
                "the priors have none of the models ({}); their models: {}",
                coverage.without_prior.join(", "),
                coverage.unused.join(", ")
            ))
            .into());
        }
        Ok(coverage)
    }
}

/// How a priors file's models meet the models of the learner that starts from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorCoverage {
    /// The learner's models the priors lack: they start cold.
    pub without_prior: Vec<String>,
    /// The priors' models the learner lacks: their priors go unused.
    pub unused: Vec<String>,
    /// Whether the priors carry a spend curve.
    pub spend_curve: bool,
}

impl PriorCoverage {
    /// Whether the priors were fitted on exactly the learner's models: only then does
    /// their spend curve describe the learner's choices.
    pub fn same_models(&self) -> bool {
        self.without_prior.is_empty() && self.unused.is_empty()
    }

    /// What a user should hear when the models differ; `None` when they match.
    pub fn note(&self) -> Option<String> {
        if self.same_models() {
            return None;
        }
        let mut parts = Vec::new();
        if !self.without_prior.is_empty() {
            parts.push(format!(
                "no prior for {}: they start cold",
                self.without_prior.join(", ")
            ));
        }
        if !self.unused.is_empty() {
            parts.push(format!("priors of {} are not used", self.unused.join(", ")));
        }
        if self.spend_curve {
            parts.push("the spend curve, fitted over other models, is not used".to_string());
        }
        Some(parts.join("; "))
    }
}

impl RidgePrior {
    /// Checks the dimensions, finite values and a positive definite precision; errors
    /// name the arm and the part (`what`).
    fn validate(&self, dim: usize, arm: &str, what: &str) -> Result<()> {
        let invalid =
            |why: String| Err(ErrorKind::InvalidConfig(format!("priors of arm {arm}: {what} {why}")).into());
        let triangle = dim * (dim + 1) / 2;
        if self.precision.len() != triangle || self.moment.len() != dim {
            return invalid(format!(
                "precision has {} values and moment {} (dim {dim} needs {triangle} and {dim})",
                self.precision.len(),
                self.moment.len(),
            ));
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return invalid(format!("lambda is {}, not a number >= 0", self.lambda));
        }
        if let Some(i) = self.precision.iter().position(|v| !v.is_finite()) {
            return invalid(format!("precision[{i}] is not a finite number"));
        }
        if let Some(i) = self.moment.iter().position(|v| !v.is_finite()) {
            return invalid(format!("moment[{i}] is not a finite number"));
        }
        if Cholesky::new(self.precision_matrix(dim)).is_none() {
            return invalid("precision is not positive definite".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn rows(n: usize, dim: usize, seed: u64) -> Vec<(Vec<f64>, f64)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let mut x: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
                x[0] = 1.0;
                let r = (0.5 + 0.3 * x[1] + rng.random_range(-0.1..0.1)).clamp(0.0, 1.0);
                (x, r)
            })
            .collect()
    }

    /// Priors of `arms` in dimension `dim`, in the context definition `test`.
    fn test_priors(dim: usize, arms: BTreeMap<String, ArmPrior>) -> Priors {
        Priors {
            version: PRIORS_VERSION,
            context: "test".into(),
            tasks: Vec::new(),
            dim,
            cap: 1e9,
            source: "test".into(),
            arms,
            spend: None,
        }
    }

    fn statistics(data: &[(Vec<f64>, f64)], dim: usize) -> FoldStatistics {
        let mut stats = FoldStatistics::new(dim);
        for (i, (x, r)) in data.iter().enumerate() {
            stats.add(i, x, *r);
        }
        stats
    }

    #[test]
    fn cross_validated_error_and_held_out_fits_equal_refitting_on_the_rows() {
        let dim = 4;
        let data = rows(53, dim, 1);
        let stats = statistics(&data, dim);
        for lambda in [0.1, 3.0, 100.0] {
            let mut brute = 0.0;
            let held_out = stats.held_out_coefficients(lambda);
            for (fold, held) in held_out.iter().enumerate() {
                let (mut xtx, mut xtr) = (DMatrix::zeros(dim, dim), DVector::zeros(dim));
                for (_, (x, r)) in data.iter().enumerate().filter(|(i, _)| i % FOLDS != fold) {
                    let xv = DVector::from_column_slice(x);
                    xtx += &xv * xv.transpose();
                    xtr += xv * *r;
                }
                let theta = ridge_solve(xtx, &xtr, lambda).expect("solvable");
                let held = held.as_ref().expect("solvable");
                assert!((held - &theta).amax() < 1e-9, "fold {fold}: {held} vs {theta}");
                for (_, (x, r)) in data.iter().enumerate().filter(|(i, _)| i % FOLDS == fold) {
                    brute += (r - theta.dot(&DVector::from_column_slice(x))).powi(2);
                }
            }
            let closed = stats.cross_validated_error(lambda);
            assert!(
                (closed - brute).abs() < 1e-9 * brute.max(1.0),
                "{closed} vs {brute}"
            );
        }
    }

    #[test]
    fn the_fit_recovers_the_linear_model_and_the_cap_scales_only_its_weight() {
        let dim = 5;
        let data = rows(4000, dim, 2);
        let uncapped = statistics(&data, dim).fit(1e9).expect("rows");
        let capped = statistics(&data, dim).fit(400.0).expect("rows");
        assert_eq!(uncapped.rows, 4000.0);
        assert_eq!(uncapped.observations, 4000.0);
        assert!((capped.observations - 400.0).abs() < 1e-9);
        // Noise uniform on +-0.1 around 0.5 + 0.3 x1: the mean is within a few standard
        // errors (0.1 / sqrt(3 * 4000) ~ 1e-3) of the truth at a probe.
        let probe = [1.0, 0.5, -0.2, 0.3, 0.9];
        let (u, c) = (
            uncapped.quality.mean(&probe).expect("pd"),
            capped.quality.mean(&probe).expect("pd"),
        );
        assert!((u - 0.65).abs() < 0.01, "{u}");
        assert!(
            (u - c).abs() < 1e-9,
            "a cap changes the weight, not the mean: {u} vs {c}"
        );
        assert!((capped.sum / capped.observations - uncapped.sum / uncapped.observations).abs() < 1e-12);
    }

    #[test]
    fn cross_validation_shrinks_more_when_features_are_noise() {
        let dim = 12;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let noise: Vec<(Vec<f64>, f64)> = (0..60)
            .map(|_| {
                let mut x: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
                x[0] = 1.0;
                (x, f64::from(u8::from(rng.random::<f64>() < 0.5)))
            })
            .collect();
        let signal = rows(60, dim, 4);
        let noisy = statistics(&noise, dim).fit(1e9).expect("rows");
        let clean = statistics(&signal, dim).fit(1e9).expect("rows");
        assert!(
            noisy.quality.lambda > clean.quality.lambda,
            "{} vs {}",
            noisy.quality.lambda,
            clean.quality.lambda
        );
        // Each is the grid's least cross-validated error, found by trying every ridge.
        for (data, fitted) in [(&noise, &noisy), (&signal, &clean)] {
            let stats = statistics(data, dim);
            let error = |lambda: f64| stats.cross_validated_error(lambda);
            let best = LAMBDA_GRID
                .into_iter()
                .min_by(|a, b| error(*a).total_cmp(&error(*b)))
                .expect("a grid");
            assert_eq!(fitted.quality.lambda, best);
        }
    }

    #[test]
    fn policies_add_the_prior_to_their_own_prior() {
        use crate::policy::{BetaTs, LinUcb, Policy};
        use crate::stats::Forgetting;
        let dim = 4;
        let prior = statistics(&rows(200, dim, 6), dim).fit(150.0).expect("rows");
        // LinUCB with ridge 2 and its optimistic prior mean e_0:
        // A = 2 I + s P, b = 2 e_0 + s X'r.
        let mut linucb = LinUcb::new(2, dim, 0.5, 2.0, Forgetting::None);
        linucb.absorb_prior(1, &prior);
        let a = DMatrix::identity(dim, dim) * 2.0 + prior.quality.precision_matrix(dim);
        let mut b = DVector::from_column_slice(&prior.quality.moment);
        b[0] += 2.0;
        let want = Cholesky::new(a).expect("pd").solve(&b);
        let got = linucb.models().get(1).theta();
        assert!((got - &want).amax() < 1e-9, "{got} vs {want}");
        assert_eq!(linucb.models().get(0).count(), 0.0, "other arms are untouched");
        assert!((linucb.models().get(1).count() - 150.0).abs() < 1e-9);
        // Beta TS: Beta(1 + s sum r, 1 + s (n - sum r)).
        let mut beta = BetaTs::new(1, 1.0, 1.0, 16, Forgetting::None);
        beta.absorb_prior(0, &prior);
        let (alpha, beta_) = beta.posterior(0);
        assert!((alpha - (1.0 + prior.sum)).abs() < 1e-9);
        assert!((beta_ - (1.0 + prior.observations - prior.sum)).abs() < 1e-9);
    }

    #[test]
    fn a_learner_takes_priors_by_arm_id_and_checks_the_dimension() {
        use crate::{Arm, Learner, LearnerConfig};
        let dim = 3;
        let prior = statistics(&rows(40, dim, 7), dim).fit(1e9).expect("rows");
        let priors = test_priors(
            dim,
            BTreeMap::from([("b".to_string(), prior.clone()), ("gone".to_string(), prior)]),
        );
        let config = LearnerConfig::new("beta-ts".parse().expect("spec"), dim);
        let arms = vec![Arm::new("a"), Arm::new("b")];
        let mut learner = Learner::new(config.clone(), arms.clone()).expect("learner");
        let coverage = learner.absorb_priors(&priors).expect("fits");
        assert_eq!(
            (coverage.without_prior, coverage.unused),
            (vec!["a".to_string()], vec!["gone".to_string()])
        );
        let strangers = Learner::new(config.clone(), vec![Arm::new("x")])
            .expect("learner")
            .absorb_priors(&priors)
            .expect_err("none of the models")
            .to_string();
        assert!(
            strangers.contains("none of the models (x); their models: b, gone"),
            "{strangers}"
        );
        let mut wide =
            Learner::new(LearnerConfig::new(config.policy.clone(), dim + 1), arms).expect("learner");
        let e = wide.absorb_priors(&priors).expect_err("dim");
        assert!(
            matches!(
                e.kind(),
                crate::ErrorKind::DimensionMismatch {
                    expected: 4,
                    found: 3
                }
            ),
            "{e}"
        );
        assert!(priors.check_context("test").is_ok());
        let e = priors.check_context("other").expect_err("context").to_string();
        assert!(e.contains("`test`") && e.contains("`other`"), "{e}");
    }

    /// A table where arm `a` costs $1e-5 per prompt token plus $0.002 on rows with
    /// feature 1 set (prompts of 100 to 106 tokens): the learner's first expected cost is the
    /// table's, before any outcome.
    #[test]
    fn a_learner_expects_the_cost_the_table_shows() {
        use crate::{Arm, Context, Learner, LearnerConfig, Request};
        let dim = 2;
        let (mut quality, mut missed) = (FoldStatistics::new(dim), FoldStatistics::new(dim));
        let rows: Vec<([f64; 2], f64)> = (0..200)
            .map(|i| ([1.0, f64::from(u8::from(i % 2 == 0))], f64::from(100 + i % 7)))
            .collect();
        let cost = |x: &[f64; 2], tokens: f64| 1e-5 * tokens + 0.002 * x[1];
        let (total_cost, total_tokens) = rows.iter().fold((0.0, 0.0), |(c, t), (x, tokens)| {
            (c + cost(x, *tokens), t + tokens)
        });
        for (i, (x, _)) in rows.iter().enumerate() {
            quality.add(i, x, 0.5);
        }
        let mut prior = quality
            .fit(1e9)
            .expect("rows")
            .with_usage(200.0, total_cost, total_tokens);
        for (i, (x, tokens)) in rows.iter().enumerate() {
            missed.add(i, x, cost(x, *tokens) - prior.usage.expected_cost_usd(*tokens));
        }
        prior.cost_correction = missed.fit_ridge(prior.scale());
        let priors = test_priors(dim, BTreeMap::from([("a".to_string(), prior)]));
        let config = LearnerConfig::new("linucb".parse().expect("spec"), dim);
        let mut learner = Learner::new(config, vec![Arm::new("a"), Arm::new("b")]).expect("learner");
        learner.absorb_priors(&priors).expect("fits");
        for (x, tokens) in [([1.0, 1.0], 102.0), ([1.0, 0.0], 105.0)] {
            let request = Request::new(Context {
                features: x.to_vec(),
                input_tokens: tokens as u32,
            });
            let decision = learner.decide(&request).expect("decides");
            let a = &decision.arms[0];
            // The ratio estimate pools both row kinds, the correction's ridge shrinks a
            // little: within 5% of the truth.
            let want = cost(&x, tokens);
            assert!(
                (a.cost_usd - want).abs() < 0.05 * want,
                "{} vs {want}",
                a.cost_usd
            );
            assert_eq!(decision.arms[1].cost_usd, 0.0, "b has no prior and no outcome");
        }
    }

    #[test]
    fn validation_names_the_arm_and_the_problem() {
        let dim = 3;
        let prior = statistics(&rows(30, dim, 5), dim).fit(1e9).expect("rows");
        let mut priors = test_priors(dim, BTreeMap::from([("m".to_string(), prior)]));
        assert!(priors.validate().is_ok());
        let good = priors.clone();
        priors.arms.get_mut("m").expect("arm").quality.moment.pop();
        let e = priors.validate().expect_err("short").to_string();
        assert!(e.contains("arm m") && e.contains("moment"), "{e}");
        priors = good.clone();
        priors.arms.get_mut("m").expect("arm").sum = f64::NAN;
        let e = priors.validate().expect_err("nan").to_string();
        assert!(e.contains("arm m: sum is NaN, not a finite number"), "{e}");
        priors = good.clone();
        priors.cap = 0.0;
        assert!(priors
            .validate()
            .expect_err("cap")
            .to_string()
            .contains("cap is 0"));
        priors = good.clone();
        priors.arms.get_mut("m").expect("arm").quality.precision[0] = -1.0;
        assert!(priors
            .validate()
            .expect_err("pd")
            .to_string()
            .contains("positive definite"));
        priors = good.clone();
        let mut short = priors.arms["m"].quality.clone();
        short.moment.pop();
        priors.arms.get_mut("m").expect("arm").answer_correction = Some(short);
        let e = priors.validate().expect_err("short correction").to_string();
        assert!(e.contains("arm m") && e.contains("answer_correction"), "{e}");
        priors = good.clone();
        priors.version = 99;
        assert!(priors
            .validate()
            .expect_err("version")
            .to_string()
            .contains("version 99"));
        // Counts no fit writes: a moment scaled after the fit, observations above the cap.
        priors = good.clone();
        for m in &mut priors.arms.get_mut("m").expect("arm").quality.moment {
            *m *= 1e6;
        }
        let e = priors.validate().expect_err("edited moment").to_string();
        assert!(
            e.contains("arm m: quality.precision[0] (30)") && e.contains("sum ("),
            "{e}"
        );
        priors = good.clone();
        priors.cap = 20.0;
        let e = priors.validate().expect_err("over the cap").to_string();
        assert!(e.contains("arm m: observations is 30, above the cap 20"), "{e}");
        // A misspelled key is named, not dropped with what it held, at every level.
        let text = serde_json::to_string(&good).expect("json");
        for (from, to) in [("\"usage\"", "\"usgae\""), ("\"requests\"", "\"requets\"")] {
            let e = Priors::from_json(&text.replace(from, to))
                .expect_err("misspelled")
                .to_string();
            assert!(
                e.contains(&format!("unknown field `{}`", to.trim_matches('"'))),
                "{e}"
            );
        }
    }
}
