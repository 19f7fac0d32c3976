//! The two dataset shapes and the readers that produce them.
//!
//! - [`WideDataset`], full information: every arm's quality (and optionally cost and latency)
//!   for every request; any policy can be replayed on it under bandit feedback.
//! - [`LoggedDataset`], bandit feedback: one row per decision with the chosen arm, its
//!   propensity and what was observed; what the server writes, and what OPE reads.
//!
//! Each format is a [`DatasetReader`]: the native shapes, RouterBench, RouteLLM eval CSVs,
//! RouterArena's cached results and the Open Bandit Dataset. [`Format::Auto`] picks one
//! from the columns.

use std::fmt;
use std::str::FromStr;

use ndarray::Array2;

pub mod prices;

pub use logged::{EarlierContexts, LogStream, LoggedDataset};
pub use wide::WideDataset;

use crate::error::{Result, SimError};
use crate::source::{expand, read_all, read_head, Table};

/// A loaded dataset of either shape.
#[derive(Debug, Clone)]
pub enum Dataset {
    /// Full information.
    Wide(WideDataset),
    /// Bandit feedback.
    Logged(LoggedDataset),
}

/// Turns the tables of one data path into a dataset.
pub trait DatasetReader {
    /// Whether the columns look like this format.
    fn detects(&self, columns: &[String]) -> bool;
    /// Reads the tables (one per file) into one dataset.
    fn read(&self, source: &str, tables: &[Table]) -> Result<Dataset>;
}

/// The registry of data formats. A new format is one file (its reader, `impl
/// DatasetReader`) and one line here, `Variant: module::Reader = "name"`, in the order
/// [`Format::Auto`] tries them (the specific public formats first, the native shapes
/// last): the line makes it a [`Format`], a `--format` name and a reader detection tries.
macro_rules! formats {
    ($($variant:ident: $module:ident::$reader:ident = $name:literal),* $(,)?) => {
        $(mod $module;)*
        $(pub use $module::$reader;)*

        /// The data formats `--format` accepts.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Format {
            /// Detect from the columns.
            Auto,
            $(#[doc = concat!("[`", stringify!($reader), "`].")] $variant,)*
        }

        impl FromStr for Format {
            type Err = SimError;
            fn from_str(s: &str) -> Result<Self> {
                match s.to_ascii_lowercase().as_str() {
                    "auto" => Ok(Format::Auto),
                    $($name => Ok(Format::$variant),)*
                    other => Err(SimError::InvalidOption(format!(
                        "unknown format `{other}`; use auto, {}",
                        [$($name),*].join(", ")
                    ))),
                }
            }
        }

        impl fmt::Display for Format {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self {
                    Format::Auto => "auto",
                    $(Format::$variant => $name,)*
                })
            }
        }

        /// Every format's reader, in detection order.
        fn readers() -> Vec<(Format, Box<dyn DatasetReader>)> {
            vec![$((Format::$variant, Box::new($reader) as Box<dyn DatasetReader>),)*]
        }
    };
}

formats! {
    RouterBench: routerbench::RouterBenchReader = "routerbench",
    Obd: obd::ObdReader = "obd",
    RouterArena: routerarena::RouterArenaReader = "routerarena",
    Logged: logged::LoggedReader = "logged",
    Wide: wide::WideReader = "wide",
    RouteLlm: routellm::RouteLlmReader = "routellm",
}

/// A row filter `COLUMN=VALUE` (`--split`): keeps rows whose column, as text, equals VALUE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The column.
    pub column: String,
    /// The value kept.
    pub value: String,
}

impl FromStr for Split {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once('=') {
            Some((c, v)) if !c.is_empty() => Ok(Split {
                column: c.to_string(),
                value: v.to_string(),
            }),
            _ => Err(SimError::InvalidOption(format!(
                "--split `{s}` needs the form COLUMN=VALUE"
            ))),
        }
    }
}

