//! The Poisson bootstrap (Hanley & MacGibbon 2006; Chamandy et al. 2012, "Estimating
//! uncertainty for massive data streams"): resample `b` weighs row `i` by an independent
//! count `c_bi ~ Poisson(1)` instead of drawing `n` rows with replacement. Its resample
//! means agree with the multinomial bootstrap's to O(1/n) in mean and variance, and the
//! counts need no random gathers: the kernel streams the terms once per group of
//! [`LANES`] resamples, with one resample per SIMD lane.
//!
//! Counts come from one uniform `u32` each, through the Poisson(1) CDF truncated at
//! [`MAX_COUNT`] (`P(X > 12) < 2e-10`) and quantized to `2^-32`. Each (resample group,
//! block of rows) seeds its own xoshiro128++ streams from the seed, so resample `b`'s counts
//! do not depend on the thread count or on which kernel (portable or AVX-512) ran.

use rayon::prelude::*;

/// Resamples drawn together, one per SIMD lane (16 x u32 fill an AVX-512 register).
pub const LANES: usize = 16;
/// Rows per independently seeded block.
const BLOCK: usize = 4096;
/// Largest count drawn.
pub const MAX_COUNT: usize = 12;

/// `THRESHOLDS[k - 1] = round(2^32 P(X < k))`, `X ~ Poisson(1)`: a uniform `u` gives the
/// count `#{k : u >= THRESHOLDS[k - 1]}`.
fn thresholds() -> [u32; MAX_COUNT] {
    let mut out = [0u32; MAX_COUNT];
    let (mut pmf, mut cdf) = ((-1.0f64).exp(), 0.0);
    for (k, t) in out.iter_mut().enumerate() {
        cdf += pmf;
        pmf /= (k + 1) as f64;
        *t = (cdf * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
    }
    out
}

/// Per resample: the count-weighted sums of each term column, and the total count.
pub struct ResampleSums<const N: usize> {
    /// `sum_i c_bi t_k[i]` for each column `k`.
    pub sums: [f64; N],
    /// `sum_i c_bi`, the resample's size.
    pub count: u64,
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro128++ states of [`LANES`] streams, one row of words per state word (SoA).
type LaneState = [[u32; LANES]; 4];

/// The streams of resample group `group` on block `block`.
#[allow(clippy::needless_range_loop)] // `lane` indexes the inner dimension of four rows
fn seed_lanes(seed: u64, group: usize, block: usize) -> LaneState {
    let mut key = seed;
    let mut mixed = splitmix64(&mut key) ^ (group as u64);
    mixed = splitmix64(&mut mixed) ^ (block as u64);
    let mut state = [[0u32; LANES]; 4];
    for lane in 0..LANES {
        for pair in 0..2 {
            let word = splitmix64(&mut mixed);
            state[2 * pair][lane] = word as u32;
            // Never the all-zero state, xoshiro's one fixed point.
            state[2 * pair + 1][lane] = (word >> 32) as u32 | 1;
        }
    }
    state
}

#[inline(always)]
fn next_uniforms(s: &mut LaneState) -> [u32; LANES] {
    let mut out = [0u32; LANES];
    for l in 0..LANES {
        let (s0, s1, s2, s3) = (s[0][l], s[1][l], s[2][l], s[3][l]);
        out[l] = s0.wrapping_add(s3).rotate_left(7).wrapping_add(s0);
        let t = s1 << 9;
        let s2 = s2 ^ s0;
        let s3 = s3 ^ s1;
        s[1][l] = s1 ^ s2;
        s[0][l] = s0 ^ s3;
        s[2][l] = s2 ^ t;
        s[3][l] = s3.rotate_left(11);
    }
    out
}

/// Adds one block of rows to the lanes' sums (the portable build).
fn accumulate_block<const N: usize>(
    state: &mut LaneState,
    thresholds: &[u32; MAX_COUNT],
    columns: &[&[f64]; N],
    sums: &mut [[f64; LANES]; N],
    counts: &mut [i32; LANES],
) {
    let rows = columns.first().map_or(0, |c| c.len());
    for i in 0..rows {
        let u = next_uniforms(state);
        let mut c = [0i32; LANES];
        for &t in thresholds {
            for l in 0..LANES {
                c[l] += i32::from(u[l] >= t);
            }
        }
        for l in 0..LANES {
            counts[l] += c[l];
        }
        for (column, sum) in columns.iter().zip(sums.iter_mut()) {
            let x = column[i];
            for l in 0..LANES {
                sum[l] += f64::from(c[l]) * x;
            }
        }
    }
}

/// The AVX-512 build of [`accumulate_block`], with intrinsics: one 16-lane register per
/// state word. (Left to itself, the compiler vectorizes the count across the thresholds
/// instead of across the lanes.) Lane by lane it computes what the portable code does, in
/// the same order and without fused multiply-adds, so the sums are bit-identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // row `i` of every column, as in the portable kernel
fn accumulate_block_avx512<const N: usize>(
    state: &mut LaneState,
    thresholds: &[u32; MAX_COUNT],
    columns: &[&[f64]; N],
    sums: &mut [[f64; LANES]; N],
    counts: &mut [i32; LANES],
) {
    use std::arch::x86_64::*;
    // SAFETY (every load and store below): each array holds exactly 16 i32/u32 or 8 + 8 f64,
    // as many as one unaligned 512-bit access reads or writes.
    let load = |words: &[u32; LANES]| unsafe { _mm512_loadu_epi32(words.as_ptr().cast()) };
    let [mut s0, mut s1, mut s2, mut s3] =
        [load(&state[0]), load(&state[1]), load(&state[2]), load(&state[3])];
    let limits: [__m512i; MAX_COUNT] = std::array::from_fn(|k| _mm512_set1_epi32(thresholds[k] as i32));
    let one = _mm512_set1_epi32(1);
    let mut total = unsafe { _mm512_loadu_epi32(counts.as_ptr()) };
    let mut low: [__m512d; N] = std::array::from_fn(|k| unsafe { _mm512_loadu_pd(sums[k].as_ptr()) });
    let mut high: [__m512d; N] = std::array::from_fn(|k| unsafe { _mm512_loadu_pd(sums[k][8..].as_ptr()) });
    let rows = columns.first().map_or(0, |c| c.len());
    for i in 0..rows {
        let u = _mm512_add_epi32(_mm512_rol_epi32::<7>(_mm512_add_epi32(s0, s3)), s0);
        let t = _mm512_slli_epi32::<9>(s1);
        s2 = _mm512_xor_si512(s2, s0);
        s3 = _mm512_xor_si512(s3, s1);
        s1 = _mm512_xor_si512(s1, s2);
        s0 = _mm512_xor_si512(s0, s3);
        s2 = _mm512_xor_si512(s2, t);
        s3 = _mm512_rol_epi32::<11>(s3);
        let mut c = _mm512_setzero_si512();
        for limit in limits {
            c = _mm512_mask_add_epi32(c, _mm512_cmpge_epu32_mask(u, limit), c, one);
        }
        total = _mm512_add_epi32(total, c);
        let c_low = _mm512_cvtepi32_pd(_mm512_castsi512_si256(c));
        let c_high = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64::<1>(c));
        for k in 0..N {
            let x = _mm512_set1_pd(columns[k][i]);
            low[k] = _mm512_add_pd(low[k], _mm512_mul_pd(c_low, x));
            high[k] = _mm512_add_pd(high[k], _mm512_mul_pd(c_high, x));
        }
    }
    let store =
        |words: &mut [u32; LANES], v: __m512i| unsafe { _mm512_storeu_epi32(words.as_mut_ptr().cast(), v) };
    store(&mut state[0], s0);
    store(&mut state[1], s1);
    store(&mut state[2], s2);
    store(&mut state[3], s3);
    unsafe {
        _mm512_storeu_epi32(counts.as_mut_ptr(), total);
        for k in 0..N {
            _mm512_storeu_pd(sums[k].as_mut_ptr(), low[k]);
            _mm512_storeu_pd(sums[k][8..].as_mut_ptr(), high[k]);
        }
    }
}

/// The per-block kernel's signature.
type BlockKernel<const N: usize> =
    fn(&mut LaneState, &[u32; MAX_COUNT], &[&[f64]; N], &mut [[f64; LANES]; N], &mut [i32; LANES]);

/// One resample group over all rows: the sums and total count of each lane.
/// Adds `columns` (rows from block `first_block` on) to one group's lane sums.
fn group_add<const N: usize>(
    lanes: &mut GroupSums<N>,
    columns: &[&[f64]; N],
    seed: u64,
    group: usize,
    first_block: usize,
    block_kernel: BlockKernel<N>,
) {
    let thresholds = thresholds();
    let rows = columns.first().map_or(0, |c| c.len());
    let (sums, totals) = lanes;
    for (block, start) in (first_block..).zip((0..rows).step_by(BLOCK)) {
        let end = (start + BLOCK).min(rows);
        let block_columns: [&[f64]; N] = std::array::from_fn(|k| &columns[k][start..end]);
        let mut state = seed_lanes(seed, group, block);
        let mut counts = [0i32; LANES];
        block_kernel(&mut state, &thresholds, &block_columns, sums, &mut counts);
        for l in 0..LANES {
            totals[l] += counts[l] as u64;
        }
    }
}

/// One group's running sums: per column and lane, and each lane's total count.
type GroupSums<const N: usize> = ([[f64; LANES]; N], [u64; LANES]);

/// Which build of the kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The baseline target's instructions.
    Portable,
    /// AVX-512 intrinsics (x86-64).
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
        }
        Kernel::Portable
    }

    /// Whether this CPU runs the kernel.
    pub fn supported(self) -> bool {
        self == Kernel::Portable || Kernel::detect() == self
    }

    fn block_kernel<const N: usize>(self) -> BlockKernel<N> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => |state, thresholds, columns, sums, counts| {
                // SAFETY: `poisson_sums` runs a kernel only where `supported()` holds.
                unsafe { accumulate_block_avx512(state, thresholds, columns, sums, counts) }
            },
            _ => accumulate_block,
        }
    }
}

