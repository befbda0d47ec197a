//! Mandate: an event-sourced engine that holds the authority of AI agents.
#![deny(unreachable_pub)]

pub mod domain;
pub mod log;
