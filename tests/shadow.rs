//! Shadow candidates on a route, in process: their estimates against the counterfactual
//! truth of the built-in scenario's full-information table, and their state rebuilt from
//! the log on restart.
#![allow(clippy::unwrap_used)]

mod support;

use quiver_bandit::canary::{Promote, Stage};
use quiver_bandit::{Featurizer, HashingFeaturizer, Learner, LearnerConfig, Objective, Outcome, Request};
use quiver_serve::{
    CanaryAction, CanaryConfig, ModelConfig, ObjectiveOverride, RouteConfig, RouteRequest, Router,
    RouterOptions,
};
use quiver_sim::data::WideDataset;
use quiver_sim::scenario::Scenario;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use support::scratch;

/// The demo's route over the scenario's models, with `shadow` candidates.
fn route(scenario: &Scenario, shadow: &[&str]) -> RouteConfig {
    let models = scenario
        .arms
        .iter()
        .map(|a| ModelConfig::priced(&a.id, a.input_usd_per_token * 1e6, a.output_usd_per_token * 1e6))
        .collect();
    RouteConfig {
        w_cost: scenario.objective.w_cost,
        shadow: shadow.iter().map(|s| s.to_string()).collect(),
        ..RouteConfig::new("demo", "lints(v=0.3,floor=0.02,draws=0)", models)
    }
}

/// Serves `rows` of `table` through the route, each decision's outcome carrying the
/// quality and cost the table gives the chosen model.
fn serve(router: &Router, table: &WideDataset, rows: &[usize]) {
    serve_beside(router, table, rows, None, false);
}

/// [`serve`], every third request allowing two models only and every fifth bringing its
/// own trade-off (quality alone), as a request's `constraints` and `objective` do.
fn serve_with_terms(router: &Router, table: &WideDataset, rows: &[usize]) {
    serve_beside(router, table, rows, None, true);
}

/// [`serve`], with `mirror`, a learner of a candidate's policy, run as a shadow runs it:
/// it decides on each request's context (`decide_pmf`), holds the served model's decision
/// (not the one it drew), then learns the served model's outcome. Returns
/// the mirror's true mean quality on the rows, `sum_a pi_i(a) quality(i, a)` averaged.
/// With `terms`, the requests of [`serve_with_terms`].
fn serve_beside(
    router: &Router,
    table: &WideDataset,
    rows: &[usize],
    mut mirror: Option<&mut Learner>,
    terms: bool,
) -> f64 {
    let prompts = table.prompts.as_ref().unwrap();
    let featurizer = HashingFeaturizer::for_routes(0);
    let mut last = None;
    let mut truth = 0.0;
    let mut drawn = None;
    for &r in rows {
        let mut request = RouteRequest {
            prompt: Some(prompts[r].clone()),
            ..RouteRequest::default()
        };
        if terms && r % 3 == 0 {
            request.constraints.only_arms = table.arms[..2].iter().cloned().collect();
        }
        if terms && r % 5 == 0 {
            request.objective = Some(ObjectiveOverride {
                w_cost: Some(0.0),
                w_latency: None,
            });
        }
        let context = featurizer.featurize(&prompts[r], &[]).unwrap();
        if let Some(mirror) = mirror.as_deref_mut() {
            let choice = mirror.decide_pmf(&Request::new(context.clone())).unwrap();
            for (arm, p) in mirror.arms().iter().zip(&choice.pmf) {
                let a = table.arms.iter().position(|m| *m == arm.id).unwrap();
                truth += p * table.quality(r, a);
            }
            drawn = Some(choice.id);
        }
        let routed = router.route("demo", &request).unwrap().split().0;
        let arm = table.arms.iter().position(|a| *a == routed.decision.arm).unwrap();
        let outcome = Outcome::new(200.0, table.cost_usd(r, arm)).with_quality(table.quality(r, arm));
        last = Some(router.record_outcome(&routed.decision_id, &outcome).unwrap());
        if let (Some(mirror), Some(id)) = (mirror.as_deref_mut(), drawn) {
            let served = mirror.arm_index(&routed.decision.arm).unwrap();
            mirror.hold_untracked(id, served, &context.features).unwrap();
            mirror
                .learn_held(id, &routed.decision.arm, &context, &outcome)
                .unwrap();
        }
    }
    last.unwrap().wait().unwrap();
    truth / rows.len() as f64
}

