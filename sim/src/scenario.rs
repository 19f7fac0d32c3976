//! Synthetic full-information scenarios generated from a scenario file.
//!
//! The built-in default (`datasets/scenario/default.json`, compiled in) mixes reasoning,
//! code and commonsense requests across six models, calibrated from public data: per-task
//! accuracy and mean cost from the RouterBench subset, list prices from LiteLLM's registry,
//! latency from the LLMPerf leaderboard (see `datasets/scenario/CALIBRATION.md`).
//!
//! Generation, per request: a task by its share; a subtopic of the task (visible in the
//! prompt's words); a hidden difficulty `d ~ N(0, 1)`. Arm `a` answers well with probability
//! `sigmoid(b[a][task] + offset[a][subtopic] - 0.8 d)`, where the offsets (`N(0, 0.7)`)
//! make some models better on some subtopics, so routing can learn below the task level,
//! and the intercept `b` is solved (bisection) so that the expectation over subtopics and
//! difficulty equals the calibrated `accuracy[a][task]` exactly. Cost is the calibrated mean cost times a log-normal
//! factor of mean 1 (log-sd 0.3); latency is `(ttft + ms_per_output_token x output_tokens)
//! x exp(sigma z)`.

use std::collections::BTreeMap;

use ndarray::Array2;
use quiver_bandit::Objective;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Deserialize;

use crate::data::WideDataset;
use crate::error::{Result, SimError};

/// The built-in scenario file.
pub const DEFAULT_SCENARIO: &str = include_str!("../../datasets/scenario/default.json");

/// A scenario file. A key it does not know (a misspelling) is refused by name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// What it models, for its readers.
    #[serde(default)]
    pub description: Option<String>,
    /// Seed of the generation.
    pub seed: u64,
    /// Requests to generate.
    pub requests: usize,
    /// Default reward weights of replays of this scenario.
    pub objective: ObjectiveSpec,
    /// Share of the requests in the `test` split (the rest are `train`).
    pub test_share: f64,
    /// Task mix.
    pub tasks: Vec<TaskSpec>,
    /// The models.
    pub arms: Vec<ArmSpec>,
}

/// Reward weights as written in a scenario file.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveSpec {
    /// Quality points per USD.
    pub w_cost: f64,
    /// Quality points per second.
    pub w_latency: f64,
}

/// One task of the mix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// `reasoning`, `code` or `commonsense`.
    pub name: String,
    /// Share of requests.
    pub share: f64,
    /// The public evaluation it is calibrated from.
    #[serde(default)]
    pub source_eval: Option<String>,
}

/// One model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmSpec {
    /// Model id.
    pub id: String,
    /// USD per input token.
    pub input_usd_per_token: f64,
    /// USD per output token.
    pub output_usd_per_token: f64,
    /// The model's key in LiteLLM's price registry, which its prices come from.
    #[serde(default)]
    pub price_key: Option<String>,
    /// Probability of a good answer per task.
    pub accuracy: BTreeMap<String, f64>,
    /// Mean cost per request per task, USD.
    pub mean_cost_usd: BTreeMap<String, f64>,
    /// Latency model.
    pub latency: LatencySpec,
    /// Typical output tokens per task.
    pub output_tokens: BTreeMap<String, f64>,
}

/// Latency parameters from LLMPerf.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySpec {
    /// Median time to first token, ms.
    pub ttft_ms: f64,
    /// Median decode time per output token, ms.
    pub ms_per_output_token: f64,
    /// Log-space standard deviation of end-to-end latency.
    pub sigma: f64,
    /// The LLMPerf result they come from.
    #[serde(default)]
    pub llmperf_file: Option<String>,
}

