//! Running the HTTP server: open the router, serve, snapshot periodically and on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

use crate::app::{build_app, AppState};
use crate::cache::ResponseCache;
use crate::cluster::{self, Cluster};
use crate::config::ServeConfig;
use crate::deployments::Deployments;
use crate::embeddings::Embedders;
use crate::error::{io_at, Result, ServeError};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::router::{CapturedSnapshot, Router, RouterOptions};
use crate::upstream::{OpenAiCompatible, Upstream};

/// Builds the shared state of a server from its configuration (restoring the snapshot
/// and replaying the log), calling models over OpenAI-compatible HTTP.
pub fn state(config: ServeConfig) -> Result<Arc<AppState>> {
    state_with(config, |http, config| {
        Box::new(OpenAiCompatible::new(http.clone(), config))
    })
}

/// [`state`] with another provider of models, made from the server's HTTP client and
/// configuration.
pub fn state_with(
    config: ServeConfig,
    upstream: impl FnOnce(&reqwest::Client, &ServeConfig) -> Box<dyn Upstream>,
) -> Result<Arc<AppState>> {
    config.check_api_keys()?;
    config.check_limits()?;
    config.check_deployments()?;
    config.check_cors()?;
    config.check_auth()?;
    let any_embedding = config.routes.iter().any(|r| r.embedding.is_some());
    config.cache.check(any_embedding).map_err(ServeError::Config)?;
    let cluster = config
        .cluster
        .clone()
        .map(|c| Cluster::new(c, &config.log_dir))
        .transpose()?;
    let options = RouterOptions {
        feedback_horizon: config.feedback_horizon_decisions,
        reset_routes: config.reset_routes.clone(),
        replica: cluster.as_ref().map(|c| c.replica().to_string()),
        routed_call_limit: Duration::from_secs(config.routed_call_limit_s),
        ..RouterOptions::default()
    };
    let embedders = Embedders::new(&config.routes)?;
    let (breakers, cache) = (config.circuit_breaker, config.cache);
    breakers.check().map_err(ServeError::Config)?;
    let router = Router::open_with(config.routes.clone(), &config.log_dir, options)?;
    let http = reqwest::Client::builder()
        .build()
        .map_err(|e| ServeError::Config(format!("HTTP client: {e}")))?;
    Ok(Arc::new(AppState {
        router,
        upstream: upstream(&http, &config),
        deployments: Deployments::new(config.balance),
        config,
        http,
        metrics: Metrics::default(),
        embedders,
        health: Health::new(breakers),
        cache: ResponseCache::new(cache),
        cluster,
        background: tokio_util::task::TaskTracker::new(),
    }))
}

/// Captures the learners under their routes' locks, then writes them without them, and
/// counts the outcome. A snapshot that fails loses nothing: the previous one and the log
/// still hold everything.
fn snapshot(state: &AppState) -> Result<()> {
    let written = state.router.capture_snapshot().and_then(CapturedSnapshot::write);
    match written {
        Ok(()) => state.metrics.snapshots.inc(),
        Err(_) => state.metrics.snapshot_failures.inc(),
    };
    written
}

