//! Full-information datasets: one row per request, every arm's outcome.
//!
//! Columns: optional `id`, `split`, `prompt`, `task`, numeric `f_*`; for every arm `A`: `quality|A`
//! in [0, 1], and optionally `cost|A` (USD), `latency_ms|A`. Arm names may contain
//! `/ . - :`. A row missing any arm's quality (or cost or latency, when given) is dropped
//! and named in [`WideDataset::dropped`].

use ndarray::{concatenate, Array2, Axis};
use quiver_bandit::{limits, Arm};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::prices::ListPrices;
use super::{feature_columns, read_features, row_slice, standard, Dataset, DatasetReader};
use crate::error::{Result, SimError};
use crate::source::{check_range, Table};

/// A full-information table: one row per request, its matrices `rows x arms` (and the
/// features `rows x features`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WideDataset {
    /// The data path as given.
    pub source: String,
    /// Arm names, in column order.
    pub arms: Vec<String>,
    /// Request ids (row numbers when the data has none).
    pub ids: Vec<String>,
    /// Prompt text, when the data has it.
    pub prompts: Option<Vec<String>>,
    /// Task labels, when the data has them.
    pub tasks: Option<Vec<String>>,
    /// The `split` column (train or test, say), when the data has one: carried so that a
    /// converted table can still be split.
    pub split: Option<Vec<String>>,
    /// Names of the numeric feature columns.
    pub feature_names: Vec<String>,
    /// Feature values, `rows x feature_names.len()`.
    pub features: Array2<f64>,
    /// Quality in [0, 1], `rows x arms`.
    pub quality: Array2<f64>,
    /// Cost in USD, `rows x arms`, when known.
    pub cost_usd: Option<Array2<f64>>,
    /// Latency in ms, `rows x arms`, when known.
    pub latency_ms: Option<Array2<f64>>,
    /// Rows dropped because an arm's value was missing, one line each: file, row and what
    /// it missed.
    pub dropped: Vec<String>,
    /// List prices by arm name, USD per input and output token, where the data gives them:
    /// what a server's route would be configured with.
    pub list_prices: ListPrices,
}

impl WideDataset {
    /// Number of requests.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// Number of arms.
    pub fn num_arms(&self) -> usize {
        self.arms.len()
    }

    /// What a command that reads the table says of its rows dropped as incomplete, naming
    /// the first; none when none were.
    pub fn dropped_note(&self) -> Option<String> {
        self.dropped.first().map(|first| {
            format!(
                "{}: {} incomplete rows left out (a model's value missing), the first: {first}",
                self.source,
                self.dropped.len()
            )
        })
    }

    /// The arms as a learner takes them: each with its list prices where known.
    pub fn priced_arms(&self) -> Vec<Arm> {
        self.arms
            .iter()
            .map(|id| match self.list_prices.get(id) {
                Some(&(input, output)) => Arm::new(id.as_str()).with_prices(input, output),
                None => Arm::new(id.as_str()),
            })
            .collect()
    }

    /// Quality of `arm` on `row`.
    pub fn quality(&self, row: usize, arm: usize) -> f64 {
        self.quality[[row, arm]]
    }

    /// Cost of `arm` on `row` (0 when the data has no costs).
    pub fn cost_usd(&self, row: usize, arm: usize) -> f64 {
        self.cost_usd.as_ref().map_or(0.0, |c| c[[row, arm]])
    }

    /// Latency of `arm` on `row`, when the data has latencies.
    pub fn latency_ms(&self, row: usize, arm: usize) -> Option<f64> {
        self.latency_ms.as_ref().map(|l| l[[row, arm]])
    }

    /// The caller features of `row`.
    pub fn row_features(&self, row: usize) -> &[f64] {
        row_slice(&self.features, row)
    }

