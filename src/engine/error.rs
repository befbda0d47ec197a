//! Engine errors: a kind to branch on, and a message for people.
//!
//! Shaped like `async_nats::error::Error<Kind>`: one error type carrying a
//! small `Copy + PartialEq` kind and the source that says what happened.
//! Callers branch on [`EngineError::kind`] (and, for a refusal, on
//! [`EngineError::rejection`]); they never parse the message.

use std::fmt;

use crate::domain::{DomainError, ErrorCode};
use crate::log::LogError;
use crate::protocol::ErrorBody;
use crate::store::StoreError;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of failure an [`EngineError`] is. Rejections are the caller's
/// to fix; the others are the infrastructure's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineErrorKind {
    /// The command or query was understood and refused;
    /// [`EngineError::rejection`] says why.
    Rejected,
    /// Not found in this tenant (another tenant's ids are not found either).
    NotFound,
    /// Invalid request outside the domain's own checks (subject, body size,
    /// configuration files). Handling: fix the request.
    Invalid,
    /// Too many concurrent writers on one tree. Handling: retry.
    Contended,
    /// The log, NATS or storage cannot be reached. Handling: retry later.
    Unavailable,
    /// The embedded store is held by another process. Handling: stop that
    /// process, or reach the engine it serves instead.
    Locked,
    /// A log record cannot be decoded; its tree is quarantined.
    Corrupt,
    /// Any other failure of the projection or the log.
    Internal,
}

impl fmt::Display for EngineErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineErrorKind::Rejected => "rejected",
            EngineErrorKind::NotFound => "not found",
            EngineErrorKind::Invalid => "invalid",
            EngineErrorKind::Contended => "contended",
            EngineErrorKind::Unavailable => "unavailable",
            EngineErrorKind::Locked => "locked",
            EngineErrorKind::Corrupt => "corrupt record",
            EngineErrorKind::Internal => "internal error",
        })
    }
}

/// An engine failure: a [`EngineErrorKind`] and the source that says what
/// happened.
#[derive(Debug)]
pub struct EngineError {
    kind: EngineErrorKind,
    source: Option<BoxError>,
}

/// A plain message used as the source of an error that has no other.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl EngineError {
    /// An error of `kind` with no further detail.
    pub fn new(kind: EngineErrorKind) -> Self {
        Self { kind, source: None }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(kind: EngineErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// An error of `kind` that says `message`.
    pub fn message(kind: EngineErrorKind, message: impl Into<String>) -> Self {
        Self::with_source(kind, Message(message.into()))
    }

    /// [`EngineErrorKind::NotFound`] with its message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::message(EngineErrorKind::NotFound, message)
    }

    /// [`EngineErrorKind::Invalid`] with its message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::message(EngineErrorKind::Invalid, message)
    }

    /// [`EngineErrorKind::Unavailable`] with its message.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::message(EngineErrorKind::Unavailable, message)
    }

    /// [`EngineErrorKind::Contended`]: `attempts` tries all lost the tree.
    pub fn contended(attempts: u32) -> Self {
        Self::message(
            EngineErrorKind::Contended,
            format!("gave up after {attempts} conflicting attempts on one tree; retry"),
        )
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> EngineErrorKind {
        self.kind
    }

    /// The domain's refusal, for [`EngineErrorKind::Rejected`].
    pub fn rejection(&self) -> Option<&DomainError> {
        self.source.as_ref()?.downcast_ref::<DomainError>()
    }

    /// The log's error, when the log failed.
    pub fn log_error(&self) -> Option<&LogError> {
        self.source.as_ref()?.downcast_ref::<LogError>()
    }

    /// The wire form. Its code follows the kind (for a rejection, the
    /// domain's own code).
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code(),
            message: self.to_string(),
            reason: self.rejection().map(|d| d.reason().to_string()),
        }
    }

    /// The wire code alone (what [`EngineError::to_body`] puts in the body).
    pub(crate) fn code(&self) -> ErrorCode {
        match (self.kind, self.rejection()) {
            (EngineErrorKind::Rejected, Some(d)) => d.code(),
            (EngineErrorKind::NotFound, _) => ErrorCode::NotFound,
            (EngineErrorKind::Invalid, _) => ErrorCode::InvalidInput,
            (EngineErrorKind::Contended, _) => ErrorCode::Conflict,
            (EngineErrorKind::Unavailable | EngineErrorKind::Locked, _) => ErrorCode::Unavailable,
            (
                EngineErrorKind::Rejected | EngineErrorKind::Corrupt | EngineErrorKind::Internal,
                _,
            ) => ErrorCode::Internal,
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.source, self.kind) {
            (Some(source), EngineErrorKind::Unavailable) => write!(f, "unavailable: {source}"),
            // The source's own message names the input; the kind adds nothing
            // a person needs.
            (Some(source), _) => write!(f, "{source}"),
            (None, kind) => write!(f, "{kind}"),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.source {
            Some(s) if !s.is::<Message>() => Some(s.as_ref()),
            _ => None,
        }
    }
}

