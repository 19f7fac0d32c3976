//! Merging what replicas learned: two copies of a policy fed the two halves of a stream,
//! merged into their common starting state, know what one policy fed the whole stream
//! knows, for every policy (their statistics are sums); forgetting refuses to merge.
#![allow(clippy::unwrap_used)] // a test that fails should panic

use quiver_bandit::{AnyPolicy, Arm, Context, Learner, LearnerConfig, Outcome, Policy, PolicySpec, Request};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ARMS: [&str; 3] = ["a", "b", "c"];
const DIM: usize = 4;

/// A stream of `(arm, features, quality)` with a bias feature first.
fn stream(n: usize, seed: u64) -> Vec<(usize, Vec<f64>, f64)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut x = vec![1.0];
            x.extend((1..DIM).map(|_| rng.random::<f64>() - 0.5));
            (
                rng.random_range(0..ARMS.len()),
                x,
                f64::from(u8::from(rng.random::<f64>() < 0.6)),
            )
        })
        .collect()
}

fn fed(mut policy: AnyPolicy, rows: &[(usize, Vec<f64>, f64)]) -> AnyPolicy {
    for (arm, x, q) in rows {
        policy.update(*arm, x, *q);
    }
    policy
}

#[test]
fn two_halves_merged_equal_the_whole_for_every_policy() {
    let rows = stream(400, 11);
    let probes = stream(10, 12);
    for spec in [
        "random",
        "eps(0.1)",
        "ucb1",
        "beta-ts",
        "gaussian-ts",
        "linucb",
        "lints",
        "fixed(b)",
    ] {
        let spec: PolicySpec = spec.parse().unwrap();
        // The common start already learned something, which the merge must count once.
        let base = fed(spec.build(&ARMS, DIM).unwrap(), &rows[..50]);
        let whole = fed(base.clone(), &rows[50..]);
        let first = fed(base.clone(), &rows[50..220]);
        let second = fed(base.clone(), &rows[220..]);
        let mut merged = base.clone();
        merged.merge(&first, &base).unwrap();
        merged.merge(&second, &base).unwrap();
        for arm in 0..ARMS.len() {
            assert!(
                (merged.observations(arm) - whole.observations(arm)).abs() < 1e-9,
                "{spec}"
            );
            for (_, x, _) in &probes {
                let (m, w) = (merged.estimate(arm, x), whole.estimate(arm, x));
                assert!((m.mean - w.mean).abs() < 1e-9, "{spec} arm {arm}: {m:?} vs {w:?}");
                assert!((m.std - w.std).abs() < 1e-9, "{spec} arm {arm}: {m:?} vs {w:?}");
            }
        }
        // Merging a replica of another policy kind is refused.
        let other: PolicySpec = if spec.to_string().starts_with("random") {
            "ucb1"
        } else {
            "random"
        }
        .parse()
        .unwrap();
        let stranger = other.build(&ARMS, DIM).unwrap();
        assert!(merged.clone().merge(&stranger, &base).is_err(), "{spec}");
    }
}

/// A discount or a window forgets by the order of the whole stream, which no replica saw:
/// merging is refused with a reason rather than done wrong.
#[test]
fn forgetting_refuses_to_merge() {
    for spec in ["linucb(gamma=0.99)", "beta-ts(window=100)", "eps(0.1,gamma=0.9)"] {
        let spec: PolicySpec = spec.parse().unwrap();
        let base = spec.build(&ARMS, DIM).unwrap();
        let replica = fed(base.clone(), &stream(20, 3));
        let err = base.clone().merge(&replica, &base).unwrap_err();
        assert!(err.to_string().contains("cannot be merged"), "{spec}: {err}");
    }
}