    /// Reorders this table's arms to `reference`'s order, after checking that both have
    /// the same arms and features (a training set against its test set).
    pub fn align_to(&mut self, reference: &WideDataset) -> Result<()> {
        self.check_compatible(reference)?;
        let order: Vec<usize> = reference
            .arms
            .iter()
            .map(|a| self.arms.iter().position(|b| b == a).unwrap_or(0))
            .collect();
        self.quality = columns_in(&self.quality, &order);
        self.cost_usd = self.cost_usd.as_ref().map(|c| columns_in(c, &order));
        self.latency_ms = self.latency_ms.as_ref().map(|l| columns_in(l, &order));
        self.arms = reference.arms.clone();
        Ok(())
    }

    fn check_compatible(&self, other: &WideDataset) -> Result<()> {
        let mut mine = self.arms.clone();
        let mut theirs = other.arms.clone();
        mine.sort();
        theirs.sort();
        if mine != theirs {
            return Err(SimError::Mismatch(format!(
                "{} and {} have different arms: [{}] vs [{}]",
                self.source,
                other.source,
                self.arms.join(", "),
                other.arms.join(", ")
            )));
        }
        if self.prompts.is_some() != other.prompts.is_some() {
            let (with, without) = if self.prompts.is_some() { (self, other) } else { (other, self) };
            return Err(SimError::Mismatch(format!(
                "{} has a prompt column and {} has none: contexts are built from the prompt",
                with.source, without.source
            )));
        }
        if self.feature_names != other.feature_names {
            return Err(SimError::Mismatch(format!(
                "{} and {} have different feature columns: [{}] vs [{}]",
                self.source,
                other.source,
                self.feature_names.join(", "),
                other.feature_names.join(", ")
            )));
        }
        Ok(())
    }

    /// Appends another table with the same arms (in any column order) and features.
    pub fn append(&mut self, mut other: WideDataset) -> Result<()> {
        if self.arms.is_empty() {
            *self = other;
            return Ok(());
        }
        other.align_to(self)?;
        if self.cost_usd.is_some() != other.cost_usd.is_some()
            || self.latency_ms.is_some() != other.latency_ms.is_some()
            || self.prompts.is_some() != other.prompts.is_some()
            || self.tasks.is_some() != other.tasks.is_some()
        {
            return Err(SimError::Mismatch(format!(
                "files of one table must all have, or all lack, cost, latency, prompt and task columns: \
                 {} and {} differ",
                self.source, other.source
            )));
        }
        let stack = |mine: &Array2<f64>, theirs: &Array2<f64>| {
            concatenate(Axis(0), &[mine.view(), theirs.view()])
                .map(standard)
                .map_err(|e| SimError::Mismatch(format!("{} after {}: {e}", other.source, self.source)))
        };
        self.quality = stack(&self.quality, &other.quality)?;
        self.features = stack(&self.features, &other.features)?;
        if let (Some(mine), Some(theirs)) = (&self.cost_usd, &other.cost_usd) {
            self.cost_usd = Some(stack(mine, theirs)?);
        }
        if let (Some(mine), Some(theirs)) = (&self.latency_ms, &other.latency_ms) {
            self.latency_ms = Some(stack(mine, theirs)?);
        }
        self.ids.append(&mut other.ids);
        if let (Some(mine), Some(theirs)) = (self.prompts.as_mut(), other.prompts.as_mut()) {
            mine.append(theirs);
        }
        if let (Some(mine), Some(theirs)) = (self.tasks.as_mut(), other.tasks.as_mut()) {
            mine.append(theirs);
        }
        // Files of which some have no split have none together.
        match (self.split.as_mut(), other.split.as_mut()) {
            (Some(mine), Some(theirs)) => mine.append(theirs),
            _ => self.split = None,
        }
        self.dropped.append(&mut other.dropped);
        self.list_prices.append(&mut other.list_prices);
        Ok(())
    }

