//! The learner's contract: feedback applied exactly once, snapshots that restore exactly,
//! bad numbers rejected without side effects, arms added and removed at run time.

mod support;

use quiver_bandit::{
    Applied, Arm, BudgetConfig, Constraints, Context, ErrorKind, Learner, LearnerConfig, LoggedTerms,
    Objective, ObjectiveOverride, Outcome, Policy, PropensityKind, Request, Snapshot, HOLD_HORIZON,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::{arm_index, learner};

fn request(x: Vec<f64>) -> Request {
    Request::new(Context {
        features: x,
        input_tokens: 100,
    })
}

fn json(l: &Learner) -> String {
    serde_json::to_string(&l.snapshot()).expect("serialize")
}

#[test]
fn delayed_quality_is_applied_exactly_once() {
    for spec in ["ucb1", "beta-ts", "lints(v=0.3)", "linucb"] {
        let mut once = learner(spec, 3, 2, 1);
        let mut twice = learner(spec, 3, 2, 1);
        let mut ids = Vec::new();
        for l in [&mut once, &mut twice] {
            let d = l.decide(&request(vec![1.0, 0.5])).expect("decide");
            // Cost and latency now, quality later.
            assert_eq!(
                l.record_outcome(d.id, &Outcome::new(80.0, 0.001))
                    .expect("outcome"),
                Applied::Applied
            );
            ids.push(d.id);
        }
        let before = json(&once);
        assert_eq!(
            once.record_quality(ids[0], 0.75).expect("quality"),
            Applied::Applied
        );
        assert_ne!(json(&once), before, "{spec}: quality changed nothing");
        assert_eq!(
            twice.record_quality(ids[1], 0.75).expect("quality"),
            Applied::Applied
        );
        // Repeats, through either entry point, change nothing.
        assert_eq!(
            twice.record_quality(ids[1], 0.75).expect("again"),
            Applied::AlreadyApplied
        );
        // Another quality is refused, not dropped behind an acknowledgement.
        assert_eq!(
            twice.record_quality(ids[1], 0.1).unwrap_err().kind(),
            &ErrorKind::QualityConflict {
                id: ids[1],
                learned: 0.75,
                sent: 0.1
            }
        );
        let late = Outcome::new(80.0, 0.001).with_quality(0.2);
        assert!(matches!(
            twice.record_outcome(ids[1], &late).unwrap_err().kind(),
            ErrorKind::QualityConflict { learned, sent, .. } if *learned == 0.75 && *sent == 0.2
        ));
        assert_eq!(json(&once), json(&twice), "{spec}: a repeat was counted");
        let unknown = twice.record_quality(999, 0.5).unwrap_err();
        assert_eq!(unknown.kind(), &ErrorKind::UnknownDecision(999));
    }
}

/// Feedback first, then the outcome: its cost is news, but a quality other than the one
/// learned is refused with it (nothing recorded); the same quality is not.
#[test]
fn an_outcome_after_feedback_carries_the_same_quality_or_is_refused() {
    let mut l = learner("ucb1", 2, 1, 0);
    let d = l.decide(&request(vec![1.0])).expect("decide");
    l.record_quality(d.id, 0.6).expect("quality");
    let conflicting = Outcome::new(80.0, 0.001).with_quality(0.1);
    assert!(matches!(
        l.outcome_would_apply(d.id, &conflicting).unwrap_err().kind(),
        ErrorKind::QualityConflict { learned, sent, .. } if *learned == 0.6 && *sent == 0.1
    ));
    assert!(l.record_outcome(d.id, &conflicting).is_err());
    let arm = l.arm_index(&d.arm).expect("arm");
    assert_eq!(l.usage(arm).requests, 0);
    let same = Outcome::new(80.0, 0.001).with_quality(0.6);
    assert_eq!(l.record_outcome(d.id, &same).expect("outcome"), Applied::Applied);
    assert_eq!(l.usage(arm).requests, 1);
}

/// A second outcome must report the call as the first did: a repeat is already applied
/// (and may bring the quality), another report is refused with the field that differs,
/// so that a failure reported after a success never becomes a quality of 0. The same
/// holds for an outcome recorded before a restart.
#[test]
fn a_repeated_outcome_reports_the_call_as_the_first_did() {
    let first = Outcome::new(100.0, 0.001).with_tokens(12, 150);
    let conflicts = [
        (first.clone().failed(), "error", 0.0, 1.0),
        (
            Outcome {
                cost_usd: 5.0,
                ..first.clone()
            },
            "cost_usd",
            0.001,
            5.0,
        ),
        (
            Outcome {
                latency_ms: 90.0,
                ..first.clone()
            },
            "latency_ms",
            100.0,
            90.0,
        ),
        (first.clone().with_tokens(12, 151), "output_tokens", 150.0, 151.0),
    ];
    let mut l = learner("ucb1", 2, 1, 0);
    let context = Context {
        features: vec![1.0],
        input_tokens: 100,
    };
    let d = l.decide(&Request::new(context.clone())).expect("decide");
    assert_eq!(l.record_outcome(d.id, &first).expect("outcome"), Applied::Applied);
    let mut resumed = learner("ucb1", 2, 1, 0);
    resumed.resume_decision(d.id, &d.arm, &context).expect("resume");
    resumed.resume_outcome(d.id, &first).expect("resume outcome");
    for l in [&mut l, &mut resumed] {
        let before = json(l);
        for (sent, field, recorded, value) in &conflicts {
            assert_eq!(
                l.record_outcome(d.id, sent).unwrap_err().kind(),
                &ErrorKind::OutcomeConflict {
                    id: d.id,
                    field,
                    recorded: *recorded,
                    sent: *value
                }
            );
        }
        assert_eq!(json(l), before, "a refused outcome changed the learner");
        assert!(!l.quality_recorded(d.id).expect("tracked"));
        assert_eq!(
            l.record_outcome(d.id, &first).expect("repeat"),
            Applied::AlreadyApplied
        );
        let scored = first.clone().with_quality(0.3);
        assert_eq!(l.record_outcome(d.id, &scored).expect("scored"), Applied::Applied);
        assert_eq!(
            l.record_quality(d.id, 0.3).expect("same"),
            Applied::AlreadyApplied
        );
    }
    let arm = l.arm_index(&d.arm).expect("arm");
    assert_eq!((l.usage(arm).requests, l.usage(arm).errors), (1, 0));
}

#[test]
fn quality_in_the_outcome_and_failed_calls_count_once() {
    let mut l = learner("ucb1", 2, 1, 0);
    let d = l.decide(&request(vec![1.0])).expect("decide");
    let failed = Outcome::new(3000.0, 0.0).failed();
    assert_eq!(
        l.record_outcome(d.id, &failed).expect("outcome"),
        Applied::Applied
    );
    // A failure counts as quality 0 at once; a later score is refused, a 0 repeats it.
    assert!(matches!(
        l.record_quality(d.id, 1.0).unwrap_err().kind(),
        ErrorKind::QualityConflict { learned, .. } if *learned == 0.0
    ));
    assert_eq!(
        l.record_quality(d.id, 0.0).expect("quality"),
        Applied::AlreadyApplied
    );
    let arm = l.arm_index(&d.arm).expect("arm");
    assert_eq!(l.usage(arm).errors, 1);
    assert_eq!(l.usage(arm).requests, 1);
}

/// Drives a learner with outcomes drawn from `seed`, so two learners fed the same seed
/// see the same world.
fn drive(l: &mut Learner, steps: usize, seed: u64) -> Vec<quiver_bandit::Decision> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut decisions = Vec::new();
    let mut late = Vec::new();
    for step in 0..steps {
        let x = vec![1.0, rng.random_range(-1.0..1.0), rng.random_range(0.0..1.0)];
        let d = l.decide(&request(x)).expect("decide");
        let a = arm_index(&d.arm);
        let cost = 0.001 * (a + 1) as f64;
        let quality = if rng.random::<f64>() < 0.3 + 0.2 * a as f64 {
            1.0
        } else {
            0.0
        };
        l.record_outcome(d.id, &Outcome::new(100.0 + 10.0 * a as f64, cost))
            .expect("outcome");
        // Every third quality arrives five decisions late.
        if step % 3 == 0 {
            late.push((d.id, quality));
        } else {
            l.record_quality(d.id, quality).expect("quality");
        }
        if late.len() > 5 {
            let (id, q) = late.remove(0);
            l.record_quality(id, q).expect("late quality");
        }
        decisions.push(d);
    }
    decisions
}

