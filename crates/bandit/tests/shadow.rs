//! Shadow candidates: their off-policy estimates against values known in closed form.

use quiver_bandit::shadow::Shadows;
use quiver_bandit::{Arm, Context, Learner, LearnerConfig, Objective, Outcome, PolicySpec, Request};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Two kinds of request (feature 1 is 0 or 1) and three models whose chance of a good
/// answer depends on the kind; each model costs a fixed amount per request.
const QUALITY: [[f64; 3]; 2] = [[0.3, 0.6, 0.8], [0.7, 0.5, 0.2]];
const COST: [f64; 3] = [0.001, 0.002, 0.004];

fn arms() -> Vec<Arm> {
    ["a", "b", "c"].into_iter().map(Arm::new).collect()
}

fn config(policy: &str, seed: u64) -> LearnerConfig {
    let mut config = LearnerConfig::new(policy.parse().expect("spec"), 2);
    config.seed = seed;
    config.objective = Objective::new(100.0, 0.0).expect("objective");
    config
}

fn request(kind: usize) -> Request {
    Request::new(Context {
        features: vec![1.0, kind as f64],
        input_tokens: 50,
    })
}

fn specs(list: &[&str]) -> Vec<PolicySpec> {
    list.iter().map(|s| s.parse().expect("spec")).collect()
}

/// Serves `n` requests with `live`, the shadows deciding beside it; each outcome (with
/// its quality) is reported at once.
fn serve(live: &str, candidates: &[&str], n: usize, seed: u64) -> quiver_bandit::shadow::ShadowReport {
    serve_under(config(live, seed), candidates, n, seed, 0)
}

/// [`serve`] with the live learner's whole configuration, which the shadows share, each
/// outcome reported after `delay` later decisions.
fn serve_under(
    live: LearnerConfig,
    candidates: &[&str],
    n: usize,
    seed: u64,
    delay: usize,
) -> quiver_bandit::shadow::ShadowReport {
    let mut learner = Learner::new(live.clone(), arms()).expect("learner");
    let mut shadows = Shadows::new(&specs(candidates), &live, &arms(), 1000).expect("shadows");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut late = std::collections::VecDeque::new();
    for _ in 0..n {
        let kind = rng.random_range(0..2);
        let request = request(kind);
        let d = learner.decide(&request).expect("decide");
        shadows
            .decided(d.id, request, &d.arm, d.propensity, None)
            .expect("shadow decides");
        let arm = learner.arm_index(&d.arm).expect("arm");
        let quality = f64::from(u8::from(rng.random_bool(QUALITY[kind][arm])));
        let outcome = Outcome::new(100.0, COST[arm]).with_quality(quality);
        late.push_back((d.id, outcome));
        while late.len() > delay {
            let (id, outcome) = late.pop_front().expect("an outcome");
            learner.record_outcome(id, &outcome).expect("outcome");
            shadows.outcome(id, &outcome).expect("shadow outcome");
        }
    }
    shadows.report()
}

/// What a policy that plays model `arm` on kind 0 with probability `p0[arm]` and on kind 1
/// with `p1[arm]` gets, on requests of either kind with probability 1/2.
fn truth(p: [[f64; 3]; 2]) -> (f64, f64) {
    let mut quality = 0.0;
    let mut cost = 0.0;
    for kind in 0..2 {
        for arm in 0..3 {
            quality += 0.5 * p[kind][arm] * QUALITY[kind][arm];
            cost += 0.5 * p[kind][arm] * COST[arm];
        }
    }
    (quality, cost)
}

