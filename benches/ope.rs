//! Off-policy evaluation on 1M logged rows: each estimator's point estimate, and the
//! 10,000-resample bootstrap interval. SPEC.md section 4's targets: <= 20 ms per estimator,
//! <= 5 s for the bootstrap on 2 cores.
//!
//! The rows are synthetic (5 arms, logging propensities in [0.1, 0.5], Bernoulli rewards);
//! an estimator's cost does not depend on the values. Run: `cargo bench --bench ope`.

use criterion::{criterion_group, criterion_main, Criterion};
use quiver_sim::ope::{all_estimators, bootstrap, estimate, value, Estimator, OpeInputs, Snips};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::time::Duration;

/// The allocator the `quiver` binary uses, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROWS: usize = 1_000_000;

fn inputs(rows: usize) -> OpeInputs {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut x = OpeInputs {
        clip: f64::INFINITY,
        switch_tau: 10.0,
        ..OpeInputs::default()
    };
    for _ in 0..rows {
        let propensity: f64 = rng.random_range(0.1..0.5);
        let target: f64 = rng.random();
        x.propensity.push(propensity);
        x.target.push(target);
        x.reward.push(f64::from(rng.random_bool(0.3)));
        x.q_logged.push(rng.random());
        x.dm.push(rng.random());
        x.accepted.push(rng.random_bool(0.2));
    }
    x
}

fn estimators(c: &mut Criterion) {
    let x = inputs(ROWS);
    let mut group = c.benchmark_group("ope_1m_rows");
    group.sample_size(20).measurement_time(Duration::from_secs(3));
    for e in all_estimators() {
        group.bench_function(e.name(), |b| {
            b.iter(|| value(black_box(e.as_ref()), black_box(&x)))
        });
    }
    group.finish();
}

fn bootstrap_10k(c: &mut Criterion) {
    let x = inputs(ROWS);
    let mut group = c.benchmark_group("ope_1m_rows_bootstrap_10k");
    group.sample_size(10).warm_up_time(Duration::from_millis(1));
    // SNIPS reads two terms per row; the one-term estimators (IPS, DR) are cheaper.
    let terms = quiver_sim::ope::terms(&Snips, &x);
    group.bench_function(Snips.name(), |b| {
        b.iter(|| bootstrap(&Snips, black_box(&terms), 10_000, 1))
    });
    group.bench_function("snips_with_terms_and_analytic", |b| {
        b.iter(|| estimate(&Snips, black_box(&x), 10_000, 1))
    });
    group.finish();
}

criterion_group!(benches, estimators, bootstrap_10k);
criterion_main!(benches);
