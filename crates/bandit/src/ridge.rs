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
//!
//! **Families share strength.** Arms of one family ([`crate::Arm::family`]: versions and
//! sizes of one model) tend to be good and bad at the same kinds of prompt, and a route
//! with thirty models sees each one too rarely to learn that alone. A [`RidgeTable`] with
//! families therefore shrinks each arm's prompt weights toward its family's instead of
//! toward 0: with the pooled ridge model of every observation of the family's arms,
//!
//! ```text
//! A_F = lambda I + sum_{a in F} (A_a - lambda I),  b_F = lambda theta0 + sum_{a in F} (b_a - lambda theta0)
//! delta_F = A_F^-1 b_F with its bias coefficient set to 0
//! theta_a = A_a^-1 (b_a + lambda delta_F) = A_a^-1 b_a + lambda A_a^-1 delta_F
//! ```
//!
//! the arm's prior mean is `theta0 + delta_F`: the optimistic bias of its own (so a new
//! member is still tried, and its level is its own) and its family's prompt weights. This is
//! the two-stage (empirical Bayes) form of the hierarchical model `theta_a ~ N(theta_F,
//! sigma^2 / lambda I)` (Gelman et al. 2013, *Bayesian Data Analysis*, ch. 5; as multi-task
//! ridge, Evgeniou and Pontil 2004), with the arm's own rows counted in `theta_F` too. The
//! confidence width `x' A_a^-1 x` stays the arm's own. A family of one arm changes nothing.
//! Each arm's `theta_a` is kept with the table, recomputed when a member learns (one `O(d^2)`
//! product per member), so a decision costs what it did.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

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
    /// `A`, its upper triangle: an observation's rank-one update touches half the entries
    /// a dense matrix has (the only per-observation use; the rest read it densely).
    precision: PackedSymmetric,
    b: DVector<f64>,
    count: f64,
    /// The prior mean's bias coefficient `q0`.
    prior_bias: f64,
    caches: RidgeCaches,
    /// Rows of decisions awaiting their quality (see [`RidgeModel::hold`]); kept with a
    /// count of 0 once all are released, for the storage.
    held: Option<Box<HeldRows>>,
}

/// Rows of decisions whose quality is on its way: counted in the width, not in the
/// estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct HeldRows {
    /// `H = sum x x'` over the held rows.
    rows: PackedSymmetric,
    /// `(A + H)^-1`, kept by rank-one updates as the model's own `A^-1` is.
    covariance: PackedSymmetric,
    count: u32,
    updates_since_refresh: u32,
}

