//! Deployments: one model served by several providers, regions or keys, each with optional
//! rpm/tpm limits, a weight and tags. The learner learns per model; which deployment takes
//! a call is decided here, among those that can:
//!
//! - healthy: its own circuit breaker (`crate::health`, keyed `model@deployment`) is not
//!   open (unless every model is, when all are tried);
//! - within its limits: over the last 60 s, fewer than `rpm` calls and at most `tpm`
//!   prompt tokens with this call's; a call is counted when it starts, so concurrent
//!   calls cannot overshoot together;
//! - carrying every tag the request requires (`x-quiver-tags: region:eu`), its model's tags
//!   included, so that data-residency rules hold per request.
//!
//! Among those, `least-busy` (the default) picks the fewest calls in flight per unit of
//! weight; `latency` the lowest moving average of its latency, a failed call counted as
//! taking `upstream_timeout_ms` (untried first, and an average no call renewed for a
//! minute is forgotten, so that a slow or failing deployment is tried again). A retry goes to another deployment than
//! those that failed, where one can take it. Ties are
//! broken at random in proportion to the weights. A model without deployments is its own
//! one deployment, at its `base_url`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::health::Health;

/// The window of the rpm and tpm limits.
const LIMIT_WINDOW: Duration = Duration::from_secs(60);

/// Weight of the latest call in a deployment's latency average.
const LATENCY_SMOOTHING: f64 = 0.2;

/// How the proxy picks among a model's deployments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Fewest calls in flight per unit of weight.
    #[default]
    LeastBusy,
    /// Lowest moving average of latency.
    Latency,
}

/// One deployment of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Its name in logs, metrics and errors (default: its position, from 0).
    #[serde(default)]
    pub name: Option<String>,
    /// OpenAI-compatible base URL.
    pub base_url: String,
    /// Environment variable holding its API key (default: the model's).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The model name sent to it (default: the model's).
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// Calls per minute it accepts.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Prompt tokens per minute it accepts.
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Its share of the load among equals (default 1).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Its tags, beside its model's (e.g. `region:eu`).
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_weight() -> f64 {
    1.0
}

impl DeploymentConfig {
    /// What makes the deployment unusable, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !(self.weight > 0.0 && self.weight.is_finite()) {
            return Err(format!("weight {} must be a positive number", self.weight));
        }
        if self.rpm == Some(0) || self.tpm == Some(0) {
            return Err("rpm and tpm must be at least 1 (leave them out for no limit)".into());
        }
        crate::config::check_tags(&self.tags)?;
        crate::config::check_base_url(&self.base_url)
    }
}

/// A call's right to use one deployment, counted against its limits until released.
#[derive(Debug, Clone)]
pub struct Lease {
    route: String,
    model: String,
    /// Which of the model's deployments.
    pub index: usize,
    /// When the call was counted.
    started: Instant,
    /// The breaker's key: the model's id, or `model@deployment`.
    pub key: String,
    /// The model as this deployment serves it: its URL, key and upstream name.
    pub model_config: ModelConfig,
}

#[derive(Debug, Default)]
struct Usage {
    in_flight: u32,
    /// Calls of the last minute: when each started and its prompt tokens.
    recent: VecDeque<(Instant, u32)>,
    /// The moving average of its latency, and when its last call ended.
    latency_ms: Option<(f64, Instant)>,
}

impl Usage {
    fn forget_before(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|&(t, _)| now.duration_since(t) >= LIMIT_WINDOW)
        {
            self.recent.pop_front();
        }
    }

    /// Why a call of `tokens` prompt tokens (at most the tpm) would exceed `deployment`'s
    /// limits now, and when it would not.
    fn over_limit(
        &self,
        deployment: &DeploymentConfig,
        tokens: u32,
        now: Instant,
    ) -> Option<(String, Duration)> {
        let frees = |i: usize| {
            self.recent.get(i).map_or(Duration::ZERO, |&(t, _)| {
                (t + LIMIT_WINDOW).saturating_duration_since(now)
            })
        };
        if let Some(rpm) = deployment.rpm {
            let calls = self.recent.len();
            if calls >= rpm as usize {
                return Some((
                    format!("{calls} calls in the last minute (rpm {rpm})"),
                    frees(calls - rpm as usize),
                ));
            }
        }
        if let Some(tpm) = deployment.tpm {
            let used: u64 = self.recent.iter().map(|&(_, t)| u64::from(t)).sum();
            if used + u64::from(tokens) > u64::from(tpm) {
                // The oldest calls must leave the window until the tokens fit.
                let mut freed = 0;
                let index = self
                    .recent
                    .iter()
                    .position(|&(_, t)| {
                        freed += u64::from(t);
                        used - freed + u64::from(tokens) <= u64::from(tpm)
                    })
                    .unwrap_or(0);
                return Some((
                    format!("{used} prompt tokens in the last minute (tpm {tpm})"),
                    frees(index),
                ));
            }
        }
        None
    }
}

