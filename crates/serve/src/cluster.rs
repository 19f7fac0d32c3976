//! Replicas that share what their routes learn, through Redis (or Valkey).
//!
//! Each replica decides alone, from its own learner: no network call is on the decision
//! path. Every `sync_interval_ms`, a task does per route:
//!
//! 1. **Publish.** What the replica learned by itself ([`Router::own_learning`]: its
//!    learner less what it folded in from the others) goes to Redis as one cumulative
//!    record, written only by its owner, in one transaction with a new version in the
//!    route's version hash. Nothing is written when it has not changed.
//! 2. **Fold.** Each other replica's record whose version changed is read and folded in
//!    ([`Router::fold_replica`]): the learner adds what that replica learned since its
//!    record was last folded in.
//!
//! Why cumulative records, each with one writer, rather than increments of shared
//! counters: the statistics are floating-point sums (ridge `A` and `b`, counts, spend),
//! which Redis cannot add atomically as matrices, and increments lost or repeated across
//! a crash could not be told apart. A record replaces the previous one, so reading or
//! writing it twice changes nothing; a replica that restarts recovers its own learning
//! from its snapshot and log and publishes the same record again, never more; and what it
//! folded in is kept in its snapshots, so it folds in only what is new. Forgetting and
//! restarts on a detected change are not sums, so shared routes refuse them
//! (`PolicySpec::check_additive`).
//!
//! Feedback and outcomes may reach any replica. Decision ids name the replica that made
//! them (`<route>:<replica>:<number>`), and only it holds the decision's features, so only
//! it applies them. Another replica accepts them into its outbox (`forwarded.jsonl` in its
//! log directory, fsynced before the answer: acknowledged means durable there) and, at
//! each sync, hands them to the deciding replica's inbox in Redis until that one confirms.
//! The deciding replica applies each as if sent to it (logged and fsynced in its own log;
//! a repeat changes nothing), then confirms. A message lost with Redis is sent again (the
//! outbox keeps it until confirmed); one applied twice is a repeat. So each is applied
//! exactly once. A replica publishes its routes in a first sync before it serves, so a
//! report on a decision of a replica that never published its route is refused: no
//! replica could apply it.
//!
//! Keys, under `key_prefix` (`quiver` by default): `<prefix>:<route>:versions`, a hash
//! from replica to the version of its record; `<prefix>:<route>:learned:<replica>`, the
//! record: MessagePack of [`SharedLearning`]; `<prefix>:inbox:<replica>`, a list of
//! forwarded feedback and outcomes (JSON of `Forward`); `<prefix>:confirmed:<replica>`,
//! the set of that replica's forwards applied. When Redis cannot be reached the replicas
//! serve and learn alone, `/healthz` and `quiver_cluster_redis_up` say so, and the next
//! sync that reaches it publishes, folds in and delivers everything since.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_bandit::{Applied, Learner, Snapshot};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::error::{io_at, Result, ServeError};
use crate::forward::{Forward, Outbox, Report};
use crate::router::{valid_name, Pending, ReplicaShare, Router};
use crate::spend::Spend;
use crate::state::AppState;

/// `[cluster]`: the Redis the replicas share their learning through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The Redis (or Valkey) server, e.g. `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// This replica's name among the replicas, unique to it. Absent: the name kept in the
    /// log directory's `replica_id` file, made up on the first start (host name and a
    /// random suffix). The name goes with the log directory, whose learning it publishes:
    /// a directory started under another name is refused, as its learning would count
    /// twice.
    #[serde(default)]
    pub replica_id: Option<String>,
    /// Time between two syncs, ms.
    #[serde(default = "default_sync_interval")]
    pub sync_interval_ms: u64,
    /// Prefix of the keys, so that clusters can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

fn default_sync_interval() -> u64 {
    250
}

fn default_key_prefix() -> String {
    "quiver".into()
}

const REPLICA_FILE: &str = "replica_id";

