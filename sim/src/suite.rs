//! The validation suite: the tables and budgets on which Quiver's defaults are chosen,
//! never on a test split that reports use.
//!
//! Generated tables follow an item-response model, so that they look like real evaluation
//! tables without being any of them: each prompt has a topic and a hidden difficulty
//! `d ~ N(0, 1)` (longer prompts are harder on average). As a public benchmark's tasks
//! do, each topic has a template: an instruction every prompt of the topic repeats and a
//! layout (multiple-choice options, a function to write, a sum, a question, an essay,
//! text in another language), around a body of the topic's own words and common ones. So
//! a model's first few hundred prompts teach it about as much of its quality as the
//! public tables' do ([`TableShape::prompt_signal`]). Each model
//! belongs to a family with an ability level `N(0, 0.6^2)` and an ability per topic around
//! it (`+ N(0, 0.6^2)`), and its members are near-duplicates (`+ N(0, 0.15^2)`) at three
//! sizes (`-0.4, 0, +0.4`). A model answers well with probability
//! `sigmoid(ability[topic] - 1.8 d + 1.2)`; its log list price per token rises with its
//! mean ability, unevenly (`1.0 ability + N(0, 1.3^2)`, with a geometric mean of $3 per
//! million input tokens and four times that per output token), and a call costs the
//! prompt's tokens and an answer at those prices. How long an answer is depends on what
//! is asked, as in public tables (a program for a coding prompt, a letter for a multiple
//! choice): its log length over the prompt's is the topic's (`N(0, 0.75^2)`) plus the
//! family's on that topic (`N(0, 0.45^2)`), both centred, plus the request's own
//! (`N(0, 0.2^2)`), less half their variance, so that answers are as long as their
//! prompts on average. The list prices go with the table, as a route's configuration would
//! give them to a server. These constants are calibrated so that the tables have the
//! shape of the public ones ([`CALIBRATION`], checked by a test on the public tables).
//! Each table has 3, 11, 30 or 60 models and 4,000 prompts (and the 30 models again with
//! 10,000, the size of a public table of about thirty models), 70% to train on (priors
//! fitted from every model's outcome, or a replay under bandit feedback) and 30% to
//! evaluate; the drift cases take 0.3 off the best model's quality on every row (clamped
//! at 0, so a correct answer scores 0.7 and a wrong one stays 0) halfway through the
//! evaluation, and are scored against the hull of the table as it drifted; the cold cases
//! learn nothing first and are evaluated online on every row of the table. Budgets are
//! 10%, 25% and 50% of the best single model's mean cost on the training rows.
//!
//! A case's score is the lift over the hull: the evaluated policy's quality minus the best
//! fixed mix of at most two models at the same cost (see [`crate::metrics`]).

use std::collections::BTreeMap;

use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use quiver_bandit::features::estimate_tokens;
use quiver_bandit::policy::DEFAULT_LINUCB_LAMBDA;
use quiver_bandit::prior::DEFAULT_PRIOR_CAP;
use quiver_bandit::ridge::RidgeModel;
use quiver_bandit::{Objective, PolicySpec, Priors, DEFAULT_PACING_STEP};
use serde::{Deserialize, Deserializer, Serialize};

use crate::context::ContextBuilder;
use crate::data::{load_wide, Format, WideDataset};
use crate::error::Result;
use crate::metrics::best_model;
use crate::priors::{fit_wide, TrainFeedback};
use crate::replay::{replay, Drift, Environment, Knobs, ReplaySettings, Variant};
use crate::scenario::Scenario;

/// One generated table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IrtTable {
    /// Models.
    pub arms: usize,
    /// Prompts (train and evaluation).
    pub rows: usize,
    /// Seed of the generation.
    pub seed: u64,
}

/// Topics of the generated prompts.
const TOPICS: usize = 8;

// The generator's constants, calibrated so that its tables have the public tables' shape
// ([`CALIBRATION`]).
/// Standard deviation of a family's ability level.
const FAMILY_SD: f64 = 0.6;
/// Standard deviation of a family's ability per topic around its level.
const TOPIC_SD: f64 = 0.6;
/// Ability step between the three sizes of a family.
const SIZE_STEP: f64 = 0.4;
/// Standard deviation of a family member's ability around its size's.
const DUPLICATE_SD: f64 = 0.15;
/// Weight of a prompt's difficulty in a model's log-odds of answering well.
const DIFFICULTY_WEIGHT: f64 = 1.8;
/// Log-odds of a typical model answering a typical prompt well.
const EASE: f64 = 1.2;
/// Rise of a model's log price per unit of mean ability.
const PRICE_PER_ABILITY: f64 = 1.0;
/// Standard deviation of a model's log price around what its ability says.
const PRICE_NOISE_SD: f64 = 1.3;
/// Geometric mean of the models' list prices per input token, USD: with an answer as
/// long as the prompt, $0.0004 for a request of 10 words (RouterBench's median model:
/// $0.00033).
const TYPICAL_INPUT_PRICE_USD: f64 = 3e-6;
/// A model's list price per output token over its price per input token (LiteLLM's
/// registry: 3-5 for most chat models).
const OUTPUT_PRICE_RATIO: f64 = 4.0;
/// Standard deviation of a topic's log answer length over the prompt's (RouterArena's
/// 78 tasks: 0.72 and 0.96 for its two models, whose lengths correlate 0.74 over tasks).
const TOPIC_LENGTH_SD: f64 = 0.75;
/// Standard deviation of a family's log answer length on a topic around the topic's: with
/// [`TOPIC_LENGTH_SD`], two families' lengths correlate `0.75^2 / (0.75^2 + 0.45^2) = 0.74`
/// over topics.
const FAMILY_LENGTH_SD: f64 = 0.45;
/// Standard deviation of a request's log answer length around its topic's and family's.
const REQUEST_LENGTH_SD: f64 = 0.2;
/// Variance of an answer's log length over its prompt's, less which its mean is 0.
const LENGTH_VARIANCE: f64 = TOPIC_LENGTH_SD * TOPIC_LENGTH_SD
    + FAMILY_LENGTH_SD * FAMILY_LENGTH_SD
    + REQUEST_LENGTH_SD * REQUEST_LENGTH_SD;

/// Share of the rows trained on.
pub const TRAIN_SHARE: f64 = 0.7;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// `n` normal draws of standard deviation `sd`, less their mean.
fn centred_normals(rng: &mut ChaCha8Rng, n: usize, sd: f64) -> Vec<f64> {
    let draws: Vec<f64> = (0..n).map(|_| sd * normal(rng)).collect();
    let mean = draws.iter().sum::<f64>() / n as f64;
    draws.iter().map(|d| d - mean).collect()
}

/// How a topic's prompts are laid out, as each task of a public benchmark has its
/// template: the options of a multiple-choice question, a function to write, a sum to
/// work out, text in another language.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    MultipleChoice,
    Code,
    Arithmetic,
    Question,
    Essay,
    Translation,
    Statement,
}

/// The layout of each topic.
const LAYOUTS: [Layout; TOPICS] = [
    Layout::MultipleChoice,
    Layout::Code,
    Layout::Arithmetic,
    Layout::Question,
    Layout::Essay,
    Layout::MultipleChoice,
    Layout::Translation,
    Layout::Statement,
];

