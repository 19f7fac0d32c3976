//! Feedback and outcomes for decisions another replica made, kept durably in this
//! replica's outbox until the replica that made the decision confirms it applied them
//! (`crate::cluster` carries them).
//!
//! The outbox is a JSON-lines file beside the log, `forwarded.jsonl`: a line per forward
//! accepted and a line per confirmation, each fsynced before it counts. On open it is read
//! back (a torn last line, a crash mid-write, is dropped: that forward was never
//! acknowledged) and rewritten with only the forwards still unconfirmed, as it is again
//! whenever confirmations leave it far longer than that.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use quiver_bandit::{Applied, Outcome};
use serde::{Deserialize, Serialize};

use crate::error::{io_at, Result, ServeError};
use crate::router::{Pending, Router};

const OUTBOX_FILE: &str = "forwarded.jsonl";

/// The outbox's length past which a confirmation rewrites it (and past twice its length
/// when last rewritten).
const COMPACT_BYTES: u64 = 1 << 20;

/// What a client reported about a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    /// `/v1/feedback`.
    Feedback {
        /// In [0, 1].
        quality: f64,
    },
    /// `/v1/outcome`.
    Outcome {
        /// As reported.
        outcome: Outcome,
    },
}

impl Report {
    /// Refuses what the deciding replica would refuse, before it is accepted here.
    pub fn validate(&self) -> Result<()> {
        match self {
            Report::Feedback { quality } => quiver_bandit::outcome::validate_quality(*quality).map(drop)?,
            Report::Outcome { outcome } => outcome.validate()?,
        }
        Ok(())
    }

    /// Applies the report to `decision_id` on `router`, which must have made the decision
    /// (a repeat changes nothing); applied once the log holds it durably.
    pub fn stage(&self, router: &Router, decision_id: &str) -> Result<Pending<Applied>> {
        match self {
            Report::Feedback { quality } => router.feedback(decision_id, *quality),
            Report::Outcome { outcome } => router.record_outcome(decision_id, outcome),
        }
    }
}

/// A report on its way to the replica that made the decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forward {
    /// The replica that accepted it.
    pub from: String,
    /// Its number in that replica's outbox.
    pub seq: u64,
    /// The replica that made the decision.
    pub to: String,
    /// The decision.
    pub decision_id: String,
    /// What was reported.
    pub report: Report,
}

/// A line of the outbox file.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Forward(Forward),
    Confirmed(u64),
    /// The number the next forward takes, written first when the file is rewritten: a
    /// number is never used twice, so that a confirmation of an old forward left in Redis
    /// cannot settle a new one.
    Next(u64),
}

/// The forwards this replica accepted and that are not yet confirmed.
pub struct Outbox {
    path: PathBuf,
    state: Mutex<OutboxState>,
}

struct OutboxState {
    file: File,
    /// The file's length after its last complete line.
    len: u64,
    /// Its length when last rewritten.
    rewritten_len: u64,
    /// Whether a rewrite failed: the handle may be on the file the rename replaced, so
    /// nothing is written until a rewrite succeeds.
    stale: bool,
    next_seq: u64,
    pending: BTreeMap<u64, Forward>,
}