#[test]
fn snapshot_round_trips_and_restored_learner_decides_bit_identically() {
    for spec in [
        "eps(0.1,floor=0.02)",
        "beta-ts(gamma=0.99)",
        "gaussian-ts(window=50)",
        "linucb(alpha=0.4)",
        "lints(v=0.3,floor=0.01)",
        "ucb1",
    ] {
        let mut config = LearnerConfig::new(spec.parse().expect("spec"), 3);
        config.seed = 42;
        config.objective = Objective::new(10.0, 0.01).expect("objective");
        config.budget = Some(BudgetConfig {
            target_usd_per_request: 0.002,
            step_size: 0.05,
        });
        let arms = (0..3).map(|a| Arm::new(format!("a{a}"))).collect();
        let mut original = Learner::new(config, arms).expect("learner");
        drive(&mut original, 300, 7);

        let text = json(&original);
        let snapshot: Snapshot = serde_json::from_str(&text).expect("parse");
        let mut restored = Learner::restore(snapshot).expect("restore");
        assert_eq!(restored, original, "{spec}: restore is not exact");
        assert_eq!(json(&restored), text);

        let a = drive(&mut original, 200, 8);
        let b = drive(&mut restored, 200, 8);
        assert_eq!(a, b, "{spec}: decisions diverged after restore");
        assert_eq!(json(&original), json(&restored));
    }
}

/// A learner takes another way of finding its propensities and keeps what it learned (its
/// decisions' arms are the same: the draw that picks the arm comes first); a spec that
/// differs in anything else is refused and changes nothing.
#[test]
fn a_learner_adopts_other_draws_and_nothing_else() {
    let config = LearnerConfig::new("lints(v=0.3,draws=256)".parse().expect("spec"), 3);
    let arms = (0..3).map(|a| Arm::new(format!("a{a}"))).collect();
    let mut original = Learner::new(config, arms).expect("learner");
    drive(&mut original, 200, 7);
    let mut exact = original.clone();
    exact
        .adopt_draws(&"lints(v=0.3)".parse().expect("spec"))
        .expect("adopt");
    assert_eq!(
        exact.config().policy.to_string(),
        "lints(v=0.3,lambda=10,draws=0)"
    );
    let (a, b) = (drive(&mut original, 100, 8), drive(&mut exact, 100, 8));
    assert!(a.iter().zip(&b).all(|(a, b)| a.arm == b.arm && a.id == b.id));
    assert!(b.iter().all(|d| d.propensity_kind == PropensityKind::Exact));
    let before = json(&exact);
    assert!(exact.adopt_draws(&"lints(v=0.2)".parse().expect("spec")).is_err());
    assert_eq!(json(&exact), before);
}

/// A snapshot without the tracked decisions, restored and told again what it already
/// learned (`resume_*`), equals the learner it was taken from: the same decisions await
/// the same parts of their feedback, with the same features.
#[test]
fn a_snapshot_without_tracked_decisions_resumes_them_from_a_journal() {
    enum Event {
        Decision(u64, String, Vec<f64>),
        Outcome(u64, Outcome),
        Quality(u64, f64),
    }
    let mut config = LearnerConfig::new("lints(v=0.3)".parse().expect("spec"), 3);
    config.max_tracked_decisions = 8;
    let arms = (0..3).map(|a| Arm::new(format!("a{a}"))).collect();
    let mut original = Learner::new(config, arms).expect("learner");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut journal = Vec::new();
    for step in 0..40u64 {
        let x = vec![1.0, rng.random_range(-1.0..1.0), rng.random_range(0.0..1.0)];
        let d = original.decide(&request(x.clone())).expect("decide");
        journal.push(Event::Decision(d.id, d.arm, x));
        // Outcome only, quality only, both, a failed call (quality 0), or nothing yet.
        let outcome = match step % 5 {
            0 | 2 => Some(Outcome::new(90.0, 0.002)),
            3 => Some(Outcome::new(90.0, 0.0).failed()),
            _ => None,
        };
        if let Some(outcome) = outcome {
            original.record_outcome(d.id, &outcome).expect("outcome");
            journal.push(Event::Outcome(d.id, outcome));
        }
        if step % 5 == 1 || step % 5 == 2 {
            original.record_quality(d.id, 0.6).expect("quality");
            journal.push(Event::Quality(d.id, 0.6));
        }
    }
    let oldest = original.oldest_tracked_decision().expect("tracked");
    assert_eq!(oldest, 32, "the horizon keeps the last 8");

    let mut restored = Learner::restore(original.snapshot_without_tracked()).expect("restore");
    assert_ne!(restored, original);
    assert!(matches!(
        restored.record_quality(oldest, 0.5).unwrap_err().kind(),
        ErrorKind::UnknownDecision(_)
    ));
    for event in &journal {
        match event {
            Event::Decision(id, arm, x) if *id >= oldest => restored
                .resume_decision(*id, arm, &request(x.clone()).context)
                .expect("resume decision"),
            Event::Outcome(id, outcome) if *id >= oldest => {
                restored.resume_outcome(*id, outcome).expect("resume outcome")
            }
            Event::Quality(id, q) if *id >= oldest => {
                restored.resume_quality(*id, *q).expect("resume quality")
            }
            _ => {}
        }
    }
    assert_eq!(restored, original);
    // Late outcomes, with a quality that conflicts where another was learned: both
    // answer alike.
    for id in oldest..40 {
        let late = Outcome::new(90.0, 0.002).with_quality(0.9);
        let (r, o) = (
            restored.record_outcome(id, &late),
            original.record_outcome(id, &late),
        );
        assert_eq!(format!("{r:?}"), format!("{o:?}"), "decision {id}");
    }
    assert_eq!(json(&restored), json(&original));
}

#[test]
fn snapshots_from_another_version_or_inconsistent_are_refused() {
    let l = learner("ucb1", 2, 1, 0);
    let mut s = l.snapshot();
    s.format_version = 99;
    assert_eq!(
        Learner::restore(s).unwrap_err().to_string(),
        "snapshot format version 99 is not supported (this build reads version 1)"
    );
    let mut value: serde_json::Value = serde_json::to_value(l.snapshot()).expect("value");
    value["learner"]["arms"].as_array_mut().expect("arms").pop();
    let broken: Snapshot = serde_json::from_value(value).expect("still parses");
    assert!(Learner::restore(broken)
        .unwrap_err()
        .to_string()
        .starts_with("corrupt snapshot"));
}

#[test]
fn non_finite_numbers_are_rejected_and_change_nothing() {
    let mut l = learner("lints", 2, 2, 0);
    let d = l.decide(&request(vec![1.0, 0.0])).expect("decide");
    let before = json(&l);
    let err = l.decide(&request(vec![1.0, f64::NAN])).unwrap_err();
    assert_eq!(err.to_string(), "features[1] is NaN; every number must be finite");
    assert!(l.decide(&request(vec![1.0])).is_err());
    let err = l
        .record_outcome(d.id, &Outcome::new(f64::INFINITY, 0.0))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "outcome.latency_ms is inf; every number must be finite"
    );
    assert!(l.record_outcome(d.id, &Outcome::new(1.0, f64::NAN)).is_err());
    assert!(l.record_quality(d.id, f64::NAN).is_err());
    assert_eq!(
        l.record_quality(d.id, 1.5).unwrap_err().to_string(),
        "quality is 1.5, outside [0, 1]"
    );
    let mut bad_weights = request(vec![1.0, 0.0]);
    bad_weights.objective = Some(Objective {
        w_cost: f64::NAN,
        w_latency: 0.0,
    });
    assert!(l.decide(&bad_weights).is_err());
    let mut bad_calls = request(vec![1.0, 0.0]);
    bad_calls.costs_under_way = vec![0.001, f64::INFINITY];
    assert_eq!(
        l.decide(&bad_calls).unwrap_err().to_string(),
        "costs_under_way[1] is inf; every number must be finite"
    );
    bad_calls.costs_under_way = vec![-0.001];
    assert!(l.decide(&bad_calls).is_err());
    assert_eq!(json(&l), before);
}

