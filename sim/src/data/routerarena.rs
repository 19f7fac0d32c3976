//! RouterArena's cached model results (Lu et al. 2025, arXiv:2510.00202): one JSON-lines
//! file per model, one line per query.
//!
//! Fields read: `global_index` (the query's id, its task before the last `_`:
//! `MMLUPro_history_12` is task `MMLUPro_history`), `question` (the prompt),
//! `llm_selected` (the model), and `evaluation_result`'s `score` (quality) and
//! `inference_cost` (USD, from the call's real token usage). Scores are clipped to
//! `[0, 1]`: METEOR, one of the benchmark's metrics, can come out slightly below 0 (one
//! of claude-3-haiku's NarrativeQA answers scores -0.033). Every file must hold the
//! same queries; the table's rows are the first file's, in its order. A `model_cost.json`
//! beside the files gives the models' list prices ([`super::prices`]).

use std::collections::HashMap;

use quiver_bandit::limits;

use super::prices::read_list_prices;
use super::wide::WideColumns;
use super::{Dataset, DatasetReader, WideDataset};
use crate::error::{Result, SimError};
use crate::source::Table;

/// Reader for RouterArena's cached results.
pub struct RouterArenaReader;

/// The list prices' file beside the results.
const PRICES_FILE: &str = "model_cost.json";

/// One model's results: its name and, by query id, what its answer scored and cost.
struct ModelResults {
    model: String,
    by_query: HashMap<String, Measured>,
}

/// What one answer scored and cost.
struct Measured {
    quality: Option<f64>,
    cost_usd: Option<f64>,
}

impl RouterArenaReader {
    /// A file's model and results, and its query ids and prompts in file order.
    fn read_model(table: &Table) -> Result<(ModelResults, Vec<String>, Vec<String>)> {
        const HINT: &str = "RouterArena results have global_index, question, llm_selected and evaluation_result";
        let texts = |column: &str| -> Result<Vec<String>> {
            Ok(table
                .texts(column, HINT)?
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect())
        };
        let ids = texts("global_index")?;
        let prompts = texts("question")?;
        let models = texts("llm_selected")?;
        let model = models.first().cloned().unwrap_or_default();
        if let Some(row) = models.iter().position(|m| *m != model) {
            return Err(table.bad_value(
                row,
                "llm_selected",
                format!("`{}`, where the file's first row has `{model}`: one model per file", models[row]),
            ));
        }
        let score = table.field_numbers("evaluation_result", "score", HINT)?;
        let cost = table.field_numbers("evaluation_result", "inference_cost", HINT)?;
        let mut by_query = HashMap::with_capacity(ids.len());
        for (row, id) in ids.iter().enumerate() {
            let checked = |value: Option<f64>, field: &str, hi: f64| {
                let column = format!("evaluation_result.{field}");
                value
                    .map(|x| crate::source::check_range(table, row, &column, x, 0.0, hi))
                    .transpose()
            };
            let clipped = score[row].map(|x| if x.is_finite() { x.clamp(0.0, 1.0) } else { x });
            let measured = Measured {
                quality: checked(clipped, "score", 1.0)?,
                cost_usd: checked(cost[row], "inference_cost", limits::COST_USD.hi)?,
            };
            if by_query.insert(id.clone(), measured).is_some() {
                return Err(table.bad_value(row, "global_index", format!("`{id}` repeats an earlier row")));
            }
        }
        Ok((ModelResults { model, by_query }, ids, prompts))
    }
}

impl DatasetReader for RouterArenaReader {
    fn detects(&self, columns: &[String]) -> bool {
        ["global_index", "llm_selected", "evaluation_result"]
            .iter()
            .all(|c| columns.iter().any(|have| have == c))
    }

    fn read(&self, source: &str, tables: &[Table]) -> Result<Dataset> {
        let mut results = Vec::with_capacity(tables.len());
        let mut rows = None;
        for table in tables {
            let (model, ids, prompts) = Self::read_model(table)?;
            if let Some(earlier) = results.iter().find(|r: &&ModelResults| r.model == model.model) {
                return Err(SimError::InvalidOption(format!(
                    "{}: model `{}` has a file already; one file per model",
                    table.path.display(),
                    earlier.model
                )));
            }
            results.push(model);
            rows.get_or_insert((ids, prompts));
        }
        let (Some(first), Some((ids, prompts))) = (tables.first(), rows) else {
            return Err(SimError::InvalidOption(format!("{source}: no RouterArena results")));
        };
        for (table, model) in tables.iter().zip(&results) {
            if let Some(missing) = ids.iter().find(|id| !model.by_query.contains_key(*id)) {
                return Err(SimError::InvalidOption(format!(
                    "{}: no result for query `{missing}` of {}; every model's file must hold the same queries",
                    table.path.display(),
                    first.path.display()
                )));
            }
        }
        let per_model = |measure: fn(&Measured) -> Option<f64>| {
            results
                .iter()
                .map(|r| ids.iter().map(|id| measure(&r.by_query[id])).collect())
                .collect()
        };
        let columns = WideColumns {
            arms: results.iter().map(|r| r.model.clone()).collect(),
            tasks: Some(ids.iter().map(|id| task_of(id).to_string()).collect()),
            prompts: Some(prompts),
            feature_names: Vec::new(),
            features: ndarray::Array2::zeros((ids.len(), 0)),
            quality: per_model(|m| m.quality),
            cost_usd: Some(per_model(|m| m.cost_usd)),
            latency_ms: None,
            split: None,
            ids,
        };
        let mut data: WideDataset = columns.into_dataset(first);
        if let Some(dir) = first.path.parent() {
            let prices = dir.join(PRICES_FILE);
            if prices.is_file() {
                // A model it does not price learns its cost call by call, as with no file.
                data.price_from(&read_list_prices(&prices)?);
            }
        }
        data.source = source.to_string();
        Ok(Dataset::Wide(data))
    }
}

