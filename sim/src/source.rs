//! Finding data files and reading them with polars into typed columns.
//!
//! A data path is a file, a directory (a server's log directory: its segments, JSON lines
//! and compacted; any other: every `.csv`, `.parquet`, `.jsonl`/`.ndjson` in it, but not
//! plain `.json` files such as a `snapshot.json`) or a glob;
//! several files make one table, read in sorted order. Each file is read on its
//! own so that every error names the file, the row and the column.
//!
//! [`read_chunks`] reads a file in consecutive tables of a bounded number of rows, for
//! logs larger than memory: Parquet by row ranges, JSON lines by lines (a log segment's
//! complete records, at most one segment's bytes at a time); a CSV file is one chunk.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::{Result, SimError};

/// One file's rows.
pub struct Table {
    /// Where the rows came from.
    pub path: PathBuf,
    /// The rows.
    pub frame: DataFrame,
    /// The file's row of this table's first row (0 unless read in chunks); a row's own is
    /// [`Table::file_row`].
    first_row: usize,
    /// The rows a `--split` kept, by their place among the table's rows before it; every
    /// row when None.
    kept: Option<Vec<usize>>,
}

/// Rows per table that [`read_chunks`] reads: a multiple of the bootstrap's blocks.
pub const CHUNK_ROWS: usize = 1 << 16;

const EXTENSIONS: [&str; 5] = ["csv", "parquet", "jsonl", "ndjson", "json"];

fn is_data_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether `dir` holds decision-log segments.
fn is_log_dir(dir: &Path) -> bool {
    quiver_log::segment_files(dir).is_ok_and(|files| !files.is_empty())
}

/// The files a data path names, sorted.
pub fn expand(pattern: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(pattern);
    if path.is_dir() && is_log_dir(path) {
        // A server's log: its segments in order, JSON lines or compacted, not what lies
        // beside them.
        return quiver_log::segment_files(path).map_err(|e| unreadable(path, e));
    }
    let mut files: Vec<PathBuf> = if path.is_file() {
        vec![path.to_path_buf()]
    } else if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(|e| SimError::Read {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_data_file(p) && p.extension().is_some_and(|e| e != "json"))
            .collect()
    } else {
        glob::glob(pattern)
            .map_err(|e| SimError::InvalidOption(format!("bad glob `{pattern}`: {e}")))?
            .filter_map(|entry| entry.ok())
            .filter(|p| p.is_file() && is_data_file(p))
            .collect()
    };
    files.sort();
    if files.is_empty() {
        return Err(SimError::NoFiles {
            pattern: pattern.to_string(),
        });
    }
    Ok(files)
}

/// How a data file is read, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Parquet,
    JsonLines,
    /// Anything else.
    Csv,
}

impl FileKind {
    fn of(path: &Path) -> Self {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        match extension.as_str() {
            "parquet" => FileKind::Parquet,
            "jsonl" | "ndjson" | "json" => FileKind::JsonLines,
            _ => FileKind::Csv,
        }
    }
}

fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| unreadable(path, e))
}

/// A CSV file's first `rows` rows, or all of them, every column as text: ids, prompts and
/// names such as `007` stay as written, and numbers are read from the text where a column
/// holds them. A header that names a column twice is refused: the reader would rename the
/// second (`<name>_duplicated_0`) and read it as another column.
fn read_csv(path: &Path, rows: Option<usize>) -> Result<DataFrame> {
    let frame = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .with_n_rows(rows)
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|reader| reader.finish())
        .map_err(|e| {
            // The reader's own message names no row; the first record out of shape does.
            let shape = std::fs::read(path)
                .ok()
                .and_then(|bytes| not_utf8(&bytes).or_else(|| csv_shape_error(&bytes, rows)));
            match shape {
                Some(shape) => unreadable(path, format!("{shape} (the CSV reader: {e})")),
                None => unreadable(path, e),
            }
        })?;
    // The reader pads a record short of fields with nulls, as it reads an empty cell: where
    // there are nulls, a record out of shape is named rather than read as empty cells.
    if frame.columns().iter().any(|column| column.null_count() > 0) {
        let bytes = std::fs::read(path).map_err(|e| unreadable(path, e))?;
        if let Some(shape) = csv_shape_error(&bytes, rows) {
            return Err(unreadable(path, shape));
        }
    }
    let names: Vec<&str> = frame.get_column_names().iter().map(|n| n.as_str()).collect();
    let twice = names.iter().find_map(|name| {
        let (first, _) = name.rsplit_once("_duplicated_")?;
        names.contains(&first).then_some(first)
    });
    match twice {
        Some(name) => Err(unreadable(
            path,
            format!("column `{name}` appears more than once in the header"),
        )),
        None => Ok(frame),
    }
}