/// Words of a topic's instruction, which every prompt of the topic repeats (a benchmark's
/// "Answer with the letter of the correct option", "Write a python function to").
const INSTRUCTION_WORDS: usize = 3;
/// Words of a topic's own vocabulary.
const TOPIC_WORDS: usize = 12;
/// Words every topic shares.
const COMMON_WORDS: usize = 40;
/// Share of a prompt's body drawn from its topic's vocabulary.
const TOPIC_WORD_SHARE: f64 = 0.6;

/// A made-up word of letters alone (a digit would make every prompt look like arithmetic
/// to the featurizer).
fn word(stem: &str, index: usize) -> String {
    let letter = |i: usize| char::from(b'a' + (i % 26) as u8);
    format!("{stem}{}{}", letter(index / 26), letter(index))
}

/// A prompt of `topic` with a body of `words` words, laid out as the topic's prompts are.
fn prompt(rng: &mut ChaCha8Rng, topic: usize, words: usize) -> String {
    let stem = word("topic", topic);
    let instruction: Vec<String> = (0..INSTRUCTION_WORDS)
        .map(|i| word(&format!("{stem}cue"), i))
        .collect();
    let topic_word = |rng: &mut ChaCha8Rng| word(&format!("{stem}word"), rng.random_range(0..TOPIC_WORDS));
    let body: Vec<String> = (0..words)
        .map(|_| {
            if rng.random::<f64>() < TOPIC_WORD_SHARE {
                topic_word(rng)
            } else {
                word("common", rng.random_range(0..COMMON_WORDS))
            }
        })
        .collect();
    let (instruction, body) = (instruction.join(" "), body.join(" "));
    match LAYOUTS[topic] {
        Layout::MultipleChoice => {
            let options: Vec<String> = ["A", "B", "C", "D"]
                .iter()
                .map(|letter| format!("{letter}) {}", topic_word(rng)))
                .collect();
            format!("{instruction}\n{body}\n{}\nAnswer:", options.join("\n"))
        }
        Layout::Code => format!("Write a function to {instruction} {body}.\ndef solution(items):"),
        Layout::Arithmetic => {
            let (a, b) = (rng.random_range(2..100), rng.random_range(2..100));
            format!("{instruction} {body}. How many is {a} + {b} * {}?", a + b)
        }
        Layout::Question => format!("{instruction} {body}?"),
        Layout::Essay => format!("Write an essay: {instruction} {body}."),
        Layout::Translation => format!("{instruction}: {}.", body.replace('e', "é").replace('a', "à")),
        Layout::Statement => format!("{instruction} {body}."),
    }
}

/// Prompts of each of the suite's generated tables.
pub const SUITE_ROWS: usize = 4000;

impl IrtTable {
    /// The suite's generated table of `arms` models. A table of other `rows` from the same
    /// seed has the same models and prices, and its prompts begin with the suite's.
    pub fn of_suite(arms: usize) -> IrtTable {
        IrtTable {
            arms,
            rows: SUITE_ROWS,
            seed: 1000 + arms as u64,
        }
    }

    /// The training rows and the evaluation rows.
    pub fn generate(&self) -> (WideDataset, WideDataset) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let families = self.arms.div_ceil(3);
        let family_ability: Vec<Vec<f64>> = (0..families)
            .map(|_| {
                let level = FAMILY_SD * normal(&mut rng);
                (0..TOPICS).map(|_| level + TOPIC_SD * normal(&mut rng)).collect()
            })
            .collect();
        let abilities: Vec<Vec<f64>> = (0..self.arms)
            .map(|m| {
                let size = SIZE_STEP * (m % 3) as f64 - SIZE_STEP;
                family_ability[m / 3]
                    .iter()
                    .map(|a| a + size + DUPLICATE_SD * normal(&mut rng))
                    .collect()
            })
            .collect();
        let log_prices: Vec<f64> = abilities
            .iter()
            .map(|a| {
                let mean = a.iter().sum::<f64>() / TOPICS as f64;
                PRICE_PER_ABILITY * mean + PRICE_NOISE_SD * normal(&mut rng)
            })
            .collect();
        // Scale prices so that their geometric mean is the typical price.
        let mean_log = log_prices.iter().sum::<f64>() / log_prices.len() as f64;
        let input_prices: Vec<f64> = log_prices
            .iter()
            .map(|log_price| TYPICAL_INPUT_PRICE_USD * (log_price - mean_log).exp())
            .collect();
        let mut data = WideDataset {
            source: format!("irt:{}-arms", self.arms),
            arms: (0..self.arms)
                .map(|m| format!("family{}-size{}", m / 3, m % 3))
                .collect(),
            prompts: Some(Vec::with_capacity(self.rows)),
            tasks: Some(Vec::with_capacity(self.rows)),
            features: Array2::zeros((self.rows, 0)),
            ..WideDataset::default()
        };
        data.list_prices = data
            .arms
            .iter()
            .zip(&input_prices)
            .map(|(id, &input)| (id.clone(), (input, OUTPUT_PRICE_RATIO * input)))
            .collect();
        let priced = data.priced_arms();
        // Answer lengths come from a stream of their own, so the qualities are the draws
        // they were before lengths depended on the topic.
        let mut lengths = ChaCha8Rng::seed_from_u64(self.seed);
        lengths.set_stream(1);
        let topic_length = centred_normals(&mut lengths, TOPICS, TOPIC_LENGTH_SD);
        let family_length: Vec<Vec<f64>> = (0..families)
            .map(|_| centred_normals(&mut lengths, TOPICS, FAMILY_LENGTH_SD))
            .collect();
        let (mut quality, mut cost) = (
            Array2::zeros((self.rows, self.arms)),
            Array2::zeros((self.rows, self.arms)),
        );
        // Prompts' words come from a stream of their own too, so that how prompts are worded
        // can change without changing who answers what.
        let mut text = ChaCha8Rng::seed_from_u64(self.seed);
        text.set_stream(2);
        for row in 0..self.rows {
            let topic = rng.random_range(0..TOPICS);
            let difficulty = normal(&mut rng);
            let words = (10.0 + 3.0 * (difficulty + 0.5 * normal(&mut rng))).clamp(3.0, 30.0) as usize;
            let prompt = prompt(&mut text, topic, words);
            let tokens = f64::from(estimate_tokens(&prompt));
            data.ids.push(format!("irt-{row}"));
            data.prompts.get_or_insert_with(Vec::new).push(prompt);
            data.tasks
                .get_or_insert_with(Vec::new)
                .push(format!("topic{topic}"));
            for m in 0..self.arms {
                let good = rng.random::<f64>()
                    < sigmoid(abilities[m][topic] - DIFFICULTY_WEIGHT * difficulty + EASE);
                quality[[row, m]] = f64::from(u8::from(good));
                let log_length =
                    topic_length[topic] + family_length[m / 3][topic] + REQUEST_LENGTH_SD * normal(&mut rng)
                        - LENGTH_VARIANCE / 2.0;
                let answer_tokens = tokens * log_length.exp();
                cost[[row, m]] = priced[m].cost_usd(tokens, answer_tokens);
            }
        }
        data.quality = quality;
        data.cost_usd = Some(cost);
        let train_rows = (self.rows as f64 * TRAIN_SHARE) as usize;
        let mut train = data.clone();
        train.retain_rows(|r| r < train_rows);
        data.retain_rows(|r| r >= train_rows);
        (train, data)
    }
}

