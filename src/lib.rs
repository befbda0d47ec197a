//! Mandate: an event-sourced engine that holds the authority of AI agents.
//!
//! # Layout
//! Layers, in the order data flows; each depends only on those above it.
//! - [`domain`]: pure — ids, scope grammar, the tree aggregate
//!   (`decide`/`apply`), status machine, effective status, `authorize`.
//! - [`store`]: the sled projection (state, indexes, history, checkpoint).
//! - [`log`]: the event log trait, with JetStream and embedded sled backends.
//! - [`protocol`]: the wire contract (subjects, requests, replies, signals).
//! - [`engine`]: the service — commands, cascade signals, expiry, missions,
//!   queries, audit — over NATS or in-process.
//! - [`client`]: the SDK — orchestrator client, mission publisher, agent guard.
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
