//! The proxy's response cache: a non-streamed completion, kept for `ttl_s` under its
//! request, answers the same request again without an upstream call.
//!
//! The key is the route, the caller (its bearer token's digest: one tenant never sees
//! another's answers) and the request body as sent, its keys in order, compared in full, not by
//! hash alone. Only whole answers are kept: none a choice of which was cut at its length
//! limit or by a content filter. The cache holds at most `max_bytes` of keys and bodies, evicting the least
//! recently used entries first. A hit is logged as its own event (`cache_hit`, under the
//! decision whose answer it repeats) and never learned from.
//!
//! With `semantic_similarity` set, a request that misses may still be answered by a
//! similar one's answer: on a route with an embedding (`[routes.embedding]`), an entry
//! whose prompt embedding has a cosine similarity of at least that with the request's, and
//! whose request is otherwise the same (route, caller, tags, and the body with the text of
//! its messages or prompt blanked: roles, images, tool calls and every other field equal),
//! answers it. An embedding that did not come in time is a miss.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

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
    /// The least cosine similarity of two prompts' embeddings for one's answer to serve
    /// the other (see the module docs). None (the default): equal requests only.
    #[serde(default)]
    pub semantic_similarity: Option<f64>,
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
            semantic_similarity: None,
        }
    }
}

impl CacheConfig {
    /// Refuses a similarity that is not in (0, 1], and an enabled cache that could hold
    /// nothing (a TTL or size of 0).
    pub fn check(&self, any_embedding: bool) -> Result<(), String> {
        if self.enabled && (self.ttl_s == 0 || self.max_bytes == 0) {
            return Err(
                "cache.ttl_s and cache.max_bytes must be at least 1 (`enabled = false` turns the cache off)"
                    .into(),
            );
        }
        match self.semantic_similarity {
            Some(s) if !(s > 0.0 && s <= 1.0) => {
                Err(format!("cache.semantic_similarity {s} is not in (0, 1]"))
            }
            Some(_) if self.enabled && !any_embedding => Err(
                "cache.semantic_similarity needs a route with [routes.embedding] to compare prompts on; \
                 no route has one"
                    .into(),
            ),
            _ => Ok(()),
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
    /// The scope the entry is indexed under among similar requests, and its embedding's
    /// length (the index holds the embedding).
    similar: Option<(String, usize)>,
}

impl Entry {
    fn size(&self) -> usize {
        let similar = self
            .similar
            .as_ref()
            .map_or(0, |(scope, dims)| scope.len() + 4 * dims);
        self.request.len()
            + self.answer.body.len()
            + self.answer.model.len()
            + self.answer.decision_id.len()
            + similar
    }
}

/// A request's place among similar ones: everything but its prompt's text, and the
/// prompt's embedding scaled to unit length.
#[derive(Debug, Clone)]
pub struct SimilarKey {
    scope: String,
    embedding: Vec<f32>,
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
    /// The entries stored with an embedding, by scope: what a similar request may reuse.
    similar: HashMap<String, Vec<(u64, Vec<f32>)>>,
}

impl Inner {
    /// Accounts for `entry`, stored under `hash`, having left the cache.
    fn forget(&mut self, hash: u64, entry: &Entry) {
        self.bytes -= entry.size();
        let Some((scope, _)) = &entry.similar else {
            return;
        };
        if let Some(peers) = self.similar.get_mut(scope) {
            peers.retain(|(h, _)| *h != hash);
            if peers.is_empty() {
                self.similar.remove(scope);
            }
        }
    }
}

/// `v` scaled to unit length (zeros stay zeros), so that a dot product is a cosine.
fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
    v
}

/// The dot product of two unit vectors: their cosine similarity (0 across dimensions).
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum()
}

/// Who holds a bearer token, as its SHA-256 digest (the token itself is kept nowhere);
/// empty without one, which no digest is.
fn holder(token: Option<&str>) -> String {
    token.map_or_else(String::new, |t| crate::auth::hex(&Sha256::digest(t.as_bytes())))
}

