//! `quiver ope` on a log larger than memory: decisions per second and peak resident memory,
//! on JSON-lines segments and on the same log compacted to Parquet (`quiver log compact`).
//!
//! Writes a server-shaped log directory of `QUIVER_OPE_LOG_ROWS` records (default 20
//! million under `cargo bench --bench ope_log`, 50,000 under `cargo test --benches`) in
//! 64 MiB JSON-lines segments (4 MiB under test): one record per decision with its outcome
//! and quality (as a log reads once merged), or, with `QUIVER_OPE_LOG_EVENTS` set, each
//! decision's decision, outcome and feedback records as a server writes them. Each decision
//! has a prompt of a few words and two caller features; an epsilon-greedy logger chose
//! among five models. Then it runs the `quiver` binary's `ope` on it, compacts it and runs
//! `ope` again, each time measuring the child's wall time and peak resident set (`wait4`'s
//! `ru_maxrss`); each run must stay under 2 GiB. The log is removed after (kept with
//! `QUIVER_OPE_LOG_KEEP` set).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use quiver_log::{feature_name, LogEvent, LogRecord};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ARMS: [(&str, f64, f64); 5] = [
    ("frontier", 0.82, 0.0050),
    ("large", 0.74, 0.0012),
    ("medium", 0.66, 0.0004),
    ("small", 0.55, 0.0001),
    ("tiny", 0.41, 0.00003),
];
const MAX_RSS_BYTES: u64 = 2 << 30;

/// Log segments of about `segment_bytes` each, written in order.
struct Segments<'a> {
    dir: &'a Path,
    segment_bytes: usize,
    file: Option<BufWriter<std::fs::File>>,
    len: usize,
    seq: u64,
    bytes: u64,
    line: Vec<u8>,
}

impl Segments<'_> {
    fn write(&mut self, record: &mut LogRecord) {
        self.seq += 1;
        record.seq = self.seq;
        if self.file.is_none() || self.len >= self.segment_bytes {
            if let Some(mut done) = self.file.take() {
                done.flush().unwrap();
            }
            let path = self.dir.join(format!("decisions-{:020}.jsonl", self.seq));
            self.file = Some(BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(path).unwrap(),
            ));
            self.len = 0;
        }
        self.line.clear();
        serde_json::to_writer(&mut self.line, &*record).unwrap();
        self.line.push(b'\n');
        self.file.as_mut().unwrap().write_all(&self.line).unwrap();
        self.len += self.line.len();
        self.bytes += self.line.len() as u64;
    }
}

/// Writes a log of `rows` records into `dir` as JSON-lines segments of about
/// `segment_bytes`: one per decision, or (`events`) each decision's three records as a
/// server writes them, the outcome and the quality after the next decisions. Returns the
/// decisions and the bytes.
fn write_log(dir: &Path, rows: usize, segment_bytes: usize, events: bool) -> (usize, u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let topics = [
        "algebra",
        "poetry",
        "sql",
        "history",
        "biology",
        "contracts",
        "rust",
    ];
    let mut out = Segments {
        dir,
        segment_bytes,
        file: None,
        len: 0,
        seq: 0,
        bytes: 0,
        line: Vec::new(),
    };
    let mut later: Vec<LogRecord> = Vec::new();
    let mut decisions = 0;
    while (out.seq as usize) < rows {
        let i = decisions;
        decisions += 1;
        let topic = rng.random_range(0..topics.len());
        let (x0, x1): (f64, f64) = (rng.random(), rng.random());
        // Epsilon-greedy over five models: the "large" one is the logger's favourite.
        let explore = rng.random_bool(0.2);
        let arm = if explore {
            rng.random_range(0..ARMS.len())
        } else {
            1
        };
        let propensity = 0.2 / ARMS.len() as f64 + if arm == 1 { 0.8 } else { 0.0 };
        let (name, accuracy, price) = ARMS[arm];
        let p = (accuracy + 0.1 * (x0 - 0.5) + 0.03 * topic as f64 - 0.09).clamp(0.0, 1.0);
        let id = format!("chat:{i}");
        let mut record = LogRecord::new(&id, "chat", "eps(0.2)", LogEvent::Decision);
        record.timestamp = "2026-11-30T12:00:00Z".into();
        record.arm = name.into();
        record.propensity = propensity;
        let quality = rng
            .random_bool(0.9)
            .then(|| f64::from(u8::from(rng.random_bool(p))));
        let (cost, latency) = (
            price * (0.5 + x1),
            200.0 + 3000.0 * price.sqrt() * rng.random::<f64>(),
        );
        record.prompt = format!(
            "{} question {} about {}",
            topics[topic],
            i % 977,
            topics[(topic + i) % 7]
        );
        record.features.insert(feature_name(0), x0);
        record.features.insert(feature_name(1), x1);
        if events {
            let mut outcome = LogRecord::new(&id, "chat", "eps(0.2)", LogEvent::Outcome);
            (outcome.arm, outcome.cost_usd, outcome.latency_ms) = (name.into(), cost, latency);
            later.push(outcome);
            if let Some(q) = quality {
                let mut feedback = LogRecord::new(&id, "chat", "eps(0.2)", LogEvent::Feedback);
                (feedback.arm, feedback.quality) = (name.into(), Some(q));
                later.push(feedback);
            }
        } else {
            (record.quality, record.cost_usd, record.latency_ms) = (quality, cost, latency);
        }
        out.write(&mut record);
        // The later records of a decision come a few decisions after it.
        if later.len() >= 8 {
            for mut r in later.drain(..) {
                out.write(&mut r);
            }
        }
    }
    for mut r in later {
        out.write(&mut r);
    }
    out.file.unwrap().flush().unwrap();
    (decisions, out.bytes)
}