/// The count-weighted sums of `columns` (equal lengths) for `resamples` Poisson-bootstrap
/// resamples: resample `b` weighs row `i` by `c_bi ~ Poisson(1)` (Hanley & MacGibbon 2006;
/// Chamandy et al. 2012), which matches the multinomial bootstrap to O(1/n) and streams
/// the rows instead of gathering them. Runs in parallel over groups of `LANES`; the result
/// is the same for any thread count and any supported `kernel`.
pub fn poisson_sums<const N: usize>(
    columns: [&[f64]; N],
    resamples: usize,
    seed: u64,
    kernel: Kernel,
) -> Vec<ResampleSums<N>> {
    let mut stream = PoissonStream::new(resamples, seed, kernel);
    stream.add(columns);
    stream.finish()
}

/// [`poisson_sums`] over rows that come a batch at a time: every batch but the last
/// must hold a whole number of blocks ([`PoissonStream::BATCH_MULTIPLE`] rows), and the
/// result is then the same, to the bit, as one call over all the rows.
pub struct PoissonStream<const N: usize> {
    resamples: usize,
    seed: u64,
    kernel: Kernel,
    groups: Vec<GroupSums<N>>,
    next_block: usize,
    ended: bool,
}

impl<const N: usize> PoissonStream<N> {
    /// Rows of which every batch but the last is a multiple.
    pub const BATCH_MULTIPLE: usize = BLOCK;