#[test]
fn arms_added_at_run_time_are_tried_and_removed_arms_never_chosen() {
    for spec in [
        "ucb1",
        "linucb(alpha=0.5)",
        "gaussian-ts",
        "beta-ts",
        "lints(v=0.2)",
    ] {
        let mut l = learner(spec, 2, 3, 5);
        drive(&mut l, 300, 1);
        l.add_arm(Arm::new("a2")).expect("add");
        assert!(l.add_arm(Arm::new("a2")).is_err());
        let decisions = drive(&mut l, 30, 2);
        assert!(
            decisions.iter().any(|d| d.arm == "a2"),
            "{spec}: the new arm was not tried in 30 decisions"
        );
        let pending = l.decide(&request(vec![1.0, 0.0, 0.5])).expect("decide");
        l.remove_arm("a0").expect("remove");
        let decisions: Vec<_> = (0..50)
            .map(|_| l.decide(&request(vec![1.0, 0.2, 0.5])).expect("decide"))
            .collect();
        assert!(decisions.iter().all(|d| d.arm != "a0" && d.arms.len() == 2));
        let ack = l.record_quality(pending.id, 1.0).expect("feedback after removal");
        let expected = if pending.arm == "a0" {
            Applied::ArmRemoved
        } else {
            Applied::Applied
        };
        assert_eq!(ack, expected);
    }
}

#[test]
fn constraints_restrict_the_choice_and_explain_exclusions() {
    let arms = vec![
        Arm::new("big")
            .with_prices(1e-5, 3e-5)
            .with_context_window(128_000)
            .with_tag("vision"),
        Arm::new("small")
            .with_prices(1e-7, 4e-7)
            .with_context_window(8_000),
        Arm::new("mid")
            .with_prices(1e-6, 2e-6)
            .with_context_window(32_000)
            .with_tag("vision"),
    ];
    let mut l = Learner::new(LearnerConfig::new("lints".parse().expect("spec"), 1), arms).expect("learner");
    let long = Request::new(Context {
        features: vec![1.0],
        input_tokens: 20_000,
    });
    for _ in 0..30 {
        assert_ne!(l.decide(&long).expect("decide").arm, "small");
    }
    let mut cheap_vision = long.clone();
    cheap_vision.constraints = Constraints {
        require_tags: ["vision".to_string()].into(),
        max_cost_usd: Some(0.1),
        ..Constraints::default()
    };
    // big: 20000 * 1e-5 + 256 * 3e-5 = $0.208 > $0.1; mid: $0.0205.
    let d = l.decide(&cheap_vision).expect("decide");
    assert_eq!(d.arm, "mid");
    assert_eq!(d.propensity, 1.0);
    assert_eq!(d.excluded.len(), 2);
    cheap_vision.constraints.max_cost_usd = Some(0.001);
    let err = l.decide(&cheap_vision).unwrap_err().to_string();
    assert!(
        err.contains("no arm is eligible") && err.contains("mid: expected cost"),
        "{err}"
    );
}

/// A request rebuilt from what a decision log records of it (the models left out as
/// unavailable, the models it admitted, its own trade-off over the route's) decides as the
/// request did, its tags, cost bound and the models' context windows all in the models it
/// admitted.
#[test]
fn a_request_rebuilt_from_its_logged_terms_decides_as_it_did() {
    let arms = vec![
        Arm::new("big").with_prices(1e-5, 3e-5).with_tag("vision"),
        Arm::new("small").with_prices(1e-7, 4e-7),
        Arm::new("mid").with_prices(1e-6, 2e-6).with_tag("vision"),
        Arm::new("tiny")
            .with_prices(5e-8, 1e-7)
            .with_context_window(8_000),
    ];
    let route = Objective::new(20.0, 0.5).expect("objective");
    let mut config = LearnerConfig::new("lints(v=0.3,draws=0)".parse().expect("spec"), 2);
    config.objective = route;
    let mut l = Learner::new(config, arms).expect("learner");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..200 {
        let r = request(vec![1.0, rng.random_range(-1.0..1.0)]);
        let d = l.decide(&r).expect("decide");
        let q = if d.arm == "big" { 0.9 } else { 0.5 } + rng.random_range(-0.1..0.1);
        l.record_outcome(d.id, &Outcome::new(300.0, 0.001).with_quality(q))
            .expect("outcome");
    }
    let constraints = [
        Constraints::default(),
        Constraints {
            require_tags: ["vision".to_string()].into(),
            ..Constraints::default()
        },
        Constraints {
            require_tags: ["vision".to_string()].into(),
            max_cost_usd: Some(0.1),
            ..Constraints::default()
        },
        Constraints {
            exclude_tags: ["vision".to_string()].into(),
            ..Constraints::default()
        },
        Constraints {
            only_arms: ["big".to_string(), "tiny".to_string(), "gone".to_string()].into(),
            ..Constraints::default()
        },
    ];
    let owns = [
        ObjectiveOverride::default(),
        ObjectiveOverride {
            w_cost: Some(0.0),
            w_latency: None,
        },
        ObjectiveOverride {
            w_cost: Some(400.0),
            w_latency: Some(2.0),
        },
    ];
    let mut pmfs = Vec::new();
    for tokens in [100, 20_000] {
        for c in &constraints {
            for own in owns {
                for unavailable in [vec![], vec!["small".to_string()]] {
                    let mut asked = Request::new(Context {
                        features: vec![1.0, 0.3],
                        input_tokens: tokens,
                    });
                    asked.constraints = c.clone();
                    asked.objective = (own != ObjectiveOverride::default()).then(|| own.over(route));
                    asked.unavailable = unavailable
                        .iter()
                        .map(|m| (m.clone(), "breaker open".into()))
                        .collect();
                    let terms = LoggedTerms {
                        unavailable,
                        admitted: l.clone().decide(&asked).expect("decide").admitted,
                        objective: own,
                    };
                    let rebuilt = terms.request(asked.context.clone(), route);
                    assert!(
                        rebuilt.constraints.require_tags.is_empty()
                            && rebuilt.constraints.max_cost_usd.is_none()
                    );
                    assert_eq!(rebuilt.objective, asked.objective);
                    let pmf = l.clone().decide_pmf(&asked).expect("decide").pmf;
                    assert_eq!(
                        l.clone().decide_pmf(&rebuilt).expect("decide").pmf,
                        pmf,
                        "{c:?} {own:?}"
                    );
                    pmfs.push(pmf);
                }
            }
        }
    }
    // The terms matter: the cases decide in many different ways.
    pmfs.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    pmfs.dedup();
    assert!(pmfs.len() >= 10, "{} distinct choices", pmfs.len());
    // What is admitted: every model, none named; the tag's; within the bound (big:
    // 20,000 * 1e-5 + 256 * 3e-5 = $0.208 > $0.1); the prompt too long for a window.
    let admitted = |tokens: u32, c: &Constraints| {
        let mut asked = Request::new(Context {
            features: vec![1.0, 0.3],
            input_tokens: tokens,
        });
        asked.constraints = c.clone();
        l.clone().decide(&asked).expect("decide").admitted
    };
    assert!(admitted(100, &constraints[0]).is_empty());
    assert_eq!(admitted(100, &constraints[1]), ["big", "mid"]);
    assert_eq!(admitted(20_000, &constraints[2]), ["mid"]);
    assert_eq!(admitted(20_000, &constraints[0]), ["big", "small", "mid"]);
    assert_eq!(admitted(20_000, &constraints[4]), ["big"]);
}

#[test]
fn fallback_lists_the_other_eligible_arms_by_estimated_reward() {
    let mut l = learner("eps(0.0)", 4, 1, 0);
    let qualities = [0.2, 0.9, 0.5, 0.7];
    // Greedy with optimistic untried arms: each arm is tried once, then the best repeats.
    for _ in 0..20 {
        let d = l.decide(&request(vec![1.0])).expect("decide");
        let q = qualities[arm_index(&d.arm)];
        l.record_outcome(d.id, &Outcome::new(10.0, 0.0).with_quality(q))
            .expect("outcome");
    }
    let d = l.decide(&request(vec![1.0])).expect("decide");
    assert_eq!(d.arm, "a1");
    assert_eq!(d.fallback, vec!["a3", "a2", "a0"]);
}

