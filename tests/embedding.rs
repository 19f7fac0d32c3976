//! Embedding featurizers end to end: a route that embeds its prompts through an
//! OpenAI-compatible `/v1/embeddings` endpoint over real HTTP on 127.0.0.1, falling back
//! to hashed features on a timeout or an error; and a replay that embeds a table once,
//! caches it, and builds the contexts the server builds.
#![allow(clippy::unwrap_used, clippy::panic)] // a test that fails should panic

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use quiver_bandit::Embedder;
use quiver_serve::log::LogEvent;
use quiver_serve::{EmbeddingConfig, ModelConfig, RouteConfig, RouteRequest, Router};
use quiver_sim::context::ContextBuilder;
use quiver_sim::data::{load_wide, Format};
use quiver_sim::embeddings::PromptEmbeddings;
use serde_json::{json, Value};
use support::{assert_line, get_text, scratch, start_app};

/// The test's embedding of a text: a few of its counts, so that it is known here.
fn toy_embedding(text: &str) -> Vec<f32> {
    let count = |f: fn(char) -> bool| text.chars().filter(|c| f(*c)).count() as f32;
    vec![
        text.len() as f32,
        count(|c| "aeiou".contains(c)),
        count(char::is_whitespace),
        count(|c| c.is_ascii_digit()),
        1.0,
    ]
}

