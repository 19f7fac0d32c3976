//! Per-arm ridge regression of quality on the context: the model under LinUCB and linear TS.
//!
//! For arm `a` with observations `(x_i, r_i)`:
//!
//! ```text
//! A = lambda I + sum_i x_i x_i'          (precision; additive sufficient statistic)
//! b = lambda theta0 + sum_i r_i x_i      (additive sufficient statistic)
//! theta = A^-1 b                         (the ridge estimate)
//! ```
//!
//! The prior mean `theta0 = q0 e_0` puts quality [`OPTIMISTIC_QUALITY`] on the first
//! feature, the bias, so an arm without data is predicted at the top of the scale and gets
//! tried early (ridge regression shrinks toward `theta0` instead of toward 0).
//!
//! `A^-1` (stored as a [`PackedSymmetric`]) is kept current by Sherman-Morrison rank-one updates, O(d^2) each:
//! `A^-1 <- A^-1 - (A^-1 x)(A^-1 x)' / (1 + x' A^-1 x)`, and `theta` by the matching
//! recursive-least-squares step `theta <- theta + A^-1_old x (r - x' theta) / (1 + x' A^-1_old x)`.
//! Rounding drifts both, so every [`REFRESH_INTERVAL`] updates they are recomputed from `A`
//! and `b` by a fresh Cholesky factorization, which also keeps `A^-1` symmetric positive
//! definite.

use std::collections::VecDeque;

use nalgebra::{Cholesky, DMatrix, DVector, DVectorView};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::packed::{dot, PackedSymmetric};
use crate::prior::RidgePrior;
use crate::stats::{check_mergeable, Forgetting, OPTIMISTIC_QUALITY};

/// Updates between two exact refactorizations of a model.
pub const REFRESH_INTERVAL: u32 = 256;

/// One arm's ridge regression: its sufficient statistics and the caches derived from them.
///
/// Serialized as its statistics, and the caches apart beside them (see `RidgeStatistics`).
/// Two models are equal when their statistics are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "RidgeStatistics", into = "RidgeStatistics")]
pub struct RidgeModel {
    lambda: f64,
    precision: DMatrix<f64>,
    b: DVector<f64>,
    count: f64,
    /// The prior mean's bias coefficient `q0`.
    prior_bias: f64,
    caches: RidgeCaches,
}

/// What is derived from `A` and `b`, kept current by rank-one updates.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RidgeCaches {
    theta: DVector<f64>,
    covariance: PackedSymmetric,
    updates_since_refresh: u32,
    /// Derived from `A` and `b` alone, so that a reader derives them again bit for bit:
    /// a prior's (in closed form) or [`RidgeModel::refresh`]'s. Such caches are not written.
    #[serde(skip)]
    fresh: bool,
}

/// What a [`RidgeModel`] is: `A`, `b`, the ridge and prior that started them, the count;
/// and, apart, the caches derived from them.
///
/// `A` is symmetric and written as its upper triangle (`packed_precision`); a model still
/// at its prior is written without `A` and `b`, which its ridge and prior give, but with
/// its dimension. Replicas of a route exchange these (`quiver-serve`'s cluster), so their
/// size is the sync's. Older snapshots hold `A` in full (`precision`).
///
/// The caches are written because a fresh factorization differs from the rank-one
/// updates in the last bits, and a restored learner is to continue bit-identically (its
/// change detectors read the estimates); a model without them (just refactorized, merged,
/// or written by another tool) gets them recomputed. Snapshots before this format hold the caches beside
/// the statistics (`theta`, `covariance`, `updates_since_refresh`). Older snapshots of
/// linear TS also hold a Cholesky factor of `A` (`cholesky`, `with_factor`), which nothing
/// reads any more.
#[derive(Serialize, Deserialize)]
struct RidgeStatistics {
    lambda: f64,
    /// Written only for a model at its prior.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    packed_precision: Option<PackedSymmetric>,
    /// `A` in full, as older snapshots hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    precision: Option<DMatrix<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    b: Option<DVector<f64>>,
    count: f64,
    #[serde(default = "optimistic_quality")]
    prior_bias: f64,
    #[serde(default)]
    caches: Option<RidgeCaches>,
    #[serde(flatten)]
    older: Option<RidgeCaches>,
}

fn optimistic_quality() -> f64 {
    OPTIMISTIC_QUALITY
}

impl TryFrom<RidgeStatistics> for RidgeModel {
    type Error = String;

