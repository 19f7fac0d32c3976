//! Policy specifications: `linucb(alpha=0.3,gamma=0.999)`, `eps(0.05)`, `fixed(gpt-4o)`.
//!
//! Grammar: `name` or `name(arg,...)`, where each `arg` is `key=value` or, first only, a
//! bare value for the policy's main parameter. Every policy also takes `gamma=` (discount,
//! in (0, 1); per arm for the linear policies, see [`crate::Forgetting`]) or `window=`
//! (sliding window, in observations) for drifting rewards, and
//! `floor=` (minimum propensity of every eligible arm, for logs usable off-policy), and
//! `prune=z` (skip, in each context, an arm dominated with confidence: one that costs no
//! less than another whose quality's lower bound `mean - z std` exceeds its upper bound
//! `mean + z std`; 0, the default, prunes nothing), and `detect=h` (restart an arm whose
//! quality changed, by a CUSUM of threshold `h`: see [`crate::change`]; default
//! [`DEFAULT_DETECT`], 0 never restarts).
//!
//! | name (aliases) | parameters, defaults | main |
//! |---|---|---|
//! | `random` (`uniform`) | - | - |
//! | `eps` (`epsilon-greedy`) | `epsilon=0.1` | `epsilon` |
//! | `ucb1` | `c=1` (bonus scale) | `c` |
//! | `beta-ts` (`ts`) | `alpha=1,beta=1` (prior), `draws=0` | - |
//! | `gaussian-ts` (`gts`) | `mu0=1,sigma0=1` (prior), `noise=0.5`, `draws=0` | - |
//! | `linucb` | `alpha=0.1`, `lambda=10` (ridge; see [`DEFAULT_LINUCB_LAMBDA`]) | `alpha` |
//! | `lints` (`linear-ts`) | `v=0.05`, `lambda=10`, `draws=0` | `v` |
//! | `fixed` | `arm` | `arm` |
//!
//! `draws` is the number of Monte Carlo samples behind a Thompson policy's propensity, and
//! 0, the default, its exact PMF by quadrature (`crate::pmf::gaussian_argmax_pmf`,
//! `crate::pmf::beta_argmax_pmf`): exact propensities for off-policy evaluation, at about
//! half the cost of 256 draws for the normal scores and a tenth of it for Beta TS
//! (benches/RESULTS.md). Monte Carlo is the default only where the quadrature does not
//! apply: Beta TS with a prior below 1 ([`MONTE_CARLO_DRAWS`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{AnyPolicy, PolicyKind};
use crate::error::{Error, ErrorKind, Result};
use crate::stats::Forgetting;

/// The learners the validation suite chose (`quiver suite` on its generated, public and
/// built-in tables; benches/RESULTS.md): `quiver replay` runs both by default, and a bare
/// `linucb` or `lints` means the same ([`super::DEFAULT_LINUCB_ALPHA`], [`super::DEFAULT_LINTS_V`]).
pub const DEFAULT_LEARNERS: [&str; 2] = ["linucb(alpha=0.1)", "lints(v=0.05)"];

/// A route's policy when its configuration names none: linear TS of the suite's pair. The
/// suite cannot tell the two apart, and on a server, where feedback is late, linear TS
/// spreads a kind of prompt over the models whose estimates are close while LinUCB gives
/// it one model until feedback arrives (Chapelle and Li 2011); its log then supports
/// off-policy estimates of policies near it.
pub const DEFAULT_ROUTE_POLICY: &str = DEFAULT_LEARNERS[1];

/// A complete, validated policy specification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySpec {
    /// The algorithm and its parameters.
    pub kind: PolicyKind,
    /// How old observations are forgotten.
    pub forgetting: Forgetting,
    /// Minimum propensity of every eligible arm (capped at `1 / eligible`).
    pub floor: f64,
    /// Confidence (in standard deviations) of the domination that removes an arm from a
    /// decision; 0 keeps every arm.
    #[serde(default)]
    pub prune: f64,
    /// Threshold of the change detection that restarts an arm ([`crate::change`]); 0
    /// detects nothing. Learners restored from snapshots written before it existed take
    /// the default.
    #[serde(default = "default_detect")]
    pub detect: f64,
}

/// Monte Carlo samples behind a Thompson policy's propensity where no exact PMF applies
/// (Beta TS with a prior below 1), unless `draws=` says.
pub const MONTE_CARLO_DRAWS: u32 = 256;

