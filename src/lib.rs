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
#![deny(unreachable_pub)]

pub mod cli;
pub mod client;
pub mod domain;
pub mod engine;
pub mod log;
pub mod protocol;
pub mod store;
