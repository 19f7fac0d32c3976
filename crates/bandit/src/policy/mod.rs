//! Policies: how a learner scores arms and picks one, behind one trait.
//!
//! A policy learns each arm's quality (from [`crate::stats`] or [`crate::ridge`]), reports
//! an [`Estimate`] per arm, and [`Policy::choose`]s among the eligible arms given the
//! per-arm penalties of cost and latency, returning the PMF it drew from. The learner
//! wraps every policy with the exploration floor (see [`crate::pmf::with_floor`]), so the
//! floor is one piece of code, not a flag in each policy.
//!
//! | policy | score of arm `a` | PMF |
//! |---|---|---|
//! | [`Uniform`] | - | `1/k` (exact) |
//! | [`EpsilonGreedy`] | `mean_a - pen_a` | `eps/k + (1-eps) 1[a = greedy]` (exact) |
//! | [`Ucb1`] | `mean_a + c sqrt(2 ln N / n_a) - pen_a` | one-hot (exact) |
//! | [`BetaTs`] | `sample Beta(alpha_a, beta_a) - pen_a` | Monte Carlo (estimated); `draws=0`: quadrature (exact) |
//! | [`GaussianTs`] | `sample N(mu_a, s_a^2) - pen_a` | Monte Carlo (estimated); `draws=0`: quadrature (exact) |
//! | [`LinUcb`] | `x'theta_a + alpha sqrt(x'A_a^-1 x) - pen_a` | one-hot (exact) |
//! | [`LinTs`] | `x'theta~_a - pen_a`, `theta~_a ~ N(theta_a, v^2 A_a^-1)` | Monte Carlo (estimated); `draws=0`: quadrature (exact) |
//! | [`Fixed`] | - | one-hot on its arm (exact) |

mod spec;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use spec::{Args, PolicySpec, DEFAULT_LEARNERS, DEFAULT_ROUTE_POLICY, MONTE_CARLO_DRAWS};

use crate::error::Result;
use crate::prior::ArmPrior;

/// The random number generator every decision draws from (seeded, serializable).
pub type DecisionRng = ChaCha8Rng;

/// A policy's view of one arm's quality in a context.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Point estimate of quality in [0, 1] (unclipped for linear models).
    pub mean: f64,
    /// Its uncertainty: the standard error (non-contextual) or `sqrt(x' A^-1 x)` (linear).
    pub std: f64,
}

/// How exactly a reported propensity is known.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PropensityKind {
    /// Read off a closed-form PMF.
    Exact,
    /// Estimated by Monte Carlo over `draws` samples of the policy's randomness.
    Estimated {
        /// Number of samples behind the estimate.
        draws: u32,
    },
}

/// What a policy is given to choose an arm.
#[derive(Debug, Clone, Copy)]
pub struct ChoiceInput<'a> {
    /// The context's features.
    pub features: &'a [f64],
    /// Indices of the eligible arms, ascending; never empty.
    pub eligible: &'a [usize],
    /// The policy's estimate for each eligible arm (same order).
    pub estimates: &'a [Estimate],
    /// Cost and latency penalty of each eligible arm, in quality points (same order).
    pub penalties: &'a [f64],
}

impl ChoiceInput<'_> {
    /// Number of eligible arms.
    pub fn len(&self) -> usize {
        self.eligible.len()
    }

    /// Whether no arm is eligible.
    pub fn is_empty(&self) -> bool {
        self.eligible.is_empty()
    }

    /// `mean - penalty` of each eligible arm: the greedy scores.
    pub fn greedy_scores(&self) -> Vec<f64> {
        self.estimates
            .iter()
            .zip(self.penalties)
            .map(|(e, p)| e.mean - p)
            .collect()
    }
}

/// A policy's pick among the eligible arms.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Position of the chosen arm in [`ChoiceInput::eligible`].
    pub position: usize,
    /// The PMF the choice was drawn from, over the eligible arms.
    pub pmf: Vec<f64>,
    /// Whether the PMF is exact or estimated.
    pub propensity: PropensityKind,
}

