//! Learning on synthetic environments with known truth: regret, best-arm identification,
//! recovery after a change, and budget pacing.

mod support;

use quiver_bandit::{Arm, BudgetConfig, Context, Learner, LearnerConfig, Outcome, Request};
use support::{learner, run, Bernoulli, Linear};

/// Sublinear regret means regret(T) / regret(T/2) clearly below 2 (sqrt(T) growth gives
/// 1.41, log T growth ~1.1); linear regret (uniform random) gives 2 in expectation. "Low"
/// means the regret rate over the last 1,000 rounds is under a tenth of uniform's.
#[test]
fn linear_policies_reach_low_sublinear_regret_where_uniform_grows_linearly() {
    let (arms, dim, steps) = (4, 6, 8000);
    let last_1000 = |r: &support::Run| r.regret_at(steps) - r.regret_at(steps - 1000);
    for seed in 0..3 {
        let mut env = Linear::random(arms, dim, 100 + seed);
        let uniform = run(&mut learner("random", arms, dim, seed), &mut env, steps, seed);
        let uniform_ratio = uniform.regret_at(steps) / uniform.regret_at(steps / 2);
        assert!(
            (uniform_ratio - 2.0).abs() < 0.15,
            "uniform ratio {uniform_ratio}"
        );
        for spec in ["linucb(alpha=0.5)", "lints(v=0.2)"] {
            let r = run(&mut learner(spec, arms, dim, seed), &mut env, steps, seed);
            let ratio = r.regret_at(steps) / r.regret_at(steps / 2);
            assert!(ratio < 1.6, "{spec} seed {seed}: regret ratio {ratio}");
            assert!(
                last_1000(&r) < 0.1 * last_1000(&uniform),
                "{spec} seed {seed}: late regret {} vs uniform {}",
                last_1000(&r),
                last_1000(&uniform)
            );
        }
    }
}

#[test]
fn beta_ts_and_ucb1_find_the_best_arm_of_a_bernoulli_problem() {
    let means = [0.3, 0.5, 0.7, 0.45, 0.6];
    for spec in ["beta-ts", "ucb1", "gaussian-ts", "eps(0.05)"] {
        for seed in 0..3 {
            let mut env = Bernoulli::stationary(&means);
            let mut l = learner(spec, means.len(), 1, seed);
            let r = run(&mut l, &mut env, 6000, seed);
            let share = r.best_share(5000..6000);
            assert!(share > 0.85, "{spec} seed {seed}: best arm share {share}");
            if spec != "eps(0.05)" {
                let ratio = r.regret_at(6000) / r.regret_at(3000);
                assert!(ratio < 1.6, "{spec} seed {seed}: regret ratio {ratio}");
            }
        }
    }
}

/// The best arm (0.8) drops to 0.2 at step 4000 while the other rises from 0.4 to 0.6.
/// A stationary learner needs thousands of rounds to unlearn ~4000 good observations; one
/// that forgets (memory ~1/(1-gamma) = 100, or a 200-step window) switches within 300, and
/// so does one that detects the change (the default `detect=12`: a CUSUM alarm after about
/// 12 / (0.6 - 0.1) = 24 observations of the fallen arm, whose history then counts as 20).
#[test]
fn forgetting_variants_recover_after_the_best_arm_changes_and_stationary_ones_do_not() {
    let change = 4000;
    let window = (change + 300)..(change + 800);
    for (name, own) in [
        ("ucb1", ""),
        ("beta-ts", ""),
        ("gaussian-ts", ""),
        ("eps", "0.05"),
        ("linucb", "alpha=0.3"),
        ("lints", "v=0.2"),
    ] {
        let with = |extra: &str| {
            let args: Vec<&str> = [own, extra].into_iter().filter(|a| !a.is_empty()).collect();
            if args.is_empty() {
                name.to_string()
            } else {
                format!("{name}({})", args.join(","))
            }
        };
        for seed in 0..2 {
            let env = || Bernoulli {
                before: vec![0.8, 0.4],
                after: vec![0.2, 0.6],
                change_at: change,
            };
            let stationary = with("detect=0");
            let stuck = run(
                &mut learner(&stationary, 2, 1, seed),
                &mut env(),
                change + 900,
                seed,
            );
            assert!(
                stuck.best_share(window.clone()) < 0.4,
                "{stationary} seed {seed} recovered: {}",
                stuck.best_share(window.clone())
            );
            for spec in [with("gamma=0.99,detect=0"), with("window=200,detect=0"), with("")] {
                let r = run(&mut learner(&spec, 2, 1, seed), &mut env(), change + 900, seed);
                let share = r.best_share(window.clone());
                assert!(
                    share > 0.75,
                    "{spec} seed {seed}: best share after change {share}"
                );
            }
        }
    }
}

