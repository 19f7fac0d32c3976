//! List prices of models, read from a JSON file in the shape of LiteLLM's price registry
//! (`model_prices_and_context_window.json`): an object whose keys are model names and
//! whose values hold `input_cost_per_token` and `output_cost_per_token` in USD, or, as
//! RouterArena's `model_cost.json` writes them, `input_token_price_per_million` and
//! `output_token_price_per_million`. Entries without both (embedding and image models, the
//! registry's `sample_spec`, a price of `null`) are skipped; a price that is there but
//! neither a number nor a number's text is refused.
//!
//! A table's models take the price of the key equal to their name, else of the one key
//! whose last `/`-separated part equals their name's (case aside): the registry writes
//! `together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1` where a table writes
//! `mixtral-8x7b-instruct-v0.1`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::WideDataset;
use crate::error::{Result, SimError};

/// Per-token list prices by model name: USD per input and per output token.
pub type ListPrices = BTreeMap<String, (f64, f64)>;

/// Reads the priced models of a LiteLLM-style price file.
pub fn read_list_prices(path: &Path) -> Result<ListPrices> {
    let read_error = |reason: String| SimError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| read_error(e.to_string()))?;
    let root: Value = serde_json::from_str(&text).map_err(|e| read_error(e.to_string()))?;
    let Value::Object(models) = root else {
        return Err(read_error(
            "expected an object of models, each with input_cost_per_token and output_cost_per_token".into(),
        ));
    };
    let mut prices = ListPrices::new();
    for (model, entry) in &models {
        // A price that is there but not a number is a mistake, not a model to skip.
        let field = |name: String| match entry.get(&name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => Ok(s.trim().parse().ok()),
            Some(other) => Err(read_error(format!("`{model}` {name} is {other}, not a number"))),
        };
        let price = |side: &str| -> Result<Option<f64>> {
            Ok(match field(format!("{side}_cost_per_token"))? {
                Some(usd) => Some(usd),
                None => field(format!("{side}_token_price_per_million"))?.map(|p| p * 1e-6),
            })
        };
        let (Some(input), Some(output)) = (price("input")?, price("output")?) else {
            continue;
        };
        for (field, value) in [("input_cost_per_token", input), ("output_cost_per_token", output)] {
            quiver_bandit::limits::PRICE_USD_PER_TOKEN
                .check(&format!("`{model}` {field}"), value)
                .map_err(|e| read_error(e.to_string()))?;
        }
        prices.insert(model.clone(), (input, output));
    }
    Ok(prices)
}

