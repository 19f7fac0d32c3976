//! Sessions: requests that name one (OpenAI's `user`, or the `x-quiver-session` header)
//! stay on one model while it keeps succeeding, so that a conversation does not lose the
//! provider's prompt cache (and its tone) at every turn.
//!
//! The rule, per route (`[routes.sessions]`): a session's next request goes to the model
//! that served its last one, unless that call failed, the model cannot serve this request
//! (an open breaker, a constraint), the session was idle longer than `idle_timeout_s`, or
//! it already had `max_turns` turns on that model; then the route's policy decides afresh
//! and the session moves to its choice. A decision that stays is deterministic given the
//! session, so it is logged with propensity 1 and the reason `session: stay`; off-policy
//! estimates of the shadow candidates leave such decisions out (their other models had no
//! chance). Every decision of a session logs its session (a digest, never the name) and
//! the rule's verdict as its `reason`.

use std::num::NonZeroUsize;
use std::time::{Duration, SystemTime};

use lru::LruCache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A route's session rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Whether requests naming a session stay on its model (`false`: every request is
    /// decided afresh).
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// A session idle longer than this, in seconds, is decided afresh.
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
    /// Turns on one model before the session is decided afresh (0: no limit).
    #[serde(default)]
    pub max_turns: u32,
    /// Sessions remembered per route; the least recently seen are forgotten first.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
}

fn enabled() -> bool {
    true
}

fn default_idle_timeout_s() -> u64 {
    1800
}

fn default_max_sessions() -> usize {
    100_000
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            enabled: true,
            idle_timeout_s: default_idle_timeout_s(),
            max_turns: 0,
            max_sessions: default_max_sessions(),
        }
    }
}

/// What the rule says for a session's request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Serve it with the session's model.
    Stay(String),
    /// Decide afresh, for this reason (logged).
    Decide(&'static str),
}

/// A session's model, and how it has served.
#[derive(Debug, Clone)]
struct Session {
    model: String,
    turns: u32,
    /// The session's latest decision.
    decision: u64,
    failed: bool,
    seen: SystemTime,
}

/// A route's sessions.
pub struct Sessions {
    config: SessionConfig,
    table: LruCache<String, Session>,
}

/// The key of session `name` of `caller` (callers are told apart: two tokens' sessions of
/// the same name are two sessions), as logged: the first 16 hex digits of a SHA-256.
pub fn key(caller: Option<&str>, name: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(caller.unwrap_or_default().as_bytes());
    hash.update([0]);
    hash.update(name.as_bytes());
    crate::auth::hex(&hash.finalize()[..8])
}

impl Sessions {
    /// Sessions under `config`.
    pub fn new(config: SessionConfig) -> Self {
        let capacity = NonZeroUsize::new(config.max_sessions).unwrap_or(NonZeroUsize::MIN);
        Sessions {
            config,
            table: LruCache::new(capacity),
        }
    }

    /// Whether requests naming a session stay on its model.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// The rule's verdict for a request of session `key` at `now`, when `can_serve` says
    /// which models may serve it.
    pub fn verdict(&mut self, key: &str, now: SystemTime, can_serve: impl Fn(&str) -> bool) -> Verdict {
        let Some(session) = self.table.get(key) else {
            return Verdict::Decide("session: new");
        };
        let idle = now.duration_since(session.seen).unwrap_or(Duration::ZERO);
        if session.failed {
            Verdict::Decide("session: switch after a failed call")
        } else if idle > Duration::from_secs(self.config.idle_timeout_s) {
            Verdict::Decide("session: idle past idle_timeout_s")
        } else if self.config.max_turns > 0 && session.turns >= self.config.max_turns {
            Verdict::Decide("session: max_turns reached")
        } else if !can_serve(&session.model) {
            Verdict::Decide("session: its model cannot serve the request")
        } else {
            Verdict::Stay(session.model.clone())
        }
    }

