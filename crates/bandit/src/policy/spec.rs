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
//! | `beta-ts` (`ts`) | `alpha=1,beta=1` (prior), `draws=256` | - |
//! | `gaussian-ts` (`gts`) | `mu0=1,sigma0=1` (prior), `noise=0.5`, `draws=256` | - |
//! | `linucb` | `alpha=1`, `lambda=10` (ridge; see [`DEFAULT_LINUCB_LAMBDA`]) | `alpha` |
//! | `lints` (`linear-ts`) | `v=0.5`, `lambda=10`, `draws=256` | `v` |
//! | `fixed` | `arm` | `arm` |
//!
//! `draws` is the number of Monte Carlo samples behind a Thompson policy's propensity.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{AnyPolicy, BetaTs, EpsilonGreedy, Fixed, GaussianTs, LinTs, LinUcb, Ucb1, Uniform};
use crate::error::{Error, ErrorKind, Result};
use crate::stats::Forgetting;

/// Which algorithm, with its own parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[allow(missing_docs)]
pub enum PolicyKind {
    Uniform,
    EpsilonGreedy {
        epsilon: f64,
    },
    Ucb1 {
        c: f64,
    },
    BetaTs {
        alpha: f64,
        beta: f64,
        draws: u32,
    },
    GaussianTs {
        mu0: f64,
        sigma0: f64,
        noise: f64,
        draws: u32,
    },
    LinUcb {
        alpha: f64,
        lambda: f64,
    },
    LinTs {
        v: f64,
        lambda: f64,
        draws: u32,
    },
    Fixed {
        arm: String,
    },
}

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

const DEFAULT_DRAWS: u32 = 256;

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

    /// Builds the policy for arms `arm_ids` and contexts of dimension `dim`.
    pub fn build(&self, arm_ids: &[&str], dim: usize) -> Result<AnyPolicy> {
        let k = arm_ids.len();
        let f = self.forgetting;
        Ok(match &self.kind {
            PolicyKind::Uniform => AnyPolicy::Uniform(Uniform::new(k, f)),
            PolicyKind::EpsilonGreedy { epsilon } => {
                AnyPolicy::EpsilonGreedy(EpsilonGreedy::new(k, *epsilon, f))
            }
            PolicyKind::Ucb1 { c } => AnyPolicy::Ucb1(Ucb1::new(k, *c, f)),
            PolicyKind::BetaTs { alpha, beta, draws } => {
                AnyPolicy::BetaTs(BetaTs::new(k, *alpha, *beta, *draws, f))
            }
            PolicyKind::GaussianTs {
                mu0,
                sigma0,
                noise,
                draws,
            } => AnyPolicy::GaussianTs(GaussianTs::new(k, *mu0, *sigma0, *noise, *draws, f)),
            PolicyKind::LinUcb { alpha, lambda } => {
                AnyPolicy::LinUcb(LinUcb::new(k, dim, *alpha, *lambda, f))
            }
            PolicyKind::LinTs { v, lambda, draws } => {
                AnyPolicy::LinTs(LinTs::new(k, dim, *v, *lambda, *draws, f))
            }
            PolicyKind::Fixed { arm } => {
                let index = arm_ids.iter().position(|id| id == arm).ok_or_else(|| {
                    Error::from(ErrorKind::UnknownArm {
                        id: arm.clone(),
                        known: arm_ids.iter().map(|a| a.to_string()).collect(),
                    })
                })?;
                AnyPolicy::Fixed(Fixed::new(k, index))
            }
        })
    }
}

/// LinUCB's default ridge prior, chosen by the validation suite (`quiver suite`, recorded
/// in benches/RESULTS.md): with 64 hashed features and tens of models, `lambda = 1` leaves
/// each model's ridge so loose that the learner explores dominated models and lost 4.3
/// points to the hull on average; `lambda = 10` lost 0.4, `lambda = 30` 1.1.
pub const DEFAULT_LINUCB_LAMBDA: f64 = 10.0;

/// Linear TS's default ridge prior, chosen by the same suite: `lints(v=0.3)` lost 5.9
/// points to the hull on average at `lambda = 1`, 3.0 at 10 and 30; `lints(v=0.1)` 0.2 at 10.
pub const DEFAULT_LINTS_LAMBDA: f64 = 10.0;

impl Default for PolicySpec {
    /// `linucb(alpha=1,lambda=10)`.
    fn default() -> Self {
        PolicySpec::new(PolicyKind::LinUcb {
            alpha: 1.0,
            lambda: DEFAULT_LINUCB_LAMBDA,
        })
    }
}

