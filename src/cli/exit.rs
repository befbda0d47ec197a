//! Exit codes: the README's table, and the one function ([`exit_of`]) that
//! gives every error its code.

use super::bootstrap::BootstrapError;
use crate::client::ClientError;
use crate::domain::{Decision, DenyReason, ErrorCode, Outcome};
use crate::engine::EngineError;

/// The exit codes of `mandate`, as the README's table documents them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Ok (a `check` that allows).
    Ok = 0,
    /// Denied: a `check` that denies or needs step-up approval (also on a
    /// quarantined tree).
    Denied = 1,
    /// Invalid input (the message names it).
    Invalid = 2,
    /// Not found: an unknown mandate, for every command alike.
    NotFound = 3,
    /// Unavailable: no NATS server, no engine serving, the data directory
    /// held by another process.
    Unavailable = 4,
    /// Refused by the rules: forbidden, widens authority, terminal, wrong
    /// state, conflict, quarantined.
    Refused = 5,
    /// Internal: a broken hash chain, a projection that differs from its
    /// rebuild, a bug.
    Internal = 6,
}

impl Exit {
    /// The process's exit code.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// A CLI failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure {
            code: exit.code(),
            message: message.into(),
        }
    }
}

/// Invalid input (2), saying what was wrong.
pub(crate) fn invalid(message: impl Into<String>) -> Failure {
    Failure::new(Exit::Invalid, message)
}

/// An error on its way to its exit code.
enum Error<'a> {
    /// A code of the wire contract: an engine's answer.
    Code(ErrorCode),
    /// The client: the engine's answer, or a transport that failed.
    Client(&'a ClientError),
    /// The engine, opened, served or rebuilt in this process.
    Engine(&'a EngineError),
    /// The private server, or the served engine of a data directory.
    Bootstrap(&'a BootstrapError),
}

/// The README's exit-code table: the one place an error gets its code.
fn exit_of(e: Error<'_>) -> Exit {
    match e {
        Error::Code(code) => match code {
            ErrorCode::InvalidInput => Exit::Invalid,
            ErrorCode::NotFound => Exit::NotFound,
            ErrorCode::Unavailable => Exit::Unavailable,
            ErrorCode::Forbidden
            | ErrorCode::Widens
            | ErrorCode::Terminal
            | ErrorCode::InvalidState
            | ErrorCode::Conflict
            | ErrorCode::Quarantined => Exit::Refused,
            ErrorCode::Internal => Exit::Internal,
        },
        Error::Client(ClientError::Engine(body)) => exit_of(Error::Code(body.code)),
        Error::Client(
            ClientError::NoEngine(_) | ClientError::TimedOut(_) | ClientError::Nats(_),
        ) => Exit::Unavailable,
        Error::Client(ClientError::Decode(_)) => Exit::Internal,
        Error::Client(ClientError::Invalid(_)) => Exit::Invalid,
        // As an engine answers it over the wire, so an in-process engine's
        // error exits as a served one's does.
        Error::Engine(e) => exit_of(Error::Code(e.to_body().code)),
        Error::Bootstrap(BootstrapError::Io { .. }) => Exit::Internal,
        Error::Bootstrap(_) => Exit::Unavailable,
    }
}

/// The exit of a check: allowed (0); not found (3) when the mandate does not
/// exist (as `status` says of it), so a mistyped id is told apart from a
/// refusal; denied (1) for every other deny and for needs-approval.
pub(crate) fn exit_of_decision(d: &Decision) -> Exit {
    match (&d.outcome, &d.reason) {
        (Outcome::Allow, _) => Exit::Ok,
        (_, Some(DenyReason::UnknownMandate)) => Exit::NotFound,
        _ => Exit::Denied,
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::new(exit_of(Error::Client(&e)), e.to_string())
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        Failure::new(exit_of(Error::Engine(&e)), e.to_string())
    }
}

impl From<BootstrapError> for Failure {
    fn from(e: BootstrapError) -> Self {
        Failure::new(exit_of(Error::Bootstrap(&e)), e.to_string())
    }
}

/// Output that does not encode: a bug.
impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Failure::new(Exit::Internal, e.to_string())
    }
}