    fn try_from(stats: RidgeStatistics) -> std::result::Result<Self, String> {
        let dim = stats
            .b
            .as_ref()
            .map(|b| b.len())
            .or(stats.dim)
            .or(stats.packed_precision.as_ref().map(PackedSymmetric::dim))
            .ok_or("a ridge model without its dimension")?;
        let lambda = stats.lambda;
        let precision = match (stats.packed_precision, stats.precision) {
            (Some(packed), _) => packed.to_matrix(),
            (None, Some(full)) => full,
            (None, None) => DMatrix::identity(dim, dim) * lambda,
        };
        if precision.nrows() != dim || precision.ncols() != dim {
            return Err(format!(
                "a ridge model of dimension {dim} with a {}x{} precision",
                precision.nrows(),
                precision.ncols()
            ));
        }
        let b = stats
            .b
            .unwrap_or_else(|| Self::prior_mean(dim, stats.prior_bias) * lambda);
        let caches = stats.caches.or(stats.older);
        let fits = |c: &RidgeCaches| c.theta.len() == dim && c.covariance.dim() == dim;
        let mut model = RidgeModel {
            lambda,
            precision,
            b,
            count: stats.count,
            prior_bias: stats.prior_bias,
            caches: RidgeCaches {
                theta: DVector::zeros(dim),
                covariance: PackedSymmetric::scaled_identity(dim, 1.0 / lambda),
                updates_since_refresh: 0,
                fresh: false,
            },
        };
        match caches.filter(fits) {
            Some(caches) => model.caches = caches,
            None => {
                let prior = RidgeModel::with_prior(dim, lambda, model.prior_bias);
                if model == prior {
                    // Nothing learned: the prior's caches, in closed form.
                    model.caches = prior.caches;
                } else {
                    model.refresh();
                }
            }
        }
        Ok(model)
    }
}

impl From<RidgeModel> for RidgeStatistics {
    fn from(model: RidgeModel) -> Self {
        let dim = model.b.len();
        let at_prior = model.count == 0.0 && {
            let prior = RidgeModel::with_prior(dim, model.lambda, model.prior_bias);
            model.precision == prior.precision && model.b == prior.b
        };
        RidgeStatistics {
            lambda: model.lambda,
            dim: at_prior.then_some(dim),
            packed_precision: (!at_prior).then(|| PackedSymmetric::from_matrix(&model.precision)),
            precision: None,
            b: (!at_prior).then_some(model.b),
            count: model.count,
            prior_bias: model.prior_bias,
            caches: (!model.caches.fresh).then_some(model.caches),
            older: None,
        }
    }
}

impl PartialEq for RidgeModel {
    fn eq(&self, other: &Self) -> bool {
        self.lambda == other.lambda
            && self.precision == other.precision
            && self.b == other.b
            && self.count == other.count
            && self.prior_bias == other.prior_bias
    }
}

impl RidgeModel {
    /// The prior model of quality: `A = lambda I`, `b = lambda theta0` with `q0` =
    /// [`OPTIMISTIC_QUALITY`].
    pub fn new(dim: usize, lambda: f64) -> Self {
        Self::with_prior(dim, lambda, OPTIMISTIC_QUALITY)
    }

    /// The prior model with bias coefficient `prior_bias` (0 for a quantity, such as cost,
    /// that should not be assumed before it is seen).
    pub fn with_prior(dim: usize, lambda: f64, prior_bias: f64) -> Self {
        let theta0 = Self::prior_mean(dim, prior_bias);
        RidgeModel {
            prior_bias,
            lambda,
            precision: DMatrix::identity(dim, dim) * lambda,
            b: &theta0 * lambda,
            count: 0.0,
            caches: RidgeCaches {
                theta: theta0,
                covariance: PackedSymmetric::scaled_identity(dim, 1.0 / lambda),
                updates_since_refresh: 0,
                fresh: true,
            },
        }
    }

    /// `theta0`: `prior_bias` on the bias feature, 0 elsewhere.
    fn prior_mean(dim: usize, prior_bias: f64) -> DVector<f64> {
        let mut theta0 = DVector::zeros(dim);
        theta0[0] = prior_bias;
        theta0
    }

    /// The ridge estimate `theta = A^-1 b`.
    pub fn theta(&self) -> &DVector<f64> {
        &self.caches.theta
    }

    /// `A^-1`, as a dense matrix.
    pub fn covariance(&self) -> DMatrix<f64> {
        self.caches.covariance.to_matrix()
    }

    /// `A = lambda I + sum x x'`.
    pub fn precision(&self) -> &DMatrix<f64> {
        &self.precision
    }