/// The change detection's default threshold (benches/RESULTS.md): on the validation suite,
/// with priors fitted on the training rows, 12 lifts LinUCB's worst drift case from -2.6
/// to -2.2 points under the hull and leaves every stationary case as it was; 8 recovers
/// more (-1.2) but alarms on a steady arm about once in 6,000 observations, which cost the
/// long stationary runs of the convergence tests a tenth of the best arm's share. An arm
/// is watched only once it counts as [`crate::change::WATCHED_FROM`] observations, so a
/// short window or a strong discount leaves it unwatched.
pub const DEFAULT_DETECT: f64 = 12.0;

fn default_detect() -> f64 {
    DEFAULT_DETECT
}

impl PolicySpec {
    /// What to tell a user whose floor leaves the policy nothing to decide over `models`
    /// models: at `1 / models` or more, every decision is uniform at random.
    pub fn floor_overrides(&self, models: usize) -> Option<String> {
        let uniform = self.floor > 0.0 && models > 0 && self.floor * models as f64 >= 1.0;
        uniform.then(|| {
            format!(
                "policy `{self}`: a floor of {} over {models} models is at least 1/{models}, so \
                 every decision is uniform at random and the policy decides nothing; a floor \
                 well under 1/{models} keeps it",
                self.floor
            )
        })
    }

    /// A spec with no forgetting and no floor, detecting changes by default.
    pub fn new(kind: PolicyKind) -> Self {
        PolicySpec {
            kind,
            forgetting: Forgetting::None,
            floor: 0.0,
            prune: 0.0,
            detect: DEFAULT_DETECT,
        }
    }

    /// Whether `other` differs from this spec at most in a Thompson policy's `draws`, which
    /// say how the propensity is found and change nothing that is learned.
    pub fn learns_as(&self, other: &PolicySpec) -> bool {
        let mut same = self.clone();
        let mut other = other.clone();
        if let (Some(a), Some(b)) = (same.kind.draws_mut(), other.kind.draws_mut()) {
            *a = *b;
        }
        same == other
    }

    /// Whether what the policy learns is sums alone, which replicas add up
    /// ([`crate::Learner::merge`]); if not, why: a discount, a window and a restart on a
    /// detected change each depend on the order of the whole stream, which no replica sees.
    pub fn check_additive(&self) -> Result<()> {
        let reason = if let Forgetting::Discount { gamma } = self.forgetting {
            format!("it discounts what it learned (gamma={gamma})")
        } else if let Forgetting::Window { size } = self.forgetting {
            format!("it forgets what falls out of its window (window={size})")
        } else if self.detect > 0.0 {
            format!(
                "it restarts an arm on a detected change (detect={}{}); write detect=0",
                self.detect,
                if self.detect == DEFAULT_DETECT {
                    ", the default"
                } else {
                    ""
                }
            )
        } else {
            return Ok(());
        };
        Err(ErrorKind::InvalidConfig(format!(
            "`{self}` cannot be shared between replicas, whose statistics add up as sums: {reason}"
        ))
        .into())
    }

    /// Builds the policy for arms `arm_ids` and contexts of dimension `dim`.
    pub fn build(&self, arm_ids: &[&str], dim: usize) -> Result<AnyPolicy> {
        self.kind.build(arm_ids, dim, self.forgetting)
    }
}

/// A spec's arguments, `key=value` pairs and a leading bare value, consumed one by one by
/// the policy's [`super::PolicyParams::parse`] so that leftovers are reported.
pub struct Args<'a> {
    spec: &'a str,
    main: Option<&'a str>,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Args<'a> {
    /// The spec's refusal, with `reason`.
    pub fn invalid(&self, reason: &str) -> Error {
        Error::invalid_spec(self.spec, reason)
    }

    /// The value of `key`, or (for the policy's main parameter) the bare value.
    pub fn take(&mut self, key: &str, is_main: bool) -> Option<&'a str> {
        if let Some(i) = self.pairs.iter().position(|(k, _)| *k == key) {
            return Some(self.pairs.remove(i).1);
        }
        if is_main {
            self.main.take()
        } else {
            None
        }
    }

    /// The number `key` (see [`Args::take`]), `default` when absent, refused outside
    /// `[lo, hi]` (named `range` in the message).
    pub fn number(
        &mut self,
        key: &str,
        is_main: bool,
        default: f64,
        lo: f64,
        hi: f64,
        range: &str,
    ) -> Result<f64> {
        let Some(raw) = self.take(key, is_main) else {
            return Ok(default);
        };
        let value: f64 = raw
            .parse()
            .map_err(|_| Error::invalid_spec(self.spec, format!("{key}={raw} is not a number")))?;
        if !value.is_finite() || value < lo || value > hi {
            return Err(Error::invalid_spec(
                self.spec,
                format!("{key}={raw} must be in {range}"),
            ));
        }
        Ok(value)
    }

    /// A number in `(0, inf)`.
    pub fn positive(&mut self, key: &str, is_main: bool, default: f64) -> Result<f64> {
        let v = self.number(key, is_main, default, 0.0, f64::MAX, "(0, inf)")?;
        if v > 0.0 {
            Ok(v)
        } else {
            Err(Error::invalid_spec(
                self.spec,
                format!("{key} must be in (0, inf)"),
            ))
        }
    }

    /// `draws` of a Thompson policy: Monte Carlo samples behind its propensity, in
    /// `[1, 1000000]`, or 0 for its exact PMF; `default` when absent.
    pub fn draws(&mut self, default: u32) -> Result<u32> {
        let draws = self.number("draws", false, f64::from(default), 0.0, 1e6, "[0, 1000000]")?;
        if draws.fract() != 0.0 {
            return Err(self.invalid(&format!("draws={draws} must be a whole number")));
        }
        Ok(draws as u32)
    }
}

