//! The in-process router: learners per route, the decision log and snapshots.
//!
//! Data flows one way: request -> features -> decision -> log -> (call) -> outcome ->
//! update -> log. Every state change is staged in the log as it is applied and comes back
//! as a [`Pending`] result, which [`Pending::wait`] releases once the log holds the change
//! durably (group commit: see [`quiver_log`]), so nothing is acknowledged before it is
//! fsynced while concurrent callers share fsyncs. On [`Router::open`] the last snapshot is
//! restored and the log records after it are replayed, so the learners equal those of a
//! run that never stopped.
//!
//! Snapshots hold what the learners learned but not the decisions awaiting feedback: those
//! can number up to the feedback horizon (100,000 by default), with their features, and
//! the log holds them already. A snapshot instead names, per route, the oldest decision it
//! still tracks and where the log wrote it; on open the log is read from there, and records
//! the snapshot already learned from only re-register their decisions. A snapshot's size
//! and its write then stay those of the models, however much feedback is outstanding.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use quiver_bandit::canary::{CanaryReport, Stage};
use quiver_bandit::shadow::{Draws, ShadowReport, Shadows};
use quiver_bandit::{
    Applied, Arm, ArmEstimate, BudgetConfig, ChatMessage, Constraints, Context, ContextLayout, Decision,
    HashingFeaturizer, Learner, LearnerConfig, LoggedTerms, Objective, ObjectiveOverride, Outcome,
    PolicySpec, Priors, PropensityKind, Request, Snapshot, DEFAULT_PACING_STEP,
};
use serde::{Deserialize, Serialize};

use crate::cascade::Cascade;
use crate::config::{EmbeddingConfig, ModelConfig, RouteConfig};
use crate::error::{config_reason, io_at, route_config, Result, ServeError};
use crate::sessions::{self, Sessions, Verdict as SessionVerdict};
use crate::spend::{self, Allowance, Spend};
use quiver_log::{records_after, DecisionLog, LogEvent, LogRecord, WriterLock, SEGMENT_BYTES};

/// What an operator does to a route's canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CanaryAction {
    /// Promote it now: it serves the larger share.
    Promote,
    /// Roll it back now: it serves nothing.
    RollBack,
    /// Start it again in canary, its gate's estimates afresh.
    Restart,
    /// Stop the gate from changing its stage.
    Block,
    /// Let the gate judge again.
    Unblock,
}

/// A request to route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RouteRequest {
    /// The prompt, or
    #[serde(default)]
    pub prompt: Option<String>,
    /// the chat messages.
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    /// The caller's own features (the route's `extra_features` of them).
    #[serde(default)]
    pub features: Vec<f64>,
    /// Which models may serve it.
    #[serde(default)]
    pub constraints: Constraints,
    /// A trade-off for this request only.
    #[serde(default)]
    pub objective: Option<ObjectiveOverride>,
    /// The session it belongs to (OpenAI's `user`, say): a session stays on one model
    /// while it keeps succeeding (see `crate::sessions`).
    #[serde(default)]
    pub session: Option<String>,
    /// The most answer tokens the proxy's call may be billed (the request's
    /// `max_completion_tokens` or `max_tokens`, times the answers billed): at the chosen
    /// model's prices, what the call counts against the spend caps while under way. Not in
    /// `/v1/route`'s body: a client's own call counts against no cap.
    #[serde(skip)]
    pub max_output_tokens: Option<u32>,
}

impl RouteRequest {
    /// The text that is featurized and logged.
    pub fn text(&self) -> Result<String> {
        match (&self.prompt, &self.messages) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(m)) if !m.is_empty() => Ok(quiver_bandit::features::messages_text(m)),
            _ => Err(ServeError::EmptyRequest),
        }
    }
}

/// What the server observed about a request before deciding it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The prompt's projected embedding (`quiver_bandit::EmbeddingBlock::project`), for a
    /// route with an embedding block; None to decide on hashed features alone.
    pub embedding: Option<Vec<f64>>,
    /// Models that cannot take a call now, and why (see `crate::health`).
    pub unavailable: BTreeMap<String, String>,
    /// Who asked (`crate::auth::caller`), when routing takes tokens.
    pub caller: Option<String>,
    /// Whether the server calls the chosen model itself and records the call's outcome
    /// (the proxy): its estimated cost counts against the spend caps until then. A call
    /// the client makes counts for the route's budget pacer alone
    /// ([`RouterOptions::routed_call_limit`]).
    pub calls: bool,
}

/// A routed request: the decision and its id for outcome and feedback.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Routed {
    /// `<route>:<number>`.
    pub decision_id: String,
    /// The learner's decision.
    pub decision: Decision,
}

/// A route: what its configuration fixes, and what it learns behind its own lock, so that
/// requests to different routes never wait for each other.
struct RouteState {
    config: RouteConfig,
    /// Its cascade's checks, if it has one.
    cascade: Option<Cascade>,
    policy: String,
    layout: ContextLayout,
    /// Whether the learner came from the snapshot (and so holds what priors taught).
    restored: bool,
    /// For a route whose replicas share what they learn ([`RouterOptions::shared`]):
    /// where every replica of it starts, the learner of a first start under today's
    /// configuration.
    base: Option<Learner>,
    /// A digest of `base` ([`Router::starting_point`]), taken once.
    starting_point: Option<String>,
    live: Mutex<LiveRoute>,
}

/// What a route changes as it serves.
struct LiveRoute {
    learner: Learner,
    logged: LoggedDecisions,
    /// What the route spent this UTC day and month.
    spend: Spend,
    /// What each caller spent on the route this UTC day and month.
    caller_spend: BTreeMap<String, Spend>,
    /// Per other replica of a shared route, what it had learned and spent when last
    /// folded in (see [`Router::fold_replica`]).
    folded: BTreeMap<String, ReplicaShare>,
    /// Decisions, outcomes and feedback the route took since the router opened, so that a
    /// replica with nothing new need not publish.
    own_changes: u64,
    /// The route's shadow candidates, if it has any.
    shadows: Option<Shadows>,
    /// The route's latest decisions since the router opened, oldest first.
    recent: VecDeque<RecentDecision>,
    /// The sessions its requests named.
    sessions: Sessions,
    /// The calls made for the route's decisions, until their outcomes come.
    in_flight: InFlight,
    /// Requests refused at a spend cap since the router opened.
    spend_cap_refusals: u64,
}

/// The calls made for a route's decisions, at their decisions' estimated cost, from the
/// decision until the call's outcome is recorded. A budget paces each decision ahead of
/// them all (see `BudgetPacer::ahead`), so that concurrent calls do not all decide on the
/// multiplier the calls before them found.
///
/// The calls the server makes (the proxy's) also end when their request is done with them,
/// and spend caps count them, so that a burst of concurrent calls cannot all pass a cap
/// none of them has reached yet; should one be left counted all the same, it is forgotten
/// after [`IN_FLIGHT_LIMIT`] rather than hold the route at its cap.
///
/// A call its client makes (a decision of `/v1/route`) counts for the pacer alone, and
/// only while its outcome could still be on its way: its client may never report one, and
/// an estimate left counting would bias the pacer for as long as it counts. So it counts
/// for twice the 95th percentile of the waits for the latest [`CLIENT_WAITS`] outcomes (at
/// most [`RouterOptions::routed_call_limit`], which also holds until a first outcome comes:
/// a percentile, not the longest, so that a few slow outcomes do not keep every decision
/// whose outcome never comes counting as long), and only the latest
/// [`MAX_CLIENT_CALLS_COUNTED`] count, so that a decision's work stays bounded when clients
/// report nothing. It is kept for the whole limit (the latest [`CLIENT_CALLS_KEPT`]), so
/// that a wait that grows is measured.
#[derive(Debug, Default)]
struct InFlight {
    /// The server's calls, by decision number.
    server: BTreeMap<u64, InFlightCall>,
    /// The clients' calls, by decision number (so oldest first).
    client: BTreeMap<u64, InFlightCall>,
    /// How long the latest clients' outcomes took to come after their decisions.
    client_waits: VecDeque<Duration>,
    /// The 95th percentile of `client_waits`, once there are any.
    client_wait: Option<Duration>,
}

#[derive(Debug)]
struct InFlightCall {
    /// Its expected cost, as the pacer counts it.
    usd: f64,
    /// The most it can cost, as the spend caps count it: at its model's prices, its
    /// prompt and its answer's token limit, else its expected cost.
    usd_at_most: f64,
    caller: Option<String>,
    since: Instant,
}

/// How long a server's call counts as under way at most: longer than any request's time
/// limit.
const IN_FLIGHT_LIMIT: Duration = Duration::from_secs(15 * 60);

/// Whether the server's `call` is still counted at `now` (see [`IN_FLIGHT_LIMIT`]).
fn under_way(call: &InFlightCall, now: Instant) -> bool {
    now - call.since < IN_FLIGHT_LIMIT
}

/// Clients' outcomes whose waits set how long a client's call counts as under way.
const CLIENT_WAITS: usize = 256;

/// Clients' calls counted under way at most: the latest.
const MAX_CLIENT_CALLS_COUNTED: usize = 4096;

/// Clients' calls kept at most, to measure their outcomes' waits.
const CLIENT_CALLS_KEPT: usize = 65_536;

impl InFlight {
    /// Counts the server's call of decision `id`.
    fn start_server(&mut self, id: u64, usd: f64, usd_at_most: f64, caller: Option<String>) {
        let since = Instant::now();
        self.server.retain(|_, call| under_way(call, since));
        let call = InFlightCall {
            usd,
            usd_at_most,
            caller,
            since,
        };
        self.server.insert(id, call);
    }

    /// Counts the client's call of decision `id`, kept for at most `limit`.
    fn start_client(&mut self, id: u64, usd: f64, limit: Duration) {
        let since = Instant::now();
        while self.client.len() >= CLIENT_CALLS_KEPT
            || (self.client.first_key_value()).is_some_and(|(_, call)| since - call.since >= limit)
        {
            self.client.pop_first();
        }
        let call = InFlightCall {
            usd,
            usd_at_most: usd,
            caller: None,
            since,
        };
        self.client.insert(id, call);
    }

    /// Ends the call of decision `id`, if one counts: its outcome came, or its request is
    /// done with it.
    fn end(&mut self, id: u64) {
        self.server.remove(&id);
        if let Some(call) = self.client.remove(&id) {
            if self.client_waits.len() == CLIENT_WAITS {
                self.client_waits.pop_front();
            }
            self.client_waits.push_back(call.since.elapsed());
            let mut waits: Vec<Duration> = self.client_waits.iter().copied().collect();
            // The nearest rank: the smallest wait at least 95% of them do not exceed.
            let at = (waits.len() * 95).div_ceil(100) - 1;
            self.client_wait = Some(*waits.select_nth_unstable(at).1);
        }
    }

    /// The most the server's calls under way can cost: all of them, or `caller`'s.
    fn usd_at_most(&self, caller: Option<&str>) -> f64 {
        let now = Instant::now();
        self.server
            .values()
            .filter(|call| under_way(call, now) && (caller.is_none() || call.caller.as_deref() == caller))
            .map(|call| call.usd_at_most)
            .sum()
    }

    /// The estimated cost of each call under way, oldest first: the server's, and the
    /// clients' that count (for twice the recent waits' 95th percentile, at most
    /// `client_limit`).
    fn costs(&self, client_limit: Duration) -> Vec<f64> {
        let counted = (self.client_wait).map_or(client_limit, |w| client_limit.min(w.saturating_mul(2)));
        let now = Instant::now();
        let server = self.server.iter().filter(|(_, call)| under_way(call, now));
        // The clients' calls are kept in the order they began: the counted ones are the latest.
        let mut clients: Vec<_> = self
            .client
            .iter()
            .rev()
            .take_while(|(_, call)| now - call.since < counted)
            .take(MAX_CLIENT_CALLS_COUNTED)
            .collect();
        clients.reverse();
        let mut calls: Vec<(&u64, &InFlightCall)> = server.chain(clients).collect();
        // Two runs in order: the sort finds them and merges them in one pass.
        calls.sort_by_key(|(id, _)| **id);
        calls.into_iter().map(|(_, call)| call.usd).collect()
    }
}

/// Decisions a route keeps for [`Router::recent_decisions`].
const RECENT_DECISIONS: usize = 50;