/// Where `bytes` stop being UTF-8 text, if they do.
fn not_utf8(bytes: &[u8]) -> Option<String> {
    let valid = std::str::from_utf8(bytes).err()?.valid_up_to();
    let line = 1 + bytes[..valid].iter().filter(|&&b| b == b'\n').count();
    Some(format!(
        "line {line} is not UTF-8 text (byte {}); save the file as UTF-8",
        valid + 1
    ))
}

/// The first record of a CSV file `bytes` (RFC 4180: fields quoted with `"`, `""` inside
/// them) with another number of fields than the header, or with a quote never closed,
/// described with its 1-based data row and line (blank lines are not rows); `None` if
/// every record has the header's shape, of the first `rows` or of all.
fn csv_shape_error(bytes: &[u8], rows: Option<usize>) -> Option<String> {
    let (mut row, mut line, mut row_line) = (0usize, 1usize, 1usize);
    let (mut fields, mut header_fields) = (1usize, None);
    let (mut quoted, mut empty_record) = (false, true);
    let mut i = 0;
    let mut end_record = |row: &mut usize, fields: usize, row_line: usize| -> Option<String> {
        let header = *header_fields.get_or_insert(fields);
        let out_of_shape = (*row > 0 && fields != header).then(|| {
            format!("row {row} (line {row_line}) has {fields} fields where the header has {header}")
        });
        *row += 1;
        out_of_shape
    };
    while i < bytes.len() {
        let byte = bytes[i];
        if quoted {
            match byte {
                b'"' if bytes.get(i + 1) == Some(&b'"') => i += 1,
                b'"' => quoted = false,
                b'\n' => line += 1,
                _ => {}
            }
        } else {
            match byte {
                b'"' => quoted = true,
                b',' => fields += 1,
                b'\n' => {
                    line += 1;
                    if !empty_record {
                        if let Some(error) = end_record(&mut row, fields, row_line) {
                            return Some(error);
                        }
                        if rows.is_some_and(|rows| row > rows) {
                            return None;
                        }
                    }
                    (fields, empty_record, row_line) = (1, true, line);
                    i += 1;
                    continue;
                }
                b'\r' => {
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        empty_record = false;
        i += 1;
    }
    if quoted {
        let record = if row == 0 {
            "the header".to_string()
        } else {
            format!("row {row}")
        };
        return Some(format!(
            "{record} (line {row_line}): a quoted field opened in it is never closed"
        ));
    }
    if empty_record {
        None
    } else {
        end_record(&mut row, fields, row_line)
    }
}

/// Reads one file by its extension: CSV (RFC 4180, quoted multi-line fields), Parquet, or
/// JSON lines.
pub fn read_file(path: &Path) -> Result<Table> {
    let frame = match FileKind::of(path) {
        FileKind::Parquet => ParquetReader::new(open(path)?)
            .finish()
            .map_err(|e| unreadable(path, e))?,
        FileKind::JsonLines => parse_json_lines(&json_lines(path)?, path, 0, &mut FieldKinds::new())?,
        FileKind::Csv => read_csv(path, None)?,
    };
    Ok(Table::new(path.to_path_buf(), frame, 0))
}

/// The bytes of a JSON-lines file that hold complete records now (of a log segment the
/// server is still writing, what it has written so far): what [`read_chunks`] reads of it
/// later, so that every pass over a log that is growing reads the same records.
pub fn json_length(path: &Path) -> Result<Option<u64>> {
    if FileKind::of(path) != FileKind::JsonLines {
        return Ok(None);
    }
    let bytes = if quiver_log::is_segment(path) {
        json_lines(path)?.len() as u64
    } else {
        std::fs::metadata(path).map_err(|e| unreadable(path, e))?.len()
    };
    Ok(Some(bytes))
}

/// One file's rows as consecutive tables of at most `rows` rows each (at least one table,
/// perhaps empty), read as [`read_file`] reads the whole file; of a JSON-lines file, its
/// first `json_bytes` only, when given ([`json_length`]); a CSV file is one table.
pub fn read_chunks(
    path: &Path,
    rows: usize,
    json_bytes: Option<u64>,
) -> Result<Box<dyn Iterator<Item = Result<Table>>>> {
    let rows = rows.max(1);
    let path = path.to_path_buf();
    match FileKind::of(&path) {
        FileKind::Parquet => {
            let total = ParquetReader::new(open(&path)?)
                .num_rows()
                .map_err(|e| unreadable(&path, e))?;
            let starts: Vec<usize> = (0..total.max(1)).step_by(rows).collect();
            Ok(Box::new(starts.into_iter().map(move |first_row| {
                let frame = ParquetReader::new(open(&path)?)
                    .with_slice(Some((first_row, rows)))
                    .finish()
                    .map_err(|e| unreadable(&path, e))?;
                Ok(Table::new(path.clone(), frame, first_row))
            })))
        }
        FileKind::JsonLines => {
            let limit = json_bytes.unwrap_or(u64::MAX);
            let lines: Box<dyn std::io::BufRead> = if quiver_log::is_segment(&path) {
                let mut bytes = json_lines(&path)?;
                bytes.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                Box::new(std::io::Cursor::new(bytes))
            } else {
                Box::new(std::io::BufReader::with_capacity(
                    1 << 20,
                    std::io::Read::take(open(&path)?, limit),
                ))
            };
            Ok(Box::new(JsonLineChunks {
                path,
                lines,
                rows,
                first_row: 0,
                kinds: FieldKinds::new(),
                done: false,
            }))
        }
        FileKind::Csv => Ok(Box::new(std::iter::once(read_file(&path)))),
    }
}

/// The first `rows` rows of one file (its columns, for telling its format).
pub fn read_head(path: &Path, rows: usize) -> Result<Table> {
    if FileKind::of(path) != FileKind::Csv {
        return read_chunks(path, rows, None)?
            .next()
            .unwrap_or_else(|| Err(unreadable(path, "no rows")));
    }
    Ok(Table::new(path.to_path_buf(), read_csv(path, Some(rows))?, 0))
}

/// The tables of a JSON-lines file, `rows` lines at a time.
struct JsonLineChunks {
    path: PathBuf,
    lines: Box<dyn std::io::BufRead>,
    rows: usize,
    first_row: usize,
    /// The kinds of value the chunks before gave each field.
    kinds: FieldKinds,
    done: bool,
}

impl JsonLineChunks {
    fn next_table(&mut self) -> Result<Table> {
        let mut bytes = Vec::new();
        let mut read = 0;
        while read < self.rows {
            let before = bytes.len();
            let n = self
                .lines
                .read_until(b'\n', &mut bytes)
                .map_err(|e| unreadable(&self.path, e))?;
            if n == 0 {
                self.done = true;
                break;
            }
            // Blank lines are not rows (as the whole-file reader skips them).
            if bytes[before..].trim_ascii().is_empty() {
                bytes.truncate(before);
            } else {
                read += 1;
            }
        }
        let frame = if read == 0 {
            DataFrame::empty()
        } else {
            parse_json_lines(&bytes, &self.path, self.first_row, &mut self.kinds)?
        };
        let table = Table::new(self.path.clone(), frame, self.first_row);
        self.first_row += read;
        Ok(table)
    }
}

impl Iterator for JsonLineChunks {
    type Item = Result<Table>;

    fn next(&mut self) -> Option<Result<Table>> {
        if self.done {
            return None;
        }
        let table = self.next_table();
        match &table {
            Err(_) => self.done = true,
            // A file's rows end on an empty table only when it has none at all.
            Ok(t) if t.rows() == 0 && t.first_row > 0 => return None,
            Ok(_) => {}
        }
        Some(table)
    }
}

/// Each field's kind of value (see [`json_kind`]) as the first row that gave it one gave
/// it, and that row (1-based).
type FieldKinds = std::collections::HashMap<String, (&'static str, usize)>;

/// The rows of JSON lines `bytes`, the file `path`'s from its row `first_row` on, whose
/// earlier rows gave their fields `kinds` (added to with the fields these rows bring): a
/// file read in chunks is refused where its whole is.
fn parse_json_lines(
    bytes: &[u8],
    path: &Path,
    first_row: usize,
    kinds: &mut FieldKinds,
) -> Result<DataFrame> {
    let frame = JsonReader::new(std::io::Cursor::new(bytes))
        .with_json_format(JsonFormat::JsonLines)
        // Every row's keys: a field first seen late (an embedding once the endpoint came
        // back) would otherwise be dropped, and a chunk's columns depend on where it starts.
        .infer_schema_len(None)
        .finish()
        .map_err(|e| {
            // The reader's own message names no row; the first record out of place does.
            match json_record_error(bytes, first_row, kinds.clone()) {
                Some(why) => unreadable(path, why),
                None => unreadable(path, e),
            }
        })?;
    for column in frame.columns() {
        let Some(kind) = column_kind(column.dtype()) else {
            continue;
        };
        match kinds.get(column.name().as_str()) {
            Some(&(first, first_seen)) if clash(first, kind) => {
                let why = json_record_error(bytes, first_row, kinds.clone()).unwrap_or_else(|| {
                    format!(
                        "field `{}` is {kind} in rows {} to {} where row {first_seen} has {first}",
                        column.name(),
                        first_row + 1,
                        first_row + frame.height()
                    )
                });
                return Err(unreadable(path, why));
            }
            Some(_) => {}
            None => {
                let at = column.first_non_null();
                kinds.insert(column.name().to_string(), (kind, first_row + at.unwrap_or(0) + 1));
            }
        }
    }
    Ok(frame)
}

/// Whether a field's values of kinds `first` and `then` cannot be read as one column: the
/// reader takes a string beside any kind.
fn clash(first: &str, then: &str) -> bool {
    first != then && first != "a string" && then != "a string"
}

/// The kind of value (see [`json_kind`]) the reader gave a column of `dtype`; `None` for
/// nulls only.
fn column_kind(dtype: &DataType) -> Option<&'static str> {
    match dtype {
        DataType::Boolean => Some("a boolean"),
        DataType::String => Some("a string"),
        DataType::List(_) => Some("a list"),
        DataType::Struct(_) => Some("an object"),
        dtype if dtype.is_primitive_numeric() => Some("a number"),
        _ => None,
    }
}

/// The first record of JSON lines `bytes` that is no JSON object, or that gives a field a
/// kind of value that an earlier record, or `first_kinds` of the rows before, did not
/// (see [`clash`]), and why, named by its 1-based file row (blank lines not counted;
/// `bytes` start after the file's first `first_row` rows).
fn json_record_error(bytes: &[u8], first_row: usize, mut first_kinds: FieldKinds) -> Option<String> {
    let lines = bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.trim_ascii().is_empty());
    for (row, line) in (first_row + 1..).zip(lines) {
        let record = match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(record)) => record,
            Ok(other) => return Some(format!("row {row}: `{other}` is not a JSON object")),
            Err(e) => return Some(format!("row {row}: not JSON: {e}")),
        };
        for (key, value) in record {
            let Some(kind) = json_kind(&value) else {
                continue;
            };
            let (first, first_seen) = *first_kinds.entry(key.clone()).or_insert((kind, row));
            if clash(first, kind) {
                return Some(format!(
                    "row {row}, field `{key}`: `{value}` is {kind} where row {first_seen} has {first}"
                ));
            }
        }
    }
    None
}

