//! Running the HTTP server: open the router, serve, snapshot periodically and on shutdown.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::app::{build_app, AppState, Counters};
use crate::config::ServeConfig;
use crate::error::{io_at, Result, ServeError};
use crate::router::{Router, RouterOptions};

/// Builds the shared state of a server from its configuration (restoring the snapshot
/// and replaying the log).
pub fn state(config: ServeConfig) -> Result<Arc<AppState>> {
    let options = RouterOptions {
        feedback_horizon: config.feedback_horizon_decisions,
        ..RouterOptions::default()
    };
    let router = Router::open_with(config.routes.clone(), &config.log_dir, options)?;
    let http = reqwest::Client::builder()
        .build()
        .map_err(|e| ServeError::Config(format!("HTTP client: {e}")))?;
    Ok(Arc::new(AppState {
        router: Mutex::new(router),
        config,
        http,
        counters: Counters::default(),
    }))
}

/// Captures the learners under the router's lock, then writes them without it.
fn snapshot(state: &AppState) {
    let captured = match state.router() {
        Ok(router) => router.capture_snapshot(),
        Err(e) => return eprintln!("quiver serve: snapshot skipped: {e:?}"),
    };
    if let Err(e) = captured.write() {
        eprintln!("quiver serve: snapshot failed: {e}");
    }
}

/// Serves until `shutdown` resolves, then drains requests and writes a final snapshot.
/// `ready` receives the bound address.
pub async fn run(
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&state.config.listen)
        .await
        .map_err(io_at(&state.config.listen))?;
    let addr = listener.local_addr().map_err(io_at(&state.config.listen))?;
    ready(addr);
    let periodic = {
        let state = Arc::clone(&state);
        let every = Duration::from_secs(state.config.snapshot_interval_s.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let state = Arc::clone(&state);
                let _ = tokio::task::spawn_blocking(move || snapshot(&state)).await;
            }
        })
    };
    axum::serve(listener, build_app(Arc::clone(&state)))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(io_at(addr.to_string()))?;
    periodic.abort();
    let final_state = Arc::clone(&state);
    let _ = tokio::task::spawn_blocking(move || snapshot(&final_state)).await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