pub(crate) fn apply_split(table: Table, split: &Split) -> Result<Table> {
    let values = table.texts(&split.column, "--split names a column of the data")?;
    let mask: polars::prelude::BooleanChunked = values
        .iter()
        .map(|v| Some(v.as_deref() == Some(split.value.as_str())))
        .collect();
    table.filter(&mask)
}

/// Loads a data path (file, directory or glob) in `format`, keeping the rows `split` selects.
pub fn load(source: &str, format: Format, split: Option<&Split>) -> Result<Dataset> {
    let mut tables = read_all(source)?;
    if let Some(split) = split {
        tables = tables
            .into_iter()
            .map(|t| apply_split(t, split))
            .collect::<Result<_>>()?;
        if tables.iter().all(|t| t.rows() == 0) {
            return Err(SimError::InvalidOption(format!(
                "the split {}={} keeps nothing: no row of {source} has `{}` equal to `{}`",
                split.column, split.value, split.column, split.value
            )));
        }
    }
    let chosen = detect(&tables[0], format)?;
    let (_, reader) = readers()
        .into_iter()
        .find(|(f, _)| *f == chosen)
        .ok_or_else(|| SimError::InvalidOption(format!("no reader for format {chosen}")))?;
    reader.read(source, &tables)
}

/// The format of the data whose first table is `first`: `format` unless it is auto.
fn detect(first: &Table, format: Format) -> Result<Format> {
    if format != Format::Auto {
        return Ok(format);
    }
    let columns = first.columns();
    readers()
        .into_iter()
        .find(|(_, r)| r.detects(&columns))
        .map(|(f, _)| f)
        .ok_or_else(|| {
            SimError::InvalidOption(format!(
                "{}: cannot tell the format from its columns ({}); give --format",
                first.path.display(),
                columns.join(", ")
            ))
        })
}

/// The format of the data at `source` (`format` unless it is auto), from the first rows
/// of its first file.
pub fn detect_format(source: &str, format: Format) -> Result<Format> {
    if format != Format::Auto {
        return Ok(format);
    }
    let first = quiver_log::read_current(&expand(source)?[0], |path| read_head(path, 1000))?;
    detect(&first, format)
}

/// Loads a data path that must be full-information.
pub fn load_wide(source: &str, format: Format, split: Option<&Split>) -> Result<WideDataset> {
    match load(source, format, split)? {
        Dataset::Wide(w) => Ok(w),
        Dataset::Logged(_) => Err(SimError::InvalidOption(format!(
            "{source} is a logged (bandit-feedback) dataset; replay needs full information \
             (quality|ARM columns); use `quiver ope` for logs"
        ))),
    }
}

/// Loads a data path that must be logged.
pub fn load_logged(source: &str, format: Format, split: Option<&Split>) -> Result<LoggedDataset> {
    match load(source, format, split)? {
        Dataset::Logged(l) => Ok(l),
        Dataset::Wide(_) => Err(SimError::InvalidOption(format!(
            "{source} is a full-information (wide) dataset; OPE needs a log with arm and \
             propensity columns (`quiver data convert --to logged` makes one)"
        ))),
    }
}

/// The numeric feature columns (`f_*`) of a table: by index when every one is `f_<i>`,
/// as a server's caller features are named and ordered (a log may write `f_10` before
/// `f_2`), else in file order.
pub(crate) fn feature_columns(columns: &[String]) -> Vec<String> {
    let mut names: Vec<&String> = columns.iter().filter(|c| c.starts_with("f_")).collect();
    let index = |name: &str| name["f_".len()..].parse::<usize>().ok();
    if names.iter().all(|n| index(n).is_some()) {
        names.sort_by_key(|n| index(n));
    }
    names.into_iter().cloned().collect()
}

