//! The in-process router: learners per route, the decision log and snapshots.
//!
//! Data flows one way: request -> features -> decision -> log -> (call) -> outcome ->
//! update -> log. Every state change is staged in the log as it is applied and comes back
//! as a [`Pending`] result, which [`Pending::wait`] releases once the log holds the change
//! durably (group commit: see [`crate::log`]), so nothing is acknowledged before it is
//! fsynced while concurrent callers share fsyncs. On [`Router::open`] the last snapshot is
//! restored and the log records after it are replayed, so the learners equal those of a
//! run that never stopped.
//!
//! Snapshots hold what the learners learned but not the decisions awaiting feedback: those
//! can number up to the feedback horizon (a million by default), with their features, and
//! the log holds them already. A snapshot instead names, per route, the oldest decision it
//! still tracks and where the log wrote it; on open the log is read from there, and records
//! the snapshot already learned from only re-register their decisions. A snapshot's size
//! and its write then stay those of the models, however much feedback is outstanding.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use quiver_bandit::{
    Applied, Arm, BudgetConfig, ChatMessage, Constraints, Context, Decision, Featurizer, FeaturizerConfig,
    HashingFeaturizer, Learner, LearnerConfig, Objective, Outcome, PolicySpec, Request, Snapshot,
    DEFAULT_PACING_STEP,
};
use serde::{Deserialize, Serialize};

use crate::error::{io_at, Result, ServeError};
use crate::log::{records_after, DecisionLog, LogEvent, LogRecord, SEGMENT_BYTES};

/// One model a route can call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Model id, as the upstream names it.
    pub id: String,
    /// USD per million input tokens.
    #[serde(default)]
    pub input_usd_per_million: f64,
    /// USD per million output tokens.
    #[serde(default)]
    pub output_usd_per_million: f64,
    /// Context window in tokens.
    #[serde(default)]
    pub context_window: Option<u32>,
    /// Tags (provider, region, capabilities).
    #[serde(default)]
    pub tags: Vec<String>,
    /// OpenAI-compatible base URL of the upstream (`/chat/completions` is appended);
    /// needed only to proxy.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Environment variable holding the upstream's API key, sent as a bearer token.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The model name sent upstream (default: `id`).
    #[serde(default)]
    pub upstream_model: Option<String>,
}

/// One route: a name, a policy and its models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteConfig {
    /// Route name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Policy spec, e.g. `lints(v=0.3,floor=0.01)`.
    pub policy: String,
    /// The models.
    pub models: Vec<ModelConfig>,
    /// Quality points per USD.
    #[serde(default)]
    pub w_cost: f64,
    /// Quality points per second.
    #[serde(default)]
    pub w_latency: f64,
    /// Target mean spend per request, USD.
    #[serde(default)]
    pub budget_usd_per_request: Option<f64>,
    /// Number of caller features each request brings.
    #[serde(default)]
    pub extra_features: usize,
    /// Seed of the route's decisions.
    #[serde(default)]
    pub seed: u64,
}

/// A request to route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    pub objective: Option<Objective>,
}

impl RouteRequest {
    /// The text that is featurized and logged.
    pub fn text(&self) -> Result<String> {
        match (&self.prompt, &self.messages) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(m)) if !m.is_empty() => Ok(m
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n")),
            _ => Err(ServeError::EmptyRequest),
        }
    }
}

/// A routed request: the decision and its id for outcome and feedback.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Routed {
    /// `<route>:<number>`.
    pub decision_id: String,
    /// The learner's decision.
    pub decision: Decision,
}

struct RouteState {
    config: RouteConfig,
    policy: String,
    featurizer: HashingFeaturizer,
    learner: Learner,
    decision_seqs: DecisionSeqs,
}

/// Where the log wrote each tracked decision of a route, so that a snapshot can say where
/// to rebuild them from. A route's logged decisions take consecutive ids, so a queue
/// indexed from its first id holds them.
#[derive(Default)]
struct DecisionSeqs {
    first_id: u64,
    seqs: VecDeque<u64>,
}

impl DecisionSeqs {
    fn push(&mut self, id: u64, seq: u64) {
        if self.seqs.is_empty() || id != self.first_id + self.seqs.len() as u64 {
            // A gap (decisions restored from an older snapshot format): start afresh.
            self.seqs.clear();
            self.first_id = id;
        }
        self.seqs.push_back(seq);
    }

    fn forget_before(&mut self, id: u64) {
        while self.first_id < id && self.seqs.pop_front().is_some() {
            self.first_id += 1;
        }
    }

    fn seq_of(&self, id: u64) -> Option<u64> {
        let index = usize::try_from(id.checked_sub(self.first_id)?).ok()?;
        self.seqs.get(index).copied()
    }
}

