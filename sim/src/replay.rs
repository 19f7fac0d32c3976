//! Online replay of policies on full-information data under bandit feedback.
//!
//! Each seed shuffles the request order; the policy decides; only the chosen arm's outcome
//! is revealed to it (cost and latency at once, quality after the feedback delay, or never
//! for the missing share). Every arm's true value is known to the simulator, so it tracks
//! the reward, regret against the best fixed arm in hindsight and against the per-request
//! oracle. Learners may start from priors ([`ReplaySettings::priors`], fitted from a
//! training table with every model's outcome); with a training set, the learner first
//! learns on it under bandit feedback (same knobs), then is evaluated on the data, still
//! learning unless frozen.
//!
//! The full-information reference ([`Feedback::Full`]) runs the same policy on the same
//! features and requests but shows it every arm's outcome after each decision: what the
//! learner would reach if it never had to explore, so that a report can say how much
//! learning from the chosen arm alone costs.
//!
//! Runs of (variant, seed, feedback) are independent and run in parallel; results come
//! back in a fixed order, so the output is the same byte for byte for the same seed and
//! input.

use std::collections::VecDeque;

use ndarray::{Array2, ArrayView1};
use quiver_bandit::{
    Arm, ArmChoice, BudgetConfig, Context, Learner, LearnerConfig, Objective, Outcome, PolicySpec, Priors,
    Request,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::context::ContextBuilder;
use crate::data::{row_slice, WideDataset};
use crate::error::{Result, SimError};

/// A quality shift of one arm from a step of the evaluation stream on.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// The arm's name.
    pub arm: String,
    /// First evaluation step (0-based) with the shifted quality.
    pub step: usize,
    /// Added to the arm's quality, then clipped to [0, 1].
    pub delta: f64,
}

impl Drift {
    /// Share of a shuffled evaluation of `rows` requests at or after the drift's step.
    pub fn share_after(&self, rows: usize) -> f64 {
        rows.saturating_sub(self.step) as f64 / rows.max(1) as f64
    }

    /// The table as a drifted evaluation sees it on average, so that the single models and
    /// the hull are scored on what the policy faced: the drifted model's quality on each
    /// row is its mean over the request orders, `(1 - f) q + f clamp(q + delta, 0, 1)`,
    /// with `f` the [share after](Self::share_after) the step.
    pub fn expected(&self, data: &WideDataset) -> WideDataset {
        self.blended(data, self.share_after(data.rows()))
    }

    /// The table with every row of the drifted model shifted.
    pub fn shifted(&self, data: &WideDataset) -> WideDataset {
        self.blended(data, 1.0)
    }

    fn blended(&self, data: &WideDataset, f: f64) -> WideDataset {
        let mut out = data.clone();
        if let Some(arm) = data.arms.iter().position(|a| *a == self.arm) {
            for row in 0..data.rows() {
                let q = data.quality(row, arm);
                out.quality[[row, arm]] = (1.0 - f) * q + f * (q + self.delta).clamp(0.0, 1.0);
            }
        }
        out
    }
}

/// Latency of arms whose table has none: `median_ms * exp(sigma * z)`, `z ~ N(0, 1)`, per
/// arm (the LLMPerf measurements are close to log-normal; see datasets/scenario).
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyModel {
    /// Median latency per arm, ms (same order as the dataset's arms).
    pub median_ms: Vec<f64>,
    /// Log-space standard deviation.
    pub sigma: f64,
}

impl LatencyModel {
    /// Each arm's mean latency: `median * exp(sigma^2 / 2)` (log-normal).
    pub fn mean_ms(&self) -> Vec<f64> {
        let factor = (self.sigma * self.sigma / 2.0).exp();
        self.median_ms.iter().map(|m| m * factor).collect()
    }
}

/// Scenario knobs of a replay.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Knobs {
    /// Decisions made after a request before its quality arrives (0: before the next one).
    pub feedback_delay: usize,
    /// Share of decisions whose quality never arrives, in [0, 1).
    pub missing_feedback: f64,
    /// A quality drift of one arm.
    pub drift: Option<Drift>,
    /// Latency where the table has none.
    pub latency: Option<LatencyModel>,
}

/// One policy at one setting of the objective and budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// The policy.
    pub spec: PolicySpec,
    /// Weights of the reward.
    pub objective: Objective,
    /// Target spend per request, USD.
    pub budget_usd: Option<f64>,
    /// Label in reports: the spec, plus the swept setting if any.
    pub label: String,
}

/// What a learner is shown after each decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// The chosen arm's outcome only, as a server learns.
    Bandit,
    /// Every arm's outcome, with the same delay and missing share: the full-information
    /// reference on the same features.
    Full,
}

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    /// The variants to compare.
    pub variants: Vec<Variant>,
    /// Seeds `0..seeds`.
    pub seeds: u64,
    /// Scenario knobs.
    pub knobs: Knobs,
    /// Evaluate without learning (after training).
    pub frozen: bool,
    /// Passes over the training data.
    pub train_passes: usize,
    /// The first this many training passes draw arms uniformly at random, and the learner
    /// learns from what they reveal, as from the log of a uniform exploration phase.
    pub explore_passes: usize,
    /// Priors every learner starts from (see [`quiver_bandit::prior`]).
    pub priors: Option<Priors>,
    /// Step size of the budget pacer of variants with a budget.
    pub pacer_step: f64,
    /// Points per regret curve.
    pub checkpoints: usize,
    /// Also run every (variant, seed) under [`Feedback::Full`].
    pub full_information: bool,
}