    /// Keeps only the rows for which `keep(row)` holds.
    pub fn retain_rows(&mut self, keep: impl Fn(usize) -> bool) {
        let rows: Vec<usize> = (0..self.rows()).filter(|&r| keep(r)).collect();
        let pick = |m: &Array2<f64>| standard(m.select(Axis(0), &rows));
        self.quality = pick(&self.quality);
        self.cost_usd = self.cost_usd.as_ref().map(pick);
        self.latency_ms = self.latency_ms.as_ref().map(pick);
        self.features = pick(&self.features);
        self.ids = rows.iter().map(|&r| self.ids[r].clone()).collect();
        let pick_texts = |texts: &Option<Vec<String>>| {
            texts.as_ref().map(|t| rows.iter().map(|&r| t[r].clone()).collect())
        };
        self.prompts = pick_texts(&self.prompts);
        self.tasks = pick_texts(&self.tasks);
        self.split = pick_texts(&self.split);
    }

    /// The table split at random into rows to train on and rows held out to evaluate on,
    /// `fraction` of them (rounded) held out; the same split for the same `seed`. Each part
    /// keeps the table's order.
    pub fn holdout(&self, fraction: f64, seed: u64) -> Result<(WideDataset, WideDataset)> {
        let rows = self.rows();
        let held = (fraction * rows as f64).round() as usize;
        if !(fraction > 0.0 && fraction < 1.0) || held == 0 || held == rows {
            return Err(SimError::InvalidOption(format!(
                "holding out {fraction} of the {rows} rows of {} leaves no rows to train or to \
                 evaluate on",
                self.source
            )));
        }
        let mut order: Vec<usize> = (0..rows).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let mut held_out = vec![false; rows];
        for &row in &order[..held] {
            held_out[row] = true;
        }
        let mut train = self.clone();
        train.retain_rows(|r| !held_out[r]);
        let mut evaluate = self.clone();
        evaluate.retain_rows(|r| held_out[r]);
        Ok((train, evaluate))
    }
}

/// `matrix` with its columns permuted: column `i` of the result is column `order[i]`.
fn columns_in(matrix: &Array2<f64>, order: &[usize]) -> Array2<f64> {
    standard(matrix.select(Axis(1), order))
}

/// Columns of one wide table before completeness filtering.
pub(crate) struct WideColumns {
    pub arms: Vec<String>,
    pub ids: Vec<String>,
    pub prompts: Option<Vec<String>>,
    pub tasks: Option<Vec<String>>,
    pub split: Option<Vec<String>>,
    pub feature_names: Vec<String>,
    pub features: Array2<f64>,
    /// Per arm, per row; `None` where missing.
    pub quality: Vec<Vec<Option<f64>>>,
    pub cost_usd: Option<Vec<Vec<Option<f64>>>>,
    pub latency_ms: Option<Vec<Vec<Option<f64>>>>,
}

impl WideColumns {
    /// Drops incomplete rows and lays the values out as matrices: the dataset of `table`.
    pub(crate) fn into_dataset(self, table: &Table) -> WideDataset {
        let source = table.path.display().to_string();
        let n = self.ids.len();
        let measures = [
            ("quality", Some(&self.quality)),
            ("cost", self.cost_usd.as_ref()),
            ("latency", self.latency_ms.as_ref()),
        ];
        let dropped: Vec<(usize, String)> = (0..n)
            .filter_map(|row| {
                measures.iter().find_map(|(measure, per_arm)| {
                    let arm = (*per_arm)?.iter().position(|a| a[row].is_none())?;
                    let what = format!(
                        "{source} row {}: no {measure} for `{}`",
                        table.file_row(row) + 1,
                        self.arms[arm]
                    );
                    Some((row, what))
                })
            })
            .collect();
        let flat = |per_arm: &Vec<Vec<Option<f64>>>| {
            Array2::from_shape_fn((n, per_arm.len()), |(r, a)| per_arm[a][r].unwrap_or(0.0))
        };
        let mut data = WideDataset {
            source: source.clone(),
            quality: flat(&self.quality),
            cost_usd: self.cost_usd.as_ref().map(flat),
            latency_ms: self.latency_ms.as_ref().map(flat),
            features: self.features,
            ids: self.ids,
            prompts: self.prompts,
            tasks: self.tasks,
            split: self.split,
            dropped: Vec::new(),
            arms: self.arms,
            feature_names: self.feature_names,
            list_prices: ListPrices::new(),
        };
        let mut complete = vec![true; n];
        for (row, _) in &dropped {
            complete[*row] = false;
        }
        data.retain_rows(|r| complete[r]);
        data.dropped = dropped.into_iter().map(|(_, what)| what).collect();
        data
    }
}

