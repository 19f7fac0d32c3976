//! `quiver-log`: Quiver's decision log, the one owner of its format. The server writes
//! through it and the simulator reads through it, so both agree on what a log holds.
//!
//! The decision log: append-only JSON-lines segments in the logged shape.
//!
//! Every record is one row of the logged dataset shape ([`COLUMNS`], then `prompt` and
//! the caller features named by [`feature_name`]) plus the `event` that wrote it
//! (`decision`, `outcome`, `feedback`, `cache_hit`, and a route's canary events), a log
//! sequence number and the
//! format's version ([`SCHEMA_VERSION`]). A decision is written when it is made; its
//! outcome and its quality follow as rows with the same `decision_id` carrying the new
//! values, so the simulator reads a log directory directly and merges the rows of each
//! decision as [`LogEvent::merge`] says.
//!
//! Durability, by group commit: [`DecisionLog::stage`] numbers a record and buffers it, in
//! the order the caller applies the changes; [`DecisionLog::wait_durable`] (threads) or
//! [`DecisionLog::durable`] (async tasks) returns once it is written and `fsync`ed. A
//! waiter that finds no commit under way starts one, which writes everything staged so far
//! with one write and one `fsync`, so concurrent requests share fsyncs instead of queueing
//! for one each; the others wait for it (async tasks without holding a thread). A client
//! is answered only after that wait, so what it was told survives a crash. A failed write
//! or fsync fails the log for good: the in-memory state may then hold unlogged changes, so
//! nothing more is acknowledged until a restart rebuilds the state from what is durable
//! (as PostgreSQL does on fsync errors).
//!
//! Segments rotate at a size limit and are named by their first sequence number. A crash
//! can leave a torn last line in the last segment, cut at any byte (inside a multi-byte
//! UTF-8 character too); it was never acknowledged and is skipped on reading
//! ([`complete_records`]).
//!
//! Closed segments can be rewritten as Parquet ([`compact`]); every reader here takes
//! both forms ([`segment_files`]).
//!
//! One writer per directory: [`WriterLock`] holds an exclusive `flock` on its `lock` file
//! for as long as the log is open, so a second server started on the same directory stops
//! (after [`WriterLock::WAIT`], which a server that is ending takes to let go) instead of
//! interleaving its records with the first's.
//!
//! The open segment is preallocated to its size limit (`posix_fallocate`) and written in
//! place, so an `fdatasync` flushes data without changing the file's size; on ext4 that
//! roughly halves its median and cuts its tail several-fold. The space past the data
//! reads as NUL bytes, which no record contains (JSON escapes control characters), so
//! readers end a segment at its first NUL when only NULs follow. Rotation and a clean close
//! trim the space off; after a crash, opening the log does. NULs that records follow are
//! damage (a reader refuses them, naming the line), but for whole sectors of them in the
//! last segment: the sectors a crash left unwritten, past everything acknowledged.

#![deny(missing_docs)]

mod compact;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use compact::{compact, Compaction};

/// The version of the record format, written in every record (`schema`). A reader refuses
/// a record of a newer version than its own; records written before versions were
/// recorded have none and read as version 1. Version 2 adds `caller`; version 3 a
/// request's own terms (`admitted`, `w_cost`, `w_latency`); from version 4 a decision's
/// `policy` is the one that drew its arm, its route's canary's when the canary served.
pub const SCHEMA_VERSION: u32 = 4;

fn first_schema() -> u32 {
    1
}

/// The logged shape's columns: what a reader of a log, or of a logged dataset from
/// elsewhere, finds, beside `prompt` and the caller features (named by [`feature_name`]).
/// A log's records also carry `schema`, tokens, `event`, `seq`, the context fields and
/// `caller`.
pub const COLUMNS: [&str; 10] = [
    "decision_id",
    "timestamp",
    "route",
    "policy",
    "arm",
    "propensity",
    "quality",
    "cost_usd",
    "latency_ms",
    "error",
];

/// The `reason` of a decision that stayed on its session's model.
pub const SESSION_STAY: &str = "session: stay";

/// How the `reason` of a cascade's escalation starts; the check its parent's answer
/// failed follows.
pub const ESCALATION: &str = "cascade: ";

/// Whether a decision with this `reason` and `parent_decision_id` (empty when absent) is a
/// cascade's escalation: a second call for a request its parent's call answered, where a
/// fallback replaces a call that failed.
pub fn is_escalation(reason: &str, parent_decision_id: &str) -> bool {
    !parent_decision_id.is_empty() && reason.starts_with(ESCALATION)
}

/// Whether a decision with this `reason` and `parent_decision_id` (empty when absent) gave
/// every model the chance its propensity says: not a session's stay on its model nor a
/// cascade's escalation, which the check's verdict on an answer chose. Those are logged
/// with propensity 1, and off-policy estimates leave them out.
pub fn gave_every_model_a_chance(reason: &str, parent_decision_id: &str) -> bool {
    reason != SESSION_STAY && parent_decision_id.is_empty()
}

/// The column of caller feature `i`: `f_0`, `f_1`, ...
pub fn feature_name(i: usize) -> String {
    format!("f_{i}")
}

/// What wrote a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogEvent {
    /// A decision was made.
    Decision,
    /// Its call returned: cost, latency, tokens, error.
    Outcome,
    /// Its quality arrived.
    Feedback,
    /// Its answer was served again from the proxy's cache: no call, nothing learned.
    CacheHit,
    /// The route's canary (the record's `policy`) was promoted: it serves the larger share.
    Promotion,
    /// The route's canary was rolled back: it serves nothing.
    Rollback,
    /// The route's canary started (again) serving its share.
    CanaryStart,
    /// An operator blocked the canary's gate: no change of stage but by an operator.
    GateBlocked,
    /// An operator unblocked the canary's gate.
    GateUnblocked,
}

/// What a record of an event changes in its decision's row, when the records of a log are
/// merged into one row per decision (in log order; the latest value wins; an outcome or
/// feedback record for a decision the log does not hold is an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Starts the decision's row: arm, propensity, prompt, features, context.
    Starts,
    /// Sets the row's cost, latency and error, and its quality when the record has one.
    Outcome,
    /// Sets the row's quality.
    Quality,
    /// Changes nothing a policy learns from.
    Nothing,
}

impl LogEvent {
    /// The event named `name` in a log's `event` column; an empty name (a logged dataset
    /// from elsewhere, one row per decision) is a decision.
    pub fn from_name(name: &str) -> Option<LogEvent> {
        Some(match name {
            "decision" | "" => LogEvent::Decision,
            "outcome" => LogEvent::Outcome,
            "feedback" => LogEvent::Feedback,
            "cache_hit" => LogEvent::CacheHit,
            "promotion" => LogEvent::Promotion,
            "rollback" => LogEvent::Rollback,
            "canary_start" => LogEvent::CanaryStart,
            "gate_blocked" => LogEvent::GateBlocked,
            "gate_unblocked" => LogEvent::GateUnblocked,
            _ => return None,
        })
    }