/// What one replica publishes of a route: what it learned by itself.
#[derive(Debug, Serialize, Deserialize)]
pub struct SharedLearning {
    /// The replica that wrote it.
    pub replica: String,
    /// The definition of the route's contexts at that replica (`Featurizer::definition`):
    /// statistics of other contexts do not add up.
    pub context: String,
    /// The learner: where every replica starts, plus what this one learned.
    pub learner: Snapshot,
    /// What the route spent on this replica this UTC day and month.
    pub spend: Spend,
    /// What each caller spent on the route on this replica.
    pub callers: BTreeMap<String, Spend>,
    /// Decisions this replica made on the route, all time.
    pub decisions: u64,
    /// What its learner started from ([`Router::starting_point`]); empty in a record of a
    /// version that did not say.
    #[serde(default)]
    pub start: String,
}

impl SharedLearning {
    /// The record as it is published: what `replica` learned and spent on `route`.
    pub fn of(router: &Router, route: &str, replica: &str) -> std::result::Result<Self, String> {
        let own = router.own_learning(route).map_err(|e| e.to_string())?;
        Ok(SharedLearning {
            replica: replica.to_string(),
            context: router.layout(route).map_err(|e| e.to_string())?.definition(),
            learner: own.learner.snapshot(),
            spend: own.spend,
            callers: own.callers,
            decisions: own.decisions,
            start: router.starting_point(route).map_err(|e| e.to_string())?,
        })
    }

    /// The record in its wire form, MessagePack.
    pub fn encode(&self) -> std::result::Result<Vec<u8>, String> {
        rmp_serde::to_vec_named(self).map_err(|e| e.to_string())
    }

    /// A record read back from its wire form.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        rmp_serde::from_slice(bytes).map_err(|e| format!("unreadable record: {e}"))
    }

    /// Folds the record, published by `replica`, into `route` on `router`
    /// ([`Router::fold_replica`]), if it is of the same contexts, names that replica and
    /// started where this replica's learner did.
    pub fn fold_into(self, router: &Router, route: &str, replica: &str) -> std::result::Result<(), String> {
        let ours = router.layout(route).map_err(|e| e.to_string())?.definition();
        if self.context != ours {
            return Err(format!(
                "its contexts are `{}`, this replica's `{ours}`",
                self.context
            ));
        }
        if self.replica != replica {
            return Err(format!("the record names replica `{}`", self.replica));
        }
        if self.start.is_empty() {
            return Err("the record does not say where its learner started (a version \
                 before that was said): upgrade every replica"
                .into());
        }
        if self.start != router.starting_point(route).map_err(|e| e.to_string())? {
            return Err(
                "its learner started from another configuration of the route (models, \
                 prices, policy, seed, weights, budget, feedback horizon or priors; a change \
                 rolling out, say): learning adds up only from the same start"
                    .into(),
            );
        }
        let share = ReplicaShare {
            learner: Learner::restore(self.learner).map_err(|e| e.to_string())?,
            spend: self.spend,
            callers: self.callers,
            decisions: self.decisions,
        };
        router
            .fold_replica(route, replica, share)
            .map_err(|e| e.to_string())
    }
}

/// What the last sync found.
#[derive(Debug, Clone, Default)]
struct SyncStatus {
    /// Why the last sync did not reach Redis; None when it did (or none ran yet).
    error: Option<String>,
    /// When a sync last reached Redis.
    last_ok: Option<Instant>,
}

/// A replica's membership of a cluster.
pub struct Cluster {
    config: ClusterConfig,
    replica: String,
    client: redis::Client,
    status: Mutex<SyncStatus>,
    outbox: Outbox,
    /// By route, the replicas that published it, as the syncs since start found them.
    publishers: Mutex<HashMap<String, HashSet<String>>>,
    /// The connection [`Cluster::published`] asks Redis on, once made.
    asking: Mutex<Option<MultiplexedConnection>>,
}