impl Scenario {
    /// Parses a scenario file's text.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let scenario: Scenario = serde_json::from_str(text).map_err(|e| SimError::Read {
            path: origin.into(),
            reason: format!("not a scenario file: {e}"),
        })?;
        let bad = |reason: String| SimError::Read {
            path: origin.into(),
            reason,
        };
        if scenario.tasks.is_empty() || scenario.arms.is_empty() || scenario.requests == 0 {
            return Err(bad("a scenario needs tasks, arms and requests > 0".into()));
        }
        if scenario
            .tasks
            .iter()
            .any(|t| !(t.share >= 0.0 && t.share.is_finite()))
            || scenario.tasks.iter().map(|t| t.share).sum::<f64>() <= 0.0
        {
            return Err(bad("task shares must be non-negative with a positive sum".into()));
        }
        if !(0.0..=1.0).contains(&scenario.test_share) {
            return Err(bad(format!(
                "test_share {} is outside [0, 1]",
                scenario.test_share
            )));
        }
        let mut ids = std::collections::HashSet::new();
        if let Some(arm) = scenario.arms.iter().find(|a| !ids.insert(a.id.as_str())) {
            return Err(bad(format!("arm `{}` is given twice", arm.id)));
        }
        let mut names = std::collections::HashSet::new();
        if let Some(task) = scenario.tasks.iter().find(|t| !names.insert(t.name.as_str())) {
            return Err(bad(format!("task `{}` is given twice", task.name)));
        }
        for arm in &scenario.arms {
            let l = &arm.latency;
            for (what, v) in [
                ("input_usd_per_token", arm.input_usd_per_token),
                ("output_usd_per_token", arm.output_usd_per_token),
                ("latency.ttft_ms", l.ttft_ms),
                ("latency.ms_per_output_token", l.ms_per_output_token),
                ("latency.sigma", l.sigma),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(bad(format!("arm `{}` {what} is {v}, not a number >= 0", arm.id)));
                }
            }
            for task in &scenario.tasks {
                for (what, table) in [
                    ("accuracy", &arm.accuracy),
                    ("mean_cost_usd", &arm.mean_cost_usd),
                    ("output_tokens", &arm.output_tokens),
                ] {
                    match table.get(&task.name) {
                        None => {
                            return Err(bad(format!(
                                "arm `{}` has no {what} for task `{}`",
                                arm.id, task.name
                            )))
                        }
                        Some(v) if !v.is_finite() || *v < 0.0 || (what == "accuracy" && *v > 1.0) => {
                            return Err(bad(format!("arm `{}` {what} for `{}` is {v}", arm.id, task.name)))
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        Ok(scenario)
    }

    /// The built-in default scenario.
    pub fn builtin() -> Result<Self> {
        Self::parse(DEFAULT_SCENARIO, "datasets/scenario/default.json")
    }

    /// The scenario's reward weights.
    pub fn objective(&self) -> Result<Objective> {
        Ok(Objective::new(self.objective.w_cost, self.objective.w_latency)?)
    }

    /// The generated table split as `quiver replay` uses it: the test rows to evaluate on
    /// (named `<source> (test split)`) and the train rows to learn from.
    pub fn test_and_train(&self) -> (WideDataset, WideDataset) {
        let (table, splits) = self.generate();
        let mut test = table.clone();
        test.retain_rows(|r| splits[r] == "test");
        test.source = format!("{} (test split)", table.source);
        let mut train = table;
        train.retain_rows(|r| splits[r] == "train");
        (test, train)
    }

    /// Generates the full-information table; `split` of each row is `train` or `test`.
    pub fn generate(&self) -> (WideDataset, Vec<String>) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let k = self.arms.len();
        // Subtopic offsets per arm and task.
        let offsets: Vec<Vec<Vec<f64>>> = self
            .tasks
            .iter()
            .map(|task| {
                let subtopics = subtopics(&task.name).len();
                (0..k)
                    .map(|_| {
                        (0..subtopics)
                            .map(|_| {
                                let z: f64 = StandardNormal.sample(&mut rng);
                                0.7 * z
                            })
                            .collect::<Vec<f64>>()
                    })
                    .collect()
            })
            .collect();
        let intercepts: Vec<Vec<f64>> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(t, task)| {
                self.arms
                    .iter()
                    .enumerate()
                    .map(|(a, arm)| intercept(arm.accuracy[&task.name], &offsets[t][a]))
                    .collect()
            })
            .collect();
        let total_share: f64 = self.tasks.iter().map(|t| t.share).sum();
        let mut data = WideDataset {
            source: format!("builtin:{}", self.name),
            arms: self.arms.iter().map(|a| a.id.clone()).collect(),
            prompts: Some(Vec::new()),
            tasks: Some(Vec::new()),
            features: Array2::zeros((self.requests, 0)),
            ..WideDataset::default()
        };
        let shape = (self.requests, self.arms.len());
        let (mut quality, mut cost, mut latency) =
            (Array2::zeros(shape), Array2::zeros(shape), Array2::zeros(shape));
        let mut splits = Vec::with_capacity(self.requests);
        for i in 0..self.requests {
            let mut u = rng.random::<f64>() * total_share;
            let t = self
                .tasks
                .iter()
                .position(|task| {
                    u -= task.share;
                    u < 0.0
                })
                .unwrap_or(self.tasks.len() - 1);
            let task = &self.tasks[t].name;
            let topics = subtopics(task);
            let s = rng.random_range(0..topics.len());
            let difficulty: f64 = StandardNormal.sample(&mut rng);
            data.ids.push(format!("{}-{i}", self.name));
            data.prompts
                .get_or_insert_with(Vec::new)
                .push(prompt(task, topics[s], &mut rng));
            data.tasks.get_or_insert_with(Vec::new).push(task.clone());
            for (a, arm) in self.arms.iter().enumerate() {
                let p = sigmoid(intercepts[t][a] + offsets[t][a][s] - DIFFICULTY * difficulty);
                quality[[i, a]] = if rng.random::<f64>() < p { 1.0 } else { 0.0 };
                let z: f64 = StandardNormal.sample(&mut rng);
                cost[[i, a]] = arm.mean_cost_usd[task] * (0.3 * z - 0.045).exp();
                let z: f64 = StandardNormal.sample(&mut rng);
                let base = arm.latency.ttft_ms + arm.latency.ms_per_output_token * arm.output_tokens[task];
                latency[[i, a]] = base * (arm.latency.sigma * z).exp();
            }
            splits.push(
                if rng.random::<f64>() < self.test_share {
                    "test"
                } else {
                    "train"
                }
                .to_string(),
            );
        }
        data.quality = quality;
        data.cost_usd = Some(cost);
        data.latency_ms = Some(latency);
        (data, splits)
    }
}

