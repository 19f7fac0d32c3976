//! Each model's health, as the proxy's calls show it: a circuit breaker per route and
//! model, and cooldowns a provider asks for.
//!
//! A breaker is closed while the model answers. It opens when, among its last `window`
//! calls (at least `min_calls` of them), the share that failed reaches `failure_rate`,
//! or when the provider answers 429 or 503 with `Retry-After` (open for that long, at
//! most `max_cooldown_ms`; a cooldown is never shortened). Open, it stays so for
//! `cooldown_ms`, then turns half-open: the next call is a probe, and while it runs no
//! other call goes to the model ([`Health::try_call`] refuses them); the probe's success
//! closes the breaker, its failure opens it again, and a probe that never reports (its
//! request dropped) is given up after `cooldown_ms`. Any success of a call that started
//! after the breaker opened closes it; a call that started before says nothing of the
//! model since, and counts for nothing (unless it asks to wait).
//! Decisions leave out models whose breaker is open or probing
//! (`quiver_bandit::Request::unavailable`), unless that leaves no model, when every model
//! is tried as if all were closed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The breakers' settings (`[circuit_breaker]` in `quiver.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Calls remembered per model.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Calls needed in the window before the failure rate can open the breaker.
    #[serde(default = "default_min_calls")]
    pub min_calls: usize,
    /// Share of failed calls in the window that opens the breaker, in (0, 1].
    #[serde(default = "default_failure_rate")]
    pub failure_rate: f64,
    /// How long an open breaker stays open before a probe, ms.
    #[serde(default = "default_cooldown")]
    pub cooldown_ms: u64,
    /// The longest cooldown a provider's `Retry-After` may ask for, ms.
    #[serde(default = "default_max_cooldown")]
    pub max_cooldown_ms: u64,
}

fn default_window() -> usize {
    20
}
fn default_min_calls() -> usize {
    10
}
fn default_failure_rate() -> f64 {
    0.5
}
fn default_cooldown() -> u64 {
    30_000
}
fn default_max_cooldown() -> u64 {
    300_000
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: default_window(),
            min_calls: default_min_calls(),
            failure_rate: default_failure_rate(),
            cooldown_ms: default_cooldown(),
            max_cooldown_ms: default_max_cooldown(),
        }
    }
}

impl BreakerConfig {
    /// Checks the settings' ranges.
    pub fn check(&self) -> Result<(), String> {
        if self.window == 0 || self.min_calls == 0 || self.min_calls > self.window {
            return Err(format!(
                "circuit_breaker: need 1 <= min_calls ({}) <= window ({})",
                self.min_calls, self.window
            ));
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(format!(
                "circuit_breaker: failure_rate {} is not in (0, 1]",
                self.failure_rate
            ));
        }
        if self.cooldown_ms == 0 || self.cooldown_ms > self.max_cooldown_ms {
            return Err(format!(
                "circuit_breaker: need 1 <= cooldown_ms ({}) <= max_cooldown_ms ({})",
                self.cooldown_ms, self.max_cooldown_ms
            ));
        }
        Ok(())
    }
}

/// A breaker's state, as `/v1/routes/{name}` and `/metrics` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    /// Calls go through.
    Closed,
    /// No calls until the cooldown ends.
    Open,
    /// The cooldown ended: one probe call decides.
    HalfOpen,
}

#[derive(Debug, Default)]
struct Breaker {
    /// The last calls, `true` for a failure.
    recent: VecDeque<bool>,
    /// Open until then.
    open_until: Option<Instant>,
    /// When it last opened: calls that started before report on the model as it was.
    opened_at: Option<Instant>,
    /// A probe under way, since then.
    probing: Option<Instant>,
    /// Why it opened.
    reason: String,
}

impl Breaker {
    fn circuit(&self, now: Instant) -> Circuit {
        match self.open_until {
            Some(until) if now < until => Circuit::Open,
            Some(_) => Circuit::HalfOpen,
            None => Circuit::Closed,
        }
    }

    /// Opens the breaker at `now` until `until`, or later if it is open longer already.
    fn open(&mut self, now: Instant, until: Instant, reason: String) {
        // Kept open longer, it opened when it first did: calls since then count.
        if self.circuit(now) != Circuit::Open {
            self.opened_at = Some(now);
        }
        if self.open_until.is_none_or(|u| u < until) {
            self.open_until = Some(until);
            self.reason = reason;
        }
        self.probing = None;
        self.recent.clear();
    }

    /// A probe under way that has not yet been given up on.
    fn probing(&self, now: Instant, cooldown: Duration) -> bool {
        self.probing.is_some_and(|since| now < since + cooldown)
    }
}

/// Every route's breakers, by route and model.
#[derive(Debug, Default)]
pub struct Health {
    config: BreakerConfig,
    breakers: Mutex<BTreeMap<(String, String), Breaker>>,
}