impl RouteState {
    fn new(config: RouteConfig, feedback_horizon: usize) -> Result<Self> {
        let spec: PolicySpec = config.policy.parse()?;
        let featurizer = HashingFeaturizer::new(FeaturizerConfig {
            extra_features: config.extra_features,
            ..FeaturizerConfig::default()
        });
        let mut learner_config = LearnerConfig::new(spec.clone(), featurizer.dim());
        learner_config.objective = Objective::new(config.w_cost, config.w_latency)?;
        learner_config.seed = config.seed;
        learner_config.max_tracked_decisions = feedback_horizon.max(1);
        learner_config.budget = config.budget_usd_per_request.map(|b| BudgetConfig {
            target_usd_per_request: b,
            step_size: DEFAULT_PACING_STEP,
        });
        let arms = config
            .models
            .iter()
            .map(|m| {
                let mut arm = Arm::new(&m.id)
                    .with_prices(m.input_usd_per_million / 1e6, m.output_usd_per_million / 1e6);
                arm.context_window_tokens = m.context_window;
                arm.tags = m.tags.iter().cloned().collect();
                arm
            })
            .collect();
        Ok(RouteState {
            policy: spec.to_string(),
            learner: Learner::new(learner_config, arms)?,
            featurizer,
            config,
            decision_seqs: DecisionSeqs::default(),
        })
    }

    /// Tracks decision `id`, logged at `seq`, for its feedback.
    fn track(&mut self, id: u64, arm: &str, context: &Context, seq: u64) -> Result<()> {
        self.learner.resume_decision(id, arm, context)?;
        self.decision_seqs.push(id, seq);
        if let Some(oldest) = self.learner.oldest_tracked_decision() {
            self.decision_seqs.forget_before(oldest);
        }
        Ok(())
    }

    fn context(&self, prompt: &str, features: &[f64]) -> Result<Context> {
        Ok(self.featurizer.featurize(prompt, features)?)
    }
}

/// Options of [`Router::open_with`].
#[derive(Debug, Clone, Copy)]
pub struct RouterOptions {
    /// Log segment size before rotation, bytes.
    pub segment_bytes: u64,
    /// Decisions remembered per route for late feedback.
    pub feedback_horizon: usize,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            segment_bytes: SEGMENT_BYTES,
            feedback_horizon: 1_000_000,
        }
    }
}

/// The snapshot file: every route's learner and the log position it includes.
#[derive(Serialize, Deserialize)]
struct RouterSnapshot {
    last_seq: u64,
    routes: BTreeMap<String, Snapshot>,
    /// Per route whose learner is saved without its tracked decisions, where to rebuild
    /// them from. Routes absent here keep them in their learner (the older format).
    #[serde(default)]
    tracked_from: BTreeMap<String, TrackedFrom>,
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
    /// Learned from already (the snapshot holds it): only its decision's bookkeeping.
    Resume,
}

const SNAPSHOT_FILE: &str = "snapshot.json";

/// Routes requests with per-route learners, logging every change durably.
pub struct Router {
    routes: BTreeMap<String, RouteState>,
    log: Arc<DecisionLog>,
    dir: PathBuf,
    /// The last sequence number a written snapshot covers; held while one is written.
    snapshot_written: Arc<Mutex<u64>>,
}

/// The learners' state at one point of the log, captured under the router's lock by
/// [`Router::capture_snapshot`] and written by [`CapturedSnapshot::write`] without it:
/// serializing the learners and the fsync take far longer than the copy, and requests need
/// not wait for them.
#[must_use = "a captured snapshot is saved only once written"]
pub struct CapturedSnapshot {
    state: RouterSnapshot,
    log: Arc<DecisionLog>,
    dir: PathBuf,
    written: Arc<Mutex<u64>>,
}

/// The result of a change that is applied and staged in the log but not yet durable. Wait
/// for it (without holding the router's lock, so that other changes join the same fsync)
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