/// Why no deployment of a model can take a call, and how long until one could for its
/// limits (none when it is only unhealthy or untagged).
#[derive(Debug, Clone, PartialEq)]
pub struct NoDeployment {
    /// One reason per deployment.
    pub reason: String,
    /// When a deployment's limits free enough for the call, if limits are all that stop it.
    pub retry_after: Option<Duration>,
    /// No deployment carries the tags the request requires: no wait would help.
    pub untagged: bool,
    /// Every deployment that carries the tags has a tpm below the prompt's tokens: no wait
    /// would help either.
    pub too_large: bool,
}

/// The deployments' usage, by route and model.
#[derive(Debug, Default)]
pub struct Deployments {
    balance: Balance,
    usage: Mutex<BTreeMap<(String, String), Vec<Usage>>>,
}

/// A model's deployments: its own list, or itself as the one.
fn deployments_of(model: &ModelConfig) -> Vec<DeploymentConfig> {
    if !model.deployments.is_empty() {
        return model.deployments.clone();
    }
    vec![DeploymentConfig {
        name: None,
        base_url: model.base_url.clone().unwrap_or_default(),
        api_key_env: model.api_key_env.clone(),
        upstream_model: model.upstream_model.clone(),
        rpm: None,
        tpm: None,
        weight: 1.0,
        tags: Vec::new(),
    }]
}

/// The breaker keys of the deployments `model` lists (`model@name`); none for a model
/// served at its own URL, whose breaker is the model's.
pub fn deployment_keys(model: &ModelConfig) -> Vec<String> {
    (model.deployments.iter().enumerate())
        .map(|(i, deployment)| key_of(model, i, deployment))
        .collect()
}

/// The breaker key of deployment `index` of `model`: the model's id when it has none of
/// its own, so that a model's health reads as before.
fn key_of(model: &ModelConfig, index: usize, deployment: &DeploymentConfig) -> String {
    if model.deployments.is_empty() {
        return model.id.clone();
    }
    let name = deployment.name.clone().unwrap_or_else(|| index.to_string());
    format!("{}@{name}", model.id)
}

impl Deployments {
    /// Balancing by `balance`.
    pub fn new(balance: Balance) -> Self {
        Deployments {
            balance,
            usage: Mutex::default(),
        }
    }

    /// Picks a deployment of `model` on `route` for a call of `tokens` prompt tokens
    /// requiring `tags`, other than those of `tried` where another can take it, and counts
    /// the call against its limits. `forced` ignores open breakers (every model is
    /// unavailable, so all are tried); limits are never ignored.
    pub fn acquire(
        &self,
        route: &str,
        model: &ModelConfig,
        (tags, tokens, tried): (&[String], u32, &[usize]),
        (health, forced): (&Health, bool),
        now: Instant,
    ) -> Result<Lease, NoDeployment> {
        let call = Call {
            route,
            model,
            tags,
            tokens,
            tried,
            health,
            forced,
            now,
        };
        self.with_pick(&call, |deployments, states, picked| {
            let chosen = picked?;
            let state = &mut states[chosen];
            state.in_flight += 1;
            state.recent.push_back((now, tokens));
            let deployment = &deployments[chosen];
            let mut model_config = model.clone();
            model_config.base_url = Some(deployment.base_url.clone()).filter(|url| !url.is_empty());
            model_config.api_key_env = deployment.api_key_env.clone().or(model.api_key_env.clone());
            model_config.upstream_model = deployment.upstream_model.clone().or(model.upstream_model.clone());
            Ok(Lease {
                route: route.to_string(),
                model: model.id.clone(),
                index: chosen,
                started: now,
                key: key_of(model, chosen, deployment),
                model_config,
            })
        })
    }