/// Reads `column` as numbers in `[lo, hi]`, keeping nulls.
pub(crate) fn optional_in_range(table: &Table, column: &str, lo: f64, hi: f64) -> Result<Vec<Option<f64>>> {
    let values = table.numbers(column, "")?;
    values
        .into_iter()
        .enumerate()
        .map(|(row, v)| v.map(|x| check_range(table, row, column, x, lo, hi)).transpose())
        .collect()
}

/// Optional text column, nulls as empty strings.
pub(crate) fn optional_texts(table: &Table, column: &str) -> Result<Option<Vec<String>>> {
    if !table.has(column) {
        return Ok(None);
    }
    Ok(Some(
        table
            .texts(column, "")?
            .into_iter()
            .map(|v| v.unwrap_or_default())
            .collect(),
    ))
}

/// Ids from `column`, or the 1-based row numbers.
pub(crate) fn ids_or_row_numbers(table: &Table, column: &str) -> Result<Vec<String>> {
    Ok(optional_texts(table, column)?
        .unwrap_or_else(|| (0..table.rows()).map(|r| (table.file_row(r) + 1).to_string()).collect()))
}

/// The native wide shape.
pub struct WideReader;

impl WideReader {
    fn read_table(table: &Table) -> Result<WideDataset> {
        let columns = table.columns();
        let arms: Vec<String> = columns
            .iter()
            .filter_map(|c| c.strip_prefix("quality|").map(str::to_string))
            .collect();
        if arms.is_empty() {
            return Err(SimError::MissingColumn {
                path: table.path.clone(),
                column: "quality|<arm>".into(),
                hint: "a wide table has one quality|ARM column per arm".into(),
            });
        }
        // A cost or latency column of a model without a quality column is a misspelled id.
        let stray = columns.iter().find(|c| {
            ["cost|", "latency_ms|"]
                .iter()
                .any(|p| c.strip_prefix(p).is_some_and(|arm| !arms.iter().any(|a| a == arm)))
        });
        if let Some(stray) = stray {
            let (_, arm) = stray.split_once('|').unwrap_or_default();
            return Err(SimError::MissingColumn {
                path: table.path.clone(),
                column: format!("quality|{arm}"),
                hint: format!("`{stray}` names a model without a quality column (models: {})", arms.join(", ")),
            });
        }
        let per_arm = |prefix: &str, hi: f64| -> Result<Option<Vec<Vec<Option<f64>>>>> {
            let present: Vec<bool> = arms.iter().map(|a| table.has(&format!("{prefix}|{a}"))).collect();
            if present.iter().all(|p| !p) {
                return Ok(None);
            }
            if let Some(missing) = arms.iter().zip(&present).find(|(_, p)| !**p) {
                return Err(SimError::MissingColumn {
                    path: table.path.clone(),
                    column: format!("{prefix}|{}", missing.0),
                    hint: format!("give {prefix}|ARM for every arm or for none"),
                });
            }
            arms.iter()
                .map(|a| optional_in_range(table, &format!("{prefix}|{a}"), 0.0, hi))
                .collect::<Result<Vec<_>>>()
                .map(Some)
        };
        let feature_names = feature_columns(&columns);
        let columns = WideColumns {
            quality: arms
                .iter()
                .map(|a| optional_in_range(table, &format!("quality|{a}"), 0.0, 1.0))
                .collect::<Result<_>>()?,
            cost_usd: per_arm("cost", limits::COST_USD.hi)?,
            latency_ms: per_arm("latency_ms", limits::LATENCY_MS.hi)?,
            ids: ids_or_row_numbers(table, "id")?,
            prompts: optional_texts(table, "prompt")?,
            tasks: optional_texts(table, "task")?,
            split: optional_texts(table, "split")?,
            features: read_features(table, &feature_names, |_| true)?,
            feature_names,
            arms,
        };
        Ok(columns.into_dataset(table))
    }
}

