//! RouteLLM eval CSVs (Ong et al. 2024, arXiv:2406.18665): MMLU and GSM8K correctness of a
//! strong and a weak model per prompt.
//!
//! Columns: `prompt`, then one `True`/`False` column per model, and for GSM8K a
//! `<model>_response` column per model (ignored). The task is the file's name without its
//! extension (`mmlu_anatomy`, `gsm8k_responses`). The files carry no cost, so it is priced
//! from list prices: `ceil(chars / 4)` input tokens plus [`ASSUMED_OUTPUT_TOKENS`] output
//! tokens at the per-token prices of [`PRICES`], which the table carries as its list
//! prices; a model not listed there leaves the table without costs.

use quiver_bandit::Arm;

use super::prices::ListPrices;
use super::wide::{optional_in_range, read_wide_tables, WideColumns};
use super::{Dataset, DatasetReader, WideDataset};
use crate::error::Result;
use crate::source::Table;

/// USD per input and output token of the models RouteLLM evaluates: OpenAI's price for
/// gpt-4-1106-preview ($10 / $30 per million tokens) and the Together AI / Anyscale
/// Endpoints list price for Mixtral-8x7B-Instruct ($0.60 per million either way).
pub const PRICES: [(&str, f64, f64); 2] = [
    ("gpt-4-1106-preview", 10e-6, 30e-6),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", 0.6e-6, 0.6e-6),
];

/// Output tokens assumed per answer when pricing RouteLLM rows.
pub const ASSUMED_OUTPUT_TOKENS: f64 = 256.0;

/// Reader for RouteLLM eval CSVs.
pub struct RouteLlmReader;

impl RouteLlmReader {
    fn read_table(table: &Table) -> Result<WideDataset> {
        let arms: Vec<String> = table
            .columns()
            .into_iter()
            .filter(|c| c != "prompt" && !c.ends_with("_response") && !c.is_empty())
            .collect();
        let prompts: Vec<String> = table
            .texts("prompt", "RouteLLM eval CSVs have a prompt column")?
            .into_iter()
            .map(|p| p.unwrap_or_default())
            .collect();
        let task = table
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let list_prices: ListPrices = PRICES
            .iter()
            .filter(|(model, _, _)| arms.iter().any(|a| a == model))
            .map(|(model, input, output)| (model.to_string(), (*input, *output)))
            .collect();
        let priced: Option<Vec<Arm>> = arms
            .iter()
            .map(|a| {
                let &(input, output) = list_prices.get(a)?;
                Some(Arm::new(a.as_str()).with_prices(input, output))
            })
            .collect();
        let cost_usd = priced.map(|priced| {
            priced
                .iter()
                .map(|arm| {
                    prompts
                        .iter()
                        .map(|p| {
                            let tokens = f64::from(quiver_bandit::features::estimate_tokens(p));
                            Some(arm.cost_usd(tokens, ASSUMED_OUTPUT_TOKENS))
                        })
                        .collect()
                })
                .collect()
        });
        let columns = WideColumns {
            quality: arms
                .iter()
                .map(|a| optional_in_range(table, a, 0.0, 1.0))
                .collect::<Result<_>>()?,
            cost_usd,
            latency_ms: None,
            split: None,
            ids: (0..table.rows())
                .map(|r| format!("{task}:{}", table.file_row(r) + 1))
                .collect(),
            tasks: Some(vec![task; table.rows()]),
            prompts: Some(prompts),
            feature_names: Vec::new(),
            features: ndarray::Array2::zeros((table.rows(), 0)),
            arms,
        };
        let mut data = columns.into_dataset(table);
        data.list_prices = list_prices;
        Ok(data)
    }
}

impl DatasetReader for RouteLlmReader {
    fn detects(&self, columns: &[String]) -> bool {
        columns.first().is_some_and(|c| c == "prompt") && columns.len() >= 3
    }

    fn read(&self, source: &str, tables: &[Table]) -> Result<Dataset> {
        read_wide_tables(source, tables, Self::read_table)
    }
}
