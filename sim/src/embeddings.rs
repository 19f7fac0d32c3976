//! Prompt embeddings for a replay, computed once per prompt and cached on disk.
//!
//! The prompts a replay needs that the cache lacks are embedded in batches, and every
//! vector a source has given is kept in `<cache>/<source>.emb` under its prompt's key (an
//! FNV-1a hash of the prompt and its length): a table embeds once, whatever its path and
//! however its rows are split (`--holdout`, `--split`) or joined with another's
//! (`--train`), and a changed prompt embeds afresh. The file: the line
//! `quiver-embeddings 2`, the width as a little-endian `u32`, then per prompt its hash
//! (`u64`), its length in bytes (`u32`) and its vector (`f32`), all little-endian, by key.
//! A file that is not one (damaged, of another version or width) is embedded again and
//! replaced.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use quiver_bandit::Embedder;

use crate::data::WideDataset;
use crate::error::{Result, SimError};

const MAGIC: &[u8] = b"quiver-embeddings 2\n";
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
    /// The embeddings of every prompt of `datasets` by `embedder`: those the cache in
    /// `cache_dir` holds read from it, the others embedded and added to it.
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

/// A prompt's key in the cache: FNV-1a (64-bit) of its bytes, and their number.
type Key = (u64, u32);

fn key(prompt: &str) -> Key {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in prompt.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h, prompt.len() as u32)
}

/// The vectors of `prompts`, each read from `source`'s cache file in `dir` or embedded and
/// added to it.
fn cached(prompts: &[&str], embedder: &dyn Embedder, source: &str, dir: &Path) -> Result<Vec<Vec<f32>>> {
    let path = dir.join(format!("{source}.emb"));
    let (mut width, mut stored) = std::fs::read(&path)
        .ok()
        .and_then(|bytes| decode(&bytes))
        .unwrap_or_default();
    let (present, missing): (Vec<&str>, Vec<&str>) =
        prompts.iter().partition(|p| stored.contains_key(&key(p)));
    if !missing.is_empty() {
        let fresh = embed_all(&missing, embedder, source)?;
        let fresh_width = fresh.first().map_or(0, Vec::len);
        if fresh_width == 0 || fresh.iter().any(|v| v.len() != fresh_width) {
            return Err(SimError::Embedding(format!(
                "{source}: embeddings of no width or of several widths"
            )));
        }
        if fresh_width != width && !stored.is_empty() {
            // Another width under the same source's name: another version of its model,
            // whose vectors the stored ones are not.
            stored.clear();
            let again = embed_all(&present, embedder, source)?;
            stored.extend(present.iter().map(|p| key(p)).zip(again));
        }
        width = fresh_width;
        stored.extend(missing.iter().map(|p| key(p)).zip(fresh));
        write_atomically(&path, &encode(width, &stored)).map_err(|e| SimError::Write {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(prompts.iter().map(|p| stored[&key(p)].clone()).collect())
}

/// The vectors of `prompts` by `embedder`, in batches.
fn embed_all(prompts: &[&str], embedder: &dyn Embedder, source: &str) -> Result<Vec<Vec<f32>>> {
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
    Ok(vectors)
}

fn encode(width: usize, stored: &HashMap<Key, Vec<f32>>) -> Vec<u8> {
    let mut keys: Vec<&Key> = stored.keys().collect();
    keys.sort_unstable();
    let mut bytes = MAGIC.to_vec();
    bytes.extend((width as u32).to_le_bytes());
    for k in keys {
        bytes.extend(k.0.to_le_bytes());
        bytes.extend(k.1.to_le_bytes());
        stored[k].iter().for_each(|x| bytes.extend(x.to_le_bytes()));
    }
    bytes
}

/// The width and the vectors by key of a cache file; None if it is not one.
fn decode(bytes: &[u8]) -> Option<(usize, HashMap<Key, Vec<f32>>)> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let width = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let data = &rest[4..];
    let record = 12 + 4 * width;
    if width == 0 || data.len() % record != 0 {
        return None;
    }
    let stored = data
        .chunks_exact(record)
        .map(|r| {
            let hash = u64::from_le_bytes(r[..8].try_into().ok()?);
            let length = u32::from_le_bytes(r[8..12].try_into().ok()?);
            let vector = r[12..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Some(((hash, length), vector))
        })
        .collect::<Option<HashMap<_, _>>>()?;
    Some((width, stored))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Vectors of `width` numbers, counting the prompts it embeds.
    struct Sized {
        width: usize,
        embedded: Cell<usize>,
    }

    impl Embedder for Sized {
        fn source(&self) -> String {
            "sized".into()
        }
        fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String> {
            self.embedded.set(self.embedded.get() + texts.len());
            Ok(texts.iter().map(|t| vec![t.len() as f32; self.width]).collect())
        }
    }

    /// A source whose vectors changed width (another version of its model under the same
    /// name) has every prompt embedded again, not the new ones alone.
    #[test]
    fn a_source_of_another_width_embeds_every_prompt_again() {
        let dir = std::env::temp_dir().join(format!("quiver-emb-width-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let old = Sized {
            width: 4,
            embedded: Cell::new(0),
        };
        assert_eq!(
            cached(&["a", "bb"], &old, "sized", &dir).unwrap()[1],
            vec![2.0; 4]
        );
        assert_eq!(cached(&["a", "bb"], &old, "sized", &dir).unwrap().len(), 2);
        assert_eq!(old.embedded.get(), 2);
        let new = Sized {
            width: 3,
            embedded: Cell::new(0),
        };
        let vectors = cached(&["a", "bb", "ccc"], &new, "sized", &dir).unwrap();
        assert_eq!(vectors, vec![vec![1.0; 3], vec![2.0; 3], vec![3.0; 3]]);
        assert_eq!(new.embedded.get(), 3);
        let (width, stored) = decode(&std::fs::read(dir.join("sized.emb")).unwrap()).unwrap();
        assert_eq!((width, stored.len()), (3, 3));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
