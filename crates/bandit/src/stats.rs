//! Additive sufficient statistics of each arm's quality, with optional forgetting.
//!
//! Every non-contextual policy learns from the same table: per arm, the (possibly
//! discounted) count, sum and sum of squares of the quality observed. The statistics are
//! additive, so replicas can later merge deltas instead of sharing a lock.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, Result};
use crate::policy::Estimate;
use crate::prior::ArmPrior;

/// How a learner forgets old observations, for rewards that drift.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Forgetting {
    /// Stationary: every observation counts forever.
    None,
    /// Discounted (Garivier & Moulines 2011): each new observation multiplies the weight of
    /// all earlier ones by `gamma` in (0, 1); the effective memory is `1 / (1 - gamma)`
    /// observations. Linear models discount per arm: an arm's observation discounts that
    /// arm's own history (a global discount would refactorize every arm's `d x d` model on
    /// every update); pair them with a `floor` so idle arms are revisited.
    Discount {
        /// The discount factor.
        gamma: f64,
    },
    /// Sliding window (Garivier & Moulines 2011): only the last `size` observations, across
    /// all arms, count.
    Window {
        /// The number of observations kept.
        size: usize,
    },
}

/// Observations at the largest variance, 1/4, that a sample's variance is shrunk with
/// ([`MeanStats::estimate`]): the four of Agresti and Coull's "add two successes and two
/// failures".
pub const VARIANCE_PSEUDO_OBSERVATIONS: f64 = 4.0;

/// Count, sum and sum of squares of one arm's observed quality.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanStats {
    /// Effective number of observations (discounted when forgetting by discount).
    pub count: f64,
    /// Sum of observed quality.
    pub sum: f64,
    /// Sum of squared observed quality.
    pub sum_sq: f64,
}

/// Value estimated for an arm nobody has tried: the top of the quality scale, so that a new
/// arm is tried early (optimism under uncertainty).
pub const OPTIMISTIC_QUALITY: f64 = 1.0;

impl MeanStats {
    fn add(&mut self, quality: f64, weight: f64) {
        self.count += weight;
        self.sum += weight * quality;
        self.sum_sq += weight * quality * quality;
    }

    fn scale(&mut self, factor: f64) {
        self.count *= factor;
        self.sum *= factor;
        self.sum_sq *= factor;
    }

    /// The sample mean, or [`OPTIMISTIC_QUALITY`] before any observation.
    pub fn mean(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            OPTIMISTIC_QUALITY
        }
    }

    /// The mean with its standard error. Below two observations the variance is taken as
    /// 1/4, the largest a quality in [0, 1] can have; above, the sample variance is shrunk
    /// toward 1/4 as if [`VARIANCE_PSEUDO_OBSERVATIONS`] more observations had it, so that
    /// a few equal qualities (two wrong answers) are no certainty: their bound `mean + 2
    /// std` is about that of Wilson's score interval (Agresti and Coull 1998), where the
    /// sample variance alone would make it the mean itself.
    pub fn estimate(&self) -> Estimate {
        let variance = if self.count >= 2.0 {
            let sample = (self.sum_sq / self.count - self.mean().powi(2)).max(0.0);
            (self.count * sample + VARIANCE_PSEUDO_OBSERVATIONS * 0.25)
                / (self.count + VARIANCE_PSEUDO_OBSERVATIONS)
        } else {
            0.25
        };
        Estimate {
            mean: self.mean(),
            std: (variance / self.count.max(1.0)).sqrt(),
        }
    }
}

/// The per-arm statistics of a non-contextual policy, with their forgetting rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmStatsTable {
    arms: Vec<MeanStats>,
    forgetting: Forgetting,
    /// Under a sliding window, the observations still counted, oldest first.
    window: VecDeque<(usize, f64)>,
}