/// Writes `prices` as a LiteLLM-style price file that [`read_list_prices`] reads back.
pub fn write_list_prices(prices: &ListPrices, path: &Path) -> Result<()> {
    let registry: serde_json::Map<String, Value> = prices
        .iter()
        .map(|(model, (input, output))| {
            let entry = serde_json::json!({
                "input_cost_per_token": input,
                "output_cost_per_token": output,
                "mode": "chat",
            });
            (model.clone(), entry)
        })
        .collect();
    let write_error = |reason: String| SimError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let text = serde_json::to_string_pretty(&registry).map_err(|e| write_error(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| write_error(e.to_string()))
}

/// The last `/`-separated part of a model name, in lower case.
fn stem(model: &str) -> String {
    model.rsplit('/').next().unwrap_or(model).to_lowercase()
}

impl WideDataset {
    /// Gives each model the list price `prices` holds for it (see the module docs),
    /// replacing what the table carried; returns the models left without one.
    pub fn price_from(&mut self, prices: &ListPrices) -> Vec<String> {
        let mut unpriced = Vec::new();
        for arm in &self.arms {
            let found = prices.get(arm).or_else(|| {
                let mut same_stem = prices.iter().filter(|(key, _)| stem(key) == stem(arm));
                match (same_stem.next(), same_stem.next()) {
                    (Some((_, price)), None) => Some(price),
                    _ => None,
                }
            });
            match found {
                Some(&price) => {
                    self.list_prices.insert(arm.clone(), price);
                }
                None => {
                    self.list_prices.remove(arm);
                    unpriced.push(arm.clone());
                }
            }
        }
        unpriced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `text`, removed when dropped.
    struct File(std::path::PathBuf);

    impl File {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn file(text: &str) -> File {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("quiver-prices-{}-{n}.json", std::process::id()));
        std::fs::write(&path, text).unwrap();
        File(path)
    }

    #[test]
    fn priced_entries_are_read_and_others_skipped() {
        let f = file(
            r#"{"sample_spec": {"input_cost_per_token": "0.0"},
                "gpt-4o": {"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5, "mode": "chat"},
                "text-embedding-3-small": {"input_cost_per_token": 2e-8, "mode": "embedding"}}"#,
        );
        let prices = read_list_prices(f.path()).unwrap();
        assert_eq!(prices.len(), 1);
        assert_eq!(prices["gpt-4o"], (2.5e-6, 1e-5));
        let written = file("");
        write_list_prices(&prices, written.path()).unwrap();
        assert_eq!(read_list_prices(written.path()).unwrap(), prices);
    }

    /// RouterArena's `model_cost.json` gives USD per million tokens.
    #[test]
    fn prices_per_million_tokens_are_read_per_token() {
        let f = file(
            r#"{"gemini-2.0-flash-001": {"input_token_price_per_million": 0.1,
                                          "output_token_price_per_million": 0.4}}"#,
        );
        let (input, output) = read_list_prices(f.path()).unwrap()["gemini-2.0-flash-001"];
        assert!(
            (input - 1e-7).abs() < 1e-20 && (output - 4e-7).abs() < 1e-20,
            "{input} {output}"
        );
    }

    #[test]
    fn a_price_out_of_range_names_the_file_and_model() {
        let f = file(r#"{"m": {"input_cost_per_token": -1, "output_cost_per_token": 1e-6}}"#);
        let message = read_list_prices(f.path()).unwrap_err().to_string();
        assert!(message.contains(&f.path().display().to_string()), "{message}");
        assert!(message.contains("`m` input_cost_per_token"), "{message}");
        let f = file(r#"{"m": {"input_cost_per_token": "abc", "output_cost_per_token": 1e-6}}"#);
        let message = read_list_prices(f.path()).unwrap_err().to_string();
        assert!(
            message.contains("`m` input_cost_per_token is \"abc\", not a number"),
            "{message}"
        );
        let f = file(r#"{"m": {"input_cost_per_token": 1e-6, "output_token_price_per_million": [1]}}"#);
        let message = read_list_prices(f.path()).unwrap_err().to_string();
        assert!(
            message.contains("`m` output_token_price_per_million is [1], not a number"),
            "{message}"
        );
        // A null price is none, as the registry writes it for some models.
        let f = file(r#"{"m": {"input_cost_per_token": null, "output_cost_per_token": null}}"#);
        assert!(read_list_prices(f.path()).unwrap().is_empty());
        let f = file("[1, 2]");
        assert!(read_list_prices(f.path())
            .unwrap_err()
            .to_string()
            .contains("expected an object"));
    }

    #[test]
    fn models_match_by_name_then_by_a_unique_stem() {
        let prices: ListPrices = [
            ("gpt-4-1106-preview".to_string(), (1e-5, 3e-5)),
            (
                "together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1".to_string(),
                (6e-7, 6e-7),
            ),
            ("a/llama-2-70b-chat".to_string(), (9e-7, 9e-7)),
            ("b/llama-2-70b-chat".to_string(), (7e-7, 8e-7)),
        ]
        .into();
        let mut data = WideDataset {
            arms: [
                "gpt-4-1106-preview",
                "mixtral-8x7b-instruct-v0.1",
                "llama-2-70b-chat",
                "yi-34b",
            ]
            .map(String::from)
            .to_vec(),
            // The table's own price, which the file replaces though it prices no `yi-34b`.
            list_prices: [("yi-34b".to_string(), (1e-6, 1e-6))].into(),
            ..WideDataset::default()
        };
        let unpriced = data.price_from(&prices);
        assert_eq!(data.list_prices["gpt-4-1106-preview"], (1e-5, 3e-5));
        assert_eq!(data.list_prices["mixtral-8x7b-instruct-v0.1"], (6e-7, 6e-7));
        // Two registry entries end in the same name: neither is taken for it.
        assert_eq!(unpriced, ["llama-2-70b-chat", "yi-34b"]);
        let arms = data.priced_arms();
        assert!(arms[0].has_prices() && arms[1].has_prices());
        assert!(!arms[2].has_prices() && !arms[3].has_prices());
    }
}
