//! Routes a stream of simulated prompts among three models and shows what LinUCB learns.
//!
//! The models and their per-task accuracy are made up for the example (the simulator ships
//! a calibrated scenario); prices are list prices per token. Run:
//! `cargo run --release -p quiver-bandit --example route`.
#![allow(clippy::print_stdout)]

use quiver_bandit::{
    Arm, Featurizer, HashingFeaturizer, Learner, LearnerConfig, Objective, Outcome, Request,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TASKS: [(&str, &[&str]); 3] = [
    (
        "math",
        &[
            "Calculate 348 * 27 - 19.",
            "Solve for x: 3x + 7 = 25",
            "What is 15% of 240?",
        ],
    ),
    (
        "code",
        &[
            "def fib(n):\n    # return the nth Fibonacci number",
            "Write a function that reverses a string in Rust: fn rev(s: &str) -> String {",
        ],
    ),
    (
        "chat",
        &[
            "Write a short poem about autumn leaves",
            "Explain why the sky is blue to a child",
            "Summarize the plot of Hamlet",
        ],
    ),
];

/// Each model's prices (USD per input and output token) and its probability of answering
/// each task (math, code, chat) well.
const MODELS: [(&str, f64, f64, [f64; 3]); 3] = [
    ("large", 2.5e-6, 1e-5, [0.95, 0.90, 0.93]),
    ("small", 1.5e-7, 6e-7, [0.40, 0.50, 0.90]),
    ("coder", 5e-7, 1.5e-6, [0.60, 0.92, 0.75]),
];

fn main() -> Result<(), quiver_bandit::Error> {
    let featurizer = HashingFeaturizer::default();
    let arms = MODELS
        .iter()
        .map(|(id, input, output, _)| Arm::new(*id).with_prices(*input, *output))
        .collect();
    let mut config = LearnerConfig::new("linucb(alpha=0.5)".parse()?, featurizer.dim());
    // Paying $0.001 more must buy at least 0.1 quality points.
    config.objective = Objective::new(100.0, 0.0)?;
    let mut learner = Learner::new(config, arms)?;

    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let steps = 5000;
    let mut counts = [[0usize; 3]; 3];
    let (mut quality, mut cost) = (0.0, 0.0);
    for step in 0..steps {
        let task = rng.random_range(0..TASKS.len());
        let prompts = TASKS[task].1;
        let prompt = prompts[rng.random_range(0..prompts.len())];
        let decision = learner.decide(&Request::new(featurizer.featurize(prompt, &[])?))?;
        let arm = learner.arm_index(&decision.arm)?;
        let (_, input_price, output_price, accuracy) = MODELS[arm];
        let input_tokens = featurizer.featurize(prompt, &[])?.input_tokens;
        let call_cost = f64::from(input_tokens) * input_price + 200.0 * output_price;
        let score = if rng.random::<f64>() < accuracy[task] {
            1.0
        } else {
            0.0
        };
        let outcome = Outcome::new(400.0, call_cost)
            .with_tokens(input_tokens, 200)
            .with_quality(score);
        learner.record_outcome(decision.id, &outcome)?;
        if step >= steps / 2 {
            counts[task][arm] += 1;
            quality += score;
            cost += call_cost;
        }
    }
    let n = (steps - steps / 2) as f64;
    println!(
        "share of each task routed to each model over the last {} requests:",
        steps / 2
    );
    println!(
        "{:<6} {:>7} {:>7} {:>7}",
        "task", MODELS[0].0, MODELS[1].0, MODELS[2].0
    );
    for (task, row) in counts.iter().enumerate() {
        let total = row.iter().sum::<usize>().max(1) as f64;
        println!(
            "{:<6} {:>6.0}% {:>6.0}% {:>6.0}%",
            TASKS[task].0,
            100.0 * row[0] as f64 / total,
            100.0 * row[1] as f64 / total,
            100.0 * row[2] as f64 / total
        );
    }
    println!(
        "mean quality {:.3}, mean cost ${:.6} per request",
        quality / n,
        cost / n
    );
    let large_cost = 10.0 * 2.5e-6 + 200.0 * 1e-5;
    println!("(always `large` would cost about ${large_cost:.6} per request)");
    Ok(())
}