impl ArmStatsTable {
    /// An empty table for `num_arms` arms.
    pub fn new(num_arms: usize, forgetting: Forgetting) -> Self {
        ArmStatsTable {
            arms: vec![MeanStats::default(); num_arms],
            forgetting,
            window: VecDeque::new(),
        }
    }

    /// Statistics of one arm.
    pub fn get(&self, arm: usize) -> &MeanStats {
        &self.arms[arm]
    }

    /// Number of arms.
    pub fn len(&self) -> usize {
        self.arms.len()
    }

    /// Whether the table has no arms.
    pub fn is_empty(&self) -> bool {
        self.arms.is_empty()
    }

    /// Sum of all arms' effective counts.
    pub fn total_count(&self) -> f64 {
        self.arms.iter().map(|s| s.count).sum()
    }

    /// Records one observation of `quality` for `arm`, forgetting as configured.
    pub fn observe(&mut self, arm: usize, quality: f64) {
        match self.forgetting {
            Forgetting::None => {}
            Forgetting::Discount { gamma } => self.arms.iter_mut().for_each(|s| s.scale(gamma)),
            Forgetting::Window { size } => {
                self.window.push_back((arm, quality));
                while self.window.len() > size {
                    if let Some((old_arm, old_quality)) = self.window.pop_front() {
                        let s = &mut self.arms[old_arm];
                        s.add(old_quality, -1.0);
                        // Cancel rounding residue once an arm has left the window entirely.
                        if s.count < 0.5 {
                            *s = MeanStats::default();
                        }
                    }
                }
            }
        }
        self.arms[arm].add(quality, 1.0);
    }

    /// Adds a prior's pseudo-observations to `arm` (a window never forgets them; a
    /// discount shrinks them with the arm's data).
    pub fn absorb_prior(&mut self, arm: usize, prior: &ArmPrior) {
        let s = &mut self.arms[arm];
        s.count += prior.observations;
        s.sum += prior.sum;
        s.sum_sq += prior.sum_sq;
    }

    /// Scales `arm`'s statistics to count as at most `keep` observations (the mean stays).
    /// Under a window the shrunk history stays as a prior: the arm's entries leave the
    /// window, which would otherwise subtract them at full weight.
    pub fn shrink_arm(&mut self, arm: usize, keep: f64) {
        let s = &mut self.arms[arm];
        if s.count > keep {
            s.scale(keep / s.count);
            self.window.retain(|(a, _)| *a != arm);
        }
    }

    /// Adds what `replica` learned since `base` (a copy of this table's state when the
    /// replica started from it): every count and sum grows by `replica - base`. Defined
    /// only without forgetting: a discounted or windowed history is not a sum of the two
    /// halves (what each forgot depends on the order of the whole).
    pub fn merge(&mut self, replica: &ArmStatsTable, base: &ArmStatsTable) -> Result<()> {
        check_mergeable(self.forgetting, [self.len(), replica.len(), base.len()])?;
        for ((mine, r), b) in self.arms.iter_mut().zip(&replica.arms).zip(&base.arms) {
            mine.count += r.count - b.count;
            mine.sum += r.sum - b.sum;
            mine.sum_sq += r.sum_sq - b.sum_sq;
        }
        Ok(())
    }

    /// Appends a fresh arm with no observations.
    pub fn add_arm(&mut self) {
        self.arms.push(MeanStats::default());
    }

    /// Removes an arm; later arms shift down by one.
    pub fn remove_arm(&mut self, arm: usize) {
        self.arms.remove(arm);
        self.window.retain(|(a, _)| *a != arm);
        for (a, _) in self.window.iter_mut() {
            if *a > arm {
                *a -= 1;
            }
        }
    }
}