impl Cluster {
    /// Checks `config` and settles this replica's name with the log directory `log_dir`.
    pub fn new(config: ClusterConfig, log_dir: &Path) -> Result<Self> {
        let refuse = |what: String| ServeError::Config(format!("[cluster] {what}"));
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| refuse(format!("redis_url `{}`: {e}", config.redis_url)))?;
        if !(10..=60_000).contains(&config.sync_interval_ms) {
            return Err(refuse(format!(
                "sync_interval_ms = {}: use 10 to 60000",
                config.sync_interval_ms
            )));
        }
        if !valid_name(&config.key_prefix, ":") {
            return Err(refuse(format!(
                "key_prefix `{}`: use 1 to 64 letters, digits, `-`, `_`, `.` and `:`",
                config.key_prefix
            )));
        }
        let replica = replica_name(config.replica_id.as_deref(), log_dir)?;
        Ok(Cluster {
            config,
            replica,
            client,
            status: Mutex::new(SyncStatus::default()),
            outbox: Outbox::open(log_dir)?,
            publishers: Mutex::default(),
            asking: Mutex::default(),
        })
    }

    /// Accepts `report` on decision `decision_id`, made by replica `to`, for that replica
    /// (see the module docs); durable when this returns. Blocks for the fsync.
    pub fn forward(&self, to: &str, decision_id: &str, report: Report) -> Result<()> {
        self.outbox.add(&self.replica, to, decision_id, report).map(drop)
    }

    /// Whether replica `replica` published route `route` to the cluster, as a sync found,
    /// else (a replica started since) as Redis says now; `None` when Redis does not answer.
    /// A replica publishes its routes before it serves (see [`sync_forever`]), so one
    /// that never did made none of their decisions, unless Redis did not answer it then:
    /// until its sync reaches Redis, its decisions are reported to it alone.
    pub async fn published(&self, route: &str, replica: &str) -> Option<bool> {
        let seen = (self.publishers.lock().unwrap_or_else(|e| e.into_inner()))
            .get(route)
            .is_some_and(|replicas| replicas.contains(replica));
        if seen {
            return Some(true);
        }
        let limit = self.interval().max(Duration::from_secs(1));
        let kept = self.asking.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut connection = match kept {
            Some(connection) => connection,
            None => within(limit, self.client.get_multiplexed_async_connection())
                .await
                .ok()?,
        };
        let published = within(limit, connection.hexists(self.versions_key(route), replica)).await;
        // A connection that failed is made anew next time.
        *self.asking.lock().unwrap_or_else(|e| e.into_inner()) = published.is_ok().then_some(connection);
        published.ok()
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether the last sync reached Redis, and if not why: for `/healthz`.
    pub fn health(&self) -> std::result::Result<(), String> {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match (status.error, status.last_ok) {
            (None, _) => Ok(()),
            (Some(error), Some(at)) => Err(format!(
                "{error} (last reached {:.1} s ago)",
                at.elapsed().as_secs_f64()
            )),
            (Some(error), None) => Err(format!("{error} (never reached)")),
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.config.sync_interval_ms)
    }

    fn versions_key(&self, route: &str) -> String {
        format!("{}:{route}:versions", self.config.key_prefix)
    }

    fn learned_key(&self, route: &str, replica: &str) -> String {
        format!("{}:{route}:learned:{replica}", self.config.key_prefix)
    }

    fn inbox_key(&self, replica: &str) -> String {
        format!("{}:inbox:{replica}", self.config.key_prefix)
    }

    fn confirmed_key(&self, replica: &str) -> String {
        format!("{}:confirmed:{replica}", self.config.key_prefix)
    }
}

/// The replica's name: the configured one or the log directory's, which must agree.
fn replica_name(configured: Option<&str>, log_dir: &Path) -> Result<String> {
    let path = log_dir.join(REPLICA_FILE);
    let kept = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_at(&path)(e)),
    };
    let name = match (configured, kept) {
        (Some(name), Some(kept)) if name != kept => {
            return Err(ServeError::Config(format!(
                "[cluster] replica_id `{name}`: the log directory {} holds what replica `{kept}` \
                 learned, which the cluster has as `{kept}`'s; under another name it would count \
                 twice (keep `{kept}`, or start `{name}` on an empty log directory)",
                log_dir.display()
            )))
        }
        (_, Some(kept)) => return checked_name(kept),
        (Some(name), None) => checked_name(name.to_string())?,
        (None, None) => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let host: String = host
                .trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(40)
                .collect();
            let host = if host.is_empty() { "replica".into() } else { host };
            format!("{host}-{:08x}", rand::random::<u32>())
        }
    };
    std::fs::create_dir_all(log_dir).map_err(io_at(log_dir))?;
    let tmp = log_dir.join("replica_id.tmp");
    std::fs::write(&tmp, format!("{name}\n"))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_at(&path))?;
    std::fs::File::open(log_dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(log_dir))?;
    Ok(name)
}

