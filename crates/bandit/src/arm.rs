//! Arms (models) and the per-request constraints that decide which are eligible.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{finite, Error, ErrorKind, Result};
use crate::limits;

/// The tag that names an arm's family outright (`family:llama`), whatever its id says.
pub const FAMILY_TAG: &str = "family:";

/// The family an arm's id names: the id's last `/`-separated part up to its first `-`, `_`
/// or `:`, in lower case (`meta/llama-2-70b-chat` and `llama-3-8b`: `llama`;
/// `claude-instant-v1`: `claude`; `gpt-4o` and `gpt-3.5-turbo`: `gpt`; `a0`: `a0`).
/// Linear policies shrink the prompt weights of arms of one family toward each other
/// ([`crate::ridge`]): versions and sizes of one model tend to be good at the same things.
/// A [`FAMILY_TAG`] overrides it ([`Arm::family`]).
pub fn family_of(id: &str) -> String {
    let name = id.rsplit('/').next().unwrap_or(id);
    let stem = name.split(['-', '_', ':']).next().unwrap_or(name);
    stem.to_lowercase()
}

/// One model the router can send a request to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    /// Unique name, e.g. `openai/gpt-4o`; may contain `/ . - :`.
    pub id: String,
    /// USD per input token; 0 when unknown (cost is then learned from outcomes).
    pub input_usd_per_token: f64,
    /// USD per output token; 0 when unknown.
    pub output_usd_per_token: f64,
    /// Largest prompt + completion, in tokens; `None` when unlimited or unknown.
    pub context_window_tokens: Option<u32>,
    /// Free-form labels: provider, region, capabilities (`provider:openai`, `vision`).
    pub tags: BTreeSet<String>,
}

impl Arm {
    /// An arm with no price, no context limit and no tags.
    pub fn new(id: impl Into<String>) -> Self {
        Arm {
            id: id.into(),
            input_usd_per_token: 0.0,
            output_usd_per_token: 0.0,
            context_window_tokens: None,
            tags: BTreeSet::new(),
        }
    }

    /// Sets the per-token prices in USD.
    pub fn with_prices(mut self, input_usd_per_token: f64, output_usd_per_token: f64) -> Self {
        self.input_usd_per_token = input_usd_per_token;
        self.output_usd_per_token = output_usd_per_token;
        self
    }

    /// Sets the context window in tokens.
    pub fn with_context_window(mut self, tokens: u32) -> Self {
        self.context_window_tokens = Some(tokens);
        self
    }

    /// Adds a tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.insert(tag.into());
        self
    }

    /// The arm's family: the name its `family:` tag gives, in lower case as [`family_of`]
    /// gives an id's, else the one its id names; a tag naming the model's own id keeps it
    /// alone, under a name no id's stem is (`=` and the id). A tag puts a model whose id says nothing of its lineage (a
    /// fine-tune, an alias) in its family, or keeps a model alone (a `family:` tag with
    /// its own id).
    pub fn family(&self) -> String {
        self.tags
            .iter()
            .find_map(|tag| tag.strip_prefix(FAMILY_TAG))
            .map_or_else(
                || family_of(&self.id),
                |name| {
                    if name == self.id {
                        format!("={name}")
                    } else {
                        name.to_lowercase()
                    }
                },
            )
    }

    /// The price of a call of `input_tokens` and `output_tokens` at this arm's per-token
    /// prices, USD: the one formula of a call's cost from its tokens.
    pub fn cost_usd(&self, input_tokens: f64, output_tokens: f64) -> f64 {
        input_tokens * self.input_usd_per_token + output_tokens * self.output_usd_per_token
    }

    /// The output tokens that make a call of `input_tokens` cost `cost_usd` at this arm's
    /// prices: the inverse of [`Arm::cost_usd`], for a table that records what each call
    /// cost but not its tokens. 0 when the input alone costs that much, and `None` without
    /// an output price.
    pub fn output_tokens_costing(&self, cost_usd: f64, input_tokens: f64) -> Option<f64> {
        (self.output_usd_per_token > 0.0).then(|| {
            ((cost_usd - input_tokens * self.input_usd_per_token) / self.output_usd_per_token).max(0.0)
        })
    }

    /// Whether both per-token prices are known (non-zero); otherwise cost is learned from
    /// observed outcomes.
    pub fn has_prices(&self) -> bool {
        self.input_usd_per_token > 0.0 && self.output_usd_per_token > 0.0
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.id.is_empty() {
            return Err(ErrorKind::InvalidConfig("an arm id is empty".into()).into());
        }
        let field = |name: &str| format!("arm `{}` {name}", self.id);
        limits::PRICE_USD_PER_TOKEN.check(&field("input_usd_per_token"), self.input_usd_per_token)?;
        limits::PRICE_USD_PER_TOKEN.check(&field("output_usd_per_token"), self.output_usd_per_token)?;
        let families: Vec<&str> = self
            .tags
            .iter()
            .filter_map(|t| t.strip_prefix(FAMILY_TAG))
            .collect();
        if families.len() > 1 || families.iter().any(|f| f.is_empty()) {
            return Err(ErrorKind::InvalidConfig(format!(
                "{}: a model has at most one `{FAMILY_TAG}` tag, with a name ({families:?})",
                field("tags")
            ))
            .into());
        }
        Ok(())
    }
}

