//! The ledger of decisions awaiting feedback: what each needs to learn from its outcome
//! and quality, which parts are recorded, and how many decisions are remembered.

use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use super::Applied;
use crate::error::{Error, ErrorKind, Result};
use crate::features::Context;
use crate::outcome::Outcome;

/// What an outcome reported of its call, which a repeat must report again.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct CallReport {
    cost_usd: f64,
    latency_ms: f64,
    input_tokens: u32,
    output_tokens: u32,
    error: bool,
}

impl CallReport {
    pub(super) fn of(outcome: &Outcome) -> Self {
        CallReport {
            cost_usd: outcome.cost_usd,
            latency_ms: outcome.latency_ms,
            input_tokens: outcome.input_tokens,
            output_tokens: outcome.output_tokens,
            error: outcome.error,
        }
    }

    /// Refuses an outcome `sent` for decision `id` (this report's) that reports its call
    /// otherwise, naming the first field that differs.
    fn agrees(&self, id: u64, sent: &Outcome) -> Result<()> {
        let sent = CallReport::of(sent);
        let fields = [
            ("cost_usd", self.cost_usd, sent.cost_usd),
            ("latency_ms", self.latency_ms, sent.latency_ms),
            (
                "input_tokens",
                f64::from(self.input_tokens),
                f64::from(sent.input_tokens),
            ),
            (
                "output_tokens",
                f64::from(self.output_tokens),
                f64::from(sent.output_tokens),
            ),
            (
                "error",
                f64::from(u8::from(self.error)),
                f64::from(u8::from(sent.error)),
            ),
        ];
        match fields.into_iter().find(|(_, recorded, sent)| recorded != sent) {
            Some((field, recorded, sent)) => Err(ErrorKind::OutcomeConflict {
                id,
                field,
                recorded,
                sent,
            }
            .into()),
            None => Ok(()),
        }
    }
}

/// One decision awaiting feedback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct TrackedDecision {
    /// `None` once the arm has been removed.
    pub(super) arm: Option<usize>,
    pub(super) input_tokens: u32,
    /// Kept until both the cost and the quality are learned; empty after. Shared, so that
    /// copying the tracked decisions copies no features.
    pub(super) features: Arc<[f64]>,
    pub(super) outcome_recorded: bool,
    pub(super) quality_recorded: bool,
    /// The quality learned, where it is known (not for a decision restored as recorded).
    #[serde(default)]
    pub(super) quality: Option<f64>,
    /// What its outcome reported, once recorded (not for a decision restored as recorded).
    #[serde(default)]
    pub(super) call: Option<CallReport>,
}

impl TrackedDecision {
    /// Decision of arm `arm` in `context`, nothing recorded yet.
    pub(super) fn new(arm: usize, context: &Context) -> Self {
        TrackedDecision {
            arm: Some(arm),
            input_tokens: context.input_tokens,
            features: context.features.as_slice().into(),
            outcome_recorded: false,
            quality_recorded: false,
            quality: None,
            call: None,
        }
    }

    /// Refuses a quality `sent` for decision `id` (this one) other than the one it learned.
    fn agrees(&self, id: u64, sent: f64) -> Result<()> {
        match self.quality.filter(|&learned| learned != sent) {
            Some(learned) => Err(ErrorKind::QualityConflict { id, learned, sent }.into()),
            None => Ok(()),
        }
    }

    /// What recording a part of its feedback does: nothing unless it is `news`; else it is
    /// applied, or for a removed arm only recorded.
    fn applied_if(&self, news: bool) -> Applied {
        match self.arm {
            _ if !news => Applied::AlreadyApplied,
            None => Applied::ArmRemoved,
            Some(_) => Applied::Applied,
        }
    }

    /// A decision whose arm is gone: its feedback is acknowledged, never learned, so it
    /// keeps nothing but its size.
    pub(super) fn of_removed_arm(input_tokens: u32) -> Self {
        TrackedDecision {
            arm: None,
            input_tokens,
            features: Arc::default(),
            outcome_recorded: false,
            quality_recorded: false,
            quality: None,
            call: None,
        }
    }

    /// Records that `outcome` reported the decision's call.
    pub(super) fn record_call(&mut self, outcome: &Outcome) {
        self.outcome_recorded = true;
        self.call = Some(CallReport::of(outcome));
    }

    /// The cost its outcome reported, once recorded (unknown for a decision restored as
    /// recorded).
    pub(super) fn recorded_cost(&self) -> Option<f64> {
        self.call.map(|call| call.cost_usd)
    }

    /// The features, for one part of the feedback (cost or quality). Once the other part
    /// is recorded too, the decision needs them no more and hands them over.
    pub(super) fn take_or_share_features(&mut self, other_recorded: bool) -> Arc<[f64]> {
        if other_recorded {
            std::mem::take(&mut self.features)
        } else {
            Arc::clone(&self.features)
        }
    }
}

/// Decisions awaiting feedback, by id. A persistent map: a clone shares every node until
/// one side changes it, so a snapshot costs O(1) here however many decisions are tracked,
/// and the live learner copies only the nodes it touches afterwards.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct Ledger {
    decisions: OrdMap<u64, TrackedDecision>,
}