/// Fixed and uniformly random candidates behind a uniformly random live policy: their
/// value is known in closed form, and each 95% interval (SNIPS and DR, quality and cost)
/// must cover it in at least 90% of 100 seeds. With true coverage 95%, fewer than 90 of
/// 100 happens with probability 0.03 per interval (binomial tail); a biased estimator's
/// coverage falls far below.
#[test]
fn intervals_cover_the_true_value_of_fixed_and_random_candidates() {
    let candidates = ["fixed(a)", "fixed(c)", "random"];
    let truths = [
        truth([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]),
        truth([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]),
        truth([[1.0 / 3.0; 3]; 2]),
    ];
    let seeds = 100;
    let mut covered = [[0; 4]; 3];
    for seed in 0..seeds {
        let report = serve("random", &candidates, 600, seed);
        for (i, (c, (q, cost))) in report.candidates.iter().zip(truths).enumerate() {
            for (k, (interval, want)) in [
                (&c.quality.snips, q),
                (&c.quality.dr, q),
                (&c.cost_usd.snips, cost),
                (&c.cost_usd.dr, cost),
            ]
            .into_iter()
            .enumerate()
            {
                let [lo, hi] = interval.ci95.expect("an interval");
                // A fixed policy's cost is known exactly, up to rounding.
                let slack = 1e-12 * want;
                covered[i][k] += usize::from(lo - slack <= want && want <= hi + slack);
            }
        }
    }
    for (c, row) in candidates.iter().zip(covered) {
        for (k, n) in row.into_iter().enumerate() {
            assert!(n >= 90, "{c}, estimate {k}: covered in {n} of {seeds} seeds");
        }
    }
}

/// Behind a live policy that explores (a floor of 0.1 under LinUCB), a candidate that
/// plays each kind's best model is estimated near its value, the live policy near its
/// own, and the hull from the models' SNIPS estimates; the models' estimates are those of
/// fixed policies.
#[test]
fn estimates_follow_the_candidates_and_the_models() {
    let report = serve("linucb(alpha=0.5,floor=0.1)", &["fixed(c)", "fixed(a)"], 4000, 7);
    assert_eq!(report.decisions, 4000);
    assert_eq!(report.pending, 0);
    let (q_c, cost_c) = truth([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]);
    let c = &report.candidates[0];
    let q = c.quality.dr.value.unwrap();
    // On the kind where c is not best it is played about 0.1 x 2000 times: a standard
    // error near 0.5 sqrt(0.16 / 200) = 0.014 there, and less on the other kind.
    assert!((q - q_c).abs() < 0.05, "quality {q} vs {q_c}");
    // A cost that never varies: SNIPS gets it exactly, DR through its reward model.
    assert!((c.cost_usd.snips.value.unwrap() - cost_c).abs() < 1e-12);
    assert!((c.cost_usd.dr.value.unwrap() - cost_c).abs() < 1e-4);
    assert!(c.effective_sample_size > 100.0 && c.effective_sample_size < 4000.0);
    assert_eq!(c.quality.rows, 4000);
    // The models: a fixed policy's quality per model, each kind half the time (each model
    // is played at least 0.1 x 4000 times: a standard error under 0.025).
    for (m, model) in report.models.iter().enumerate() {
        let want = 0.5 * (QUALITY[0][m] + QUALITY[1][m]);
        let got = model.quality.value.unwrap();
        assert!((got - want).abs() < 0.075, "{}: {got} vs {want}", model.model);
        assert!((model.cost_usd.value.unwrap() - COST[m]).abs() < 1e-12);
    }
    // The hull is the frontier of the models' estimates: a model's point or none, by cost.
    for corner in &report.hull {
        assert!(report
            .models
            .iter()
            .any(|m| m.cost_usd.value == Some(corner[0]) && m.quality.value == Some(corner[1])));
    }
    assert!(report
        .hull
        .windows(2)
        .all(|w| w[0][0] < w[1][0] && w[0][1] < w[1][1]));
    let hull_at = c.hull_quality_at_cost.unwrap();
    // c costs the most, so the hull at its cost is the best model's estimated quality.
    let best = report
        .models
        .iter()
        .filter_map(|m| m.quality.value)
        .fold(0.0, f64::max);
    assert_eq!(hull_at, best);
    assert!((c.lift_over_hull.unwrap() - (q - hull_at)).abs() < 1e-12);
    // The incumbent learned to play each kind's best model: it beats both candidates.
    let incumbent = report.incumbent.quality.value.unwrap();
    assert!(incumbent > q + 0.1, "incumbent {incumbent}, fixed(c) {q}");
    assert_eq!(report.incumbent.rows, 4000);
}

