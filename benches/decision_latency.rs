//! Tail latency of one decision (and of decision + update) at d = 64, K = 11, in process:
//! SPEC.md section 4's target is p99 decision <= 10 us for LinUCB.
//!
//! Criterion reports means; a p99 needs each call timed on its own, so this harness times
//! 200,000 calls per policy after a 2,000-observation warm-up and prints percentiles, for
//! `decide` (with the explanation) and `decide_arm` (the arm only, rows marked `[arm]`),
//! each quality recorded at once; then `decide` with each quality recorded [`LATE`]
//! decisions later, as a server's judgements come (rows marked `[late]`: LinUCB holds each
//! decision meanwhile, `learner/held.rs`).
//! Run: `cargo bench --bench decision_latency`. Without `--bench` (CI's test mode) it
//! times 500 calls per policy, only to keep the harness compiling and running. An extra
//! argument filters policies: `cargo bench --bench decision_latency -- linucb`.
#![allow(clippy::print_stdout)]

use quiver_bandit::{Arm, Featurizer, HashingFeaturizer, Learner, LearnerConfig, Outcome, Request};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// The allocator the `quiver` binary uses, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SPECS: [&str; 7] = [
    "linucb(alpha=0.5)",
    "lints(v=0.3)",
    "eps(0.05)",
    "ucb1",
    "beta-ts",
    "gaussian-ts",
    "random",
];

/// Decisions after which a `[late]` row's qualities come: the validation suite's delay.
const LATE: usize = 200;

fn percentile(sorted_ns: &[u64], p: f64) -> f64 {
    let i = ((sorted_ns.len() as f64 - 1.0) * p).round() as usize;
    sorted_ns[i] as f64 / 1000.0
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // An optional argument keeps only the policies whose spec contains it.
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let calls = if full { 200_000 } else { 500 };
    let featurizer = HashingFeaturizer::default();
    let dim = featurizer.dim();
    let prompts = [
        "Calculate 348 * 27 - 19.",
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
        "Write a short poem about autumn leaves",
        "Which is a mammal?\nA) shark\nB) whale\nC) trout",
        "Summarize the plot of Hamlet in three sentences.",
    ];
    let requests: Vec<Request> = prompts
        .iter()
        .map(|p| Request::new(featurizer.featurize(p, &[]).expect("featurize")))
        .collect();
    println!("{calls} calls per policy, d = {dim}, K = 11; microseconds");
    println!(
        "{:<26} {:>8} {:>8} {:>8} {:>8} | {:>10} {:>10}",
        "policy", "p50", "p90", "p99", "p99.9", "+update p50", "p99"
    );
    // `decide` returns the decision with its explanation (what `/v1/route` answers);
    // `decide_arm` only the arm, as simulators and lean in-process callers use it.
    for spec in SPECS.iter().filter(|s| s.contains(filter.as_str())) {
        for (lean, delay) in [(false, 0), (true, 0), (false, LATE)] {
            let mut config = LearnerConfig::new(spec.parse().expect("spec"), dim);
            config.max_tracked_decisions = 4096;
            let arms = (0..11)
                .map(|a| Arm::new(format!("model-{a}")).with_prices(1e-6, 2e-6))
                .collect();
            let mut learner = Learner::new(config, arms).expect("learner");
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let mut waiting = std::collections::VecDeque::with_capacity(delay + 1);
            let mut step =
                |learner: &mut Learner, i: usize, timings: Option<(&mut Vec<u64>, &mut Vec<u64>)>| {
                    let request = &requests[i % requests.len()];
                    let start = Instant::now();
                    let id = if lean {
                        learner.decide_arm(request).expect("decide").id
                    } else {
                        learner.decide(request).expect("decide").id
                    };
                    let decided = start.elapsed();
                    waiting.push_back(id);
                    if waiting.len() > delay {
                        let judged = waiting.pop_front().expect("a decision waits");
                        let quality: f64 = rng.random();
                        learner
                            .record_outcome(judged, &Outcome::new(300.0, 0.001).with_quality(quality))
                            .expect("outcome");
                    }
                    let total = start.elapsed();
                    if let Some((decide_ns, both_ns)) = timings {
                        decide_ns.push(decided.as_nanos() as u64);
                        both_ns.push(total.as_nanos() as u64);
                    }
                };
            for i in 0..2000 {
                step(&mut learner, i, None);
            }
            let (mut decide_ns, mut both_ns) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
            for i in 0..calls {
                step(&mut learner, i, Some((&mut decide_ns, &mut both_ns)));
            }
            decide_ns.sort_unstable();
            both_ns.sort_unstable();
            let label = match (lean, delay) {
                (true, _) => format!("{spec} [arm]"),
                (false, 0) => spec.to_string(),
                (false, _) => format!("{spec} [late]"),
            };
            println!(
                "{:<26} {:>8.2} {:>8.2} {:>8.2} {:>8.2} | {:>10.2} {:>10.2}",
                label,
                percentile(&decide_ns, 0.5),
                percentile(&decide_ns, 0.9),
                percentile(&decide_ns, 0.99),
                percentile(&decide_ns, 0.999),
                percentile(&both_ns, 0.5),
                percentile(&both_ns, 0.99),
            );
        }
    }
}