    /// Why `model` can take no call now for a request of `tokens` prompt tokens requiring
    /// `tags`, if it cannot. Counts nothing.
    pub fn unavailable(
        &self,
        route: &str,
        model: &ModelConfig,
        (tags, tokens): (&[String], u32),
        health: &Health,
        now: Instant,
    ) -> Option<NoDeployment> {
        let call = Call {
            route,
            model,
            tags,
            tokens,
            tried: &[],
            health,
            forced: false,
            now,
        };
        self.with_pick(&call, |_, _, picked| picked.err())
    }

    /// Runs `then` on the model's deployments, their usage and the pick for `call`, under
    /// the usage's lock.
    fn with_pick<T>(
        &self,
        call: &Call<'_>,
        then: impl FnOnce(&[DeploymentConfig], &mut [Usage], Result<usize, NoDeployment>) -> T,
    ) -> T {
        let deployments = deployments_of(call.model);
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let states = states_of(&mut usage, call.route, call.model, deployments.len(), call.now);
        let picked = self.pick(call, &deployments, states);
        then(&deployments, states, picked)
    }

    /// The deployment `call` would take (see [`Deployments::acquire`]), or why none can.
    fn pick(
        &self,
        call: &Call<'_>,
        deployments: &[DeploymentConfig],
        states: &[Usage],
    ) -> Result<usize, NoDeployment> {
        let (model, now) = (call.model, call.now);
        let mut reasons = Vec::new();
        let mut wait: Option<Duration> = None;
        let mut limited_only = true;
        let (mut untagged, mut too_large) = (0, 0);
        let mut candidates = Vec::new();
        for (i, (deployment, state)) in deployments.iter().zip(states).enumerate() {
            let key = key_of(model, i, deployment);
            let missing: Vec<&String> = call
                .tags
                .iter()
                .filter(|t| !deployment.tags.contains(t) && !model.tags.contains(t))
                .collect();
            if !missing.is_empty() {
                // Never this request's: the wait of those at their limits still holds.
                reasons.push(format!("{key}: lacks tag {}", join(&missing)));
                untagged += 1;
            } else if let Some(tpm) = deployment.tpm.filter(|tpm| call.tokens > *tpm) {
                // Never this request's either, whatever its health or its last minute.
                reasons.push(format!(
                    "{key}: {} prompt tokens, more than tpm {tpm}",
                    call.tokens
                ));
                too_large += 1;
            } else if !call.forced && !call.health.admits(call.route, &key, now) {
                reasons.push(format!("{key}: circuit open"));
                limited_only = false;
            } else if let Some((why, frees)) = state.over_limit(deployment, call.tokens, now) {
                reasons.push(format!("{key}: {why}"));
                wait = Some(wait.map_or(frees, |w| w.min(frees)));
            } else {
                candidates.push(i);
            }
        }
        // Those the call has not failed on, while there are any.
        if candidates.iter().any(|i| !call.tried.contains(i)) {
            candidates.retain(|i| !call.tried.contains(i));
        }
        self.choose(&candidates, deployments, states, now)
            .ok_or_else(|| NoDeployment {
                reason: reasons.join("; "),
                retry_after: wait.filter(|_| limited_only),
                untagged: untagged == deployments.len(),
                too_large: too_large > 0 && untagged + too_large == deployments.len(),
            })
    }

    /// The candidate the balance picks, ties at random in proportion to the weights.
    fn choose(
        &self,
        candidates: &[usize],
        deployments: &[DeploymentConfig],
        states: &[Usage],
        now: Instant,
    ) -> Option<usize> {
        let load = |i: usize| match self.balance {
            Balance::LeastBusy => f64::from(states[i].in_flight) / deployments[i].weight,
            // An average no call renewed for a minute is forgotten, so that a deployment
            // that was slow or failing is tried again.
            Balance::Latency => states[i]
                .latency_ms
                .filter(|(_, at)| now.saturating_duration_since(*at) < LIMIT_WINDOW)
                .map_or(0.0, |(average, _)| average),
        };
        let best = candidates.iter().map(|&i| load(i)).min_by(f64::total_cmp)?;
        let tied: Vec<usize> = candidates.iter().copied().filter(|&i| load(i) <= best).collect();
        let total: f64 = tied.iter().map(|&i| deployments[i].weight).sum();
        let mut u = rand::random::<f64>() * total;
        for &i in &tied {
            u -= deployments[i].weight;
            if u < 0.0 {
                return Some(i);
            }
        }
        tied.last().copied()
    }