/// A fixed policy's and the uniformly random policy's true mean quality on `rows`: the
/// table shows every model's answer, so the counterfactual is known.
fn truths(table: &WideDataset, rows: &[usize], fixed: usize) -> [f64; 2] {
    let n = rows.len() as f64;
    let k = table.arms.len() as f64;
    let fixed_q = rows.iter().map(|&r| table.quality(r, fixed)).sum::<f64>() / n;
    let random_q = rows
        .iter()
        .map(|&r| (0..table.arms.len()).map(|a| table.quality(r, a)).sum::<f64>() / k)
        .sum::<f64>()
        / n;
    [fixed_q, random_q]
}

/// Over 40 seeds (each its own 800 requests of the scenario's test rows, in its own
/// order), the 95% intervals of a fixed candidate's, a random candidate's and a learning
/// candidate's quality, SNIPS and DR, hold the true value in at least 36. The learning
/// candidate's true value is that of its sequence of policies on the served rows, from a
/// mirror of it run as the shadows run it. The live policy logs exact
/// propensities (`draws=0`): with 256-draw Monte Carlo ones the random candidate's SNIPS
/// interval held it in 17 of the first 20 seeds, since an estimated propensity of a
/// rarely chosen model biases the weights. 36 of 40 is the 90% the shadows are held to;
/// the seeds are fixed, so the test does not flake.
#[test]
fn shadow_intervals_hold_the_true_quality_on_the_builtin_scenario() {
    let scenario = Scenario::builtin().unwrap();
    let (table, _) = scenario.test_and_train();
    let cheapest = (0..table.arms.len())
        .min_by(|&a, &b| {
            let cost = |a: usize| (0..table.rows()).map(|r| table.cost_usd(r, a)).sum::<f64>();
            cost(a).total_cmp(&cost(b))
        })
        .unwrap();
    let fixed = format!("fixed({})", table.arms[cheapest]);
    let seeds = 40;
    let learning = "linucb(alpha=0.1)";
    let mut covered = [[0; 2]; 3];
    for seed in 0..seeds {
        let dir = scratch(&format!("shadow_truth_{seed}"));
        let mut config = route(&scenario, &[&fixed, "random", learning]);
        config.seed = seed;
        let mut mirror_config =
            LearnerConfig::new(learning.parse().unwrap(), HashingFeaturizer::for_routes(0).dim());
        mirror_config.objective = Objective::new(config.w_cost, config.w_latency).unwrap();
        mirror_config.seed = seed;
        let mut mirror = Learner::new(
            mirror_config,
            config.models.iter().map(ModelConfig::arm).collect(),
        )
        .unwrap();
        let router = Router::open(vec![config], &dir).unwrap();
        let mut rows: Vec<usize> = (0..table.rows()).collect();
        rows.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        rows.truncate(800);
        let learned = serve_beside(&router, &table, &rows, Some(&mut mirror), false);
        let report = router.candidates("demo").unwrap().unwrap();
        assert_eq!(report.decisions, 800);
        let [fixed_truth, random_truth] = truths(&table, &rows, cheapest);
        for (i, (c, truth)) in report
            .candidates
            .iter()
            .zip([fixed_truth, random_truth, learned])
            .enumerate()
        {
            for (k, interval) in [&c.quality.snips, &c.quality.dr].into_iter().enumerate() {
                let [lo, hi] = interval.ci95.unwrap();
                covered[i][k] += usize::from(lo <= truth && truth <= hi);
            }
        }
    }
    for (name, row) in [fixed.as_str(), "random", learning].iter().zip(covered) {
        for (estimator, n) in ["snips", "dr"].iter().zip(row) {
            assert!(n >= 36, "{name} ({estimator}): covered in {n} of {seeds} seeds");
        }
    }
}