/// What the endpoint was sent: the model, the input and the authorization header.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A local OpenAI-compatible endpoint: `/embeddings` answers [`toy_embedding`] (slowly for
/// an input with "slow", 500 for "fail", a malformed body for "garbled", two embeddings
/// for "twice", a zero vector for "zero"), and
/// `/chat/completions` answers every request.
async fn endpoint(seen: Seen) -> SocketAddr {
    let embeddings = axum::routing::post(
        move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| async move {
            let input = body["input"].as_str().unwrap_or_default().to_string();
            let auth = headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            seen.lock().unwrap().push((
                body["model"].as_str().unwrap_or_default().into(),
                input.clone(),
                auth,
            ));
            if input.contains("slow") {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            if input.contains("fail") {
                return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
            }
            if input.contains("garbled") {
                return axum::Json(json!({"data": [{"embedding": ["x"]}]})).into_response();
            }
            if input.contains("twice") {
                let one = json!({"embedding": toy_embedding(&input)});
                return axum::Json(json!({"data": [one, one]})).into_response();
            }
            if input.contains("zero") {
                return axum::Json(json!({"data": [{"embedding": [0.0, 0.0, 0.0, 0.0, 0.0]}]}))
                    .into_response();
            }
            axum::Json(json!({
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": toy_embedding(&input)}],
                "model": body["model"],
            }))
            .into_response()
        },
    );
    let chat = axum::routing::post(|| async {
        axum::Json(json!({
            "id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}
        }))
    });
    let app = axum::Router::new()
        .route("/v1/embeddings", embeddings)
        .route("/chat/completions", chat);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

const KEY_VAR: &str = "QUIVER_TEST_EMBEDDING_KEY";

/// Sets the key variable, once for this test binary (its only environment change), and
/// never unsets it: tests run on threads that read the environment.
fn set_key() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var(KEY_VAR, "sk-embed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_embeds_through_an_endpoint_and_falls_back_to_hashing() {
    set_key();
    let seen = Seen::default();
    let addr = endpoint(Arc::clone(&seen)).await;
    let dir = scratch("embedding_endpoint");
    let config = json!({
        "routes": [{
            "name": "r",
            "policy": "linucb",
            "models": [{"id": "m", "base_url": format!("http://{addr}"), "input_usd_per_million": 1.0}],
            "embedding": {
                "url": format!("http://{addr}/v1/embeddings"),
                "model": "emb-1",
                "api_key_env": KEY_VAR,
                "timeout_ms": 300,
                "dims": 8
            }
        }]
    });
    let block = serde_json::from_value::<EmbeddingConfig>(config["routes"][0]["embedding"].clone())
        .unwrap()
        .block()
        .unwrap();
    let base = start_app(config, &dir).await;
    let client = reqwest::Client::new();

    let prompts = [
        "What is 12 + 30?",
        "a slow one",
        "this will fail",
        "garbled please",
        "twice please",
        "zero please",
    ];
    for prompt in prompts {
        let started = Instant::now();
        let answer = client
            .post(format!("{base}/v1/route"))
            .json(&json!({"route": "r", "prompt": prompt}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{prompt}");
        // The slow endpoint costs the route its time limit, not the endpoint's 3 s.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{prompt}: {:?}",
            started.elapsed()
        );
    }
    let proxied = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "r", "messages": [{"role": "user", "content": "Proxy me, 7 times"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200);
    // A request the route refuses (it takes no caller features) costs no embedding.
    let refused = [
        client
            .post(format!("{base}/v1/route"))
            .json(&json!({"route": "r", "prompt": "features?", "features": [1.0]})),
        client
            .post(format!("{base}/v1/chat/completions"))
            .header("x-quiver-features", "1")
            .json(&json!({"model": "r", "messages": [{"role": "user", "content": "features?"}]})),
    ];
    // As each API answers invalid values: OpenAI's with a 400.
    for (request, status) in refused.into_iter().zip([422, 400]) {
        assert_eq!(request.send().await.unwrap().status(), status);
    }

    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), 7, "{sent:?}");
    for (model, _, auth) in &sent {
        assert_eq!((model.as_str(), auth.as_str()), ("emb-1", "Bearer sk-embed"));
    }
    assert_eq!(sent[6].1, "Proxy me, 7 times");

    let decisions: Vec<_> = quiver_serve::log::read_log(&dir.join("log"))
        .unwrap()
        .into_iter()
        .filter(|r| r.event == LogEvent::Decision)
        .collect();
    let by: Vec<&str> = decisions
        .iter()
        .map(|r| r.featurizer.as_deref().unwrap())
        .collect();
    assert_eq!(
        by,
        [
            "embedding",
            "hashing",
            "hashing",
            "hashing",
            "hashing",
            "hashing",
            "embedding"
        ]
    );
    for (record, text) in [(&decisions[0], prompts[0]), (&decisions[6], "Proxy me, 7 times")] {
        assert_eq!(
            record.embedding,
            Some(block.project(&toy_embedding(text)).unwrap())
        );
        assert_eq!(
            record.context.as_deref(),
            Some("hashing(words=40,chars=16,caller=0)+embedding(source=openai(model=emb-1),dims=8)")
        );
    }
    assert!(decisions[1..6].iter().all(|r| r.embedding.is_none()));

    // Metrics are open on this server: no token is needed, and an empty one is ignored.
    let metrics = get_text(&client, format!("{base}/metrics"), "").await;
    for (reason, n) in [("timeout", 1), ("error", 4)] {
        let line = format!("quiver_embedding_fallbacks_total{{route=\"r\",reason=\"{reason}\"}} {n}");
        assert_line(&metrics, &line);
    }
}

/// Embeds with [`toy_embedding`], counting the prompts it is asked for.
struct Counting(Mutex<usize>);

impl Embedder for Counting {
    fn source(&self) -> String {
        "toy".into()
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        *self.0.lock().unwrap() += texts.len();
        Ok(texts.iter().map(|t| toy_embedding(t)).collect())
    }
}

#[test]
fn a_replay_embeds_a_table_once_and_builds_the_servers_contexts() {
    let dir = scratch("embedding_replay");
    let table = dir.join("table.csv");
    let prompts = [
        "What is 2 + 2?",
        "Write a haiku about rain.",
        "What is 2 + 2?",
        "Name a prime.",
    ];
    let mut text = String::from("id,prompt,quality|small,cost|small,quality|big,cost|big\n");
    for (i, p) in prompts.iter().enumerate() {
        text.push_str(&format!("r{i},\"{p}\",1,0.0001,1,0.002\n"));
    }
    std::fs::write(&table, text).unwrap();
    let data = load_wide(table.to_str().unwrap(), Format::Auto, None).unwrap();
    let cache = dir.join("cache");

    let embedder = Counting(Mutex::new(0));
    let embeddings = PromptEmbeddings::for_datasets(&[&data], &embedder, &cache).unwrap();
    // Three distinct prompts, each embedded once.
    assert_eq!((*embedder.0.lock().unwrap(), embeddings.len()), (3, 3));
    // Again: read from the cache, nothing embedded; and so however the rows are split
    // between training and evaluation.
    let again = PromptEmbeddings::for_datasets(&[&data], &embedder, &cache).unwrap();
    assert_eq!(*embedder.0.lock().unwrap(), 3);
    for seed in 0..3 {
        let (train, evaluated) = data.holdout(0.5, seed).unwrap();
        PromptEmbeddings::for_datasets(&[&evaluated, &train], &embedder, &cache).unwrap();
    }
    assert_eq!(*embedder.0.lock().unwrap(), 3);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    // Joined with another table, only its new prompt is embedded.
    let other = dir.join("other.csv");
    std::fs::write(
        &other,
        "id,prompt,quality|small,cost|small,quality|big,cost|big\nq0,\"Name a prime.\",1,0.0001,1,0.002\nq1,\"Name a colour.\",1,0.0001,1,0.002\n",
    )
    .unwrap();
    let other = load_wide(other.to_str().unwrap(), Format::Auto, None).unwrap();
    PromptEmbeddings::for_datasets(&[&data, &other], &embedder, &cache).unwrap();
    assert_eq!(*embedder.0.lock().unwrap(), 4);
    PromptEmbeddings::for_datasets(&[&other], &embedder, &cache).unwrap();
    assert_eq!(*embedder.0.lock().unwrap(), 4);
    assert_eq!(
        again.embed(&["Write a haiku about rain."]).unwrap(),
        vec![toy_embedding("Write a haiku about rain.")]
    );
    // A damaged cache file is embedded again, not trusted.
    let file = std::fs::read_dir(&cache).unwrap().next().unwrap().unwrap().path();
    std::fs::write(&file, b"quiver-embeddings 1\n\x03\x00").unwrap();
    PromptEmbeddings::for_datasets(&[&data], &embedder, &cache).unwrap();
    assert_eq!(*embedder.0.lock().unwrap(), 7);

    let offline = ContextBuilder::new(true, &[], 0)
        .with_embeddings(again, 16)
        .unwrap();
    let route = RouteConfig {
        embedding: Some(EmbeddingConfig {
            dims: 16,
            ..EmbeddingConfig::endpoint("http://127.0.0.1:9/v1/embeddings", "m")
        }),
        ..RouteConfig::new("r", "linucb", vec![ModelConfig::priced("small", 0.1, 0.2)])
    };
    let router = Router::open(vec![route], &dir.join("log")).unwrap();
    let block = router.layout("r").unwrap().embedding().unwrap().clone();
    for (row, prompt) in prompts.iter().enumerate() {
        let request = RouteRequest {
            prompt: Some(prompt.to_string()),
            ..RouteRequest::default()
        };
        let projected = block.project(&toy_embedding(prompt)).unwrap();
        let (online, _) = router.context("r", &request, Some(&projected)).unwrap();
        assert_eq!(online, offline.wide_row(&data, row).unwrap(), "row {row}");
    }
    // The definitions differ only in the source: the replay's embedder is not the route's.
    assert_eq!(
        offline
            .definition()
            .replace("source=toy", "source=openai(model=m)"),
        router.layout("r").unwrap().definition()
    );
}

/// Writes a small wide table with prompts and returns its path.
fn small_table(dir: &std::path::Path) -> std::path::PathBuf {
    let table = dir.join("table.csv");
    let mut text = String::from("id,prompt,quality|small,cost|small,quality|big,cost|big\n");
    for i in 0..40 {
        let prompt = if i % 2 == 0 {
            format!("Compute {i} * 17 and explain each step.")
        } else {
            format!("Write a short poem about the number {i}.")
        };
        text.push_str(&format!("r{i},\"{prompt}\",{},0.0001,1,0.002\n", i % 2));
    }
    std::fs::write(&table, text).unwrap();
    table
}

fn replay_with_minilm(table: &std::path::Path, cache: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args([
            "replay",
            "--data",
            table.to_str().unwrap(),
            "--policies",
            "linucb",
            "--seeds",
            "1",
        ])
        .args(["--embedding", "minilm", "--embedding-dims", "16", "--json"])
        .arg("--embedding-cache")
        .arg(cache)
        .output()
        .unwrap()
}

#[cfg(feature = "minilm")]
#[test]
fn replay_embeds_with_the_bundled_encoder_once() {
    let dir = scratch("embedding_minilm_replay");
    let (table, cache) = (small_table(&dir), dir.join("cache"));
    let first = replay_with_minilm(&table, &cache);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let summary: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(
        summary["dataset"]["context"],
        "hashing(words=40,chars=16,caller=0)+embedding(source=minilm-l3,dims=16)"
    );
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let written = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
    // 40 distinct prompts, each its key (12 bytes) and 384 floats, after the header and
    // the width.
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().len(),
        20 + 4 + 40 * (12 + 384 * 4)
    );
    let second = replay_with_minilm(&table, &cache);
    assert!(second.status.success());
    assert_eq!(std::fs::metadata(&files[0]).unwrap().modified().unwrap(), written);
    assert_eq!(first.stdout, second.stdout, "the cache gives the same replay");
}

#[cfg(not(feature = "minilm"))]
#[test]
fn replay_without_the_bundled_encoder_says_how_to_get_it() {
    let dir = scratch("embedding_no_minilm");
    let out = replay_with_minilm(&small_table(&dir), &dir.join("cache"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("build with `--features minilm`"), "{stderr}");
}

/// A log of a route with an embedding block is read with each decision's block, so the
/// contexts a replay or an off-policy evaluation of the log builds are the server's: with
/// zero blocks where the server fell back to hashing (on every decision, for `fell`), with
/// caller features in their order however many (`wide` takes 12, logged `f_10` before
/// `f_2`), and for one route of a log whose routes take other features. A log of several
/// contexts is evaluated one route at a time.
#[test]
fn a_logged_replay_rebuilds_the_servers_contexts_with_their_blocks() {
    use quiver_serve::Observed;
    use quiver_sim::data::{load_logged, Split};
    let dir = scratch("embedding_logged");
    let models = || {
        vec![
            ModelConfig::priced("small", 0.1, 0.2),
            ModelConfig::priced("big", 5.0, 10.0),
        ]
    };
    let embedded = |name: &str, extra_features: usize| RouteConfig {
        extra_features,
        embedding: Some(EmbeddingConfig {
            dims: 8,
            ..EmbeddingConfig::endpoint("http://127.0.0.1:9/v1/embeddings", "emb-1")
        }),
        ..RouteConfig::new(name, "linucb", models())
    };
    let wide = RouteConfig {
        extra_features: 12,
        ..RouteConfig::new("wide", "linucb", models())
    };
    let router = Router::open(vec![embedded("r", 1), embedded("fell", 2), wide], &dir).unwrap();
    let block = router.layout("r").unwrap().embedding().unwrap().clone();
    let mut expected: BTreeMap<&str, Vec<quiver_bandit::Context>> = BTreeMap::new();
    for i in 0..12 {
        let prompt = format!("question {i}: what is {i} squared?");
        for (route, features) in [
            ("r", vec![i as f64 / 12.0]),
            ("fell", vec![0.5, i as f64]),
            ("wide", (0..12).map(|j| if j == i { 1.0 } else { 0.0 }).collect()),
        ] {
            let request = RouteRequest {
                prompt: Some(prompt.clone()),
                features,
                ..RouteRequest::default()
            };
            // On `r`, every fourth embedding "timed out": the hashed features decided alone.
            let embedding =
                (route == "r" && i % 4 != 3).then(|| block.project(&toy_embedding(&prompt)).unwrap());
            let (context, _) = router.context(route, &request, embedding.as_deref()).unwrap();
            expected.entry(route).or_default().push(context);
            let observed = Observed {
                embedding,
                ..Observed::default()
            };
            let routed = router
                .route_observed(route, &request, observed)
                .unwrap()
                .wait()
                .unwrap();
            let outcome = quiver_bandit::Outcome::new(100.0, 0.001).with_quality(0.5);
            router
                .record_outcome(&routed.decision_id, &outcome)
                .unwrap()
                .wait()
                .unwrap();
        }
    }
    let definitions: BTreeMap<&str, String> = expected
        .keys()
        .map(|&route| (route, router.layout(route).unwrap().definition()))
        .collect();
    drop(router);

    let whole = load_logged(dir.to_str().unwrap(), Format::Auto, None)
        .unwrap_err()
        .to_string();
    assert!(
        whole.contains("built in 3 contexts") && whole.contains("--split route=NAME"),
        "{whole}"
    );
    for (route, contexts) in &expected {
        let split: Split = format!("route={route}").parse().unwrap();
        let log = load_logged(dir.to_str().unwrap(), Format::Auto, Some(&split)).unwrap();
        let definition = definitions[route].as_str();
        assert_eq!(log.context.as_deref(), Some(definition));
        assert_eq!(ContextBuilder::for_log(&log).definition(), definition, "{route}");
        assert_eq!(&ContextBuilder::log_contexts(&log).unwrap(), contexts, "{route}");
    }
    let r: Split = "route=r".parse().unwrap();
    let blocks = load_logged(dir.to_str().unwrap(), Format::Auto, Some(&r))
        .unwrap()
        .embeddings;
    assert_eq!(blocks.unwrap().iter().filter(|b| b.is_none()).count(), 3);
}

/// `POST /v1/embeddings` passes through to the configured model `model` names, with its
/// upstream name and key; an upstream failure is a 502, a model at its deployments'
/// limits a 429, and an unknown model a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_pass_through_to_the_named_model() {
    set_key();
    let seen = Seen::default();
    let addr = endpoint(Arc::clone(&seen)).await;
    let dir = scratch("embedding_passthrough");
    let config = json!({
        "routes": [{
            "name": "r",
            "policy": "linucb",
            "models": [
                {"id": "chat", "base_url": format!("http://{addr}"), "input_usd_per_million": 1.0},
                {"id": "emb", "base_url": format!("http://{addr}/v1"), "upstream_model": "text-embedding-x",
                 "api_key_env": KEY_VAR},
                {"id": "limited", "deployments": [{"base_url": format!("http://{addr}/v1"), "rpm": 1}]}
            ]
        }]
    });
    let base = start_app(config, &dir).await;
    let client = reqwest::Client::new();
    let post = |body: Value| client.post(format!("{base}/v1/embeddings")).json(&body).send();

    let answer = post(json!({"model": "emb", "input": "hello there"}))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    let vector: Vec<f32> = serde_json::from_value(body["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(vector, toy_embedding("hello there"));
    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0],
        (
            "text-embedding-x".into(),
            "hello there".into(),
            "Bearer sk-embed".into()
        )
    );

    let failed = post(json!({"model": "emb", "input": "this will fail"}))
        .await
        .unwrap();
    assert_eq!(failed.status(), 502);
    let reason: Value = failed.json().await.unwrap();
    assert!(
        reason["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream answered 500"),
        "{reason}"
    );

    // A model whose deployments are at their limits asks the client to wait, as the
    // proxy does.
    let first = post(json!({"model": "limited", "input": "hello"})).await.unwrap();
    assert_eq!(first.status(), 200);
    let limited = post(json!({"model": "limited", "input": "hello"})).await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "60");
    let reason: Value = limited.json().await.unwrap();
    assert!(
        reason["error"]["message"].as_str().unwrap().contains("rpm 1"),
        "{reason}"
    );

    let unknown = post(json!({"model": "nope", "input": "x"})).await.unwrap();
    assert_eq!(unknown.status(), 404);
    let reason: Value = unknown.json().await.unwrap();
    assert!(
        reason["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(models: chat, emb, limited)"),
        "{reason}"
    );
}

