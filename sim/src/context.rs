//! From a dataset row to the learner's [`Context`].
//!
//! With prompts, the context is the [`HashingFeaturizer`]'s vector (bias first) with the
//! task one-hot and the row's `f_*` values appended as caller features. Without prompts it
//! is `[1 (bias), task one-hot, f_*]`. One builder serves train and test alike, so both
//! splits share a layout.

use quiver_bandit::{Context, Featurizer, FeaturizerConfig, HashingFeaturizer};

use crate::data::{LoggedDataset, WideDataset};
use crate::error::Result;

/// Builds contexts with one fixed layout.
#[derive(Debug, Clone)]
pub struct ContextBuilder {
    featurizer: Option<HashingFeaturizer>,
    tasks: Vec<String>,
    features: usize,
}

impl ContextBuilder {
    /// A builder for data with or without prompts, the given task labels (any order,
    /// duplicates allowed) and `features` caller features per row.
    pub fn new(with_prompts: bool, tasks: &[String], features: usize) -> Self {
        let mut tasks = tasks.to_vec();
        tasks.sort();
        tasks.dedup();
        let extra = tasks.len() + features;
        ContextBuilder {
            featurizer: with_prompts.then(|| {
                HashingFeaturizer::new(FeaturizerConfig {
                    extra_features: extra,
                    ..FeaturizerConfig::default()
                })
            }),
            tasks,
            features,
        }
    }

    /// The dimension of every context.
    pub fn dim(&self) -> usize {
        match &self.featurizer {
            Some(f) => f.dim(),
            None => 1 + self.tasks.len() + self.features,
        }
    }

    /// The context of row `row` of a wide table (its prompt, task and features).
    pub fn wide_row(&self, data: &WideDataset, row: usize) -> Result<Context> {
        self.build(
            data.prompts.as_ref().map(|p| p[row].as_str()),
            data.tasks.as_ref().map(|t| t[row].as_str()),
            data.row_features(row),
        )
    }

    /// The context of every decision of a log (its prompt and features; logs carry no task).
    pub fn log_contexts(log: &LoggedDataset) -> Result<Vec<Context>> {
        let builder = ContextBuilder::new(log.prompts.is_some(), &[], log.feature_names.len());
        (0..log.rows())
            .map(|i| {
                builder.build(
                    log.prompts.as_ref().map(|p| p[i].as_str()),
                    None,
                    log.row_features(i),
                )
            })
            .collect()
    }

    /// The context of one row.
    pub fn build(&self, prompt: Option<&str>, task: Option<&str>, features: &[f64]) -> Result<Context> {
        let mut extra: Vec<f64> = self
            .tasks
            .iter()
            .map(|t| if Some(t.as_str()) == task { 1.0 } else { 0.0 })
            .collect();
        extra.extend_from_slice(features);
        match &self.featurizer {
            Some(f) => Ok(f.featurize(prompt.unwrap_or_default(), &extra)?),
            None => {
                let mut x = Vec::with_capacity(self.dim());
                x.push(1.0);
                x.extend(extra);
                Ok(Context {
                    features: x,
                    input_tokens: 0,
                })
            }
        }
    }
}