/// Per-request restrictions on which arms may serve it. A misspelled restriction is
/// refused, not ignored.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Every one of these tags must be on the arm.
    #[serde(default)]
    pub require_tags: BTreeSet<String>,
    /// None of these tags may be on the arm.
    #[serde(default)]
    pub exclude_tags: BTreeSet<String>,
    /// Only these arm ids (empty: all).
    #[serde(default)]
    pub only_arms: BTreeSet<String>,
    /// Upper bound on the arm's expected cost for this request, in USD.
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
}

impl Constraints {
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(max) = self.max_cost_usd {
            finite("constraints.max_cost_usd", max)?;
            if max < 0.0 {
                return Err(Error::out_of_range("constraints.max_cost_usd", max, "[0, inf)"));
            }
        }
        Ok(())
    }

    /// Why `arm` may not serve a request of `context_tokens` tokens with expected cost
    /// `expected_cost_usd`, or `None` when it may.
    pub(crate) fn exclusion(&self, arm: &Arm, context_tokens: u32, expected_cost_usd: f64) -> Option<String> {
        if !self.only_arms.is_empty() && !self.only_arms.contains(&arm.id) {
            return Some(format!("{}: not in only_arms", arm.id));
        }
        if let Some(tag) = self.require_tags.iter().find(|t| !arm.tags.contains(*t)) {
            return Some(format!("{}: lacks tag `{tag}`", arm.id));
        }
        if let Some(tag) = self.exclude_tags.iter().find(|t| arm.tags.contains(*t)) {
            return Some(format!("{}: has excluded tag `{tag}`", arm.id));
        }
        if let Some(window) = arm.context_window_tokens {
            if context_tokens > window {
                return Some(format!(
                    "{}: prompt of ~{context_tokens} tokens exceeds its {window}-token context window",
                    arm.id
                ));
            }
        }
        if let Some(max) = self.max_cost_usd {
            if expected_cost_usd > max {
                return Some(format!(
                    "{}: expected cost ${} exceeds max_cost_usd ${}",
                    arm.id,
                    three_figures(expected_cost_usd),
                    three_figures(max)
                ));
            }
        }
        None
    }
}