/// Three arms whose quality rises with cost; the budget binds between two of them, so the
/// pacer must mix them. Dual descent bounds the overspend by `target * lambda_T / (eta *
/// T)`, far below the 2% the budget is held to at T = 20,000.
#[test]
fn budget_pacing_keeps_average_spend_within_two_percent_of_target_on_the_hull() {
    let qualities = [0.6, 0.75, 0.9];
    let costs = [0.001, 0.004, 0.01];
    for (spec, target) in [("ucb1", 0.006), ("beta-ts", 0.003), ("linucb(alpha=1)", 0.005)] {
        let mut config = LearnerConfig::new(spec.parse().expect("spec"), 1);
        config.budget = Some(BudgetConfig {
            target_usd_per_request: target,
            step_size: 0.05,
        });
        let arms = (0..3).map(|a| Arm::new(format!("a{a}"))).collect();
        let mut l = Learner::new(config, arms).expect("learner");
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(9);
        let steps = 20_000;
        let (mut spend, mut earned) = (0.0, 0.0);
        for _ in 0..steps {
            let d = l
                .decide(&Request::new(Context {
                    features: vec![1.0],
                    input_tokens: 0,
                }))
                .expect("decide");
            let a = support::arm_index(&d.arm);
            // Cost varies +-20% around the arm's mean.
            let cost = costs[a] * rand::Rng::random_range(&mut rng, 0.8..1.2);
            let quality = if rand::Rng::random::<f64>(&mut rng) < qualities[a] {
                1.0
            } else {
                0.0
            };
            spend += cost;
            earned += quality;
            l.record_outcome(d.id, &Outcome::new(50.0, cost).with_quality(quality))
                .expect("outcome");
        }
        let mean = spend / steps as f64;
        assert!(
            (mean / target - 1.0).abs() < 0.02,
            "{spec}: mean spend {mean} vs target {target}"
        );
        // Spent on the hull's two models, not on any mix: quality reaches the hull at the
        // target (the chord between the two dearest, or the two cheapest for 0.003) less
        // 0.02, three standard errors of a mean of 20,000 outcomes (0.0085) and a point
        // of exploration.
        let points: Vec<(f64, f64)> = costs.into_iter().zip(qualities).collect();
        let hull = quiver_bandit::hull::frontier_quality_at(&quiver_bandit::hull::frontier(&points), target);
        let quality = earned / steps as f64;
        assert!(
            quality > hull - 0.02,
            "{spec}: quality {quality} vs the hull's {hull}"
        );
    }
}

