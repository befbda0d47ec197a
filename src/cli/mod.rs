//! The `mandate` binary: serve, issue, delegate, pause, resume, revoke,
//! complete, status, tree, history, check, watch, rebuild, demo,
//! mcp-gateway.
//!
//! With `--nats` commands talk to `mandate serve` on that server. Without
//! it, `serve` runs a private nats-server and announces it in `--data`;
//! other commands use the engine announced there, else the embedded engine
//! in `--data` (one process at a time); see `bootstrap`.
//! Exit codes: 0 ok, 1 denied, 2 invalid input, 3 not found, 4 unavailable,
//! 5 refused (forbidden, terminal, wrong state, conflict, quarantined), 6
//! internal. A `check` on a quarantined tree is a deny (1); `status`, `chain`
//! and commands on it are refused (5).
//!
//! Not API. This module is public only because the binary (`src/main.rs`, a
//! crate of its own) calls [`Cli`], [`Cmd`] and [`run`]; its Rust items may
//! change in any release. What is stable is the command line: the commands,
//! their flags, their output (`--json` included) and their exit codes.
//! Programs use [`crate::client`] instead.
//!
//! # Layout
//! - `args`: the command line as clap reads it (the help texts).
//! - `parse`: argument values into domain values.
//! - `runner`: who acts, which engine answers, and the dispatch.
//! - `commands`: the commands that change authority; `queries`: the reads;
//!   `watch`: live signals.
//! - `render`: text and `--json` output; `exit`: the exit-code table.
//! - `serve` (and `rebuild`), beside `bootstrap` (`serve` without `--nats`).
//! - `demo`: the ghost-execution story.
//! - `mcp`: `mcp-gateway`, the MCP proxy that guards an MCP server.

/// Prints a line on stdout. A reader gone away (`mandate status X | head
/// -1`) is not an error of the command: the rest of the output is dropped
/// and the command still ends with its own exit code (a denied check still
/// exits 1).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::render::say_line(format_args!($($arg)*))
    };
}

mod args;
pub mod bootstrap;
mod commands;
pub mod connect;
pub mod demo;
mod exit;
mod mcp;
mod parse;
mod queries;
mod render;
mod runner;
mod serve;
mod watch;

pub use args::{Cli, Cmd};
pub use exit::{Exit, Failure};
pub use parse::{deadline, parse_actor, parse_ttl};
pub use runner::run;
pub use serve::shutdown_signal;