#[test]
fn propose_previews_decide_without_changing_state() {
    for spec in ["lints(v=0.3,floor=0.05)", "eps(0.3)", "beta-ts"] {
        let mut l = learner(spec, 3, 3, 9);
        drive(&mut l, 50, 3);
        let before = json(&l);
        let r = request(vec![1.0, 0.2, 0.7]);
        let proposed = l.propose(&r).expect("propose");
        assert_eq!(json(&l), before, "{spec}: propose changed the learner");
        assert_eq!(l.decide(&r).expect("decide"), proposed, "{spec}");
        assert_ne!(json(&l), before);
    }
}

/// The lean path chooses what `decide` chooses and leaves the same state behind.
#[test]
fn decide_arm_equals_decide_without_the_explanation() {
    for spec in [
        "linucb(alpha=0.5,floor=0.05)",
        "lints(v=0.3)",
        "eps(0.3)",
        "beta-ts",
    ] {
        let (mut full, mut lean) = (learner(spec, 3, 3, 9), learner(spec, 3, 3, 9));
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..200 {
            let r = request(vec![1.0, rng.random(), rng.random()]);
            let d = full.decide(&r).expect("decide");
            let c = lean.decide_arm(&r).expect("decide_arm");
            assert_eq!(
                (c.id, c.arm, c.propensity),
                (d.id, arm_index(&d.arm), d.propensity),
                "{spec}"
            );
            let outcome = Outcome::new(50.0, 0.001).with_quality(rng.random());
            full.record_outcome(d.id, &outcome).expect("outcome");
            lean.record_outcome(c.id, &outcome).expect("outcome");
        }
        assert_eq!(json(&full), json(&lean), "{spec}");
    }
}

/// A caller that keeps its own pending decisions (a replay) gets the same decisions and
/// ends in the same learned state as one whose decisions the learner tracks: cost at once
/// (the budget pacer sees it), quality after a delay, some qualities never, and failed
/// calls with quality 0 in the outcome; linear models with change detection (the default).
#[test]
fn untracked_decisions_learn_what_tracked_ones_learn() {
    for spec in ["linucb(alpha=0.5)", "lints(v=0.3)", "beta-ts"] {
        let paced = |spec: &str| {
            let mut config = LearnerConfig::new(spec.parse().expect("spec"), 3);
            config.seed = 5;
            config.budget = Some(BudgetConfig {
                target_usd_per_request: 0.002,
                step_size: 0.05,
            });
            let arms = (0..3).map(|a| Arm::new(format!("a{a}"))).collect();
            Learner::new(config, arms).expect("learner")
        };
        let (mut tracked, mut untracked) = (paced(spec), paced(spec));
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let mut pending = std::collections::VecDeque::new();
        for step in 0..400 {
            let r = request(vec![1.0, rng.random(), rng.random()]);
            let d = tracked.decide_arm(&r).expect("decide");
            let u = untracked.decide_untracked(&r).expect("decide");
            untracked
                .hold_untracked(u.id, u.arm, &r.context.features)
                .expect("hold");
            assert_eq!(
                (u.id, u.arm, u.propensity),
                (d.id, d.arm, d.propensity),
                "{spec}, step {step}"
            );
            let cost = 0.001 * (d.arm + 1) as f64;
            let outcome = if rng.random::<f64>() < 0.1 {
                Outcome::new(30.0, cost).failed()
            } else {
                Outcome::new(80.0, cost)
            };
            tracked.record_outcome(d.id, &outcome).expect("outcome");
            untracked
                .record_untracked_outcome(u.id, u.arm, &r.context, &outcome)
                .expect("outcome");
            if !outcome.error && rng.random::<f64>() < 0.8 {
                let quality = (0.3 * d.arm as f64 + 0.4 * r.context.features[1]).min(1.0);
                pending.push_back((step + 3, d.id, d.arm, r.context.features.clone(), quality));
            }
            while pending.front().is_some_and(|p| p.0 <= step) {
                let (_, id, arm, features, quality) = pending.pop_front().expect("due");
                tracked.record_quality(id, quality).expect("quality");
                untracked
                    .record_untracked_quality(id, arm, &features, quality)
                    .expect("quality");
            }
        }
        let state = |l: &Learner| serde_json::to_string(&l.snapshot_without_tracked()).expect("serialize");
        assert_eq!(state(&tracked), state(&untracked), "{spec}");
        assert!(untracked
            .record_untracked_quality(0, 3, &[1.0, 0.0, 0.0], 0.5)
            .is_err());
        assert!(untracked
            .record_untracked_quality(0, 0, &[1.0, 0.0, 0.0], f64::NAN)
            .is_err());
        assert!(untracked
            .record_untracked_quality(0, 0, &[1.0, f64::INFINITY, 0.0], 0.5)
            .is_err());
        assert!(untracked
            .record_untracked_quality(0, 0, &[1.0, 0.0], 0.5)
            .is_err());
        let bad = request(vec![1.0, f64::NAN, 0.0]).context;
        assert!(untracked
            .record_untracked_outcome(0, 0, &bad, &Outcome::new(1.0, 0.0))
            .is_err());
        assert_eq!(
            state(&untracked),
            state(&tracked),
            "rejected feedback changes nothing"
        );
        let unknown = untracked.record_quality(0, 0.5).expect_err("untracked");
        assert!(matches!(unknown.kind(), ErrorKind::UnknownDecision(0)), "{spec}");
    }
}

#[test]
fn learn_takes_outcomes_of_decisions_made_elsewhere() {
    let mut l = learner("ucb1", 2, 1, 0);
    let context = Context {
        features: vec![1.0],
        input_tokens: 10,
    };
    l.learn("a1", &context, &Outcome::new(120.0, 0.002).with_quality(0.25))
        .expect("learn");
    assert_eq!(l.usage(1).requests, 1);
    assert_eq!(l.usage(1).cost_usd, 0.002);
    let d = l.propose(&Request::new(context.clone())).expect("propose");
    let a1 = d.arms.iter().find(|a| a.arm == "a1").expect("a1");
    assert_eq!(a1.quality, 0.25);
    assert_eq!(l.next_decision_id(), 0, "learn is not a decision");
    assert!(l.learn("zz", &context, &Outcome::new(1.0, 0.0)).is_err());
    let nan = Context {
        features: vec![f64::NAN],
        input_tokens: 0,
    };
    assert!(l.learn("a0", &nan, &Outcome::new(1.0, 0.0)).is_err());
}

/// Arms without prices learn what a request costs in its context: the estimate is the
/// per-token ratio (here, with equal prompt sizes, the mean cost so far) plus a ridge
/// regression on the features of what the ratio missed at each observation, checked
/// against the normal equations on the same sequence. So the cheaper arm can differ by
/// context; with the ratio alone both contexts (same prompt size) rank the arms the same.
#[test]
fn unpriced_arms_learn_their_cost_per_context() {
    let mut config = LearnerConfig::new("eps(0)".parse().expect("spec"), 2);
    config.objective = Objective::new(100.0, 0.0).expect("objective");
    let mut l = Learner::new(config, vec![Arm::new("a0"), Arm::new("a1")]).expect("learner");
    let context = |t: f64| Context {
        features: vec![1.0, t],
        input_tokens: 100,
    };
    // a0 is cheap on task 0 and dear on task 1; a1 the other way round. Same quality.
    let cost = |arm: usize, t: f64| if (arm == 0) == (t == 0.0) { 0.001 } else { 0.004 };
    // The normal equations of a0's residuals: (I + sum x x') theta = sum (c - mean so far) x.
    let (mut a, mut b) = (
        nalgebra::DMatrix::<f64>::identity(2, 2),
        nalgebra::DVector::<f64>::zeros(2),
    );
    let mut spent = 0.0;
    for i in 0..40 {
        let t = f64::from(i % 2);
        for arm in 0..2 {
            let outcome = Outcome::new(100.0, cost(arm, t)).with_quality(0.5);
            l.learn(&format!("a{arm}"), &context(t), &outcome).expect("learn");
        }
        let x = nalgebra::DVector::from_vec(vec![1.0, t]);
        let mean_so_far = if i == 0 { 0.0 } else { spent / f64::from(i) };
        a += &x * x.transpose();
        b += &x * (cost(0, t) - mean_so_far);
        spent += cost(0, t);
    }
    let theta = a.lu().solve(&b).expect("solve");
    for t in [0.0, 1.0] {
        let d = l.propose(&Request::new(context(t))).expect("propose");
        let a0 = d.arms.iter().find(|e| e.arm == "a0").expect("a0");
        let want = spent / 40.0 + theta[0] + t * theta[1];
        assert!((a0.cost_usd - want).abs() < 1e-12, "{} vs {want}", a0.cost_usd);
        assert_eq!(d.arm, if t == 0.0 { "a0" } else { "a1" }, "task {t}");
    }
}