/// Reads `f_*` columns row-major. Values must lie within the learner's bounds on a
/// feature ([`quiver_bandit::limits::FEATURE`]); they may be empty only in rows where
/// `required(row)` is false (read as 0).
pub(crate) fn read_features(
    table: &Table,
    names: &[String],
    required: impl Fn(usize) -> bool,
) -> Result<Array2<f64>> {
    let columns: Vec<Vec<Option<f64>>> = names
        .iter()
        .map(|n| table.numbers(n, "feature columns are named f_*"))
        .collect::<Result<_>>()?;
    let mut features = Array2::zeros((table.rows(), names.len()));
    // Row by row, so that the first bad value named is the first in the file.
    for ((row, j), value) in features.indexed_iter_mut() {
        *value = match columns[j][row] {
            Some(x) => {
                let bound = quiver_bandit::limits::FEATURE;
                crate::source::check_range(table, row, &names[j], x, bound.lo, bound.hi)?
            }
            None if !required(row) => 0.0,
            None => return Err(table.bad_value(row, &names[j], "empty; every row needs a value")),
        };
    }
    Ok(features)
}

/// `matrix` in standard (row-major, contiguous) layout: selecting or stacking along an
/// axis may give another, and the tables keep theirs standard so that a row is a slice.
pub(crate) fn standard(matrix: Array2<f64>) -> Array2<f64> {
    if matrix.is_standard_layout() {
        matrix
    } else {
        matrix.as_standard_layout().into_owned()
    }
}

/// Row `row` of a table's matrix, as a slice (the tables keep their matrices standard:
/// see [`standard`]).
pub(crate) fn row_slice(matrix: &Array2<f64>, row: usize) -> &[f64] {
    matrix
        .row(row)
        .to_slice()
        .expect("a table's matrix is in standard layout")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every registered format is named, parses back from its name and has a reader; an
    /// unknown name lists them all.
    #[test]
    fn the_registry_names_and_reads_every_format() {
        let registered: Vec<Format> = readers().into_iter().map(|(format, _)| format).collect();
        assert_eq!(registered.len(), 6);
        for format in registered.iter().copied().chain([Format::Auto]) {
            assert_eq!(format.to_string().parse::<Format>().unwrap(), format);
        }
        let refused = "parquetish".parse::<Format>().unwrap_err().to_string();
        for format in &registered {
            assert!(refused.contains(&format.to_string()), "{refused}");
        }
    }

    /// Rows a `--split` keeps are still named by their row of the file: in an error, in a
    /// dropped row's note and as ids when the table has none.
    #[test]
    fn a_split_keeps_the_files_row_numbers() {
        let dir = std::env::temp_dir().join(format!("quiver-split-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.csv");
        let write = |last: &str| {
            let rows = format!("split,quality|a,quality|b\ntrain,0.5,1\ntest,0.5,1\ntest,0.5,\ntrain,0.5,{last}\ntrain,1,0\n");
            std::fs::write(&path, rows).unwrap();
        };
        let train: Split = "split=train".parse().unwrap();
        let source = path.to_str().unwrap();
        write("1");
        let Dataset::Wide(kept) = load(source, Format::Wide, Some(&train)).unwrap() else {
            panic!("a wide table");
        };
        assert_eq!(kept.ids, ["1", "4", "5"]);
        let Dataset::Wide(test) = load(source, Format::Wide, Some(&"split=test".parse().unwrap())).unwrap()
        else {
            panic!("a wide table");
        };
        assert_eq!(test.ids, ["2"]);
        assert!(
            test.dropped[0].contains("row 3: no quality for `b`"),
            "{:?}",
            test.dropped
        );
        write("7");
        let err = load(source, Format::Wide, Some(&train)).unwrap_err().to_string();
        assert!(err.contains("row 4") && err.contains("quality|b"), "{err}");
        let err = load(source, Format::Wide, Some(&"split=dev".parse().unwrap()))
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("has `split` equal to `dev`"), "{err}");
        let obd = dir.join("obd.csv");
        std::fs::write(
            &obd,
            "item_id,position,click,propensity_score\n0,1,0,0.5\n1,2,1,0.5\n0,1,1,0.5\n",
        )
        .unwrap();
        let first: Split = "position=1".parse().unwrap();
        let Dataset::Logged(log) = load(obd.to_str().unwrap(), Format::Obd, Some(&first)).unwrap() else {
            panic!("a log");
        };
        assert_eq!(log.decision_ids, ["1", "3"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
