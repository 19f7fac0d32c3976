//! Propensities: a distribution over the eligible arms, above the floor, and equal to the
//! frequency with which the policy really chooses.

mod support;

use quiver_bandit::{Context, Learner, Outcome, PropensityKind, Request};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::{arm_index, learner};

const ALL: [&str; 11] = [
    "random",
    "eps(0.2)",
    "ucb1",
    "beta-ts",
    "beta-ts(draws=256)",
    "gaussian-ts",
    "gaussian-ts(draws=256)",
    "linucb(alpha=0.5)",
    "lints(v=0.5)",
    "lints(v=0.5,draws=256)",
    "fixed(a2)",
];

fn request(x: Vec<f64>) -> Request {
    Request::new(Context {
        features: x,
        input_tokens: 0,
    })
}

/// A learner that has seen 200 rounds of arm-dependent quality, so its PMF is uneven.
fn trained(spec: &str, arms: usize, dim: usize) -> Learner {
    let mut l = learner(spec, arms, dim, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for _ in 0..200 {
        let mut x = vec![1.0];
        x.extend((1..dim).map(|_| rng.random_range(-1.0..1.0)));
        let d = l.decide(&request(x.clone())).expect("decide");
        let a = arm_index(&d.arm) as f64;
        let quality = (0.2 + 0.15 * a + 0.1 * x[1]).clamp(0.0, 1.0);
        l.record_outcome(d.id, &Outcome::new(10.0, 0.0).with_quality(quality))
            .expect("outcome");
    }
    l
}

#[test]
fn propensities_sum_to_one_respect_the_floor_and_match_the_chosen_arm() {
    for spec in ALL {
        let floored = format!(
            "{}floor=0.03)",
            spec.strip_suffix(')')
                .map_or(format!("{spec}("), |s| format!("{s},"))
        );
        let mut l = trained(&floored, 4, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for _ in 0..50 {
            let x = vec![1.0, rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0)];
            let d = l.decide(&request(x)).expect("decide");
            let total: f64 = d.arms.iter().map(|a| a.probability).sum();
            assert!((total - 1.0).abs() < 1e-9, "{floored}: sum {total}");
            assert!(
                d.arms.iter().all(|a| a.probability >= 0.03 - 1e-12),
                "{floored}: floor broken"
            );
            let chosen = d.arms.iter().find(|a| a.arm == d.arm).expect("chosen arm listed");
            assert_eq!(chosen.probability, d.propensity);
            // Thompson policies compute their PMF, unless told to estimate it (`draws=256`).
            let expect_exact = !spec.contains("draws=256");
            assert_eq!(
                matches!(d.propensity_kind, PropensityKind::Exact),
                expect_exact,
                "{floored}"
            );
        }
    }
}

/// In one fixed context and state, `n` decisions are `n` independent draws from the same
/// PMF; each arm's count is binomial, so its frequency lies within 4 standard errors of
/// the reported probability (plus, for Monte Carlo estimates, their own error bound
/// `0.5 / sqrt(draws)` averaged down over `n` decisions and the `1 / (draws + 1)` share of
/// the counted decisive draw).
#[test]
fn reported_propensity_matches_the_empirical_choice_frequency() {
    let n = 20_000;
    for spec in ALL
        .iter()
        .map(|s| s.to_string())
        .chain(["eps(0.3,floor=0.05)".into(), "linucb(floor=0.1)".into()])
    {
        let mut l = trained(&spec, 4, 3);
        let x = vec![1.0, 0.3, -0.2];
        let mut counts = [0usize; 4];
        let mut reported = [0.0f64; 4];
        let mut draws = None;
        for _ in 0..n {
            let d = l.decide(&request(x.clone())).expect("decide");
            counts[arm_index(&d.arm)] += 1;
            for a in &d.arms {
                reported[arm_index(&a.arm)] += a.probability / n as f64;
            }
            if let PropensityKind::Estimated { draws: m } = d.propensity_kind {
                draws = Some(f64::from(m));
            }
        }
        for arm in 0..4 {
            let freq = counts[arm] as f64 / n as f64;
            let p = reported[arm];
            let mut tolerance = 4.0 * (p * (1.0 - p) / n as f64).sqrt() + 1e-12;
            if let Some(m) = draws {
                tolerance += 1.0 / m + 4.0 * 0.5 / (m * n as f64).sqrt();
            }
            assert!(
                (freq - p).abs() <= tolerance,
                "{spec} arm {arm}: chosen {freq}, reported {p} (tolerance {tolerance})"
            );
        }
    }
}
