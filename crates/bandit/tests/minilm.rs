//! The bundled MiniLM-L3 encoder as an embedding featurizer (cargo feature `minilm`).
#![cfg(feature = "minilm")]

use quiver_bandit::{Embedder, EmbeddingFeaturizer, Featurizer, HashingFeaturizer, MiniLm};

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn paraphrases_sit_closer_than_unrelated_prompts_in_the_block() {
    let encoder = MiniLm::new().expect("bundled weights load");
    let raw = encoder
        .embed(&["How do I reverse a list in Python?", "  "])
        .expect("embeds");
    assert_eq!(raw[0].len(), 384);
    assert!(raw[1].iter().all(|v| *v == 0.0), "a blank prompt embeds as zeros");

    let hashing = HashingFeaturizer::default();
    let featurizer = EmbeddingFeaturizer::new(hashing.clone(), encoder, 64).unwrap();
    assert_eq!(featurizer.dim(), hashing.dim() + 64);
    assert!(featurizer
        .definition()
        .ends_with("+embedding(source=minilm-l3,dims=64)"));
    let block = |prompt: &str| featurizer.featurize(prompt, &[]).unwrap().features[hashing.dim()..].to_vec();
    let a = block("How do I reverse a list in Python?");
    let b = block("What is the way to flip the order of a Python list?");
    let c = block("Name the capital city of Australia.");
    let (near, far) = (cosine(&a, &b), cosine(&a, &c));
    assert!(near > far + 0.2, "paraphrase {near:.3}, unrelated {far:.3}");
}