    /// `b = lambda theta0 + sum r x`.
    pub fn b(&self) -> &DVector<f64> {
        &self.b
    }

    /// Effective number of observations.
    pub fn count(&self) -> f64 {
        self.count
    }

    /// The predicted quality `x' theta`.
    pub fn mean(&self, x: &[f64]) -> f64 {
        dot(self.caches.theta.as_slice(), x)
    }

    /// `x' A^-1 x`, the squared width of the confidence ellipsoid along `x`.
    pub fn variance(&self, x: &[f64]) -> f64 {
        self.caches.covariance.quadratic_form(x).max(0.0)
    }

    /// Adds `(x, r)` with weight `sign` (+1 to learn, -1 to forget an observation).
    fn rank_one(&mut self, x: &[f64], r: f64, sign: f64) {
        let xv = DVectorView::from_slice(x, x.len());
        self.precision.ger(sign, &xv, &xv, 1.0);
        self.b.axpy(sign * r, &xv, 1.0);
        self.count += sign;
        let residual = r - dot(x, self.caches.theta.as_slice());
        let theta = &mut self.caches.theta;
        self.caches.covariance.sherman_morrison(x, sign, |u, denom| {
            theta.axpy(sign * residual / denom, &DVectorView::from_slice(u, u.len()), 1.0);
        });
        self.caches.updates_since_refresh += 1;
        self.caches.fresh = false;
        if self.caches.updates_since_refresh >= REFRESH_INTERVAL {
            self.refresh();
        }
    }

    /// Learns one observation of quality `r` in context `x`.
    pub fn update(&mut self, x: &[f64], r: f64) {
        self.rank_one(x, r, 1.0);
    }

    /// Forgets an observation learned earlier (sliding windows).
    pub fn downdate(&mut self, x: &[f64], r: f64) {
        self.rank_one(x, r, -1.0);
    }

    /// Shrinks the data part of `A` and `b` by `gamma`, keeping the prior:
    /// `A <- gamma (A - lambda I) + lambda I`, `b <- gamma (b - lambda theta0) + lambda theta0`.
    /// The prior term makes this a full-rank change, so the model is refactorized (O(d^3)).
    pub fn discount(&mut self, gamma: f64) {
        let dim = self.b.len();
        self.precision *= gamma;
        for i in 0..dim {
            self.precision[(i, i)] += (1.0 - gamma) * self.lambda;
        }
        self.b *= gamma;
        self.b[0] += (1.0 - gamma) * self.lambda * self.prior_bias;
        self.count *= gamma;
        self.refresh();
    }

    /// Adds a prior fitted offline that counts as `observations`: `A += s P`,
    /// `b += s X'y` (see [`crate::prior`]).
    pub fn absorb_prior(&mut self, prior: &RidgePrior, observations: f64) {
        let dim = self.b.len();
        self.precision += prior.precision_matrix(dim);
        self.b += DVector::from_column_slice(&prior.moment);
        self.count += observations;
        self.refresh();
    }

    /// Adds what `replica` learned since `base`: `A += A_r - A_b`, `b += b_r - b_b`, then
    /// refactorizes (the caches are derived from `A` and `b`). Nothing to add, nothing to
    /// refactorize.
    fn merge(&mut self, replica: &RidgeModel, base: &RidgeModel) {
        if replica.count == base.count && replica.b == base.b && replica.precision == base.precision {
            return;
        }
        self.precision += &replica.precision - &base.precision;
        self.b += &replica.b - &base.b;
        self.count += replica.count - base.count;
        self.refresh();
    }

    /// Recomputes `A^-1` and `theta` exactly from `A` and `b`.
    pub fn refresh(&mut self) {
        self.caches.updates_since_refresh = 0;
        // A = lambda I + sum x x' is positive definite in exact arithmetic; the substitute
        // only guards a pivot that rounding (after many window downdates) pushed to zero.
        let Some(factor) = Cholesky::new_with_substitute(self.precision.clone(), self.lambda * 1e-9) else {
            return;
        };
        self.caches.covariance = PackedSymmetric::from_matrix(&factor.inverse());
        self.caches.theta = factor.solve(&self.b);
        self.caches.fresh = true;
    }
}

/// The ridge models of all arms, with their forgetting rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RidgeTable {
    models: Vec<RidgeModel>,
    dim: usize,
    lambda: f64,
    forgetting: Forgetting,
    /// Under a sliding window, the observations still counted, oldest first.
    window: VecDeque<(usize, Vec<f64>, f64)>,
    /// The prior mean's bias coefficient of every model.
    #[serde(default = "optimistic_quality")]
    prior_bias: f64,
}