    /// No rows yet.
    pub fn new(resamples: usize, seed: u64, kernel: Kernel) -> Self {
        PoissonStream {
            resamples,
            seed,
            kernel: if kernel.supported() {
                kernel
            } else {
                Kernel::Portable
            },
            groups: vec![([[0.0; LANES]; N], [0; LANES]); resamples.div_ceil(LANES)],
            next_block: 0,
            ended: false,
        }
    }

    /// Adds the next rows (columns of equal length).
    pub fn add(&mut self, columns: [&[f64]; N]) {
        let rows = columns.first().map_or(0, |c| c.len());
        assert!(!self.ended, "a batch of {rows} rows after a partial block");
        self.ended = !rows.is_multiple_of(BLOCK);
        let (seed, first_block, kernel) = (self.seed, self.next_block, self.kernel.block_kernel());
        self.groups
            .par_iter_mut()
            .enumerate()
            .for_each(|(group, lanes)| group_add(lanes, &columns, seed, group, first_block, kernel));
        self.next_block += rows.div_ceil(BLOCK);
    }

    /// Each resample's sums.
    pub fn finish(self) -> Vec<ResampleSums<N>> {
        let mut out: Vec<ResampleSums<N>> = self
            .groups
            .into_iter()
            .flat_map(|(sums, totals)| {
                (0..LANES).map(move |l| ResampleSums {
                    sums: std::array::from_fn(|k| sums[k][l]),
                    count: totals[l],
                })
            })
            .collect();
        out.truncate(self.resamples);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thresholds are the Poisson(1) CDF: the count they give from a uniform has
    /// `P(count = k) = e^-1 / k!` to within the 2^-32 quantization.
    #[test]
    fn thresholds_follow_the_poisson_cdf() {
        let t = thresholds();
        let scale = 4_294_967_296.0;
        let mut lower = 0.0;
        let mut factorial = 1.0;
        for (k, &upper) in t.iter().enumerate() {
            if k > 0 {
                factorial *= k as f64;
            }
            let p = (upper as f64 - lower) / scale;
            let want = (-1.0f64).exp() / factorial;
            assert!((p - want).abs() < 1.0 / scale, "P({k}) = {p} vs {want}");
            lower = upper as f64;
        }
        // What is left above the last threshold is P(X >= 12) ~ 1e-9.
        assert!((scale - lower) / scale < 2e-9);
    }

    /// Counts summed over many rows: mean 1 and variance 1 per row (Poisson(1)), and the
    /// same for every lane, kernel and thread count.
    #[test]
    fn counts_are_poisson_one_and_reproducible() {
        let rows = 50_000;
        let ones = vec![1.0; rows];
        let squares_of_counts = vec![0.0; rows];
        let runs = poisson_sums([&ones, &squares_of_counts], 64, 7, Kernel::detect());
        // sum_i c_i over n rows: mean n, variance n.
        let totals: Vec<f64> = runs.iter().map(|r| r.count as f64).collect();
        let mean = totals.iter().sum::<f64>() / totals.len() as f64;
        let var = totals.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (totals.len() - 1) as f64;
        // The mean of 64 totals has sd sqrt(n / 64) = 28: allow 5 sd.
        assert!(
            (mean - rows as f64).abs() < 5.0 * (rows as f64 / 64.0).sqrt(),
            "{mean}"
        );
        // A variance from 64 draws is within +-50% of n with overwhelming probability.
        assert!((var / rows as f64 - 1.0).abs() < 0.5, "{var}");
        for r in &runs {
            assert_eq!(r.sums[0], r.count as f64);
        }
        let portable = poisson_sums([&ones, &squares_of_counts], 64, 7, Kernel::Portable);
        let single = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| poisson_sums([&ones, &squares_of_counts], 64, 7, Kernel::detect()));
        for ((a, b), c) in runs.iter().zip(&portable).zip(&single) {
            assert_eq!((a.count, a.sums), (b.count, b.sums));
            assert_eq!((a.count, a.sums), (c.count, c.sums));
        }
        let other_seed = poisson_sums([&ones], 64, 8, Kernel::detect());
        assert_ne!(other_seed[0].count, runs[0].count);
    }