/// Outcome, then quality later; a decision without feedback counts for cost alone once
/// `max_pending` newer ones have come; an unknown id and a second quality change nothing.
#[test]
fn decisions_complete_when_their_quality_comes_or_they_age_out() {
    let live = config("random", 1);
    let mut shadows = Shadows::new(&specs(&["fixed(b)"]), &live, &arms(), 2).expect("shadows");
    let r = || request(0);
    shadows.decided(10, r(), "b", 1.0 / 3.0, None).unwrap();
    shadows.outcome(10, &Outcome::new(50.0, 0.002)).unwrap();
    let report = shadows.report();
    assert_eq!((report.pending, report.candidates[0].cost_usd.rows), (1, 0));
    shadows.quality(10, 1.0).unwrap();
    shadows.quality(10, 0.0).unwrap();
    shadows.quality(99, 0.0).unwrap();
    let report = shadows.report();
    assert_eq!(report.pending, 0);
    assert_eq!(report.candidates[0].quality.rows, 1);
    assert_eq!(report.candidates[0].quality.snips.value, Some(1.0));
    // Value: quality minus 100 per USD.
    assert!((report.candidates[0].value.snips.value.unwrap() - (1.0 - 0.2)).abs() < 1e-12);

    shadows.decided(11, r(), "b", 1.0 / 3.0, None).unwrap();
    shadows.outcome(11, &Outcome::new(50.0, 0.002)).unwrap();
    shadows.decided(12, r(), "a", 1.0 / 3.0, None).unwrap();
    shadows.decided(13, r(), "a", 1.0 / 3.0, None).unwrap();
    // 11 aged out with its cost: a cost row, no quality row.
    let report = shadows.report();
    assert_eq!(report.pending, 2);
    assert_eq!(report.candidates[0].cost_usd.rows, 2);
    assert_eq!(report.candidates[0].quality.rows, 1);
    // A failed call is complete at its outcome, with quality 0.
    let mut failed = Outcome::new(50.0, 0.001);
    failed.error = true;
    shadows.outcome(12, &failed).unwrap();
    let report = shadows.report();
    assert_eq!(report.candidates[0].quality.rows, 2);
    assert_eq!(report.incumbent.quality.value, Some(0.5));
    assert_eq!(report.models[1].rows, 2);
}

/// A candidate's DR cost on a route with a `budget` per request and no cost weight,
/// behind a uniformly random live policy over 4,000 decisions whose outcomes come after
/// `delay` later ones.
fn paced_candidate_cost(budget: Option<f64>, delay: usize) -> f64 {
    let mut live = config("random", 3);
    live.objective = Objective::new(0.0, 0.0).expect("objective");
    live.budget = budget.map(|b| quiver_bandit::BudgetConfig {
        target_usd_per_request: b,
        step_size: quiver_bandit::DEFAULT_PACING_STEP,
    });
    let report = serve_under(live, &["linucb(alpha=0.1)"], 4000, 3, delay);
    report.candidates[0].cost_usd.dr.value.expect("a cost")
}

/// A candidate pays for nothing, so its pacer steps on DR's estimate of what it would
/// have spent: with a budget it keeps near it, where unpaced it would play each kind's best
/// model, `c` then `a`, at 0.0025 a request.
#[test]
fn a_candidate_paces_its_budget_on_what_it_would_have_spent() {
    let unpaced = paced_candidate_cost(None, 0);
    assert!((unpaced - 0.0025).abs() < 0.0002, "{unpaced}");
    let paced = paced_candidate_cost(Some(0.0015), 0);
    assert!((paced - 0.0015).abs() < 0.00015, "{paced}");
}

/// When a decision's feedback comes: its outcome after `outcome_delay` later decisions,
/// its quality after `quality_delay`; or, for a share `never`, neither.
#[derive(Clone, Copy)]
struct Feedback {
    outcome_delay: usize,
    quality_delay: usize,
    never: f64,
}

