//! A canary: one of a route's shadow candidates ([`crate::shadow`]) serving a share of
//! the route's traffic, behind a safety gate that promotes it or rolls it back on its
//! off-policy estimate.
//!
//! **Serving.** Each decision `i` flips a coin of its own, drawn from stream `i` of the
//! route's seed: with probability `s`, the canary's share in the current [`Stage`], the
//! canary's draw serves; otherwise the route's policy's. The server logs which served
//! (the decision's `policy`), so that a restart under another share or seed rebuilds the
//! same stage from the log. The decision's propensity is the mixture's,
//! `(1 - s) pi_route(a) + s pi_canary(a)`, whichever of the two drew `a`, so
//! the log stays a valid log for `quiver ope` and for every shadow estimate. Both policies
//! learn every outcome (unweighted, as the shadows do), so the route's own learned state
//! survives a promotion and a rollback unchanged.
//!
//! **The gate.** From the start of a stage on, it compares two estimates of value
//! (`quality - w_cost cost - w_latency latency_s` under the route's objective):
//! - the canary's, DR over every completed decision with the canary's PMF as target and
//!   the mixture's propensity, with its delta-method 95% interval;
//! - the route's policy's, the plain mean of the decisions it served: the coin is
//!   independent of everything else, so these are a random sample of its own traffic.
//!
//! Once `min_decisions` decisions completed in the stage: in [`Stage::Canary`] the canary is
//! promoted when its interval's lower bound exceeds the route's estimate (with
//! `promote = "auto"`), and rolled back when its upper bound falls below it; in
//! [`Stage::Promoted`] the canary serves `1 - s` and the route's policy keeps `s`, so that
//! the same comparison can roll it back. A rolled-back canary serves nothing and stays a
//! shadow. Each stage starts its estimates afresh: a canary whose quality drops after its
//! promotion is judged on what it does since, not on what earned it the promotion.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{in_range, ErrorKind, Result};
use crate::ope::{Dr, OpeInputs, Snips, TermMoments};
use crate::policy::DecisionRng;
use crate::shadow::Interval;

/// Mixed into the route's seed for the canary's coins, so that they are independent of the
/// route's own draws, which use the same decision streams.
const COIN_SALT: u64 = 0x6361_6e61_7279_2121;

/// Where a canary stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// It serves its share `s`.
    Canary,
    /// It serves `1 - s`; the route's policy keeps `s`.
    Promoted,
    /// It serves nothing and stays a shadow.
    RolledBack,
}

impl Stage {
    /// The stage's name in the log and the API.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Canary => "canary",
            Stage::Promoted => "promoted",
            Stage::RolledBack => "rolled_back",
        }
    }
}

/// Whether the gate may promote a canary by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Promote {
    /// When its lower bound exceeds the route's estimate.
    Auto,
    /// Only when an operator says so (the gate still rolls it back).
    #[default]
    Manual,
}

/// How a canary serves and is judged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CanaryRule {
    /// Its share `s` of the traffic while in canary, in `(0, 0.5]`.
    pub share: f64,
    /// Whether the gate promotes it.
    pub promote: Promote,
    /// Completed decisions in a stage before the gate judges it (at least 2).
    pub min_decisions: u64,
}

impl CanaryRule {
    /// Checks the rule's values.
    pub fn check(&self) -> Result<()> {
        in_range("canary.share", self.share, f64::MIN_POSITIVE, 0.5, "(0, 0.5]")?;
        if self.min_decisions < 2 {
            return Err(ErrorKind::InvalidConfig(format!(
                "canary.min_decisions is {}; the gate's interval needs at least 2",
                self.min_decisions
            ))
            .into());
        }
        Ok(())
    }
}

/// A change of stage the gate calls for, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The stage to enter.
    pub stage: Stage,
    /// The figures that decided it.
    pub reason: String,
}

/// A canary's state and its gate's estimates since the stage began.
#[derive(Debug, Clone)]
pub struct Gate {
    rule: CanaryRule,
    stage: Stage,
    blocked: bool,
    /// The canary's value, DR, on every decision completed in the stage.
    canary_value: TermMoments,
    /// The route's policy's value on the decisions it served in the stage.
    route_value: TermMoments,
    promotions: u64,
    rollbacks: u64,
}

/// A canary's state as `GET /v1/routes/{name}/candidates` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CanaryReport {
    /// The candidate's policy spec.
    pub policy: String,
    /// Its stage.
    pub stage: Stage,
    /// Its share of new decisions now.
    pub serving_share: f64,
    /// Its configured share while in canary.
    pub share: f64,
    /// Whether the gate promotes it by itself.
    pub promote: Promote,
    /// Whether an operator blocked the gate: no change of stage but by the operator.
    pub blocked: bool,
    /// Completed decisions the gate needs in a stage before it judges.
    pub min_decisions: u64,
    /// Decisions completed in the stage.
    pub decisions: usize,
    /// The canary's value in the stage (DR, 95% interval).
    pub canary_value: Interval,
    /// The route's policy's value in the stage, on the decisions it served.
    pub route_value: Interval,
    /// Promotions in the route's log.
    pub promotions: u64,
    /// Rollbacks in the route's log.
    pub rollbacks: u64,
}

