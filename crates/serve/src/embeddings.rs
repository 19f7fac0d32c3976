//! Prompt embeddings for the routes with an embedding block, fetched before the router is
//! locked: from an OpenAI-compatible `/v1/embeddings` endpoint, or from the bundled
//! encoder on a blocking thread (a build with the `minilm` feature). Each has the route's
//! time limit; past it, or on any failure, the route decides on hashed features alone
//! (the block is zeros), the log says `featurizer: "hashing"` and
//! `quiver_embedding_fallbacks_total` counts it.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use quiver_bandit::EmbeddingBlock;
use serde_json::{json, Value};

use crate::config::{EmbeddingConfig, RouteConfig};
use crate::error::{route_config, Result, ServeError};
use crate::metrics::{EmbeddingFallbackLabels, Metrics};

/// The most estimated tokens (four characters each) of a text the bundled encoder is
/// taken to see whole: seven eighths of its 128-token window, as the estimate is rough.
pub const BUNDLED_WHOLE_TOKENS: u32 = 112;

/// A prompt's embedding.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// As the endpoint or encoder gave it: what the semantic cache compares.
    pub raw: Vec<f32>,
    /// Projected for the route's block (`quiver_bandit::EmbeddingBlock::project`).
    pub projected: Vec<f64>,
}

/// The embedders of every route that has an embedding block.
#[derive(Debug, Default)]
pub struct Embedders {
    routes: BTreeMap<String, RouteEmbedder>,
}

#[derive(Debug)]
struct RouteEmbedder {
    source: Source,
    block: EmbeddingBlock,
    timeout: Duration,
    /// The width of the source's embeddings: another is not the same model's.
    width: Mutex<Width>,
}

#[derive(Debug)]
enum Source {
    Endpoint {
        url: String,
        model: String,
        key: Option<String>,
    },
    /// The encoder, and a permit per core: an encoding outlives its request's time
    /// limit, so without them slow encodings would pile up on the blocking pool.
    #[cfg(feature = "minilm")]
    Bundled(quiver_bandit::MiniLm, std::sync::Arc<tokio::sync::Semaphore>),
}

/// Why an embedding was not to be had.
enum Failure {
    Timeout,
    /// Every core of the bundled encoder stayed busy for half the time limit.
    #[cfg_attr(not(feature = "minilm"), allow(dead_code))]
    Busy,
    Error(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Error(message)
    }
}

impl Embedders {
    /// The embedders of `routes`' embedding blocks. API keys are read from the environment
    /// now (start-up checks they are set).
    pub fn new(routes: &[RouteConfig]) -> Result<Self> {
        let mut embedders = BTreeMap::new();
        for route in routes {
            let Some(config) = &route.embedding else { continue };
            let block = config.block().map_err(route_config(&route.name))?;
            let source = source(config).map_err(route_config(&route.name))?;
            embedders.insert(
                route.name.clone(),
                RouteEmbedder {
                    source,
                    block,
                    timeout: Duration::from_millis(config.timeout_ms),
                    width: Mutex::default(),
                },
            );
        }
        Ok(Embedders { routes: embedders })
    }

    /// Whether `route`'s embedder sees `text` whole: the bundled encoder reads at most 128
    /// tokens, so a text estimated past [`BUNDLED_WHOLE_TOKENS`] is not; an endpoint's
    /// limits are its own (a text beyond them fails, and no embedding comes).
    #[cfg_attr(not(feature = "minilm"), allow(unused_variables))]
    pub fn sees_whole(&self, route: &str, text: &str) -> bool {
        #[cfg(feature = "minilm")]
        if let Some(RouteEmbedder {
            source: Source::Bundled(..),
            ..
        }) = self.routes.get(route)
        {
            return quiver_bandit::features::estimate_tokens(text) <= BUNDLED_WHOLE_TOKENS;
        }
        true
    }

    /// The embedding of `text` for `route`: as its source gave it, and projected for the
    /// route's block; None for a route without one, and when the embedding failed or took
    /// longer than the route allows (counted in `metrics` and logged).
    pub async fn embed(
        &self,
        http: &reqwest::Client,
        metrics: &Metrics,
        route: &str,
        text: &str,
    ) -> Option<Embedded> {
        let embedder = self.routes.get(route)?;
        let result = match tokio::time::timeout(embedder.timeout, embedder.fetch(http, text)).await {
            Ok(Ok(raw)) => embedder.accept(raw).map_err(Failure::Error),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(Failure::Timeout),
        };
        let (reason, message) = match result {
            Ok(embedded) => return Some(embedded),
            Err(Failure::Timeout) => ("timeout", format!("no answer within {:?}", embedder.timeout)),
            Err(Failure::Busy) => (
                "busy",
                format!("every core stayed busy encoding for {:?}", embedder.timeout / 2),
            ),
            Err(Failure::Error(message)) => ("error", message),
        };
        tracing::warn!(
            route,
            reason,
            "embedding not available, hashed features decide: {message}"
        );
        metrics
            .embedding_fallbacks
            .get_or_create(&EmbeddingFallbackLabels {
                route: route.to_string(),
                reason: reason.to_string(),
            })
            .inc();
        None
    }
}