/// Two arms (and a dominated third) where the budget binds between the two: the optimal
/// policy mixes them, a third of requests to the dear one (the hull at the budget). The
/// decisions randomize as that solution prescribes and say so in their propensities, the
/// dual multiplier settles rather than flipping the choice, spend is within 2% of the
/// budget over the run, and quality reaches the hull at the budget.
#[test]
fn a_binding_budget_mixes_the_hull_arms_with_honest_propensities() {
    // (quality, cost): the hull at 0.006 mixes a1 and a2 with shares 2/3 and 1/3: 0.8.
    let arms = [(0.75, 0.004), (0.9, 0.01), (0.5, 0.006)];
    let (target, hull) = (0.006, 0.8);
    for spec in ["ucb1", "beta-ts", "linucb(alpha=1)"] {
        let mut config = LearnerConfig::new(spec.parse().expect("spec"), 1);
        config.budget = Some(BudgetConfig {
            target_usd_per_request: target,
            step_size: 0.05,
        });
        let mut l =
            Learner::new(config, (0..3).map(|a| Arm::new(format!("a{a}"))).collect()).expect("learner");
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(11);
        let steps = 20_000;
        let (mut spend, mut quality) = (0.0, 0.0);
        let (mut dear, mut dear_probability, mut mixed) = (0usize, 0.0, 0usize);
        let mut lambdas = Vec::new();
        for t in 0..steps {
            let request = Request::new(Context {
                features: vec![1.0],
                input_tokens: 0,
            });
            let d = l.decide(&request).expect("decide");
            let a = support::arm_index(&d.arm);
            let (q, c) = arms[a];
            let cost = c * rand::Rng::random_range(&mut rng, 0.8..1.2);
            let good = rand::Rng::random::<f64>(&mut rng) < q;
            spend += cost;
            quality += f64::from(u8::from(good));
            if t >= steps / 2 {
                let p_dear = d
                    .arms
                    .iter()
                    .find(|e| e.arm == "a1")
                    .map_or(0.0, |e| e.probability);
                dear_probability += p_dear;
                dear += usize::from(a == 1);
                mixed += usize::from(p_dear > 0.05 && p_dear < 0.95);
                lambdas.push(l.pacer().expect("pacer").lambda());
            }
            l.record_outcome(
                d.id,
                &Outcome::new(50.0, cost).with_quality(f64::from(u8::from(good))),
            )
            .expect("outcome");
        }
        let half = (steps / 2) as f64;
        let mean_spend = spend / steps as f64;
        assert!(
            (mean_spend / target - 1.0).abs() < 0.02,
            "{spec}: spend {mean_spend} vs {target}"
        );
        // Over 20,000 Bernoulli draws the mean's standard error is about 0.003.
        let mean_quality = quality / steps as f64;
        assert!(
            mean_quality > hull - 0.015,
            "{spec}: quality {mean_quality} below the hull {hull}"
        );
        // The propensities are what happened: the mean probability of the dear arm equals
        // its share (binomial standard error about 0.005), near the LP's 1/3.
        let share = dear as f64 / half;
        assert!(
            (dear_probability / half - share).abs() < 0.02,
            "{spec}: p {} vs share {share}",
            dear_probability / half
        );
        assert!((share - 1.0 / 3.0).abs() < 0.05, "{spec}: dear share {share}");
        assert!(
            mixed as f64 > 0.5 * half,
            "{spec}: only {mixed} of {half} decisions mix"
        );
        // The multiplier settles: its spread over the second half is small against its level.
        let mean = lambdas.iter().sum::<f64>() / half;
        let sd = (lambdas.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / half).sqrt();
        assert!(sd < 0.1 * mean, "{spec}: lambda {mean} +- {sd}");
    }
}

/// Priced arms whose calls always take 100 prompt and 300 answer tokens (so that the
/// estimate of each call is its list price), their qualities learned beforehand and none
/// reported during the run, so that only the pacer moves: (quality, USD per token), calls
/// of 400 tokens listed at 0.004, 0.01 and 0.006, under a budget of 0.006. Each call
/// costs its list price times `surcharge`.
struct PricedUnderWay {
    arms: Vec<Arm>,
    qualities: [f64; 3],
    target: f64,
    surcharge: f64,
}

/// Decisions paced `batch` at a time, their costs recorded after each batch.
struct Paced {
    chosen: Vec<usize>,
    /// The multiplier after each cost.
    lambdas: Vec<f64>,
    mean_spend: f64,
}

impl PricedUnderWay {
    const PROMPT: u32 = 100;
    const ANSWER: u32 = 300;

