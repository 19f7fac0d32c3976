//! Logged (bandit-feedback) datasets: one row per decision.
//!
//! Columns, exactly as the server writes them ([`quiver_log::COLUMNS`]): `decision_id`,
//! `timestamp`, `route`, `policy`, `arm`, `propensity` in (0, 1], `quality` in [0, 1] or
//! null, `cost_usd`, `latency_ms`, `error`, and `prompt` and/or numeric `f_*` columns.
//! Only `arm` and `propensity` are required of data from elsewhere; the others default to
//! row numbers, empty text, null quality, 0 and false.
//!
//! The server's log also has an `event` column: a `decision` row is written when the
//! decision is made, and `outcome` and `feedback` rows with the same `decision_id` follow
//! with the cost, latency, error and quality learned later. Such rows are merged into
//! their decision's row as the log's contract says ([`quiver_log::Merge`]), and a record
//! of a newer format than this build reads (`schema`) is refused.

use ndarray::{concatenate, Array2, Axis};
use quiver_bandit::limits;
use quiver_log::{LogEvent, Merge, SCHEMA_VERSION};

use super::wide::{ids_or_row_numbers, optional_in_range, optional_texts};
use super::{feature_columns, read_features, row_slice, standard, Dataset, DatasetReader};
use crate::error::{Result, SimError};
use crate::source::Table;

/// A decision log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoggedDataset {
    /// The data path as given.
    pub source: String,
    /// The arms, sorted by name; `arm[i]` indexes this list.
    pub arms: Vec<String>,
    /// Decision ids.
    pub decision_ids: Vec<String>,
    /// Timestamps as written.
    pub timestamps: Vec<String>,
    /// Route names.
    pub routes: Vec<String>,
    /// Logging policy names.
    pub policies: Vec<String>,
    /// Index of the chosen arm.
    pub arm: Vec<usize>,
    /// Probability with which the logger chose it.
    pub propensity: Vec<f64>,
    /// Observed quality, when it arrived.
    pub quality: Vec<Option<f64>>,
    /// Observed cost, USD.
    pub cost_usd: Vec<f64>,
    /// Observed latency, ms.
    pub latency_ms: Vec<f64>,
    /// Whether the call failed.
    pub error: Vec<bool>,
    /// Prompts, when logged.
    pub prompts: Option<Vec<String>>,
    /// Names of the numeric feature columns.
    pub feature_names: Vec<String>,
    /// Feature values, `rows x feature_names.len()`.
    pub features: Array2<f64>,
    /// The definition of the contexts the logging server built (its decisions'
    /// `context`), when logged.
    pub context: Option<String>,
    /// Each decision's projected prompt embedding (`embedding`), on a log of a route with
    /// an embedding block; None for a decision the hashed features made alone.
    pub embeddings: Option<Vec<Option<Vec<f64>>>>,
}

impl LoggedDataset {
    /// Number of decisions.
    pub fn rows(&self) -> usize {
        self.arm.len()
    }

    /// The caller features of `row`.
    pub fn row_features(&self, row: usize) -> &[f64] {
        row_slice(&self.features, row)
    }
}

/// One table's rows with arm names not yet indexed.
struct Rows {
    arm_names: Vec<String>,
    /// The `event` column, when the table has one.
    events: Option<Vec<LogEvent>>,
    data: LoggedDataset,
}

/// Refuses a log with records of a newer format than this build reads.
fn check_schema(table: &Table) -> Result<()> {
    if !table.has("schema") {
        return Ok(());
    }
    for (row, version) in table.numbers("schema", "")?.into_iter().enumerate() {
        if let Some(v) = version.filter(|&v| v > f64::from(SCHEMA_VERSION)) {
            return Err(table.bad_value(
                row,
                "schema",
                format!("record format version {v}; this build reads up to {SCHEMA_VERSION}"),
            ));
        }
    }
    Ok(())
}

/// The native logged shape.
pub struct LoggedReader;