fn parse_decision_id(id: &str) -> Result<(&str, u64)> {
    id.rsplit_once(':')
        .and_then(|(route, n)| n.parse().ok().map(|n| (route, n)))
        .ok_or_else(|| ServeError::BadDecisionId(id.to_string()))
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
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let (last_seq, tracked_from) = if snapshot_path.exists() {
            Self::restore_snapshot(&mut states, &snapshot_path)?
        } else {
            (0, BTreeMap::new())
        };
        let log_last = Self::replay_log(&mut states, dir, last_seq, &tracked_from)?;
        let log = DecisionLog::open(dir, log_last, options.segment_bytes).map_err(io_at(dir))?;
        Ok(Router {
            routes: states,
            log: Arc::new(log),
            dir: dir.to_path_buf(),
            snapshot_written: Arc::new(Mutex::new(last_seq)),
        })
    }

    /// Restores the learners of the snapshot at `path`; returns the log position it
    /// includes and where each route's tracked decisions are to be rebuilt from.
    fn restore_snapshot(
        states: &mut BTreeMap<String, RouteState>,
        path: &Path,
    ) -> Result<(u64, BTreeMap<String, TrackedFrom>)> {
        let text = std::fs::read_to_string(path).map_err(io_at(path))?;
        let snapshot: RouterSnapshot = serde_json::from_str(&text).map_err(|e| ServeError::Snapshot {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        for (name, learner) in snapshot.routes {
            // A route removed from the configuration drops its learner; a new one starts fresh.
            if let Some(state) = states.get_mut(&name) {
                let restored = Learner::restore(learner)?;
                if restored.config() != state.learner.config() || restored.arms() != state.learner.arms() {
                    return Err(ServeError::Snapshot {
                        path: path.to_path_buf(),
                        reason: format!(
                            "route `{name}` changed its policy, models or weights since the snapshot; \
                             move the snapshot away to start it afresh"
                        ),
                    });
                }
                state.learner = restored;
            }
        }
        let mut tracked_from = snapshot.tracked_from;
        tracked_from.retain(|name, _| states.contains_key(name));
        Ok((snapshot.last_seq, tracked_from))
    }

    /// Reads the log from the oldest tracked decision's record on: records the snapshot
    /// (at `last_seq`) learned from re-register the decisions it tracks; the others are
    /// applied. Returns the log's last sequence number. Records are numbered without gaps,
    /// so a missing one (a segment moved away) is an error rather than lost state.
    fn replay_log(
        states: &mut BTreeMap<String, RouteState>,
        dir: &Path,
        last_seq: u64,
        tracked_from: &BTreeMap<String, TrackedFrom>,
    ) -> Result<u64> {
        let read_after = tracked_from
            .values()
            .map(|from| from.seq.saturating_sub(1))
            .fold(last_seq, u64::min);
        let missing = |seq: u64| ServeError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the log has no record {seq}; restarting needs every record from {} on \
                     (the snapshot's position, or its oldest decision awaiting feedback)",
                    read_after + 1
                ),
            ),
        };
        let mut next = read_after + 1;
        for record in records_after(dir, read_after).map_err(io_at(dir))? {
            let record = record.map_err(io_at(dir))?;
            if record.seq != next {
                return Err(missing(next));
            }
            next += 1;
            if record.seq > last_seq {
                Self::replay_record(states, &record, Replay::Learn)?;
            } else if let Some(from) = tracked_from.get(&record.route) {
                if parse_decision_id(&record.decision_id)?.1 >= from.decision {
                    Self::replay_record(states, &record, Replay::Resume)?;
                }
            }
        }
        if next <= last_seq && !tracked_from.is_empty() {
            return Err(missing(next));
        }
        Ok(last_seq.max(next - 1))
    }

    fn replay_record(
        states: &mut BTreeMap<String, RouteState>,
        record: &LogRecord,
        replay: Replay,
    ) -> Result<()> {
        let Some(state) = states.get_mut(&record.route) else {
            return Ok(());
        };
        let (_, id) = parse_decision_id(&record.decision_id)?;
        match record.event {
            LogEvent::Decision => {
                let features: Vec<f64> = (0..state.config.extra_features)
                    .map(|i| record.features.get(&format!("f_{i}")).copied().unwrap_or(0.0))
                    .collect();
                let context = state.context(&record.prompt, &features)?;
                state.track(id, &record.arm, &context, record.seq)?;
            }
            LogEvent::Outcome => match replay {
                Replay::Learn => {
                    state.learner.record_outcome(id, &outcome_of(record))?;
                }
                Replay::Resume => state.learner.resume_outcome(id, &outcome_of(record))?,
            },
            LogEvent::Feedback => match (record.quality, replay) {
                (Some(q), Replay::Learn) => {
                    state.learner.record_quality(id, q)?;
                }
                (Some(q), Replay::Resume) => state.learner.resume_quality(id, q)?,
                (None, _) => {}
            },
        }
        Ok(())
    }

    fn state(&self, route: &str) -> Result<&RouteState> {
        self.routes
            .get(route)
            .ok_or_else(|| ServeError::UnknownRoute(route.to_string()))
    }

    fn state_mut(&mut self, route: &str) -> Result<&mut RouteState> {
        self.routes
            .get_mut(route)
            .ok_or_else(|| ServeError::UnknownRoute(route.to_string()))
    }

    /// The learner of a route.
    pub fn learner(&self, route: &str) -> Result<&Learner> {
        Ok(&self.state(route)?.learner)
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

    /// Decides which model serves `request` on `route` and logs the decision; the decision
    /// may be returned to the caller once the [`Pending`] result is waited for.
    pub fn route(&mut self, route: &str, request: &RouteRequest) -> Result<Pending<Routed>> {
        let prompt = request.text()?;
        let state = self.state(route)?;
        let context = state.context(&prompt, &request.features)?;
        let mut learner_request = Request::new(context.clone());
        learner_request.constraints = request.constraints.clone();
        learner_request.objective = request.objective;
        // Propose first: nothing changes until the log holds the decision.
        let decision = state.learner.propose(&learner_request)?;
        let decision_id = format!("{route}:{}", decision.id);
        let mut record = LogRecord::new(&decision_id, route, &state.policy, LogEvent::Decision);
        record.arm = decision.arm.clone();
        record.propensity = decision.propensity;
        record.prompt = prompt;
        record.input_tokens = context.input_tokens;
        record.features = request
            .features
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("f_{i}"), *v))
            .collect();
        let seq = self.stage(&mut record)?;
        self.state_mut(route)?
            .track(decision.id, &decision.arm, &context, seq)?;
        Ok(self.pending(
            Routed {
                decision_id,
                decision,
            },
            seq,
        ))
    }

    fn tracked_record(&self, decision_id: &str, event: LogEvent) -> Result<(String, u64, LogRecord)> {
        let (route, id) = parse_decision_id(decision_id)?;
        let state = self.state(route)?;
        let record = LogRecord::new(decision_id, route, &state.policy, event);
        Ok((route.to_string(), id, record))
    }

    /// Stages `record` when the change applies; otherwise (a repeat) nothing is logged,
    /// but the answer still waits for every change staged so far, since the one it repeats
    /// may not be durable yet.
    fn stage_if(&self, applies: Applied, record: &mut LogRecord) -> Result<u64> {
        match applies {
            Applied::Applied => self.stage(record),
            _ => Ok(self.log.last_staged()),
        }
    }

    /// Records what a decision's call cost and how long it took (and its quality, if the
    /// outcome has one). A change is logged before it is applied; a repeat changes nothing
    /// and is not logged.
    pub fn record_outcome(&mut self, decision_id: &str, outcome: &Outcome) -> Result<Pending<Applied>> {
        let (route, id, mut record) = self.tracked_record(decision_id, LogEvent::Outcome)?;
        let would = self.state(&route)?.learner.outcome_would_apply(id, outcome)?;
        record.cost_usd = outcome.cost_usd;
        record.latency_ms = outcome.latency_ms;
        record.error = outcome.error;
        record.input_tokens = outcome.input_tokens;
        record.output_tokens = outcome.output_tokens;
        record.quality = outcome.quality.or(if outcome.error { Some(0.0) } else { None });
        let seq = self.stage_if(would, &mut record)?;
        let applied = self.state_mut(&route)?.learner.record_outcome(id, outcome)?;
        Ok(self.pending(applied, seq))
    }

    /// Records a decision's quality, possibly long after. Idempotent; a change is logged
    /// before it is applied.
    pub fn feedback(&mut self, decision_id: &str, quality: f64) -> Result<Pending<Applied>> {
        let (route, id, mut record) = self.tracked_record(decision_id, LogEvent::Feedback)?;
        let would = self.state(&route)?.learner.quality_would_apply(id, quality)?;
        record.quality = Some(quality);
        let seq = self.stage_if(would, &mut record)?;
        let applied = self.state_mut(&route)?.learner.record_quality(id, quality)?;
        Ok(self.pending(applied, seq))
    }

    /// Writes every learner and the log position they include to `snapshot.json`:
    /// [`Router::capture_snapshot`], then [`CapturedSnapshot::write`].
    pub fn snapshot(&self) -> Result<()> {
        self.capture_snapshot().write()
    }

    /// Copies every learner's state, at the last change staged, for a snapshot written
    /// later by [`CapturedSnapshot::write`]; hold the router only for this part.
    pub fn capture_snapshot(&self) -> CapturedSnapshot {
        let mut routes = BTreeMap::new();
        let mut tracked_from = BTreeMap::new();
        for (name, state) in &self.routes {
            let oldest = state.learner.oldest_tracked_decision();
            let from = oldest.and_then(|decision| {
                let seq = state.decision_seqs.seq_of(decision)?;
                Some(TrackedFrom { decision, seq })
            });
            let snapshot = match (oldest, from) {
                // Tracked decisions restored from the older format: their records are
                // not located, so they stay in the snapshot.
                (Some(_), None) => state.learner.snapshot(),
                _ => state.learner.snapshot_without_tracked(),
            };
            routes.insert(name.clone(), snapshot);
            if let Some(from) = from {
                tracked_from.insert(name.clone(), from);
            }
        }
        CapturedSnapshot {
            state: RouterSnapshot {
                last_seq: self.log.last_staged(),
                routes,
                tracked_from,
            },
            log: Arc::clone(&self.log),
            dir: self.dir.clone(),
            written: Arc::clone(&self.snapshot_written),
        }
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