impl Gate {
    /// A canary in [`Stage::Canary`].
    pub fn new(rule: CanaryRule) -> Result<Self> {
        rule.check()?;
        Ok(Gate {
            rule,
            stage: Stage::Canary,
            blocked: false,
            canary_value: TermMoments::default(),
            route_value: TermMoments::default(),
            promotions: 0,
            rollbacks: 0,
        })
    }

    /// Its stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Its share of new decisions in the current stage.
    pub fn serving_share(&self) -> f64 {
        match self.stage {
            Stage::Canary => self.rule.share,
            Stage::Promoted => 1.0 - self.rule.share,
            Stage::RolledBack => 0.0,
        }
    }

    /// Whether the canary serves decision `id` of a route seeded with `seed`.
    pub fn serves(&self, seed: u64, id: u64) -> bool {
        let share = self.serving_share();
        if share <= 0.0 {
            return false;
        }
        let mut coin = DecisionRng::seed_from_u64(seed ^ COIN_SALT);
        coin.set_stream(id);
        coin.random::<f64>() < share
    }

    /// The mixture's probability of an arm that the route's policy gives `route` and the
    /// canary `canary`.
    pub fn propensity(&self, route: f64, canary: f64) -> f64 {
        let s = self.serving_share();
        (1.0 - s) * route + s * canary
    }

    /// Enters `stage` (the same stage starts afresh), its estimates empty.
    pub fn enter(&mut self, stage: Stage) {
        self.stage = stage;
        self.canary_value = TermMoments::default();
        self.route_value = TermMoments::default();
        match stage {
            Stage::Promoted => self.promotions += 1,
            Stage::RolledBack => self.rollbacks += 1,
            Stage::Canary => {}
        }
    }

    /// Blocks or unblocks the gate.
    pub fn block(&mut self, blocked: bool) {
        self.blocked = blocked;
    }

    /// Adds a completed decision's value row (`row` as the canary's DR reads it: the
    /// canary's PMF as target); `served_by_route` when the route's policy served it.
    pub fn add(&mut self, row: &OpeInputs, served_by_route: bool) {
        self.canary_value.add_rows(&Dr, row);
        if served_by_route {
            self.route_value.add([row.reward[0], 1.0, 0.0]);
        }
    }

    fn intervals(&self) -> (Interval, Interval) {
        (
            Interval::of(&self.canary_value, &Dr),
            Interval::of(&self.route_value, &Snips),
        )
    }

    /// The change of stage the estimates call for, if any.
    pub fn verdict(&self) -> Option<Verdict> {
        if self.blocked || self.stage == Stage::RolledBack {
            return None;
        }
        let n = self.canary_value.rows();
        if (n as u64) < self.rule.min_decisions {
            return None;
        }
        let (canary, route) = self.intervals();
        let ([lo, hi], route) = (canary.ci95?, route.value?);
        let why = |bound: &str, value: f64, relation: &str| {
            format!(
                "after {n} decisions in {}, the canary's value's 95% {bound} {value:.4} is {relation} \
                 the route's policy's {route:.4}",
                self.stage.name()
            )
        };
        if hi < route {
            Some(Verdict {
                stage: Stage::RolledBack,
                reason: why("upper bound", hi, "below"),
            })
        } else if self.stage == Stage::Canary && self.rule.promote == Promote::Auto && lo > route {
            Some(Verdict {
                stage: Stage::Promoted,
                reason: why("lower bound", lo, "above"),
            })
        } else {
            None
        }
    }

