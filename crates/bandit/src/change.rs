//! Change detection on each arm's quality: a two-sided CUSUM (Page 1954) of the residuals
//! `e = r - mean(x)` of the arm's observed quality against the policy's estimate just before
//! it learns the observation, centered on their own running mean `m` since the arm was
//! last restarted:
//!
//! ```text
//! up   <- max(0, up   + (e - m) - k)        alarm when up > h or down > h,
//! down <- max(0, down - (e - m) - k)        then everything restarts at 0
//! ```
//!
//! Centering makes the test one of a change in the residuals, not of their level: a
//! linear model that is off by a constant where the policy chooses an arm (misspecified,
//! or the winner's curse of choosing where an estimate is high) raises no alarm. The slack
//! is `k` = [`SLACK`] and the threshold `h` the policy spec's `detect=`. A quality in
//! [0, 1] has variance at most 1/4, so on a stationary arm each sum drifts down by `k` per
//! observation; by Siegmund's approximation an alarm then comes after about
//! `(exp(8 k b) - 8 k b - 1) / (8 k^2)` observations, `b = h + 0.583` (about 300,000 for
//! `h = 12`, one side). A shift of `delta > k` is detected after about `h / (delta - k)`
//! observations. On an alarm the arm's history (priors included) is shrunk to count as
//! [`RESTART_OBSERVATIONS`], so that its estimate follows the new outcomes within tens of
//! observations, and is watched again once it counts as [`WATCHED_FROM`] observations:
//! the restart of monitored bandits (Cao, Wen, Kveton and Xie 2019, "Nearly optimal
//! adaptive procedure with change detection for piecewise-stationary bandit"), keeping a
//! weak memory instead of none.

use serde::{Deserialize, Serialize};

/// Shifts of quality smaller than this are tolerated; larger ones are detected, at a
/// shift of 0.25 after about `h / 0.15` observations of the arm.
pub const SLACK: f64 = 0.1;

/// What an arm's history counts as after a detected change.
pub const RESTART_OBSERVATIONS: f64 = 20.0;

/// An arm is watched once its history counts as this many observations. Before, its
/// estimate still moves as it learns (an optimistic ridge prior `lambda` pulls it by
/// `lambda / (lambda + n)` of the way to the top of the scale), and residuals against a
/// moving estimate are not a change.
pub const WATCHED_FROM: f64 = 200.0;

/// The two cumulative sums of one arm, and the residuals' running mean they are centered on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Cusum {
    up: f64,
    down: f64,
    observed: f64,
    mean_residual: f64,
}

impl Cusum {
    /// Adds residual `e`; true, and everything restarts, when either sum exceeds `threshold`.
    pub fn observe(&mut self, e: f64, threshold: f64) -> bool {
        let centered = e - self.mean_residual;
        self.observed += 1.0;
        self.mean_residual += (e - self.mean_residual) / self.observed;
        self.up = (self.up + centered - SLACK).max(0.0);
        self.down = (self.down - centered - SLACK).max(0.0);
        let alarm = self.up > threshold || self.down > threshold;
        if alarm {
            *self = Cusum::default();
        }
        alarm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The first alarm on Bernoulli(p) outcomes, then Bernoulli(q) from step `change` on,
    /// against a fixed estimate.
    fn first_alarm(p: f64, q: f64, change: usize, estimate: f64, n: usize, seed: u64) -> Option<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut cusum = Cusum::default();
        (0..n).find(|&t| {
            let mean = if t < change { p } else { q };
            let r = f64::from(u8::from(rng.random::<f64>() < mean));
            cusum.observe(r - estimate, 12.0)
        })
    }

    #[test]
    fn the_sums_follow_the_recursion() {
        let mut c = Cusum::default();
        assert!(!c.observe(0.3, 1.0));
        assert!((c.up - 0.2).abs() < 1e-12 && c.down == 0.0);
        // Centered on the mean so far, 0.3: -0.5.
        assert!(!c.observe(-0.2, 1.0));
        assert!(c.up == 0.0 && (c.down - 0.4).abs() < 1e-12);
        assert!((c.mean_residual - 0.05).abs() < 1e-12);
        // 1.2 - 0.05 - 0.1 > 1.
        assert!(c.observe(1.2, 1.0));
        assert_eq!(c, Cusum::default());
    }

    #[test]
    fn a_steady_arm_rarely_alarms_even_when_misestimated_and_a_shift_is_found_fast() {
        // h = 12 at p = 0.5 (the largest variance): about 300,000 observations per side
        // before an alarm, so within 2,000 in about 1 - exp(-4000 / 300000) = 1.3% of runs.
        let quiet = |p: f64, estimate: f64| {
            (0..100)
                .filter(|&s| first_alarm(p, p, 0, estimate, 2000, s).is_none())
                .count()
        };
        assert!(quiet(0.5, 0.5) >= 95);
        // An estimate off by a constant is a level, not a change.
        assert!(quiet(0.6, 0.5) >= 95);
        // Quality from 0.5 to 0.75 at step 1,000: detected after about 12 / (0.25 - 0.1)
        // = 80 observations; within 300 for every seed.
        for seed in 0..20 {
            let at = first_alarm(0.5, 0.75, 1000, 0.5, 1300, seed);
            assert!(at.is_some_and(|t| t >= 1000), "seed {seed}: {at:?}");
        }
    }
}
