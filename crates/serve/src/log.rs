//! The decision log: append-only JSON-lines segments in the logged shape.
//!
//! Every record is one row of the logged dataset shape (`decision_id, timestamp, route,
//! policy, arm, propensity, quality, cost_usd, latency_ms, error, prompt, f_*`) plus the
//! `event` that wrote it (`decision`, `outcome` or `feedback`) and a log sequence number.
//! A decision is written when it is made; its outcome and its quality follow as rows with
//! the same `decision_id` carrying the new values, so the simulator reads a log directory
//! directly and merges the rows of each decision.
//!
//! Durability: [`DecisionLog::append`] writes a batch and `fsync`s before returning, so a
//! record acknowledged to a client survives a crash. Segments rotate at a size limit and
//! are named by their first sequence number. A crash can leave a torn last line in the
//! last segment; it was never acknowledged and is skipped on reading.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
}

/// One row of the decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// `<route>:<id>`.
    pub decision_id: String,
    /// When the record was written, RFC 3339 UTC.
    pub timestamp: String,
    /// Route name.
    pub route: String,
    /// The route's policy spec.
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
    /// The caller's own features, as `f_0`, `f_1`, ...
    #[serde(flatten)]
    pub features: BTreeMap<String, f64>,
}

impl LogRecord {
    /// A record of `event` for `decision_id`, stamped now, with every observed field empty
    /// (no arm, propensity 1, no quality, zero cost, latency and tokens, no features); the
    /// writer fills in what the event knows.
    pub fn new(decision_id: &str, route: &str, policy: &str, event: LogEvent, seq: u64) -> Self {
        LogRecord {
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
            seq,
            features: BTreeMap::new(),
        }
    }
}

/// Default segment size before rotation.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// The writer of a log directory.
pub struct DecisionLog {
    dir: PathBuf,
    segment: File,
    segment_len: u64,
    segment_bytes: u64,
    last_seq: u64,
}

fn segment_name(first_seq: u64) -> String {
    format!("decisions-{first_seq:020}.jsonl")
}

fn segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("decisions-") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Every complete record in `dir`, in log order. A final line without its newline is torn
/// (never acknowledged) and skipped, as [`DecisionLog::open`] cuts it; a bad line anywhere
/// else is an error naming the file and line.
pub fn read_log(dir: &Path) -> io::Result<Vec<LogRecord>> {
    read_log_after(dir, 0)
}

/// The records of `dir` with a sequence number above `after` (what a snapshot taken at
/// `after` does not hold), read as [`read_log`] does. Segments are named by their first
/// sequence number, so those wholly at or below `after` are not read at all.
pub fn read_log_after(dir: &Path, after: u64) -> io::Result<Vec<LogRecord>> {
    let files = segments(dir)?;
    let first_seq = |path: &PathBuf| -> Option<u64> {
        path.file_name()?
            .to_str()?
            .strip_prefix("decisions-")?
            .strip_suffix(".jsonl")?
            .parse()
            .ok()
    };
    let mut out = Vec::new();
    for (f, path) in files.iter().enumerate() {
        let next_first = files.get(f + 1).and_then(first_seq);
        if next_first.is_some_and(|next| next <= after + 1) {
            continue;
        }
        let text = std::fs::read_to_string(path)?;
        let complete = if f + 1 == files.len() {
            &text[..text.rfind('\n').map_or(0, |i| i + 1)]
        } else {
            text.as_str()
        };
        for (i, line) in complete.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<LogRecord>(line) {
                Ok(record) if record.seq > after => out.push(record),
                Ok(_) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: line {}: {e}", path.display(), i + 1),
                    ))
                }
            }
        }
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl DecisionLog {
    /// Opens `dir` for appending after the record with sequence `last_seq` (the last
    /// complete record found there). A torn tail is cut off first.
    pub fn open(dir: &Path, last_seq: u64, segment_bytes: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (segment, segment_len) = match segments(dir)?.pop() {
            Some(path) => {
                let text = std::fs::read_to_string(&path)?;
                // Keep whole lines only: everything up to the last newline.
                let keep = text.rfind('\n').map_or(0, |i| i + 1) as u64;
                let file = OpenOptions::new().append(true).open(&path)?;
                file.set_len(keep)?;
                file.sync_all()?;
                (file, keep)
            }
            None => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(segment_name(last_seq + 1)))?;
                sync_dir(dir)?;
                (file, 0)
            }
        };
        Ok(DecisionLog {
            dir: dir.to_path_buf(),
            segment,
            segment_len,
            segment_bytes,
            last_seq,
        })
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    /// Writes `records` (their `seq` already set, consecutive from [`Self::next_seq`]) and
    /// fsyncs: when this returns `Ok`, they are durable.
    pub fn append(&mut self, records: &[LogRecord]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        if self.segment_len >= self.segment_bytes {
            self.segment = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(segment_name(records[0].seq)))?;
            self.segment_len = 0;
            sync_dir(&self.dir)?;
        }
        let mut buffer = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buffer, r)?;
            buffer.push(b'\n');
        }
        if let Err(e) = self
            .segment
            .write_all(&buffer)
            .and_then(|()| self.segment.sync_data())
        {
            // Leave no partial or unacknowledged record behind for the next append.
            let _ = self
                .segment
                .set_len(self.segment_len)
                .and_then(|()| self.segment.sync_all());
            return Err(e);
        }
        self.segment_len += buffer.len() as u64;
        self.last_seq = records[records.len() - 1].seq;
        Ok(())
    }
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> LogRecord {
        LogRecord::new(&format!("r:{seq}"), "r", "random", LogEvent::Decision, seq)
    }

    /// A complete record without its newline was never acknowledged: reading skips it and
    /// reopening cuts it, so both agree on what the log holds.
    #[test]
    fn a_last_line_without_newline_is_torn_for_readers_and_writers_alike() {
        let dir = std::env::temp_dir().join(format!("quiver-log-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut log = DecisionLog::open(&dir, 0, SEGMENT_BYTES).unwrap();
        log.append(&[record(1), record(2)]).unwrap();
        let path = segments(&dir).unwrap().pop().unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&serde_json::to_string(&record(3)).unwrap());
        std::fs::write(&path, text).unwrap();
        assert_eq!(read_log(&dir).unwrap().len(), 2);
        let mut log = DecisionLog::open(&dir, 2, SEGMENT_BYTES).unwrap();
        assert_eq!(read_log(&dir).unwrap().len(), 2);
        log.append(&[record(3)]).unwrap();
        let seqs: Vec<u64> = read_log(&dir).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