    /// Its state and estimates.
    pub fn report(&self, policy: &str) -> CanaryReport {
        let (canary_value, route_value) = self.intervals();
        CanaryReport {
            policy: policy.to_string(),
            stage: self.stage,
            serving_share: self.serving_share(),
            share: self.rule.share,
            promote: self.rule.promote,
            blocked: self.blocked,
            min_decisions: self.rule.min_decisions,
            decisions: self.canary_value.rows(),
            canary_value,
            route_value,
            promotions: self.promotions,
            rollbacks: self.rollbacks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(promote: Promote) -> CanaryRule {
        CanaryRule {
            share: 0.1,
            promote,
            min_decisions: 20,
        }
    }

    /// One completed decision of value `reward`, as the canary's DR reads it with weight 1
    /// and a reward model predicting 0: its DR term is `reward`.
    fn row(reward: f64) -> OpeInputs {
        OpeInputs {
            reward: vec![reward],
            propensity: vec![0.5],
            target: vec![0.5],
            q_logged: vec![0.0],
            dm: vec![0.0],
            accepted: vec![true],
            clip: f64::INFINITY,
            switch_tau: f64::INFINITY,
        }
    }

    /// `n` decisions: the canary's value alternates `canary +- 0.1`, and every other
    /// decision is served by the route's policy at `route +- 0.1`.
    fn feed(gate: &mut Gate, n: usize, canary: f64, route: f64) {
        for i in 0..n {
            let wobble = if i % 4 < 2 { 0.1 } else { -0.1 };
            let served_by_route = i % 2 == 0;
            let mut r = row(canary + wobble);
            gate.add(&r, false);
            if served_by_route {
                // The route's rows carry their own reward.
                r.reward[0] = route + wobble;
                gate.route_value.add([r.reward[0], 1.0, 0.0]);
            }
        }
    }

    #[test]
    fn shares_and_propensities_follow_the_stage() {
        let mut gate = Gate::new(rule(Promote::Auto)).unwrap();
        assert_eq!(gate.serving_share(), 0.1);
        assert!((gate.propensity(0.5, 0.2) - (0.9 * 0.5 + 0.1 * 0.2)).abs() < 1e-15);
        gate.enter(Stage::Promoted);
        assert_eq!(gate.serving_share(), 0.9);
        assert!((gate.propensity(0.5, 0.2) - (0.1 * 0.5 + 0.9 * 0.2)).abs() < 1e-15);
        gate.enter(Stage::RolledBack);
        assert_eq!((gate.serving_share(), gate.propensity(0.5, 0.2)), (0.0, 0.5));
        assert!(!(0..1000).any(|id| gate.serves(7, id)));
        let report = gate.report("x");
        assert_eq!((report.promotions, report.rollbacks), (1, 1));
    }

    /// The coins of 200,000 decisions serve the canary at its share: the count's standard
    /// deviation is `sqrt(n s (1 - s))` = 134, and five of them are allowed; another seed
    /// gives other coins.
    #[test]
    fn coins_serve_the_share() {
        let gate = Gate::new(rule(Promote::Auto)).unwrap();
        let n = 200_000u64;
        let served = (0..n).filter(|&id| gate.serves(3, id)).count() as f64;
        let sd = (n as f64 * 0.1 * 0.9).sqrt();
        assert!((served - 0.1 * n as f64).abs() < 5.0 * sd, "{served}");
        let differ = (0..1000)
            .filter(|&id| gate.serves(3, id) != gate.serves(4, id))
            .count();
        assert!(differ > 100, "{differ}");
    }

    #[test]
    fn shares_outside_the_range_are_refused() {
        for share in [0.0, -0.1, 0.6, f64::NAN] {
            let rule = CanaryRule {
                share,
                ..rule(Promote::Auto)
            };
            assert!(Gate::new(rule).is_err(), "{share}");
        }
        let rule = CanaryRule {
            min_decisions: 1,
            ..rule(Promote::Auto)
        };
        assert!(Gate::new(rule).unwrap_err().to_string().contains("min_decisions"));
    }

    /// A clearly better canary (0.8 against 0.5, each +- 0.1) is promoted exactly when
    /// the minimum is reached (its lower bound is far above by then), not before; under
    /// `manual`, never; a blocked gate never judges; a clearly worse one is rolled back;
    /// after a promotion the estimates start afresh.
    #[test]
    fn the_gate_promotes_and_rolls_back_on_the_intervals() {
        let mut gate = Gate::new(rule(Promote::Auto)).unwrap();
        feed(&mut gate, 19, 0.8, 0.5);
        assert_eq!(gate.verdict(), None);
        feed(&mut gate, 1, 0.8, 0.5);
        let verdict = gate.verdict().unwrap();
        assert_eq!(verdict.stage, Stage::Promoted);
        assert!(verdict.reason.contains("lower bound"), "{}", verdict.reason);
        gate.block(true);
        assert_eq!(gate.verdict(), None);
        gate.block(false);

        gate.enter(Stage::Promoted);
        assert_eq!(gate.report("x").decisions, 0);
        feed(&mut gate, 20, 0.8, 0.5);
        assert_eq!(gate.verdict(), None, "a promoted canary is not promoted again");
        gate.enter(Stage::Promoted);
        feed(&mut gate, 20, 0.3, 0.5);
        assert_eq!(gate.verdict().map(|v| v.stage), Some(Stage::RolledBack));

        let mut manual = Gate::new(rule(Promote::Manual)).unwrap();
        feed(&mut manual, 40, 0.8, 0.5);
        assert_eq!(manual.verdict(), None);
        feed(&mut manual, 40, 0.1, 0.5);
        // 40 rows at 0.8 and 40 at 0.1: the mean 0.45 is below 0.5, its upper bound (0.53)
        // is not; 200 more at 0.1 settle it.
        assert_eq!(manual.verdict(), None);
        feed(&mut manual, 200, 0.1, 0.5);
        assert_eq!(manual.verdict().map(|v| v.stage), Some(Stage::RolledBack));

        let mut rolled = Gate::new(rule(Promote::Auto)).unwrap();
        rolled.enter(Stage::RolledBack);
        feed(&mut rolled, 40, 0.1, 0.5);
        assert_eq!(
            rolled.verdict(),
            None,
            "a rolled-back canary serves nothing to judge"
        );
    }
}
