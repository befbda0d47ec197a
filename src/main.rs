//! The `mandate` binary; see [`mandate::cli`].

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = mandate::cli::Cli::parse();
    let default = if matches!(cli.command, mandate::cli::Cmd::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(mandate::cli::Exit::Internal.code());
        }
    };
    let code = runtime.block_on(mandate::cli::run(cli));
    std::process::exit(code);
}
