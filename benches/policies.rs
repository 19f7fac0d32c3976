//! Decide and update of every policy at d in {16, 64} and K in {5, 11, 32}.
//!
//! `decide` is the full `Learner::decide` (eligibility, estimates, choice, floor,
//! explanation); `update` is the policy's learning step on one observation. Each learner is
//! first trained on 2,000 observations so the models are not at their priors.
//!
//! `snapshot` copies a LinUCB learner (d = 64, K = 11) with many decisions awaiting their
//! quality, as the server does under its lock every snapshot interval, and then makes the
//! next decision, which pays for any copying the snapshot deferred; then serializes the
//! copy to JSON, whole (`serialize/full`) and without the tracked decisions, as the server
//! writes it (`serialize/without_tracked`; the log holds those decisions).
//!
//! `shadow` is what shadow candidates add to each decision of a route: their decisions,
//! and on the outcome the estimators, reward models and their learning.
//!
//! `settled` decides as `decide` does, for the Thompson policies and LinUCB, after
//! training on models of distinct mean quality (0.2 to 0.8, noise of 0.1) instead of equal
//! ones: a learned route, where a few models are in contention and the exact propensities'
//! quadrature leaves the others out, against `decide`'s worst case of every model in
//! contention.
//!
//! Run: `cargo bench --bench policies`; CI runs it once per benchmark in test mode.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use quiver_bandit::shadow::Shadows;
use quiver_bandit::{Arm, Context, Learner, LearnerConfig, Outcome, Policy, PolicySpec, Request};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::time::Duration;

/// The allocator the `quiver` binary uses, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SPECS: [&str; 11] = [
    "random",
    "eps(0.05)",
    "ucb1",
    "beta-ts",
    "beta-ts(draws=0)",
    "gaussian-ts",
    "gaussian-ts(draws=0)",
    "linucb(alpha=0.5)",
    "lints(v=0.3)",
    "lints(v=0.3,draws=0)",
    "fixed(a0)",
];

fn context(dim: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut x = vec![1.0];
    x.extend((1..dim).map(|_| rng.random_range(-1.0..1.0) / (dim as f64).sqrt()));
    x
}

/// A learner trained on 2,000 observations of uniform qualities, that remembers up to
/// `max_tracked` decisions.
fn trained(spec: &str, dim: usize, arms: usize, max_tracked: usize) -> Learner {
    trained_on(spec, dim, arms, max_tracked, |_, rng| rng.random())
}

/// [`trained`] on the qualities `quality(arm, rng)` draws.
fn trained_on(
    spec: &str,
    dim: usize,
    arms: usize,
    max_tracked: usize,
    quality: impl Fn(usize, &mut ChaCha8Rng) -> f64,
) -> Learner {
    let mut config = LearnerConfig::new(spec.parse().expect("spec"), dim);
    config.max_tracked_decisions = max_tracked;
    let arms = (0..arms).map(|a| Arm::new(format!("a{a}"))).collect();
    let mut learner = Learner::new(config, arms).expect("learner");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..2000 {
        let features = context(dim, &mut rng);
        let d = learner
            .decide(&Request::new(Context {
                features,
                input_tokens: 200,
            }))
            .expect("decide");
        let quality = quality(arm_index(&d.arm), &mut rng);
        learner
            .record_outcome(d.id, &Outcome::new(300.0, 0.001).with_quality(quality))
            .expect("outcome");
    }
    learner
}

fn arm_index(arm: &str) -> usize {
    arm[1..].parse().expect("arm a<i>")
}

/// Times `learner.decide`, named `spec` in `group`, over 64 requests of its dimension.
fn bench_decide(group: &mut BenchmarkGroup<'_, WallTime>, spec: &str, mut learner: Learner, dim: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let requests: Vec<Request> = (0..64)
        .map(|_| {
            Request::new(Context {
                features: context(dim, &mut rng),
                input_tokens: 200,
            })
        })
        .collect();
    let mut i = 0;
    group.bench_function(BenchmarkId::from_parameter(spec), |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            black_box(learner.decide(&requests[i]).expect("decide"))
        })
    });
}

fn settled(c: &mut Criterion) {
    const SETTLED: [&str; 5] = [
        "linucb(alpha=0.5)",
        "lints(v=0.3)",
        "lints(v=0.3,draws=0)",
        "gaussian-ts",
        "gaussian-ts(draws=0)",
    ];
    for dim in [16, 64] {
        let arms = 11;
        let mut group = c.benchmark_group(format!("settled/d{dim}/k{arms}"));
        group.warm_up_time(Duration::from_millis(300));
        group.measurement_time(Duration::from_secs(1));
        for spec in SETTLED {
            let learner = trained_on(spec, dim, arms, 1024, |arm, rng| {
                (0.2 + 0.6 * arm as f64 / (arms - 1) as f64 + rng.random_range(-0.1..0.1)).clamp(0.0, 1.0)
            });
            bench_decide(&mut group, spec, learner, dim);
        }
        group.finish();
    }
}