/// Serves until `shutdown` resolves, then drains requests and writes a final snapshot.
/// `ready` receives the bound address. A final snapshot not written is the stop's error,
/// so that the exit status tells a supervisor.
pub async fn run(
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let address = format!("listen address {}", state.config.listen);
    let listener = listen(&state.config.listen).await.map_err(io_at(&address))?;
    let addr = listener.local_addr().map_err(io_at(&state.config.listen))?;
    let (synced, first_sync) = tokio::sync::oneshot::channel();
    let sync = tokio::spawn(cluster::sync_forever(Arc::clone(&state), synced));
    // Outside a cluster the sync ends at once, and with it the wait.
    let _ = first_sync.await;
    ready(addr);
    let periodic = {
        let state = Arc::clone(&state);
        let every = Duration::from_secs(state.config.snapshot_interval_s);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let state = Arc::clone(&state);
                // A periodic snapshot that fails is logged and serving goes on.
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || snapshot(&state)).await {
                    tracing::error!("snapshot failed: {e}");
                }
            }
        })
    };
    let limits = ConnectionLimits::new(&state.config);
    let overloaded = state.metrics.overloaded.clone();
    serve_connections(
        listener,
        build_app(Arc::clone(&state)),
        limits,
        overloaded,
        shutdown,
    )
    .await;
    // Calls whose clients left end, and their outcomes reach the log, before the final
    // snapshot (within the drain's time: a call silent for longer ends on its own first).
    state.background.close();
    if tokio::time::timeout(SHUTDOWN_DRAIN, state.background.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "{} calls still under way after {} s; stopping without their outcomes",
            state.background.len(),
            SHUTDOWN_DRAIN.as_secs()
        );
    }
    periodic.abort();
    sync.abort();
    let final_state = Arc::clone(&state);
    match tokio::task::spawn_blocking(move || snapshot(&final_state)).await {
        Ok(written) => written.map_err(|e| ServeError::FinalSnapshot(Box::new(e))),
        // A blocking task is not cancelled while its runtime runs: this is a panic, passed on.
        Err(writer) => std::panic::resume_unwind(writer.into_panic()),
    }
}

/// Connections the kernel may hold, completed, for the server to accept (it caps this at
/// `net.core.somaxconn`, 4096 by default since Linux 5.4). The standard library's and
/// tokio's 128 drop the SYNs of a burst beyond it, and every client behind them, however
/// patient the server, waits out TCP's retransmissions: 1, 3, then 7 seconds.
const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `address` (`host:port`), on the first of its addresses that can be bound,
/// with a backlog of [`LISTEN_BACKLOG`].
async fn listen(address: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut failure = None;
    for addr in tokio::net::lookup_host(address).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As tokio's own `bind`: a restarted server can take its port back at once.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => failure = Some(e),
        }
    }
    Err(failure.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// What the connections may take of the server.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    /// Connections served at once.
    max_connections: usize,
    /// Time to send a request head (and the longest a keep-alive connection stays idle).
    header_read_timeout: Duration,
}

/// Connections beyond the limit that are still answered with a 503 at once; past these,
/// a new connection is closed unanswered, so that an attacker cannot make the answers
/// themselves exhaust the descriptors.
const OVERLOAD_ANSWERS: usize = 64;

/// Descriptors kept for the log, the snapshot and the like.
const RESERVED_DESCRIPTORS: u64 = 64;

impl ConnectionLimits {
    fn new(config: &ServeConfig) -> Self {
        let mut max_connections = config.max_connections;
        if let Some(descriptors) = descriptor_limit() {
            // Each connection may hold an upstream connection too; keep room for the
            // 503 answers and the server's own files.
            let room = descriptors.saturating_sub(RESERVED_DESCRIPTORS + OVERLOAD_ANSWERS as u64) / 2;
            let room = usize::try_from(room).unwrap_or(usize::MAX).max(1);
            if room < max_connections {
                tracing::warn!(
                    "max_connections lowered from {max_connections} to {room}: the process may open \
                     {descriptors} files (raise it with `ulimit -n`)"
                );
                max_connections = room;
            }
        }
        ConnectionLimits {
            max_connections,
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
        }
    }
}

/// The process's limit of open files, raised to its hard limit first (as Go's runtime
/// does): a server should use what it is allowed.
#[cfg(target_os = "linux")]
fn descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(not(target_os = "linux"))]
fn descriptor_limit() -> Option<u64> {
    None
}