    /// The event's name in a log's `event` column.
    pub fn name(self) -> &'static str {
        match self {
            LogEvent::Decision => "decision",
            LogEvent::Outcome => "outcome",
            LogEvent::Feedback => "feedback",
            LogEvent::CacheHit => "cache_hit",
            LogEvent::Promotion => "promotion",
            LogEvent::Rollback => "rollback",
            LogEvent::CanaryStart => "canary_start",
            LogEvent::GateBlocked => "gate_blocked",
            LogEvent::GateUnblocked => "gate_unblocked",
        }
    }

    /// What a record of this event changes in its decision's merged row.
    pub fn merge(self) -> Merge {
        match self {
            LogEvent::Decision => Merge::Starts,
            LogEvent::Outcome => Merge::Outcome,
            LogEvent::Feedback => Merge::Quality,
            LogEvent::CacheHit
            | LogEvent::Promotion
            | LogEvent::Rollback
            | LogEvent::CanaryStart
            | LogEvent::GateBlocked
            | LogEvent::GateUnblocked => Merge::Nothing,
        }
    }
}

/// One row of the decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The record format's version, [`SCHEMA_VERSION`] when written.
    #[serde(default = "first_schema")]
    pub schema: u32,
    /// `<route>:<id>`.
    pub decision_id: String,
    /// When the record was written, RFC 3339 UTC.
    pub timestamp: String,
    /// Route name.
    pub route: String,
    /// The route's policy spec; on a decision its route's canary served (from version
    /// 4), the canary's, so that the log alone tells which decisions it served.
    pub policy: String,
    /// The chosen arm.
    pub arm: String,
    /// Its propensity.
    pub propensity: f64,
    /// Quality, once known.
    pub quality: Option<f64>,
    /// Cost so far, USD.
    pub cost_usd: f64,
    /// Latency, ms.
    pub latency_ms: f64,
    /// The call failed.
    pub error: bool,
    /// The prompt the decision featurized.
    pub prompt: String,
    /// Prompt tokens (estimated at decision time, billed after the outcome).
    pub input_tokens: u32,
    /// Completion tokens billed.
    pub output_tokens: u32,
    /// What wrote this record.
    pub event: LogEvent,
    /// Position in the log, from 1.
    pub seq: u64,
    /// On decisions: the definition of the context the decision was made in (see
    /// `quiver_bandit::Featurizer::definition`), so that a replay of the log can tell
    /// whether it rebuilds the same contexts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// On decisions of a route with an embedding block: which featurizer decided,
    /// `embedding`, or `hashing` when the prompt's embedding was not to be had (the
    /// endpoint timed out or failed) and the block was zeros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub featurizer: Option<String>,
    /// With `featurizer = "embedding"`: the prompt's projected embedding, the context's
    /// block, so that the log rebuilds the context without embedding again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f64>>,
    /// On decisions: the models left out because they could not take a call (an open
    /// circuit breaker, a provider's cooldown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
    /// On decisions that some of the route's models could not serve (the request's
    /// `constraints`: models, tags, `max_cost_usd` against a model's expected cost; a
    /// prompt longer than a model's context window): the models that could, so that the
    /// decision can be made again from the log alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admitted: Vec<String>,
    /// On decisions whose request brought its own trade-off: its `w_cost`, and
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w_cost: Option<f64>,
    /// its `w_latency` (one left out was the route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w_latency: Option<f64>,
    /// On decisions and outcomes, when the endpoint takes tokens: who asked, as a digest
    /// of the bearer token (never the token), so that spend counts per caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// On a child decision (a fallback, or a cascade's escalation): the decision whose call
    /// failed, or whose answer the cascade's check failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_decision_id: Option<String>,
    /// On decisions of a session: its key (a digest of the caller and the session's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Why: on a canary's events, why its stage changed (the gate's figures, or an
    /// operator); on decisions of a session, the session rule's verdict (`session: stay`
    /// when the decision kept the session's model, with certainty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The caller's own features, as `f_0`, `f_1`, ...
    #[serde(flatten)]
    pub features: BTreeMap<String, f64>,
}

impl LogRecord {
    /// A record of `event` for `decision_id`, stamped now, with every observed field empty
    /// (no arm, propensity 1, no quality, zero cost, latency and tokens, no features); the
    /// writer fills in what the event knows, and [`DecisionLog::stage`] its `seq`.
    pub fn new(decision_id: &str, route: &str, policy: &str, event: LogEvent) -> Self {
        LogRecord {
            schema: SCHEMA_VERSION,
            decision_id: decision_id.to_string(),
            timestamp: now_rfc3339(),
            route: route.to_string(),
            policy: policy.to_string(),
            arm: String::new(),
            propensity: 1.0,
            quality: None,
            cost_usd: 0.0,
            latency_ms: 0.0,
            error: false,
            prompt: String::new(),
            input_tokens: 0,
            output_tokens: 0,
            event,
            seq: 0,
            context: None,
            featurizer: None,
            embedding: None,
            unavailable: Vec::new(),
            admitted: Vec::new(),
            w_cost: None,
            w_latency: None,
            caller: None,
            parent_decision_id: None,
            session: None,
            reason: None,
            features: BTreeMap::new(),
        }
    }
}

/// Default segment size before rotation.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// The writer of a log directory (see the module docs for the group commit).
pub struct DecisionLog {
    dir: PathBuf,
    /// Held while the log is open.
    _lock: WriterLock,
    state: Mutex<CommitState>,
    /// Signalled when a commit ends, for threads.
    committed: Condvar,
    /// Counts ended commits, for async tasks.
    commit_ended: tokio::sync::watch::Sender<u64>,
    /// The open segment; only the commit under way touches it.
    segment: Mutex<Segment>,
    /// The last segment and the bytes cut off it on opening, if a crash left any.
    cut: Option<(PathBuf, usize)>,
}

/// Staged bytes taken for one commit.
struct Batch {
    bytes: Vec<u8>,
    first: u64,
    last: u64,
}

/// What is staged and what is durable.
struct CommitState {
    /// Serialized records not yet written, in sequence order.
    staged: Vec<u8>,
    /// Sequence number of the first staged record.
    staged_first: u64,
    /// Last sequence number given out.
    last_staged: u64,
    /// Last sequence number written and fsynced.
    durable: u64,
    /// A waiter is writing a batch.
    committing: bool,
    /// Batches written and fsynced.
    commits: u64,
    /// Why the log failed, once it has.
    failed: Option<String>,
}

struct Segment {
    file: File,
    /// Bytes of records written.
    len: u64,
    /// Size of the file, records plus preallocated space.
    allocated: u64,
    max_bytes: u64,
}

impl Segment {
    /// Makes room for `bytes` more past the records: at least up to the size limit.
    /// Best effort: where the file system cannot preallocate, the write extends the file.
    fn reserve(&mut self, bytes: u64) {
        let needed = self.len + bytes;
        if needed > self.allocated {
            let size = needed.max(self.max_bytes);
            if preallocate(&self.file, size).is_ok() {
                self.allocated = size;
            }
        }
    }