impl Choice {
    /// A deterministic choice: all mass on `position`.
    pub fn deterministic(k: usize, position: usize) -> Self {
        Choice {
            position,
            pmf: crate::pmf::one_hot(k, position),
            propensity: PropensityKind::Exact,
        }
    }
}

/// Thompson sampling's choice: one draw of every eligible arm's score (filled by `sample`)
/// picks the arm, and `draws` further draws estimate the PMF. The draw that picked the arm
/// is counted too, so the reported propensity is never 0 (it is at least `1/(draws+1)`).
fn thompson_choice<R: rand::Rng>(
    k: usize,
    draws: u32,
    rng: &mut R,
    first: Vec<f64>,
    sample: impl FnMut(&mut R, &mut [f64]),
) -> Choice {
    let position = crate::pmf::argmax(&first);
    let estimated = crate::pmf::monte_carlo_argmax_pmf(k, draws, rng, sample);
    let total = f64::from(draws) + 1.0;
    let pmf = estimated
        .iter()
        .enumerate()
        .map(|(a, p)| (p * f64::from(draws) + f64::from(u8::from(a == position))) / total)
        .collect();
    Choice {
        position,
        pmf,
        propensity: PropensityKind::Estimated { draws: draws + 1 },
    }
}

/// Thompson sampling over independent Gaussian scores
/// `N(mean_a - penalty_a, (scale * std_a)^2)` of the eligible arms. `first`, when given, is
/// the draw that picks the arm (linear TS draws it by Cholesky sampling); otherwise it is
/// drawn from the same normals. With `draws` 0 the PMF is exact
/// ([`crate::pmf::gaussian_argmax_pmf`]), else estimated from `draws` further draws.
fn gaussian_thompson(
    input: &ChoiceInput<'_>,
    scale: f64,
    draws: u32,
    rng: &mut DecisionRng,
    first: Option<Vec<f64>>,
) -> Choice {
    use rand_distr::{Distribution, StandardNormal};
    let means = input.greedy_scores();
    let stds: Vec<f64> = input.estimates.iter().map(|e| scale * e.std).collect();
    let sample = |rng: &mut DecisionRng, scores: &mut [f64]| {
        for ((s, m), sd) in scores.iter_mut().zip(&means).zip(&stds) {
            let z: f64 = StandardNormal.sample(rng);
            *s = m + sd * z;
        }
    };
    let first = first.unwrap_or_else(|| {
        let mut scores = vec![0.0; input.len()];
        sample(rng, &mut scores);
        scores
    });
    if draws > 0 {
        return thompson_choice(input.len(), draws, rng, first, sample);
    }
    exact_choice(&first, crate::pmf::gaussian_argmax_pmf(&means, &stds))
}

/// Thompson sampling's choice with its exact PMF: `first`, one draw of every eligible
/// arm's score, picks the arm; `pmf` says how likely each was to be the largest.
fn exact_choice(first: &[f64], mut pmf: Vec<f64>) -> Choice {
    let position = crate::pmf::argmax(first);
    // A draw beyond the quadrature's reach (odds below TAIL) still needs a propensity: TAIL,
    // whose inverse weight leaves an estimator's sums finite.
    pmf[position] = pmf[position].max(crate::pmf::TAIL);
    Choice {
        position,
        pmf,
        propensity: PropensityKind::Exact,
    }
}

/// A bandit policy: learns per-arm quality and chooses among eligible arms.
///
/// Arms are addressed by index; the learner maps ids to indices and keeps them aligned
/// through [`Policy::add_arm`] and [`Policy::remove_arm`].
pub trait Policy {
    /// Number of arms the policy knows.
    fn num_arms(&self) -> usize;

    /// The policy's quality estimate for `arm` in a context.
    fn estimate(&self, arm: usize, features: &[f64]) -> Estimate;