/// Priced arms learn how long their answers are in each context: the estimate is the
/// arm's mean answer so far plus a ridge regression on the features of what that mean
/// missed at each answer after the first (the first has no mean to miss), checked against
/// the normal equations on the same sequence. An answer's tokens are the reported ones, or
/// those the cost implies at the prices when the outcome reports none. So the cheaper arm
/// differs by context at equal prices, which the mean answer alone cannot tell; an arm
/// whose prices go forgets its correction, which was in tokens.
#[test]
fn priced_arms_learn_their_answer_length_per_context() {
    let (input_price, output_price) = (1e-6, 4e-6);
    let priced = |id: &str| Arm::new(id).with_prices(input_price, output_price);
    let mut config = LearnerConfig::new("eps(0)".parse().expect("spec"), 2);
    config.objective = Objective::new(100.0, 0.0).expect("objective");
    let mut l = Learner::new(config.clone(), vec![priced("a0"), priced("a1")]).expect("learner");
    let context = |t: f64| Context {
        features: vec![1.0, t],
        input_tokens: 100,
    };
    // a0 answers briefly on task 0 and at length on task 1; a1 the other way round.
    let answer = |arm: usize, t: f64| if (arm == 0) == (t == 0.0) { 20.0 } else { 600.0 };
    let (mut a, mut b) = (
        nalgebra::DMatrix::<f64>::identity(2, 2),
        nalgebra::DVector::<f64>::zeros(2),
    );
    let mut answered = 0.0;
    for i in 0..40 {
        let t = f64::from(i % 2);
        for arm in 0..2 {
            let tokens = answer(arm, t);
            let cost = 100.0 * input_price + tokens * output_price;
            // a0 reports its tokens, a1 only its cost.
            let outcome = match arm {
                0 => Outcome::new(100.0, cost).with_tokens(100, tokens as u32),
                _ => Outcome::new(100.0, cost),
            };
            l.learn(&format!("a{arm}"), &context(t), &outcome.with_quality(0.5))
                .expect("learn");
        }
        if i > 0 {
            let x = nalgebra::DVector::from_vec(vec![1.0, t]);
            a += &x * x.transpose();
            b += &x * (answer(0, t) - answered / f64::from(i));
        }
        answered += answer(0, t);
    }
    let theta = a.lu().solve(&b).expect("solve");
    for t in [0.0, 1.0] {
        let d = l.propose(&Request::new(context(t))).expect("propose");
        let a0 = d.arms.iter().find(|e| e.arm == "a0").expect("a0");
        let want = 100.0 * input_price + (answered / 40.0 + theta[0] + t * theta[1]) * output_price;
        assert!((a0.cost_usd - want).abs() < 1e-15, "{} vs {want}", a0.cost_usd);
        assert_eq!(d.arm, if t == 0.0 { "a0" } else { "a1" }, "task {t}");
    }
    let unpriced = [Arm::new("a0"), priced("a1")];
    l.reconfigure(config, &unpriced).expect("reconfigure");
    let d = l.propose(&Request::new(context(1.0))).expect("propose");
    let a0 = d.arms.iter().find(|e| e.arm == "a0").expect("a0");
    let ratio = l.usage(0).cost_usd / l.usage(0).input_tokens;
    assert!((a0.cost_usd - 100.0 * ratio).abs() < 1e-15, "{}", a0.cost_usd);
}

/// A priced model not yet called is expected to answer as long as the route's priced
/// models did, not the configured default, so that a budget does not take it for dearer
/// than the ones it tried.
#[test]
fn a_priced_model_not_yet_called_expects_the_routes_answers() {
    let arms = vec![
        Arm::new("a0").with_prices(1e-6, 4e-6),
        Arm::new("a1").with_prices(2e-6, 8e-6),
        Arm::new("a2").with_prices(3e-6, 1.2e-5),
    ];
    let mut l = Learner::new(LearnerConfig::new("eps(0)".parse().expect("spec"), 2), arms).expect("learner");
    let context = Context {
        features: vec![1.0, 0.0],
        input_tokens: 100,
    };
    let cost_of = |l: &Learner, arm: &str| {
        let d = l.propose(&Request::new(context.clone())).expect("propose");
        d.arms.iter().find(|e| e.arm == arm).expect("arm").cost_usd
    };
    // Before any answer: the configured default of 256 tokens.
    assert!((cost_of(&l, "a1") - (100.0 * 2e-6 + 256.0 * 8e-6)).abs() < 1e-15);
    for output in [20, 40] {
        let outcome = Outcome::new(10.0, 0.0).with_tokens(100, output);
        l.learn("a0", &context, &outcome).expect("learn");
    }
    // a0 answered in 30 tokens on average: so do a1 and a2 until they answer. a0 itself
    // expects 10 more here, its correction for this context (the second answer was 20
    // over the first; ridge 1 on one row: 20 / 2).
    assert!((cost_of(&l, "a0") - (100.0 * 1e-6 + 40.0 * 4e-6)).abs() < 1e-15);
    assert!((cost_of(&l, "a1") - (100.0 * 2e-6 + 30.0 * 8e-6)).abs() < 1e-15);
    l.learn("a1", &context, &Outcome::new(10.0, 0.0).with_tokens(100, 90))
        .expect("learn");
    // The route's mean is now (20 + 40 + 90) / 3 = 50 tokens; a1 keeps its own.
    assert!((cost_of(&l, "a1") - (100.0 * 2e-6 + 90.0 * 8e-6)).abs() < 1e-15);
    assert!((cost_of(&l, "a2") - (100.0 * 3e-6 + 50.0 * 1.2e-5)).abs() < 1e-15);
}

/// A snapshot written before learners had cost models restores, and its learner keeps
/// the per-token cost ratio alone.
#[test]
fn snapshots_without_cost_models_keep_the_per_token_ratio() {
    let mut l = learner("eps(0)", 2, 2, 0);
    let context = |t: f64, tokens: u32| Context {
        features: vec![1.0, t],
        input_tokens: tokens,
    };
    l.learn("a0", &context(0.0, 100), &Outcome::new(10.0, 0.001))
        .expect("learn");
    l.learn("a0", &context(1.0, 300), &Outcome::new(10.0, 0.009))
        .expect("learn");
    let mut value = serde_json::to_value(l.snapshot()).expect("value");
    let removed = value["learner"]
        .as_object_mut()
        .expect("learner")
        .remove("cost_models");
    assert!(removed.is_some_and(|m| !m.is_null()));
    let old: Snapshot = serde_json::from_value(value).expect("old snapshot");
    let restored = Learner::restore(old).expect("restore");
    for (t, tokens) in [(0.0, 100), (1.0, 50)] {
        let d = restored
            .propose(&Request::new(context(t, tokens)))
            .expect("propose");
        let a0 = d.arms.iter().find(|e| e.arm == "a0").expect("a0");
        let ratio = 0.010 / 400.0;
        assert!((a0.cost_usd - f64::from(tokens) * ratio).abs() < 1e-15);
    }
}

