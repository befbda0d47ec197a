//! Mandate: an event-sourced engine that holds the authority of AI agents.
//!
//! # Layout
//! Layers, in the order data flows; each depends only on those above it.
//! - [`domain`]: pure — ids, scope grammar, the tree aggregate
//!   (`decide`/`apply`), status machine, effective status, `authorize`.
//! - [`store`]: the sled projection (state, indexes, history, checkpoint),
//!   rebuilt from the log, beside mission marks, in-process audit records
//!   and what the projection knows of its log (trees the log went
//!   backwards on).
//! - [`log`]: the event log trait, with JetStream and embedded sled backends.
//! - [`protocol`]: the wire contract (subjects, requests, replies, signals).
//! - [`engine`]: the service — commands, cascade signals, expiry, missions,
//!   queries, audit — over NATS or in-process.
//! - [`client`]: the SDK — orchestrator client, mission publisher, agent guard.
//! - [`cli`]: the `mandate` binary — argument parsing, output, exit codes,
//!   and `mandate demo` — over the engine (embedded or NATS) and the client.
//!   Not API: see its module doc.
//!
//! # What is API
//! [`cli`] is not: it is public only because the binary (`src/main.rs`, a
//! crate of its own) calls it, and its interface is the command line, not its
//! Rust items. Programs use [`client`] (with the types of [`domain`] and
//! [`protocol`] it speaks in), or the wire contract in `schemas/` from any
//! language.
//!
//! # Features
//! - `client`: the SDK over NATS (`domain`, `protocol`, `client`).
//! - `engine` (default): `store`, `log`, `engine`, and the SDK's in-process
//!   transport (`Client::local`, `MissionPublisher::Local`).
//! - `cli` (default): the `mandate` binary (`cli`).
//!
//! An agent that only needs the guard depends on
//! `mandate = { default-features = false, features = ["client"] }` and
//! compiles neither sled, the engine nor clap. `domain` and `protocol` are
//! always there.
#![deny(unreachable_pub)]

// The doc comments of `cli`'s arguments are the command's `--help` text,
// written for a terminal (`--actor agent:<id>`), not for HTML.
#[allow(rustdoc::invalid_html_tags)]
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "client")]
pub mod client;
pub mod domain;
#[cfg(feature = "engine")]
pub mod engine;
#[cfg(feature = "engine")]
pub mod log;
pub mod protocol;
#[cfg(feature = "engine")]
pub mod store;
