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
//! Linear TS also keeps the lower Cholesky factor `L L' = A`, updated by rank-one Cholesky
//! updates. Rounding drifts both, so every [`REFRESH_INTERVAL`] updates they are recomputed
//! from `A` and `b` by a fresh Cholesky factorization, which also keeps `A^-1` symmetric
//! positive definite.

use std::collections::VecDeque;

use nalgebra::{Cholesky, DMatrix, DVector, DVectorView, Dyn};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::packed::{dot, PackedSymmetric};
use crate::prior::RidgePrior;
use crate::stats::{check_mergeable, Forgetting, OPTIMISTIC_QUALITY};

/// Updates between two exact refactorizations of a model.
pub const REFRESH_INTERVAL: u32 = 256;

/// One arm's ridge regression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RidgeModel {
    lambda: f64,
    precision: DMatrix<f64>,
    b: DVector<f64>,
    count: f64,
    theta: DVector<f64>,
    covariance: PackedSymmetric,
    cholesky: Option<DMatrix<f64>>,
    updates_since_refresh: u32,
    /// The prior mean's bias coefficient `q0`.
    #[serde(default = "optimistic_quality")]
    prior_bias: f64,
}

fn optimistic_quality() -> f64 {
    OPTIMISTIC_QUALITY
}

impl RidgeModel {
    /// The prior model of quality: `A = lambda I`, `b = lambda theta0` with `q0` =
    /// [`OPTIMISTIC_QUALITY`]. With `with_factor`, the Cholesky factor of `A` is kept too
    /// (for posterior sampling).
    pub fn new(dim: usize, lambda: f64, with_factor: bool) -> Self {
        Self::with_prior(dim, lambda, with_factor, OPTIMISTIC_QUALITY)
    }

    /// The prior model with bias coefficient `prior_bias` (0 for a quantity, such as cost,
    /// that should not be assumed before it is seen).
    pub fn with_prior(dim: usize, lambda: f64, with_factor: bool, prior_bias: f64) -> Self {
        let theta0 = Self::prior_mean(dim, prior_bias);
        RidgeModel {
            prior_bias,
            lambda,
            precision: DMatrix::identity(dim, dim) * lambda,
            b: &theta0 * lambda,
            count: 0.0,
            theta: theta0,
            covariance: PackedSymmetric::scaled_identity(dim, 1.0 / lambda),
            cholesky: with_factor.then(|| DMatrix::identity(dim, dim) * lambda.sqrt()),
            updates_since_refresh: 0,
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
        &self.theta
    }

    /// `A^-1`, as a dense matrix.
    pub fn covariance(&self) -> DMatrix<f64> {
        self.covariance.to_matrix()
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
        dot(self.theta.as_slice(), x)
    }

    /// `x' A^-1 x`, the squared width of the confidence ellipsoid along `x`.
    pub fn variance(&self, x: &[f64]) -> f64 {
        self.covariance.quadratic_form(x).max(0.0)
    }

    /// Adds `(x, r)` with weight `sign` (+1 to learn, -1 to forget an observation).
    fn rank_one(&mut self, x: &[f64], r: f64, sign: f64) {
        let xv = DVectorView::from_slice(x, x.len());
        self.precision.ger(sign, &xv, &xv, 1.0);
        self.b.axpy(sign * r, &xv, 1.0);
        self.count += sign;
        let residual = r - dot(x, self.theta.as_slice());
        let theta = &mut self.theta;
        self.covariance.sherman_morrison(x, sign, |u, denom| {
            theta.axpy(sign * residual / denom, &DVectorView::from_slice(u, u.len()), 1.0);
        });
        if let Some(l) = self.cholesky.take() {
            let mut factor = Cholesky::<f64, Dyn>::pack_dirty(l);
            factor.rank_one_update(&xv, sign);
            self.cholesky = Some(factor.unpack_dirty());
        }
        self.updates_since_refresh += 1;
        if self.updates_since_refresh >= REFRESH_INTERVAL {
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
    /// refactorizes (the caches are derived from `A` and `b`).
    fn merge(&mut self, replica: &RidgeModel, base: &RidgeModel) {
        self.precision += &replica.precision - &base.precision;
        self.b += &replica.b - &base.b;
        self.count += replica.count - base.count;
        self.refresh();
    }

    /// Recomputes `A^-1`, `theta` and `L` exactly from `A` and `b`.
    pub fn refresh(&mut self) {
        self.updates_since_refresh = 0;
        // A = lambda I + sum x x' is positive definite in exact arithmetic; the substitute
        // only guards a pivot that rounding (after many window downdates) pushed to zero.
        let Some(factor) = Cholesky::new_with_substitute(self.precision.clone(), self.lambda * 1e-9) else {
            return;
        };
        self.covariance = PackedSymmetric::from_matrix(&factor.inverse());
        self.theta = factor.solve(&self.b);
        if self.cholesky.is_some() {
            self.cholesky = Some(factor.unpack());
        }
    }

    /// Draws `theta ~ N(theta_hat, v^2 A^-1)` by Cholesky sampling: with `L L' = A` and
    /// `z ~ N(0, I)`, `y = L'^-1 z` has covariance `(L L')^-1 = A^-1`.
    /// Falls back to the factor of `A^-1` when the model keeps no factor of `A`.
    pub fn sample_theta<R: Rng + ?Sized>(&self, v: f64, rng: &mut R) -> DVector<f64> {
        let dim = self.b.len();
        let z = DVector::from_iterator(dim, (0..dim).map(|_| StandardNormal.sample(rng)));
        let y = match &self.cholesky {
            Some(l) => l.tr_solve_lower_triangular(&z),
            None => Cholesky::new(self.covariance()).map(|c| c.l() * &z),
        };
        match y {
            Some(y) => &self.theta + y * v,
            None => self.theta.clone(),
        }
    }
}

/// The ridge models of all arms, with their forgetting rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RidgeTable {
    models: Vec<RidgeModel>,
    dim: usize,
    lambda: f64,
    with_factor: bool,
    forgetting: Forgetting,
    /// Under a sliding window, the observations still counted, oldest first.
    window: VecDeque<(usize, Vec<f64>, f64)>,
    /// The prior mean's bias coefficient of every model.
    #[serde(default = "optimistic_quality")]
    prior_bias: f64,
}

impl RidgeTable {
    /// Prior models of quality for `num_arms` arms in dimension `dim`.
    pub fn new(num_arms: usize, dim: usize, lambda: f64, with_factor: bool, forgetting: Forgetting) -> Self {
        Self::with_prior(num_arms, dim, lambda, with_factor, forgetting, OPTIMISTIC_QUALITY)
    }

    /// [`RidgeTable::new`] with the models' prior bias coefficient (see
    /// [`RidgeModel::with_prior`]).
    pub fn with_prior(
        num_arms: usize,
        dim: usize,
        lambda: f64,
        with_factor: bool,
        forgetting: Forgetting,
        prior_bias: f64,
    ) -> Self {
        RidgeTable {
            models: (0..num_arms)
                .map(|_| RidgeModel::with_prior(dim, lambda, with_factor, prior_bias))
                .collect(),
            dim,
            lambda,
            with_factor,
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
        self.models.push(RidgeModel::with_prior(
            self.dim,
            self.lambda,
            self.with_factor,
            self.prior_bias,
        ));
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