impl FromStr for PolicySpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        let (name, body) = match spec.find('(') {
            Some(open) => {
                let body = spec[open + 1..]
                    .strip_suffix(')')
                    .ok_or_else(|| Error::invalid_spec(spec, "missing closing `)`"))?;
                (&spec[..open], body)
            }
            None => (spec, ""),
        };
        let mut args = Args {
            spec,
            main: None,
            pairs: Vec::new(),
        };
        for (i, part) in body
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            match part.split_once('=') {
                Some((k, _)) if args.pairs.iter().any(|(given, _)| *given == k.trim()) => {
                    return Err(Error::invalid_spec(
                        spec,
                        format!("`{}` is given twice", k.trim()),
                    ))
                }
                Some((k, v)) => args.pairs.push((k.trim(), v.trim())),
                None if i == 0 => args.main = Some(part),
                None => {
                    return Err(Error::invalid_spec(
                        spec,
                        format!("argument `{part}` needs the form key=value"),
                    ))
                }
            }
        }
        let kind = PolicyKind::parse(&name.trim().to_ascii_lowercase(), &mut args)?;
        let gamma = args.take("gamma", false);
        let window = args.take("window", false);
        let forgetting = match (gamma, window) {
            (Some(_), Some(_)) => return Err(Error::invalid_spec(spec, "give gamma= or window=, not both")),
            (Some(g), None) => match g.parse::<f64>() {
                Ok(gamma) if gamma > 0.0 && gamma < 1.0 => Forgetting::Discount { gamma },
                _ => return Err(Error::invalid_spec(spec, format!("gamma={g} must be in (0, 1)"))),
            },
            (None, Some(w)) => match w.parse::<usize>() {
                Ok(size) if size >= 1 => Forgetting::Window { size },
                _ => {
                    return Err(Error::invalid_spec(
                        spec,
                        format!("window={w} must be a whole number >= 1"),
                    ))
                }
            },
            (None, None) => Forgetting::None,
        };
        let floor = args.number("floor", false, 0.0, 0.0, 1.0, "[0, 1]")?;
        let prune = args.number("prune", false, 0.0, 0.0, 10.0, "[0, 10]")?;
        let detect = args.number("detect", false, DEFAULT_DETECT, 0.0, 1e6, "[0, 1e6]")?;
        if let Some(main) = args.main {
            return Err(Error::invalid_spec(
                spec,
                format!("`{name}` takes no bare argument (got `{main}`)"),
            ));
        }
        if let Some((k, _)) = args.pairs.first() {
            return Err(Error::invalid_spec(
                spec,
                format!("unknown parameter `{k}` for `{name}`"),
            ));
        }
        Ok(PolicySpec {
            kind,
            forgetting,
            floor,
            prune,
            detect,
        })
    }
}

