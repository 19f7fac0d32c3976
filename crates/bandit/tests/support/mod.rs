//! Synthetic environments with known truth, shared by the statistical tests.
#![allow(dead_code)]

use quiver_bandit::{Arm, Context, Learner, LearnerConfig, Outcome, PolicySpec, Request};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A learner over arms `a0..a{k}` with the given spec and dimension.
pub fn learner(spec: &str, arms: usize, dim: usize, seed: u64) -> Learner {
    let spec: PolicySpec = spec.parse().expect("spec");
    let mut config = LearnerConfig::new(spec, dim);
    config.seed = seed;
    Learner::new(config, (0..arms).map(|a| Arm::new(format!("a{a}"))).collect()).expect("learner")
}

pub fn arm_index(arm: &str) -> usize {
    arm[1..].parse().expect("arm name a<i>")
}

/// Mean quality of each arm in a context.
pub trait Environment {
    fn arms(&self) -> usize;
    fn dim(&self) -> usize;
    /// A fresh context.
    fn context(&mut self, rng: &mut ChaCha8Rng) -> Vec<f64>;
    /// The true mean quality of every arm in `x` at step `t`.
    fn means(&self, x: &[f64], t: usize) -> Vec<f64>;
}

/// Bernoulli arms with fixed means, possibly switching to other means at a step.
pub struct Bernoulli {
    pub before: Vec<f64>,
    pub after: Vec<f64>,
    pub change_at: usize,
}

impl Bernoulli {
    pub fn stationary(means: &[f64]) -> Self {
        Bernoulli {
            before: means.to_vec(),
            after: means.to_vec(),
            change_at: usize::MAX,
        }
    }
}

impl Environment for Bernoulli {
    fn arms(&self) -> usize {
        self.before.len()
    }
    fn dim(&self) -> usize {
        1
    }
    fn context(&mut self, _rng: &mut ChaCha8Rng) -> Vec<f64> {
        vec![1.0]
    }
    fn means(&self, _x: &[f64], t: usize) -> Vec<f64> {
        if t < self.change_at {
            self.before.clone()
        } else {
            self.after.clone()
        }
    }
}

/// Linear contextual arms: mean quality of arm `a` is `x' theta_a`, in [0.05, 0.95] by
/// construction; `x = (1, u_1..u_{d-1})` with `u` uniform in [-1, 1].
pub struct Linear {
    pub thetas: Vec<Vec<f64>>,
}

impl Linear {
    pub fn random(arms: usize, dim: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Intercept 0.5 and slopes summing in absolute value to at most 0.45.
        let thetas = (0..arms)
            .map(|_| {
                let mut t = vec![0.5];
                let raw: Vec<f64> = (1..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
                let l1: f64 = raw.iter().map(|v: &f64| v.abs()).sum();
                t.extend(raw.iter().map(|v| 0.45 * v / l1));
                t
            })
            .collect();
        Linear { thetas }
    }
}

impl Environment for Linear {
    fn arms(&self) -> usize {
        self.thetas.len()
    }
    fn dim(&self) -> usize {
        self.thetas[0].len()
    }
    fn context(&mut self, rng: &mut ChaCha8Rng) -> Vec<f64> {
        let mut x = vec![1.0];
        x.extend((1..self.dim()).map(|_| rng.random_range(-1.0..1.0)));
        x
    }
    fn means(&self, x: &[f64], _t: usize) -> Vec<f64> {
        self.thetas
            .iter()
            .map(|t| t.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }
}

/// What a run observed.
pub struct Run {
    /// Pseudo-regret after each step: sum of (best mean - chosen mean).
    pub cumulative_regret: Vec<f64>,
    /// Chosen arm at each step.
    pub chosen: Vec<usize>,
    /// Whether the chosen arm was the best at each step.
    pub best: Vec<bool>,
}

impl Run {
    pub fn regret_at(&self, t: usize) -> f64 {
        self.cumulative_regret[t - 1]
    }

    /// Share of steps in `range` where the best arm was chosen.
    pub fn best_share(&self, range: std::ops::Range<usize>) -> f64 {
        let n = range.len() as f64;
        self.best[range].iter().filter(|&&b| b).count() as f64 / n
    }
}

/// Runs `learner` for `steps` rounds against `env` with Bernoulli quality draws.
pub fn run(learner: &mut Learner, env: &mut impl Environment, steps: usize, seed: u64) -> Run {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Run {
        cumulative_regret: Vec::with_capacity(steps),
        chosen: Vec::with_capacity(steps),
        best: Vec::with_capacity(steps),
    };
    let mut regret = 0.0;
    for t in 0..steps {
        let x = env.context(&mut rng);
        let means = env.means(&x, t);
        let request = Request::new(Context {
            features: x,
            input_tokens: 0,
        });
        let decision = learner.decide(&request).expect("decide");
        let arm = arm_index(&decision.arm);
        let best = means.iter().cloned().fold(f64::MIN, f64::max);
        regret += best - means[arm];
        let quality = if rng.random::<f64>() < means[arm] {
            1.0
        } else {
            0.0
        };
        learner
            .record_outcome(decision.id, &Outcome::new(100.0, 0.0).with_quality(quality))
            .expect("outcome");
        out.cumulative_regret.push(regret);
        out.chosen.push(arm);
        out.best.push(means[arm] >= best - 1e-12);
    }
    out
}