/// Feedback is accepted within the learner's memory: with more than
/// `max_tracked_decisions` pending, the oldest are forgotten first, and
/// `forget_decisions_before` forgets exactly the ids below its own. Snapshots keep the
/// pending decisions as a map from id to decision, features included.
#[test]
fn tracked_decisions_are_bounded_and_forgotten_oldest_first() {
    let mut config = LearnerConfig::new("linucb".parse().expect("spec"), 2);
    config.max_tracked_decisions = 5;
    let mut l = Learner::new(config, vec![Arm::new("a0"), Arm::new("a1")]).expect("learner");
    let ids: Vec<u64> = (0..8)
        .map(|i| l.decide(&request(vec![1.0, i as f64])).expect("decide").id)
        .collect();
    let known = |l: &Learner, id: u64| l.quality_would_apply(id, 0.5).is_ok();
    assert!(ids[..3].iter().all(|&id| !known(&l, id)));
    assert!(ids[3..].iter().all(|&id| known(&l, id)));

    l.forget_decisions_before(ids[5]);
    assert!(ids[..5].iter().all(|&id| !known(&l, id)));
    assert!(ids[5..].iter().all(|&id| known(&l, id)));
    assert_eq!(
        l.record_quality(ids[4], 0.5).unwrap_err().kind(),
        &ErrorKind::UnknownDecision(ids[4])
    );

    let value = serde_json::to_value(l.snapshot()).expect("value");
    let tracked = value["learner"]["tracked"].as_object().expect("a map");
    let keys: Vec<&str> = tracked.keys().map(String::as_str).collect();
    assert_eq!(keys, ["5", "6", "7"]);
    assert_eq!(tracked["6"]["features"], serde_json::json!([1.0, 6.0]));
    // The features are let go once both parts of the feedback are in.
    l.record_outcome(ids[6], &Outcome::new(80.0, 0.001).with_quality(0.5))
        .expect("feedback");
    let value = serde_json::to_value(l.snapshot()).expect("value");
    assert_eq!(
        value["learner"]["tracked"]["6"]["features"],
        serde_json::json!([])
    );
    assert_eq!(
        value["learner"]["tracked"]["7"]["features"],
        serde_json::json!([1.0, 7.0])
    );
}

/// `prune=z` removes, per decision, an arm that another beats with confidence at no more
/// cost; a dearer but better arm stays, and without `prune` nothing is removed.
#[test]
fn confidently_dominated_arms_are_pruned() {
    for (spec, pruned) in [
        ("beta-ts(prune=2)", true),
        ("beta-ts", false),
        ("linucb(prune=2)", true),
    ] {
        let mut config = LearnerConfig::new(spec.parse().expect("spec"), 2);
        config.objective = Objective::new(1.0, 0.0).expect("objective");
        let arms = vec![
            Arm::new("cheap-good").with_prices(1e-6, 1e-6),
            Arm::new("dear-bad").with_prices(1e-5, 1e-5),
            Arm::new("dear-best").with_prices(1e-5, 1e-5),
        ];
        let mut l = Learner::new(config, arms).expect("learner");
        let context = Context {
            features: vec![1.0, 0.5],
            input_tokens: 100,
        };
        for i in 0..300 {
            for (arm, p) in [("cheap-good", 0.8), ("dear-bad", 0.3), ("dear-best", 0.95)] {
                let quality = if (i as f64 * 0.618).fract() < p { 1.0 } else { 0.0 };
                l.learn(arm, &context, &Outcome::new(100.0, 1e-4).with_quality(quality))
                    .expect("learn");
            }
        }
        let d = l.decide(&Request::new(context.clone())).expect("decide");
        let listed: Vec<&str> = d.arms.iter().map(|a| a.arm.as_str()).collect();
        assert_eq!(!listed.contains(&"dear-bad"), pruned, "{spec}: {listed:?}");
        assert!(
            listed.contains(&"cheap-good") && listed.contains(&"dear-best"),
            "{spec}: {listed:?}"
        );
        if pruned {
            assert!(
                d.excluded
                    .iter()
                    .any(|r| r.starts_with("dear-bad: dominated by cheap-good")),
                "{:?}",
                d.excluded
            );
        }
    }
}

/// Two wrong answers from a model are no confidence that it is worse than one right 60% of
/// the time at the same price (its bound is 0.58 against the other's 0.50): `prune=2`
/// keeps it, where the plain sample variance (0) once dropped it for good. Ten wrong
/// answers are (0.17).
#[test]
fn an_arm_seen_twice_is_not_dominated_with_confidence() {
    let mut config = LearnerConfig::new("ucb1(prune=2)".parse().expect("spec"), 1);
    config.objective = Objective::new(1.0, 0.0).expect("objective");
    let arms = vec![
        Arm::new("a").with_prices(1e-6, 1e-6),
        Arm::new("b").with_prices(1e-6, 1e-6),
    ];
    let mut l = Learner::new(config, arms).expect("learner");
    let context = Context {
        features: vec![1.0],
        input_tokens: 100,
    };
    let learn = |l: &mut Learner, arm: &str, quality: f64| {
        l.learn(arm, &context, &Outcome::new(100.0, 1e-4).with_quality(quality))
            .expect("learn")
    };
    for i in 0..100 {
        learn(&mut l, "a", f64::from(u8::from(i % 5 < 3)));
    }
    let listed = |l: &Learner| -> Vec<String> {
        let d = l.propose(&Request::new(context.clone())).expect("propose");
        d.arms.iter().map(|a| a.arm.clone()).collect()
    };
    for _ in 0..2 {
        learn(&mut l, "b", 0.0);
    }
    assert_eq!(listed(&l), ["a", "b"]);
    for _ in 0..8 {
        learn(&mut l, "b", 0.0);
    }
    assert_eq!(listed(&l), ["a"]);
}

/// A budget set after the priors were absorbed starts its pacer from their spend curve, as
/// one configured from the start would, also across a snapshot; once the models' prices
/// change the curve no longer describes them, and the next budget starts from 0; a
/// learner over other models than the priors' never takes the curve.
#[test]
fn a_budget_set_later_starts_from_the_priors_spend_curve() {
    use quiver_bandit::prior::{FoldStatistics, PRIORS_VERSION};
    use quiver_bandit::{BudgetPacer, Priors, SpendCurve};
    // Two rows: `a0` is better by 0.5 on both and costs $0.01 against $0.001.
    let (qualities, costs) = ([0.9, 0.4, 0.8, 0.3], [0.01, 0.001, 0.01, 0.001]);
    let curve = SpendCurve::fit(2, &qualities, &costs, &costs).expect("curve");
    // The curve is kept only by a learner over the models it was fitted with.
    let prior = |quality: f64| {
        let mut rows = FoldStatistics::new(2);
        rows.add(0, &[1.0, 0.0], quality);
        rows.fit(1e9).expect("a row")
    };
    let priors = Priors {
        version: PRIORS_VERSION,
        context: "test".into(),
        tasks: Vec::new(),
        dim: 2,
        cap: 1e9,
        source: "test".into(),
        arms: [("a0".to_string(), prior(0.85)), ("a1".to_string(), prior(0.35))].into(),
        spend: Some(curve.clone()),
    };
    let budget = |target| BudgetConfig {
        target_usd_per_request: target,
        step_size: 0.05,
    };
    let mut l = learner("linucb(alpha=0.5)", 2, 2, 1);
    l.absorb_priors(&priors).expect("absorbs");
    assert!(l.pacer().is_none());
    let arms = l.arms().to_vec();
    let mut config = l.config().clone();
    config.budget = Some(budget(0.004));
    let mut l = Learner::restore(serde_json::from_str(&json(&l)).expect("parse")).expect("restore");
    let changes = l.reconfigure(config.clone(), &arms).expect("reconfigures");
    assert!(
        changes[0].ends_with("from the priors' spend curve"),
        "{changes:?}"
    );
    let mut fresh = BudgetPacer::new(0.004, 0.05).expect("pacer");
    let start = fresh.warm_start(&curve, 0.0);
    assert!(start > 0.0, "$0.004 a request cannot pay for a0 everywhere");
    assert_eq!(l.pacer().expect("paces").lambda(), start);

    let repriced = vec![arms[0].clone().with_prices(1e-6, 1e-6), arms[1].clone()];
    config.budget = Some(budget(0.003));
    let changes = l.reconfigure(config, &repriced).expect("reconfigures");
    assert!(
        changes
            .iter()
            .any(|c| c.contains("spend curve") && c.ends_with("dropped")),
        "{changes:?}"
    );
    assert!(changes.iter().any(|c| c.ends_with("from 0")), "{changes:?}");
    assert_eq!(l.pacer().expect("paces").lambda(), 0.0);

    // Over a third model the curve describes other choices, from the first start.
    let mut wider = learner("linucb(alpha=0.5)", 3, 2, 1);
    let coverage = wider.absorb_priors(&priors).expect("absorbs");
    assert_eq!(coverage.without_prior, ["a2"]);
    assert!(coverage.note().expect("a note").contains("spend curve"));
    let mut config = wider.config().clone();
    config.budget = Some(budget(0.004));
    let arms = wider.arms().to_vec();
    let changes = wider.reconfigure(config, &arms).expect("reconfigures");
    assert!(changes.iter().any(|c| c.ends_with("from 0")), "{changes:?}");
    assert_eq!(wider.pacer().expect("paces").lambda(), 0.0);
}