/// The shape of an evaluation table, in the statistics that decide how hard routing is:
/// how far the models' accuracies spread, how far their prices spread, how much price says
/// about accuracy, how much the models' answers go together, what a per-prompt oracle
/// gains over the best model, and how much what is asked moves a request's cost beyond
/// its prompt's length, and how much of a model's quality its first few hundred prompts
/// teach. The generator is calibrated by comparing these with public tables
/// ([`CALIBRATION`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TableShape {
    /// Mean of the models' accuracies.
    pub accuracy_mean: f64,
    /// Standard deviation of the models' accuracies.
    pub accuracy_sd: f64,
    /// Standard deviation of the models' log mean cost per request.
    pub log_cost_sd: f64,
    /// Pearson correlation of a model's log mean cost with its accuracy.
    pub cost_accuracy_correlation: f64,
    /// Mean Pearson correlation of two models' per-prompt scores.
    pub answer_correlation: f64,
    /// Per-prompt oracle's quality minus the best model's.
    pub oracle_gain: f64,
    /// Mean over models of the standard deviation over tasks of the log cost per prompt
    /// token (a task's total cost over its prompts' estimated tokens); NaN for a table
    /// without prompts or with fewer than two tasks.
    pub task_cost_spread: f64,
    /// How much of a model's quality the context predicts after a cold start's share of
    /// rows: the held-out R^2 of a ridge per model on the route's context (prompt and the
    /// table's own features; the learners' default ridge, shrunk toward the mean), fitted
    /// on [`PROMPT_SIGNAL_ROWS`] rows drawn at random and scored on the others; the mean
    /// over models whose quality varies. NaN for a table without prompts.
    pub prompt_signal: f64,
}

/// Rows a model's ridge learns from in [`TableShape::prompt_signal`]: what each of 30
/// models sees of 10,000 requests (or each of 11 of 3,300), as a cold start of a public
/// table's size shares them out. At most half the table.
pub const PROMPT_SIGNAL_ROWS: usize = 300;

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn sd(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64).sqrt()
}

fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (mean(a), mean(b));
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let norm = |v: &[f64], m: f64| v.iter().map(|x| (x - m).powi(2)).sum::<f64>().sqrt();
    cov / (norm(a, ma) * norm(b, mb)).max(f64::MIN_POSITIVE)
}

impl TableShape {
    /// The shape of a table with costs.
    pub fn of(data: &WideDataset) -> TableShape {
        let singles = crate::metrics::single_arms(data, None);
        let accuracy: Vec<f64> = singles.iter().map(|s| s.mean_quality).collect();
        let log_cost: Vec<f64> = singles.iter().map(|s| s.mean_cost_usd.ln()).collect();
        let columns: Vec<Vec<f64>> = (0..data.num_arms())
            .map(|a| (0..data.rows()).map(|r| data.quality(r, a)).collect())
            .collect();
        let pairs: Vec<f64> = (0..columns.len())
            .flat_map(|a| (a + 1..columns.len()).map(move |b| (a, b)))
            .map(|(a, b)| correlation(&columns[a], &columns[b]))
            .collect();
        let best = accuracy.iter().copied().fold(0.0, f64::max);
        TableShape {
            accuracy_mean: mean(&accuracy),
            accuracy_sd: sd(&accuracy),
            log_cost_sd: sd(&log_cost),
            cost_accuracy_correlation: correlation(&log_cost, &accuracy),
            answer_correlation: mean(&pairs),
            oracle_gain: crate::metrics::oracle(data).0 - best,
            task_cost_spread: task_cost_spread(data),
            prompt_signal: prompt_signal(data),
        }
    }
}

/// See [`TableShape::prompt_signal`].
fn prompt_signal(data: &WideDataset) -> f64 {
    if data.prompts.is_none() || data.rows() < 2 {
        return f64::NAN;
    }
    let builder = ContextBuilder::new(true, &[], data.features.ncols());
    let Ok(contexts) = (0..data.rows())
        .map(|r| builder.wide_row(data, r).map(|c| c.features))
        .collect::<Result<Vec<_>>>()
    else {
        return f64::NAN;
    };
    let mut order: Vec<usize> = (0..data.rows()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(0));
    let (fit, scored) = order.split_at(PROMPT_SIGNAL_ROWS.min(data.rows() / 2));
    let r2: Vec<f64> = (0..data.num_arms())
        .filter_map(|arm| {
            let quality = |rows: &[usize]| rows.iter().map(|&r| data.quality(r, arm)).collect::<Vec<_>>();
            let (fit_quality, scored_quality) = (quality(fit), quality(scored));
            let mut model = RidgeModel::with_prior(builder.dim(), DEFAULT_LINUCB_LAMBDA, mean(&fit_quality));
            for (&r, &q) in fit.iter().zip(&fit_quality) {
                model.update(&contexts[r], q);
            }
            let scored_mean = mean(&scored_quality);
            let total: f64 = scored_quality.iter().map(|q| (q - scored_mean).powi(2)).sum();
            let residual: f64 = scored
                .iter()
                .zip(&scored_quality)
                .map(|(&r, q)| (q - model.mean(&contexts[r])).powi(2))
                .sum();
            (total > 0.0).then(|| 1.0 - residual / total)
        })
        .collect();
    if r2.is_empty() {
        f64::NAN
    } else {
        mean(&r2)
    }
}

/// See [`TableShape::task_cost_spread`].
fn task_cost_spread(data: &WideDataset) -> f64 {
    let (Some(prompts), Some(tasks)) = (&data.prompts, &data.tasks) else {
        return f64::NAN;
    };
    let mut rows_of: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (row, task) in tasks.iter().enumerate() {
        rows_of.entry(task.as_str()).or_default().push(row);
    }
    if rows_of.len() < 2 {
        return f64::NAN;
    }
    let tokens_of: Vec<f64> = rows_of
        .values()
        .map(|rows| {
            rows.iter()
                .map(|&r| f64::from(estimate_tokens(&prompts[r])))
                .sum()
        })
        .collect();
    let spreads: Vec<f64> = (0..data.num_arms())
        .map(|arm| {
            let log_cost_per_token: Vec<f64> = rows_of
                .values()
                .zip(&tokens_of)
                .map(|(rows, tokens)| {
                    let cost: f64 = rows.iter().map(|&r| data.cost_usd(r, arm)).sum();
                    (cost / tokens).ln()
                })
                .collect();
            sd(&log_cost_per_token)
        })
        .collect();
    mean(&spreads)
}

/// What the generated tables are calibrated to, from the public tables: the RouterBench
/// subset's 11 models on the 2,205 complete rows of its train files (never its test files,
/// which reports use) have accuracies of mean 0.67 and standard deviation 0.10, log costs
/// of standard deviation 1.40 (LiteLLM's registry of ~3,000 chat models: 1.47 in log input
/// price), a correlation of 0.40 between the two, answers that correlate 0.27 between two
/// models, and an oracle 0.10 above the best model. Its costs per prompt token spread by
/// 1.61 (log standard deviation over its three tasks, mean over models: coding prompts get
/// programs, the others a letter); RouterArena's two models with token counts, whose
/// prompts are longer than their answers, by 0.40 and 0.41 over its 78 tasks. A model's
/// first 300 prompts teach it as much on both ([`TableShape::prompt_signal`]: 0.060 on
/// RouterBench, 0.060 on RouterArena, 0.09 on the built-in scenario), where its
/// first hundred already teach most of what a thousand do. Each range holds the public
/// figures; the generator's tables must fall in it too.
pub const CALIBRATION: [(&str, f64, f64); 8] = [
    ("accuracy mean", 0.55, 0.80),
    ("accuracy sd", 0.06, 0.16),
    ("log cost sd", 1.0, 1.9),
    ("cost-accuracy correlation", 0.2, 0.8),
    ("answer correlation", 0.1, 0.45),
    ("oracle gain", 0.05, 0.2),
    ("task cost spread", 0.3, 2.0),
    ("prompt signal", 0.03, 0.2),
];