/// One point of a run's curve.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    /// Requests evaluated so far.
    pub step: usize,
    /// Regret against the best fixed arm in hindsight, so far.
    pub regret: f64,
    /// Mean quality so far.
    pub mean_quality: f64,
    /// Mean cost so far, USD.
    pub mean_cost_usd: f64,
}

/// The result of one (variant, seed).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Index into [`ReplaySettings::variants`].
    pub variant: usize,
    /// The seed.
    pub seed: u64,
    /// What the learner was shown.
    pub feedback: Feedback,
    /// Mean quality over the evaluated requests.
    pub mean_quality: f64,
    /// Mean cost, USD.
    pub mean_cost_usd: f64,
    /// Mean latency, ms.
    pub mean_latency_ms: f64,
    /// Mean reward under the variant's objective.
    pub mean_reward: f64,
    /// Mean cost weight in force (the objective's plus the budget pacer's), quality points
    /// per USD.
    pub mean_w_cost: f64,
    /// Cumulative regret against the best fixed arm in hindsight.
    pub regret: f64,
    /// Cumulative regret against the per-request oracle.
    pub regret_vs_oracle: f64,
    /// Requests routed to each arm.
    pub arm_counts: Vec<usize>,
    /// The regret curve.
    pub curve: Vec<CurvePoint>,
}

/// A full-information dataset ready to replay: values plus precomputed contexts, their
/// features in one row-major block so that a row is one contiguous read.
pub struct Environment<'a> {
    data: &'a WideDataset,
    /// Each row's context, `rows x dim`.
    features: Array2<f64>,
    input_tokens: Vec<u32>,
}

impl<'a> Environment<'a> {
    /// Featurizes every row of `data` with `builder`.
    pub fn new(data: &'a WideDataset, builder: &ContextBuilder) -> Result<Self> {
        let mut features = Array2::zeros((data.rows(), builder.dim()));
        let mut input_tokens = Vec::with_capacity(data.rows());
        for (row, mut x) in features.rows_mut().into_iter().enumerate() {
            let context = builder.wide_row(data, row)?;
            x.assign(&ArrayView1::from(&context.features));
            input_tokens.push(context.input_tokens);
        }
        Ok(Environment {
            data,
            features,
            input_tokens,
        })
    }

    /// The context of row `row`.
    pub(crate) fn context(&self, row: usize) -> Context {
        Context {
            features: self.features(row).to_vec(),
            input_tokens: self.input_tokens[row],
        }
    }

    /// The features of row `row`.
    pub fn features(&self, row: usize) -> &[f64] {
        row_slice(&self.features, row)
    }

    /// The estimated prompt tokens of row `row`.
    pub fn input_tokens(&self, row: usize) -> u32 {
        self.input_tokens[row]
    }

    /// The dimension of every context.
    pub fn dim(&self) -> usize {
        self.features.ncols()
    }

    /// The dataset.
    pub fn data(&self) -> &WideDataset {
        self.data
    }

    /// Asks the CPU to start loading row `row`'s context and values: a shuffled replay
    /// reads rows at random, and a miss costs more than a whole decision at small d.
    fn prefetch(&self, row: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let quality = &self.data.quality;
            let matrices = [
                &self.features,
                quality,
                self.data.cost_usd.as_ref().unwrap_or(quality),
            ];
            // A row's first and last values: a row of a few values can span two lines.
            let rows = matrices.map(|m| m.row(row));
            let values = rows.iter().flat_map(|r| [r.first(), r.last()]).flatten();
            let lines = values
                .map(|v| std::ptr::from_ref(v).cast::<i8>())
                .chain([std::ptr::from_ref(&self.input_tokens[row]).cast()]);
            for line in lines {
                // SAFETY: SSE is part of x86-64, and a prefetch reads nothing the program
                // sees and cannot fault.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line) };
            }
        }
    }
}

/// How many rows ahead [`Environment::prefetch`] runs.
const PREFETCH_AHEAD: usize = 16;

/// What the simulator knows of one arm on one request.
#[derive(Clone, Copy)]
struct Truth {
    quality: f64,
    cost_usd: f64,
    latency_ms: f64,
}

fn truth(
    env: &Environment,
    knobs: &Knobs,
    row: usize,
    arm: usize,
    step: Option<usize>,
    rng: &mut ChaCha8Rng,
) -> Truth {
    let data = env.data;
    let mut quality = data.quality(row, arm);
    if let (Some(drift), Some(step)) = (&knobs.drift, step) {
        if step >= drift.step && data.arms[arm] == drift.arm {
            quality = (quality + drift.delta).clamp(0.0, 1.0);
        }
    }
    let latency_ms = match (data.latency_ms(row, arm), &knobs.latency) {
        (Some(l), _) => l,
        (None, Some(model)) => {
            let z: f64 = StandardNormal.sample(rng);
            model.median_ms[arm] * (model.sigma * z).exp()
        }
        (None, None) => 0.0,
    };
    Truth {
        quality,
        cost_usd: data.cost_usd(row, arm),
        latency_ms,
    }
}

