//! Snapshots: a learner's state with its format version, and its restoration.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, Result};
use crate::policy::Policy;

use super::ledger::Ledger;
use super::Learner;

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// A serialized learner with its format version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`] when written.
    pub format_version: u32,
    /// The learner's complete state.
    pub learner: Learner,
}

impl Learner {
    /// The complete state, versioned, for serialization.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            format_version: SNAPSHOT_VERSION,
            learner: self.clone(),
        }
    }

    /// The learned state without the decisions awaiting feedback: for a caller that keeps
    /// its own record of decisions (a decision log), so that the snapshot's size does not
    /// grow with them. After [`Learner::restore`], the caller re-registers each decision
    /// from [`Learner::oldest_tracked_decision`] on with [`Learner::resume_decision`],
    /// [`Learner::resume_outcome`] and [`Learner::resume_quality`]; until then their
    /// feedback answers [`ErrorKind::UnknownDecision`].
    pub fn snapshot_without_tracked(&self) -> Snapshot {
        Snapshot {
            format_version: SNAPSHOT_VERSION,
            learner: self.without_tracked(),
        }
    }

    /// A copy of the learned state without the decisions awaiting feedback, which are
    /// not copied: what replicas share ([`Learner::merge`]) and snapshots keep. Its policy
    /// has let go of the held decisions: a hold is this learner's, not something learned.
    pub fn without_tracked(&self) -> Learner {
        let mut learned = Learner {
            config: self.config.clone(),
            arms: self.arms.clone(),
            policy: self.policy.clone(),
            usage: self.usage.clone(),
            pacer: self.pacer.clone(),
            next_decision: self.next_decision,
            tracked: Ledger::default(),
            cost: self.cost.clone(),
            change_detectors: self.change_detectors.clone(),
            spend_curve: self.spend_curve.clone(),
            held: self.held.clone(),
        };
        learned.held.take_latest();
        learned.let_go_before(u64::MAX);
        learned
    }

    /// The id of the oldest decision still awaiting (or remembered for) feedback.
    pub fn oldest_tracked_decision(&self) -> Option<u64> {
        self.tracked.oldest()
    }

    /// Restores a learner from a snapshot, checking its version and consistency.
    pub fn restore(snapshot: Snapshot) -> Result<Self> {
        if snapshot.format_version != SNAPSHOT_VERSION {
            return Err(ErrorKind::SnapshotVersion {
                found: snapshot.format_version,
                supported: SNAPSHOT_VERSION,
            }
            .into());
        }
        let mut l = snapshot.learner;
        let k = l.arms.len();
        if k == 0 || l.policy.num_arms() != k || l.usage.len() != k {
            return Err(ErrorKind::CorruptSnapshot(format!(
                "{k} arms, but the policy has {} and usage {}",
                l.policy.num_arms(),
                l.usage.len()
            ))
            .into());
        }
        if !l.cost.fits(k) {
            return Err(ErrorKind::CorruptSnapshot(format!(
                "{k} arms, but the cost models have another number"
            ))
            .into());
        }
        if l.tracked.names_arm_beyond(k) || l.held.names_arm_beyond(k) {
            return Err(ErrorKind::CorruptSnapshot("a tracked decision names a missing arm".into()).into());
        }
        l.policy.share_families(&super::families(&l.arms));
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Context;
    use crate::learner::{LearnerConfig, Request};
    use crate::{Arm, PolicySpec};

    /// A snapshot shares the tracked decisions with the live learner instead of copying
    /// them, and the learner's later changes do not reach the snapshot.
    #[test]
    fn snapshots_share_the_tracked_decisions() {
        let spec: PolicySpec = "linucb".parse().expect("spec");
        let mut l =
            Learner::new(LearnerConfig::new(spec, 2), vec![Arm::new("a"), Arm::new("b")]).expect("learner");
        let request = Request::new(Context {
            features: vec![1.0, 0.5],
            input_tokens: 10,
        });
        let ids: Vec<u64> = (0..1000)
            .map(|_| l.decide(&request).expect("decide").id)
            .collect();
        let snapshot = l.snapshot();
        assert!(snapshot.learner.tracked.shares_with(&l.tracked));
        l.record_quality(ids[10], 1.0).expect("feedback");
        assert!(
            !snapshot
                .learner
                .tracked
                .get(ids[10])
                .expect("tracked")
                .quality_recorded
        );
        assert!(l.tracked.get(ids[10]).expect("tracked").quality_recorded);
    }

    /// A snapshot written before families restores with its arms in their families, as a
    /// learner built now would have them, and estimates what one would.
    #[test]
    fn a_snapshot_from_before_families_restores_them() {
        let spec: PolicySpec = "linucb".parse().expect("spec");
        let arms = vec![Arm::new("m-small"), Arm::new("m-large"), Arm::new("other")];
        let mut l = Learner::new(LearnerConfig::new(spec, 2), arms).expect("learner");
        for i in 0..300 {
            let x = 0.1 * f64::from(i % 10);
            let d = l
                .decide(&Request::new(Context {
                    features: vec![1.0, x],
                    input_tokens: 10,
                }))
                .expect("decide");
            l.record_quality(d.id, (0.3 + 0.5 * x).min(1.0))
                .expect("feedback");
        }
        let mut text = serde_json::to_value(l.snapshot()).expect("json");
        let table = &mut text["learner"]["policy"]["ridge"];
        for key in ["families", "pooled", "shared_means"] {
            assert!(
                table.as_object_mut().expect("table").remove(key).is_some(),
                "{key}"
            );
        }
        let restored = Learner::restore(serde_json::from_value(text).expect("snapshot")).expect("restore");
        for arm in 0..3 {
            let (got, want) = (
                restored.policy().estimate(arm, &[1.0, 0.7]).mean,
                l.policy().estimate(arm, &[1.0, 0.7]).mean,
            );
            assert!((got - want).abs() < 1e-9, "arm {arm}: {got} vs {want}");
        }
    }
}