    /// Ends a call under `lease` that took `latency_ms` (None when it never got an answer).
    pub fn release(&self, lease: &Lease, latency_ms: Option<f64>) {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = usage
            .get_mut(&(lease.route.clone(), lease.model.clone()))
            .and_then(|states| states.get_mut(lease.index))
        else {
            return;
        };
        state.in_flight = state.in_flight.saturating_sub(1);
        if let Some(latency) = latency_ms {
            let average = match state.latency_ms {
                Some((average, _)) => average + LATENCY_SMOOTHING * (latency - average),
                None => latency,
            };
            state.latency_ms = Some((average, Instant::now()));
        }
    }

    /// Each deployment of a model that lists several, now: its key, calls in flight, and the
    /// calls and prompt tokens of the last minute. Empty for a model served at its own URL.
    pub fn usage(&self, route: &str, model: &ModelConfig, now: Instant) -> Vec<(String, u32, u32, u64)> {
        if model.deployments.is_empty() {
            return Vec::new();
        }
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let states = states_of(&mut usage, route, model, model.deployments.len(), now);
        model
            .deployments
            .iter()
            .zip(states.iter())
            .enumerate()
            .map(|(i, (deployment, state))| {
                let tokens = state.recent.iter().map(|&(_, t)| u64::from(t)).sum();
                (
                    key_of(model, i, deployment),
                    state.in_flight,
                    state.recent.len() as u32,
                    tokens,
                )
            })
            .collect()
    }

    /// Takes back a lease whose call was never sent: it counts against no limit.
    pub fn cancel(&self, lease: &Lease) {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = usage
            .get_mut(&(lease.route.clone(), lease.model.clone()))
            .and_then(|states| states.get_mut(lease.index))
        {
            state.in_flight = state.in_flight.saturating_sub(1);
            if let Some(i) = state.recent.iter().rposition(|&(t, _)| t == lease.started) {
                state.recent.remove(i);
            }
        }
    }
}

/// A call the deployments are asked about.
struct Call<'a> {
    route: &'a str,
    model: &'a ModelConfig,
    tags: &'a [String],
    tokens: u32,
    /// Deployments whose call failed already: others are taken first.
    tried: &'a [usize],
    health: &'a Health,
    /// Open breakers are ignored (every model is unavailable, so all are tried).
    forced: bool,
    now: Instant,
}

/// A model's deployments' usage on a route, the calls older than the window forgotten.
fn states_of<'a>(
    usage: &'a mut BTreeMap<(String, String), Vec<Usage>>,
    route: &str,
    model: &ModelConfig,
    deployments: usize,
    now: Instant,
) -> &'a mut Vec<Usage> {
    let states = usage.entry((route.to_string(), model.id.clone())).or_default();
    states.resize_with(deployments, Usage::default);
    for state in states.iter_mut() {
        state.forget_before(now);
    }
    states
}

