//! The `mandate` binary; see [`mandate::cli`].

/// The allocator of Mandate's binaries (Cargo.toml says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = mandate::cli::Cli::parse();
    let default = match cli.command {
        mandate::cli::Cmd::Serve { .. } => "info",
        // The MCP SDK logs every error reply as a warning; the gateway's
        // refusals are answers, not faults (it logs its cancellations).
        mandate::cli::Cmd::McpGateway(_) => "warn,rmcp=error",
        _ => "warn",
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