impl From<DomainError> for EngineError {
    fn from(e: DomainError) -> Self {
        Self::with_source(EngineErrorKind::Rejected, e)
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        Self::with_source(EngineErrorKind::Internal, e)
    }
}

impl From<LogError> for EngineError {
    fn from(e: LogError) -> Self {
        let kind = match &e {
            LogError::Unavailable(m) => return Self::unavailable(m.clone()),
            LogError::TimedOut => {
                return Self::unavailable("event log did not acknowledge in time");
            }
            LogError::TooLarge { .. } | LogError::Config(_) => EngineErrorKind::Invalid,
            LogError::Locked { .. } => EngineErrorKind::Locked,
            LogError::Corrupt { .. } => EngineErrorKind::Corrupt,
            LogError::Conflict { .. } | LogError::Backend(_) => EngineErrorKind::Internal,
        };
        Self::with_source(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MandateId;

    #[test]
    fn kinds_keep_the_wire_codes_and_the_messages() {
        let mandate = MandateId(uuid::Uuid::nil());
        let refused: EngineError = DomainError::MandateNotFound { mandate }.into();
        assert_eq!(refused.kind(), EngineErrorKind::Rejected);
        assert_eq!(
            refused.rejection(),
            Some(&DomainError::MandateNotFound { mandate })
        );
        assert_eq!(
            refused.to_body().code,
            DomainError::MandateNotFound { mandate }.code()
        );
        assert!(refused.to_body().reason.is_some());

        let down: EngineError = LogError::Unavailable("no route".into()).into();
        assert_eq!(down.kind(), EngineErrorKind::Unavailable);
        assert_eq!(down.to_string(), "unavailable: no route");
        assert_eq!(down.to_body().code, ErrorCode::Unavailable);

        let locked: EngineError = LogError::Locked { path: "d".into() }.into();
        assert_eq!(locked.kind(), EngineErrorKind::Locked);
        assert_eq!(locked.to_body().code, ErrorCode::Unavailable);

        let big: EngineError = LogError::TooLarge { size: 2, max: 1 }.into();
        assert_eq!(big.kind(), EngineErrorKind::Invalid);
        assert_eq!(big.to_body().code, ErrorCode::InvalidInput);
        assert_eq!(
            big.log_error(),
            Some(&LogError::TooLarge { size: 2, max: 1 })
        );

        let busy = EngineError::contended(3);
        assert_eq!(busy.to_body().code, ErrorCode::Conflict);
        assert_eq!(
            busy.to_string(),
            "gave up after 3 conflicting attempts on one tree; retry"
        );
        assert_eq!(
            EngineError::not_found("x").to_body().code,
            ErrorCode::NotFound
        );
        assert_eq!(EngineError::invalid("y").to_string(), "y");
    }
}