/// A recent decision of a route, with its explanation and what came of it so far.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RecentDecision {
    /// Its id.
    pub decision_id: String,
    /// When it was made (RFC 3339, UTC).
    pub timestamp: String,
    /// The model chosen.
    pub model: String,
    /// The probability with which it was chosen.
    pub propensity: f64,
    /// Whether the route's canary served it.
    pub canary: bool,
    /// Each eligible model's estimates at the time.
    pub explanation: Vec<ArmEstimate>,
    /// Why each ineligible model was excluded.
    pub excluded: Vec<String>,
    /// Its call's cost, once reported.
    pub cost_usd: Option<f64>,
    /// Its call's latency, once reported.
    pub latency_ms: Option<f64>,
    /// Its quality, once reported.
    pub quality: Option<f64>,
}

/// What the router keeps of each tracked decision beside the learner: where the log wrote
/// it, so that a snapshot can say where to rebuild the tracked decisions from, who asked
/// for it, so that its cost counts against the caller, and its session, which a failed
/// call moves on. A route's logged decisions take consecutive ids, so a queue indexed from
/// its first id holds them.
#[derive(Default)]
struct LoggedDecisions {
    first_id: u64,
    entries: VecDeque<LoggedDecision>,
}

struct LoggedDecision {
    seq: u64,
    caller: Option<Box<str>>,
    session: Option<Box<str>>,
    escalation: bool,
}

impl LoggedDecisions {
    fn push(&mut self, id: u64, record: &LogRecord) {
        if self.entries.is_empty() || id != self.first_id + self.entries.len() as u64 {
            // A gap (decisions restored from an older snapshot format): start afresh.
            self.entries.clear();
            self.first_id = id;
        }
        self.entries.push_back(LoggedDecision {
            seq: record.seq,
            caller: record.caller.as_deref().map(Box::from),
            session: record.session.as_deref().map(Box::from),
            escalation: escalation(record),
        });
    }

    fn forget_before(&mut self, id: u64) {
        while self.first_id < id && self.entries.pop_front().is_some() {
            self.first_id += 1;
        }
    }

    fn get(&self, id: u64) -> Option<&LoggedDecision> {
        let index = usize::try_from(id.checked_sub(self.first_id)?).ok()?;
        self.entries.get(index)
    }

    fn seq_of(&self, id: u64) -> Option<u64> {
        self.get(id).map(|d| d.seq)
    }

    fn caller_of(&self, id: u64) -> Option<&str> {
        self.get(id)?.caller.as_deref()
    }

    fn session_of(&self, id: u64) -> Option<&str> {
        self.get(id)?.session.as_deref()
    }

    fn is_escalation(&self, id: u64) -> bool {
        self.get(id).is_some_and(|d| d.escalation)
    }
}

/// Whether the decision logged as `record` is a cascade's escalation.
fn escalation(record: &LogRecord) -> bool {
    quiver_log::is_escalation(
        record.reason.as_deref().unwrap_or_default(),
        record.parent_decision_id.as_deref().unwrap_or_default(),
    )
}

/// What the call of an outcome would have cost on the route's dearest model, for its
/// savings: nothing for an escalation's, since its request's first call counted what
/// the dearest model would have cost it.
fn dearest_cost(models: &[ModelConfig], record: &LogRecord, escalation: bool) -> f64 {
    if escalation {
        0.0
    } else {
        spend::dearest_cost(models, record.input_tokens, record.output_tokens, record.cost_usd)
    }
}

/// The priors file at `path`, checked to be fitted on contexts built as `definition`.
fn read_priors_file(path: &Path, definition: &str, route: &str) -> Result<Priors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| priors_refused(route, path, ServeError::Config(e.to_string())))?;
    let priors = Priors::from_json(&text).map_err(|e| priors_refused(route, path, e.into()))?;
    priors
        .check_context(definition)
        .map_err(|e| priors_refused(route, path, e.into()))?;
    Ok(priors)
}

/// `route`'s priors file at `path` refused for `cause`.
fn priors_refused(route: &str, path: &Path, cause: ServeError) -> ServeError {
    ServeError::Config(format!(
        "route `{route}`: priors {}: {}",
        path.display(),
        config_reason(cause)
    ))
}

/// Starts `learner` from `priors`, read from `path`. Priors with none of the route's
/// models are refused: their ids are another route's, or misspelled.
fn absorb_priors_into(learner: &mut Learner, priors: &Priors, path: &Path, route: &str) -> Result<()> {
    let coverage = learner
        .absorb_priors(priors)
        .map_err(|e| priors_refused(route, path, e.into()))?;
    match coverage.note() {
        None => {
            tracing::info!(route, priors = %path.display(), source = %priors.source, "route starts from priors")
        }
        Some(note) => tracing::warn!(
            route,
            priors = %path.display(),
            source = %priors.source,
            "route starts from priors fitted on other models: {note}"
        ),
    }
    Ok(())
}

/// The learner configuration and arms that `config` asks for, in contexts of `dim`.
fn learner_setup(
    config: &RouteConfig,
    dim: usize,
    feedback_horizon: usize,
) -> Result<(LearnerConfig, Vec<Arm>)> {
    let spec: PolicySpec = config.policy.parse()?;
    if let Some(note) = spec.floor_overrides(config.models.len()) {
        tracing::warn!(route = %config.name, "{note}");
    }
    let mut learner_config = LearnerConfig::new(spec, dim);
    learner_config.objective = Objective::new(config.w_cost, config.w_latency)?;
    learner_config.seed = config.seed;
    learner_config.max_tracked_decisions = feedback_horizon.max(1);
    learner_config.budget = config.budget_usd_per_request.map(|b| BudgetConfig {
        target_usd_per_request: b,
        step_size: DEFAULT_PACING_STEP,
    });
    Ok((
        learner_config,
        config.models.iter().map(ModelConfig::arm).collect(),
    ))
}

impl RouteState {
    /// What each spend cap in force on `route` allows a request of `caller` at `now`: with
    /// whom it holds, what they spent and what their calls under way are estimated at.
    fn allowances(
        &self,
        live: &LiveRoute,
        route: &str,
        caller: Option<&str>,
        now: SystemTime,
    ) -> Vec<Allowance> {
        // Named only then: this is every decision's path.
        let caps = [
            self.config.spend_cap.map(|cap| {
                (
                    cap,
                    format!("route `{route}`"),
                    live.cluster_spend(),
                    live.in_flight.usd_at_most(None),
                )
            }),
            self.config.caller_spend_cap.zip(caller).map(|(cap, c)| {
                (
                    cap,
                    format!("caller `{c}` on route `{route}`"),
                    live.cluster_caller_spend(c),
                    live.in_flight.usd_at_most(Some(c)),
                )
            }),
        ];
        caps.into_iter()
            .flatten()
            .map(|(cap, who, spent, under_way)| spend::allowance(&cap, &who, &spent, under_way, now))
            .collect()
    }

    /// The route `config` describes, nothing learned; a configuration it cannot work with
    /// is refused naming the route.
    fn new(config: RouteConfig, feedback_horizon: usize) -> Result<Self> {
        let name = config.name.clone();
        Self::build(config, feedback_horizon).map_err(|e| match e {
            ServeError::Bandit(_) => route_config(&name)(e),
            other => other,
        })
    }

    fn build(config: RouteConfig, feedback_horizon: usize) -> Result<Self> {
        config
            .check()
            .map_err(|e| ServeError::Config(format!("route `{}`: {e}", config.name)))?;
        for (key, cap) in [("", &config.spend_cap), ("caller_", &config.caller_spend_cap)] {
            if let Some(cap) = cap {
                cap.check()
                    .map_err(|e| ServeError::Config(format!("route `{}`: {key}{e}", config.name)))?;
            }
        }
        let embedding = config
            .embedding
            .as_ref()
            .map(EmbeddingConfig::block)
            .transpose()?;
        let layout = ContextLayout::new(HashingFeaturizer::for_routes(config.extra_features), embedding);
        let (learner_config, arms) = learner_setup(&config, layout.dim(), feedback_horizon)?;
        // The route's own learner first: its errors are the route's, not its shadows'.
        let learner = Learner::new(learner_config.clone(), arms.clone())?;
        let shadows = Self::shadows(&config, &learner_config, &arms, feedback_horizon)?;
        let models: Vec<String> = config.models.iter().map(|m| m.id.clone()).collect();
        let cascade = config
            .cascade
            .as_ref()
            .map(|c| c.compile(&config.name, &models))
            .transpose()?;
        Ok(RouteState {
            cascade,
            policy: learner_config.policy.to_string(),
            live: Mutex::new(LiveRoute {
                learner,
                logged: LoggedDecisions::default(),
                spend: Spend::default(),
                caller_spend: BTreeMap::new(),
                folded: BTreeMap::new(),
                own_changes: 0,
                shadows,
                recent: VecDeque::new(),
                sessions: Sessions::new(config.sessions.clone()),
                in_flight: InFlight::default(),
                spend_cap_refusals: 0,
            }),
            layout,
            config,
            restored: false,
            base: None,
            starting_point: None,
        })
    }

    /// The route's shadow candidates, the canary's among them, if it has any.
    fn shadows(
        config: &RouteConfig,
        learner_config: &LearnerConfig,
        arms: &[Arm],
        feedback_horizon: usize,
    ) -> Result<Option<Shadows>> {
        let name = &config.name;
        let refuse = |what: &'static str| {
            move |e: quiver_bandit::Error| {
                ServeError::Config(format!("route `{name}`: {what}: {}", config_reason(e.into())))
            }
        };
        let mut specs = config
            .shadow
            .iter()
            .map(|spec| spec.parse::<PolicySpec>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(refuse("shadow"))?;
        let canary = match &config.canary {
            Some(canary) => {
                let spec: PolicySpec = canary.policy.parse().map_err(refuse("canary"))?;
                // Checked alone, so that a canary's own fault is named as the canary's.
                Shadows::new(
                    std::slice::from_ref(&spec),
                    learner_config,
                    arms,
                    feedback_horizon,
                )
                .map_err(refuse("canary"))?;
                let index = match specs.iter().position(|s| *s == spec) {
                    Some(index) => index,
                    None => {
                        specs.push(spec);
                        specs.len() - 1
                    }
                };
                Some((index, canary.rule()))
            }
            None => None,
        };
        if specs.is_empty() {
            return Ok(None);
        }
        let shadows =
            Shadows::new(&specs, learner_config, arms, feedback_horizon).map_err(refuse("shadow"))?;
        Ok(Some(match canary {
            Some((index, rule)) => shadows.with_canary(index, rule).map_err(refuse("canary"))?,
            None => shadows,
        }))
    }

    /// The learner a first start of the route gets under its configuration: priors
    /// included, nothing learned.
    fn starting_learner(&self, feedback_horizon: usize) -> Result<Learner> {
        let (config, arms) = learner_setup(&self.config, self.layout.dim(), feedback_horizon)?;
        let mut learner = Learner::new(config, arms)?;
        if let Some(path) = &self.config.priors {
            let priors = read_priors_file(path, &self.layout.definition(), &self.config.name)?;
            absorb_priors_into(&mut learner, &priors, path, &self.config.name)?;
        }
        Ok(learner)
    }

