//! The reward model behind DM, DR, SNDR and Switch-DR: per-arm ridge regression of the
//! observed metric on the context, cross-fitted so that no row is predicted by a model that
//! saw it (Chernozhukov et al. 2018): the rows are split by parity into two folds, and each
//! fold is predicted by the models fitted on the other.

use nalgebra::{DMatrix, DVector};
use ndarray::Array2;

/// Ridge penalty of the reward model.
pub const RIDGE_LAMBDA: f64 = 1.0;

/// Predictions `q(x_i, a)` for every row and arm (`rows x arms`).
/// `rows` lists `(context, logged arm, observed metric)`; rows with no observation
/// (`None`) are predicted but not fitted on.
pub fn cross_fitted_predictions(rows: &[(&[f64], usize, Option<f64>)], arms: usize) -> Array2<f64> {
    let dim = rows.first().map_or(0, |r| r.0.len());
    let fit = |fold: usize| -> Vec<DVector<f64>> {
        let mut a: Vec<DMatrix<f64>> = vec![DMatrix::identity(dim, dim) * RIDGE_LAMBDA; arms];
        let mut b: Vec<DVector<f64>> = vec![DVector::zeros(dim); arms];
        for (i, (x, arm, r)) in rows.iter().enumerate() {
            if let (true, Some(r)) = (i % 2 == fold, r) {
                let xv = DVector::from_column_slice(x);
                a[*arm].ger(1.0, &xv, &xv, 1.0);
                b[*arm].axpy(*r, &xv, 1.0);
            }
        }
        a.into_iter()
            .zip(b)
            .map(|(a, b)| a.cholesky().map_or_else(|| DVector::zeros(dim), |c| c.solve(&b)))
            .collect()
    };
    let models = [fit(0), fit(1)];
    let mut out = Array2::zeros((rows.len(), arms));
    for (i, (x, _, _)) in rows.iter().enumerate() {
        let xv = DVector::from_column_slice(x);
        for (q, theta) in out.row_mut(i).iter_mut().zip(&models[1 - i % 2]) {
            *q = theta.dot(&xv);
        }
    }
    out
}
