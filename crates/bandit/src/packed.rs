//! A symmetric matrix stored as its upper triangle, row by row.
//!
//! `x' C x` and `C x` are the hot path of every linear policy's decision. Storing only the
//! upper triangle halves both the memory each decision streams through (K matrices of
//! d(d+1)/2 values) and the multiply-adds, and every inner loop is a contiguous slice that
//! the compiler vectorizes.
//!
//! The rows have every length from `dim` down to 1, so most end in a part of a chunk of
//! eight. The kernels do not run a scalar loop for that part: they take the chunk whole,
//! past the row's end (into the next row, or into [`PADDING`] zeros kept after the last
//! one), against a copy of `x` (or `u`) followed by zeros. The values past the row then
//! add, or receive, exact zeros, and every row is whole vectors.
//!
//! The three kernels are [`dispatched`]: compiled for AVX2 and AVX-512 too and chosen at
//! run time. The code is the same scalar arithmetic on eight independent accumulators, so
//! the results are bit-identical on every path.

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize, Serializer};

use crate::vectors::dispatched;

/// Lanes of the accumulators, and zeros kept past the data so that a row's last chunk can
/// be read whole.
const LANES: usize = 8;
const PADDING: usize = LANES;

/// The dot product of `a` and `b` in eight lanes, not yet summed across them, and the
/// product of the remainder past the last full chunk of eight.
#[inline(always)]
fn dot_lanes(a: &[f64], b: &[f64]) -> ([f64; LANES], f64) {
    let ((chunks_a, rest_a), (chunks_b, rest_b)) = (a.as_chunks(), b.as_chunks());
    let mut tail = 0.0;
    for (x, y) in rest_a.iter().zip(rest_b) {
        tail += x * y;
    }
    (chunk_lanes(chunks_a, chunks_b), tail)
}