    /// Starts the route from its priors file, if it has one, reading it once: its learner
    /// when it has no learned state (a first start, a rebuild from the log, a reset), and
    /// its shadow candidates (the canary's among them) at every start, since they are
    /// rebuilt from the whole log. A route restored from the snapshot no longer needs the
    /// file, so there one it cannot use leaves the candidates without priors, with a
    /// warning, rather than stopping the start.
    fn absorb_priors(&mut self) -> Result<()> {
        let (restored, name) = (self.restored, self.config.name.clone());
        let Some(path) = self.config.priors.clone() else {
            return Ok(());
        };
        if restored && self.live_mut().shadows.is_none() {
            return Ok(());
        }
        let without_priors = |e: ServeError| {
            tracing::warn!(route = %name, "the shadow candidates start without priors: {e}");
        };
        let priors = match read_priors_file(&path, &self.layout.definition(), &name) {
            Ok(priors) => priors,
            Err(e) if restored => {
                without_priors(e);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let live = self.live_mut();
        if !restored {
            absorb_priors_into(&mut live.learner, &priors, &path, &name)?;
        }
        if let Some(shadows) = live.shadows.as_mut() {
            match shadows.absorb_priors(&priors) {
                Err(e) if restored => without_priors(priors_refused(&name, &path, e.into())),
                Err(e) => return Err(priors_refused(&name, &path, e.into())),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// What the route changes, while the router opens (nothing else can hold it yet).
    fn live_mut(&mut self) -> &mut LiveRoute {
        self.live.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks what the route changes. A panic while it was held may have left it half
    /// changed, so the route then refuses to serve rather than learn from that state.
    fn lock(&self) -> Result<MutexGuard<'_, LiveRoute>> {
        self.live
            .lock()
            .map_err(|_| ServeError::Poisoned(self.config.name.clone()))
    }

    fn check_features(&self, features: &[f64]) -> Result<()> {
        if features.len() != self.config.extra_features {
            return Err(ServeError::FeatureCount {
                route: self.config.name.clone(),
                expected: self.config.extra_features,
                got: features.len(),
            });
        }
        Ok(())
    }

    fn context(&self, prompt: &str, features: &[f64], embedding: Option<&[f64]>) -> Result<Context> {
        self.check_features(features)?;
        Ok(self.layout.build(prompt, features, embedding)?)
    }

    /// Writes into a decision's `record` what rebuilds its `context`: the prompt's tokens,
    /// the context's definition and, on a route with an embedding block, which featurizer
    /// decided and the block (`embedding`, or none when it was not to be had).
    fn stamp_context(&self, record: &mut LogRecord, context: &Context, embedding: Option<Vec<f64>>) {
        record.input_tokens = context.input_tokens;
        record.context = Some(self.layout.definition());
        if self.layout.embedding().is_some() {
            let by = if embedding.is_some() {
                "embedding"
            } else {
                "hashing"
            };
            record.featurizer = Some(by.into());
            record.embedding = embedding;
        }
    }

    /// Whether a logged decision can be learned from again: it was decided in the context
    /// the route builds now (a record older than recorded definitions is taken as it is).
    /// A decision that is only re-registered, for a route started afresh, may be older.
    fn learns_in_its_context(&self, record: &LogRecord) -> Result<()> {
        let now = self.layout.definition();
        match record.context.as_deref() {
            Some(then) if then != now => Err(ServeError::ContextChanged {
                route: record.route.clone(),
                seq: record.seq,
                then: then.to_string(),
                now,
            }),
            _ => Ok(()),
        }
    }

    /// The context of a logged decision, rebuilt as the route builds it now.
    fn logged_context(&self, record: &LogRecord) -> Result<Context> {
        let features: Vec<f64> = (0..self.config.extra_features)
            .map(|i| {
                let name = quiver_log::feature_name(i);
                record.features.get(&name).copied().unwrap_or(0.0)
            })
            .collect();
        // A block logged under another layout (the route's embedding changed) is not
        // this one's: the context is rebuilt without it.
        let same_layout = record.context.as_deref() == Some(self.layout.definition().as_str());
        let embedding = record.embedding.as_deref().filter(|_| same_layout);
        self.context(&record.prompt, &features, embedding)
    }
}

/// What a replica of a shared route publishes ([`Router::own_learning`]) and the others
/// fold in ([`Router::fold_replica`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaShare {
    /// Where every replica starts, plus what this one learned by itself.
    pub learner: Learner,
    /// What the route spent on this replica this UTC day and month.
    pub spend: Spend,
    /// What each caller spent on the route on this replica.
    pub callers: BTreeMap<String, Spend>,
    /// Decisions this replica made on the route, all time.
    pub decisions: u64,
}

/// A shared route's figures across its cluster, as this replica knows them.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterFigures {
    /// This replica.
    pub replica: String,
    /// The others whose learning and spend it folded in.
    pub other_replicas: Vec<String>,
    /// Decisions, all time.
    pub decisions: u64,
    /// Spend this UTC day and month, USD: what spend caps hold to.
    pub spend: (f64, f64),
    /// This month's calls on the dearest model at list prices, minus what they cost.
    pub savings: f64,
}

impl LiveRoute {
    /// What the route spent across its cluster: here, and on each other replica as last
    /// folded in. What spend caps hold to.
    fn cluster_spend(&self) -> Spend {
        let mut total = self.spend.clone();
        self.folded.values().for_each(|share| total.combine(&share.spend));
        total
    }

    /// What `caller` spent on the route across its cluster.
    fn cluster_caller_spend(&self, caller: &str) -> Spend {
        let mut total = self.caller_spend.get(caller).cloned().unwrap_or_default();
        for share in self.folded.values() {
            share.callers.get(caller).iter().for_each(|s| total.combine(s));
        }
        total
    }

    /// Tracks decision `id`, logged as `record`, for its feedback.
    fn track(&mut self, id: u64, context: &Context, record: &LogRecord) -> Result<()> {
        self.learner.resume_decision(id, &record.arm, context)?;
        self.logged.push(id, record);
        if let Some(oldest) = self.learner.oldest_tracked_decision() {
            self.logged.forget_before(oldest);
        }
        Ok(())
    }

    /// Keeps a decision among the route's recent ones.
    fn remember(&mut self, decision: &Decision, record: &LogRecord, canary: bool) {
        if self.recent.len() == RECENT_DECISIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(RecentDecision {
            decision_id: record.decision_id.clone(),
            timestamp: record.timestamp.clone(),
            model: decision.arm.clone(),
            propensity: decision.propensity,
            canary,
            explanation: decision.arms.clone(),
            excluded: decision.excluded.clone(),
            cost_usd: None,
            latency_ms: None,
            quality: None,
        });
    }

    /// Tells the shadows and the recent decisions of an outcome or feedback record of
    /// decision `id` that the learner applied.
    fn applied(&mut self, id: u64, record: &LogRecord) {
        self.shadow_or_warn(id, record);
        self.remember_result(record);
        self.own_changes += 1;
    }

    /// A failed call moves decision `id`'s session, if it has one, on.
    fn session_failed(&mut self, id: u64) {
        if let Some(key) = self.logged.session_of(id).map(str::to_string) {
            self.sessions.failed(&key, id);
        }
    }

    /// Adds what an outcome or feedback record says to its decision, if recent.
    fn remember_result(&mut self, record: &LogRecord) {
        let Some(recent) = self
            .recent
            .iter_mut()
            .rev()
            .find(|r| r.decision_id == record.decision_id)
        else {
            return;
        };
        if record.event == LogEvent::Outcome {
            recent.cost_usd = Some(record.cost_usd);
            recent.latency_ms = Some(record.latency_ms);
        }
        recent.quality = recent.quality.or(record.quality);
    }

    /// [`LiveRoute::shadow`] for a record without a context, with a warning for a record
    /// the shadows skipped.
    fn shadow_or_warn(&mut self, id: u64, record: &LogRecord) {
        if let Err(e) = self.shadow(id, record, None) {
            tracing::warn!(
                route = %record.route,
                decision = %record.decision_id,
                "shadow candidates skipped a record: {e}"
            );
        }
    }

    /// Tells the route's shadow candidates, if any, of a record of decision `id` (the
    /// decision's `context` with a decision record). A record they cannot take is skipped,
    /// and the error says why: the shadows never stop the route.
    fn shadow(
        &mut self,
        id: u64,
        record: &LogRecord,
        context: Option<&Context>,
    ) -> std::result::Result<(), quiver_bandit::Error> {
        let route_objective = self.learner.config().objective;
        let Some(shadows) = self.shadows.as_mut() else {
            return Ok(());
        };
        match (record.event, context) {
            // A decision that stayed on its session's model, or a cascade's escalation, gave
            // the other models no chance.
            (LogEvent::Decision, _)
                if !quiver_log::gave_every_model_a_chance(
                    record.reason.as_deref().unwrap_or_default(),
                    record.parent_decision_id.as_deref().unwrap_or_default(),
                ) =>
            {
                Ok(())
            }
            (LogEvent::Decision, Some(context)) => shadows.decided(
                id,
                shadow_request(context, record, route_objective),
                &record.arm,
                record.propensity,
                // Records before version 4 name the route's policy whoever served.
                (record.schema >= 4).then(|| shadows.canary_policy() == Some(record.policy.as_str())),
            ),
            (LogEvent::Outcome, _) => shadows.outcome(id, &outcome_of(record)),
            (LogEvent::Feedback, _) => record.quality.map_or(Ok(()), |q| shadows.quality(id, q)),
            // An event of an earlier canary of the route is not this one's.
            (event, _) if shadows.canary_policy() == Some(record.policy.as_str()) => {
                match event {
                    LogEvent::Promotion => shadows.enter_stage(Stage::Promoted),
                    LogEvent::Rollback => shadows.enter_stage(Stage::RolledBack),
                    LogEvent::CanaryStart => shadows.enter_stage(Stage::Canary),
                    LogEvent::GateBlocked => shadows.block_canary(true),
                    LogEvent::GateUnblocked => shadows.block_canary(false),
                    _ => {}
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Counts the call made for `decision` (logged as `record`) as under way at its
    /// chosen model's estimated cost (see [`InFlight`]), and, of a call of at most
    /// `max_output_tokens` answer tokens (and the model's context window) to a priced model,
    /// at most their and its prompt's cost: a call the server makes if `by_server`, else
    /// its client's, counted for at most `client_limit`.
    fn call_under_way(
        &mut self,
        decision: &quiver_bandit::Decision,
        record: &LogRecord,
        by_server: bool,
        client_limit: Duration,
        max_output_tokens: Option<u32>,
    ) {
        let chosen = decision.arms.iter().find(|a| a.arm == decision.arm);
        let usd = chosen.map_or(0.0, |a| a.cost_usd);
        if by_server {
            let prompt_tokens = quiver_bandit::features::estimate_tokens(&record.prompt);
            let usd_at_most = max_output_tokens
                .and_then(|answer| {
                    let arm = self.learner.arms().iter().find(|a| a.id == decision.arm)?;
                    // No answer outgrows the model's context window.
                    let room = arm
                        .context_window_tokens
                        .map_or(u32::MAX, |w| w.saturating_sub(prompt_tokens));
                    let answer = f64::from(answer.min(room));
                    arm.has_prices()
                        .then(|| arm.cost_usd(f64::from(prompt_tokens), answer))
                })
                .unwrap_or(usd);
            self.in_flight
                .start_server(decision.id, usd, usd_at_most, record.caller.clone());
        } else {
            self.in_flight.start_client(decision.id, usd, client_limit);
        }
    }

    /// Counts what an outcome recorded at `timestamp` cost (and would have cost on the
    /// dearest model) against the route and its caller.
    fn spent(&mut self, timestamp: &str, usd: f64, dearest_usd: f64, caller: Option<&str>) {
        self.spend.add(timestamp, usd, dearest_usd);
        if let Some(caller) = caller {
            self.caller_spend
                .entry(caller.to_string())
                .or_default()
                .add(timestamp, usd, dearest_usd);
        }
    }
}

/// A route's learner, read under the route's lock (held while this lives).
pub struct LearnerRef<'a>(MutexGuard<'a, LiveRoute>);

impl std::ops::Deref for LearnerRef<'_> {
    type Target = Learner;

    fn deref(&self) -> &Learner {
        &self.0.learner
    }
}

/// Options of [`Router::open_with`].
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Log segment size before rotation, bytes.
    pub segment_bytes: u64,
    /// Decisions remembered per route for late feedback.
    pub feedback_horizon: usize,
    /// Routes to start afresh: their snapshot is ignored and the log teaches them nothing;
    /// only their decisions still in the log are re-registered, so that late feedback for
    /// them is accepted and new decision ids follow theirs. The way out when a route's
    /// snapshot cannot be read and the log no longer holds what rebuilding it needs.
    pub reset_routes: Vec<String>,
    /// This replica's name, when replicas share what the routes learn (`crate::cluster`):
    /// every route's policy must then learn sums only; the router keeps, beside each
    /// learner, what it folded in from the other replicas ([`Router::fold_replica`]), so
    /// that it can tell its own learning apart ([`Router::own_learning`]); and decision
    /// ids name the replica (`<route>:<replica>:<number>`), so that feedback sent to
    /// another replica finds this one.
    pub replica: Option<String>,
    /// How long a decision whose call its client makes (`Router::route`, `/v1/route`)
    /// counts as a call under way for its route's budget pacer at most, while no outcome
    /// comes; less once outcomes come sooner (see `InFlight`). Zero counts none.
    pub routed_call_limit: Duration,
}

/// [`RouterOptions::routed_call_limit`] by default: longer than nearly any model's
/// answer takes.
pub const ROUTED_CALL_LIMIT: Duration = Duration::from_secs(5 * 60);

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            segment_bytes: SEGMENT_BYTES,
            feedback_horizon: quiver_bandit::DEFAULT_FEEDBACK_HORIZON,
            reset_routes: Vec::new(),
            replica: None,
            routed_call_limit: ROUTED_CALL_LIMIT,
        }
    }
}

/// The snapshot file: every route's learner and the log position it includes.
#[derive(Serialize)]
struct RouterSnapshot {
    /// The last record any route's learner includes.
    last_seq: u64,
    /// Per route, the last record its learner includes: routes are captured one at a
    /// time, each under its own lock, while the others go on serving.
    learned_through: BTreeMap<String, u64>,
    routes: BTreeMap<String, Snapshot>,
    /// Per route whose learner is saved without its tracked decisions, where to rebuild
    /// them from. Routes absent here keep them in their learner (the older format).
    tracked_from: BTreeMap<String, TrackedFrom>,
    /// Per route, the definition of its contexts (see [`Featurizer::definition`]): the
    /// learners' weights mean nothing under another.
    contexts: BTreeMap<String, String>,
    /// Per shared route, what each other replica had learned and spent when last folded in.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    folded: BTreeMap<String, BTreeMap<String, FoldedShare>>,
}

/// A [`ReplicaShare`] in a snapshot, its learner with its format version.
#[derive(Serialize, Deserialize)]
struct FoldedShare {
    learner: Snapshot,
    spend: Spend,
    callers: BTreeMap<String, Spend>,
    decisions: u64,
}

impl RouterSnapshot {
    /// The first route whose learner would not read back from `text` (this snapshot
    /// serialized) as it is, and why: JSON has no NaN or infinity, so a non-finite
    /// statistic would be written as `null` and fail the next start. `None` when every
    /// route reads back equal.
    fn unreadable_route(&self, text: &[u8]) -> Option<(String, String)> {
        let read = match serde_json::from_slice::<RouterSnapshotFile>(text) {
            Ok(file) => file.parse(),
            Err(e) => return Some(("(the file)".into(), e.to_string())),
        };
        self.routes
            .iter()
            .find_map(|(name, learner)| match read.routes.get(name) {
                Some(Ok(back)) if back == learner => None,
                Some(Ok(_)) => Some((name.clone(), "a value changes on the way (not finite?)".into())),
                Some(Err(e)) => Some((name.clone(), e.clone())),
                None => Some((name.clone(), "missing".into())),
            })
    }
}

/// The snapshot file as read back: each route's learner is parsed on its own, so that
/// one that cannot be read (a damaged value) costs that route only.
#[derive(Deserialize)]
struct RouterSnapshotFile {
    last_seq: u64,
    /// Absent from snapshots written under one lock for all routes, which include every
    /// record up to `last_seq`.
    #[serde(default)]
    learned_through: BTreeMap<String, u64>,
    routes: BTreeMap<String, Box<serde_json::value::RawValue>>,
    #[serde(default)]
    tracked_from: BTreeMap<String, TrackedFrom>,
    /// Absent from snapshots written before contexts were recorded.
    #[serde(default)]
    contexts: BTreeMap<String, String>,
    /// Absent unless routes are shared.
    #[serde(default)]
    folded: BTreeMap<String, BTreeMap<String, FoldedShare>>,
}

/// A snapshot read back: per route its learner, or why it could not be read.
struct ReadSnapshot {
    last_seq: u64,
    learned_through: BTreeMap<String, u64>,
    routes: BTreeMap<String, std::result::Result<Snapshot, String>>,
    tracked_from: BTreeMap<String, TrackedFrom>,
    contexts: BTreeMap<String, String>,
    folded: BTreeMap<String, BTreeMap<String, FoldedShare>>,
}

impl RouterSnapshotFile {
    fn parse(self) -> ReadSnapshot {
        let routes = self
            .routes
            .into_iter()
            .map(|(name, raw)| {
                let learner = serde_json::from_str::<Snapshot>(raw.get()).map_err(|e| e.to_string());
                (name, learner)
            })
            .collect();
        ReadSnapshot {
            last_seq: self.last_seq,
            learned_through: self.learned_through,
            routes,
            tracked_from: self.tracked_from,
            contexts: self.contexts,
            folded: self.folded,
        }
    }
}

/// A route's oldest tracked decision at a snapshot, and the log position of its record.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct TrackedFrom {
    decision: u64,
    seq: u64,
}