/// The budget pacer's ratio of costs to estimates is of the estimate a decision was made
/// with, on the prompt tokens it was decided on (a provider may bill more than the router
/// counted), and is forgotten when the prices it was of change.
#[test]
fn the_ratio_of_costs_to_estimates_is_of_the_decisions_estimates() {
    let mut config = LearnerConfig::new("ucb1".parse().expect("spec"), 1);
    config.budget = Some(BudgetConfig {
        target_usd_per_request: 0.01,
        step_size: 0.05,
    });
    let arms = vec![Arm::new("a").with_prices(1e-5, 2e-5)];
    let mut l = Learner::new(config.clone(), arms).expect("learner");
    let context = Context {
        features: vec![1.0],
        input_tokens: 100,
    };
    // Its first answer teaches the priced model's answer length: 300 tokens.
    l.learn("a", &context, &Outcome::new(10.0, 0.007).with_tokens(100, 300))
        .expect("learn");
    let d = l.decide(&Request::new(context.clone())).expect("decide");
    let estimate = d.arms[0].cost_usd;
    assert!((estimate - (100.0 * 1e-5 + 300.0 * 2e-5)).abs() < 1e-15);
    // Billed for a prompt of 400 tokens (a template the router did not count) at list
    // prices: the estimate the ratio takes is the decision's, at 100.
    let billed = 400.0 * 1e-5 + 300.0 * 2e-5;
    l.record_outcome(d.id, &Outcome::new(10.0, billed).with_tokens(400, 300))
        .expect("outcome");
    let ratio = l.pacer().expect("paces").cost_ratio();
    assert!(
        (ratio - billed / estimate).abs() < 1e-12,
        "{ratio} vs {}",
        billed / estimate
    );

    let repriced = vec![Arm::new("a").with_prices(2e-5, 2e-5)];
    l.reconfigure(config, &repriced).expect("reconfigures");
    assert_eq!(l.pacer().expect("paces").cost_ratio(), 1.0);
}

/// A new configuration keeps every kept arm's statistics, its pending decisions and their
/// feedback; a removed arm's pending feedback is acknowledged, not learned; a changed
/// policy or dimension is refused.
#[test]
fn reconfiguring_keeps_what_the_kept_arms_learned() {
    let mut l = learner("linucb(alpha=0.5)", 3, 2, 1);
    let mut pending = Vec::new();
    for i in 0..60 {
        let d = l.decide(&request(vec![1.0, (i % 4) as f64 / 4.0])).unwrap();
        if i % 5 == 0 {
            pending.push((d.id, d.arm.clone()));
        } else {
            l.record_outcome(d.id, &Outcome::new(100.0, 0.001).with_quality(0.5))
                .unwrap();
        }
    }
    assert!(pending.iter().any(|(_, a)| a == "a1") && pending.iter().any(|(_, a)| a != "a1"));
    let usage = |l: &Learner, id: &str| {
        l.usage(l.arms().iter().position(|a| a.id == id).unwrap())
            .requests
    };
    let (a0, a2) = (usage(&l, "a0"), usage(&l, "a2"));

    let mut config = l.config().clone();
    config.objective = Objective::new(5.0, 0.0).unwrap();
    config.budget = Some(BudgetConfig {
        target_usd_per_request: 0.002,
        step_size: 0.05,
    });
    let arms = vec![
        Arm::new("a0").with_prices(1e-6, 2e-6),
        Arm::new("a2"),
        Arm::new("a3"),
    ];
    let changes = l.reconfigure(config.clone(), &arms).unwrap();
    assert_eq!(changes.len(), 5, "{changes:?}");
    let ids: Vec<&str> = l.arms().iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["a0", "a2", "a3"]);
    assert_eq!((usage(&l, "a0"), usage(&l, "a2"), usage(&l, "a3")), (a0, a2, 0));
    assert_eq!(l.arms()[0].input_usd_per_token, 1e-6);
    assert_eq!(l.config().objective.w_cost, 5.0);
    assert_eq!(l.pacer().unwrap().target_usd(), 0.002);
    for (id, arm) in &pending {
        let applied = l
            .record_outcome(*id, &Outcome::new(100.0, 0.001).with_quality(1.0))
            .unwrap();
        let expected = if arm == "a1" {
            Applied::ArmRemoved
        } else {
            Applied::Applied
        };
        assert_eq!(applied, expected, "{arm}");
    }
    assert_eq!(
        usage(&l, "a0") + usage(&l, "a2"),
        a0 + a2 + pending.iter().filter(|(_, a)| a != "a1").count() as u64
    );
    // The same configuration again changes nothing.
    assert!(l.reconfigure(config.clone(), &arms).unwrap().is_empty());

    let mut other = config.clone();
    other.policy = "lints".parse().unwrap();
    assert!(l.reconfigure(other, &arms).is_err());
    let mut wider = config;
    wider.dim = 3;
    assert!(l.reconfigure(wider, &arms).is_err());
}

/// Unavailable arms are left out of the decision and its propensities, and named in its
/// exclusions; when the constraints leave nothing else, they are all considered again.
#[test]
fn unavailable_arms_are_skipped_unless_nothing_else_is_left() {
    let mut l = learner("eps(0.2)", 3, 1, 2);
    let mut r = request(vec![1.0]);
    r.unavailable.insert("a1".into(), "circuit open".into());
    for _ in 0..50 {
        let d = l.decide(&r).unwrap();
        assert_ne!(d.arm, "a1");
        assert!(d.arms.iter().all(|e| e.arm != "a1"));
        assert!((d.arms.iter().map(|e| e.probability).sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(d.excluded, ["a1: unavailable (circuit open)"]);
    }
    r.unavailable.insert("a0".into(), "circuit open".into());
    r.constraints.only_arms = ["a0".to_string(), "a1".to_string()].into();
    let d = l.decide(&r).unwrap();
    assert!(d.arm == "a0" || d.arm == "a1");
    assert_eq!(d.arms.len(), 2);
}

/// A `family:` tag puts models in one family whatever their ids say, and a reconfigure
/// that changes the tag moves them: a model with no data of its own takes its family's
/// prompt weights, and alone keeps its flat prior.
#[test]
fn a_family_tag_groups_models_and_a_reconfigure_regroups_them() {
    let config = || LearnerConfig::new("linucb".parse().expect("spec"), 2);
    let arms = |tag: Option<&str>| -> Vec<Arm> {
        ["acme-support", "zeta-7b"]
            .map(|id| tag.map_or_else(|| Arm::new(id), |t| Arm::new(id).with_tag(t)))
            .to_vec()
    };
    // What the untrained model predicts at x = 1 over x = 0: its prompt weight.
    let slope =
        |l: &Learner| l.policy().estimate(1, &[1.0, 1.0]).mean - l.policy().estimate(1, &[1.0, 0.0]).mean;
    let mut l = Learner::new(config(), arms(Some("family:acme"))).expect("learner");
    // The first model's ridge of 10 on its rows, in closed form: A = 10 I + sum x x',
    // b = 10 e_0 + sum r x (its optimistic prior), theta = A^-1 b.
    let (mut a, mut b) = ([[10.0, 0.0], [0.0, 10.0]], [10.0, 0.0]);
    for i in 0..200 {
        let x = [1.0, f64::from(i % 10) / 10.0];
        let r = 0.2 + 0.6 * x[1];
        l.record_untracked_quality(0, 0, &x, r).expect("learn");
        for (j, row) in a.iter_mut().enumerate() {
            row[0] += x[j] * x[0];
            row[1] += x[j] * x[1];
            b[j] += r * x[j];
        }
    }
    let det = a[0][0] * a[1][1] - a[0][1] * a[1][0];
    let family_slope = (a[0][0] * b[1] - a[1][0] * b[0]) / det;
    // The family's pooled model is the first model's alone; the second, with no rows of its
    // own, takes its prompt weight whole.
    let shared = slope(&l);
    assert!(family_slope > 0.2, "{family_slope}");
    assert!((shared - family_slope).abs() < 1e-9, "{shared} vs {family_slope}");
    l.reconfigure(config(), &arms(None)).expect("untag");
    assert!(slope(&l).abs() < 1e-12, "alone: {}", slope(&l));
    l.reconfigure(config(), &arms(Some("family:acme")))
        .expect("tag again");
    assert!((slope(&l) - shared).abs() < 1e-9, "{} vs {shared}", slope(&l));
}

/// The route's default policy randomizes among models whose estimates overlap, giving each
/// a share, where LinUCB, the suite's other learner, gives one model all of it.
#[test]
fn the_default_route_policy_spreads_its_propensity_over_close_models() {
    use quiver_bandit::{DEFAULT_LEARNERS, DEFAULT_ROUTE_POLICY};
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for spec in DEFAULT_LEARNERS {
        let mut l = learner(spec, 3, 2, 1);
        for _ in 0..90 {
            let d = l.decide(&request(vec![1.0, rng.random()])).unwrap();
            let quality = f64::from(u8::from(rng.random_bool(0.5)));
            l.record_outcome(d.id, &Outcome::new(100.0, 0.0).with_quality(quality))
                .unwrap();
        }
        let d = l.decide(&request(vec![1.0, 0.5])).unwrap();
        let shares: Vec<f64> = d.arms.iter().map(|a| a.probability).collect();
        assert!(
            (shares.iter().sum::<f64>() - 1.0).abs() < 1e-9,
            "{spec}: {shares:?}"
        );
        if spec == DEFAULT_ROUTE_POLICY {
            assert!(shares.iter().all(|&p| p > 1e-3), "{spec}: {shares:?}");
        } else {
            assert_eq!(
                shares.iter().copied().fold(0.0, f64::max),
                1.0,
                "{spec}: {shares:?}"
            );
        }
    }
}

/// Every arm's estimate and width at `probes`, and its observation count.
fn estimates(l: &Learner, probes: &[Vec<f64>]) -> Vec<(f64, f64, f64)> {
    let policy = l.policy();
    (0..l.arms().len())
        .flat_map(|arm| {
            probes.iter().map(move |x| {
                let e = policy.estimate(arm, x);
                (e.mean, e.std, policy.observations(arm))
            })
        })
        .collect()
}

fn assert_close(got: &[(f64, f64, f64)], want: &[(f64, f64, f64)], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g.0 - w.0).abs() < 1e-9 && (g.1 - w.1).abs() < 1e-9 && g.2 == w.2,
            "{what}, entry {i}: {g:?} vs {w:?}"
        );
    }
}