/// Reads each table with `read_table` and appends them into one dataset.
pub(crate) fn read_wide_tables(
    source: &str,
    tables: &[Table],
    read_table: impl Fn(&Table) -> Result<WideDataset>,
) -> Result<Dataset> {
    let mut all = WideDataset::default();
    for table in tables {
        all.append(read_table(table)?)?;
    }
    all.source = source.to_string();
    Ok(Dataset::Wide(all))
}

impl DatasetReader for WideReader {
    fn detects(&self, columns: &[String]) -> bool {
        columns.iter().any(|c| c.starts_with("quality|"))
    }

    fn read(&self, source: &str, tables: &[Table]) -> Result<Dataset> {
        read_wide_tables(source, tables, Self::read_table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(rows: usize) -> WideDataset {
        WideDataset {
            source: "t.csv".into(),
            arms: vec!["a".into()],
            ids: (0..rows).map(|r| r.to_string()).collect(),
            features: Array2::zeros((rows, 0)),
            quality: Array2::from_shape_fn((rows, 1), |(r, _)| r as f64 / rows as f64),
            ..WideDataset::default()
        }
    }

    /// A split column follows its rows through a holdout and an append; appended to a table
    /// without one, there is none.
    #[test]
    fn a_split_column_follows_its_rows() {
        let split = |data: &WideDataset| data.split.clone().unwrap();
        let mut table = numbered(10);
        table.split = Some((0..10).map(|r| format!("s{r}")).collect());
        let (train, held) = table.holdout(0.3, 7).unwrap();
        for part in [&train, &held] {
            let expected: Vec<String> = part.ids.iter().map(|id| format!("s{id}")).collect();
            assert_eq!(split(part), expected);
        }
        let mut both = train.clone();
        both.append(held).unwrap();
        assert_eq!(split(&both).len(), 10);
        both.append(numbered(4)).unwrap();
        assert_eq!((both.rows(), both.split), (14, None));
    }

    /// The two parts partition the rows, the held-out one of the share asked, each row with
    /// its own values; a seed fixes the draw, and the draw is not the table's tail.
    #[test]
    fn a_holdout_partitions_the_rows_at_random() {
        let table = numbered(100);
        let (train, held) = table.holdout(0.3, 7).unwrap();
        assert_eq!((train.rows(), held.rows()), (70, 30));
        let mut ids: Vec<usize> = train.ids.iter().chain(&held.ids).map(|i| i.parse().unwrap()).collect();
        for part in [&train, &held] {
            for (r, id) in part.ids.iter().enumerate() {
                let id: f64 = id.parse().unwrap();
                assert_eq!(part.quality[[r, 0]], id / 100.0);
            }
            assert!(part.ids.windows(2).all(|w| w[0].parse::<usize>().unwrap() < w[1].parse().unwrap()));
        }
        ids.sort_unstable();
        assert_eq!(ids, (0..100).collect::<Vec<_>>());
        assert_eq!(table.holdout(0.3, 7).unwrap(), (train, held.clone()));
        assert_ne!(table.holdout(0.3, 8).unwrap().1.ids, held.ids);
        // 30 of 100 drawn at random are the last 30 with probability 1 / C(100, 30).
        assert!(held.ids.iter().any(|i| i.parse::<usize>().unwrap() < 70));
    }

    #[test]
    fn a_holdout_leaves_rows_on_both_sides() {
        for (rows, fraction) in [(100, 0.0), (100, 1.0), (100, f64::NAN), (1, 0.5), (3, 0.1), (3, 0.9)] {
            let err = numbered(rows).holdout(fraction, 0).unwrap_err().to_string();
            assert!(err.contains("t.csv") && err.contains("no rows to train or to evaluate on"), "{err}");
        }
        assert_eq!(numbered(3).holdout(0.2, 0).unwrap().1.rows(), 1);
    }
}