/// A restarted router rebuilds its shadows from the log to the same estimates (the
/// candidates decide again on every logged decision, with its request's constraints and
/// trade-off, and learn every outcome in the log's order), and the candidates are told of
/// what comes after.
#[test]
fn shadows_are_rebuilt_from_the_log_on_restart() {
    let scenario = Scenario::builtin().unwrap();
    let (table, _) = scenario.test_and_train();
    let dir = scratch("shadow_restart");
    let config = route(&scenario, &["linucb(alpha=0.1)", "beta-ts(draws=64)"]);
    let options = || RouterOptions {
        segment_bytes: 64 * 1024,
        ..RouterOptions::default()
    };
    let rows: Vec<usize> = (0..600).collect();
    let before = {
        let router = Router::open_with(vec![config.clone()], &dir, options()).unwrap();
        serve_with_terms(&router, &table, &rows[..400]);
        router.snapshot().unwrap();
        serve_with_terms(&router, &table, &rows[400..500]);
        router.candidates("demo").unwrap().unwrap()
    };
    assert_eq!(before.decisions, 500);
    assert!(before.candidates.iter().all(|c| c.value.rows == 500));
    let router = Router::open_with(vec![config.clone()], &dir, options()).unwrap();
    assert_eq!(router.candidates("demo").unwrap().unwrap(), before);
    serve(&router, &table, &rows[500..]);
    let after = router.candidates("demo").unwrap().unwrap();
    assert_eq!(after.decisions, 600);
    assert!(after.candidates.iter().all(|c| c.quality.rows == 600));

    // A route without candidates has no report; a candidate that cannot run on the route
    // stops it from opening, named.
    let mut plain = config.clone();
    plain.shadow.clear();
    let router = Router::open(vec![plain], &scratch("shadow_none")).unwrap();
    assert!(router.candidates("demo").unwrap().is_none());
    let mut wrong = config;
    wrong.shadow = vec!["fixed(gpt-9)".into()];
    let err = Router::open(vec![wrong], &scratch("shadow_wrong"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("route `demo`: shadow") && err.contains("gpt-9"),
        "{err}"
    );
}

/// A route whose policy is `policy`, with `canary` serving a fifth of the traffic under
/// `promote = "auto"`, judged after 300 decisions.
fn canary_route(scenario: &Scenario, policy: &str, canary: &str, seed: u64) -> RouteConfig {
    RouteConfig {
        policy: policy.into(),
        seed,
        canary: Some(CanaryConfig {
            policy: canary.into(),
            share: 0.2,
            promote: Promote::Auto,
            min_decisions: 300,
        }),
        ..route(scenario, &[])
    }
}

fn canary_stage(router: &Router) -> Stage {
    router.candidates("demo").unwrap().unwrap().canary.unwrap().stage
}

/// Serves `rows` as [`serve`] does, each model's quality times `factor(model)`; returns
/// the canary's changes of stage, each with the number of requests served when it came.
fn serve_canary(
    router: &Router,
    table: &WideDataset,
    rows: &[usize],
    factor: impl Fn(usize) -> f64,
) -> Vec<(usize, Stage)> {
    let prompts = table.prompts.as_ref().unwrap();
    let mut stage = canary_stage(router);
    let mut changes = Vec::new();
    for (n, &r) in rows.iter().enumerate() {
        let request = RouteRequest {
            prompt: Some(prompts[r].clone()),
            ..RouteRequest::default()
        };
        let routed = router.route("demo", &request).unwrap().wait().unwrap();
        let arm = table.arms.iter().position(|a| *a == routed.decision.arm).unwrap();
        let quality = table.quality(r, arm) * factor(arm);
        let outcome = Outcome::new(200.0, table.cost_usd(r, arm)).with_quality(quality);
        router
            .record_outcome(&routed.decision_id, &outcome)
            .unwrap()
            .wait()
            .unwrap();
        let now = canary_stage(router);
        if now != stage {
            changes.push((n + 1, now));
            stage = now;
        }
    }
    changes
}

/// The model with the best mean value `quality - w_cost cost` on the table.
fn best_model(table: &WideDataset, w_cost: f64) -> usize {
    let value = |a: usize| {
        (0..table.rows())
            .map(|r| table.quality(r, a) - w_cost * table.cost_usd(r, a))
            .sum::<f64>()
    };
    (0..table.arms.len())
        .max_by(|&a, &b| value(a).total_cmp(&value(b)))
        .unwrap()
}

/// On the built-in scenario, with a canary serving a fifth of the traffic and judged after
/// 300 decisions, over three seeds of 2,000 requests: `linucb(alpha=0.1)` in canary beside
/// a uniformly random policy is promoted, and a random canary beside LinUCB is rolled back,
/// never promoted; a canary that always calls the best model (by value) is promoted, then
/// rolled back once that model's quality drops to a fifth after 1,000 requests. The
/// numbers of requests until each change are those of the fixed seeds: a change to the
/// gate, the coins or the learners shows here.
#[test]
fn canaries_are_promoted_when_better_and_rolled_back_when_worse() {
    let scenario = Scenario::builtin().unwrap();
    let (table, _) = scenario.test_and_train();
    let best = best_model(&table, scenario.objective.w_cost);
    let fixed_best = format!("fixed({})", table.arms[best]);
    let open = |policy: &str, canary: &str, seed: u64, name: &str| {
        let config = canary_route(&scenario, policy, canary, seed);
        Router::open(vec![config], &scratch(&format!("canary_{name}_{seed}"))).unwrap()
    };
    let expected = [
        ([300], [581], [300, 1143]),
        ([300], [300], [368, 1203]),
        ([300], [755], [326, 1238]),
    ];
    for (seed, (better_at, worse_at, dropped_at)) in (0..3u64).zip(expected) {
        let mut rows: Vec<usize> = (0..table.rows()).collect();
        rows.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        rows.truncate(2000);
        let router = open("random", "linucb(alpha=0.1)", seed, "better");
        let better = serve_canary(&router, &table, &rows, |_| 1.0);
        assert_eq!(better, [(better_at[0], Stage::Promoted)], "seed {seed}");

        let router = open("linucb(alpha=0.1)", "random", seed, "worse");
        let worse = serve_canary(&router, &table, &rows, |_| 1.0);
        assert_eq!(worse, [(worse_at[0], Stage::RolledBack)], "seed {seed}");

        let router = open("random", &fixed_best, seed, "dropped");
        let mut dropped = serve_canary(&router, &table, &rows[..1000], |_| 1.0);
        let drop = |a: usize| if a == best { 0.2 } else { 1.0 };
        let later = serve_canary(&router, &table, &rows[1000..], drop);
        dropped.extend(later.into_iter().map(|(n, stage)| (n + 1000, stage)));
        let stages = [
            (dropped_at[0], Stage::Promoted),
            (dropped_at[1], Stage::RolledBack),
        ];
        assert_eq!(dropped, stages, "seed {seed}");
        let canary = router.candidates("demo").unwrap().unwrap().canary.unwrap();
        assert_eq!(
            (canary.promotions, canary.rollbacks, canary.serving_share),
            (1, 1, 0.0)
        );
        // The route's own policy learned every outcome throughout, whoever served: its
        // state is intact to take over again.
        let learner = router.learner("demo").unwrap();
        let learned: u64 = (0..table.arms.len()).map(|a| learner.usage(a).requests).sum();
        assert_eq!(learned, 2000);
    }
}

/// A blocked gate holds a canary the figures would promote; unblocked, it promotes it at
/// once, not at the next outcome.
#[test]
fn an_unblocked_gate_judges_at_once() {
    let scenario = Scenario::builtin().unwrap();
    let (table, _) = scenario.test_and_train();
    let config = canary_route(&scenario, "random", "linucb(alpha=0.1)", 0);
    let router = Router::open(vec![config], &scratch("canary_unblock")).unwrap();
    let act = |action| router.canary_action("demo", action).unwrap().wait().unwrap();
    act(CanaryAction::Block);
    let rows: Vec<usize> = (0..700).collect();
    assert_eq!(serve_canary(&router, &table, &rows, |_| 1.0), []);
    let held = router.candidates("demo").unwrap().unwrap().canary.unwrap();
    assert!(
        held.decisions >= 300 && held.canary_value.ci95.unwrap()[0] > held.route_value.value.unwrap(),
        "{held:?}"
    );
    assert_eq!(act(CanaryAction::Unblock).stage, Stage::Promoted);
}

/// A log from before decisions named the policy that served them (record format 3) is
/// rebuilt by the coins that served it, under the same share and seed.
#[test]
fn an_older_log_rebuilds_its_canary_by_the_coins() {
    let scenario = Scenario::builtin().unwrap();
    let (table, _) = scenario.test_and_train();
    let dir = scratch("canary_format_3");
    let config = canary_route(&scenario, "random", "linucb(alpha=0.1)", 0);
    let rows: Vec<usize> = (0..400).collect();
    let before = {
        let router = Router::open(vec![config.clone()], &dir).unwrap();
        serve_canary(&router, &table, &rows, |_| 1.0);
        router.candidates("demo").unwrap().unwrap()
    };
    let canary_spec = before.canary.as_ref().unwrap().policy.clone();
    let mut served = 0;
    for segment in quiver_serve::log::segment_files(&dir).unwrap() {
        let bytes = quiver_serve::log::read_segment(&segment).unwrap();
        let mut text = String::new();
        for line in String::from_utf8(bytes).unwrap().lines() {
            let mut record: serde_json::Value = serde_json::from_str(line).unwrap();
            record["schema"] = 3.into();
            if record["policy"] == canary_spec.as_str() && record["event"] == "decision" {
                record["policy"] = config
                    .policy
                    .parse::<quiver_bandit::PolicySpec>()
                    .unwrap()
                    .to_string()
                    .into();
                served += 1;
            }
            text.push_str(&format!("{record}\n"));
        }
        std::fs::write(&segment, text).unwrap();
    }
    assert!(served > 40, "the canary served {served} of 400");
    let router = Router::open(vec![config], &dir).unwrap();
    assert_eq!(router.candidates("demo").unwrap().unwrap(), before);
}

/// A restart finds the canary where the log left it: its stage, its gate's estimates and
/// its counts are rebuilt from the log's events and decisions, to the bit, whatever share
/// a restart gives it; an operator's change is an event like the gate's.
#[test]
fn a_canary_is_rebuilt_from_the_log_on_restart() {
    let scenario = Scenario::builtin().unwrap();
    let (table, _) = scenario.test_and_train();
    let dir = scratch("canary_restart");
    let config = canary_route(&scenario, "random", "linucb(alpha=0.1)", 0);
    let rows: Vec<usize> = (0..900).collect();
    let before = {
        let router = Router::open(vec![config.clone()], &dir).unwrap();
        serve_canary(&router, &table, &rows[..700], |_| 1.0);
        assert_eq!(canary_stage(&router), Stage::Promoted);
        router.snapshot().unwrap();
        router
            .canary_action("demo", CanaryAction::Block)
            .unwrap()
            .wait()
            .unwrap();
        serve_canary(&router, &table, &rows[700..800], |_| 1.0);
        router.candidates("demo").unwrap().unwrap()
    };
    // Another share and seed on a restart change what the canary serves from then on, not
    // which logged decisions it served: the log names the policy that drew each.
    let mut reshared = config.clone();
    reshared.seed = 5;
    reshared.canary.as_mut().unwrap().share = 0.4;
    let router = Router::open(vec![reshared], &dir).unwrap();
    let (canary, earlier) = (
        router.candidates("demo").unwrap().unwrap().canary.unwrap(),
        before.canary.clone().unwrap(),
    );
    assert_eq!(
        (canary.decisions, canary.route_value, canary.canary_value),
        (earlier.decisions, earlier.route_value, earlier.canary_value)
    );
    assert_eq!(canary.serving_share, 0.6);
    drop(router);
    let router = Router::open(vec![config], &dir).unwrap();
    let after = router.candidates("demo").unwrap().unwrap();
    assert_eq!(after, before);
    let canary = after.canary.unwrap();
    assert!(
        canary.blocked && canary.promotions == 1 && canary.decisions > 0,
        "{canary:?}"
    );
    router
        .canary_action("demo", CanaryAction::RollBack)
        .unwrap()
        .wait()
        .unwrap();
    serve_canary(&router, &table, &rows[800..], |_| 1.0);
    let canary = router.candidates("demo").unwrap().unwrap().canary.unwrap();
    assert_eq!(
        (canary.stage, canary.rollbacks, canary.serving_share),
        (Stage::RolledBack, 1, 0.0)
    );

    // A share the gate cannot take, and a canary on a route shared between replicas, stop
    // the start, named.
    let mut wide = canary_route(&scenario, "random", "eps(0.1)", 0);
    wide.canary.as_mut().unwrap().share = 0.7;
    let err = Router::open(vec![wide], &scratch("canary_wide"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("route `demo`: canary") && err.contains("canary.share"),
        "{err}"
    );
    let unknown = canary_route(&scenario, "random", "fixed(nosuch)", 0);
    let err = Router::open(vec![unknown], &scratch("canary_unknown"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("route `demo`: canary: ") && err.contains("nosuch"),
        "{err}"
    );
    let mut shared = canary_route(&scenario, "random", "random", 0);
    shared.policy = "random(detect=0)".into();
    let options = RouterOptions {
        replica: Some("a".into()),
        ..RouterOptions::default()
    };
    let err = Router::open_with(vec![shared], &scratch("canary_shared"), options)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("a canary is judged on one server's log"), "{err}");
}