    /// Cuts the preallocated space off, leaving the records only.
    fn trim(&mut self) -> io::Result<()> {
        if self.allocated > self.len {
            self.file.set_len(self.len)?;
            self.allocated = self.len;
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let size = libc::off_t::try_from(size).map_err(io::Error::other)?;
    // SAFETY: the descriptor is open for as long as `file` lives; the call reads no memory.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size) } {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(not(target_os = "linux"))]
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    file.set_len(size)
}

/// The smallest unit a disk writes whole (a sector; the kernel writes pages of several):
/// after a crash, the part of a write that never reached the disk reads as NUL bytes from
/// one multiple of it to another.
const SECTOR_BYTES: usize = 512;

/// The complete records of a segment's bytes, or, when NUL bytes stand amid them, the line
/// where they begin. The data ends at the first NUL, where preallocated space begins, when
/// only NULs follow; in the last segment also where whole sectors of NULs begin that
/// records follow, the sectors a crash left unwritten (whatever followed them was never
/// `fsync`ed, so never acknowledged). Any other NUL is damage, which no reader skips. In the last
/// segment (the one a crash can leave torn) the data ends after the last newline, so a
/// final record cut at any byte, inside a multi-byte UTF-8 character included, is dropped
/// as the torn write it is.
pub fn complete_records(bytes: &[u8], last_segment: bool) -> Result<&[u8], String> {
    let data = match bytes.iter().position(|&b| b == 0) {
        None => bytes,
        Some(hole) => match bytes[hole..].iter().position(|&b| b != 0) {
            None => &bytes[..hole],
            Some(len) if last_segment && hole % SECTOR_BYTES == 0 && len % SECTOR_BYTES == 0 => {
                &bytes[..hole]
            }
            Some(_) => {
                let line = bytes[..hole].iter().filter(|&&b| b == b'\n').count() + 1;
                return Err(format!(
                    "line {line}: NUL bytes amid the records (at byte {hole}); the segment is damaged"
                ));
            }
        },
    };
    if !last_segment {
        return Ok(data);
    }
    let end = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    Ok(&data[..end])
}

/// The length of the complete records of `bytes`, the segment at `path` (see
/// [`complete_records`]); damage is an error that names the file and line.
fn complete_len(path: &Path, bytes: &[u8], last_segment: bool) -> io::Result<usize> {
    complete_records(bytes, last_segment)
        .map(<[u8]>::len)
        .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display())))
}

/// The last segment of the log in `dir` and how many bytes follow its last complete
/// record, when any do: a write a crash cut short, never acknowledged (its fsync never
/// returned), which [`DecisionLog::open`] cuts off and readers leave out. Preallocated
/// space is not counted.
pub fn torn_tail(dir: &Path) -> io::Result<Option<(PathBuf, usize)>> {
    let Some(path) = segments(dir)?.pop() else {
        return Ok(None);
    };
    let (_, torn) = split_torn(&path, &std::fs::read(&path)?)?;
    Ok((torn > 0).then_some((path, torn)))
}

/// Of `bytes`, the last segment at `path`: the length of its complete records, and how
/// many bytes after them a crash cut short (see [`torn_tail`]).
fn split_torn(path: &Path, bytes: &[u8]) -> io::Result<(usize, usize)> {
    let keep = complete_len(path, bytes, true)?;
    let torn = bytes[keep..]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    Ok((keep, torn))
}

/// Whether `path` names a log segment (`decisions-<first seq>.jsonl`).
pub fn is_segment(path: &Path) -> bool {
    first_seq_of(path).is_some()
}

/// The complete records of the segment at `path` (see [`complete_records`]); the last
/// segment of its directory may end torn.
pub fn read_segment(path: &Path) -> io::Result<Vec<u8>> {
    let last = match path.parent() {
        Some(dir) => segments(dir)?
            .last()
            .is_none_or(|newest| newest.file_name() == path.file_name()),
        None => true,
    };
    let mut bytes = std::fs::read(path)?;
    bytes.truncate(complete_len(path, &bytes, last)?);
    Ok(bytes)
}

fn segment_name(first_seq: u64) -> String {
    format!("decisions-{first_seq:020}.jsonl")
}

/// Why a record of format version `version` cannot be read by this build, if it cannot.
pub fn unreadable_version(version: u32) -> Option<String> {
    (version > SCHEMA_VERSION)
        .then(|| format!("record format version {version}; this build reads up to {SCHEMA_VERSION}"))
}

/// The format version of a record's line, when the line says one.
fn version_of(line: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    struct Versioned {
        schema: u32,
    }
    serde_json::from_slice::<Versioned>(line).ok().map(|v| v.schema)
}

/// `read` of the file that holds a segment listed as `path` now: its Parquet form if it
/// was compacted since it was listed, also between looking and reading ([`compact`]
/// removes the JSON lines only after the Parquet file is in place). `read` is given the
/// file it reads.
pub fn read_current<T, E>(path: &Path, mut read: impl FnMut(&Path) -> Result<T, E>) -> Result<T, E> {
    let compacted = path.with_extension("parquet");
    let gone = || is_segment(path) && !path.exists() && compacted.exists();
    if gone() {
        return read(&compacted);
    }
    match read(path) {
        Err(_) if gone() => read(&compacted),
        result => result,
    }
}

/// The segments of the log in `dir` in order, JSON lines and compacted ([`compact`]) alike;
/// of a segment found in both forms (a compaction under way), the compacted one, unless it
/// does not end as a Parquet file does (a copy cut short).
pub fn segment_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut by_first: BTreeMap<u64, PathBuf> = segments(dir)?
        .into_iter()
        .filter_map(|p| Some((first_seq_of(&p)?, p)))
        .collect();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(first) = compact::parquet_first_seq(&path) {
            // A Parquet form cut short is no form of the JSON lines beside it.
            if by_first.contains_key(&first) && !compact::ends_whole(&path) {
                continue;
            }
            by_first.insert(first, path);
        }
    }
    Ok(by_first.into_values().collect())
}

/// The first sequence number of a segment of either form, by its name.
fn segment_first_seq(path: &Path) -> Option<u64> {
    first_seq_of(path).or_else(|| compact::parquet_first_seq(path))
}

