#![allow(clippy::print_stdout)] // printing is the CLI's job

//! The `quiver` command line. The replay simulator and the server add their subcommands
//! as they land; until then it reports its version and where to start.

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--version" | "-V") => println!("quiver {version}"),
        _ => {
            println!("quiver {version}: adaptive multi-armed-bandit routing for LLM requests");
            println!("The learning core is the quiver-bandit library; see README.md for an example:");
            println!("  cargo run --release -p quiver-bandit --example route");
        }
    }
}
