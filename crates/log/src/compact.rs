//! Compacted segments: a closed JSON-lines segment rewritten as Parquet, the same records
//! in columns (a tenth of the bytes on a long log, and a reader can take the columns it needs).
//!
//! A compacted segment is named as its JSON-lines segment was, with `.parquet`
//! (`decisions-<first seq>.parquet`), and holds the same records in the same order: one
//! column per field of [`LogRecord`] (`embedding`, `unavailable` and `admitted` as lists) and one per
//! caller feature, null where a record has none. Every reader of a log directory, the
//! server's recovery among them, reads both kinds of segment ([`segment_files`]).
//!
//! [`compact`] never touches the newest JSON-lines segment (the open one, which the server
//! appends to). For each closed one it writes the Parquet file under a temporary name,
//! fsyncs it, reads it back, renames it into place, fsyncs the directory and only then
//! removes the JSON-lines file; a reader that lists the directory in between finds both and
//! reads the Parquet file, and one that listed it before and finds the JSON-lines file gone
//! reads its Parquet form, so a log is complete at every moment of a compaction, also
//! under a crash (the next compaction removes a JSON-lines file left beside a Parquet form
//! that reads back to its records, and a Parquet form that cannot be read). A compaction
//! holds the directory's `compact.lock` throughout: a second one at once is refused.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::time::Duration;

use polars::prelude::*;

use crate::{
    first_seq_of, lock_file, segments, sync_dir, unreadable_version, LogEvent, LogRecord, SegmentText,
    COLUMNS,
};

/// What [`compact`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compaction {
    /// Segments rewritten as Parquet.
    pub segments: usize,
    /// Records in them.
    pub records: usize,
    /// Their bytes as JSON lines.
    pub json_bytes: u64,
    /// Their bytes as Parquet.
    pub parquet_bytes: u64,
}

/// Rewrites every closed JSON-lines segment of the log in `dir` as Parquet (see the
/// module docs); the newest JSON-lines segment stays as it is. Each Parquet file is read
/// back and compared with the records before their JSON lines are removed. Of a closed
/// segment left in both forms by a compaction cut short, the JSON lines are removed if the
/// Parquet form reads back to their records; a Parquet form that cannot be read is removed,
/// and the segment compacted again; two forms that read otherwise are refused, named.
/// Refused while another compaction of `dir` runs.
pub fn compact(dir: &Path) -> io::Result<Compaction> {
    let _lock = compaction_lock(dir)?;
    let mut done = Compaction::default();
    let mut closed = segments(dir)?;
    let open = closed.pop();
    for path in open.iter().chain(&closed) {
        let compacted = path.with_extension("parquet");
        if !compacted.exists() {
            continue;
        }
        // A Parquet form that cannot be read holds nothing a reader could use.
        let Ok(records) = read_parquet_segment(&compacted) else {
            std::fs::remove_file(&compacted).map_err(|e| invalid(&compacted, e))?;
            sync_dir(dir)?;
            continue;
        };
        if Some(path) == open.as_ref() {
            return Err(invalid(
                path,
                format!(
                    "the segment the server appends to has a Parquet form, {}, that readers \
                     take in its place; remove it",
                    compacted.display()
                ),
            ));
        }
        // JSON lines that cannot be read are an error of their own, naming their line.
        let json = SegmentText::read(path.clone(), false).and_then(SegmentText::records)?;
        if json != records {
            return Err(invalid(
                path,
                format!(
                    "its records differ from those of {} beside it; remove the wrong one",
                    compacted.display()
                ),
            ));
        }
        std::fs::remove_file(path).map_err(|e| invalid(path, e))?;
        sync_dir(dir)?;
    }
    for path in segments(dir)?.iter().filter(|p| closed.contains(p)) {
        let records = SegmentText::read(path.clone(), false)?.records()?;
        let target = path.with_extension("parquet");
        let partial = path.with_extension("parquet.partial");
        let mut file = File::create(&partial).map_err(|e| invalid(&partial, e))?;
        let mut frame = to_frame(&records).map_err(|e| invalid(path, e))?;
        ParquetWriter::new(&mut file)
            .finish(&mut frame)
            .map_err(|e| invalid(&partial, e))?;
        file.sync_all().map_err(|e| invalid(&partial, e))?;
        if read_parquet_segment(&partial)? != records {
            std::fs::remove_file(&partial)?;
            return Err(invalid(
                path,
                "its Parquet form reads back otherwise; left as JSON lines",
            ));
        }
        std::fs::rename(&partial, &target).map_err(|e| invalid(&target, e))?;
        sync_dir(dir)?;
        done.json_bytes += std::fs::metadata(path)?.len();
        done.parquet_bytes += std::fs::metadata(&target)?.len();
        std::fs::remove_file(path).map_err(|e| invalid(path, e))?;
        sync_dir(dir)?;
        done.segments += 1;
        done.records += records.len();
    }
    Ok(done)
}