impl HeldRows {
    /// Adds (`sign` 1) or takes out (-1) one row `x` of `H` or of `A`: `(A + H)^-1` changes
    /// alike.
    fn rank_one(&mut self, x: &[f64], sign: f64) {
        self.covariance.sherman_morrison(x, sign, |_, _| {});
        self.updates_since_refresh += 1;
    }
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held: Option<Box<HeldRows>>,
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
            (Some(packed), _) => packed,
            (None, Some(full)) if full.nrows() == full.ncols() => PackedSymmetric::from_matrix(&full),
            (None, Some(full)) => {
                return Err(format!(
                    "a ridge model with a {}x{} precision",
                    full.nrows(),
                    full.ncols()
                ))
            }
            (None, None) => PackedSymmetric::scaled_identity(dim, lambda),
        };
        if precision.dim() != dim {
            let n = precision.dim();
            return Err(format!(
                "a ridge model of dimension {dim} with a {n}x{n} precision"
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
            held: None,
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
        let held_fits = |h: &HeldRows| h.rows.dim() == dim && h.covariance.dim() == dim;
        model.held = stats.held.filter(|h| held_fits(h));
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
            packed_precision: (!at_prior).then_some(model.precision),
            precision: None,
            b: (!at_prior).then_some(model.b),
            count: model.count,
            prior_bias: model.prior_bias,
            caches: (!model.caches.fresh).then_some(model.caches),
            older: None,
            held: model.held.filter(|h| h.count > 0),
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
            && self.holding().map(|h| (&h.rows, h.count)) == other.holding().map(|h| (&h.rows, h.count))
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
            precision: PackedSymmetric::scaled_identity(dim, lambda),
            b: &theta0 * lambda,
            count: 0.0,
            caches: RidgeCaches {
                theta: theta0,
                covariance: PackedSymmetric::scaled_identity(dim, 1.0 / lambda),
                updates_since_refresh: 0,
                fresh: true,
            },
            held: None,
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

    /// `A = lambda I + sum x x'`, as a dense matrix.
    pub fn precision(&self) -> DMatrix<f64> {
        self.precision.to_matrix()
    }

    /// Changes `A` as a dense matrix (for the changes that refactorize after, which cost
    /// more than the conversion).
    fn change_precision(&mut self, change: impl FnOnce(&mut DMatrix<f64>)) {
        let mut dense = self.precision.to_matrix();
        change(&mut dense);
        self.precision = PackedSymmetric::from_matrix(&dense);
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

    /// `x' A^-1 x`, the squared width of the confidence ellipsoid along `x`; with rows
    /// held, `x' (A + H)^-1 x` (see [`RidgeModel::hold`]).
    pub fn variance(&self, x: &[f64]) -> f64 {
        let covariance = self.holding().map_or(&self.caches.covariance, |h| &h.covariance);
        covariance.quadratic_form(x).max(0.0)
    }

    /// Counts a row `x` of a decision whose quality is on its way in the width and not in
    /// the estimate: the width along `x` becomes `x' (A + H)^-1 x`, with `H` the held rows,
    /// while `theta = A^-1 b` stays as it is, the hallucinated observation of GP-BUCB
    /// (Desautels, Krause and Burdick 2014): as if the quality were observed at the
    /// estimate. [`RidgeModel::release`] takes it out when the quality comes, or will not.
    pub fn hold(&mut self, x: &[f64]) {
        let covariance = &self.caches.covariance;
        let held = self.held.get_or_insert_with(|| {
            Box::new(HeldRows {
                rows: PackedSymmetric::scaled_identity(x.len(), 0.0),
                covariance: covariance.clone(),
                count: 0,
                updates_since_refresh: 0,
            })
        });
        if held.count == 0 {
            // Storage kept from the last rows held, so that a model whose qualities come
            // at once allocates nothing per decision.
            held.rows.set_zero();
            held.covariance.clone_from(covariance);
            held.updates_since_refresh = 0;
        }
        held.rows.add_outer(x, 1.0);
        held.rank_one(x, 1.0);
        held.count += 1;
        self.refresh_held_if_due();
    }

    /// Takes a held row `x` out of the width again.
    pub fn release(&mut self, x: &[f64]) {
        if let Some(held) = self.unhold(x) {
            held.rank_one(x, -1.0);
            self.refresh_held_if_due();
        }
    }

    /// Takes a held row `x` out of `H`, leaving `(A + H)^-1` to the caller: the held rows
    /// if some are still held after it, `None` if it was the last or none was held.
    fn unhold(&mut self, x: &[f64]) -> Option<&mut HeldRows> {
        let held = self.held.as_mut().filter(|h| h.count > 0)?;
        held.count -= 1;
        if held.count == 0 {
            return None;
        }
        held.rows.add_outer(x, -1.0);
        Some(held)
    }

    /// The held rows, if any are held now.
    fn holding(&self) -> Option<&HeldRows> {
        self.held.as_deref().filter(|h| h.count > 0)
    }

    fn refresh_held_if_due(&mut self) {
        if self
            .held
            .as_ref()
            .is_some_and(|h| h.updates_since_refresh >= REFRESH_INTERVAL)
        {
            self.refresh_held();
        }
    }

    /// Recomputes `(A + H)^-1` exactly, as [`RidgeModel::refresh`] does `A^-1`.
    fn refresh_held(&mut self) {
        let Some(held) = self.held.as_mut().filter(|h| h.count > 0) else {
            return;
        };
        held.updates_since_refresh = 0;
        let sum = self.precision.to_matrix() + held.rows.to_matrix();
        if let Some(factor) = Cholesky::new_with_substitute(sum, self.lambda * 1e-9) {
            held.covariance = PackedSymmetric::from_matrix(&factor.inverse());
        }
    }

    /// Learns the quality `r` of a held row `x` ([`RidgeModel::hold`]): the row leaves `H`
    /// and enters `A`, so `A + H` and the width's `(A + H)^-1` stay as they are, and only
    /// `A^-1` and `theta` change. The same as [`RidgeModel::release`] then
    /// [`RidgeModel::update`], without the two rank-one updates of `(A + H)^-1` that cancel.
    pub fn learn_held(&mut self, x: &[f64], r: f64) {
        if self.holding().is_none() {
            return self.update(x, r);
        }
        self.unhold(x);
        self.learn_row(x, r, 1.0);
    }

    /// Adds `(x, r)` with weight `sign` (+1 to learn, -1 to forget an observation).
    fn rank_one(&mut self, x: &[f64], r: f64, sign: f64) {
        if let Some(held) = self.held.as_mut().filter(|h| h.count > 0) {
            held.rank_one(x, sign);
        }
        self.learn_row(x, r, sign);
    }

    /// [`RidgeModel::rank_one`] of `A`, `b` and what derives from them, the held rows'
    /// `(A + H)^-1` left to the caller.
    fn learn_row(&mut self, x: &[f64], r: f64, sign: f64) {
        self.precision.add_outer(x, sign);
        self.b.axpy(sign * r, &DVectorView::from_slice(x, x.len()), 1.0);
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
        let lambda = self.lambda;
        self.change_precision(|a| {
            *a *= gamma;
            for i in 0..a.nrows() {
                a[(i, i)] += (1.0 - gamma) * lambda;
            }
        });
        self.b *= gamma;
        self.b[0] += (1.0 - gamma) * self.lambda * self.prior_bias;
        self.count *= gamma;
        self.refresh();
    }

    /// Adds a prior fitted offline that counts as `observations`: `A += s P`,
    /// `b += s X'y` (see [`crate::prior`]).
    pub fn absorb_prior(&mut self, prior: &RidgePrior, observations: f64) {
        let dim = self.b.len();
        self.change_precision(|a| *a += prior.precision_matrix(dim));
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
        let learned = replica.precision() - base.precision();
        self.change_precision(|a| *a += learned);
        self.b += &replica.b - &base.b;
        self.count += replica.count - base.count;
        self.refresh();
    }

    /// Recomputes `A^-1` and `theta` exactly from `A` and `b`.
    pub fn refresh(&mut self) {
        self.caches.updates_since_refresh = 0;
        // A = lambda I + sum x x' is positive definite in exact arithmetic; the substitute
        // only guards a pivot that rounding (after many window downdates) pushed to zero.
        let Some(factor) = Cholesky::new_with_substitute(self.precision(), self.lambda * 1e-9) else {
            return;
        };
        self.caches.covariance = PackedSymmetric::from_matrix(&factor.inverse());
        self.caches.theta = factor.solve(&self.b);
        self.caches.fresh = true;
        self.refresh_held();
    }
}

/// The ridge models of all arms, with their forgetting rule, and the families that share
/// strength (see the module docs).
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
    /// Each arm's family, or none; empty in a table without families (and in snapshots
    /// written before them), else one entry per arm.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    families: Vec<Option<String>>,
    /// Per family of two or more arms, the ridge model of all their observations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pooled: BTreeMap<String, RidgeModel>,
    /// Per arm of such a family, its estimate under the family's prior; one entry per arm
    /// when `families` has any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    shared_means: Vec<Option<DVector<f64>>>,
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
            families: Vec::new(),
            pooled: BTreeMap::new(),
            shared_means: Vec::new(),
        }
    }

    /// Puts each arm in its family (`None`: in none), replacing any families it had.
    pub fn assign_families(&mut self, families: Vec<Option<String>>) {
        assert_eq!(families.len(), self.models.len(), "one family per arm");
        self.families = families;
        self.shared_means = vec![None; self.models.len()];
        self.pooled.clear();
        self.rebuild_all_families();
    }

    /// Whether arms were put in families (see [`RidgeTable::assign_families`]).
    pub fn has_families(&self) -> bool {
        !self.families.is_empty()
    }

    /// Each arm's family, or none; empty in a table without families.
    pub fn families(&self) -> &[Option<String>] {
        &self.families
    }

    /// The model of one arm, learned from its own observations alone.
    pub fn get(&self, arm: usize) -> &RidgeModel {
        &self.models[arm]
    }

    /// Arm `arm`'s estimate of quality at `x`: under its family's prior when it has one
    /// (see the module docs), else its own model's.
    pub fn mean(&self, arm: usize, x: &[f64]) -> f64 {
        match self.shared_means.get(arm) {
            Some(Some(theta)) => dot(theta.as_slice(), x),
            _ => self.models[arm].mean(x),
        }
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
        self.observe_row(arm, x, r, RidgeModel::update);
    }

    /// [`RidgeTable::observe`] of a row `arm` held ([`RidgeModel::learn_held`]).
    pub fn observe_held(&mut self, arm: usize, x: &[f64], r: f64) {
        self.observe_row(arm, x, r, RidgeModel::learn_held);
    }

    fn observe_row(&mut self, arm: usize, x: &[f64], r: f64, learn: fn(&mut RidgeModel, &[f64], f64)) {
        let mut forgotten = Vec::new();
        match self.forgetting {
            Forgetting::None => {}
            Forgetting::Discount { gamma } => self.models[arm].discount(gamma),
            Forgetting::Window { size } => {
                self.window.push_back((arm, x.to_vec(), r));
                while self.window.len() > size {
                    if let Some((old_arm, old_x, old_r)) = self.window.pop_front() {
                        self.models[old_arm].downdate(&old_x, old_r);
                        if let Some(pooled) = self.pooled_of_mut(old_arm) {
                            pooled.downdate(&old_x, old_r);
                        }
                        forgotten.push(old_arm);
                    }
                }
            }
        }
        learn(&mut self.models[arm], x, r);
        if let Forgetting::Discount { .. } = self.forgetting {
            // The discount changed the arm's whole history, not one row of it.
            self.rebuild_family_of(arm);
        } else {
            if let Some(pooled) = self.pooled_of_mut(arm) {
                pooled.update(x, r);
            }
            self.refresh_shared_means(arm);
        }
        // A forgotten row's family, once, unless the arm's refresh just covered it.
        for old_arm in forgotten {
            if self.family_of(old_arm) != self.family_of(arm) {
                self.refresh_shared_means(old_arm);
            }
        }
    }

    /// Counts a row of `arm` whose quality is on its way in the arm's width (see
    /// [`RidgeModel::hold`]).
    pub fn hold(&mut self, arm: usize, x: &[f64]) {
        self.models[arm].hold(x);
    }

    /// Takes a held row of `arm` out of its width again.
    pub fn release(&mut self, arm: usize, x: &[f64]) {
        self.models[arm].release(x);
    }

    /// Adds what `replica` learned since `base` to every arm (see
    /// [`crate::stats::ArmStatsTable::merge`]; the same condition: no forgetting).
    pub fn merge(&mut self, replica: &RidgeTable, base: &RidgeTable) -> Result<()> {
        check_mergeable(self.forgetting, [self.len(), replica.len(), base.len()])?;
        for ((mine, r), b) in self.models.iter_mut().zip(&replica.models).zip(&base.models) {
            mine.merge(r, b);
        }
        self.rebuild_all_families();
        Ok(())
    }

    /// Appends a prior model for a new arm, in `family` if given.
    pub fn add_arm(&mut self, family: Option<String>) {
        self.models
            .push(RidgeModel::with_prior(self.dim, self.lambda, self.prior_bias));
        if family.is_none() && self.families.is_empty() {
            return;
        }
        let arms = self.models.len();
        self.families.resize(arms - 1, None);
        self.families.push(family);
        self.shared_means.resize(arms, None);
        self.rebuild_family_of(arms - 1);
    }

    /// Adds a prior to one arm's model (see [`RidgeModel::absorb_prior`]).
    pub fn absorb_prior(&mut self, arm: usize, prior: &RidgePrior, observations: f64) {
        self.models[arm].absorb_prior(prior, observations);
        self.rebuild_family_of(arm);
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
            self.rebuild_family_of(arm);
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
        if arm < self.families.len() {
            let family = self.families.remove(arm);
            self.shared_means.remove(arm);
            if let Some(family) = family {
                self.rebuild_family(&family);
            }
        }
    }

    fn family_of(&self, arm: usize) -> Option<&str> {
        self.families.get(arm).and_then(Option::as_deref)
    }

    fn members(&self, family: &str) -> Vec<usize> {
        (0..self.families.len())
            .filter(|&a| self.family_of(a) == Some(family))
            .collect()
    }

    fn pooled_of_mut(&mut self, arm: usize) -> Option<&mut RidgeModel> {
        let family = self.families.get(arm)?.as_deref()?;
        self.pooled.get_mut(family)
    }

    fn rebuild_all_families(&mut self) {
        let families: BTreeSet<String> = self.families.iter().flatten().cloned().collect();
        for family in &families {
            self.rebuild_family(family);
        }
    }

    fn rebuild_family_of(&mut self, arm: usize) {
        if let Some(family) = self.family_of(arm).map(str::to_owned) {
            self.rebuild_family(&family);
        }
    }

    /// The pooled model of `family` from its arms' statistics, `A = lambda I + sum_a (A_a -
    /// lambda I)`, `b = lambda theta0 + sum_a (b_a - lambda theta0)`; none for a family of
    /// fewer than two arms.
    fn rebuild_family(&mut self, family: &str) {
        let members = self.members(family);
        if members.len() < 2 {
            self.pooled.remove(family);
            for a in members {
                self.shared_means[a] = None;
            }
            return;
        }
        let prior = RidgeModel::with_prior(self.dim, self.lambda, self.prior_bias);
        let mut pooled = prior.clone();
        let prior_precision = prior.precision();
        let mut precision = prior_precision.clone();
        for &a in &members {
            let model = &self.models[a];
            precision += model.precision() - &prior_precision;
            pooled.b += &model.b - &prior.b;
            pooled.count += model.count;
        }
        pooled.precision = PackedSymmetric::from_matrix(&precision);
        pooled.refresh();
        self.pooled.insert(family.to_owned(), pooled);
        self.refresh_shared_means(members[0]);
    }

    /// Recomputes the estimates of the arms in `arm`'s family (if it is pooled): with the
    /// family's prompt weights `delta` (its pooled estimate with the bias left out) as the
    /// prior mean's, arm `a`'s estimate is `A_a^-1 (b_a + lambda delta) = theta_a + lambda
    /// A_a^-1 delta`.
    fn refresh_shared_means(&mut self, arm: usize) {
        let Some(family) = self.family_of(arm) else {
            return;
        };
        let Some(pooled) = self.pooled.get(family) else {
            return;
        };
        let mut delta = pooled.theta().clone();
        delta[0] = 0.0;
        let (dim, lambda) = (self.dim, self.lambda);
        for a in self.members(family) {
            let model = &self.models[a];
            let shift = model.caches.covariance.mul(delta.as_slice());
            // The estimate's buffer is reused from update to update.
            let theta = self.shared_means[a].get_or_insert_with(|| DVector::zeros(dim));
            theta.copy_from(model.theta());
            theta.axpy(lambda, &DVectorView::from_slice(&shift, dim), 1.0);
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
        // An older, full `A` that is not square is refused too.
        let mut skewed = serde_json::to_value(&model).unwrap();
        let object = skewed.as_object_mut().unwrap();
        object.remove("packed_precision");
        object.insert(
            "precision".into(),
            serde_json::to_value(DMatrix::<f64>::zeros(3, 4)).unwrap(),
        );
        let err = serde_json::from_value::<RidgeModel>(skewed).unwrap_err();
        assert!(
            err.to_string().contains("a ridge model with a 3x4 precision"),
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

    /// Observations of `arms` arms in dimension `dim`: a bias, then uniform features; each
    /// arm's quality shares the prompt weights `w` around a level of its own, plus noise.
    fn family_rows(seed: u64, arms: usize, rows: usize) -> Vec<(usize, Vec<f64>, f64)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let w = [0.0, 0.3, -0.2, 0.25];
        (0..rows)
            .map(|i| {
                let arm = i % arms;
                let x: Vec<f64> = (0..4)
                    .map(|j| if j == 0 { 1.0 } else { rng.random_range(-1.0..1.0) })
                    .collect();
                let r = 0.4 + 0.1 * arm as f64 + dot(&w, &x) + rng.random_range(-0.05..0.05);
                (arm, x, r)
            })
            .collect()
    }

    fn families(names: &[Option<&str>]) -> Vec<Option<String>> {
        names.iter().map(|f| f.map(str::to_owned)).collect()
    }

    #[test]
    fn family_estimates_equal_the_closed_form() {
        let (dim, lambda) = (4, 3.0);
        let mut table = RidgeTable::new(3, dim, lambda, Forgetting::None);
        table.assign_families(families(&[Some("f"), Some("f"), Some("g")]));
        let rows = family_rows(1, 3, 60);
        for (arm, x, r) in &rows {
            table.observe(*arm, x, *r);
        }
        // Brute force: the normal equations of each arm and of the family, solved by LU.
        let theta0 = DVector::from_fn(dim, |i, _| if i == 0 { OPTIMISTIC_QUALITY } else { 0.0 });
        let statistics = |arms: &[usize]| {
            let mut a = DMatrix::identity(dim, dim) * lambda;
            let mut b = &theta0 * lambda;
            for (_, x, r) in rows.iter().filter(|(arm, _, _)| arms.contains(arm)) {
                let x = DVector::from_column_slice(x);
                a += &x * x.transpose();
                b += x * *r;
            }
            (a, b)
        };
        let (a_f, b_f) = statistics(&[0, 1]);
        let mut delta = a_f.lu().solve(&b_f).unwrap();
        delta[0] = 0.0;
        let probe = [1.0, 0.4, -0.7, 0.2];
        for arm in 0..3 {
            let (a, b) = statistics(&[arm]);
            let prior_shift = if arm < 2 {
                &delta * lambda
            } else {
                DVector::zeros(dim)
            };
            let theta = a.lu().solve(&(b + prior_shift)).unwrap();
            let want = dot(theta.as_slice(), &probe);
            let got = table.mean(arm, &probe);
            assert!((got - want).abs() < 1e-9, "arm {arm}: {got} vs {want}");
        }
        // An arm alone in its family is its own model, to the bit.
        assert_eq!(table.mean(2, &probe), table.get(2).mean(&probe));
    }

    #[test]
    fn a_new_family_member_starts_from_its_familys_prompt_weights() {
        let probes = [
            [1.0, 0.8, -0.5, 0.1],
            [1.0, -0.6, 0.9, -0.4],
            [1.0, 0.2, 0.2, 0.9],
        ];
        let w = [0.0, 0.3, -0.2, 0.25];
        let weights_error = |table: &RidgeTable| -> f64 {
            // The estimate's differences between prompts against the true ones: the bias,
            // the arm's level, cancels.
            let base = table.mean(2, &probes[0]);
            probes[1..]
                .iter()
                .map(|p| {
                    let got = table.mean(2, p) - base;
                    let want = dot(&w, p) - dot(&w, &probes[0]);
                    (got - want).abs()
                })
                .sum()
        };
        let mut alone = RidgeTable::new(3, 4, 10.0, Forgetting::None);
        alone.assign_families(families(&[Some("f"), Some("g"), Some("h")]));
        let mut shared = RidgeTable::new(3, 4, 10.0, Forgetting::None);
        shared.assign_families(families(&[Some("f"), Some("f"), Some("f")]));
        // Arms 0 and 1 learn from 400 rows; arm 2 has seen none.
        for (arm, x, r) in family_rows(2, 2, 400) {
            alone.observe(arm, &x, r);
            shared.observe(arm, &x, r);
        }
        // Alone, arm 2 predicts every prompt alike: the error is the whole effect of the
        // prompts. With its family it is the family's: the ridge's shrinkage over 400 rows
        // of features of variance 1/3 (about 10 / (400 / 3 + 10), 7%) and the noise's.
        let effect: f64 = probes[1..]
            .iter()
            .map(|p| (dot(&w, p) - dot(&w, &probes[0])).abs())
            .sum();
        let (alone_error, shared_error) = (weights_error(&alone), weights_error(&shared));
        assert!((alone_error - effect).abs() < 1e-12, "{alone_error} vs {effect}");
        assert!(
            shared_error < 0.15 * effect,
            "{shared_error} against {alone_error} alone"
        );
    }

    #[test]
    fn family_estimates_kept_by_updates_equal_a_rebuild() {
        let names = families(&[Some("f"), Some("f"), None, Some("f"), Some("g")]);
        for forgetting in [
            Forgetting::None,
            Forgetting::Window { size: 25 },
            Forgetting::Discount { gamma: 0.97 },
        ] {
            let mut table = RidgeTable::new(5, 4, 2.0, forgetting);
            table.assign_families(names.clone());
            for (arm, x, r) in family_rows(3, 5, 200) {
                table.observe(arm, &x, r);
            }
            table.shrink_arm(1, 5.0);
            table.add_arm(Some("g".into()));
            table.remove_arm(0);
            for (arm, x, r) in family_rows(4, 5, 50) {
                table.observe(arm, &x, r);
            }
            let mut rebuilt = table.clone();
            rebuilt.assign_families(table.families.clone());
            let probe = [1.0, -0.3, 0.5, 0.8];
            for arm in 0..table.len() {
                let (got, want) = (table.mean(arm, &probe), rebuilt.mean(arm, &probe));
                assert!(
                    (got - want).abs() < 1e-9,
                    "{forgetting:?}, arm {arm}: {got} vs {want}"
                );
            }
            // "g" has two arms now (the one added and the last); "f" two after the removal.
            assert_eq!(table.pooled.len(), 2, "{forgetting:?}");
        }
    }

    #[test]
    fn a_table_with_families_reads_back_bit_for_bit_and_older_ones_have_none() {
        let mut table = RidgeTable::new(3, 4, 2.0, Forgetting::None);
        table.assign_families(families(&[Some("f"), Some("f"), Some("g")]));
        for (arm, x, r) in family_rows(5, 3, 90) {
            table.observe(arm, &x, r);
        }
        let text = serde_json::to_value(&table).unwrap();
        let back: RidgeTable = serde_json::from_value(text.clone()).unwrap();
        let probe = [1.0, 0.1, 0.2, 0.3];
        for arm in 0..3 {
            assert_eq!(back.mean(arm, &probe), table.mean(arm, &probe));
        }
        let mut older = text;
        for key in ["families", "pooled", "shared_means"] {
            older.as_object_mut().unwrap().remove(key);
        }
        let older: RidgeTable = serde_json::from_value(older).unwrap();
        assert!(!older.has_families());
        assert_eq!(older.mean(0, &probe), table.get(0).mean(&probe));
    }

    /// A held row narrows the width as the coming quality will and moves no estimate (in
    /// a family too); released, it leaves the model as it was, so that a quality then
    /// learned leaves it as if learned at once. Rows held across updates, a window's
    /// forgetting and a refactorization keep the width `x' (A + H)^-1 x` of the closed form.
    #[test]
    fn a_held_row_narrows_the_width_and_moves_no_estimate() {
        let (x, q) = ([1.0, 0.3, -0.6, 0.8], 0.9);
        let probe = [1.0, -0.2, 0.5, 0.1];
        for family in [None, Some("f")] {
            let rows = family_rows(3, 2, 40);
            let build = || {
                let mut table = RidgeTable::new(2, 4, 3.0, Forgetting::None);
                table.assign_families(families(&[family, family]));
                for (arm, x, r) in &rows {
                    table.observe(*arm, x, *r);
                }
                table
            };
            let before = build();
            let mut learned = build();
            learned.observe(0, &x, q);
            let mut held = build();
            held.hold(0, &x);
            for arm in 0..2 {
                for p in [&x, &probe] {
                    assert_eq!(held.mean(arm, p), before.mean(arm, p), "{family:?}");
                    let (v, w) = (held.get(arm).variance(p), learned.get(arm).variance(p));
                    assert!((v - w).abs() < 1e-12, "{family:?}, arm {arm}: {v} vs {w}");
                }
            }
            assert!(held.get(0).variance(&x) < before.get(0).variance(&x));
            held.release(0, &x);
            assert_eq!(held.get(0), before.get(0));
            held.observe(0, &x, q);
            for p in [&x, &probe] {
                let (m, n) = (held.mean(0, p), learned.mean(0, p));
                assert!((m - n).abs() < 1e-12, "{family:?}: {m} vs {n}");
                assert_eq!(held.get(0).variance(p), learned.get(0).variance(p));
            }
        }

        // Many rows held across a window's updates and refactorizations.
        let mut table = RidgeTable::new(1, 4, 3.0, Forgetting::Window { size: 50 });
        let rows = family_rows(4, 1, 900);
        let mut pending = VecDeque::new();
        for (i, (_, x, r)) in rows.iter().enumerate() {
            table.hold(0, x);
            pending.push_back((x, *r));
            if i % 3 != 0 {
                let (x, r) = pending.pop_front().unwrap();
                table.release(0, x);
                table.observe(0, x, r);
            }
        }
        let model = table.get(0);
        let mut sum = model.precision();
        for (x, _) in &pending {
            let x = DVector::from_column_slice(x.as_slice());
            sum += &x * x.transpose();
        }
        let want = sum.lu().solve(&DVector::from_column_slice(&probe)).unwrap();
        let want = dot(want.as_slice(), &probe);
        let got = model.variance(&probe);
        assert!((got - want).abs() < 1e-12 * want.max(1.0), "{got} vs {want}");
    }

    /// A held row's quality learned in one step ([`RidgeTable::observe_held`]: the row
    /// moves from `H` to `A`, and `(A + H)^-1` is left as it is) leaves the model as
    /// releasing the row, then learning it, does: in a family and without, under
    /// forgetting, over rows held across updates and refactorizations.
    #[test]
    fn a_held_rows_quality_learned_in_one_step_equals_release_then_update() {
        let probes = [[1.0, -0.2, 0.5, 0.1], [1.0, 0.7, 0.1, -0.4]];
        let cases = [
            (None, Forgetting::None),
            (Some("f"), Forgetting::None),
            (None, Forgetting::Window { size: 50 }),
            (Some("f"), Forgetting::Discount { gamma: 0.995 }),
        ];
        for (family, forgetting) in cases {
            let [mut apart, mut fused] = [(); 2].map(|_| {
                let mut table = RidgeTable::new(2, 4, 3.0, forgetting);
                table.assign_families(families(&[family, family]));
                table
            });
            let mut pending = VecDeque::new();
            for (i, row) in family_rows(5, 2, 900).into_iter().enumerate() {
                apart.hold(row.0, &row.1);
                fused.hold(row.0, &row.1);
                pending.push_back(row);
                if i % 3 != 0 {
                    let (arm, x, r) = pending.pop_front().unwrap();
                    apart.release(arm, &x);
                    apart.observe(arm, &x, r);
                    fused.observe_held(arm, &x, r);
                }
            }
            for arm in 0..2 {
                for p in &probes {
                    let (m, n) = (fused.mean(arm, p), apart.mean(arm, p));
                    assert!(
                        (m - n).abs() < 1e-9,
                        "{family:?} {forgetting:?}, arm {arm}: {m} vs {n}"
                    );
                    let (v, w) = (fused.get(arm).variance(p), apart.get(arm).variance(p));
                    assert!(
                        (v - w).abs() < 1e-9 * w,
                        "{family:?} {forgetting:?}, arm {arm}: {v} vs {w}"
                    );
                }
            }
        }
    }
}