/// `body` with the text of its messages (or prompt) blanked and everything else kept:
/// roles, non-text parts, tool calls, the number of messages and every other field.
fn without_text(body: &Value) -> Value {
    let mut rest = body.clone();
    let blank = |text: &mut Value| {
        if let Value::String(t) = text {
            t.clear();
        }
    };
    if let Some(messages) = rest.get_mut("messages").and_then(Value::as_array_mut) {
        for content in messages.iter_mut().filter_map(|m| m.get_mut("content")) {
            match content {
                Value::Array(parts) => parts.iter_mut().filter_map(|p| p.get_mut("text")).for_each(blank),
                text => blank(text),
            }
        }
    }
    match rest.get_mut("prompt") {
        Some(Value::Array(items)) => items.iter_mut().for_each(blank),
        Some(text) => blank(text),
        None => {}
    }
    rest
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
                similar: HashMap::new(),
            }),
        }
    }

    /// Whether the proxy uses it.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Whether similar requests share answers.
    pub fn semantic(&self) -> bool {
        self.config.enabled && self.config.semantic_similarity.is_some()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain data: usable after a panic elsewhere.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key of `body` sent to `route` by the holder of `token` (None: no token).
    pub fn key(route: &str, token: Option<&str>, body: &Value) -> CacheKey {
        // A route name has no newline. The body as sent: keys in another order (a JSON
        // schema's, which the model generates in) make another request.
        let request = format!("{route}\n{}\n{body}", holder(token));
        let mut hasher = DefaultHasher::new();
        request.hash(&mut hasher);
        CacheKey {
            hash: hasher.finish(),
            request,
        }
    }

    /// Whether `completion` is an answer to keep: none of its choices was cut at its
    /// length limit or by a content filter.
    pub fn keeps(completion: &Value) -> bool {
        let choices = completion["choices"].as_array().map_or(&[][..], Vec::as_slice);
        !choices
            .iter()
            .any(|c| matches!(c["finish_reason"].as_str(), Some("length" | "content_filter")))
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
                    inner.forget(key.hash, &stale);
                }
                Lookup::Miss(key)
            }
        }
    }

    /// The similar key of a request to `route` by the holder of `token` (as in
    /// [`ResponseCache::key`]) whose prompt has `embedding`: the body with its text
    /// blanked is the scope.
    pub fn similar_key(route: &str, token: Option<&str>, body: &Value, embedding: Vec<f32>) -> SimilarKey {
        SimilarKey {
            scope: format!("{route}\n{}\n{}", holder(token), without_text(body)),
            embedding: unit(embedding),
        }
    }

    /// The fresh answer of the most similar request in `key`'s scope, if its similarity
    /// reaches the configured least; stale entries met on the way are dropped.
    pub fn lookup_similar(&self, key: &SimilarKey, now: Instant) -> Option<Cached> {
        let least = self.config.semantic_similarity?;
        let ttl = Duration::from_secs(self.config.ttl_s);
        let mut inner = self.inner();
        let mut candidates: Vec<(u64, f64)> = inner
            .similar
            .get(&key.scope)?
            .iter()
            .map(|(hash, embedding)| (*hash, cosine(embedding, &key.embedding)))
            .filter(|(_, similarity)| *similarity >= least)
            .collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (hash, _) in candidates {
            if let Some(entry) = inner.entries.get(&hash) {
                if now.duration_since(entry.stored) < ttl {
                    return Some(entry.answer.clone());
                }
            }
            if let Some(stale) = inner.entries.pop(&hash) {
                inner.forget(hash, &stale);
            }
        }
        None
    }

    /// Stores `answer` under `key` (and among similar requests under `similar`), evicting
    /// the least recently used entries past the size bound; returns how many it evicted.
    /// An answer larger than the whole cache is not stored.
    pub fn store(&self, key: CacheKey, similar: Option<SimilarKey>, answer: Cached, now: Instant) -> u64 {
        let entry = Entry {
            request: key.request,
            answer,
            stored: now,
            similar: similar.as_ref().map(|s| (s.scope.clone(), s.embedding.len())),
        };
        let size = entry.size();
        if size > self.config.max_bytes {
            return 0;
        }
        let mut inner = self.inner();
        if let Some(old) = inner.entries.put(key.hash, entry) {
            inner.forget(key.hash, &old);
        }
        if let Some(SimilarKey { scope, embedding }) = similar {
            inner
                .similar
                .entry(scope)
                .or_default()
                .push((key.hash, embedding));
        }
        inner.bytes += size;
        let mut evicted = 0;
        while inner.bytes > self.config.max_bytes {
            let Some((hash, old)) = inner.entries.pop_lru() else {
                break;
            };
            inner.forget(hash, &old);
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
    fn only_whole_answers_are_kept() {
        let answer = |reasons: &[&str]| {
            let choices: Vec<Value> = reasons
                .iter()
                .map(|r| json!({"message": {"content": "x"}, "finish_reason": r}))
                .collect();
            json!({ "choices": choices })
        };
        assert!(ResponseCache::keeps(&answer(&["stop"])));
        assert!(ResponseCache::keeps(&answer(&["tool_calls", "stop"])));
        assert!(ResponseCache::keeps(&json!({"choices": [{"text": "x"}]})));
        assert!(!ResponseCache::keeps(&answer(&["length"])));
        assert!(!ResponseCache::keeps(&answer(&["stop", "content_filter"])));
    }

    #[test]
    fn equal_requests_hit_within_the_ttl_and_tenants_are_apart() {
        let cache = ResponseCache::new(CacheConfig {
            enabled: true,
            ttl_s: 10,
            max_bytes: 1 << 20,
            semantic_similarity: None,
        });
        let t0 = Instant::now();
        let body = json!({"model": "r", "messages": [{"role": "user", "content": "hi"}], "temperature": 0});
        let Lookup::Miss(key) = cache.lookup(ResponseCache::key("r", Some("a"), &body), t0) else {
            panic!("an empty cache hit")
        };
        cache.store(key, None, answer("hello"), t0);
        match cache.lookup(
            ResponseCache::key("r", Some("a"), &body),
            t0 + Duration::from_secs(9),
        ) {
            Lookup::Hit(hit) => assert_eq!(hit.body, "hello"),
            Lookup::Miss(_) => panic!("missed an equal request"),
        }
        // Its keys in another order make another request: a JSON schema's properties are
        // generated in their order.
        let reordered: Value = serde_json::from_str(
            r#"{"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "r"}"#,
        )
        .unwrap();
        let reordered = cache.lookup(ResponseCache::key("r", Some("a"), &reordered), t0);
        assert!(matches!(reordered, Lookup::Miss(_)));
        let key = ResponseCache::key("r", Some("a-secret-token"), &body);
        assert!(
            !key.request.contains("a-secret-token"),
            "the token is kept as its digest"
        );
        let similar = ResponseCache::similar_key("r", Some("a-secret-token"), &body, vec![1.0]);
        assert!(!similar.scope.contains("a-secret-token"));
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

    /// A prompt at least as similar as the setting (cosine), in the same scope, gets the
    /// stored answer; a less similar one, another caller's, another route's, or a request
    /// that differs beyond its prompt does not. Storing the same request again keeps one
    /// entry in the index; a stale entry leaves it.
    #[test]
    fn similar_requests_share_an_answer_within_their_scope() {
        let cache = ResponseCache::new(CacheConfig {
            enabled: true,
            ttl_s: 10,
            max_bytes: 1 << 20,
            semantic_similarity: Some(0.9),
        });
        let t0 = Instant::now();
        let body = |text: &str, temperature: f64| json!({"model": "r", "messages": [{"role": "user", "content": text}], "temperature": temperature});
        // Unit vectors at cosine 0.95 and 0.85 from (1, 0).
        let at = |cos: f32| vec![cos, (1.0 - cos * cos).sqrt()];
        for _ in 0..2 {
            let key = ResponseCache::key("r", Some("a"), &body("hi there", 0.0));
            let similar = ResponseCache::similar_key("r", Some("a"), &body("hi there", 0.0), vec![1.0, 0.0]);
            cache.store(key, Some(similar), answer("hello"), t0);
        }
        assert_eq!(cache.inner().similar.values().map(Vec::len).sum::<usize>(), 1);
        let near = ResponseCache::similar_key("r", Some("a"), &body("hello there", 0.0), at(0.95));
        assert_eq!(cache.lookup_similar(&near, t0).unwrap().body, "hello");
        for key in [
            ResponseCache::similar_key("r", Some("a"), &body("hello there", 0.0), at(0.85)),
            ResponseCache::similar_key("r", Some("b"), &body("hello there", 0.0), at(0.95)),
            ResponseCache::similar_key("r", Some("a"), &body("hello there", 0.7), at(0.95)),
            ResponseCache::similar_key("other", Some("a"), &body("hello there", 0.0), at(0.95)),
            // The same text from another role, or with an image beside it, is another request.
            ResponseCache::similar_key(
                "r",
                Some("a"),
                &json!({"model": "r", "messages": [{"role": "assistant", "content": "hello there"}], "temperature": 0.0}),
                at(0.95),
            ),
            ResponseCache::similar_key(
                "r",
                Some("a"),
                &json!({"model": "r", "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "hello there"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                ]}], "temperature": 0.0}),
                at(0.95),
            ),
        ] {
            assert!(cache.lookup_similar(&key, t0).is_none(), "{key:?}");
        }
        // Unscaled embeddings compare by their cosine.
        let scaled =
            ResponseCache::similar_key("r", Some("a"), &body("hey there", 0.0), vec![9.5, 9.5 * 0.329]);
        assert!(cache.lookup_similar(&scaled, t0).is_some());
        assert!(cache
            .lookup_similar(&near, t0 + Duration::from_secs(10))
            .is_none());
        assert_eq!(cache.bytes(), 0, "the stale entry is dropped");
        assert!(cache.inner().similar.is_empty(), "and leaves the index");
        assert!(CacheConfig {
            semantic_similarity: Some(1.5),
            ..CacheConfig::default()
        }
        .check(true)
        .is_err());
    }

    #[test]
    fn the_size_bound_evicts_the_least_recently_used() {
        let key = |i: u32| ResponseCache::key("r", None, &json!({"i": i}));
        let size = |i: u32| key(i).request.len() + 100 + 1 + 3;
        let cache = ResponseCache::new(CacheConfig {
            enabled: true,
            ttl_s: 60,
            max_bytes: size(0) * 3,
            semantic_similarity: None,
        });
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(cache.store(key(i), None, answer(&"x".repeat(100)), t0), 0);
        }
        assert_eq!(cache.bytes(), size(0) * 3);
        // Touch 0, so that 1 is the least recently used when 3 arrives.
        assert!(matches!(cache.lookup(key(0), t0), Lookup::Hit(_)));
        assert_eq!(cache.store(key(3), None, answer(&"x".repeat(100)), t0), 1);
        assert!(matches!(cache.lookup(key(1), t0), Lookup::Miss(_)));
        for i in [0, 2, 3] {
            assert!(matches!(cache.lookup(key(i), t0), Lookup::Hit(_)), "{i}");
        }
        // Larger than the whole cache: not stored, nothing evicted.
        assert_eq!(cache.store(key(9), None, answer(&"x".repeat(size(0) * 3)), t0), 0);
        assert_eq!(cache.bytes(), size(0) * 3);
        // Entries indexed among similar requests leave the index when evicted.
        let similar = |i: u32| ResponseCache::similar_key("r", None, &json!({"i": i}), vec![1.0, i as f32]);
        for i in 10..14 {
            cache.store(key(i), Some(similar(i)), answer(&"y".repeat(100)), t0);
        }
        let inner = cache.inner();
        let indexed: usize = inner.similar.values().map(Vec::len).sum();
        let with_embedding = inner.entries.iter().filter(|(_, e)| e.similar.is_some()).count();
        assert_eq!(indexed, with_embedding);
        assert!(with_embedding < 4, "some were evicted");
        drop(inner);
    }
}
