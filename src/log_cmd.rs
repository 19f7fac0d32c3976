//! `quiver log`: maintenance of a server's decision log.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Subcommand;

/// What to do with a decision log.
#[derive(Subcommand)]
pub enum LogCommand {
    /// Rewrite the closed JSON-lines segments of a log directory as Parquet (the newest,
    /// which a running server appends to, stays). Safe while the server runs: every reader
    /// (the server's restart, `quiver ope`, `quiver replay`) reads both forms.
    Compact {
        /// The log directory (the server's `log_dir`).
        dir: PathBuf,
    },
}

pub fn run(command: LogCommand) -> Result<()> {
    match command {
        LogCommand::Compact { dir } => {
            let segments =
                quiver_log::segment_files(&dir).with_context(|| format!("reading {}", dir.display()))?;
            if segments.is_empty() {
                anyhow::bail!("{}: no log segments (decisions-<seq>.jsonl) in it", dir.display());
            }
            let done = quiver_log::compact(&dir).with_context(|| format!("compacting {}", dir.display()))?;
            if done.segments == 0 {
                println!(
                    "{}: nothing to compact (only the open segment is JSON lines)",
                    dir.display()
                );
                return Ok(());
            }
            println!(
                "{}: {} segments, {} records: {:.1} MB of JSON lines now {:.1} MB of Parquet ({:.1}x smaller)",
                dir.display(),
                done.segments,
                done.records,
                done.json_bytes as f64 / 1e6,
                done.parquet_bytes as f64 / 1e6,
                done.json_bytes as f64 / done.parquet_bytes.max(1) as f64
            );
            Ok(())
        }
    }
}