/// The hold of one compaction on `dir`: an exclusive lock on its `compact.lock`, apart
/// from the writer's, since a compaction runs beside the server.
pub(crate) fn compaction_lock(dir: &Path) -> io::Result<File> {
    let path = dir.join(COMPACT_LOCK_FILE);
    lock_file(&path, Duration::ZERO)
        .map_err(|e| invalid(&path, e))?
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another compaction of this log is under way (it holds {})",
                    path.display()
                ),
            )
        })
}

const COMPACT_LOCK_FILE: &str = "compact.lock";

fn invalid(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
}

fn text<'a>(name: &str, values: impl Iterator<Item = &'a str>) -> Column {
    Column::new(name.into(), values.collect::<Vec<_>>())
}

/// The columns of a record's fields beside the logged shape's ([`COLUMNS`]); the others
/// are its caller features.
const OTHER_FIELDS: [&str; 17] = [
    "schema",
    "prompt",
    "input_tokens",
    "output_tokens",
    "event",
    "seq",
    "context",
    "featurizer",
    "caller",
    "parent_decision_id",
    "session",
    "reason",
    "embedding",
    "unavailable",
    "admitted",
    "w_cost",
    "w_latency",
];

/// The records as one frame, a column per field and per caller feature.
fn to_frame(records: &[LogRecord]) -> PolarsResult<DataFrame> {
    let r = records;
    let mut columns = vec![
        Column::new("schema".into(), r.iter().map(|r| r.schema).collect::<Vec<_>>()),
        text("decision_id", r.iter().map(|r| r.decision_id.as_str())),
        text("timestamp", r.iter().map(|r| r.timestamp.as_str())),
        text("route", r.iter().map(|r| r.route.as_str())),
        text("policy", r.iter().map(|r| r.policy.as_str())),
        text("arm", r.iter().map(|r| r.arm.as_str())),
        Column::new(
            "propensity".into(),
            r.iter().map(|r| r.propensity).collect::<Vec<_>>(),
        ),
        Column::new("quality".into(), r.iter().map(|r| r.quality).collect::<Vec<_>>()),
        Column::new(
            "cost_usd".into(),
            r.iter().map(|r| r.cost_usd).collect::<Vec<_>>(),
        ),
        Column::new(
            "latency_ms".into(),
            r.iter().map(|r| r.latency_ms).collect::<Vec<_>>(),
        ),
        Column::new("error".into(), r.iter().map(|r| r.error).collect::<Vec<_>>()),
        text("prompt", r.iter().map(|r| r.prompt.as_str())),
        Column::new(
            "input_tokens".into(),
            r.iter().map(|r| r.input_tokens).collect::<Vec<_>>(),
        ),
        Column::new(
            "output_tokens".into(),
            r.iter().map(|r| r.output_tokens).collect::<Vec<_>>(),
        ),
        text("event", r.iter().map(|r| r.event.name())),
        Column::new("seq".into(), r.iter().map(|r| r.seq).collect::<Vec<_>>()),
    ];
    // The optional fields, as JSON lines write them: a column only where a record has one.
    for (name, values) in [
        (
            "context",
            r.iter().map(|r| r.context.as_deref()).collect::<Vec<_>>(),
        ),
        ("featurizer", r.iter().map(|r| r.featurizer.as_deref()).collect()),
        ("caller", r.iter().map(|r| r.caller.as_deref()).collect()),
        (
            "parent_decision_id",
            r.iter().map(|r| r.parent_decision_id.as_deref()).collect(),
        ),
        ("session", r.iter().map(|r| r.session.as_deref()).collect()),
        ("reason", r.iter().map(|r| r.reason.as_deref()).collect()),
    ] {
        if values.iter().any(Option::is_some) {
            columns.push(Column::new(name.into(), values));
        }
    }
    for (name, values) in [
        ("w_cost", r.iter().map(|r| r.w_cost).collect::<Vec<_>>()),
        ("w_latency", r.iter().map(|r| r.w_latency).collect()),
    ] {
        if values.iter().any(Option::is_some) {
            columns.push(Column::new(name.into(), values));
        }
    }
    if r.iter().any(|r| r.embedding.is_some()) {
        let embedding: ListChunked = r
            .iter()
            .map(|r| r.embedding.as_deref().map(|v| Series::new("".into(), v)))
            .collect();
        columns.push(embedding.with_name("embedding".into()).into_column());
    }
    for (name, lists) in [
        (
            "unavailable",
            r.iter().map(|r| &r.unavailable).collect::<Vec<_>>(),
        ),
        ("admitted", r.iter().map(|r| &r.admitted).collect()),
    ] {
        if lists.iter().any(|l| !l.is_empty()) {
            let column: ListChunked = lists
                .into_iter()
                .map(|l| Some(Series::new("".into(), l.clone())))
                .collect();
            columns.push(column.with_name(name.into()).into_column());
        }
    }
    let features: std::collections::BTreeSet<&String> = r.iter().flat_map(|r| r.features.keys()).collect();
    for name in features {
        let values: Vec<Option<f64>> = r.iter().map(|r| r.features.get(name).copied()).collect();
        columns.push(Column::new(name.as_str().into(), values));
    }
    DataFrame::new_infer_height(columns)
}

