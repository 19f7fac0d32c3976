//! A sentence embedding of the prompt as a block of the context, beside the hashed one.
//!
//! An [`Embedder`] turns text into a vector of its own width (MiniLM-L3: 384; OpenAI's
//! `text-embedding-3-small`: 1,536). [`EmbeddingBlock`] reduces it to `dims` coordinates
//! with a fixed very sparse random projection (Li, Hastie and Church 2006: entries
//! `+-sqrt(2)` with probability 1/4 each, else 0, scaled by `1/sqrt(dims)`), which keeps
//! inner products in expectation (Johnson-Lindenstrauss), then L2-normalizes it: a linear
//! learner's cost grows with the square of the dimension, so the block stays small. The
//! projection's signs come from SplitMix64 of the input coordinate, so the block is the same
//! on every platform and run, like the hashed features.
//!
//! The context is the hashing featurizer's followed by the block. When no embedding is at
//! hand (an endpoint timed out or failed) the block is zeros: the hashed features decide
//! alone, and the ridge's embedding weights neither help nor hurt that decision.

use crate::error::{Error, Result};
use crate::features::{Context, Featurizer, HashingFeaturizer};

/// Widest block a route may ask for.
pub const MAX_DIMS: usize = 256;

/// Turns texts into sentence embeddings of one fixed width.
pub trait Embedder {
    /// What embeds, recorded in the context definition, e.g. `minilm-l3` or
    /// `openai(model=text-embedding-3-small)`: the same source embeds the same text alike.
    fn source(&self) -> String;

    /// One embedding per text, in order; a message on failure.
    fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String>;
}

/// The embedding block of a context: its source and width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingBlock {
    source: String,
    dims: usize,
}

impl EmbeddingBlock {
    /// A block of `dims` coordinates (1 to [`MAX_DIMS`]) of embeddings from `source`.
    pub fn new(source: &str, dims: usize) -> Result<Self> {
        if !(1..=MAX_DIMS).contains(&dims) {
            return Err(Error::out_of_range("embedding.dims", dims as f64, "1 to 256"));
        }
        Ok(EmbeddingBlock {
            source: source.to_string(),
            dims,
        })
    }

    /// The block's width.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// The source of its embeddings.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The block of `embedding`: projected to [`Self::dims`] coordinates, unit length
    /// (zeros for a zero vector). An empty or non-finite embedding is an error.
    pub fn project(&self, embedding: &[f32]) -> Result<Vec<f64>> {
        if embedding.is_empty() {
            return Err(Error::out_of_range("embedding length", 0.0, ">= 1"));
        }
        if let Some(i) = embedding.iter().position(|v| !v.is_finite()) {
            return Err(Error::not_finite(
                format!("embedding[{i}]"),
                f64::from(embedding[i]),
            ));
        }
        let mut block = sparse_projection(embedding, self.dims);
        let norm = block.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            block.iter_mut().for_each(|v| *v /= norm);
        }
        Ok(block)
    }

    /// Appends the block to `context`: `projected` (from [`Self::project`]) or, without
    /// one, zeros.
    pub fn extend(&self, context: &mut Context, projected: Option<&[f64]>) -> Result<()> {
        match projected {
            Some(block) if block.len() != self.dims => Err(crate::ErrorKind::DimensionMismatch {
                expected: self.dims,
                found: block.len(),
            }
            .into()),
            Some(block) => {
                crate::limits::FEATURE.check_all("embedding", block)?;
                context.features.extend_from_slice(block);
                Ok(())
            }
            None => {
                context.features.extend(std::iter::repeat_n(0.0, self.dims));
                Ok(())
            }
        }
    }
}

impl EmbeddingBlock {
    /// The block a context definition ([`ContextLayout::definition`]) names, if it names
    /// one: how a log's reader rebuilds the contexts its server built.
    pub fn from_definition(definition: &str) -> Option<Self> {
        let (_, rest) = definition.split_once("+embedding(source=")?;
        let (source, dims) = rest.rsplit_once(",dims=")?;
        let dims = dims.strip_suffix(')')?.parse().ok()?;
        EmbeddingBlock::new(source, dims).ok()
    }
}

