//! Prompt embeddings for a replay, computed once per dataset and cached on disk.
//!
//! A dataset's distinct prompts (in first-seen order) are embedded in batches, and the raw
//! vectors are written to `<cache>/<source>-<key>.emb`, `key` being an FNV-1a hash of the
//! prompts themselves: the same table embeds once, whatever its path, and a changed table
//! embeds afresh. The file: the line `quiver-embeddings 1`, then the count and the width
//! as little-endian `u32`, then the vectors as little-endian `f32`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use quiver_bandit::Embedder;

use crate::data::WideDataset;
use crate::error::{Result, SimError};

const MAGIC: &[u8] = b"quiver-embeddings 1\n";
const BATCH: usize = 256;

/// Raw embeddings by prompt, from one source.
#[derive(Debug, Clone)]
pub struct PromptEmbeddings {
    source: String,
    by_prompt: HashMap<String, Vec<f32>>,
}

/// The default cache directory: `$XDG_CACHE_HOME/quiver/embeddings`, else
/// `$HOME/.cache/quiver/embeddings`, else `.quiver-cache/embeddings` in the working
/// directory. A relative `XDG_CACHE_HOME` is ignored, as the XDG base directory
/// specification asks.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|v| v.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        });
    match base {
        Some(base) => base.join("quiver").join("embeddings"),
        None => PathBuf::from(".quiver-cache").join("embeddings"),
    }
}

impl PromptEmbeddings {
    /// The embeddings of every prompt of `datasets` by `embedder`, read from the cache
    /// file in `cache_dir` of their distinct prompts when there is one, else embedded and
    /// cached. The file is keyed on the set of prompts, in no order, so that however a
    /// table's rows are split between training and evaluation (`--holdout` and its seed),
    /// its prompts are embedded once.
    pub fn for_datasets(
        datasets: &[&WideDataset],
        embedder: &dyn Embedder,
        cache_dir: &Path,
    ) -> Result<Self> {
        let source = embedder.source();
        let mut distinct: Vec<&str> = datasets
            .iter()
            .filter_map(|data| data.prompts.as_ref())
            .flatten()
            .map(String::as_str)
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        distinct.sort_unstable();
        let vectors = if distinct.is_empty() {
            Vec::new()
        } else {
            cached(&distinct, embedder, &source, cache_dir)?
        };
        let by_prompt = distinct.iter().map(|p| p.to_string()).zip(vectors).collect();
        Ok(PromptEmbeddings { source, by_prompt })
    }

    /// Number of prompts embedded.
    pub fn len(&self) -> usize {
        self.by_prompt.len()
    }

    /// Whether no prompt is embedded.
    pub fn is_empty(&self) -> bool {
        self.by_prompt.is_empty()
    }
}

/// Looks the prompts up; one it does not hold fails, so that its block is zeros.
impl Embedder for PromptEmbeddings {
    fn source(&self) -> String {
        self.source.clone()
    }

    fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String> {
        texts
            .iter()
            .map(|t| {
                self.by_prompt
                    .get(*t)
                    .cloned()
                    .ok_or_else(|| "prompt not embedded".to_string())
            })
            .collect()
    }
}

/// FNV-1a (64-bit) of the prompts, each followed by a NUL.
fn key(prompts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in prompts {
        for &b in p.as_bytes().iter().chain(&[0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn cached(prompts: &[&str], embedder: &dyn Embedder, source: &str, dir: &Path) -> Result<Vec<Vec<f32>>> {
    let path = dir.join(format!("{source}-{:016x}.emb", key(prompts)));
    // A file that is not a cache of these prompts (truncated, another version) is
    // embedded again and replaced.
    if let Some(vectors) = std::fs::read(&path).ok().and_then(|b| decode(&b, prompts.len())) {
        return Ok(vectors);
    }
    let mut vectors = Vec::with_capacity(prompts.len());
    for batch in prompts.chunks(BATCH) {
        let embedded = embedder
            .embed(batch)
            .map_err(|e| SimError::Embedding(format!("{source}: {e}")))?;
        if embedded.len() != batch.len() {
            return Err(SimError::Embedding(format!(
                "{source}: {} embeddings for {} prompts",
                embedded.len(),
                batch.len()
            )));
        }
        vectors.extend(embedded);
    }
    write_atomically(&path, &encode(&vectors)).map_err(|e| SimError::Write {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(vectors)
}

fn encode(vectors: &[Vec<f32>]) -> Vec<u8> {
    let width = vectors.first().map_or(0, Vec::len);
    let mut bytes = MAGIC.to_vec();
    bytes.extend((vectors.len() as u32).to_le_bytes());
    bytes.extend((width as u32).to_le_bytes());
    for v in vectors {
        v.iter().for_each(|x| bytes.extend(x.to_le_bytes()));
    }
    bytes
}

/// The vectors of a cache file of `count` of them; None if it is not one.
fn decode(bytes: &[u8], count: usize) -> Option<Vec<Vec<f32>>> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let word = |i: usize| Some(u32::from_le_bytes(rest.get(i..i + 4)?.try_into().ok()?) as usize);
    let (n, width) = (word(0)?, word(4)?);
    let data = &rest[8..];
    if n != count || width == 0 || data.len() != n * width * 4 {
        return None;
    }
    let floats: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some(floats.chunks(width).map(<[f32]>::to_vec).collect())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