    /// Chooses an eligible arm; the returned PMF is the one actually sampled.
    fn choose(&self, input: &ChoiceInput<'_>, rng: &mut DecisionRng) -> Result<Choice>;

    /// Learns one observed quality in [0, 1] of `arm` in a context.
    fn update(&mut self, arm: usize, features: &[f64], quality: f64);

    /// Whether the policy holds decisions whose quality is on its way ([`Policy::hold`]);
    /// most do not.
    fn holds(&self) -> bool {
        false
    }

    /// Holds a decision of `arm` whose quality is on its way, so that the decisions before
    /// it arrives know it is coming.
    fn hold(&mut self, _arm: usize, _features: &[f64]) {}

    /// Lets go of a decision [`Policy::hold`] held: its quality came, or will not.
    fn release(&mut self, _arm: usize, _features: &[f64]) {}

    /// Learns the quality of a decision [`Policy::hold`] held: lets go of it, then learns
    /// the quality as [`Policy::update`] does (a policy may do both at once).
    fn update_held(&mut self, arm: usize, features: &[f64], quality: f64) {
        self.release(arm, features);
        self.update(arm, features, quality);
    }

    /// Appends a new arm, of family `family` ([`crate::Arm::family`]), with an optimistic
    /// prior (cold start).
    fn add_arm(&mut self, family: &str);

    /// Puts the arms in their families (`families`, in index order; see
    /// [`crate::Arm::family`]) if the policy shares strength within families, rebuilding
    /// what they share when the families changed (a tag changed, or a snapshot written
    /// before families was restored).
    fn share_families(&mut self, _families: &[String]) {}

    /// Removes an arm; arms after it shift down by one.
    fn remove_arm(&mut self, arm: usize);

    /// Adds a prior fitted offline to what `arm` has learned (see [`crate::prior`]).
    fn absorb_prior(&mut self, arm: usize, prior: &ArmPrior);

    /// How many observations `arm`'s history counts as (priors included; discounted when
    /// forgetting).
    fn observations(&self, arm: usize) -> f64;

    /// Shrinks what `arm` has learned (priors included) to count as at most `keep`
    /// observations, after a change (see [`crate::change`]): a mean keeps its value, a
    /// ridge model moves toward its prior by the prior's new share.
    fn shrink_arm(&mut self, arm: usize, keep: f64);

    /// Adds what `replica` learned since `base`, a copy of this policy's state that the
    /// replica started from: with two replicas of `base` fed two halves of a stream,
    /// `base.merge(a, base)` then `.merge(b, base)` learns what one policy fed the whole
    /// stream learns. Every policy's statistics are sums (counts and sums of quality; a
    /// ridge model's `A` and `b`), so this holds for all of them without forgetting; with a
    /// discount or a window it is refused.
    fn merge(&mut self, replica: &Self, base: &Self) -> Result<()>
    where
        Self: Sized;

    /// Sets how a Thompson policy's propensity is found (Monte Carlo draws, 0 for exact);
    /// nothing learned depends on it. Other policies ignore it.
    fn set_draws(&mut self, _draws: u32) {}
}

/// A policy's parameters: its names in specs, how they are read and written back, and how
/// they build the policy. Each policy's file implements it beside the policy.
pub trait PolicyParams: Sized {
    /// The name specs use (the canonical one first), and its aliases.
    const NAMES: &'static [&'static str];
    /// Whether its choice weighs the arms' cost and latency penalties, so that a cost
    /// weight or a budget's pacing steers it.
    const WEIGHS_COSTS: bool = true;
    /// The policy the parameters build.
    type Policy: Policy;
    /// Reads the parameters from a spec's arguments (defaults for those absent).
    fn parse(args: &mut Args<'_>) -> Result<Self>;
    /// The parameters as `key=value` arguments, in the canonical form.
    fn args(&self) -> Vec<String>;
    /// The policy for arms `arm_ids` in contexts of dimension `dim`.
    fn build(&self, arm_ids: &[&str], dim: usize, forgetting: crate::Forgetting) -> Result<Self::Policy>;
    /// A Thompson policy's `draws` (see [`Policy::set_draws`]); `None` for other policies.
    fn draws_mut(&mut self) -> Option<&mut u32> {
        None
    }
}

/// The registry of built-in policies. A new policy is one file (the policy, its `impl
/// Policy`, its parameters and their `impl PolicyParams`) and one line here:
/// `Variant: module::Policy(Params)`. The line makes it a variant of [`AnyPolicy`] (the
/// type snapshots store) and of [`PolicyKind`] (a spec's algorithm), and gives it to
/// parsing, display, building and every `Policy` method.
macro_rules! policies {
    ($($variant:ident: $module:ident::$policy:ident($params:ident)),* $(,)?) => {
        $(mod $module;)*
        $(pub use $module::{$policy, $params};)*

        /// Every built-in policy, as one serializable type (snapshots store it).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case", tag = "policy")]
        #[allow(missing_docs)]
        pub enum AnyPolicy {
            $($variant($policy),)*
        }

        /// Which algorithm, with its own parameters.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case", tag = "kind")]
        #[allow(missing_docs)]
        pub enum PolicyKind {
            $($variant($params),)*
        }

        impl PolicyKind {
            /// The algorithm called `name` (or an alias), with its parameters from `args`.
            fn parse(name: &str, args: &mut Args<'_>) -> Result<Self> {
                $(if <$params as PolicyParams>::NAMES.contains(&name) {
                    return Ok(PolicyKind::$variant(<$params as PolicyParams>::parse(args)?));
                })*
                let known = [$(<$params as PolicyParams>::NAMES[0]),*];
                Err(args.invalid(&format!("unknown policy `{name}`; use one of {}", known.join(", "))))
            }

            /// A Thompson policy's `draws` (0: the exact PMF); `None` for other policies.
            pub fn draws_mut(&mut self) -> Option<&mut u32> {
                match self {
                    $(PolicyKind::$variant(p) => p.draws_mut(),)*
                }
            }

            /// Whether its choice weighs the arms' cost and latency penalties, so that a
            /// cost weight or a budget's pacing steers it (not `random`'s or `fixed`'s).
            pub fn weighs_costs(&self) -> bool {
                match self {
                    $(PolicyKind::$variant(_) => <$params as PolicyParams>::WEIGHS_COSTS,)*
                }
            }

            /// The canonical name.
            pub fn name(&self) -> &'static str {
                match self {
                    $(PolicyKind::$variant(_) => <$params as PolicyParams>::NAMES[0],)*
                }
            }

            /// The parameters as `key=value` arguments.
            fn args(&self) -> Vec<String> {
                match self {
                    $(PolicyKind::$variant(p) => p.args(),)*
                }
            }

            fn build(&self, arm_ids: &[&str], dim: usize, forgetting: crate::Forgetting) -> Result<AnyPolicy> {
                Ok(match self {
                    $(PolicyKind::$variant(p) => AnyPolicy::$variant(p.build(arm_ids, dim, forgetting)?),)*
                })
            }
        }

        impl Policy for AnyPolicy {
            fn num_arms(&self) -> usize {
                match self { $(AnyPolicy::$variant(p) => p.num_arms(),)* }
            }
            fn estimate(&self, arm: usize, features: &[f64]) -> Estimate {
                match self { $(AnyPolicy::$variant(p) => p.estimate(arm, features),)* }
            }
            fn choose(&self, input: &ChoiceInput<'_>, rng: &mut DecisionRng) -> Result<Choice> {
                match self { $(AnyPolicy::$variant(p) => p.choose(input, rng),)* }
            }
            fn update(&mut self, arm: usize, features: &[f64], quality: f64) {
                match self { $(AnyPolicy::$variant(p) => p.update(arm, features, quality),)* }
            }
            fn holds(&self) -> bool {
                match self { $(AnyPolicy::$variant(p) => p.holds(),)* }
            }
            fn hold(&mut self, arm: usize, features: &[f64]) {
                match self { $(AnyPolicy::$variant(p) => p.hold(arm, features),)* }
            }
            fn release(&mut self, arm: usize, features: &[f64]) {
                match self { $(AnyPolicy::$variant(p) => p.release(arm, features),)* }
            }
            fn update_held(&mut self, arm: usize, features: &[f64], quality: f64) {
                match self { $(AnyPolicy::$variant(p) => p.update_held(arm, features, quality),)* }
            }
            fn add_arm(&mut self, family: &str) {
                match self { $(AnyPolicy::$variant(p) => p.add_arm(family),)* }
            }
            fn share_families(&mut self, families: &[String]) {
                match self { $(AnyPolicy::$variant(p) => p.share_families(families),)* }
            }
            fn remove_arm(&mut self, arm: usize) {
                match self { $(AnyPolicy::$variant(p) => p.remove_arm(arm),)* }
            }
            fn absorb_prior(&mut self, arm: usize, prior: &ArmPrior) {
                match self { $(AnyPolicy::$variant(p) => p.absorb_prior(arm, prior),)* }
            }
            fn observations(&self, arm: usize) -> f64 {
                match self { $(AnyPolicy::$variant(p) => p.observations(arm),)* }
            }
            fn shrink_arm(&mut self, arm: usize, keep: f64) {
                match self { $(AnyPolicy::$variant(p) => p.shrink_arm(arm, keep),)* }
            }
            fn set_draws(&mut self, draws: u32) {
                match self { $(AnyPolicy::$variant(p) => p.set_draws(draws),)* }
            }
            fn merge(&mut self, replica: &Self, base: &Self) -> Result<()> {
                match (self, replica, base) {
                    $((AnyPolicy::$variant(p), AnyPolicy::$variant(r), AnyPolicy::$variant(b)) => p.merge(r, b),)*
                    _ => Err(crate::error::ErrorKind::InvalidConfig(
                        "cannot merge policies of different kinds".into(),
                    )
                    .into()),
                }
            }
        }
    };
}