/// LinUCB holds a decision awaiting its quality. With every quality late, a cold learner
/// tries each arm in turn: all arms tie at the optimistic prior, and without the holds it
/// would send every request to the first until a quality came. Once the qualities come, it
/// holds what a learner told each at once holds.
#[test]
fn linucb_holds_decisions_awaiting_their_quality() {
    let x = vec![1.0, 0.5];
    let mut late = learner("linucb(alpha=0.5)", 4, 2, 0);
    let decisions: Vec<_> = (0..8)
        .map(|_| late.decide(&request(x.clone())).expect("decide"))
        .collect();
    let first: std::collections::BTreeSet<&str> = decisions[..4].iter().map(|d| d.arm.as_str()).collect();
    assert_eq!(first.len(), 4, "{decisions:?}");
    let mut at_once = learner("linucb(alpha=0.5)", 4, 2, 0);
    for d in &decisions {
        let quality = 0.2 + 0.1 * arm_index(&d.arm) as f64;
        late.record_quality(d.id, quality).expect("quality");
        at_once
            .learn(
                &d.arm,
                &request(x.clone()).context,
                &Outcome::new(0.0, 0.0).with_quality(quality),
            )
            .expect("learn");
    }
    let probes = [x, vec![1.0, -0.3]];
    assert_close(&estimates(&late, &probes), &estimates(&at_once, &probes), "late");
    // Linear TS draws its choices and holds nothing: its decisions leave its state alone.
    let mut drawn = learner("lints(v=0.3)", 4, 2, 0);
    let before = estimates(&drawn, &probes);
    drawn.decide(&request(vec![1.0, 0.5])).expect("decide");
    assert_close(&estimates(&drawn, &probes), &before, "lints");
}

/// A decision is held from the next decision on if its quality has not come by then. A
/// quality that never comes is let go: after the longest recent delay twice over (at
/// least 16 decisions), or after [`HOLD_HORIZON`] decisions before any quality came. A
/// quality that comes after all is learned as any other. With one model and one prompt
/// `x`, `n` rows learned or held give the width `x' (10 I + n x x')^-1 x = s / (1 + n s)`,
/// `s = x'x / 10` (ridge 10).
#[test]
fn a_quality_that_never_comes_is_let_go() {
    let x = vec![1.0, 0.5];
    let s = 1.25 / 10.0;
    let closed_form = |n: u64| s / (1.0 + n as f64 * s);
    let width = |l: &Learner| l.policy().estimate(0, &x).std.powi(2);

    let mut silent = learner("linucb(alpha=0.5)", 1, 2, 0);
    for n in 1..=HOLD_HORIZON + 10 {
        silent.decide(&request(x.clone())).expect("decide");
        // The latest decision is held when the next is decided, and a decision
        // `HOLD_HORIZON` decisions old is let go: with the latest, that many await.
        let (got, want) = (width(&silent), closed_form((n - 1).min(HOLD_HORIZON - 1)));
        assert!((got - want).abs() < 1e-12, "after {n}: {got} vs {want}");
    }

    let mut l = learner("linucb(alpha=0.5)", 1, 2, 0);
    let unjudged = l.decide(&request(x.clone())).expect("decide").id;
    // The others are judged at once: the longest delay is one decision.
    for judged in 1..=40 {
        let d = l.decide(&request(x.clone())).expect("decide");
        l.record_quality(d.id, 0.5).expect("quality");
        let held = u64::from(judged < 16);
        let (got, want) = (width(&l), closed_form(judged + held));
        assert!(
            (got - want).abs() < 1e-12,
            "after {judged} judged: {got} vs {want}"
        );
    }
    l.record_quality(unjudged, 0.5).expect("late quality");
    assert!(
        (width(&l) - closed_form(41)).abs() < 1e-12,
        "{} vs {}",
        width(&l),
        closed_form(41)
    );
    assert_eq!(l.policy().observations(0), 41.0);
}

/// A snapshot keeps what was learned and not the holds, which are the live learner's
/// alone; restarted from it, a learner holds the journal's decisions that await their
/// quality again, lets go of those whose quality the snapshot holds, and estimates and
/// learns the late qualities as the learner that never stopped.
#[test]
fn held_decisions_are_held_again_after_a_restart() {
    let mut original = learner("linucb(alpha=0.5)", 3, 3, 2);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut journal = Vec::new();
    for step in 0..30 {
        let x = vec![1.0, rng.random_range(-1.0..1.0), rng.random_range(0.0..1.0)];
        let d = original.decide(&request(x.clone())).expect("decide");
        let quality = 0.3 + 0.2 * x[1];
        if step % 2 == 0 {
            original.record_quality(d.id, quality).expect("quality");
        }
        journal.push((d.id, d.arm, x, quality, step % 2 == 0));
    }
    let snapshot = original.snapshot_without_tracked();
    let judged: f64 = (0..3).map(|a| snapshot.learner.policy().observations(a)).sum();
    assert_eq!(judged, 15.0, "the snapshot holds nothing");
    let mut restored = Learner::restore(snapshot).expect("restore");
    for (id, arm, x, _, judged) in &journal {
        restored
            .resume_decision(*id, arm, &request(x.clone()).context)
            .expect("resume");
        if *judged {
            restored.resume_quality(*id, 0.0).expect("resume quality");
        }
    }
    let probes: Vec<Vec<f64>> = journal.iter().take(4).map(|j| j.2.clone()).collect();
    // As before the next decision: the latest held, the oldest let go.
    original.hold_latest();
    restored.hold_latest();
    assert_close(
        &estimates(&restored, &probes),
        &estimates(&original, &probes),
        "restored",
    );
    for (id, _, _, quality, judged) in &journal {
        if !judged {
            original.record_quality(*id, *quality).expect("quality");
            restored.record_quality(*id, *quality).expect("quality");
        }
    }
    assert_close(
        &estimates(&restored, &probes),
        &estimates(&original, &probes),
        "judged late",
    );
}