/// How a log record is replayed on open.
#[derive(Clone, Copy)]
enum Replay {
    /// Written after the snapshot: applied in full.
    Learn,
    /// Learned from already (the snapshot holds it), or by a route started afresh: only
    /// its decision's bookkeeping.
    Resume,
}

/// How a route recovers on open.
#[derive(Debug, Clone, Copy)]
enum Recovery {
    /// From the snapshot (or afresh, for a route the snapshot does not know): records
    /// after `last_seq` are learned; from `tracked_from` on, earlier ones re-register the
    /// decisions awaiting feedback.
    Snapshot {
        last_seq: u64,
        tracked_from: Option<TrackedFrom>,
    },
    /// Its snapshot could not be read: every record is learned again, from the first, up
    /// to at least the snapshot's position where it is known (else at least record 1).
    Rebuild { snapshot_at: Option<u64> },
    /// Started afresh by request ([`RouterOptions::reset_routes`]): nothing is learned;
    /// the decisions the log still holds are re-registered.
    Reset,
    /// Not in the snapshot: it learns whatever of the log is its own, nothing for a new
    /// route, and for one removed and added back what it learned before, so that its
    /// decisions go on from their numbers. It needs no record the log no longer has.
    Unknown,
}

impl Recovery {
    /// The last record this route need not read.
    fn read_after(&self) -> u64 {
        match *self {
            Recovery::Snapshot {
                last_seq,
                tracked_from,
            } => tracked_from.map_or(last_seq, |from| from.seq.saturating_sub(1).min(last_seq)),
            Recovery::Rebuild { .. } | Recovery::Reset | Recovery::Unknown => 0,
        }
    }

    /// How record `seq` of decision `decision` is replayed, if at all.
    fn replay(&self, seq: u64, decision: u64) -> Option<Replay> {
        match *self {
            Recovery::Snapshot { last_seq, .. } if seq > last_seq => Some(Replay::Learn),
            Recovery::Snapshot {
                tracked_from: Some(from),
                ..
            } if decision >= from.decision => Some(Replay::Resume),
            Recovery::Snapshot { .. } => None,
            Recovery::Rebuild { .. } | Recovery::Unknown => Some(Replay::Learn),
            Recovery::Reset => Some(Replay::Resume),
        }
    }
}

const SNAPSHOT_FILE: &str = "snapshot.json";

/// Routes requests with per-route learners, logging every change durably.
pub struct Router {
    routes: BTreeMap<String, RouteState>,
    log: Arc<DecisionLog>,
    dir: PathBuf,
    /// The last sequence number a written snapshot covers; held while one is written.
    snapshot_written: Arc<Mutex<u64>>,
    /// This replica's name in its cluster ([`RouterOptions::replica`]).
    replica: Option<String>,
    /// [`RouterOptions::routed_call_limit`].
    routed_call_limit: Duration,
}

/// The learners' state, each route's at its own point of the log, captured under the
/// routes' locks by [`Router::capture_snapshot`] and written by [`CapturedSnapshot::write`]
/// without them: serializing the learners and the fsync take far longer than the copy, and
/// requests need not wait for them.
#[must_use = "a captured snapshot is saved only once written"]
pub struct CapturedSnapshot {
    state: RouterSnapshot,
    log: Arc<DecisionLog>,
    dir: PathBuf,
    written: Arc<Mutex<u64>>,
}

/// The result of a change that is applied and staged in the log but not yet durable. Wait
/// for it (without holding the route's lock, so that other changes join the same fsync)
/// before acknowledging it.
#[must_use = "a change may be acknowledged only after `wait` returns"]
pub struct Pending<T> {
    value: T,
    log: Arc<DecisionLog>,
    seq: u64,
    dir: PathBuf,
}

impl<T> Pending<T> {
    /// The pending result mapped through `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Pending<U> {
        Pending {
            value: f(self.value),
            log: self.log,
            seq: self.seq,
            dir: self.dir,
        }
    }

    /// The result now, and the change's durability to wait for later: for a caller that
    /// does other work (an upstream call) before anything it says names the change.
    pub fn split(self) -> (T, Pending<()>) {
        let durability = Pending {
            value: (),
            log: self.log,
            seq: self.seq,
            dir: self.dir,
        };
        (self.value, durability)
    }

    /// The result, once the log holds the change (and every change before it) durably;
    /// blocks the thread.
    pub fn wait(self) -> Result<T> {
        self.log.wait_durable(self.seq).map_err(io_at(self.dir))?;
        Ok(self.value)
    }

    /// [`Pending::wait`] for async tasks: the task sleeps, no thread blocks.
    pub async fn durable(self) -> Result<T> {
        self.log.durable(self.seq).await.map_err(io_at(self.dir))?;
        Ok(self.value)
    }
}

/// A decision id taken apart: `<route>:<number>`, or `<route>:<replica>:<number>` on a
/// replica of a cluster (route and replica names have no `:`).
struct DecisionRef<'a> {
    route: &'a str,
    replica: Option<&'a str>,
    number: u64,
}

/// Whether `name` is 1 to 64 letters, digits, `-`, `_`, `.` and any of `more`: a replica's
/// name with no `more` (no `:`, which separates the parts of decision ids).
pub(crate) fn valid_name(name: &str, more: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c) || more.contains(c))
}

fn parse_decision_id(id: &str) -> Result<DecisionRef<'_>> {
    let (route, rest) = id
        .split_once(':')
        .ok_or_else(|| ServeError::BadDecisionId(id.to_string()))?;
    let (replica, number) = match rest.split_once(':') {
        Some((replica, number)) => (Some(replica), number),
        None => (None, rest),
    };
    let number = number
        .parse()
        .map_err(|_| ServeError::BadDecisionId(id.to_string()))?;
    Ok(DecisionRef {
        route,
        replica,
        number,
    })
}

impl Router {
    /// Opens the router over `dir` (log segments and snapshot): restores the snapshot, if
    /// any, and replays the log after it.
    pub fn open(routes: Vec<RouteConfig>, dir: &Path) -> Result<Self> {
        Self::open_with(routes, dir, RouterOptions::default())
    }

