//! What the tests of engines served over NATS mostly import, in one line:
//! `use common::prelude::*;`.
#![allow(unused_imports)]

pub use std::time::Duration;

pub use mandate::client::{Client, ClientError};
pub use mandate::domain::command::{Delegate, Issue};
pub use mandate::domain::{
    Actor, Command, CommandEnvelope, CommandId, ErrorCode, MandateId, Status, TenantId, TreeId,
};

pub use super::fixtures::*;
pub use super::served::Instance;
pub use super::wire::*;
pub use super::NatsServer;