fn bench(c: &mut Criterion) {
    for &dim in &[16usize, 64] {
        for &arms in &[5usize, 11, 32] {
            let mut decide = c.benchmark_group(format!("decide/d{dim}/k{arms}"));
            decide.warm_up_time(Duration::from_millis(300));
            decide.measurement_time(Duration::from_secs(1));
            for spec in SPECS {
                bench_decide(&mut decide, spec, trained(spec, dim, arms, 1024), dim);
            }
            decide.finish();

            let mut update = c.benchmark_group(format!("update/d{dim}/k{arms}"));
            update.warm_up_time(Duration::from_millis(300));
            update.measurement_time(Duration::from_secs(1));
            for spec in SPECS {
                let mut policy = trained(spec, dim, arms, 1024).policy().clone();
                let mut rng = ChaCha8Rng::seed_from_u64(3);
                let observations: Vec<(usize, Vec<f64>, f64)> = (0..64)
                    .map(|_| (rng.random_range(0..arms), context(dim, &mut rng), rng.random()))
                    .collect();
                let mut i = 0;
                update.bench_function(BenchmarkId::from_parameter(spec), |b| {
                    b.iter(|| {
                        i = (i + 1) % observations.len();
                        let (arm, x, q) = &observations[i];
                        policy.update(*arm, black_box(x), *q);
                    })
                });
            }
            update.finish();
        }
    }
}

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot/linucb/d64/k11");
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(2));
    for pending in [10_000usize, 100_000] {
        let mut learner = trained("linucb(alpha=0.5)", 64, 11, pending);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let request = |rng: &mut ChaCha8Rng| {
            Request::new(Context {
                features: context(64, rng),
                input_tokens: 200,
            })
        };
        for _ in 0..pending {
            learner.decide(&request(&mut rng)).expect("decide");
        }
        let next = request(&mut rng);
        group.bench_function(BenchmarkId::new("pending", pending), |b| {
            b.iter(|| {
                let copy = black_box(learner.snapshot());
                black_box(learner.decide(&next).expect("decide"));
                copy
            })
        });
        for (name, copy) in [
            ("serialize/full", learner.snapshot()),
            ("serialize/without_tracked", learner.snapshot_without_tracked()),
        ] {
            group.sample_size(10);
            group.bench_function(BenchmarkId::new(name, pending), |b| {
                b.iter(|| serde_json::to_vec(black_box(&copy)).expect("serialize").len())
            });
            group.sample_size(100);
        }
    }
    group.finish();
}

/// What shadow candidates add to each decision of a route (d = 64, K = 11, trained on
/// 2,000 decisions): the candidates' decisions on the request, then, when its outcome
/// comes, the estimators' rows, the reward models' updates and the candidates' learning.
fn shadow(c: &mut Criterion) {
    let mut group = c.benchmark_group("shadow/d64/k11");
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    let (dim, arms) = (64, 11);
    let live = trained("lints(v=0.3,floor=0.02)", dim, arms, 1024);
    let arm_list: Vec<Arm> = (0..arms).map(|a| Arm::new(format!("a{a}"))).collect();
    for candidates in [&["linucb(alpha=0.1)"][..], &["linucb(alpha=0.1)", "lints(v=0.1)"]] {
        let specs: Vec<PolicySpec> = candidates.iter().map(|s| s.parse().expect("spec")).collect();
        let mut shadows = Shadows::new(&specs, live.config(), &arm_list, 1024).expect("shadows");
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut id = 0;
        let mut serve = |shadows: &mut Shadows| {
            let request = Request::new(Context {
                features: context(dim, &mut rng),
                input_tokens: 200,
            });
            let arm = rng.random_range(0..arms);
            shadows
                .decided(id, request, &format!("a{arm}"), 0.1, None)
                .expect("decided");
            let quality: f64 = rng.random();
            let outcome = Outcome::new(300.0, 0.001).with_quality(quality);
            shadows.outcome(id, &outcome).expect("outcome");
            id += 1;
        };
        for _ in 0..2000 {
            serve(&mut shadows);
        }
        group.bench_function(BenchmarkId::new("candidates", candidates.len()), |b| {
            b.iter(|| serve(&mut shadows))
        });
    }
    group.finish();
}

criterion_group!(benches, bench, settled, snapshot, shadow);
criterion_main!(benches);