/// What kind of JSON value `value` is, as a message says it; `None` for null.
fn json_kind(value: &serde_json::Value) -> Option<&'static str> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::Bool(_) => Some("a boolean"),
        serde_json::Value::Number(_) => Some("a number"),
        serde_json::Value::String(_) => Some("a string"),
        serde_json::Value::Array(_) => Some("a list"),
        serde_json::Value::Object(_) => Some("an object"),
    }
}

fn unreadable(path: &Path, reason: impl std::fmt::Display) -> SimError {
    SimError::Read {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The bytes of a JSON-lines file; of a decision-log segment, its complete records only
/// (the log's own rule: preallocated space and a torn last record are not data).
fn json_lines(path: &Path) -> Result<Vec<u8>> {
    let read = if quiver_log::is_segment(path) {
        quiver_log::read_segment(path)
    } else {
        std::fs::read(path)
    };
    read.map_err(|e| unreadable(path, e))
}

/// Reads every file a data path names.
pub fn read_all(pattern: &str) -> Result<Vec<Table>> {
    expand(pattern)?
        .iter()
        .map(|p| quiver_log::read_current(p, read_file))
        .collect()
}

impl Table {
    /// The rows `frame` of file `path`, from its row `first_row` on.
    pub fn new(path: PathBuf, frame: DataFrame, first_row: usize) -> Self {
        Table {
            path,
            frame,
            first_row,
            kept: None,
        }
    }

    /// The rows `mask` keeps, each still numbered by its row of the file.
    pub fn filter(self, mask: &BooleanChunked) -> Result<Self> {
        let frame = self.frame.filter(mask).map_err(|e| unreadable(&self.path, e))?;
        let kept = (0..self.rows())
            .filter(|&r| mask.get(r) == Some(true))
            .map(|r| self.kept.as_ref().map_or(r, |k| k[r]))
            .collect();
        Ok(Table {
            frame,
            kept: Some(kept),
            ..self
        })
    }

    /// The file's row (0-based) of the table's row `row`.
    pub fn file_row(&self, row: usize) -> usize {
        self.first_row + self.kept.as_ref().map_or(row, |k| k[row])
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.frame.height()
    }

    /// Column names, in file order.
    pub fn columns(&self) -> Vec<String> {
        self.frame
            .get_column_names()
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    /// Whether the file has a column.
    pub fn has(&self, column: &str) -> bool {
        self.frame.column(column).is_ok()
    }

    fn column(&self, name: &str, hint: &str) -> Result<&Column> {
        self.frame.column(name).map_err(|_| SimError::MissingColumn {
            path: self.path.clone(),
            column: name.to_string(),
            hint: hint.to_string(),
        })
    }

    /// A bad-value error at a 0-based row.
    pub fn bad_value(&self, row: usize, column: &str, reason: impl Into<String>) -> SimError {
        SimError::BadValue {
            path: self.path.clone(),
            row: self.file_row(row) + 1,
            column: column.to_string(),
            reason: reason.into(),
        }
    }

    /// A numeric column as `f64`, nulls as `None`. Booleans read as 1/0; text must parse
    /// as a number or `true`/`false`.
    pub fn numbers(&self, name: &str, hint: &str) -> Result<Vec<Option<f64>>> {
        let column = self.column(name, hint)?;
        self.series_numbers(column.as_materialized_series(), name)
    }

    /// [`Table::numbers`] of field `field` of the object column `name` (JSON lines'
    /// `{"evaluation_result": {"score": 1.0}}`), named `name.field` in errors.
    pub fn field_numbers(&self, name: &str, field: &str, hint: &str) -> Result<Vec<Option<f64>>> {
        let label = format!("{name}.{field}");
        let column = self.column(name, hint)?;
        let missing = || SimError::MissingColumn {
            path: self.path.clone(),
            column: label.clone(),
            hint: hint.to_string(),
        };
        let objects = column.as_materialized_series().struct_().map_err(|_| missing())?;
        let values = objects.field_by_name(field).map_err(|_| missing())?;
        self.series_numbers(&values, &label)
    }

    /// The values of `series`, column `name` of the table, as numbers.
    fn series_numbers(&self, series: &Series, name: &str) -> Result<Vec<Option<f64>>> {
        match series.dtype() {
            DataType::Boolean => Ok(series
                .bool()
                .map_err(|e| self.bad_value(0, name, e.to_string()))?
                .iter()
                .map(|v| v.map(|b| if b { 1.0 } else { 0.0 }))
                .collect()),
            DataType::String => {
                let text = series.str().map_err(|e| self.bad_value(0, name, e.to_string()))?;
                text.iter()
                    .enumerate()
                    .map(|(row, v)| match v.map(str::trim) {
                        None | Some("") => Ok(None),
                        Some(s) => parse_number(s)
                            .map(Some)
                            .ok_or_else(|| self.bad_value(row, name, format!("`{s}` is not a number"))),
                    })
                    .collect()
            }
            DataType::Null => Ok(vec![None; series.len()]),
            _ => {
                let cast = series
                    .cast(&DataType::Float64)
                    .map_err(|e| self.bad_value(0, name, format!("not numeric ({e})")))?;
                let values = cast.f64().map_err(|e| self.bad_value(0, name, e.to_string()))?;
                Ok(values.iter().collect())
            }
        }
    }

    /// A numeric column that must have no nulls and only finite values in `[lo, hi]`.
    pub fn required_numbers(&self, name: &str, lo: f64, hi: f64, hint: &str) -> Result<Vec<f64>> {
        let values = self.numbers(name, hint)?;
        values
            .iter()
            .enumerate()
            .map(|(row, v)| match v {
                None => Err(self.bad_value(row, name, "empty; every row needs a value")),
                Some(x) => check_range(self, row, name, *x, lo, hi),
            })
            .collect()
    }

    /// Each row's cell of the list column `name`, read by `cell` (given the row), or
    /// `null()` for a null (a column of nulls only too); lists of `what` said in the error
    /// when it is no list. None when the file has no such column.
    fn list_column<T>(
        &self,
        name: &str,
        what: &str,
        null: impl Fn() -> T,
        cell: impl Fn(usize, Series) -> Result<T>,
    ) -> Result<Option<Vec<T>>> {
        let Ok(column) = self.frame.column(name) else {
            return Ok(None);
        };
        let series = column.as_materialized_series();
        if series.dtype() == &DataType::Null {
            return Ok(Some((0..series.len()).map(|_| null()).collect()));
        }
        let lists = series
            .list()
            .map_err(|e| self.bad_value(0, name, format!("not a list of {what} ({e})")))?;
        (0..lists.len())
            .map(|row| {
                lists
                    .get_as_series(row)
                    .map_or_else(|| Ok(null()), |list| cell(row, list))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// A column of lists of numbers (a log's `embedding`), nulls as `None`; None when the
    /// file has no such column.
    pub fn number_lists(&self, name: &str) -> Result<Option<Vec<Option<Vec<f64>>>>> {
        self.list_column(
            name,
            "numbers",
            || None,
            |row, list| {
                let values = list
                    .cast(&DataType::Float64)
                    .map_err(|e| self.bad_value(row, name, format!("not numbers ({e})")))?;
                let values = values
                    .f64()
                    .map_err(|e| self.bad_value(row, name, e.to_string()))?;
                values
                    .iter()
                    .map(|v| v.filter(|x| x.is_finite()))
                    .collect::<Option<Vec<f64>>>()
                    .map(Some)
                    .ok_or_else(|| self.bad_value(row, name, "a missing or non-finite number"))
            },
        )
    }

    /// A column of lists of text (a log's `unavailable`), a null as an empty list; None
    /// when the file has no such column.
    pub fn text_lists(&self, name: &str) -> Result<Option<Vec<Vec<String>>>> {
        self.list_column(name, "names", Vec::new, |row, list| {
            // A chunk whose lists are all empty reads as lists of nothing in particular.
            if list.dtype() == &DataType::Null {
                return Ok(Vec::new());
            }
            let names = list
                .str()
                .map_err(|e| self.bad_value(row, name, format!("not names ({e})")))?;
            Ok(names.iter().flatten().map(str::to_string).collect())
        })
    }

    /// A text column; other types are rendered as text, nulls are `None`.
    pub fn texts(&self, name: &str, hint: &str) -> Result<Vec<Option<String>>> {
        let column = self.column(name, hint)?;
        let series = column.as_materialized_series();
        if let Ok(text) = series.str() {
            return Ok(text.iter().map(|v| v.map(str::to_string)).collect());
        }
        let cast = series
            .cast(&DataType::String)
            .map_err(|e| self.bad_value(0, name, format!("not text ({e})")))?;
        let text = cast.str().map_err(|e| self.bad_value(0, name, e.to_string()))?;
        Ok(text.iter().map(|v| v.map(str::to_string)).collect())
    }
}

/// Checks a finite value against `[lo, hi]`, naming the cell otherwise.
pub fn check_range(table: &Table, row: usize, column: &str, x: f64, lo: f64, hi: f64) -> Result<f64> {
    if !x.is_finite() {
        return Err(table.bad_value(row, column, format!("{x} is not a finite number")));
    }
    if x < lo || x > hi {
        let hint = if hi == 1.0 && lo == 0.0 {
            "; rescale to [0, 1]"
        } else {
            ""
        };
        // A number far from any range is written with its exponent, not in 300 digits.
        let x = if x.abs() >= 1e15 {
            format!("{x:e}")
        } else {
            x.to_string()
        };
        return Err(table.bad_value(row, column, format!("{x} is outside [{lo}, {hi}]{hint}")));
    }
    Ok(x)
}

fn parse_number(s: &str) -> Option<f64> {
    match s.to_ascii_lowercase().as_str() {
        "true" => Some(1.0),
        "false" => Some(0.0),
        other => other.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::csv_shape_error;

    #[test]
    fn a_csv_record_out_of_shape_is_named_by_row_and_line() {
        let fine = "id,prompt,q\r\n1,\"a, \"\"b\"\"\nc\",0.5\r\n2,d,1\n\n";
        assert_eq!(csv_shape_error(fine.as_bytes(), None), None);
        // Row 2 starts on line 4: row 1's quoted prompt spans two lines.
        let ragged = "id,prompt,q\n1,\"a\nb\",0.5\n2,c,1,extra\n";
        assert_eq!(
            csv_shape_error(ragged.as_bytes(), None).as_deref(),
            Some("row 2 (line 4) has 4 fields where the header has 3")
        );
        let open = "id,prompt,q\n1,a,0.5\n2,\"b,1\n3,c,1\n";
        assert_eq!(
            csv_shape_error(open.as_bytes(), None).as_deref(),
            Some("row 2 (line 3): a quoted field opened in it is never closed")
        );
        assert_eq!(
            csv_shape_error(b"id,\"prompt\n", None).as_deref(),
            Some("the header (line 1): a quoted field opened in it is never closed")
        );
        assert_eq!(
            csv_shape_error(b"id,q\n1", None).as_deref(),
            Some("row 1 (line 2) has 1 fields where the header has 2")
        );
        // Only the rows read are looked at.
        assert_eq!(csv_shape_error(ragged.as_bytes(), Some(1)), None);
        assert!(csv_shape_error(ragged.as_bytes(), Some(2)).is_some());
    }
}
