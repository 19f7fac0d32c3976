//! Turning a prompt into a context: a dense, fixed-dimension feature vector.
//!
//! [`HashingFeaturizer`] lays out its vector as follows (dimension
//! `8 + word_buckets + char_buckets + extra_features`; 64 with the defaults):
//!
//! | index | feature | range |
//! |---|---|---|
//! | 0 | bias, always 1 | 1 |
//! | 1 | length: `ln(1 + tokens) / ln(1 + 32768)`, clipped | [0, 1] |
//! | 2 | code: fences, keywords or a high share of `{}();=` | {0, 1} |
//! | 3 | math: digits and operators, or math words | {0, 1} |
//! | 4 | multiple choice: two or more lettered options (`A)`, `(B)`, `C.`) | {0, 1} |
//! | 5 | question: contains `?` | {0, 1} |
//! | 6 | language: share of non-ASCII letters (non-English text) | [0, 1] |
//! | 7 | open generation: write/explain/summarize-style requests | {0, 1} |
//! | 8.. | hashed word unigrams and bigrams, signed, L2-normalized | [-1, 1] |
//! | .. | hashed character trigrams, signed, L2-normalized | [-1, 1] |
//! | .. | the caller's own features, as given | [-1e6, 1e6] ([`crate::limits::FEATURE`]) |
//!
//! Hashing is FNV-1a (64-bit), so the vector is the same on every platform and run.
//! Tokens are estimated as `ceil(chars / 4)`, OpenAI's rule of thumb for English.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, Result};
use crate::limits;

/// A request as the learner sees it: features plus the prompt size that drives cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// The feature vector; its length is the featurizer's dimension.
    pub features: Vec<f64>,
    /// Estimated prompt size in tokens.
    pub input_tokens: u32,
}

/// One chat message, as in OpenAI's chat format.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text of the message: a string, or the text of its parts (`[{"type": "text",
    /// "text": ...}, ...]`) one per line; an assistant's may be null or absent (a tool call).
    pub content: String,
}

impl ChatMessage {
    /// A message as OpenAI's chat format writes it: an object with a string `role` and a
    /// `content` that is a string or a list of parts (their text parts, in order, joined
    /// by newlines); an assistant's may be null or absent. Else why not.
    pub fn from_json(message: &serde_json::Value) -> std::result::Result<Self, &'static str> {
        let role = message
            .get("role")
            .and_then(serde_json::Value::as_str)
            .ok_or("must be an object with a string `role`")?;
        let content = match message.get("content") {
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(serde_json::Value::Array(parts)) => parts
                .iter()
                .filter_map(|part| part.get("text").and_then(serde_json::Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            None | Some(serde_json::Value::Null) if role == "assistant" => String::new(),
            None | Some(serde_json::Value::Null) => return Err("has no `content`"),
            Some(_) => return Err("has a `content` that is neither a string nor a list of parts"),
        };
        Ok(ChatMessage {
            role: role.to_string(),
            content,
        })
    }
}

impl<'de> Deserialize<'de> for ChatMessage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let message = serde_json::Value::deserialize(deserializer)?;
        ChatMessage::from_json(&message)
            .map_err(|why| serde::de::Error::custom(format!("a chat message {why}")))
    }
}

/// Turns prompts into contexts of a fixed, documented dimension.
pub trait Featurizer {
    /// Length of every feature vector this featurizer produces.
    fn dim(&self) -> usize;

    /// Featurizes a prompt; `extra` (the caller's own numeric features) is appended.
    fn featurize(&self, prompt: &str, extra: &[f64]) -> Result<Context>;

    /// What builds the contexts, as recorded in snapshots and logs: two featurizers with
    /// the same definition produce the same context from the same request.
    fn definition(&self) -> String;

    /// Featurizes chat messages as one prompt ([`messages_text`]).
    fn featurize_messages(&self, messages: &[ChatMessage], extra: &[f64]) -> Result<Context> {
        self.featurize(&messages_text(messages), extra)
    }
}

/// Sizes of the hashed blocks and the number of caller features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeaturizerConfig {
    /// Buckets for word unigrams and bigrams.
    pub word_buckets: usize,
    /// Buckets for character trigrams.
    pub char_buckets: usize,
    /// Number of caller-supplied features appended at the end.
    pub extra_features: usize,
}

impl Default for FeaturizerConfig {
    fn default() -> Self {
        FeaturizerConfig {
            word_buckets: 40,
            char_buckets: 16,
            extra_features: 0,
        }
    }
}

