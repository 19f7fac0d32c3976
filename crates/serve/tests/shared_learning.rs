//! Replicas that share what they learn (`Router::own_learning`, `Router::fold_replica`),
//! exchanged here in process on a fixed schedule so that every run is the same: traffic
//! split over three replicas learns about as well as one replica taking all of it, and the
//! replicas pace one budget together. (`tests/cluster.rs` in the workspace runs the same
//! exchange through a real Redis between real servers.)
#![allow(clippy::unwrap_used)] // a test that fails should panic

use std::path::{Path, PathBuf};

use quiver_bandit::Outcome;
use quiver_serve::cluster::SharedLearning;
use quiver_serve::{ModelConfig, RouteConfig, RouteRequest, Router, RouterOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Caller features per request, after the prompt's.
const FEATURES: usize = 3;

/// Each model's expected quality: `theta . (1, f)`, for the request's caller features `f`
/// in [0, 1].
const THETA: [[f64; FEATURES + 1]; 3] = [
    [0.30, 0.60, 0.00, 0.00],
    [0.35, 0.00, 0.50, 0.00],
    [0.70, 0.00, 0.00, 0.25],
];

/// Prices per million input and output tokens: the best model on average is the dearest.
const PRICES: [f64; 3] = [0.5, 1.0, 8.0];

fn route(budget: Option<f64>) -> RouteConfig {
    let models = ["cheap", "mid", "dear"]
        .iter()
        .zip(PRICES)
        .map(|(id, price)| ModelConfig::priced(id, price, price))
        .collect();
    RouteConfig {
        extra_features: FEATURES,
        budget_usd_per_request: budget,
        seed: 9,
        ..RouteConfig::new("r", "linucb(alpha=0.3,detect=0)", models)
    }
}

fn replicas(name: &str, n: usize, budget: Option<f64>) -> Vec<Router> {
    (0..n)
        .map(|i| {
            let options = RouterOptions {
                replica: Some(format!("replica{i}")),
                ..RouterOptions::default()
            };
            let dir = scratch(&format!("{name}_{i}"));
            Router::open_with(vec![route(budget)], &dir, options).unwrap()
        })
        .collect()
}

/// Every replica folds in what every other learned since.
fn sync(replicas: &[Router]) {
    let shares: Vec<_> = replicas.iter().map(|r| r.own_learning("r").unwrap()).collect();
    for (i, replica) in replicas.iter().enumerate() {
        for (j, share) in shares.iter().enumerate().filter(|(j, _)| *j != i) {
            replica
                .fold_replica("r", &format!("replica{j}"), share.clone())
                .unwrap();
        }
    }
}

/// What a run did: expected regret against the best model per request, spend, requests.
#[derive(Debug, Default)]
struct Run {
    regret: f64,
    spend: f64,
    requests: usize,
}

/// Serves `requests` requests of a linear environment (seed `seed`), request `t` with
/// caller features `f` on the replica `pick(t, f)`, syncing every `sync_every` requests.
fn serve(
    replicas: &[Router],
    requests: usize,
    pick: impl Fn(usize, &[f64]) -> usize,
    sync_every: usize,
    seed: u64,
) -> Run {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut run = Run::default();
    for t in 0..requests {
        let features: Vec<f64> = (0..FEATURES).map(|_| rng.random()).collect();
        let expected = |arm: usize| {
            THETA[arm][0]
                + (0..FEATURES)
                    .map(|k| THETA[arm][k + 1] * features[k])
                    .sum::<f64>()
        };
        let request = RouteRequest {
            prompt: Some("one prompt for all: the caller's features tell requests apart".into()),
            features: features.clone(),
            ..RouteRequest::default()
        };
        let router = &replicas[pick(t, &features)];
        let routed = router.route("r", &request).unwrap().wait().unwrap();
        let arm = ["cheap", "mid", "dear"]
            .iter()
            .position(|m| *m == routed.decision.arm)
            .unwrap();
        let best = (0..3).map(expected).fold(f64::MIN, f64::max);
        run.regret += best - expected(arm);
        let cost = PRICES[arm] * 1000.0 / 1e6;
        run.spend += cost;
        run.requests += 1;
        let quality = (expected(arm) + 0.1 * (rng.random::<f64>() - 0.5)).clamp(0.0, 1.0);
        let outcome = Outcome::new(100.0, cost)
            .with_tokens(500, 500)
            .with_quality(quality);
        router
            .record_outcome(&routed.decision_id, &outcome)
            .unwrap()
            .wait()
            .unwrap();
        if (t + 1) % sync_every == 0 {
            sync(replicas);
        }
    }
    run
}

/// Round-robin over three replicas that sync every 30 requests (ten each) learns about as
/// well as one replica taking all the traffic: cumulative regret within 15%, on the mean
/// over five seeds (one run's regret varies by about a fifth with its seed, whoever serves
/// it). Replicas that do not share learn from a third of the traffic each, and pay more.
#[test]
fn three_replicas_sharing_learn_about_as_fast_as_one() {
    let (mut one, mut three, mut alone) = (0.0, 0.0, 0.0);
    for seed in 1..=5 {
        let name = |kind: &str| format!("{kind}_{seed}");
        let round_robin = |t: usize, _: &[f64]| t % 3;
        one += serve(&replicas(&name("one"), 1, None), 3000, |_, _| 0, 30, seed).regret;
        three += serve(&replicas(&name("three"), 3, None), 3000, round_robin, 30, seed).regret;
        let never = usize::MAX;
        alone += serve(&replicas(&name("alone"), 3, None), 3000, round_robin, never, seed).regret;
    }
    assert!(
        three <= 1.15 * one,
        "regret {three:.1} on three sharing replicas, {one:.1} on one (five seeds)"
    );
    // The test can tell: replicas that do not share pay for learning three times.
    assert!(
        alone > 1.15 * one,
        "regret {alone:.1} on three replicas alone, {one:.1} on one (five seeds)"
    );
}

/// Uneven traffic over three replicas that step each other's pacers: the requests that
/// gain most from the dear model (a high third feature) go to the first replica, the
/// others to the second and, one in four, the third. The cluster spends its budget per
/// request within 3%.
#[test]
fn three_replicas_pace_one_budget_together() {
    let budget = 0.003;
    let pick = |t: usize, f: &[f64]| match (f[2] > 0.6, t % 4) {
        (true, _) => 0,
        (false, 0) => 2,
        (false, _) => 1,
    };
    let run = serve(&replicas("budget", 3, Some(budget)), 6000, pick, 30, 4);
    let per_request = run.spend / run.requests as f64;
    assert!(
        (per_request / budget - 1.0).abs() <= 0.03,
        "the cluster spent {per_request:.6} per request against a budget of {budget}"
    );
}

/// A replica's record is its starting learner plus what it learned, so it folds in only
/// where the learner started alike: one of another start (a change of `lambda` rolling
/// out, say) would add the difference of the two starts to the learner, and stays out.
#[test]
fn records_of_another_start_stay_out() {
    let open = |replica: &str, policy: &str| {
        let options = RouterOptions {
            replica: Some(replica.to_string()),
            ..RouterOptions::default()
        };
        let route = RouteConfig {
            policy: policy.to_string(),
            ..route(None)
        };
        Router::open_with(vec![route], &scratch(&format!("start_{replica}")), options).unwrap()
    };
    let ours = open("a", "linucb(alpha=0.3,detect=0)");
    let alike = open("b", "linucb(alpha=0.3,detect=0)");
    let other = open("c", "linucb(alpha=0.3,detect=0,lambda=3)");
    for (i, replica) in [&alike, &other].into_iter().enumerate() {
        serve(std::slice::from_ref(replica), 20, |_, _| 0, usize::MAX, i as u64);
    }
    let record = |router: &Router, replica: &str| SharedLearning::of(router, "r", replica).unwrap();
    let folded = || ours.cluster_figures("r").unwrap().unwrap().other_replicas;
    let refused = record(&other, "c").fold_into(&ours, "r", "c").unwrap_err();
    assert!(
        refused.contains("started from another configuration"),
        "{refused}"
    );
    assert!(folded().is_empty());
    record(&alike, "b").fold_into(&ours, "r", "b").unwrap();
    assert_eq!(folded(), ["b"]);
}
