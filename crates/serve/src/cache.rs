//! The proxy's exact response cache: a non-streamed completion, kept for `ttl_s` under its
//! request, answers the same request again without an upstream call.
//!
//! The key is the route, the caller (its bearer token: one tenant never sees another's
//! answers) and the request body with its keys sorted, compared in full, not by hash
//! alone. The cache holds at most `max_bytes` of keys and bodies, evicting the least
//! recently used entries first. A hit is logged as its own event (`cache_hit`, under the
//! decision whose answer it repeats) and never learned from.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The cache's settings (`[cache]` in `quiver.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Whether the proxy caches answers. Off by default: a model's answers vary, and a
    /// cache repeats one.
    #[serde(default)]
    pub enabled: bool,
    /// How long an answer is served from the cache, seconds.
    #[serde(default = "default_ttl")]
    pub ttl_s: u64,
    /// The most the cache holds, bytes of requests and answers.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

fn default_ttl() -> u64 {
    300
}
fn default_max_bytes() -> usize {
    64 << 20
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            ttl_s: default_ttl(),
            max_bytes: default_max_bytes(),
        }
    }
}

/// A cached answer.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The completion's bytes.
    pub body: Bytes,
    /// The model that answered.
    pub model: String,
    /// The decision the answer came from.
    pub decision_id: String,
}

#[derive(Debug)]
struct Entry {
    request: String,
    answer: Cached,
    stored: Instant,
}

