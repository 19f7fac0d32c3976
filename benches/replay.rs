//! Replay rounds per second for LinUCB and linear TS at d = 10, K = 5, from a polars frame:
//! SPEC.md section 4's target is >= 1M rounds/s for LinUCB.
//!
//! A synthetic wide table (bias + 9 caller features, 5 arms with linear qualities) is
//! written to Parquet and loaded back through polars like any user file; the timed part is
//! `replay` itself: per round one decision, the chosen arm's outcome and its quality,
//! and the hindsight bookkeeping. One seed is one core's throughput; two seeds in
//! parallel show the machine's. Run: `cargo bench --bench replay`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ndarray::Array2;
use quiver_bandit::{Objective, DEFAULT_PACING_STEP};
use quiver_sim::context::ContextBuilder;
use quiver_sim::data::{load_wide, Format, WideDataset};
use quiver_sim::replay::{replay, Environment, Knobs, ReplaySettings, Variant};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// The allocator the `quiver` binary uses, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROWS: usize = 100_000;
const ARMS: usize = 5;
const FEATURES: usize = 9;

fn synthetic(rows: usize) -> WideDataset {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let weights: Vec<f64> = (0..ARMS * FEATURES)
        .map(|_| rng.random_range(-0.3..0.3))
        .collect();
    let mut data = WideDataset {
        source: "synthetic".into(),
        arms: (0..ARMS).map(|a| format!("m{a}")).collect(),
        ids: (0..rows).map(|r| r.to_string()).collect(),
        feature_names: (0..FEATURES).map(|f| format!("f_{f}")).collect(),
        cost_usd: Some(Array2::from_shape_fn((rows, ARMS), |(_, a)| {
            1e-4 * (a + 1) as f64
        })),
        features: Array2::zeros((rows, FEATURES)),
        quality: Array2::zeros((rows, ARMS)),
        ..WideDataset::default()
    };
    for r in 0..rows {
        let x: Vec<f64> = (0..FEATURES).map(|_| rng.random_range(-1.0..1.0)).collect();
        for a in 0..ARMS {
            let score: f64 = x.iter().zip(&weights[a * FEATURES..]).map(|(x, w)| x * w).sum();
            data.quality[[r, a]] = (0.5 + score).clamp(0.0, 1.0);
        }
        data.features.row_mut(r).assign(&ndarray::ArrayView1::from(&x));
    }
    data
}

fn rounds_per_second(c: &mut Criterion) {
    let path = std::env::temp_dir().join(format!("quiver-bench-replay-{}.parquet", std::process::id()));
    quiver_sim::write::write_wide(&synthetic(ROWS), &path).expect("write");
    let data = load_wide(&path.to_string_lossy(), Format::Wide, None).expect("load");
    let _ = std::fs::remove_file(&path);
    let builder = ContextBuilder::new(false, &[], data.feature_names.len());
    assert_eq!(builder.dim(), 1 + FEATURES);
    let env = Environment::new(&data, &builder).expect("environment");
    let mut group = c.benchmark_group("replay_d10_k5");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    // One seed runs on one core; seeds (and policies) run in parallel, one per core.
    for (spec, seeds) in [
        ("linucb(alpha=0.5)", 1),
        ("lints(v=0.3)", 1),
        ("linucb(alpha=0.5)", 2),
    ] {
        let settings = ReplaySettings {
            variants: vec![Variant {
                spec: spec.parse().expect("spec"),
                objective: Objective::default(),
                budget_usd: None,
                label: spec.into(),
            }],
            seeds,
            knobs: Knobs::default(),
            frozen: false,
            train_passes: 0,
            explore_passes: 0,
            priors: None,
            pacer_step: DEFAULT_PACING_STEP,
            checkpoints: 100,
            full_information: false,
        };
        group.throughput(Throughput::Elements(ROWS as u64 * seeds));
        group.bench_function(format!("{spec} x{seeds} seeds"), |b| {
            b.iter(|| replay(&env, None, &settings, &|| {}).expect("replay"))
        });
    }
    group.finish();
}

criterion_group!(benches, rounds_per_second);
criterion_main!(benches);