    /// [`Router::open`] with chosen options.
    pub fn open_with(routes: Vec<RouteConfig>, dir: &Path, options: RouterOptions) -> Result<Self> {
        if routes.is_empty() {
            return Err(ServeError::Config("at least one route is needed".into()));
        }
        let mut states = BTreeMap::new();
        for route in routes {
            if route.name.is_empty()
                || !route
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(ServeError::Config(format!(
                    "route name `{}`: use letters, digits, `-`, `_` and `.`",
                    route.name
                )));
            }
            let name = route.name.clone();
            if states
                .insert(name.clone(), RouteState::new(route, options.feedback_horizon)?)
                .is_some()
            {
                return Err(ServeError::Config(format!("route `{name}` is defined twice")));
            }
        }
        for name in &options.reset_routes {
            if !states.contains_key(name) {
                return Err(ServeError::Config(format!(
                    "--reset-route `{name}`: no such route (routes: {})",
                    states.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        if options.replica.is_some() {
            for (name, state) in &states {
                let policy: quiver_bandit::PolicySpec = state.config.policy.parse()?;
                policy
                    .check_additive()
                    .map_err(|e| route_config(name)(e.into()))?;
                if state.config.canary.is_some() {
                    return Err(ServeError::Config(format!(
                        "route `{name}`: a canary is judged on one server's log; remove `canary` from a \
                         route shared between replicas"
                    )));
                }
            }
        }
        // Taken before anything is read: another server writing here would change it.
        let lock = WriterLock::acquire(dir).map_err(io_at(dir))?;
        let (last_seq, mut recovery) = Self::restore_snapshot(&mut states, dir, &options.reset_routes)?;
        for name in &options.reset_routes {
            recovery.insert(name.clone(), Recovery::Reset);
        }
        // Routes without learned state start from their priors: fresh, rebuilt from the
        // log (which then teaches them on top) and reset ones; every route's shadow
        // candidates too.
        for (name, state) in states.iter_mut() {
            if state.restored && options.reset_routes.contains(name) {
                *state = RouteState::new(state.config.clone(), options.feedback_horizon)?;
            }
            state.absorb_priors()?;
            if !state.restored {
                // What it folded in from the other replicas went with the learner.
                state.live_mut().folded.clear();
            }
        }
        let log_last = Self::replay_log(&mut states, dir, last_seq, &recovery)?;
        // A restored learner takes the configuration now in force (models added or
        // removed, prices, weights, budget), keeping what it learned; after the log, which
        // was written under the old one. A snapshot then records the change, so that the
        // log never spans two configurations of a route.
        let mut reconfigured = false;
        for (name, state) in states.iter_mut().filter(|(_, s)| s.restored) {
            let (config, arms) = learner_setup(&state.config, state.layout.dim(), options.feedback_horizon)?;
            let live = state.live_mut();
            let changes = live
                .learner
                .reconfigure(config.clone(), &arms)
                .map_err(|e| route_config(name)(e.into()))?;
            // What other replicas taught is kept the same way, so that their next
            // statistics, under the same configuration, fold in.
            for theirs in live.folded.values_mut() {
                theirs
                    .learner
                    .reconfigure(config.clone(), &arms)
                    .map_err(|e| route_config(name)(e.into()))?;
            }
            if !changes.is_empty() {
                tracing::info!(route = %name, ?changes, "route reconfigured; what it learned is kept");
                reconfigured = true;
            }
        }
        if options.replica.is_some() {
            for (name, state) in states.iter_mut() {
                let base = state.starting_learner(options.feedback_horizon)?;
                state.starting_point = Some(digest_of(&base, name)?);
                state.base = Some(base);
            }
        }
        Self::read_history(&mut states, dir)?;
        let log = DecisionLog::open_locked(lock, log_last, options.segment_bytes).map_err(io_at(dir))?;
        if let Some((segment, bytes)) = log.cut_on_open() {
            tracing::warn!(
                segment = %segment.display(),
                bytes,
                "the log ends in a record cut short (no newline after it), which no answer \
                 acknowledged: cut off"
            );
        }
        let router = Router {
            routes: states,
            log: Arc::new(log),
            dir: dir.to_path_buf(),
            snapshot_written: Arc::new(Mutex::new(last_seq)),
            replica: options.replica,
            routed_call_limit: options.routed_call_limit,
        };
        // A route started afresh is written down at once: learning its log again (after
        // a crash before the next snapshot) would meet the decisions of its old context.
        if reconfigured || !options.reset_routes.is_empty() {
            router.snapshot()?;
        }
        Ok(router)
    }

    /// Restores the learners of the snapshot in `dir`, if any. Returns the log position
    /// the snapshot includes and how each route recovers: from the snapshot, or, for a
    /// route whose learner cannot be read back (a damaged file, a value it cannot hold),
    /// by learning the whole log again. An unreadable snapshot is reported, never fatal.
    fn restore_snapshot(
        states: &mut BTreeMap<String, RouteState>,
        dir: &Path,
        reset: &[String],
    ) -> Result<(u64, BTreeMap<String, Recovery>)> {
        let path = dir.join(SNAPSHOT_FILE);
        let fresh = |last_seq| Recovery::Snapshot {
            last_seq,
            tracked_from: None,
        };
        let mut snapshot = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((0, states.keys().map(|name| (name.clone(), fresh(0))).collect()))
            }
            Err(e) => return Err(io_at(&path)(e)),
            Ok(bytes) => match serde_json::from_slice::<RouterSnapshotFile>(&bytes) {
                Ok(file) => file.parse(),
                Err(e) => {
                    tracing::error!(
                        snapshot = %path.display(),
                        "cannot read the snapshot ({e}); every route is rebuilt from the log"
                    );
                    let rebuild = states
                        .keys()
                        .map(|name| (name.clone(), Recovery::Rebuild { snapshot_at: None }));
                    return Ok((0, rebuild.collect()));
                }
            },
        };
        let mut recovery = BTreeMap::new();
        for (name, state) in states.iter_mut() {
            let learner = match snapshot.routes.remove(name) {
                None => {
                    recovery.insert(name.clone(), Recovery::Unknown);
                    continue;
                }
                Some(read) => read.and_then(|learner| Learner::restore(learner).map_err(|e| e.to_string())),
            };
            match learner {
                Ok(restored) => {
                    let context = snapshot.contexts.get(name);
                    if context.is_some_and(|c| *c != state.layout.definition()) && !reset.contains(name) {
                        return Err(ServeError::Snapshot {
                            path: path.clone(),
                            reason: format!(
                                "route `{name}` changed its context ({} then, {} now) since the snapshot; \
                                 start the route afresh with `--reset-route {name}`",
                                context.map_or("", String::as_str),
                                state.layout.definition()
                            ),
                        });
                    }
                    let mut restored = restored;
                    let current = state.live_mut().learner.config().clone();
                    // The log after the snapshot was written under the snapshot's horizon:
                    // it is replayed under the larger of the two, and the reconfiguration
                    // after the log trims it to today's.
                    let then = restored.config().max_tracked_decisions;
                    restored.set_max_tracked_decisions(current.max_tracked_decisions.max(then))?;
                    if restored.config().policy.learns_as(&current.policy) {
                        restored.adopt_draws(&current.policy)?;
                    }
                    let (then, now) = (&restored.config().policy, &current.policy);
                    if then != now && !reset.contains(name) {
                        return Err(ServeError::Snapshot {
                            path: path.clone(),
                            reason: format!(
                                "route `{name}` changed its policy (`{then}` then, `{now}` now) since the \
                                 snapshot, and what it learned does not carry over: write the snapshot's \
                                 policy in the configuration to keep it, or start the route afresh with \
                                 `--reset-route {name}`"
                            ),
                        });
                    }
                    // A snapshot older than recorded context definitions: the dimension
                    // tells a changed context all the same.
                    let (then, now) = (restored.config().dim, current.dim);
                    if then != now && !reset.contains(name) {
                        return Err(ServeError::Snapshot {
                            path: path.clone(),
                            reason: format!(
                                "route `{name}` changed its context ({then} features then, {now} now) \
                                 since the snapshot; start the route afresh with `--reset-route {name}`"
                            ),
                        });
                    }
                    let mut folded = BTreeMap::new();
                    for (replica, theirs) in snapshot.folded.remove(name).unwrap_or_default() {
                        let learner = Learner::restore(theirs.learner).map_err(|e| ServeError::Snapshot {
                            path: path.clone(),
                            reason: format!("route `{name}`: what replica `{replica}` learned: {e}"),
                        })?;
                        let (spend, callers, decisions) = (theirs.spend, theirs.callers, theirs.decisions);
                        let share = ReplicaShare {
                            learner,
                            spend,
                            callers,
                            decisions,
                        };
                        folded.insert(replica, share);
                    }
                    let live = state.live_mut();
                    live.learner = restored;
                    live.folded = folded;
                    state.restored = true;
                    let recovered = Recovery::Snapshot {
                        last_seq: snapshot
                            .learned_through
                            .get(name)
                            .copied()
                            .unwrap_or(snapshot.last_seq),
                        tracked_from: snapshot.tracked_from.get(name).copied(),
                    };
                    recovery.insert(name.clone(), recovered);
                }
                Err(reason) => {
                    tracing::error!(
                        snapshot = %path.display(),
                        route = %name,
                        "cannot restore the route from the snapshot ({reason}); it is rebuilt from the log"
                    );
                    let snapshot_at = Some(snapshot.last_seq);
                    recovery.insert(name.clone(), Recovery::Rebuild { snapshot_at });
                }
            }
        }
        Ok((snapshot.last_seq, recovery))
    }

    /// Reads the log from the first record some route needs (see [`Recovery`]) and
    /// replays each record as its route's recovery says. Returns the log's last sequence
    /// number. Records are numbered without gaps, so a record that a route needs and the
    /// log lacks (a segment moved away) is an error rather than lost state; a route
    /// started afresh needs none.
    fn replay_log(
        states: &mut BTreeMap<String, RouteState>,
        dir: &Path,
        last_seq: u64,
        recovery: &BTreeMap<String, Recovery>,
    ) -> Result<u64> {
        let needed = recovery
            .iter()
            .filter(|(_, r)| !matches!(r, Recovery::Reset | Recovery::Unknown));
        let required_after = needed
            .clone()
            .map(|(_, r)| r.read_after())
            .fold(last_seq, u64::min);
        let read_after = recovery
            .values()
            .map(Recovery::read_after)
            .fold(required_after, u64::min);
        let missing = |seq: u64| {
            let rebuilt: Vec<&str> = needed
                .clone()
                .filter(|(_, r)| matches!(r, Recovery::Rebuild { .. }))
                .map(|(name, _)| name.as_str())
                .collect();
            // A last record whose newline was lost reads as a write a crash cut short.
            let torn = match quiver_log::torn_tail(dir) {
                Ok(Some((segment, bytes))) => format!(
                    "; {} ends in {bytes} bytes after its last newline, left out as a record \
                     cut short",
                    segment.display()
                ),
                _ => String::new(),
            };
            let advice = if rebuilt.is_empty() {
                String::new()
            } else {
                format!(
                    "; routes {} cannot be rebuilt without it: start with `--reset-route NAME` for each \
                     to start it afresh (what it learned is lost)",
                    rebuilt.join(", ")
                )
            };
            ServeError::Io {
                path: dir.to_path_buf(),
                cause: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the log has no record {seq}; restarting needs every record from {} on \
                         (the snapshot's position, its oldest decision awaiting feedback, or the \
                         first record for a route rebuilt from the log){torn}{advice}",
                        required_after + 1
                    ),
                ),
            }
        };
        let mut next = required_after + 1;
        let mut last = read_after;
        for record in records_after(dir, read_after).map_err(io_at(dir))? {
            let record = record.map_err(io_at(dir))?;
            if record.seq > required_after && record.seq != next {
                return Err(missing(next));
            }
            next = next.max(record.seq + 1);
            last = record.seq;
            let Some(route) = recovery.get(&record.route) else {
                continue;
            };
            let decision = parse_decision_id(&record.decision_id)?.number;
            if let Some(replay) = route.replay(record.seq, decision) {
                // Made here, so if no longer tracked, forgotten under a smaller horizon.
                let forgettable = matches!(route, Recovery::Reset)
                    || states
                        .get_mut(&record.route)
                        .is_some_and(|s| s.live_mut().learner.next_decision_id() > decision);
                Self::replay_record(states, &record, replay, forgettable)?;
            }
        }
        // The log must reach the snapshot's position for the routes that need records up
        // to it, and a route rebuilt without a known position needs at least one record.
        let must_reach = needed
            .clone()
            .map(|(_, r)| match *r {
                Recovery::Rebuild { snapshot_at } => snapshot_at.unwrap_or(1),
                Recovery::Snapshot {
                    last_seq,
                    tracked_from: Some(_),
                } => last_seq,
                Recovery::Snapshot { .. } | Recovery::Reset | Recovery::Unknown => 0,
            })
            .max()
            .unwrap_or(0);
        if next <= must_reach {
            return Err(missing(next));
        }
        Ok(last_seq.max(last))
    }

    /// Replays one record. A record whose values the learner refuses (written before
    /// today's limits, say) is skipped with a warning rather than stopping the start; so
    /// is a record of a decision the learner may have let go of (`forgettable`: the route
    /// was started afresh, or the decision was made before and today's feedback horizon
    /// no longer holds it).
    fn replay_record(
        states: &mut BTreeMap<String, RouteState>,
        record: &LogRecord,
        replay: Replay,
        forgettable: bool,
    ) -> Result<()> {
        match Self::apply_record(states, record, replay) {
            // A log written before outcomes' qualities were checked against feedback may
            // hold a second quality for a decision: the first stays (and so would a first
            // outcome, though a repeat's values are never logged).
            Err(ServeError::Bandit(e))
                if e.is_input_error()
                    || (forgettable && e.is_unknown_decision())
                    || matches!(
                        e.kind(),
                        quiver_bandit::ErrorKind::QualityConflict { .. }
                            | quiver_bandit::ErrorKind::OutcomeConflict { .. }
                    ) =>
            {
                tracing::warn!(
                    record = record.seq,
                    decision = %record.decision_id,
                    "log record skipped on replay: {e}"
                );
                Ok(())
            }
            other => other,
        }
    }

    /// Reads the whole log once more: what the routes spent this UTC month (for their
    /// spend caps and savings), every record for the routes' shadow candidates, which are
    /// estimated on the route's whole log, and the sessions' models and failures.
    fn read_history(states: &mut BTreeMap<String, RouteState>, dir: &Path) -> Result<()> {
        let month = quiver_log::now_rfc3339()[..7].to_string();
        // By route, the records the shadows skipped, and the first's decision and reason:
        // one warning each, not one a record (a removed model's decisions are many).
        let mut skipped: BTreeMap<String, (usize, String, String)> = BTreeMap::new();
        // The escalations whose outcomes are still to come, by route and id.
        let mut escalations = std::collections::HashSet::new();
        for record in records_after(dir, 0).map_err(io_at(dir))? {
            let record = record.map_err(io_at(dir))?;
            let Some(state) = states.get_mut(&record.route) else {
                continue;
            };
            let id = parse_decision_id(&record.decision_id)?.number;
            if state.live_mut().shadows.is_some() {
                let shadowed = match record.event {
                    // A decision made in another context (before the route was reset) is
                    // left out, as `quiver ope` leaves it out: its context cannot be rebuilt.
                    LogEvent::Decision if state.learns_in_its_context(&record).is_err() => Err(format!(
                        "decided in the context {}, not the route's {} now",
                        record.context.as_deref().unwrap_or_default(),
                        state.layout.definition()
                    )),
                    LogEvent::Decision => {
                        let context = state.logged_context(&record)?;
                        let shadowed = state.live_mut().shadow(id, &record, Some(&context));
                        shadowed.map_err(|e| e.to_string())
                    }
                    _ => state
                        .live_mut()
                        .shadow(id, &record, None)
                        .map_err(|e| e.to_string()),
                };
                if let Err(e) = shadowed {
                    let first = (0, record.decision_id.clone(), e);
                    skipped.entry(record.route.clone()).or_insert(first).0 += 1;
                }
            }
            let live = state.live_mut();
            match (record.event, &record.session) {
                (LogEvent::Decision, Some(key)) => {
                    let at =
                        humantime::parse_rfc3339_weak(&record.timestamp).unwrap_or(SystemTime::UNIX_EPOCH);
                    let stayed = record.reason.as_deref() == Some(quiver_log::SESSION_STAY);
                    live.sessions.decided(key, id, &record.arm, at, stayed);
                }
                (LogEvent::Outcome, _) if record.error => live.session_failed(id),
                _ => {}
            }
            if record.event == LogEvent::Decision && escalation(&record) {
                escalations.insert((record.route.clone(), id));
            }
            if record.event == LogEvent::Outcome && record.timestamp.starts_with(&month) {
                let escalation = escalations.remove(&(record.route.clone(), id));
                let dearest = dearest_cost(&state.config.models, &record, escalation);
                state.live_mut().spent(
                    &record.timestamp,
                    record.cost_usd,
                    dearest,
                    record.caller.as_deref(),
                );
            }
        }
        for (route, (records, decision, e)) in skipped {
            tracing::warn!(
                %route,
                records,
                "shadow candidates skipped records of the log, the first of decision {decision}: {e}"
            );
        }
        Ok(())
    }

    fn apply_record(
        states: &mut BTreeMap<String, RouteState>,
        record: &LogRecord,
        replay: Replay,
    ) -> Result<()> {
        let Some(state) = states.get_mut(&record.route) else {
            return Ok(());
        };
        let id = parse_decision_id(&record.decision_id)?.number;
        match record.event {
            LogEvent::Decision => {
                if let Replay::Learn = replay {
                    state.learns_in_its_context(record)?;
                }
                let context = state.logged_context(record)?;
                state.live_mut().track(id, &context, record)?;
            }
            LogEvent::Outcome => match replay {
                Replay::Learn => {
                    state.live_mut().learner.record_outcome(id, &outcome_of(record))?;
                }
                Replay::Resume => state.live_mut().learner.resume_outcome(id, &outcome_of(record))?,
            },
            LogEvent::Feedback => match (record.quality, replay) {
                (Some(q), Replay::Learn) => {
                    state.live_mut().learner.record_quality(id, q)?;
                }
                (Some(q), Replay::Resume) => state.live_mut().learner.resume_quality(id, q)?,
                (None, _) => {}
            },
            // Canary events change the shadows alone, which the whole log rebuilds
            // (`Router::read_history`).
            LogEvent::CacheHit
            | LogEvent::Promotion
            | LogEvent::Rollback
            | LogEvent::CanaryStart
            | LogEvent::GateBlocked
            | LogEvent::GateUnblocked => {}
        }
        Ok(())
    }

    fn state(&self, route: &str) -> Result<&RouteState> {
        self.routes
            .get(route)
            .ok_or_else(|| ServeError::UnknownRoute(route.to_string()))
    }

    /// The learner of a route, under the route's lock: requests to the route wait while
    /// the reference lives, so read it and let it go.
    pub fn learner(&self, route: &str) -> Result<LearnerRef<'_>> {
        Ok(LearnerRef(self.state(route)?.lock()?))
    }