    /// Decision `id` of session `key` went to `model` at `now`: a turn more if it
    /// `stayed` on the session's model, else the session starts over on it (on the same
    /// model too, when the policy chose it afresh).
    pub fn decided(&mut self, key: &str, id: u64, model: &str, now: SystemTime, stayed: bool) {
        let turns = match self.table.get(key) {
            Some(s) if stayed && s.model == model => s.turns + 1,
            _ => 1,
        };
        let session = Session {
            model: model.to_string(),
            turns,
            decision: id,
            failed: false,
            seen: now,
        };
        self.table.put(key.to_string(), session);
    }

    /// Decision `id` of session `key` failed: if it is the session's latest, the next
    /// request is decided afresh.
    pub fn failed(&mut self, key: &str, id: u64) {
        if let Some(session) = self.table.get_mut(key).filter(|s| s.decision == id) {
            session.failed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn a_session_stays_until_a_rule_says_otherwise() {
        let config = SessionConfig {
            idle_timeout_s: 60,
            max_turns: 3,
            max_sessions: 2,
            ..SessionConfig::default()
        };
        let mut sessions = Sessions::new(config);
        let any = |_: &str| true;
        assert_eq!(sessions.verdict("s", at(0), any), Verdict::Decide("session: new"));
        sessions.decided("s", 1, "small", at(0), false);
        assert_eq!(sessions.verdict("s", at(30), any), Verdict::Stay("small".into()));
        sessions.decided("s", 2, "small", at(30), true);
        sessions.decided("s", 3, "small", at(40), true);
        // Three turns on `small`: the limit.
        assert_eq!(
            sessions.verdict("s", at(50), any),
            Verdict::Decide("session: max_turns reached")
        );
        sessions.decided("s", 4, "big", at(50), false);
        assert_eq!(
            sessions.verdict("s", at(111), any),
            Verdict::Decide("session: idle past idle_timeout_s")
        );
        assert_eq!(
            sessions.verdict("s", at(60), |m| m != "big"),
            Verdict::Decide("session: its model cannot serve the request")
        );
        // A failure of an older decision changes nothing; of the latest, it switches.
        sessions.failed("s", 3);
        assert_eq!(sessions.verdict("s", at(60), any), Verdict::Stay("big".into()));
        sessions.failed("s", 4);
        assert_eq!(
            sessions.verdict("s", at(60), any),
            Verdict::Decide("session: switch after a failed call")
        );
        // After a failure the session starts over, even on the same model.
        sessions.decided("s", 5, "big", at(61), false);
        assert_eq!(sessions.verdict("s", at(62), any), Verdict::Stay("big".into()));
        // Two sessions at most: the least recently seen is forgotten.
        sessions.decided("t", 6, "small", at(63), false);
        sessions.decided("u", 7, "small", at(64), false);
        assert_eq!(
            sessions.verdict("s", at(65), any),
            Verdict::Decide("session: new")
        );
        assert_eq!(sessions.verdict("t", at(65), any), Verdict::Stay("small".into()));
        // Past its turns and decided afresh on the same model, a session starts over on it.
        sessions.decided("t", 8, "small", at(66), true);
        sessions.decided("t", 9, "small", at(67), true);
        assert_eq!(
            sessions.verdict("t", at(68), any),
            Verdict::Decide("session: max_turns reached")
        );
        sessions.decided("t", 10, "small", at(68), false);
        assert_eq!(sessions.verdict("t", at(69), any), Verdict::Stay("small".into()));
    }

    #[test]
    fn keys_tell_callers_apart_and_hide_names() {
        let k = key(Some("00ff"), "alice");
        assert_eq!(k.len(), 16);
        assert!(!k.contains("alice"));
        assert_ne!(k, key(Some("0100"), "alice"));
        assert_ne!(k, key(None, "alice"));
        assert_eq!(k, key(Some("00ff"), "alice"));
    }
}