impl RidgeTable {
    /// Prior models of quality for `num_arms` arms in dimension `dim`.
    pub fn new(num_arms: usize, dim: usize, lambda: f64, forgetting: Forgetting) -> Self {
        Self::with_prior(num_arms, dim, lambda, forgetting, OPTIMISTIC_QUALITY)
    }

    /// [`RidgeTable::new`] with the models' prior bias coefficient (see
    /// [`RidgeModel::with_prior`]).
    pub fn with_prior(
        num_arms: usize,
        dim: usize,
        lambda: f64,
        forgetting: Forgetting,
        prior_bias: f64,
    ) -> Self {
        RidgeTable {
            models: (0..num_arms)
                .map(|_| RidgeModel::with_prior(dim, lambda, prior_bias))
                .collect(),
            dim,
            lambda,
            forgetting,
            window: VecDeque::new(),
            prior_bias,
        }
    }

    /// The model of one arm.
    pub fn get(&self, arm: usize) -> &RidgeModel {
        &self.models[arm]
    }

    /// Number of arms.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether the table has no arms.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Learns `(x, r)` for `arm`, forgetting as configured. A discount applies to the
    /// updated arm's own history (see [`RidgeModel::discount`]); a window is global.
    pub fn observe(&mut self, arm: usize, x: &[f64], r: f64) {
        match self.forgetting {
            Forgetting::None => {}
            Forgetting::Discount { gamma } => self.models[arm].discount(gamma),
            Forgetting::Window { size } => {
                self.window.push_back((arm, x.to_vec(), r));
                while self.window.len() > size {
                    if let Some((old_arm, old_x, old_r)) = self.window.pop_front() {
                        self.models[old_arm].downdate(&old_x, old_r);
                    }
                }
            }
        }
        self.models[arm].update(x, r);
    }

    /// Adds what `replica` learned since `base` to every arm (see
    /// [`crate::stats::ArmStatsTable::merge`]; the same condition: no forgetting).
    pub fn merge(&mut self, replica: &RidgeTable, base: &RidgeTable) -> Result<()> {
        check_mergeable(self.forgetting, [self.len(), replica.len(), base.len()])?;
        for ((mine, r), b) in self.models.iter_mut().zip(&replica.models).zip(&base.models) {
            mine.merge(r, b);
        }
        Ok(())
    }

    /// Appends a prior model for a new arm.
    pub fn add_arm(&mut self) {
        self.models
            .push(RidgeModel::with_prior(self.dim, self.lambda, self.prior_bias));
    }

    /// Adds a prior to one arm's model (see [`RidgeModel::absorb_prior`]).
    pub fn absorb_prior(&mut self, arm: usize, prior: &RidgePrior, observations: f64) {
        self.models[arm].absorb_prior(prior, observations);
    }

    /// Shrinks one arm's data (priors included) to count as at most `keep` observations
    /// (see [`RidgeModel::discount`]): the estimate moves toward the ridge prior's mean by
    /// the share `lambda` then has. Under a window the shrunk history stays as a prior: the
    /// arm's entries leave the window, which would otherwise subtract them at full weight.
    pub fn shrink_arm(&mut self, arm: usize, keep: f64) {
        let model = &mut self.models[arm];
        if model.count() > keep {
            model.discount(keep / model.count());
            self.window.retain(|(a, _, _)| *a != arm);
        }
    }