/// What reaches the learner after a decision's delay; `'e` is the tables'.
enum Reveal<'e> {
    /// The chosen arm's quality, in the decision's context.
    Quality {
        id: u64,
        arm: usize,
        features: &'e [f64],
        quality: f64,
    },
    /// The other arms' whole outcomes in the decision's context (full information).
    Others {
        context: Context,
        outcomes: Vec<(usize, Outcome)>,
    },
}

/// One learner playing requests: it sees the chosen arm's cost and latency at once and its
/// quality after the delay (or never, for the missing share); under full information it
/// learns every other arm's outcome with the chosen arm's quality.
///
/// The player keeps the pending decisions itself (each one's arm and its row's features
/// in the table) and the learner does not track them: nothing is copied per decision.
struct Player<'k> {
    learner: Learner,
    /// The request being decided, its buffers reused from row to row.
    request: Request,
    arms: &'k [String],
    knobs: &'k Knobs,
    feedback: Feedback,
    rng: ChaCha8Rng,
    /// Draws what full information reveals on training rows, apart from `rng`, so that
    /// the evaluation order and draws are the bandit run's.
    reveal_rng: ChaCha8Rng,
    /// What is on its way: (due step, what).
    pending: VecDeque<(usize, Reveal<'k>)>,
    /// The other arms' truths on the last request (by arm, ascending), where drawn.
    others: Vec<(usize, Truth)>,
    step: usize,
}

