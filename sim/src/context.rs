//! From a dataset row to the learner's [`Context`].
//!
//! With prompts, the context is the server's ([`HashingFeaturizer::for_routes`]): the
//! prompt's features with the row's `f_*` values appended as caller features, so that a
//! replay sees what `quiver serve` will see for the same request. A task label enters only
//! when asked (`task_features`), as a one-hot before the `f_*` values: a server never
//! derives one, so asking means the requests will carry it in their `features`. Without
//! prompts the context is `[1 (bias), task one-hot, f_*]`, the task being all there is.
//! With an embedding block ([`ContextBuilder::with_embeddings`]) the prompt's projected
//! embedding follows, as on a route with one.
//! One builder serves train and test alike, so both splits share a layout.

use std::sync::Arc;

use quiver_bandit::{
    Context, ContextLayout, EmbeddingBlock, EmbeddingFeaturizer, Featurizer, HashingFeaturizer,
};

use crate::data::{LoggedDataset, WideDataset};
use crate::embeddings::PromptEmbeddings;
use crate::error::{Result, SimError};

/// Whether a table's task label enters its contexts: only when asked (the requests will
/// send it as features), or when the table has no prompts and the task is all there is.
pub fn task_in_context(has_prompts: bool, asked: bool) -> bool {
    asked || !has_prompts
}

/// Builds contexts with one fixed layout.
#[derive(Debug, Clone)]
pub struct ContextBuilder {
    featurizer: Option<PromptFeaturizer>,
    tasks: Vec<String>,
    features: usize,
}

#[derive(Debug, Clone)]
enum PromptFeaturizer {
    Hashing(HashingFeaturizer),
    Embedding(Arc<EmbeddingFeaturizer<PromptEmbeddings>>),
    /// A log's: its server's layout, each decision's block as logged.
    Logged(ContextLayout),
}

impl PromptFeaturizer {
    fn definition(&self) -> String {
        match self {
            PromptFeaturizer::Hashing(f) => f.definition(),
            PromptFeaturizer::Embedding(f) => f.definition(),
            PromptFeaturizer::Logged(layout) => layout.definition(),
        }
    }

    fn dim(&self) -> usize {
        match self {
            PromptFeaturizer::Hashing(f) => f.dim(),
            PromptFeaturizer::Embedding(f) => f.dim(),
            PromptFeaturizer::Logged(layout) => layout.dim(),
        }
    }

    /// A context; a logged layout's block is `logged` (zeros without one).
    fn featurize(&self, prompt: &str, extra: &[f64], logged: Option<&[f64]>) -> Result<Context> {
        Ok(match self {
            PromptFeaturizer::Hashing(f) => f.featurize(prompt, extra)?,
            PromptFeaturizer::Embedding(f) => f.featurize(prompt, extra)?,
            PromptFeaturizer::Logged(layout) => layout.build(prompt, extra, logged)?,
        })
    }
}

impl ContextBuilder {
    /// A builder for data with or without prompts, the task labels to one-hot as caller
    /// features (any order, duplicates allowed; none to leave the task out) and
    /// `features` caller features per row.
    pub fn new(with_prompts: bool, task_features: &[String], features: usize) -> Self {
        let mut tasks = task_features.to_vec();
        tasks.sort();
        tasks.dedup();
        let extra = tasks.len() + features;
        ContextBuilder {
            featurizer: with_prompts.then(|| PromptFeaturizer::Hashing(HashingFeaturizer::for_routes(extra))),
            tasks,
            features,
        }
    }

    /// The same layout followed by a block of `dims` projected coordinates of each
    /// prompt's embedding in `embeddings` (zeros for a prompt it lacks), as a route with
    /// that embedding source and width builds. Data without prompts has nothing to embed.
    pub fn with_embeddings(mut self, embeddings: PromptEmbeddings, dims: usize) -> Result<Self> {
        let Some(PromptFeaturizer::Hashing(hashing)) = self.featurizer else {
            return Err(SimError::InvalidOption(
                "an embedding block needs prompts, and this data has none".into(),
            ));
        };
        let featurizer = EmbeddingFeaturizer::new(hashing, embeddings, dims)?;
        self.featurizer = Some(PromptFeaturizer::Embedding(Arc::new(featurizer)));
        Ok(self)
    }

    /// What builds the contexts: the server's featurizer definition with prompts (equal
    /// to a route's with as many caller features), else the bias-task-features layout.
    pub fn definition(&self) -> String {
        match &self.featurizer {
            Some(f) => f.definition(),
            None => format!("bias+tasks({})+caller({})", self.tasks.len(), self.features),
        }
    }

    /// The task labels one-hot in the contexts, in their order (sorted), first among the
    /// caller features.
    pub fn tasks(&self) -> &[String] {
        &self.tasks
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

    /// The builder of a log's contexts: its prompts and features (logs carry no task), and,
    /// on a log of a route with an embedding block, that block as each decision logged it
    /// (zeros where the server fell back to hashing alone, as it did).
    pub fn for_log(log: &LoggedDataset) -> Self {
        let builder = ContextBuilder::new(log.prompts.is_some(), &[], log.feature_names.len());
        let block = log.context.as_deref().and_then(EmbeddingBlock::from_definition);
        match (builder.featurizer.clone(), block) {
            (Some(PromptFeaturizer::Hashing(hashing)), Some(block)) => ContextBuilder {
                featurizer: Some(PromptFeaturizer::Logged(ContextLayout::new(hashing, Some(block)))),
                ..builder
            },
            _ => builder,
        }
    }

    /// The context of every decision of a log (see [`ContextBuilder::for_log`]).
    pub fn log_contexts(log: &LoggedDataset) -> Result<Vec<Context>> {
        let builder = Self::for_log(log);
        (0..log.rows())
            .map(|i| {
                let logged = log.embeddings.as_ref().and_then(|e| e[i].as_deref());
                builder.build_logged(
                    log.prompts.as_ref().map(|p| p[i].as_str()),
                    None,
                    log.row_features(i),
                    logged,
                )
            })
            .collect()
    }

    /// The context of one row.
    pub fn build(&self, prompt: Option<&str>, task: Option<&str>, features: &[f64]) -> Result<Context> {
        self.build_logged(prompt, task, features, None)
    }

    fn build_logged(
        &self,
        prompt: Option<&str>,
        task: Option<&str>,
        features: &[f64],
        logged: Option<&[f64]>,
    ) -> Result<Context> {
        let mut extra: Vec<f64> = self
            .tasks
            .iter()
            .map(|t| if Some(t.as_str()) == task { 1.0 } else { 0.0 })
            .collect();
        extra.extend_from_slice(features);
        match &self.featurizer {
            Some(f) => f.featurize(prompt.unwrap_or_default(), &extra, logged),
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