/// `R x / sqrt(dims)` for the fixed sparse sign matrix `R` of the module docs.
fn sparse_projection(x: &[f32], dims: usize) -> Vec<f64> {
    let mut out = vec![0.0; dims];
    let words = dims.div_ceil(32);
    for (i, &xi) in x.iter().enumerate() {
        let xi = f64::from(xi) * std::f64::consts::SQRT_2;
        for w in 0..words {
            // Two bits per output: 00 adds, 01 subtracts, 1x skips.
            let mut bits = splitmix64((i * words + w) as u64);
            for out_j in out.iter_mut().skip(w * 32).take(32) {
                match bits & 3 {
                    0 => *out_j += xi,
                    1 => *out_j -= xi,
                    _ => {}
                }
                bits >>= 2;
            }
        }
    }
    let scale = 1.0 / (dims as f64).sqrt();
    out.iter_mut().for_each(|v| *v *= scale);
    out
}

/// SplitMix64's output function (Steele, Lea and Flood 2014) of the `n`-th state.
fn splitmix64(n: u64) -> u64 {
    let mut z = n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a context holds: the hashed features (with the caller's), then an embedding
/// block if the route has one. The one place contexts are assembled, for the server (which
/// embeds before it decides) and the simulator (through [`EmbeddingFeaturizer`]) alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextLayout {
    hashing: HashingFeaturizer,
    embedding: Option<EmbeddingBlock>,
}

impl ContextLayout {
    /// `hashing`'s features, then `embedding`'s block if given.
    pub fn new(hashing: HashingFeaturizer, embedding: Option<EmbeddingBlock>) -> Self {
        ContextLayout { hashing, embedding }
    }

    /// The embedding block, if the contexts have one.
    pub fn embedding(&self) -> Option<&EmbeddingBlock> {
        self.embedding.as_ref()
    }

    /// Length of every context.
    pub fn dim(&self) -> usize {
        self.hashing.dim() + self.embedding.as_ref().map_or(0, EmbeddingBlock::dims)
    }

    /// What builds the contexts (see [`Featurizer::definition`]).
    pub fn definition(&self) -> String {
        match &self.embedding {
            Some(block) => format!(
                "{}+embedding(source={},dims={})",
                self.hashing.definition(),
                block.source,
                block.dims
            ),
            None => self.hashing.definition(),
        }
    }

    /// The context of `prompt` with the caller's `extra` features and, with an embedding
    /// block, the prompt's `projected` embedding ([`EmbeddingBlock::project`]; zeros
    /// without one). A projection given to a layout without a block is an error.
    pub fn build(&self, prompt: &str, extra: &[f64], projected: Option<&[f64]>) -> Result<Context> {
        let mut context = self.hashing.featurize(prompt, extra)?;
        match (&self.embedding, projected) {
            (Some(block), projected) => block.extend(&mut context, projected)?,
            (None, None) => {}
            (None, Some(p)) => {
                return Err(crate::ErrorKind::DimensionMismatch {
                    expected: 0,
                    found: p.len(),
                }
                .into())
            }
        }
        Ok(context)
    }
}

/// The hashing featurizer's context followed by an embedding block from an [`Embedder`].
///
/// Embeds one prompt per call; a caller with many prompts embeds them in batches and hands
/// the featurizer an embedder that looks them up (as the simulator's cache does).
#[derive(Debug, Clone)]
pub struct EmbeddingFeaturizer<E> {
    layout: ContextLayout,
    block: EmbeddingBlock,
    embedder: E,
}

impl<E: Embedder> EmbeddingFeaturizer<E> {
    /// `hashing`'s features, then `dims` projected coordinates of `embedder`'s embedding.
    pub fn new(hashing: HashingFeaturizer, embedder: E, dims: usize) -> Result<Self> {
        let block = EmbeddingBlock::new(&embedder.source(), dims)?;
        Ok(EmbeddingFeaturizer {
            layout: ContextLayout::new(hashing, Some(block.clone())),
            block,
            embedder,
        })
    }

    /// The layout of its contexts.
    pub fn layout(&self) -> &ContextLayout {
        &self.layout
    }

    /// The prompt's projected embedding; None if the embedder failed on it or gave no
    /// usable vector (empty or not finite), as the server falls back then.
    pub fn projected(&self, prompt: &str) -> Option<Vec<f64>> {
        match self.embedder.embed(&[prompt]) {
            Ok(mut v) if v.len() == 1 => self.block.project(&v.swap_remove(0)).ok(),
            _ => None,
        }
    }
}

impl<E: Embedder> Featurizer for EmbeddingFeaturizer<E> {
    fn dim(&self) -> usize {
        self.layout.dim()
    }

    fn definition(&self) -> String {
        self.layout.definition()
    }

    /// An embedder's failure is no error: the block is zeros (see the module docs).
    fn featurize(&self, prompt: &str, extra: &[f64]) -> Result<Context> {
        let projected = self.projected(prompt);
        self.layout.build(prompt, extra, projected.as_deref())
    }
}

/// The MiniLM-L3 sentence encoder bundled by the `pocket-encoder` crate (weights compiled
/// in, inference on candle, no download): 384 dimensions, inputs truncated to 128 tokens.
#[cfg(feature = "minilm")]
#[derive(Clone)]
pub struct MiniLm {
    encoder: pocket_encoder::Encoder,
}

#[cfg(feature = "minilm")]
impl MiniLm {
    /// Loads the bundled weights (once per process).
    pub fn new() -> std::result::Result<Self, String> {
        pocket_encoder::Encoder::new()
            .map(|encoder| MiniLm { encoder })
            .map_err(|e| e.to_string())
    }
}

#[cfg(feature = "minilm")]
impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MiniLm")
    }
}