/// Parsed `key=value` arguments, consumed one by one so that leftovers are reported.
struct Args<'a> {
    spec: &'a str,
    main: Option<&'a str>,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Args<'a> {
    fn take(&mut self, key: &str, is_main: bool) -> Option<&'a str> {
        if let Some(i) = self.pairs.iter().position(|(k, _)| *k == key) {
            return Some(self.pairs.remove(i).1);
        }
        if is_main {
            self.main.take()
        } else {
            None
        }
    }

    fn number(
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

    fn positive(&mut self, key: &str, is_main: bool, default: f64) -> Result<f64> {
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

    fn draws(&mut self) -> Result<u32> {
        Ok(self.number("draws", false, f64::from(DEFAULT_DRAWS), 1.0, 1e6, "[1, 1000000]")? as u32)
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
        let kind = match name.trim().to_ascii_lowercase().as_str() {
            "random" | "uniform" => PolicyKind::Uniform,
            "eps" | "epsilon-greedy" | "egreedy" => PolicyKind::EpsilonGreedy {
                epsilon: args.number("epsilon", true, 0.1, 0.0, 1.0, "[0, 1]")?,
            },
            "ucb1" | "ucb" => PolicyKind::Ucb1 {
                c: args.number("c", true, 1.0, 0.0, f64::MAX, "[0, inf)")?,
            },
            "beta-ts" | "ts" | "bts" => PolicyKind::BetaTs {
                alpha: args.positive("alpha", false, 1.0)?,
                beta: args.positive("beta", false, 1.0)?,
                draws: args.draws()?,
            },
            "gaussian-ts" | "gts" => PolicyKind::GaussianTs {
                mu0: args.number("mu0", false, 1.0, f64::MIN, f64::MAX, "(-inf, inf)")?,
                sigma0: args.positive("sigma0", false, 1.0)?,
                noise: args.positive("noise", false, 0.5)?,
                draws: args.draws()?,
            },
            "linucb" => PolicyKind::LinUcb {
                alpha: args.number("alpha", true, 1.0, 0.0, f64::MAX, "[0, inf)")?,
                lambda: args.positive("lambda", false, DEFAULT_LINUCB_LAMBDA)?,
            },
            "lints" | "linear-ts" | "lin-ts" => PolicyKind::LinTs {
                v: args.positive("v", true, 0.5)?,
                lambda: args.positive("lambda", false, DEFAULT_LINTS_LAMBDA)?,
                draws: args.draws()?,
            },
            "fixed" => PolicyKind::Fixed {
                arm: args
                    .take("arm", true)
                    .ok_or_else(|| Error::invalid_spec(spec, "fixed needs an arm, e.g. fixed(gpt-4o)"))?
                    .to_string(),
            },
            other => {
                return Err(Error::invalid_spec(
                    spec,
                    format!(
                        "unknown policy `{other}`; use one of random, eps, ucb1, beta-ts, gaussian-ts, linucb, lints, fixed"
                    ),
                ))
            }
        };
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
        let mut args: Vec<String> = match &self.kind {
            PolicyKind::Uniform => vec![],
            PolicyKind::EpsilonGreedy { epsilon } => vec![format!("epsilon={epsilon}")],
            PolicyKind::Ucb1 { c } => vec![format!("c={c}")],
            PolicyKind::BetaTs { alpha, beta, draws } => {
                vec![
                    format!("alpha={alpha}"),
                    format!("beta={beta}"),
                    format!("draws={draws}"),
                ]
            }
            PolicyKind::GaussianTs {
                mu0,
                sigma0,
                noise,
                draws,
            } => vec![
                format!("mu0={mu0}"),
                format!("sigma0={sigma0}"),
                format!("noise={noise}"),
                format!("draws={draws}"),
            ],
            PolicyKind::LinUcb { alpha, lambda } => {
                vec![format!("alpha={alpha}"), format!("lambda={lambda}")]
            }
            PolicyKind::LinTs { v, lambda, draws } => {
                vec![
                    format!("v={v}"),
                    format!("lambda={lambda}"),
                    format!("draws={draws}"),
                ]
            }
            PolicyKind::Fixed { arm } => vec![format!("arm={arm}")],
        };
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
        let name = match self.kind {
            PolicyKind::Uniform => "random",
            PolicyKind::EpsilonGreedy { .. } => "eps",
            PolicyKind::Ucb1 { .. } => "ucb1",
            PolicyKind::BetaTs { .. } => "beta-ts",
            PolicyKind::GaussianTs { .. } => "gaussian-ts",
            PolicyKind::LinUcb { .. } => "linucb",
            PolicyKind::LinTs { .. } => "lints",
            PolicyKind::Fixed { .. } => "fixed",
        };
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
    fn specs_parse_with_main_argument_and_common_parameters() {
        let s: PolicySpec = "linucb(alpha=0.3,gamma=0.999)".parse().unwrap();
        assert_eq!(
            s.kind,
            PolicyKind::LinUcb {
                alpha: 0.3,
                lambda: DEFAULT_LINUCB_LAMBDA
            }
        );
        assert_eq!(s.forgetting, Forgetting::Discount { gamma: 0.999 });
        let s: PolicySpec = "eps(0.05)".parse().unwrap();
        assert_eq!(s.kind, PolicyKind::EpsilonGreedy { epsilon: 0.05 });
        let s: PolicySpec = "fixed(openai/gpt-4o:2024-08)".parse().unwrap();
        assert_eq!(
            s.kind,
            PolicyKind::Fixed {
                arm: "openai/gpt-4o:2024-08".into()
            }
        );
        let s: PolicySpec = "lints(v=0.2,window=500,floor=0.01)".parse().unwrap();
        assert_eq!(s.forgetting, Forgetting::Window { size: 500 });
        assert_eq!(s.floor, 0.01);
        assert_eq!("random".parse::<PolicySpec>().unwrap().kind, PolicyKind::Uniform);
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