/// With `semantic_similarity`, a prompt whose embedding is as similar as that to a cached
/// one's (here equal: the toy embedding counts characters) is answered from the cache, with
/// no decision and no upstream call, and the hit logged; another caller, another request
/// beyond the prompt, or a dissimilar prompt is not. An embedding that does not come in
/// time is a miss, answered without waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similar_prompts_share_a_cached_answer() {
    set_key();
    let addr = endpoint(Seen::default()).await;
    let dir = scratch("embedding_semantic_cache");
    let base = start_app(
        json!({
            "cache": {"enabled": true, "semantic_similarity": 0.99},
            "auth": {"route_tokens": ["a", "b"], "admin_tokens": ["admin"]},
            "routes": [{
                "name": "r",
                "policy": "fixed(m)",
                "models": [{"id": "m", "base_url": format!("http://{addr}"), "input_usd_per_million": 1.0}],
                "embedding": {"url": format!("http://{addr}/v1/embeddings"), "model": "emb-1", "timeout_ms": 300}
            }]
        }),
        &dir,
    )
    .await;
    let client = reqwest::Client::new();
    let ask = |token: &'static str, prompt: &'static str, temperature: f64| {
        let request = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(token)
            .json(&json!({"model": "r", "temperature": temperature,
                          "messages": [{"role": "user", "content": prompt}]}));
        async move {
            let started = Instant::now();
            let answer = request.send().await.unwrap();
            assert_eq!(answer.status(), 200);
            let cache = answer.headers()["x-quiver-cache"].to_str().unwrap().to_string();
            (cache, started.elapsed())
        }
    };
    assert_eq!(ask("a", "What is 12 + 30?", 0.0).await.0, "miss");
    assert_eq!(
        toy_embedding("What is 12 + 30?"),
        toy_embedding("What is 13 + 30?")
    );
    assert_eq!(ask("a", "What is 13 + 30?", 0.0).await.0, "hit");
    assert_eq!(
        ask("b", "What is 13 + 30?", 0.0).await.0,
        "miss",
        "another caller"
    );
    assert_eq!(
        ask("a", "What is 13 + 30?", 0.5).await.0,
        "miss",
        "another request"
    );
    assert_eq!(
        ask("a", "Tell me about the sea", 0.0).await.0,
        "miss",
        "dissimilar"
    );
    let (cache, took) = ask("a", "What is slow + 30?", 0.0).await;
    assert_eq!(cache, "miss");
    assert!(
        took < Duration::from_secs(2),
        "waited {took:?} for a slow embedding"
    );

    let records = quiver_serve::log::read_log(&dir.join("log")).unwrap();
    let count = |event| records.iter().filter(|r| r.event == event).count();
    assert_eq!(count(LogEvent::Decision), 5, "the hit decided nothing");
    assert_eq!(count(LogEvent::CacheHit), 1);
    let metrics = get_text(&client, format!("{base}/metrics"), "admin").await;
    assert!(
        metrics.lines().any(|l| l == "quiver_cache_semantic_hits_total 1"),
        "{metrics}"
    );
}
