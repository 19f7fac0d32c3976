//! A symmetric matrix stored as its upper triangle, row by row.
//!
//! `x' C x` and `C x` are the hot path of every linear policy's decision. Storing only the
//! upper triangle halves both the memory each decision streams through (K matrices of
//! d(d+1)/2 values) and the multiply-adds, and every inner loop is a contiguous slice that
//! the compiler vectorizes.

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

/// Dot product with eight independent accumulators, so that the compiler vectorizes it
/// (a single running sum is a serial dependency chain it may not reorder).
#[inline]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let (chunks_a, chunks_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut acc = [0.0; 8];
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `y += alpha * x`.
#[inline]
fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// Symmetric `dim x dim` matrix; row `i` holds `C[i][i..dim]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedSymmetric {
    dim: usize,
    data: Vec<f64>,
}

impl PackedSymmetric {
    /// `scale * I`.
    pub fn scaled_identity(dim: usize, scale: f64) -> Self {
        let mut m = PackedSymmetric {
            dim,
            data: vec![0.0; dim * (dim + 1) / 2],
        };
        for i in 0..dim {
            let start = m.row_start(i);
            m.data[start] = scale;
        }
        m
    }

    /// The upper triangle of `matrix` (assumed symmetric).
    pub fn from_matrix(matrix: &DMatrix<f64>) -> Self {
        let dim = matrix.nrows();
        let data = (0..dim)
            .flat_map(|i| (i..dim).map(move |j| matrix[(i, j)]))
            .collect();
        PackedSymmetric { dim, data }
    }

    /// The full matrix.
    pub fn to_matrix(&self) -> DMatrix<f64> {
        DMatrix::from_fn(self.dim, self.dim, |i, j| {
            let (r, c) = if i <= j { (i, j) } else { (j, i) };
            self.row(r)[c - r]
        })
    }

    /// Offset of row `i`: the rows before it hold `dim + (dim - 1) + ... + (dim - i + 1)`.
    fn row_start(&self, i: usize) -> usize {
        i * (2 * self.dim - i + 1) / 2
    }

    /// `C[i][i..dim]`.
    pub fn row(&self, i: usize) -> &[f64] {
        let start = self.row_start(i);
        &self.data[start..start + self.dim - i]
    }

    fn row_mut(&mut self, i: usize) -> &mut [f64] {
        let start = self.row_start(i);
        let len = self.dim - i;
        &mut self.data[start..start + len]
    }

    /// `x' C x = sum_i x_i (C_ii x_i + 2 sum_{j>i} C_ij x_j)`.
    pub fn quadratic_form(&self, x: &[f64]) -> f64 {
        (0..self.dim)
            .map(|i| {
                let row = self.row(i);
                x[i] * (row[0] * x[i] + 2.0 * dot(&row[1..], &x[i + 1..]))
            })
            .sum()
    }

    /// `C x`.
    pub fn mul_vec(&self, x: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.dim];
        for i in 0..self.dim {
            let row = self.row(i);
            out[i] += row[0] * x[i] + dot(&row[1..], &x[i + 1..]);
            axpy(x[i], &row[1..], &mut out[i + 1..]);
        }
        out
    }

    /// `C += alpha u u'`.
    pub fn rank_one_update(&mut self, alpha: f64, u: &[f64]) {
        for i in 0..self.dim {
            let scale = alpha * u[i];
            axpy(scale, &u[i..], self.row_mut(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_operations_match_the_dense_ones() {
        let dim = 11;
        let dense = DMatrix::from_fn(dim, dim, |i, j| {
            1.0 / (1.0 + i as f64 + j as f64) + if i == j { 2.0 } else { 0.0 }
        });
        let x: Vec<f64> = (0..dim).map(|i| (i as f64 * 0.7).sin()).collect();
        let xv = nalgebra::DVector::from_column_slice(&x);
        let mut packed = PackedSymmetric::from_matrix(&dense);
        assert_eq!(packed.to_matrix(), dense);
        assert!((packed.quadratic_form(&x) - xv.dot(&(&dense * &xv))).abs() < 1e-12);
        for (a, b) in packed.mul_vec(&x).iter().zip((&dense * &xv).iter()) {
            assert!((a - b).abs() < 1e-12);
        }
        packed.rank_one_update(-0.3, &x);
        let updated = &dense - &xv * xv.transpose() * 0.3;
        assert!((packed.to_matrix() - updated).abs().max() < 1e-12);
        assert_eq!(
            PackedSymmetric::scaled_identity(3, 2.0).to_matrix(),
            DMatrix::identity(3, 3) * 2.0
        );
        assert!((dot(&x, &x) - xv.norm_squared()).abs() < 1e-12);
    }
}