impl Health {
    /// Breakers with `config`.
    pub fn new(config: BreakerConfig) -> Self {
        Health {
            config,
            breakers: Mutex::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<(String, String), Breaker>) -> T) -> T {
        // A panic elsewhere while holding the lock leaves plain data, still usable.
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut breakers)
    }

    fn cooldown(&self) -> Duration {
        Duration::from_millis(self.config.cooldown_ms)
    }

    /// The models of `route` that cannot take a call now, and why.
    pub fn unavailable(&self, route: &str, now: Instant) -> BTreeMap<String, String> {
        let cooldown = self.cooldown();
        self.with(|breakers| {
            breakers
                .range((route.to_string(), String::new())..)
                .take_while(|((r, _), _)| r == route)
                .filter_map(|((_, model), b)| match b.circuit(now) {
                    Circuit::Open => Some((model.clone(), format!("circuit open: {}", b.reason))),
                    Circuit::HalfOpen if b.probing(now, cooldown) => {
                        Some((model.clone(), "circuit half-open, probing".into()))
                    }
                    _ => None,
                })
                .collect()
        })
    }

    /// Whether a call to `model` may start now, and if so marks it: a closed breaker, or
    /// a half-open one's probe when no other is under way; not an open one (unless
    /// `forced`, as when every model is unavailable and all are tried).
    pub fn try_call(&self, route: &str, model: &str, forced: bool, now: Instant) -> bool {
        let cooldown = self.cooldown();
        self.with(|breakers| {
            let Some(b) = breakers.get_mut(&(route.to_string(), model.to_string())) else {
                return true;
            };
            match b.circuit(now) {
                Circuit::Closed => true,
                Circuit::Open => forced,
                Circuit::HalfOpen if b.probing(now, cooldown) => forced,
                Circuit::HalfOpen => {
                    b.probing = Some(now);
                    true
                }
            }
        })
    }

    /// Gives back the probe of `model`'s half-open breaker that a call marked at `taken`
    /// ([`Health::try_call`]) and never sent, so that the next call may take it at once.
    pub fn give_back(&self, route: &str, model: &str, taken: Instant) {
        self.with(|breakers| {
            if let Some(b) = breakers.get_mut(&(route.to_string(), model.to_string())) {
                if b.probing == Some(taken) {
                    b.probing = None;
                }
            }
        });
    }

    /// Records the end of a call that `started`: `failed`, and the cooldown the provider
    /// asked for, if any.
    pub fn record(
        &self,
        route: &str,
        model: &str,
        failed: bool,
        retry_after: Option<Duration>,
        (started, now): (Instant, Instant),
    ) {
        let (config, cooldown) = (self.config, self.cooldown());
        self.with(|breakers| {
            let b = breakers
                .entry((route.to_string(), model.to_string()))
                .or_default();
            if let Some(wait) = retry_after {
                let wait = wait.min(Duration::from_millis(config.max_cooldown_ms));
                b.open(
                    now,
                    now + wait,
                    format!("the provider asked to wait {} ms", wait.as_millis()),
                );
                return;
            }
            if b.opened_at.is_some_and(|opened| started < opened) {
                return;
            }
            if !failed && b.circuit(now) != Circuit::Closed {
                // The model answers again: the probe, or a call made when all were tried.
                *b = Breaker::default();
                return;
            }
            if b.circuit(now) == Circuit::HalfOpen {
                b.open(now, now + cooldown, "the probe failed".to_string());
                return;
            }
            b.recent.push_back(failed);
            if b.recent.len() > config.window {
                b.recent.pop_front();
            }
            let failures = b.recent.iter().filter(|f| **f).count();
            let calls = b.recent.len();
            if calls >= config.min_calls && failures as f64 >= config.failure_rate * calls as f64 {
                let reason = format!("{failures} of the last {calls} calls failed");
                b.open(now, now + cooldown, reason);
            }
        });
    }

    /// Whether a call to `model` (or a deployment's key) on `route` may start now: its
    /// breaker is closed, or half-open with no probe under way. Marks nothing.
    pub fn admits(&self, route: &str, model: &str, now: Instant) -> bool {
        let cooldown = self.cooldown();
        self.with(|breakers| {
            breakers
                .get(&(route.to_string(), model.to_string()))
                .is_none_or(|b| match b.circuit(now) {
                    Circuit::Closed => true,
                    Circuit::Open => false,
                    Circuit::HalfOpen => !b.probing(now, cooldown),
                })
        })
    }

    /// The state of `model`'s breaker on `route`.
    pub fn circuit(&self, route: &str, model: &str, now: Instant) -> Circuit {
        self.with(|breakers| {
            breakers
                .get(&(route.to_string(), model.to_string()))
                .map_or(Circuit::Closed, |b| b.circuit(now))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new(BreakerConfig {
            window: 10,
            min_calls: 4,
            failure_rate: 0.5,
            cooldown_ms: 1000,
            max_cooldown_ms: 5000,
        })
    }

    #[test]
    fn a_failing_model_opens_is_probed_and_closes() {
        let (h, t0) = (health(), Instant::now());
        // Alternating results: half fail, but only from the fourth call on does it count.
        for (i, failed) in [true, false, true].into_iter().enumerate() {
            h.record("r", "m", failed, None, (t0, t0));
            assert_eq!(h.circuit("r", "m", t0), Circuit::Closed, "call {i}");
        }
        h.record("r", "m", false, None, (t0, t0));
        assert_eq!(h.circuit("r", "m", t0), Circuit::Open, "2 of 4 failed");
        assert!(h.unavailable("r", t0)["m"].contains("2 of the last 4 calls failed"));
        assert!(h.unavailable("other", t0).is_empty());
        let later = t0 + Duration::from_millis(1000);
        assert_eq!(h.circuit("r", "m", later), Circuit::HalfOpen);
        assert!(h.unavailable("r", later).is_empty(), "half-open takes a probe");
        assert!(h.try_call("r", "m", false, later));
        assert!(h.unavailable("r", later)["m"].contains("probing"));
        assert!(!h.try_call("r", "m", false, later), "one probe at a time");
        h.record("r", "m", true, None, (later, later));
        assert_eq!(h.circuit("r", "m", later), Circuit::Open, "the probe failed");
        assert!(!h.try_call("r", "m", false, later) && h.try_call("r", "m", true, later));
        // A probe whose request was dropped never reports: given up after a cooldown.
        let after = later + Duration::from_millis(1000);
        assert!(h.try_call("r", "m", false, after));
        // One never sent is given back at once.
        h.give_back("r", "m", after);
        assert!(h.unavailable("r", after).is_empty());
        assert!(h.try_call("r", "m", false, after));
        let lost = after + Duration::from_millis(1000);
        assert!(h.unavailable("r", lost).is_empty());
        assert!(h.try_call("r", "m", false, lost));
        h.record("r", "m", false, None, (lost, lost));
        let after = lost;
        assert_eq!(h.circuit("r", "m", after), Circuit::Closed);
        // Closed afresh: three failures are not yet enough calls to open it.
        for _ in 0..3 {
            h.record("r", "m", true, None, (after, after));
        }
        assert_eq!(h.circuit("r", "m", after), Circuit::Closed);
    }

    #[test]
    fn retry_after_opens_for_that_long_within_the_bound() {
        let (h, t0) = (health(), Instant::now());
        h.record("r", "m", true, Some(Duration::from_millis(200)), (t0, t0));
        assert_eq!(
            h.circuit("r", "m", t0 + Duration::from_millis(199)),
            Circuit::Open
        );
        assert_eq!(
            h.circuit("r", "m", t0 + Duration::from_millis(200)),
            Circuit::HalfOpen
        );
        h.record("r", "n", true, Some(Duration::from_secs(3600)), (t0, t0));
        assert_eq!(
            h.circuit("r", "n", t0 + Duration::from_millis(4999)),
            Circuit::Open
        );
        assert_eq!(
            h.circuit("r", "n", t0 + Duration::from_millis(5000)),
            Circuit::HalfOpen
        );
    }

    /// A call that started before the breaker opened reports on the model as it was: its
    /// success closes nothing, and its failure counts for nothing; a later call's does.
    #[test]
    fn calls_from_before_the_opening_neither_close_nor_count() {
        let (h, t0) = (health(), Instant::now());
        let (t1, t2) = (t0 + Duration::from_millis(100), t0 + Duration::from_millis(200));
        // Open for 200 ms, shorter than the cooldown that enough failures would open it for.
        h.record("r", "m", true, Some(Duration::from_millis(200)), (t1, t1));
        h.record("r", "m", false, None, (t0, t2));
        assert_eq!(
            h.circuit("r", "m", t2),
            Circuit::Open,
            "a cooldown is never shortened"
        );
        for _ in 0..4 {
            h.record("r", "m", true, None, (t0, t2));
        }
        let probe = t1 + Duration::from_millis(200);
        assert_eq!(
            h.circuit("r", "m", probe),
            Circuit::HalfOpen,
            "nor lengthened by old calls"
        );
        // A longer wait asked later keeps it open from when it opened: a call made since
        // (when every model is tried) closes it.
        h.record("r", "m", true, Some(Duration::from_millis(4000)), (t2, t2));
        let t3 = t2 + Duration::from_millis(50);
        h.record("r", "m", false, None, (t1 + Duration::from_millis(50), t3));
        assert_eq!(h.circuit("r", "m", t3), Circuit::Closed);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = BreakerConfig {
            min_calls: 30,
            ..BreakerConfig::default()
        };
        assert!(bad.check().unwrap_err().contains("min_calls (30) <= window (20)"));
        let bad = BreakerConfig {
            failure_rate: 0.0,
            ..BreakerConfig::default()
        };
        assert!(bad.check().unwrap_err().contains("failure_rate"));
        for (cooldown_ms, max_cooldown_ms) in [(0, 1000), (60_000, 1000)] {
            let bad = BreakerConfig {
                cooldown_ms,
                max_cooldown_ms,
                ..BreakerConfig::default()
            };
            let err = bad.check().unwrap_err();
            assert!(
                err.contains(&format!(
                    "cooldown_ms ({cooldown_ms}) <= max_cooldown_ms ({max_cooldown_ms})"
                )),
                "{err}"
            );
        }
    }
}