    /// What this replica learned on a shared route by itself, as a learner that started
    /// where every replica starts (the route's learner less what it folded in from the
    /// others), and what it spent. Its statistics, and those of every other replica, add
    /// up to the route's (`Learner::merge`), however often each is folded in. The heavy
    /// part (one refactorization per arm and replica) runs outside the route's lock.
    pub fn own_learning(&self, route: &str) -> Result<ReplicaShare> {
        let state = self.state(route)?;
        let base = state.base.as_ref().ok_or_else(|| not_shared(route))?;
        let (learner, folded, spend, callers) = {
            let live = state.lock()?;
            let folded: Vec<Learner> = live.folded.values().map(|s| s.learner.clone()).collect();
            (
                live.learner.without_tracked(),
                folded,
                live.spend.clone(),
                live.caller_spend.clone(),
            )
        };
        let decisions = learner.next_decision_id();
        // base + the sum of (theirs - base): the first of them plus the rest's differences.
        let mut folded = folded.into_iter();
        let mut others = folded.next().unwrap_or_else(|| base.clone());
        for theirs in folded {
            others.merge(&theirs, base)?;
        }
        let mut own = base.clone();
        own.merge(&learner, &others)?;
        Ok(ReplicaShare {
            learner: own,
            spend,
            callers,
            decisions,
        })
    }

    /// What a shared route's learner starts from, as a digest of the whole starting learner:
    /// its models (prices, context windows, tags), policy and parameters, seed, weights,
    /// budget, feedback horizon and priors. A replica's record is its start plus what it learned, so
    /// replicas fold in each other's learning only from the same start.
    pub fn starting_point(&self, route: &str) -> Result<String> {
        let state = self.state(route)?;
        state.starting_point.clone().ok_or_else(|| not_shared(route))
    }

    /// Folds in what another replica of a shared route has learned by itself and spent
    /// ([`Router::own_learning`] there): the difference from what it had learned when
    /// last folded in, so that nothing counts twice, and its calls since then step the
    /// budget pacer, so that the replicas pace one budget together. Spend caps hold to the
    /// cluster's spend: this replica's and the others' as last folded in. What it folds in
    /// is recorded in the snapshots, with the learner, so that a restart neither loses nor
    /// repeats it.
    pub fn fold_replica(&self, route: &str, replica: &str, theirs: ReplicaShare) -> Result<()> {
        let state = self.state(route)?;
        let base = state.base.as_ref().ok_or_else(|| not_shared(route))?;
        let mut live = state.lock()?;
        let LiveRoute { learner, folded, .. } = &mut *live;
        let before = folded.get(replica).map_or(base, |share| &share.learner);
        let (calls, cost_usd) = theirs.learner.calls_since(before);
        learner.merge(&theirs.learner, before)?;
        learner.pace_calls_elsewhere(calls, cost_usd);
        folded.insert(replica.to_string(), theirs);
        Ok(())
    }

    /// Decisions, outcomes and feedback the route took since the router opened (not those
    /// the log replayed): while it stays the same, so does [`Router::own_learning`].
    pub fn own_changes(&self, route: &str) -> Result<u64> {
        Ok(self.state(route)?.lock()?.own_changes)
    }

    /// A shared route's figures across its cluster (None on a server alone).
    pub fn cluster_figures(&self, route: &str) -> Result<Option<ClusterFigures>> {
        let Some(replica) = self.replica.clone() else {
            return Ok(None);
        };
        let live = self.state(route)?.lock()?;
        let now = quiver_log::now_rfc3339();
        let spend = live.cluster_spend();
        let others = live.folded.values().map(|share| share.decisions);
        Ok(Some(ClusterFigures {
            replica,
            other_replicas: live.folded.keys().cloned().collect(),
            decisions: live.learner.next_decision_id() + others.sum::<u64>(),
            spend: spend.at(&now),
            savings: spend.month_savings(&now),
        }))
    }

    /// What the route's shadow candidates are estimated to do, beside its policy, its
    /// models and their hull; `None` for a route without candidates.
    pub fn candidates(&self, route: &str) -> Result<Option<ShadowReport>> {
        let state = self.state(route)?;
        let live = state.lock()?;
        Ok(live.shadows.as_ref().map(Shadows::report))
    }

    /// A route's latest decisions since the router opened (at most 50), newest first.
    pub fn recent_decisions(&self, route: &str) -> Result<Vec<RecentDecision>> {
        let live = self.state(route)?.lock()?;
        Ok(live.recent.iter().rev().cloned().collect())
    }

    /// A route's cascade, if it has one.
    pub fn cascade(&self, route: &str) -> Result<Option<&Cascade>> {
        Ok(self.state(route)?.cascade.as_ref())
    }

    /// A route's configuration.
    pub fn route_config(&self, route: &str) -> Result<&RouteConfig> {
        Ok(&self.state(route)?.config)
    }

    /// The log's last sequence number (its records, all time) and the fsyncs (group
    /// commits) since the router opened.
    pub fn log_counts(&self) -> (u64, u64) {
        (self.log.last_staged(), self.log.commits())
    }

    /// The route names.
    pub fn route_names(&self) -> Vec<String> {
        self.routes.keys().cloned().collect()
    }

    fn pending<T>(&self, value: T, seq: u64) -> Pending<T> {
        Pending {
            value,
            log: Arc::clone(&self.log),
            seq,
            dir: self.dir.clone(),
        }
    }

    /// Stages `record` in the log; the change it describes must be applied next.
    fn stage(&self, record: &mut LogRecord) -> Result<u64> {
        self.log.stage(record).map_err(io_at(&self.dir))
    }

    /// The context `route` decides `request` in, with the prompt's projected `embedding`
    /// if the route has an embedding block (zeros without one), and the definition that
    /// built it: the same as `quiver replay` builds for a row with this prompt and these
    /// features.
    pub fn context(
        &self,
        route: &str,
        request: &RouteRequest,
        embedding: Option<&[f64]>,
    ) -> Result<(Context, String)> {
        let state = self.state(route)?;
        let context = state.context(&request.text()?, &request.features, embedding)?;
        Ok((context, state.layout.definition()))
    }

    /// What `route` spent this UTC day and month, USD.
    pub fn spend(&self, route: &str) -> Result<(f64, f64)> {
        let now = quiver_log::now_rfc3339();
        Ok(self.state(route)?.lock()?.spend.at(&now))
    }

    /// How many requests `route` refused at a spend cap since the router opened.
    pub fn spend_cap_refusals(&self, route: &str) -> Result<u64> {
        Ok(self.state(route)?.lock()?.spend_cap_refusals)
    }

    /// What each caller spent on `route` this UTC day and month, USD, by caller; callers
    /// that spent nothing this month are left out.
    pub fn caller_spend(&self, route: &str) -> Result<Vec<(String, f64, f64)>> {
        let now = quiver_log::now_rfc3339();
        let live = self.state(route)?.lock()?;
        Ok(live
            .caller_spend
            .iter()
            .map(|(caller, spend)| {
                let (day, month) = spend.at(&now);
                (caller.clone(), day, month)
            })
            .filter(|(_, _, month)| *month > 0.0)
            .collect())
    }

    /// What routing saved `route` this UTC month against always calling its dearest
    /// model, USD at list prices.
    pub fn savings(&self, route: &str) -> Result<f64> {
        let now = quiver_log::now_rfc3339();
        Ok(self.state(route)?.lock()?.spend.month_savings(&now))
    }

    /// What a call of decision `decision_id` costs at its model's list prices for
    /// `input_tokens` and `output_tokens` (0 where it has none), as the proxy prices a
    /// call: for an outcome that reports its tokens and not its cost. Once its outcome is
    /// recorded, the cost it reported: a repeat is priced as the first was, whatever the
    /// prices since. `None` for a model removed since.
    pub fn list_cost(&self, decision_id: &str, input_tokens: u32, output_tokens: u32) -> Result<Option<f64>> {
        let (route, id, _) = self.tracked_record(decision_id, LogEvent::Outcome)?;
        let live = self.state(&route)?.lock()?;
        if let Some(cost) = live.learner.recorded_cost(id)? {
            return Ok(Some(cost));
        }
        let arm = live.learner.tracked_arm(id)?;
        Ok(arm.map(|arm| arm.cost_usd(f64::from(input_tokens), f64::from(output_tokens))))
    }

    /// Ends the call under way of decision `decision_id`, if one counts: the request that
    /// decided it is done with it, whether or not an outcome came (an upstream's refusal
    /// is not learned; a call may never have been made; the client may have gone away).
    pub fn end_call(&self, decision_id: &str) {
        let Ok(decision) = parse_decision_id(decision_id) else {
            return;
        };
        if let Ok(mut live) = self.state(decision.route).and_then(RouteState::lock) {
            live.in_flight.end(decision.number);
        }
    }

