//! `quiver-bandit`: the learning core of Quiver, an adaptive router for LLM requests.
//!
//! Pure computation: no I/O, no clocks, no async (the crate's `clippy.toml` refuses the
//! clock, file and unseeded random calls). The serving layer and the simulator both drive
//! the same [`Learner`], so a policy behaves identically offline and online.
//!
//! # The story
//!
//! A request's prompt becomes a [`Context`] through a [`Featurizer`] (the built-in
//! [`HashingFeaturizer`] documents its 64-dimensional layout; an [`EmbeddingFeaturizer`]
//! appends a sentence embedding's block). The [`Learner`] asks its
//! [`Policy`] for an [`Estimate`] of each eligible [`Arm`]'s quality, subtracts each arm's
//! expected cost and latency weighted by the request's [`Objective`] (see [`usage`]), and
//! lets the policy choose. An exploration floor wraps every policy ([`pmf::with_floor`]).
//! The [`Decision`] carries the arm, its propensity, the fallback order and the per-arm
//! explanation. When the call returns, [`Learner::record_outcome`] learns cost and latency
//! at once; quality may come with it or later through [`Learner::record_quality`], and is
//! learned exactly once.
//!
//! ```
//! use quiver_bandit::{Arm, Featurizer, HashingFeaturizer, Learner, LearnerConfig, Outcome, Request};
//!
//! let featurizer = HashingFeaturizer::default();
//! let arms = vec![
//!     Arm::new("gpt-4o").with_prices(2.5e-6, 1e-5),
//!     Arm::new("gpt-4o-mini").with_prices(1.5e-7, 6e-7),
//! ];
//! let policy = "linucb(alpha=0.5)".parse().unwrap();
//! let mut learner = Learner::new(LearnerConfig::new(policy, featurizer.dim()), arms).unwrap();
//!
//! let context = featurizer.featurize("What is 17 * 23?", &[]).unwrap();
//! let decision = learner.decide(&Request::new(context)).unwrap();
//! assert!(decision.propensity > 0.0);
//! learner
//!     .record_outcome(decision.id, &Outcome::new(420.0, 0.0003).with_quality(1.0))
//!     .unwrap();
//! ```
//!
//! # Why quality is learned apart from cost and latency
//!
//! Cost and latency are observed on every call and move slowly; quality is the expensive,
//! often late signal. Keeping separate estimates and combining them only at decision time,
//! `reward = quality - w_cost * cost_usd - w_latency * latency_s`, lets each request set its
//! own trade-off (and a budget pacer move the cost weight) without relearning anything.
//! Quality is in [0, 1], so every policy learns on one scale whatever the prices are.
//!
//! # State
//!
//! All learned state is additive sufficient statistics (counts and sums; `A` and `b` of
//! the ridge models; the ridge's inverse, estimate and factor are caches derived from
//! them, kept and serialized apart: a model read without them recomputes them), so a
//! learner merges what a replica learned since a common snapshot
//! ([`Learner::merge`]; not under a discount or a window, whose forgetting depends on the
//! order of the whole stream). [`Learner::snapshot`] captures it with a
//! format version; decision `i` draws from stream `i` of the configured seed, so a restored
//! learner decides bit-identically to the original.

#![deny(missing_docs)]

pub mod arm;
pub mod canary;
pub mod change;
pub mod cost;
pub mod embedding;
mod error;
pub mod features;
pub mod hull;
pub mod learner;
pub mod limits;
pub mod ope;
pub mod outcome;
mod packed;
pub mod pmf;
pub mod policy;
pub mod prior;
pub mod ridge;
pub mod shadow;
pub mod spend;
pub mod stats;
pub mod usage;
mod vectors;

pub use arm::{Arm, Constraints};
#[cfg(feature = "minilm")]
pub use embedding::MiniLm;
pub use embedding::{ContextLayout, Embedder, EmbeddingBlock, EmbeddingFeaturizer};
pub use error::{Error, ErrorKind, Result};
pub use features::{ChatMessage, Context, Featurizer, FeaturizerConfig, HashingFeaturizer};
pub use learner::{
    Applied, ArmChoice, ArmEstimate, BudgetConfig, Decision, Learner, LearnerConfig, LoggedTerms, PmfChoice,
    Request, Snapshot, DEFAULT_FEEDBACK_HORIZON, DEFAULT_PACING_STEP, HOLD_HORIZON, SNAPSHOT_VERSION,
};
pub use outcome::{credited_quality, BudgetPacer, Objective, ObjectiveOverride, Outcome};
pub use packed::PackedSymmetric;
pub use policy::{
    AnyPolicy, Estimate, Policy, PolicyKind, PolicySpec, PropensityKind, DEFAULT_LEARNERS,
    DEFAULT_ROUTE_POLICY,
};
pub use prior::{ArmPrior, PriorCoverage, Priors};
pub use spend::SpendCurve;
pub use stats::Forgetting;