impl Outbox {
    /// Opens the outbox in `dir`, keeping the forwards still unconfirmed.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(OUTBOX_FILE);
        let mut pending = BTreeMap::new();
        let mut next_seq = 0;
        match std::fs::read(&path) {
            Ok(bytes) => {
                // A line without its newline is torn (a crash mid-write) and was never
                // acknowledged; every complete line must read.
                let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                for (number, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
                    if line.trim_ascii().is_empty() {
                        continue;
                    }
                    let line = serde_json::from_slice::<Line>(line).map_err(|e| {
                        io_at(&path)(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("line {}: {e}", number + 1),
                        ))
                    })?;
                    match line {
                        Line::Forward(f) => {
                            next_seq = next_seq.max(f.seq + 1);
                            pending.insert(f.seq, f);
                        }
                        Line::Confirmed(seq) => {
                            pending.remove(&seq);
                        }
                        Line::Next(seq) => next_seq = next_seq.max(seq),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&path)(e)),
        }
        let (file, len) = rewrite(&path, next_seq, &pending)?;
        Ok(Outbox {
            path,
            state: Mutex::new(OutboxState {
                file,
                len,
                rewritten_len: len,
                stale: false,
                next_seq,
                pending,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts `report` on `decision_id` for replica `to`, durably; returns its number.
    pub fn add(&self, from: &str, to: &str, decision_id: &str, report: Report) -> Result<u64> {
        report.validate()?;
        let mut state = self.lock();
        let forward = Forward {
            from: from.to_string(),
            seq: state.next_seq,
            to: to.to_string(),
            decision_id: decision_id.to_string(),
            report,
        };
        self.append(&mut state, &[Line::Forward(forward.clone())])?;
        state.next_seq += 1;
        state.pending.insert(forward.seq, forward);
        Ok(state.next_seq - 1)
    }

    /// Records that the forwards numbered `seqs` were applied; they are not sent again.
    pub fn confirm(&self, seqs: &[u64]) -> Result<()> {
        let mut state = self.lock();
        let lines: Vec<Line> = seqs
            .iter()
            .filter(|s| state.pending.contains_key(s))
            .map(|s| Line::Confirmed(*s))
            .collect();
        self.append(&mut state, &lines)?;
        for seq in seqs {
            state.pending.remove(seq);
        }
        // Rewritten with only what is pending once it has grown well past that, so that a
        // replica that runs for months keeps a small file.
        if state.len > COMPACT_BYTES.max(2 * state.rewritten_len) {
            // The confirmations are durable already; a rewrite that fails is tried again
            // before the next line.
            if let Err(e) = self.compact(&mut state) {
                tracing::warn!("the outbox could not be rewritten: {e}");
            }
        }
        Ok(())
    }

    /// Rewrites the file with what is pending alone.
    fn compact(&self, state: &mut OutboxState) -> Result<()> {
        state.stale = true;
        let (file, len) = rewrite(&self.path, state.next_seq, &state.pending)?;
        (state.file, state.len, state.rewritten_len, state.stale) = (file, len, len, false);
        Ok(())
    }

    /// The forwards not yet confirmed, oldest first.
    pub fn pending(&self) -> Vec<Forward> {
        self.lock().pending.values().cloned().collect()
    }

    fn append(&self, state: &mut OutboxState, lines: &[Line]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        if state.stale {
            self.compact(state)?;
        }
        let mut text = Vec::new();
        for line in lines {
            write_line(&mut text, line);
        }
        let written = state.file.write_all(&text).and_then(|()| state.file.sync_data());
        if let Err(cause) = written {
            // Cut a partial line off, so that the next one starts clean.
            let _ = state.file.set_len(state.len);
            return Err(ServeError::Io {
                path: self.path.clone(),
                cause,
            });
        }
        state.len += text.len() as u64;
        Ok(())
    }
}

/// Writes the outbox at `path` anew, durably, with the next number and the `pending`
/// forwards alone, through a file beside it renamed over it; returns the file opened for
/// appending and its length.
fn rewrite(path: &Path, next_seq: u64, pending: &BTreeMap<u64, Forward>) -> Result<(File, u64)> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut text = Vec::new();
    write_line(&mut text, &Line::Next(next_seq));
    for forward in pending.values() {
        write_line(&mut text, &Line::Forward(forward.clone()));
    }
    let mut file = File::create(&tmp).map_err(io_at(&tmp))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_at(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))?;
    let file = OpenOptions::new().append(true).open(path).map_err(io_at(path))?;
    Ok((file, text.len() as u64))
}

fn write_line(out: &mut Vec<u8>, line: &Line) {
    // A line of plain data: serializing it cannot fail.
    serde_json::to_writer(&mut *out, line).unwrap_or_default();
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("quiver-outbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn feedback(quality: f64) -> Report {
        Report::Feedback { quality }
    }

    #[test]
    fn the_outbox_keeps_what_is_unconfirmed_and_never_reuses_a_number() {
        let dir = scratch("keeps");
        let outbox = Outbox::open(&dir).unwrap();
        for i in 0..3 {
            let seq = outbox.add("b", "a", &format!("r:a:{i}"), feedback(0.5)).unwrap();
            assert_eq!(seq, i);
        }
        assert!(
            outbox.add("b", "a", "r:a:9", feedback(1.5)).is_err(),
            "checked as A would"
        );
        outbox.confirm(&[0, 2]).unwrap();
        drop(outbox);
        // A crash mid-write leaves a torn line: it was never acknowledged.
        let path = dir.join(OUTBOX_FILE);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"forward":{"from":"b","se"#).unwrap();
        drop(file);
        let outbox = Outbox::open(&dir).unwrap();
        let pending: Vec<u64> = outbox.pending().iter().map(|f| f.seq).collect();
        assert_eq!(pending, [1]);
        assert_eq!(outbox.pending()[0].decision_id, "r:a:1");
        // Everything confirmed and the file rewritten empty of forwards: the numbers go on.
        outbox.confirm(&[1]).unwrap();
        drop(outbox);
        let outbox = Outbox::open(&dir).unwrap();
        assert!(outbox.pending().is_empty());
        drop(outbox);
        let outbox = Outbox::open(&dir).unwrap();
        assert_eq!(outbox.add("b", "a", "r:a:5", feedback(0.1)).unwrap(), 3);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Confirmations rewrite a file grown past its bound with what is pending alone, and
    /// what is pending, and the numbers, survive it: 20,000 forwards and their
    /// confirmations write about 3.6 MB, a file never longer than its bound.
    #[test]
    fn a_long_running_outbox_stays_small() {
        let dir = scratch("small");
        let outbox = Outbox::open(&dir).unwrap();
        let path = dir.join(OUTBOX_FILE);
        let mut longest = 0;
        // Every hundredth stays unconfirmed.
        let kept = |seq: &u64| seq.is_multiple_of(100);
        for i in 0..20_000u64 {
            let seq = outbox.add("b", "a", &format!("r:a:{i}"), feedback(0.5)).unwrap();
            if !kept(&seq) {
                outbox.confirm(&[seq]).unwrap();
            }
            longest = longest.max(std::fs::metadata(&path).unwrap().len());
        }
        assert!(longest <= COMPACT_BYTES + 4096, "{longest} bytes");
        let pending = |outbox: &Outbox| outbox.pending().iter().map(|f| f.seq).collect::<Vec<u64>>();
        let unconfirmed: Vec<u64> = (0..20_000u64).filter(kept).collect();
        assert_eq!(pending(&outbox), unconfirmed);
        drop(outbox);
        let outbox = Outbox::open(&dir).unwrap();
        assert_eq!(pending(&outbox), unconfirmed);
        assert_eq!(outbox.add("b", "a", "r:a:x", feedback(0.1)).unwrap(), 20_000);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A rewrite that fails leaves the outbox refusing forwards (none is acknowledged into
    /// a file it may no longer hold) until one succeeds; then nothing is missing.
    #[test]
    fn a_failed_rewrite_refuses_forwards_until_one_succeeds() {
        let dir = scratch("stale");
        let outbox = Outbox::open(&dir).unwrap();
        let big = "r:a:".to_string() + &"x".repeat(4096);
        // Where the rewrite writes first: a directory, so the rewrite fails.
        let blocker = dir.join(OUTBOX_FILE).with_extension("jsonl.tmp");
        std::fs::create_dir(&blocker).unwrap();
        let mut seq = 0;
        while !outbox.lock().stale {
            seq = outbox.add("b", "a", &big, feedback(0.5)).unwrap();
            outbox.confirm(&[seq]).unwrap();
        }
        assert!(outbox.add("b", "a", "r:a:refused", feedback(0.5)).is_err());
        std::fs::remove_dir(&blocker).unwrap();
        assert_eq!(outbox.add("b", "a", "r:a:kept", feedback(0.5)).unwrap(), seq + 1);
        drop(outbox);
        let outbox = Outbox::open(&dir).unwrap();
        let pending: Vec<String> = outbox.pending().into_iter().map(|f| f.decision_id).collect();
        assert_eq!(pending, ["r:a:kept"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A damaged line before the last holds a forward that was acknowledged: opening
    /// refuses, naming the file and line, and leaves the file as it was.
    #[test]
    fn a_damaged_line_amid_the_outbox_is_refused_not_dropped() {
        let dir = scratch("damaged");
        let outbox = Outbox::open(&dir).unwrap();
        for i in 0..3 {
            outbox.add("b", "a", &format!("r:a:{i}"), feedback(0.5)).unwrap();
        }
        drop(outbox);
        let path = dir.join(OUTBOX_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let damaged = text.replacen(r#""seq":1"#, r#""sex":1"#, 1);
        assert_ne!(damaged, text);
        std::fs::write(&path, &damaged).unwrap();
        let refused = Outbox::open(&dir).err().unwrap().to_string();
        assert!(
            refused.contains(&path.display().to_string()) && refused.contains("line 3"),
            "{refused}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), damaged);
        let _ = std::fs::remove_dir_all(dir);
    }
}