/// A query's task: its id without the number after the last `_`.
fn task_of(id: &str) -> &str {
    id.rsplit_once('_').map_or(id, |(task, _)| task)
}

#[cfg(test)]
mod tests {
    use super::task_of;
    use crate::data::{load_wide, Format};

    #[test]
    fn a_query_id_names_its_task() {
        assert_eq!(task_of("MMLUPro_history_12"), "MMLUPro_history");
        assert_eq!(task_of("AIME_112"), "AIME");
        assert_eq!(task_of("plain"), "plain");
    }

    /// One line of a model's results.
    fn line(id: &str, model: &str, score: f64, cost: f64) -> String {
        format!(
            r#"{{"global_index": "{id}", "question": "q {id}", "llm_selected": "{model}", "success": true, "evaluation_result": {{"score": {score}, "inference_cost": {cost}, "metric": "mcq_accuracy"}}}}"#
        )
    }

    /// A fresh directory holding `files` (name, lines).
    fn results(name: &str, files: &[(&str, Vec<String>)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("quiver-routerarena-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, lines) in files {
            std::fs::write(dir.join(file), lines.join("\n") + "\n").unwrap();
        }
        dir
    }

    /// Each model's file is a column of the table, joined by query in the first file's
    /// order; tasks come from the ids, list prices from `model_cost.json` (per million
    /// tokens), and a score below 0 reads as 0.
    #[test]
    fn each_models_file_is_a_column_joined_by_query() {
        let dir = results(
            "join",
            &[
                ("a.jsonl", vec![line("PubMedQA_1", "m-a", 1.0, 2e-4), line("MathQA_7", "m-a", -0.03, 1e-4)]),
                ("b.jsonl", vec![line("MathQA_7", "m-b", 0.5, 3e-5), line("PubMedQA_1", "m-b", 0.0, 4e-5)]),
            ],
        );
        std::fs::write(
            dir.join("model_cost.json"),
            r#"{"m-a": {"input_token_price_per_million": 0.25, "output_token_price_per_million": 1.25}}"#,
        )
        .unwrap();
        let data = load_wide(dir.to_str().unwrap(), Format::Auto, None).unwrap();
        assert_eq!(data.arms, ["m-a", "m-b"]);
        assert_eq!(data.ids, ["PubMedQA_1", "MathQA_7"]);
        assert_eq!(data.tasks.as_deref().unwrap(), ["PubMedQA", "MathQA"]);
        assert_eq!(data.prompts.as_deref().unwrap(), ["q PubMedQA_1", "q MathQA_7"]);
        assert_eq!(
            [data.quality(0, 0), data.quality(0, 1), data.quality(1, 0), data.quality(1, 1)],
            [1.0, 0.0, 0.0, 0.5]
        );
        assert_eq!([data.cost_usd(0, 0), data.cost_usd(1, 1)], [2e-4, 3e-5]);
        assert_eq!(data.list_prices.keys().collect::<Vec<_>>(), ["m-a"]);
        let (input, output) = data.list_prices["m-a"];
        assert!((input - 0.25e-6).abs() < 1e-18 && (output - 1.25e-6).abs() < 1e-18);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A query one file lacks, a repeated query, a second model in a file and two files of
    /// one model are refused, each naming where.
    #[test]
    fn results_that_do_not_join_are_refused_with_where() {
        let cases = [
            (
                "missing",
                vec![line("X_1", "m-a", 1.0, 0.1), line("X_2", "m-a", 1.0, 0.1)],
                vec![line("X_1", "m-b", 1.0, 0.1)],
                "b.jsonl: no result for query `X_2`",
            ),
            (
                "repeated",
                vec![line("X_1", "m-a", 1.0, 0.1), line("X_1", "m-a", 0.0, 0.1)],
                vec![line("X_1", "m-b", 1.0, 0.1)],
                "a.jsonl: row 2, column `global_index`: `X_1` repeats an earlier row",
            ),
            (
                "mixed",
                vec![line("X_1", "m-a", 1.0, 0.1), line("X_2", "m-c", 1.0, 0.1)],
                vec![line("X_1", "m-b", 1.0, 0.1)],
                "a.jsonl: row 2, column `llm_selected`: `m-c`",
            ),
            (
                "twice",
                vec![line("X_1", "m-a", 1.0, 0.1)],
                vec![line("X_1", "m-a", 1.0, 0.1)],
                "b.jsonl: model `m-a` has a file already",
            ),
            (
                "cost",
                vec![line("X_1", "m-a", 1.0, -0.1)],
                vec![line("X_1", "m-b", 1.0, 0.1)],
                "a.jsonl: row 1, column `evaluation_result.inference_cost`: -0.1 is outside",
            ),
        ];
        for (name, a, b, expected) in cases {
            let dir = results(name, &[("a.jsonl", a), ("b.jsonl", b)]);
            let err = load_wide(dir.to_str().unwrap(), Format::RouterArena, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{name}: {err}");
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
