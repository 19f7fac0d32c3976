//! `quiver serve`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use quiver_serve::server::{run, shutdown_signal, state};
use quiver_serve::ServeConfig;

#[derive(Args)]
pub struct ServeArgs {
    /// The configuration file (see quiver.example.toml).
    #[arg(long, default_value = "quiver.toml")]
    config: PathBuf,
    /// Override the configured listen address.
    #[arg(long)]
    listen: Option<String>,
}

pub fn run_serve(args: ServeArgs) -> Result<()> {
    let mut config = ServeConfig::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let state = state(config)?;
        run(state, shutdown_signal(), |addr| {
            eprintln!("quiver serve: listening on http://{addr}");
        })
        .await?;
        eprintln!("quiver serve: stopped; snapshot written");
        Ok(())
    })
}
