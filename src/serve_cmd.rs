//! `quiver serve`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use quiver_serve::server::{run, shutdown_signal, state};
use quiver_serve::ServeConfig;

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct ServeArgs {
    /// The configuration file (see quiver.example.toml).
    #[arg(long, default_value = "quiver.toml")]
    config: PathBuf,
    /// Override the configured listen address.
    #[arg(long)]
    listen: Option<String>,
    /// Start SIMULATED upstream providers (the built-in scenario's models) on 127.0.0.1
    /// and a `demo` route over them: try routing and feedback without API keys.
    #[arg(long)]
    demo: bool,
    /// Start route NAME afresh: its snapshot is ignored and the log teaches it nothing
    /// (its decisions still in the log keep accepting feedback). Needed when a route's
    /// policy or context (`extra_features`, embedding) changed, since what it learned
    /// does not carry over, or when its snapshot cannot be read and the log no longer
    /// holds its whole history. Its shadow candidates and canary are not reset: every
    /// start rebuilds them from the whole log. Repeat for several routes.
    #[arg(long = "reset-route", value_name = "NAME")]
    reset_routes: Vec<String>,
}

pub fn run_serve(args: ServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let config = if args.demo {
            crate::demo::demo_config(args.listen).await?
        } else {
            let mut config = ServeConfig::load(&args.config)?;
            // `--listen` overrides QUIVER_LISTEN, which is then not read.
            let flagged = |name: &str| name == "QUIVER_LISTEN" && args.listen.is_some();
            config.apply_env(|name| std::env::var(name).ok().filter(|_| !flagged(name)))?;
            if let Some(listen) = args.listen {
                config.listen = listen;
            }
            config
        };
        if args.demo {
            eprintln!(
                "quiver serve --demo: route `demo`, log in {}",
                config.log_dir.display()
            );
        }
        let config = ServeConfig {
            reset_routes: args.reset_routes,
            ..config
        };
        let state = state(config)?;
        run(state, shutdown_signal()?, |addr| {
            eprintln!("quiver serve: listening on http://{addr}");
        })
        .await?;
        // Through the log's queue: a reader that stopped reading must not hold the exit.
        tracing::info!("stopped; snapshot written");
        Ok(())
    })
}