/// The width of a source's embeddings, pinned by the first width two of its answers share:
/// a provider serves one model's width, and a single odd answer (a hiccup) then neither
/// decides what every later answer is checked against nor locks them all out.
#[derive(Debug, Default)]
struct Width {
    pinned: Option<usize>,
    /// The widths answered once so far, before one is pinned.
    seen: Vec<usize>,
}

impl Width {
    /// How many distinct widths are taken before one is pinned: a source whose widths
    /// never repeat is no embedding model, and its answers are refused after these.
    const REMEMBERED: usize = 8;

    /// Whether an answer of `width` numbers may be the source's.
    fn admit(&mut self, width: usize) -> std::result::Result<(), String> {
        match self.pinned {
            Some(pinned) if pinned != width => Err(format!(
                "an embedding of {width} numbers, where the source's answers have {pinned}"
            )),
            Some(_) => Ok(()),
            None if self.seen.contains(&width) => {
                self.pinned = Some(width);
                self.seen.clear();
                Ok(())
            }
            None if self.seen.len() == Self::REMEMBERED => Err(format!(
                "an embedding of {width} numbers, where the source's answers have had {} widths, \
                 none twice",
                Self::REMEMBERED
            )),
            None => {
                self.seen.push(width);
                Ok(())
            }
        }
    }
}

fn source(config: &EmbeddingConfig) -> Result<Source> {
    match (&config.url, &config.bundled) {
        (Some(url), _) => Ok(Source::Endpoint {
            url: url.clone(),
            model: config.model.clone().unwrap_or_default(),
            key: config
                .api_key_env
                .as_ref()
                .and_then(|var| std::env::var(var).ok()),
        }),
        #[cfg(feature = "minilm")]
        (None, _) => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(cores));
            quiver_bandit::MiniLm::new()
                .map(|encoder| Source::Bundled(encoder, permits))
                .map_err(|e| ServeError::Config(format!("embedding: the bundled encoder: {e}")))
        }
        #[cfg(not(feature = "minilm"))]
        (None, _) => Err(ServeError::Config(
            "embedding: this build has no bundled encoder (build with `--features minilm`)".into(),
        )),
    }
}

impl RouteEmbedder {
    /// An embedding from the source, projected for the route's block, or why it is not
    /// one: empty, not finite, a zero vector (no direction, its block the fallback's), or
    /// of another width than the source's ([`Width`]).
    fn accept(&self, raw: Vec<f32>) -> std::result::Result<Embedded, String> {
        let projected = self.block.project(&raw).map_err(|e| e.to_string())?;
        if raw.iter().all(|v| *v == 0.0) {
            return Err("the embedding is a zero vector".into());
        }
        self.width
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(raw.len())?;
        Ok(Embedded { raw, projected })
    }

    async fn fetch(&self, http: &reqwest::Client, text: &str) -> std::result::Result<Vec<f32>, Failure> {
        if text.trim().is_empty() {
            return Err(Failure::Error("blank prompt".into()));
        }
        match &self.source {
            Source::Endpoint { url, model, key } => {
                let mut request = http.post(url).json(&json!({ "model": model, "input": text }));
                if let Some(key) = key {
                    request = request.bearer_auth(key);
                }
                let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
                let status = response.status();
                if !status.is_success() {
                    return Err(format!("{url}: status {status}").into());
                }
                let body: Value = response.json().await.map_err(|e| format!("{url}: {e}"))?;
                Ok(the_embedding(&body).map_err(|e| format!("{url}: {e}"))?)
            }
            #[cfg(feature = "minilm")]
            Source::Bundled(encoder, permits) => {
                use quiver_bandit::Embedder;
                // Waits for a core for half the route's time limit at most, which leaves
                // the other half to encode in: an encoding started late runs on after the
                // limit for nothing.
                let permit =
                    tokio::time::timeout(self.timeout / 2, std::sync::Arc::clone(permits).acquire_owned())
                        .await
                        .map_err(|_| Failure::Busy)?
                        .map_err(|e| format!("the encoder's cores: {e}"))?;
                let (encoder, text) = (encoder.clone(), text.to_string());
                let mut vectors = tokio::task::spawn_blocking(move || {
                    let _held = permit;
                    encoder.embed(&[&text])
                })
                .await
                .map_err(|e| format!("encoder task failed: {e}"))??;
                Ok(vectors.pop().ok_or("the encoder returned nothing".to_string())?)
            }
        }
    }
}

