//! Open Bandit Dataset CSVs (Saito et al. 2020, arXiv:2008.07146): real logged bandit
//! feedback from ZOZOTOWN with the true logging propensities.
//!
//! Columns: an unnamed index, `timestamp`, `item_id` (0-79), `position` (1-3), `click`,
//! `propensity_score`, `user_feature_0..3` (hashed categoricals), `user-item_affinity_0..79`.
//! Each item is an arm (`item_<id>`, all items up to the largest id seen), the click is the
//! quality, cost and latency are 0. Features: the position one-hot (`f_position_1..3`) and
//! the affinities (`f_affinity_<i>`).

use super::logged::combine_logged;
use super::{Dataset, DatasetReader, LoggedDataset};
use crate::error::Result;
use crate::source::Table;

/// Reader for Open Bandit Dataset logs.
pub struct ObdReader;

impl ObdReader {
    fn read_table(table: &Table) -> Result<(Vec<String>, LoggedDataset)> {
        let hint = "Open Bandit Dataset logs have item_id, position, click and propensity_score";
        let n = table.rows();
        let items = table.required_numbers("item_id", 0.0, 1e6, hint)?;
        let positions = table.required_numbers("position", 1.0, 3.0, hint)?;
        let clicks = table.required_numbers("click", 0.0, 1.0, hint)?;
        let propensity = table
            .required_numbers("propensity_score", 0.0, 1.0, hint)?
            .into_iter()
            .enumerate()
            .map(|(row, p)| {
                if p > 0.0 {
                    Ok(p)
                } else {
                    Err(table.bad_value(row, "propensity_score", "0 is not a valid propensity"))
                }
            })
            .collect::<Result<Vec<f64>>>()?;
        let affinity: Vec<String> = table
            .columns()
            .into_iter()
            .filter(|c| c.starts_with("user-item_affinity_"))
            .collect();
        let affinity_values: Vec<Vec<f64>> = affinity
            .iter()
            .map(|c| table.required_numbers(c, f64::MIN, f64::MAX, hint))
            .collect::<Result<_>>()?;
        let mut feature_names: Vec<String> = (1..=3).map(|p| format!("f_position_{p}")).collect();
        feature_names.extend(
            affinity
                .iter()
                .map(|c| format!("f_affinity_{}", c.trim_start_matches("user-item_affinity_"))),
        );
        // One-hot position (1 to 3), then the affinities.
        let features = ndarray::Array2::from_shape_fn((n, feature_names.len()), |(row, j)| match j {
            0..=2 => f64::from(u8::from(positions[row] == (j + 1) as f64)),
            _ => affinity_values[j - 3][row],
        });
        let timestamps = if table.has("timestamp") {
            table
                .texts("timestamp", hint)?
                .into_iter()
                .map(|v| v.unwrap_or_default())
                .collect()
        } else {
            vec![String::new(); n]
        };
        let names = items.iter().map(|&i| format!("item_{}", i as u64)).collect();
        Ok((
            names,
            LoggedDataset {
                decision_ids: (0..n).map(|r| (table.file_row(r) + 1).to_string()).collect(),
                timestamps,
                routes: vec![String::new(); n],
                policies: vec![String::new(); n],
                propensity,
                quality: clicks.into_iter().map(Some).collect(),
                cost_usd: vec![0.0; n],
                latency_ms: vec![0.0; n],
                error: vec![false; n],
                outcome: vec![true; n],
                prompts: None,
                feature_names,
                features,
                ..LoggedDataset::default()
            },
        ))
    }
}

impl DatasetReader for ObdReader {
    fn detects(&self, columns: &[String]) -> bool {
        columns.iter().any(|c| c == "item_id") && columns.iter().any(|c| c == "propensity_score")
    }

    fn read(&self, source: &str, tables: &[Table]) -> Result<Dataset> {
        let parts = tables.iter().map(Self::read_table).collect::<Result<Vec<_>>>()?;
        let max_item = parts
            .iter()
            .flat_map(|(names, _)| names.iter())
            .filter_map(|n| n.trim_start_matches("item_").parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let arms = (0..=max_item).map(|i| format!("item_{i}")).collect();
        Ok(Dataset::Logged(combine_logged(source, parts, Some(arms))?))
    }
}