fn checked_name(name: String) -> Result<String> {
    // No `:`, which separates the parts of decision ids.
    if valid_name(&name, "") {
        Ok(name)
    } else {
        Err(ServeError::Config(format!(
            "[cluster] replica_id `{name}`: use 1 to 64 letters, digits, `-`, `_` and `.`"
        )))
    }
}

/// What the sync task remembers between syncs.
#[derive(Default)]
struct SyncMemory {
    connection: Option<MultiplexedConnection>,
    /// Per route, the router's count of its own changes when last published
    /// ([`crate::Router::own_changes`]), and the version published.
    published: HashMap<String, (u64, String)>,
    /// Per route and other replica, the version last folded in.
    folded: HashMap<(String, String), String>,
    /// Records published since the start, for versions that never repeat.
    publications: u64,
    /// Forwards sent over the current connection: those not yet confirmed are sent again
    /// over the next one, since Redis may have restarted without them.
    sent: HashSet<u64>,
}

/// Syncs every route with the cluster every interval, until the task is dropped.
///
/// `first` is told once the first sync ended, reaching Redis or not: the server serves
/// after it, so that each route names this replica among its publishers before the
/// replica decides for it, and the other replicas take reports of its decisions.
pub async fn sync_forever(state: Arc<AppState>, first: tokio::sync::oneshot::Sender<()>) {
    let Some(cluster) = state.cluster.as_ref() else {
        return;
    };
    let mut first = Some(first);
    let boot = format!("{:016x}", rand::random::<u64>());
    let mut memory = SyncMemory::default();
    let mut tick = tokio::time::interval(cluster.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let outcome = sync(&state, cluster, &boot, &mut memory).await;
        let (up, result) = if outcome.is_ok() { (1, "ok") } else { (0, "error") };
        state.metrics.cluster_redis_up.set(up);
        let label = crate::metrics::ResultLabels {
            result: result.into(),
        };
        state.metrics.cluster_syncs.get_or_create(&label).inc();
        let mut status = cluster.status.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => {
                status.error = None;
                status.last_ok = Some(Instant::now());
            }
            Err(error) => {
                if status.error.is_none() {
                    tracing::warn!(
                        "cluster sync failed: {error}; serving and learning alone until Redis answers"
                    );
                }
                memory.connection = None;
                status.error = Some(error);
            }
        }
        drop(status);
        if let Some(first) = first.take() {
            let _ = first.send(());
        }
    }
}

/// One sync of every route; an error means Redis was not reached (or failed).
async fn sync(
    state: &Arc<AppState>,
    cluster: &Cluster,
    boot: &str,
    memory: &mut SyncMemory,
) -> std::result::Result<(), String> {
    let limit = cluster.interval().max(Duration::from_secs(1));
    let mut connection = match memory.connection.clone() {
        Some(c) => c,
        None => {
            let connecting = cluster.client.get_multiplexed_async_connection();
            let c = within(limit, connecting).await?;
            memory.connection = Some(c.clone());
            memory.sent.clear();
            c
        }
    };
    for route in state.router.route_names() {
        publish(state, cluster, boot, memory, &mut connection, &route, limit).await?;
        fold(state, cluster, memory, &mut connection, &route, limit).await?;
    }
    deliver(state, cluster, memory, &mut connection, limit).await?;
    receive(state, cluster, &mut connection, limit).await
}

/// Sends the forwards not yet sent over this connection to their replicas' inboxes, and
/// settles the outbox with what they confirmed.
async fn deliver(
    state: &Arc<AppState>,
    cluster: &Cluster,
    memory: &mut SyncMemory,
    connection: &mut MultiplexedConnection,
    limit: Duration,
) -> std::result::Result<(), String> {
    let confirmed_key = cluster.confirmed_key(&cluster.replica);
    let confirmed: Vec<u64> = within(limit, connection.smembers(&confirmed_key)).await?;
    if !confirmed.is_empty() {
        let (state, seqs) = (Arc::clone(state), confirmed.clone());
        blocking(move || outbox_of(&state).confirm(&seqs).map_err(|e| e.to_string())).await?;
        within(limit, connection.srem::<_, _, ()>(&confirmed_key, &confirmed)).await?;
        for seq in confirmed {
            memory.sent.remove(&seq);
        }
    }
    let pending = cluster.outbox.pending();
    state.metrics.cluster_forwards_pending.set(pending.len() as i64);
    let mut sending = redis::pipe();
    let mut seqs = Vec::new();
    for forward in pending.iter().filter(|f| !memory.sent.contains(&f.seq)) {
        let text = serde_json::to_string(forward).map_err(|e| e.to_string())?;
        sending.rpush(cluster.inbox_key(&forward.to), text).ignore();
        seqs.push(forward.seq);
    }
    if !seqs.is_empty() {
        within(limit, sending.query_async::<()>(connection)).await?;
        memory.sent.extend(seqs);
    }
    Ok(())
}