/// Runs `quiver args`, returning its wall time in seconds and peak resident set in bytes.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also reports its resources
fn measured(args: &[&str]) -> (f64, u64) {
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value, which wait4 then fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, with pointers to the two locals above.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(
        pid,
        child.id() as libc::pid_t,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "quiver {args:?} failed"
    );
    (start.elapsed().as_secs_f64(), usage.ru_maxrss as u64 * 1024)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rows: usize = std::env::var("QUIVER_OPE_LOG_ROWS")
        .ok()
        .map(|v| v.parse().expect("QUIVER_OPE_LOG_ROWS: a number of rows"))
        .unwrap_or(if full { 20_000_000 } else { 50_000 });
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ope_log");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let start = Instant::now();
    let events = std::env::var_os("QUIVER_OPE_LOG_EVENTS").is_some();
    // The server's 64 MiB segments; smaller ones in a test run, so that some are compacted.
    let (decisions, json_bytes) = write_log(&dir, rows, if full { 64 << 20 } else { 4 << 20 }, events);
    println!(
        "ope_log: {rows} records, {decisions} decisions, {:.2} GB of JSON lines written in {:.0} s",
        json_bytes as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    let data = dir.to_str().unwrap();
    let ope = [
        "ope",
        "--data",
        data,
        "--policy",
        "ucb1",
        "--bootstrap",
        "200",
        "--json",
    ];
    let mut runs = Vec::new();
    let (seconds, rss) = measured(&ope);
    runs.push(("JSON lines", seconds, rss));
    let (compact_seconds, _) = measured(&["log", "compact", data]);
    let parquet_bytes: u64 = quiver_log::segment_files(&dir)
        .unwrap()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    println!(
        "ope_log: compacted in {compact_seconds:.0} s to {:.2} GB ({:.1}x smaller)",
        parquet_bytes as f64 / 1e9,
        json_bytes as f64 / parquet_bytes as f64
    );
    let (seconds, rss) = measured(&ope);
    runs.push(("Parquet", seconds, rss));
    for (form, seconds, rss) in &runs {
        println!(
            "ope_log: {form}: {seconds:.1} s, {:.0} decisions/s, peak RSS {:.0} MiB",
            decisions as f64 / seconds,
            *rss as f64 / (1 << 20) as f64
        );
    }
    if std::env::var_os("QUIVER_OPE_LOG_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    for (form, _, rss) in runs {
        assert!(rss < MAX_RSS_BYTES, "{form}: peak RSS {rss} bytes, over 2 GiB");
    }
}