impl Entry {
    fn size(&self) -> usize {
        self.request.len() + self.answer.body.len() + self.answer.model.len() + self.answer.decision_id.len()
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// The answer, still fresh.
    Hit(Cached),
    /// Nothing fresh: the key to store the answer under.
    Miss(CacheKey),
}

/// A request's place in the cache.
#[derive(Debug, Clone)]
pub struct CacheKey {
    hash: u64,
    request: String,
}

#[derive(Debug)]
struct Inner {
    entries: LruCache<u64, Entry>,
    /// Bytes held.
    bytes: usize,
}

/// The cache.
#[derive(Debug)]
pub struct ResponseCache {
    config: CacheConfig,
    inner: Mutex<Inner>,
}

impl ResponseCache {
    /// An empty cache with `config`.
    pub fn new(config: CacheConfig) -> Self {
        ResponseCache {
            config,
            inner: Mutex::new(Inner {
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    /// Whether the proxy uses it.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain data: usable after a panic elsewhere.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key of `body` sent to `route` by the holder of `token` (None: no token).
    pub fn key(route: &str, token: Option<&str>, body: &Value) -> CacheKey {
        // serde_json's maps keep their keys sorted, so equal requests print alike. A route
        // name has no newline, and `None` (no token) differs from every `Some`.
        let request = format!("{route}\n{token:?}\n{body}");
        let mut hasher = DefaultHasher::new();
        request.hash(&mut hasher);
        CacheKey {
            hash: hasher.finish(),
            request,
        }
    }

    /// The fresh answer to `key`, if any; a stale one is dropped.
    pub fn lookup(&self, key: CacheKey, now: Instant) -> Lookup {
        let ttl = Duration::from_secs(self.config.ttl_s);
        let mut inner = self.inner();
        let found = match inner.entries.get(&key.hash) {
            Some(e) if e.request == key.request && now.duration_since(e.stored) < ttl => {
                Some(e.answer.clone())
            }
            Some(e) if e.request == key.request => None,
            // Another request with the same hash: a miss, and the entry stays.
            _ => return Lookup::Miss(key),
        };
        match found {
            Some(answer) => Lookup::Hit(answer),
            None => {
                if let Some(stale) = inner.entries.pop(&key.hash) {
                    inner.bytes -= stale.size();
                }
                Lookup::Miss(key)
            }
        }
    }

    /// Stores `answer` under `key`, evicting the least recently used entries past the
    /// size bound; returns how many it evicted. An answer larger than the whole cache is
    /// not stored.
    pub fn store(&self, key: CacheKey, answer: Cached, now: Instant) -> u64 {
        let entry = Entry {
            request: key.request,
            answer,
            stored: now,
        };
        let size = entry.size();
        if size > self.config.max_bytes {
            return 0;
        }
        let mut inner = self.inner();
        if let Some(old) = inner.entries.put(key.hash, entry) {
            inner.bytes -= old.size();
        }
        inner.bytes += size;
        let mut evicted = 0;
        while inner.bytes > self.config.max_bytes {
            let Some((_, old)) = inner.entries.pop_lru() else {
                break;
            };
            inner.bytes -= old.size();
            evicted += 1;
        }
        evicted
    }

    /// Bytes of requests and answers held.
    pub fn bytes(&self) -> usize {
        self.inner().bytes
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(text: &str) -> Cached {
        Cached {
            body: Bytes::from(text.to_string()),
            model: "m".into(),
            decision_id: "r:0".into(),
        }
    }

    #[test]
    fn equal_requests_hit_within_the_ttl_and_tenants_are_apart() {
        let cache = ResponseCache::new(CacheConfig {
            enabled: true,
            ttl_s: 10,
            max_bytes: 1 << 20,
        });
        let t0 = Instant::now();
        let body = json!({"model": "r", "messages": [{"role": "user", "content": "hi"}], "temperature": 0});
        let Lookup::Miss(key) = cache.lookup(ResponseCache::key("r", Some("a"), &body), t0) else {
            panic!("an empty cache hit")
        };
        cache.store(key, answer("hello"), t0);
        // The same request with its keys in another order is the same request.
        let reordered: Value = serde_json::from_str(
            r#"{"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "r"}"#,
        )
        .unwrap();
        match cache.lookup(
            ResponseCache::key("r", Some("a"), &reordered),
            t0 + Duration::from_secs(9),
        ) {
            Lookup::Hit(hit) => assert_eq!(hit.body, "hello"),
            Lookup::Miss(_) => panic!("missed an equal request"),
        }
        for (route, token) in [("r", Some("b")), ("r", None), ("other", Some("a"))] {
            let lookup = cache.lookup(ResponseCache::key(route, token, &body), t0);
            assert!(matches!(lookup, Lookup::Miss(_)), "{route} {token:?}");
        }
        let stale = cache.lookup(
            ResponseCache::key("r", Some("a"), &body),
            t0 + Duration::from_secs(10),
        );
        assert!(matches!(stale, Lookup::Miss(_)));
        assert_eq!(cache.bytes(), 0, "the stale entry is dropped");
    }

    #[test]
    fn the_size_bound_evicts_the_least_recently_used() {
        let key = |i: u32| ResponseCache::key("r", None, &json!({"i": i}));
        let size = |i: u32| key(i).request.len() + 100 + 1 + 3;
        let cache = ResponseCache::new(CacheConfig {
            enabled: true,
            ttl_s: 60,
            max_bytes: size(0) * 3,
        });
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(cache.store(key(i), answer(&"x".repeat(100)), t0), 0);
        }
        assert_eq!(cache.bytes(), size(0) * 3);
        // Touch 0, so that 1 is the least recently used when 3 arrives.
        assert!(matches!(cache.lookup(key(0), t0), Lookup::Hit(_)));
        assert_eq!(cache.store(key(3), answer(&"x".repeat(100)), t0), 1);
        assert!(matches!(cache.lookup(key(1), t0), Lookup::Miss(_)));
        for i in [0, 2, 3] {
            assert!(matches!(cache.lookup(key(i), t0), Lookup::Hit(_)), "{i}");
        }
        // Larger than the whole cache: not stored, nothing evicted.
        assert_eq!(cache.store(key(9), answer(&"x".repeat(size(0) * 3)), t0), 0);
        assert_eq!(cache.bytes(), size(0) * 3);
    }
}