policies! {
    Uniform: uniform::Uniform(UniformParams),
    EpsilonGreedy: epsilon_greedy::EpsilonGreedy(EpsilonGreedyParams),
    Ucb1: ucb1::Ucb1(Ucb1Params),
    BetaTs: beta_ts::BetaTs(BetaTsParams),
    GaussianTs: gaussian_ts::GaussianTs(GaussianTsParams),
    LinUcb: linucb::LinUcb(LinUcbParams),
    LinTs: lin_ts::LinTs(LinTsParams),
    Fixed: fixed::Fixed(FixedParams),
}

pub use lin_ts::{DEFAULT_LINTS_LAMBDA, DEFAULT_LINTS_V};
pub use linucb::{DEFAULT_LINUCB_ALPHA, DEFAULT_LINUCB_LAMBDA};

#[cfg(test)]
pub(crate) mod testutil {
    //! Shared helpers for the policy tests.
    use super::*;

    /// Everything eligible, no penalties, estimates from the policy.
    pub fn choose_all<P: Policy>(policy: &P, x: &[f64], rng: &mut DecisionRng) -> Choice {
        let eligible: Vec<usize> = (0..policy.num_arms()).collect();
        let estimates: Vec<Estimate> = eligible.iter().map(|&a| policy.estimate(a, x)).collect();
        let penalties = vec![0.0; eligible.len()];
        let input = ChoiceInput {
            features: x,
            eligible: &eligible,
            estimates: &estimates,
            penalties: &penalties,
        };
        policy.choose(&input, rng).expect("choice")
    }
}

#[cfg(test)]
mod tests {
    use super::exact_choice;

    /// A draw the quadrature gives no mass (beyond its reach) is logged at the reach's
    /// odds, 1e-12: the smallest positive float would give it a weight of 4.5e307, and two
    /// such weights in one sum would make an estimate infinite.
    #[test]
    fn a_draw_beyond_the_quadratures_reach_keeps_weights_finite() {
        let choice = exact_choice(&[0.0, 1.0], vec![1.0, 0.0]);
        assert_eq!((choice.position, choice.pmf[1]), (1, crate::pmf::TAIL));
        let weight = 1.0 / choice.pmf[choice.position];
        assert!((weight * 1e6).is_finite());
    }
}