fn outbox_of(state: &AppState) -> &Outbox {
    &state.cluster.as_ref().expect("the sync runs in a cluster").outbox
}

/// Forwards applied per sync at most, so that a long inbox does not hold the sync up.
const INBOX_BATCH: isize = 1000;

/// Applies what other replicas forwarded to this one, and confirms each to its sender.
async fn receive(
    state: &Arc<AppState>,
    cluster: &Cluster,
    connection: &mut MultiplexedConnection,
    limit: Duration,
) -> std::result::Result<(), String> {
    let inbox = cluster.inbox_key(&cluster.replica);
    let entries: Vec<String> = within(limit, connection.lrange(&inbox, 0, INBOX_BATCH - 1)).await?;
    if entries.is_empty() {
        return Ok(());
    }
    let (taken, confirmations) = {
        let state = Arc::clone(state);
        blocking(move || {
            let mut confirmations = Vec::new();
            for (taken, entry) in entries.iter().enumerate() {
                match apply_forward(&state, entry) {
                    Received::Settled(confirm) => confirmations.extend(confirm),
                    Received::Retry => return Ok((taken, confirmations)),
                }
            }
            Ok((entries.len(), confirmations))
        })
        .await?
    };
    let mut confirming = redis::pipe();
    confirming.atomic();
    for (from, seq) in confirmations {
        confirming.sadd(cluster.confirmed_key(&from), seq).ignore();
    }
    confirming.ltrim(&inbox, taken as isize, -1).ignore();
    within(limit, confirming.query_async::<()>(connection)).await
}

/// What came of a forward from the inbox.
enum Received {
    /// Applied, a repeat, or refused for good: off the inbox, confirmed to its sender
    /// (unless it names none).
    Settled(Option<(String, u64)>),
    /// Not applied for a fault of this replica (its log, say): left in the inbox.
    Retry,
}

/// Applies one forward from the inbox, durably. A forward this replica refuses (its
/// decision is past the feedback horizon, say) is confirmed all the same, since sending
/// it again would not change that; one that cannot be read names no sender and is
/// dropped.
fn apply_forward(state: &AppState, entry: &str) -> Received {
    let forward: Forward = match serde_json::from_str(entry) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("unreadable forward dropped from the inbox: {e}");
            return Received::Settled(None);
        }
    };
    let applied = forward
        .report
        .stage(&state.router, &forward.decision_id)
        .and_then(Pending::wait);
    let result = match applied {
        Ok(Applied::Applied | Applied::ArmRemoved) => "applied",
        Ok(Applied::AlreadyApplied) => "repeated",
        Err(
            e @ (ServeError::Bandit(_)
            | ServeError::UnknownRoute(_)
            | ServeError::BadDecisionId(_)
            | ServeError::OtherReplica { .. }),
        ) => {
            tracing::warn!(
                decision = %forward.decision_id,
                from = %forward.from,
                "forwarded report refused: {e}"
            );
            "refused"
        }
        Err(e) => {
            tracing::error!(decision = %forward.decision_id, "forwarded report not applied yet: {e}");
            return Received::Retry;
        }
    };
    let label = crate::metrics::ResultLabels {
        result: result.into(),
    };
    state
        .metrics
        .cluster_forwards_received
        .get_or_create(&label)
        .inc();
    Received::Settled(Some((forward.from, forward.seq)))
}

/// Awaits a Redis command for at most `limit`.
async fn within<T>(
    limit: Duration,
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(limit, command).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("redis: {e}")),
        Err(_) => Err(format!("redis: no answer within {} ms", limit.as_millis())),
    }
}