/// Where [`HashingFeaturizer`] puts each of its fixed leading features (the table in the
/// module docs).
pub mod position {
    /// The bias, always 1.
    pub const BIAS: usize = 0;
    /// The prompt's length in estimated tokens, log-scaled.
    pub const LENGTH: usize = 1;
    /// Code: fences, keywords or a high share of `{}();=`.
    pub const CODE: usize = 2;
    /// Math: digits and operators, or math words.
    pub const MATH: usize = 3;
    /// Two or more lettered options.
    pub const MULTIPLE_CHOICE: usize = 4;
    /// A question mark.
    pub const QUESTION: usize = 5;
    /// The share of non-ASCII letters.
    pub const LANGUAGE: usize = 6;
    /// A write/explain/summarize-style request.
    pub const GENERATION: usize = 7;
}

/// Number of fixed leading features (bias, length and the six task signals).
pub const FIXED_FEATURES: usize = position::GENERATION + 1;

/// The built-in featurizer; see the module docs for its layout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashingFeaturizer {
    config: FeaturizerConfig,
}

impl HashingFeaturizer {
    /// A featurizer with the given block sizes.
    pub fn new(config: FeaturizerConfig) -> Self {
        HashingFeaturizer { config }
    }

    /// The context definition of Quiver's routes, offline and online alike: the default
    /// blocks over the prompt, then `caller_features` numbers the request brings. Nothing
    /// else enters a context, so a replay measures what the server will do.
    pub fn for_routes(caller_features: usize) -> Self {
        HashingFeaturizer::new(FeaturizerConfig {
            extra_features: caller_features,
            ..FeaturizerConfig::default()
        })
    }

    /// The block sizes.
    pub fn config(&self) -> FeaturizerConfig {
        self.config
    }

    /// The number of caller features a context definition (a route's, as logged) takes:
    /// `caller=N` of its hashing block; `None` for another definition.
    pub fn caller_features_in(definition: &str) -> Option<usize> {
        let (blocks, _) = definition.strip_prefix("hashing(")?.split_once(')')?;
        blocks
            .split(',')
            .find_map(|b| b.strip_prefix("caller=")?.parse().ok())
    }
}

/// Estimated token count of a text: `ceil(chars / 4)`.
pub fn estimate_tokens(text: &str) -> u32 {
    tokens_of_chars(text.chars().count())
}

/// Estimated token count of a text of `chars` characters: `ceil(chars / 4)`.
pub fn tokens_of_chars(chars: usize) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// The prompt of chat messages: their contents, in order, one per line.
pub fn messages_text(messages: &[ChatMessage]) -> String {
    let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    contents.join("\n")
}

impl Featurizer for HashingFeaturizer {
    fn dim(&self) -> usize {
        FIXED_FEATURES + self.config.word_buckets + self.config.char_buckets + self.config.extra_features
    }

    fn definition(&self) -> String {
        let c = self.config;
        format!(
            "hashing(words={},chars={},caller={})",
            c.word_buckets, c.char_buckets, c.extra_features
        )
    }

    fn featurize(&self, prompt: &str, extra: &[f64]) -> Result<Context> {
        if extra.len() != self.config.extra_features {
            return Err(ErrorKind::DimensionMismatch {
                expected: self.config.extra_features,
                found: extra.len(),
            }
            .into());
        }
        limits::FEATURE.check_all("features", extra)?;
        let input_tokens = estimate_tokens(prompt);
        let lower = prompt.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();

        let mut x = Vec::with_capacity(self.dim());
        x.resize(FIXED_FEATURES, 0.0);
        x[position::BIAS] = 1.0;
        x[position::LENGTH] = ((1.0 + f64::from(input_tokens)).ln() / (1.0 + 32768.0f64).ln()).min(1.0);
        x[position::CODE] = indicator(looks_like_code(prompt));
        x[position::MATH] = indicator(looks_like_math(prompt, &words));
        x[position::MULTIPLE_CHOICE] = indicator(looks_like_multiple_choice(prompt));
        x[position::QUESTION] = indicator(prompt.contains('?'));
        x[position::LANGUAGE] = non_ascii_letter_share(prompt);
        x[position::GENERATION] = indicator(words.iter().take(12).any(|w| GENERATION_WORDS.contains(w)));

        let mut word_block = vec![0.0; self.config.word_buckets];
        for w in &words {
            add_hashed(&mut word_block, w.as_bytes());
        }
        for pair in words.windows(2) {
            let bigram = format!("{} {}", pair[0], pair[1]);
            add_hashed(&mut word_block, bigram.as_bytes());
        }
        let mut char_block = vec![0.0; self.config.char_buckets];
        let chars: Vec<char> = lower
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .collect();
        let mut buf = [0u8; 12];
        for tri in chars.windows(3) {
            let mut len = 0;
            for c in tri {
                len += c.encode_utf8(&mut buf[len..]).len();
            }
            add_hashed(&mut char_block, &buf[..len]);
        }
        x.extend(l2_normalized(word_block));
        x.extend(l2_normalized(char_block));
        x.extend_from_slice(extra);
        debug_assert_eq!(x.len(), self.dim());
        Ok(Context {
            features: x,
            input_tokens,
        })
    }
}