/// The calibration range of the statistic `name` of [`CALIBRATION`].
pub fn calibration_range(name: &str) -> Option<(f64, f64)> {
    CALIBRATION
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(_, lo, hi)| (lo, hi))
}

impl TableShape {
    /// The statistics in [`CALIBRATION`]'s order.
    pub fn values(&self) -> [f64; 8] {
        [
            self.accuracy_mean,
            self.accuracy_sd,
            self.log_cost_sd,
            self.cost_accuracy_correlation,
            self.answer_correlation,
            self.oracle_gain,
            self.task_cost_spread,
            self.prompt_signal,
        ]
    }

    /// The statistics outside their [`CALIBRATION`] range, named, with their values.
    pub fn uncalibrated(&self) -> Vec<(&'static str, f64)> {
        CALIBRATION
            .iter()
            .zip(self.values())
            .filter(|((_, lo, hi), v)| !(lo..=hi).contains(&v))
            .map(|((name, _, _), v)| (*name, v))
            .collect()
    }
}

/// One case of the suite: what to train on, what to evaluate on, under which budget.
#[derive(Debug, Clone)]
pub struct Case {
    /// The table's name, with `+drift` when the evaluation drifts, `+cold` when it
    /// starts cold and `+late` when its quality arrives late.
    pub table: String,
    /// Whether the candidates start cold: they learn nothing from the training rows and
    /// are evaluated online on every row of the table.
    pub cold: bool,
    /// Training rows.
    pub train: WideDataset,
    /// Evaluation rows.
    pub test: WideDataset,
    /// The budget as a share of the best single model's mean cost on the training rows.
    pub budget_share: f64,
    /// The budget, USD per request.
    pub budget_usd: f64,
    /// A drift of the evaluation, if any.
    pub drift: Option<Drift>,
    /// Decisions made after a request before its quality arrives.
    pub feedback_delay: usize,
}

/// How late a late case's quality arrives, in decisions: a route serving 20 requests a
/// second whose answers are judged 10 seconds after they are sent. A server's feedback is
/// never immediate, and a learner that is only right when it is shows it here.
pub const LATE_FEEDBACK: usize = 200;

/// The budgets of every table, as shares of the best model's cost.
pub const BUDGET_SHARES: [f64; 3] = [0.10, 0.25, 0.50];

/// The cases of the suite for `tables` (name, train, evaluation): every budget, and with
/// `drift`, the same again with the best model's quality lowered by 0.3 halfway through
/// the evaluation, and with `cold`, the same again from a cold start on every row, with
/// each quality at once and [`LATE_FEEDBACK`] decisions late.
pub fn cases(tables: Vec<(String, WideDataset, WideDataset)>, drift: bool, cold: bool) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    for (name, train, test) in tables {
        if cold {
            let mut every_row = train.clone();
            every_row.append(test.clone())?;
            let best_cost = best_model(&train).1;
            for (suffix, feedback_delay) in [("", 0), ("+late", LATE_FEEDBACK)] {
                for share in BUDGET_SHARES {
                    out.push(Case {
                        table: format!("{name}+cold{suffix}"),
                        cold: true,
                        train: train.clone(),
                        test: every_row.clone(),
                        budget_share: share,
                        budget_usd: share * best_cost,
                        drift: None,
                        feedback_delay,
                    });
                }
            }
        }
        let (best, best_cost) = best_model(&train);
        let drifts = [
            None,
            drift.then(|| Drift {
                arm: train.arms[best].clone(),
                step: test.rows() / 2,
                delta: -0.3,
            }),
        ];
        for drift in drifts
            .into_iter()
            .enumerate()
            .filter_map(|(i, d)| (i == 0 || d.is_some()).then_some(d))
        {
            for share in BUDGET_SHARES {
                out.push(Case {
                    table: if drift.is_some() {
                        format!("{name}+drift")
                    } else {
                        name.clone()
                    },
                    cold: false,
                    train: train.clone(),
                    test: test.clone(),
                    budget_share: share,
                    budget_usd: share * best_cost,
                    drift: drift.clone(),
                    feedback_delay: 0,
                });
            }
        }
    }
    Ok(out)
}

/// Prompts of the suite's longer table of thirty models.
const LONG_ROWS: usize = 10_000;

/// The generated tables of the suite: 3, 11, 30 and 60 models on 4,000 prompts, and the
/// thirty models again on 10,000, the size of a public evaluation table of about thirty
/// models: a cold start pays most of its loss in its first few thousand requests, so a
/// table's length decides how much of that loss its mean shows.
pub fn generated_tables() -> Vec<(String, WideDataset, WideDataset)> {
    [3, 11, 30, 60]
        .map(IrtTable::of_suite)
        .into_iter()
        .chain([IrtTable {
            rows: LONG_ROWS,
            ..IrtTable::of_suite(30)
        }])
        .map(|table| {
            let (train, test) = table.generate();
            let name = match table.rows {
                SUITE_ROWS => format!("irt-{}", table.arms),
                rows => format!("irt-{}-{}k", table.arms, rows / 1000),
            };
            (name, train, test)
        })
        .collect()
}

/// Every table of the suite: the generated ones, 3 folds of the built-in scenario's train
/// split (the scenario `quiver replay` reports on; its test split is never read), and, given
/// their directories, 3 folds of RouterBench's train files and of each RouteLLM table
/// (`mmlu/`, `gsm8k/`).
pub fn tables(
    routerbench: Option<&str>,
    routellm: Option<&str>,
) -> Result<Vec<(String, WideDataset, WideDataset)>> {
    let mut tables = generated_tables();
    let (_, builtin_train) = Scenario::builtin()?.test_and_train();
    tables.extend(folds("builtin-train", &builtin_train, 3));
    if let Some(dir) = routerbench {
        let train = load_wide(&format!("{dir}/*_train.csv"), Format::RouterBench, None)?;
        tables.extend(folds("routerbench-train", &train, 3));
    }
    if let Some(dir) = routellm {
        for task in ["mmlu", "gsm8k"] {
            let data = load_wide(&format!("{dir}/{task}/*.csv"), Format::RouteLlm, None)?;
            tables.extend(folds(&format!("routellm-{task}"), &data, 3));
        }
    }
    Ok(tables)
}

/// `k`-fold cross-validation tables of `data` (rows `i` with `i % k == fold` evaluate,
/// the rest train): how a public table's train split serves the suite without its test
/// split.
pub fn folds(name: &str, data: &WideDataset, k: usize) -> Vec<(String, WideDataset, WideDataset)> {
    (0..k)
        .map(|fold| {
            let mut train = data.clone();
            train.retain_rows(|r| r % k != fold);
            let mut test = data.clone();
            test.retain_rows(|r| r % k == fold);
            (format!("{name}-fold{fold}"), train, test)
        })
        .collect()
}

