//! Writing datasets and result frames with polars: CSV, Parquet or JSON lines by extension.

use std::fs::File;
use std::path::Path;

use ndarray::Array2;
use polars::prelude::*;

use crate::data::{LoggedDataset, WideDataset};
use crate::error::{Result, SimError};

fn write_error(path: &Path, e: impl std::fmt::Display) -> SimError {
    SimError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes `frame` to `path` as CSV, Parquet or JSON lines, by its extension.
pub fn write_frame(frame: &mut DataFrame, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| write_error(path, e))?;
    }
    let file = File::create(path).map_err(|e| write_error(path, e))?;
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    match extension {
        "parquet" => ParquetWriter::new(file)
            .finish(frame)
            .map(|_| ())
            .map_err(|e| write_error(path, e)),
        "jsonl" | "ndjson" | "json" => JsonWriter::new(file)
            .with_json_format(JsonFormat::JsonLines)
            .finish(frame)
            .map_err(|e| write_error(path, e)),
        _ => CsvWriter::new(file)
            .finish(frame)
            .map_err(|e| write_error(path, e)),
    }
}

fn column<T, P>(name: &str, values: P) -> Column
where
    Series: NamedFrom<P, T>,
    T: ?Sized,
{
    Series::new(name.into(), values).into()
}

fn frame(columns: Vec<Column>, path: &Path) -> Result<DataFrame> {
    DataFrame::new_infer_height(columns).map_err(|e| write_error(path, e))
}

/// Appends the `f_*` columns of a feature block.
fn feature_columns(columns: &mut Vec<Column>, names: &[String], values: &Array2<f64>) {
    for (name, values) in names.iter().zip(values.columns()) {
        columns.push(column(name, values.to_vec()));
    }
}

/// Writes a log in the logged shape (the server's exact columns, then `prompt` and `f_*`);
/// a call whose outcome has not come has a null cost and latency, and so has every call of
/// a log that records no latency. A log that records no cost has no `cost_usd` column, so
/// that its calls still read as come.
pub fn write_logged(log: &LoggedDataset, path: &Path) -> Result<()> {
    let arm_names: Vec<&str> = log.arm.iter().map(|&a| log.arms[a].as_str()).collect();
    let if_called = |values: &[f64], recorded: bool| -> Vec<Option<f64>> {
        values
            .iter()
            .zip(&log.outcome)
            .map(|(&v, &came)| (came && recorded).then_some(v))
            .collect()
    };
    let mut columns = vec![
        column("decision_id", log.decision_ids.clone()),
        column("timestamp", log.timestamps.clone()),
        column("route", log.routes.clone()),
        column("policy", log.policies.clone()),
        column("arm", arm_names),
        column("propensity", log.propensity.clone()),
        column("quality", log.quality.clone()),
        column("cost_usd", if_called(&log.cost_usd, true)),
        column("latency_ms", if_called(&log.latency_ms, log.latency_recorded)),
        column("error", log.error.clone()),
    ];
    columns.retain(|c| log.cost_recorded || c.name().as_str() != "cost_usd");
    if let Some(prompts) = &log.prompts {
        columns.push(column("prompt", prompts.clone()));
    }
    feature_columns(&mut columns, &log.feature_names, &log.features);
    write_frame(&mut frame(columns, path)?, path)
}

/// Writes a table in the wide shape, with its `split` column where it has one.
pub fn write_wide(data: &WideDataset, path: &Path) -> Result<()> {
    let n = data.rows();
    let mut columns = vec![column("id", data.ids.clone())];
    if let Some(split) = &data.split {
        columns.push(column("split", split.clone()));
    }
    if let Some(prompts) = &data.prompts {
        columns.push(column("prompt", prompts.clone()));
    }
    if let Some(tasks) = &data.tasks {
        columns.push(column("task", tasks.clone()));
    }
    feature_columns(&mut columns, &data.feature_names, &data.features);
    for (a, arm) in data.arms.iter().enumerate() {
        columns.push(column(
            &format!("quality|{arm}"),
            (0..n).map(|r| data.quality(r, a)).collect::<Vec<f64>>(),
        ));
        if data.cost_usd.is_some() {
            columns.push(column(
                &format!("cost|{arm}"),
                (0..n).map(|r| data.cost_usd(r, a)).collect::<Vec<f64>>(),
            ));
        }
        if data.latency_ms.is_some() {
            columns.push(column(
                &format!("latency_ms|{arm}"),
                (0..n)
                    .map(|r| data.latency_ms(r, a).unwrap_or(0.0))
                    .collect::<Vec<f64>>(),
            ));
        }
    }
    write_frame(&mut frame(columns, path)?, path)
}