const GENERATION_WORDS: &[&str] = &[
    "write",
    "explain",
    "describe",
    "summarize",
    "summarise",
    "draft",
    "compose",
    "essay",
    "story",
    "generate",
    "rewrite",
    "translate",
];
const CODE_MARKERS: &[&str] = &[
    "```",
    "def ",
    "return ",
    "function ",
    "#include",
    "class ",
    "import ",
    "};",
    "=>",
    "print(",
    "console.log",
    "public static",
];
const MATH_WORDS: &[&str] = &[
    "solve",
    "calculate",
    "compute",
    "equation",
    "integral",
    "derivative",
    "sum",
    "product",
    "probability",
    "how",
    "many",
    "percent",
    "sqrt",
];

fn indicator(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// FNV-1a, 64-bit: stable across platforms and releases, unlike `std`'s hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Signed feature hashing (Weinberger et al. 2009): the top bit picks the sign so that
/// collisions cancel in expectation.
fn add_hashed(block: &mut [f64], bytes: &[u8]) {
    if block.is_empty() {
        return;
    }
    let h = fnv1a(bytes);
    let bucket = (h % block.len() as u64) as usize;
    block[bucket] += if h >> 63 == 0 { 1.0 } else { -1.0 };
}

fn l2_normalized(mut block: Vec<f64>) -> Vec<f64> {
    let norm = block.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm > 0.0 {
        block.iter_mut().for_each(|v| *v /= norm);
    }
    block
}

fn looks_like_code(text: &str) -> bool {
    if CODE_MARKERS.iter().any(|m| text.contains(m)) {
        return true;
    }
    let symbols = text.chars().filter(|c| "{}();=<>[]".contains(*c)).count();
    text.len() >= 20 && symbols * 12 >= text.len()
}

fn looks_like_math(text: &str, words: &[&str]) -> bool {
    let mathy = text
        .chars()
        .filter(|c| c.is_ascii_digit() || "+-*/^=%".contains(*c))
        .count();
    let math_words = words.iter().filter(|w| MATH_WORDS.contains(w)).count();
    (text.len() >= 8 && mathy * 8 >= text.len()) || math_words >= 2
}

fn looks_like_multiple_choice(text: &str) -> bool {
    let letters = ['A', 'B', 'C', 'D', 'E'];
    let options = letters
        .iter()
        .filter(|&&l| {
            text.lines().any(|line| {
                let t = line.trim_start();
                [
                    format!("{l})"),
                    format!("({l})"),
                    format!("{l}."),
                    format!("{l}:"),
                ]
                .iter()
                .any(|p| t.starts_with(p.as_str()))
            }) || text.contains(&format!("({l})"))
        })
        .count();
    options >= 2
}

fn non_ascii_letter_share(text: &str) -> f64 {
    let (mut letters, mut non_ascii) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        if !c.is_ascii() {
            non_ascii += 1;
        }
    }
    if letters == 0 {
        0.0
    } else {
        non_ascii as f64 / letters as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chat message is read as OpenAI writes it, the same wherever it comes from.
    #[test]
    fn chat_messages_take_text_parts_and_an_assistants_null() {
        let read = |v: serde_json::Value| serde_json::from_value::<ChatMessage>(v).map_err(|e| e.to_string());
        let parts = serde_json::json!({"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "b"}
        ]});
        assert_eq!(read(parts).unwrap().content, "a\nb");
        assert_eq!(
            read(serde_json::json!({"role": "assistant", "content": null}))
                .unwrap()
                .content,
            ""
        );
        assert_eq!(
            read(serde_json::json!({"role": "assistant"})).unwrap().content,
            ""
        );
        for (message, why) in [
            (serde_json::json!({"role": "user"}), "has no `content`"),
            (
                serde_json::json!({"role": "tool", "content": null}),
                "has no `content`",
            ),
            (
                serde_json::json!({"content": "hi"}),
                "must be an object with a string `role`",
            ),
            (serde_json::json!("hi"), "must be an object with a string `role`"),
            (
                serde_json::json!({"role": "user", "content": {"text": "hi"}}),
                "neither a string nor a list of parts",
            ),
        ] {
            let error = read(message.clone()).unwrap_err();
            assert!(error.contains(why), "{message}: {error}");
        }
        let message = ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        };
        let again = read(serde_json::to_value(&message).unwrap()).unwrap();
        assert_eq!(again, message);
    }

    #[test]
    fn a_definitions_caller_features_are_read_back() {
        for n in [0, 2, 12] {
            let definition = HashingFeaturizer::for_routes(n).definition();
            assert_eq!(HashingFeaturizer::caller_features_in(&definition), Some(n));
            let with_block = format!("{definition}+embedding(source=fixed,dims=8)");
            assert_eq!(HashingFeaturizer::caller_features_in(&with_block), Some(n));
        }
        assert_eq!(
            HashingFeaturizer::caller_features_in("bias+tasks(3)+caller(2)"),
            None
        );
    }

    #[test]
    fn dimension_is_documented_and_deterministic() {
        let f = HashingFeaturizer::default();
        assert_eq!(f.dim(), 64);
        let a = f.featurize("Solve 12 * 7 + 3 = ?", &[]).unwrap();
        let b = f.featurize("Solve 12 * 7 + 3 = ?", &[]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.features.len(), 64);
        assert_eq!(a.features[0], 1.0);
    }

    #[test]
    fn task_signals_fire_on_their_kind_of_prompt() {
        use position::{CODE, GENERATION, LANGUAGE, MATH, MULTIPLE_CHOICE, QUESTION};
        let f = HashingFeaturizer::default();
        let code = f.featurize("def add(a, b):\n    return a + b", &[]).unwrap();
        assert_eq!(code.features[CODE], 1.0);
        let math = f.featurize("Calculate the sum of 345 and 982.", &[]).unwrap();
        assert_eq!(math.features[MATH], 1.0);
        assert_eq!(math.features[CODE], 0.0);
        let mc = f
            .featurize("Which is a mammal?\nA) shark\nB) whale\nC) trout", &[])
            .unwrap();
        assert_eq!(mc.features[MULTIPLE_CHOICE], 1.0);
        assert_eq!(mc.features[QUESTION], 1.0);
        let fr = f.featurize("Écris un poème sur l'été à Paris", &[]).unwrap();
        assert!(fr.features[LANGUAGE] > 0.0 && fr.features[LANGUAGE] < 0.5);
        let ja = f.featurize("日本語で答えてください", &[]).unwrap();
        assert_eq!(ja.features[LANGUAGE], 1.0);
        let essay = f.featurize("Write an essay about rivers", &[]).unwrap();
        assert_eq!(essay.features[GENERATION], 1.0);
    }

    #[test]
    fn hashed_blocks_are_unit_norm_and_extra_features_are_appended() {
        let f = HashingFeaturizer::new(FeaturizerConfig {
            word_buckets: 8,
            char_buckets: 4,
            extra_features: 2,
        });
        let c = f.featurize("the quick brown fox jumps", &[0.5, -2.0]).unwrap();
        assert_eq!(c.features.len(), FIXED_FEATURES + 8 + 4 + 2);
        let words: f64 = c.features[8..16].iter().map(|v| v * v).sum();
        let chars: f64 = c.features[16..20].iter().map(|v| v * v).sum();
        assert!((words - 1.0).abs() < 1e-12 && (chars - 1.0).abs() < 1e-12);
        assert_eq!(&c.features[20..], &[0.5, -2.0]);
        assert!(f.featurize("x", &[f64::NAN, 0.0]).is_err());
        assert!(f.featurize("x", &[1.0]).is_err());
    }

    #[test]
    fn tokens_are_a_quarter_of_characters_rounded_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcde"), 2);
        let c = HashingFeaturizer::default()
            .featurize(&"a".repeat(400), &[])
            .unwrap();
        assert_eq!(c.input_tokens, 100);
        assert!((c.features[1] - 101f64.ln() / 32769f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn messages_featurize_as_their_joined_contents() {
        let f = HashingFeaturizer::default();
        let msgs = [
            ChatMessage {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "What is 2+2?".into(),
            },
        ];
        assert_eq!(
            f.featurize_messages(&msgs, &[]).unwrap(),
            f.featurize("Be brief.\nWhat is 2+2?", &[]).unwrap()
        );
    }
}
