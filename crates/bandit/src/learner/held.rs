//! Decisions held while their quality is on its way.
//!
//! A deterministic index policy (LinUCB) decides the same way until its state changes, so
//! with qualities arriving late it sends every request of a kind to one arm until the
//! first of them is judged. Each decision is therefore held: its row narrows the arm's
//! width as the coming quality will and moves no estimate, as if the quality were observed
//! at the estimate (the hallucinated observations of GP-BUCB: Desautels, Krause and
//! Burdick 2014, *JMLR* 15; [`crate::ridge::RidgeModel::hold`]). When the quality comes the
//! row leaves the width and the quality is learned as any other. The latest decision is
//! held only when the next one is about to be decided and its quality has not come: a
//! quality judged at once costs nothing, and a decision's work is one hold at most. A
//! quality that never comes must not count as knowledge, so a decision is let go once it
//! is older than twice the longest delay its route's qualities have lately taken (and at
//! most [`HOLD_HORIZON`] decisions); a quality after that is learned as any other.
//!
//! Thompson sampling randomizes its choices and needs no hold (Chapelle and Li 2011 found
//! it robust to delay); its policies hold nothing.

use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

/// Decisions after which a decision whose quality has not come is let go at the latest:
/// at 20 requests a second, qualities judged within 50 seconds; the horizon before a first
/// quality has come.
pub const HOLD_HORIZON: u64 = 1_000;

/// The least horizon, whatever the delays: a quality judged at once still comes after
/// the decisions that ran meanwhile.
const MIN_HOLD_HORIZON: f64 = 16.0;

/// How much of the longest delay seen is kept from one quality to the next: it halves
/// over about 700 qualities, so a route whose judging speeds up holds less.
const DELAY_MEMORY: f64 = 0.999;

/// One decision held: its arm and context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Held {
    pub(super) arm: usize,
    pub(super) features: Arc<[f64]>,
}

/// The held decisions, by id, the latest decision awaiting its quality, and how late
/// qualities come. A persistent map, like the ledger's, so that a snapshot copies none of
/// it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct HeldDecisions {
    /// Decisions the policy holds.
    decisions: OrdMap<u64, Held>,
    /// The latest decision, not held yet: held when the next is decided if its quality
    /// has not come by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latest: Option<(u64, Held)>,
    /// The longest delay, in decisions, of an awaited decision's quality, decayed by
    /// [`DELAY_MEMORY`] at each; 0 before the first.
    longest_delay: f64,
}

impl HeldDecisions {
    /// Nothing held and no delay seen: a learner whose policy holds nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.decisions.is_empty() && self.latest.is_none() && self.longest_delay == 0.0
    }

    /// How many decisions a decision is held at most: twice the longest recent delay.
    pub(super) fn horizon(&self) -> u64 {
        if self.longest_delay == 0.0 {
            return HOLD_HORIZON;
        }
        // Both bounds are whole numbers of decisions, so the cast is exact.
        (2.0 * self.longest_delay)
            .ceil()
            .clamp(MIN_HOLD_HORIZON, HOLD_HORIZON as f64) as u64
    }

    /// A quality came `delay` decisions after its decision.
    pub(super) fn came_after(&mut self, delay: u64) {
        self.longest_delay = (self.longest_delay * DELAY_MEMORY).max(delay as f64);
    }

    /// Decision `id` awaits its quality; returns the one that did before it, if any, to be
    /// held now.
    pub(super) fn await_quality(&mut self, id: u64, decision: Held) -> Option<(u64, Held)> {
        self.latest.replace((id, decision))
    }

    /// Takes out the latest decision awaiting its quality, to be held now.
    pub(super) fn take_latest(&mut self) -> Option<(u64, Held)> {
        self.latest.take()
    }

    pub(super) fn insert(&mut self, id: u64, held: Held) {
        self.decisions.insert(id, held);
    }

    /// Takes decision `id` out, if it awaits its quality: with whether the policy holds it.
    pub(super) fn take(&mut self, id: u64) -> Option<(Held, bool)> {
        if self.latest.as_ref().is_some_and(|(latest, _)| *latest == id) {
            return self.latest.take().map(|(_, held)| (held, false));
        }
        self.decisions.remove(&id).map(|held| (held, true))
    }

    /// Takes out the oldest decision if it is older than `before`.
    pub(super) fn take_oldest_before(&mut self, before: u64) -> Option<Held> {
        let &(oldest, _) = self.decisions.get_min()?;
        (oldest < before)
            .then(|| self.decisions.remove(&oldest))
            .flatten()
    }

    /// After arm `index` is removed: its decisions go with it, and later arms' indices
    /// shift down by one.
    pub(super) fn remove_arm(&mut self, index: usize) {
        let shifted = |held: &Held| Held {
            arm: if held.arm > index { held.arm - 1 } else { held.arm },
            ..held.clone()
        };
        self.latest = self
            .latest
            .take()
            .filter(|(_, held)| held.arm != index)
            .map(|(id, held)| (id, shifted(&held)));
        self.decisions = self
            .decisions
            .iter()
            .filter(|(_, held)| held.arm != index)
            .map(|(&id, held)| (id, shifted(held)))
            .collect();
    }

    /// Whether a decision names an arm at `arms` or beyond (a damaged snapshot).
    pub(super) fn names_arm_beyond(&self, arms: usize) -> bool {
        self.decisions
            .values()
            .chain(self.latest.iter().map(|(_, held)| held))
            .any(|held| held.arm >= arms)
    }
}