impl<'k> Player<'k> {
    fn deliver_due(&mut self) -> Result<()> {
        while self.pending.front().is_some_and(|(due, _)| *due <= self.step) {
            match self.pending.pop_front().map(|(_, reveal)| reveal) {
                Some(Reveal::Quality {
                    id,
                    arm,
                    features,
                    quality,
                }) => {
                    self.learner
                        .record_untracked_quality(id, arm, features, quality)?;
                }
                Some(Reveal::Others { context, outcomes }) => {
                    for (arm, outcome) in outcomes {
                        self.learner.learn(&self.arms[arm], &context, &outcome)?;
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Decides one request and reveals what the feedback allows; returns the chosen arm
    /// and its truth. The quality of decision `t` is learned just before decision
    /// `t + feedback_delay + 1`. The other arms' truths are drawn into `others`, after the
    /// chosen one's, on evaluated rows and under full information.
    fn play(
        &mut self,
        env: &'k Environment<'_>,
        row: usize,
        eval_step: Option<usize>,
        learn: bool,
    ) -> Result<(ArmChoice, Truth)> {
        if learn {
            self.deliver_due()?;
        }
        let context = &mut self.request.context;
        context.features.clear();
        context.features.extend_from_slice(env.features(row));
        context.input_tokens = env.input_tokens(row);
        let choice = self.learner.decide_untracked(&self.request)?;
        let arm = choice.arm;
        let t = truth(env, self.knobs, row, arm, eval_step, &mut self.rng);
        let mut missing = false;
        if learn {
            self.learner.record_untracked_outcome(
                choice.id,
                arm,
                &self.request.context,
                &Outcome::new(t.latency_ms, t.cost_usd),
            )?;
            missing =
                self.knobs.missing_feedback > 0.0 && self.rng.random::<f64>() < self.knobs.missing_feedback;
            // A quality that comes after later decisions, or never, is held meanwhile, as
            // a server holds it (the learner lets go of one that never comes).
            if self.knobs.feedback_delay > 0 || self.knobs.missing_feedback > 0.0 {
                self.learner.hold_untracked(choice.id, arm, env.features(row))?;
            }
        }
        let full = self.feedback == Feedback::Full;
        self.others.clear();
        // Training rows under bandit feedback need no other arm's truth.
        if eval_step.is_some() || full {
            let rng = if eval_step.is_some() {
                &mut self.rng
            } else {
                &mut self.reveal_rng
            };
            for a in (0..env.data.num_arms()).filter(|&a| a != arm) {
                self.others
                    .push((a, truth(env, self.knobs, row, a, eval_step, rng)));
            }
        }
        if learn && !missing {
            let due = self.step + self.knobs.feedback_delay + 1;
            self.pending.push_back((
                due,
                Reveal::Quality {
                    id: choice.id,
                    arm,
                    features: env.features(row),
                    quality: t.quality,
                },
            ));
            if full {
                let outcomes = self
                    .others
                    .iter()
                    .map(|(a, o)| (*a, Outcome::new(o.latency_ms, o.cost_usd).with_quality(o.quality)))
                    .collect();
                let context = env.context(row);
                self.pending
                    .push_back((due, Reveal::Others { context, outcomes }));
            }
        }
        self.step += 1;
        Ok((choice, t))
    }

    /// Draws an arm uniformly at random and lets the learner learn everything its outcome
    /// reveals, quality included, as from a logged decision made elsewhere.
    fn explore(&mut self, env: &Environment, row: usize) -> Result<()> {
        let arm = self.rng.random_range(0..env.data.num_arms());
        let t = truth(env, self.knobs, row, arm, None, &mut self.rng);
        let outcome = Outcome::new(t.latency_ms, t.cost_usd).with_quality(t.quality);
        self.learner.learn(&self.arms[arm], &env.context(row), &outcome)?;
        Ok(())
    }
}

/// Mixed into a run's seed for what full information reveals on training rows.
const REVEAL_SEED: u64 = 0x5eed_f011;

fn learner_for(
    settings: &ReplaySettings,
    variant: &Variant,
    arms: Vec<Arm>,
    dim: usize,
    seed: u64,
) -> Result<Learner> {
    let mut config = LearnerConfig::new(variant.spec.clone(), dim);
    config.objective = variant.objective;
    config.seed = seed;
    config.budget = variant.budget_usd.map(|b| BudgetConfig {
        target_usd_per_request: b,
        step_size: settings.pacer_step,
    });
    let mut learner = Learner::new(config, arms)?;
    if let Some(priors) = &settings.priors {
        learner.absorb_priors(priors)?;
    }
    Ok(learner)
}

fn shuffled(n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order
}

/// Replays one variant with one seed.
pub fn run_one(
    env: &Environment,
    train: Option<&Environment>,
    settings: &ReplaySettings,
    variant_index: usize,
    seed: u64,
    feedback: Feedback,
) -> Result<Run> {
    let variant = &settings.variants[variant_index];
    let data = env.data;
    let k = data.num_arms();
    let dim = env.dim();
    let mut player = Player {
        learner: learner_for(settings, variant, data.priced_arms(), dim, seed)?,
        request: Request::new(Context {
            features: Vec::with_capacity(dim),
            input_tokens: 0,
        }),
        arms: &data.arms,
        knobs: &settings.knobs,
        feedback,
        rng: ChaCha8Rng::seed_from_u64(seed),
        reveal_rng: ChaCha8Rng::seed_from_u64(seed ^ REVEAL_SEED),
        pending: VecDeque::new(),
        others: Vec::with_capacity(k),
        step: 0,
    };
    if let Some(train) = train {
        for pass in 0..settings.train_passes {
            for row in shuffled(train.data.rows(), &mut player.rng) {
                if pass < settings.explore_passes {
                    player.explore(train, row)?;
                } else {
                    player.play(train, row, None, true)?;
                }
            }
        }
    }
    let n = data.rows();
    let order = shuffled(n, &mut player.rng);
    let every = (n / settings.checkpoints.max(1)).max(1);
    let objective = variant.objective;
    let mut arm_totals = vec![0.0; k];
    let (mut reward, mut oracle, mut quality, mut cost, mut latency) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut w_cost = 0.0;
    let mut arm_counts = vec![0; k];
    let mut curve = Vec::new();
    for (i, &row) in order.iter().enumerate() {
        if let Some(&ahead) = order.get(i + PREFETCH_AHEAD) {
            env.prefetch(ahead);
        }
        let (choice, t) = player.play(env, row, Some(i), !settings.frozen)?;
        let arm = choice.arm;
        w_cost += choice.w_cost;
        // Every arm's reward on this request, for the hindsight comparisons.
        let mut best = f64::MIN;
        for (a, o) in player.others.iter().chain([(arm, t)].iter()) {
            let r = objective.reward(o.quality, o.cost_usd, o.latency_ms);
            arm_totals[*a] += r;
            best = best.max(r);
        }
        oracle += best;
        reward += objective.reward(t.quality, t.cost_usd, t.latency_ms);
        quality += t.quality;
        cost += t.cost_usd;
        latency += t.latency_ms;
        arm_counts[arm] += 1;
        if (i + 1) % every == 0 || i + 1 == n {
            let best_fixed = arm_totals.iter().cloned().fold(f64::MIN, f64::max);
            curve.push(CurvePoint {
                step: i + 1,
                regret: best_fixed - reward,
                mean_quality: quality / (i + 1) as f64,
                mean_cost_usd: cost / (i + 1) as f64,
            });
        }
    }
    let nf = n.max(1) as f64;
    let best_fixed = arm_totals.iter().cloned().fold(f64::MIN, f64::max);
    Ok(Run {
        variant: variant_index,
        seed,
        feedback,
        mean_quality: quality / nf,
        mean_cost_usd: cost / nf,
        mean_latency_ms: latency / nf,
        mean_reward: reward / nf,
        mean_w_cost: w_cost / nf,
        regret: best_fixed - reward,
        regret_vs_oracle: oracle - reward,
        arm_counts,
        curve,
    })
}

/// Replays every variant with every seed (and under both feedbacks when
/// [`ReplaySettings::full_information`]), in parallel; `progress` is called once per
/// finished run. Results are ordered by variant, then seed, then feedback.
pub fn replay(
    env: &Environment,
    train: Option<&Environment>,
    settings: &ReplaySettings,
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<Run>> {
    if env.data.rows() == 0 {
        return Err(SimError::InvalidOption(format!(
            "{}: no complete rows to replay",
            env.data.source
        )));
    }
    if let Some(train) = train {
        if train.data.arms != env.data.arms {
            return Err(SimError::Mismatch(format!(
                "train and test arms differ: [{}] vs [{}]",
                train.data.arms.join(", "),
                env.data.arms.join(", ")
            )));
        }
    }
    check_missing_feedback(settings.knobs.missing_feedback)?;
    if let Some(drift) = &settings.knobs.drift {
        if !env.data.arms.contains(&drift.arm) {
            return Err(SimError::InvalidOption(format!(
                "--drift names unknown arm `{}`",
                drift.arm
            )));
        }
    }
    let feedbacks: &[Feedback] = if settings.full_information {
        &[Feedback::Bandit, Feedback::Full]
    } else {
        &[Feedback::Bandit]
    };
    let jobs: Vec<(usize, u64, Feedback)> = (0..settings.variants.len())
        .flat_map(|v| (0..settings.seeds).flat_map(move |s| feedbacks.iter().map(move |&f| (v, s, f))))
        .collect();
    jobs.par_iter()
        .map(|&(v, s, f)| {
            let run = run_one(env, train, settings, v, s, f);
            progress();
            run
        })
        .collect()
}

/// A cascade: call the `first` model, check its answer, and call `then` when the check
/// fails; the client gets the last answer, and both calls are paid for and waited on.
///
/// On full-information data the answers' text is not there to check, so the check is
/// modelled: the first answer passes when its quality is at least `pass`, and the check
/// misjudges it with probability `check_error` (a validator that is exact on what it
/// checks, a JSON schema on a structured task, has `check_error = 0`; a confidence
/// signal such as the upstream's token log-probabilities, more).
#[derive(Debug, Clone, PartialEq)]
pub struct Cascade {
    /// The model called first.
    pub first: String,
    /// The model escalated to.
    pub then: String,
    /// The first answer's quality at which the check passes it.
    pub pass: f64,
    /// The probability that the check misjudges the first answer.
    pub check_error: f64,
}

impl Cascade {
    /// Its label in reports: `first > then`, with the check's settings.
    pub fn label(&self) -> String {
        format!(
            "cascade {} > {} (pass {}, check error {})",
            self.first, self.then, self.pass, self.check_error
        )
    }
}

impl std::str::FromStr for Cascade {
    type Err = SimError;

    /// `first=MODEL,then=MODEL[,pass=Q][,check_error=P]` (pass 0.5 and check error 0
    /// by default).
    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: String| {
            SimError::InvalidOption(format!(
                "--cascade `{text}`: {why}; write first=MODEL,then=MODEL[,pass=0.5][,check_error=0]"
            ))
        };
        let (mut first, mut then, mut pass, mut check_error) = (None, None, 0.5, 0.0);
        for part in text.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("`{part}` is not KEY=VALUE")))?;
            let number = |range: std::ops::RangeInclusive<f64>| {
                value
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| range.contains(v))
                    .ok_or_else(|| {
                        bad(format!(
                            "{key} must be a number in [{}, {}]",
                            range.start(),
                            range.end()
                        ))
                    })
            };
            match key.trim() {
                "first" => first = Some(value.trim().to_string()),
                "then" => then = Some(value.trim().to_string()),
                "pass" => pass = number(0.0..=1.0)?,
                "check_error" => check_error = number(0.0..=0.5)?,
                other => return Err(bad(format!("unknown key `{other}`"))),
            }
        }
        let (Some(first), Some(then)) = (first, then) else {
            return Err(bad("first and then are needed".into()));
        };
        if first == then {
            return Err(bad("first and then are the same model".into()));
        }
        Ok(Cascade {
            first,
            then,
            pass,
            check_error,
        })
    }
}

/// The result of one cascade with one seed.
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeRun {
    /// Index into the cascades replayed.
    pub cascade: usize,
    /// The seed.
    pub seed: u64,
    /// Mean quality of the answers the client got.
    pub mean_quality: f64,
    /// Mean cost of both calls, USD.
    pub mean_cost_usd: f64,
    /// Mean latency of both calls, ms.
    pub mean_latency_ms: f64,
    /// Share of requests escalated.
    pub escalated: f64,
}

/// Replays `cascade` (number `index`) on `env` with `seed`: the request order and the
/// check's misjudgements are the seed's; drift and the latency model apply as in
/// [`run_one`].
pub fn run_cascade(
    env: &Environment,
    knobs: &Knobs,
    cascade: &Cascade,
    index: usize,
    seed: u64,
) -> Result<CascadeRun> {
    let data = env.data;
    let arm = |name: &str| {
        data.arms.iter().position(|a| a == name).ok_or_else(|| {
            SimError::InvalidOption(format!(
                "--cascade names unknown model `{name}` (models: {})",
                data.arms.join(", ")
            ))
        })
    };
    let (first, then) = (arm(&cascade.first)?, arm(&cascade.then)?);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut quality, mut cost, mut latency, mut escalated) = (0.0, 0.0, 0.0, 0usize);
    for (step, row) in shuffled(data.rows(), &mut rng).into_iter().enumerate() {
        let a = truth(env, knobs, row, first, Some(step), &mut rng);
        let misjudged = cascade.check_error > 0.0 && rng.random::<f64>() < cascade.check_error;
        cost += a.cost_usd;
        latency += a.latency_ms;
        if (a.quality >= cascade.pass) != misjudged {
            quality += a.quality;
        } else {
            let b = truth(env, knobs, row, then, Some(step), &mut rng);
            quality += b.quality;
            cost += b.cost_usd;
            latency += b.latency_ms;
            escalated += 1;
        }
    }
    let n = data.rows().max(1) as f64;
    Ok(CascadeRun {
        cascade: index,
        seed,
        mean_quality: quality / n,
        mean_cost_usd: cost / n,
        mean_latency_ms: latency / n,
        escalated: escalated as f64 / n,
    })
}