/// The embedding of an OpenAI embeddings answer to one input: `data` holds one, its
/// `index` (if given) 0.
fn the_embedding(body: &Value) -> std::result::Result<Vec<f32>, String> {
    let data = body
        .get("data")
        .and_then(Value::as_array)
        .ok_or("no `data` array")?;
    let [item] = &data[..] else {
        return Err(format!("{} embeddings in `data` for one input", data.len()));
    };
    if item.get("index").is_some_and(|i| i.as_u64() != Some(0)) {
        return Err(format!("the embedding's `index` is {}, not 0", item["index"]));
    }
    item.get("embedding")
        .and_then(Value::as_array)
        .and_then(|numbers| numbers.iter().map(|v| v.as_f64().map(|x| x as f32)).collect())
        .ok_or_else(|| "no `data[0].embedding` array of numbers".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled encoder reads 128 tokens: a text estimated past [`BUNDLED_WHOLE_TOKENS`]
    /// is not seen whole (two such texts sharing their beginning would embed alike); an
    /// endpoint's texts are, as are routes without an embedding.
    #[cfg(feature = "minilm")]
    #[test]
    fn the_bundled_encoder_sees_short_texts_whole() {
        use crate::config::ModelConfig;
        let route = |name: &str, embedding: Value| RouteConfig {
            embedding: Some(serde_json::from_value(embedding).unwrap()),
            ..RouteConfig::new(name, "linucb", vec![ModelConfig::priced("m", 1.0, 1.0)])
        };
        let embedders = Embedders::new(&[
            route("bundled", json!({"bundled": "minilm-l3"})),
            route(
                "endpoint",
                json!({"url": "http://127.0.0.1:9/v1/embeddings", "model": "e"}),
            ),
        ])
        .unwrap();
        let fits = "x".repeat(4 * BUNDLED_WHOLE_TOKENS as usize);
        let past = "x".repeat(4 * BUNDLED_WHOLE_TOKENS as usize + 1);
        assert!(embedders.sees_whole("bundled", &fits));
        assert!(!embedders.sees_whole("bundled", &past));
        assert!(embedders.sees_whole("endpoint", &past));
        assert!(embedders.sees_whole("none", &past));
    }

    #[test]
    fn the_embedding_of_an_openai_answer() {
        let body =
            json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -1]}]});
        assert_eq!(the_embedding(&body), Ok(vec![0.5, -1.0]));
        assert_eq!(
            the_embedding(&json!({"data": [{"embedding": [2]}]})),
            Ok(vec![2.0])
        );
        for (body, why) in [
            (json!({"data": [{"embedding": [0.5, "x"]}]}), "array of numbers"),
            (json!({"data": []}), "0 embeddings"),
            (
                json!({"data": [{"embedding": [1]}, {"embedding": [2]}]}),
                "2 embeddings",
            ),
            (json!({"data": [{"index": 1, "embedding": [1]}]}), "`index` is 1"),
            (json!({"embedding": [1]}), "no `data`"),
        ] {
            let error = the_embedding(&body).unwrap_err();
            assert!(error.contains(why), "{body}: {error}");
        }
    }

    /// A zero vector (the fallback's block under the embedding's name) and an embedding of
    /// another width than the one the source's answers share are not the route's embeddings.
    #[test]
    fn an_embedding_must_have_a_direction_and_the_sources_width() {
        let route = RouteConfig {
            embedding: Some(
                serde_json::from_value(json!({"url": "http://127.0.0.1:9/v1/embeddings", "model": "e"}))
                    .unwrap(),
            ),
            ..RouteConfig::new(
                "r",
                "linucb",
                vec![crate::config::ModelConfig::priced("m", 1.0, 1.0)],
            )
        };
        let embedders = Embedders::new(&[route]).unwrap();
        let embedder = &embedders.routes["r"];
        assert!(embedder.accept(vec![0.0; 4]).unwrap_err().contains("zero vector"));
        assert!(embedder
            .accept(vec![1e-50f64 as f32; 4])
            .unwrap_err()
            .contains("zero vector"));
        assert_eq!(
            embedder
                .accept(vec![0.5, -0.5, 1.0, 0.0])
                .unwrap()
                .projected
                .len(),
            embedder.block.dims()
        );
        // One odd width is taken as it comes and pins nothing; the first width answered
        // twice is the source's.
        assert!(embedder.accept(vec![0.5, 1.0, 2.0]).is_ok());
        assert!(embedder.accept(vec![0.5, 1.0, 2.0, 1.0]).is_ok());
        assert!(embedder
            .accept(vec![0.5, 1.0, 2.0])
            .unwrap_err()
            .contains("3 numbers, where the source's answers have 4"));
        assert!(embedder.accept(vec![1.0; 4]).is_ok());
        // A source whose widths never repeat is refused after a few.
        let mut width = Width::default();
        for w in 1..=Width::REMEMBERED {
            assert!(width.admit(w).is_ok());
        }
        let e = width.admit(100).unwrap_err();
        assert!(e.contains("8 widths, none twice"), "{e}");
        assert!(width.admit(3).is_ok() && width.admit(100).is_err());
        embedder.accept(vec![0.1, 0.2, 0.3, 0.4]).unwrap();
    }
}