    fn new() -> Self {
        let per_token = [1e-5, 2.5e-5, 1.5e-5];
        PricedUnderWay {
            arms: per_token
                .iter()
                .enumerate()
                .map(|(a, &usd)| Arm::new(format!("a{a}")).with_prices(usd, usd))
                .collect(),
            qualities: [0.75, 0.9, 0.5],
            target: 0.006,
            surcharge: 1.0,
        }
    }

    fn request(costs_under_way: Vec<f64>) -> Request {
        Request {
            costs_under_way,
            ..Request::new(Context {
                features: vec![1.0],
                input_tokens: Self::PROMPT,
            })
        }
    }

    fn outcome(&self, a: usize) -> Outcome {
        let cost = self.arms[a].cost_usd(f64::from(Self::PROMPT), f64::from(Self::ANSWER));
        Outcome::new(50.0, cost * self.surcharge).with_tokens(Self::PROMPT, Self::ANSWER)
    }

    fn trained(&self) -> Learner {
        let mut config = LearnerConfig::new("ucb1".parse().expect("spec"), 1);
        config.budget = Some(BudgetConfig {
            target_usd_per_request: self.target,
            step_size: 0.05,
        });
        let mut l = Learner::new(config, self.arms.clone()).expect("learner");
        for _ in 0..200 {
            for (a, &quality) in self.qualities.iter().enumerate() {
                let context = Self::request(Vec::new()).context;
                l.learn(&format!("a{a}"), &context, &self.outcome(a).with_quality(quality))
                    .expect("learn");
            }
        }
        // A first hundred decisions of its own, each cost back before the next.
        for _ in 0..100 {
            let d = l.decide(&Self::request(Vec::new())).expect("decide");
            l.record_outcome(d.id, &self.outcome(support::arm_index(&d.arm)))
                .expect("outcome");
        }
        l
    }

    /// `requests` decided `batch` at a time, each told the estimates of the latest
    /// `looked_ahead` calls under way (0: none), times `told`.
    fn run(&self, requests: usize, batch: usize, looked_ahead: usize, told: f64) -> Paced {
        let mut l = self.trained();
        let (mut chosen, mut lambdas, mut spend) = (Vec::new(), Vec::new(), 0.0);
        for _ in 0..requests / batch {
            let mut under_way: Vec<(u64, usize, f64)> = Vec::new();
            for _ in 0..batch {
                let latest = under_way.len().saturating_sub(looked_ahead);
                let ahead = under_way[latest..]
                    .iter()
                    .map(|&(_, _, estimate)| estimate * told)
                    .collect();
                let d = l.decide(&Self::request(ahead)).expect("decide");
                let a = support::arm_index(&d.arm);
                let estimate = d.arms.iter().find(|e| e.arm == d.arm).expect("chosen").cost_usd;
                assert_eq!(
                    estimate * self.surcharge,
                    self.outcome(a).cost_usd,
                    "the estimate is the list price"
                );
                chosen.push(a);
                under_way.push((d.id, a, estimate));
            }
            for (id, a, _) in under_way {
                spend += self.outcome(a).cost_usd;
                l.record_outcome(id, &self.outcome(a)).expect("outcome");
                lambdas.push(l.pacer().expect("pacer").lambda());
            }
        }
        Paced {
            chosen,
            lambdas,
            mean_spend: spend / requests as f64,
        }
    }
}

/// The spread of the second half of a multiplier's path.
fn late_spread(lambdas: &[f64]) -> f64 {
    let half = &lambdas[lambdas.len() / 2..];
    let mean = half.iter().sum::<f64>() / half.len() as f64;
    (half.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / half.len() as f64).sqrt()
}

