//! A symmetric matrix stored as its upper triangle, row by row.
//!
//! `x' C x` and `C x` are the hot path of every linear policy's decision. Storing only the
//! upper triangle halves both the memory each decision streams through (K matrices of
//! d(d+1)/2 values) and the multiply-adds, and every inner loop is a contiguous slice that
//! the compiler vectorizes.
//!
//! The baseline x86-64 target has only 2-wide SSE2 vectors, so the three kernels are also
//! compiled for AVX2 and AVX-512 and chosen at run time. The results are bit-identical on
//! every path: the code is the same scalar arithmetic on eight independent accumulators
//! (no fused multiply-add), and vector width only changes how many lanes run at once.

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

/// The dot product of `a` and `b` in eight lanes, not yet summed across them, and the
/// product of the remainder past the last full chunk of eight.
#[inline(always)]
fn dot_lanes(a: &[f64], b: &[f64]) -> ([f64; 8], f64) {
    let (chunks_a, chunks_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut tail = 0.0;
    for (x, y) in chunks_a.remainder().iter().zip(chunks_b.remainder()) {
        tail += x * y;
    }
    let mut lanes = [0.0; 8];
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    (lanes, tail)
}

/// Sums eight lanes in a fixed order.
#[inline(always)]
fn sum_lanes(lanes: [f64; 8]) -> f64 {
    let mut sum = 0.0;
    for lane in lanes {
        sum += lane;
    }
    sum
}

/// Dot product with eight independent accumulators, so that the compiler vectorizes it
/// (a single running sum is a serial dependency chain it may not reorder).
#[inline(always)]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let (lanes, tail) = dot_lanes(a, b);
    sum_lanes(lanes) + tail
}

/// `y += alpha * x`.
#[inline(always)]
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
        row_start(self.dim, i)
    }

    /// `C[i][i..dim]`.
    pub fn row(&self, i: usize) -> &[f64] {
        let start = self.row_start(i);
        &self.data[start..start + self.dim - i]
    }

    /// `x' C x = sum_i x_i (C_ii x_i + 2 sum_{j>i} C_ij x_j)`.
    pub fn quadratic_form(&self, x: &[f64]) -> f64 {
        quadratic_form(&self.data, self.dim, x)
    }

    /// `C x`.
    pub fn mul_vec(&self, x: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.dim];
        mul_vec(&self.data, self.dim, x, &mut out);
        out
    }

    /// `C += alpha u u'`.
    pub fn rank_one_update(&mut self, alpha: f64, u: &[f64]) {
        rank_one_update(&mut self.data, self.dim, alpha, u);
    }
}

/// Offset of row `i` of a packed `dim x dim` upper triangle.
#[inline(always)]
fn row_start(dim: usize, i: usize) -> usize {
    i * (2 * dim - i + 1) / 2
}

/// `x' C x = sum_i x_i (C_ii x_i + 2 sum_{j>i} C_ij x_j)`. Each row's off-diagonal dot
/// product stays in eight lanes, scaled by `x_i` into eight running totals, and only the
/// totals are summed across lanes at the end: one horizontal sum instead of one per row.
// Plain loops, no iterator adaptors over rows: their closures would be separate functions
// that need not inline into the target-feature wrappers, and would run at baseline width.
#[inline(always)]
fn quadratic_form_kernel(data: &[f64], dim: usize, x: &[f64]) -> f64 {
    let mut totals = [0.0; 8];
    let mut scalar = 0.0;
    for i in 0..dim {
        let row = &data[row_start(dim, i)..row_start(dim, i + 1)];
        let (lanes, tail) = dot_lanes(&row[1..], &x[i + 1..]);
        for lane in 0..8 {
            totals[lane] += x[i] * lanes[lane];
        }
        scalar += x[i] * (row[0] * x[i] + 2.0 * tail);
    }
    let sum = sum_lanes(totals);
    scalar + 2.0 * sum
}

#[inline(always)]
fn mul_vec_kernel(data: &[f64], dim: usize, x: &[f64], out: &mut [f64]) {
    for i in 0..dim {
        let row = &data[row_start(dim, i)..row_start(dim, i + 1)];
        out[i] += row[0] * x[i] + dot(&row[1..], &x[i + 1..]);
        axpy(x[i], &row[1..], &mut out[i + 1..]);
    }
}

#[inline(always)]
fn rank_one_update_kernel(data: &mut [f64], dim: usize, alpha: f64, u: &[f64]) {
    for i in 0..dim {
        let scale = alpha * u[i];
        axpy(
            scale,
            &u[i..],
            &mut data[row_start(dim, i)..row_start(dim, i + 1)],
        );
    }
}

/// The widest vector unit of this CPU, detected once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vectors {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn vectors() -> Vectors {
    static DETECTED: std::sync::OnceLock<Vectors> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Vectors::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Vectors::Avx2;
            }
        }
        Vectors::Baseline
    })
}

/// `fn $name(args) -> ret` running `$kernel` compiled for the widest vectors available.
macro_rules! dispatched {
    ($name:ident => $kernel:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                match vectors() {
                    // SAFETY: `vectors()` detected the feature on this CPU.
                    Vectors::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    Vectors::Avx2 => return unsafe { avx2($($arg),*) },
                    Vectors::Baseline => {}
                }
            }
            $kernel($($arg),*)
        }
    };
}

dispatched!(quadratic_form => quadratic_form_kernel(data: &[f64], dim: usize, x: &[f64]) -> f64);
dispatched!(mul_vec => mul_vec_kernel(data: &[f64], dim: usize, x: &[f64], out: &mut [f64]));
dispatched!(rank_one_update => rank_one_update_kernel(data: &mut [f64], dim: usize, alpha: f64, u: &[f64]));

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

    /// The kernels this CPU dispatches to give the baseline kernels' results bit for bit,
    /// at a size with full 8-lane chunks and remainders.
    #[test]
    fn dispatched_kernels_equal_the_baseline_bit_for_bit() {
        let dim = 67;
        let x: Vec<f64> = (0..dim).map(|i| (i as f64 * 1.3).sin() / 3.0).collect();
        let mut packed = PackedSymmetric::scaled_identity(dim, 1.5);
        packed.rank_one_update(0.7, &x);
        let mut baseline = packed.data.clone();
        rank_one_update_kernel(&mut baseline, dim, 0.7, &x);
        packed.rank_one_update(0.7, &x);
        assert!(packed
            .data
            .iter()
            .zip(&baseline)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        let want = quadratic_form_kernel(&packed.data, dim, &x);
        assert_eq!(packed.quadratic_form(&x).to_bits(), want.to_bits());
        let mut out = vec![0.0; dim];
        mul_vec_kernel(&packed.data, dim, &x, &mut out);
        let got = packed.mul_vec(&x);
        assert!(got.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