fn join(tags: &[&String]) -> String {
    tags.iter()
        .map(|t| format!("`{t}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(deployments: Vec<DeploymentConfig>) -> ModelConfig {
        ModelConfig {
            deployments,
            ..ModelConfig::priced("m", 1.0, 2.0)
        }
    }

    fn deployment(name: &str, rpm: Option<u32>, tpm: Option<u32>, tags: &[&str]) -> DeploymentConfig {
        DeploymentConfig {
            name: Some(name.into()),
            base_url: format!("http://{name}"),
            api_key_env: None,
            upstream_model: None,
            rpm,
            tpm,
            weight: 1.0,
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// rpm and tpm hold over a sliding minute, whatever the order of calls; the wait told
    /// is until the oldest counted call leaves the window.
    #[test]
    fn limits_hold_over_a_sliding_minute() {
        let deployments = Deployments::new(Balance::LeastBusy);
        let health = Health::default();
        let m = model(vec![
            deployment("a", Some(2), None, &[]),
            deployment("b", None, Some(100), &[]),
        ]);
        let t0 = Instant::now();
        let mut used = BTreeMap::<String, u32>::new();
        for s in 0..5 {
            match deployments.acquire(
                "r",
                &m,
                (&[], 40, &[]),
                (&health, false),
                t0 + Duration::from_secs(s),
            ) {
                Ok(lease) => {
                    *used.entry(lease.key.clone()).or_default() += 1;
                    deployments.release(&lease, Some(10.0));
                }
                Err(no) => {
                    // a: 2 calls; b: 2 x 40 tokens, a third would make 120 > 100. The
                    // first call (at 0 s, on either) leaves the window first: at 60 s.
                    assert_eq!(s, 4, "{no:?}");
                    assert_eq!(no.retry_after, Some(Duration::from_secs(56)));
                }
            }
        }
        assert_eq!(used["m@a"], 2);
        assert_eq!(used["m@b"], 2);
        // A minute after the first call, a's first call has left the window.
        let later = t0 + Duration::from_secs(60);
        assert!(deployments
            .acquire("r", &m, (&[], 40, &[]), (&health, false), later)
            .is_ok());
    }

    /// Asking whether a model can take a call counts nothing; a lease cancelled before its
    /// call counts nothing either; a prompt larger than the tpm is refused with no wait, and
    /// leaves the wait of a deployment at its limits as it is.
    #[test]
    fn only_calls_sent_count_against_the_limits() {
        let deployments = Deployments::new(Balance::LeastBusy);
        let health = Health::default();
        let m = model(vec![deployment("a", Some(3), Some(1000), &[])]);
        let now = Instant::now();
        let first = deployments
            .acquire("r", &m, (&[], 10, &[]), (&health, false), now)
            .unwrap();
        deployments.cancel(&first);
        for _ in 0..10 {
            assert!(deployments
                .unavailable("r", &m, (&[], 10), &health, now)
                .is_none());
        }
        for _ in 0..3 {
            deployments
                .acquire("r", &m, (&[], 10, &[]), (&health, false), now)
                .unwrap();
        }
        let full = deployments.unavailable("r", &m, (&[], 10), &health, now).unwrap();
        assert_eq!(full.retry_after, Some(LIMIT_WINDOW));
        let fresh = model(vec![deployment("b", None, Some(100), &[])]);
        let too_long = deployments
            .unavailable("r", &fresh, (&[], 101), &health, now)
            .unwrap();
        assert!(
            too_long.reason.contains("more than tpm 100") && too_long.retry_after.is_none(),
            "{too_long:?}"
        );
        assert!(too_long.too_large && !full.too_large);
        // Beside a deployment the prompt is too large for, one at its limits still frees.
        let mixed = model(vec![
            deployment("a", Some(3), Some(1000), &[]),
            deployment("c", None, Some(5), &[]),
        ]);
        let wait = deployments
            .unavailable("r", &mixed, (&[], 10), &health, now)
            .unwrap();
        assert_eq!(wait.retry_after, Some(LIMIT_WINDOW), "{wait:?}");
        assert!(!wait.too_large, "{wait:?}");
    }

    /// A deployment whose breaker is open, or half-open with its probe under way, is not
    /// picked; its sibling is.
    #[test]
    fn unhealthy_deployments_are_passed_over() {
        let deployments = Deployments::new(Balance::LeastBusy);
        let health = Health::new(crate::health::BreakerConfig {
            window: 4,
            min_calls: 2,
            failure_rate: 0.5,
            cooldown_ms: 1000,
            max_cooldown_ms: 5000,
        });
        let m = model(vec![
            deployment("sick", None, None, &[]),
            deployment("well", None, None, &[]),
        ]);
        let t0 = Instant::now();
        health.record("r", "m@sick", true, None, (t0, t0));
        health.record("r", "m@sick", true, None, (t0, t0));
        let pick = |now| {
            deployments
                .acquire("r", &m, (&[], 1, &[]), (&health, false), now)
                .unwrap()
                .key
        };
        assert!((0..10).all(|_| pick(t0) == "m@well"));
        let later = t0 + Duration::from_millis(1500);
        assert!(health.try_call("r", "m@sick", false, later), "the probe");
        assert!((0..10).all(|_| pick(later) == "m@well"));
    }

    /// Tags rule deployments out per request; a model's own tags count for all of them.
    #[test]
    fn required_tags_choose_the_deployments() {
        let deployments = Deployments::new(Balance::LeastBusy);
        let health = Health::default();
        let mut m = model(vec![
            deployment("us", None, None, &["region:us"]),
            deployment("eu", None, None, &["region:eu"]),
        ]);
        let eu = ["region:eu".to_string()];
        for _ in 0..20 {
            let lease = deployments
                .acquire("r", &m, (&eu, 1, &[]), (&health, false), Instant::now())
                .unwrap();
            assert_eq!(lease.key, "m@eu");
            assert_eq!(lease.model_config.base_url.as_deref(), Some("http://eu"));
            deployments.release(&lease, None);
        }
        let apac = ["region:apac".to_string()];
        let no = deployments
            .acquire("r", &m, (&apac, 1, &[]), (&health, false), Instant::now())
            .unwrap_err();
        assert!(
            no.reason.contains("lacks tag `region:apac`") && no.retry_after.is_none(),
            "{no:?}"
        );
        m.tags.push("region:apac".into());
        assert!(deployments
            .acquire("r", &m, (&apac, 1, &[]), (&health, false), Instant::now())
            .is_ok());

        // The deployment with the tag at its limit: its wait holds, whatever the others lack.
        let deployments = Deployments::new(Balance::LeastBusy);
        let limited = model(vec![
            deployment("us", None, None, &["region:us"]),
            deployment("eu", Some(1), None, &["region:eu"]),
        ]);
        let t0 = Instant::now();
        let lease = deployments
            .acquire("r", &limited, (&eu, 1, &[]), (&health, false), t0)
            .unwrap();
        deployments.release(&lease, Some(10.0));
        let no = deployments
            .acquire(
                "r",
                &limited,
                (&eu, 1, &[]),
                (&health, false),
                t0 + Duration::from_secs(1),
            )
            .unwrap_err();
        assert_eq!(no.retry_after, Some(Duration::from_secs(59)), "{no:?}");
    }

    /// Least-busy spreads concurrent calls in proportion to the weights.
    #[test]
    fn least_busy_follows_the_weights() {
        let deployments = Deployments::new(Balance::LeastBusy);
        let health = Health::default();
        let mut heavy = deployment("heavy", None, None, &[]);
        heavy.weight = 3.0;
        let m = model(vec![heavy, deployment("light", None, None, &[])]);
        let leases: Vec<Lease> = (0..8)
            .map(|_| {
                deployments
                    .acquire("r", &m, (&[], 1, &[]), (&health, false), Instant::now())
                    .unwrap()
            })
            .collect();
        let heavy_calls = leases.iter().filter(|l| l.key == "m@heavy").count();
        assert_eq!(heavy_calls, 6);
    }

    /// A retry takes a deployment that has not failed the call, while one can take it.
    #[test]
    fn a_retry_goes_where_the_call_has_not_failed() {
        let deployments = Deployments::new(Balance::LeastBusy);
        let health = Health::default();
        let m = model(vec![
            deployment("a", None, None, &[]),
            deployment("b", Some(1), None, &[]),
        ]);
        let (t0, mut keys) = (Instant::now(), std::collections::BTreeSet::new());
        for _ in 0..20 {
            let lease = deployments
                .acquire("r", &m, (&[], 1, &[1]), (&health, false), t0)
                .unwrap();
            keys.insert(lease.key.clone());
            deployments.cancel(&lease);
        }
        assert_eq!(keys, ["m@a".to_string()].into());
        let lease = deployments
            .acquire("r", &m, (&[], 1, &[0]), (&health, false), t0)
            .unwrap();
        assert_eq!(lease.key, "m@b");
        deployments.release(&lease, None);
        // `b` is at its rpm: the retry goes where the call failed rather than nowhere.
        let lease = deployments
            .acquire("r", &m, (&[], 1, &[0]), (&health, false), t0)
            .unwrap();
        assert_eq!(lease.key, "m@a");
    }

    /// Latency balancing prefers the faster deployment once both are measured, until the
    /// measures are a minute old.
    #[test]
    fn latency_balance_prefers_the_faster() {
        let deployments = Deployments::new(Balance::Latency);
        let health = Health::default();
        let m = model(vec![
            deployment("slow", None, None, &[]),
            deployment("fast", None, None, &[]),
        ]);
        for _ in 0..2 {
            let lease = deployments
                .acquire("r", &m, (&[], 1, &[]), (&health, false), Instant::now())
                .unwrap();
            let latency = if lease.key == "m@slow" { 900.0 } else { 100.0 };
            deployments.release(&lease, Some(latency));
        }
        for _ in 0..10 {
            let lease = deployments
                .acquire("r", &m, (&[], 1, &[]), (&health, false), Instant::now())
                .unwrap();
            assert_eq!(lease.key, "m@fast");
            deployments.release(&lease, Some(100.0));
        }
        // A minute on with no call, both averages are forgotten: the slow one is tried again.
        let later = Instant::now() + LIMIT_WINDOW;
        let tried_again = (0..50).any(|_| {
            let lease = deployments
                .acquire("r", &m, (&[], 1, &[]), (&health, false), later)
                .unwrap();
            deployments.cancel(&lease);
            lease.key == "m@slow"
        });
        assert!(tried_again);
    }
}