    /// Removes an arm; later arms shift down by one.
    pub fn remove_arm(&mut self, arm: usize) {
        self.models.remove(arm);
        self.window.retain(|(a, _, _)| *a != arm);
        for (a, _, _) in self.window.iter_mut() {
            if *a > arm {
                *a -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn trained() -> RidgeModel {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut model = RidgeModel::new(4, 2.0);
        for _ in 0..300 {
            let x: Vec<f64> = (0..4)
                .map(|i| if i == 0 { 1.0 } else { rng.random_range(-1.0..1.0) })
                .collect();
            model.update(&x, 0.5 + 0.3 * x[1] + rng.random_range(-0.1..0.1));
        }
        model
    }

    #[test]
    fn a_model_reads_back_with_its_caches_bit_for_bit() {
        let model = trained();
        let text = serde_json::to_value(&model).unwrap();
        assert!(text.get("caches").is_some() && text.get("theta").is_none());
        let back: RidgeModel = serde_json::from_value(text).unwrap();
        assert_eq!(back, model);
        assert_eq!(back.theta(), model.theta());
        assert_eq!(back.covariance(), model.covariance());
    }

    #[test]
    fn a_refactorized_model_is_written_without_caches_and_reads_back_bit_for_bit() {
        let mut model = trained();
        model.refresh();
        let text = serde_json::to_value(&model).unwrap();
        assert!(text.get("caches").is_some_and(|c| c.is_null()));
        let back: RidgeModel = serde_json::from_value(text).unwrap();
        assert_eq!(back.theta(), model.theta());
        assert_eq!(back.covariance(), model.covariance());
        // One update later the caches are the updates' again, and written.
        model.update(&[1.0, 0.5, 0.5, 0.5], 0.7);
        assert!(!serde_json::to_value(&model).unwrap()["caches"].is_null());
        // A prior's are its closed form, written as none and read back the same.
        let prior = RidgeModel::with_prior(4, 3.0, 0.7);
        let text = serde_json::to_value(&prior).unwrap();
        assert!(text["caches"].is_null());
        let back: RidgeModel = serde_json::from_value(text).unwrap();
        assert_eq!(back.theta(), prior.theta());
        assert_eq!(back.covariance(), prior.covariance());
    }

    #[test]
    fn a_model_is_written_compactly_and_older_forms_read() {
        let model = trained();
        let text = serde_json::to_value(&model).unwrap();
        // The upper triangle of A, by rows, and nothing in full.
        assert_eq!(
            text["packed_precision"]["data"].as_array().unwrap().len(),
            4 * 5 / 2
        );
        assert!(text.get("precision").is_none() && text.get("dim").is_none());
        // The older form, with A in full, reads the same.
        let mut older = text.clone();
        let object = older.as_object_mut().unwrap();
        object.remove("packed_precision");
        object.insert(
            "precision".into(),
            serde_json::to_value(model.precision()).unwrap(),
        );
        let back: RidgeModel = serde_json::from_value(older).unwrap();
        assert_eq!(back, model);
        assert_eq!(back.theta(), model.theta());
        // A model at its prior is its ridge, prior and dimension.
        let prior = RidgeModel::with_prior(6, 2.5, 0.3);
        let text = serde_json::to_value(&prior).unwrap();
        assert_eq!(text["dim"], 6);
        assert!(text.get("packed_precision").is_none() && text.get("b").is_none());
        let back: RidgeModel = serde_json::from_value(text).unwrap();
        assert_eq!(back, prior);
        // A precision of another dimension than `b` is refused, not a panic later.
        let mut wrong = serde_json::to_value(&model).unwrap();
        wrong["b"] = serde_json::to_value(DVector::from_vec(vec![1.0, 2.0, 3.0])).unwrap();
        let err = serde_json::from_value::<RidgeModel>(wrong).unwrap_err();
        assert!(
            err.to_string().contains("dimension 3 with a 4x4 precision"),
            "{err}"
        );
    }

    #[test]
    fn statistics_without_caches_get_them_recomputed() {
        let model = trained();
        let mut text = serde_json::to_value(&model).unwrap();
        text.as_object_mut().unwrap().remove("caches");
        let back: RidgeModel = serde_json::from_value(text).unwrap();
        assert_eq!(back, model);
        // The exact solve and the rank-one updates agree to rounding.
        let x = [1.0, 0.2, -0.4, 0.9];
        assert!((back.mean(&x) - model.mean(&x)).abs() < 1e-12);
        assert!((back.variance(&x) - model.variance(&x)).abs() < 1e-12);
    }

    /// The older format, with the caches beside the statistics, reads; so does linear TS's,
    /// with a Cholesky factor of `A` that nothing reads any more.
    #[test]
    fn the_older_formats_read() {
        let model = trained();
        let mut text = serde_json::to_value(&model).unwrap();
        let object = text.as_object_mut().unwrap();
        let caches = object.remove("caches").unwrap();
        for (key, value) in caches.as_object().unwrap() {
            object.insert(key.clone(), value.clone());
        }
        let back: RidgeModel = serde_json::from_value(text).unwrap();
        assert_eq!(back, model);
        assert_eq!(back.theta(), model.theta());
        let mut text = serde_json::to_value(&model).unwrap();
        let factor = serde_json::to_value(DMatrix::<f64>::identity(4, 4)).unwrap();
        text["with_factor"] = true.into();
        text["caches"]["cholesky"] = factor;
        let back: RidgeModel = serde_json::from_value(text).unwrap();
        assert_eq!(back, model);
        assert_eq!(back.theta(), model.theta());
    }
}