/// Runs `work` on a blocking thread: the statistics' algebra and encoding take
/// milliseconds, which the runtime's threads must not.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::result::Result<T, String> + Send + 'static,
) -> std::result::Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("sync task: {e}"))?
}

/// Publishes what this replica learned on `route`, if it changed or Redis lost it.
async fn publish(
    state: &Arc<AppState>,
    cluster: &Cluster,
    boot: &str,
    memory: &mut SyncMemory,
    connection: &mut MultiplexedConnection,
    route: &str,
    limit: Duration,
) -> std::result::Result<(), String> {
    let versions_key = cluster.versions_key(route);
    let in_redis: Option<String> = within(limit, connection.hget(&versions_key, &cluster.replica)).await?;
    let changes = state.router.own_changes(route).map_err(|e| e.to_string())?;
    // Unchanged and still in Redis (which may have restarted empty): nothing to write. What
    // the replica publishes changes by its own decisions, outcomes and feedback only, never
    // by what it folds in, so replicas do not echo each other's records.
    if let Some((published, version)) = memory.published.get(route) {
        if *published == changes && in_redis.as_ref() == Some(version) {
            return Ok(());
        }
        // Not this process's version, nor gone with Redis: another replica writes as this
        // one, and the two overwrite each other's learning.
        if in_redis.as_ref().is_some_and(|v| !v.starts_with(boot)) {
            tracing::error!(
                route,
                replica = %cluster.replica,
                "another replica publishes under this replica's name; give each its own replica_id"
            );
        }
    }
    let record = {
        let (state, route) = (Arc::clone(state), route.to_string());
        let replica = cluster.replica.clone();
        blocking(move || SharedLearning::of(&state.router, &route, &replica)?.encode()).await?
    };
    memory.publications += 1;
    let version = format!("{boot}-{}", memory.publications);
    let mut transaction = redis::pipe();
    transaction
        .atomic()
        .set(cluster.learned_key(route, &cluster.replica), &record)
        .ignore()
        .hset(&versions_key, &cluster.replica, &version)
        .ignore();
    within(limit, transaction.query_async::<()>(connection)).await?;
    state.metrics.cluster_sent_bytes.inc_by(record.len() as u64);
    memory.published.insert(route.to_string(), (changes, version));
    Ok(())
}

/// Folds in what the other replicas of `route` learned since last folded in. A record
/// newer than the version read beside it is no harm: folding in is by content (the
/// difference from what was folded in before), so the newer version folds in nothing
/// twice.
async fn fold(
    state: &Arc<AppState>,
    cluster: &Cluster,
    memory: &mut SyncMemory,
    connection: &mut MultiplexedConnection,
    route: &str,
    limit: Duration,
) -> std::result::Result<(), String> {
    let versions: HashMap<String, String> =
        within(limit, connection.hgetall(cluster.versions_key(route))).await?;
    // Kept once seen: Redis restarted empty forgets publishers until they publish again.
    (cluster.publishers.lock().unwrap_or_else(|e| e.into_inner()))
        .entry(route.to_string())
        .or_default()
        .extend(versions.keys().cloned());
    for (replica, version) in versions {
        let key = (route.to_string(), replica.clone());
        if replica == cluster.replica || memory.folded.get(&key) == Some(&version) {
            continue;
        }
        let bytes: Option<Vec<u8>> =
            within(limit, connection.get(cluster.learned_key(route, &replica))).await?;
        let Some(bytes) = bytes else { continue };
        state.metrics.cluster_received_bytes.inc_by(bytes.len() as u64);
        let (state, route_name, replica_name) = (Arc::clone(state), route.to_string(), replica.clone());
        let folded = blocking(move || {
            SharedLearning::decode(&bytes)?.fold_into(&state.router, &route_name, &replica_name)
        })
        .await;
        match folded {
            Ok(()) => {
                memory.folded.insert(key, version);
            }
            Err(reason) => {
                // Another configuration (models, policy, context): its learning stays out
                // until it publishes one that adds up; said once per version.
                tracing::warn!(
                    route,
                    replica,
                    version,
                    "replica's learning not folded in: {reason}"
                );
                memory.folded.insert(key, version);
            }
        }
    }
    Ok(())
}