/// Accepts connections until `shutdown` resolves, then closes the listener and lets the
/// open ones finish. Each connection must send a request head within the header timeout
/// (hyper closes it otherwise, idle keep-alive connections included); beyond
/// `max_connections` a connection gets a JSON 503 and is closed.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    overloaded: prometheus_client::metrics::counter::Counter,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // HTTP/1.1 only: an idle HTTP/2 connection is kept alive by pings and would hold its
    // slot forever, and OpenAI's SDKs speak HTTP/1.1 to a plain-text gateway.
    let mut builder = ConnectionBuilder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let busy = axum::Router::new().fallback(crate::request_limits::overloaded);
    let serving = Arc::new(Semaphore::new(limits.max_connections));
    let answering_busy = Arc::new(Semaphore::new(OVERLOAD_ANSWERS));
    let graceful = GracefulShutdown::new();
    // Tells connections that have not yet sent a byte to close at shutdown: hyper's
    // graceful shutdown only reaches the connections it serves.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted:
                    // wait a moment rather than spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let (permit, service) = match Arc::clone(&serving).try_acquire_owned() {
            Ok(permit) => (permit, app.clone()),
            Err(_) => {
                // Counted, not logged: a flood of connections must not become a flood of lines.
                overloaded.inc();
                match Arc::clone(&answering_busy).try_acquire_owned() {
                    Ok(permit) => (permit, busy.clone()),
                    Err(_) => continue,
                }
            }
        };
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                arrived = first_byte_arrives(&stream, limits.header_read_timeout) => if !arrived {
                    return;
                },
                _ = stop.wait_for(|&stopping| stopping) => return,
            }
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!("connection ended: {e}");
            }
            drop(permit);
        });
    }
    // New connections are refused from now on, instead of waiting in the kernel's queue
    // through the drain only to be reset at exit.
    drop(listener);
    let _ = stopping.send(true);
    // Streams are bounded by their silences, not their length: a stop waits for them a
    // while, then the final snapshot is written regardless.
    if tokio::time::timeout(SHUTDOWN_DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {} s; stopping anyway",
            SHUTDOWN_DRAIN.as_secs()
        );
    }
}

/// How long a stop waits for open requests and streams to finish.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);

/// Waits, at most `limit`, for the client's first byte: hyper's header timeout covers a
/// request head once it has begun, so a connection that sends nothing would otherwise be
/// held forever.
async fn first_byte_arrives(stream: &tokio::net::TcpStream, limit: Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(limit, stream.peek(&mut first)).await,
        Ok(Ok(1))
    )
}

/// Catches Ctrl-C and SIGTERM from now on and returns a future that resolves on either.
/// Registering before the server announces its address means a signal sent as soon as
/// it is listening stops it cleanly, rather than killing it before the loop first waits.
/// SIGHUP, which asks many servers to reload, is caught too: the configuration is read at
/// start, so it is answered with a warning and serving goes on, rather than ending the
/// process without its drain or final snapshot.
#[cfg(unix)]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => return,
                _ = terminate.recv() => return,
                _ = hangup.recv() => tracing::warn!(
                    "SIGHUP: the configuration is read at start; restart the server to apply a change"
                ),
            }
        }
    })
}

#[cfg(not(unix))]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGTERM that arrives before the future is first polled is caught, not fatal: with
    /// a handler installed only on the first poll, this signal would end the test binary.
    /// A SIGHUP before it asks for a reload, which a server reading its configuration at
    /// start cannot give: it neither stops the server nor ends the process. (One test:
    /// signals reach the whole test binary.)
    #[cfg(unix)]
    #[tokio::test]
    async fn a_terminate_signal_before_the_first_wait_is_caught_and_a_hangup_ignored() {
        let mut stopped = std::pin::pin!(shutdown_signal().unwrap());
        // SAFETY: kill only sends a signal, to this process, whose handler is installed.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
        let waited = tokio::time::timeout(Duration::from_millis(300), &mut stopped).await;
        assert!(waited.is_err(), "a hangup stopped the server");
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
        tokio::time::timeout(Duration::from_secs(5), stopped)
            .await
            .expect("the signal was not delivered");
    }
}
