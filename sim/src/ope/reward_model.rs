//! The reward model behind DM, DR, SNDR and Switch-DR: per-arm ridge regression of the
//! observed metric on the context, cross-fitted so that no row is predicted by a model that
//! saw it (Chernozhukov et al. 2018): the rows are split by parity into two folds, and each
//! fold is predicted by the models fitted on the other. The fit keeps sufficient
//! statistics only, so rows can come a chunk at a time.

use nalgebra::DVector;
use quiver_bandit::PackedSymmetric;

/// Ridge penalty of the reward model.
pub const RIDGE_LAMBDA: f64 = 1.0;

/// Each fold's per-arm `X'X + lambda I` (its upper triangle) and `X'r`, as rows come.
pub struct RewardFit {
    folds: [Vec<(PackedSymmetric, Vec<f64>)>; 2],
}

impl RewardFit {
    /// No rows yet, for contexts of `dim` features and `arms` arms.
    pub fn new(dim: usize, arms: usize) -> Self {
        let empty = || {
            vec![
                (
                    PackedSymmetric::scaled_identity(dim, RIDGE_LAMBDA),
                    vec![0.0; dim]
                );
                arms
            ]
        };
        RewardFit {
            folds: [empty(), empty()],
        }
    }

    /// Row `i` of the log: its context, logged arm and observed metric (`None`: predicted
    /// but not fitted on).
    pub fn add(&mut self, i: usize, x: &[f64], arm: usize, r: Option<f64>) {
        let Some(r) = r else { return };
        let (a, b) = &mut self.folds[i % 2][arm];
        a.add_outer(x, 1.0);
        for (b, x) in b.iter_mut().zip(x) {
            *b += r * x;
        }
    }

    /// The fitted models.
    pub fn solve(self) -> CrossFitted {
        CrossFitted {
            models: self.folds.map(|fold| {
                fold.into_iter()
                    .map(|(a, b)| {
                        let b = DVector::from_vec(b);
                        a.to_matrix()
                            .cholesky()
                            .map_or_else(|| b.map(|_| 0.0), |c| c.solve(&b))
                    })
                    .collect()
            }),
        }
    }
}

/// Each fold's per-arm coefficients.
pub struct CrossFitted {
    models: [Vec<DVector<f64>>; 2],
}

impl CrossFitted {
    /// `q(x_i, a)` for every arm, into `out`, by the models that did not see row `i`.
    pub fn predict(&self, i: usize, x: &[f64], out: &mut [f64]) {
        let xv = DVector::from_column_slice(x);
        for (q, theta) in out.iter_mut().zip(&self.models[1 - i % 2]) {
            *q = theta.dot(&xv);
        }
    }
}