/// Learners merge too: a route's replicas, each starting from the same snapshot, hand
/// their learning to one learner, which then explains every arm's quality and latency as
/// a learner fed all of it would, and its cost within 1%. `fixed` keeps every replica's decisions on one arm,
/// so the whole and the halves see the same outcomes.
#[test]
fn learners_fed_halves_merge_into_the_learner_fed_the_whole() {
    let make = || {
        let config = LearnerConfig::new("fixed(a1)".parse().unwrap(), 2);
        Learner::new(config, (0..3).map(|a| Arm::new(format!("a{a}"))).collect()).unwrap()
    };
    let request = |i: usize| {
        Request::new(Context {
            features: vec![1.0, (i % 7) as f64 / 7.0],
            input_tokens: 50 + 10 * (i % 5) as u32,
        })
    };
    let feed = |learner: &mut Learner, range: std::ops::Range<usize>| {
        for i in range {
            let d = learner.decide(&request(i)).unwrap();
            let outcome = Outcome::new(100.0 + i as f64, 0.0001 * (1 + i % 3) as f64)
                .with_tokens(50, 20)
                .with_quality(if i % 3 == 0 { 0.2 } else { 0.9 });
            learner.record_outcome(d.id, &outcome).unwrap();
        }
    };
    let mut base = make();
    feed(&mut base, 0..30);
    let mut whole = base.clone();
    feed(&mut whole, 30..200);
    let (mut first, mut second) = (base.clone(), base.clone());
    feed(&mut first, 30..120);
    feed(&mut second, 120..200);
    let mut merged = base.clone();
    merged.merge(&first, &base).unwrap();
    merged.merge(&second, &base).unwrap();

    let (m, w) = (merged.usage(1), whole.usage(1));
    assert_eq!(
        (m.requests, m.errors, m.qualities),
        (w.requests, w.errors, w.qualities)
    );
    assert!(w.qualities > 0);
    for (a, b) in [
        (m.quality_sum, w.quality_sum),
        (m.cost_usd, w.cost_usd),
        (m.latency_ms, w.latency_ms),
        (m.latency_ms_sq, w.latency_ms_sq),
    ] {
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} vs {b}");
    }
    for i in 0..7 {
        let (m, w) = (
            merged.propose(&request(i)).unwrap(),
            whole.propose(&request(i)).unwrap(),
        );
        for (a, b) in m.arms.iter().zip(&w.arms) {
            assert_eq!(a.arm, b.arm);
            for (x, y) in [
                (a.quality, b.quality),
                (a.quality_std, b.quality_std),
                (a.latency_ms, b.latency_ms),
            ] {
                assert!((x - y).abs() < 1e-9, "{}: {x} vs {y}", a.arm);
            }
            // The cost correction regressed each outcome's residual against the per-token
            // ratio as its own learner estimated it then: close to the whole's, not equal.
            let (x, y) = (a.cost_usd, b.cost_usd);
            assert!((x - y).abs() <= 0.01 * y, "{}: {x} vs {y}", a.arm);
        }
    }

    let other = Learner::new(
        LearnerConfig::new("fixed(b1)".parse().unwrap(), 2),
        (0..3).map(|a| Arm::new(format!("b{a}"))).collect(),
    )
    .unwrap();
    assert!(merged.merge(&other, &base).is_err());
    let wider = Learner::new(
        LearnerConfig::new("fixed(a1)".parse().unwrap(), 3),
        (0..3).map(|a| Arm::new(format!("a{a}"))).collect(),
    )
    .unwrap();
    let err = merged.merge(&wider, &base).unwrap_err();
    assert!(err.to_string().contains("context dimensions"), "{err}");
}

/// Calls another replica made step the budget pacer as if this learner had recorded them:
/// at equal costs, one step per call at their mean cost is exactly the steps the other
/// took, so replicas that hand each other their calls pace one budget.
#[test]
fn calls_elsewhere_step_the_pacer_as_if_recorded_here() {
    let make = || {
        let mut config = LearnerConfig::new("fixed(a1)".parse().unwrap(), 2);
        config.budget = Some(quiver_bandit::BudgetConfig {
            target_usd_per_request: 0.001,
            step_size: 0.05,
        });
        Learner::new(config, (0..2).map(|a| Arm::new(format!("a{a}"))).collect()).unwrap()
    };
    let base = make();
    let mut there = base.clone();
    for i in 0..50 {
        let d = there
            .decide(&Request::new(Context {
                features: vec![1.0, (i % 3) as f64],
                input_tokens: 10,
            }))
            .unwrap();
        there
            .record_outcome(d.id, &Outcome::new(100.0, 0.0025).with_tokens(10, 10))
            .unwrap();
    }
    let (calls, cost) = there.calls_since(&base);
    assert_eq!(calls, 50);
    assert!((cost - 50.0 * 0.0025).abs() < 1e-12);
    let mut here = base.clone();
    here.pace_calls_elsewhere(calls, cost);
    let (h, t) = (here.pacer().unwrap(), there.pacer().unwrap());
    assert!(t.lambda() > 0.0, "overspending raised the dual");
    assert!(
        (h.lambda() - t.lambda()).abs() < 1e-12,
        "{} vs {}",
        h.lambda(),
        t.lambda()
    );
    assert!((h.debt() - t.debt()).abs() < 1e-12);
    assert!((h.current_step() - t.current_step()).abs() < 1e-15);
}