/// The records of the compacted segment at `path`, in order.
pub(crate) fn read_parquet_segment(path: &Path) -> io::Result<Vec<LogRecord>> {
    let frame = ParquetReader::new(File::open(path)?)
        .finish()
        .map_err(|e| invalid(path, e))?;
    from_frame(&frame).map_err(|e| invalid(path, e))
}

fn from_frame(frame: &DataFrame) -> PolarsResult<Vec<LogRecord>> {
    let get = |name: &str| frame.column(name).map(Column::as_materialized_series);
    // An optional field's column is absent where no record has it.
    let texts = |name: &str| -> PolarsResult<Vec<Option<String>>> {
        match frame.column(name) {
            Ok(c) => Ok(c
                .as_materialized_series()
                .str()?
                .iter()
                .map(|v| v.map(str::to_string))
                .collect()),
            Err(_) => Ok(vec![None; frame.height()]),
        }
    };
    let lists = |name: &str| {
        frame
            .column(name)
            .ok()
            .map(|c| c.as_materialized_series().list().cloned())
            .transpose()
    };
    let numbers = |name: &str| -> PolarsResult<Vec<Option<f64>>> {
        Ok(get(name)?.cast(&DataType::Float64)?.f64()?.iter().collect())
    };
    let optional_numbers = |name: &str| match frame.column(name) {
        Ok(_) => numbers(name),
        Err(_) => Ok(vec![None; frame.height()]),
    };
    let (schema, seq) = (get("schema")?.u32()?, get("seq")?.u64()?);
    let (input_tokens, output_tokens) = (get("input_tokens")?.u32()?, get("output_tokens")?.u32()?);
    let error = get("error")?.bool()?;
    let [decision_id, timestamp, route, policy, arm, prompt, event, context, featurizer, caller, parent, session, reason] =
        [
            "decision_id",
            "timestamp",
            "route",
            "policy",
            "arm",
            "prompt",
            "event",
            "context",
            "featurizer",
            "caller",
            "parent_decision_id",
            "session",
            "reason",
        ]
        .map(texts);
    let [propensity, quality, cost_usd, latency_ms] =
        ["propensity", "quality", "cost_usd", "latency_ms"].map(numbers);
    let [w_cost, w_latency] = ["w_cost", "w_latency"].map(optional_numbers);
    let (w_cost, w_latency) = (w_cost?, w_latency?);
    let (embedding, unavailable, admitted) = (lists("embedding")?, lists("unavailable")?, lists("admitted")?);
    // Every other column is a caller feature, as every other JSON field is.
    let features: Vec<(String, Vec<Option<f64>>)> = frame
        .get_column_names()
        .into_iter()
        .filter(|n| !COLUMNS.contains(&n.as_str()) && !OTHER_FIELDS.contains(&n.as_str()))
        .map(|n| Ok((n.to_string(), numbers(n)?)))
        .collect::<PolarsResult<_>>()?;
    let (decision_id, timestamp, route, policy, arm) = (decision_id?, timestamp?, route?, policy?, arm?);
    let (prompt, event, context, featurizer) = (prompt?, event?, context?, featurizer?);
    let (caller, parent, session, reason) = (caller?, parent?, session?, reason?);
    let (propensity, quality, cost_usd, latency_ms) = (propensity?, quality?, cost_usd?, latency_ms?);
    let missing = |what: &str, row: usize| polars_err!(ComputeError: "row {}: no {what}", row + 1);
    (0..frame.height())
        .map(|i| {
            let event_name = event[i].as_deref().unwrap_or_default();
            let list_of = |lists: &Option<ListChunked>| lists.as_ref().and_then(|l| l.get_as_series(i));
            let version = schema.get(i).ok_or_else(|| missing("schema", i))?;
            if let Some(why) = unreadable_version(version) {
                polars_bail!(ComputeError: "row {}: {why}", i + 1);
            }
            Ok(LogRecord {
                schema: version,
                decision_id: decision_id[i].clone().unwrap_or_default(),
                timestamp: timestamp[i].clone().unwrap_or_default(),
                route: route[i].clone().unwrap_or_default(),
                policy: policy[i].clone().unwrap_or_default(),
                arm: arm[i].clone().unwrap_or_default(),
                propensity: propensity[i].ok_or_else(|| missing("propensity", i))?,
                quality: quality[i],
                cost_usd: cost_usd[i].unwrap_or_default(),
                latency_ms: latency_ms[i].unwrap_or_default(),
                error: error.get(i).unwrap_or_default(),
                prompt: prompt[i].clone().unwrap_or_default(),
                input_tokens: input_tokens.get(i).unwrap_or_default(),
                output_tokens: output_tokens.get(i).unwrap_or_default(),
                event: LogEvent::from_name(event_name).ok_or_else(
                    || polars_err!(ComputeError: "row {}: unknown event `{event_name}`", i + 1),
                )?,
                seq: seq.get(i).ok_or_else(|| missing("seq", i))?,
                context: context[i].clone(),
                featurizer: featurizer[i].clone(),
                embedding: list_of(&embedding)
                    .map(|s| Ok::<_, PolarsError>(s.f64()?.iter().map(Option::unwrap_or_default).collect()))
                    .transpose()?,
                unavailable: texts_of(list_of(&unavailable))?,
                admitted: texts_of(list_of(&admitted))?,
                w_cost: w_cost[i],
                w_latency: w_latency[i],
                caller: caller[i].clone(),
                parent_decision_id: parent[i].clone(),
                session: session[i].clone(),
                reason: reason[i].clone(),
                features: features
                    .iter()
                    .filter_map(|(name, values)| values[i].map(|v| (name.clone(), v)))
                    .collect::<BTreeMap<_, _>>(),
            })
        })
        .collect()
}

/// The texts of a list cell, none for a null one.
fn texts_of(list: Option<Series>) -> PolarsResult<Vec<String>> {
    Ok(list
        .map(|s| Ok::<_, PolarsError>(s.str()?.iter().flatten().map(str::to_string).collect()))
        .transpose()?
        .unwrap_or_default())
}

/// Whether the file at `path` ends as a whole Parquet file does, with its magic `PAR1`.
pub(crate) fn ends_whole(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut file| {
            file.seek(SeekFrom::End(-4))?;
            file.read_exact(&mut magic)
        })
        .is_ok_and(|()| &magic == b"PAR1")
}

/// The first sequence number a compacted segment's name gives.
pub(crate) fn parquet_first_seq(path: &Path) -> Option<u64> {
    first_seq_of(&path.with_extension("jsonl")).filter(|_| path.extension().is_some_and(|e| e == "parquet"))
}