/// A server makes many calls at once: their costs come back after later decisions. Fed
/// the estimated costs of the calls under way, a learner paces exactly as one that got
/// each cost back before deciding again, wherever the estimates are the costs.
/// Without the estimates, the 48 decisions of each batch share one stale multiplier,
/// which then swings more.
#[test]
fn calls_under_way_pace_decisions_as_if_each_had_come_back() {
    let env = PricedUnderWay::new();
    let (requests, batch) = (4800, 48);
    let sequential = env.run(requests, 1, 0, 1.0);
    let ahead = env.run(requests, batch, usize::MAX, 1.0);
    assert!(ahead.chosen == sequential.chosen, "other choices");
    assert_eq!(ahead.lambdas, sequential.lambdas);
    assert_eq!(ahead.mean_spend, sequential.mean_spend);
    assert!(
        (sequential.mean_spend / env.target - 1.0).abs() < 0.02,
        "spend {} vs {}",
        sequential.mean_spend,
        env.target
    );

    let stale = env.run(requests, batch, 0, 1.0);
    let differ = stale
        .chosen
        .iter()
        .zip(&sequential.chosen)
        .filter(|(a, b)| a != b)
        .count();
    let (stale_sd, sequential_sd) = (late_spread(&stale.lambdas), late_spread(&sequential.lambdas));
    assert!(
        differ > 0 && stale_sd > sequential_sd,
        "{differ} choices differ; the multiplier's spread {stale_sd} vs {sequential_sd}"
    );
}

/// More calls under way than the most steps taken at once for calls observed elsewhere:
/// each counts ([`quiver_bandit::BudgetPacer::ahead`]), so that 6,000 calls under way pace
/// exactly as if each had come back. Looking ahead of the latest 4,096 alone, the
/// multiplier lags through each batch and swings between batches.
#[test]
fn every_call_under_way_paces_however_many_there_are() {
    let env = PricedUnderWay::new();
    let (requests, batch) = (18_000, 6_000);
    let sequential = env.run(requests, 1, 0, 1.0);
    let all = env.run(requests, batch, usize::MAX, 1.0);
    assert!(all.chosen == sequential.chosen, "other choices");
    assert_eq!(all.lambdas, sequential.lambdas);
    assert!(
        (all.mean_spend / env.target - 1.0).abs() < 0.02,
        "spend {} vs {}",
        all.mean_spend,
        env.target
    );
    let latest = env.run(
        requests,
        batch,
        quiver_bandit::outcome::MAX_STEPS_AT_ONCE as usize,
        1.0,
    );
    let differ = latest
        .chosen
        .iter()
        .zip(&sequential.chosen)
        .filter(|(a, b)| a != b)
        .count();
    let spread = |p: &Paced| late_spread(&p.lambdas);
    assert!(
        differ > 100 && spread(&latest) > 1.3 * spread(&sequential),
        "{differ} choices differ; the multiplier's spread {} vs {}",
        spread(&latest),
        spread(&sequential)
    );
}

/// A provider that bills a quarter above the list prices the learner expects costs from:
/// the pacer ahead takes each call under way at its estimate times what the learner's own
/// calls cost for each dollar expected of them (learned from its first hundred calls), so
/// that decisions with 48 calls under way pace as if each had come back.
#[test]
fn calls_under_way_count_at_what_calls_cost_for_what_was_expected() {
    let env = PricedUnderWay {
        surcharge: 1.25,
        target: 0.0075,
        ..PricedUnderWay::new()
    };
    let (requests, batch) = (4800, 48);
    let sequential = env.run(requests, 1, 0, 1.0);
    let ahead = env.run(requests, batch, usize::MAX, 1.0);
    assert!(ahead.chosen == sequential.chosen, "other choices");
    assert!(
        (ahead.mean_spend / env.target - 1.0).abs() < 0.02,
        "spend {}",
        ahead.mean_spend
    );
    // Told the list prices alone (the estimates divided by the ratio), as without it.
    let listed = env.run(requests, batch, usize::MAX, 1.0 / env.surcharge);
    let differ = listed
        .chosen
        .iter()
        .zip(&sequential.chosen)
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        differ > 100 && late_spread(&listed.lambdas) > 1.1 * late_spread(&sequential.lambdas),
        "{differ} choices differ; the multiplier's spread {} vs {}",
        late_spread(&listed.lambdas),
        late_spread(&sequential.lambdas)
    );
}