fn segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("decisions-") && n.ends_with(".jsonl"))
        })
        .filter(|p| is_segment(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Every complete record in `dir`, in log order. A final line without its newline is torn
/// (never acknowledged) and skipped, as [`DecisionLog::open`] cuts it; a bad line anywhere
/// else is an error naming the file and line.
pub fn read_log(dir: &Path) -> io::Result<Vec<LogRecord>> {
    records_after(dir, 0)?.collect()
}

fn first_seq_of(segment: &Path) -> Option<u64> {
    segment
        .file_name()?
        .to_str()?
        .strip_prefix("decisions-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// The records of `dir` with a sequence number above `after` (what a snapshot taken at
/// `after` does not hold), read as [`read_log`] does but one segment at a time. Segments
/// are named by their first sequence number, so those wholly at or below `after` are not
/// read at all.
pub fn records_after(dir: &Path, after: u64) -> io::Result<LogRecords> {
    let mut files = segment_files(dir)?;
    let before = files
        .get(1..)
        .unwrap_or_default()
        .iter()
        .take_while(|next| segment_first_seq(next).is_some_and(|first| first <= after + 1))
        .count();
    files.drain(..before);
    Ok(LogRecords {
        after,
        files: files.into_iter(),
        segment: None,
        compacted: Vec::new().into_iter(),
    })
}

/// The records of a log directory in order; see [`records_after`].
pub struct LogRecords {
    after: u64,
    files: std::vec::IntoIter<PathBuf>,
    segment: Option<SegmentText>,
    /// The records of the compacted segment being read.
    compacted: std::vec::IntoIter<LogRecord>,
}

/// The complete records of one segment, and how far they have been read.
struct SegmentText {
    path: PathBuf,
    bytes: Vec<u8>,
    pos: usize,
    line: usize,
}

impl SegmentText {
    /// Reads `path`; in the last segment, a final line without its newline is torn.
    fn read(path: PathBuf, last: bool) -> io::Result<Self> {
        let mut bytes = std::fs::read(&path)?;
        bytes.truncate(complete_len(&path, &bytes, last)?);
        Ok(SegmentText {
            path,
            bytes,
            pos: 0,
            line: 0,
        })
    }

    /// The next record; an error names the file and line.
    fn next_record(&mut self) -> Option<io::Result<LogRecord>> {
        loop {
            let line = self.next_line()?;
            if line.trim_ascii().is_empty() {
                continue;
            }
            let parsed = serde_json::from_slice::<LogRecord>(line)
                // A newer record need not parse as this build's: its version says why.
                .map_err(|e| {
                    version_of(line)
                        .and_then(unreadable_version)
                        .unwrap_or_else(|| e.to_string())
                })
                .and_then(|record| match unreadable_version(record.schema) {
                    Some(why) => Err(why),
                    None => Ok(record),
                });
            return Some(parsed.map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: line {}: {e}", self.path.display(), self.line),
                )
            }));
        }
    }

    /// Every record.
    fn records(mut self) -> io::Result<Vec<LogRecord>> {
        let mut out = Vec::new();
        while let Some(record) = self.next_record() {
            out.push(record?);
        }
        Ok(out)
    }

    fn next_line(&mut self) -> Option<&[u8]> {
        let start = self.pos;
        if start >= self.bytes.len() {
            return None;
        }
        let end = self.bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.bytes.len(), |i| start + i);
        self.pos = end + 1;
        self.line += 1;
        Some(&self.bytes[start..end])
    }
}

impl Iterator for LogRecords {
    type Item = io::Result<LogRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(record) = self.compacted.find(|r| r.seq > self.after) {
                return Some(Ok(record));
            }
            if let Some(segment) = self.segment.as_mut() {
                while let Some(record) = segment.next_record() {
                    match record {
                        Ok(record) if record.seq > self.after => return Some(Ok(record)),
                        Ok(_) => {}
                        Err(e) => {
                            // Nothing after a bad line is read.
                            self.segment = None;
                            self.files = Vec::new().into_iter();
                            return Some(Err(e));
                        }
                    }
                }
                self.segment = None;
            }
            // A segment compacted since the directory was listed is read as Parquet.
            let listed = self.files.next()?;
            let last = self.files.as_slice().is_empty();
            let read = read_current(&listed, |path| match compact::parquet_first_seq(path) {
                Some(_) => {
                    compact::read_parquet_segment(path).map(|records| self.compacted = records.into_iter())
                }
                None => SegmentText::read(path.to_path_buf(), last).map(|text| self.segment = Some(text)),
            });
            if let Err(e) = read {
                self.files = Vec::new().into_iter();
                return Some(Err(e));
            }
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn failed_error(reason: &str) -> io::Error {
    io::Error::other(format!(
        "the decision log failed earlier ({reason}); nothing more is acknowledged until a restart"
    ))
}

/// The one writer's hold on a log directory: an exclusive advisory lock (`flock`) on its
/// `lock` file, released when dropped or when the process ends, however it ends.
#[derive(Debug)]
pub struct WriterLock {
    dir: PathBuf,
    _file: File,
}

impl WriterLock {
    /// How long a lock held elsewhere is waited for before it is refused: a server that
    /// is ending, or a child process between its fork and its exec (which holds a copy of
    /// every descriptor, the lock's among them), lets go within it.
    pub const WAIT: Duration = Duration::from_secs(1);

    /// Takes `dir` (made if missing) for this process, or names the lock another holds
    /// still after [`Self::WAIT`].
    pub fn acquire(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOCK_FILE);
        match lock_file(&path, Self::WAIT)? {
            Some(file) => Ok(WriterLock {
                dir: dir.to_path_buf(),
                _file: file,
            }),
            None => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another process writes this log directory (it holds {}); give each server \
                     its own log directory",
                    path.display()
                ),
            )),
        }
    }
}