/// Weight of the hidden difficulty on the logit.
const DIFFICULTY: f64 = 0.8;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The intercept `b` with `E[sigmoid(b + offset_s - 0.8 d)] = accuracy`, the expectation
/// over uniform subtopics and `d ~ N(0, 1)` (64-point quantile rule), by bisection.
fn intercept(accuracy: f64, offsets: &[f64]) -> f64 {
    let normal = statrs::distribution::Normal::standard();
    let nodes: Vec<f64> = (0..64)
        .map(|j| statrs::distribution::ContinuousCDF::inverse_cdf(&normal, (j as f64 + 0.5) / 64.0))
        .collect();
    let mean = |b: f64| -> f64 {
        let total: f64 = offsets
            .iter()
            .flat_map(|o| nodes.iter().map(move |d| sigmoid(b + o - DIFFICULTY * d)))
            .sum();
        total / (offsets.len() * nodes.len()) as f64
    };
    let target = accuracy.clamp(1e-4, 1.0 - 1e-4);
    let (mut lo, mut hi) = (-30.0, 30.0);
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if mean(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

fn subtopics(task: &str) -> &'static [&'static str] {
    match task {
        "reasoning" => &["physics", "biology", "earth", "chemistry"],
        "code" => &["strings", "arithmetic", "lists", "dictionaries"],
        _ => &["social", "physical", "time"],
    }
}

const NAMES: [&str; 8] = ["Maria", "Kevin", "Aisha", "Tom", "Lena", "Ravi", "Sofia", "Jamal"];

fn pick<'a>(options: &[&'a str], rng: &mut ChaCha8Rng) -> &'a str {
    options[rng.random_range(0..options.len())]
}