/// A setting the suite compares: a policy and how it learns from the training rows.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The policy.
    pub spec: PolicySpec,
    /// Priors fitted from the training rows, or a replay of them under bandit feedback.
    pub feedback: TrainFeedback,
    /// Passes over the training rows, under bandit feedback.
    pub train_passes: usize,
    /// The priors' cap on observations per model.
    pub prior_cap: f64,
}

impl Candidate {
    /// The candidate's name in reports: its policy, then how it trains unless by default.
    pub fn label(&self) -> String {
        let mut label = self.spec.to_string();
        match self.feedback {
            TrainFeedback::Full if self.prior_cap != DEFAULT_PRIOR_CAP => {
                label.push_str(&format!(" cap={}", self.prior_cap));
            }
            TrainFeedback::Full => {}
            TrainFeedback::Bandit => label.push_str(&format!(" bandit x{}", self.train_passes.max(1))),
        }
        label
    }
}

/// A candidate's result on one case, averaged over seeds. Read back from `quiver suite
/// --json`'s output, a figure that was not a number (written `null`: a spend over a
/// budget of 0, say) is one again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    /// The case's table.
    pub table: String,
    /// Whether the case starts cold.
    pub cold: bool,
    /// Decisions made after a request before its quality arrives.
    pub feedback_delay: usize,
    /// Its budget as a share of the best model's cost.
    pub budget_share: f64,
    /// The candidate, as [`Candidate::label`] names it.
    pub candidate: String,
    /// Mean quality on the evaluation rows.
    #[serde(deserialize_with = "number_or_nan")]
    pub quality: f64,
    /// Mean spend over the budget.
    #[serde(deserialize_with = "number_or_nan")]
    pub spend_vs_budget: f64,
    /// Whether the budget can be kept at all: it is at least the cheapest model's mean
    /// cost on the evaluation rows.
    pub feasible: bool,
    /// The hull at the candidate's mean cost.
    #[serde(deserialize_with = "number_or_nan")]
    pub hull: f64,
    /// Quality minus hull.
    #[serde(deserialize_with = "number_or_nan")]
    pub lift: f64,
    /// Quality minus the hull at the budget: against the best fixed mix that spends up to
    /// it, so that spending less than the budget where more would have paid shows (`lift`
    /// measures against a mix as cheap as the candidate).
    #[serde(deserialize_with = "number_or_nan")]
    pub lift_at_budget: f64,
    /// The lift of the same candidate shown every model's outcome (full information).
    #[serde(deserialize_with = "number_or_nan")]
    pub full_information_lift: f64,
}

/// A number, or NaN where JSON has `null` (as `serde_json` writes a NaN).
fn number_or_nan<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

impl CaseResult {
    /// What names the case among a run's: its table, budget and candidate.
    fn key(&self) -> (String, u64, String) {
        (
            self.table.clone(),
            self.budget_share.to_bits(),
            self.candidate.clone(),
        )
    }

    /// The kind of case the report's summary counts it in: `trained` (drifting ones too),
    /// `cold`, or `late` (cold, with each quality [`LATE_FEEDBACK`] decisions late).
    pub fn kind(&self) -> &'static str {
        match (self.cold, self.feedback_delay > 0) {
            (false, _) => "trained",
            (true, false) => "cold",
            (true, true) => "late",
        }
    }
}

/// The name the folds of one table share: `routerbench-train-fold1+cold` is in
/// `routerbench-train+cold`.
pub fn table_group(table: &str) -> String {
    let (name, variant) = table.split_at(table.find('+').unwrap_or(table.len()));
    let name = match name.rsplit_once("-fold") {
        Some((table, fold)) if !fold.is_empty() && fold.bytes().all(|b| b.is_ascii_digit()) => table,
        _ => name,
    };
    format!("{name}{variant}")
}

/// One candidate's mean lift over the hull over a set of cases, in a run of the suite and
/// in a base run.
#[derive(Debug, Clone, PartialEq)]
pub struct LiftChange {
    /// The set: a table group ([`table_group`]) or a kind of case ([`CaseResult::kind`]),
    /// or `all`.
    pub cases_of: String,
    /// The candidate's label.
    pub candidate: String,
    /// Cases in the set, matched in both runs.
    pub cases: usize,
    /// The mean lift in the base run.
    pub base: f64,
    /// The mean lift in the run compared.
    pub new: f64,
}

/// A run of the suite against a base run (see [`compare`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Per table group, in the order the run has them.
    pub by_table: Vec<LiftChange>,
    /// Per kind of case, then over all cases.
    pub by_kind: Vec<LiftChange>,
    /// Cases of the run the base lacks (another table, budget or candidate), left out.
    pub unmatched: usize,
    /// Cases of the base the run lacks, left out.
    pub base_unmatched: usize,
    /// Cases of both whose lift is no number in one or both, left out.
    pub unnumbered: usize,
}

/// The first case that `results` holds twice (a run has each once), named.
pub fn repeated_case(results: &[CaseResult]) -> Option<String> {
    let mut seen = std::collections::BTreeSet::new();
    results.iter().find(|r| !seen.insert(r.key())).map(|r| {
        format!(
            "table {}, budget {}, candidate {}",
            r.table, r.budget_share, r.candidate
        )
    })
}

/// Compares `new` with `base` case by case: a case is matched by its table, budget and
/// candidate, so two builds' runs of the same candidates compare, and each mean is over the
/// matched cases whose lift is a number in both. Each run holds a case once
/// ([`repeated_case`]).
pub fn compare(new: &[CaseResult], base: &[CaseResult]) -> Comparison {
    let base: BTreeMap<_, &CaseResult> = base.iter().map(|r| (r.key(), r)).collect();
    let run: std::collections::BTreeSet<_> = new.iter().map(CaseResult::key).collect();
    let pairs: Vec<(&CaseResult, &CaseResult)> = new
        .iter()
        .filter_map(|r| base.get(&r.key()).map(|b| (r, *b)))
        .collect();
    // A lift that is no number (written `null`) is left out, as the report leaves it.
    let numbered: Vec<_> = pairs
        .iter()
        .filter(|(r, b)| r.lift.is_finite() && b.lift.is_finite())
        .collect();
    let mean_by = |cases_of: &dyn Fn(&CaseResult) -> String| {
        let mut changes: Vec<LiftChange> = Vec::new();
        for (r, b) in &numbered {
            let name = cases_of(r);
            let at = changes
                .iter()
                .position(|c| c.cases_of == name && c.candidate == r.candidate)
                .unwrap_or_else(|| {
                    changes.push(LiftChange {
                        cases_of: name,
                        candidate: r.candidate.clone(),
                        cases: 0,
                        base: 0.0,
                        new: 0.0,
                    });
                    changes.len() - 1
                });
            let change = &mut changes[at];
            change.cases += 1;
            change.base += b.lift;
            change.new += r.lift;
        }
        for change in &mut changes {
            change.base /= change.cases as f64;
            change.new /= change.cases as f64;
        }
        changes
    };
    let mut by_kind = mean_by(&|r| r.kind().to_owned());
    by_kind.sort_by_key(|c| ["trained", "cold", "late"].iter().position(|k| *k == c.cases_of));
    by_kind.extend(mean_by(&|_| "all".to_owned()));
    Comparison {
        by_table: mean_by(&|r| table_group(&r.table)),
        by_kind,
        unmatched: new.len() - pairs.len(),
        unnumbered: pairs.len() - numbered.len(),
        base_unmatched: base.keys().filter(|key| !run.contains(*key)).count(),
    }
}