/// Replays every cascade with every seed, in parallel, ordered by cascade then seed.
pub fn replay_cascades(
    env: &Environment,
    knobs: &Knobs,
    cascades: &[Cascade],
    seeds: u64,
) -> Result<Vec<CascadeRun>> {
    let jobs: Vec<(usize, u64)> = (0..cascades.len())
        .flat_map(|c| (0..seeds).map(move |s| (c, s)))
        .collect();
    jobs.par_iter()
        .map(|&(c, s)| run_cascade(env, knobs, &cascades[c], c, s))
        .collect()
}

/// Checks a share of decisions whose quality never arrives: in [0, 1), since at 1 nothing
/// would be learned.
pub fn check_missing_feedback(share: f64) -> Result<()> {
    if (0.0..1.0).contains(&share) {
        Ok(())
    } else {
        Err(SimError::InvalidOption(format!(
            "--missing-feedback must be in [0, 1), not {share}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_bandit::DEFAULT_PACING_STEP;

    /// Arm `a{i}` always answers with quality `qualities[i]`; no prompts, no features.
    fn constant_table(rows: usize, qualities: &[f64]) -> WideDataset {
        WideDataset {
            source: "test".into(),
            arms: (0..qualities.len()).map(|a| format!("a{a}")).collect(),
            ids: (0..rows).map(|r| r.to_string()).collect(),
            quality: Array2::from_shape_fn((rows, qualities.len()), |(_, a)| qualities[a]),
            features: Array2::zeros((rows, 0)),
            ..WideDataset::default()
        }
    }

    /// Arm a0 never answers well, a1 always.
    fn table(rows: usize) -> WideDataset {
        constant_table(rows, &[0.0, 1.0])
    }

    fn settings(spec: &str, knobs: Knobs) -> ReplaySettings {
        ReplaySettings {
            variants: vec![Variant {
                spec: spec.parse().unwrap(),
                objective: Objective::default(),
                budget_usd: None,
                label: spec.into(),
            }],
            seeds: 1,
            knobs,
            frozen: false,
            train_passes: 1,
            explore_passes: 0,
            priors: None,
            pacer_step: DEFAULT_PACING_STEP,
            checkpoints: 10,
            full_information: false,
        }
    }

    fn run(data: &WideDataset, spec: &str, knobs: Knobs) -> Run {
        run_with(data, spec, knobs, Feedback::Bandit)
    }

    fn run_with(data: &WideDataset, spec: &str, knobs: Knobs, feedback: Feedback) -> Run {
        let env = Environment::new(data, &ContextBuilder::new(false, &[], 0)).unwrap();
        run_one(&env, None, &settings(spec, knobs), 0, 0, feedback).unwrap()
    }

    /// Greedy with optimistic untried arms on qualities 0, 0.5, 1: under bandit feedback it
    /// must play a0, then a1, before it knows a2 is best; shown every arm's outcome it
    /// knows after the first decision. The others' outcomes arrive with the chosen one's
    /// delay and are lost with it.
    #[test]
    fn full_information_reveals_every_arm_with_the_chosen_ones_delay() {
        let data = constant_table(100, &[0.0, 0.5, 1.0]);
        let counts = |knobs: Knobs, feedback| run_with(&data, "eps(0)", knobs, feedback).arm_counts;
        assert_eq!(counts(Knobs::default(), Feedback::Bandit), vec![1, 1, 98]);
        assert_eq!(counts(Knobs::default(), Feedback::Full), vec![1, 0, 99]);
        let delayed = Knobs {
            feedback_delay: 10,
            ..Knobs::default()
        };
        assert_eq!(counts(delayed.clone(), Feedback::Bandit), vec![11, 11, 78]);
        assert_eq!(counts(delayed, Feedback::Full), vec![11, 0, 89]);
        let lost = Knobs {
            missing_feedback: 0.999_999,
            ..Knobs::default()
        };
        assert_eq!(counts(lost, Feedback::Full), vec![100, 0, 0]);
    }

    /// `replay` runs both feedbacks when asked; the summary reports the reference beside
    /// the policy, its lift over the hull at its own cost, the gap between the two, and
    /// where each sent its decisions.
    #[test]
    fn the_full_information_reference_is_summarized_beside_the_policy() {
        let data = constant_table(100, &[0.0, 0.5, 1.0]);
        let env = Environment::new(&data, &ContextBuilder::new(false, &[], 0)).unwrap();
        let mut settings = settings("eps(0)", Knobs::default());
        settings.seeds = 2;
        settings.full_information = true;
        let runs = replay(&env, None, &settings, &|| {}).unwrap();
        let order: Vec<(u64, Feedback)> = runs.iter().map(|r| (r.seed, r.feedback)).collect();
        assert_eq!(
            order,
            vec![
                (0, Feedback::Bandit),
                (0, Feedback::Full),
                (1, Feedback::Bandit),
                (1, Feedback::Full)
            ]
        );
        let summary = crate::report::summarize(&data, "none", None, &settings, &runs, None);
        let p = &summary.policies[0];
        // Without prices the hull is flat at the best model's quality 1.
        assert!((p.mean_quality - 0.985).abs() < 1e-12, "{}", p.mean_quality);
        assert!((p.lift_over_hull - (0.985 - 1.0)).abs() < 1e-12);
        let full = p.full_information.as_ref().unwrap();
        assert!((full.mean_quality - 0.99).abs() < 1e-12, "{}", full.mean_quality);
        assert!((full.lift_over_hull - (0.99 - 1.0)).abs() < 1e-12);
        // No prices: the reward is the quality.
        assert!((full.mean_reward - 0.99).abs() < 1e-12);
        assert!((full.feedback_gap - 0.005).abs() < 1e-12);
        // Each seed plays a0, a1, then a2 98 times; shown every outcome, a0 once, then a2.
        assert_eq!(p.arm_shares, vec![0.01, 0.01, 0.98]);
        assert_eq!(full.arm_shares, vec![0.01, 0.0, 0.99]);
        settings.full_information = false;
        let runs = replay(&env, None, &settings, &|| {}).unwrap();
        let summary = crate::report::summarize(&data, "none", None, &settings, &runs, None);
        assert!(summary.policies[0].full_information.is_none());
    }

    #[test]
    fn drift_shifts_the_arm_from_its_step_on() {
        let knobs = Knobs {
            drift: Some(Drift {
                arm: "a1".into(),
                step: 50,
                delta: -0.4,
            }),
            ..Knobs::default()
        };
        let r = run(&table(200), "fixed(a1)", knobs);
        assert!((r.mean_quality - (50.0 + 150.0 * 0.6) / 200.0).abs() < 1e-12);
    }

    /// Halfway drift of -0.3: a correct answer of the drifted model averages 0.85, a wrong
    /// one stays 0, the other models are untouched.
    #[test]
    fn a_drifted_table_is_expected_at_its_mean_over_orders() {
        let mut data = constant_table(2, &[0.0, 0.0]);
        data.quality = ndarray::array![[1.0, 1.0], [0.0, 1.0]];
        let drift = Drift {
            arm: "a0".into(),
            step: 1,
            delta: -0.3,
        };
        assert_eq!(
            drift.expected(&data).quality,
            ndarray::array![[0.85, 1.0], [0.0, 1.0]]
        );
        assert_eq!(
            drift.shifted(&data).quality,
            ndarray::array![[0.7, 1.0], [0.0, 1.0]]
        );
    }

    /// a1 answers 1 until step 50 of 200 and 0.2 after; a0 always 0.5. A fixed a1
    /// averages 0.25 + 0.75 * 0.2 = 0.4, below a0, which is now the best single model and
    /// (no prices) the hull. The oracle takes a1 before the step and a0 after:
    /// 0.25 + 0.75 * 0.5 = 0.625.
    #[test]
    fn a_drifted_replay_is_summarized_against_what_it_faced() {
        let data = constant_table(200, &[0.5, 1.0]);
        let knobs = Knobs {
            drift: Some(Drift {
                arm: "a1".into(),
                step: 50,
                delta: -0.8,
            }),
            ..Knobs::default()
        };
        let settings = settings("fixed(a1)", knobs.clone());
        let runs = vec![run(&data, "fixed(a1)", knobs)];
        let summary = crate::report::summarize(&data, "none", None, &settings, &runs, None);
        let p = &summary.policies[0];
        assert!((p.mean_quality - 0.4).abs() < 1e-12, "{}", p.mean_quality);
        assert_eq!(summary.best_single, "a0");
        assert!((summary.single_arms[1].mean_quality - 0.4).abs() < 1e-12);
        assert!(
            (p.lift_over_hull - (0.4 - 0.5)).abs() < 1e-12,
            "{}",
            p.lift_over_hull
        );
        assert!((summary.oracle.mean_quality - 0.625).abs() < 1e-12);
        let regret_vs_oracle = 200.0 * (0.625 - 0.4);
        assert!(
            (p.regret_vs_oracle - regret_vs_oracle).abs() < 1e-9,
            "{}",
            p.regret_vs_oracle
        );
    }

    /// Greedy with optimistic untried arms: a0 (quality 0) wins the first tie and is
    /// abandoned once its quality arrives; while no quality has arrived, every arm still
    /// looks perfect and the first arm wins every tie.
    #[test]
    fn delayed_or_missing_feedback_is_what_the_learner_sees() {
        let data = table(100);
        let prompt = run(&data, "eps(0)", Knobs::default());
        assert_eq!(prompt.arm_counts, vec![1, 99]);
        let late = run(
            &data,
            "eps(0)",
            Knobs {
                feedback_delay: 1000,
                ..Knobs::default()
            },
        );
        assert_eq!(late.arm_counts, vec![100, 0]);
        let ucb_late = run(
            &data,
            "ucb1",
            Knobs {
                feedback_delay: 1000,
                ..Knobs::default()
            },
        );
        assert_eq!(ucb_late.arm_counts, vec![100, 0]);
        let lost = run(
            &data,
            "ucb1",
            Knobs {
                missing_feedback: 0.999_999,
                ..Knobs::default()
            },
        );
        assert_eq!(lost.arm_counts, vec![100, 0]);
        // Decision 0's quality is learned before decision 11: a0 is played 11 times.
        let delayed_10 = run(
            &data,
            "eps(0)",
            Knobs {
                feedback_delay: 10,
                ..Knobs::default()
            },
        );
        assert_eq!(delayed_10.arm_counts, vec![11, 89]);
    }

    /// Training quality never arrives in time here (a delay of 1000 decisions), so a frozen
    /// greedy learner stays on the first arm; an exploration pass reveals quality at once.
    #[test]
    fn an_exploration_pass_teaches_what_delayed_feedback_hides() {
        let data = table(100);
        let env = Environment::new(&data, &ContextBuilder::new(false, &[], 0)).unwrap();
        let mut settings = settings(
            "eps(0)",
            Knobs {
                feedback_delay: 1000,
                ..Knobs::default()
            },
        );
        settings.frozen = true;
        let unexplored = run_one(&env, Some(&env), &settings, 0, 0, Feedback::Bandit).unwrap();
        assert_eq!(unexplored.arm_counts, vec![100, 0]);
        settings.explore_passes = 1;
        let explored = run_one(&env, Some(&env), &settings, 0, 0, Feedback::Bandit).unwrap();
        assert_eq!(explored.arm_counts, vec![0, 100]);
    }

    #[test]
    fn latency_model_fills_tables_without_latency() {
        let knobs = Knobs {
            latency: Some(LatencyModel {
                median_ms: vec![500.0, 900.0],
                sigma: 0.0,
            }),
            ..Knobs::default()
        };
        let r = run(&table(50), "fixed(a1)", knobs);
        assert_eq!(r.mean_latency_ms, 900.0);
    }

    /// Two models with the given per-row qualities; the first costs 1, the second 10,
    /// with latencies 100 and 1,000 ms.
    fn two_models(first: &[f64], then: &[f64]) -> WideDataset {
        let rows = first.len();
        WideDataset {
            cost_usd: Some(Array2::from_shape_fn((rows, 2), |(_, a)| [1.0, 10.0][a])),
            latency_ms: Some(Array2::from_shape_fn((rows, 2), |(_, a)| [100.0, 1000.0][a])),
            quality: Array2::from_shape_fn((rows, 2), |(r, a)| [first[r], then[r]][a]),
            ..constant_table(rows, &[0.0, 0.0])
        }
    }

    fn cascade(check_error: f64) -> Cascade {
        format!("first=a0,then=a1,check_error={check_error}")
            .parse()
            .unwrap()
    }

    /// With an exact check, a cascade's figures are those of its rows: the answers that
    /// pass (quality >= 0.5) are kept, the others replaced by the second model's, which
    /// is paid and waited for on top. Any seed gives them.
    #[test]
    fn a_cascade_with_an_exact_check_keeps_the_answers_that_pass() {
        let data = two_models(&[1.0, 0.0, 0.4, 0.6], &[1.0, 1.0, 0.9, 0.2]);
        let env = Environment::new(&data, &ContextBuilder::new(false, &[], 0)).unwrap();
        for seed in 0..3 {
            let r = run_cascade(&env, &Knobs::default(), &cascade(0.0), 0, seed).unwrap();
            assert!((r.mean_quality - (1.0 + 1.0 + 0.9 + 0.6) / 4.0).abs() < 1e-12);
            assert_eq!(
                (r.escalated, r.mean_cost_usd, r.mean_latency_ms),
                (0.5, 6.0, 600.0)
            );
        }
    }

    /// A check that errs with probability e: on 40,000 rows whose first answer is right
    /// (1) or wrong (0) in turn, the second's always 0.8, the mean quality is
    /// `(1/2)((1 - e) + 0.8 e) + (1/2)(0.8 (1 - e))` and the escalated share 1/2; five
    /// standard errors (each under sqrt(0.25 / 40,000)) are allowed.
    #[test]
    fn a_cascade_whose_check_errs_matches_its_closed_form() {
        let n = 40_000;
        let first: Vec<f64> = (0..n).map(|r| f64::from(u8::from(r % 2 == 0))).collect();
        let data = two_models(&first, &vec![0.8; n]);
        let env = Environment::new(&data, &ContextBuilder::new(false, &[], 0)).unwrap();
        let e = 0.25;
        let r = run_cascade(&env, &Knobs::default(), &cascade(e), 0, 7).unwrap();
        let expected = 0.5 * ((1.0 - e) + 0.8 * e) + 0.5 * (0.8 * (1.0 - e));
        let tolerance = 5.0 * (0.25 / n as f64).sqrt();
        assert!(
            (r.mean_quality - expected).abs() < tolerance,
            "{}",
            r.mean_quality
        );
        assert!((r.escalated - 0.5).abs() < tolerance, "{}", r.escalated);
        assert!((r.mean_cost_usd - (1.0 + 10.0 * r.escalated)).abs() < 1e-9);
    }

    #[test]
    fn cascade_specs_are_checked() {
        let c: Cascade = "first=a, then=b ,pass=0.7".parse().unwrap();
        assert_eq!(
            (c.first.as_str(), c.then.as_str(), c.pass, c.check_error),
            ("a", "b", 0.7, 0.0)
        );
        for (text, why) in [
            ("first=a", "first and then are needed"),
            ("first=a,then=a", "the same model"),
            ("first=a,then=b,pass=2", "pass must be a number in [0, 1]"),
            (
                "first=a,then=b,check_error=0.9",
                "check_error must be a number in [0, 0.5]",
            ),
            ("first=a,then=b,threshold=1", "unknown key `threshold`"),
            ("a>b", "is not KEY=VALUE"),
        ] {
            let err = text.parse::<Cascade>().unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(text), "{text}: {err}");
        }
        let data = two_models(&[1.0], &[1.0]);
        let env = Environment::new(&data, &ContextBuilder::new(false, &[], 0)).unwrap();
        let unknown: Cascade = "first=a0,then=gpt-9".parse().unwrap();
        let err = run_cascade(&env, &Knobs::default(), &unknown, 0, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown model `gpt-9`") && err.contains("a0, a1"),
            "{err}"
        );
    }
}