/// An exclusive advisory lock (`flock`) on the file at `path` (made if missing), held
/// while the returned file is open; `None` if another holds it still after `wait`.
fn lock_file(path: &Path, wait: Duration) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let deadline = Instant::now() + wait;
    let mut locked = file.try_lock();
    while matches!(locked, Err(std::fs::TryLockError::WouldBlock)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        locked = file.try_lock();
    }
    match locked {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

const LOCK_FILE: &str = "lock";

impl DecisionLog {
    /// Opens `dir` for appending after the record with sequence `last_seq` (the last
    /// complete record found there), once no other process writes it. A torn tail and
    /// preallocated space are cut off first.
    pub fn open(dir: &Path, last_seq: u64, segment_bytes: u64) -> io::Result<Self> {
        Self::open_locked(WriterLock::acquire(dir)?, last_seq, segment_bytes)
    }

    /// [`DecisionLog::open`] for a caller that took the directory earlier, before reading
    /// what it holds.
    pub fn open_locked(lock: WriterLock, last_seq: u64, segment_bytes: u64) -> io::Result<Self> {
        let dir = lock.dir.as_path();
        let (file, len, cut) = match segments(dir)?.pop() {
            Some(path) => {
                // Keep whole lines only: everything up to the last newline.
                let (keep, torn) = split_torn(&path, &std::fs::read(&path)?)?;
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(keep as u64)?;
                file.sync_all()?;
                (file, keep as u64, (torn > 0).then_some((path, torn)))
            }
            None => {
                let file = open_segment(&dir.join(segment_name(last_seq + 1)))?;
                sync_dir(dir)?;
                (file, 0, None)
            }
        };
        Ok(DecisionLog {
            dir: dir.to_path_buf(),
            _lock: lock,
            state: Mutex::new(CommitState {
                staged: Vec::new(),
                staged_first: last_seq + 1,
                last_staged: last_seq,
                durable: last_seq,
                committing: false,
                commits: 0,
                failed: None,
            }),
            committed: Condvar::new(),
            commit_ended: tokio::sync::watch::Sender::new(0),
            segment: Mutex::new(Segment {
                file,
                len,
                allocated: len,
                max_bytes: segment_bytes,
            }),
            cut,
        })
    }

    /// The last segment and how many bytes of a record cut short opening it cut off (see
    /// [`torn_tail`]), if it cut any.
    pub fn cut_on_open(&self) -> Option<(&Path, usize)> {
        self.cut.as_ref().map(|(path, bytes)| (path.as_path(), *bytes))
    }

    fn segment(&self) -> MutexGuard<'_, Segment> {
        self.segment.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, CommitState> {
        // A panic while holding the lock leaves the state consistent: recover it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives `record` the next sequence number and stages it; returns that number. Callers
    /// stage in the order they apply the changes (under their own lock), which is then the
    /// order of the log. Fails once the log has failed.
    pub fn stage(&self, record: &mut LogRecord) -> io::Result<u64> {
        let mut state = self.state();
        if let Some(reason) = &state.failed {
            return Err(failed_error(reason));
        }
        record.seq = state.last_staged + 1;
        let mark = state.staged.len();
        if let Err(e) = serde_json::to_writer(&mut state.staged, record) {
            state.staged.truncate(mark);
            return Err(e.into());
        }
        state.staged.push(b'\n');
        state.last_staged = record.seq;
        Ok(record.seq)
    }

    /// The last sequence number staged: waiting for it covers every change made so far.
    pub fn last_staged(&self) -> u64 {
        self.state().last_staged
    }

    /// Batches written and fsynced since the log was opened.
    pub fn commits(&self) -> u64 {
        self.state().commits
    }

    /// Whether `seq` is durable (`Some(Ok)`), can never be (`Some(Err)`), or not yet.
    fn settled(state: &CommitState, seq: u64) -> Option<io::Result<()>> {
        if state.durable >= seq {
            Some(Ok(()))
        } else {
            state.failed.as_deref().map(|reason| Err(failed_error(reason)))
        }
    }

    /// Takes what is staged for a commit, unless one is under way.
    fn begin_commit(state: &mut CommitState) -> Option<Batch> {
        if state.committing {
            return None;
        }
        state.committing = true;
        let batch = Batch {
            bytes: std::mem::take(&mut state.staged),
            first: state.staged_first,
            last: state.last_staged,
        };
        state.staged_first = batch.last + 1;
        Some(batch)
    }

    /// Writes and fsyncs a batch taken by [`Self::begin_commit`], then wakes every waiter.
    fn commit(&self, batch: Batch) {
        let written = self.write(&batch.bytes, batch.first);
        let mut state = self.state();
        state.committing = false;
        match written {
            Ok(()) => {
                state.durable = batch.last;
                state.commits += 1;
            }
            Err(e) => state.failed = Some(e.to_string()),
        }
        drop(state);
        self.committed.notify_all();
        self.commit_ended.send_modify(|n| *n += 1);
    }

    /// Returns once the record `seq` and all before it are durable, committing on this
    /// thread if no commit is under way. Fails if the log failed before they were.
    pub fn wait_durable(&self, seq: u64) -> io::Result<()> {
        let mut state = self.state();
        loop {
            if let Some(settled) = Self::settled(&state, seq) {
                return settled;
            }
            match Self::begin_commit(&mut state) {
                Some(batch) => {
                    drop(state);
                    self.commit(batch);
                    state = self.state();
                }
                None => state = self.committed.wait(state).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// [`Self::wait_durable`] for async tasks: a commit runs on a blocking thread, detached
    /// from the waiter (a waiter dropped mid-way cannot leave a commit half done), and the
    /// waiters sleep as tasks, not threads.
    pub async fn durable(self: &Arc<Self>, seq: u64) -> io::Result<()> {
        let mut ended = self.commit_ended.subscribe();
        loop {
            ended.borrow_and_update();
            let batch = {
                let mut state = self.state();
                if let Some(settled) = Self::settled(&state, seq) {
                    return settled;
                }
                Self::begin_commit(&mut state)
            };
            if let Some(batch) = batch {
                let log = Arc::clone(self);
                drop(tokio::task::spawn_blocking(move || log.commit(batch)));
            }
            // Wakes when any commit ends, including one that ended since `borrow_and_update`.
            if ended.changed().await.is_err() {
                return Err(io::Error::other("the decision log was closed"));
            }
        }
    }

    /// Writes and fsyncs one batch whose first record is `first_seq`; on failure, cuts the
    /// segment back to its durable length.
    fn write(&self, batch: &[u8], first_seq: u64) -> io::Result<()> {
        let mut segment = self.segment();
        if batch.is_empty() {
            return Ok(());
        }
        if segment.len >= segment.max_bytes {
            // The old segment's records are durable; its trim need not be.
            segment.trim()?;
            segment.file = open_segment(&self.dir.join(segment_name(first_seq)))?;
            segment.len = 0;
            segment.allocated = 0;
            sync_dir(&self.dir)?;
        }
        segment.reserve(batch.len() as u64);
        let at = segment.len;
        if let Err(e) = segment
            .file
            .write_all_at(batch, at)
            .and_then(|()| segment.file.sync_data())
        {
            segment.allocated = segment.len;
            let _ = segment
                .file
                .set_len(segment.len)
                .and_then(|()| segment.file.sync_all());
            return Err(e);
        }
        segment.len += batch.len() as u64;
        Ok(())
    }
}

impl Drop for DecisionLog {
    /// A clean close leaves the open segment holding its records only.
    fn drop(&mut self) {
        let _ = self.segment().trim();
    }
}

/// A new, empty segment.
fn open_segment(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> LogRecord {
        LogRecord::new(&format!("r:{seq}"), "r", "random", LogEvent::Decision)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("quiver-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// One writer at a time: while a log is open, opening its directory again fails and
    /// names the lock (separate opens conflict within one process too); once it is
    /// closed, the directory opens, also when it closes while the next open waits.
    #[test]
    fn a_log_directory_has_one_writer() {
        let dir = scratch("one-writer");
        let log = DecisionLog::open(&dir, 0, SEGMENT_BYTES).unwrap();
        let second = DecisionLog::open(&dir, 0, SEGMENT_BYTES).err().unwrap();
        assert_eq!(second.kind(), io::ErrorKind::WouldBlock);
        assert!(
            second
                .to_string()
                .contains(&dir.join("lock").display().to_string()),
            "{second}"
        );
        assert!(WriterLock::acquire(&dir).is_err());
        // A lock let go within the wait is taken, as a restart's successor takes it.
        let release = std::thread::spawn(move || {
            std::thread::sleep(WriterLock::WAIT / 4);
            drop(log);
        });
        let lock = WriterLock::acquire(&dir).unwrap();
        release.join().unwrap();
        DecisionLog::open_locked(lock, 0, SEGMENT_BYTES).unwrap();
    }

    /// Every record carries the format's version and the logged shape's columns; a record
    /// of a newer version stops the reading with the file and line; one written before
    /// versions reads as version 1.
    #[test]
    fn records_carry_their_version_and_newer_ones_are_refused() {
        let dir = scratch("schema");
        let log = DecisionLog::open(&dir, 0, SEGMENT_BYTES).unwrap();
        let mut first = record(1);
        first.features.insert(feature_name(0), 0.5);
        let seq = log.stage(&mut first).unwrap();
        log.wait_durable(seq).unwrap();
        drop(log);
        let segment = dir.join(segment_name(1));
        let text = String::from_utf8(read_segment(&segment).unwrap()).unwrap();
        let written: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(written["schema"], SCHEMA_VERSION);
        for column in COLUMNS.iter().copied().chain(["prompt", "f_0"]) {
            assert!(written.get(column).is_some(), "{column} missing from {written}");
        }
        let mut older = written.clone();
        older.as_object_mut().unwrap().remove("schema");
        older["seq"] = 2.into();
        let mut newer = written.clone();
        newer["schema"] = (SCHEMA_VERSION + 1).into();
        newer["seq"] = 3.into();
        // A newer version may add fields and events this build cannot parse: its version,
        // not the parse, is the reason given.
        let mut unparsable = newer.clone();
        unparsable["tenant"] = "acme".into();
        let mut unknown_event = newer.clone();
        unknown_event["event"] = "budget_change".into();
        for newest in [newer, unparsable, unknown_event] {
            std::fs::write(&segment, format!("{}\n{older}\n{newest}\n", text.trim_end())).unwrap();
            let records: Vec<io::Result<LogRecord>> = records_after(&dir, 0).unwrap().collect();
            assert_eq!(records.len(), 3);
            assert_eq!(records[1].as_ref().unwrap().schema, 1);
            let refused = records[2].as_ref().unwrap_err().to_string();
            assert!(
                refused.contains("line 3")
                    && refused.contains(&format!("format version {}", SCHEMA_VERSION + 1)),
                "{refused}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The merge of a log's records into one row per decision, event by event.
    #[test]
    fn each_event_merges_as_documented() {
        let merges: Vec<Option<Merge>> = [
            "decision",
            "",
            "outcome",
            "feedback",
            "cache_hit",
            "promotion",
            "other",
        ]
        .iter()
        .map(|name| LogEvent::from_name(name).map(LogEvent::merge))
        .collect();
        assert_eq!(
            merges,
            [
                Some(Merge::Starts),
                Some(Merge::Starts),
                Some(Merge::Outcome),
                Some(Merge::Quality),
                Some(Merge::Nothing),
                Some(Merge::Nothing),
                None
            ]
        );
        // The names are the serialized events'.
        for event in [
            LogEvent::Decision,
            LogEvent::Outcome,
            LogEvent::Feedback,
            LogEvent::CacheHit,
            LogEvent::Promotion,
            LogEvent::Rollback,
            LogEvent::CanaryStart,
            LogEvent::GateBlocked,
            LogEvent::GateUnblocked,
        ] {
            let name = serde_json::to_value(event).unwrap();
            assert_eq!(name.as_str(), Some(event.name()));
            assert_eq!(LogEvent::from_name(event.name()), Some(event));
        }
    }

    /// Tasks waiting on records staged together share one commit; a waiter dropped after
    /// starting a commit does not stop it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_waiters_share_a_commit_and_a_dropped_waiter_cannot_stall_it() {
        let dir = scratch("async");
        let log = Arc::new(DecisionLog::open(&dir, 0, SEGMENT_BYTES).unwrap());
        let seqs: Vec<u64> = (1..=50).map(|i| log.stage(&mut record(i)).unwrap()).collect();
        let waiters: Vec<_> = seqs
            .iter()
            .map(|&seq| {
                let log = Arc::clone(&log);
                tokio::spawn(async move { log.durable(seq).await })
            })
            .collect();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert_eq!(log.commits(), 1);
        assert_eq!(read_log(&dir).unwrap().len(), 50);
        let seq = log.stage(&mut record(51)).unwrap();
        // Polled once, it starts the commit; then it is dropped.
        assert!(futures_util::FutureExt::now_or_never(log.durable(seq)).is_none());
        // A stalled commit fails here rather than hanging the run.
        let durable = tokio::time::timeout(Duration::from_secs(10), log.durable(seq)).await;
        durable
            .expect("the commit the dropped waiter started was stalled")
            .unwrap();
        assert_eq!(log.commits(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A write that fails (here: the next segment is `/dev/full`, so the write after the
    /// rotation gets ENOSPC) fails the log for good: what was durable stays so, the failed
    /// record is never reported durable, and nothing more can be staged.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_write_fails_the_log_for_good() {
        let dir = scratch("full");
        // One byte per segment: the second record rotates into the full device.
        let log = DecisionLog::open(&dir, 0, 1).unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.join(segment_name(2))).unwrap();
        let first = log.stage(&mut record(1)).unwrap();
        log.wait_durable(first).unwrap();
        let second = log.stage(&mut record(2)).unwrap();
        assert!(log.wait_durable(second).is_err());
        assert!(log.wait_durable(second).is_err(), "a retry is refused too");
        log.wait_durable(first).unwrap();
        assert!(log.stage(&mut record(3)).is_err());
        assert_eq!(log.commits(), 1);
        // (Reading /dev/full never ends: read the log without it.)
        std::fs::remove_file(dir.join(segment_name(2))).unwrap();
        let seqs: Vec<u64> = read_log(&dir).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Reading after a position skips the segments wholly before it, so a bad line there
    /// does not stop it; reading from the start names that line.
    #[test]
    fn reading_after_a_position_skips_the_segments_before_it() {
        let dir = scratch("after");
        let log = DecisionLog::open(&dir, 0, 600).unwrap();
        for i in 1..=40 {
            // One commit each: a segment rotates between commits.
            log.wait_durable(log.stage(&mut record(i)).unwrap()).unwrap();
        }
        drop(log);
        let files = segments(&dir).unwrap();
        assert!(files.len() > 4, "the log should have rotated");
        let second_first = first_seq_of(&files[1]).unwrap();
        for after in [0, 1, second_first - 1, second_first, 39, 40] {
            let seqs: Vec<u64> = records_after(&dir, after)
                .unwrap()
                .map(|r| r.unwrap().seq)
                .collect();
            assert_eq!(seqs, (after + 1..=40).collect::<Vec<_>>(), "after {after}");
        }
        let mut text = std::fs::read_to_string(&files[0]).unwrap();
        text.insert_str(0, "not json\n");
        std::fs::write(&files[0], text).unwrap();
        let error = read_log(&dir).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("{}: line 1: ", files[0].display())),
            "{error}"
        );
        assert_eq!(
            records_after(&dir, second_first - 1).unwrap().count(),
            (41 - second_first) as usize
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A record with every field set, or left empty, by `seq`.
    fn varied_record(seq: u64) -> LogRecord {
        let events = [
            LogEvent::Decision,
            LogEvent::Outcome,
            LogEvent::Feedback,
            LogEvent::CacheHit,
            LogEvent::Promotion,
        ];
        let mut r = LogRecord::new(
            &format!("chat:{}", seq / 3),
            "chat",
            "linucb",
            events[seq as usize % 5],
        );
        r.arm = ["big", "small", ""][seq as usize % 3].into();
        r.propensity = 1.0 / (1 + seq % 5) as f64;
        r.quality = seq.is_multiple_of(2).then_some(seq as f64 / 100.0);
        r.cost_usd = seq as f64 * 1e-6;
        r.latency_ms = 100.0 + seq as f64;
        r.error = seq.is_multiple_of(7);
        r.prompt = format!("prompt \u{e9} {seq}\nline");
        r.input_tokens = seq as u32;
        r.output_tokens = 2 * seq as u32;
        if seq.is_multiple_of(3) {
            r.context = Some("hashing(d=64)".into());
            r.featurizer = Some("embedding".into());
            r.embedding = Some(vec![0.5, -1.25, seq as f64]);
            r.unavailable = vec!["big".into()];
            r.caller = Some("00ff".into());
        }
        if seq % 5 == 4 {
            r.reason = Some(format!("gate {seq}"));
        }
        if seq.is_multiple_of(5) {
            r.session = Some(format!("{seq:016x}"));
        }
        if seq % 7 == 3 {
            r.parent_decision_id = Some(format!("chat:{}", seq / 3 - 1));
        }
        if seq % 4 == 2 {
            r.admitted = vec!["big".into(), format!("small-{seq}")];
            r.w_latency = Some(seq as f64 / 8.0);
        }
        if seq % 6 == 1 {
            r.w_cost = Some(0.0);
        }
        if seq % 4 != 1 {
            r.features.insert(feature_name(0), seq as f64);
        }
        if seq.is_multiple_of(5) {
            r.features.insert(feature_name(1), -(seq as f64));
        }
        r
    }

    /// Compaction rewrites every closed segment as Parquet and keeps the newest as JSON
    /// lines: the log then reads to the same records, field for field, from any
    /// position, and the writer appends after it; a segment found in both forms (a
    /// compaction cut short) is read once.
    #[test]
    fn a_compacted_log_reads_to_the_same_records() {
        let dir = scratch("compact");
        let log = DecisionLog::open(&dir, 0, 4000).unwrap();
        for i in 1..=60 {
            log.wait_durable(log.stage(&mut varied_record(i)).unwrap())
                .unwrap();
        }
        drop(log);
        let before = read_log(&dir).unwrap();
        let jsonl = segments(&dir).unwrap();
        assert!(jsonl.len() > 3, "the log should have rotated");
        let before_bytes: Vec<Vec<u8>> = jsonl.iter().map(|p| std::fs::read(p).unwrap()).collect();
        // A reader that listed the segments before the compaction reads them after it.
        let listed = records_after(&dir, 0).unwrap();
        let done = compact(&dir).unwrap();
        assert_eq!(listed.collect::<io::Result<Vec<_>>>().unwrap(), before);
        assert_eq!(done.segments, jsonl.len() - 1);
        assert!(done.parquet_bytes > 0 && done.records > 0);
        let files = segment_files(&dir).unwrap();
        assert_eq!(files.len(), jsonl.len());
        assert!(files[..files.len() - 1]
            .iter()
            .all(|p| p.extension().unwrap() == "parquet"));
        assert_eq!(files.last(), jsonl.last());
        assert_eq!(read_log(&dir).unwrap(), before);
        let second_first = segment_first_seq(&files[1]).unwrap();
        for after in [0, second_first - 1, second_first, 59] {
            let seqs: Vec<u64> = records_after(&dir, after)
                .unwrap()
                .map(|r| r.unwrap().seq)
                .collect();
            assert_eq!(seqs, (after + 1..=60).collect::<Vec<_>>(), "after {after}");
        }
        // Nothing is left to compact but the open segment.
        assert_eq!(compact(&dir).unwrap(), Compaction::default());
        // A compaction cut short after the rename: both forms of the first segment, read
        // once; the next compaction removes the JSON lines once they are the Parquet
        // form's records, and refuses, naming both, while they are not.
        let parquet = jsonl[0].with_extension("parquet");
        let (original, compacted) = (before_bytes[0].clone(), std::fs::read(&parquet).unwrap());
        std::fs::write(&jsonl[0], "not even json\n").unwrap();
        assert_eq!(read_log(&dir).unwrap(), before);
        let refused = compact(&dir).unwrap_err().to_string();
        assert!(
            refused.starts_with(&format!("{}: line 1: ", jsonl[0].display())),
            "{refused}"
        );
        let first_line = original.iter().position(|&b| b == b'\n').unwrap() + 1;
        std::fs::write(&jsonl[0], &original[..first_line]).unwrap();
        let refused = compact(&dir).unwrap_err().to_string();
        assert!(
            refused.contains(&format!(
                "{}: its records differ from those of {}",
                jsonl[0].display(),
                parquet.display()
            )),
            "{refused}"
        );
        std::fs::write(&jsonl[0], &original).unwrap();
        assert_eq!(compact(&dir).unwrap(), Compaction::default());
        assert!(!jsonl[0].exists());
        // A Parquet form that cannot be read (a copy cut short) is no reason to lose the
        // JSON lines: it is removed and the segment compacted again.
        std::fs::write(&jsonl[0], &original).unwrap();
        std::fs::write(&parquet, &compacted[..100]).unwrap();
        assert_eq!(
            read_log(&dir).unwrap(),
            before,
            "read from the JSON lines meanwhile"
        );
        assert_eq!(compact(&dir).unwrap().segments, 1);
        assert!(!jsonl[0].exists());
        assert_eq!(read_log(&dir).unwrap(), before);
        // A reader that finds the JSON lines gone between looking and reading reads the
        // Parquet form.
        std::fs::write(&jsonl[0], &original).unwrap();
        let read = read_current(&jsonl[0], |path| {
            if path == jsonl[0] {
                std::fs::remove_file(path)?;
            }
            std::fs::read(path)
        });
        assert_eq!(read.unwrap(), std::fs::read(&parquet).unwrap());
        // One compaction at a time.
        let held = compact::compaction_lock(&dir).unwrap();
        let busy = compact(&dir).unwrap_err();
        assert_eq!(busy.kind(), io::ErrorKind::WouldBlock);
        assert!(
            busy.to_string()
                .contains("another compaction of this log is under way"),
            "{busy}"
        );
        drop(held);
        // The writer appends after the compacted log.
        let log = DecisionLog::open(&dir, 60, 4000).unwrap();
        log.wait_durable(log.stage(&mut varied_record(61)).unwrap())
            .unwrap();
        drop(log);
        let after: Vec<LogRecord> = read_log(&dir).unwrap();
        assert_eq!(after.len(), 61);
        assert_eq!(after[..60], before[..]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A complete record without its newline was never acknowledged: reading skips it and
    /// reopening cuts it, so both agree on what the log holds.
    #[test]
    fn a_last_line_without_newline_is_torn_for_readers_and_writers_alike() {
        let dir = scratch("torn");
        let log = DecisionLog::open(&dir, 0, SEGMENT_BYTES).unwrap();
        // Two staged records, one commit.
        log.stage(&mut record(1)).unwrap();
        let second = log.stage(&mut record(2)).unwrap();
        log.wait_durable(second).unwrap();
        assert_eq!(log.commits(), 1);
        log.wait_durable(2).unwrap();
        assert_eq!(log.commits(), 1);
        drop(log);
        let path = segments(&dir).unwrap().pop().unwrap();
        assert_eq!(torn_tail(&dir).unwrap(), None);
        let mut text = std::fs::read_to_string(&path).unwrap();
        let mut torn = record(3);
        torn.seq = 3;
        let torn = serde_json::to_string(&torn).unwrap();
        text.push_str(&torn);
        std::fs::write(&path, text).unwrap();
        assert_eq!(read_log(&dir).unwrap().len(), 2);
        assert_eq!(torn_tail(&dir).unwrap(), Some((path.clone(), torn.len())));
        let log = DecisionLog::open(&dir, 2, SEGMENT_BYTES).unwrap();
        assert_eq!(log.cut_on_open(), Some((path.as_path(), torn.len())));
        assert_eq!(read_log(&dir).unwrap().len(), 2);
        assert_eq!(torn_tail(&dir).unwrap(), None, "cut off");
        let third = log.stage(&mut record(3)).unwrap();
        log.wait_durable(third).unwrap();
        let seqs: Vec<u64> = read_log(&dir).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A crash can cut the last record at any byte. For every byte offset inside the last
    /// record (whose prompt is multi-byte UTF-8, so most cuts split a character), reading
    /// skips it, reopening cuts it, and a record appended after the reopen reads back.
    #[test]
    fn a_last_record_cut_at_any_byte_is_torn() {
        let dir = scratch("torn-any-byte");
        let log = DecisionLog::open(&dir, 0, SEGMENT_BYTES).unwrap();
        let mut last = record(3);
        last.prompt = "Grüße, 世界! Ω≈ç √ 🦀".into();
        for mut r in [record(1), record(2), last] {
            log.wait_durable(log.stage(&mut r).unwrap()).unwrap();
        }
        drop(log);
        let path = segments(&dir).unwrap().pop().unwrap();
        let whole = std::fs::read(&path).unwrap();
        let start = whole[..whole.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        let mut split_chars = 0;
        for cut in start..whole.len() {
            split_chars += usize::from(std::str::from_utf8(&whole[..cut]).is_err());
            std::fs::write(&path, &whole[..cut]).unwrap();
            let seqs: Vec<u64> = read_log(&dir).unwrap().iter().map(|r| r.seq).collect();
            assert_eq!(seqs, vec![1, 2], "cut at byte {cut}");
            let log = DecisionLog::open(&dir, 2, SEGMENT_BYTES).unwrap();
            let mut again = record(3);
            log.wait_durable(log.stage(&mut again).unwrap()).unwrap();
            drop(log);
            let seqs: Vec<u64> = read_log(&dir).unwrap().iter().map(|r| r.seq).collect();
            assert_eq!(seqs, vec![1, 2, 3], "appended after a cut at byte {cut}");
        }
        assert!(split_chars >= 8, "some cuts split a character: {split_chars}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the records hold (any text, any finite numbers, any caller features)
        /// and wherever a crash cuts the segment, the reader returns exactly the records
        /// that ended before the cut, in order, with their values.
        #[test]
        fn the_reader_returns_exactly_the_records_before_a_cut(
            prompts in proptest::collection::vec(".{0,40}", 1..8),
            costs in proptest::collection::vec(0.0f64..1e3, 8),
            features in proptest::collection::vec(-1e6f64..1e6, 0..4),
            cut_share in 0.0f64..=1.0,
        ) {
            let dir = scratch(&format!("prop-{}", prompts.len() * 1000 + (cut_share * 997.0) as usize));
            let log = DecisionLog::open(&dir, 0, SEGMENT_BYTES).unwrap();
            let mut written = Vec::new();
            for (i, prompt) in prompts.iter().enumerate() {
                let mut r = record(i as u64 + 1);
                r.prompt = prompt.clone();
                r.cost_usd = costs[i];
                r.features = features.iter().enumerate().map(|(j, v)| (feature_name(j), *v)).collect();
                log.wait_durable(log.stage(&mut r).unwrap()).unwrap();
                written.push(r);
            }
            drop(log);
            let path = segments(&dir).unwrap().pop().unwrap();
            let whole = std::fs::read(&path).unwrap();
            let cut = ((whole.len() as f64) * cut_share) as usize;
            std::fs::write(&path, &whole[..cut]).unwrap();
            let complete = whole[..cut].iter().filter(|&&b| b == b'\n').count();
            let read = read_log(&dir).unwrap();
            proptest::prop_assert_eq!(&read[..], &written[..complete]);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// NUL bytes that records follow are damage, in a closed segment and the last alike:
    /// every reader refuses them with the file and line, opening the log cuts nothing,
    /// and compaction leaves the segment as it was.
    #[test]
    fn nul_bytes_amid_the_records_are_refused_with_file_and_line() {
        let dir = scratch("nul-amid");
        let log = DecisionLog::open(&dir, 0, 4000).unwrap();
        for i in 1..=60 {
            log.wait_durable(log.stage(&mut varied_record(i)).unwrap())
                .unwrap();
        }
        drop(log);
        let files = segments(&dir).unwrap();
        assert!(files.len() > 2, "the log should have rotated");
        for (path, last) in [(&files[0], false), (files.last().unwrap(), true)] {
            let whole = std::fs::read(path).unwrap();
            let third_line = whole
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .nth(1)
                .unwrap()
                .0
                + 5;
            let mut damaged = whole.clone();
            damaged[third_line] = 0;
            std::fs::write(path, &damaged).unwrap();
            let named = |e: io::Error| {
                let text = e.to_string();
                assert!(
                    text.contains(&path.display().to_string()) && text.contains("line 3"),
                    "{text}"
                );
            };
            named(read_log(&dir).unwrap_err());
            named(read_segment(path).unwrap_err());
            if last {
                named(DecisionLog::open(&dir, 60, 4000).err().unwrap());
            } else {
                named(compact(&dir).unwrap_err());
                assert!(path.exists());
            }
            assert_eq!(std::fs::read(path).unwrap(), damaged, "nothing is cut");
            std::fs::write(path, &whole).unwrap();
        }
        assert_eq!(read_log(&dir).unwrap().len(), 60);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A crash can leave whole pages (whole sectors) of the last segment unwritten, records
    /// after them: nothing past the first such page was acknowledged, so readers end the
    /// records at it, and reopening cuts it and appends after the records before it.
    #[test]
    fn pages_a_crash_left_unwritten_end_the_last_segment() {
        let dir = scratch("nul-pages");
        let log = DecisionLog::open(&dir, 0, 1 << 20).unwrap();
        let mut written = Vec::new();
        for i in 1..=80 {
            let mut r = varied_record(i);
            log.wait_durable(log.stage(&mut r).unwrap()).unwrap();
            written.push(r);
        }
        drop(log);
        let path = segments(&dir).unwrap().pop().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 8 * SECTOR_BYTES;
        assert!(bytes.len() > 3 * page, "{} bytes", bytes.len());
        bytes[page..2 * page].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let before = bytes[..page].iter().filter(|&&b| b == b'\n').count();
        assert_eq!(read_log(&dir).unwrap(), written[..before]);
        let log = DecisionLog::open(&dir, before as u64, 1 << 20).unwrap();
        let mut next = varied_record(before as u64 + 1);
        log.wait_durable(log.stage(&mut next).unwrap()).unwrap();
        drop(log);
        let read = read_log(&dir).unwrap();
        assert_eq!(read[..before], written[..before]);
        assert_eq!(read.len(), before + 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The open segment holds preallocated space past its records; readers stop at it, a
    /// reopen after a crash (no clean close) cuts it before appending, and a clean close
    /// trims it.
    #[test]
    fn preallocated_space_is_not_data_and_is_cut_on_reopen_and_close() {
        let dir = scratch("prealloc");
        let size = |path: &Path| std::fs::metadata(path).unwrap().len();
        let reserve = 1 << 20;
        let log = DecisionLog::open(&dir, 0, reserve).unwrap();
        let last = (1..=3).map(|i| log.stage(&mut record(i)).unwrap()).last();
        log.wait_durable(last.unwrap()).unwrap();
        let path = segments(&dir).unwrap().pop().unwrap();
        assert_eq!(size(&path), reserve);
        assert_eq!(read_log(&dir).unwrap().len(), 3);
        // A crash: the segment keeps its preallocated space (no trim on drop), and the
        // lock goes with the process.
        {
            let mut segment = log.segment();
            segment.allocated = segment.len;
        }
        drop(log);
        let log = DecisionLog::open(&dir, 3, reserve).unwrap();
        let records = std::fs::read_to_string(&path).unwrap();
        assert!(!records.contains('\0'));
        let fourth = log.stage(&mut record(4)).unwrap();
        log.wait_durable(fourth).unwrap();
        let seqs: Vec<u64> = read_log(&dir).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(size(&path), text.len() as u64);
        assert_eq!(text.lines().count(), 4);
        assert!(text.starts_with(&records) && !text.contains('\0'));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