impl LoggedReader {
    fn read_table(table: &Table) -> Result<Rows> {
        let hint = "a log has one row per decision with arm and propensity";
        check_schema(table)?;
        let events = optional_texts(table, "event")?
            .map(|names| {
                names
                    .iter()
                    .enumerate()
                    .map(|(row, name)| {
                        LogEvent::from_name(name)
                            .ok_or_else(|| table.bad_value(row, "event", format!("unknown event `{name}`")))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        let is_decision = |row: usize| events.as_ref().is_none_or(|e| e[row].merge() == Merge::Starts);
        let arm_names: Vec<String> = table
            .texts("arm", hint)?
            .into_iter()
            .enumerate()
            .map(|(row, a)| match a.filter(|s| !s.is_empty()) {
                Some(a) => Ok(a),
                None if !is_decision(row) => Ok(String::new()),
                None => Err(table.bad_value(row, "arm", "empty arm")),
            })
            .collect::<Result<_>>()?;
        let propensity = table.numbers("propensity", hint)?;
        let propensity = propensity
            .into_iter()
            .enumerate()
            .map(|(row, p)| match p {
                Some(p) if p > 0.0 && p <= 1.0 => Ok(p),
                Some(p) => Err(table.bad_value(
                    row,
                    "propensity",
                    format!("{p} is not a probability in (0, 1]; an arm logged with propensity 0 could not have been chosen"),
                )),
                None => Err(table.bad_value(row, "propensity", "empty; every decision needs its propensity")),
            })
            .collect::<Result<Vec<f64>>>()?;
        let n = table.rows();
        let or_default = |column: &str, hi: f64| -> Result<Vec<f64>> {
            if table.has(column) {
                Ok(optional_in_range(table, column, 0.0, hi)?
                    .into_iter()
                    .map(|v| v.unwrap_or(0.0))
                    .collect())
            } else {
                Ok(vec![0.0; n])
            }
        };
        let texts = |column: &str| -> Result<Vec<String>> {
            Ok(optional_texts(table, column)?.unwrap_or_else(|| vec![String::new(); n]))
        };
        let feature_names = feature_columns(&table.columns());
        let features = read_features(table, &feature_names, is_decision)?;
        Ok(Rows {
            events,
            data: LoggedDataset {
                decision_ids: ids_or_row_numbers(table, "decision_id")?,
                timestamps: texts("timestamp")?,
                routes: texts("route")?,
                policies: texts("policy")?,
                propensity,
                quality: if table.has("quality") {
                    optional_in_range(table, "quality", 0.0, 1.0)?
                } else {
                    vec![None; n]
                },
                cost_usd: or_default("cost_usd", limits::COST_USD.hi)?,
                latency_ms: or_default("latency_ms", limits::LATENCY_MS.hi)?,
                error: if table.has("error") {
                    table
                        .numbers("error", "")?
                        .into_iter()
                        .map(|v| v.unwrap_or(0.0) != 0.0)
                        .collect()
                } else {
                    vec![false; n]
                },
                prompts: optional_texts(table, "prompt")?,
                features,
                feature_names,
                context: optional_texts(table, "context")?
                    .and_then(|c| c.into_iter().find(|d| !d.is_empty())),
                embeddings: table.number_lists("embedding")?,
                ..LoggedDataset::default()
            },
            arm_names,
        })
    }
}

/// Folds `outcome` and `feedback` rows into the `decision` row with the same id, in order.
fn merge_events(tables: Vec<Rows>) -> Result<(Vec<String>, LoggedDataset)> {
    let mut names = Vec::new();
    let mut out = LoggedDataset::default();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut features = Vec::new();
    for table in tables {
        let d = table.data;
        if out.feature_names.is_empty() {
            out.feature_names = d.feature_names.clone();
            out.prompts = d.prompts.as_ref().map(|_| Vec::new());
        }
        if out.context.is_none() {
            out.context = d.context.clone();
        }
        if d.embeddings.is_some() && out.embeddings.is_none() {
            out.embeddings = Some(vec![None; out.decision_ids.len()]);
        }
        for row in 0..table.arm_names.len() {
            let event = table.events.as_ref().map_or(LogEvent::Decision, |e| e[row]);
            let id = &d.decision_ids[row];
            let merge = event.merge();
            if merge == Merge::Starts {
                index.insert(id.clone(), names.len());
                names.push(table.arm_names[row].clone());
                out.decision_ids.push(id.clone());
                out.timestamps.push(d.timestamps[row].clone());
                out.routes.push(d.routes[row].clone());
                out.policies.push(d.policies[row].clone());
                out.propensity.push(d.propensity[row]);
                out.quality.push(d.quality[row]);
                out.cost_usd.push(d.cost_usd[row]);
                out.latency_ms.push(d.latency_ms[row]);
                out.error.push(d.error[row]);
                if let (Some(mine), Some(theirs)) = (out.prompts.as_mut(), d.prompts.as_ref()) {
                    mine.push(theirs[row].clone());
                }
                if let Some(mine) = out.embeddings.as_mut() {
                    mine.push(d.embeddings.as_ref().and_then(|e| e[row].clone()));
                }
                features.extend_from_slice(d.row_features(row));
                continue;
            }
            if merge == Merge::Nothing {
                continue;
            }
            let Some(&target) = index.get(id) else {
                return Err(SimError::Mismatch(format!(
                    "{} row for decision `{id}` comes before (or without) its decision row",
                    event.name()
                )));
            };
            if merge == Merge::Outcome {
                out.cost_usd[target] = d.cost_usd[row];
                out.latency_ms[target] = d.latency_ms[row];
                out.error[target] = d.error[row];
            }
            if let Some(q) = d.quality[row] {
                out.quality[target] = Some(q);
            }
        }
    }
    out.features = Array2::from_shape_vec((out.decision_ids.len(), out.feature_names.len()), features)
        .map_err(|_| SimError::Mismatch("files of one log must share their f_* columns".into()))?;
    Ok((names, out))
}

/// Indexes the arm names of every table against one sorted arm list and concatenates.
pub(crate) fn combine_logged(
    source: &str,
    parts: Vec<(Vec<String>, LoggedDataset)>,
    arms: Option<Vec<String>>,
) -> Result<LoggedDataset> {
    let mut arms = arms.unwrap_or_else(|| {
        let mut all: Vec<String> = parts
            .iter()
            .flat_map(|(names, _)| names.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    });
    arms.sort();
    arms.dedup();
    let mut out = LoggedDataset {
        source: source.to_string(),
        ..LoggedDataset::default()
    };
    for (i, (names, mut part)) in parts.into_iter().enumerate() {
        let rows = part.decision_ids.len();
        if i > 0 && part.feature_names != out.feature_names {
            return Err(SimError::Mismatch(
                "files of one log must share their f_* columns".into(),
            ));
        }
        if i > 0 && part.prompts.is_some() != out.prompts.is_some() {
            return Err(SimError::Mismatch(
                "files of one log must all have, or all lack, prompts".into(),
            ));
        }
        out.feature_names = std::mem::take(&mut part.feature_names);
        for name in &names {
            let index = arms
                .binary_search(name)
                .map_err(|_| SimError::Mismatch(format!("arm `{name}` is not among the dataset's arms")))?;
            out.arm.push(index);
        }
        out.decision_ids.append(&mut part.decision_ids);
        out.timestamps.append(&mut part.timestamps);
        out.routes.append(&mut part.routes);
        out.policies.append(&mut part.policies);
        out.propensity.append(&mut part.propensity);
        out.quality.append(&mut part.quality);
        out.cost_usd.append(&mut part.cost_usd);
        out.latency_ms.append(&mut part.latency_ms);
        out.error.append(&mut part.error);
        out.features = if i == 0 {
            std::mem::take(&mut part.features)
        } else {
            concatenate(Axis(0), &[out.features.view(), part.features.view()])
                .map(standard)
                .map_err(|e| SimError::Mismatch(format!("the log's f_* columns: {e}")))?
        };
        match (&mut out.prompts, part.prompts) {
            (Some(mine), Some(mut theirs)) => mine.append(&mut theirs),
            (None, Some(theirs)) if i == 0 => out.prompts = Some(theirs),
            _ => {}
        }
        if part.embeddings.is_some() && out.embeddings.is_none() {
            out.embeddings = Some(vec![None; out.decision_ids.len() - rows]);
        }
        if let Some(mine) = out.embeddings.as_mut() {
            mine.extend(part.embeddings.unwrap_or_else(|| vec![None; rows]));
        }
        if out.context.is_none() {
            out.context = part.context;
        }
    }
    out.arms = arms;
    Ok(out)
}

impl DatasetReader for LoggedReader {
    fn detects(&self, columns: &[String]) -> bool {
        columns.iter().any(|c| c == "arm") && columns.iter().any(|c| c == "propensity")
    }

    fn read(&self, source: &str, tables: &[Table]) -> Result<Dataset> {
        let rows = tables.iter().map(Self::read_table).collect::<Result<Vec<_>>>()?;
        let parts = if rows.iter().any(|r| r.events.is_some()) {
            vec![merge_events(rows)?]
        } else {
            rows.into_iter().map(|r| (r.arm_names, r.data)).collect()
        };
        Ok(Dataset::Logged(combine_logged(source, parts, None)?))
    }
}