/// `x` to three significant figures, in decimals: the amounts of a request, down to
/// fractions of a cent, neither rounded to zero nor printed to the last bit.
fn three_figures(x: f64) -> String {
    let decimals = if x == 0.0 || !x.is_finite() {
        0
    } else {
        (2.0 - x.abs().log10().floor()).clamp(0.0, 15.0) as usize
    };
    format!("{x:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_keep_three_figures() {
        assert_eq!(three_figures(2e-5), "0.0000200");
        assert_eq!(three_figures(0.0012345), "0.00123");
        assert_eq!(three_figures(12.5), "12.5");
        assert_eq!(three_figures(1500.0), "1500");
        assert_eq!(three_figures(0.0), "0");
    }

    #[test]
    fn a_misspelled_constraint_is_refused_by_name() {
        let refused = serde_json::from_str::<Constraints>(r#"{"only_arm": ["b"]}"#).unwrap_err();
        assert!(
            refused.to_string().contains("unknown field `only_arm`"),
            "{refused}"
        );
        let read: Constraints = serde_json::from_str(r#"{"only_arms": ["b"]}"#).unwrap();
        assert!(read.only_arms.contains("b"));
    }

    #[test]
    fn families_are_the_names_stems() {
        for (id, family) in [
            ("meta/llama-2-70b-chat", "llama"),
            ("llama-3-8b", "llama"),
            ("claude-instant-v1", "claude"),
            ("claude-v2", "claude"),
            ("gpt-3.5-turbo-1106", "gpt"),
            ("openai/gpt-4o", "gpt"),
            ("zero-one-ai/Yi-34B-Chat", "yi"),
            ("llama3:8b", "llama3"),
            ("mistral_7b", "mistral"),
            ("family3-size1", "family3"),
            ("a0", "a0"),
        ] {
            assert_eq!(family_of(id), family, "{id}");
        }
        assert_ne!(family_of("mixtral-8x7b"), family_of("mistral-7b"));
    }

    #[test]
    fn output_tokens_costing_inverts_the_cost() {
        let arm = Arm::new("m").with_prices(1e-6, 4e-6);
        for (input, output) in [(100.0, 250.0), (0.0, 7.0), (3000.0, 0.0)] {
            let cost = arm.cost_usd(input, output);
            let back = arm.output_tokens_costing(cost, input).unwrap();
            assert!((back - output).abs() < 1e-9, "{input} {output}: {back}");
        }
        // A cost below the input's price implies no answer, not a negative one.
        assert_eq!(arm.output_tokens_costing(5e-5, 100.0), Some(0.0));
        assert_eq!(Arm::new("u").output_tokens_costing(1e-3, 100.0), None);
    }

    #[test]
    fn a_family_tag_overrides_the_id() {
        let tuned = Arm::new("acme-support-v3")
            .with_tag("family:llama")
            .with_tag("provider:acme");
        assert_eq!(tuned.family(), "llama");
        assert!(tuned.validate().is_ok());
        // Named as an id would name it: `Llama` is the family `meta/Llama-2-70b` is in.
        let capitalized = Arm::new("acme-support-v4").with_tag("family:Llama");
        assert_eq!(capitalized.family(), Arm::new("meta/Llama-2-70b").family());
        for id in ["Mistral", "mistral"] {
            let own_id = Arm::new(id).with_tag(format!("family:{id}"));
            assert_ne!(own_id.family(), Arm::new("mistral-7b").family(), "{id}");
        }
        assert_eq!(Arm::new("llama-3-8b").family(), "llama");
        let alone = Arm::new("llama-3-8b").with_tag("family:llama-3-8b");
        assert_eq!(alone.family(), "=llama-3-8b");
        for bad in [
            Arm::new("m").with_tag("family:a").with_tag("family:b"),
            Arm::new("m").with_tag("family:"),
        ] {
            let error = bad.validate().unwrap_err().to_string();
            assert!(
                error.contains("arm `m` tags: a model has at most one `family:` tag"),
                "{error}"
            );
        }
    }

    #[test]
    fn exclusion_names_the_reason() {
        let arm = Arm::new("small").with_context_window(100).with_tag("provider:a");
        let mut c = Constraints::default();
        assert_eq!(c.exclusion(&arm, 50, 0.1), None);
        assert!(c.exclusion(&arm, 101, 0.1).unwrap().contains("context window"));
        c.require_tags.insert("vision".into());
        assert!(c.exclusion(&arm, 50, 0.1).unwrap().contains("lacks tag `vision`"));
        c.require_tags.clear();
        c.exclude_tags.insert("provider:a".into());
        assert!(c.exclusion(&arm, 50, 0.1).unwrap().contains("excluded tag"));
        c.exclude_tags.clear();
        c.max_cost_usd = Some(0.01);
        assert!(c.exclusion(&arm, 50, 0.02).unwrap().contains("max_cost_usd"));
        assert_eq!(c.exclusion(&arm, 50, 0.01), None);
    }
}