/// Runs every candidate on every case over `seeds` seeds, with the server's context (the
/// prompt, no task label) and only the budget set.
pub fn run(
    cases: &[Case],
    candidates: &[Candidate],
    seeds: u64,
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<CaseResult>> {
    let mut results = Vec::new();
    for case in cases {
        let builder = ContextBuilder::new(case.test.prompts.is_some(), &[], case.test.feature_names.len());
        let cheapest = crate::metrics::single_arms(&case.test, None)
            .iter()
            .map(|s| s.mean_cost_usd)
            .fold(f64::INFINITY, f64::min);
        let env = Environment::new(&case.test, &builder)?;
        let train = Environment::new(&case.train, &builder)?;
        // Priors per cap, fitted once per case.
        let mut fitted: Vec<(f64, Priors)> = Vec::new();
        for candidate in candidates {
            let (priors, bandit_train) = match candidate.feedback {
                _ if case.cold => (None, None),
                TrainFeedback::Full => {
                    let cap = candidate.prior_cap;
                    if !fitted.iter().any(|(c, _)| *c == cap) {
                        fitted.push((cap, fit_wide(&train, &builder.definition(), cap)));
                    }
                    (
                        fitted.iter().find(|(c, _)| *c == cap).map(|(_, p)| p.clone()),
                        None,
                    )
                }
                TrainFeedback::Bandit => (None, Some(&train)),
            };
            let settings = ReplaySettings {
                variants: vec![Variant {
                    spec: candidate.spec.clone(),
                    objective: Objective::default(),
                    budget_usd: Some(case.budget_usd),
                    label: candidate.spec.to_string(),
                }],
                seeds,
                knobs: Knobs {
                    drift: case.drift.clone(),
                    feedback_delay: case.feedback_delay,
                    ..Knobs::default()
                },
                frozen: false,
                train_passes: candidate.train_passes.max(1),
                explore_passes: 0,
                priors,
                pacer_step: DEFAULT_PACING_STEP,
                checkpoints: 2,
                full_information: true,
            };
            let runs = replay(&env, bandit_train, &settings, progress)?;
            let summary =
                crate::report::summarize(&case.test, &builder.definition(), None, &settings, &runs, None);
            let p = &summary.policies[0];
            results.push(CaseResult {
                table: case.table.clone(),
                cold: case.cold,
                feedback_delay: case.feedback_delay,
                budget_share: case.budget_share,
                candidate: candidate.label(),
                quality: p.mean_quality,
                spend_vs_budget: p.mean_cost_usd / case.budget_usd,
                feasible: case.budget_usd >= cheapest,
                hull: p.hull_quality_at_cost,
                lift: p.lift_over_hull,
                lift_at_budget: p
                    .hull_quality_at_budget
                    .map_or(f64::NAN, |hull| p.mean_quality - hull),
                full_information_lift: p.full_information.as_ref().map_or(f64::NAN, |f| f.lift_over_hull),
            });
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(table: &str, budget_share: f64, candidate: &str, lift: f64) -> CaseResult {
        CaseResult {
            table: table.into(),
            cold: table.contains("+cold"),
            feedback_delay: if table.contains("+late") { LATE_FEEDBACK } else { 0 },
            budget_share,
            candidate: candidate.into(),
            quality: 0.5 + lift,
            spend_vs_budget: 1.0,
            feasible: true,
            hull: 0.5,
            lift,
            lift_at_budget: lift,
            full_information_lift: f64::NAN,
        }
    }

    #[test]
    fn the_folds_of_a_table_are_one_group() {
        for (table, group) in [
            ("routerbench-train-fold1+cold", "routerbench-train+cold"),
            ("builtin-train-fold0", "builtin-train"),
            ("builtin-train-fold12+cold+late", "builtin-train+cold+late"),
            ("irt-60+drift", "irt-60+drift"),
            ("irt-30-10k", "irt-30-10k"),
            ("data-folder+cold", "data-folder+cold"),
            ("data-fold", "data-fold"),
        ] {
            assert_eq!(table_group(table), group, "{table}");
        }
    }

    #[test]
    fn a_run_compares_with_a_base_case_by_case() {
        let base = [
            result("t-fold0", 0.1, "a", 0.01),
            result("t-fold1", 0.1, "a", 0.03),
            result("t-fold0+cold", 0.1, "a", -0.02),
            result("t-fold0+cold+late", 0.1, "a", -0.04),
            result("t-fold0", 0.1, "b", 0.05),
        ];
        let new = [
            result("t-fold0", 0.1, "a", 0.02),
            result("t-fold1", 0.1, "a", 0.06),
            result("t-fold0+cold", 0.1, "a", 0.01),
            result("t-fold0+cold+late", 0.1, "a", -0.05),
            // Not in the base: another budget, another candidate.
            result("t-fold0", 0.25, "a", 0.9),
            result("t-fold0", 0.1, "c", 0.9),
        ];
        let comparison = compare(&new, &base);
        assert_eq!(comparison.unmatched, 2);
        // Candidate b is in the base alone.
        assert_eq!(comparison.base_unmatched, 1);
        let summary = |changes: &[LiftChange]| -> Vec<(String, usize, f64, f64)> {
            changes
                .iter()
                .map(|c| (c.cases_of.clone(), c.cases, c.base, c.new))
                .collect()
        };
        let close = |got: Vec<(String, usize, f64, f64)>, want: &[(&str, usize, f64, f64)]| {
            assert_eq!(got.len(), want.len(), "{got:?}");
            for (g, w) in got.iter().zip(want) {
                assert_eq!((g.0.as_str(), g.1), (w.0, w.1), "{got:?}");
                assert!((g.2 - w.2).abs() < 1e-15 && (g.3 - w.3).abs() < 1e-15, "{got:?}");
            }
        };
        close(
            summary(&comparison.by_table),
            &[
                ("t", 2, 0.02, 0.04),
                ("t+cold", 1, -0.02, 0.01),
                ("t+cold+late", 1, -0.04, -0.05),
            ],
        );
        close(
            summary(&comparison.by_kind),
            &[
                ("trained", 2, 0.02, 0.04),
                ("cold", 1, -0.02, 0.01),
                ("late", 1, -0.04, -0.05),
                ("all", 4, -0.005, 0.01),
            ],
        );
        assert!(comparison.by_kind.iter().all(|c| c.candidate == "a"));
    }

    #[test]
    fn results_read_back_with_their_missing_lifts() {
        let written = serde_json::to_string(&[result("t+cold", 0.5, "a", 0.02)]).unwrap();
        assert!(written.contains("\"full_information_lift\":null"), "{written}");
        let read: Vec<CaseResult> = serde_json::from_str(&written).unwrap();
        assert!(read[0].full_information_lift.is_nan());
        assert_eq!(read[0].lift, 0.02);
        assert_eq!(read[0].kind(), "cold");
    }
    use quiver_bandit::DEFAULT_ROUTE_POLICY;

    /// The table has what the module docs promise: the split, prices in range, near-duplicate
    /// families, and the shape of the public tables ([`CALIBRATION`]) at every size the
    /// suite uses but the smallest (three models have no spread to speak of).
    #[test]
    fn generated_tables_look_like_evaluation_tables() {
        let (train, test) = IrtTable {
            arms: 30,
            rows: 4000,
            seed: 7,
        }
        .generate();
        assert_eq!((train.rows(), test.rows()), (2800, 1200));
        let singles = crate::metrics::single_arms(&train, None);
        assert!(
            singles
                .iter()
                .all(|s| (0.000005..0.05).contains(&s.mean_cost_usd)),
            "{singles:?}"
        );
        // Members of a family agree far more often than models of different families.
        let agree = |a: usize, b: usize| {
            (0..train.rows())
                .filter(|&r| train.quality(r, a) == train.quality(r, b))
                .count() as f64
                / train.rows() as f64
        };
        assert!(agree(0, 1) > agree(0, 4), "{} vs {}", agree(0, 1), agree(0, 4));
        // Each call costs its prompt's tokens and an answer at the model's list prices. The
        // answer's log length over the prompt's averages `-LENGTH_VARIANCE / 2` on every
        // model: its topic's and family's parts are centred over the topics, so what is left
        // is the topics' uneven counts (about 0.015 over 2,800 rows: each topic's share is
        // off 1/8 by 0.006, times eight parts of deviation 0.87) and the requests' own parts
        // (standard error 0.2 / sqrt(2800) = 0.004): within three standard deviations, 0.05.
        let tokens: Vec<f64> = train
            .prompts
            .iter()
            .flatten()
            .map(|p| f64::from(estimate_tokens(p)))
            .collect();
        let topics = train.tasks.as_deref().unwrap();
        let log_lengths = |m: usize, arm: &quiver_bandit::Arm| -> Vec<(usize, f64)> {
            (0..train.rows())
                .map(|r| {
                    let answer = arm
                        .output_tokens_costing(train.cost_usd(r, m), tokens[r])
                        .unwrap();
                    let topic = topics[r].trim_start_matches("topic").parse().unwrap();
                    (topic, (answer / tokens[r]).ln())
                })
                .collect()
        };
        let priced = train.priced_arms();
        let by_topic: Vec<Vec<f64>> = priced
            .iter()
            .enumerate()
            .map(|(m, arm)| {
                let lengths = log_lengths(m, arm);
                let overall = lengths.iter().map(|(_, l)| l).sum::<f64>() / lengths.len() as f64;
                assert!(
                    (overall + LENGTH_VARIANCE / 2.0).abs() < 0.05,
                    "{}: {overall}",
                    arm.id
                );
                (0..TOPICS)
                    .map(|t| {
                        let on_topic: Vec<f64> = lengths
                            .iter()
                            .filter(|(topic, _)| *topic == t)
                            .map(|(_, l)| *l)
                            .collect();
                        mean(&on_topic)
                    })
                    .collect()
            })
            .collect();
        // Lengths follow the topic. A family's members answer alike: they share both parts
        // and differ by the requests' noise, about 0.2 / sqrt(350) = 0.01 per topic. Two
        // families share the topic's part, so their lengths correlate 0.74 over topics in
        // expectation (neither 0, as without a topic's part, nor 1, as without a family's;
        // eight topics leave the realized figure loose). And a model's length spreads over
        // the topics by about sqrt(0.75^2 + 0.45^2) = 0.87.
        assert!(correlation(&by_topic[0], &by_topic[1]) > 0.99);
        let leaders: Vec<&Vec<f64>> = by_topic.iter().step_by(3).collect();
        let pairs: Vec<f64> = (0..leaders.len())
            .flat_map(|a| (a + 1..leaders.len()).map(move |b| (a, b)))
            .map(|(a, b)| correlation(leaders[a], leaders[b]))
            .collect();
        assert!((0.5..0.95).contains(&mean(&pairs)), "{pairs:?}");
        let spreads: Vec<f64> = by_topic.iter().map(|t| sd(t)).collect();
        assert!((0.5..1.2).contains(&mean(&spreads)), "{spreads:?}");
        for (name, train, _) in generated_tables().into_iter().skip(1) {
            let shape = TableShape::of(&train);
            assert!(shape.uncalibrated().is_empty(), "{name}: {shape:?}");
        }
    }

    /// Without dataset directories the suite is the generated tables and the built-in
    /// scenario's train split in 3 folds: together they hold every train row once as
    /// evaluation and none of its test split.
    #[test]
    fn the_built_in_scenario_joins_by_its_train_split_alone() {
        let all = tables(None, None).unwrap();
        let names: Vec<&str> = all.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "irt-3",
                "irt-11",
                "irt-30",
                "irt-60",
                "irt-30-10k",
                "builtin-train-fold0",
                "builtin-train-fold1",
                "builtin-train-fold2"
            ]
        );
        let (test, train) = Scenario::builtin().unwrap().test_and_train();
        let mut evaluated: Vec<&String> = all[5..].iter().flat_map(|(_, _, t)| &t.ids).collect();
        evaluated.sort();
        let mut train_ids: Vec<&String> = train.ids.iter().collect();
        train_ids.sort();
        assert_eq!(evaluated, train_ids);
        for (name, fold_train, fold_test) in &all[5..] {
            assert_eq!(fold_train.rows() + fold_test.rows(), train.rows(), "{name}");
            assert!(fold_test.ids.iter().all(|id| !test.ids.contains(id)), "{name}");
        }
    }

    /// The shape's statistics against values worked out by hand on a two-model table.
    #[test]
    fn table_shape_by_hand() {
        let data = WideDataset {
            arms: vec!["a".into(), "b".into()],
            ids: (0..4).map(|i| i.to_string()).collect(),
            // a: 1 1 0 0, b: 1 0 1 0 -> accuracies 0.5 and 0.5, answers uncorrelated.
            quality: ndarray::array![[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]],
            cost_usd: Some(Array2::from_shape_fn((4, 2), |(_, a)| {
                [1.0, std::f64::consts::E][a]
            })),
            features: Array2::zeros((4, 0)),
            ..WideDataset::default()
        };
        let shape = TableShape::of(&data);
        assert!((shape.accuracy_mean - 0.5).abs() < 1e-12);
        assert!(shape.accuracy_sd.abs() < 1e-12);
        // log costs 0 and 1: sample sd sqrt(1/2).
        assert!((shape.log_cost_sd - 0.5f64.sqrt()).abs() < 1e-12);
        assert!(shape.answer_correlation.abs() < 1e-12);
        // The oracle is right on 3 prompts of 4.
        assert!((shape.oracle_gain - 0.25).abs() < 1e-12);
        assert_eq!(shape.uncalibrated().len(), CALIBRATION.len(), "{shape:?}");
        // No prompts, nothing to learn from.
        assert!(shape.prompt_signal.is_nan());
    }

    /// Each topic's layout shows in the featurizer's markers as a benchmark task's would,
    /// and no other marker fires: the made-up words carry no digit that would make every
    /// prompt look like arithmetic, nor a letter outside ASCII but in translations.
    #[test]
    fn each_layout_fires_its_own_marker() {
        use quiver_bandit::features::position::{
            CODE, GENERATION, LANGUAGE, MATH, MULTIPLE_CHOICE, QUESTION,
        };
        use quiver_bandit::features::{Featurizer, HashingFeaturizer};
        let featurizer = HashingFeaturizer::for_routes(0);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (topic, layout) in LAYOUTS.iter().enumerate() {
            let expected: &[usize] = match layout {
                Layout::MultipleChoice => &[MULTIPLE_CHOICE],
                Layout::Code => &[CODE, GENERATION],
                Layout::Arithmetic => &[MATH, QUESTION],
                Layout::Question => &[QUESTION],
                Layout::Essay => &[GENERATION],
                Layout::Translation => &[LANGUAGE],
                Layout::Statement => &[],
            };
            for words in [3, 10, 30] {
                let text = prompt(&mut rng, topic, words);
                let x = featurizer.featurize(&text, &[]).unwrap().features;
                let fired: Vec<usize> = (CODE..=GENERATION).filter(|&i| x[i] > 0.0).collect();
                assert_eq!(fired, expected, "{layout:?}: {text}");
            }
        }
    }

    /// The prompt signal of a model that is right exactly on the prompts of one topic, and
    /// of one whose quality is a fair coin the prompt says nothing about.
    #[test]
    fn prompt_signal_by_construction() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let rows = 1000;
        let topics: Vec<bool> = (0..rows).map(|_| rng.random()).collect();
        let table = |quality: Vec<bool>| WideDataset {
            arms: vec!["model".into()],
            ids: (0..rows).map(|i| i.to_string()).collect(),
            prompts: Some(
                topics
                    .iter()
                    .map(|&t| format!("a question about {}", if t { "alpha" } else { "beta" }))
                    .collect(),
            ),
            quality: Array2::from_shape_fn((rows, 1), |(r, _)| f64::from(u8::from(quality[r]))),
            features: Array2::zeros((rows, 0)),
            ..WideDataset::default()
        };
        // Quality is a function of the context, so a ridge shrunk by 10 against ~150 rows
        // a topic predicts all but a few percent of it.
        let knows = TableShape::of(&table(topics.clone())).prompt_signal;
        assert!((0.9..=1.0).contains(&knows), "{knows}");
        // A fit of noise scores below the mean on new rows, by about its degrees of freedom
        // over the rows (a handful of distinct features, 300 rows).
        let coin: Vec<bool> = (0..rows).map(|_| rng.random()).collect();
        let guesses = TableShape::of(&table(coin)).prompt_signal;
        assert!((-0.05..=0.0).contains(&guesses), "{guesses}");
    }

    /// A small case end to end: one result per candidate (trained on priors and under
    /// bandit feedback), the lift is quality minus the hull at the spend and at the budget,
    /// and the budget is kept within 5% over 600 evaluated rows.
    #[test]
    fn a_case_reports_the_lift_over_the_hull() {
        let (train, test) = IrtTable {
            arms: 3,
            rows: 2000,
            seed: 3,
        }
        .generate();
        let cases: Vec<Case> = cases(vec![("t".into(), train, test)], false, false)
            .unwrap()
            .into_iter()
            .filter(|c| c.budget_share == 0.5)
            .collect();
        let candidates = [TrainFeedback::Full, TrainFeedback::Bandit].map(|feedback| Candidate {
            spec: "beta-ts".parse().unwrap(),
            feedback,
            train_passes: 1,
            prior_cap: DEFAULT_PRIOR_CAP,
        });
        let results = run(&cases, &candidates, 1, &|| {}).unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(
            results[1].candidate,
            format!("{} bandit x1", results[0].candidate)
        );
        let singles = crate::metrics::single_arms(&cases[0].test, None);
        let points: Vec<(f64, f64)> = singles
            .iter()
            .map(|s| (s.mean_cost_usd, s.mean_quality))
            .collect();
        let hull_at_budget =
            crate::metrics::frontier_quality_at(&crate::metrics::frontier(&points), cases[0].budget_usd);
        for r in &results {
            assert!((r.lift - (r.quality - r.hull)).abs() < 1e-12);
            assert!(
                (r.lift_at_budget - (r.quality - hull_at_budget)).abs() < 1e-12,
                "{r:?}"
            );
            assert!(r.full_information_lift.is_finite(), "{r:?}");
            assert!(r.feasible && (r.spend_vs_budget - 1.0).abs() < 0.05, "{r:?}");
        }
    }

    /// A cold case evaluates every row of the table, with the budget of the trained ones,
    /// once with each quality at once and once with it [`LATE_FEEDBACK`] decisions late.
    #[test]
    fn cold_cases_evaluate_every_row() {
        let (train, test) = IrtTable {
            arms: 3,
            rows: 100,
            seed: 1,
        }
        .generate();
        let all = cases(vec![("t".into(), train.clone(), test.clone())], false, true).unwrap();
        assert_eq!(all.len(), 3 * BUDGET_SHARES.len());
        let (cold, warm): (Vec<&Case>, Vec<&Case>) = all.iter().partition(|c| c.cold);
        let (late, at_once): (Vec<&Case>, Vec<&Case>) = cold.iter().partition(|c| c.feedback_delay > 0);
        assert_eq!(at_once.len(), BUDGET_SHARES.len());
        assert!(warm.iter().all(|w| w.feedback_delay == 0));
        for ((c, l), w) in at_once.iter().zip(&late).zip(&warm) {
            assert_eq!((c.table.as_str(), l.table.as_str()), ("t+cold", "t+cold+late"));
            assert_eq!(l.feedback_delay, LATE_FEEDBACK);
            assert_eq!(c.test.rows(), train.rows() + test.rows());
            assert_eq!(l.test.quality, c.test.quality);
            assert_eq!((c.budget_usd, l.budget_usd), (w.budget_usd, w.budget_usd));
        }
    }

    /// A late case's learner sees each quality late: with the same seed, rows and budget, a
    /// learner fed at once decides otherwise, and the result says which case it is.
    #[test]
    fn a_late_case_holds_its_quality_back() {
        let (train, test) = IrtTable {
            arms: 11,
            rows: 400,
            seed: 1,
        }
        .generate();
        let cold: Vec<Case> = cases(vec![("t".into(), train, test)], false, true)
            .unwrap()
            .into_iter()
            .filter(|c| c.cold && c.budget_share == 0.5)
            .collect();
        let candidate = Candidate {
            spec: DEFAULT_ROUTE_POLICY.parse().unwrap(),
            feedback: TrainFeedback::Full,
            train_passes: 1,
            prior_cap: DEFAULT_PRIOR_CAP,
        };
        let results = run(&cold, &[candidate], 1, &|| {}).unwrap();
        let delays: Vec<usize> = results.iter().map(|r| r.feedback_delay).collect();
        assert_eq!(delays, [0, LATE_FEEDBACK]);
        assert_ne!(results[0].quality, results[1].quality, "{results:?}");
    }

    #[test]
    fn folds_partition_the_rows() {
        let (train, _) = IrtTable {
            arms: 3,
            rows: 100,
            seed: 1,
        }
        .generate();
        let folds = folds("t", &train, 3);
        let evaluated: usize = folds.iter().map(|(_, _, test)| test.rows()).sum();
        assert_eq!(evaluated, train.rows());
        assert!(folds
            .iter()
            .all(|(_, tr, te)| tr.rows() + te.rows() == train.rows()));
    }
}