    /// Rows handed over in batches of whole blocks and a partial last one give the sums
    /// of one call over all of them, to the bit; a batch after a partial block is refused.
    #[test]
    fn batches_sum_as_one_call() {
        let rows = 5 * BLOCK + 123;
        let x: Vec<f64> = (0..rows).map(|i| ((i * 7919) % 1000) as f64 / 997.0).collect();
        let y: Vec<f64> = x.iter().map(|v| v * v - 0.3).collect();
        let whole = poisson_sums([&x, &y], 40, 11, Kernel::detect());
        let mut stream = PoissonStream::new(40, 11, Kernel::detect());
        for range in [0..BLOCK, BLOCK..3 * BLOCK, 3 * BLOCK..3 * BLOCK, 3 * BLOCK..rows] {
            stream.add([&x[range.clone()], &y[range]]);
        }
        let batched = stream.finish();
        assert_eq!(whole.len(), 40);
        for (a, b) in whole.iter().zip(&batched) {
            assert_eq!((a.count, a.sums), (b.count, b.sums));
        }
        let refused = std::panic::catch_unwind(|| {
            let mut stream = PoissonStream::new(16, 1, Kernel::Portable);
            stream.add([&x[..10]]);
            stream.add([&x[10..20]]);
        });
        assert!(refused.is_err());
    }

    /// The frequency of each count over one long lane against e^-1 / k!: a chi-square
    /// goodness of fit, 0..=5 plus a ">= 6" cell (6 degrees of freedom; 22.5 is the 0.999
    /// quantile).
    #[test]
    fn count_frequencies_pass_a_chi_square_test() {
        let thresholds = thresholds();
        let mut state = seed_lanes(3, 0, 0);
        let mut cells = [0f64; 7];
        let draws = 20_000;
        for _ in 0..draws {
            for u in next_uniforms(&mut state) {
                let c = thresholds.iter().filter(|&&t| u >= t).count();
                cells[c.min(6)] += 1.0;
            }
        }
        let total = (draws * LANES) as f64;
        let mut expected = [0f64; 7];
        let mut factorial = 1.0;
        for (k, e) in expected.iter_mut().enumerate().take(6) {
            if k > 0 {
                factorial *= k as f64;
            }
            *e = total * (-1.0f64).exp() / factorial;
        }
        expected[6] = total - expected[..6].iter().sum::<f64>();
        let chi2: f64 = cells
            .iter()
            .zip(&expected)
            .map(|(o, e)| (o - e).powi(2) / e)
            .sum();
        assert!(chi2 < 22.5, "chi2 {chi2}: {cells:?} vs {expected:?}");
    }
}