impl Ledger {
    /// Remembers decision `id`, then forgets the oldest beyond `horizon` decisions.
    pub(super) fn insert(&mut self, id: u64, decision: TrackedDecision, horizon: usize) {
        self.decisions.insert(id, decision);
        self.keep_at_most(horizon);
    }

    /// Forgets the oldest decisions beyond `horizon`.
    pub(super) fn keep_at_most(&mut self, horizon: usize) {
        while self.decisions.len() > horizon {
            if let Some(&(oldest, _)) = self.decisions.get_min() {
                self.decisions.remove(&oldest);
            }
        }
    }

    /// Whether decision `id` is remembered.
    pub(super) fn contains(&self, id: u64) -> bool {
        self.decisions.contains_key(&id)
    }

    pub(super) fn get(&self, id: u64) -> Result<&TrackedDecision> {
        self.decisions
            .get(&id)
            .ok_or_else(|| Error::from(ErrorKind::UnknownDecision(id)))
    }

    pub(super) fn get_mut(&mut self, id: u64) -> Result<&mut TrackedDecision> {
        self.decisions
            .get_mut(&id)
            .ok_or_else(|| Error::from(ErrorKind::UnknownDecision(id)))
    }

    /// Marks parts of decision `id`'s feedback as recorded without learning them (what a
    /// restored state already holds): its outcome when given, and its quality when given;
    /// a decision with both parts drops its features.
    pub(super) fn mark_recorded(
        &mut self,
        id: u64,
        outcome: Option<&Outcome>,
        quality: Option<f64>,
    ) -> Result<()> {
        let tracked = self.get_mut(id)?;
        if let Some(outcome) = outcome.filter(|_| !tracked.outcome_recorded) {
            tracked.record_call(outcome);
        }
        if quality.is_some() && !tracked.quality_recorded {
            tracked.quality_recorded = true;
            tracked.quality = quality;
        }
        if tracked.outcome_recorded && tracked.quality_recorded {
            tracked.features = Arc::default();
        }
        Ok(())
    }

    /// What recording `outcome` for decision `id` would do: as for feedback, a stated
    /// quality other than the one learned is refused (a failure's implicit 0 is not a
    /// statement), and so is a repeat that reports the call otherwise than the outcome
    /// recorded: a failure after a success, say, must not become a quality of 0.
    pub(super) fn outcome_would_apply(&self, id: u64, outcome: &Outcome) -> Result<Applied> {
        let t = self.get(id)?;
        if let Some(sent) = outcome.quality {
            t.agrees(id, sent)?;
        }
        if let Some(recorded) = &t.call {
            recorded.agrees(id, outcome)?;
        }
        let credited = outcome.credited_quality();
        Ok(t.applied_if(!t.outcome_recorded || (credited.is_some() && !t.quality_recorded)))
    }

    /// What recording `quality` for decision `id` would do: a repeat of the quality it
    /// learned is already applied; another is refused.
    pub(super) fn quality_would_apply(&self, id: u64, quality: f64) -> Result<Applied> {
        let t = self.get(id)?;
        t.agrees(id, quality)?;
        Ok(t.applied_if(!t.quality_recorded))
    }

    /// Forgets every decision with an id below `id`.
    pub(super) fn forget_before(&mut self, id: u64) {
        let (_, at, mut after) = self.decisions.split_lookup(&id);
        if let Some(decision) = at {
            after.insert(id, decision);
        }
        self.decisions = after;
    }

    /// After arm `index` is removed: its decisions keep their size and what was recorded
    /// of them, not their features (their feedback is acknowledged, logged and counted,
    /// never learned), and later arms' indices shift down by one.
    pub(super) fn remove_arm(&mut self, index: usize) {
        self.decisions = self
            .decisions
            .iter()
            .map(|(&id, t)| {
                let kept = match t.arm {
                    // What was recorded stays recorded, so that a repeat is not taken for news.
                    Some(a) if a == index => TrackedDecision {
                        arm: None,
                        features: Arc::default(),
                        ..t.clone()
                    },
                    Some(a) if a > index => TrackedDecision {
                        arm: Some(a - 1),
                        ..t.clone()
                    },
                    _ => t.clone(),
                };
                (id, kept)
            })
            .collect();
    }

    /// The id of the oldest decision remembered.
    pub(super) fn oldest(&self) -> Option<u64> {
        self.decisions.get_min().map(|&(id, _)| id)
    }

    /// Whether a decision names an arm at `arms` or beyond (a damaged snapshot).
    pub(super) fn names_arm_beyond(&self, arms: usize) -> bool {
        self.decisions.values().any(|t| t.arm.is_some_and(|a| a >= arms))
    }

    /// Whether both ledgers share their storage (a snapshot and its learner).
    #[cfg(test)]
    pub(super) fn shares_with(&self, other: &Ledger) -> bool {
        self.decisions.ptr_eq(&other.decisions)
    }
}