impl fmt::Display for PolicySpec {
    /// The canonical form, which parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut args = self.kind.args();
        match self.forgetting {
            Forgetting::None => {}
            Forgetting::Discount { gamma } => args.push(format!("gamma={gamma}")),
            Forgetting::Window { size } => args.push(format!("window={size}")),
        }
        if self.floor > 0.0 {
            args.push(format!("floor={}", self.floor));
        }
        if self.prune > 0.0 {
            args.push(format!("prune={}", self.prune));
        }
        if self.detect != DEFAULT_DETECT {
            args.push(format!("detect={}", self.detect));
        }
        let name = self.kind.name();
        if args.is_empty() {
            write!(f, "{name}")
        } else {
            write!(f, "{name}({})", args.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_policies_that_learn_sums_are_additive() {
        for additive in [
            "linucb(detect=0)",
            "lints(v=0.1,detect=0)",
            "beta-ts(detect=0,floor=0.01)",
        ] {
            let spec: PolicySpec = additive.parse().unwrap();
            assert!(spec.check_additive().is_ok(), "{additive}");
        }
        for (spec, reason) in [
            ("linucb", "detect=12, the default); write detect=0"),
            ("linucb(detect=5)", "detect=5); write detect=0"),
            ("lints(gamma=0.99,detect=0)", "gamma=0.99"),
            ("beta-ts(window=100,detect=0)", "window=100"),
        ] {
            let err = spec.parse::<PolicySpec>().unwrap().check_additive().unwrap_err();
            assert!(err.to_string().contains(reason), "{spec}: {err}");
        }
    }
    use crate::policy::{
        EpsilonGreedyParams, FixedParams, LinUcbParams, UniformParams, DEFAULT_LINUCB_LAMBDA,
    };

    #[test]
    fn specs_parse_with_main_argument_and_common_parameters() {
        let s: PolicySpec = "linucb(alpha=0.3,gamma=0.999)".parse().unwrap();
        assert_eq!(
            s.kind,
            PolicyKind::LinUcb(LinUcbParams {
                alpha: 0.3,
                lambda: DEFAULT_LINUCB_LAMBDA
            })
        );
        assert_eq!(s.forgetting, Forgetting::Discount { gamma: 0.999 });
        let s: PolicySpec = "eps(0.05)".parse().unwrap();
        assert_eq!(
            s.kind,
            PolicyKind::EpsilonGreedy(EpsilonGreedyParams { epsilon: 0.05 })
        );
        let s: PolicySpec = "fixed(openai/gpt-4o:2024-08)".parse().unwrap();
        assert_eq!(
            s.kind,
            PolicyKind::Fixed(FixedParams {
                arm: "openai/gpt-4o:2024-08".into()
            })
        );
        let s: PolicySpec = "lints(v=0.2,window=500,floor=0.01)".parse().unwrap();
        assert_eq!(s.forgetting, Forgetting::Window { size: 500 });
        assert_eq!(s.floor, 0.01);
        assert_eq!(
            "random".parse::<PolicySpec>().unwrap().kind,
            PolicyKind::Uniform(UniformParams {})
        );
    }

    /// A bare `linucb` or `lints` is the learner the suite chose, the one `quiver replay`
    /// runs and a route serves by default.
    #[test]
    fn bare_linear_specs_are_the_suites_choices() {
        let spec = |text: &str| text.parse::<PolicySpec>().unwrap();
        assert_eq!(spec("linucb"), spec(DEFAULT_LEARNERS[0]));
        assert_eq!(spec("lints"), spec(DEFAULT_LEARNERS[1]));
        assert_eq!(
            spec(DEFAULT_ROUTE_POLICY).to_string(),
            "lints(v=0.05,lambda=10,draws=0)"
        );
    }

    /// Thompson policies find exact propensities unless told otherwise, except Beta TS with
    /// a prior below 1, where the quadrature does not apply; `draws` alone changes nothing
    /// learned.
    #[test]
    fn thompson_policies_default_to_exact_propensities() {
        let draws = |text: &str| text.parse::<PolicySpec>().unwrap().kind.draws_mut().copied();
        assert_eq!(draws("lints(v=0.1)"), Some(0));
        assert_eq!(draws("gaussian-ts"), Some(0));
        assert_eq!(draws("beta-ts"), Some(0));
        assert_eq!(draws("beta-ts(alpha=0.5)"), Some(MONTE_CARLO_DRAWS));
        assert_eq!(draws("beta-ts(alpha=0.5,draws=8)"), Some(8));
        assert_eq!(draws("linucb"), None);
        let spec = |text: &str| text.parse::<PolicySpec>().unwrap();
        assert!(spec("lints(v=0.1)").learns_as(&spec("lints(v=0.1,draws=256)")));
        assert!(!spec("lints(v=0.1)").learns_as(&spec("lints(v=0.2,draws=256)")));
        assert!(!spec("lints(v=0.1)").learns_as(&spec("lints(v=0.1,floor=0.01)")));
        // A floor of 1/K or more over K models leaves nothing to decide.
        let floored = spec("lints(v=0.1,floor=0.05)");
        assert_eq!(floored.floor_overrides(19), None);
        assert!(floored.floor_overrides(20).unwrap().contains("at least 1/20"));
        assert_eq!(spec("lints(v=0.1)").floor_overrides(100), None);
        assert!(spec("linucb").learns_as(&spec("linucb")));
    }

    #[test]
    fn specs_serialize_as_snapshots_hold_them() {
        let json = |text: &str| serde_json::to_value(text.parse::<PolicySpec>().unwrap().kind).unwrap();
        assert_eq!(json("random"), serde_json::json!({"kind": "uniform"}));
        assert_eq!(
            json("lints(v=0.1)"),
            serde_json::json!({"kind": "lin_ts", "v": 0.1, "lambda": 10.0, "draws": 0})
        );
        let kind: PolicyKind =
            serde_json::from_value(serde_json::json!({"kind": "fixed", "arm": "a"})).unwrap();
        assert_eq!(kind, PolicyKind::Fixed(FixedParams { arm: "a".into() }));
    }

    #[test]
    fn a_spec_from_before_change_detection_takes_the_default() {
        let mut old = serde_json::to_value("linucb(alpha=0.5)".parse::<PolicySpec>().unwrap()).unwrap();
        old.as_object_mut().unwrap().remove("detect");
        let spec: PolicySpec = serde_json::from_value(old).unwrap();
        assert_eq!(spec.detect, DEFAULT_DETECT);
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "random",
            "eps(epsilon=0.05,floor=0.01)",
            "ucb1(c=0.5,window=100)",
            "beta-ts(alpha=1,beta=2,draws=64,gamma=0.99)",
            "gaussian-ts(mu0=1,sigma0=0.5,noise=0.25,draws=256)",
            "linucb(alpha=0.3,lambda=1,gamma=0.999)",
            "lints(v=0.5,lambda=2,draws=128,detect=5)",
            "lints(v=0.5,lambda=2,draws=0)",
            "gaussian-ts(mu0=1,sigma0=1,noise=0.5,draws=0)",
            "beta-ts(alpha=1,beta=1,draws=0)",
            "ucb1(c=0.5,detect=0)",
            "fixed(arm=gpt-4o)",
        ] {
            let spec: PolicySpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
            assert_eq!(spec.to_string().parse::<PolicySpec>().unwrap(), spec);
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let msg = |s: &str| s.parse::<PolicySpec>().unwrap_err().to_string();
        assert_eq!(
            msg("eps(1.5)"),
            "policy `eps(1.5)`: epsilon=1.5 must be in [0, 1]"
        );
        assert_eq!(
            msg("linucb(alpha=x)"),
            "policy `linucb(alpha=x)`: alpha=x is not a number"
        );
        assert_eq!(
            msg("linucb(beta=1)"),
            "policy `linucb(beta=1)`: unknown parameter `beta` for `linucb`"
        );
        assert_eq!(
            msg("ucb1(gamma=1)"),
            "policy `ucb1(gamma=1)`: gamma=1 must be in (0, 1)"
        );
        assert!(msg("magic").contains("unknown policy `magic`"));
        assert!(msg("fixed").contains("fixed needs an arm"));
        assert!(msg("linucb(alpha=1").contains("missing closing"));
        assert!(msg("eps(gamma=0.9,window=5)").contains("not both"));
        assert!(msg("lints(lambda=0)").contains("lambda must be in (0, inf)"));
        assert!(msg("random(0.3)").contains("takes no bare argument"));
        // Thompson policies take draws in [0, 10^6] (0: the exact PMF); others take none.
        assert!(msg("lints(draws=-1)").contains("draws=-1 must be in [0, 1000000]"));
        assert!(msg("ucb1(draws=0)").contains("unknown parameter `draws`"));
        assert!(msg("beta-ts(alpha=0.5,draws=0)").contains("needs alpha and beta of at least 1"));
        assert!(msg("lints(draws=1.5)").contains("draws=1.5 must be a whole number"));
        assert!(msg("eps(epsilon=0.1, epsilon=0.2)").contains("`epsilon` is given twice"));
    }

    #[test]
    fn fixed_resolves_its_arm_or_names_the_missing_one() {
        let spec: PolicySpec = "fixed(b)".parse().unwrap();
        assert!(spec.build(&["a", "b"], 3).is_ok());
        assert_eq!(
            spec.build(&["a", "c"], 3).unwrap_err().to_string(),
            "unknown arm `b` (the arms: a, c)"
        );
    }
}