#[cfg(feature = "minilm")]
impl Embedder for MiniLm {
    fn source(&self) -> String {
        "minilm-l3".into()
    }

    /// Blank texts, which the encoder refuses, embed as zeros.
    fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String> {
        let blank = texts.iter().map(|t| t.trim().is_empty());
        let filled: Vec<&str> = texts.iter().copied().filter(|t| !t.trim().is_empty()).collect();
        let mut vectors = self
            .encoder
            .embed(&filled)
            .map_err(|e| e.to_string())?
            .into_iter();
        Ok(blank
            .map(|b| {
                if b {
                    vec![0.0; 384]
                } else {
                    vectors.next().unwrap_or_default()
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    use super::*;

    fn unit(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        let v: Vec<f64> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| (x / norm) as f32).collect()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn projection_is_fixed_unit_length_and_scale_free() {
        let block = EmbeddingBlock::new("test", 32).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let x = unit(&mut rng, 384);
        let p = block.project(&x).unwrap();
        assert_eq!(p, block.project(&x).unwrap());
        assert!((dot(&p, &p) - 1.0).abs() < 1e-12);
        let doubled: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
        let q = block.project(&doubled).unwrap();
        assert!(p.iter().zip(&q).all(|(a, b)| (a - b).abs() < 1e-12));
        assert_eq!(block.project(&[0.0; 8]).unwrap(), vec![0.0; 32]);
    }

    /// Each entry of `R` has mean 0 and variance 1, so `E[<Rx, Ry>] / dims = <x, y>` and,
    /// for unit `x` and `y` nearly orthogonal (as random 384-dimensional ones are), the
    /// projected cosine errs by about `1 / sqrt(dims)`: its mean square stays below `2 / dims`.
    #[test]
    fn projection_keeps_inner_products_within_johnson_lindenstrauss_error() {
        let dims = 64;
        let block = EmbeddingBlock::new("test", dims).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let pairs = 400;
        let (mut err, mut sq) = (0.0, 0.0);
        for _ in 0..pairs {
            let (x, y) = (unit(&mut rng, 384), unit(&mut rng, 384));
            let exact: f64 = x.iter().zip(&y).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            let e = dot(&block.project(&x).unwrap(), &block.project(&y).unwrap()) - exact;
            err += e;
            sq += e * e;
        }
        let mean_sq = sq / pairs as f64;
        assert!(mean_sq < 2.0 / dims as f64, "mean square error {mean_sq}");
        assert!(
            mean_sq > 0.5 / dims as f64,
            "too exact to be a projection: {mean_sq}"
        );
        // The mean error: within four standard errors of zero.
        assert!((err / pairs as f64).abs() < 4.0 * (mean_sq / pairs as f64).sqrt());
    }

    #[test]
    fn a_definition_names_its_block() {
        let block = EmbeddingBlock::new("openai(model=text-embedding-3-small)", 24).unwrap();
        let layout = ContextLayout::new(HashingFeaturizer::for_routes(2), Some(block.clone()));
        assert_eq!(EmbeddingBlock::from_definition(&layout.definition()), Some(block));
        let plain = ContextLayout::new(HashingFeaturizer::for_routes(2), None);
        assert_eq!(EmbeddingBlock::from_definition(&plain.definition()), None);
        assert_eq!(
            EmbeddingBlock::from_definition("hashing()+embedding(source=x,dims=0)"),
            None
        );
    }

    #[test]
    fn bad_embeddings_and_widths_are_errors() {
        assert!(EmbeddingBlock::new("test", 0).is_err());
        assert!(EmbeddingBlock::new("test", MAX_DIMS + 1).is_err());
        let block = EmbeddingBlock::new("test", 4).unwrap();
        assert!(block.project(&[]).is_err());
        let err = block.project(&[0.5, f32::NAN]).unwrap_err().to_string();
        assert!(err.contains("embedding[1]"), "{err}");
        let mut context = HashingFeaturizer::default().featurize("hi", &[]).unwrap();
        assert!(block.extend(&mut context, Some(&[1.0, 0.0])).is_err());
    }

    struct Fixed(Option<Vec<f32>>);

    impl Embedder for Fixed {
        fn source(&self) -> String {
            "fixed".into()
        }
        fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String> {
            match &self.0 {
                Some(v) => Ok(texts.iter().map(|_| v.clone()).collect()),
                None => Err("down".into()),
            }
        }
    }

    #[test]
    fn the_featurizer_appends_the_block_or_zeros_when_the_embedder_fails() {
        let hashing = HashingFeaturizer::default();
        let hashed = hashing.featurize("What is 2 + 2?", &[]).unwrap();
        let up = EmbeddingFeaturizer::new(hashing.clone(), Fixed(Some(vec![0.3, -0.2, 0.9])), 8).unwrap();
        let down = EmbeddingFeaturizer::new(hashing.clone(), Fixed(None), 8).unwrap();
        assert_eq!(
            up.definition(),
            "hashing(words=40,chars=16,caller=0)+embedding(source=fixed,dims=8)"
        );
        for f in [&up as &dyn Featurizer, &down] {
            let c = f.featurize("What is 2 + 2?", &[]).unwrap();
            assert_eq!(c.features.len(), f.dim());
            assert_eq!(c.features[..hashing.dim()], hashed.features[..]);
        }
        let c = up.featurize("What is 2 + 2?", &[]).unwrap();
        assert_eq!(
            c.features[hashing.dim()..],
            up.block.project(&[0.3, -0.2, 0.9]).unwrap()[..]
        );
        let c = down.featurize("What is 2 + 2?", &[]).unwrap();
        assert!(c.features[hashing.dim()..].iter().all(|v| *v == 0.0));
    }
}