/// The dot product of whole chunks, in eight lanes not yet summed across them.
#[inline(always)]
fn chunk_lanes(a: &[[f64; LANES]], b: &[[f64; LANES]]) -> [f64; LANES] {
    let mut lanes = [0.0; LANES];
    for (x, y) in a.iter().zip(b) {
        for i in 0..LANES {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes
}

/// Sums eight lanes in a fixed order.
#[inline(always)]
fn sum_lanes(lanes: [f64; LANES]) -> f64 {
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

/// `a` as whole chunks of eight: its length is a multiple of eight.
#[inline(always)]
fn chunks(a: &[f64]) -> &[[f64; LANES]] {
    let (chunks, rest) = a.as_chunks();
    debug_assert!(rest.is_empty());
    chunks
}

/// [`dot_lanes`] of slices that are whole chunks, which need no remainder loop.
#[inline(always)]
fn dot_chunks(a: &[f64], b: &[f64]) -> [f64; LANES] {
    chunk_lanes(chunks(a), chunks(b))
}

/// `y += alpha * x` over whole chunks of eight.
#[inline(always)]
fn axpy_chunks(alpha: f64, x: &[f64], y: &mut [f64]) {
    let (y_chunks, rest) = y.as_chunks_mut::<LANES>();
    debug_assert!(rest.is_empty());
    for (yc, xc) in y_chunks.iter_mut().zip(chunks(x)) {
        for i in 0..LANES {
            yc[i] += alpha * xc[i];
        }
    }
}

/// Calls `f` with `x` followed by [`PADDING`] zeros.
#[inline(always)]
fn with_padded<R>(x: &[f64], f: impl FnOnce(&[f64]) -> R) -> R {
    with_buffer(x, x.len() + PADDING, |padded| f(padded))
}

/// Calls `f` with `len` values: `x`, then zeros; on the stack where they fit.
#[inline(always)]
fn with_buffer<R>(x: &[f64], len: usize, f: impl FnOnce(&mut [f64]) -> R) -> R {
    use std::mem::MaybeUninit;
    // Dimensions up to 248 on the stack. Only the values used are written: zeroing the
    // whole buffer would cost more than the product itself at small dimensions.
    const ON_STACK: usize = 256;
    debug_assert!(x.len() <= len);
    if len <= ON_STACK {
        let mut buffer = [MaybeUninit::<f64>::uninit(); ON_STACK];
        for (slot, &value) in buffer.iter_mut().zip(x) {
            slot.write(value);
        }
        for slot in &mut buffer[x.len()..len] {
            slot.write(0.0);
        }
        // SAFETY: the first `len` slots were written just above, and `MaybeUninit<f64>`
        // has the layout of `f64`.
        f(unsafe { &mut *(&raw mut buffer[..len] as *mut [f64]) })
    } else {
        let mut buffer = x.to_vec();
        buffer.resize(len, 0.0);
        f(&mut buffer)
    }
}

/// Symmetric `dim x dim` matrix; row `i` holds `C[i][i..dim]`, and `PADDING` zeros
/// follow the last row (they are not serialized).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Packed")]
pub struct PackedSymmetric {
    dim: usize,
    #[serde(serialize_with = "without_padding")]
    data: Vec<f64>,
}

/// The serialized form: the rows without the padding.
#[derive(Deserialize)]
struct Packed {
    dim: usize,
    data: Vec<f64>,
}

fn without_padding<S: Serializer>(data: &[f64], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(&data[..data.len() - PADDING])
}

impl TryFrom<Packed> for PackedSymmetric {
    type Error = String;

    fn try_from(Packed { dim, data }: Packed) -> Result<Self, String> {
        if data.len() != dim * (dim + 1) / 2 {
            return Err(format!(
                "a packed {dim} x {dim} matrix holds {} values, not {}",
                dim * (dim + 1) / 2,
                data.len()
            ));
        }
        Ok(PackedSymmetric::from_rows(dim, data))
    }
}

impl PackedSymmetric {
    /// The matrix's dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    fn from_rows(dim: usize, mut data: Vec<f64>) -> Self {
        data.extend([0.0; PADDING]);
        PackedSymmetric { dim, data }
    }

    /// `scale * I`.
    pub fn scaled_identity(dim: usize, scale: f64) -> Self {
        let mut m = PackedSymmetric::from_rows(dim, vec![0.0; dim * (dim + 1) / 2]);
        for i in 0..dim {
            let start = m.row_start(i);
            m.data[start] = scale;
        }
        m
    }

    /// Sets every entry to 0, keeping the storage.
    pub fn set_zero(&mut self) {
        self.data.fill(0.0);
    }

    /// The upper triangle of `matrix` (assumed symmetric).
    pub fn from_matrix(matrix: &DMatrix<f64>) -> Self {
        let dim = matrix.nrows();
        let data = (0..dim)
            .flat_map(|i| (i..dim).map(move |j| matrix[(i, j)]))
            .collect();
        PackedSymmetric::from_rows(dim, data)
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

    /// `x' C x = sum_i C_ii x_i^2 + 2 sum_i x_i sum_{j>i} C_ij x_j`.
    pub fn quadratic_form(&self, x: &[f64]) -> f64 {
        with_padded(x, |x| quadratic_form(&self.data, self.dim, x))
    }

    /// `C x`.
    pub fn mul(&self, x: &[f64]) -> Vec<f64> {
        let dim = self.dim;
        with_padded(x, |x| {
            with_buffer(&[], dim + PADDING, |out| {
                mul_vec(&self.data, dim, x, out);
                out[..dim].to_vec()
            })
        })
    }

    /// `C <- C + w x x'`, the update of a Gram matrix by one row.
    pub fn add_outer(&mut self, x: &[f64], weight: f64) {
        let dim = self.dim;
        with_padded(x, |x| rank_one_update(&mut self.data, dim, weight, x));
    }

    /// The Sherman-Morrison step that keeps `C = A^-1` when `A <- A + w x x'`: with
    /// `u = C x`, `C <- C - w u u' / (1 + w x'u)`. Then calls `then(u, 1 + w x'u)`, `u`
    /// being the product with the matrix before the step.
    ///
    /// `u` stays in a stack buffer, padded for the update's whole chunks.
    pub fn sherman_morrison(&mut self, x: &[f64], weight: f64, then: impl FnOnce(&[f64], f64)) {
        let dim = self.dim;
        with_padded(x, |x| {
            with_buffer(&[], dim + PADDING, |u| {
                mul_vec(&self.data, dim, x, u);
                u[dim..].fill(0.0);
                let denom = 1.0 + weight * dot(&x[..dim], &u[..dim]);
                rank_one_update(&mut self.data, dim, -weight / denom, u);
                then(&u[..dim], denom);
            })
        });
    }
}

/// Offset of row `i` of a packed `dim x dim` upper triangle.
#[inline(always)]
fn row_start(dim: usize, i: usize) -> usize {
    i * (2 * dim - i + 1) / 2
}

/// The off-diagonal part of row `i` (`C[i][i+1..dim]`) as whole chunks of eight, read
/// past its end: its offset in `data` and its length.
#[inline(always)]
fn off_diagonal(dim: usize, i: usize) -> (usize, usize) {
    (row_start(dim, i) + 1, (dim - 1 - i).div_ceil(LANES) * LANES)
}

/// `x' C x` for `x` followed by [`PADDING`] zeros. Each row's off-diagonal dot product
/// stays in eight lanes, scaled by `x_i` into eight running totals, and only the totals
/// are summed across lanes at the end: one horizontal sum instead of one per row.
///
/// A row whose `x_i` is 0 adds exact zeros and is skipped: hashed text features leave
/// most of a short prompt's entries at 0, and the rows skipped are work saved in
/// proportion.
// Plain loops, no iterator adaptors over rows: their closures would be separate functions
// that need not inline into the target-feature wrappers, and would run at baseline width.
#[inline(always)]
fn quadratic_form_kernel(data: &[f64], dim: usize, x: &[f64]) -> f64 {
    let mut totals = [0.0; LANES];
    let mut diagonal = 0.0;
    for i in 0..dim {
        if x[i] == 0.0 {
            continue;
        }
        let (start, len) = off_diagonal(dim, i);
        let lanes = dot_chunks(&data[start..start + len], &x[i + 1..i + 1 + len]);
        for lane in 0..LANES {
            totals[lane] += x[i] * lanes[lane];
        }
        diagonal += data[start - 1] * x[i] * x[i];
    }
    diagonal + 2.0 * sum_lanes(totals)
}

/// `out += C x` for `x` followed by [`PADDING`] zeros; `out` has [`PADDING`] entries more
/// than `dim`, which end up holding nothing of use. Row `i` adds `C[i][i..] x[i..]` to
/// `out_i` and `x_i C[i][i+1..]` to the entries after it; the second is skipped where
/// `x_i` is 0 (exact zeros, as in [`quadratic_form_kernel`]).
#[inline(always)]
fn mul_vec_kernel(data: &[f64], dim: usize, x: &[f64], out: &mut [f64]) {
    for i in 0..dim {
        let (start, len) = off_diagonal(dim, i);
        let row = &data[start..start + len];
        out[i] += data[start - 1] * x[i] + sum_lanes(dot_chunks(row, &x[i + 1..i + 1 + len]));
        if x[i] != 0.0 {
            axpy_chunks(x[i], row, &mut out[i + 1..i + 1 + len]);
        }
    }
}

#[inline(always)]
fn rank_one_update_kernel(data: &mut [f64], dim: usize, alpha: f64, u: &[f64]) {
    for i in 0..dim {
        // The whole row, diagonal included, in chunks of eight: past its end the zeros of
        // `u` add exact zeros to the next row (or to the padding).
        let (start, len) = (row_start(dim, i), (dim - i).div_ceil(LANES) * LANES);
        axpy_chunks(alpha * u[i], &u[i..i + len], &mut data[start..start + len]);
    }
}

dispatched!(quadratic_form => quadratic_form_kernel(data: &[f64], dim: usize, x: &[f64]) -> f64);
dispatched!(mul_vec => mul_vec_kernel(data: &[f64], dim: usize, x: &[f64], out: &mut [f64]));
dispatched!(rank_one_update => rank_one_update_kernel(data: &mut [f64], dim: usize, alpha: f64, u: &[f64]));

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows added one by one give the Gram matrix that nalgebra's rank-one update gives,
    /// to the bit, at dimensions that end rows inside a chunk of eight and past it.
    #[test]
    fn outer_products_add_up_to_the_gram_matrix() {
        for dim in [1, 7, 13, 66] {
            let mut packed = PackedSymmetric::scaled_identity(dim, 1.0);
            let mut dense = DMatrix::<f64>::identity(dim, dim);
            for row in 0..20 {
                let x: Vec<f64> = (0..dim)
                    .map(|j| ((row * 31 + j * 17) % 23) as f64 / 7.0 - 1.5)
                    .collect();
                packed.add_outer(&x, 1.0);
                let xv = nalgebra::DVector::from_column_slice(&x);
                dense.ger(1.0, &xv, &xv, 1.0);
            }
            assert_eq!(packed.to_matrix(), dense, "dim {dim}");
        }
    }

    #[test]
    fn packed_operations_match_the_dense_ones() {
        // Every remainder of a row's last chunk, and rows shorter than a chunk.
        for dim in 1..=19 {
            packed_operations_match_the_dense_ones_at(dim);
        }
    }

    fn packed_operations_match_the_dense_ones_at(dim: usize) {
        // Symmetric positive definite: a Hilbert-like matrix plus 2 I.
        let dense = DMatrix::from_fn(dim, dim, |i, j| {
            1.0 / (1.0 + i as f64 + j as f64) + if i == j { 2.0 } else { 0.0 }
        });
        let x: Vec<f64> = (0..dim).map(|i| (i as f64 * 0.7).sin()).collect();
        let xv = nalgebra::DVector::from_column_slice(&x);
        let mut packed = PackedSymmetric::from_matrix(&dense);
        assert_eq!(packed.to_matrix(), dense);
        assert!((packed.quadratic_form(&x) - xv.dot(&(&dense * &xv))).abs() < 1e-12);
        assert!((dot(&x, &x) - xv.norm_squared()).abs() < 1e-12);

        // As the inverse of a matrix: `C = A^-1` becomes `(A + w x x')^-1`.
        let weight = 0.3;
        let mut packed_inverse = PackedSymmetric::from_matrix(&dense.clone().try_inverse().unwrap());
        packed_inverse.sherman_morrison(&x, weight, |_, _| {});
        let want = (&dense + &xv * xv.transpose() * weight).try_inverse().unwrap();
        assert!((packed_inverse.to_matrix() - want).abs().max() < 1e-12);

        // As a matrix of its own: `u = C x` before the step, and the step subtracts
        // `w u u' / (1 + w x'u)`.
        let u_want = &dense * &xv;
        let denom_want = 1.0 + weight * xv.dot(&u_want);
        let mut seen = None;
        packed.sherman_morrison(&x, weight, |u, denom| seen = Some((u.to_vec(), denom)));
        let (u, denom) = seen.unwrap();
        assert!(u.iter().zip(u_want.iter()).all(|(a, b)| (a - b).abs() < 1e-12));
        assert!((denom - denom_want).abs() < 1e-12);
        let updated = &dense - &u_want * u_want.transpose() * (weight / denom_want);
        assert!((packed.to_matrix() - updated).abs().max() < 1e-12);
        assert_eq!(
            PackedSymmetric::scaled_identity(3, 2.0).to_matrix(),
            DMatrix::identity(3, 3) * 2.0
        );
    }

    /// Rows skipped for a zero entry of `x` change nothing: the form and the update equal
    /// the dense ones where most entries are 0, as in a short prompt's hashed features.
    #[test]
    fn zero_entries_skip_rows_and_change_nothing() {
        let dim = 29;
        let dense = DMatrix::from_fn(dim, dim, |i, j| {
            1.0 / (1.0 + i as f64 + j as f64) + if i == j { 2.0 } else { 0.0 }
        });
        let x: Vec<f64> = (0..dim)
            .map(|i| {
                if i % 3 == 1 || i == dim - 1 {
                    (i as f64 * 0.7).cos()
                } else {
                    0.0
                }
            })
            .collect();
        let xv = nalgebra::DVector::from_column_slice(&x);
        let mut packed = PackedSymmetric::from_matrix(&dense);
        assert!((packed.quadratic_form(&x) - xv.dot(&(&dense * &xv))).abs() < 1e-12);
        let u_want = &dense * &xv;
        let mut seen = None;
        packed.sherman_morrison(&x, 0.4, |u, _| seen = Some(u.to_vec()));
        let u = seen.unwrap();
        assert!(u.iter().zip(u_want.iter()).all(|(a, b)| (a - b).abs() < 1e-12));
        let updated = &dense - &u_want * u_want.transpose() * (0.4 / (1.0 + 0.4 * xv.dot(&u_want)));
        assert!((packed.to_matrix() - updated).abs().max() < 1e-12);
        assert_eq!(
            PackedSymmetric::scaled_identity(dim, 2.0).quadratic_form(&vec![0.0; dim]),
            0.0
        );
    }

    /// The kernels this CPU dispatches to give the baseline kernels' results bit for bit,
    /// at a size with full 8-lane chunks and remainders.
    #[test]
    fn dispatched_kernels_equal_the_baseline_bit_for_bit() {
        let dim = 67;
        let x: Vec<f64> = (0..dim).map(|i| (i as f64 * 1.3).sin() / 3.0).collect();
        let padded: Vec<f64> = x.iter().copied().chain([0.0; PADDING]).collect();
        let mut packed = PackedSymmetric::scaled_identity(dim, 1.5);
        packed.sherman_morrison(&x, -0.2, |_, _| {});

        let mut baseline = packed.data.clone();
        let mut u = vec![0.0; dim + PADDING];
        mul_vec_kernel(&baseline, dim, &padded, &mut u);
        u[dim..].fill(0.0);
        let denom = 1.0 + 0.7 * dot(&x, &u[..dim]);
        rank_one_update_kernel(&mut baseline, dim, -0.7 / denom, &u);

        let want = quadratic_form_kernel(&packed.data, dim, &padded);
        assert_eq!(packed.quadratic_form(&x).to_bits(), want.to_bits());
        let mut seen = None;
        packed.sherman_morrison(&x, 0.7, |u, denom| seen = Some((u.to_vec(), denom)));
        let (got_u, got_denom) = seen.unwrap();
        assert_eq!(got_u.len(), dim);
        assert!(got_u.iter().zip(&u).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(got_denom.to_bits(), denom.to_bits());
        assert!(packed
            .data
            .iter()
            .zip(&baseline)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    /// The padding is not part of the serialized form, and a wrong number of values is
    /// refused instead of read past.
    #[test]
    fn serialized_matrices_hold_the_triangle_only() {
        let mut packed = PackedSymmetric::scaled_identity(4, 2.0);
        packed.sherman_morrison(&[1.0, -2.0, 0.5, 3.0], 0.5, |_, _| {});
        let json = serde_json::to_value(&packed).unwrap();
        assert_eq!(json["data"].as_array().unwrap().len(), 10);
        let back: PackedSymmetric = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, packed);
        assert_eq!(back.quadratic_form(&[1.0; 4]), packed.quadratic_form(&[1.0; 4]));
        let mut short = json;
        short["data"].as_array_mut().unwrap().pop();
        assert!(serde_json::from_value::<PackedSymmetric>(short).is_err());
    }
}