/// Whether statistics under `forgetting` over tables of these arm counts can be merged.
pub(crate) fn check_mergeable(forgetting: Forgetting, arms: [usize; 3]) -> Result<()> {
    if forgetting != Forgetting::None {
        return Err(ErrorKind::InvalidConfig(format!(
            "statistics under {forgetting:?} cannot be merged: what a discount or a window forgets depends on the order of the whole stream"
        ))
        .into());
    }
    if arms[1..].iter().any(|&n| n != arms[0]) {
        return Err(ErrorKind::InvalidConfig(format!("cannot merge tables of {arms:?} arms")).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    /// A restart under a window keeps the shrunk history as a prior: the window no longer
    /// subtracts the arm's old entries at full weight.
    #[test]
    fn a_shrunk_arm_leaves_the_window() {
        let mut table = ArmStatsTable::new(1, Forgetting::Window { size: 5 });
        for _ in 0..10 {
            table.observe(0, 1.0);
        }
        table.shrink_arm(0, 2.0);
        assert_eq!(table.get(0).count, 2.0);
        for _ in 0..10 {
            table.observe(0, 0.0);
        }
        // The shrunk history (2 at mean 1) plus the window's last 5 (at 0).
        let s = table.get(0);
        assert_eq!((s.count, s.sum), (7.0, 2.0));
    }

    use super::*;

    #[test]
    fn discount_weights_old_observations_geometrically() {
        let mut t = ArmStatsTable::new(2, Forgetting::Discount { gamma: 0.5 });
        t.observe(0, 1.0);
        t.observe(1, 0.0);
        t.observe(0, 0.0);
        // arm 0: 1.0 seen two steps ago (weight 0.25), 0.0 now (weight 1).
        assert!((t.get(0).count - 1.25).abs() < 1e-12);
        assert!((t.get(0).mean() - 0.2).abs() < 1e-12);
        assert!((t.get(1).count - 0.5).abs() < 1e-12);
    }

    #[test]
    fn window_keeps_only_the_last_observations() {
        let mut t = ArmStatsTable::new(2, Forgetting::Window { size: 3 });
        for (arm, q) in [(0, 1.0), (0, 1.0), (1, 0.5), (0, 0.0), (1, 0.25)] {
            t.observe(arm, q);
        }
        // Window now holds (1, 0.5), (0, 0.0), (1, 0.25).
        assert_eq!(t.get(0).count, 1.0);
        assert_eq!(t.get(0).mean(), 0.0);
        assert_eq!(t.get(1).count, 2.0);
        assert!((t.get(1).mean() - 0.375).abs() < 1e-12);
        t.remove_arm(0);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(0).count, 2.0);
    }

    #[test]
    fn estimate_is_optimistic_before_data_and_shrinks_with_it() {
        let mut t = ArmStatsTable::new(1, Forgetting::None);
        assert_eq!(t.get(0).estimate(), Estimate { mean: 1.0, std: 0.5 });
        for i in 0..100 {
            t.observe(0, f64::from(i % 2));
        }
        let e = t.get(0).estimate();
        assert!((e.mean - 0.5).abs() < 1e-12);
        // The sample variance is 1/4 already: shrinking toward 1/4 leaves it.
        assert!((e.std - 0.05).abs() < 1e-12);
    }

    /// Two wrong answers are no certainty: the variance is (2 * 0 + 4 / 4) / (2 + 4), so
    /// that `mean + 2 std` is 2 sqrt(1/12) = 0.577, near Wilson's 0.667 at z = 2, where the
    /// sample variance alone gives 0. Many equal qualities do become certain.
    #[test]
    fn a_few_equal_qualities_keep_a_wide_estimate() {
        let mut t = ArmStatsTable::new(1, Forgetting::None);
        t.observe(0, 0.0);
        t.observe(0, 0.0);
        let e = t.get(0).estimate();
        assert_eq!(e.mean, 0.0);
        assert!((e.std - (1.0f64 / 12.0).sqrt()).abs() < 1e-12, "{e:?}");
        for _ in 0..998 {
            t.observe(0, 0.0);
        }
        let e = t.get(0).estimate();
        assert!((e.std - (1.0f64 / 1004.0 / 1000.0).sqrt()).abs() < 1e-15, "{e:?}");
    }
}