    /// Whether a request brings as many caller features as `route` takes: checked before
    /// the request costs anything (its prompt's embedding), and again on deciding. An
    /// unknown route passes: deciding names it.
    pub fn check_features(&self, route: &str, features: &[f64]) -> Result<()> {
        self.routes
            .get(route)
            .map_or(Ok(()), |state| state.check_features(features))
    }

    /// The layout of `route`'s contexts: its hashed features and embedding block.
    pub fn layout(&self, route: &str) -> Result<&ContextLayout> {
        Ok(&self.state(route)?.layout)
    }

    /// Decides which model serves `request` on `route` and logs the decision; the decision
    /// may be returned to the caller once the [`Pending`] result is waited for. A route
    /// with an embedding block decides on hashed features alone, every model counts as
    /// available ([`Router::route_observed`] with nothing observed).
    pub fn route(&self, route: &str, request: &RouteRequest) -> Result<Pending<Routed>> {
        self.route_observed(route, request, Observed::default())
    }

    /// [`Router::route`] with what the server observed before deciding: the prompt's
    /// projected embedding, for a route with an embedding block, and the models that
    /// cannot take a call now. The log records the block, which featurizer decided
    /// (`embedding`, or `hashing` when there was no embedding to give) and the models left
    /// out as unavailable.
    pub fn route_observed(
        &self,
        route: &str,
        request: &RouteRequest,
        observed: Observed,
    ) -> Result<Pending<Routed>> {
        let Observed {
            embedding,
            mut unavailable,
            caller,
            calls,
        } = observed;
        let prompt = request.text()?;
        let state = self.state(route)?;
        let mut live = state.lock()?;
        let now = SystemTime::now();
        let allowances = state.allowances(&live, route, caller.as_deref(), now);
        if let Some((message, retry_after)) = spend::refusal(&allowances) {
            live.spend_cap_refusals += 1;
            return Err(ServeError::SpendCap { message, retry_after });
        }
        if let Some(why) = spend::downgrade(&allowances) {
            for model in spend::dearer_half(&state.config.models) {
                unavailable
                    .entry(model.to_string())
                    .or_insert_with(|| why.to_string());
            }
        }
        let context = state.context(&prompt, &request.features, embedding.as_deref())?;
        let mut learner_request = Request::new(context.clone());
        learner_request.constraints = request.constraints.clone();
        let route_objective = live.learner.config().objective;
        learner_request.objective = request.objective.map(|o| o.over(route_objective));
        learner_request.unavailable = unavailable;
        if live.learner.pacer().is_some() {
            learner_request.costs_under_way = live.in_flight.costs(self.routed_call_limit);
        }
        // Propose first: nothing learned changes until the log holds the decision (the
        // latest decision, if still unjudged, is held: see `Learner::hold_latest`).
        live.learner.hold_latest();
        let mut decision = live.learner.propose(&learner_request)?;
        let decision_id = self.decision_id(route, decision.id);
        let mut record = LogRecord::new(&decision_id, route, &state.policy, LogEvent::Decision);
        record.prompt = prompt;
        state.stamp_context(&mut record, &context, embedding);
        record.admitted = decision.admitted.clone();
        record.w_cost = request.objective.and_then(|o| o.w_cost);
        record.w_latency = request.objective.and_then(|o| o.w_latency);
        // The models the decision left out as unavailable (none if all were, and so were
        // all considered again).
        record.unavailable = std::mem::take(&mut learner_request.unavailable)
            .into_keys()
            .filter(|m| {
                let left_out = format!("{m}: unavailable (");
                decision.excluded.iter().any(|e| e.starts_with(&left_out))
            })
            .collect();
        // A session's request stays on its model while the rule says so: the decision is
        // then deterministic, and the shadows and the canary leave it out.
        let session = request
            .session
            .as_deref()
            .filter(|_| live.sessions.enabled())
            .map(|name| sessions::key(caller.as_deref(), name));
        let mut stayed = false;
        if let Some(key) = &session {
            match live
                .sessions
                .verdict(key, now, |model| can_serve(&decision, model))
            {
                SessionVerdict::Stay(model) => {
                    serve_surely(&mut decision, &model);
                    record.reason = Some(quiver_log::SESSION_STAY.into());
                    stayed = true;
                }
                SessionVerdict::Decide(why) => record.reason = Some(why.into()),
            }
        }
        record.session = session;
        // The shadow candidates decide on what the route decided on; the canary, if its
        // coin says so, serves.
        let mut shadowed = None;
        let mut canary = false;
        if let Some(shadows) = live.shadows.as_mut().filter(|_| !stayed) {
            let request = shadow_request(&context, &record, route_objective);
            match shadows.decide(decision.id, &request) {
                Ok(draws) => {
                    canary = serve_canary(&mut decision, shadows, &draws);
                    if let Some(policy) = shadows.canary_policy().filter(|_| canary) {
                        record.policy = policy.to_string();
                    }
                    shadowed = Some((request, draws));
                }
                Err(e) => tracing::warn!(route, "shadow candidates skipped a decision: {e}"),
            }
        }
        record.arm = decision.arm.clone();
        record.propensity = decision.propensity;
        record.features = logged_features(&request.features);
        record.caller = caller;
        let seq = self.stage(&mut record)?;
        live.track(decision.id, &context, &record)?;
        // A client's call is counted only for the pacer, and only if the limit lets it.
        let paced = live.learner.pacer().is_some() && !self.routed_call_limit.is_zero();
        if calls || paced {
            live.call_under_way(
                &decision,
                &record,
                calls,
                self.routed_call_limit,
                request.max_output_tokens,
            );
        }
        if let Some(key) = &record.session {
            live.sessions
                .decided(key, decision.id, &decision.arm, now, stayed);
        }
        if let (Some(shadows), Some((request, draws))) = (live.shadows.as_mut(), shadowed) {
            let recorded = shadows.record(decision.id, request, &decision.arm, decision.propensity, draws);
            if let Err(e) = recorded {
                tracing::warn!(route, decision = %decision_id, "shadow candidates skipped a decision: {e}");
            }
        }
        live.remember(&decision, &record, canary);
        live.own_changes += 1;
        Ok(self.pending(
            Routed {
                decision_id,
                decision,
            },
            seq,
        ))
    }

    /// Logs a decision of `route` that follows decision `parent` (for `request`, its
    /// context's embedding block `embedding`) on `model`, for `reason`: a fallback after the
    /// parent's model failed, or a cascade's escalation after its answer failed the check.
    /// A child decision with propensity 1, since the failure or the check chose it, not the
    /// policy. The route's learner tracks it for its outcome and feedback; the shadows, the
    /// canary and the sessions leave it out. An escalation is a second call, which the spend
    /// caps may refuse (as they would a request), and a downgraded route makes none to its
    /// dearer models: [`ServeError::SpendCap`] says why.
    pub fn log_child_decision(
        &self,
        route: &str,
        request: &RouteRequest,
        embedding: Option<&[f64]>,
        parent: &str,
        model: &str,
        reason: String,
    ) -> Result<Pending<Routed>> {
        let state = self.state(route)?;
        let mut live = state.lock()?;
        let caller = live
            .logged
            .caller_of(parse_decision_id(parent)?.number)
            .map(str::to_string);
        if quiver_log::is_escalation(&reason, parent) {
            // A second call for the request: the spend caps are asked again, with the
            // first call's cost in, as a new decision would be.
            let allowances = state.allowances(&live, route, caller.as_deref(), SystemTime::now());
            let downgraded = || {
                let why = spend::downgrade(&allowances)?;
                let dearer = spend::dearer_half(&state.config.models).contains(&model);
                dearer.then(|| (why.to_string(), spend::UNDER_WAY_RETRY))
            };
            if let Some((why, retry_after)) = spend::refusal(&allowances).or_else(downgraded) {
                return Err(ServeError::SpendCap {
                    message: format!("no escalation to `{model}`: {why}"),
                    retry_after,
                });
            }
        }
        let prompt = request.text()?;
        let context = state.context(&prompt, &request.features, embedding)?;
        live.learner.hold_latest();
        let mut decision = live.learner.propose(&Request::new(context.clone()))?;
        serve_surely(&mut decision, model);
        let decision_id = self.decision_id(route, decision.id);
        let mut record = LogRecord::new(&decision_id, route, &state.policy, LogEvent::Decision);
        record.arm = decision.arm.clone();
        record.propensity = decision.propensity;
        record.prompt = prompt;
        state.stamp_context(&mut record, &context, embedding.map(<[f64]>::to_vec));
        record.parent_decision_id = Some(parent.to_string());
        record.reason = Some(reason);
        record.caller = caller;
        record.features = logged_features(&request.features);
        let seq = self.stage(&mut record)?;
        live.track(decision.id, &context, &record)?;
        live.call_under_way(
            &decision,
            &record,
            true,
            self.routed_call_limit,
            request.max_output_tokens,
        );
        live.remember(&decision, &record, false);
        live.own_changes += 1;
        Ok(self.pending(
            Routed {
                decision_id,
                decision,
            },
            seq,
        ))
    }

    /// The id of decision `id` of `route`: `<route>:<id>`, or `<route>:<replica>:<id>` on a
    /// replica of a cluster.
    fn decision_id(&self, route: &str, id: u64) -> String {
        match &self.replica {
            Some(replica) => format!("{route}:{replica}:{id}"),
            None => format!("{route}:{id}"),
        }
    }

    /// A record of `event` for decision `decision_id`, which this router must have made.
    fn tracked_record(&self, decision_id: &str, event: LogEvent) -> Result<(String, u64, LogRecord)> {
        let decision = parse_decision_id(decision_id)?;
        if let Some(replica) = decision.replica.filter(|r| Some(*r) != self.replica.as_deref()) {
            // Handed on before this router looks at its routes (the deciding replica may have
            // one this one has not yet), but only in a spelling that replica could issue.
            let issued = format!("{}:{replica}:{}", decision.route, decision.number);
            if decision.route.is_empty() || !valid_name(replica, "") || decision_id != issued {
                return Err(ServeError::BadDecisionId(decision_id.to_string()));
            }
            return Err(ServeError::OtherReplica {
                decision_id: decision_id.to_string(),
                route: decision.route.to_string(),
                replica: replica.to_string(),
            });
        }
        let state = self.state(decision.route)?;
        // Only the spelling this router issued: the log names a decision by its id, and
        // `r:03` or, in a cluster, `r:3` would name a decision no reader finds.
        if decision_id != self.decision_id(decision.route, decision.number) {
            return Err(ServeError::BadDecisionId(decision_id.to_string()));
        }
        let record = LogRecord::new(decision_id, decision.route, &state.policy, event);
        Ok((decision.route.to_string(), decision.number, record))
    }

    /// Stages `record` when the change is news (learned, or for a removed model, only
    /// recorded); otherwise (a repeat) nothing is logged, but the answer still waits for
    /// every change staged so far, since the one it repeats may not be durable yet.
    fn stage_if(&self, applies: Applied, record: &mut LogRecord) -> Result<u64> {
        match applies {
            Applied::Applied | Applied::ArmRemoved => self.stage(record),
            Applied::AlreadyApplied => Ok(self.log.last_staged()),
        }
    }

    /// Records what a decision's call cost and how long it took (and its quality, if the
    /// outcome has one). A change is logged before it is applied; a repeat changes nothing
    /// and is not logged. Once the cost is in, a later outcome must report the call as the
    /// first did (else it is refused) and can only bring the quality, which is logged and
    /// learned as feedback, so that no cost counts twice.
    pub fn record_outcome(&self, decision_id: &str, outcome: &Outcome) -> Result<Pending<Applied>> {
        let (route, id, mut record) = self.tracked_record(decision_id, LogEvent::Outcome)?;
        let state = self.state(&route)?;
        let mut live = state.lock()?;
        if live.learner.outcome_recorded(id)? {
            // A repeat is checked as a first outcome is, and must report the call as it did.
            live.learner.outcome_would_apply(id, outcome)?;
            let Some(quality) = quiver_bandit::credited_quality(outcome.quality, outcome.error) else {
                return Ok(self.pending(Applied::AlreadyApplied, self.log.last_staged()));
            };
            record.event = LogEvent::Feedback;
            return self.apply_feedback(&mut live, id, quality, record);
        }
        let would = live.learner.outcome_would_apply(id, outcome)?;
        record.cost_usd = outcome.cost_usd;
        record.latency_ms = outcome.latency_ms;
        record.error = outcome.error;
        record.input_tokens = outcome.input_tokens;
        record.output_tokens = outcome.output_tokens;
        // A quality learned already (feedback came first) is not logged a second time.
        let learned = live.learner.quality_recorded(id)?;
        record.quality = quiver_bandit::credited_quality(outcome.quality, outcome.error).filter(|_| !learned);
        record.caller = live.logged.caller_of(id).map(str::to_string);
        let seq = self.stage_if(would, &mut record)?;
        live.in_flight.end(id);
        let applied = live.learner.record_outcome(id, outcome)?;
        if applied == Applied::Applied {
            live.applied(id, &record);
            self.judge_canary(&route, id, &mut live)?;
        }
        // A removed model's call was paid all the same.
        if applied != Applied::AlreadyApplied {
            if outcome.error {
                live.session_failed(id);
            }
            let dearest = dearest_cost(&state.config.models, &record, live.logged.is_escalation(id));
            live.spent(
                &record.timestamp,
                outcome.cost_usd,
                dearest,
                record.caller.as_deref(),
            );
        }
        Ok(self.pending(applied, seq))
    }