/// A prompt of the task and subtopic, worded like the public benchmark it stands for.
fn prompt(task: &str, subtopic: &str, rng: &mut ChaCha8Rng) -> String {
    match (task, subtopic) {
        ("reasoning", topic) => {
            let (subject, options) = match topic {
                "physics" => (
                    "a ball rolling down a ramp speeds up",
                    ["gravity", "friction", "magnetism", "light"],
                ),
                "biology" => (
                    "plants need sunlight",
                    ["photosynthesis", "respiration", "digestion", "erosion"],
                ),
                "earth" => (
                    "rocks on a riverbed are smooth",
                    ["erosion", "volcanism", "condensation", "orbit"],
                ),
                _ => (
                    "salt dissolves faster in warm water",
                    ["molecular motion", "density", "mass", "color"],
                ),
            };
            format!(
                "Which of the following best explains why {subject}?\nA) {}\nB) {}\nC) {}\nD) {}\nAnswer:",
                options[0], options[1], options[2], options[3]
            )
        }
        ("code", topic) => {
            let what = match topic {
                "strings" => pick(
                    &[
                        "reverse the words in a string",
                        "count the vowels of a string",
                        "check whether a string is a palindrome",
                    ],
                    rng,
                ),
                "arithmetic" => pick(
                    &[
                        "find the nth Fibonacci number",
                        "check whether a number is prime",
                        "compute the greatest common divisor of two numbers",
                    ],
                    rng,
                ),
                "lists" => pick(
                    &[
                        "remove duplicates from a list",
                        "find the second largest element of a list",
                        "rotate a list by k positions",
                    ],
                    rng,
                ),
                _ => pick(
                    &[
                        "merge two dictionaries",
                        "invert a dictionary",
                        "count word frequencies into a dictionary",
                    ],
                    rng,
                ),
            };
            format!("Write a python function to {what}.")
        }
        (_, topic) => {
            let (a, b) = (pick(&NAMES, rng), pick(&NAMES, rng));
            let sentence = match topic {
                "social" => {
                    format!("{a} apologized to {b} at dinner because _ had been rude the day before.")
                }
                "physical" => {
                    format!("{a} could not lift the box that {b} carried easily because _ was weaker.")
                }
                _ => format!("{a} finished the report before {b} because _ started working much earlier."),
            };
            format!(
                "Please answer with the letter of the correct answer.\n{sentence}\nA) {a}\nB) {b}\nAnswer:"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each arm's accuracy per task matches the calibration within 4 binomial standard
    /// errors (the intercepts make the expectation exact).
    #[test]
    fn generated_accuracy_matches_the_calibration() {
        let s = Scenario::builtin().unwrap();
        let (data, _) = s.generate();
        let tasks = data.tasks.as_ref().unwrap();
        for (a, arm) in s.arms.iter().enumerate() {
            for task in &s.tasks {
                let rows: Vec<usize> = (0..data.rows()).filter(|&r| tasks[r] == task.name).collect();
                let n = rows.len() as f64;
                let mean = rows.iter().map(|&r| data.quality(r, a)).sum::<f64>() / n;
                let p = arm.accuracy[&task.name];
                let tolerance = 4.0 * (p * (1.0 - p) / n).sqrt();
                assert!(
                    (mean - p).abs() < tolerance,
                    "{} {}: {mean} vs {p}",
                    arm.id,
                    task.name
                );
            }
        }
    }

    /// The split partitions the table: test rows and train rows in their order, by label.
    #[test]
    fn test_and_train_partition_the_table_by_its_split() {
        let s = Scenario::builtin().unwrap();
        let (table, splits) = s.generate();
        let (test, train) = s.test_and_train();
        let ids = |label: &str| -> Vec<String> {
            (0..table.rows())
                .filter(|&r| splits[r] == label)
                .map(|r| table.ids[r].clone())
                .collect()
        };
        assert_eq!(test.ids, ids("test"));
        assert_eq!(train.ids, ids("train"));
        assert_eq!(test.rows() + train.rows(), table.rows());
        assert_eq!(test.source, "builtin:default (test split)");
    }

    #[test]
    fn scenario_files_are_validated() {
        let mut value: serde_json::Value = serde_json::from_str(DEFAULT_SCENARIO).unwrap();
        value["tasks"] = serde_json::json!([]);
        let err = Scenario::parse(&value.to_string(), "s.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("s.json") && err.contains("needs tasks"), "{err}");
        let refusal = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut value: serde_json::Value = serde_json::from_str(DEFAULT_SCENARIO).unwrap();
            change(&mut value);
            Scenario::parse(&value.to_string(), "s.json")
                .unwrap_err()
                .to_string()
        };
        let err = refusal(&|v| v["objectve"] = serde_json::json!({}));
        assert!(err.contains("unknown field `objectve`"), "{err}");
        let err = refusal(&|v| v["arms"][1]["latncy_extra"] = serde_json::json!(1));
        assert!(err.contains("unknown field `latncy_extra`"), "{err}");
        let err = refusal(&|v| v["arms"][2]["latency"]["sigma"] = serde_json::json!(-1));
        assert!(err.contains("latency.sigma is -1, not a number >= 0"), "{err}");
        let err = refusal(&|v| v["arms"][0]["input_usd_per_token"] = serde_json::json!(-1));
        assert!(err.contains("input_usd_per_token is -1"), "{err}");
        let err = refusal(&|v| v["arms"][1]["id"] = v["arms"][0]["id"].clone());
        assert!(err.contains("is given twice"), "{err}");
    }

    #[test]
    fn builtin_scenario_generates_deterministically_with_calibrated_means() {
        let s = Scenario::builtin().unwrap();
        let (a, split_a) = s.generate();
        let (b, split_b) = s.generate();
        assert_eq!(a, b);
        assert_eq!(split_a, split_b);
        assert_eq!(a.rows(), s.requests);
        assert_eq!(a.num_arms(), s.arms.len());
        // Mean cost per task and arm matches the calibration within sampling error (log-sd
        // 0.3 over ~800+ rows: relative standard error ~1%); allow 5%.
        let tasks = a.tasks.as_ref().unwrap();
        for (arm_index, arm) in s.arms.iter().enumerate() {
            for task in &s.tasks {
                let rows: Vec<usize> = (0..a.rows()).filter(|&r| tasks[r] == task.name).collect();
                let mean = rows.iter().map(|&r| a.cost_usd(r, arm_index)).sum::<f64>() / rows.len() as f64;
                let want = arm.mean_cost_usd[&task.name];
                assert!(
                    (mean / want - 1.0).abs() < 0.05,
                    "{} {}: {mean} vs {want}",
                    arm.id,
                    task.name
                );
            }
        }
    }
}