/// A paced candidate's decisions behind a uniformly random live policy under a budget of
/// 0.0015 USD per request, its feedback coming as `feedback` says: per decision, what the
/// candidate's PMF would cost and its chance of a good answer.
fn paced_candidate_path(feedback: Feedback) -> (Vec<f64>, Vec<f64>) {
    let mut live = config("random", 3);
    live.objective = Objective::new(0.0, 0.0).expect("objective");
    live.budget = Some(quiver_bandit::BudgetConfig {
        target_usd_per_request: 0.0015,
        step_size: quiver_bandit::DEFAULT_PACING_STEP,
    });
    let mut learner = Learner::new(live.clone(), arms()).expect("learner");
    let mut shadows = Shadows::new(&specs(&["linucb(alpha=0.1)"]), &live, &arms(), 1000).expect("shadows");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut outcomes = std::collections::VecDeque::new();
    let mut qualities_due = std::collections::VecDeque::new();
    let (mut costs, mut qualities) = (Vec::new(), Vec::new());
    for _ in 0..6000 {
        let kind = rng.random_range(0..2);
        let request = request(kind);
        let d = learner.decide(&request).expect("decide");
        let draws = shadows.decide(d.id, &request).expect("draws");
        let pmf = &draws.choices()[0].pmf;
        costs.push(pmf.iter().zip(COST).map(|(p, c)| p * c).sum::<f64>());
        qualities.push(pmf.iter().zip(QUALITY[kind]).map(|(p, q)| p * q).sum::<f64>());
        shadows
            .record(d.id, request, &d.arm, d.propensity, draws)
            .expect("record");
        let arm = learner.arm_index(&d.arm).expect("arm");
        let quality = f64::from(u8::from(rng.random_bool(QUALITY[kind][arm])));
        let lost = rng.random::<f64>() < feedback.never;
        outcomes.push_back((d.id, (!lost).then(|| Outcome::new(100.0, COST[arm]))));
        qualities_due.push_back((d.id, (!lost).then_some(quality)));
        while outcomes.len() > feedback.outcome_delay {
            if let (id, Some(outcome)) = outcomes.pop_front().expect("an outcome") {
                learner.record_outcome(id, &outcome).expect("outcome");
                shadows.outcome(id, &outcome).expect("shadow outcome");
            }
        }
        while qualities_due.len() > feedback.quality_delay {
            if let (id, Some(quality)) = qualities_due.pop_front().expect("a quality") {
                shadows.quality(id, quality).expect("shadow quality");
            }
        }
    }
    (costs, qualities)
}

/// A candidate's pacer steps on what it would have spent as each outcome comes, and until
/// then paces ahead of the decision at the cost it expected of it. Whether outcomes come
/// 300 decisions late, or at once with their qualities 300 late, or 15% of them never,
/// its spend over each 250 decisions of the second half stays within 6% of the budget
/// (three standard errors of a window's mix of request kinds; paced by completed
/// decisions alone, outcomes 300 late, it swung from 0.67 to 1.7 budgets), and its quality
/// is that of a candidate whose feedback comes at once, within 0.015 (0.585 against 0.638
/// then).
#[test]
fn a_candidate_paces_ahead_of_its_pending_decisions() {
    let at_once = Feedback {
        outcome_delay: 0,
        quality_delay: 0,
        never: 0.0,
    };
    let mean = |q: &[f64]| q[3000..].iter().sum::<f64>() / 3000.0;
    let prompt = mean(&paced_candidate_path(at_once).1);
    for feedback in [
        Feedback {
            outcome_delay: 300,
            quality_delay: 300,
            ..at_once
        },
        Feedback {
            quality_delay: 300,
            ..at_once
        },
        Feedback {
            never: 0.15,
            ..at_once
        },
    ] {
        let (costs, qualities) = paced_candidate_path(feedback);
        let case = format!(
            "outcomes {} late, qualities {} late, {} never",
            feedback.outcome_delay, feedback.quality_delay, feedback.never
        );
        for (w, window) in costs[3000..].chunks(250).enumerate() {
            let spend = window.iter().sum::<f64>() / window.len() as f64;
            assert!((spend / 0.0015 - 1.0).abs() < 0.06, "{case}: window {w}: {spend}");
        }
        let late = mean(&qualities);
        assert!((late - prompt).abs() < 0.015, "{case}: {late} vs {prompt}");
    }
}