    /// Logs that the answer to decision `decision_id` (by `model`) was served again from
    /// the cache for `prompt`; nothing is learned from it.
    pub fn log_cache_hit(&self, decision_id: &str, model: &str, prompt: &str) -> Result<Pending<()>> {
        let (_, _, mut record) = self.tracked_record(decision_id, LogEvent::CacheHit)?;
        record.arm = model.to_string();
        record.prompt = prompt.to_string();
        let seq = self.stage(&mut record)?;
        Ok(self.pending((), seq))
    }

    /// Records a decision's quality, possibly long after. Idempotent; a change is logged
    /// before it is applied.
    pub fn feedback(&self, decision_id: &str, quality: f64) -> Result<Pending<Applied>> {
        let (route, id, record) = self.tracked_record(decision_id, LogEvent::Feedback)?;
        let mut live = self.state(&route)?.lock()?;
        self.apply_feedback(&mut live, id, quality, record)
    }

    /// Logs then learns `quality` for decision `id` of the locked route, in `record`.
    fn apply_feedback(
        &self,
        live: &mut LiveRoute,
        id: u64,
        quality: f64,
        mut record: LogRecord,
    ) -> Result<Pending<Applied>> {
        let would = live.learner.quality_would_apply(id, quality)?;
        record.quality = Some(quality);
        let seq = self.stage_if(would, &mut record)?;
        let applied = live.learner.record_quality(id, quality)?;
        if applied == Applied::Applied {
            live.applied(id, &record);
            self.judge_canary(&record.route, id, live)?;
        }
        Ok(self.pending(applied, seq))
    }

    /// Lets the canary's gate of `route`, if it has one, judge after decision `id`
    /// completed: a change of stage it calls for is logged, then made.
    fn judge_canary(&self, route: &str, id: u64, live: &mut LiveRoute) -> Result<()> {
        let Some(verdict) = live.shadows.as_ref().and_then(Shadows::canary_verdict) else {
            return Ok(());
        };
        let event = match verdict.stage {
            Stage::Promoted => LogEvent::Promotion,
            Stage::RolledBack => LogEvent::Rollback,
            Stage::Canary => LogEvent::CanaryStart,
        };
        tracing::info!(route, stage = verdict.stage.name(), reason = %verdict.reason, "canary");
        self.canary_event(route, id, live, event, verdict.reason)?;
        Ok(())
    }

    /// Logs a canary `event` of `route` (after decision `id`), then makes it.
    fn canary_event(
        &self,
        route: &str,
        id: u64,
        live: &mut LiveRoute,
        event: LogEvent,
        reason: String,
    ) -> Result<()> {
        let Some(policy) = live.shadows.as_ref().and_then(Shadows::canary_policy) else {
            return Err(ServeError::NoCanary(route.to_string()));
        };
        let mut record = LogRecord::new(&format!("{route}:{id}"), route, policy, event);
        record.reason = Some(reason);
        self.stage(&mut record)?;
        live.shadow_or_warn(id, &record);
        Ok(())
    }

    /// An operator's `action` on the canary of `route`: a change of stage, or a block of
    /// its gate, logged then made; an action that changes nothing is not logged.
    pub fn canary_action(&self, route: &str, action: CanaryAction) -> Result<Pending<CanaryReport>> {
        let state = self.state(route)?;
        let mut live = state.lock()?;
        let report = |live: &LiveRoute| {
            live.shadows
                .as_ref()
                .and_then(Shadows::canary_report)
                .ok_or_else(|| ServeError::NoCanary(route.to_string()))
        };
        let now = report(&live)?;
        let (event, changes) = match action {
            CanaryAction::Promote => (LogEvent::Promotion, now.stage != Stage::Promoted),
            CanaryAction::RollBack => (LogEvent::Rollback, now.stage != Stage::RolledBack),
            CanaryAction::Restart => (LogEvent::CanaryStart, true),
            CanaryAction::Block => (LogEvent::GateBlocked, !now.blocked),
            CanaryAction::Unblock => (LogEvent::GateUnblocked, now.blocked),
        };
        if changes {
            // The event follows the route's latest decision.
            let id = live.learner.next_decision_id().saturating_sub(1);
            tracing::info!(route, event = event.name(), "canary: by an operator");
            self.canary_event(route, id, &mut live, event, "by an operator".into())?;
            if event == LogEvent::GateUnblocked {
                // What the gate held while blocked is judged now, not at the next outcome.
                self.judge_canary(route, id, &mut live)?;
            }
        }
        Ok(self.pending(report(&live)?, self.log.last_staged()))
    }

    /// Writes every learner and the log position they include to `snapshot.json`:
    /// [`Router::capture_snapshot`], then [`CapturedSnapshot::write`].
    pub fn snapshot(&self) -> Result<()> {
        self.capture_snapshot()?.write()
    }

    /// Copies every learner's state, for a snapshot written later by
    /// [`CapturedSnapshot::write`]. Routes are copied one at a time, each under its own
    /// lock and at the last change staged then, while the others serve.
    pub fn capture_snapshot(&self) -> Result<CapturedSnapshot> {
        let mut state = RouterSnapshot {
            last_seq: 0,
            learned_through: BTreeMap::new(),
            routes: BTreeMap::new(),
            tracked_from: BTreeMap::new(),
            contexts: BTreeMap::new(),
            folded: BTreeMap::new(),
        };
        for (name, route) in &self.routes {
            let live = route.lock()?;
            // Every record of this route staged so far; staging takes the route's lock.
            let learned_through = self.log.last_staged();
            let oldest = live.learner.oldest_tracked_decision();
            let from = oldest.and_then(|decision| {
                let seq = live.logged.seq_of(decision)?;
                Some(TrackedFrom { decision, seq })
            });
            let snapshot = match (oldest, from) {
                // Tracked decisions restored from the older format: their records are
                // not located, so they stay in the snapshot.
                (Some(_), None) => live.learner.snapshot(),
                _ => live.learner.snapshot_without_tracked(),
            };
            if !live.folded.is_empty() {
                let folded = live.folded.iter().map(|(replica, share)| {
                    let folded = FoldedShare {
                        learner: share.learner.snapshot(),
                        spend: share.spend.clone(),
                        callers: share.callers.clone(),
                        decisions: share.decisions,
                    };
                    (replica.clone(), folded)
                });
                state.folded.insert(name.clone(), folded.collect());
            }
            drop(live);
            state.routes.insert(name.clone(), snapshot);
            if let Some(from) = from {
                state.tracked_from.insert(name.clone(), from);
            }
            state.contexts.insert(name.clone(), route.layout.definition());
            state.learned_through.insert(name.clone(), learned_through);
            state.last_seq = state.last_seq.max(learned_through);
        }
        Ok(CapturedSnapshot {
            state,
            log: Arc::clone(&self.log),
            dir: self.dir.clone(),
            written: Arc::clone(&self.snapshot_written),
        })
    }
}

impl CapturedSnapshot {
    /// Writes the snapshot atomically (temporary file, fsync, rename, directory fsync),
    /// once the log holds every change it covers. Writers take turns, and one older than
    /// the snapshot already written is dropped: a restart would only replay more log.
    pub fn write(self) -> Result<()> {
        let last_seq = self.state.last_seq;
        self.log.wait_durable(last_seq).map_err(io_at(&self.dir))?;
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if last_seq < *written {
            return Ok(());
        }
        let path = self.dir.join(SNAPSHOT_FILE);
        let tmp = self.dir.join("snapshot.json.tmp");
        let text = serde_json::to_vec(&self.state).map_err(|e| ServeError::Snapshot {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if let Some((route, reason)) = self.state.unreadable_route(&text) {
            return Err(ServeError::Snapshot {
                path,
                reason: format!(
                    "not written: route `{route}` would not read back ({reason}); \
                     the previous snapshot and the log still hold everything"
                ),
            });
        }
        let mut file = File::create(&tmp).map_err(io_at(&tmp))?;
        file.write_all(&text).map_err(io_at(&tmp))?;
        file.sync_all().map_err(io_at(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_at(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at(&self.dir))?;
        *written = last_seq;
        Ok(())
    }
}

/// The SHA-256 of route `route`'s starting learner `base`, in hex.
fn digest_of(base: &Learner, route: &str) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = rmp_serde::to_vec(base)
        .map_err(|e| ServeError::Config(format!("route `{route}`'s starting learner: {e}")))?;
    Ok(crate::auth::hex(&Sha256::digest(bytes)))
}

fn not_shared(route: &str) -> ServeError {
    ServeError::Config(format!("route `{route}` is not shared between replicas"))
}

/// The request shadow candidates decide a logged decision on, live and when rebuilt alike:
/// its context and what its request asked beyond it, as logged ([`LoggedTerms`]), its
/// trade-off over the route's `route_objective`.
fn shadow_request(context: &Context, record: &LogRecord, route_objective: Objective) -> Request {
    let terms = LoggedTerms {
        unavailable: record.unavailable.clone(),
        admitted: record.admitted.clone(),
        objective: ObjectiveOverride {
            w_cost: record.w_cost,
            w_latency: record.w_latency,
        },
    };
    terms.request(context.clone(), route_objective)
}

/// Serves `decision` with `arm` instead of the policy's choice, which becomes the first
/// fallback.
fn switch_arm(decision: &mut Decision, arm: &str) {
    if decision.arm != arm {
        let chosen = std::mem::replace(&mut decision.arm, arm.to_string());
        decision.fallback.retain(|m| m != arm);
        decision.fallback.insert(0, chosen);
    }
}

/// Whether `model` may serve the request `decision` decided: eligible, or left out only as
/// dominated (a session need not leave a model the policy would not explore).
fn can_serve(decision: &Decision, model: &str) -> bool {
    let dominated = format!("{model}: dominated by ");
    decision.arms.iter().any(|e| e.arm == model)
        || decision.excluded.iter().any(|e| e.starts_with(&dominated))
}

/// Serves `decision` with `model`, with certainty: a session's stay, a cascade's
/// escalation.
fn serve_surely(decision: &mut Decision, model: &str) {
    switch_arm(decision, model);
    decision.propensity = 1.0;
    decision.propensity_kind = PropensityKind::Exact;
    for e in &mut decision.arms {
        e.probability = f64::from(u8::from(e.arm == model));
    }
}

/// Lets the canary of `draws` serve `decision` when its coin says so, and sets the
/// decision's probabilities to the mixture's: the route's policy's and the canary's.
fn serve_canary(decision: &mut Decision, shadows: &Shadows, draws: &Draws) -> bool {
    let served = shadows.canary_arm(draws).map(str::to_string);
    if let Some(arm) = &served {
        switch_arm(decision, arm);
    }
    let route_probability = decision
        .arms
        .iter()
        .find(|e| e.arm == decision.arm)
        .map_or(0.0, |e| e.probability);
    decision.propensity = shadows.propensity(draws, &decision.arm, route_probability);
    for e in &mut decision.arms {
        e.probability = shadows.propensity(draws, &e.arm, e.probability);
    }
    served.is_some()
}

/// A request's caller features as the log names them: `f_0`, `f_1`, ...
fn logged_features(features: &[f64]) -> BTreeMap<String, f64> {
    features
        .iter()
        .enumerate()
        .map(|(i, v)| (quiver_log::feature_name(i), *v))
        .collect()
}

fn outcome_of(record: &LogRecord) -> Outcome {
    Outcome {
        latency_ms: record.latency_ms,
        input_tokens: record.input_tokens,
        output_tokens: record.output_tokens,
        cost_usd: record.cost_usd,
        error: record.error,
        quality: record.quality,
    }
}
