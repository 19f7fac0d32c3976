//! Kernels compiled for the widest vectors of the CPU they run on.
//!
//! The baseline x86-64 target has only 2-wide SSE2 vectors. A kernel wrapped by
//! [`dispatched`] is also compiled for AVX2 and AVX-512 and chosen at run time. Without
//! fused multiply-adds (not enabled) the arithmetic is the same on every path, and vector
//! width only changes how many independent lanes run at once, so the results are
//! bit-identical. A kernel must be `#[inline(always)]`, and so must whatever it calls,
//! for the wider instructions to reach its loops.

/// The widest vector unit of this CPU, detected once.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vectors {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

pub(crate) fn vectors() -> Vectors {
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
                match $crate::vectors::vectors() {
                    // SAFETY: `vectors()` detected the feature on this CPU.
                    $crate::vectors::Vectors::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::vectors::Vectors::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::vectors::Vectors::Baseline => {}
                }
            }
            $kernel($($arg),*)
        }
    };
}

pub(crate) use dispatched;

/// `e^x` within a relative `2^-51`, in straight-line arithmetic that vectorizes (std's `exp` is a
/// call per value): `x = n ln 2 + r` with `|r| <= ln 2 / 2` (Cody and Waite's split of
/// `ln 2`, as fdlibm's, so that `n ln2_hi` is exact), `e^r` by its Taylor series to
/// `r^13` (the rest is below `4e-18`), and `2^n` written into the exponent's bits. `x` is
/// taken within [-708, 709], where `e^x` is a normal number: below, it gives `e^-708`
/// (about `3e-308`) for what would be subnormal or 0.
#[inline(always)]
pub(crate) fn exp(x: f64) -> f64 {
    // Adding 1.5 * 2^52 rounds to an integer, which then sits in the low bits.
    const SHIFTER: f64 = 6_755_399_441_055_744.0;
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    const TAYLOR: [f64; 14] = {
        let mut terms = [1.0; 14];
        let mut k = 1;
        while k < 14 {
            terms[k] = terms[k - 1] / k as f64;
            k += 1;
        }
        terms
    };
    let x = x.clamp(-708.0, 709.0);
    let shifted = x * std::f64::consts::LOG2_E + SHIFTER;
    let n = shifted - SHIFTER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut series = TAYLOR[13];
    for k in (0..13).rev() {
        series = series * r + TAYLOR[k];
    }
    let n_bits = shifted.to_bits().wrapping_sub(SHIFTER.to_bits());
    series * f64::from_bits(n_bits.wrapping_add(1023) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Within a relative `2^-51` (two ulps at most) of std's `exp` across the normal
    /// range, at the split's edges and at integers; clamped beyond it.
    #[test]
    fn exp_matches_std_within_two_ulps() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut points: Vec<f64> = (0..1_000_000).map(|_| rng.random_range(-708.0..709.0)).collect();
        points.extend((0..200_000).map(|_| rng.random_range(-1.0..1.0)));
        points.extend((-708..=709).map(f64::from));
        let half_ln2 = std::f64::consts::LN_2 / 2.0;
        points.extend([0.0, -0.0, half_ln2, -half_ln2, 1e-300, -1e-300, -708.0, 709.0]);
        for x in points {
            let (ours, std) = (exp(x), x.exp());
            assert!(
                (ours - std).abs() <= 2.0 * f64::EPSILON * std,
                "e^{x}: {ours} against {std}"
            );
        }
        assert_eq!(exp(-800.0), exp(-708.0));
        assert_eq!(exp(0.0), 1.0);
    }
}
